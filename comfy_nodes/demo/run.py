"""``stagetrace demo``: the main job on a built-in example.

Inside a ComfyUI it runs a real tiny text-to-image workflow on the CPU, in a child process where
ComfyUI loads StageTrace as a custom node, then prints the summary, the findings and the trace path.
The ComfyUI is ``--comfyui DIR``, else ``$COMFYUI_DIR``, else the one StageTrace sits in: the first
folder above the package holding ``main.py``, ``execution.py`` and ``comfy/`` (a clone in
``ComfyUI/custom_nodes/StageTrace``, as the README installs it).

Outside a ComfyUI it says so in one line and shows the user's case in miniature: a diffusion-model-only
Qwen-Image file (written here, no torch needed), what ``stagetrace inspect`` says about it with the
loaders to use instead, and the report of that file loaded by CheckpointLoaderSimple for a workflow
that needs its CLIP and VAE, recorded through StageTrace's recorder, C spans and trace writer.

Every command the demo prints works from the folder it was run in.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import types

from ..core import native as native_loader

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # comfy_nodes/, or stagetrace/
TOP = __package__.split(".")[0]  # "comfy_nodes" in a clone, "stagetrace" when installed
HARNESS = f"{TOP}.demo.harness"
TRACE_SUFFIX = ".trace.json"


def run(comfyui_dir: str | None = None, workdir: str | None = None, serve: bool = False,
        port: int | None = None) -> int:
    """The demo: a tiny workflow profiled in a ComfyUI (or the miniature outside one); with serve, that ComfyUI
    as a server for ``stagetrace bench`` and ``load`` (demo/serve.py)."""
    if native_loader._native is None:
        print(f"stagetrace demo: {native_loader.LOAD_ERROR}", file=sys.stderr)
        return 1
    from ..core.settings import Settings

    settings = Settings.from_env(problems := [])
    for problem in problems:
        print(f"stagetrace demo: {problem}", file=sys.stderr)
    if settings.disabled:
        print("stagetrace demo: StageTrace is disabled here (STAGETRACE_DISABLE is set), so there is nothing to "
              "profile; unset it to run the demo", file=sys.stderr)
        return 2
    comfyui_dir = comfyui_dir or os.environ.get("COMFYUI_DIR") or find_comfyui()
    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="stagetrace-demo-"))
    traces = settings.output_dir or os.path.join(workdir, "traces")  # STAGETRACE_OUTPUT_DIR when set
    if comfyui_dir:
        comfyui_dir = os.path.abspath(comfyui_dir)
        if not is_comfyui(comfyui_dir):
            print(f"stagetrace demo: {comfyui_dir} is not a ComfyUI folder (main.py, execution.py and comfy/)",
                  file=sys.stderr)
            return 2
        if serve:
            from .serve import serve as serve_demo

            return serve_demo(comfyui_dir, workdir, port)
        return _run_comfyui(comfyui_dir, workdir, traces)
    if serve:
        print("stagetrace demo --serve: no ComfyUI found to serve the example (--comfyui DIR or COMFYUI_DIR names "
              "one)", file=sys.stderr)
        return 2
    print("stagetrace demo: no ComfyUI found (StageTrace is not inside ComfyUI/custom_nodes; --comfyui DIR or "
          "COMFYUI_DIR names one), so here is the user's case in miniature instead.")
    return _run_miniature(workdir, traces)


# --- Where things are -----------------------------------------------------------------------------


def is_comfyui(folder: str) -> bool:
    return (os.path.isfile(os.path.join(folder, "main.py")) and os.path.isfile(os.path.join(folder, "execution.py"))
            and os.path.isdir(os.path.join(folder, "comfy")))


def find_comfyui() -> str | None:
    """The first ComfyUI folder above the package, or None. A clone reached through a symbolic link
    (custom_nodes/StageTrace -> the clone) is walked up along the path the shell took to it ($PWD)."""
    for start in _package_paths():
        folder = start
        while True:
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
            if is_comfyui(folder):
                return folder
    return None


def _package_paths() -> list[str]:
    paths = [PACKAGE_DIR]
    shell_cwd, real_cwd = os.environ.get("PWD"), os.path.realpath(os.getcwd())
    real_package = os.path.realpath(PACKAGE_DIR)
    if shell_cwd and os.path.isabs(shell_cwd) and _same(shell_cwd, real_cwd):
        inside = os.path.relpath(real_package, real_cwd)
        if inside != os.pardir and not inside.startswith(os.pardir + os.sep):
            paths.insert(0, os.path.normpath(os.path.join(shell_cwd, inside)))
    return paths


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def command() -> str:
    """This command line as it runs again from the current folder: the ``stagetrace`` script, or
    ``python -m`` with this interpreter (from the clone's root, where ``comfy_nodes`` imports)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) in ("stagetrace", "stagetrace.exe"):
        return "stagetrace" if _on_path("stagetrace", argv0) else shlex.quote(os.path.abspath(argv0))
    name = os.path.basename(sys.executable)
    python = name if _on_path(name, sys.executable) else shlex.quote(sys.executable)
    if TOP != "comfy_nodes":
        return f"{python} -m {TOP}"
    root = os.path.dirname(PACKAGE_DIR)
    if _same(os.getcwd(), root):
        return f"{python} -m {TOP}"
    return f"cd {shlex.quote(root)} && {python} -m {TOP}"


def _on_path(name: str, path: str) -> bool:
    """Whether typing ``name`` runs exactly ``path`` (not another file it links to)."""
    found = shutil.which(name)
    return found is not None and os.path.abspath(found) == os.path.abspath(path)


def _print_commands(*lines: str) -> None:
    for line in lines:
        print(f"  $ {line}")


# --- In a ComfyUI -----------------------------------------------------------------------------------


def _custom_nodes(workdir: str) -> str:
    """A custom_nodes folder holding StageTrace alone: the clone's root (its ``__init__.py`` is the custom
    node) linked in, or, for the installed package, a two-line custom node that imports it."""
    folder = os.path.join(workdir, "custom_nodes")
    node = os.path.join(folder, "StageTrace")
    clone = os.path.dirname(PACKAGE_DIR)
    os.makedirs(folder, exist_ok=True)
    if os.path.lexists(node):
        return folder
    if TOP == "comfy_nodes" and os.path.isfile(os.path.join(clone, "__init__.py")):
        os.symlink(clone, node)
        return folder
    os.makedirs(node)
    with open(os.path.join(node, "__init__.py"), "w") as f:
        f.write(f'"""StageTrace as a ComfyUI custom node: the installed package\'s hooks."""\n\n'
                f"from {TOP}.hooks import setup\n\nNODE_CLASS_MAPPINGS = {{}}\nSTAGETRACE = setup()\n")
    return folder


def _run_comfyui(comfyui_dir: str, workdir: str, traces: str) -> int:
    from ..analysis.diagnose import diagnose
    from ..record.tracefile import read
    from ..render.report import render

    env = dict(os.environ, STAGETRACE_OUTPUT_DIR=traces)
    if TOP == "comfy_nodes":  # the clone's package imports from its root
        root = os.path.dirname(PACKAGE_DIR)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    print(f"stagetrace demo: running a tiny SD1.5-shaped workflow on the CPU in the ComfyUI at {comfyui_dir}")
    cmd = [sys.executable, "-m", HARNESS, "--comfyui", comfyui_dir, "--workdir", workdir,
           "--custom-node-dir", _custom_nodes(workdir)]
    started = time.perf_counter()
    before = set(os.listdir(traces)) if os.path.isdir(traces) else set()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        print(f"stagetrace demo: the ComfyUI run failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("StageTrace: "):  # what StageTrace told ComfyUI's log
            print(line)
    found = sorted(n for n in os.listdir(traces) if n.endswith(TRACE_SUFFIX) and n not in before) \
        if os.path.isdir(traces) else []  # only this run's: a folder of the user's may hold others
    if not found:
        print(f"stagetrace demo: ComfyUI ran, but StageTrace wrote no trace in {traces}", file=sys.stderr)
        return 1
    print(f"(the whole run, ComfyUI's start-up included: {elapsed:.1f} s)\n")
    for name in found:
        path = os.path.join(traces, name)
        report = diagnose(read(path))
        report.summary.trace_path = path
        print(render(report, "text"))
    _print_next_steps(os.path.join(traces, found[-1]))
    return 0


def _print_next_steps(trace: str) -> None:
    page = trace[: -len(TRACE_SUFFIX)] + ".report.html"
    print("\nOpen the trace in https://ui.perfetto.dev" + (f", the report page {page} in a browser" if
                                                           os.path.exists(page) else "") + "; or, from here:")
    _print_commands(f"{command()} report {shlex.quote(trace)}")


# --- Outside a ComfyUI: the user's case in miniature ----------------------------------------------

# The workflow that cannot run: the file in CheckpointLoaderSimple, whose CLIP and VAE outputs feed
# CLIPTextEncode and VAEDecode.
_NODES = {  # node id -> (class_type, inputs)
    "4": ("CheckpointLoaderSimple", {"ckpt_name": None}),
    "6": ("CLIPTextEncode", {"text": "a cat", "clip": ["4", 1]}),
    "5": ("EmptySD3LatentImage", {"width": 64, "height": 64, "batch_size": 1}),
    "3": ("KSampler", {"model": ["4", 0], "positive": ["6", 0], "latent_image": ["5", 0]}),
    "8": ("VAEDecode", {"samples": ["3", 0], "vae": ["4", 2]}),
    "9": ("SaveImage", {"images": ["8", 0]}),
}
# ComfyUI's own words when CLIPTextEncode gets no CLIP (nodes.py).
_NO_CLIP = ("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint "
            "does not contain a valid clip or text encoder model.")


def _run_miniature(workdir: str, traces: str) -> int:
    from ..cli import inspect_files
    from .tiny_checkpoint import QWEN_IMAGE_MINI, write_tiny_qwen_image_diffusion_only

    path = write_tiny_qwen_image_diffusion_only(os.path.join(workdir, "models", "checkpoints", QWEN_IMAGE_MINI))
    print(f"\n1. The model file: {path}, a diffusion-model-only Qwen-Image in fp8 shrunk to "
          f"{os.path.getsize(path) / 1e6:.1f} MB. `stagetrace inspect` says:\n")
    print(inspect_files.format_report(inspect_files.inspect_file(path)))
    print("\n2. That file in CheckpointLoaderSimple, for a workflow whose CLIPTextEncode and VAEDecode need the "
          "CLIP and VAE it does not hold, recorded through StageTrace's recorder, C spans and trace writer "
          "(ComfyUI's nodes are stood in for: the loader reads the file for real, CLIPTextEncode fails as "
          "ComfyUI's does):\n")
    trace = _record_miniature(path, traces)
    page = trace[: -len(TRACE_SUFFIX)] + ".report.html"
    print("\nOpen the trace in https://ui.perfetto.dev" + (f", the report page {page} in a browser" if
                                                           os.path.exists(page) else "") + "; or, from here:")
    _print_commands(f"{command()} report {shlex.quote(trace)}", f"{command()} inspect {shlex.quote(path)}")
    print("The real thing: run the demo from ComfyUI/custom_nodes/StageTrace, or give it --comfyui DIR.")
    return 0


def _record_miniature(path: str, traces: str) -> str:
    """One prompt of _NODES with ``path`` in the loader, recorded by StageTrace's own pieces as inside
    ComfyUI: the Recorder (the file's anatomy and the loader gap), the C Wrapper (node and prompt spans),
    the model-file stage hook around a stand-in for ``comfy.utils.load_torch_file`` that reads the file
    (the model_load.read span), the writer thread (trace, summary, findings, report files). The prompt
    stops at CLIPTextEncode, as ComfyUI's does. Returns the trace's path."""
    from ..core import stages
    from ..core.settings import Settings
    from ..hooks.guard import HookGuard
    from ..hooks.stage_hooks import Spans, StageHooks
    from ..record.recorder import Recorder

    native = native_loader.require()
    settings = dataclasses.replace(Settings.from_env(), summary=True, report=True)
    guard = HookGuard()
    recorder = Recorder(native, settings, lambda: traces, guard)
    prompt_id = "miniature"
    prompt = {node_id: {"class_type": cls, "inputs": dict(inputs)} for node_id, (cls, inputs) in _NODES.items()}
    prompt["4"]["inputs"]["ckpt_name"] = os.path.basename(path)

    def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
        """Stands in for comfy.utils.load_torch_file: reads the whole file."""
        with open(ckpt, "rb") as f:
            return f.read()

    def replace(owner, name, new, label):
        setattr(owner, name, new)
        recorder.hooks.append(label)

    comfy_utils = types.SimpleNamespace(load_torch_file=load_torch_file)
    StageHooks(Spans(native, guard), replace).install(
        {"comfy.utils": comfy_utils}, on_model_file=lambda file: recorder.on_model_file(file, node_id="4"))
    outputs: dict[str, tuple] = {}

    def checkpoint_loader(node_id: str) -> None:
        comfy_utils.load_torch_file(os.path.join(os.path.dirname(path), prompt[node_id]["inputs"]["ckpt_name"]))
        outputs[node_id] = ("MODEL", None, None)  # the file holds a diffusion model: no CLIP, no VAE

    def clip_text_encode(node_id: str) -> None:
        if outputs[prompt[node_id]["inputs"]["clip"][0]][1] is None:
            raise RuntimeError(_NO_CLIP)

    run_node = {"CheckpointLoaderSimple": checkpoint_loader, "CLIPTextEncode": clip_text_encode}
    node = native.Wrapper(lambda node_id: run_node[prompt[node_id]["class_type"]](node_id), stages.NODE, "node",
                          namer=lambda node_id: (prompt[node_id]["class_type"], node_id))

    def execute(executor, prompt, prompt_id):
        recorder.on_message("execution_start", {"prompt_id": prompt_id})
        for node_id in ("4", "6"):  # in ComfyUI's order; it stops at the first node that fails
            try:
                node(node_id)
            except RuntimeError as exc:
                recorder.on_message("execution_error", {
                    "prompt_id": prompt_id, "node_id": node_id, "node_type": prompt[node_id]["class_type"],
                    "exception_type": type(exc).__name__, "exception_message": str(exc)})
                return
        recorder.on_message("execution_success", {"prompt_id": prompt_id})

    recorder.prompt_begin(prompt, prompt_id, {})
    native.Wrapper(execute, stages.PROMPT, "prompt", namer=recorder.prompt_namer,
                   outcome=recorder.prompt_outcome)(None, prompt, prompt_id)
    recorder.prompt_end()
    recorder.flush()
    return recorder.last_trace
