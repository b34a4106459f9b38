"""``stagetrace demo``: what the demo runs (run.py), the ComfyUI it drives in a child process
(harness.py) and the tiny model files it writes (tiny_checkpoint.py)."""
