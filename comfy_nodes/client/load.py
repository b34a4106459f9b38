"""``stagetrace load URL[,URL...] WORKFLOW.json``: how a ComfyUI service holds up under many users.

Two models of arrival:
- closed (``--users N --requests M``): N users, each sending M requests one after the other, each waiting
  for its result before the next;
- open (``--rate R --duration T``, R per minute): arrivals on a fixed schedule that do not wait for
  results, so a slow server cannot hide its latency behind fewer requests.

Every request gets fresh seeds (so ComfyUI's cache does not serve it) and goes to the next worker URL in
turn. Each worker has one WebSocket for all its prompts; the client follows every prompt to its end and
records queue wait, execution and end to end; the server's queue depth is sampled once a second. The run
is bounded in requests, in time and in requests in flight, and stops by itself. With StageTrace on the
server, each completed prompt's stage split comes from its route.

The report: success rate; p50/p95/p99/max of queue wait, execution and end to end; throughput (images a
minute); goodput under ``--slo`` (e.g. ``e2e=120s``); the queue depth over time; error classes
(authentication, validation, http 4xx / 5xx, out of memory, execution error, interrupted, timeout, connection
lost);
the figures per worker; the p50/p95 of each stage. ``--threshold 'p95(e2e)<120s'`` (repeatable) sets the
exit code.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from dataclasses import asdict, dataclass

import aiohttp

from ..core.units import format_duration
from .bench import stage_split
from .server import AUTH_EXIT, AuthRequired, ComfyServer, Credentials, ServerError
from .workflow import with_fresh_seeds

MAX_IN_FLIGHT = 2000  # requests waiting for their result at once, at most
METRICS = ("queue_wait_s", "execution_s", "e2e_s")
ALIASES = {"queue": "queue_wait_s", "queue_wait": "queue_wait_s", "execution": "execution_s", "exec": "execution_s",
           "e2e": "e2e_s", "end_to_end": "e2e_s"}


@dataclass
class Request:
    index: int
    worker: str
    user: int | None
    submitted_at: float  # seconds since the run began
    prompt_id: str | None = None
    outcome: str = "pending"  # ok, or an error class
    error: str | None = None
    queue_wait_s: float | None = None
    execution_s: float | None = None
    e2e_s: float | None = None
    stages_s: dict | None = None


class Worker:
    """One server: its WebSocket routes every prompt's messages to the request waiting for it."""

    def __init__(self, server: ComfyServer):
        self.server = server
        self.client_id = f"stagetrace-load-{uuid.uuid4().hex[:12]}"
        self.waiting: dict[str, tuple[Request, float, asyncio.Future]] = {}
        self.started: dict[str, float] = {}
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.listener: asyncio.Task | None = None
        self.stagetrace: bool | None = None  # whether the server has StageTrace's routes (its stage split)
        self.reconnecting = asyncio.Lock()
        self.last_try = 0.0
        self.queue_depth: list[tuple[float, int]] = []

    async def connect(self) -> None:
        if self.stagetrace is None:
            self.stagetrace = await self.server.has_stagetrace()
        self.ws = await self.server.connect(self.client_id)
        self.listener = asyncio.create_task(self.listen())

    async def ensure_connected(self) -> None:
        """Before a submit: when the WebSocket was lost (a worker restarted, a balancer dropped it), connect
        again, at most once a second; the prompt's end could not be seen without it."""
        if self.ws is not None and not self.ws.closed:
            return
        async with self.reconnecting:
            if (self.ws is not None and not self.ws.closed) or time.monotonic() - self.last_try < 1.0:
                return
            self.last_try = time.monotonic()
            await self.connect()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.listener is not None:
            await asyncio.gather(self.listener, return_exceptions=True)

    async def listen(self) -> None:
        """Route WebSocket messages until it closes; then every request still waiting has lost its connection."""
        try:
            async for message in self.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    event = json.loads(message.data)
                except ValueError:
                    continue
                self.on_event(event.get("type"), event.get("data") or {}, time.monotonic())
        finally:
            for _request, _t, future in list(self.waiting.values()):
                if not future.done():
                    future.set_result(("connection lost", "the WebSocket closed before the prompt ended"))

    def on_event(self, kind: str, data: dict, now: float) -> None:
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if prompt_id is None:
            return
        if kind == "execution_start":
            self.started[prompt_id] = now
            return
        if kind not in ("execution_success", "execution_error", "execution_interrupted"):
            return
        entry = self.waiting.get(prompt_id)
        if entry is None:
            return
        request, submitted, future = entry
        started = self.started.pop(prompt_id, submitted)
        request.queue_wait_s, request.execution_s, request.e2e_s = started - submitted, now - started, now - submitted
        if kind == "execution_success":
            result = ("ok", None)
        elif kind == "execution_interrupted":
            result = ("interrupted", f"interrupted in {data.get('node_type', '?')} #{data.get('node_id', '?')}")
        else:
            text = f"{data.get('exception_type', '')}: {data.get('exception_message', '')}"
            oom = "out of memory" in text.lower() or "outofmemory" in text.lower()
            result = ("out of memory" if oom else "execution error",
                      f"{data.get('node_type', '?')} #{data.get('node_id', '?')}: {text.strip()[:300]}")
        if not future.done():
            future.set_result(result)

    async def sample_queue(self, started: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                info = await self.server.get_json("/prompt")
                depth = int(((info or {}).get("exec_info") or {}).get("queue_remaining", 0))
                self.queue_depth.append((time.monotonic() - started, depth))
            except (ServerError, aiohttp.ClientError, ValueError, asyncio.TimeoutError):
                pass
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass


class LoadRun:
    def __init__(self, workers: list[Worker], prompt: dict, timeout: float, seed: int | None):
        self.workers = workers
        self.prompt = prompt
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.requests: list[Request] = []
        self.started = time.monotonic()
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.auth: AuthRequired | None = None
        self.done = self.failed = 0
        self.bar = None  # a tqdm bar: requests ended, with ok / failed / in flight

    async def one(self, user: int | None) -> Request:
        """Send one request with fresh seeds to the next worker and wait for its end (bounded)."""
        async with self.in_flight:
            worker = self.workers[len(self.requests) % len(self.workers)]
            now = time.monotonic()
            request = Request(len(self.requests) + 1, worker.server.url, user, now - self.started)
            self.requests.append(request)
            prompt, _ = with_fresh_seeds(self.prompt, self.rng)
            try:
                await worker.ensure_connected()
                answer = await worker.server.submit(prompt, worker.client_id)
            except AuthRequired as exc:
                self.auth = exc
                request.outcome, request.error = "authentication", str(exc)
                return self.ended(request)
            except ServerError as exc:
                request.outcome = "validation" if exc.status == 400 else f"http {exc.status // 100}xx"
                request.error = str(exc)
                return self.ended(request)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                request.outcome, request.error = "connection lost", f"{type(exc).__name__}: {exc}"
                return self.ended(request)
            request.prompt_id = answer.get("prompt_id")
            future = asyncio.get_running_loop().create_future()
            worker.waiting[request.prompt_id] = (request, now, future)
            try:
                request.outcome, request.error = await asyncio.wait_for(future, self.timeout)
            except asyncio.TimeoutError:
                request.outcome, request.error = "timeout", f"no end within {format_duration(self.timeout)}"
                worker.waiting.pop(request.prompt_id, None)
                try:  # the client gave up: the prompt must not run on and slow down the requests after it
                    await asyncio.wait_for(worker.server.cancel([request.prompt_id]), 5.0)
                except (ServerError, AuthRequired, aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    pass
            finally:
                worker.waiting.pop(request.prompt_id, None)
            return self.ended(request)

    def ended(self, request: Request) -> Request:
        self.done += 1
        self.failed += request.outcome != "ok"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.done - self.failed} ok, {self.failed} failed, "
                                     f"{len(self.requests) - self.done} in flight", refresh=False)
            self.bar.update(1)
        return request

    async def closed(self, users: int, requests: int, duration: float | None = None) -> None:
        """users at once, each sending requests one after the other; with a duration, no request starts after it."""
        async def user(u: int) -> None:
            for _ in range(requests):
                if self.auth is not None or (duration is not None and time.monotonic() - self.started >= duration):
                    return
                await self.one(u)

        await asyncio.gather(*(user(u) for u in range(users)))

    async def open(self, per_minute: float, duration: float) -> None:
        interval = 60.0 / per_minute
        tasks = []
        n = 0
        while self.auth is None:
            at = self.started + n * interval
            if at - self.started >= duration:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            tasks.append(asyncio.create_task(self.one(None)))
            n += 1
        await asyncio.gather(*tasks)


