"""Which GPU ComfyUI will use and why, and whether a bigger or idle GPU is left unused: `stagetrace doctor`'s
reading of ComfyUI's options (--cuda-device, --default-device), CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER and, in
a container, NVIDIA_VISIBLE_DEVICES, against the GPUs NVML (and torch, when it sees them) lists.

Pure functions of their arguments: the tests give them devices and environments."""

from __future__ import annotations

import os
import re

from ..core.units import format_bytes

FP8_MIN_CC = (8, 9)  # Ada (sm_89) and newer compute in FP8; older GPUs cast FP8 weights up on every layer
BIGGER = 1.10  # a GPU with 10 % more memory than the one in use counts as bigger
IDLE_USED_FRACTION = 0.05  # an idle GPU: 0 % busy and under 5 % of its memory used


def compute_capability(device: dict) -> tuple[int, int] | None:
    try:
        major, minor = str(device.get("compute_capability")).split(".")
        return int(major), int(minor)
    except (TypeError, ValueError):
        return None


def has_fp8(device: dict) -> bool | None:
    cc = compute_capability(device)
    return None if cc is None else cc >= FP8_MIN_CC


def parse_visible(value: str) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: the entries up to the first one it cannot use ([] hides every
    GPU); None when unset."""
    if value is None:
        return None
    out = []
    for entry in value.split(","):
        entry = entry.strip()
        if re.fullmatch(r"\d+", entry) or re.fullmatch(r"(GPU|MIG)-[0-9A-Za-z-/]+", entry):
            out.append(entry)
        else:
            break  # CUDA stops at the first invalid entry (-1 hides everything from there)
    return out


def comfyui_process_args(comfyui_dir: str | None, proc: str = "/proc") -> dict | None:
    """The command line and GPU environment of a ComfyUI running from comfyui_dir (its main.py), read from
    /proc: {"pid", "cuda_device", "default_device", "cpu", "env": {CUDA_VISIBLE_DEVICES...}}; None when none
    is found or it cannot be read."""
    if not comfyui_dir:
        return None
    main = os.path.realpath(os.path.join(comfyui_dir, "main.py"))
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    for pid in pids[:100000]:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                argv = [a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0") if a]
            cwd = os.readlink(os.path.join(proc, pid, "cwd"))
        except OSError:
            continue
        script = next((a for a in argv[1:3] if a.endswith("main.py")), None)
        if not script or os.path.realpath(os.path.join(cwd, script)) != main:
            continue
        out = {"pid": int(pid), "cuda_device": _option(argv, "--cuda-device"),
               "default_device": _option(argv, "--default-device"), "cpu": "--cpu" in argv, "env": {}}
        try:
            with open(os.path.join(proc, pid, "environ"), "rb") as f:
                for item in f.read().split(b"\0"):
                    key, _, value = item.decode("utf-8", "surrogateescape").partition("=")
                    if key in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES"):
                        out["env"][key] = value
        except OSError:
            out["env"] = None  # another user's process: its environment is not ours to read
        return out
    return None


def _option(argv: list[str], name: str) -> int | None:
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == name and i + 1 < len(argv) else arg[len(name) + 1:] \
            if arg.startswith(name + "=") else None
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def in_container(dockerenv: str = "/.dockerenv", containerenv: str = "/run/.containerenv",
                 cgroup: str = "/proc/1/cgroup") -> bool:
    if os.path.exists(dockerenv) or os.path.exists(containerenv):
        return True
    try:
        with open(cgroup) as f:
            text = f.read()
    except OSError:
        return False
    return any(word in text for word in ("docker", "kubepods", "containerd", "libpod", "lxc"))


def choose_device(nvml_devices: list[dict], env: dict, cuda_device: int | None = None,
                  default_device: int | None = None, torch_devices: list[dict] | None = None,
                  container: bool = False, cpu: bool = False) -> dict:
    """Which GPU ComfyUI will use and why. Returns {"index": NVML index or None, "why": [reasons],
    "problems": [what stops ComfyUI from using a GPU], "warnings": [a GPU left out by configuration], "notes":
    [...], "exact": whether the CUDA-to-NVML numbering is known, "cuda_visible_devices": the value ComfyUI's
    process will have}."""
    why, problems, notes = [], [], []
    visible_value = env.get("CUDA_VISIBLE_DEVICES")
    if cuda_device is not None:
        visible_value = str(cuda_device)
        why.append(f"ComfyUI's --cuda-device {cuda_device} sets CUDA_VISIBLE_DEVICES={cuda_device}: it sees "
                   "that GPU alone")
    elif default_device is not None:
        order = [default_device] + [i for i in range(32) if i != default_device]
        visible_value = ",".join(map(str, order))
        why.append(f"ComfyUI's --default-device {default_device} lists GPU {default_device} first; the others stay "
                   "visible")
    elif visible_value is not None:
        why.append(f"CUDA_VISIBLE_DEVICES={visible_value!r} in the environment")
    nv_visible = env.get("NVIDIA_VISIBLE_DEVICES")
    if nv_visible is not None and (container or not nvml_devices):
        notes.append(f"NVIDIA_VISIBLE_DEVICES={nv_visible!r}: the container runtime exposes "
                     + ("no GPU" if nv_visible.strip().lower() in ("", "void", "none") else
                        "every GPU" if nv_visible.strip().lower() == "all" else f"GPU(s) {nv_visible}")
                     + " to this container")
    out = {"index": None, "why": why, "problems": problems, "warnings": [], "notes": notes, "exact": True,
           "cuda_visible_devices": visible_value, "cpu": cpu}
    if cpu:
        why.append("ComfyUI runs with --cpu: it uses no GPU")
        return out
    if not nvml_devices:
        if nv_visible is not None and nv_visible.strip().lower() in ("", "void", "none"):
            out["warnings"].append(f"the container was started without a GPU (NVIDIA_VISIBLE_DEVICES="
                                   f"{nv_visible!r}): to use one, start it with --gpus all (docker) or request "
                                   "nvidia.com/gpu (Kubernetes)")
        elif container:
            notes.append("no GPU is visible in this container; if the machine has one, start the container with "
                         "--gpus all (docker, with the NVIDIA Container Toolkit) or request nvidia.com/gpu "
                         "(Kubernetes)")
        return out
    visible = parse_visible(visible_value)
    if visible is not None and not visible:
        problems.append(f"CUDA_VISIBLE_DEVICES={visible_value!r} hides every GPU: ComfyUI runs on the CPU although "
                        f"{len(nvml_devices)} GPU(s) are here; unset it or name a GPU")
        return out
    first = visible[0] if visible else "0"
    if not first.isdigit():
        out["exact"] = False
        notes.append(f"the first visible GPU is named by UUID ({first}); StageTrace cannot match it to NVML's list")
        return out
    cuda_index = int(first)
    order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    index = cuda_index
    if torch_devices:
        match = _match(torch_devices[0], nvml_devices)
        if match is not None:
            index = match
    elif order != "PCI_BUS_ID" and len({(d.get("name"), d.get("total_memory_bytes")) for d in nvml_devices}) > 1:
        out["exact"] = False
        notes.append("CUDA numbers GPUs fastest first (CUDA_DEVICE_ORDER is not PCI_BUS_ID) while NVML and "
                     "nvidia-smi number them by PCI bus, so CUDA's GPU numbers may not be nvidia-smi's; set "
                     "CUDA_DEVICE_ORDER=PCI_BUS_ID to make them agree")
    if index >= len(nvml_devices):
        problems.append(f"ComfyUI asks for GPU {cuda_index}, but only {len(nvml_devices)} GPU(s) are here: CUDA "
                        "finds no device and ComfyUI runs on the CPU (or fails)")
        return out
    if not why:
        why.append("the first GPU CUDA lists (no --cuda-device, no CUDA_VISIBLE_DEVICES)")
    out["index"] = index
    return out


def _match(torch_device: dict, nvml_devices: list[dict]) -> int | None:
    """The NVML index of the GPU torch calls device 0: same name and memory within 2 %, when exactly one fits."""
    fits = [d["index"] for d in nvml_devices if d.get("name") == torch_device.get("name")
            and d.get("total_memory_bytes") and torch_device.get("total_memory_bytes")
            and abs(d["total_memory_bytes"] - torch_device["total_memory_bytes"]) <= 0.02 * d["total_memory_bytes"]]
    return fits[0] if len(fits) == 1 else None


def idle(device: dict) -> bool:
    used, total = device.get("used_bytes"), device.get("total_memory_bytes")
    return device.get("gpu_util_pct") == 0 and used is not None and bool(total) and used < IDLE_USED_FRACTION * total


def describe(device: dict) -> str:
    total = device.get("total_memory_bytes")
    return f"GPU {device['index']} ({device.get('name') or 'unnamed'}, {format_bytes(total)})"


def unused_devices(nvml_devices: list[dict], chosen: int | None, exact: bool = True) -> list[dict]:
    """The GPUs ComfyUI leaves unused that would serve better: each {"index", "bigger", "idle", "message"}."""
    if chosen is None or chosen >= len(nvml_devices):
        return []
    used = nvml_devices[chosen]
    out = []
    for d in nvml_devices:
        if d["index"] == chosen:
            continue
        bigger = bool(d.get("total_memory_bytes") and used.get("total_memory_bytes")
                      and d["total_memory_bytes"] > BIGGER * used["total_memory_bytes"])
        is_idle = idle(d)
        if not bigger and not is_idle:
            continue
        state = (f"idle ({d.get('gpu_util_pct')} % busy, {format_bytes(d.get('used_bytes'))} used)" if is_idle
                 else f"{d.get('gpu_util_pct')} % busy")
        option = f"--cuda-device {d['index']}" if exact else \
            f"CUDA_DEVICE_ORDER=PCI_BUS_ID and --cuda-device {d['index']}"
        if bigger:
            message = (f"{describe(d)} is bigger than the GPU ComfyUI will use, {describe(used)}, and left unused, "
                       f"{state}: a model that does not fit in {format_bytes(used.get('total_memory_bytes'))} is "
                       f"offloaded and streamed every step; start ComfyUI with {option} to use it")
        else:
            message = (f"{describe(d)} is {state} and left unused beside {describe(used)}; a second ComfyUI with "
                       f"{option} would use it")
        out.append({"index": d["index"], "bigger": bigger, "idle": is_idle, "message": message})
    return out


def cuda_mismatch(torch_cuda: str | None, driver_cuda: int | None) -> str | None:
    """Why torch's CUDA build cannot run on this driver, or None. driver_cuda: NVML's 12040 for 12.4."""
    if not torch_cuda or not driver_cuda:
        return None
    try:
        major, minor = (int(x) for x in torch_cuda.split(".")[:2])
    except ValueError:
        return None
    d_major, d_minor = driver_cuda // 1000, (driver_cuda % 1000) // 10
    if major > d_major:
        return (f"torch is built for CUDA {torch_cuda} but the driver supports CUDA {d_major}.{d_minor} at most: "
                f"torch cannot use the GPU; update the NVIDIA driver, or install a torch built for CUDA {d_major}.x")
    return None
