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
from ..core.units import format_duration
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
            stages = {s["stage"]: s["seconds"] for s in report.get("stages") or [] if isinstance(s, dict)
                      and "stage" in s}
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


def table(runs: list[Run], summary: dict, stagetrace: bool) -> str:
    """The console table: every run, then the warm runs' figures and the stage split."""
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
    if warm.get("stages_s"):
        rows.append("where the time went (warm mean, from StageTrace on the server): " + ", ".join(
            f"{stage} {format_duration(sec)}" for stage, sec in warm["stages_s"].items() if stage != "prompt"))
    elif not stagetrace:
        rows.append("the server has no StageTrace: node times come from the WebSocket (no stage split); install "
                    "StageTrace in its custom_nodes for one")
    return "\n".join(rows)


async def bench(url: str, prompt: dict, runs: int, warmup: int, credentials: Credentials, timeout: float,
                progress: bool = True, seed: int | None = None) -> tuple[int, dict]:
    """Run the benchmark; (exit code, everything measured). Exit codes: 0 every run succeeded, 1 some did not,
    2 the preflight found problems (nothing was run), AUTH_EXIT authentication required."""
    client_id = f"stagetrace-bench-{uuid.uuid4().hex[:12]}"
    rng = random.Random(seed)
    results: list[Run] = []
    pending: list[str] = []
    out: dict = {"url": url, "runs": [], "preflight": []}
    stagetrace = False  # whether the server has StageTrace's routes; known after the first request
    async with aiohttp.ClientSession() as session:
        server = ComfyServer(url, session, credentials)
        try:
            stagetrace = await server.has_stagetrace()
            object_info = await server.object_info()

            async def anatomy_of(folder: str, name: str) -> dict | None:
                """What the server's file holds (StageTrace's anatomy route); None when it cannot say."""
                from urllib.parse import quote

                try:  # a model name may hold subfolders: they stay path segments
                    return await server.get_json(f"/stagetrace/anatomy/{quote(folder, safe='')}/"
                                                 f"{quote(name, safe='/')}", missing_ok=True)
                except ServerError:
                    return None

            facts = {}
            if stagetrace:  # what each checkpoint the server has holds, from StageTrace's anatomy route
                have = set(combo_options(input_spec(object_info.get("CheckpointLoaderSimple") or {}, "ckpt_name"))
                           or ())
                for node in prompt.values():
                    name = (node.get("inputs") or {}).get("ckpt_name")
                    if isinstance(name, str) and name in have and name not in facts:
                        facts[name] = facts_from_anatomy_dict(await anatomy_of("checkpoints", name), name)
            problems = preflight(prompt, object_info, lambda folder, name: facts.get(name))
            out["preflight"] = [p.to_dict() for p in problems]
            if problems:
                out["message"] = describe(problems)
                return 2, out
            bar = _progress_bar(runs + warmup) if progress else None
            ws = await server.connect(client_id)
            try:
                for i in range(warmup + runs):
                    run = Run(index=i + 1, cold=i < warmup)
                    submitted = time.monotonic()
                    try:  # fresh seeds: ComfyUI's cache would serve the same prompt without running it
                        answer = await server.submit(with_fresh_seeds(prompt, rng)[0], client_id)
                    except ServerError as exc:
                        run.outcome, run.error = "rejected", str(exc)
                        results.append(run)
                        break
                    run.prompt_id = answer.get("prompt_id")
                    pending.append(run.prompt_id)

                    def on_step(value, total, run=run):
                        if bar is not None:
                            bar.set_postfix_str(f"run {run.index}, step {value}/{total}")

                    await follow(ws, run.prompt_id, submitted, run, prompt, timeout, on_step)
                    pending.remove(run.prompt_id)
                    if stagetrace and run.outcome == "ok":
                        run.stages_s = await stage_split(server, run.prompt_id)
                    results.append(run)
                    if bar is not None:
                        bar.update(1)
            finally:
                await ws.close()
                if bar is not None:
                    bar.close()
        except AuthRequired as exc:
            out["message"] = str(exc)
            out["auth"] = {"url": exc.url, "status": exc.status, "asked": exc.asked}
            return AUTH_EXIT, out
        except (asyncio.CancelledError, KeyboardInterrupt):
            out["interrupted"] = True
            if pending:
                try:
                    await asyncio.shield(server.cancel(pending))
                    out["cancelled"] = list(pending)
                except Exception as exc:  # noqa: BLE001 - reported, the measured runs are kept
                    out["cancel_failed"] = str(exc)
        finally:
            out["runs"] = [asdict(r) for r in results]
            out["summary"] = summarize_runs(results)
            out["stagetrace"] = stagetrace
            out["table"] = table(results, out["summary"], out["stagetrace"])
    if out.get("interrupted"):
        return 130, out
    return (0 if results and all(r.outcome == "ok" for r in results) else 1), out


def _progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # the bench runs without a bar
        return None
    return tqdm(total=total, unit="run", leave=False)
