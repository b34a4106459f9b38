"""Stage spans (comfy_nodes/stagehooks.py) outside ComfyUI: the span collector, the step clock, the
VAE tiled-fallback flag, the log tap's patterns, the filesystem and storage facts, and what a hook
does when its target moved. Real ComfyUI runs of the same hooks are in test_comfyui.py."""

import logging
import os
import types

import pytest

from comfy_nodes import stages
from comfy_nodes.stagehooks import (
    LOG_PATTERNS,
    LogTap,
    StageHooks,
    StageSpans,
    _sample,
    _text_encode,
    _tiled,
    _vae,
    filesystem_of,
    storage_read_bytes,
)

STEP, SAMPLE, DECODE = (stages.STAGES.index(s) for s in ("sample.step", "sample", "vae_decode"))


@pytest.fixture
def spans(native):
    return StageSpans(native)


def test_spans_carry_args_and_do_not_nest_within_one_stage(spans):
    with spans.span(SAMPLE, "outer", {"steps": 3}) as args:
        args["extra"] = 1
        with spans.span(SAMPLE, "inner"):  # the same stage: covered by the outer span
            pass
    (event,) = spans.trace_events(pid=7)
    assert event["name"] == "outer" and event["cat"] == "sample" and event["pid"] == 7
    assert event["args"] == {"steps": 3, "extra": 1} and event["dur"] >= 0


def test_a_failing_call_is_recorded_and_reraised(spans):
    with pytest.raises(ValueError, match="boom"):
        with spans.span(DECODE, "VAE decode"):
            raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt):
        with spans.span(SAMPLE, "sampler"):
            raise KeyboardInterrupt
    assert [e["args"]["outcome"] for e in spans.trace_events(1)] == ["error", "interrupted"]


def test_step_clock_gives_one_span_per_callback(spans, native):
    seen = []

    class Sampler:
        sampler_function = types.SimpleNamespace(__name__="sample_euler")

        def sample(self, model_wrap, sigmas, extra_args, callback, noise):
            for i in range(len(sigmas) - 1):
                callback({"i": i, "x": None})
            return "latent"

    sample = _sample(spans)(Sampler.sample)
    assert sample(Sampler(), None, [10.0, 5.0, 1.0, 0.0], {}, lambda info: seen.append(info["i"]), None) == "latent"
    assert seen == [0, 1, 2]  # the user's callback still runs, in order
    events = spans.trace_events(1)
    steps = [e for e in events if e["cat"] == "sample.step"]
    assert [(e["args"]["step"], e["args"]["of"], e["args"]["sigma"]) for e in steps] == [
        (1, 3, 10.0), (2, 3, 5.0), (3, 3, 1.0)]
    (whole,) = [e for e in events if e["cat"] == "sample"]
    assert whole["name"] == "euler" and whole["args"] == {"steps": 3}
    # a sampler called without a callback still gets step spans
    spans.clear()
    assert sample(Sampler(), None, [2.0, 1.0, 0.0], {}, None, None) == "latent"
    assert len([e for e in spans.trace_events(1) if e["cat"] == "sample.step"]) == 2


def test_tiled_call_inside_decode_is_flagged_as_the_oom_fallback(spans):
    class VAE:
        def decode_tiled_(self, samples):
            return "tiled"

        def decode(self, samples_in):
            return self.decode_tiled_(samples_in)  # what ComfyUI does after an OOM

    VAE.decode_tiled_ = _tiled(spans)(VAE.decode_tiled_)
    VAE.decode = _vae(spans, DECODE)(VAE.decode)
    assert VAE().decode(types.SimpleNamespace(shape=(1, 4, 8, 8))) == "tiled"
    (event,) = spans.trace_events(1)
    assert event["args"] == {"shape": [1, 4, 8, 8], "tiled_fallback": True}
    spans.clear()
    assert VAE().decode_tiled_(None) == "tiled"  # VAEDecodeTiled's own call: no decode span, no flag
    assert spans.trace_events(1) == []


