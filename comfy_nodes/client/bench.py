"""``stagetrace bench URL WORKFLOW.json``: how long a workflow takes on a ComfyUI server, run after run, with
where the time went inside each run.

Before any run, the preflight (client/preflight.py) checks the workflow against the server's /object_info
and StageTrace's anatomy route: a workflow that cannot run is not run. Each run is submitted over HTTP
with fresh seeds (the same prompt again would be served from ComfyUI's cache) and this client's id, and
followed over the WebSocket (execution_start, executing, progress, executed, execution_cached,
execution_success / _error / _interrupted): queue wait (submit -> start), execution (start -> end), end
to end, and the denoising rate from the progress messages. With StageTrace on the server, its route gives
each run's stage split (loading, text encoding, sampling, VAE decode...); without it, node times come from
the WebSocket, and the output says so. The first ``--warmup`` runs (cold: models are loaded) are reported
apart from the warm ones. Ctrl-C stops cleanly: what was measured is printed, and
this client's prompts still queued on the server are cancelled.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field

import aiohttp

from ..analysis.loaders import facts_from_anatomy_dict
from ..core.units import format_bytes, format_duration
from .preflight import combo_options, describe, input_spec, preflight
from .server import AUTH_EXIT, AuthRequired, ComfyServer, Credentials, ServerError
from .workflow import with_fresh_seeds

DONE = ("execution_success", "execution_error", "execution_interrupted")
STAGE_WAIT_S = 5.0  # how long StageTrace's writer thread may take to publish a run's summary


@dataclass
class Run:
    index: int
    cold: bool
    prompt_id: str | None = None
    outcome: str = "pending"  # ok, error, interrupted, timeout, connection lost, rejected
    error: str | None = None
    queue_wait_s: float | None = None
    execution_s: float | None = None
    e2e_s: float | None = None
    steps: int = 0
    steps_per_s: float | None = None
    nodes_s: dict[str, float] = field(default_factory=dict)  # "Class #id" -> seconds, from the WebSocket
    cached: list[str] = field(default_factory=list)
    stages_s: dict[str, float] | None = None  # from StageTrace's route
    at_s: float = 0.0  # when it was submitted, seconds since the bench began


async def follow(ws: aiohttp.ClientWebSocketResponse, prompt_id: str, submitted: float, run: Run, prompt: dict,
                 timeout: float, on_step=None) -> None:
    """Read the WebSocket until the prompt ends; fill run's timings."""
    started = current = None
    node_started = 0.0
    progress: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            run.outcome, run.error = "timeout", f"no end of the prompt within {timeout:.0f} s"
            return
        try:
            message = await ws.receive(timeout=left)
        except asyncio.TimeoutError:
            continue
        now = time.monotonic()
        if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
            run.outcome, run.error = "connection lost", "the WebSocket closed before the prompt ended"
            return
        if message.type != aiohttp.WSMsgType.TEXT:
            continue  # binary: previews
        try:
            event = json.loads(message.data)
        except ValueError:
            continue
        kind, data = event.get("type"), event.get("data") or {}
        if not isinstance(data, dict) or data.get("prompt_id") not in (prompt_id, None):
            continue
        if kind == "execution_start":
            started = now
        elif kind == "execution_cached":
            run.cached = [str(n) for n in data.get("nodes") or ()]
        elif kind == "executing" and data.get("prompt_id") == prompt_id:
            if current is not None:
                run.nodes_s[current] = run.nodes_s.get(current, 0.0) + now - node_started
            node = data.get("node")
            current = None if node is None else f"{(prompt.get(str(node)) or {}).get('class_type', '?')} #{node}"
            node_started = now
        elif kind == "progress":
            progress.append((now, int(data.get("value") or 0)))
            if on_step is not None:
                on_step(int(data.get("value") or 0), int(data.get("max") or 0))
        elif kind in DONE and data.get("prompt_id") == prompt_id:
            if current is not None:
                run.nodes_s[current] = run.nodes_s.get(current, 0.0) + now - node_started
            started = started if started is not None else submitted
            run.queue_wait_s, run.execution_s, run.e2e_s = started - submitted, now - started, now - submitted
            run.outcome = {"execution_success": "ok", "execution_error": "error"}.get(kind, "interrupted")
            if kind == "execution_error":
                run.error = (f"{data.get('node_type', '?')} #{data.get('node_id', '?')}: "
                             f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
            if len(progress) >= 2 and progress[-1][0] > progress[0][0]:
                run.steps = progress[-1][1]
                run.steps_per_s = (progress[-1][1] - progress[0][1]) / (progress[-1][0] - progress[0][0])
            return


async def stage_split(server: ComfyServer, prompt_id: str, wait_s: float = STAGE_WAIT_S) -> dict[str, float] | None:
    """The run's seconds per stage from StageTrace's route, once its writer thread has published them;
    "prompt" is the whole execution as the server measured it."""
    deadline = time.monotonic() + wait_s
    while True:
        report = await server.get_json(f"/stagetrace/prompts/{prompt_id}", missing_ok=True)
        if isinstance(report, dict):
            inclusive = report.get("stages_inclusive")  # each stage's whole time (older servers: "stages")
            stages = ({k: v for k, v in inclusive.items() if k != "prompt" and isinstance(v, (int, float))}
                      if isinstance(inclusive, dict) else
                      {s["stage"]: s["seconds"] for s in report.get("stages") or [] if isinstance(s, dict)
                       and "stage" in s})
            if isinstance(report.get("wall_s"), (int, float)):
                stages["prompt"] = report["wall_s"]  # the whole execution, seen from inside
            return stages
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.1)


