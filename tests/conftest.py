import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def native():
    """The built C core; the test skips (saying how to build it) when it is missing."""
    try:
        from comfy_nodes import _native
    except ImportError as exc:
        pytest.skip(f"C extension not built: run python setup.py build_ext --inplace ({exc})")
    return _native


# The real ComfyUI server, one per test session (tests/comfy_server.py).
from comfy_server import comfy_server  # noqa: E402, F401
