"""StageTrace: profiles ComfyUI from inside its process.

Importing this package does nothing heavy: ``native.py`` loads the C core when
a module that needs it is imported, and hooks are installed only by
``comfyui.setup()`` (which the repository's root ``__init__.py`` calls when
ComfyUI loads the folder as a custom node).
"""