def summarize_runs(runs: list[Run]) -> dict:
    """mean, median, min, max, stdev of each timing over the warm runs that succeeded; the cold runs apart."""
    def stats(values: list[float]) -> dict | None:
        if not values:
            return None
        return {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values),
                "max": max(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}

    out: dict = {}
    for group, chosen in (("warm", [r for r in runs if not r.cold]), ("cold", [r for r in runs if r.cold])):
        ok = [r for r in chosen if r.outcome == "ok"]
        out[group] = {key: stats([getattr(r, key) for r in ok if getattr(r, key) is not None])
                      for key in ("queue_wait_s", "execution_s", "e2e_s", "steps_per_s")}
        stages: dict[str, list[float]] = {}
        for r in ok:
            for stage, seconds in (r.stages_s or {}).items():
                stages.setdefault(stage, []).append(seconds)
        out[group]["stages_s"] = {stage: statistics.fmean(v) for stage, v in stages.items()}
        out[group]["failed"] = len(chosen) - len(ok)
    return out


def table(runs: list[Run], summary: dict, stagetrace: bool, gpu: dict | None = None) -> str:
    """The console table: every run, then the warm runs' figures, the cold runs apart, the stage split and the
    GPU."""
    rows = [f"{'run':>4} {'':5} {'outcome':<10}{'queue':>11}{'execution':>12}{'end to end':>12}{'steps/s':>9}"]
    for r in runs:
        kind = "cold" if r.cold else "warm"
        rows.append(f"{r.index:>4} {kind:5} {r.outcome:<10}{format_duration(r.queue_wait_s):>11}"
                    f"{format_duration(r.execution_s):>12}{format_duration(r.e2e_s):>12}"
                    f"{(f'{r.steps_per_s:.2f}' if r.steps_per_s else '-'):>9}" + (f"  {r.error}" if r.error else ""))
    warm = summary["warm"]
    for key, label in (("execution_s", "execution"), ("e2e_s", "end to end"), ("queue_wait_s", "queue wait")):
        s = warm.get(key)
        if s:
            rows.append(f"warm {label}: mean {format_duration(s['mean'])}, median {format_duration(s['median'])}, "
                        f"min {format_duration(s['min'])}, max {format_duration(s['max'])}, "
                        f"stdev {format_duration(s['stdev'])} (n={s['n']})")
    cold = (summary.get("cold") or {}).get("execution_s")
    if cold:
        first = "the first run" if cold["n"] == 1 else f"the first {cold['n']} runs"
        rows.append(f"cold ({first}, models loaded): execution mean "
                    f"{format_duration(cold['mean'])}" + (f", {cold['mean'] / warm['execution_s']['mean']:.1f}x warm"
                                                          if (warm.get("execution_s") or {}).get("mean") else ""))
    if warm.get("stages_s"):
        rows.append("where the time went (warm mean, from StageTrace on the server): " + ", ".join(
            f"{stage} {format_duration(sec)}" for stage, sec in warm["stages_s"].items() if stage != "prompt"))
    elif not stagetrace:
        rows.append("the server has no StageTrace: node times come from the WebSocket (no stage split); install "
                    "StageTrace in its custom_nodes for one")
    line = gpu_line(gpu or {})
    if line:
        rows.append(line)
    return "\n".join(rows)


