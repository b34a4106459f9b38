"""The parts of `stagetrace doctor` that load native libraries: the C core, NVTX, NVML, torch, CUPTI and the GPU
probe. Each part runs in a child process (``python -m <package>.cli.doctor_probe PART``), which prints one JSON
line: a library that hangs, crashes or takes the process down (a broken driver, a torch import that never ends)
costs doctor that one check, never doctor itself, and CUPTI, which loads once per process, starts fresh.

Parts:
- ``native``: the C core importable, NVTX compiled in and a tool attached or not, an NVML sample of every GPU;
- ``gpu``: torch's version and CUDA build, every device torch sees, CUPTI loadable, and with a CUDA device
  the probe: a host-to-device copy, one known kernel and a device-to-host copy inside a probe GPU window,
  which CUPTI must attribute to that window with the exact byte counts.
"""

from __future__ import annotations

import json
import os
import sys
import time

PROBE_WINDOW = "stagetrace doctor probe"
PROBE_BYTES = 4 << 20  # each way: float32 values, so PROBE_BYTES / 4 of them


def _native():
    from ..core import native

    if native._native is None:
        return None, native.LOAD_ERROR
    return native._native, None


def nvtx_facts(n) -> dict:
    """NVTX compiled in, and whether a tool (Nsight Systems, or NVTX_INJECTION64_PATH's library) took the
    calls: a range gets a non-zero id only when one did."""
    env = {k: os.environ[k] for k in ("NVTX_INJECTION64_PATH", "NVTX_INJECTION32_PATH") if os.environ.get(k)}
    out = {"compiled": bool(n.NVTX_COMPILED), "env": env, "attached": False}
    if n.NVTX_COMPILED:
        n.nvtx_set_enabled(True)
        range_id = n.nvtx_range_start(0, n.intern(PROBE_WINDOW), 0)
        n.nvtx_range_end(range_id)
        out["attached"] = range_id != 0
    return out


def nvml_facts(n, seconds: float = 0.3) -> dict:
    """One NVML sample of every GPU (the C sampler, run for ``seconds``): name, compute capability, memory
    total/used/free, utilisation, temperature, power; the driver's versions."""
    ok, why = n.nvml_start(50)
    if not ok:
        return {"ok": False, "reason": why}
    try:
        deadline = time.monotonic() + seconds
        latest = []
        while time.monotonic() < deadline:
            time.sleep(0.06)
            latest = n.nvml_latest()
        info = n.nvml_info()
    finally:
        n.nvml_stop()
    devices = {d["index"]: dict(d) for d in info["devices"]}
    for _t, index, gpu_pct, mem_pct, used, total, temperature, power_mw in latest:
        d = devices.setdefault(index, {"index": index, "name": "", "compute_capability": None})
        total = total or d.get("total_memory_bytes") or None
        d.update(gpu_util_pct=gpu_pct, mem_util_pct=mem_pct, used_bytes=used, total_memory_bytes=total,
                 free_bytes=(total - used) if total is not None and used is not None else None,
                 temperature_c=temperature, power_w=None if power_mw is None else power_mw / 1e3)
    return {"ok": True, "driver_version": info["driver_version"] or None,
            "cuda_driver_version": info["cuda_driver_version"] or None, "samples": len(latest),
            "errors": info["errors"], "last_error": info["last_error"] or None,
            "devices": [devices[i] for i in sorted(devices)]}


def native_part() -> dict:
    n, error = _native()
    out = {"built": n is not None, "error": error, "module": getattr(n, "__file__", None)}
    if n is None:
        return out
    for key, fn in (("nvtx", nvtx_facts), ("nvml", nvml_facts)):
        try:
            out[key] = fn(n)
        except Exception as exc:  # noqa: BLE001 - one failing fact never hides the others
            out[key] = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    return out


def torch_facts(torch) -> dict:
    out = {"installed": True, "version": torch.__version__, "cuda": torch.version.cuda,
           "hip": getattr(torch.version, "hip", None), "available": False, "devices": []}
    out["available"] = bool(torch.cuda.is_available())
    if not out["available"]:
        return out
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        out["devices"].append({"index": i, "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                               "total_memory_bytes": int(total), "free_bytes": int(free),
                               "uuid": str(getattr(props, "uuid", "") or "") or None,
                               "pci_bus_id": getattr(props, "pci_bus_id", None)})
    out["current_device"] = torch.cuda.current_device()
    return out


