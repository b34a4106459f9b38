"""ComfyUI drift, in real ComfyUI on the CPU (tests/test_drift.py runs it in a fresh process).

    python tests/comfy_drift.py --comfyui DIR --workdir W --scenario pending|newer|mapped [--moved-execute]
        [--custom-node-dir D]

prints one final line ``HARNESS_RESULT {json}``. Scenarios:

- ``pending``: the test nodes of tests/fixtures/drift_nodes (an async node, a node with lazy inputs, a node
  that expands into two ephemeral nodes) between the sampler and the VAE decode.
- ``newer``: before StageTrace installs, ComfyUI 0.3.64's real functions are replaced by pass-through
  wrappers with the signatures newer ComfyUI gives them (execution.execute with ui_outputs and
  asset_manager, VAE.encode with not_video, CFGGuider.outer_sample/inner_sample with latent_shapes,
  PromptExecutor.__init__ with cache_args and asset_manager, the loaders with disable_dynamic), and one
  that no longer fits (VAE.decode with its samples parameter renamed); the prompt goes through ComfyUI's
  PromptQueue as a 6-tuple ending in a ``sensitive`` dict, as newer ComfyUI queues it.
- ``mapped``: the checkpoint is loaded the way ComfyUI's dynamic VRAM (comfy-aimdo) loads it: mapped,
  not read (the file is dropped from the page cache first), and the diffusion model's weights are the
  mapped tensors themselves, so the bytes come off storage when the sampler first touches them. With
  ``--slow-mb-s`` the weights are instead read through ``comfy.memory_management.
  read_tensor_file_slice_into``, aimdo's read path, from a reader held to that rate (a slow disk).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import mmap
import os
import struct
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    sys.path[0] = ROOT
    sys.path.insert(1, os.path.join(ROOT, "tests"))

from comfy_harness import ScenarioHarness  # noqa: E402

from comfy_nodes.demo.harness import parser, report, tiny_txt2img  # noqa: E402

DRIFT_NODES = os.path.join(ROOT, "tests", "fixtures", "drift_nodes")
ASYNC_WAIT_S = 0.3
SENSITIVE = {"api_key": "not-for-the-history"}
FP32 = "tiny_sd15_fp32.safetensors"


def pending_workflow(ckpt: str) -> dict:
    """sampler -> DriftAsyncWait (10) -> DriftExpandTwice (11) -> DriftLazyPick (12, first) -> decode."""
    prompt = tiny_txt2img(ckpt)
    prompt["10"] = {"class_type": "DriftAsyncWait", "inputs": {"latent": ["3", 0], "seconds": ASYNC_WAIT_S}}
    prompt["11"] = {"class_type": "DriftExpandTwice", "inputs": {"latent": ["10", 0]}}
    prompt["12"] = {"class_type": "DriftLazyPick", "inputs": {"use_first": True, "first": ["11", 0],
                                                              "second": ["5", 0]}}
    prompt["8"]["inputs"]["samples"] = ["12", 0]
    return prompt


def encode_workflow(ckpt: str) -> dict:
    """The demo's workflow, then its image encoded again and decoded (VAE.encode runs)."""
    prompt = tiny_txt2img(ckpt)
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["4", 2]}}
    prompt["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["4", 2]}}
    prompt["13"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "again", "images": ["12", 0]}}
    return prompt


# --- newer signatures -------------------------------------------------------------------------------


