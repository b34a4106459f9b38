"""``stagetrace demo --serve``: the built-in example as a real ComfyUI server, to measure from outside.

It writes the tiny SD1.5-shaped checkpoint and the tiny text-to-image workflow (API format) into the work
folder, and starts the ComfyUI it finds (as ``stagetrace demo`` does) as a server on loopback, on the CPU,
with StageTrace and one demo node loaded as custom nodes (``HarnessZeroConditioning``: the conditioning a
checkpoint without CLIP cannot make). It prints the URL, the workflow's path and the ``stagetrace bench``
and ``stagetrace load`` commands that measure it, and serves until Ctrl-C. ComfyUI's log goes to
``comfyui.log`` in the work folder; StageTrace's traces to ``output/stagetrace`` there.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"  # the demo server listens on loopback only
START_TIMEOUT_S = 180.0
CHECKPOINT = "tiny_sd15.safetensors"
WORKFLOW = "tiny_workflow.json"


def server_command(port: int, base: str) -> list[str]:
    """ComfyUI's main.py on the CPU, on loopback, with every folder (models, custom nodes, output, user) in base
    and nothing reached outside the machine."""
    return [sys.executable, "main.py", "--cpu", "--listen", HOST, "--port", str(port), "--base-directory", base,
            "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
            "--preview-method", "none"]


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float, log_tail) -> None:
    """Return once the server answers /system_stats; RuntimeError (with the log's tail) when it exits or does
    not answer within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited ({proc.returncode}) while starting:\n{log_tail()}")
        try:
            with urllib.request.urlopen(url + "/system_stats", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s:\n{log_tail()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def prepare(workdir: str, steps: int = 4) -> str:
    """The tiny checkpoint in workdir/models/checkpoints, StageTrace and the demo node in workdir/custom_nodes;
    the workflow's path (written once: a file that is there is kept)."""
    from .harness import tiny_txt2img
    from .run import TOP, _custom_nodes
    from .tiny_checkpoint import write_tiny_sd15_checkpoint

    checkpoints = os.path.join(workdir, "models", "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    if not os.path.exists(os.path.join(checkpoints, CHECKPOINT)):
        write_tiny_sd15_checkpoint(os.path.join(checkpoints, CHECKPOINT))
    nodes = os.path.join(_custom_nodes(workdir), "StageTraceDemoNodes")
    os.makedirs(nodes, exist_ok=True)
    with open(os.path.join(nodes, "__init__.py"), "w") as f:
        f.write('"""The demo\'s one node: zero conditioning for a checkpoint without CLIP."""\n\n'
                f"from {TOP}.demo.harness import zero_conditioning_node\n\n"
                'NODE_CLASS_MAPPINGS = {"HarnessZeroConditioning": zero_conditioning_node()}\n')
    workflow = os.path.join(workdir, WORKFLOW)
    if not os.path.exists(workflow):
        with open(workflow + ".tmp", "w") as f:
            json.dump(tiny_txt2img(CHECKPOINT, seed=1, steps=steps), f, indent=2)
        os.replace(workflow + ".tmp", workflow)
    return workflow


def serve(comfyui_dir: str, workdir: str, port: int | None = None, ready=None) -> int:
    """Run the demo server until Ctrl-C (or SIGTERM); 0 after a clean stop, 1 when ComfyUI fails to start or
    dies. ready, if given, is called with the URL once the server answers."""
    from .run import PACKAGE_DIR, TOP, command

    workflow = prepare(workdir)
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    env = {k: v for k, v in os.environ.items() if k != "STAGETRACE_DISABLE"}
    if TOP == "comfy_nodes":  # the clone's package imports from its root
        root = os.path.dirname(PACKAGE_DIR)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    log_path = os.path.join(workdir, "comfyui.log")

    def log_tail(chars: int = 4000) -> str:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - chars))
            return f.read().decode(errors="replace")

    print(f"stagetrace demo: starting the ComfyUI at {comfyui_dir} as a server on the CPU, with StageTrace "
          f"(log: {log_path})", flush=True)
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(server_command(port, workdir), cwd=comfyui_dir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        try:
            wait_until_up(proc, url, START_TIMEOUT_S, log_tail)
        except RuntimeError as exc:
            print(f"stagetrace demo: {exc}", file=sys.stderr)
            return 1
        me = command()
        print(f"serving {url} (Ctrl-C stops it)\nthe built-in workflow: {workflow}\nmeasure it from another "
              "shell:", flush=True)
        for line in (f"{me} bench {url} {shlex.quote(workflow)} -n 5 --report bench.html",
                     f"{me} load {url} {shlex.quote(workflow)} --users 3 --requests 3 --report load.html"):
            print(f"  $ {line}", flush=True)
        if ready is not None:
            ready(url)
        while stop["signal"] is None and proc.poll() is None:
            time.sleep(0.2)
        if proc.poll() is not None:
            print(f"stagetrace demo: ComfyUI exited ({proc.returncode}):\n{log_tail()}", file=sys.stderr)
            return 1
        print("stagetrace demo: stopping the server", flush=True)
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
