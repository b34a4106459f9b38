"""The diagnosis scenarios that run in real ComfyUI: the kinds of run users have, each set up so that
one cause is true and dominates whatever the machine's speed (tests/test_scenarios.py states each
scenario's cause, figures and exclusions, and judges StageTrace's diagnosis of it).

    python tests/comfy_scenarios.py --comfyui DIR --workdir W --scenario NAME \
        [--models M] [--custom-node-dir D ...]
    python tests/comfy_scenarios.py --prepare-models M

prints one final line ``HARNESS_RESULT {json}``: ``scenario``, ``judged`` (the prompt whose trace is
judged), ``facts`` (what the scenario set up: files and their sizes, seconds held, steps) and
``runs`` (each with the trace StageTrace wrote for it). ``--models M`` is a folder of model files
shared between scenarios (``--prepare-models M`` writes them once: the 246 MB CLIP-L of zeros and the
tiny checkpoints); without it each scenario writes its own under W/models.

The scenarios, and why the cause holds at any machine speed (CPU work grows or shrinks together;
what is fixed in seconds or bytes does not):

* ``wrong-loader``: a diffusion-model-only file in CheckpointLoaderSimple feeding CLIPTextEncode and
  VAEDecode; ComfyUI fails at CLIPTextEncode ("clip input is invalid: None"). Structural.
* ``missing-vae``: a checkpoint with its UNet and no VAE, a CLIPLoader giving the text encoder; the
  sampler runs, then VAEDecode fails on the loader's VAE output (None). Only a VAELoader is missing.
* ``slow-disk``: the checkpoint (in fp32: 73 MB) dropped from the page cache and read at 20 MB/s
  (fixed by the clock, like a slow share: 3.7 s), then a 1-step 64x64 sampler.
* ``busy-queue``: three prompts put in ComfyUI's PromptQueue at once; the worker takes each only after
  QUEUE_HOLD_S (busy elsewhere), so the last one waits at least 3 x QUEUE_HOLD_S, then runs a
  1-step sampler with every model already loaded. Its trace is judged.
* ``first-run``: the first prompt of the process loads the 246 MB CLIP-L and the checkpoint and
  samples 1 step at 64x64.
* ``reload``: the same prompt twice with ComfyUI's --cache-none (an executor with
  CacheType.DEPENDENCY_AWARE, ``args.cache_none``); the second prompt reads both files again to
  sample 1 step. The second is judged.
* ``node-fails``: HarnessFail raises after a 4-step sampler.
* ``interrupt``: a 6-step sampler; ComfyUI's progress hook (as main.py installs it: it raises when an
  interrupt is pending) with the interrupt requested while step INTERRUPT_STEP runs, so the sampler
  stops at the end of that step.
* ``partial-download``: the checkpoint cut to PARTIAL_FRACTION of its bytes; CheckpointLoaderSimple
  fails reading it.
* ``cpu-only``: a plain run on the CPU (ComfyUI's --cpu) with CPU_STEPS steps of a 256x256 image
  against a 36 MB checkpoint load; nothing else is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":  # run as a script: the repository, not tests/, is where imports start
    sys.path[0] = ROOT
    sys.path.insert(1, os.path.join(ROOT, "tests"))

from comfy_harness import (  # noqa: E402
    CLIP_L,
    SLOW_READ_MB_S,
    ScenarioHarness,
    with_clip_loader,
    with_clip_text_encode,
    with_node_between_sampler_and_decode,
)

from comfy_nodes.demo.harness import CHECKPOINT, DIFFUSION_ONLY, parser, report, tiny_txt2img  # noqa: E402

NO_VAE = "tiny_sd15_no_vae.safetensors"
FP32 = "tiny_sd15_fp32.safetensors"  # the same model in fp32: 73 MB, twice the bytes for the same CPU work
QUEUE_HOLD_S = 2.0  # each queued prompt waits this long before the worker takes it
QUEUED_PROMPTS = 3
INTERRUPT_STEP, INTERRUPT_OF = 3, 6  # interrupted while step 3 of 6 runs
PARTIAL_FRACTION = 0.4  # an aborted download: 40 % of the file's bytes
FAIL_STEPS = 4
CPU_STEPS, CPU_SIZE = 16, 128  # the cpu-only run: 16 steps of a 128x128 image


class ScenarioRun(ScenarioHarness):
    """The test harness with a shared models folder and a queue that holds prompts."""

    def __init__(self, *args, models: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.shared = os.path.abspath(models) if models else None
        if self.shared:  # read-only files every scenario uses: no scenario writes or evicts them
            self.text_encoders = os.path.join(self.shared, "text_encoders")
        self.own_models = self.models
        self.queue = None

    def boot(self) -> None:
        super().boot()
        if self.shared:
            import folder_paths

            folder_paths.add_model_folder_path("checkpoints", os.path.join(self.shared, "checkpoints"))

    def shared_checkpoint(self, name: str) -> str:
        """A checkpoint from the shared folder (written there when missing), or this run's own."""
        path = self.checkpoint_path(name)
        if not os.path.exists(path):
            write_model(path, name)
        return name

    def checkpoint_path(self, name: str) -> str:
        return os.path.join(os.path.join(self.shared, "checkpoints") if self.shared else self.own_models, name)

    def own_checkpoint(self, name: str) -> str:
        """A private copy of a checkpoint, under this run's own models folder: a scenario that
        evicts it from the page cache or cuts it short touches no other scenario's file."""
        source = os.path.join(self.shared, "checkpoints", name) if self.shared else None
        path = os.path.join(self.own_models, name)
        if source and os.path.exists(source):
            shutil.copyfile(source, path)
        else:
            write_model(path, name)
        return path

    def queue_all(self, prompts: list[tuple[str, dict]]) -> None:
        """Put every prompt in ComfyUI's PromptQueue at once, as the server's /prompt route does."""
        import execution

        self.queue = execution.PromptQueue(self.server)
        for number, (prompt_id, prompt) in enumerate(prompts):
            valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
            assert valid[0], valid[1]
            self.queue.put((number, prompt_id, prompt, {"client_id": "harness"}, valid[2]))

    def submit(self, prompt_id, prompt, extra_data, outputs):
        if self.queue is None:
            return super().submit(prompt_id, prompt, extra_data, outputs)
        time.sleep(QUEUE_HOLD_S)  # the worker is busy elsewhere before it takes the next prompt
        item, _ = self.queue.get()  # (number, id, prompt, extra_data, outputs[, sensitive]): 6 in newer ComfyUI
        queued_id, prompt, extra_data, outputs = item[1:5]
        assert queued_id == prompt_id, (queued_id, prompt_id)
        return queued_id, prompt, extra_data, outputs

    def run(self, prompt: dict, prompt_id: str) -> dict:
        run = super().run(prompt, prompt_id)
        run["trace"] = last_trace()
        return run


