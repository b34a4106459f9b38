"""Stage spans inside the nodes: model loading (read, build, to device), text encoding, sampling with
one span per denoising step, VAE decode/encode, saving.

Each span is opened and closed by the C recorder (``_native.stage_begin``/``stage_end``): an NVTX
range, a GPU attribution window when CUPTI collects (so its figures land per stage and per step) and
a span event whose args carry what the stage measured (bytes, filesystem, loaded vs total bytes, step
i of N and sigma, tiled fallback, bytes written). Spans of one stage do not nest on a thread (the
outer one covers the inner: encode_from_tokens_scheduled calling encode_from_tokens is one
text_encode); the C side keeps that rule.

Every hook reads its target's arguments by parameter name (``targets.Binder``), never by position or
count, so parameters ComfyUI adds or reorders pass through untouched; a target that lost a parameter a
hook reads (``targets.py``'s table decides) is left alone and its fallback named in the trace.

StageTrace's own code runs inside the guard (``hooks/guard.py``) and never around
the original call: ComfyUI's exceptions pass through untouched, StageTrace's own are counted and
logged once, and the call runs on.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable

from ..core import stages
from ..record.live import LIVE
from . import facts
from .deferred import MAPPED_FRACTION, METER, ReadMeter
from .guard import HookGuard
from .targets import Binder, Target, fit_one, signature_names, target

STAGE_NAMES = stages.STAGES  # a stage's index -> its name
READ = stages.STAGES.index("model_load.read")
BUILD = stages.STAGES.index("model_load.build")
TO_DEVICE = stages.STAGES.index("model_load.to_device")
TEXT_ENCODE = stages.STAGES.index("text_encode")
SAMPLE = stages.STAGES.index("sample")
STEP = stages.STAGES.index("sample.step")
VAE_DECODE = stages.STAGES.index("vae_decode")
VAE_ENCODE = stages.STAGES.index("vae_encode")
SAVE = stages.STAGES.index("save")


def is_interrupt(exc: BaseException) -> bool:
    """KeyboardInterrupt and friends, or ComfyUI's InterruptProcessingException (matched by name, so
    this works whichever module defines it)."""
    return not isinstance(exc, Exception) or type(exc).__name__ == "InterruptProcessingException"


def outcome_of(exc: BaseException | None) -> int:
    if exc is None:
        return stages.OK
    return stages.INTERRUPTED if is_interrupt(exc) else stages.ERROR


# --- Spans ----------------------------------------------------------------------------------------

# before(bound) -> the span's args so far; after(args, result, exc, bound); name(bound) -> str. bound is
# {parameter name: value} of the call (Binder.values): what a hook reads, by name.
Before = Callable[[dict], dict]
After = Callable[[dict, object, "BaseException | None", dict], None]


class Spans:
    """Opens and closes stage spans through the C recorder, with StageTrace's own work guarded."""

    def __init__(self, native, guard: HookGuard, meter: ReadMeter = METER) -> None:
        self.native = native
        self.guard = guard
        self.meter = meter  # mapped model files read after their load (deferred.py)
        self.local = threading.local()  # per thread: the open VAE span's args (tiled fallback flag)

    def open(self, label: str, stage: int, name: str | Callable[[dict], str], before: Before | None,
             bind: Binder, call_args: tuple, call_kwargs: dict) -> tuple[int, dict, dict] | None:
        """(token, args, bound) of a new span, or None when StageTrace's own code failed (counted)."""
        return self.guard.call(label, self._open, stage, name, before, bind, call_args, call_kwargs)

    def _open(self, stage, name, before, bind, call_args, call_kwargs) -> tuple[int, dict, dict]:
        bound = bind.values(call_args, call_kwargs)
        args = before(bound) if before is not None else {}
        text = name(bound) if callable(name) else name
        if stage != READ:  # a read span's own bytes are the read, not a deferred one
            metered = self.meter.begin()
            if metered is not None:
                args["_read_meter"] = metered
        LIVE.stage_opened(STAGE_NAMES[stage])
        return self.native.stage_begin(stage, text), args, bound

    def close(self, label: str, opened: tuple[int, dict, dict] | None, after: After | None, result: object,
              exc: BaseException | None) -> None:
        """Finish the span: after() adds what the call produced; the span ends even when after fails."""
        if opened is None:
            return
        self.guard.call(label, self._close, opened, after, result, exc)

    def _close(self, opened, after, result, exc) -> None:
        token, args, bound = opened
        try:
            metered = args.pop("_read_meter", None)
            if after is not None:
                after(args, result, exc, bound)
            deferred = self.meter.end(metered)
            if deferred is not None:
                args["deferred_read"] = deferred
        finally:
            self.native.stage_end(token, args, outcome_of(exc))