SPLIT_CONCURRENCY = 16
SPLIT_GRACE_S = 5.0  # for StageTrace's writer thread to publish the last prompts


async def split_by_stage(requests: list[Request], servers: dict[str, ComfyServer]) -> None:
    """The stage split of each completed prompt, from StageTrace's route: a few at a time; the last prompt of
    each server waits (bounded) for the writer thread, the others are asked once (a prompt StageTrace
    dropped under load has none)."""
    done = [r for r in requests if r.outcome == "ok" and r.prompt_id and r.worker in servers]
    last = {r.worker: r for r in done}
    gate = asyncio.Semaphore(SPLIT_CONCURRENCY)

    async def split(r: Request) -> None:
        async with gate:
            try:
                r.stages_s = await stage_split(servers[r.worker], r.prompt_id,
                                               SPLIT_GRACE_S if last.get(r.worker) is r else 0.0)
            except (ServerError, aiohttp.ClientError, asyncio.TimeoutError):
                r.stages_s = None

    for r in last.values():  # first the last ones, with the grace: then the writer is done with the rest
        await split(r)
    await asyncio.gather(*(split(r) for r in done if last.get(r.worker) is not r))


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def figures(requests: list[Request], wall_s: float, slo: tuple[str, float] | None) -> dict:
    ok = [r for r in requests if r.outcome == "ok"]
    out: dict = {"requests": len(requests), "ok": len(ok),
                 "success_rate": len(ok) / len(requests) if requests else None,
                 "images_per_minute": len(ok) / wall_s * 60 if wall_s > 0 else None,
                 "errors": {}}
    for r in requests:
        if r.outcome != "ok":
            out["errors"][r.outcome] = out["errors"].get(r.outcome, 0) + 1
    for metric in METRICS:
        values = [getattr(r, metric) for r in ok if getattr(r, metric) is not None]
        out[metric] = {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
                       "max": max(values) if values else None}
    if slo is not None:
        metric, limit = slo
        good = [r for r in ok if getattr(r, metric) is not None and getattr(r, metric) <= limit]
        out["goodput_per_minute"] = len(good) / wall_s * 60 if wall_s > 0 else None
        out["slo"] = {"metric": metric, "limit_s": limit, "met": len(good)}
    stages: dict[str, list[float]] = {}
    for r in ok:
        for stage, seconds in (r.stages_s or {}).items():
            stages.setdefault(stage, []).append(seconds)
    out["stages_s"] = {stage: {"p50": percentile(v, 50), "p95": percentile(v, 95)} for stage, v in stages.items()}
    return out