class GpuWatch:
    """The server's GPU during the runs, about once a second.

    StageTrace's NVML sampler (its /stagetrace/gpu route: utilisation and memory, sampled inside the server
    while prompts run) when the server has StageTrace and a GPU; else ComfyUI's /system_stats, read here
    every ``interval`` seconds, which gives the torch device's memory only (no utilisation)."""

    def __init__(self, server: ComfyServer, started: float, started_epoch: float, interval: float = 1.0):
        self.server, self.started, self.started_epoch, self.interval = server, started, started_epoch, interval
        self.stats: list[dict] = []
        self.device: str | None = None
        self.on_cpu = False  # ComfyUI runs on the CPU: /system_stats' "vram" is the system's memory in use
        self._stop = asyncio.Event()

    async def poll(self) -> None:
        """Read /system_stats until stop(); a failed read is skipped (the runs are what matters)."""
        while not self._stop.is_set():
            try:
                stats = await self.server.get_json("/system_stats")
                t = time.monotonic() - self.started
                for dev in (stats or {}).get("devices") or ():
                    total, free = dev.get("vram_total"), dev.get("vram_free")
                    if not isinstance(total, (int, float)) or not isinstance(free, (int, float)):
                        continue
                    self.device, self.on_cpu = str(dev.get("name") or "?"), dev.get("type") == "cpu"
                    self.stats.append({"t": t, "device": str(dev.get("name") or "?"), "util_pct": None,
                                       "mem_used_bytes": float(total - free), "mem_total_bytes": float(total)})
            except (ServerError, AuthRequired, aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError):
                pass
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()

    async def result(self, stagetrace: bool) -> dict:
        """{"source", "note", "samples", "summary"}: NVML's samples when StageTrace has some, else /system_stats'."""
        note = None
        if stagetrace:
            until = time.time() + 1.0
            try:
                got = await self.server.get_json(f"/stagetrace/gpu?since={self.started_epoch:.3f}&until={until:.3f}")
                samples = nvml_samples(got.get("samples") or (), self.started_epoch)
                if samples:
                    return {"source": "stagetrace", "note": None, "samples": samples, "summary": gpu_summary(samples)}
                note = f"StageTrace on the server has no GPU samples: {got.get('no_samples') or 'none in the range'}"
            except (ServerError, AuthRequired, aiohttp.ClientError, OSError, ValueError, AttributeError) as exc:
                note = f"StageTrace's GPU route failed: {exc}"
        else:
            note = "the server has no StageTrace, so no GPU utilisation"
        if self.stats:
            what = ("the server runs on the CPU: /system_stats gives the system memory in use" if self.on_cpu else
                    f"/system_stats gives the memory of {self.device} only")
            note = (note + "; " if note else "") + what
            return {"source": "system_stats", "note": note, "samples": self.stats, "summary": gpu_summary(self.stats),
                    "on_cpu": self.on_cpu}
        return {"source": None, "note": note or "no GPU figures from the server", "samples": [], "summary": {}}


def nvml_samples(route_samples, started_epoch: float) -> list[dict]:
    """The /stagetrace/gpu route's samples (one per metric) joined per time and device."""
    joined: dict[tuple[float, int], dict] = {}
    for s in route_samples:
        if not isinstance(s, dict) or not isinstance(s.get("t"), (int, float)):
            continue
        key = (round(s["t"], 3), s.get("device", 0))
        row = joined.setdefault(key, {"t": s["t"] - started_epoch, "device": f"GPU {key[1]}", "util_pct": None,
                                      "mem_used_bytes": None, "mem_total_bytes": None})
        if str(s.get("metric", "")).startswith("utilisation") and isinstance(s.get("gpu"), (int, float)):
            row["util_pct"] = float(s["gpu"])
        elif str(s.get("metric", "")).startswith("memory used") and isinstance(s.get("used"), (int, float)):
            row["mem_used_bytes"] = float(s["used"]) * 1e6
    return sorted(joined.values(), key=lambda r: (r["t"], r["device"]))


