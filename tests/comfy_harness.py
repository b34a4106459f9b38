"""The ComfyUI integration tests' scenarios, on top of the demo's harness (comfy_nodes/demo/harness.py).

    python tests/comfy_harness.py --comfyui DIR --workdir W --scenario basic \
        [--custom-node-dir D ...] [--break-stagetrace [all|LABEL,...]]

prints one final line ``HARNESS_RESULT {json}``. Scenarios: ``basic`` (one text-to-image prompt),
``twice`` (the same prompt twice: the second is served from cache), ``fail`` (a node raises),
``interrupt`` (a node interrupts the prompt), ``queued`` (the prompt waits 0.3 s in ComfyUI's
PromptQueue first), ``needs-clip`` (CLIPTextEncode asks the CLIP-less checkpoint for its CLIP),
``diffusion-only`` (the same, with a diffusion-model-only file in CheckpointLoaderSimple: no CLIP and
no VAE), ``slow-read`` (the checkpoint is dropped from the page cache and read at 20 MB/s, like a slow
share), ``with-clip`` (the positive prompt encoded by a real CLIP-L with zero weights, loaded with
CLIPLoader). ``--break-stagetrace`` makes StageTrace's hooks raise (all of them, or the labelled
ones), to show the prompt is unaffected. The test nodes (HarnessFail, HarnessInterrupt) are registered
here; they are not part of StageTrace.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":  # run as a script: the repository, not tests/, is where imports start
    sys.path[0] = ROOT

from comfy_nodes.demo.harness import Harness, parser, report, tiny_txt2img  # noqa: E402
from comfy_nodes.demo.tiny_checkpoint import write_clip_l_zeros  # noqa: E402

SCENARIOS = ("basic", "twice", "fail", "interrupt", "queued", "needs-clip", "diffusion-only", "slow-read",
             "with-clip")
CLIP_L = "clip_l_zeros.safetensors"
QUEUE_WAIT_S = 0.3
SLOW_READ_MB_S = 20.0


def scenario_nodes() -> dict:
    """The nodes only the tests use: one that raises, one that interrupts the prompt."""
    import nodes

    class HarnessFail:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"latent": ("LATENT",)}}

        RETURN_TYPES = ("LATENT",)
        FUNCTION = "fail"
        CATEGORY = "harness"

        def fail(self, latent):
            raise RuntimeError("harness: deliberate failure")

    class HarnessInterrupt:
        """Passes its latent through after asking ComfyUI to interrupt; the
        next node's pre-execution check raises InterruptProcessingException."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"latent": ("LATENT",)}}

        RETURN_TYPES = ("LATENT",)
        FUNCTION = "interrupt"
        CATEGORY = "harness"

        def interrupt(self, latent):
            nodes.interrupt_processing(True)
            return (latent,)

    return {cls.__name__: cls for cls in (HarnessFail, HarnessInterrupt)}


class ScenarioHarness(Harness):
    """The demo's harness plus the test nodes, a throttled model read and a trip through the queue."""

    def __init__(self, *args, throttle_mb_s: float | None = None, queue_wait_s: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.throttle_mb_s = throttle_mb_s
        self.queue_wait_s = queue_wait_s

    def nodes(self) -> dict:
        return super().nodes() | scenario_nodes()

    def before_custom_nodes(self) -> None:
        if self.throttle_mb_s:
            throttle_model_reads(self.throttle_mb_s)

    def submit(self, prompt_id, prompt, extra_data, outputs):
        if self.queue_wait_s is None:
            return prompt_id, prompt, extra_data, outputs
        import execution

        queue = execution.PromptQueue(self.server)
        queue.put((0, prompt_id, prompt, extra_data, outputs))
        time.sleep(self.queue_wait_s)  # waits there, as behind a busy worker
        item, _ = queue.get()  # (number, id, prompt, extra_data, outputs[, sensitive]): 6 in newer ComfyUI
        prompt_id, prompt, extra_data, outputs = item[1:5]
        return prompt_id, prompt, extra_data, outputs

    def write_clip_l(self) -> str:
        path = os.path.join(self.text_encoders, CLIP_L)
        if not os.path.exists(path):
            write_clip_l_zeros(path)
        return CLIP_L


def with_node_between_sampler_and_decode(prompt: dict, class_type: str) -> dict:
    """The workflow with ``class_type`` (LATENT in, LATENT out) as node "10"
    between the sampler and the VAE decode."""
    prompt = json.loads(json.dumps(prompt))
    prompt["10"] = {"class_type": class_type, "inputs": {"latent": ["3", 0]}}
    prompt["8"]["inputs"]["samples"] = ["10", 0]
    return prompt


def with_clip_text_encode(prompt: dict) -> dict:
    """The workflow with its positive prompt encoded by CLIPTextEncode from the
    checkpoint loader's CLIP output, which the tiny checkpoint does not have:
    ComfyUI then fails with "clip input is invalid: None"."""
    prompt = json.loads(json.dumps(prompt))
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}}
    return prompt


