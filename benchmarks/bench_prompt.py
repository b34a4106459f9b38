"""Wall time StageTrace adds to each prompt on ComfyUI's prompt worker, and the custom node's import time.

    python benchmarks/bench_prompt.py [--comfyui DIR] [--prompts 400] [--block 20] [--baseline REV]

Real ComfyUI (COMFYUI_DIR, --comfyui, or ../shared/comfyui's tarball unpacked into build/comfyui), in
this process, on the CPU, with a model-free workflow: EmptyLatentImage (cached after the first prompt)
feeding a sink output node whose input changes every prompt, so each prompt runs ComfyUI's whole
executor path (validation aside) and one node. The time measured is what the prompt worker spends in
``PromptExecutor.execute``: with StageTrace installed, its hooks and the prompt-end drain are in it;
the trace, the report and the summary are written by StageTrace's writer thread, which the benchmark
lets finish between blocks (so the two conditions share the CPU fairly).

Blocks of prompts alternate between StageTrace installed and uninstalled (the same process, the same
warm ComfyUI); the figure is the difference of the means with a 95 % confidence interval (Welch, over
the block means). Then the import of the custom node (what ComfyUI does on start) is timed in fresh
processes, with and without the C extension's GPU start (which now waits for the first prompt).
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def find_comfyui(given: str | None) -> str | None:
    if given or os.environ.get("COMFYUI_DIR"):
        return given or os.environ["COMFYUI_DIR"]
    tarballs = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "comfyui", "ComfyUI-*.tar.gz")))
    if not tarballs:
        return None
    target = os.path.join(ROOT, "build", "comfyui")
    if not os.path.isfile(os.path.join(target, "ComfyUI", "execution.py")):
        os.makedirs(target, exist_ok=True)
        with tarfile.open(tarballs[-1]) as tar:
            tar.extractall(target, filter="data")
    return os.path.join(target, "ComfyUI")


def sink_node():
    class BenchSink:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"latent": ("LATENT",), "i": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

        RETURN_TYPES = ()
        FUNCTION = "consume"
        OUTPUT_NODE = True
        CATEGORY = "bench"

        def consume(self, latent, i):
            return {}

    return BenchSink


SETTLE_S = 0.1  # the pause after each prompt in the settled run: longer than the writer needs for one


def t_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of a - mean of b, with the half-width of a 95 % Welch interval."""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1)) if va + vb > 0 else 1
    t = 1.96 + 2.4 / df if df < 1000 else 1.96  # close to Student's t at 0.975 for the df of interest
    return ma - mb, t * se, df


