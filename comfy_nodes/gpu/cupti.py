"""CUPTI activity for each prompt: where libcupti is, starting collection once (with the first
prompt, not on import), and each prompt's round of stage windows.

The C side (csrc/st_cupti.c, csrc/st_gpu.c) collects and aggregates. When CUPTI cannot be used, every
trace says "GPU collection unavailable: <reason>" and everything else, NVTX ranges included, works as
before.
"""

from __future__ import annotations

import ctypes.util
import glob
import logging
import os
import sys
import sysconfig

logger = logging.getLogger("stagetrace")


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
            # CUPTI calls that failed since collection started (each logged once), and the last one's text
            "cupti_errors": info.get("errors", 0),
            "cupti_last_error": info.get("last_error") or None,
        }
        return reports, meta, detail
