"""``stagetrace doctor``: checks everything StageTrace and a ComfyUI run depend on and says what is wrong in plain
words: ComfyUI (found, version, every hook target fitting or its fallback), the C extension and NVTX, the GPU
(driver, torch's CUDA build, every device, which one ComfyUI will use and why, a bigger or idle one left unused),
CUPTI (loadable; with a GPU, a probe that must come back attributed to its window with the right bytes), an
NVML sample, the models folder (filesystem, read throughput with the page cache bypassed), RAM, swap, cgroup
limits, WSL, and auth plugins.

Every check is bounded in time and none can stop the others: what loads native libraries runs in child
processes (doctor_probe.py) with a timeout, the rest in threads with a timeout; a check that fails or runs out
of time says so and doctor goes on.

Exit codes: 0 nothing stops profiling or a GPU run (warnings may be printed), 1 problems found, 2 a bad command
line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from ..core.units import format_bytes, format_duration
from . import doctor_gpu, doctor_system

OK, INFO, WARNING, PROBLEM, SKIPPED, UNAVAILABLE = "ok", "info", "warning", "problem", "skipped", "unavailable"
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
FORMAT_VERSION = 1

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # comfy_nodes/ (or stagetrace/)
TOP = __package__.split(".")[0]
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
SLOW_READ_MB_S = 200.0  # below this, a 20 GB checkpoint takes over 100 s to read
CHECK_TIMEOUT_S = 20.0
NATIVE_PROBE_TIMEOUT_S = 30.0
GPU_PROBE_TIMEOUT_S = 150.0  # importing torch from a slow disk, initialising CUDA, the probe
WALK_MAX_ENTRIES = 50000
WALK_MAX_SECONDS = 5.0

KNOWN_AUTH_PLUGINS = {  # folder name (lower case) -> (what it is, what it answers, the option that passes it)
    "comfyui-login": ("ComfyUI-Login", "redirects every request to /login (302)",
                      "--token TOKEN (the token ComfyUI-Login prints in ComfyUI's console)"),
    "comfyui-basic-auth": ("comfyui-basic-auth", "answers 401 (HTTP basic auth)", "--user NAME --password SECRET"),
    "comfyui-auth-manager": ("ComfyUI-Auth-Manager", "asks for a login", "--cookie name=value of a logged-in session"),
    "comfyui-auth-system": ("ComfyUI-Auth-System", "asks for a login", "--cookie name=value of a logged-in session"),
}


@dataclass
class Check:
    id: str
    title: str
    status: str
    summary: str
    details: list[str] = field(default_factory=list)
    fix: str | None = None
    facts: dict = field(default_factory=dict)


# --- Running checks, bounded ------------------------------------------------------------------------------


def bounded(check_id: str, title: str, fn, timeout: float = CHECK_TIMEOUT_S) -> list[Check]:
    """fn() -> Check or [Check], run in a thread for at most timeout seconds; a check that raises or runs out of
    time becomes one 'unavailable' check saying why. The thread is a daemon: a read stuck on a dead network
    filesystem is left behind, and doctor goes on."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - a failing check says why; doctor goes on
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, name=f"doctor-{check_id}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return [Check(check_id, title, UNAVAILABLE, f"did not finish within {timeout:.0f} s; left behind")]
    if "error" in box:
        return [Check(check_id, title, UNAVAILABLE, f"the check failed: {box['error']}")]
    result = box.get("result")
    return result if isinstance(result, list) else [result]


