"""Run real ComfyUI in this process, on the CPU, with no HTTP server: the demo
and the integration tests drive prompts through ComfyUI's own executor.

    python -m comfy_nodes.harness --comfyui DIR --workdir W --scenario basic \
        [--custom-node-dir D ...] [--break-stagetrace]

prints one final line ``HARNESS_RESULT {json}``. Scenarios: ``basic`` (one
text-to-image prompt), ``twice`` (the same prompt twice: the second is served
from cache), ``fail`` (a node raises), ``interrupt`` (a node interrupts the
prompt), ``queued`` (the prompt waits 0.3 s in ComfyUI's PromptQueue first),
``needs-clip`` (CLIPTextEncode asks the CLIP-less checkpoint for its CLIP),
``diffusion-only`` (the same, with a diffusion-model-only file in
CheckpointLoaderSimple: no CLIP and no VAE), ``slow-read`` (the checkpoint is
dropped from the page cache and read at 20 MB/s, like a slow share),
``with-clip`` (the positive prompt encoded by a real CLIP-L with zero weights,
loaded with CLIPLoader).
``--break-stagetrace`` makes every StageTrace hook raise, to show the prompt
is unaffected.

Boot order follows shared/comfyui-notes.md §6: argument parsing off and
``args.cpu`` set before ``comfy.model_management`` is imported; ComfyUI's
``utils`` package imported before ``nodes`` puts ``comfy/`` first on sys.path
(as ComfyUI's main.py does). The harness registers its own test nodes in
``nodes.NODE_CLASS_MAPPINGS``; they are not part of StageTrace.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time

from .tiny_checkpoint import write_clip_l_zeros, write_tiny_diffusion_model_only, write_tiny_sd15_checkpoint

CHECKPOINT = "tiny_sd15.safetensors"
CLIP_L = "clip_l_zeros.safetensors"
DIFFUSION_ONLY = "tiny_sd15_unet_only.safetensors"


class RecordingServer:
    """The few attributes PromptExecutor needs from ComfyUI's PromptServer."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def _test_nodes():
    import nodes
    import torch

    class HarnessZeroConditioning:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "make"
        CATEGORY = "harness"

        def make(self):
            return ([[torch.zeros(1, 77, 768), {}]],)

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

    return {cls.__name__: cls for cls in (HarnessZeroConditioning, HarnessFail, HarnessInterrupt)}