THRESHOLD = re.compile(r"^\s*(p50|p95|p99|max)\(([a-z0-9_]+)\)\s*(<=|<)\s*([0-9.]+)\s*(ms|s)?\s*$")


def parse_threshold(text: str) -> tuple[str, str, str, float]:
    """'p95(e2e)<120s' -> ("p95", "e2e_s", "<", 120.0); ValueError naming what is wrong."""
    m = THRESHOLD.match(text)
    if not m or ALIASES.get(m.group(2), m.group(2)) not in METRICS:
        raise ValueError(f"--threshold {text!r}: expected e.g. 'p95(e2e)<120s' (p50|p95|p99|max of queue, "
                         "execution or e2e)")
    limit = float(m.group(4)) / (1000 if m.group(5) == "ms" else 1)
    return m.group(1), ALIASES.get(m.group(2), m.group(2)), m.group(3), limit


def parse_slo(text: str) -> tuple[str, float]:
    """'e2e=120s' -> ("e2e_s", 120.0)."""
    name, sep, value = text.partition("=")
    metric = ALIASES.get(name.strip(), name.strip())
    m = re.match(r"^\s*([0-9.]+)\s*(ms|s)?\s*$", value)
    if not sep or metric not in METRICS or not m:
        raise ValueError(f"--slo {text!r}: expected e.g. 'e2e=120s' (queue, execution or e2e)")
    return metric, float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def check_thresholds(result: dict, thresholds: list[tuple[str, str, str, float]]) -> list[str]:
    """The thresholds the run missed, in words."""
    missed = []
    for stat, metric, op, limit in thresholds:
        value = (result.get(metric) or {}).get(stat)
        if value is None or not (value < limit if op == "<" else value <= limit):
            missed.append(f"{stat}({metric.removesuffix('_s')}) = {format_duration(value)}, not {op} "
                          f"{format_duration(limit)}")
    return missed