def newer_signatures() -> list[str]:
    """Replace ComfyUI 0.3.64's functions by pass-through wrappers with newer ComfyUI's signatures; the
    names of what was replaced."""
    import comfy.samplers
    import comfy.sd
    import execution

    replaced = []
    execute = execution.execute

    async def newer_execute(server, dynprompt, caches, current_item, extra_data, executed, prompt_id,
                            execution_list, pending_subgraph_results, pending_async_nodes, ui_outputs=None,
                            asset_manager=None):
        return await execute(server, dynprompt, caches, current_item, extra_data, executed, prompt_id,
                             execution_list, pending_subgraph_results, pending_async_nodes)

    execution.execute = newer_execute
    replaced.append("execution.execute")

    vae = comfy.sd.VAE
    encode, encode_tiled = vae.encode, vae.encode_tiled

    def newer_encode(self, pixel_samples, not_video=None):
        return encode(self, pixel_samples)

    def newer_encode_tiled(self, pixel_samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None,
                           not_video=None):
        return encode_tiled(self, pixel_samples, tile_x, tile_y, overlap, tile_t, overlap_t)

    vae.encode, vae.encode_tiled = newer_encode, newer_encode_tiled
    replaced += ["comfy.sd.VAE.encode", "comfy.sd.VAE.encode_tiled"]

    decode = vae.decode

    def moved_decode(self, latent, vae_options={}):  # noqa: B006 - a parameter StageTrace reads, renamed
        return decode(self, latent, vae_options)

    vae.decode = moved_decode
    replaced.append("comfy.sd.VAE.decode (moved)")

    guider = comfy.samplers.CFGGuider
    outer, inner = guider.outer_sample, guider.inner_sample

    def newer_outer(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                    seed=None, latent_shapes=None):
        return outer(self, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)

    def newer_inner(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                    latent_shapes=None):
        return inner(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)

    guider.outer_sample, guider.inner_sample = newer_outer, newer_inner
    replaced += ["comfy.samplers.CFGGuider.outer_sample", "comfy.samplers.CFGGuider.inner_sample"]

    executor_init = execution.PromptExecutor.__init__

    def newer_executor_init(self, server, cache_type=False, cache_args=None, asset_manager=None):
        executor_init(self, server, cache_type)
        self.cache_args, self.asset_manager = cache_args, asset_manager

    execution.PromptExecutor.__init__ = newer_executor_init
    replaced.append("execution.PromptExecutor.__init__")

    guess = comfy.sd.load_state_dict_guess_config

    def newer_guess(sd, output_vae=True, output_clip=True, output_clipvision=False, embedding_directory=None,
                    output_model=True, model_options={}, te_model_options={}, metadata=None,  # noqa: B006
                    disable_dynamic=False):
        return guess(sd, output_vae, output_clip, output_clipvision, embedding_directory, output_model, model_options,
                     te_model_options, metadata)

    comfy.sd.load_state_dict_guess_config = newer_guess
    replaced.append("comfy.sd.load_state_dict_guess_config")
    return replaced


class NewerHarness(ScenarioHarness):
    """Newer ComfyUI's signatures in place before the custom nodes (StageTrace) load; prompts queued as
    6-tuples."""

    replaced: list[str] = []

    def before_custom_nodes(self) -> None:
        super().before_custom_nodes()
        NewerHarness.replaced = newer_signatures()

    def submit(self, prompt_id, prompt, extra_data, outputs):
        import execution

        queue = execution.PromptQueue(self.server)
        queue.put((0, prompt_id, prompt, extra_data, outputs, dict(SENSITIVE)))
        time.sleep(0.2)  # waits there, as behind a busy worker
        item, _ = queue.get()
        assert len(item) == 6 and item[5] == SENSITIVE
        return item[1], item[2], item[3], item[4]


class MovedExecuteHarness(ScenarioHarness):
    """execute() with a signature StageTrace does not know (*args, **kwargs) before StageTrace loads: nodes
    are timed through ComfyUI's progress handler (the named fallback)."""

    def before_custom_nodes(self) -> None:
        super().before_custom_nodes()
        import execution

        original = execution.execute

        async def execute(*args, **kwargs):
            return await original(*args, **kwargs)

        execution.execute = execute


# --- mapped models (comfy-aimdo) --------------------------------------------------------------------


def drop_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class ThrottledSlices:
    """``comfy.memory_management`` as newer ComfyUI has it with comfy-aimdo, for the part that matters
    here: ``aimdo_enabled`` and ``read_tensor_file_slice_into(tensor, destination, ...)``, which reads a
    mapped tensor's bytes from its file (pread) into destination, here at mb_s (a slow disk). A stand-in
    for the dynamic VRAM loader, which needs a GPU; the reads are real reads of the real file."""

    def __init__(self, mb_s: float):
        self.mb_s = mb_s
        self.slices: dict[int, tuple[int, int, int]] = {}  # id(storage) -> (fd, offset, size)

    def module(self) -> types.ModuleType:
        module = types.ModuleType("comfy.memory_management")
        module.aimdo_enabled = True
        module.read_tensor_file_slice_into = self.read_tensor_file_slice_into
        return module

    def read_tensor_file_slice_into(self, tensor, destination, stream=None, destination2=None):
        found = self.slices.get(id(tensor))
        if found is None:
            return False
        fd, offset, size = found
        started, done = time.perf_counter(), 0
        view = memoryview((ctypes.c_uint8 * size).from_address(destination.data_ptr())).cast("B")
        while done < size:
            n = os.preadv(fd, [view[done:done + (1 << 20)]], offset + done)
            if n <= 0:
                raise OSError(f"short read at {offset + done}")
            done += n
            ahead = done / (self.mb_s * 1e6) - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        return True


