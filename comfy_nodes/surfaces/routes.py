"""StageTrace's read-only HTTP routes inside ComfyUI, under ``/stagetrace/``.

They are registered on ``server.PromptServer.instance.routes`` while custom nodes load, so ComfyUI adds
them (and their ``/api`` twins) with its own routes, behind its own middleware and any auth plugin that
appends one to ``PromptServer.instance.app.middlewares``.

    GET /stagetrace/prompts?limit=N                 recent prompts with their summaries, newest first
    GET /stagetrace/prompts/{prompt_id}             one prompt's report: summary, stages, findings
    GET /stagetrace/prompts/{prompt_id}/trace       its trace file (Chrome Trace Event JSON)
    GET /stagetrace/prompts/{prompt_id}/report.html its HTML report
    GET /stagetrace/prompts/{prompt_id}/panel       the data of ComfyUI's StageTrace panel (surfaces/panel.py)
    GET /stagetrace/anatomy/{folder}/{name}         a model file's anatomy (header only)
    GET /stagetrace/gpu?since=&until=               GPU samples recorded in a time range (epoch seconds)
    GET /stagetrace/metrics                         Prometheus metrics (surfaces/metrics.py)
    GET /stagetrace/history?workflow=ID&limit=N     recorded runs from the run history, newest first
    GET /stagetrace/history/compare?a=ID&b=ID       two recorded runs stage by stage (a - b, a / b)
    GET /stagetrace/history/{prompt_id}             one recorded run

What they read: StageTrace's own files in its trace folder (by name: ``<stamp>_<id>.trace.json`` and
the report files beside it, never a symlink), and ComfyUI's registered model folders (a name resolved
by ``folder_paths.get_full_path``, then its real path checked to lie inside one of that folder's
registered paths). Ids and names are checked before any file is touched; anything else gets a 4xx with
a JSON error. A handler never raises into aiohttp: an unexpected error is a 500 with a JSON error,
logged once. File work runs on the loop's executor, not on ComfyUI's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ..core.comfyui import prompt_server
from ..core.log import log_once, logger
from ..record.tracefile import SUFFIX, TraceError, load, read
from ..record.writer import _OWN_TRACE

PREFIX = "/stagetrace"
DEFAULT_LIMIT = 20
MAX_LIMIT = 200
MAX_PARSE_BYTES = 64 * 1024 * 1024  # a trace larger than this is served as a file, never parsed here
MAX_GPU_TRACES = 50  # newest traces searched for GPU samples
MAX_GPU_SAMPLES = 20_000
CACHE_ENTRIES = 256
STAMP_LEN = len("YYYYmmdd-HHMMSS_")
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")  # what trace_path() keeps of a prompt id
SAFE_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MODEL_SUFFIXES = (".safetensors", ".sft")
ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)  # encoded dots, slashes, backslashes, NUL
GPU_COUNTER = re.compile(r"^GPU (\d+) (.+)$")
NOT_SERVED_FOLDERS = ("custom_nodes", "configs")
# The HTML report is self-contained: it may style itself and show data: pictures, nothing more.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


class RouteError(Exception):
    """A request StageTrace refuses or cannot answer: its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _regular_file(path: str) -> os.stat_result | None:
    """lstat of path when it is a regular file (not a symlink); None otherwise."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(os.path.realpath(root).rstrip(os.sep) + os.sep) for root in roots if root)


class TraceStore:
    """StageTrace's trace folder, read-only: its traces by prompt id, their reports, their GPU samples.
    Parsed results are cached by (path, size, mtime), CACHE_ENTRIES at most. Thread-safe."""

    def __init__(self, directory: Callable[[], str], native=None):
        self.directory = directory
        self.native = native
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    # --- the folder ---------------------------------------------------------------------------

    def traces(self) -> list[tuple[float, str, str]]:
        """(mtime, file name, path) of StageTrace's own traces, newest first; [] without a folder."""
        folder = self.directory()
        out = []
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return []
        for entry in entries:
            if not _OWN_TRACE.match(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((st.st_mtime, entry.name, entry.path))
        out.sort(key=lambda t: (t[0], t[1]), reverse=True)
        return out

    def find(self, prompt_id: str) -> str:
        """The newest trace of prompt_id (a SAFE_ID); RouteError 400/404."""
        if not isinstance(prompt_id, str) or not SAFE_ID.match(prompt_id):
            raise RouteError(400, "invalid prompt id: letters, digits, '-' and '_' only, 1 to 80 of them")
        exact, numbered = [], []
        for mtime, name, path in self.traces():
            rest = name[STAMP_LEN: -len(SUFFIX)]
            if rest == prompt_id:
                exact.append((mtime, path))
            elif rest.startswith(prompt_id + "-") and rest[len(prompt_id) + 1:].isdigit():
                numbered.append((mtime, path))
        found = exact or numbered
        if not found:
            raise RouteError(404, f"no trace of prompt {prompt_id}")
        path = found[0][1]
        if not _inside(path, [self.directory()]):
            raise RouteError(404, f"no trace of prompt {prompt_id}")
        return path

    def sibling(self, trace: str, suffix: str) -> str | None:
        """The report file beside trace (``.report.json`` / ``.report.html``) when it is a regular file."""
        path = trace[: -len(SUFFIX)] + suffix
        return path if _regular_file(path) is not None and _inside(path, [self.directory()]) else None

    # --- parsed, cached -----------------------------------------------------------------------

    def _cached(self, kind: str, path: str, build: Callable[[], object]):
        st = _regular_file(path)
        if st is None:
            raise RouteError(404, "the file is gone")
        key = (kind, path, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if st.st_size > MAX_PARSE_BYTES:
            raise RouteError(413, f"the file is {st.st_size} bytes, more than the {MAX_PARSE_BYTES} parsed here")
        value = build()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value

    def report(self, trace: str) -> dict:
        """The report of one trace as report.json holds it; rebuilt from the trace without that file."""
        report_json = self.sibling(trace, ".report.json")
        if report_json is not None:
            def from_file():
                with open(report_json, encoding="utf-8") as f:
                    return json.load(f)
            report = self._cached("report.json", report_json, from_file)
        else:
            def from_trace():
                from ..analysis.diagnose import diagnose

                try:
                    return json.loads(json.dumps(diagnose(read(trace)).to_dict(), default=str))
                except TraceError as exc:
                    raise RouteError(422, f"the trace cannot be read: {os.path.basename(str(exc))}") from None
            report = self._cached("report", trace, from_trace)
        report = dict(report)
        summary = report.get("summary")
        if isinstance(summary, dict) and summary.get("trace_path"):  # no server paths to clients
            report["summary"] = {**summary, "trace_path": os.path.basename(str(summary["trace_path"]))}
        return report

    def gpu_samples(self, trace: str) -> tuple[list[tuple[float, str, str, dict]], str | None]:
        """A trace's GPU counter samples ((ts µs, device, metric, values), ...) and, when it has none,
        why (the sampler's reason from the trace metadata)."""
        def build():
            data = load(trace)
            samples = []
            for ev in data["traceEvents"]:
                if ev.get("ph") != "C":
                    continue
                m = GPU_COUNTER.match(str(ev.get("name", "")))
                if m and isinstance(ev.get("args"), dict):
                    samples.append((float(ev["ts"]), m.group(1), m.group(2), ev["args"]))
            gpu = (data.get("otherData") or {}).get("gpu") or {}
            nvml = gpu.get("nvml") if isinstance(gpu, dict) else None
            reason = nvml.get("reason") if isinstance(nvml, dict) else None
            if not samples and reason is None:
                reason = (gpu.get("reason") if isinstance(gpu, dict) else None) or "the trace holds no GPU samples"
            return samples, reason
        return self._cached("gpu", trace, build)


# --- Request handling -------------------------------------------------------------------------


def _json(data, status: int = 200):
    from aiohttp import web

    return web.json_response(data, status=status, dumps=functools.partial(json.dumps, default=str))


def _error(status: int, message: str):
    return _json({"error": message, "status": status}, status)


def _refuse_encoded(request) -> None:
    """Encoded dots, slashes, backslashes or NUL in the raw path are refused before routing means anything."""
    if ENCODED.search(request.raw_path.split("?", 1)[0]):
        raise RouteError(400, "encoded dots, slashes or NUL are not accepted in StageTrace's paths")


def guarded(handler):
    """The handler, answering RouteError with its 4xx and anything else with one logged 500; never raises
    into aiohttp (except aiohttp's own HTTP exceptions, which are answers, and cancellation)."""
    @functools.wraps(handler)
    async def answer(request):
        from aiohttp import web

        try:
            _refuse_encoded(request)
            return await handler(request)
        except RouteError as exc:
            return _error(exc.status, exc.message)
        except (web.HTTPException, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the host never sees StageTrace's failure
            log_once(f"route-{handler.__name__}", "route %s failed (%s: %s); it answers 500",
                     request.path, type(exc).__name__, exc)
            return _error(500, f"StageTrace could not answer: {type(exc).__name__}")
    return answer


def _number(request, name: str, default: float | None) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RouteError(400, f"{name} must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise RouteError(400, f"{name} must be a finite number")
    return value


class Routes:
    """The handlers, over one TraceStore and ComfyUI's folder_paths."""

    def __init__(self, store: TraceStore, native, metrics=None, metrics_why: str | None = None, *,
                 history=None, history_why: str | None = None):
        self.store = store
        self.native = native
        self.metrics = metrics  # surfaces.metrics.Metrics, or None (and why not)
        self.metrics_why = metrics_why
        self.history = history  # history.store.History, or None (and why not)
        self.history_why = history_why

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # --- prompts ------------------------------------------------------------------------------

    def _listing(self, limit: int) -> dict:
        items = []
        for mtime, name, path in self.store.traces()[:limit]:
            item = {"trace": name, "ended": mtime}
            try:
                report = self.store.report(path)
            except RouteError as exc:
                item.update({"prompt_id": name[STAMP_LEN: -len(SUFFIX)], "error": exc.message})
            else:
                item.update(_brief(report))
            items.append(item)
        return {"prompts": items, "limit": limit}

    async def prompts(self, request):
        limit = _number(request, "limit", DEFAULT_LIMIT)
        if limit != int(limit) or not 1 <= limit <= MAX_LIMIT:
            raise RouteError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
        return _json(await self._off_loop(self._listing, int(limit)))

    def _prompt(self, prompt_id: str) -> dict:
        path = self.store.find(prompt_id)
        report = self.store.report(path)
        base = f"{PREFIX}/prompts/{prompt_id}"
        return {**report, "trace": os.path.basename(path),
                "links": {"trace": base + "/trace",
                          "report_html": base + "/report.html" if self.store.sibling(path, ".report.html") else None}}

    async def prompt(self, request):
        return _json(await self._off_loop(self._prompt, request.match_info["prompt_id"]))

    def _panel(self, prompt_id: str) -> dict:
        path = self.store.find(prompt_id)

        def build():
            from ..analysis.diagnose import diagnose
            from .panel import panel_data

            try:
                trace = read(path)  # streamed, bounded: the spans the panel draws are kept whole
            except TraceError as exc:
                raise RouteError(422, f"the trace cannot be read: {os.path.basename(str(exc))}") from None
            written = self.store.report(path).get("findings")  # the writer's, with the history's findings
            data = panel_data(trace, diagnose(trace), f"{PREFIX}/prompts/{prompt_id}",
                              written if isinstance(written, list) else None)
            return json.loads(json.dumps(data, default=str))
        data = self.store._cached("panel", path, build)
        if self.store.sibling(path, ".report.html") is None:
            data = {**data, "links": {**data["links"], "report": None}}
        return data

    async def panel(self, request):
        return _json(await self._off_loop(self._panel, request.match_info["prompt_id"]))

    async def trace(self, request):
        from aiohttp import web

        path = await self._off_loop(self.store.find, request.match_info["prompt_id"])
        return web.FileResponse(path, headers={"Content-Type": "application/json",
                                               "X-Content-Type-Options": "nosniff"})

    async def report_html(self, request):
        from aiohttp import web

        path = await self._off_loop(self.store.find, request.match_info["prompt_id"])
        html = self.store.sibling(path, ".report.html")
        if html is None:
            raise RouteError(404, "this prompt has no HTML report (STAGETRACE_REPORT off?)")
        return web.FileResponse(html, headers={"Content-Type": "text/html; charset=utf-8",
                                               "Content-Security-Policy": REPORT_CSP,
                                               "X-Content-Type-Options": "nosniff"})

    # --- anatomy ------------------------------------------------------------------------------

    def _anatomy(self, folder: str, name: str) -> dict:
        folder_paths = sys.modules.get("folder_paths")
        if folder_paths is None:
            raise RouteError(503, "ComfyUI's folder_paths is not loaded")
        path = model_path(folder_paths, folder, name)
        from ..analysis.anatomy import read_anatomy, unreadable_facts

        def build():
            try:
                anatomy, _ = read_anatomy(self.native, path)
            except self.native.SafetensorsError as exc:
                facts = unreadable_facts(path, exc)
                facts.pop("path", None)
                facts["error"] = str(facts.get("error", "")).replace(path, name)
                return {"readable": False, **facts}
            return {"readable": True, **anatomy.to_dict()}
        facts = self.store._cached("anatomy", path, build)
        return {"folder": folder, "name": name, "bytes": os.path.getsize(path), **facts}

    async def anatomy(self, request):
        if self.native is None:
            raise RouteError(503, "StageTrace's C extension is not loaded")
        return _json(await self._off_loop(self._anatomy, request.match_info["folder"], request.match_info["name"]))

    # --- GPU samples --------------------------------------------------------------------------

    def _gpu(self, since: float, until: float) -> dict:
        offset = time.time() - time.monotonic()  # the traces' clock is CLOCK_MONOTONIC (time.monotonic)
        lo, hi = (since - offset) * 1e6, (until - offset) * 1e6
        samples, reasons, truncated = [], [], False
        for mtime, _name, path in self.store.traces()[:MAX_GPU_TRACES]:
            if mtime < since:  # written after its prompt ended: it ended before the range
                break
            try:
                found, reason = self.store.gpu_samples(path)
            except (RouteError, TraceError):
                continue
            if reason and reason not in reasons:
                reasons.append(reason)
            for ts, device, metric, values in found:
                if lo <= ts <= hi:
                    samples.append({"t": round(ts / 1e6 + offset, 6), "device": int(device), "metric": metric,
                                    **{k: v for k, v in values.items() if isinstance(v, (int, float))}})
        samples.sort(key=lambda s: s["t"])
        if len(samples) > MAX_GPU_SAMPLES:
            samples, truncated = samples[:MAX_GPU_SAMPLES], True
        out = {"since": since, "until": until, "clock": "epoch seconds", "samples": samples, "truncated": truncated}
        if not samples:
            out["no_samples"] = reasons[0] if reasons else "no prompt StageTrace recorded falls in this range"
        return out

    async def gpu(self, request):
        now = time.time()
        until = _number(request, "until", now)
        since = _number(request, "since", until - 3600.0)
        if since > until:
            raise RouteError(400, "since must not be after until")
        return _json(await self._off_loop(self._gpu, since, until))

    # --- Prometheus metrics ------------------------------------------------------------------

    async def prometheus(self, request):
        """The metrics in Prometheus' text format (surfaces/metrics.py); 503 saying why when there are none.
        Written on the loop's executor: with 50 node classes the exposition takes about 13 ms, which ComfyUI's
        event loop should not wait through."""
        from aiohttp import web

        if self.metrics is None:
            raise RouteError(503, self.metrics_why or "StageTrace's metrics are off")
        body, content_type = await self._off_loop(self.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    # --- run history --------------------------------------------------------------------------

    def _history_call(self, method: str, *args):
        """A History method on the executor's thread; 503 when there is no history or its database fails
        (the message without the server's path), RouteError 404 for an unknown run."""
        from ..history.store import HistoryError, RunNotFound

        history = self.history
        if history is None:
            raise RouteError(503, self.history_why or "StageTrace's run history is off (STAGETRACE_HISTORY=0)")
        try:
            return getattr(history, method)(*args)
        except HistoryError as exc:
            message = str(exc).replace(os.path.dirname(os.path.abspath(history.path)) + os.sep, "")
            raise RouteError(503, f"the run history cannot be read: {message}") from None
        except RunNotFound as exc:
            raise RouteError(404, f"no recorded run of prompt {' or '.join(exc.prompt_ids)}") from None

    @staticmethod
    def _history_id(value: str | None, what: str) -> str:
        if not isinstance(value, str) or not SAFE_ID.match(value):
            raise RouteError(400, f"invalid {what}: letters, digits, '-' and '_' only, 1 to 80 of them")
        return value

    async def history_runs(self, request):
        limit = _number(request, "limit", DEFAULT_LIMIT)
        if limit != int(limit) or not 1 <= limit <= MAX_LIMIT:
            raise RouteError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
        workflow = request.query.get("workflow")
        if workflow is not None:
            workflow = self._history_id(workflow, "workflow id")
        runs = await self._off_loop(self._history_call, "runs", int(limit), workflow)
        return _json({"runs": runs, "limit": int(limit), "workflow": workflow})

    async def history_run(self, request):
        prompt_id = self._history_id(request.match_info["prompt_id"], "prompt id")
        run = await self._off_loop(self._history_call, "get", prompt_id)
        if run is None:
            raise RouteError(404, f"no recorded run of prompt {prompt_id}")
        return _json({**run, "links": {"prompt": f"{PREFIX}/prompts/{prompt_id}"}})

    async def history_compare(self, request):
        a = self._history_id(request.query.get("a"), "prompt id a")
        b = self._history_id(request.query.get("b"), "prompt id b")
        return _json(await self._off_loop(self._history_call, "compare", a, b))

    async def not_found(self, request):
        raise RouteError(404, f"no such StageTrace route: {request.path}")

    def table(self) -> list[tuple[str, Callable]]:
        return [
            (PREFIX + "/prompts", self.prompts),
            (PREFIX + "/prompts/{prompt_id}", self.prompt),
            (PREFIX + "/prompts/{prompt_id}/trace", self.trace),
            (PREFIX + "/prompts/{prompt_id}/report.html", self.report_html),
            (PREFIX + "/prompts/{prompt_id}/panel", self.panel),
            (PREFIX + "/anatomy/{folder}/{name:.+}", self.anatomy),
            (PREFIX + "/gpu", self.gpu),
            (PREFIX + "/metrics", self.prometheus),
            (PREFIX + "/history", self.history_runs),
            (PREFIX + "/history/compare", self.history_compare),  # before {prompt_id}, which would match it
            (PREFIX + "/history/{prompt_id}", self.history_run),
            (PREFIX + "/{rest:.*}", self.not_found),
        ]


def model_path(folder_paths, folder: str, name: str) -> str:
    """The real path of ``name`` in ComfyUI's registered model folder ``folder``; RouteError otherwise.
    Refused before any lookup: an unknown folder, absolute names, '..' or '.' segments, backslashes,
    NUL, '%', a name that is not a safetensors file. After the lookup, a path whose real path (symlinks
    followed) is not inside one of the folder's registered paths."""
    if not SAFE_FOLDER.match(folder or "") or folder in NOT_SERVED_FOLDERS:
        raise RouteError(400, "invalid model folder name")
    registered = getattr(folder_paths, "folder_names_and_paths", {})
    mapped = folder_paths.map_legacy(folder) if hasattr(folder_paths, "map_legacy") else folder
    if mapped not in registered:
        raise RouteError(404, f"ComfyUI has no model folder {folder!r}")
    bad_char = any(c in name for c in ("\\", "\x00", "%", ":")) or any(ord(c) < 32 for c in name)
    segments = name.split("/")
    if not name or name.startswith("/") or bad_char or any(s in ("", ".", "..") for s in segments):
        raise RouteError(400, "invalid model file name: a relative path inside the folder, without '..'")
    if not name.lower().endswith(MODEL_SUFFIXES):
        raise RouteError(400, "only .safetensors / .sft files have an anatomy here")
    full = folder_paths.get_full_path(mapped, name)
    if full is None:
        raise RouteError(404, f"no file {name!r} in ComfyUI's {folder} folder")
    roots = list(folder_paths.get_folder_paths(mapped))
    if not _inside(full, roots) or not os.path.isfile(os.path.realpath(full)):
        raise RouteError(403, f"{name!r} leads outside ComfyUI's {folder} folder")
    return os.path.realpath(full)


def _brief(report: dict) -> dict:
    summary = report.get("summary") if isinstance(report.get("summary"), dict) else {}
    return {"prompt_id": report.get("prompt_id"), "outcome": report.get("outcome"), "wall_s": report.get("wall_s"),
            "queue_wait_s": summary.get("queue_wait_s"),
            "stages": {s.get("stage"): s.get("seconds") for s in report.get("stages") or [] if isinstance(s, dict)},
            "stages_inclusive": report.get("stages_inclusive") if isinstance(report.get("stages_inclusive"), dict)
            else None,
            "findings": [{"title": f.get("title"), "severity": f.get("severity")}
                         for f in report.get("findings") or [] if isinstance(f, dict)],
            "url": f"{PREFIX}/prompts/{report.get('prompt_id')}"}


_REGISTERED = "_stagetrace_routes"  # attribute on the PromptServer instance


def register(output_dir: Callable[[], str], native, metrics=None, metrics_why: str | None = None, *,
             history=None, history_why: str | None = None) -> str | None:
    """Add the routes to ``server.PromptServer.instance.routes`` when ComfyUI has a server (not in an
    in-process run without one). Returns None unless registering failed; then why, for the trace's
    fallbacks. Never raises."""
    try:
        instance = prompt_server()
        if instance is None:
            return None  # no HTTP server in this process: nothing to serve
        if getattr(instance, _REGISTERED, None) is not None:
            return None
        route_table = instance.routes
        routes = Routes(TraceStore(output_dir, native), native, metrics, metrics_why, history=history,
                        history_why=history_why)
        for path, handler in routes.table():
            route_table.get(path)(guarded(handler))
        setattr(instance, _REGISTERED, routes)
        logger.info("StageTrace: HTTP routes under %s/", PREFIX)
        return None
    except Exception as exc:  # noqa: BLE001 - never break ComfyUI
        log_once("routes", "could not register its HTTP routes (%s: %s)", type(exc).__name__, exc)
        return f"no HTTP routes: {type(exc).__name__}: {exc}"


def register_unavailable(why: str) -> None:
    """StageTrace does not run (disabled, or its C extension is not built): every /stagetrace/ route answers
    503 with why, so a scraper or client sees a clear status instead of a 404. Never raises."""
    try:
        instance = prompt_server()
        if instance is None or getattr(instance, _REGISTERED, None) is not None:
            return

        async def unavailable(request):
            return _error(503, why)

        instance.routes.get(PREFIX + "/{rest:.*}")(unavailable)
        setattr(instance, _REGISTERED, why)
    except Exception as exc:  # noqa: BLE001 - never break ComfyUI
        log_once("routes", "could not register its HTTP routes (%s: %s)", type(exc).__name__, exc)