async def load(urls: list[str], prompt: dict, credentials: Credentials, users: int | None = None,
               requests: int | None = None, rate: float | None = None, duration: float | None = None,
               timeout: float = 600.0, slo: tuple[str, float] | None = None,
               seed: int | None = None, progress=False, prometheus: str | None = None) -> tuple[int, dict]:
    """Run the load; (exit code, everything measured). 0 done, 2 no worker could be reached, AUTH_EXIT
    authentication required, 130 interrupted (what was measured is kept, this client's prompts still on the
    servers are cancelled). A worker lost during the run counts its requests as "connection lost".
    progress: False, True (a bar on stderr) or a file to draw it on. prometheus: a Prometheus that scrapes the
    workers' StageTrace metrics, to read the server side of the run back from (client/prom.py)."""
    from .bench import progress_bar

    mode = ({"model": "open", "rate_per_min": rate, "duration_s": duration or 60.0} if rate is not None else
            {"model": "closed", "users": users or 1, "requests": requests or 1, "duration_s": duration})
    async with aiohttp.ClientSession() as session:
        workers = [Worker(ComfyServer(url, session, credentials)) for url in urls]
        out: dict = {"urls": [w.server.url for w in workers], "mode": mode}
        unreachable = []
        for w in workers:
            try:
                await w.connect()
            except AuthRequired as exc:
                out["message"], out["auth"] = str(exc), {"url": exc.url, "status": exc.status, "asked": exc.asked}
                await asyncio.gather(*(x.close() for x in workers), return_exceptions=True)
                return AUTH_EXIT, out
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                unreachable.append(f"{w.server.url}: {type(exc).__name__}: {exc}")
        if len(unreachable) == len(workers):
            out["message"] = "no server could be reached: " + "; ".join(unreachable)
            return 2, out
        out["unreachable_at_start"] = unreachable
        run = LoadRun(workers, prompt, timeout, seed)
        started_epoch = time.time()
        total = (users or 1) * (requests or 1) if rate is None else max(1, int(rate * (duration or 60.0) / 60.0))
        run.bar = progress_bar(total, progress, unit="req")
        stop = asyncio.Event()
        samplers = [asyncio.create_task(w.sample_queue(run.started, stop)) for w in workers]
        arrivals = asyncio.create_task(run.open(rate, duration or 60.0) if rate is not None else
                                       run.closed(users or 1, requests or 1, duration))
        try:
            await asyncio.shield(arrivals)
        except asyncio.CancelledError:  # Ctrl-C: stop the arrivals, keep what was measured
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):  # Python 3.11+; 3.10 has no cancel count
                task.uncancel()
            arrivals.cancel()
            await asyncio.gather(arrivals, return_exceptions=True)
            out["interrupted"] = True
            out["cancelled"] = await cancel_pending(run.requests, workers)
        finally:
            wall = time.monotonic() - run.started
            stop.set()
            if run.bar is not None:
                run.bar.close()
            await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
            await asyncio.gather(*samplers, return_exceptions=True)
        if run.auth is not None:
            out["message"] = str(run.auth)
            out["auth"] = {"url": run.auth.url, "status": run.auth.status, "asked": run.auth.asked}
            return AUTH_EXIT, out
        measured = [r for r in run.requests if r.outcome not in ("pending", "cancelled")]
        await split_by_stage(measured, {w.server.url: w.server for w in workers if w.stagetrace})
        out.update(figures(measured, wall, slo))
        out["wall_s"] = wall
        out["per_worker"] = {w.server.url: figures([r for r in measured if r.worker == w.server.url], wall, slo)
                             for w in workers} if len(workers) > 1 else {}
        out["queue_depth"] = {w.server.url: w.queue_depth for w in workers}
        out["stagetrace"] = {w.server.url: bool(w.stagetrace) for w in workers}
        out["requests_detail"] = [asdict(r) for r in run.requests]
    if prometheus:
        from .prom import server_side

        executed = sum(1 for r in measured if r.outcome in ("ok", "execution error", "out of memory", "interrupted"))
        out["server_side"] = await server_side(prometheus, started_epoch, executed)
    return (130 if out.get("interrupted") else 0), out


