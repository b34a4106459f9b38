"""ComfyUI entry point for StageTrace (this folder is the custom node).

Importing it installs the profiling hooks and registers no nodes; ComfyUI's page loads the
StageTrace panel from web/. It never fails the host: without the C extension ComfyUI starts
normally and one log line says how to build it.
"""

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./web"  # the StageTrace panel and node badges in ComfyUI's page (web/stagetrace.js)

try:
    from .comfy_nodes.hooks import setup as _setup

    STAGETRACE = _setup()
except Exception as _exc:  # the package itself is broken: say so, keep ComfyUI running
    import logging

    logging.getLogger("stagetrace").warning("StageTrace: failed to load (%s: %s)", type(_exc).__name__, _exc)
    STAGETRACE = None
