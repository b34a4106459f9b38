"""GPU truth for each prompt: CUPTI activity attributed to the stage windows, and the device facts.

The C side (csrc/st_cupti.c, csrc/st_gpu.c) collects and aggregates; this module decides where
libcupti is, starts collection once, and turns each prompt's aggregates into trace events and
metadata. When CUPTI cannot be used, every trace says "GPU collection unavailable: <reason>" and
everything else, NVTX ranges included, works as before.
"""

from __future__ import annotations

import ctypes.util
import glob
import logging
import os
import sys
import sysconfig

from . import stages

logger = logging.getLogger("stagetrace")

GPU_TRACK_TID = 0x6770_0000  # the "GPU (CUPTI)" track's thread id in the trace
COPY_DIRECTIONS = ("htod", "dtoh", "dtod", "htoh", "ptop", "other")


def _site_dirs() -> list[str]:
    dirs = [sysconfig.get_paths().get(key) for key in ("purelib", "platlib")]
    dirs += [p for p in sys.path if p.endswith("-packages")]
    return list(dict.fromkeys(d for d in dirs if d))


def _torch_cuda_major() -> int | None:
    torch = sys.modules.get("torch")  # never import torch just for this
    version = getattr(getattr(torch, "version", None), "cuda", None)
    try:
        return int(str(version).split(".")[0]) if version else None
    except ValueError:
        return None


def cupti_candidates() -> list[str]:
    """Where libcupti is looked for, in this order:
    1. $STAGETRACE_CUPTI_LIB (a path to a libcupti.so);
    2. NVIDIA's wheels in this Python's site-packages, the CUDA major version torch uses first
       (CUDA 13: nvidia/cu13/lib/libcupti.so.13; CUDA 12: nvidia/cuda_cupti/lib/libcupti.so.12);
    3. $CUDA_HOME (or $CUDA_PATH) /extras/CUPTI/lib64, and /usr/local/cuda's;
    4. the system's library path (libcupti.so.13, .12, libcupti.so)."""
    env = os.environ.get("STAGETRACE_CUPTI_LIB")
    if env:
        return [env]
    wheels = {13: os.path.join("nvidia", "cu13", "lib", "libcupti.so.13"),
              12: os.path.join("nvidia", "cuda_cupti", "lib", "libcupti.so.12")}
    major = _torch_cuda_major()
    order = sorted(wheels, key=lambda m: (m != major, -m))
    paths = [os.path.join(site, wheels[m]) for m in order for site in _site_dirs()]
    for root in filter(None, (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda")):
        paths += sorted(glob.glob(os.path.join(root, "extras", "CUPTI", "lib64", "libcupti.so*")), reverse=True)
    paths = [p for p in dict.fromkeys(paths) if os.path.isfile(p)]
    return paths + ["libcupti.so.13", "libcupti.so.12", "libcupti.so"]


def _driver_hint() -> str:
    """Why CUPTI could not start, as far as can be told without loading the driver."""
    if ctypes.util.find_library("cuda") is None:
        return "no NVIDIA driver (libcuda not found)"
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and not cuda.is_available():
            return "torch sees no usable CUDA device"
    except Exception:  # noqa: BLE001 - a broken torch must not stop the prompt
        pass
    return ""


class GpuCollection:
    """Starts CUPTI once, and per prompt: a fresh round of windows, then the aggregates."""

    def __init__(self, native, enabled: bool = True, kernels: int = 0):
        self.native = native
        self.active = False
        self.kernels = kernels  # per-record events kept a round (STAGETRACE_GPU_KERNELS)
        self.reason = "disabled (STAGETRACE_GPU=0)"
        if enabled:
            self._start()

    def _start(self) -> None:
        try:
            ok, _status, why = self.native.cupti_start(cupti_candidates())
        except Exception as exc:  # noqa: BLE001 - never break the host
            ok, why = False, f"{type(exc).__name__}: {exc}"
        self.active = bool(ok)
        if ok:
            self.native.gpu_set_detail(self.kernels)
            self.native.gpu_set_windows(True)
            self.reason = ""
            info = self.native.cupti_info()
            logger.info("StageTrace: GPU activity from %s (CUPTI %s)", info["library"], info["version"])
            return
        hint = _driver_hint()
        self.reason = f"{hint}; {why}" if hint else why
        logger.info("StageTrace: GPU collection unavailable: %s", self.reason)

    def round_begin(self) -> None:
        """A prompt starts: forget the last prompt's windows."""
        if self.active:
            self.native.gpu_reset()

    def round_end(self) -> tuple[list[dict], dict, list[tuple]]:
        """A prompt ended: flush CUPTI, read the aggregates. Returns (per-window reports, metadata,
        the kept records when STAGETRACE_GPU_KERNELS asks for them)."""
        if not self.active:
            return [], {"collection": "unavailable", "reason": f"GPU collection unavailable: {self.reason}"}, []
        self.native.cupti_flush(True)
        reports = self.native.gpu_report()
        detail = self.native.gpu_detail() if self.kernels else []
        counters = self.native.gpu_counters()
        info = self.native.cupti_info()
        meta = {
            "collection": "cupti",
            "library": info["library"],
            "cupti_version": info["version"],
            "timestamps": "CUPTI stamps with the trace clock" if info["own_clock"]
            else f"CUPTI clock + {info['clock_offset_ns']} ns",
            "records": counters["records"],
            "dropped_records": counters["dropped_records"],
            "dropped_windows": counters["dropped_windows"],
            "unattributed_records": counters["unattributed"],
            "buffers_refused": info["buffers_refused"],
            "kernel_events": len(detail),
            "kernel_events_dropped": counters["detail_dropped"],
        }
        return reports, meta, detail


def window_events(reports: list[dict], name_of, pid: int) -> list[dict]:
    """Trace events for the GPU track: one complete event per window that had GPU work, from its
    first record's start to its last record's end, carrying the window's figures."""
    events: list[dict] = []
    if not reports:
        return events
    events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": GPU_TRACK_TID,
                   "args": {"name": "GPU (CUPTI)"}})
    events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": GPU_TRACK_TID,
                   "args": {"sort_index": -1}})
    for r in reports:
        stage = stages.STAGES[r["stage"]] if r["window"] and r["stage"] < len(stages.STAGES) else None
        name = (name_of(r["name_id"]) or stage or "?") if r["window"] else "outside every stage"
        events.append({
            "ph": "X", "cat": "gpu", "name": f"GPU: {name}", "pid": pid, "tid": GPU_TRACK_TID,
            "ts": r["first_ns"] / 1e3, "dur": max(0, r["last_ns"] - r["first_ns"]) / 1e3,
            "args": gpu_args(r, stage),
        })
    return events


