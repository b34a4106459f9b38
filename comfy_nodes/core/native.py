"""Loads the C core, or says why not and how to build it."""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # comfy_nodes/
ROOT = os.path.dirname(_HERE)
if os.path.isfile(os.path.join(ROOT, "install.py")):  # a clone, or ComfyUI/custom_nodes/StageTrace
    BUILD_HINT = f"build it with: cd {ROOT} && python install.py"
else:  # the installed package: its wheel carries the extension
    BUILD_HINT = "reinstall StageTrace with pip (a C compiler and the Python headers are needed to build it)"

try:
    from .. import _native  # type: ignore[attr-defined]

    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built, or built for another Python
    _native = None
    LOAD_ERROR = f"C extension not loaded ({exc}); {BUILD_HINT}"


def require():
    """The C core module; ImportError with the build command when it is missing."""
    if _native is None:
        raise ImportError(f"StageTrace {LOAD_ERROR}")
    return _native
