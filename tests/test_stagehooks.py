"""Stage spans (comfy_nodes/hooks/stage_hooks.py) outside ComfyUI: spans through the C recorder, the
step clock, the VAE tiled-fallback flag, the log tap's patterns, the filesystem and storage facts,
what a hook does when its target moved, and that StageTrace's own failures never reach the caller.
Real ComfyUI runs of the same hooks are in test_comfyui.py."""

import logging
import os
import types

import pytest

from comfy_nodes.core import stages
from comfy_nodes.hooks.facts import filesystem_of, storage_read_bytes
from comfy_nodes.hooks.guard import HookGuard
from comfy_nodes.hooks.log_tap import LOG_PATTERNS, LogTap
from comfy_nodes.hooks.stage_hooks import (
    TEXT_ENCODE,
    Spans,
    StageHooks,
    _encoder_name,
    _sample,
    _tiled,
    _tokens_before,
    _vae_hooks,
    span_hook,
)
from comfy_nodes.hooks.targets import Binder

STEP, SAMPLE, DECODE = (stages.STAGES.index(s) for s in ("sample.step", "sample", "vae_decode"))


class Recorded:
    """What the C recorder holds, drained and turned into trace events (as the writer writes them)."""

    def __init__(self, native):
        self.native = native
        native.drain()  # start clean

    def trace_events(self, pid):
        self.events = getattr(self, "events", []) + self.native.drain().events(pid)
        return [e | {"pid": pid} for e in self.events if e.get("ph") != "M"]

    def clear(self):
        self.native.drain()
        self.events = []


@pytest.fixture
def guard():
    return HookGuard()


@pytest.fixture
def spans(native, guard):
    return Spans(native, guard)


@pytest.fixture
def recorded(native):
    return Recorded(native)


def hooked(make, func, *names):
    """func hooked by a hook maker, reading the parameters names by name (as StageHooks.wrap does)."""
    return make(func, Binder(func, names))


def sampled(spans, func):
    """func hooked as KSAMPLER.sample is."""
    return hooked(_sample(spans), func, "self", "sigmas", "callback")


def span(spans, stage, name, args=None, after=None):
    """A callable recorded as one span by the real hook maker."""
    return lambda func: hooked(span_hook(spans, "test", stage, name, (lambda bound: dict(args or {})), after), func)


def test_spans_carry_args_and_do_not_nest_within_one_stage(spans, recorded):
    inner = span(spans, SAMPLE, "inner")(lambda: None)  # the same stage: covered by the outer span

    def outer_after(args, result, exc, bound):
        args["extra"] = 1

    outer = span(spans, SAMPLE, "outer", {"steps": 3}, outer_after)(inner)
    outer()
    (event,) = recorded.trace_events(pid=7)
    assert event["name"] == "outer" and event["cat"] == "sample" and event["pid"] == 7
    assert event["args"] == {"outcome": "ok", "steps": 3, "extra": 1} and event["dur"] >= 0


def test_a_failing_call_is_recorded_and_reraised(spans, recorded):
    def boom():
        raise ValueError("boom")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(ValueError, match="boom"):
        span(spans, DECODE, "VAE decode")(boom)()
    with pytest.raises(KeyboardInterrupt):
        span(spans, SAMPLE, "sampler")(interrupted)()
    assert [e["args"]["outcome"] for e in recorded.trace_events(1)] == ["error", "interrupted"]


def test_stagetraces_own_failures_never_reach_the_caller(spans, guard, recorded):
    """A failing before/after (StageTrace's code) costs the span's figures, never the call; the span still
    ends (no NVTX range or open stage is left behind), and the guard counts the failure by label."""
    def bad_before(bound):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")

    def bad_after(args, result, exc, bound):
        raise OSError("injected")

    assert hooked(span_hook(spans, "read", SAMPLE, "s", bad_before), lambda: 42)() == 42
    assert hooked(span_hook(spans, "build", SAMPLE, "s", None, bad_after), lambda: 43)() == 43
    assert span(spans, SAMPLE, "next")(lambda: 44)() == 44  # the stage is free again after the failed after()
    assert guard.failures == {"read": 1, "build": 1}
    assert [e["name"] for e in recorded.trace_events(1)] == ["s", "next"]
    with pytest.raises(ValueError, match="ComfyUI's own"):  # the host's exception passes untouched
        def host_fails():
            raise ValueError("ComfyUI's own")
        hooked(span_hook(spans, "read", SAMPLE, "s", bad_before), host_fails)()


