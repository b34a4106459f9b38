"""Stage spans inside the nodes: model loading (read, build, to device), text encoding, sampling with
one span per denoising step, VAE decode/encode, saving; and the ComfyUI log lines that explain a slow
or broken run, as instant events.

Each span is an NVTX range, a GPU attribution window (so CUPTI's figures land per stage and per
step) and a trace event whose args carry what the stage measured (bytes, MB/s, filesystem, loaded vs
total bytes, step i of N and sigma, tiled fallback, bytes written). Every hook checks its target's
signature first; a target that moved is left alone and named in the trace's fallbacks. A hook that
fails lets the call through untouched and logs once.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from contextlib import contextmanager

from . import stages
from .log import log_once

MAX_STAGE_EVENTS = 100_000  # per prompt; past this, spans are counted as dropped

_READ = stages.STAGES.index("model_load.read")
_BUILD = stages.STAGES.index("model_load.build")
_TO_DEVICE = stages.STAGES.index("model_load.to_device")
_TEXT_ENCODE = stages.STAGES.index("text_encode")
_SAMPLE = stages.STAGES.index("sample")
_STEP = stages.STAGES.index("sample.step")
_VAE_DECODE = stages.STAGES.index("vae_decode")
_VAE_ENCODE = stages.STAGES.index("vae_encode")
_SAVE = stages.STAGES.index("save")


# --- Spans ----------------------------------------------------------------------------------------


class StageSpans:
    """Collects one prompt's stage spans. Spans of the same stage do not nest (the outer one covers the
    inner: encode_from_tokens_scheduled calling encode_from_tokens is one text_encode)."""

    def __init__(self, native) -> None:
        self.native = native
        self.gpu_windows = False  # set when CUPTI collects: spans become attribution windows
        self.events: list[dict] = []
        self.dropped = 0
        self._local = threading.local()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.events = []
            self.dropped = 0

    def _open(self) -> dict:
        depth = getattr(self._local, "open", None)
        if depth is None:
            depth = self._local.open = {}
        return depth

    def begin(self, stage: int, name: str, t0: int | None = None) -> tuple | None:
        """Open a span; None when one of this stage is already open on this thread."""
        open_stages = self._open()
        if open_stages.get(stage):
            return None
        open_stages[stage] = True
        n = self.native
        name_id = n.intern(name)
        t0 = n.now_ns() if t0 is None else t0
        nvtx = n.nvtx_range_start(stage, name_id)
        window = n.gpu_window_open(stage, name_id, t0) if self.gpu_windows else 0
        return stage, name, t0, nvtx, window

    def end(self, token: tuple | None, args: dict, t1: int | None = None) -> None:
        if token is None:
            return
        stage, name, t0, nvtx, window = token
        n = self.native
        t1 = n.now_ns() if t1 is None else t1
        n.nvtx_range_end(nvtx)
        if window:
            n.gpu_window_close(window, t1)
        self._open()[stage] = False
        event = {"ph": "X", "cat": stages.STAGES[stage], "name": name, "ts": t0 / 1e3, "dur": (t1 - t0) / 1e3,
                 "tid": threading.get_native_id(), "args": args, "t0_ns": t0, "t1_ns": t1}
        with self._lock:
            if len(self.events) < MAX_STAGE_EVENTS:
                self.events.append(event)
            else:
                self.dropped += 1

    @contextmanager
    def span(self, stage: int, name: str, args: dict | None = None):
        """Time the with-block as a span; the block may add to the yielded args. A failure inside
        StageTrace costs the span, never the call: it is logged once and the block runs anyway."""
        args = dict(args or {})
        try:
            token = self.begin(stage, name)
        except Exception as exc:  # noqa: BLE001
            log_once("stage-span", "stage span failed (%s: %s); the call runs on", type(exc).__name__, exc)
            token = None
        try:
            yield args
        except BaseException as exc:
            args["outcome"] = "interrupted" if not isinstance(exc, Exception) or _is_interrupt(exc) else "error"
            raise
        finally:
            try:
                self.end(token, args)
            except Exception as exc:  # noqa: BLE001
                log_once("stage-span", "stage span failed (%s: %s); the call runs on", type(exc).__name__, exc)

    def trace_events(self, pid: int) -> list[dict]:
        with self._lock:
            events = list(self.events)
        return [{k: v for k, v in e.items() if k not in ("t0_ns", "t1_ns")} | {"pid": pid} for e in events]


def _is_interrupt(exc: BaseException) -> bool:
    return type(exc).__name__ == "InterruptProcessingException"


# --- Facts the spans carry ------------------------------------------------------------------------


def storage_read_bytes() -> int | None:
    """Bytes this process has read from storage so far (/proc/self/io read_bytes; page cache hits
    are not counted), or None where the kernel does not say."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def memory_facts() -> dict | None:
    """System RAM and swap now (/proc/meminfo): available, total, swap used; None where unknown."""
    try:
        values = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
                    values[key] = int(rest.split()[0]) * 1024
        return {"available": values["MemAvailable"], "total": values["MemTotal"],
                "swap_used": values.get("SwapTotal", 0) - values.get("SwapFree", 0)}
    except (OSError, KeyError, ValueError, IndexError):
        return None