class Harness:
    def __init__(self, comfyui_dir: str, workdir: str, custom_node_dirs: tuple[str, ...] = (),
                 throttle_mb_s: float | None = None):
        self.throttle_mb_s = throttle_mb_s  # slow-read scenario: model files read at this rate
        self.comfyui_dir = os.path.abspath(comfyui_dir)
        self.workdir = os.path.abspath(workdir)
        self.custom_node_dirs = tuple(os.path.abspath(d) for d in custom_node_dirs)
        self.models = os.path.join(self.workdir, "models", "checkpoints")
        self.text_encoders = os.path.join(self.workdir, "models", "text_encoders")
        self.output = os.path.join(self.workdir, "output")
        self.executor = None
        self.server = RecordingServer()

    def boot(self) -> None:
        sys.path.insert(0, self.comfyui_dir)
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import folder_paths
        import utils.extra_config  # noqa: F401  (ComfyUI's package, before nodes shadows 'utils')

        if self.throttle_mb_s:
            _throttle_model_reads(self.throttle_mb_s)

        os.makedirs(self.models, exist_ok=True)
        os.makedirs(self.output, exist_ok=True)
        folder_paths.add_model_folder_path("checkpoints", self.models, is_default=True)
        os.makedirs(self.text_encoders, exist_ok=True)
        folder_paths.add_model_folder_path("text_encoders", self.text_encoders, is_default=True)
        folder_paths.set_output_directory(self.output)
        # only the custom nodes asked for: never whatever sits in ComfyUI/custom_nodes
        folder_paths.folder_names_and_paths["custom_nodes"] = (list(self.custom_node_dirs), set())
        import execution
        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        nodes.NODE_CLASS_MAPPINGS.update(_test_nodes())
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC)

    def write_clip_l(self) -> str:
        path = os.path.join(self.text_encoders, CLIP_L)
        if not os.path.exists(path):
            write_clip_l_zeros(path)
        return CLIP_L

    def write_checkpoint(self, diffusion_model_only: bool = False) -> str:
        name = DIFFUSION_ONLY if diffusion_model_only else CHECKPOINT
        path = os.path.join(self.models, name)
        if not os.path.exists(path):
            (write_tiny_diffusion_model_only if diffusion_model_only else write_tiny_sd15_checkpoint)(path)
        return name

    def run(self, prompt: dict, prompt_id: str, queue_wait_s: float | None = None) -> dict:
        """Execute one prompt. With queue_wait_s it goes through ComfyUI's
        PromptQueue first and waits there that long, as behind a busy worker."""
        import execution

        before = self._images()
        self.server.messages.clear()
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            return {"success": False, "validation_error": valid[1], "node_errors": valid[3]}
        extra_data, outputs = {"client_id": "harness"}, valid[2]
        if queue_wait_s is not None:
            queue = execution.PromptQueue(self.server)
            queue.put((0, prompt_id, prompt, extra_data, valid[2]))
            time.sleep(queue_wait_s)
            (_, prompt_id, prompt, extra_data, outputs), _ = queue.get()
        started = time.perf_counter()
        self.executor.execute(prompt, prompt_id, extra_data, outputs)
        seconds = time.perf_counter() - started
        images = sorted(self._images() - before)
        return {
            "prompt_id": prompt_id,
            "success": self.executor.success,
            "seconds": seconds,
            "status_messages": [event for event, _ in self.executor.status_messages],
            "errors": [data for event, data in self.executor.status_messages
                       if event in ("execution_error", "execution_interrupted")],
            "images": images,
            "sha256": {os.path.basename(p): _sha256(p) for p in images},
        }

    def _images(self) -> set[str]:
        found = set()
        for root, _, files in os.walk(self.output):
            found.update(os.path.join(root, f) for f in files if f.endswith(".png"))
        return found


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tiny_txt2img(ckpt_name: str, seed: int = 1, steps: int = 2, filename_prefix: str = "st") -> dict:
    """Loader -> zero conditioning -> 64x64 empty latent -> KSampler -> VAE decode -> save."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "6": {"class_type": "HarnessZeroConditioning", "inputs": {}},
        "7": {"class_type": "HarnessZeroConditioning", "inputs": {}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": filename_prefix, "images": ["8", 0]}},
    }


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


def _throttle_model_reads(mb_s: float) -> None:
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


def _break_stagetrace() -> int:
    """Make every StageTrace hook raise (fault injection for the fail-open test)."""
    broken = 0
    for name, module in list(sys.modules.items()):
        if name.endswith("comfy_nodes.recorder") and hasattr(module, "Recorder"):
            def boom(*args, **kwargs):
                raise RuntimeError("injected StageTrace fault")

            for method in ("node_namer", "node_outcome", "on_message", "prompt_begin", "prompt_end",
                           "prompt_namer", "prompt_outcome", "on_submit"):
                setattr(module.Recorder, method, boom)
            broken += 1
        if name.endswith("comfy_nodes.stagehooks") and hasattr(module, "StageSpans"):
            def boom_span(*args, **kwargs):
                raise RuntimeError("injected StageTrace fault")

            module.StageSpans.begin = boom_span
            module.StageSpans.end = boom_span
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--scenario", default="basic",
                        choices=("basic", "twice", "fail", "interrupt", "queued", "needs-clip", "diffusion-only",
                                 "slow-read", "with-clip"))
    parser.add_argument("--custom-node-dir", action="append", default=[])
    parser.add_argument("--break-stagetrace", action="store_true")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    harness = Harness(args.comfyui, args.workdir, tuple(args.custom_node_dir),
                      throttle_mb_s=20.0 if args.scenario == "slow-read" else None)
    started = time.perf_counter()
    harness.boot()
    boot_s = time.perf_counter() - started
    broken = _break_stagetrace() if args.break_stagetrace else 0
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
    runs = [harness.run(prompt, f"{args.scenario}-1", queue_wait_s=0.3 if args.scenario == "queued" else None)]
    if args.scenario == "twice":
        runs.append(harness.run(prompt, f"{args.scenario}-2"))
    print("HARNESS_RESULT " + json.dumps({"boot_s": boot_s, "broken_hooks": broken, "runs": runs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
