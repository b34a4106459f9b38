"""StageTrace: profiles ComfyUI from inside its process.

One folder per step of the data flow (README.md, "How it works"):

    hooks/     ComfyUI call sites -> what StageTrace wraps, installed by hooks.setup()
    record/    the prompt in progress -> the C recorder's drained events -> the writer thread
    gpu/       CUPTI rounds, NVML samples, device memory: the GPU tracks
    analysis/  model-file anatomy, loader gaps, the stage summary, the diagnosis rules
    render/    console text, Markdown, HTML, JSON
    surfaces/  StageTrace's read-only HTTP routes inside ComfyUI (/stagetrace/...)
    cli/       the ``stagetrace`` command
    client/    the outside half: workflows as a client sends them, preflight against a server
    demo/      the built-in example and the in-process ComfyUI it drives
    core/      what every step shares: the C core's loader, settings, stages, log, units

Importing this package does nothing heavy: ``core/native.py`` loads the C core (``_native``) when a
module that needs it is imported, and hooks are installed only by ``hooks.setup()``, which the
repository's root ``__init__.py`` calls when ComfyUI loads the folder as a custom node.
"""
