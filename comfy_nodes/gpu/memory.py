"""Device facts and memory from torch, where ComfyUI already uses CUDA (StageTrace never initialises
it): name, compute capability, total memory; free/allocated/reserved at every node boundary as a
counter track recorded through the C recorder, and each node's peak."""

from __future__ import annotations

import sys

from .tracks import GPU_TRACK_TID


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

    def __init__(self, native=None) -> None:
        self.native = native  # records each sample as a counter event when given
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
        if self.native is not None:  # the "GPU memory (MB)" counter track: free / allocated / reserved
            n = self.native
            n.record(0, n.intern("GPU memory (MB)"), 0, t_ns, t_ns, kind=n.EVENT_COUNTER, tid=GPU_TRACK_TID,
                     args={"free": entry["free"] / 1e6, "allocated": entry["allocated"] / 1e6,
                           "reserved": entry["reserved"] / 1e6})

    def peaks(self) -> dict[str, int]:
        """Peak allocated bytes per node id (the largest when a node ran twice)."""
        out: dict[str, int] = {}
        for s in self.samples:
            if s.get("peak_allocated") is not None and s["node_id"] is not None:
                out[s["node_id"]] = max(out.get(s["node_id"], 0), s["peak_allocated"])
        return out


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
