"""``stagetrace demo``: the main job on a built-in example.

With a ComfyUI checkout (``--comfyui`` or $COMFYUI_DIR) it runs a real tiny
text-to-image workflow on the CPU, in a child process where ComfyUI loads
StageTrace from this folder as a custom node, then prints the summary and
the trace path. Without one it says so and profiles a built-in example: a
small workflow of Python functions timed by the same C wrapper, recorder and
trace writer, so the output shows what a real run produces.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from . import native as native_loader
from . import stages
from .diagnose import diagnose
from .native import ROOT
from .report import render
from .settings import Settings
from .tracefile import SUFFIX, load


def run(comfyui_dir: str | None, workdir: str | None) -> int:
    workdir = workdir or tempfile.mkdtemp(prefix="stagetrace-demo-")
    if native_loader._native is None:
        print(f"stagetrace demo: {native_loader.LOAD_ERROR}", file=sys.stderr)
        return 1
    if comfyui_dir:
        return _run_comfyui(os.path.abspath(comfyui_dir), workdir)
    print("stagetrace demo: no ComfyUI given (set COMFYUI_DIR or pass --comfyui DIR);")
    print("showing the built-in example instead: a tiny workflow of Python functions.\n")
    return _run_builtin(workdir)


def _run_comfyui(comfyui_dir: str, workdir: str) -> int:
    if not os.path.isfile(os.path.join(comfyui_dir, "execution.py")):
        print(f"stagetrace demo: {comfyui_dir} is not a ComfyUI checkout (no execution.py)", file=sys.stderr)
        return 2
    traces = os.path.join(workdir, "traces")
    env = dict(os.environ, STAGETRACE_OUTPUT_DIR=traces)
    nodes_dir = os.path.join(workdir, "custom_nodes")
    os.makedirs(nodes_dir, exist_ok=True)
    link = os.path.join(nodes_dir, "StageTrace")
    if not os.path.lexists(link):
        os.symlink(ROOT, link)
    print(f"stagetrace demo: running a tiny SD1.5-shaped workflow on the CPU with ComfyUI at {comfyui_dir}")
    cmd = [sys.executable, "-m", "comfy_nodes.harness", "--comfyui", comfyui_dir, "--workdir", workdir,
           "--scenario", "basic", "--custom-node-dir", nodes_dir]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        print(f"stagetrace demo: the ComfyUI run failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("StageTrace: "):  # what StageTrace told ComfyUI's log
            print(line)
    found = sorted(n for n in os.listdir(traces) if n.endswith(SUFFIX)) if os.path.isdir(traces) else []
    for name in found:
        path = os.path.join(traces, name)
        report = diagnose(load(path))
        report.summary.trace_path = path
        print(render(report, "text"))
        page = path[: -len(SUFFIX)] + ".report.html"
        if os.path.exists(page):
            print(f"  report: {page}")
    print(f"(whole run, ComfyUI start-up included: {elapsed:.1f} s)")
    print("Open the trace in https://ui.perfetto.dev, the report in a browser, or: python -m comfy_nodes report TRACE")
    return 0 if found else 1


# --- the built-in example ---------------------------------------------------------


def _busy(seconds: float) -> int:
    """Real CPU work for about ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += sum(i * i for i in range(200))
    return n


_EXAMPLE = {  # node id -> (class_type, seconds of work)
    "4": ("CheckpointLoaderSimple", 0.12),
    "6": ("CLIPTextEncode", 0.03),
    "7": ("CLIPTextEncode", 0.03),
    "5": ("EmptyLatentImage", 0.005),
    "3": ("KSampler", 0.30),
    "8": ("VAEDecode", 0.06),
    "9": ("SaveImage", 0.02),
}


def _run_builtin(workdir: str) -> int:
    from .recorder import Recorder

    native = native_loader.require()
    traces = os.path.join(workdir, "traces")
    settings = Settings.from_env()
    recorder = Recorder(native, settings, lambda: traces)
    recorder.hooks.append("built-in example (no ComfyUI)")
    prompt = {node_id: {"class_type": cls, "inputs": {}} for node_id, (cls, _) in _EXAMPLE.items()}

    def run_node(node_id: str) -> tuple:
        _busy(_EXAMPLE[node_id][1])
        return ("SUCCESS", None, None)

    def namer(node_id):
        return _EXAMPLE[node_id][0], node_id

    node = native.Wrapper(run_node, stages.NODE, "node", namer=namer)
    prompt_id = "builtin-example"
    recorder.prompt_begin(prompt, prompt_id, {})
    t0 = native.now_ns()
    recorder.on_message("execution_start", {"prompt_id": prompt_id})
    recorder.on_message("execution_cached", {"nodes": [], "prompt_id": prompt_id})
    for node_id in _EXAMPLE:
        node(node_id)
    recorder.on_message("execution_success", {"prompt_id": prompt_id})
    native.record(stages.PROMPT, native.intern("prompt"), native.intern(prompt_id), t0, native.now_ns())
    path = recorder.prompt_end()
    if not settings.summary:
        print(f"trace: {path}")
    print("\nOpen the trace in https://ui.perfetto.dev, or: python -m comfy_nodes report " + path)
    return 0