def gpu_summary(samples: list[dict]) -> dict:
    util = [s["util_pct"] for s in samples if s.get("util_pct") is not None]
    mem = [s["mem_used_bytes"] for s in samples if s.get("mem_used_bytes") is not None]
    total = [s["mem_total_bytes"] for s in samples if s.get("mem_total_bytes") is not None]
    return {"samples": len(samples), "util_mean_pct": statistics.fmean(util) if util else None,
            "util_max_pct": max(util) if util else None, "mem_peak_bytes": max(mem) if mem else None,
            "mem_total_bytes": max(total) if total else None}


def gpu_line(gpu: dict) -> str | None:
    """The GPU during the runs, in one line for the console table (the whole story is in gpu["note"])."""
    summary = gpu.get("summary") or {}
    if not gpu.get("samples"):
        return f"GPU: {gpu.get('note')}" if gpu.get("note") else None
    n = f"{summary['samples']} samples from " + ("StageTrace's NVML sampler" if gpu["source"] == "stagetrace"
                                                else "/system_stats")
    peak = ""
    if summary.get("mem_peak_bytes") is not None:
        of = f" of {format_bytes(summary['mem_total_bytes'])}" if summary.get("mem_total_bytes") else ""
        peak = f"{format_bytes(summary['mem_peak_bytes'])}{of}"
    if summary.get("util_mean_pct") is not None:
        return (f"GPU during the runs ({n}): utilisation mean {summary['util_mean_pct']:.0f} %, max "
                f"{summary['util_max_pct']:.0f} %" + (f"; memory peak {peak}" if peak else ""))
    if gpu.get("on_cpu"):
        return f"no GPU: the server runs on the CPU; system memory in use peaked at {peak} ({n})"
    return f"GPU memory peaked at {peak} ({n}; no utilisation: {gpu.get('note')})"