def filesystem_of(path: str) -> tuple[str | None, str | None]:
    """(filesystem type, mount point) holding path, from /proc/self/mountinfo: overlay, 9p, fuse.*,
    nfs... say why a read is slow."""
    try:
        target = os.path.realpath(path)
        best = ("", None)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mount_point = left.split()[4].replace("\\040", " ")
                fs_type = right.split()[0] if right else None
                if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and \
                        len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type)
        return best[1], best[0] or None
    except (OSError, IndexError):
        return None, None


def loaded_models() -> list[dict]:
    """What comfy.model_management holds after a load: per model, bytes loaded on the device vs its
    total size, partial (lowvram) or full, device, weight dtype and the dtype it is cast to per layer."""
    import sys

    mm = sys.modules.get("comfy.model_management")
    out = []
    for lm in list(getattr(mm, "current_loaded_models", None) or ()):
        try:
            patcher = lm.model
            if patcher is None:
                continue
            model = getattr(patcher, "model", None)
            total, loaded = int(lm.model_memory()), int(lm.model_loaded_memory())
            out.append({
                "model": type(model).__name__ if model is not None else "?",
                "device": str(getattr(lm, "device", "?")),
                "loaded_bytes": loaded,
                "total_bytes": total,
                "partial": bool(getattr(model, "model_lowvram", False)) or loaded < total,
                "dtype": str(patcher.model_dtype()) if hasattr(patcher, "model_dtype") else None,
                # weights stored in one dtype and computed in another are cast on every forward
                "manual_cast": str(getattr(model, "manual_cast_dtype", None) or "") or None,
            })
        except Exception:  # noqa: BLE001 - a model half torn down: skip it
            continue
    return out


def _token_count(tokens) -> int | None:
    """Tokens a text encoder got: CLIP tokenizers give {name: [[(token, weight), ...], ...]}."""
    try:
        if isinstance(tokens, dict):
            return sum(len(batch) for value in tokens.values() for batch in value)
        return sum(len(batch) for batch in tokens)
    except TypeError:
        return None


# --- The ComfyUI log lines worth an event ---------------------------------------------------------

LOG_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("no_clip", re.compile(r"no CLIP/text encoder weights in checkpoint")),
    ("no_vae", re.compile(r"No VAE weights detected")),
    ("not_a_checkpoint", re.compile(r"This is not a checkpoint file, trying to load it as a diffusion model only")),
    ("loaded_partially", re.compile(r"loaded partially")),
    ("loaded_completely", re.compile(r"loaded completely")),
    ("tiled_vae_retry", re.compile(r"Ran out of memory when regular VAE (de|en)coding, retrying with tiled")),
    ("oom", re.compile(r"out of memory|OutOfMemoryError", re.IGNORECASE)),
    ("models_unloaded", re.compile(r"\d+ models? unloaded")),
    ("vram_state", re.compile(r"Set vram state to: ")),
    ("weight_dtype", re.compile(r"model weight dtype .*, manual cast: ")),
)