def test_text_encode_names_the_encoder_and_counts_tokens(spans):
    class SD1ClipModel:
        pass

    class CLIP:
        cond_stage_model = SD1ClipModel()

        def encode_from_tokens(self, tokens, return_pooled=False):
            return "cond"

    encode = _text_encode(spans)(CLIP.encode_from_tokens)
    tokens = {"l": [[(49406, 1.0)] * 77, [(49406, 1.0)] * 77]}
    assert encode(CLIP(), tokens) == "cond"
    (event,) = spans.trace_events(1)
    assert event["name"] == "SD1ClipModel" and event["args"]["tokens"] == 154


def test_a_moved_target_is_left_alone_and_named(spans):
    replaced = []

    def changed(something_else, tokens):  # ComfyUI renamed the first parameter
        return tokens

    module = types.SimpleNamespace(load_models_gpu=changed)
    hooks = StageHooks(spans, lambda owner, name, new, label: replaced.append(label))
    hooks.wrap(module, "load_models_gpu", ["models"], "comfy.model_management.load_models_gpu", lambda f: f)
    assert replaced == [] and module.load_models_gpu is changed
    assert hooks.missing and "load_models_gpu" in hooks.missing[0]


def test_log_tap_turns_comfyui_warnings_into_events(native):
    tap = LogTap(native)
    log = logging.getLogger("test-comfyui")
    log.addHandler(tap)
    log.propagate = False
    log.setLevel(logging.INFO)  # ComfyUI logs at INFO; the tap sees what the loggers let through
    try:
        log.warning("no CLIP/text encoder weights in checkpoint, the text encoder model will not be loaded.")
        log.warning("WARNING: No VAE weights detected, VAE not initalized.")
        log.info("loaded partially 5960.2 4312.6 0")
        log.warning("Warning: Ran out of memory when regular VAE decoding, retrying with tiled VAE decoding.")
        log.info("an ordinary line")
        log.info("%s %d", "args are formatted", 3)
    finally:
        log.removeHandler(tap)
    names = [e["name"] for e in tap.trace_events(1)]
    assert names == ["no_clip", "no_vae", "loaded_partially", "tiled_vae_retry"]
    assert tap.trace_events(1)[0]["args"]["level"] == "WARNING"
    assert len({kind for kind, _ in LOG_PATTERNS}) == len(LOG_PATTERNS)


def test_filesystem_and_storage_facts(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 10)
    fs_type, mount = filesystem_of(str(path))
    assert fs_type and mount and os.path.realpath(str(path)).startswith(mount.rstrip("/") + "/" if mount != "/"
                                                                        else "/")
    assert filesystem_of("/proc/self/status")[0] == "proc"
    before = storage_read_bytes()
    assert before is None or before >= 0


def test_a_step_cut_short_is_kept_with_its_outcome(spans):
    class InterruptProcessingException(Exception):  # ComfyUI's, by name
        pass

    Interrupted = InterruptProcessingException

    class Sampler:
        def sample(self, model_wrap, sigmas, extra_args, callback, noise):
            callback({"i": 0})
            raise Interrupted  # the user pressed cancel during step 2

    sample = _sample(spans)(Sampler.sample)
    with pytest.raises(Interrupted):
        sample(Sampler(), None, [3.0, 2.0, 1.0, 0.0], {}, None, None)
    steps = [e for e in spans.trace_events(1) if e["cat"] == "sample.step"]
    assert [(e["args"]["step"], e["args"].get("outcome")) for e in steps] == [(1, None), (2, "interrupted")]
    (whole,) = [e for e in spans.trace_events(1) if e["cat"] == "sample"]
    assert whole["args"]["outcome"] == "interrupted"
    spans.clear()
    with pytest.raises(MemoryError):
        _sample(spans)(lambda self, mw, sigmas, ea, callback, noise: (_ for _ in ()).throw(MemoryError()))(
            Sampler(), None, [1.0, 0.0], {}, None, None)
    (step,) = [e for e in spans.trace_events(1) if e["cat"] == "sample.step"]
    assert step["args"]["outcome"] == "error" and step["args"]["step"] == 1