class Probe:
    """A doctor_probe part running in a child process from the start, read when its checks need it."""

    def __init__(self, part: str, timeout: float, env: dict | None = None):
        self.part, self.timeout, self.started = part, timeout, time.monotonic()
        self.result: dict | None = None
        self.error: str | None = None
        root = os.path.dirname(PACKAGE_DIR)
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, child_env.get("PYTHONPATH"))))
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", f"{TOP}.cli.doctor_probe", part], cwd=root,
                                         env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, errors="replace")
        except OSError as exc:
            self.proc, self.error = None, f"could not start {sys.executable}: {exc}"

    def get(self) -> dict | None:
        """The part's JSON answer, or None with self.error saying why (timed out, crashed, no answer)."""
        if self.result is not None or self.proc is None or self.error:
            return self.result
        try:
            out, err = self.proc.communicate(timeout=max(0.1, self.timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            self.error = f"did not answer within {self.timeout:.0f} s (a driver or library that hangs)"
            return None
        line = next((x for x in out.splitlines() if x.startswith("DOCTOR-PROBE ")), None)
        if line is None:
            code = self.proc.returncode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            tail = " | ".join(err.strip().splitlines()[-3:])
            self.error = f"the {self.part} probe {how} without an answer" + (f": {tail}" if tail else "")
            return None
        try:
            self.result = json.loads(line[len("DOCTOR-PROBE "):])
        except ValueError as exc:
            self.error = f"the {self.part} probe's answer is not JSON: {exc}"
            return None
        if "error" in self.result and len(self.result) == 1:
            self.error, self.result = f"the {self.part} probe failed: {self.result['error']}", None
        return self.result


# --- ComfyUI ---------------------------------------------------------------------------------------------


def is_comfyui(folder: str) -> bool:
    return (os.path.isfile(os.path.join(folder, "main.py")) and os.path.isfile(os.path.join(folder, "execution.py"))
            and os.path.isdir(os.path.join(folder, "comfy")))


def _custom_nodes_parent() -> str | None:
    """The ComfyUI whose custom_nodes folder holds this StageTrace, walking up the path the shell took ($PWD,
    through a symbolic link) and the package's real path."""
    starts = [PACKAGE_DIR]
    pwd = os.environ.get("PWD")
    if pwd and os.path.isabs(pwd):
        try:
            rel = os.path.relpath(os.path.realpath(PACKAGE_DIR), os.path.realpath(os.getcwd()))
            if not rel.startswith(os.pardir):
                starts.insert(0, os.path.normpath(os.path.join(pwd, rel)))
        except (OSError, ValueError):
            pass
    for folder in starts:
        while os.path.dirname(folder) != folder:
            parent = os.path.dirname(folder)
            if os.path.basename(parent) == "custom_nodes" and is_comfyui(os.path.dirname(parent)):
                return os.path.dirname(parent)
            folder = parent
    return None


def locate_comfyui(option: str | None) -> tuple[str | None, str]:
    """(ComfyUI folder or None, how it was found or why not)."""
    if option:
        return os.path.abspath(option), "--comfyui"
    found = _custom_nodes_parent()
    if found:
        return found, "the ComfyUI whose custom_nodes holds this StageTrace"
    if os.environ.get("COMFYUI_DIR"):
        return os.path.abspath(os.environ["COMFYUI_DIR"]), "$COMFYUI_DIR"
    return None, "StageTrace is not in a ComfyUI's custom_nodes, and neither --comfyui nor $COMFYUI_DIR is given"


def comfyui_version(folder: str) -> str | None:
    """__version__ from comfyui_version.py, read as text (never imported)."""
    from ..core.files import open_regular

    try:  # a named pipe there would block: refused before it is read
        with open(open_regular(os.path.join(folder, "comfyui_version.py")), encoding="utf-8", errors="replace") as f:
            match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", f.read(65536))
        return match.group(1) if match else None
    except OSError:
        return None


def _entries(folder: str) -> list[tuple[str, str]]:
    """(name, path) of each entry of folder, sorted by name; none when it cannot be listed."""
    try:
        return [(name, os.path.join(folder, name)) for name in sorted(os.listdir(folder))]
    except OSError:
        return []


def _stagetrace_installed(folder: str) -> str | None:
    """The entry of folder/custom_nodes that is this StageTrace (or another copy of it), or None."""
    here = os.path.realpath(os.path.dirname(PACKAGE_DIR))
    for _name, path in _entries(os.path.join(folder, "custom_nodes")):
        if os.path.realpath(path) == here or (os.path.isfile(os.path.join(path, "install.py"))
                                              and os.path.isdir(os.path.join(path, "comfy_nodes", "hooks"))):
            return path
    return None


def check_comfyui(folder: str | None, how: str) -> Check:
    if folder is None:
        return Check("comfyui", "ComfyUI", PROBLEM, f"no ComfyUI found: {how}",
                     fix="run doctor from ComfyUI/custom_nodes/StageTrace, or give --comfyui DIR (or COMFYUI_DIR)")
    if not is_comfyui(folder):
        return Check("comfyui", "ComfyUI", PROBLEM, f"{folder} ({how}) is not a ComfyUI: it lacks main.py, "
                     "execution.py or comfy/", fix="give --comfyui the folder that holds ComfyUI's main.py",
                     facts={"dir": folder})
    version = comfyui_version(folder)
    installed = _stagetrace_installed(folder)
    facts = {"dir": folder, "found_by": how, "version": version, "stagetrace_installed": installed}
    details = [f"StageTrace in its custom_nodes: {installed}" if installed else
               f"StageTrace is not in {os.path.join(folder, 'custom_nodes')}: ComfyUI loads it only from a "
               "custom node folder given with --custom-node-dir or --base-directory"]
    summary = f"ComfyUI {version or '(version unknown: no comfyui_version.py)'} at {folder} ({how})"
    return Check("comfyui", "ComfyUI", OK if installed else WARNING, summary, details,
                 fix=None if installed else f"cd {os.path.join(folder, 'custom_nodes')} && git clone <StageTrace> "
                 "StageTrace && cd StageTrace && python install.py", facts=facts)


# Targets whose loss stops profiling: without execute_async no trace is written at all; without execute and
# its fallback (the progress handler) no node is timed.
CRITICAL_TARGETS = ("execution.PromptExecutor.execute_async",)
NODE_TIMING_TARGETS = ("execution.execute", "execution.reset_progress_state")


def check_hooks(folder: str) -> Check:
    """Every hook target in this ComfyUI's source (read, not imported): fitting, or the fallback StageTrace takes
    instead; targets StageTrace only watches are listed, never judged."""
    try:
        from ..hooks.targets import HOOK, fit_source, target
    except ImportError as exc:
        return Check("hooks", "hook targets", UNAVAILABLE, f"hook check unavailable ({exc})")
    rows = []
    for f in fit_source(folder):
        try:
            kind = target(f.target).kind
        except KeyError:
            kind = HOOK
        rows.append({"target": f.target, "kind": kind, "found": f.found, "fits": f.fits, "fallback": f.fallback,
                     "why": f.why, "params": list(f.params or [])})
    judged = [r for r in rows if r["kind"] != "watched"]
    unfit = [r for r in judged if not r["fits"]]
    unfit_names = {r["target"] for r in unfit}
    lost = [r for r in unfit if r["target"] in CRITICAL_TARGETS]
    if all(name in unfit_names for name in NODE_TIMING_TARGETS):
        lost += [r for r in unfit if r["target"] in NODE_TIMING_TARGETS]
    details = [f"{r['target']}: does not fit ({r['why']}); instead: {r['fallback'] or 'nothing'}" for r in unfit]
    details += [f"{r['target']} (watched, not hooked): " + ("present" if r["found"] else "absent")
                for r in rows if r["kind"] == "watched" and not r["fits"]]
    facts = {"targets": rows}
    if lost:
        return Check("hooks", "hook targets", PROBLEM, f"{len(unfit)} of {len(judged)} hook targets do not fit this "
                     "ComfyUI, and without " + ", ".join(r["target"] for r in lost) + " StageTrace cannot profile "
                     "it", details, fix="update StageTrace to a version that knows this ComfyUI", facts=facts)
    if unfit:
        return Check("hooks", "hook targets", WARNING, f"{len(judged) - len(unfit)} of {len(judged)} hook targets fit; "
                     f"{len(unfit)} take their fallback: " + ", ".join(r["target"] for r in unfit), details,
                     facts=facts)
    return Check("hooks", "hook targets", OK, f"all {len(judged)} hook targets fit this ComfyUI", details,
                 facts=facts)


# --- The extension, NVTX ------------------------------------------------------------------------------------


def check_extension(native: dict | None, error: str | None) -> list[Check]:
    if native is None:
        return [Check("extension", "C extension", UNAVAILABLE, f"could not be checked: {error}"),
                Check("nvtx", "NVTX", UNAVAILABLE, "could not be checked without the extension's probe")]
    if not native.get("built"):
        return [Check("extension", "C extension", PROBLEM, f"not importable: {native.get('error')}",
                      fix="build it (python install.py in the StageTrace folder): without it StageTrace records "
                      "nothing"),
                Check("nvtx", "NVTX", SKIPPED, "needs the C extension")]
    out = [Check("extension", "C extension", OK, f"built and importable ({native.get('module')})",
                 facts={"module": native.get("module")})]
    nvtx = native.get("nvtx") or {}
    env = nvtx.get("env") or {}
    facts = dict(nvtx)
    if "compiled" not in nvtx:
        out.append(Check("nvtx", "NVTX", UNAVAILABLE, f"could not be checked: {nvtx.get('reason')}"))
    elif not nvtx["compiled"]:
        out.append(Check("nvtx", "NVTX", WARNING, "the extension was built without NVTX headers: no NVTX ranges "
                         "in Nsight Systems", fix="pip install nvidia-nvtx-cu12, then python install.py again",
                         facts=facts))
    elif nvtx.get("attached"):
        out.append(Check("nvtx", "NVTX", OK, "an NVTX tool is attached: every prompt, node and stage is a range "
                         + (f"(NVTX_INJECTION64_PATH={env.get('NVTX_INJECTION64_PATH')})" if env else ""),
                         facts=facts))
    elif env:
        out.append(Check("nvtx", "NVTX", WARNING, f"{', '.join(f'{k}={v}' for k, v in env.items())} is set but NVTX "
                         "loaded no tool from it: the file is missing, not a library, or lacks "
                         "InitializeInjectionNvtx2", facts=facts))
    else:
        out.append(Check("nvtx", "NVTX", OK, "compiled in; no NVTX tool attached now (Nsight Systems attaches one "
                         "when it runs ComfyUI: nsys profile -t cuda,nvtx python main.py)", facts=facts))
    return out


# --- GPU -------------------------------------------------------------------------------------------------


def _gpu_env(comfy_args: dict | None) -> dict:
    env = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES")
           if k in os.environ}
    if comfy_args and comfy_args.get("env"):
        env.update(comfy_args["env"])  # the running ComfyUI's own environment wins
    return env


def check_gpu(native: dict | None, native_error: str | None, gpu: dict | None, gpu_error: str | None,
              cuda_device: int | None, default_device: int | None, comfy_args: dict | None,
              container: bool) -> list[Check]:
    out = []
    nvml = (native or {}).get("nvml") or {}
    devices = nvml.get("devices") or [] if nvml.get("ok") else []
    torch = (gpu or {}).get("torch") or {}
    # The driver
    if native is None:
        out.append(Check("driver", "NVIDIA driver", UNAVAILABLE, f"could not be checked: {native_error}"))
    elif nvml.get("ok"):
        cuda = nvml.get("cuda_driver_version")
        out.append(Check("driver", "NVIDIA driver", OK, f"driver {nvml.get('driver_version')}"
                         + (f" (CUDA {cuda // 1000}.{cuda % 1000 // 10} at most)" if cuda else "")
                         + f", {len(devices)} GPU(s)", facts={k: nvml.get(k) for k in
                                                              ("driver_version", "cuda_driver_version")}))
    else:
        reason = nvml.get("reason") or "the C extension is not built"
        out.append(Check("driver", "NVIDIA driver", INFO if not torch.get("available") else WARNING,
                         f"NVML unavailable: {reason}" + ("" if torch.get("available") else
                                                          " (no NVIDIA driver: ComfyUI runs on the CPU)"),
                         facts={"reason": reason}))
    # torch
    if gpu is None:
        out.append(Check("torch", "torch", UNAVAILABLE, f"could not be checked: {gpu_error}"))
    elif not torch.get("installed"):
        out.append(Check("torch", "torch", PROBLEM, f"torch is not installed in this Python ({sys.executable}): "
                         "ComfyUI cannot run", fix="run doctor with the Python that runs ComfyUI, or install "
                         "ComfyUI's requirements"))
    elif torch.get("error"):
        out.append(Check("torch", "torch", PROBLEM, f"import torch failed: {torch['error']}", facts=torch))
    else:
        facts = {k: torch.get(k) for k in ("version", "cuda", "hip", "available")}
        build = f"torch {torch.get('version')}, " + (f"built for CUDA {torch['cuda']}" if torch.get("cuda") else
                                                      f"built for ROCm {torch['hip']}" if torch.get("hip") else
                                                      "a CPU-only build")
        mismatch = doctor_gpu.cuda_mismatch(torch.get("cuda"), nvml.get("cuda_driver_version"))
        if mismatch:
            out.append(Check("torch", "torch", PROBLEM, f"{build}: {mismatch}", facts=facts))
        elif devices and not torch.get("cuda") and not torch.get("hip"):
            out.append(Check("torch", "torch", PROBLEM, f"{build}, but {len(devices)} NVIDIA GPU(s) are here: "
                             "ComfyUI will run on the CPU", fix="install a CUDA build of torch (see ComfyUI's README: "
                             "pip install torch --index-url https://download.pytorch.org/whl/cu130)", facts=facts))
        elif devices and not torch.get("available"):
            out.append(Check("torch", "torch", PROBLEM, f"{build}, but torch sees no usable GPU although NVML lists "
                             f"{len(devices)}: ComfyUI will run on the CPU (CUDA_VISIBLE_DEVICES, or a driver torch "
                             "cannot use)", facts=facts))
        else:
            sees = f"; torch sees {len(torch.get('devices') or [])} GPU(s)" if torch.get("available") else ""
            out.append(Check("torch", "torch", OK, build + sees, facts=facts))
    # The devices and the one ComfyUI will use
    torch_devices = torch.get("devices") if torch.get("available") else None
    if devices:
        lines = []
        for d in devices:
            fp8 = doctor_gpu.has_fp8(d)
            lines.append(f"GPU {d['index']}: {d.get('name')}, compute capability {d.get('compute_capability')} "
                         f"({'FP8 compute' if fp8 else 'no FP8 compute' if fp8 is False else 'FP8 unknown'}), "
                         f"{format_bytes(d.get('total_memory_bytes'))} total, {format_bytes(d.get('free_bytes'))} "
                         f"free, {d.get('gpu_util_pct')} % busy")
        out.append(Check("devices", "GPUs", OK, f"{len(devices)} GPU(s): "
                         + "; ".join(f"{d.get('name')} ({format_bytes(d.get('total_memory_bytes'))})" for d in devices),
                         lines, facts={"devices": devices, "torch_devices": torch_devices}))
    elif torch_devices:
        out.append(Check("devices", "GPUs", OK, f"{len(torch_devices)} GPU(s) seen by torch (NVML unavailable)",
                         [f"GPU {d['index']}: {d['name']}, compute capability {d['compute_capability']}, "
                          f"{format_bytes(d['total_memory_bytes'])} total, {format_bytes(d['free_bytes'])} free"
                          for d in torch_devices], facts={"torch_devices": torch_devices}))
    if cuda_device is not None or default_device is not None:
        comfy_args = None  # doctor's own options say how ComfyUI will be started: they win over a running one
    elif comfy_args:
        cuda_device, default_device = comfy_args.get("cuda_device"), comfy_args.get("default_device")
    choice = doctor_gpu.choose_device(devices, _gpu_env(comfy_args), cuda_device, default_device, torch_devices,
                                      container=container, cpu=bool(comfy_args and comfy_args.get("cpu")))
    if comfy_args:
        choice["why"].insert(0, f"read from the running ComfyUI (pid {comfy_args['pid']})")
    out.append(_device_choice_check(choice, devices))
    return out


def _device_choice_check(choice: dict, devices: list[dict]) -> Check:
    facts = {k: choice[k] for k in ("index", "why", "exact", "cuda_visible_devices")}
    details = choice["why"] + choice["notes"]
    if choice["problems"]:
        return Check("device_choice", "GPU ComfyUI uses", PROBLEM, "; ".join(choice["problems"]), details,
                     facts=facts)
    if choice["warnings"]:
        return Check("device_choice", "GPU ComfyUI uses", WARNING, "; ".join(choice["warnings"]), details,
                     facts=facts)
    if choice["cpu"] and devices:
        return Check("device_choice", "GPU ComfyUI uses", WARNING, f"ComfyUI runs with --cpu although {len(devices)} "
                     "GPU(s) are here: everything runs on the CPU", details,
                     fix="start ComfyUI without --cpu", facts=facts)
    if choice["index"] is None:
        return Check("device_choice", "GPU ComfyUI uses", INFO if not devices else WARNING,
                     "no GPU: ComfyUI runs on the CPU" if not devices else "cannot tell which GPU ComfyUI uses",
                     details, facts=facts)
    used = devices[choice["index"]]
    fp8 = doctor_gpu.has_fp8(used)
    summary = (f"ComfyUI will use {doctor_gpu.describe(used)}: {format_bytes(used.get('free_bytes'))} free, "
               f"{'with' if fp8 else 'without'} FP8 compute" + ("" if choice["exact"] else " (probably: see below)"))
    if fp8 is False:
        details.append(f"{used.get('name')} is sm_{str(used.get('compute_capability')).replace('.', '')}: FP8 "
                       "weights (fp8_e4m3fn, fp8_scaled) are cast to 16 bits on every layer there")
    unused = doctor_gpu.unused_devices(devices, choice["index"], choice["exact"])
    facts["unused"] = unused
    details += [u["message"] for u in unused]
    bigger = [u for u in unused if u["bigger"]]
    if bigger:
        return Check("device_choice", "GPU ComfyUI uses", WARNING, summary + f"; a bigger GPU is left unused: "
                     f"{doctor_gpu.describe(devices[bigger[0]['index']])}", details,
                     fix=bigger[0]["message"].split("; ")[-1], facts=facts)
    return Check("device_choice", "GPU ComfyUI uses", OK, summary, details, facts=facts)


def check_cupti(gpu: dict | None, error: str | None) -> list[Check]:
    if gpu is None:
        return [Check("cupti", "CUPTI", UNAVAILABLE, f"could not be checked: {error}"),
                Check("gpu_probe", "GPU probe", UNAVAILABLE, f"could not run: {error}")]
    cupti = gpu.get("cupti") or {}
    torch = gpu.get("torch") or {}
    facts = {k: cupti.get(k) for k in ("loadable", "library", "version", "collecting", "status", "reason")}
    out = []
    if not cupti.get("loadable"):
        out.append(Check("cupti", "CUPTI", WARNING, f"libcupti cannot be loaded: {cupti.get('reason')}: no GPU "
                         "activity in the traces", fix="pip install nvidia-cuda-cupti (for CUDA 13; "
                         "nvidia-cuda-cupti-cu12 for CUDA 12), or set STAGETRACE_CUPTI_LIB", facts=facts))
    elif cupti.get("collecting"):
        out.append(Check("cupti", "CUPTI", OK, f"libcupti (API version {cupti.get('version')}) from "
                         f"{cupti.get('library')} loads and collects", facts=facts))
    elif torch.get("available"):
        out.append(Check("cupti", "CUPTI", WARNING, f"libcupti {cupti.get('version')} loads but cannot collect: "
                         f"{cupti.get('reason')} ({cupti.get('status')})", facts=facts))
    else:
        hint = f"{cupti['hint']}; " if cupti.get("hint") else ""
        out.append(Check("cupti", "CUPTI", OK if not torch.get("available") else WARNING,
                         f"libcupti (API version {cupti.get('version')}) from {cupti.get('library')} loads; "
                         f"without a GPU it cannot collect ({hint}{cupti.get('reason')})", facts=facts))
    probe = gpu.get("probe")
    if probe is None:
        why = "no CUDA device" if not torch.get("available") else "CUPTI is not collecting"
        out.append(Check("gpu_probe", "GPU probe", SKIPPED, f"not run: {why}"))
    elif probe.get("ok"):
        mb = probe["bytes_each_way"] / 1e6
        out.append(Check("gpu_probe", "GPU probe", OK, f"a {mb:.1f} MB host-to-device copy, 1 kernel "
                         f"({(probe.get('top_kernels') or ['?'])[0][:60]}) and a {mb:.1f} MB device-to-host copy "
                         "came back attributed to the probe window with the exact bytes", facts=probe))
    else:
        out.append(Check("gpu_probe", "GPU probe", PROBLEM, "the GPU probe's activity did not come back as sent: "
                         + "; ".join(probe.get("wrong") or []), fix="GPU figures in the traces cannot be trusted on "
                         "this machine: report it with this output (--json)", facts=probe))
    return out


def check_nvml_sample(native: dict | None) -> Check:
    nvml = (native or {}).get("nvml") or {}
    if not nvml.get("ok"):
        return Check("nvml", "NVML sample", SKIPPED, f"no sample: {nvml.get('reason') or 'NVML not checked'}")
    rows = []
    for d in nvml.get("devices") or []:
        rows.append(f"GPU {d['index']}: {d.get('gpu_util_pct')} % busy, memory {d.get('mem_util_pct')} % busy, "
                    f"{format_bytes(d.get('used_bytes'))} used of {format_bytes(d.get('total_memory_bytes'))}, "
                    f"{d.get('temperature_c')} C, {d.get('power_w')} W")
    if not nvml.get("samples"):
        return Check("nvml", "NVML sample", WARNING, "NVML started but gave no sample: "
                     f"{nvml.get('last_error') or 'no reason given'}", facts=nvml)
    return Check("nvml", "NVML sample", OK, f"{nvml['samples']} sample(s) in 0.3 s", rows,
                 facts={"samples": nvml["samples"], "errors": nvml.get("errors")})


# --- The models folder ----------------------------------------------------------------------------------------


def model_files(folder: str, max_entries: int = WALK_MAX_ENTRIES, max_seconds: float = WALK_MAX_SECONDS) -> dict:
    """The model files under folder (symbolic links to folders followed once each): count, the largest, and
    whether the walk stopped early. Bounded in entries and time."""
    deadline = time.monotonic() + max_seconds
    seen, stack, files, entries = set(), [folder], [], 0
    complete = True
    while stack:
        here = stack.pop()
        try:
            st = os.stat(here)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(here) as it:
                for entry in it:
                    entries += 1
                    if entries > max_entries or time.monotonic() > deadline:
                        complete = False
                        break
                    try:
                        if entry.is_dir():
                            stack.append(entry.path)
                        elif entry.name.lower().endswith(MODEL_SUFFIXES) and entry.is_file():
                            files.append((entry.stat().st_size, entry.path))
                    except OSError:
                        continue
        except OSError:
            continue
        if not complete:
            break
    files.sort(reverse=True)
    return {"count": len(files), "largest": files[0][1] if files else None,
            "largest_bytes": files[0][0] if files else 0, "complete": complete}


def check_models(folder: str | None, how: str, read_bytes: int, read_seconds: float,
                 mountinfo: str = "/proc/self/mountinfo") -> list[Check]:
    if folder is None:
        return [Check("models", "models folder", SKIPPED, f"no models folder to check ({how})")]
    if not os.path.isdir(folder):
        return [Check("models", "models folder", PROBLEM, f"{folder} ({how}) does not exist or is not a folder: "
                      "ComfyUI finds no models", facts={"dir": folder})]
    files = model_files(folder)
    out = []
    mount = doctor_system.mount_of(folder, mountinfo)
    facts = {"dir": folder, "files": files["count"], "largest": files["largest"],
             "largest_bytes": files["largest_bytes"], "walk_complete": files["complete"]}
    if mount is None:
        out.append(Check("models", "models folder", UNAVAILABLE, f"{folder}: the filesystem could not be read from "
                         f"{mountinfo}", facts=facts))
    else:
        name, meaning, slow = doctor_system.describe_filesystem(mount.fs_type)
        facts.update(fs_type=mount.fs_type, mount_point=mount.mount_point, source=mount.source)
        summary = (f"{folder}: {files['count']} model file(s){'' if files['complete'] else ' (walk stopped early)'}"
                   f", on {name} at {mount.mount_point}")
        out.append(Check("models", "models folder", WARNING if slow else OK, summary, [f"{name}: {meaning}"],
                         facts=facts))
    if not files["largest"]:
        out.append(Check("models_read", "model read speed", SKIPPED, "no model file to read"))
        return out
    read = doctor_system.read_throughput(files["largest"], read_bytes, read_seconds)
    mb_s = read["mb_per_s"]
    details = [f"read {format_bytes(read['bytes'])} of {files['largest']} in {format_duration(read['seconds'])} "
               f"({read['method']})"]
    cached = read["from_storage"] is not None and read["from_storage"] < 0.5 * read["bytes"]
    if cached:
        details.append(f"only {format_bytes(read['from_storage'])} came from storage: the rest was in the page "
                       "cache, so this is faster than a cold read")
    if mb_s and files["largest_bytes"]:
        details.append(f"reading all {format_bytes(files['largest_bytes'])} of it would take about "
                       f"{format_duration(files['largest_bytes'] / (mb_s * 1e6))}")
    status = WARNING if mb_s is not None and mb_s < SLOW_READ_MB_S and not cached else OK
    out.append(Check("models_read", "model read speed", status,
                     f"{mb_s:.0f} MB/s reading {os.path.basename(files['largest'])}" if mb_s else "nothing read",
                     details, fix="keep the models folder on a local SSD" if status == WARNING else None,
                     facts={**read, "file": files["largest"]}))
    return out


# --- Memory, containers, WSL ----------------------------------------------------------------------------------


def check_memory(largest_model: int, meminfo: str = "/proc/meminfo", proc_cgroup: str = "/proc/self/cgroup",
                 mountinfo: str = "/proc/self/mountinfo", osrelease: str = "/proc/sys/kernel/osrelease",
                 cgroup_root: str | None = None) -> list[Check]:
    """RAM and swap, the cgroup memory limit and WSL, against the largest model file; the paths are the files
    read (the tests give crafted ones; cgroup_root replaces the cgroup mount point)."""
    out = []
    mem = doctor_system.read_meminfo(meminfo)
    if mem is None:
        out.append(Check("ram", "RAM and swap", UNAVAILABLE, f"{meminfo} could not be read"))
    else:
        swap_used = mem["swap_total"] - mem["swap_free"]
        summary = (f"{format_bytes(mem['total'])} RAM, {format_bytes(mem['available'])} available; swap "
                   + (f"{format_bytes(mem['swap_total'])} ({format_bytes(swap_used)} used)" if mem["swap_total"]
                      else "none"))
        status, fix = OK, None
        if largest_model and mem["available"] is not None and mem["available"] < largest_model:
            status = WARNING
            summary += (f"; the largest model file ({format_bytes(largest_model)}) is more than the RAM available: "
                        "loading it pushes other memory to swap or gets ComfyUI killed")
            fix = "free RAM, add swap, or load a smaller (fp8, GGUF) variant"
        out.append(Check("ram", "RAM and swap", status, summary, fix=fix, facts=mem))
    cg = doctor_system.cgroup_memory(proc_cgroup, mountinfo, cgroup_root)
    if cg["version"] is None:
        out.append(Check("cgroup", "container memory limit", INFO, "no memory cgroup found", facts=cg))
    elif cg["limit"] is None:
        out.append(Check("cgroup", "container memory limit", OK, f"cgroup v{cg['version']} {cg['path']}: no memory "
                         "limit", facts=cg))
    else:
        summary = (f"cgroup v{cg['version']} limits memory to {format_bytes(cg['limit'])} (set at {cg['where']})"
                   + (f", swap to {format_bytes(cg['swap_limit'])}" if cg["swap_limit"] is not None else ""))
        status, fix = OK, None
        if largest_model and cg["limit"] < largest_model:
            status = PROBLEM
            summary += (f": below the largest model file ({format_bytes(largest_model)}); loading it gets ComfyUI "
                        "killed by the kernel's OOM killer")
            fix = "raise the container's memory limit (docker run --memory, Kubernetes resources.limits.memory)"
        out.append(Check("cgroup", "container memory limit", status, summary, fix=fix, facts=cg))
    kind = doctor_system.wsl(osrelease)
    out.append(Check("wsl", "WSL", INFO if kind else OK,
                     f"{kind}: models under /mnt/<drive> are read through 9p, slowly; keep them in the Linux "
                     "filesystem (~/ComfyUI/models)" if kind else "not WSL", facts={"wsl": kind}))
    return out


# --- Auth plugins -----------------------------------------------------------------------------------------------

_MIDDLEWARE = re.compile(rb"middlewares|@web\.middleware")
_AUTH_WORDS = re.compile(rb"HTTPUnauthorized|WWW-Authenticate|\b401\b|/login|Authorization|HTTPFound")


def auth_plugins(custom_nodes: str, max_files: int = 40, max_bytes: int = 200_000) -> list[dict]:
    """The custom nodes that guard ComfyUI's routes: known auth plugins by folder name, and any node whose
    top-level Python adds an aiohttp middleware that answers 401, redirects to a login page or reads the
    Authorization header. Bounded in files and bytes read."""
    found = []
    for name, path in _entries(custom_nodes):
        if name.startswith(".") or name == "__pycache__" or name.endswith(".disabled"):
            continue
        known = KNOWN_AUTH_PLUGINS.get(name.lower())
        if known:
            found.append({"node": name, "path": path, "plugin": known[0], "answers": known[1], "option": known[2]})
            continue
        sources = [path] if name.endswith(".py") else []
        if os.path.isdir(path):
            try:
                sources = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py"))[:max_files]
            except OSError:
                sources = []
        for source in sources:
            try:
                from ..core.files import open_regular

                fd = open_regular(source)
                with os.fdopen(fd, "rb") as f:
                    text = f.read(max_bytes)
            except OSError:
                continue
            if _MIDDLEWARE.search(text) and _AUTH_WORDS.search(text):
                answers = ("redirects to a login page" if b"/login" in text or b"HTTPFound" in text else
                           "answers 401" if b"401" in text or b"Unauthorized" in text else "checks Authorization")
                option = ("--user NAME --password SECRET" if b"Basic" in text else
                          "--token TOKEN, or --cookie name=value of a logged-in session")
                found.append({"node": name, "path": path, "plugin": None, "answers": answers, "option": option,
                              "evidence": os.path.relpath(source, custom_nodes)})
                break
    return found


def check_auth(folder: str | None) -> Check:
    if folder is None or not is_comfyui(folder):
        return Check("auth", "auth plugins", SKIPPED, "no ComfyUI to look in")
    nodes = os.path.join(folder, "custom_nodes")
    found = auth_plugins(nodes)
    if not found:
        return Check("auth", "auth plugins", OK, f"none in {nodes}", facts={"plugins": []})
    details = [f"{p['node']}" + (f" ({p['plugin']})" if p["plugin"] else f" (an auth middleware in {p['evidence']})")
               + f": {p['answers']}; stagetrace bench and load pass it with {p['option']}" for p in found]
    return Check("auth", "auth plugins", WARNING, f"{len(found)} auth plugin(s) guard ComfyUI's routes: "
                 + ", ".join(p["node"] for p in found) + "; requests without credentials get 401 or a login page",
                 details, fix="give stagetrace bench/load the credentials (--token, --user/--password, --cookie, "
                 "--header, or STAGETRACE_TOKEN...)", facts={"plugins": found})


# --- The command ---------------------------------------------------------------------------------------------


def run_doctor(comfyui: str | None = None, models_dir: str | None = None, cuda_device: int | None = None,
               default_device: int | None = None, read_mb: int = 256, read_seconds: float = 3.0) -> dict:
    """Every check; returns {"format_version", "exit_code", "problems", "warnings", "comfyui", "models_dir",
    "checks": [...]}."""
    started = time.monotonic()
    folder, how = locate_comfyui(comfyui)
    comfy_args = doctor_gpu.comfyui_process_args(folder) if folder else None
    container = doctor_gpu.in_container()
    gpu_env = {}  # the GPU probe's torch sees what ComfyUI will see
    if cuda_device is not None:
        gpu_env["CUDA_VISIBLE_DEVICES"] = str(cuda_device)
    elif default_device is None and comfy_args:
        gpu_env.update(comfy_args.get("env") or {})
        if comfy_args.get("cuda_device") is not None:
            gpu_env["CUDA_VISIBLE_DEVICES"] = str(comfy_args["cuda_device"])
    native_probe = Probe("native", NATIVE_PROBE_TIMEOUT_S)
    gpu_probe = Probe("gpu", GPU_PROBE_TIMEOUT_S, gpu_env)
    checks: list[Check] = []
    checks += bounded("comfyui", "ComfyUI", lambda: check_comfyui(folder, how))
    if folder and is_comfyui(folder):
        checks += bounded("hooks", "hook targets", lambda: check_hooks(folder))
    if models_dir:
        models, models_how = os.path.abspath(models_dir), "--models-dir"
    elif folder and is_comfyui(folder):
        models, models_how = os.path.join(folder, "models"), "ComfyUI's models folder"
    else:
        models, models_how = None, "no ComfyUI and no --models-dir"
    checks += bounded("models", "models folder",
                      lambda: check_models(models, models_how, read_mb << 20, read_seconds), CHECK_TIMEOUT_S + 10)
    largest = next((c.facts.get("largest_bytes") or 0 for c in checks if c.id == "models"), 0)
    checks += bounded("memory", "RAM, swap, cgroup, WSL", lambda: check_memory(largest))
    checks += bounded("auth", "auth plugins", lambda: check_auth(folder))
    native = native_probe.get()
    checks += check_extension(native, native_probe.error)
    gpu = gpu_probe.get()
    checks += bounded("gpu", "GPU", lambda: check_gpu(native, native_probe.error, gpu, gpu_probe.error, cuda_device,
                                                       default_device, comfy_args, container))
    checks += check_cupti(gpu, gpu_probe.error)
    checks.append(check_nvml_sample(native))
    checks.sort(key=lambda c: ORDER.index(c.id) if c.id in ORDER else len(ORDER))
    problems = sum(1 for c in checks if c.status == PROBLEM)
    warnings = sum(1 for c in checks if c.status == WARNING)
    return {"format_version": FORMAT_VERSION, "exit_code": EXIT_PROBLEMS if problems else EXIT_OK,
            "problems": problems, "warnings": warnings, "comfyui": folder, "models_dir": models,
            "seconds": round(time.monotonic() - started, 3), "checks": [asdict(c) for c in checks]}


ORDER = ["comfyui", "hooks", "extension", "nvtx", "driver", "torch", "devices", "device_choice", "cupti", "gpu_probe",
         "nvml", "gpu", "models", "models_read", "ram", "cgroup", "wsl", "memory", "auth"]
MARKS = {OK: "ok", INFO: "info", WARNING: "WARNING", PROBLEM: "PROBLEM", SKIPPED: "skipped",
         UNAVAILABLE: "unavailable"}


def render_text(result: dict) -> str:
    lines = ["StageTrace doctor"]
    width = max(len(c["title"]) for c in result["checks"])
    for c in result["checks"]:
        lines.append(f"  {MARKS[c['status']]:<11} {c['title']:<{width}}  {c['summary']}")
        for d in c["details"]:
            lines.append(f"  {'':<11} {'':<{width}}    {d}")
        if c["fix"] and c["status"] in (WARNING, PROBLEM):
            lines.append(f"  {'':<11} {'':<{width}}    fix: {c['fix']}")
    verdict = (f"{result['problems']} problem(s) that stop profiling or a GPU run" if result["problems"] else
               "nothing stops profiling or a GPU run")
    lines.append(f"{verdict}; {result['warnings']} warning(s) (exit {result['exit_code']}; "
                 f"{result['seconds']:.1f} s)")
    return "\n".join(lines)


def command(args) -> int:
    """The ``doctor`` subcommand: text or --json on stdout, the exit code."""
    result = run_doctor(args.comfyui, args.models_dir, args.cuda_device, args.default_device)
    print(json.dumps(result, indent=2, default=str) if args.json else render_text(result))
    return result["exit_code"]


def add_parser(sub) -> None:
    doctor = sub.add_parser("doctor", help="check everything StageTrace and a ComfyUI GPU run depend on, and say "
                            "what is wrong in plain words (exit 0 fine, 1 problems, 2 bad options)")
    doctor.add_argument("--comfyui", help="the ComfyUI to check (default: the one whose custom_nodes holds "
                        "StageTrace, else $COMFYUI_DIR)")
    doctor.add_argument("--models-dir", help="the models folder (default: the ComfyUI's models/)")
    doctor.add_argument("--cuda-device", type=int, default=None, metavar="N",
                        help="as ComfyUI's --cuda-device: check the GPU ComfyUI started with it would use")
    doctor.add_argument("--default-device", type=int, default=None, metavar="N",
                        help="as ComfyUI's --default-device")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=command)