class LogTap(logging.Handler):
    """A logging handler that turns the known ComfyUI warning lines into instant events. Never raises."""

    def __init__(self, native) -> None:
        super().__init__(level=logging.DEBUG)
        self.native = native
        self.events: list[dict] = []
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.events = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.name == "stagetrace":
                return
            message = record.getMessage()
            for kind, pattern in LOG_PATTERNS:
                if pattern.search(message):
                    with self._lock:
                        if len(self.events) < 10_000:
                            self.events.append({"ph": "i", "s": "t", "cat": "comfyui_log", "name": kind,
                                                "ts": self.native.now_ns() / 1e3, "tid": threading.get_native_id(),
                                                "args": {"message": message[:500], "level": record.levelname}})
                    return
        except Exception:  # noqa: BLE001 - logging must never fail because of StageTrace
            pass

    def trace_events(self, pid: int) -> list[dict]:
        with self._lock:
            return [e | {"pid": pid} for e in self.events]


# --- Hooks ----------------------------------------------------------------------------------------


class StageHooks:
    """Installs the stage hooks on ComfyUI's modules; `installed` and `missing` name them."""

    def __init__(self, spans: StageSpans, replace) -> None:
        self.spans = spans
        self.replace = replace  # Installation.replace(owner, name, new, label)
        self.installed: list[str] = []
        self.missing: list[str] = []

    def wrap(self, owner, name: str, params: list[str], label: str, make) -> None:
        from .comfyui import _params  # the one signature check every hook uses

        original = getattr(owner, "__dict__", {}).get(name) if owner is not None else None
        if original is None or _params(original)[: len(params)] != params:
            self.missing.append(f"no {label} spans: {label.split(' ')[0]} not found or its signature changed")
            log_once(f"stage-{label}", "%s not found or changed; no %s spans", label, label)
            return
        wrapper = make(original)
        functools.update_wrapper(wrapper, original)
        self.replace(owner, name, wrapper, label)
        self.installed.append(label)

    def install(self, modules) -> None:
        utils, sd, mm, samplers, nodes = (modules.get(m) for m in (
            "comfy.utils", "comfy.sd", "comfy.model_management", "comfy.samplers", "nodes"))
        spans = self.spans
        for fn, label in (("load_state_dict_guess_config", "checkpoint"),
                          ("load_diffusion_model_state_dict", "diffusion model"),
                          ("load_text_encoder_state_dicts", "text encoder")):
            self.wrap(sd, fn, ["sd" if fn != "load_text_encoder_state_dicts" else "state_dicts"],
                      f"comfy.sd.{fn}", _build(spans, label))
        self.wrap(mm, "load_models_gpu", ["models"], "comfy.model_management.load_models_gpu", _to_device(spans))
        clip = getattr(sd, "CLIP", None)
        self.wrap(clip, "encode_from_tokens", ["self", "tokens"], "comfy.sd.CLIP.encode_from_tokens",
                  _text_encode(spans))
        self.wrap(clip, "encode_from_tokens_scheduled", ["self", "tokens"],
                  "comfy.sd.CLIP.encode_from_tokens_scheduled", _text_encode(spans))
        self.wrap(getattr(samplers, "KSAMPLER", None), "sample",
                  ["self", "model_wrap", "sigmas", "extra_args", "callback"], "comfy.samplers.KSAMPLER.sample",
                  _sample(spans))
        vae = getattr(sd, "VAE", None)
        self.wrap(vae, "decode", ["self", "samples_in"], "comfy.sd.VAE.decode", _vae(spans, _VAE_DECODE))
        self.wrap(vae, "encode", ["self", "pixel_samples"], "comfy.sd.VAE.encode", _vae(spans, _VAE_ENCODE))
        for fn in ("decode_tiled_", "decode_tiled_1d", "decode_tiled_3d", "encode_tiled_", "encode_tiled_1d",
                   "encode_tiled_3d"):
            self.wrap(vae, fn, ["self"], f"comfy.sd.VAE.{fn}", _tiled(spans))
        self.wrap(getattr(nodes, "SaveImage", None), "save_images", ["self", "images"], "nodes.SaveImage.save_images",
                  _save(spans))
        del utils  # model_load.read lives in the load_torch_file hook (comfyui.py), with the anatomy


