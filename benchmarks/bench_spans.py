"""Cost of one stage span with its arguments: the C path StageTrace uses now against the Python path it
replaced, in the same run.

    python benchmarks/bench_spans.py [--quick] [--check]

What one ``sample.step`` span costs from the hook's begin to the bytes in the trace file:

- C path (now): ``_native.stage_begin(stage, name)`` (time, NVTX range, per-thread nesting rule),
  ``_native.stage_end(token, args)`` (the args dict serialized once by the C escaper into the thread's
  bounded arena), then drain and the C trace writer.
- Python path (before, rebuilt here as it was in comfy_nodes/stagehooks.py at 3640ca2): intern the name,
  read the clock, open the NVTX range, keep a per-thread dict of open stages, build an event dict with
  the args and append it under a lock; at the prompt's end ``json.dumps`` each event and hand it to the
  C writer's ``write_raw``.

Both record the same args (step, of, sigma) and write the same events into a file; the variants take
turns within each repeat. Prints ns per span and the ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import parse_args, print_targets  # noqa: E402

from comfy_nodes import _native  # noqa: E402
from comfy_nodes.core import stages  # noqa: E402

STEP = stages.STAGES.index("sample.step")


class PythonSpans:
    """The stage-span collector StageTrace had before the one event pipeline (the baseline)."""

    def __init__(self, native) -> None:
        self.native = native
        self.events: list[dict] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def begin(self, stage: int, name: str):
        open_stages = getattr(self._local, "open", None)
        if open_stages is None:
            open_stages = self._local.open = {}
        if open_stages.get(stage):
            return None
        open_stages[stage] = True
        n = self.native
        name_id = n.intern(name)
        t0 = n.now_ns()
        return stage, name, t0, n.nvtx_range_start(stage, name_id), 0

    def end(self, token, args: dict) -> None:
        stage, name, t0, nvtx, _ = token
        n = self.native
        t1 = n.now_ns()
        n.nvtx_range_end(nvtx)
        self._local.open[stage] = False
        event = {"ph": "X", "cat": stages.STAGES[stage], "name": name, "ts": t0 / 1e3, "dur": (t1 - t0) / 1e3,
                 "tid": threading.get_native_id(), "args": args, "t0_ns": t0, "t1_ns": t1}
        with self._lock:
            self.events.append(event)

    def write(self, writer, pid: int) -> None:
        for e in self.events:
            event = {k: v for k, v in e.items() if k not in ("t0_ns", "t1_ns")} | {"pid": pid}
            writer.write_raw(json.dumps(event, separators=(",", ":"), default=str))
        self.events = []


def python_path(spans: int, folder: str) -> float:
    collector = PythonSpans(_native)
    started = time.perf_counter_ns()
    for i in range(spans):
        token = collector.begin(STEP, f"step {i % 50 + 1}/50")
        collector.end(token, {"step": i % 50 + 1, "of": 50, "sigma": 14.6 / (i % 50 + 1)})
    writer = _native.TraceWriter(os.path.join(folder, f"py-{time.perf_counter_ns()}.trace.json"))
    collector.write(writer, 1)
    writer.commit("{}")
    return (time.perf_counter_ns() - started) / spans


def c_path(spans: int, folder: str) -> float:
    begin, end = _native.stage_begin, _native.stage_end
    started = time.perf_counter_ns()
    for i in range(spans):
        token = begin(STEP, f"step {i % 50 + 1}/50")
        end(token, {"step": i % 50 + 1, "of": 50, "sigma": 14.6 / (i % 50 + 1)})
    writer = _native.TraceWriter(os.path.join(folder, f"c-{time.perf_counter_ns()}.trace.json"))
    writer.write_batch(_native.drain(), 1, 0)
    writer.commit("{}")
    return (time.perf_counter_ns() - started) / spans


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    spans, repeats = (2_000, 3) if args.quick else (20_000, 9)
    _native.set_buffer_capacity(1 << 16)
    _native.nvtx_set_enabled(True)
    _native.drain()
    py, c = [], []
    with tempfile.TemporaryDirectory() as folder:
        python_path(200, folder), c_path(200, folder)  # warm
        for _ in range(repeats):
            py.append(python_path(spans, folder))
            c.append(c_path(spans, folder))
    py_ns, c_ns = statistics.median(py), statistics.median(c)
    print(f"one stage span with args (step, of, sigma), begin to bytes in the trace; {spans} spans, median of "
          f"{repeats} (NVTX on, no tool attached):")
    print(f"   Python path (before): {py_ns:8.0f} ns a span")
    print(f"   C path (now):         {c_ns:8.0f} ns a span   ({py_ns / c_ns:.2f}x cheaper)")
    return print_targets([("the C path is cheaper than the Python path", f"{py_ns / c_ns:.2f}x", c_ns < py_ns)],
                         args.check)


if __name__ == "__main__":
    sys.exit(main())
