"""GPU proof: StageTrace on a real NVIDIA GPU, no test double anywhere. Marked ``gpu``; every test skips, saying
why, unless torch sees a CUDA device (scripts/device_check.sh runs them on a lent GPU machine).

- CUPTI attribution of a known torch workload: exact kernel counts per window, host-to-device and
  device-to-host copies with their exact bytes, nothing of it outside its window; the same through the
  production path (stage spans opening GPU windows);
- NVML samples of every GPU (the C sampler on the real libnvidia-ml);
- device facts: NVML's and torch's names, compute capabilities and memory agree;
- `stagetrace doctor`: its GPU probe passes and its GPU checks see the devices.

CUPTI loads once per process, so each scenario runs in a fresh interpreter (as tests/test_gpu.py does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_devices():
    """The CUDA devices torch sees (in a child process: this one never initialises CUDA); skips without one, or
    without the C extension."""
    try:
        from comfy_nodes import _native  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"C extension not built: run python setup.py build_ext --inplace ({exc})")
    probe = ("import json, torch\n"
             "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
             "print(json.dumps([{'name': torch.cuda.get_device_properties(i).name, 'cc': '%d.%d' % "
             "torch.cuda.get_device_capability(i), 'total': torch.cuda.get_device_properties(i).total_memory} "
             "for i in range(n)]))")
    try:
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180,
                              env={**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    except subprocess.TimeoutExpired:
        pytest.skip("torch took over 180 s to say whether a CUDA device is present")
    if proc.returncode != 0:
        pytest.skip(f"torch is not usable here: {proc.stderr.strip().splitlines()[-1:]}")
    devices = json.loads(proc.stdout.strip().splitlines()[-1])
    if not devices:
        pytest.skip("no CUDA device: torch.cuda.is_available() is False (the gpu tests need a real NVIDIA GPU)")
    return devices


PRELUDE = """
import json, os, sys
import torch
from comfy_nodes import _native as n
from comfy_nodes.gpu.cupti import cupti_candidates
def out(value):
    print("RESULT " + json.dumps(value))