def read_span(spans: StageSpans, path: str):
    """The model_load.read span around comfy.utils.load_torch_file: file bytes, storage bytes read,
    filesystem. With safetensors' mmap the data is paged in later, during the build: its storage bytes
    are on the build span too."""
    fs_type, mount = filesystem_of(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    return spans.span(_READ, os.path.basename(path), {"path": path, "file_bytes": size, "fs_type": fs_type,
                                                      "mount": mount})


@contextmanager
def measured_read(spans: StageSpans, path: str):
    before = storage_read_bytes()
    with read_span(spans, path) as args:
        args["memory_before"] = memory_facts()
        try:
            yield args
        finally:
            _storage_delta(args, before)
            args["memory_after"] = memory_facts()


def _storage_delta(args: dict, before: int | None) -> None:
    after = storage_read_bytes()
    if before is not None and after is not None:
        args["storage_read_bytes"] = after - before


def _build(spans: StageSpans, label: str):
    def make(original):
        def build(*args, **kwargs):
            before = storage_read_bytes()
            with spans.span(_BUILD, label, {"memory_before": memory_facts()}) as span_args:
                try:
                    return original(*args, **kwargs)
                finally:
                    _storage_delta(span_args, before)
                    span_args["memory_after"] = memory_facts()
        return build
    return make


def _to_device(spans: StageSpans):
    def make(original):
        def load_models_gpu(models, *args, **kwargs):
            names = _model_names(models)
            with spans.span(_TO_DEVICE, "load " + ", ".join(names) if names else "load models") as span_args:
                try:
                    return original(models, *args, **kwargs)
                finally:
                    try:
                        span_args["models"] = loaded_models()
                    except Exception:  # noqa: BLE001
                        pass
        return load_models_gpu
    return make


def _model_names(models) -> list[str]:
    try:
        return [type(getattr(m, "model", None) or m).__name__ for m in list(models or ())[:8]]
    except Exception:  # noqa: BLE001
        return []


def _text_encode(spans: StageSpans):
    def make(original):
        def encode(self, tokens, *args, **kwargs):
            encoder = type(getattr(self, "cond_stage_model", None)).__name__
            with spans.span(_TEXT_ENCODE, encoder, {"tokens": _token_count(tokens)}):
                return original(self, tokens, *args, **kwargs)
        return encode
    return make


def _sample(spans: StageSpans):
    def make(original):
        def sample(self, model_wrap, sigmas, extra_args, callback, *args, **kwargs):
            try:  # one transfer before the loop (sigmas may live on the GPU), never one per step
                sigma_list = [float(s) for s in (sigmas.tolist() if hasattr(sigmas, "tolist") else sigmas)]
                total = len(sigma_list) - 1
            except Exception:  # noqa: BLE001
                total, sigma_list = None, []
            sampler = getattr(self, "sampler_function", None)
            name = getattr(sampler, "__name__", "sampler").removeprefix("sample_")
            with spans.span(_SAMPLE, name, {"steps": total}):
                steps = _StepClock(spans, total, sigma_list)
                try:
                    return original(self, model_wrap, sigmas, extra_args, steps.wrap(callback), *args, **kwargs)
                except BaseException as exc:
                    steps.finish(cut_short_by=exc)
                    raise
                finally:
                    steps.finish()
        return sample
    return make


class _StepClock:
    """Step k runs from the previous step's callback (or the loop's start) to callback k: ComfyUI calls it
    once per step, after the model evaluation."""

    def __init__(self, spans: StageSpans, total: int | None, sigmas: list[float]) -> None:
        self.spans, self.total, self.sigmas = spans, total, sigmas
        self.index = 0
        self.token = self._begin()

    def _begin(self):
        try:
            return self.spans.begin(_STEP, f"step {self.index + 1}" + (f"/{self.total}" if self.total else ""))
        except Exception as exc:  # noqa: BLE001
            log_once("step-span", "step spans skipped (%s: %s)", type(exc).__name__, exc)
            return None

    def wrap(self, callback):
        def step_done(*args, **kwargs):
            try:
                info = args[0] if args and isinstance(args[0], dict) else {}
                i = info.get("i", self.index)
                self.spans.end(self.token, {"step": i + 1, "of": self.total,
                                            "sigma": self.sigmas[i] if i < len(self.sigmas) else None})
                self.index = i + 1
                self.token = self._begin()
            except Exception as exc:  # noqa: BLE001 - never break the sampler
                log_once("step-span", "step spans skipped (%s: %s)", type(exc).__name__, exc)
            if callback is not None:
                return callback(*args, **kwargs)
            return None
        return step_done

    def finish(self, cut_short_by: BaseException | None = None) -> None:
        """The loop ended: drop the span opened for a step that never ran, or, when an exception cut
        the loop short (an interrupt, out of memory), keep it as the step that was running."""
        token, self.token = self.token, None
        if token is None:
            return
        try:
            if cut_short_by is not None:
                interrupted = not isinstance(cut_short_by, Exception) or _is_interrupt(cut_short_by)
                self.spans.end(token, {"step": self.index + 1, "of": self.total,
                                       "outcome": "interrupted" if interrupted else "error"})
                return
            self.spans._open()[_STEP] = False
            n = self.spans.native
            n.nvtx_range_end(token[3])
            if token[4]:
                n.gpu_window_close(token[4], n.now_ns())
        except Exception as exc:  # noqa: BLE001
            log_once("step-span", "step spans skipped (%s: %s)", type(exc).__name__, exc)


def _vae(spans: StageSpans, stage: int):
    def make(original):
        def run(self, samples, *args, **kwargs):
            shape = list(getattr(samples, "shape", []) or [])
            with spans.span(stage, "VAE " + ("decode" if stage == _VAE_DECODE else "encode"),
                            {"shape": shape, "tiled_fallback": False}) as span_args:
                outer = getattr(spans._local, "vae_args", None)
                spans._local.vae_args = span_args
                try:
                    return original(self, samples, *args, **kwargs)
                finally:
                    spans._local.vae_args = outer
        return run
    return make


def _tiled(spans: StageSpans):
    """A tiled decode/encode inside VAE.decode/encode is ComfyUI's fallback after running out of memory."""
    def make(original):
        def tiled(self, *args, **kwargs):
            span_args = getattr(spans._local, "vae_args", None)
            if span_args is not None:
                span_args["tiled_fallback"] = True
            return original(self, *args, **kwargs)
        return tiled
    return make


def _save(spans: StageSpans):
    def make(original):
        def save_images(self, images, *args, **kwargs):
            with spans.span(_SAVE, type(self).__name__, {"images": len(images) if hasattr(images, "__len__")
                                                         else None}) as span_args:
                result = original(self, images, *args, **kwargs)
                span_args["bytes_written"] = _saved_bytes(self, result)
                return result
        return save_images
    return make


def _saved_bytes(node, result) -> int | None:
    try:
        folder = node.output_dir
        total = 0
        for image in result["ui"]["images"]:
            total += os.path.getsize(os.path.join(folder, image.get("subfolder", ""), image["filename"]))
        return total
    except Exception:  # noqa: BLE001
        return None