def bench_prompts(comfyui: str, prompts: int, block: int) -> None:
    from comfy_nodes.demo.harness import Harness

    workdir = tempfile.mkdtemp(prefix="stagetrace-bench-")
    harness = Harness(comfyui, workdir)
    harness.boot()
    import asyncio

    import execution
    import nodes

    from comfy_nodes.core.settings import Settings
    from comfy_nodes.hooks import install
    from comfy_nodes.record.writer import AFTER_PROMPT_GRACE_S

    nodes.NODE_CLASS_MAPPINGS["BenchSink"] = sink_node()
    os.environ["STAGETRACE_OUTPUT_DIR"] = os.path.join(workdir, "traces")
    settings = Settings.from_env()
    executor = harness.executor
    counter = iter(range(1 << 30))

    def one_prompt() -> float:
        i = next(counter)
        prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                  "2": {"class_type": "BenchSink", "inputs": {"latent": ["1", 0], "i": i}}}
        valid = asyncio.run(execution.validate_prompt(str(i), prompt, None))
        started = time.perf_counter_ns()
        executor.execute(prompt, f"bench-{i}", {"client_id": "bench"}, valid[2])
        elapsed = time.perf_counter_ns() - started
        assert executor.success
        return elapsed / 1e6

    for _ in range(20):  # warm ComfyUI
        one_prompt()
    inst = install.setup(settings)
    first = one_prompt()  # the first prompt starts CUPTI, the NVML thread and the log tap: once per process
    for _ in range(20):
        one_prompt()
    inst.recorder.flush(60)
    inst.uninstall()

    def run_blocks(settle: bool) -> tuple[list[float], list[float], list[float], list[float], float]:
        """Alternating blocks; with settle, the writer thread finishes each prompt before the next starts
        (the worker's own critical path, as when prompts are seconds of GIL-free GPU work apart)."""
        on_blocks, off_blocks, on_all, off_all, writer_s = [], [], [], [], 0.0
        blocks = max(2, prompts // (2 * block))
        for b in range(2 * blocks):
            traced = b % 2 == 0
            inst = install.setup(settings) if traced else None
            if traced:
                inst.recorder._started = True  # collectors already started once in this process
            times = []
            for _ in range(block):
                times.append(one_prompt())
                if settle:  # the same pause after every prompt in both conditions; the writer works in it
                    t0 = time.perf_counter()
                    if traced:
                        inst.recorder.flush(60)
                    waited = time.perf_counter() - t0
                    writer_s += waited
                    time.sleep(max(0.0, SETTLE_S - waited))
            if traced:
                inst.recorder.flush(120)  # the writer thread's backlog stays out of the next block
                written = inst.recorder.writer.written
                inst.uninstall()
                assert written == block, f"{written} of {block} traces written"
            (on_blocks if traced else off_blocks).append(statistics.fmean(times))
            (on_all if traced else off_all).extend(times)
        return on_blocks, off_blocks, on_all, off_all, writer_s

    for settle, title in ((True, "the prompt worker's own time (a pause after each prompt, in both conditions, "
                                 "in which the writer thread finishes)"),
                          (False, "back to back (the writer thread shares the GIL with the next prompts)")):
        on_blocks, off_blocks, on_all, off_all, writer_s = run_blocks(settle)
        diff, half, _ = t_interval(on_blocks, off_blocks)
        print(f"per-prompt wall time on the worker, model-free workflow, {title}; {len(on_all)} + {len(off_all)} "
              f"prompts in interleaved blocks of {block}:")
        print(f"  StageTrace off: mean {statistics.fmean(off_all):.3f} ms, median {statistics.median(off_all):.3f} ms")
        print(f"  StageTrace on:  mean {statistics.fmean(on_all):.3f} ms, median {statistics.median(on_all):.3f} ms")
        print(f"  added per prompt: {diff:+.3f} ms ± {half:.3f} ms (95 % CI over block means); median difference "
              f"{statistics.median(on_all) - statistics.median(off_all):+.3f} ms; target < 0.5 ms")
        if settle:
            grace = AFTER_PROMPT_GRACE_S * 1e3
            print(f"  the writer thread's time per prompt (a {grace:.0f} ms grace, then the trace, the report files, "
                  f"the summary): {writer_s / len(on_all) * 1e3:.2f} ms, off the worker")
    print(f"  first prompt after start (starts CUPTI, NVML and the log tap; once per process): {first:.1f} ms")
    traces = glob.glob(os.path.join(workdir, "traces", "*.trace.json"))
    print(f"  traces kept: {len(traces)} (retention bound: {settings.keep_traces})")


IMPORT_SCRIPT = r"""
import importlib.util, sys, time, types
# what ComfyUI has imported before it loads custom nodes, so only StageTrace's own import is timed
import asyncio, dataclasses, inspect, json, logging, pathlib, platform, re, subprocess, tempfile, threading
sys.modules.setdefault("execution", types.ModuleType("execution"))  # "inside ComfyUI", minimal
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("StageTrace", sys.argv[1] + "/__init__.py",
                                              submodule_search_locations=[sys.argv[1]])
module = importlib.util.module_from_spec(spec)
sys.modules["StageTrace"] = module
spec.loader.exec_module(module)
print((time.perf_counter() - t0) * 1e3)
"""


def import_times(folder: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT, folder], capture_output=True, text=True,
                             check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return times


def checkout_and_build(rev: str) -> str:
    """A built copy of the repository at rev (git archive; the C extension built in place)."""
    folder = tempfile.mkdtemp(prefix="stagetrace-baseline-")
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=folder, capture_output=True, check=True)
    return folder


def bench_import(runs: int, baseline: str | None) -> None:
    """Import of the custom node as ComfyUI does it (a module from the folder's __init__.py), in fresh
    processes, interleaved with the baseline revision's when one is given. The hooks find no
    PromptExecutor in this minimal 'execution' module, so this is the import and setup cost without
    ComfyUI's own modules."""
    base_folder = checkout_and_build(baseline) if baseline else None
    now, before = [], []
    for _ in range(runs):
        now += import_times(ROOT, 1)
        if base_folder:
            before += import_times(base_folder, 1)
    line = f"import of the custom node (fresh processes, {runs} runs): median {statistics.median(now):.1f} ms"
    if before:
        line += (f"; {baseline}: median {statistics.median(before):.1f} ms "
                 f"({statistics.median(before) / statistics.median(now):.2f}x)")
    print(line + ". CUPTI and NVML are not probed on import (they start with the first prompt)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui")
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--import-runs", type=int, default=15)
    parser.add_argument("--baseline", help="a git revision whose import time is measured in the same run")
    args = parser.parse_args()
    bench_import(args.import_runs, args.baseline)
    comfyui = find_comfyui(args.comfyui)
    if comfyui is None:
        print("no ComfyUI (COMFYUI_DIR, --comfyui, or ../shared/comfyui): per-prompt overhead not measured")
        return 0
    bench_prompts(comfyui, args.prompts, args.block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