def write_model(path: str, name: str) -> str:
    """Write one of the scenarios' model files at path (through a temporary name, so that a reader
    never sees half a file)."""
    from comfy_nodes.demo import tiny_checkpoint as tc

    def fp32(path):
        import torch

        return tc.write_tiny_sd15_checkpoint(path, dtype=torch.float32)

    writers = {CHECKPOINT: tc.write_tiny_sd15_checkpoint, DIFFUSION_ONLY: tc.write_tiny_diffusion_model_only,
               NO_VAE: tc.write_tiny_sd15_without_vae, FP32: fp32, CLIP_L: tc.write_clip_l_zeros}
    tmp = f"{path}.{os.getpid()}.tmp"
    writers[name](tmp)
    os.replace(tmp, path)
    return path


def prepare_models(folder: str) -> None:
    """Every file the scenarios share, written once into folder/checkpoints and folder/text_encoders."""
    for sub, names in (("checkpoints", (CHECKPOINT, DIFFUSION_ONLY, NO_VAE, FP32)), ("text_encoders", (CLIP_L,))):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        for name in names:
            path = os.path.join(folder, sub, name)
            if not os.path.exists(path):
                write_model(path, name)


def last_trace() -> str | None:
    """The trace StageTrace wrote for the prompt that just ran (None without StageTrace)."""
    installation = getattr(sys.modules.get("execution"), "_stagetrace_installation", None)
    return installation.recorder.last_trace if installation is not None else None


def step_hook(interrupt_while: int):
    """ComfyUI's progress hook as main.py installs it (hijack_progress): every progress update first
    raises when an interrupt is pending. The interrupt is requested as step ``interrupt_while`` starts
    (at the update that ends the step before it), like a user pressing Cancel during that step; the
    sampler stops at the update that ends it."""
    import comfy.model_management
    import nodes

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        if value == interrupt_while - 1:
            nodes.interrupt_processing(True)

    return hook


# --- The scenarios: each returns (runs, the judged prompt id, facts) ----------------------------


def wrong_loader(h: ScenarioRun):
    name = h.shared_checkpoint(DIFFUSION_ONLY)
    prompt = with_clip_text_encode(tiny_txt2img(name, steps=1))
    return [h.run(prompt, "wrong-loader-1")], "wrong-loader-1", {"file": name}


def missing_vae(h: ScenarioRun):
    name = h.shared_checkpoint(NO_VAE)
    h.write_clip_l()
    prompt = with_clip_loader(tiny_txt2img(name, steps=1))
    return [h.run(prompt, "missing-vae-1")], "missing-vae-1", {"file": name}