def attribution_probe(n, torch, nbytes: int = PROBE_BYTES) -> dict:
    """Inside one GPU window: nbytes host to device, one multiply kernel, nbytes device to host; CUPTI's report
    for that window, and whether it says exactly that. CUPTI must already be started."""
    device = torch.device("cuda", torch.cuda.current_device())
    host = torch.arange(nbytes // 4, dtype=torch.float32)
    (host[:1024].to(device) * 2.0).cpu()  # warm-up outside the window: lazy module loading, the allocator
    torch.cuda.synchronize()
    n.cupti_flush(True)
    n.gpu_reset()
    window = n.gpu_window_open(n.STAGES.index("other"), n.intern(PROBE_WINDOW), n.now_ns())
    on_device = host.to(device)
    doubled = torch.mul(on_device, 2.0)
    back = doubled.cpu()
    torch.cuda.synchronize()
    n.gpu_window_close(window, n.now_ns())
    n.cupti_flush(True)
    reports = {r["window"]: r for r in n.gpu_report()}
    mine = reports.get(window) or {"kernels": 0, "copies": {}}
    copies = mine.get("copies") or {}
    htod, dtoh = copies.get("htod") or {}, copies.get("dtoh") or {}
    result = {"window": window, "bytes_each_way": nbytes, "kernels": mine.get("kernels", 0),
              "top_kernels": [k[0] for k in mine.get("top_kernels") or []][:3],
              "htod": htod, "dtoh": dtoh, "busy_ns": mine.get("busy_ns"),
              "outside_window": {k: v for k, v in (reports.get(0) or {}).items() if k in ("kernels", "copies")},
              "values_ok": bool(torch.equal(back, host * 2.0))}
    wrong = []
    if result["kernels"] != 1:
        wrong.append(f"{result['kernels']} kernel(s) attributed to the probe window, not 1")
    for name, facts in (("host-to-device", htod), ("device-to-host", dtoh)):
        if facts.get("count") != 1 or facts.get("bytes") != nbytes:
            wrong.append(f"{name}: {facts.get('count', 0)} copies of {facts.get('bytes', 0)} bytes, not 1 of "
                         f"{nbytes}")
    if not result["values_ok"]:
        wrong.append("the copied values came back wrong")
    result["ok"], result["wrong"] = not wrong, wrong
    return result


def gpu_part() -> dict:
    import importlib.util

    try:
        installed = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken torch install: importing it says more
        installed = True
    out: dict = {"torch": {"installed": installed}}
    torch = None
    if installed:
        try:
            import torch

            out["torch"] = torch_facts(torch)
        except Exception as exc:  # noqa: BLE001 - a broken torch is a finding, not a crash
            out["torch"] = {"installed": True, "error": f"{type(exc).__name__}: {exc}"}
            torch = None
    n, error = _native()
    if n is None:
        out["cupti"] = {"loadable": False, "reason": error}
        return out
    from ..gpu.cupti import _driver_hint, cupti_candidates

    candidates = cupti_candidates()
    ok, status, reason = n.cupti_start(candidates)
    info = n.cupti_info()
    out["cupti"] = {"loadable": bool(info.get("library")), "library": info.get("library") or None,
                    "version": info.get("version") or None, "collecting": bool(ok), "status": status,
                    "reason": reason or None, "hint": _driver_hint() or None, "searched": candidates}
    if ok and torch is not None and out["torch"].get("available"):
        try:
            out["probe"] = attribution_probe(n, torch)
        except Exception as exc:  # noqa: BLE001
            out["probe"] = {"ok": False, "wrong": [f"the probe failed: {type(exc).__name__}: {exc}"]}
    if ok:
        n.cupti_stop()
    return out


PARTS = {"native": native_part, "gpu": gpu_part}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in PARTS:
        print(f"usage: python -m {__package__}.doctor_probe {'|'.join(PARTS)}", file=sys.stderr)
        return 2
    try:
        result = PARTS[argv[0]]()
    except Exception as exc:  # noqa: BLE001 - say what failed in the one line doctor reads
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("DOCTOR-PROBE " + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
