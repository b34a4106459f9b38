"""ComfyUI's running objects, as StageTrace finds them from inside the process (never imported: ComfyUI may
not be there, or not yet)."""

from __future__ import annotations

import sys


def prompt_server():
    """ComfyUI's PromptServer instance, or None in a process without one (a CLI run, the in-process harness)."""
    server = sys.modules.get("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None)