def slow_disk(h: ScenarioRun):
    path = h.own_checkpoint(FP32)
    prompt = tiny_txt2img(FP32, steps=1)
    return [h.run(prompt, "slow-disk-1")], "slow-disk-1", {"path": path, "file_bytes": os.path.getsize(path),
                                                           "mb_s": SLOW_READ_MB_S}


def busy_queue(h: ScenarioRun):
    name = h.shared_checkpoint(CHECKPOINT)
    prompts = [(f"busy-queue-{i}", tiny_txt2img(name, seed=i, steps=1)) for i in range(1, QUEUED_PROMPTS + 1)]
    h.queue_all(prompts)
    runs = [h.run(prompt, prompt_id) for prompt_id, prompt in prompts]
    return runs, prompts[-1][0], {"hold_s": QUEUE_HOLD_S, "prompts": QUEUED_PROMPTS}


def first_run(h: ScenarioRun):
    name = h.shared_checkpoint(CHECKPOINT)
    h.write_clip_l()
    prompt = with_clip_loader(tiny_txt2img(name, steps=1))
    return [h.run(prompt, "first-run-1")], "first-run-1", {}


def reload(h: ScenarioRun):
    import comfy.cli_args
    import execution

    comfy.cli_args.args.cache_none = True  # what `python main.py --cache-none` sets
    h.executor = execution.PromptExecutor(h.server, cache_type=execution.CacheType.DEPENDENCY_AWARE)
    name = h.shared_checkpoint(CHECKPOINT)
    h.write_clip_l()
    prompt = with_clip_loader(tiny_txt2img(name, steps=1))
    runs = [h.run(prompt, "reload-1"), h.run(prompt, "reload-2")]
    return runs, "reload-2", {"files": [h.checkpoint_path(name), os.path.join(h.text_encoders, CLIP_L)]}


def node_fails(h: ScenarioRun):
    name = h.shared_checkpoint(CHECKPOINT)
    prompt = with_node_between_sampler_and_decode(tiny_txt2img(name, steps=FAIL_STEPS), "HarnessFail")
    return [h.run(prompt, "node-fails-1")], "node-fails-1", {"steps": FAIL_STEPS}


def interrupt(h: ScenarioRun):
    import comfy.utils

    comfy.utils.set_progress_bar_global_hook(step_hook(INTERRUPT_STEP))
    name = h.shared_checkpoint(CHECKPOINT)
    prompt = tiny_txt2img(name, steps=INTERRUPT_OF)
    return [h.run(prompt, "interrupt-1")], "interrupt-1", {"step": INTERRUPT_STEP, "of": INTERRUPT_OF}


def partial_download(h: ScenarioRun):
    from comfy_nodes.demo.tiny_checkpoint import write_partial_download

    full = h.own_checkpoint(CHECKPOINT)
    expected = os.path.getsize(full)
    path = write_partial_download(full, full + ".part", PARTIAL_FRACTION)
    os.replace(path, full)  # the aborted download sits under the checkpoint's own name
    prompt = tiny_txt2img(CHECKPOINT, steps=1)
    return [h.run(prompt, "partial-download-1")], "partial-download-1", {
        "path": full, "file_bytes": os.path.getsize(full), "expected_bytes": expected}


def cpu_only(h: ScenarioRun):
    name = h.shared_checkpoint(CHECKPOINT)
    prompt = tiny_txt2img(name, steps=CPU_STEPS)
    prompt["5"]["inputs"].update(width=CPU_SIZE, height=CPU_SIZE)
    return [h.run(prompt, "cpu-only-1")], "cpu-only-1", {"steps": CPU_STEPS}


SCENARIOS = {
    "wrong-loader": wrong_loader, "missing-vae": missing_vae, "slow-disk": slow_disk, "busy-queue": busy_queue,
    "first-run": first_run, "reload": reload, "node-fails": node_fails, "interrupt": interrupt,
    "partial-download": partial_download, "cpu-only": cpu_only,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--prepare-models"] and len(argv) == 2:
        prepare_models(argv[1])
        return 0
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    cli.add_argument("--models", help="model files shared between scenarios (see --prepare-models)")
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    harness = ScenarioRun(args.comfyui, args.workdir, tuple(args.custom_node_dir), models=args.models,
                          throttle_mb_s=SLOW_READ_MB_S if args.scenario == "slow-disk" else None)
    started = time.perf_counter()
    harness.boot()
    boot_s = time.perf_counter() - started
    runs, judged, facts = SCENARIOS[args.scenario](harness)
    report(boot_s, runs, scenario=args.scenario, judged=judged, facts=facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
