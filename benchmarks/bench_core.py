"""Overhead and throughput of StageTrace's C core, each against a baseline timed in the same run.

    python benchmarks/bench_core.py [--quick] [--check]

1. Cost added per wrapped call of a trivial Python function: the C Wrapper (the
   repository's abi3 build, and a full-C-API vectorcall build made from the same
   sources into a temporary directory) against a plain call and a pure-Python
   wrapper doing the same job.
2. One NVTX push/pop pair with no tool attached: in C (nvtx_pair.c, linked with
   csrc/st_nvtx.c) and from Python, each against the same calls with emission off.
3. Trace writer: events per second and bytes per event, for node spans and for
   events with args, against the json module; with
   STAGETRACE_BENCH_WRITER_BASELINE=<git revision>, also against the writer of
   that revision, built from its csrc/ into a temporary directory (the ratio
   old / new in the same run).
4. The per-call path against the core before it was lock-free (issue 14: GPU
   windows, interning and NVTX registration took locks), same run: the
   baseline revision (STAGETRACE_BENCH_CORE_BASELINE, default 8fe780d, the
   last one before) is built from `git archive` into a temporary directory.
   From Python, each build loaded in its own subprocess: a wrapped call
   (namer, GPU window) and a stage span with args, on 1 thread and on 8
   threads at once. In C (hotpath.c linked with each tree's csrc/): the same
   per-call work on 1 and 8 threads, with no GIL to serialise them.

Figures are medians of repeats; the variants of a section take turns within each
repeat, so drift in machine speed hits them alike. Exits 0 unless --check is
given and a target is missed. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchutil import parse_args, print_targets  # noqa: E402  (beside this script)

sys.path.insert(0, ROOT)
os.environ.pop("NVTX_INJECTION64_PATH", None)  # no tool attached: unset before NVTX first looks

from comfy_nodes import _native  # noqa: E402

NODE = _native.STAGES.index("node")
BUFFER_CAPACITY = 1 << 21  # events; a repeat's events all fit, so none is dropped while timing


# --- Timing -----------------------------------------------------------------


def paired_medians(timers: dict, repeats: int, calls: int) -> dict[str, float]:
    """Median ns per call of each timer(calls) -> ns per call, the timers taking
    turns within every repeat."""
    samples: dict[str, list[float]] = {label: [] for label in timers}
    for _ in range(repeats):
        for label, timer in timers.items():
            samples[label].append(timer(calls))
    return {label: statistics.median(values) for label, values in samples.items()}


def call_timer(fn, before=None, after=None):
    """A timer for `calls` calls of fn(); before() and after() run outside the
    timed loop (to switch recording, or to drain what the calls recorded)."""

    def timer(calls: int) -> float:
        if before:
            before()
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        ns = (time.perf_counter_ns() - t0) / calls
        if after:
            after()
        return ns

    return timer


# --- 1. Cost per wrapped call -------------------------------------------------


def python_wrapper(func, stage: int, name: str, records: list):
    """The pure-Python equivalent of the C Wrapper's recording job."""
    perf = time.perf_counter_ns

    def wrapper(*args, **kwargs):
        t0 = perf()
        try:
            return func(*args, **kwargs)
        finally:
            records.append((stage, name, t0, perf()))

    return wrapper


class BuildFailed(Exception):
    """A variant could not be built; the message says why."""


def last_line(text: str, default: str) -> str:
    return (text.strip().splitlines() or [default])[-1]


def build_full_api(tmp: str):
    """Build the full-C-API (vectorcall) variant from the repository's sources
    into tmp and load it as stagetrace_full._native. Raises BuildFailed."""
    lib = os.path.join(tmp, "full-lib")
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--force", "--build-lib", lib,
         "--build-temp", os.path.join(tmp, "full-obj")],
        cwd=ROOT, env=dict(os.environ, STAGETRACE_FULL_API="1"), capture_output=True, text=True,
    )  # fmt: skip
    built = glob.glob(os.path.join(lib, "stagetrace", "_native*.so"))
    if proc.returncode != 0 or not built:
        raise BuildFailed(last_line(proc.stderr, "no extension produced"))
    path = built[0]
    module = load_extension("stagetrace_full._native", path)  # the last component must match PyInit__native
    if module.LIMITED_API:
        raise BuildFailed(f"{path} is a limited-API build")
    return module


