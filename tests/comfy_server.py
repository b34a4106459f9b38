"""A real ComfyUI HTTP server on loopback for the test session, with StageTrace loaded as a custom node.

``comfy_server`` (session scope; tests/conftest.py re-exports it) starts, once per test session::

    python main.py --cpu --listen 127.0.0.1 --port <free> --base-directory <tmp> --disable-auto-launch ...

from $COMFYUI_DIR, else the newest ``../shared/comfyui/ComfyUI-*.tar.gz`` unpacked once into
build/comfyui/ (tests/run.py's ``find_comfyui``). ``--base-directory`` puts models, custom nodes, input,
output, temp and user data in a temporary folder, so nothing is written into that ComfyUI. Its
``custom_nodes`` holds a symlink to this repository (StageTrace), the test auth plugins of
tests/fixtures/auth_nodes/ (installed, disarmed until a test arms one with ``server.auth(...)``), and a
node providing ``HarnessZeroConditioning`` so the demo's tiny workflow runs; ``models/checkpoints``
holds the tiny SD1.5 checkpoint. The fixture waits (bounded) for ``/system_stats`` and stops the server
at the end (terminate, then kill). Without a ComfyUI, torch or the C extension it skips, saying why.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
AUTH_NODES = os.path.join(TESTS, "fixtures", "auth_nodes")
HOST = "127.0.0.1"  # never anything else
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
CHECKPOINT = "tiny_sd15.safetensors"
LOGIN_TOKEN = "st-test-token-" + uuid.uuid4().hex[:8]
BASIC_USER, BASIC_PASSWORD = "stagetrace", "pw-" + uuid.uuid4().hex[:8]

FAKE_GPU_UTIL, FAKE_GPU_USED = 87, 21 << 30  # what the fake NVML device reads: 87 %, 21 GiB used of 24

ZERO_CONDITIONING_NODE = f'''\
import os
import sys
import time
sys.path.insert(0, {ROOT!r})
from comfy_nodes.demo.harness import zero_conditioning_node


class HarnessSleep:
    """An output node that takes a fixed time whatever the machine's speed (the load tests' server capacity);
    its seed input changes with every request, so ComfyUI's cache never serves it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"seconds": ("FLOAT", {{"default": 0.25, "min": 0.0, "max": 60.0}}),
                               "seed": ("INT", {{"default": 0, "min": 0, "max": 2**53}})}}}}

    RETURN_TYPES = ()
    FUNCTION = "sleep"
    OUTPUT_NODE = True
    CATEGORY = "harness"

    def sleep(self, seconds, seed):
        import comfy.model_management

        end = time.monotonic() + seconds
        while time.monotonic() < end:  # in slices, so that ComfyUI's interrupt stops it, as it stops a sampler
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(min(0.02, max(0.0, end - time.monotonic())))
        return {{}}


NODE_CLASS_MAPPINGS = {{"HarnessZeroConditioning": zero_conditioning_node(), "HarnessSleep": HarnessSleep}}

# A test hook that sleeps inside a stage: while the file named by STAGETRACE_TEST_SLOW_SAMPLING holds a number
# of seconds, the euler sampler (inside StageTrace's sample span) sleeps that long before it runs, so a
# run's sampling is slower than the same workflow's earlier runs.
if os.environ.get("STAGETRACE_TEST_SLOW_SAMPLING"):
    import comfy.k_diffusion.sampling as _sampling

    import functools

    _euler = _sampling.sample_euler

    @functools.wraps(_euler)  # the sample span keeps the sampler's own name
    def _slow_euler(*args, **kwargs):
        try:
            with open(os.environ["STAGETRACE_TEST_SLOW_SAMPLING"]) as f:
                time.sleep(float(f.read().strip() or 0))
        except (OSError, ValueError):
            pass
        return _euler(*args, **kwargs)

    _sampling.sample_euler = _slow_euler

# A server started with a fake NVML (STAGETRACE_NVML_LIB = tests/nvml/fake_nvml.c built: a TEST DOUBLE at the
# hardware boundary, as there is no GPU here) scripts its one device's readings here, in the server's process,
# where StageTrace's NVML sampler loads the same library.
if os.environ.get("STAGETRACE_TEST_FAKE_GPU") and os.environ.get("STAGETRACE_NVML_LIB"):
    import ctypes

    _fake = ctypes.CDLL(os.environ["STAGETRACE_NVML_LIB"])
    _fake.fake_nvml_set_device(0, b"NVIDIA GeForce RTX 3090 (test double)", {FAKE_GPU_UTIL}, 30,
                               ctypes.c_ulonglong({FAKE_GPU_USED}), ctypes.c_ulonglong(24 << 30), 66, 310000)
