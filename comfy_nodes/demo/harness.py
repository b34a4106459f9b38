"""Run real ComfyUI in this process, on the CPU, with no HTTP server: the demo drives its prompt through
ComfyUI's own executor.

    python -m comfy_nodes.demo.harness --comfyui DIR --workdir W [--custom-node-dir D ...]

(``python -m stagetrace.demo.harness`` when installed) runs the demo's workflow once (the tiny
SD1.5-shaped checkpoint, zero conditioning, a 2-step sampler, VAE decode, save) and prints one final line
``HARNESS_RESULT {json}``. Only the custom nodes in the given folders are loaded, never whatever sits in
ComfyUI's own ``custom_nodes``. The tests build their scenarios on :class:`Harness`
(tests/comfy_harness.py).

Boot order follows shared/comfyui-notes.md §6: argument parsing off and ``args.cpu`` set before
``comfy.model_management`` is imported; ComfyUI's ``utils`` package imported before ``nodes`` puts
``comfy/`` first on sys.path (as ComfyUI's main.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import sys
import time

from .tiny_checkpoint import write_tiny_diffusion_model_only, write_tiny_sd15_checkpoint

CHECKPOINT = "tiny_sd15.safetensors"
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


def zero_conditioning_node():
    """``HarnessZeroConditioning``: the conditioning a CLIP-less checkpoint cannot make (77 zero tokens of
    CLIP-L width), so the workflow samples without a text encoder."""
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

    return HarnessZeroConditioning


class Harness:
    """One ComfyUI booted in this process: its models under ``workdir/models``, its images under
    ``workdir/output``, and only the custom nodes of ``custom_node_dirs``."""

    def __init__(self, comfyui_dir: str, workdir: str, custom_node_dirs: tuple[str, ...] = ()):
        self.comfyui_dir = os.path.abspath(comfyui_dir)
        self.workdir = os.path.abspath(workdir)
        self.custom_node_dirs = tuple(os.path.abspath(d) for d in custom_node_dirs)
        self.models = os.path.join(self.workdir, "models", "checkpoints")
        self.text_encoders = os.path.join(self.workdir, "models", "text_encoders")
        self.output = os.path.join(self.workdir, "output")
        self.executor = None
        self.server = RecordingServer()

    def nodes(self) -> dict:
        """Node classes registered besides ComfyUI's and the custom nodes'."""
        node = zero_conditioning_node()
        return {node.__name__: node}

    def before_custom_nodes(self) -> None:
        """Called once ComfyUI's modules are imported and before the custom nodes load."""

    def boot(self) -> None:
        sys.path.insert(0, self.comfyui_dir)
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import folder_paths
        import utils.extra_config  # noqa: F401  (ComfyUI's package, before nodes shadows 'utils')

        self.before_custom_nodes()
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
        nodes.NODE_CLASS_MAPPINGS.update(self.nodes())
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC)

    def write_checkpoint(self, diffusion_model_only: bool = False) -> str:
        name = DIFFUSION_ONLY if diffusion_model_only else CHECKPOINT
        path = os.path.join(self.models, name)
        if not os.path.exists(path):
            (write_tiny_diffusion_model_only if diffusion_model_only else write_tiny_sd15_checkpoint)(path)
        return name

    def submit(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list) -> tuple:
        """How a validated prompt reaches the executor: straight here (the tests route it through
        ComfyUI's PromptQueue). Returns (prompt_id, prompt, extra_data, outputs)."""
        return prompt_id, prompt, extra_data, outputs

    def run(self, prompt: dict, prompt_id: str) -> dict:
        """Validate and execute one prompt; what it produced, as a dict."""
        import execution

        before = self._images()
        self.server.messages.clear()
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            return {"success": False, "validation_error": valid[1], "node_errors": valid[3]}
        prompt_id, prompt, extra_data, outputs = self.submit(prompt_id, prompt, {"client_id": "harness"}, valid[2])
        started = time.perf_counter()
        self.executor.execute(prompt, prompt_id, extra_data, outputs)
        seconds = time.perf_counter() - started
        flush_stagetrace()  # traces are written by StageTrace's writer thread, after the prompt
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


def flush_stagetrace(timeout: float = 60.0) -> None:
    """Wait until StageTrace (when loaded) has written every finished prompt's trace and report."""
    execution = sys.modules.get("execution")
    installation = getattr(execution, "_stagetrace_installation", None)
    if installation is not None:
        installation.recorder.flush(timeout)


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


def parser(description: str) -> argparse.ArgumentParser:
    """The command line every harness shares (the tests' adds its scenarios)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--comfyui", required=True, help="the ComfyUI folder (main.py, execution.py, comfy/)")
    parser.add_argument("--workdir", required=True, help="models, images and traces go here")
    parser.add_argument("--custom-node-dir", action="append", default=[],
                        help="a folder of custom nodes to load (StageTrace's, for the demo)")
    return parser


def report(boot_s: float, runs: list[dict], **extra) -> None:
    """The last line of a harness run, read by the demo and the tests."""
    print("HARNESS_RESULT " + json.dumps({"boot_s": boot_s, **extra, "runs": runs}), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    harness = Harness(args.comfyui, args.workdir, tuple(args.custom_node_dir))
    started = time.perf_counter()
    harness.boot()
    boot_s = time.perf_counter() - started
    report(boot_s, [harness.run(tiny_txt2img(harness.write_checkpoint()), "demo-1")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