def bench_wrapped_call(tmp: str, calls: int, repeats: int, targets: list) -> None:
    started = time.perf_counter()
    try:
        full, full_note = build_full_api(tmp), f"built in {time.perf_counter() - started:.1f} s"
    except BuildFailed as e:
        full, full_note = None, f"build failed: {e}"

    def target():
        return None

    records: list = []
    timers = {
        "plain call": call_timer(target),
        "C Wrapper, abi3, recording off": call_timer(
            _native.Wrapper(target, NODE, "bench"),
            before=lambda: _native.set_enabled(False),
            after=lambda: _native.set_enabled(True),
        ),
        "C Wrapper, abi3 (tp_call)": call_timer(_native.Wrapper(target, NODE, "bench"), after=_native.drain),
    }
    if full is not None:
        full.set_buffer_capacity(BUFFER_CAPACITY)
        timers["C Wrapper, full API (vectorcall)"] = call_timer(full.Wrapper(target, NODE, "bench"), after=full.drain)
    timers["pure-Python wrapper"] = call_timer(python_wrapper(target, NODE, "bench", records), after=records.clear)
    ns = paired_medians(timers, repeats, calls)

    print(f"1. Cost added per wrapped call (trivial Python function; {calls:,} calls, median of {repeats})")
    print(f"   {'variant':<36} {'ns/call':>8} {'added':>8}")
    base = ns["plain call"]
    for label, value in ns.items():
        added = "" if label == "plain call" else f"{value - base:+8.1f}"
        print(f"   {label:<36} {value:8.1f} {added:>8}")
    if full is None:
        print(f"   {'C Wrapper, full API (vectorcall)':<36} skipped: {full_note}")
    else:
        print(f"   full-API variant: {full_note}")

    c_added = ns["C Wrapper, abi3 (tp_call)"] - base
    ratio = (ns["pure-Python wrapper"] - base) / c_added
    print(f"   pure-Python added / C added: {ratio:.2f}x")
    targets.append(("C Wrapper (abi3) adds < 150 ns a call", f"{c_added:.1f} ns", c_added < 150))
    targets.append(("C Wrapper >= 3x cheaper than pure Python", f"{ratio:.2f}x", ratio >= 3))
    if full is not None:
        abi3_extra = ns["C Wrapper, abi3 (tp_call)"] - ns["C Wrapper, full API (vectorcall)"]
        print(f"   abi3 - full API: {abi3_extra:+.1f} ns a call")
        targets.append(("abi3 costs <= 20 ns a call more than full API", f"{abi3_extra:+.1f} ns", abi3_extra <= 20))
    dropped = _native.dropped() + (full.dropped() if full is not None else 0)
    print(f"   events dropped while timing: {dropped}")


# --- 2. NVTX push/pop pair ------------------------------------------------------


