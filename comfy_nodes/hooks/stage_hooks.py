"""Stage spans inside the nodes: model loading (read, build, to device), text encoding, sampling with
one span per denoising step, VAE decode/encode, saving.

Each span is opened and closed by the C recorder (``_native.stage_begin``/``stage_end``): an NVTX
range, a GPU attribution window when CUPTI collects (so its figures land per stage and per step) and
a span event whose args carry what the stage measured (bytes, filesystem, loaded vs total bytes, step
i of N and sigma, tiled fallback, bytes written). Spans of one stage do not nest on a thread (the
outer one covers the inner: encode_from_tokens_scheduled calling encode_from_tokens is one
text_encode); the C side keeps that rule.

Every hook checks its target's signature first; a target that moved is left alone and named in the
trace's fallbacks. StageTrace's own code runs inside the guard (``hooks/guard.py``) and never around
the original call: ComfyUI's exceptions pass through untouched, StageTrace's own are counted and
logged once, and the call runs on.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable

from ..core import stages
from ..record.live import LIVE
from . import facts
from .guard import HookGuard
from .params import params

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

# before(*call_args, **call_kwargs) -> the span's args so far; after(args, result, exc, *call_args, **kw)
Before = Callable[..., dict]
After = Callable[..., None]


class Spans:
    """Opens and closes stage spans through the C recorder, with StageTrace's own work guarded."""

    def __init__(self, native, guard: HookGuard) -> None:
        self.native = native
        self.guard = guard
        self.local = threading.local()  # per thread: the open VAE span's args (tiled fallback flag)

    def open(self, label: str, stage: int, name: str | Callable[..., str], before: Before | None,
             call_args: tuple, call_kwargs: dict) -> tuple[int, dict] | None:
        """(token, args) of a new span, or None when StageTrace's own code failed (counted)."""
        return self.guard.call(label, self._open, stage, name, before, call_args, call_kwargs)

    def _open(self, stage, name, before, call_args, call_kwargs) -> tuple[int, dict]:
        args = before(*call_args, **call_kwargs) if before is not None else {}
        text = name(*call_args, **call_kwargs) if callable(name) else name
        LIVE.stage_opened(STAGE_NAMES[stage])
        return self.native.stage_begin(stage, text), args

    def close(self, label: str, opened: tuple[int, dict] | None, after: After | None, result: object,
              exc: BaseException | None, call_args: tuple, call_kwargs: dict) -> None:
        """Finish the span: after() adds what the call produced; the span ends even when after fails."""
        if opened is None:
            return
        self.guard.call(label, self._close, opened, after, result, exc, call_args, call_kwargs)

    def _close(self, opened, after, result, exc, call_args, call_kwargs) -> None:
        token, args = opened
        try:
            if after is not None:
                after(args, result, exc, *call_args, **call_kwargs)
        finally:
            self.native.stage_end(token, args, outcome_of(exc))


def span_hook(spans: Spans, label: str, stage: int, name: str | Callable[..., str],
              before: Before | None = None, after: After | None = None):
    """A hook maker: the original call, recorded as one span of ``stage``."""
    def make(original):
        def hooked(*args, **kwargs):
            opened = spans.open(label, stage, name, before, args, kwargs)
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                spans.close(label, opened, after, None, exc, args, kwargs)
                raise
            spans.close(label, opened, after, result, None, args, kwargs)
            return result
        return hooked
    return make


# --- What each stage measures ---------------------------------------------------------------------