def _torch_cuda():
    """torch.cuda when ComfyUI has already initialised CUDA; StageTrace never initialises it."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except Exception:  # noqa: BLE001
        return None


def device_facts() -> list[dict]:
    """Per CUDA device, from torch: name, compute capability (FP8 compute needs sm_89 or newer),
    total memory, and the CUDA runtime torch was built with. Empty when CUDA is not in use."""
    cuda = _torch_cuda()
    if cuda is None:
        return []
    torch = sys.modules["torch"]
    facts = []
    for index in range(cuda.device_count()):
        props = cuda.get_device_properties(index)
        capability = (int(props.major), int(props.minor))
        facts.append({
            "index": index,
            "name": str(props.name),
            "compute_capability": f"{capability[0]}.{capability[1]}",
            "fp8_compute": capability >= (8, 9),
            "total_memory_bytes": int(props.total_memory),
            "cuda_runtime": getattr(torch.version, "cuda", None),
        })
    return facts


class TorchMemory:
    """Device memory at every node boundary, from torch's allocator (when ComfyUI uses CUDA): free and
    total memory of the device, allocated and reserved by torch, and the peak allocated during the node
    (the peak counter is reset at each node start; ComfyUI itself reads only current figures)."""

    def __init__(self) -> None:
        self.samples: list[dict] = []

    def clear(self) -> None:
        self.samples = []

    def sample(self, t_ns: int, node_id: str | None, boundary: str) -> None:
        cuda = _torch_cuda()
        if cuda is None:
            return
        device = cuda.current_device()
        free, total = cuda.mem_get_info(device)
        entry = {"t_ns": t_ns, "node_id": node_id, "boundary": boundary, "free": int(free), "total": int(total),
                 "allocated": int(cuda.memory_allocated(device)), "reserved": int(cuda.memory_reserved(device))}
        if boundary == "end":
            entry["peak_allocated"] = int(cuda.max_memory_allocated(device))
        else:
            cuda.reset_peak_memory_stats(device)
        self.samples.append(entry)

    def events(self, pid: int) -> list[dict]:
        """Counter tracks: "GPU memory (MB)" with free / allocated / reserved at each node boundary."""
        return [{"ph": "C", "name": "GPU memory (MB)", "pid": pid, "tid": GPU_TRACK_TID, "ts": s["t_ns"] / 1e3,
                 "args": {"free": s["free"] / 1e6, "allocated": s["allocated"] / 1e6,
                          "reserved": s["reserved"] / 1e6}} for s in self.samples]

    def peaks(self) -> dict[str, int]:
        """Peak allocated bytes per node id (the largest when a node ran twice)."""
        out: dict[str, int] = {}
        for s in self.samples:
            if s.get("peak_allocated") is not None and s["node_id"] is not None:
                out[s["node_id"]] = max(out.get(s["node_id"], 0), s["peak_allocated"])
        return out


class NvmlSampler:
    """What `nvidia-smi` shows once a second, at 10 Hz and tied to the stages: utilisation, memory used,
    temperature and power of every GPU, sampled in a C thread through NVML (csrc/st_nvml.c) and written
    as counter tracks over each prompt; NVML's device facts (driver version, compute capability)."""

    def __init__(self, native, enabled: bool = True, hz: int = 10):
        self.native = native
        self.running = False
        self.reason = "disabled (STAGETRACE_NVML=0)"
        if not enabled:
            return
        try:
            ok, why = native.nvml_start(max(1, 1000 // max(1, hz)))
        except Exception as exc:  # noqa: BLE001 - never break the host
            ok, why = False, f"{type(exc).__name__}: {exc}"
        self.running, self.reason = bool(ok), "" if ok else why
        if not ok:
            logger.info("StageTrace: GPU sampling (NVML) unavailable: %s", why)

    def round_begin(self) -> None:
        if self.running:
            self.native.nvml_drain()  # samples between prompts are not this prompt's

    def round_end(self, pid: int) -> tuple[list[dict], dict]:
        """(counter events, metadata) for the prompt that just ended."""
        if not self.running:
            return [], {"sampler": "unavailable", "reason": self.reason}
        samples = self.native.nvml_drain()
        info = self.native.nvml_info()
        events = []
        for t_ns, device, gpu_pct, mem_pct, used, _total, temperature, power_mw in samples:
            ts = t_ns / 1e3
            for name, args in ((f"GPU {device} utilisation (%)", {"gpu": gpu_pct, "memory": mem_pct}),
                               (f"GPU {device} memory used (MB)", {"used": None if used is None else used / 1e6}),
                               (f"GPU {device} temperature (C)", {"temperature": temperature}),
                               (f"GPU {device} power (W)", {"power": None if power_mw is None else power_mw / 1e3})):
                args = {k: v for k, v in args.items() if v is not None}
                if args:
                    events.append({"ph": "C", "name": name, "pid": pid, "tid": GPU_TRACK_TID, "ts": ts,
                                   "args": args})
        meta = {"sampler": "nvml", "samples": len(samples), "dropped": info["dropped"], "errors": info["errors"],
                "last_error": info["last_error"] or None, "driver_version": info["driver_version"] or None,
                "cuda_driver_version": info["cuda_driver_version"] or None, "devices": info["devices"]}
        return events, meta


def merge_devices(torch_facts: list[dict], nvml_meta: dict) -> list[dict]:
    """Device facts from torch where CUDA is in use, else from NVML; NVML adds the driver version."""
    devices = [dict(d) for d in torch_facts]
    if not devices:
        for d in nvml_meta.get("devices") or ():
            cc = d.get("compute_capability")
            major_minor = tuple(int(x) for x in cc.split(".")) if cc else None
            devices.append({"index": d["index"], "name": d["name"], "compute_capability": cc,
                            "fp8_compute": None if major_minor is None else major_minor >= (8, 9),
                            "total_memory_bytes": d["total_memory_bytes"] or None, "cuda_runtime": None})
    for d in devices:
        d["driver_version"] = nvml_meta.get("driver_version")
        d["cuda_driver_version"] = nvml_meta.get("cuda_driver_version")
    return devices


def record_events(records: list[tuple], pid: int) -> list[dict]:
    """Per-record trace events (STAGETRACE_GPU_KERNELS): one track per CUDA stream."""
    events: list[dict] = []
    for stream in sorted({r[4] for r in records}):
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": GPU_TRACK_TID + 1 + stream,
                       "args": {"name": f"GPU stream {stream}"}})
    for kind, start, end, device, stream, name, nbytes, copy in records:
        args: dict = {"device": device, "stream": stream}
        if kind == "kernel":
            label = name or "kernel"
        else:
            label = f"{kind} {copy.upper()}" if copy else kind
            args["bytes"] = nbytes
        events.append({"ph": "X", "cat": f"gpu.{kind}", "name": label, "pid": pid, "tid": GPU_TRACK_TID + 1 + stream,
                       "ts": start / 1e3, "dur": max(0, end - start) / 1e3, "args": args})
    return events


def gpu_args(r: dict, stage: str | None = None) -> dict:
    """A window's GPU figures in the units a reader expects (ms, bytes)."""
    args = {
        "stage": stage,
        "window": r["window"],
        "busy_ms": r["busy_ns"] / 1e6,
        "kernels": r["kernels"],
        "kernel_ms": r["kernel_ns"] / 1e6,
        "top_kernels": [{"name": name, "count": count, "ms": ns / 1e6} for name, count, ns in r["top_kernels"]],
        "copies": {d: {"count": c["count"], "bytes": c["bytes"], "ms": c["ns"] / 1e6}
                   for d, c in r["copies"].items()},
        "memsets": r["memsets"],
        "memset_bytes": r["memset_bytes"],
    }
    if r["window"] and r["t1"]:
        span = r["t1"] - r["t0"]
        args["window_ms"] = span / 1e6
        args["busy_fraction"] = r["busy_ns"] / span if span else None
    return args
