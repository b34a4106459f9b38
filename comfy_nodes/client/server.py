"""Talking to a ComfyUI server from outside: HTTP and the WebSocket, with the credentials auth plugins ask for.

Authentication is told apart from failure everywhere: a 401 (basic-auth plugins, with WWW-Authenticate), a
403, a redirect to a login page (ComfyUI-Login answers an unauthenticated request with 302 to /login), or a
WebSocket refused for any of these raises :class:`AuthRequired`, which says what the server asked for and
which option passes it. It is never counted as a failed generation.

Credentials: ``--token`` (sent as ``Authorization: Bearer``, and as ``?token=`` on the WebSocket URL, as
ComfyUI-Login reads it), ``--header 'Name: value'``, ``--cookie 'name=value'``, ``--user``/``--password``
(basic auth), or the environment: STAGETRACE_TOKEN, STAGETRACE_HEADER, STAGETRACE_COOKIE, STAGETRACE_USER,
STAGETRACE_PASSWORD.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from dataclasses import dataclass, field

import aiohttp

AUTH_EXIT = 3  # the exit code of a command that met "authentication required"


class AuthRequired(Exception):
    """The server wants credentials (or refused the ones given): what it asked for, and the option to use."""

    def __init__(self, url: str, status: int, asked: str):
        self.url, self.status, self.asked = url, status, asked
        super().__init__(f"authentication required: {url} answered {asked}. Pass the credentials the server's auth "
                         "plugin expects: --token TOKEN (Authorization: Bearer, and ?token= on the WebSocket, as "
                         "ComfyUI-Login takes it), --cookie 'name=value' (a logged-in browser session), "
                         "--user NAME --password SECRET (basic auth), or --header 'Name: value'")


class ServerError(Exception):
    """An answer that is neither success nor an authentication request: the status and what the server said."""

    def __init__(self, url: str, status: int, body: str):
        self.url, self.status, self.body = url, status, body
        super().__init__(f"{url}: HTTP {status}: {body[:300]}")


@dataclass
class Credentials:
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    password: str | None = None

    @classmethod
    def from_options(cls, token=None, headers=(), cookies=(), user=None, password=None, env=None) -> Credentials:
        """From command-line options, falling back to STAGETRACE_* environment variables."""
        env = os.environ if env is None else env
        creds = cls(token=token or env.get("STAGETRACE_TOKEN") or None, user=user or env.get("STAGETRACE_USER"),
                    password=password or env.get("STAGETRACE_PASSWORD"))
        for header in list(headers) + ([env["STAGETRACE_HEADER"]] if env.get("STAGETRACE_HEADER") else []):
            name, sep, value = header.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"--header {header!r}: expected 'Name: value'")
            creds.headers[name.strip()] = value.strip()
        for cookie in list(cookies) + ([env["STAGETRACE_COOKIE"]] if env.get("STAGETRACE_COOKIE") else []):
            name, sep, value = cookie.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"--cookie {cookie!r}: expected 'name=value'")
            creds.cookies[name.strip()] = value.strip()
        return creds

    def request_headers(self) -> dict[str, str]:
        """The headers every request and the WebSocket handshake carry (cookies as one Cookie header, so
        they reach a loopback or IP address too, which cookie jars refuse)."""
        headers = dict(self.headers)
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        elif self.user:
            pair = f"{self.user}:{self.password or ''}".encode()
            headers.setdefault("Authorization", "Basic " + base64.b64encode(pair).decode())
        if self.cookies:
            headers.setdefault("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        return headers


def _asked(response: aiohttp.ClientResponse) -> str | None:
    """What an answer asks for when it is an authentication request, else None."""
    if response.status == 401:
        challenge = response.headers.get("WWW-Authenticate")
        return f"401 Unauthorized ({challenge})" if challenge else "401 Unauthorized"
    if response.status == 403:
        return "403 Forbidden"
    if response.status in (301, 302, 303, 307, 308):
        location = response.headers.get("Location", "")
        if "login" in location.lower() or "auth" in location.lower():
            return f"{response.status} redirect to {location}"
    return None


class ComfyServer:
    """One ComfyUI server: its base URL, the credentials, and an aiohttp session (the caller's)."""

    def __init__(self, url: str, session: aiohttp.ClientSession, credentials: Credentials | None = None):
        parsed = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{url!r}: not an http(s) server address")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.session = session
        self.credentials = credentials or Credentials()

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, bytes]:
        """(status, body) of a request that is not an authentication request; AuthRequired otherwise."""
        url = self.url + path
        async with self.session.request(method, url, headers=self.credentials.request_headers(),
                                        allow_redirects=False, **kwargs) as response:
            asked = _asked(response)
            if asked is not None:
                raise AuthRequired(url, response.status, asked)
            return response.status, await response.read()

    async def get_json(self, path: str, missing_ok: bool = False):
        """The JSON at path; None for a 404 when missing_ok; ServerError for other failures."""
        status, body = await self.request("GET", path)
        if status == 404 and missing_ok:
            return None
        if status != 200:
            raise ServerError(self.url + path, status, body.decode(errors="replace"))
        try:
            return json.loads(body)
        except ValueError:
            raise ServerError(self.url + path, status, "not JSON: " + body[:200].decode(errors="replace")) from None

    async def object_info(self) -> dict:
        return await self.get_json("/object_info")

    async def has_stagetrace(self) -> bool:
        return await self.get_json("/stagetrace/prompts?limit=1", missing_ok=True) is not None

    async def submit(self, prompt: dict, client_id: str) -> dict:
        """POST /prompt: {"prompt_id", "number", "node_errors"}; ServerError (with the node errors) on a 400."""
        status, body = await self.request("POST", "/prompt", json={"prompt": prompt, "client_id": client_id})
        if status != 200:
            raise ServerError(self.url + "/prompt", status, body.decode(errors="replace"))
        return json.loads(body)

    async def cancel(self, prompt_ids: list[str]) -> list[str]:
        """Drop these prompts from the server's queue and interrupt the one of them that is running; nobody
        else's prompt is touched (the interrupt names its prompt, and is sent only when the server's queue shows
        that prompt running). Returns the ids that were still queued or running."""
        ours = set(prompt_ids)
        if not ours:
            return []
        queue = await self.get_json("/queue")
        running = [item[1] for item in queue.get("queue_running") or () if isinstance(item, list) and len(item) > 1
                   and item[1] in ours]
        pending = [item[1] for item in queue.get("queue_pending") or () if isinstance(item, list) and len(item) > 1
                   and item[1] in ours]
        if pending:
            await self.request("POST", "/queue", json={"delete": pending})
        for prompt_id in running:
            await self.request("POST", "/interrupt", json={"prompt_id": prompt_id})
        return running + pending

    def websocket_url(self, client_id: str) -> str:
        base = self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        query = {"clientId": client_id}
        if self.credentials.token:
            query["token"] = self.credentials.token
        return f"{base}/ws?{urllib.parse.urlencode(query)}"

    async def connect(self, client_id: str) -> aiohttp.ClientWebSocketResponse:
        """The WebSocket for client_id; AuthRequired when the handshake is refused for authentication."""
        url = self.websocket_url(client_id)
        try:
            return await self.session.ws_connect(url, headers=self.credentials.request_headers(), heartbeat=30,
                                                 max_msg_size=64 << 20)
        except aiohttp.WSServerHandshakeError as exc:
            redirected = [str(r.headers.get("Location", "")) for r in exc.history or ()]
            landed = str(getattr(exc.request_info, "real_url", "") or "")
            if exc.status in (401, 403) or exc.status in (301, 302, 303, 307, 308):
                raise AuthRequired(url, exc.status, f"{exc.status} on the WebSocket handshake") from None
            if redirected or "login" in landed.lower():  # sent on to a login page, which is no WebSocket
                raise AuthRequired(url, 302, f"a redirect to {redirected[0] if redirected else landed} on the "
                                   "WebSocket handshake") from None
            raise
