"""setup.py's own NVTX header search, for tests that compile against NVTX."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nvtx_include():
    """The NVTX include directory setup.py builds with, or None."""
    spec = importlib.util.spec_from_file_location("stagetrace_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only: setup() runs under __main__
    return module.find_nvtx_include()
