"""Fault injection in real ComfyUI: every hook of StageTrace's, made to fail at its real call site, one at a
time and then all at once, while the same prompt runs again and again.

    python tests/comfy_faults.py --comfyui DIR --workdir W [--custom-node-dir D]

Each prompt runs the with-clip workflow (loader, CLIPLoader + CLIPTextEncode, sampler with step callbacks,
VAE decode, save) through ComfyUI's PromptQueue, on a fresh PromptExecutor so that no node is served from
cache and every hook fires. Prompt i injects LABELS[i] (hooks/guard.py raises inside the guarded code, where
StageTrace really runs); the last prompt injects "all". Without --custom-node-dir (no StageTrace) it runs
the prompt once: the image every faulty run must reproduce byte for byte. Prints ``HARNESS_RESULT {json}``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    sys.path[0] = ROOT
    sys.path.insert(1, os.path.join(ROOT, "tests"))

from comfy_harness import ScenarioHarness, break_stagetrace, with_clip_loader  # noqa: E402

from comfy_nodes.demo.harness import parser, report, tiny_txt2img  # noqa: E402

# In the order injected. "GPU start" fires with the first prompt only; the C Wrapper drops a namer that
# keeps failing, so the prompt's namer comes last; "all" closes the run.
LABELS = (
    "GPU start", "prompt begin", "prompt end", "message tap", "queue tap", "node begin", "node end", "model file",
    "model_load.read", "model_load.build", "model_load.to_device", "text_encode", "sample", "sample.step",
    "vae_decode", "save", "log tap", "GPU round", "NVML round", "GPU memory", "GPU devices", "trace writer",
    "report", "retention", "prompt outcome", "prompt namer", "all",
)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    harness = ScenarioHarness(args.comfyui, args.workdir, tuple(args.custom_node_dir), queue_wait_s=0.0)
    started = time.perf_counter()
    harness.boot()
    boot_s = time.perf_counter() - started
    import execution

    harness.write_clip_l()
    prompt = with_clip_loader(tiny_txt2img(harness.write_checkpoint()))
    labels = LABELS if args.custom_node_dir else ("none",)
    runs = []
    for i, label in enumerate(labels):
        harness.executor = execution.PromptExecutor(harness.server, cache_type=execution.CacheType.CLASSIC)
        reached = break_stagetrace(label) if label != "none" else 0
        run = harness.run(prompt, f"fault-{i:02d}")
        run["label"], run["reached"] = label, reached
        runs.append(run)
        if label != "none":
            break_stagetrace("")  # no fault for the next prompt but its own
    report(boot_s, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
