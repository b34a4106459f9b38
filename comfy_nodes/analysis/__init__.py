"""Analysis: what a model file holds (anatomy.py), what a loader can give and the gap to what the
workflow needs (loaders.py), the stage split of a prompt (summary.py), and the diagnosis rules
(diagnose.py). Pure functions of recorded data: they read traces, never ComfyUI."""