def with_clip_loader(prompt: dict) -> dict:
    """The workflow with its positive prompt encoded by a real CLIP-L (all-zero weights) loaded with
    CLIPLoader: text encoding runs for real on the CPU."""
    prompt = json.loads(json.dumps(prompt))
    prompt["10"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L, "type": "stable_diffusion"}}
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["10", 0]}}
    return prompt


def throttle_model_reads(mb_s: float) -> None:
    """The slow-read scenario: comfy.utils.load_torch_file first drops the file from the page cache and
    reads it through a reader held to mb_s (a slow disk or network share, as StageTrace sees it: bytes
    really come off storage, slowly), then loads it as usual. Installed before the custom nodes, so
    StageTrace's hook wraps it like any load."""
    import comfy.utils

    original = comfy.utils.load_torch_file

    def slow_load_torch_file(ckpt, *args, **kwargs):
        fd = os.open(ckpt, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            started, done = time.perf_counter(), 0
            while chunk := os.read(fd, 1 << 20):
                done += len(chunk)
                ahead = done / (mb_s * 1e6) - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
        finally:
            os.close(fd)
        return original(ckpt, *args, **kwargs)

    comfy.utils.load_torch_file = slow_load_torch_file


def break_stagetrace(spec: str) -> int:
    """Make StageTrace's hooks raise (fault injection for the fail-open tests); returns how many copies
    of StageTrace were reached. ComfyUI imports the custom node under its own module name, so the
    modules are found by their name's tail."""
    guards = [m for name, m in list(sys.modules.items())
              if name.endswith("comfy_nodes.hooks.guard") and hasattr(m, "inject_faults")]
    for guard in guards:
        guard.inject_faults(spec)
    return len(guards) if guards else _patch_recorders()


def _patch_recorders() -> int:
    """Without hooks/guard.py: every Recorder and stage-span method the hooks call raises."""
    def boom(*args, **kwargs):
        raise RuntimeError("injected StageTrace fault")

    broken = 0
    for name, module in list(sys.modules.items()):
        if name.endswith("comfy_nodes.record.recorder") and hasattr(module, "Recorder"):
            for method in ("node_begin", "node_end", "on_message", "prompt_begin", "prompt_end",
                           "prompt_namer", "prompt_outcome", "on_submit"):
                setattr(module.Recorder, method, boom)
            broken += 1
        if name.endswith("comfy_nodes.hooks.stage_hooks") and hasattr(module, "StageSpans"):
            module.StageSpans.begin = boom
            module.StageSpans.end = boom
    return broken


def main(argv: list[str] | None = None) -> int:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--scenario", default="basic", choices=SCENARIOS)
    cli.add_argument("--break-stagetrace", nargs="?", const="all", default=None, metavar="all|LABEL,...")
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    harness = ScenarioHarness(args.comfyui, args.workdir, tuple(args.custom_node_dir),
                              throttle_mb_s=SLOW_READ_MB_S if args.scenario == "slow-read" else None,
                              queue_wait_s=QUEUE_WAIT_S if args.scenario == "queued" else None)
    started = time.perf_counter()
    harness.boot()
    boot_s = time.perf_counter() - started
    broken = break_stagetrace(args.break_stagetrace) if args.break_stagetrace else 0
    prompt = tiny_txt2img(harness.write_checkpoint(diffusion_model_only=args.scenario == "diffusion-only"))
    if args.scenario == "fail":
        prompt = with_node_between_sampler_and_decode(prompt, "HarnessFail")
    elif args.scenario == "interrupt":
        prompt = with_node_between_sampler_and_decode(prompt, "HarnessInterrupt")
    elif args.scenario in ("needs-clip", "diffusion-only"):
        prompt = with_clip_text_encode(prompt)
    elif args.scenario == "with-clip":
        harness.write_clip_l()
        prompt = with_clip_loader(prompt)
    runs = [harness.run(prompt, f"{args.scenario}-1")]
    if args.scenario == "twice":
        runs.append(harness.run(prompt, f"{args.scenario}-2"))
    report(boot_s, runs, broken_hooks=broken)
    return 0


if __name__ == "__main__":
    sys.exit(main())
