"""StageTrace: profiles ComfyUI from inside its process.

Importing this package does nothing heavy: the C core is loaded by
``native.py`` on first use and hooks are installed only by ``setup_comfyui``.
"""