async def bench(url: str, prompt: dict, runs: int, warmup: int, credentials: Credentials, timeout: float,
                progress=True, seed: int | None = None, gpu_interval: float = 1.0) -> tuple[int, dict]:
    """Run the benchmark; (exit code, everything measured). Exit codes: 0 every run succeeded, 1 some did not,
    2 the preflight found problems (nothing was run), AUTH_EXIT authentication required, 130 interrupted.
    progress: True (a bar on stderr), False, or a file to draw the bar on."""
    client_id = f"stagetrace-bench-{uuid.uuid4().hex[:12]}"
    rng = random.Random(seed)
    results: list[Run] = []
    pending: list[str] = []
    started, started_epoch = time.monotonic(), time.time()
    out: dict = {"url": url, "runs": [], "preflight": [], "started_at": started_epoch}
    stagetrace = False  # whether the server has StageTrace's routes; known after the first request
    watch = poller = None
    async with aiohttp.ClientSession() as session:
        server = ComfyServer(url, session, credentials)
        try:
            stagetrace = await server.has_stagetrace()
            object_info = await server.object_info()
            problems = preflight(prompt, object_info, await checkpoint_facts(server, prompt, object_info, stagetrace))
            out["preflight"] = [p.to_dict() for p in problems]
            if problems:
                out["message"] = describe(problems)
                return 2, out
            bar = progress_bar(runs + warmup, progress)
            watch = GpuWatch(server, started, started_epoch, gpu_interval)
            poller = asyncio.create_task(watch.poll())
            ws = await server.connect(client_id)
            try:
                for i in range(warmup + runs):
                    run = Run(index=i + 1, cold=i < warmup, at_s=time.monotonic() - started)
                    results.append(run)
                    submitted = time.monotonic()
                    try:  # fresh seeds: ComfyUI's cache would serve the same prompt without running it
                        answer = await server.submit(with_fresh_seeds(prompt, rng)[0], client_id)
                    except ServerError as exc:
                        run.outcome, run.error = "rejected", str(exc)
                        break
                    run.prompt_id = answer.get("prompt_id")
                    pending.append(run.prompt_id)

                    def on_step(value, total, run=run):
                        if bar is not None:
                            bar.set_postfix_str(f"run {run.index}, step {value}/{total}")

                    if bar is not None:
                        bar.set_postfix_str(f"run {run.index}")
                    await follow(ws, run.prompt_id, submitted, run, prompt, timeout, on_step)
                    if run.outcome in ("ok", "error", "interrupted"):
                        pending.remove(run.prompt_id)
                    if stagetrace and run.outcome == "ok":
                        run.stages_s = await stage_split(server, run.prompt_id)
                    if bar is not None:
                        bar.update(1)
                    if run.outcome == "timeout":  # the prompt must not run on after the bench gave up on it
                        try:
                            await asyncio.wait_for(server.cancel([run.prompt_id]), 10.0)
                            pending.remove(run.prompt_id)
                        except (ServerError, aiohttp.ClientError, OSError, asyncio.TimeoutError):
                            pass
                    if run.outcome in ("connection lost", "timeout"):
                        break  # the server went away, or hangs: the next runs would say the same
            finally:
                await ws.close()
                if bar is not None:
                    bar.close()
        except AuthRequired as exc:
            out["message"] = str(exc)
            out["auth"] = {"url": exc.url, "status": exc.status, "asked": exc.asked}
            return AUTH_EXIT, out
        except (aiohttp.ClientError, OSError) as exc:  # the server went away: what was measured is kept
            out["message"] = f"lost the connection to {url}: {type(exc).__name__}: {exc}"
            if results and results[-1].outcome == "pending":
                results[-1].outcome, results[-1].error = "connection lost", out["message"]
        except (asyncio.CancelledError, KeyboardInterrupt):
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):  # Python 3.11+; 3.10 has no cancel count
                task.uncancel()  # the clean-up below talks to the server
            out["interrupted"] = True
            if results and results[-1].outcome == "pending":
                results[-1].outcome = "interrupted"
            if pending:
                try:
                    out["cancelled"] = await asyncio.wait_for(server.cancel(pending), 10.0)
                except Exception as exc:  # noqa: BLE001 - reported, the measured runs are kept
                    out["cancel_failed"] = f"{type(exc).__name__}: {exc}"
        finally:
            if watch is not None:
                watch.stop()
                await asyncio.gather(poller, return_exceptions=True)
                try:
                    out["gpu"] = await asyncio.wait_for(watch.result(stagetrace), 10.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    out["gpu"] = {"source": None, "note": "the server did not answer for its GPU samples",
                                  "samples": [], "summary": {}}
            out["runs"] = [asdict(r) for r in results]
            out["summary"] = summarize_runs(results)
            out["stagetrace"] = stagetrace
            out["table"] = table(results, out["summary"], out["stagetrace"], out.get("gpu"))
    if out.get("interrupted"):
        return 130, out
    return (0 if results and all(r.outcome == "ok" for r in results) else 1), out


async def checkpoint_facts(server: ComfyServer, prompt: dict, object_info: dict, stagetrace: bool):
    """The preflight's view of the checkpoints the workflow names: what each file holds, from StageTrace's
    anatomy route (None for a file it cannot tell, and for every file when the server has no StageTrace)."""
    from urllib.parse import quote

    facts = {}
    if stagetrace:
        have = set(combo_options(input_spec(object_info.get("CheckpointLoaderSimple") or {}, "ckpt_name")) or ())
        for node in prompt.values():
            name = (node.get("inputs") or {}).get("ckpt_name") if isinstance(node, dict) else None
            if isinstance(name, str) and name in have and name not in facts:
                try:  # a model name may hold subfolders: they stay path segments
                    anatomy = await server.get_json(f"/stagetrace/anatomy/checkpoints/{quote(name, safe='/')}",
                                                    missing_ok=True)
                except ServerError:
                    anatomy = None
                facts[name] = facts_from_anatomy_dict(anatomy, name)
    return lambda folder, name: facts.get(name)


def progress_bar(total: int, progress, unit: str = "run"):
    """A tqdm bar (runs done, the current run and step as its postfix, and the ETA) on stderr or on the file
    given; None when progress is False or tqdm is missing."""
    if progress is False or progress is None:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bench runs without a bar
        return None
    return tqdm(total=total, unit=unit, leave=False, dynamic_ncols=True, mininterval=0.1,
                file=None if progress is True else progress)