torch.cuda.init()
dev = torch.device("cuda", 0)
"""


def run(script: str, timeout: float = 300, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", **env})
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_cupti_attributes_a_known_torch_workload_to_its_windows(cuda_devices):
    result = run("""
        H2D_BYTES, D2H_BYTES = 3_000_000, 1_048_576
        host_a = torch.ones(H2D_BYTES, dtype=torch.uint8)            # pageable host memory
        warm = (torch.ones(16, device=dev) * 2).cpu(); torch.cuda.synchronize()  # lazy loading, outside
        ok, status, reason = n.cupti_start(cupti_candidates())
        assert ok, reason
        n.cupti_flush(True); n.gpu_reset()
        OTHER = n.STAGES.index("other")
        a = n.gpu_window_open(OTHER, n.intern("copy in, one kernel"), n.now_ns())
        on_device = host_a.to(dev)                                     # 1 copy host->device, H2D_BYTES
        doubled = on_device * 2                                        # 1 kernel
        torch.cuda.synchronize()
        n.gpu_window_close(a, n.now_ns())
        b = n.gpu_window_open(OTHER, n.intern("two kernels, copy out"), n.now_ns())
        x = torch.ones(D2H_BYTES // 4, device=dev)                     # 1 kernel (fill)
        y = x + 1.0                                                    # 1 kernel
        back = y.cpu()                                                 # 1 copy device->host, D2H_BYTES
        torch.cuda.synchronize()
        n.gpu_window_close(b, n.now_ns())
        n.cupti_flush(True)
        report = {r["window"]: r for r in n.gpu_report()}
        out({"a": report.get(a), "b": report.get(b), "outside": report.get(0), "counters": n.gpu_counters(),
             "values": [int(doubled[0]), float(back[0]), back.numel()], "info": n.cupti_info(),
             "bytes": [H2D_BYTES, D2H_BYTES]})
    """)
    h2d, d2h = result["bytes"]
    a, b = result["a"], result["b"]
    assert result["values"] == [2, 2.0, d2h // 4]
    assert a["kernels"] == 1, a
    assert a["copies"]["htod"]["count"] == 1 and a["copies"]["htod"]["bytes"] == h2d, a["copies"]
    assert "dtoh" not in a["copies"] or a["copies"]["dtoh"]["count"] == 0
    assert b["kernels"] == 2, b
    assert b["copies"]["dtoh"]["count"] == 1 and b["copies"]["dtoh"]["bytes"] == d2h, b["copies"]
    assert "htod" not in b["copies"] or b["copies"]["htod"]["count"] == 0
    for window in (a, b):
        assert 0 < window["busy_ns"] <= window["kernel_ns"] + 1 and window["top_kernels"]
    outside = result["outside"] or {"kernels": 0, "copies": {}}
    assert outside["kernels"] == 0 and not any(c["count"] for c in (outside.get("copies") or {}).values())
    assert result["counters"]["dropped_records"] == 0
    assert result["info"]["version"] > 0


def test_stage_spans_open_the_windows_cupti_attributes_to(cuda_devices):
    """The production path: stage_begin/stage_end open and close the GPU window, as every hook does."""
    result = run("""
        x = torch.ones(1 << 20, device=dev); torch.cuda.synchronize()
        ok, status, reason = n.cupti_start(cupti_candidates())
        assert ok, reason
        n.gpu_set_windows(True)
        n.cupti_flush(True); n.gpu_reset()
        STEP = n.STAGES.index("sample.step")
        token = n.stage_begin(STEP, "step 1")
        y = x * 3.0                   # 1 kernel
        z = y + x                     # 1 kernel
        torch.cuda.synchronize()
        n.stage_end(token)
        n.cupti_flush(True)
        out({"reports": n.gpu_report(), "step": STEP, "value": float(z[0])})
    """)
    steps = [r for r in result["reports"] if r.get("stage") == result["step"]]
    assert len(steps) == 1 and steps[0]["kernels"] == 2, result["reports"]
    assert result["value"] == 4.0


def test_nvml_samples_every_gpu(cuda_devices):
    result = run("""
        import time
        ok, why = n.nvml_start(50)
        assert ok, why
        x = torch.randn(4096, 4096, device=dev)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            x = x @ x; x = x / x.norm()
        torch.cuda.synchronize()
        samples = n.nvml_drain()
        info = n.nvml_info()
        n.nvml_stop()
        out({"samples": samples, "info": info})
    """)
    info = result["info"]
    assert info["driver_version"] and len(info["devices"]) >= len(cuda_devices)
    by_device = {}
    for _t, device, gpu, _mem, used, total, temperature, _power in result["samples"]:
        by_device.setdefault(device, []).append((gpu, used, total, temperature))
    assert set(by_device) == {d["index"] for d in info["devices"]}
    for rows in by_device.values():
        assert len(rows) >= 10  # 20 Hz for 1.5 s, whatever the GPU did
        for gpu, used, total, temperature in rows:
            assert gpu is None or 0 <= gpu <= 100
            assert used is None or 0 < used <= total
            assert temperature is None or 0 < temperature < 120
    assert max(r[0] or 0 for rows in by_device.values() for r in rows) > 0  # the matrix products kept a GPU busy
    assert info["errors"] == 0 or info["last_error"]


def test_nvml_and_torch_agree_on_the_devices(cuda_devices):
    result = run("""
        import time
        ok, why = n.nvml_start(50)
        assert ok, why
        time.sleep(0.3)
        info = n.nvml_info()
        n.nvml_stop()
        from comfy_nodes.gpu.memory import device_facts
        out({"nvml": info["devices"], "torch": device_facts()})
    """)
    nvml, torch_facts = result["nvml"], result["torch"]
    assert len(torch_facts) == len(cuda_devices)
    for t in torch_facts:  # each device torch sees is one NVML lists, with the same facts
        same = [d for d in nvml if d["name"] == t["name"] and d["compute_capability"] == t["compute_capability"]
                and abs(d["total_memory_bytes"] - t["total_memory_bytes"]) <= 0.05 * d["total_memory_bytes"]]
        assert same, (t, nvml)
        assert t["fp8_compute"] == (tuple(int(v) for v in t["compute_capability"].split(".")) >= (8, 9))


def test_doctor_probe_passes(cuda_devices, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "doctor", "--json", "--models-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert "Traceback" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout)
    checks = {c["id"]: c for c in result["checks"]}
    probe = checks["gpu_probe"]
    assert probe["status"] == "ok", probe
    assert probe["facts"]["kernels"] == 1 and probe["facts"]["htod"]["bytes"] == probe["facts"]["bytes_each_way"]
    assert probe["facts"]["dtoh"]["bytes"] == probe["facts"]["bytes_each_way"]
    assert checks["cupti"]["status"] == "ok" and checks["cupti"]["facts"]["collecting"] is True
    assert checks["torch"]["status"] == "ok" and checks["driver"]["status"] == "ok"
    assert checks["nvml"]["status"] == "ok"
    assert len(checks["devices"]["facts"]["devices"]) >= len(cuda_devices)
    assert checks["device_choice"]["facts"]["index"] is not None