def setup_py_function(name: str):
    """A function defined in setup.py (importing it does not run setup())."""
    spec = importlib.util.spec_from_file_location("stagetrace_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def nvtx_pair_in_c(tmp: str, include: str, pairs: int, repeats: int):
    """Build nvtx_pair.c and run it: median ns a pair with emission on, and with
    it off. Raises BuildFailed."""
    exe = os.path.join(tmp, "nvtx_pair")
    csrc = os.path.join(ROOT, "csrc")
    sources = [os.path.join(ROOT, "benchmarks", "nvtx_pair.c")]
    sources += [os.path.join(csrc, f) for f in ("st_nvtx.c", "st_stage.c", "st_intern.c")]
    proc = subprocess.run(
        ["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-D_GNU_SOURCE", "-DST_HAVE_NVTX=1",
         f"-I{csrc}", f"-I{include}", *sources, "-o", exe, "-ldl", "-lpthread"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BuildFailed(last_line(proc.stderr, "gcc failed"))
    out = subprocess.run([exe, str(pairs), str(repeats)], capture_output=True, text=True, check=True).stdout
    samples = [[float(field) for field in line.split()] for line in out.splitlines()]
    return statistics.median(on for on, _ in samples), statistics.median(off for _, off in samples)


def python_pair_timer(on: bool):
    name_id = _native.intern("bench")
    push, pop = _native.nvtx_push, _native.nvtx_pop

    def timer(pairs: int) -> float:
        _native.nvtx_set_enabled(on)
        t0 = time.perf_counter_ns()
        for _ in range(pairs):
            push(NODE, name_id, 0)
            pop()
        ns = (time.perf_counter_ns() - t0) / pairs
        _native.nvtx_set_enabled(True)
        return ns

    return timer


def print_pair(on: float, off: float, places: int) -> None:
    print(f"     {on:.{places}f} ns a pair; emission off {off:.{places}f} ns", end="; ")
    print(f"NVTX's own share {on - off:+.{places}f} ns")


def bench_nvtx(tmp: str, calls: int, repeats: int, c_pairs: int, targets: list) -> None:
    print("2. NVTX push/pop pair, no tool attached (NVTX_INJECTION64_PATH unset)")
    if not _native.NVTX_COMPILED:
        print("   skipped: the extension was built without NVTX headers")
        return
    include = setup_py_function("find_nvtx_include")()
    if include is None or shutil.which("gcc") is None:
        print("   in C: skipped: needs gcc and the NVTX headers setup.py finds")
    else:
        print(f"   NVTX headers: {include}")
        try:
            on, off = nvtx_pair_in_c(tmp, include, c_pairs, repeats)
        except BuildFailed as e:
            print(f"   in C: skipped: nvtx_pair.c does not build: {e}")
        else:
            print(f"   in C ({c_pairs:,} pairs, median of {repeats}):")
            print_pair(on, off, places=2)
            targets.append(("NVTX push/pop pair (in C) < 5 ns", f"{on:.2f} ns", on < 5))
    ns = paired_medians({"on": python_pair_timer(True), "off": python_pair_timer(False)}, repeats, calls)
    print(f"   from Python ({calls:,} pairs, median of {repeats}):")
    print_pair(ns["on"], ns["off"], places=1)


# --- 3. Trace writer ------------------------------------------------------------

WRITER_BASELINE_ENV = "STAGETRACE_BENCH_WRITER_BASELINE"


def load_extension(name: str, path: str):
    """The extension at path loaded as name (its last component must be _native)."""
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path, loader=loader))
    loader.exec_module(module)
    return module


def build_baseline(tmp: str, rev: str):
    """The extension of git revision rev (its csrc/ and setup.py), built into tmp and loaded as
    stagetrace_baseline._native. Raises BuildFailed."""
    return load_extension("stagetrace_baseline._native", build_baseline_so(tmp, rev)[0])


def build_baseline_so(tmp: str, rev: str) -> tuple[str, str]:
    """Build the extension of git revision rev (its csrc/ and setup.py) into tmp/<rev>-*: the path of the
    .so and of the revision's csrc/. Raises BuildFailed."""
    src = os.path.join(tmp, f"{rev}-src")
    os.makedirs(os.path.join(src, "comfy_nodes"), exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "csrc", "setup.py"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        raise BuildFailed(last_line(archive.stderr.decode(errors="replace"), f"git archive {rev} failed"))
    subprocess.run(["tar", "-x", "-C", src], input=archive.stdout, check=True)
    lib = os.path.join(tmp, f"{rev}-lib")
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", lib,
         "--build-temp", os.path.join(tmp, f"{rev}-obj")],
        cwd=src, capture_output=True, text=True,
    )  # fmt: skip
    built = glob.glob(os.path.join(lib, "stagetrace", "_native*.so"))
    if proc.returncode != 0 or not built:
        raise BuildFailed(last_line(proc.stderr, "no extension produced"))
    return built[0], os.path.join(src, "csrc")


def record_events(native, count: int, with_args: bool):
    """Record count node spans (50 names, 50 node ids), with the args a denoising step carries when
    with_args, and drain them as one batch. None when native cannot record args."""
    native.set_buffer_capacity(BUFFER_CAPACITY)
    native.drain()
    names = [native.intern(f"Node{i}") for i in range(50)]
    details = [native.intern(str(i)) for i in range(50)]
    record = native.record
    for i in range(count):
        t0 = 1_000_000_000 + i * 1000
        if not with_args:
            record(NODE, names[i % 50], details[i % 50], t0, t0 + 500)
            continue
        try:
            args = {"step": i, "of": count, "sigma": 14.6 / (i + 1)}
            record(NODE, names[i % 50], details[i % 50], t0, t0 + 500, args=args)
        except TypeError:  # a writer from before events had args
            native.drain()
            return None
    batch = native.drain()
    if len(batch) != count:
        raise RuntimeError(f"recorded {count} events, drained {len(batch)} ({native.dropped()} dropped)")
    return batch