def span_hook(spans: Spans, label: str, stage: int, name: str | Callable[[dict], str],
              before: Before | None = None, after: After | None = None):
    """A hook maker: make(original, bind) is the original call, recorded as one span of ``stage``; bind
    (a Binder built from the target's signature) reads the arguments before, after and name use."""
    def make(original, bind: Binder):
        def hooked(*args, **kwargs):
            opened = spans.open(label, stage, name, before, bind, args, kwargs)
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                spans.close(label, opened, after, None, exc)
                raise
            spans.close(label, opened, after, result, None)
            return result
        return hooked
    return make


# --- What each stage measures ---------------------------------------------------------------------


def _read_before(bound: dict) -> dict:
    path = str(bound["ckpt"])
    fs_type, mount = facts.filesystem_of(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    return {"path": path, "file_bytes": size, "fs_type": fs_type, "mount": mount,
            "memory_before": facts.memory_facts(), "_storage_before": facts.storage_read_bytes()}


def _memory_before(bound: dict) -> dict:
    return {"memory_before": facts.memory_facts(), "_storage_before": facts.storage_read_bytes()}


def _storage_after(args: dict, result, exc, bound: dict) -> None:
    """Storage bytes read during the call (with safetensors' mmap the data is paged in during the build,
    so the build span carries storage bytes too), and RAM/swap after it."""
    before = args.pop("_storage_before", None)
    after = facts.storage_read_bytes()
    if before is not None and after is not None:
        args["storage_read_bytes"] = after - before
    args["memory_after"] = facts.memory_facts()


def _model_names(bound: dict) -> str:
    names = [type(getattr(m, "model", None) or m).__name__ for m in list(bound["models"] or ())[:8]]
    return "load " + ", ".join(names) if names else "load models"


def _loaded_after(args: dict, result, exc, bound: dict) -> None:
    args["models"] = facts.loaded_models()


def _encoder_name(bound: dict) -> str:
    return type(getattr(bound["self"], "cond_stage_model", None)).__name__


def _tokens_before(bound: dict) -> dict:
    return {"tokens": facts.token_count(bound["tokens"])}


def _vae_hooks(spans: Spans):
    def before(bound: dict) -> dict:
        samples = bound.get("samples_in", bound.get("pixel_samples"))  # decode's, encode's
        span_args = {"shape": list(getattr(samples, "shape", []) or []), "tiled_fallback": False}
        span_args["_outer"] = getattr(spans.local, "vae_args", None)
        spans.local.vae_args = span_args
        return span_args

    def after(span_args: dict, result, exc, bound: dict) -> None:
        spans.local.vae_args = span_args.pop("_outer", None)

    return before, after


def _tiled(spans: Spans):
    """A tiled decode/encode inside VAE.decode/encode is ComfyUI's fallback after running out of memory:
    flag the open VAE span. VAEDecodeTiled's own call has no VAE span open and is not flagged."""
    def flag() -> None:
        span_args = getattr(spans.local, "vae_args", None)
        if span_args is not None:
            span_args["tiled_fallback"] = True

    def make(original, bind: Binder):
        def tiled(*args, **kwargs):
            spans.guard.call("vae tiled fallback", flag)
            return original(*args, **kwargs)
        return tiled
    return make


def _save_before(bound: dict) -> dict:
    images = bound["images"]
    return {"images": len(images) if hasattr(images, "__len__") else None}


def _save_after(args: dict, result, exc, bound: dict) -> None:
    if exc is None:
        args["bytes_written"] = facts.saved_bytes(bound["self"], result)


# --- Sampling: one span per denoising step --------------------------------------------------------


class StepClock:
    """Step k runs from the end of the previous step's callback (or the loop's start) to the end of callback
    k: ComfyUI calls it once per step, after the model evaluation, and its own work there (the preview, the
    progress update) belongs to the step. The sigmas are transferred once (they may live on the
    GPU), never once per step."""

    def __init__(self, native, sigmas) -> None:
        self.native = native
        self.sigmas = [float(s) for s in (sigmas.tolist() if hasattr(sigmas, "tolist") else sigmas)]
        self.total = len(self.sigmas) - 1 if self.sigmas else None
        self.index = 0
        self.token = 0

    def start(self) -> None:
        """The sampler loop starts: open step 1 (inside the sample span, which opens first)."""
        self.token = self._begin()

    def _begin(self) -> int:
        return self.native.stage_begin(STEP, f"step {self.index + 1}" + (f"/{self.total}" if self.total else ""))

    def tick(self, info: object) -> None:
        """Callback k arrived: end step k with its sigma, open step k + 1."""
        i = info.get("i", self.index) if isinstance(info, dict) else self.index
        token, self.token = self.token, 0
        self.native.stage_end(token, {"step": i + 1, "of": self.total,
                                      "sigma": self.sigmas[i] if 0 <= i < len(self.sigmas) else None})
        LIVE.step_done(i + 1, self.total)
        self.index = i + 1
        self.token = self._begin()

    def finish(self, exc: BaseException | None) -> None:
        """The loop ended: drop the span opened for a step that never ran, or, when an exception cut the
        loop short (an interrupt, out of memory), keep it as the step that was running, with that outcome."""
        token, self.token = self.token, 0
        if exc is None:
            self.native.stage_abandon(token)
        else:
            self.native.stage_end(token, {"step": self.index + 1, "of": self.total}, outcome_of(exc))


def _sample(spans: Spans):
    guard, label = spans.guard, "sample"

    def name(bound: dict) -> str:
        sampler = bound["self"]
        return getattr(getattr(sampler, "sampler_function", None), "__name__", "sampler").removeprefix("sample_")

    def make(original, bind: Binder):
        def sample(*args, **kwargs):
            sigmas = guard.call("sample.step", bind.get, args, kwargs, "sigmas")
            steps = guard.call("sample.step", StepClock, spans.native, sigmas) if sigmas is not None else None
            opened = spans.open(label, SAMPLE, name, lambda bound: {"steps": steps.total if steps else None},
                                bind, args, kwargs)
            if steps is not None:
                guard.call("sample.step", steps.start)
                user_callback = bind.get(args, kwargs, "callback")

                def step_done(*cb_args, **cb_kwargs):
                    # the step ends after ComfyUI's own callback (its preview, its progress update): an
                    # interrupt raised there cuts this step short, and the step that never began is not blamed
                    result = user_callback(*cb_args, **cb_kwargs) if user_callback is not None else None
                    guard.call("sample.step", steps.tick, cb_args[0] if cb_args else None)
                    return result

                replaced = guard.call("sample.step", bind.replace, args, kwargs, "callback", step_done)
                if replaced is None:  # the callback could not be passed: no step spans, the call runs on
                    guard.call("sample.step", steps.finish, None)
                    steps = None
                else:
                    args, kwargs = replaced
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                if steps is not None:
                    guard.call("sample.step", steps.finish, exc)
                spans.close(label, opened, None, None, exc)
                raise
            if steps is not None:
                guard.call("sample.step", steps.finish, None)
            spans.close(label, opened, None, result, None)
            return result
        return sample
    return make


# --- Installation ---------------------------------------------------------------------------------


class StageHooks:
    """Installs the stage hooks on ComfyUI's modules; ``installed`` names them and ``missing`` says, for
    each target that does not fit, what StageTrace does instead (targets.py's fallback)."""

    def __init__(self, spans: Spans, replace) -> None:
        self.spans = spans
        self.replace = replace  # Installation.replace(owner, name, new, label)
        self.installed: list[str] = []
        self.missing: list[str] = []

    def wrap(self, owner, name: str, binds: list[str] | tuple[str, ...], label: str, make,
             fallback: str | None = None) -> bool:
        """Replace owner.name by make(original, bind) when it exists and has a parameter of every name in
        binds (whatever else its signature holds); otherwise leave it alone and name the fallback."""
        original = getattr(owner, "__dict__", {}).get(name) if owner is not None else None
        names = signature_names(original) if original is not None else None
        fit = fit_one(Target("", name, tuple(binds), fallback or "not hooked"), names,
                      f"{label} not found" if original is None else f"{label} has no readable signature")
        if not fit.fits:
            self.missing.append(f"{label}: {fit.fallback} ({fit.why})")
            return False
        wrapper = make(original, Binder(original, tuple(binds)))
        functools.update_wrapper(wrapper, original)
        self.replace(owner, name, wrapper, label)
        self.installed.append(label)
        return True

    def wrap_target(self, owner, target_name: str, make) -> bool:
        """wrap() for one target of targets.py's table: its names, label and fallback."""
        t = target(target_name)
        return self.wrap(owner, t.qualname.rsplit(".", 1)[-1], t.binds, t.hook_label, make, t.fallback)

    def install(self, modules, on_model_file: Callable[[str], None] | None = None) -> None:
        utils, sd, mm, samplers, nodes = (modules.get(m) for m in (
            "comfy.utils", "comfy.sd", "comfy.model_management", "comfy.samplers", "nodes"))
        spans = self.spans
        self.wrap_target(utils, "comfy.utils.load_torch_file", _model_file(spans, on_model_file))
        for fn, what in (("load_state_dict_guess_config", "checkpoint"),
                         ("load_diffusion_model_state_dict", "diffusion model"),
                         ("load_text_encoder_state_dicts", "text encoder")):
            self.wrap_target(sd, f"comfy.sd.{fn}", span_hook(spans, "model_load.build", BUILD, what, _memory_before,
                                                             _storage_after))
        self.wrap_target(mm, "comfy.model_management.load_models_gpu",
                         span_hook(spans, "model_load.to_device", TO_DEVICE, _model_names, None, _loaded_after))
        clip = getattr(sd, "CLIP", None)
        for fn in ("encode_from_tokens", "encode_from_tokens_scheduled"):
            self.wrap_target(clip, f"comfy.sd.CLIP.{fn}",
                             span_hook(spans, "text_encode", TEXT_ENCODE, _encoder_name, _tokens_before))
        self.wrap_target(getattr(samplers, "KSAMPLER", None), "comfy.samplers.KSAMPLER.sample", _sample(spans))
        vae = getattr(sd, "VAE", None)
        before, after = _vae_hooks(spans)
        self.wrap_target(vae, "comfy.sd.VAE.decode",
                         span_hook(spans, "vae_decode", VAE_DECODE, "VAE decode", before, after))
        self.wrap_target(vae, "comfy.sd.VAE.encode",
                         span_hook(spans, "vae_encode", VAE_ENCODE, "VAE encode", before, after))
        for fn in ("decode_tiled_", "decode_tiled_1d", "decode_tiled_3d", "encode_tiled_", "encode_tiled_1d",
                   "encode_tiled_3d"):
            self.wrap_target(vae, f"comfy.sd.VAE.{fn}", _tiled(spans))
        self.wrap_target(getattr(nodes, "SaveImage", None), "nodes.SaveImage.save_images",
                         span_hook(spans, "save", SAVE, lambda bound: type(bound["self"]).__name__, _save_before,
                                   _save_after))
        memory = modules.get("comfy.memory_management")  # comfy-aimdo's read path, in newer ComfyUI only
        if memory is not None and getattr(memory, "read_tensor_file_slice_into", None) is not None:
            self.wrap_target(memory, "comfy.memory_management.read_tensor_file_slice_into", _timed_reads(spans))


def _timed_reads(spans: Spans):
    """comfy.memory_management.read_tensor_file_slice_into (comfy-aimdo): it reads a mapped tensor's bytes
    from its file into a buffer, returning whether it did. Each read that happened is timed and counted
    (deferred.py): the bytes of a mapped model file, read where they are really read."""
    def count(bind: Binder, args: tuple, kwargs: dict, ns: int) -> None:
        tensor = bind.get(args, kwargs, "tensor")
        spans.meter.timed_read(int(tensor.numel()) * int(tensor.element_size()), ns)

    def make(original, bind: Binder):
        def read_tensor_file_slice_into(*args, **kwargs):
            started = time.monotonic_ns()
            result = original(*args, **kwargs)
            if result:
                spans.guard.call("aimdo reads", count, bind, args, kwargs, time.monotonic_ns() - started)
            return result
        return read_tensor_file_slice_into
    return make


def _model_file(spans: Spans, on_model_file: Callable[[str], None] | None):
    """comfy.utils.load_torch_file: every loader reads weights through it. Before the read, the file's
    anatomy (header only) and the loader check; around it, the model_load.read span. A file the call
    mapped instead of reading (less than half of it read) is marked so: its bytes are measured where they
    are read later (deferred.py), and the span says ``mapped``."""
    def after(args: dict, result, exc, bound: dict) -> None:
        _storage_after(args, result, exc, bound)
        path, size, read = args.get("path", ""), args.get("file_bytes"), args.get("storage_read_bytes")
        if exc is None and size and read is not None and read < MAPPED_FRACTION * size and \
                facts.maps_file(result, path):
            spans.meter.file_loaded(path, size, read, args.get("fs_type"))
            args["mapped"] = True

    read = span_hook(spans, "model_load.read", READ, lambda bound: os.path.basename(str(bound["ckpt"])),
                     _read_before, after)

    def make(original, bind: Binder):
        timed = read(original, bind)

        def load_torch_file(*args, **kwargs):
            if on_model_file is not None:
                spans.guard.call("model file", lambda: on_model_file(str(bind.get(args, kwargs, "ckpt"))))
            return timed(*args, **kwargs)
        return load_torch_file
    return make