'''


def find_comfyui() -> str | None:
    spec = importlib.util.spec_from_file_location("stagetrace_tests_run", os.path.join(TESTS, "run.py"))
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run.find_comfyui()


def skip_reason() -> str | None:
    if not find_comfyui():
        return "no ComfyUI: set COMFYUI_DIR to a ComfyUI checkout, or put ComfyUI-*.tar.gz in ../shared/comfyui/"
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("aiohttp") is None:
        return "ComfyUI's requirements (torch, aiohttp) are not installed: tests/run.py installs them"
    try:
        from comfy_nodes import _native  # noqa: F401
    except ImportError as exc:
        return f"C extension not built: run python setup.py build_ext --inplace ({exc})"
    return None


def free_port() -> int:
    from comfy_nodes.demo.serve import free_port as free

    return free()


class ComfyServer:
    """One running ComfyUI: its URL, folders, and helpers to talk to it."""

    def __init__(self, comfyui: str, base: str, env: dict | None = None, stagetrace: bool = True):
        self.comfyui = comfyui
        self.extra_env = dict(env or {})
        self.stagetrace = stagetrace  # False: a plain ComfyUI, with the test nodes only
        self.base = base
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.models = os.path.join(base, "models")
        self.checkpoints = os.path.join(self.models, "checkpoints")
        self.output = os.path.join(base, "output")
        self.traces = os.path.join(self.output, "stagetrace")
        self.auth_file = os.path.join(base, "auth-mode")
        self.slow_file = os.path.join(base, "slow-sampling")  # seconds the sampler sleeps (the test hook)
        self.log_path = os.path.join(base, "comfyui.log")
        self.login_token = LOGIN_TOKEN
        self.basic_header = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        self.proc: subprocess.Popen | None = None

    # --- life cycle ---------------------------------------------------------------------------

    def prepare(self) -> None:
        from comfy_nodes.demo.tiny_checkpoint import write_tiny_sd15_checkpoint

        custom = os.path.join(self.base, "custom_nodes")
        os.makedirs(os.path.join(custom, "stagetrace_test_nodes"))
        if self.stagetrace:
            os.symlink(ROOT, os.path.join(custom, "stagetrace"))
        for name in ("login_like", "basic_auth"):
            os.symlink(os.path.join(AUTH_NODES, name), os.path.join(custom, name))
        with open(os.path.join(custom, "stagetrace_test_nodes", "__init__.py"), "w") as f:
            f.write(ZERO_CONDITIONING_NODE)
        os.makedirs(self.checkpoints)
        write_tiny_sd15_checkpoint(os.path.join(self.checkpoints, CHECKPOINT))
        open(self.auth_file, "w").close()

    def start(self) -> None:
        from comfy_nodes.demo.serve import server_command, wait_until_up

        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGETRACE_")}
        env.update(PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="2", STAGETRACE_SUMMARY="0",
                   STAGETRACE_TEST_AUTH_FILE=self.auth_file, STAGETRACE_TEST_LOGIN_TOKEN=LOGIN_TOKEN,
                   STAGETRACE_TEST_BASIC_AUTH=f"{BASIC_USER}:{BASIC_PASSWORD}",
                   STAGETRACE_TEST_SLOW_SAMPLING=self.slow_file)
        env.update(self.extra_env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(server_command(self.port, self.base), cwd=self.comfyui, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_until_up(self.proc, self.url, START_TIMEOUT_S, self.log_tail)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return "(no log)"

    # --- talking to it ------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one raw HTTP request; redirects are not followed. ``path`` is sent
        as written (no normalisation), so tests can send encoded and dotted paths."""
        import http.client

        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, path: str, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
        return self.request("GET", path, headers=headers, timeout=timeout)

    def get_json(self, path: str, headers: dict | None = None):
        status, _, body = self.get(path, headers)
        return status, json.loads(body) if body else None

    def run_prompt(self, prompt: dict, timeout: float = 120.0) -> str:
        """Submit through POST /prompt, wait for /history to have it; its prompt id."""
        body = json.dumps({"prompt": prompt, "client_id": "stagetrace-tests"}).encode()
        status, _, raw = self.request("POST", "/prompt", body, {"Content-Type": "application/json"})
        assert status == 200, f"POST /prompt: {status} {raw[:2000]!r}"
        prompt_id = json.loads(raw)["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, history = self.get_json(f"/history/{prompt_id}")
            if status == 200 and history and prompt_id in history:
                entry = history[prompt_id]
                if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                    return prompt_id
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} not in /history after {timeout} s:\n{self.log_tail()}")

    def wait_trace(self, prompt_id: str, timeout: float = 60.0) -> str:
        """The path of prompt_id's trace once it and its reports are written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.isdir(self.traces):
                for name in os.listdir(self.traces):
                    if prompt_id in name and name.endswith(".trace.json"):
                        stem = os.path.join(self.traces, name[: -len(".trace.json")])
                        if os.path.exists(stem + ".report.json") and os.path.exists(stem + ".report.html"):
                            return os.path.join(self.traces, name)
            time.sleep(0.1)
        raise TimeoutError(f"no trace of {prompt_id} after {timeout} s:\n{self.log_tail()}")

    @contextlib.contextmanager
    def auth(self, mode: str):
        """Arm one test auth middleware ('login' or 'basic') for the block, then disarm it."""
        with open(self.auth_file, "w") as f:
            f.write(mode)
        try:
            yield self
        finally:
            with open(self.auth_file, "w") as f:
                f.write("")


@contextlib.contextmanager
def running_server(env: dict | None = None, stagetrace: bool = True):
    """A real ComfyUI server (with StageTrace, unless stagetrace is False, and the test nodes) in a temporary
    folder, for the block; env adds settings to its environment. Skips without a ComfyUI."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="stagetrace-server-")
    server = ComfyServer(find_comfyui(), base, env, stagetrace)
    try:
        server.prepare()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy_server():
    """One real ComfyUI server (with StageTrace) for the whole test session; skips without one."""
    with running_server() as server:
        yield server