def writer_of(native):
    def write(batch, path: str) -> None:
        writer = native.TraceWriter(path)
        writer.write_batch(batch, 1)
        writer.commit('{"bench":true}')

    return write


def write_with_json(batch, path: str) -> None:
    """Baseline: the same Chrome trace events as dicts, written by the json module."""
    stages, outcomes, name_of = _native.STAGES, _native.OUTCOMES, _native.name_of
    events = [
        {"ph": "X", "cat": stages[stage], "name": name_of(name_id), "ts": t0 / 1000, "dur": (t1 - t0) / 1000,
         "pid": 1, "tid": tid, "args": {"outcome": outcomes[outcome], "node_id": name_of(detail_id)}}
        for t0, t1, name_id, detail_id, tid, stage, outcome, *_kind_args_cat in batch.tolist()
    ]  # fmt: skip
    with open(path, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"bench": True}}, f)
        f.flush()
        os.fsync(f.fileno())


def timed_write(write, batch, path: str) -> tuple[float, int]:
    """Seconds write(batch, path) took and the size of the file it wrote (then removed)."""
    t0 = time.perf_counter_ns()
    write(batch, path)
    seconds = (time.perf_counter_ns() - t0) / 1e9
    size = os.path.getsize(path)
    os.remove(path)
    return seconds, size


def bench_writer(tmp: str, events: int, repeats: int, targets: list) -> None:
    path = os.path.join(tmp, "bench.trace.json")
    rev = os.environ.get(WRITER_BASELINE_ENV)
    baseline, note = None, f"set {WRITER_BASELINE_ENV}=<git revision> to time an older writer in this run"
    if rev:
        try:
            baseline, note = build_baseline(tmp, rev), f"baseline: the writer of {rev}"
        except (BuildFailed, subprocess.CalledProcessError, OSError) as e:
            note = f"baseline {rev}: build failed: {e}"
    batches = {"node spans": record_events(_native, events, False), "with args": record_events(_native, events, True)}
    writers = {f"C TraceWriter, {kind}": (writer_of(_native), batch) for kind, batch in batches.items()}
    if baseline is not None:
        for kind, with_args in (("node spans", False), ("with args", True)):
            batch = record_events(baseline, events, with_args)
            if batch is not None:
                writers[f"{rev}, {kind}"] = (writer_of(baseline), batch)
    samples: dict[str, list[tuple[float, int]]] = {label: [] for label in writers}
    for _ in range(repeats):  # the writers take turns within each repeat
        for label, (write, batch) in writers.items():
            samples[label].append(timed_write(write, batch, path))
    results = {label: (statistics.median(s for s, _ in runs), runs[0][1]) for label, runs in samples.items()}
    results["json module, node spans"] = timed_write(write_with_json, batches["node spans"], path)  # once: slow
    print(f"3. Trace writer ({events:,} events to a temp file, fsync included; C median of {repeats}, json once)")
    print(f"   {'writer':<34} {'ms':>8} {'M events/s':>11} {'bytes/event':>12} {'MB':>7}")
    for label, (seconds, size) in results.items():
        rate = events / seconds
        print(f"   {label:<34} {seconds * 1e3:8.1f} {rate / 1e6:11.2f} {size / events:12.1f} {size / 1e6:7.1f}")
    spans = results["C TraceWriter, node spans"][0]
    print(f"   C / json module: {results['json module, node spans'][0] / spans:.1f}x the events per second")
    for kind in ("node spans", "with args"):
        old = results.get(f"{rev}, {kind}")
        if old is not None:
            print(f"   C / {rev}, {kind}: {old[0] / results[f'C TraceWriter, {kind}'][0]:.2f}x the events per second")
    print(f"   {note}")
    rate = events / spans
    targets.append(("trace writer >= 5 M node spans/s", f"{rate / 1e6:.2f} M/s", rate >= 5e6))
    args_rate = events / results["C TraceWriter, with args"][0]
    targets.append(("trace writer >= 3 M events with args/s", f"{args_rate / 1e6:.2f} M/s", args_rate >= 3e6))


# --- 4. The per-call path, before and after the lock-free core ---------------------

