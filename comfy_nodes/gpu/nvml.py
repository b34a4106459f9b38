"""NVML: what `nvidia-smi` shows, sampled by a C thread (csrc/st_nvml.c) and tied to the stages."""

from __future__ import annotations

import logging

from .tracks import GPU_TRACK_TID

logger = logging.getLogger("stagetrace")


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

    def round_end(self) -> dict:
        """Records the prompt's samples as counter tracks through the C recorder; returns the round's
        metadata."""
        if not self.running:
            return {"sampler": "unavailable", "reason": self.reason}
        samples = self.native.nvml_drain()
        info = self.native.nvml_info()
        n = self.native
        for t_ns, device, gpu_pct, mem_pct, used, _total, temperature, power_mw in samples:
            for name, args in ((f"GPU {device} utilisation (%)", {"gpu": gpu_pct, "memory": mem_pct}),
                               (f"GPU {device} memory used (MB)", {"used": None if used is None else used / 1e6}),
                               (f"GPU {device} temperature (C)", {"temperature": temperature}),
                               (f"GPU {device} power (W)", {"power": None if power_mw is None else power_mw / 1e3})):
                args = {k: v for k, v in args.items() if v is not None}
                if args:
                    n.record(0, n.intern(name), 0, t_ns, t_ns, kind=n.EVENT_COUNTER, tid=GPU_TRACK_TID, args=args)
        meta = {"sampler": "nvml", "samples": len(samples), "dropped": info["dropped"], "errors": info["errors"],
                "last_error": info["last_error"] or None, "driver_version": info["driver_version"] or None,
                "cuda_driver_version": info["cuda_driver_version"] or None, "devices": info["devices"]}
        return meta
