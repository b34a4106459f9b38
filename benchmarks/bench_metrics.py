"""What the Prometheus metrics cost: a prompt's observe() against the writer's own work, a scrape, memory.

    python benchmarks/bench_metrics.py [--quick] [--check] [--trace PATH ...]

1. Per prompt: ``Metrics.observe(trace, report)`` on the recorded GPU runs in tests/fixtures/scenarios/
   (20 to 30 steps each; --trace adds traces of your own), against ``diagnose(trace)``, the writer thread's
   existing work for the same prompt, the two taking turns in every repeat (median of the repeats, timed
   with time.perf_counter_ns), and against the prompt's own wall time (its prompt span). For scale, the
   rest of the writer's work for the prompt: its trace file through the C TraceWriter (the events
   pre-serialized outside the timing, written with write_raw, then commit: fsync and rename) in a temporary
   folder. Then where observe's time goes: the histogram observations and counter increments the prompt
   makes, times their unit cost measured in the same repeats.
2. A scrape with 50 configured node classes, every stage of surfaces.metrics.STAGES, every outcome, error
   class and diagnosis rule used (and 8 GPUs' gauges): ``exposition()`` in process (median and p99) and its
   payload; with aiohttp, GET /stagetrace/metrics through the real handler (``Routes.prometheus``, wrapped
   by ``guarded`` as ComfyUI registers it) on a loopback server, against a trivial handler on the same
   server; and the payload at the cap of MAX_NODE_CLASSES configured classes, all used.
3. Memory over 10 000 prompts: observe() of varied prompts (configured classes and a new third-party
   class name every prompt, which must fall to "other"; every outcome; varied findings, one from a rule
   this version does not know): tracemalloc's current size after 1 000 and 10 000 prompts against the same
   loop without observe(), and the number of series in the exposition at both points; then RSS after
   1 000, 10 000 and 20 000 prompts in a run without tracemalloc (whose own tables would count in RSS).

Exits 0 unless --check is given and a target is missed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import glob
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchutil import print_targets  # noqa: E402  (beside this script)

sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from loopback import LoopbackApp  # noqa: E402  (tests/loopback.py)

from comfy_nodes.analysis.diagnose import RULES, Finding, diagnose  # noqa: E402
from comfy_nodes.surfaces import metrics as metrics_module  # noqa: E402
from comfy_nodes.surfaces.metrics import DEFAULT_NODE_CLASSES, MAX_NODE_CLASSES, STAGES, Metrics  # noqa: E402

SCENARIOS = os.path.join(ROOT, "tests", "fixtures", "scenarios")
# 50 configured classes: ComfyUI's core classes StageTrace configures by default, and popular custom nodes.
CUSTOM_CLASSES = ("IPAdapterAdvanced", "ACN_AdvancedControlNetApply", "FaceDetailer", "UltimateSDUpscale",
                  "ImpactWildcardProcessor", "LayerUtility: ImageBlend", "Image Resize", "ReActorFaceSwap",
                  "CR Prompt Text", "Efficient Loader", "KSampler (Efficient)", "SDXLPromptStyler",
                  "ModelSamplingDiscrete", "FreeU_V2")
FIFTY_CLASSES = DEFAULT_NODE_CLASSES + CUSTOM_CLASSES
TEMPLATES = 64  # distinct synthetic prompts, cycled
GPUS = 8
NEWER_RULE = "a-rule-from-a-newer-version"  # counted as "other"


# --- Traces ---------------------------------------------------------------------------------------


def x(cat, name, ts, dur, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": float(ts), "dur": float(dur), "pid": 1, "tid": 1,
            "args": {"outcome": "ok", **args}}


def instant(cat, name, ts, **args):
    return {"ph": "i", "cat": cat, "name": name, "ts": float(ts), "pid": 1, "tid": 1, "s": "t", "args": args}


def synthetic_trace(j: int, configured: tuple[str, ...]) -> tuple[dict, list[int]]:
    """Prompt number j of the templates: five configured classes (the templates cover them all), three
    third-party classes (their names are rewritten each prompt: the indices into traceEvents come back),
    one cached node, every stage, GPU windows with copies, ComfyUI's log lines; ok, error (out of memory,
    a loader, other) or interrupted."""
    outcome = "interrupted" if j % 16 == 3 else "error" if j % 8 in (5, 6, 7) else "ok"
    steps = 20 + j % 11
    step_us = 50_000 + (j % 7) * 400_000  # 50 ms to 2.5 s a step: the buckets in between are used
    events = [x("prompt", "queue_wait", 0, 1000 + j * 7919 % 3_000_000, prompt_id=f"p{j}")]
    ts = 3_000_000
    events.append(instant("prompt", "execution_start", ts, prompt_id=f"p{j}"))
    events.append(x("node", configured[(j * 5) % len(configured)], ts, 0, node_id="0", outcome="cached"))
    third_party = []
    names = [configured[(j * 5 + k) % len(configured)] for k in range(5)] + ["?"] * 3
    for k, name in enumerate(names):
        dur = 1000 + (j * 31 + k * 997) % 900_000
        if name == "?":
            third_party.append(len(events))
        events.append(x("node", name, ts, dur, node_id=str(k + 1)))
        ts += dur
    events.append(x("model_load.read", "model.safetensors", ts, 800_000, file_bytes=2_000_000_000 + j))
    events.append(x("model_load.build", "checkpoint", ts + 800_000, 200_000))
    events.append(x("model_load.to_device", "load SDXL", ts + 1_000_000, 300_000))
    events.append(x("gpu", "GPU: load", ts + 1_000_000, 300_000, stage="model_load.to_device", busy_ms=2.0,
                    copies={"htod": {"count": 4, "bytes": 5_000_000_000, "ms": 280.0}}))
    ts += 1_300_000
    events.append(x("text_encode", "encode", ts, 40_000 + j * 100))
    ts += 50_000
    events.append(x("sample", "euler", ts, steps * step_us))
    for i in range(steps):
        events.append(x("sample.step", f"step {i + 1}/{steps}", ts + i * step_us, step_us - 10, step=i + 1,
                        of=steps, sigma=1.0))
        events.append(x("gpu", f"GPU: step {i + 1}/{steps}", ts + i * step_us, step_us - 50, stage="sample.step",
                        busy_ms=step_us / 1e3 * 0.9, kernels=400,
                        copies={"htod": {"count": 1, "bytes": 1_000_000, "ms": 0.1},
                                "dtoh": {"count": 1, "bytes": 4096, "ms": 0.01}}))
    ts += steps * step_us
    tiled = j % 4 == 0
    events.append(x("vae_decode", "decode", ts, 300_000, tiled_fallback=tiled))
    events.append(x("vae_encode", "encode", ts + 300_000, 100_000))
    events.append(x("save", "SaveImage", ts + 400_000, 20_000))
    events.append(instant("comfyui_log", "models_unloaded", ts, message=f"{1 + j % 3} models unloaded."))
    if tiled:
        events.append(instant("comfyui_log", "tiled_vae_retry", ts, message="Warning: Ran out of memory when "
                              "regular VAE decoding, retrying with tiled VAE decoding."))
    ts += 500_000
    if outcome == "error":
        kind = j % 8
        events.append(instant("prompt", "execution_error", ts, prompt_id=f"p{j}", node_id="3",
                              node_type="CheckpointLoaderSimple" if kind == 6 else "KSampler",
                              exception_type="torch.OutOfMemoryError" if kind == 5 else "RuntimeError",
                              exception_message="CUDA out of memory. Tried to allocate 2.00 GiB" if kind == 5
                              else "something else went wrong"))
    elif outcome == "interrupted":
        events.append(instant("prompt", "execution_interrupted", ts, prompt_id=f"p{j}", node_id="3",
                              node_type="KSampler"))
    events.insert(1, x("prompt", "prompt", 3_000_000, ts - 3_000_000, prompt_id=f"p{j}", outcome=outcome))
    third_party = [i + 1 for i in third_party]  # after the insert
    other = {"prompt_id": f"p{j}", "outcome": outcome, "queue_wait_s": None, "dropped_events": j % 5,
             "gpu": {"collection": "cupti", "devices": [{"name": "NVIDIA H200", "compute_capability": "9.0"}]}}
    return {"traceEvents": events, "otherData": other}, third_party


def templates(configured: tuple[str, ...]) -> list[tuple[dict, object, list[int]]]:
    """(trace, its report, the third-party node events) for TEMPLATES prompts; each report's findings are
    set to one or two rules (every rule of the catalogue and one it does not know, over the templates)."""
    rules = [rule.id for rule in RULES] + [NEWER_RULE]
    out = []
    for j in range(TEMPLATES):
        trace, third_party = synthetic_trace(j, configured)
        for k, i in enumerate(third_party):
            trace["traceEvents"][i]["name"] = f"ThirdPartyNode_{j:06d}_{k}"
        report = diagnose(trace)
        report.findings = [Finding(rule, "title", "evidence", 1.0, "cause", "fix")
                           for rule in {rules[j % len(rules)], rules[(j * 7) % len(rules)]}]
        out.append((trace, report, third_party))
    return out


def gpu_samples():
    """What nvml_latest() hands the gauges: one sample for each of GPUS devices."""
    return [(0.0, d, 87, 40, 80 << 30, 141 << 30, 61, 690_000) for d in range(GPUS)]


def new_metrics(classes: tuple[str, ...]) -> Metrics:
    return Metrics(classes, queue=lambda: (3, 1), gpu=gpu_samples, dropped_prompts=lambda: 0, version="bench")


def series(metrics: Metrics) -> int:
    """Samples in the exposition (each line that is not a # HELP or # TYPE)."""
    body, _ = metrics.exposition()
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


# --- 1. Per prompt --------------------------------------------------------------------------------


def observations(trace: dict, report) -> tuple[int, int]:
    """(histogram observations, counter increments) observe() makes for this prompt, counted as it does."""
    summary = report.summary
    hist = int(isinstance(summary.queue_wait_s, (int, float)))
    hist += 2 * int(isinstance(summary.wall_s, (int, float)) and summary.wall_s >= 0)
    hist += sum(1 for s in STAGES if s != "sample.step" and (summary.stage_s or {}).get(s))
    hist += sum(1 for ev in trace["traceEvents"] if ev.get("ph") == "X" and ev.get("cat") in ("node", "sample.step")
                and isinstance(ev.get("dur"), (int, float)))
    counters = 9 + len(report.findings) + int(summary.outcome not in ("ok", "interrupted"))
    counters += int(bool((trace.get("otherData") or {}).get("dropped_events")))
    return hist, counters


def trace_file_us(trace: dict, repeats: int) -> float:
    """Median microseconds to write the trace's file with the C writer (create, events, commit with fsync)."""
    from comfy_nodes import _native

    raw = [json.dumps(ev, separators=(",", ":")) for ev in trace["traceEvents"]]
    meta = json.dumps(trace.get("otherData") or {}, separators=(",", ":"), default=str)
    times = []
    with tempfile.TemporaryDirectory(prefix="stagetrace-bench-metrics-") as folder:
        for n in range(repeats):
            t0 = time.perf_counter_ns()
            writer = _native.TraceWriter(os.path.join(folder, f"{n}.trace.json"))
            for event in raw:
                writer.write_raw(event)
            writer.commit(meta)
            times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def per_prompt(traces: list[tuple[str, dict]], repeats: int) -> tuple[list, dict]:
    metrics = Metrics()  # the default classes, as StageTrace configures them
    reports = [diagnose(trace) for _, trace in traces]
    diag = [[] for _ in traces]
    obs = [[] for _ in traces]
    hist_child = metrics.stage.labels("sample.step")
    unit = {"labels().observe()": [], "child observe()": [], "counter inc()": []}
    block = 50
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for i, (_, trace) in enumerate(traces):
            t0 = clock()
            diagnose(trace)
            t1 = clock()
            metrics.observe(trace, reports[i])
            t2 = clock()
            diag[i].append(t1 - t0)
            obs[i].append(t2 - t1)
        t0 = clock()
        for _ in range(block):
            metrics.node.labels("KSampler").observe(2.5)
        t1 = clock()
        for _ in range(block):
            hist_child.observe(2.5)
        t2 = clock()
        for _ in range(block):
            metrics.prompts.labels("success").inc()
        t3 = clock()
        unit["labels().observe()"].append((t1 - t0) / block)
        unit["child observe()"].append((t2 - t1) / block)
        unit["counter inc()"].append((t3 - t2) / block)
    rows = []
    for i, (name, trace) in enumerate(traces):
        hist, counters = observations(trace, reports[i])
        rows.append((name, len(trace["traceEvents"]), reports[i].summary.wall_s, statistics.median(diag[i]) / 1e3,
                     statistics.median(obs[i]) / 1e3, hist, counters, trace_file_us(trace, max(5, repeats // 20))))
    return rows, {k: statistics.median(v) / 1e3 for k, v in unit.items()}


# --- 2. Scrape ------------------------------------------------------------------------------------


def feed(metrics: Metrics, pool, prompts: int) -> None:
    for n in range(prompts):
        trace, report, _ = pool[n % len(pool)]
        metrics.observe(trace, report)
    metrics.validation_error()


def time_exposition(metrics: Metrics, scrapes: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(scrapes):
        t0 = time.perf_counter_ns()
        body, _ = metrics.exposition()
        times.append((time.perf_counter_ns() - t0) / 1e6)
        size = len(body)
    return times, size


def median_p99(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]


class LoopbackServer(LoopbackApp):
    """An aiohttp server on 127.0.0.1 in a thread of its own: GET /stagetrace/metrics (the real handler, as
    ComfyUI registers it) and GET /trivial (the same wrapper around an empty answer: the baseline)."""

    def __init__(self, metrics: Metrics):
        from aiohttp import web

        from comfy_nodes.surfaces.routes import PREFIX, Routes, guarded

        async def trivial(request):
            return web.Response(body=b"", headers={"Cache-Control": "no-store"})

        self.path = PREFIX + "/metrics"
        app = web.Application()
        app.router.add_get(self.path, guarded(Routes(None, None, metrics).prometheus))
        app.router.add_get("/trivial", guarded(trivial))
        super().__init__(app)


def time_http(server: LoopbackServer, scrapes: int) -> tuple[list[float], list[float], int]:
    """Trivial and metrics GETs taking turns over one keep-alive connection: (ms each, ms each, bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    base, scrape, size = [], [], 0
    for n in range(scrapes + 20):
        for path, out in (("/trivial", base), (server.path, scrape)):
            t0 = time.perf_counter_ns()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            assert resp.status == 200, (path, resp.status, body[:200])
            if n >= 20:  # the first 20 warm the connection and the server
                out.append(elapsed)
            size = len(body)
    conn.close()
    return base, scrape, size


# --- 3. Memory ------------------------------------------------------------------------------------


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_run(metrics: Metrics | None, pool, checkpoints: tuple[int, ...]) -> dict[int, tuple[int, int, int]]:
    """Prompts through observe() (metrics None: the same loop without it), each with new third-party class
    names; at each checkpoint, (tracemalloc current bytes, RSS bytes, series or 0)."""
    out = {}
    done = 0
    for stop in checkpoints:
        for n in range(done, stop):
            trace, report, third_party = pool[n % len(pool)]
            events = trace["traceEvents"]
            for k, i in enumerate(third_party):
                events[i]["name"] = f"ThirdPartyNode_{n:06d}_{k}"  # a class never seen before, every prompt
            if metrics is not None:
                metrics.observe(trace, report)
        done = stop
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
        out[stop] = (current, rss_bytes(), series(metrics) if metrics is not None else 0)
    return out


# --- Main -----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and prompts: a smoke run")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--trace", action="append", default=[], help="a trace of your own to add to section 1")
    args = ap.parse_args()
    if metrics_module.available():
        print(f"bench_metrics: skipped: {metrics_module.available()}")
        return 0
    repeats, scrapes = (60, 40) if args.quick else (500, 200)
    checkpoints = (100, 1000) if args.quick else (1000, 10_000)
    targets = []
    started = time.perf_counter()

    # 1. Per prompt
    traces = []
    for path in sorted(glob.glob(os.path.join(SCENARIOS, "*.trace.json"))) + args.trace:
        with open(path) as f:
            traces.append((os.path.basename(path).removesuffix(".trace.json"), json.load(f)))
    rows, unit = per_prompt(traces, repeats)
    print(f"1. observe() per prompt against diagnose() (the writer's existing work for it) and the prompt's wall "
          f"time; median of {repeats}, taking turns")
    print(f"   {'trace':<16} {'events':>6} {'wall':>7} {'diagnose':>10} {'observe':>10} {'obs/diag':>8} "
          f"{'obs/wall':>9} {'trace file':>10} {'obs/(file+diag)':>15}")
    for name, events, wall, diag_us, obs_us, _hist, _counters, file_us in rows:
        print(f"   {name:<16} {events:>6} {wall:>6.1f}s {diag_us:>7.1f} us {obs_us:>7.1f} us {obs_us / diag_us:>7.0%} "
              f" {obs_us / (wall * 1e6):>8.5%} {file_us:>7.0f} us {obs_us / (file_us + diag_us):>15.0%}")
    worst_diag = max(r[4] / r[3] for r in rows)
    worst_wall = max(r[4] / (r[2] * 1e6) for r in rows)
    print(f"   unit costs (median of {repeats} blocks of 50): labels().observe() {unit['labels().observe()']:.2f} us,"
          f" a child's observe() {unit['child observe()']:.2f} us, labels().inc() {unit['counter inc()']:.2f} us")
    for name, _events, _wall, _diag_us, obs_us, hist, counters, _file_us in rows[:2]:
        h = hist * unit["child observe()"]
        c = counters * unit["counter inc()"]
        print(f"   where it goes, {name}: {hist} histogram observations {h:.0f} us ({h / obs_us:.0%}), "
              f"{counters} counter increments {c:.0f} us ({c / obs_us:.0%}), the rest {obs_us - h - c:.0f} us")
    # prometheus_client's own floor (about 0.9 us a histogram observation, 40-odd a prompt) keeps observe near
    # diagnose's cost; both run on the writer thread, after the prompt, never on ComfyUI's worker
    targets.append(("observe < the writer's diagnose (worst trace)", f"{worst_diag:.0%}", worst_diag < 1.0))
    targets.append(("observe < 0.1 % of the prompt's wall time (worst)", f"{worst_wall * 100:.5f} %",
                    worst_wall < 0.001))

    # 2. Scrape
    pool = templates(FIFTY_CLASSES)
    metrics = new_metrics(FIFTY_CLASSES)
    feed(metrics, pool, 4 * TEMPLATES)
    times, size = time_exposition(metrics, scrapes)
    med, p99 = median_p99(times)
    n_series = series(metrics)
    print(f"2. a scrape: {len(FIFTY_CLASSES)} configured node classes (all used, and 'other'), {len(STAGES)} stages, "
          f"every outcome, error class and rule, {GPUS} GPUs; {scrapes} scrapes")
    print(f"   exposition() in process               median {med:6.2f} ms   p99 {p99:6.2f} ms   "
          f"{size / 1e3:6.1f} KB   {n_series} series")
    scrape_p99, where = p99, "in process"
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        print(f"   GET {'/stagetrace/metrics'}: skipped, no aiohttp ({exc})")
    else:
        server = LoopbackServer(metrics)
        try:
            base, http_times, http_size = time_http(server, scrapes)
        finally:
            server.stop()
        b_med, b_p99 = median_p99(base)
        h_med, h_p99 = median_p99(http_times)
        print(f"   GET trivial handler (baseline)         median {b_med:6.2f} ms   p99 {b_p99:6.2f} ms")
        print(f"   GET {server.path:<34} median {h_med:6.2f} ms   p99 {h_p99:6.2f} ms   "
              f"{http_size / 1e3:6.1f} KB   {h_med / b_med:.1f}x the trivial GET, +{h_med - b_med:.2f} ms")
        scrape_p99, where = h_p99, "HTTP"
    cap = tuple(FIFTY_CLASSES + tuple(f"CustomNodeClass{i:03d}" for i in range(MAX_NODE_CLASSES - 50)))
    cap_metrics = new_metrics(cap)
    feed(cap_metrics, templates(cap), 4 * TEMPLATES)
    cap_times, cap_size = time_exposition(cap_metrics, max(20, scrapes // 4))
    cap_med, cap_p99 = median_p99(cap_times)
    print(f"   at the cap, {MAX_NODE_CLASSES} classes all used        median {cap_med:6.2f} ms   "
          f"p99 {cap_p99:6.2f} ms   {cap_size / 1e3:6.1f} KB   {series(cap_metrics)} series   "
          f"({cap_size / size:.1f}x the payload of 50)")
    targets.append((f"a scrape < 50 ms (p99, {where}, 50 classes)", f"{scrape_p99:.2f} ms", scrape_p99 < 50))
    targets.append(("payload < 1 MB (50 classes)", f"{size / 1e3:.0f} KB", size < 1e6))
    del cap_metrics

    # 3. Memory
    mem_pool = [(copy.deepcopy(t), r, tp) for t, r, tp in pool]
    rss_points = checkpoints + (2 * checkpoints[-1],)
    rss_mem = memory_run(new_metrics(FIFTY_CLASSES), mem_pool, rss_points)  # first: tracemalloc's tables not in RSS
    tracemalloc.start()
    base_mem = memory_run(None, mem_pool, checkpoints)
    obs_mem = memory_run(new_metrics(FIFTY_CLASSES), mem_pool, checkpoints)
    tracemalloc.stop()
    first, last = checkpoints
    print(f"3. memory over {last:,} prompts (a new third-party class name every prompt, every outcome, varied "
          f"findings), 50 configured classes")
    (b1, _, _), (b2, _, _) = base_mem[first], base_mem[last]
    (m1, _, s1), (m2, _, s2) = obs_mem[first], obs_mem[last]
    growth = (m2 - m1) - (b2 - b1)
    print(f"   Python (tracemalloc), {first:,} -> {last:,} prompts: the loop without observe() "
          f"{(b2 - b1) / 1024:+.1f} KB, with observe() {(m2 - m1) / 1024:+.1f} KB: observe's {growth / 1024:+.1f} KB")
    print(f"   series in the exposition: {s1} after {first:,} prompts, {s2} after {last:,}")
    r0 = rss_mem[first][1]
    print(f"   RSS (a run without tracemalloc): {r0 / 2**20:.1f} MB after {first:,} prompts, then " + ", ".join(
        f"{(rss_mem[n][1] - r0) / 1024:+.0f} KB after {n:,}" for n in rss_points[1:]))
    targets.append((f"growth {first:,} -> {last:,} prompts < 64 KB (Python)", f"{growth / 1024:+.1f} KB",
                    growth < 64 * 1024))
    targets.append((f"no new series {first:,} -> {last:,} prompts", f"{s1} -> {s2}", s1 == s2))
    print(f"   ({time.perf_counter() - started:.1f} s in all)")
    return print_targets(targets, args.check)


if __name__ == "__main__":
    sys.exit(main())