CORE_BASELINE_ENV = "STAGETRACE_BENCH_CORE_BASELINE"
CORE_BASELINE_DEFAULT = "8fe780d"  # the last revision before the lock-free core (issue 14)

# Runs in a subprocess with one build loaded: ns per wrapped call and per stage span, on `threads` threads at once.
HOT_SCRIPT = """
import importlib.machinery, importlib.util, json, sys, threading, time
path, threads, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
NAME = "stagetrace_hot._native"
loader = importlib.machinery.ExtensionFileLoader(NAME, path)
n = importlib.util.module_from_spec(importlib.util.spec_from_file_location(NAME, path, loader=loader))
loader.exec_module(n)
NODE, STEP = n.STAGES.index("node"), n.STAGES.index("sample.step")
names = [f"node {i}" for i in range(64)]
wrapped = n.Wrapper(lambda i: None, NODE, "bench", namer=lambda i: (names[i & 63], "7"))
def wrapper_calls():
    for i in range(calls):
        wrapped(i)
def stage_spans():
    begin, end = n.stage_begin, n.stage_end
    for i in range(calls):
        end(begin(STEP, names[i & 63]), {"step": i})
n.set_buffer_capacity(1 << 17)
n.gpu_set_window_capacity(1 << 22)
n.gpu_set_windows(True)
out = {}
for label, body in (("wrapper", wrapper_calls), ("stage span", stage_spans)):
    n.gpu_reset()
    workers = [threading.Thread(target=body) for _ in range(threads)]
    t0 = time.perf_counter_ns()
    [w.start() for w in workers]
    [w.join() for w in workers]
    out[label] = (time.perf_counter_ns() - t0) / (calls * threads)
    n.drain()
print(json.dumps(out))
"""


