import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real NVIDIA GPU (CUDA device, driver); skips, saying why, "
                            "without one (tests/test_gpu_real.py; scripts/device_check.sh runs them)")


@pytest.fixture
def native():
    """The built C core; the test skips (saying how to build it) when it is missing."""
    try:
        from comfy_nodes import _native
    except ImportError as exc:
        pytest.skip(f"C extension not built: run python setup.py build_ext --inplace ({exc})")
    return _native


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory):
    """tests/nvml/fake_nvml.c built as a stand-in for libnvidia-ml (a TEST DOUBLE at the hardware boundary:
    there is no GPU here); skips without nvml.h or gcc."""
    import shutil
    import subprocess

    from setup import find_nvml_include

    include = find_nvml_include()
    if include is None or shutil.which("gcc") is None:
        pytest.skip("nvml.h (pip install nvidia-nvml-dev-cu12) or gcc is missing")
    lib = str(tmp_path_factory.mktemp("nvml") / "libfake_nvml.so")
    subprocess.run(["gcc", "-std=c11", "-D_GNU_SOURCE", "-O1", "-Wall", "-fPIC", "-shared", f"-I{include}",
                    os.path.join(ROOT, "tests", "nvml", "fake_nvml.c"), "-o", lib, "-lpthread"], check=True)
    return lib


# The real ComfyUI server, one per test session (tests/comfy_server.py).
from comfy_server import comfy_server  # noqa: E402, F401
