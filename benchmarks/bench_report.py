"""How long the diagnosis report takes for a long run, in one run.

    python benchmarks/bench_report.py [--quick] [--check]

Builds the trace of a 100-step run the way StageTrace writes one with full
per-kernel detail (STAGETRACE_GPU_KERNELS): node and stage spans, 100 step
spans, a GPU track window per step and 400 kernel events per step (40 000 in
all), NVML counters at 10 Hz, then times reading it back, running every rule
and rendering text, Markdown, HTML and JSON. Median of the repeats.
Targets: well under a second in all (the report runs after every prompt); the diagnosis under 50 ms.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchutil import parse_args, print_targets  # noqa: E402  (beside this script)

sys.path.insert(0, ROOT)

from comfy_nodes.analysis.diagnose import diagnose  # noqa: E402
from comfy_nodes.record.tracefile import load  # noqa: E402
from comfy_nodes.render.report import FORMATS, render  # noqa: E402

STEPS, KERNELS_PER_STEP = 100, 400


def x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid, "args": args}


def long_run_trace() -> dict:
    step_us = 300_000.0
    t0 = 10_000_000.0
    events = [x("prompt", "prompt", 0, t0 + STEPS * step_us + 2e6, prompt_id="long", outcome="ok"),
              x("node", "CheckpointLoaderSimple", 100, 9e6, node_id="4", outcome="ok"),
              x("model_load.read", "model.safetensors", 200, 8e6, path="/m/model.safetensors", file_bytes=1_000_000_000,
                fs_type="overlay", mount="/", storage_read_bytes=0),
              x("model_load.build", "checkpoint", 8.1e6, 0.8e6, storage_read_bytes=1_000_000_000),
              x("node", "KSampler", t0, STEPS * step_us, node_id="3", outcome="ok"),
              x("sample", "euler", t0 + 1000, STEPS * step_us - 2000, steps=STEPS)]
    for i in range(STEPS):
        ts = t0 + 1000 + i * step_us
        events.append(x("sample.step", f"step {i + 1}/{STEPS}", ts, step_us - 10, step=i + 1, of=STEPS, sigma=1.0))
        events.append(x("gpu", f"GPU: step {i + 1}/{STEPS}", ts + 10, step_us - 50, tid=9, stage="sample.step",
                        busy_ms=200.0, window_ms=step_us / 1e3, kernels=KERNELS_PER_STEP, kernel_ms=210.0,
                        top_kernels=[{"name": "sm80_xmma_gemm", "count": 200, "ms": 150.0}],
                        copies={"htod": {"count": 4, "bytes": 2_000_000_000, "ms": 60.0}}, memsets=2,
                        memset_bytes=4096))
        for k in range(KERNELS_PER_STEP):
            events.append(x("gpu.kernel", "void sm80_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize", ts + k * 700, 500,
                            tid=10 + k % 2, device=0, stream=7 + k % 2))
    for i in range(int((t0 + STEPS * step_us) / 100_000)):
        events.append({"ph": "C", "name": "GPU 0 utilisation (%)", "pid": 1, "tid": 9, "ts": i * 100_000.0,
                       "args": {"gpu": 60, "memory": 30}})
    other = {"prompt_id": "long", "anatomy": [], "warnings": [], "queue_wait_s": 0.01,
             "gpu": {"collection": "cupti", "devices": [{"name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6",
                                                         "fp8_compute": False}]},
             "process": {"prompt_index": 1, "reread_files": []}}
    return {"traceEvents": events, "otherData": other}


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    repeats = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.trace.json")
        with open(path, "w") as f:
            json.dump(long_run_trace(), f, separators=(",", ":"))
        size = os.path.getsize(path)
        timings: dict[str, list[float]] = {"load": [], "diagnose": [], **{fmt: [] for fmt in FORMATS}, "total": []}
        for _ in range(repeats):
            t_start = time.perf_counter()
            trace = load(path)
            t_loaded = time.perf_counter()
            report = diagnose(trace)
            t_diagnosed = time.perf_counter()
            timings["load"].append(t_loaded - t_start)
            timings["diagnose"].append(t_diagnosed - t_loaded)
            for fmt in FORMATS:
                t = time.perf_counter()
                render(report, fmt, trace)
                timings[fmt].append(time.perf_counter() - t)
            timings["total"].append(time.perf_counter() - t_start)
    events = len(trace["traceEvents"])
    print(f"report of a {STEPS}-step run with per-kernel detail: {events:,} events, {size / 1e6:.1f} MB of trace; "
          f"median of {repeats}")
    for key, values in timings.items():
        print(f"   {key:<10} {statistics.median(values) * 1e3:8.1f} ms")
    total = statistics.median(timings["total"])
    findings = ", ".join(f.rule for f in report.findings)
    print(f"   findings: {findings}")
    diagnosis = statistics.median(timings["diagnose"])
    return print_targets([("read + diagnose + all four formats under 1 s", f"{total * 1e3:.0f} ms", total < 1.0),
                          ("diagnosis under 50 ms", f"{diagnosis * 1e3:.1f} ms", diagnosis < 0.05)], args.check)


if __name__ == "__main__":
    sys.exit(main())