def hot_in_python(so: str, threads: int, calls: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", HOT_SCRIPT, so, str(threads), str(calls)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.splitlines()[-1])


def build_hotpath(tmp: str, csrc: str, label: str, include: str | None) -> str:
    """hotpath.c linked with the units of csrc (NVTX compiled in when include is given). Raises BuildFailed."""
    exe = os.path.join(tmp, f"hotpath-{label}")
    units = [os.path.join(csrc, f) for f in ("st_clock.c", "st_events.c", "st_gpu.c", "st_intern.c", "st_nvtx.c",
                                             "st_stage.c", "st_stagespan.c")]  # fmt: skip
    nvtx = ["-DST_HAVE_NVTX=1", f"-I{include}"] if include else []
    proc = subprocess.run(
        ["gcc", "-std=c11", "-O2", "-D_GNU_SOURCE", *nvtx, f"-I{csrc}", os.path.join(ROOT, "benchmarks", "hotpath.c"),
         *units, "-o", exe, "-ldl", "-lpthread"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BuildFailed(last_line(proc.stderr, "gcc failed"))
    return exe


def hot_in_c(exe: str, ops: int, threads: list[int]) -> dict[int, tuple[float, float]]:
    """{threads: (wall ns a call while all threads run, CPU ns a call)}."""
    out = subprocess.run([exe, str(ops), *map(str, threads)], capture_output=True, text=True, check=True).stdout
    return {int(t): (float(wall), float(cpu)) for t, wall, cpu in (line.split() for line in out.splitlines())}


def bench_hot_path(tmp: str, calls: int, c_ops: int, repeats: int, targets: list) -> None:
    rev = os.environ.get(CORE_BASELINE_ENV, CORE_BASELINE_DEFAULT)
    print(f"4. The per-call path, lock-free core (now) against {rev} (before), same run")
    try:
        old_so, old_csrc = build_baseline_so(tmp, rev)
    except (BuildFailed, subprocess.CalledProcessError, OSError) as e:
        print(f"   skipped: baseline {rev} does not build: {e} (set {CORE_BASELINE_ENV}=<revision>)")
        return
    builds = {"before": old_so, "now": _native.__file__}
    samples = {(b, t, k): [] for b in builds for t in (1, 8) for k in ("wrapper", "stage span")}
    for _ in range(repeats):  # the builds take turns within each repeat
        for threads in (1, 8):
            for build, so in builds.items():
                for kind, ns in hot_in_python(so, threads, calls).items():
                    samples[build, threads, kind].append(ns)
    ns = {key: statistics.median(values) for key, values in samples.items()}
    print(f"   from Python ({calls:,} calls a thread, median of {repeats}; ns a call, threads share the GIL):")
    print(f"   {'':<28} {'before':>9} {'now':>9} {'before/now':>11}")
    for threads in (1, 8):
        for kind in ("wrapper", "stage span"):
            old, new = ns["before", threads, kind], ns["now", threads, kind]
            label = f"{kind}, {threads} thread{'s' if threads > 1 else ''}"
            print(f"   {label:<28} {old:9.1f} {new:9.1f} {old / new:10.2f}x")
    new_wrapper, old_wrapper = ns["now", 1, "wrapper"], ns["before", 1, "wrapper"]
    targets.append(("lock-free wrapper call no slower than before (1 thread)", f"{old_wrapper / new_wrapper:.2f}x",
                    new_wrapper <= old_wrapper * 1.05))  # fmt: skip
    if shutil.which("gcc") is None:
        print("   in C: skipped: needs gcc")
        return
    include = setup_py_function("find_nvtx_include")()
    try:
        exes = {"before": build_hotpath(tmp, old_csrc, "before", include),
                "now": build_hotpath(tmp, os.path.join(ROOT, "csrc"), "now", include)}
    except BuildFailed as e:
        print(f"   in C: skipped: hotpath.c does not build: {e}")
        return
    c_samples = {(b, t): [] for b in exes for t in (1, 8)}
    c_repeats = repeats * 3
    for _ in range(c_repeats):
        for build, exe in exes.items():
            for threads, value in hot_in_c(exe, c_ops, [1, 8]).items():
                c_samples[build, threads].append(value)
    # the least disturbed run of each (machines are shared), wall and CPU alike
    c_ns = {key: (min(w for w, _ in values), min(c for _, c in values)) for key, values in c_samples.items()}
    print(f"   in C, no GIL ({c_ops:,} calls a thread after a warm-up pass, best of {c_repeats}, "
          f"{os.cpu_count()} CPUs):")
    print("   intern + NVTX name + GPU window + NVTX range + stage span + event; wall: ns a call while every thread")
    print("   makes its own; CPU: CPU ns a call")
    print(f"   {'':<28} {'before':>9} {'now':>9} {'before/now':>11}")
    for threads in (1, 8):
        for i, what in enumerate(("wall", "CPU")):
            old, new = c_ns["before", threads][i], c_ns["now", threads][i]
            label = f"{threads} thread{'s' if threads > 1 else ''}, {what}"
            print(f"   {label:<28} {old:9.1f} {new:9.1f} {old / new:10.2f}x")
    ratio = c_ns["before", 8][1] / c_ns["now", 8][1]
    targets.append(("lock-free per-call path: less CPU a call on 8 threads (C)", f"{ratio:.2f}x", ratio > 1))


# --- Main -------------------------------------------------------------------------


def main() -> int:
    args = parse_args("StageTrace core overhead and throughput benchmarks")
    if args.quick:
        calls, repeats, c_pairs, writer_events, writer_repeats = 20_000, 3, 1_000_000, 100_000, 1
        hot_calls, hot_c_ops, hot_repeats = 10_000, 20_000, 1
    else:
        calls, repeats, c_pairs, writer_events, writer_repeats = 200_000, 7, 10_000_000, 1_000_000, 3
        hot_calls, hot_c_ops, hot_repeats = 50_000, 50_000, 3

    build = "abi3" if _native.LIMITED_API else "full API (expected abi3: rebuild with `make build`)"
    print(f"StageTrace core benchmarks: Python {platform.python_version()}, {platform.machine()}, ", end="")
    print(f"{os.cpu_count()} CPUs, extension {build}")
    print()
    _native.set_buffer_capacity(BUFFER_CAPACITY)
    targets: list[tuple[str, str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="stagetrace-bench-") as tmp:
        bench_wrapped_call(tmp, calls, repeats, targets)
        print()
        bench_nvtx(tmp, calls, repeats, c_pairs, targets)
        print()
        bench_writer(tmp, writer_events, writer_repeats, targets)
        print()
        bench_hot_path(tmp, hot_calls, hot_c_ops, hot_repeats, targets)

    print()
    return print_targets(targets, args.check)


if __name__ == "__main__":
    sys.exit(main())