def mapped_loader(slices: ThrottledSlices | None):
    """comfy.utils.load_torch_file as newer ComfyUI's load_safetensors does it with aimdo: the file mapped,
    each tensor a view of the mapping (no byte read yet). With slices, each tensor is also registered for
    read_tensor_file_slice_into."""
    import comfy.utils
    import torch

    original = comfy.utils.load_torch_file
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    keep = []

    def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
        if not str(ckpt).endswith(".safetensors"):
            return original(ckpt, safe_load, device, return_metadata)
        drop_from_page_cache(ckpt)
        fd = os.open(ckpt, os.O_RDONLY)
        mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        keep.append((fd, mapping))
        header_len = struct.unpack("<Q", mapping[:8])[0]
        header = json.loads(mapping[8:8 + header_len])
        base = 8 + header_len
        sd = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            tensor = torch.frombuffer(mapping, dtype=dtypes[info["dtype"]], count=(end - start) // dtypes[
                info["dtype"]].itemsize, offset=base + start).view(info["shape"])
            if slices is not None:
                slices.slices[id(tensor)] = (fd, base + start, end - start)
            sd[name] = tensor
        metadata = header.get("__metadata__", {})
        return (sd, metadata) if return_metadata else sd

    comfy.utils.load_torch_file = load_torch_file


def keep_weights_mapped(slices: ThrottledSlices | None):
    """The diffusion model's weights stay the mapped tensors (ComfyUI assigns them with a dynamic
    patcher), so the sampler's first forward pass reads them; with slices, they are read through
    read_tensor_file_slice_into instead, when the model first runs."""
    import comfy.model_base
    import torch

    def load_model_weights(self, sd, unet_prefix=""):
        to_load = {k[len(unet_prefix):]: v for k, v in sd.items() if k.startswith(unet_prefix)}
        if slices is None:
            self.diffusion_model.load_state_dict(to_load, strict=False, assign=True)
            return self
        sources = {name: to_load[name] for name, _ in self.diffusion_model.named_parameters() if name in to_load}
        done = []

        def read_on_first_use(module, args):
            if done:
                return
            done.append(True)
            import comfy.memory_management as mm

            params = dict(module.named_parameters())
            with torch.no_grad():
                for name, source in sources.items():
                    staging = torch.empty(source.shape, dtype=source.dtype)
                    if mm.read_tensor_file_slice_into(source, staging):
                        params[name].data.copy_(staging)

        self.diffusion_model.register_forward_pre_hook(read_on_first_use)
        return self

    comfy.model_base.BaseModel.load_model_weights = load_model_weights


class MappedHarness(ScenarioHarness):
    slow_mb_s: float | None = None

    def before_custom_nodes(self) -> None:
        super().before_custom_nodes()
        slices = ThrottledSlices(self.slow_mb_s) if self.slow_mb_s else None
        if slices is not None:
            sys.modules["comfy.memory_management"] = slices.module()
            import comfy

            comfy.memory_management = sys.modules["comfy.memory_management"]
        mapped_loader(slices)
        keep_weights_mapped(slices)


# --- running ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--scenario", choices=("pending", "newer", "mapped"), required=True)
    cli.add_argument("--slow-mb-s", type=float, default=None)
    cli.add_argument("--moved-execute", action="store_true", help="pending: execute() moved (progress fallback)")
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    node_dirs = list(args.custom_node_dir)
    harness_class = {"pending": MovedExecuteHarness if args.moved_execute else ScenarioHarness,
                     "newer": NewerHarness, "mapped": MappedHarness}[args.scenario]
    if args.scenario == "pending":
        folder = tempfile.mkdtemp(prefix="drift-nodes-", dir=args.workdir)
        os.symlink(DRIFT_NODES, os.path.join(folder, "drift_nodes"))
        node_dirs.append(folder)
    MappedHarness.slow_mb_s = args.slow_mb_s
    harness = harness_class(args.comfyui, args.workdir, tuple(node_dirs))
    started = time.perf_counter()
    harness.boot()
    boot_s = time.perf_counter() - started
    extra = {}
    if args.scenario == "pending":
        run = harness.run(pending_workflow(harness.write_checkpoint()), "drift-pending")
    elif args.scenario == "newer":
        run = harness.run(encode_workflow(harness.write_checkpoint()), "drift-newer")
        from comfy_nodes.hooks.targets import fit_live, fit_source

        extra = {"replaced": NewerHarness.replaced,
                 "live": [f.to_dict() for f in fit_live()], "source": [f.to_dict() for f in fit_source(args.comfyui)]}
    else:  # fp32 weights: the CPU computes in fp32, so the mapped tensors are the weights themselves
        import torch

        from comfy_nodes.demo.tiny_checkpoint import write_tiny_sd15_checkpoint

        write_tiny_sd15_checkpoint(os.path.join(harness.models, FP32), dtype=torch.float32)
        run = harness.run(tiny_txt2img(FP32), "drift-mapped")
    installation = getattr(sys.modules.get("execution"), "_stagetrace_installation", None)
    run["trace"] = installation.recorder.last_trace if installation is not None else None
    report(boot_s, [run], **extra)
    asyncio.set_event_loop(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