def test_step_clock_gives_one_span_per_callback(spans, native, recorded):
    seen = []

    class Sampler:
        sampler_function = types.SimpleNamespace(__name__="sample_euler")

        def sample(self, model_wrap, sigmas, extra_args, callback, noise):
            for i in range(len(sigmas) - 1):
                callback({"i": i, "x": None})
            return "latent"

    sample = sampled(spans, Sampler.sample)
    assert sample(Sampler(), None, [10.0, 5.0, 1.0, 0.0], {}, lambda info: seen.append(info["i"]), None) == "latent"
    assert seen == [0, 1, 2]  # the user's callback still runs, in order
    events = recorded.trace_events(1)
    steps = [e for e in events if e["cat"] == "sample.step"]
    assert [(e["args"]["step"], e["args"]["of"], e["args"]["sigma"]) for e in steps] == [
        (1, 3, 10.0), (2, 3, 5.0), (3, 3, 1.0)]
    (whole,) = [e for e in events if e["cat"] == "sample"]
    assert whole["name"] == "euler" and whole["args"] == {"outcome": "ok", "steps": 3}
    # a sampler called without a callback still gets step spans
    recorded.clear()
    assert sample(Sampler(), None, [2.0, 1.0, 0.0], {}, None, None) == "latent"
    assert len([e for e in recorded.trace_events(1) if e["cat"] == "sample.step"]) == 2


def test_tiled_call_inside_decode_is_flagged_as_the_oom_fallback(spans, recorded):
    class VAE:
        def decode_tiled_(self, samples):
            return "tiled"

        def decode(self, samples_in):
            return self.decode_tiled_(samples_in)  # what ComfyUI does after an OOM

    VAE.decode_tiled_ = hooked(_tiled(spans), VAE.decode_tiled_)
    VAE.decode = hooked(span_hook(spans, "vae_decode", DECODE, "VAE decode", *_vae_hooks(spans)), VAE.decode,
                        "self", "samples_in")
    assert VAE().decode(types.SimpleNamespace(shape=(1, 4, 8, 8))) == "tiled"
    (event,) = recorded.trace_events(1)
    assert event["args"] == {"outcome": "ok", "shape": [1, 4, 8, 8], "tiled_fallback": True}
    recorded.clear()
    assert VAE().decode_tiled_(None) == "tiled"  # VAEDecodeTiled's own call: no decode span, no flag
    assert recorded.trace_events(1) == []


def test_text_encode_names_the_encoder_and_counts_tokens(spans, recorded):
    class SD1ClipModel:
        pass

    class CLIP:
        cond_stage_model = SD1ClipModel()

        def encode_from_tokens(self, tokens, return_pooled=False):
            return "cond"

    encode = hooked(span_hook(spans, "text_encode", TEXT_ENCODE, _encoder_name, _tokens_before),
                    CLIP.encode_from_tokens, "self", "tokens")
    tokens = {"l": [[(49406, 1.0)] * 77, [(49406, 1.0)] * 77]}
    assert encode(CLIP(), tokens) == "cond"
    (event,) = recorded.trace_events(1)
    assert event["name"] == "SD1ClipModel" and event["args"]["tokens"] == 154


def test_a_moved_target_is_left_alone_and_named(spans):
    replaced = []

    def changed(something_else, tokens):  # ComfyUI renamed the first parameter
        return tokens

    module = types.SimpleNamespace(load_models_gpu=changed)
    hooks = StageHooks(spans, lambda owner, name, new, label: replaced.append(label))
    hooks.wrap(module, "load_models_gpu", ["models"], "comfy.model_management.load_models_gpu", lambda f, b: f)
    assert replaced == [] and module.load_models_gpu is changed
    assert hooks.missing and "load_models_gpu" in hooks.missing[0]