def _read_before(ckpt, *args, **kwargs) -> dict:
    path = str(ckpt)
    fs_type, mount = facts.filesystem_of(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    return {"path": path, "file_bytes": size, "fs_type": fs_type, "mount": mount,
            "memory_before": facts.memory_facts(), "_storage_before": facts.storage_read_bytes()}


def _memory_before(*args, **kwargs) -> dict:
    return {"memory_before": facts.memory_facts(), "_storage_before": facts.storage_read_bytes()}


def _storage_after(args: dict, result, exc, *call_args, **call_kwargs) -> None:
    """Storage bytes read during the call (with safetensors' mmap the data is paged in during the build,
    so the build span carries storage bytes too), and RAM/swap after it."""
    before = args.pop("_storage_before", None)
    after = facts.storage_read_bytes()
    if before is not None and after is not None:
        args["storage_read_bytes"] = after - before
    args["memory_after"] = facts.memory_facts()


def _model_names(models, *args, **kwargs) -> str:
    names = [type(getattr(m, "model", None) or m).__name__ for m in list(models or ())[:8]]
    return "load " + ", ".join(names) if names else "load models"


def _loaded_after(args: dict, result, exc, *call_args, **call_kwargs) -> None:
    args["models"] = facts.loaded_models()


def _encoder_name(clip, *args, **kwargs) -> str:
    return type(getattr(clip, "cond_stage_model", None)).__name__


def _tokens_before(clip, tokens, *args, **kwargs) -> dict:
    return {"tokens": facts.token_count(tokens)}


def _vae_hooks(spans: Spans):
    def before(vae, samples, *args, **kwargs) -> dict:
        span_args = {"shape": list(getattr(samples, "shape", []) or []), "tiled_fallback": False}
        span_args["_outer"] = getattr(spans.local, "vae_args", None)
        spans.local.vae_args = span_args
        return span_args

    def after(span_args: dict, result, exc, *args, **kwargs) -> None:
        spans.local.vae_args = span_args.pop("_outer", None)

    return before, after


def _tiled(spans: Spans):
    """A tiled decode/encode inside VAE.decode/encode is ComfyUI's fallback after running out of memory:
    flag the open VAE span. VAEDecodeTiled's own call has no VAE span open and is not flagged."""
    def flag() -> None:
        span_args = getattr(spans.local, "vae_args", None)
        if span_args is not None:
            span_args["tiled_fallback"] = True

    def make(original):
        def tiled(self, *args, **kwargs):
            spans.guard.call("vae tiled fallback", flag)
            return original(self, *args, **kwargs)
        return tiled
    return make


def _save_before(node, images, *args, **kwargs) -> dict:
    return {"images": len(images) if hasattr(images, "__len__") else None}


def _save_after(args: dict, result, exc, node, *call_args, **call_kwargs) -> None:
    if exc is None:
        args["bytes_written"] = facts.saved_bytes(node, result)


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

    def name(sampler, *args, **kwargs) -> str:
        return getattr(getattr(sampler, "sampler_function", None), "__name__", "sampler").removeprefix("sample_")

    def make(original):
        def sample(self, model_wrap, sigmas, extra_args, callback, *args, **kwargs):
            steps = guard.call("sample.step", StepClock, spans.native, sigmas)
            call_args = (self, model_wrap, sigmas, extra_args, callback)
            opened = spans.open(label, SAMPLE, name, lambda *a, **k: {"steps": steps.total if steps else None},
                                call_args, kwargs)
            if steps is not None:
                guard.call("sample.step", steps.start)
                user_callback = callback

                def step_done(*cb_args, **cb_kwargs):
                    # the step ends after ComfyUI's own callback (its preview, its progress update): an
                    # interrupt raised there cuts this step short, and the step that never began is not blamed
                    result = user_callback(*cb_args, **cb_kwargs) if user_callback is not None else None
                    guard.call("sample.step", steps.tick, cb_args[0] if cb_args else None)
                    return result

                callback = step_done
            try:
                result = original(self, model_wrap, sigmas, extra_args, callback, *args, **kwargs)
            except BaseException as exc:
                if steps is not None:
                    guard.call("sample.step", steps.finish, exc)
                spans.close(label, opened, None, None, exc, call_args, kwargs)
                raise
            if steps is not None:
                guard.call("sample.step", steps.finish, None)
            spans.close(label, opened, None, result, None, call_args, kwargs)
            return result
        return sample
    return make


# --- Installation ---------------------------------------------------------------------------------


class StageHooks:
    """Installs the stage hooks on ComfyUI's modules; ``installed`` and ``missing`` name them."""

    def __init__(self, spans: Spans, replace) -> None:
        self.spans = spans
        self.replace = replace  # Installation.replace(owner, name, new, label)
        self.installed: list[str] = []
        self.missing: list[str] = []

    def wrap(self, owner, name: str, expected: list[str], label: str, make) -> None:
        original = getattr(owner, "__dict__", {}).get(name) if owner is not None else None
        if original is None or params(original)[: len(expected)] != expected:
            self.missing.append(f"no {label} spans: {label.split(' ')[0]} not found or its signature changed")
            return
        wrapper = make(original)
        functools.update_wrapper(wrapper, original)
        self.replace(owner, name, wrapper, label)
        self.installed.append(label)

    def install(self, modules, on_model_file: Callable[[str], None] | None = None) -> None:
        utils, sd, mm, samplers, nodes = (modules.get(m) for m in (
            "comfy.utils", "comfy.sd", "comfy.model_management", "comfy.samplers", "nodes"))
        spans = self.spans
        self.wrap(utils, "load_torch_file", ["ckpt"], "comfy.utils.load_torch_file",
                  _model_file(spans, on_model_file))
        for fn, what in (("load_state_dict_guess_config", "checkpoint"),
                         ("load_diffusion_model_state_dict", "diffusion model"),
                         ("load_text_encoder_state_dicts", "text encoder")):
            self.wrap(sd, fn, ["sd" if fn != "load_text_encoder_state_dicts" else "state_dicts"],
                      f"comfy.sd.{fn}", span_hook(spans, "model_load.build", BUILD, what, _memory_before,
                                                  _storage_after))
        self.wrap(mm, "load_models_gpu", ["models"], "comfy.model_management.load_models_gpu",
                  span_hook(spans, "model_load.to_device", TO_DEVICE, _model_names, None, _loaded_after))
        clip = getattr(sd, "CLIP", None)
        for fn in ("encode_from_tokens", "encode_from_tokens_scheduled"):
            self.wrap(clip, fn, ["self", "tokens"], f"comfy.sd.CLIP.{fn}",
                      span_hook(spans, "text_encode", TEXT_ENCODE, _encoder_name, _tokens_before))
        self.wrap(getattr(samplers, "KSAMPLER", None), "sample",
                  ["self", "model_wrap", "sigmas", "extra_args", "callback"], "comfy.samplers.KSAMPLER.sample",
                  _sample(spans))
        vae = getattr(sd, "VAE", None)
        before, after = _vae_hooks(spans)
        self.wrap(vae, "decode", ["self", "samples_in"], "comfy.sd.VAE.decode",
                  span_hook(spans, "vae_decode", VAE_DECODE, "VAE decode", before, after))
        self.wrap(vae, "encode", ["self", "pixel_samples"], "comfy.sd.VAE.encode",
                  span_hook(spans, "vae_encode", VAE_ENCODE, "VAE encode", before, after))
        for fn in ("decode_tiled_", "decode_tiled_1d", "decode_tiled_3d", "encode_tiled_", "encode_tiled_1d",
                   "encode_tiled_3d"):
            self.wrap(vae, fn, ["self"], f"comfy.sd.VAE.{fn}", _tiled(spans))
        self.wrap(getattr(nodes, "SaveImage", None), "save_images", ["self", "images"], "nodes.SaveImage.save_images",
                  span_hook(spans, "save", SAVE, lambda node, *a, **k: type(node).__name__, _save_before,
                            _save_after))


def _model_file(spans: Spans, on_model_file: Callable[[str], None] | None):
    """comfy.utils.load_torch_file: every loader reads weights through it. Before the read, the file's
    anatomy (header only) and the loader check; around it, the model_load.read span."""
    read = span_hook(spans, "model_load.read", READ, lambda ckpt, *a, **k: os.path.basename(str(ckpt)),
                     _read_before, _storage_after)

    def make(original):
        timed = read(original)

        def load_torch_file(ckpt, *args, **kwargs):
            if on_model_file is not None:
                spans.guard.call("model file", on_model_file, str(ckpt))
            return timed(ckpt, *args, **kwargs)
        return load_torch_file
    return make
