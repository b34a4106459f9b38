"""Overhead and throughput of StageTrace's C core, baselines measured in the same run.

    python benchmarks/bench_core.py [--quick] [--check]

1. Cost added per wrapped call: a plain call, the C Wrapper (abi3 build, and a
   full-C-API vectorcall build made from the same sources into a temp dir), and
   a pure-Python wrapper doing the same job (two perf_counter_ns calls,
   try/finally, appending a record).
2. NVTX push/pop pair with no tool attached, in C (benchmarks/nvtx_pair.c
   linked with csrc/st_nvtx.c) and from Python.
3. Trace writer: events per second and bytes per event.

Figures are medians of several repeats; --check exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.pop("NVTX_INJECTION64_PATH", None)  # "no tool attached"

from comfy_nodes import _native  # noqa: E402

NODE = _native.STAGES.index("node")


def per_call_ns(fns: dict, calls: int, repeats: int, drains: dict | None = None) -> dict:
    """Median nanoseconds per call of each fn() over `repeats` loops of `calls`
    calls. The variants take turns within every repeat, so drift in machine
    speed (other load, frequency) hits them all alike."""
    samples: dict = {key: [] for key in fns}
    for fn in fns.values():  # warm up
        for _ in range(calls // 10):
            fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            samples[key].append((time.perf_counter_ns() - t0) / calls)
            if drains and key in drains:
                drains[key]()
    return {key: statistics.median(values) for key, values in samples.items()}


def python_wrapper(func, records: list):
    perf = time.perf_counter_ns

    def wrapper(*args, **kwargs):
        t0 = perf()
        try:
            return func(*args, **kwargs)
        finally:
            records.append((t0, perf(), "name"))

    return wrapper


def build_full_api(tmp: str):
    """The full-C-API (vectorcall) build of the same sources, imported as
    stagetrace_full._native; None with the reason when it cannot be built."""
    started = time.perf_counter()
    env = dict(os.environ, STAGETRACE_FULL_API="1")
    out = os.path.join(tmp, "lib")
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", out,
                           "--build-temp", os.path.join(tmp, "obj")], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"full-API build failed: {proc.stderr.strip().splitlines()[-1:]}"
    package = os.path.join(tmp, "pkgs", "stagetrace_full")
    shutil.copytree(os.path.join(out, "stagetrace"), package)
    open(os.path.join(package, "__init__.py"), "w").close()
    sys.path.insert(0, os.path.join(tmp, "pkgs"))
    module = importlib.import_module("stagetrace_full._native")
    assert module.LIMITED_API == 0
    return module, f"built in {time.perf_counter() - started:.1f} s"


def nvtx_include() -> str | None:
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True).stdout
    found = re.search(r"NVTX headers from (.+)", out)
    return found.group(1).strip() if found else None


def nvtx_pair_in_c(tmp: str, pairs: int) -> tuple[float, float] | None:
    include = nvtx_include()
    if include is None or shutil.which("gcc") is None:
        return None
    exe = os.path.join(tmp, "nvtx_pair")
    sources = [os.path.join(ROOT, "benchmarks", "nvtx_pair.c")] + [
        os.path.join(ROOT, "csrc", f) for f in ("st_nvtx.c", "st_stage.c", "st_intern.c")]
    subprocess.run(["gcc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-DST_HAVE_NVTX", f"-I{include}",
                    f"-I{os.path.join(ROOT, 'csrc')}", *sources, "-o", exe, "-ldl", "-lpthread"], check=True)
    out = subprocess.run([exe, str(pairs)], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    parser = argparse.ArgumentParser(description="StageTrace core overhead benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    calls, repeats = (20_000, 3) if args.quick else (200_000, 7)
    writer_events = 100_000 if args.quick else 1_000_000
    _native.set_buffer_capacity(1 << 21)  # no drops while measuring: every call stores its event
    targets: list[tuple[str, str, bool]] = []

    with tempfile.TemporaryDirectory() as tmp:
        full, full_note = build_full_api(tmp)
        if full is not None:
            full.set_buffer_capacity(1 << 21)

        # --- 1. per-call cost ---
        def target():
            return None

        records: list = []
        py_wrapped = python_wrapper(target, records)
        c_wrapped = _native.Wrapper(target, NODE, "bench")
        full_wrapped = full.Wrapper(target, NODE, "bench") if full is not None else None
        variants = {"base": target, "c": c_wrapped, "py": py_wrapped}
        drains = {"c": _native.drain, "py": records.clear}
        if full_wrapped is not None:
            variants["full"] = full_wrapped
            drains["full"] = full.drain
        ns = per_call_ns(variants, calls, repeats, drains)
        base, c_ns, py_ns, full_ns = ns["base"], ns["c"], ns["py"], ns.get("full")
        c_added, py_added = c_ns - base, py_ns - base
        print("1. cost added per wrapped call (trivial Python function)")
        print(f"   plain call                      {base:8.1f} ns")
        print(f"   C Wrapper, abi3 (tp_call)       {c_ns:8.1f} ns   +{c_added:6.1f} ns")
        if full_ns is not None:
            print(f"   C Wrapper, full API (vectorcall){full_ns:8.1f} ns   +{full_ns - base:6.1f} ns   ({full_note})")
        else:
            print(f"   C Wrapper, full API: skipped ({full_note})")
        print(f"   pure-Python perf_counter wrapper{py_ns:8.1f} ns   +{py_added:6.1f} ns")
        print(f"   ratio pure-Python added / C added: {py_added / c_added:5.1f}x")
        targets.append(("C wrapper adds < 150 ns per call", f"{c_added:.1f} ns", c_added < 150))
        targets.append(("C wrapper >= 3x cheaper than pure Python", f"{py_added / c_added:.1f}x",
                        py_added / c_added >= 3))
        if full_ns is not None:
            abi_cost = c_ns - full_ns
            print(f"   abi3 costs {abi_cost:+.1f} ns per call against the full API")
            targets.append(("abi3 costs <= 20 ns more than full API", f"{abi_cost:+.1f} ns", abi_cost <= 20))

        # --- 2. NVTX ---
        pairs = 1_000_000 if args.quick else 10_000_000
        in_c = nvtx_pair_in_c(tmp, pairs)
        name = _native.intern("bench")
        push, pop = _native.nvtx_push, _native.nvtx_pop

        def pair():
            push(NODE, name, 0)
            pop()

        def pair_off():
            _native.nvtx_set_enabled(False)
            pair()
            _native.nvtx_set_enabled(True)

        def pair_on():
            _native.nvtx_set_enabled(True)
            pair()
            _native.nvtx_set_enabled(True)

        nvtx_ns = per_call_ns({"on": pair_on, "off": pair_off}, calls, repeats)
        py_on, py_off = nvtx_ns["on"], nvtx_ns["off"]
        print("2. NVTX push/pop pair, no tool attached")
        if in_c is not None:
            print(f"   in C: {in_c[0]:.2f} ns a pair (emission off: {in_c[1]:.2f} ns), {pairs:,} pairs")
            targets.append(("NVTX push/pop pair < 5 ns", f"{in_c[0]:.2f} ns", in_c[0] < 5))
        else:
            print("   in C: skipped (no NVTX headers or gcc)")
        print(f"   from Python: {py_on:.1f} ns a pair, {py_off:.1f} ns with emission off "
              f"(NVTX's own share: {py_on - py_off:+.1f} ns)")

        # --- 3. writer ---
        _native.drain()
        record, intern_ = _native.record, _native.intern
        names = [intern_(f"Node{i}") for i in range(50)]
        details = [intern_(str(i)) for i in range(50)]
        for i in range(writer_events):
            record(NODE, names[i % 50], details[i % 50], 1_000_000 + i * 1000, 1_000_500 + i * 1000)
        batch = _native.drain()
        assert len(batch) == writer_events, (len(batch), _native.dropped())
        path = os.path.join(tmp, "bench.trace.json")
        t0 = time.perf_counter_ns()
        writer = _native.TraceWriter(path)
        writer.write_batch(batch, 1)
        writer.commit('{"bench":true}')
        seconds = (time.perf_counter_ns() - t0) / 1e9
        size = os.path.getsize(path)
        rate = writer_events / seconds
        print("3. trace writer")
        print(f"   {writer_events:,} events in {seconds * 1e3:.1f} ms: {rate / 1e6:.2f} M events/s, "
              f"{size / writer_events:.1f} bytes/event ({size / 1e6:.1f} MB, fsync included)")
        targets.append(("writer >= 2 M events/s", f"{rate / 1e6:.2f} M/s", rate >= 2e6))

    print("targets")
    for label, figure, ok in targets:
        print(f"   {'PASS' if ok else 'FAIL'}  {label:<42} {figure}")
    return 1 if args.check and not all(ok for _, _, ok in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