def test_log_tap_turns_comfyui_warnings_into_events(native, guard, recorded):
    tap = LogTap(native, guard)
    tap.active = True  # between prompt_begin and prompt_end
    log = logging.getLogger()  # ComfyUI logs through the root logger
    other = logging.getLogger("some.library")
    saved = log.level, log.handlers[:]
    log.handlers[:] = [tap]
    log.setLevel(logging.INFO)  # ComfyUI logs at INFO; the tap sees what the loggers let through
    try:
        other.warning("no VAE weights detected: another library's line is not ComfyUI's")
        log.warning("no CLIP/text encoder weights in checkpoint, the text encoder model will not be loaded.")
        log.warning("WARNING: No VAE weights detected, VAE not initalized.")
        log.info("loaded partially 5960.2 4312.6 0")
        log.warning("Warning: Ran out of memory when regular VAE decoding, retrying with tiled VAE decoding.")
        log.info("an ordinary line")
        log.info("%s %d", "args are formatted", 3)
        tap.active = False
        log.warning("No VAE weights detected")  # between prompts: not recorded
    finally:
        log.handlers[:] = saved[1]
        log.setLevel(saved[0])
    events = recorded.trace_events(1)
    names = [e["name"] for e in events]
    assert names == ["no_clip", "no_vae", "loaded_partially", "tiled_vae_retry"]
    assert {e["cat"] for e in events} == {"comfyui_log"} and events[0]["args"]["level"] == "WARNING"
    assert len({kind for kind, _ in LOG_PATTERNS}) == len(LOG_PATTERNS)
    assert guard.failures == {}


def test_filesystem_and_storage_facts(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 10)
    fs_type, mount = filesystem_of(str(path))
    assert fs_type and mount and os.path.realpath(str(path)).startswith(mount.rstrip("/") + "/" if mount != "/"
                                                                        else "/")
    assert filesystem_of("/proc/self/status")[0] == "proc"
    before = storage_read_bytes()
    assert before is None or before >= 0


def test_a_step_cut_short_is_kept_with_its_outcome(spans, recorded):
    class InterruptProcessingException(Exception):  # ComfyUI's, by name
        pass

    Interrupted = InterruptProcessingException

    class Sampler:
        def sample(self, model_wrap, sigmas, extra_args, callback, noise):
            callback({"i": 0})
            raise Interrupted  # the user pressed cancel during step 2

    sample = sampled(spans, Sampler.sample)
    with pytest.raises(Interrupted):
        sample(Sampler(), None, [3.0, 2.0, 1.0, 0.0], {}, None, None)
    events = recorded.trace_events(1)
    steps = [e for e in events if e["cat"] == "sample.step"]
    assert [(e["args"]["step"], e["args"].get("outcome")) for e in steps] == [(1, "ok"), (2, "interrupted")]
    (whole,) = [e for e in events if e["cat"] == "sample"]
    assert whole["args"]["outcome"] == "interrupted"
    recorded.clear()
    with pytest.raises(MemoryError):
        sampled(spans, lambda self, mw, sigmas, ea, callback, noise: (_ for _ in ()).throw(MemoryError()))(
            Sampler(), None, [1.0, 0.0], {}, None, None)
    (step,) = [e for e in recorded.trace_events(1) if e["cat"] == "sample.step"]
    assert step["args"]["outcome"] == "error" and step["args"]["step"] == 1


def test_an_interrupt_raised_in_comfyuis_own_callback_cuts_that_step_short(spans, recorded):
    """ComfyUI's progress hook raises InterruptProcessingException from the sampler's callback at the end of the
    step during which Cancel was pressed: that step is the interrupted one, not the next (which never began)."""
    class InterruptProcessingException(Exception):  # ComfyUI's, by name
        pass

    class Sampler:
        def sample(self, model_wrap, sigmas, extra_args, callback, noise):
            for i in range(len(sigmas) - 1):
                callback({"i": i})

    def progress(info):
        if info["i"] == 2:  # Cancel pressed during step 3
            raise InterruptProcessingException

    with pytest.raises(InterruptProcessingException):
        sampled(spans, Sampler.sample)(Sampler(), None, [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0], {}, progress, None)
    steps = [e for e in recorded.trace_events(1) if e["cat"] == "sample.step"]
    assert [(e["args"]["step"], e["args"]["outcome"]) for e in steps] == [(1, "ok"), (2, "ok"), (3, "interrupted")]