async def cancel_pending(requests: list[Request], workers: list[Worker]) -> list[str]:
    """Mark the requests that had not ended as cancelled, and take their prompts off the servers."""
    by_worker: dict[str, list[str]] = {}
    for r in requests:
        if r.outcome == "pending":
            r.outcome = "cancelled"
            if r.prompt_id:
                by_worker.setdefault(r.worker, []).append(r.prompt_id)
    cancelled: list[str] = []
    for w in workers:
        if by_worker.get(w.server.url):
            try:
                cancelled += await asyncio.wait_for(w.server.cancel(by_worker[w.server.url]), 10.0)
            except (ServerError, AuthRequired, aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass  # that server is gone or refuses: nothing of ours runs there that we could stop
    return cancelled


def table(result: dict) -> str:
    mode = result.get("mode") or {}
    how = (f"open model, {mode['rate_per_min']:g} arrivals a minute for {format_duration(mode['duration_s'])}"
           if mode.get("model") == "open" else
           f"closed model, {mode.get('users', '?')} users x {mode.get('requests', '?')} requests" +
           (f", none started after {format_duration(mode['duration_s'])}" if mode.get("duration_s") else ""))
    lines = [f"{result['requests']} requests in {format_duration(result['wall_s'])} ({how}): {result['ok']} ok "
             f"({(result['success_rate'] or 0) * 100:.0f} %), {result['images_per_minute'] or 0:.1f} images a minute"]
    if result.get("interrupted"):
        not_ended = sum(1 for r in result.get("requests_detail") or () if r.get("outcome") == "cancelled")
        lines.append(f"interrupted: {not_ended} request(s) had not ended and are left out; cancelled on the "
                     f"servers: {len(result.get('cancelled') or [])} prompt(s)")
    for line in result.get("unreachable_at_start") or ():
        lines.append(f"unreachable at the start: {line}")
    if result.get("slo"):
        slo = result["slo"]
        lines.append(f"goodput (e2e within {format_duration(slo['limit_s'])}): {result['goodput_per_minute']:.1f} "
                     f"a minute ({slo['met']} requests)")
    lines.append(f"{'':22}{'p50':>11}{'p95':>11}{'p99':>11}{'max':>11}")
    for metric, label in (("queue_wait_s", "queue wait"), ("execution_s", "execution"), ("e2e_s", "end to end")):
        s = result.get(metric) or {}
        lines.append(f"{label:22}" + "".join(f"{format_duration(s.get(k)):>11}" for k in ("p50", "p95", "p99", "max")))
    for stage, s in (result.get("stages_s") or {}).items():
        if stage != "prompt":
            lines.append(f"  {stage:20}{format_duration(s['p50']):>11}{format_duration(s['p95']):>11}")
    for url, depth in (result.get("queue_depth") or {}).items():
        if depth:
            t_peak, peak = max(depth, key=lambda p: p[1])
            lines.append(f"server queue{' of ' + url if len(result['queue_depth']) > 1 else ''}: peak {peak} prompts "
                         f"at {format_duration(t_peak)}, {depth[-1][1]} at the end ({len(depth)} samples)")
    without = [url for url, has in (result.get("stagetrace") or {}).items() if not has]
    if without:
        lines.append("no stage split from " + ", ".join(without) + ": no StageTrace there (install it in the "
                     "server's custom_nodes)")
    if result["errors"]:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(result["errors"].items())))
    if result.get("server_side"):
        from .prom import lines as server_lines

        lines += server_lines(result["server_side"])
    for url, w in (result.get("per_worker") or {}).items():
        e2e = w.get("e2e_s") or {}
        lines.append(f"{url}: {w['requests']} requests, {w['ok']} ok, {w['images_per_minute'] or 0:.1f} images a "
                     f"minute, end to end p50 {format_duration(e2e.get('p50'))}, p95 {format_duration(e2e.get('p95'))}"
                     + (", errors: " + ", ".join(f"{k} {v}" for k, v in sorted(w["errors"].items()))
                        if w.get("errors") else ""))
    return "\n".join(lines)
