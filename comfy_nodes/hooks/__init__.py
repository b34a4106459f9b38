"""ComfyUI call sites -> hooks: what StageTrace wraps inside ComfyUI, installed by ``setup()``."""

from .install import Installation, setup

__all__ = ["Installation", "setup"]
