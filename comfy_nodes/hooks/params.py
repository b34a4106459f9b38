"""The one signature check every hook makes before it replaces a ComfyUI function."""

from __future__ import annotations

import inspect


def params(func) -> list[str]:
    """The parameter names of func, or [] when it has none that can be read (then no hook fits it)."""
    try:
        return list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return []
