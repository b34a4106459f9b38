"""The diagnosis rules (comfy_nodes/diagnose.py): for each rule of the catalogue, a recorded scenario
that triggers it and one that must not, plus the rule's "not checked" answer when its evidence is
missing. The scenarios are traces in StageTrace's own format, built by `scenario()` below the way
the recorder writes them (spans with their args, the GPU track, otherData)."""

import json
import os
import subprocess
import sys

import pytest

from comfy_nodes.analysis.diagnose import RULES, Finding, NotChecked, diagnose, gather
from comfy_nodes.render.report import render

MS = 1000.0  # trace timestamps are microseconds
GB = 1 << 30


def span(cat, name, ts_ms, dur_ms, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts_ms * MS, "dur": dur_ms * MS, "pid": 1, "tid": 1,
            "args": args}


def scenario(*events, wall_ms=10_000, other=None, queue_wait_s=None):
    base = [span("prompt", "prompt", 0, wall_ms, prompt_id="p", outcome="ok")]
    other = {"prompt_id": "p", "anatomy": [], "warnings": [], "queue_wait_s": queue_wait_s, **(other or {})}
    return {"traceEvents": base + list(events), "otherData": other}


def result(trace, rule_id):
    ev = gather(trace)
    (rule,) = [r for r in RULES if r.id == rule_id]
    return rule.check(ev)


def cupti(**extra):
    return {"collection": "cupti", "devices": [], **extra}


def gpu_window(stage, busy_ms, window_ms, kernels=10, htod_bytes=0, htod_ms=0.0):
    copies = {"htod": {"count": 1, "bytes": htod_bytes, "ms": htod_ms}} if htod_bytes else {}
    return {"ph": "X", "cat": "gpu", "name": f"GPU: {stage}", "ts": 0, "dur": window_ms * MS, "pid": 1, "tid": 9,
            "args": {"stage": stage, "busy_ms": busy_ms, "window_ms": window_ms, "kernels": kernels,
                     "copies": copies}}


RTX3090 = {"name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6", "fp8_compute": False}
RTX4090 = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9", "fp8_compute": True}


# --- slow read ---


def slow_read_trace(seconds, fs="overlay", storage_fraction=1.0):
    size = 20 * 10**9
    return scenario(
        span("model_load.read", "qwen.safetensors", 0, 50, path="/models/qwen.safetensors", file_bytes=size,
             fs_type=fs, mount="/", storage_read_bytes=0),
        span("model_load.build", "checkpoint", 60, seconds * 1000 - 50,
             storage_read_bytes=int(size * storage_fraction)),
        wall_ms=seconds * 1000 + 100)


def test_slow_read_on_an_overlay_filesystem_is_found_and_costed():
    f = result(slow_read_trace(1183), "slow-read")
    assert isinstance(f, Finding) and "17 MB/s" in f.evidence and "overlay" in f.evidence
    assert 1100 < f.cost_s < 1183 and "bind mount" in f.fix


def test_fast_read_or_page_cache_is_not_a_finding():
    assert result(slow_read_trace(20, fs="ext4"), "slow-read") is None  # 1 GB/s
    assert result(slow_read_trace(1183, storage_fraction=0.0), "slow-read") is None  # from the page cache: CPU work
    assert isinstance(result(scenario(), "slow-read"), NotChecked)


# --- partial offload ---


def offload_trace(partial, with_gpu=True):
    model = {"model": "QwenImage", "device": "cuda:0", "loaded_bytes": 14 * 10**9 if partial else 20 * 10**9,
             "total_bytes": 20 * 10**9, "partial": partial}
    steps = [span("sample.step", f"step {i + 1}/25", 1000 + 40_000 * i, 40_000, step=i + 1, of=25) for i in range(25)]
    gpu = [gpu_window("sample.step", 10_000, 40_000, htod_bytes=6 * 10**9 if partial else 0, htod_ms=30_000.0)
           for _ in range(25)] if with_gpu else []
    return scenario(span("model_load.to_device", "load QwenImage", 500, 400, models=[model]), *steps, *gpu,
                    wall_ms=1_010_000, other={"gpu": cupti() if with_gpu else {"collection": "unavailable"}})


def test_partial_offload_streams_weights_every_step():
    f = result(offload_trace(True), "partial-offload")
    assert isinstance(f, Finding) and "14.0 GB of 20.0 GB" in f.evidence
    assert "6.0 GB copied host to device per step over 25 steps" in f.evidence and f.cost_s == pytest.approx(25 * 30.0)
    no_gpu = result(offload_trace(True, with_gpu=False), "partial-offload")
    assert isinstance(no_gpu, Finding) and "no GPU data" in no_gpu.evidence and no_gpu.cost_s is None


def test_full_load_is_not_a_finding():
    assert result(offload_trace(False), "partial-offload") is None


# --- CPU sampling / no GPU kernels ---


def sampling_trace(device="cuda:0", kernels=100, gpu=True):
    model = {"model": "BaseModel", "device": device, "loaded_bytes": 1, "total_bytes": 1, "partial": False}
    events = [span("model_load.to_device", "load", 0, 10, models=[model]), span("sample", "euler", 20, 5000)]
    if gpu:
        events.append(gpu_window("sample.step", 4000, 5000, kernels=kernels))
    return scenario(*events, wall_ms=6000, other={"gpu": cupti() if gpu else {"collection": "unavailable",
                                                                               "reason": "no driver"}})


def test_sampling_on_the_cpu_and_no_gpu_kernels_are_found():
    cpu = result(sampling_trace(device="cpu", gpu=False), "cpu-sampling")
    assert isinstance(cpu, Finding) and "loaded to the CPU" in cpu.evidence and cpu.cost_s == pytest.approx(4.5)
    idle = result(sampling_trace(kernels=0), "cpu-sampling")
    assert isinstance(idle, Finding) and "no kernels" in idle.evidence


def test_sampling_with_gpu_kernels_is_fine():
    assert result(sampling_trace(), "cpu-sampling") is None
    unknown = sampling_trace(gpu=False)
    unknown["traceEvents"] = [e for e in unknown["traceEvents"] if e["cat"] != "model_load.to_device"]
    assert isinstance(result(unknown, "cpu-sampling"), NotChecked)


# --- FP8 without FP8 compute ---


def fp8_trace(device):
    anatomy = [{"path": "qwen_fp8.safetensors", "family": "qwen_image", "components": [
        {"kind": "diffusion_model", "label": "Qwen-Image", "dtypes": {"fp8_e4m3fn": 20 * 10**9}}]}]
    return scenario(other={"anatomy": anatomy, "gpu": cupti(devices=[device] if device else [])})


def test_fp8_weights_on_an_rtx_3090_are_cast_every_layer():
    f = result(fp8_trace(RTX3090), "fp8-no-compute")
    assert isinstance(f, Finding) and "sm_86" in f.evidence and "fp8_e4m3fn" in f.evidence
    trace = fp8_trace(RTX3090)
    trace["traceEvents"].append(span("model_load.to_device", "load QwenImage", 0, 10, models=[
        {"model": "QwenImage", "device": "cuda:0", "loaded_bytes": 1, "total_bytes": 1, "partial": False,
         "dtype": "torch.float8_e4m3fn", "manual_cast": "torch.bfloat16"}]))
    assert "ComfyUI computes it in torch.bfloat16" in result(trace, "fp8-no-compute").evidence


def test_fp8_weights_on_an_rtx_4090_are_fine_and_no_gpu_facts_is_not_checked():
    assert result(fp8_trace(RTX4090), "fp8-no-compute") is None
    assert isinstance(result(fp8_trace(None), "fp8-no-compute"), NotChecked)


# --- missing CLIP/VAE ---


def qwen_gap(prompt):
    """The loader gap the recorder records for the Qwen-Image diffusion-only fixture in prompt's node 4."""
    from comfy_nodes.analysis.anatomy import classify
    from comfy_nodes.analysis.loaders import loader_gap

    with open(os.path.join(os.path.dirname(__file__), "fixtures", "families", "qwen_image_diffusion_only.json")) as f:
        data = json.load(f)
    anatomy = classify(data["tensors"], data.get("metadata"))
    return loader_gap(prompt, "4", "/models/checkpoints/qwen.safetensors", anatomy)


QWEN_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "qwen.safetensors"}},
    "6": {"class_type": "TextEncodeQwenImageEdit", "inputs": {"clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"vae": ["4", 2], "samples": ["3", 0]}},
}


def test_missing_clip_and_vae_from_the_recorded_loader_gap():
    gap = qwen_gap(QWEN_PROMPT)
    assert [m["kind"] for m in gap["missing"]] == ["text_encoder", "vae"]
    f = result(scenario(other={"loader_gaps": [gap]}), "missing-clip-vae")
    assert isinstance(f, Finding) and f.severity == "error"
    assert f.fix.startswith("replace CheckpointLoaderSimple #4 with UNETLoader") and "Load it with" not in f.evidence
    assert f.figures["missing"] == ["text_encoder", "vae"] and f.figures["add"] == ["UNETLoader", "CLIPLoader",
                                                                                    "VAELoader"]
    assert f.title.startswith("CheckpointLoaderSimple #4 cannot give the text encoder (CLIP) or the VAE")
    assert "TextEncodeQwenImageEdit #6" in f.evidence and "VAEDecode #8" in f.evidence
    assert "CLIPLoader" in f.fix and "VAELoader" in f.fix


def test_missing_parts_advice_keeps_the_loaders_the_workflow_has():
    prompt = dict(QWEN_PROMPT, **{"10": {"class_type": "CLIPLoader", "inputs": {}},
                                   "6": {"class_type": "TextEncodeQwenImageEdit", "inputs": {"clip": ["10", 0]}}})
    gap = qwen_gap(prompt)  # the text encoder comes from the CLIPLoader: only the VAE is missing
    assert [m["kind"] for m in gap["missing"]] == ["vae"]
    f = result(scenario(other={"loader_gaps": [gap]}), "missing-clip-vae")
    assert "VAELoader" in f.fix and "CLIPLoader" not in f.fix
    assert f.figures["add"] == ["UNETLoader", "VAELoader"]  # the file is no checkpoint: its loader is UNETLoader


def test_a_checkpoint_lacking_only_its_vae_needs_only_a_vae_loader():
    """A prefixed checkpoint (UNet + VAE prefixes known to ComfyUI) without its VAE, with a CLIPLoader in the
    workflow: the fix adds a VAELoader and nothing else; the loader stays."""
    gap = qwen_gap(dict(QWEN_PROMPT, **{"10": {"class_type": "CLIPLoader", "inputs": {}},
                                        "6": {"class_type": "TextEncodeQwenImageEdit", "inputs": {"clip": ["10", 0]}}}))
    for c in gap["components"]:
        c["prefix"] = "model.diffusion_model."  # stored as a checkpoint: CheckpointLoaderSimple gives its MODEL
    f = result(scenario(other={"loader_gaps": [gap]}), "missing-clip-vae")
    assert f.figures["add"] == ["VAELoader"] and f.fix.startswith("add VAELoader (vae_name=qwen_image_vae.safetensors)")
    assert "VAEDecode #8" in f.fix and "UNETLoader" not in f.fix and "CLIPLoader" not in f.fix


def test_a_loader_whose_outputs_nobody_needs_has_no_gap():
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
              "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0]}}}
    assert qwen_gap(prompt) is None


def test_complete_checkpoint_has_no_missing_parts_finding():
    assert result(scenario(other={"warnings": []}), "missing-clip-vae") is None


# --- tiled VAE fallback ---


def test_tiled_vae_fallback_is_found_and_normal_decode_is_not():
    tiled = scenario(span("vae_decode", "VAE decode", 0, 8000, tiled_fallback=True))
    f = result(tiled, "vae-tiled")
    assert isinstance(f, Finding) and f.cost_s == pytest.approx(4.0)
    assert result(scenario(span("vae_decode", "VAE decode", 0, 800, tiled_fallback=False)), "vae-tiled") is None


# --- reloads and warm-up ---


def process_trace(index, reread, smart=True, load_ms=8000, wall_ms=10_000):
    return scenario(span("model_load.read", "m", 0, load_ms / 2, path="/m/a.safetensors"),
                    span("model_load.build", "checkpoint", load_ms / 2, load_ms / 2), wall_ms=wall_ms,
                    other={"process": {"prompt_index": index, "reread_files": reread,
                                       "comfyui": {"smart_memory": smart}}})


def test_models_reloaded_on_a_later_run_with_smart_memory_off():
    f = result(process_trace(3, ["/m/a.safetensors"], smart=False), "reloaded")
    assert isinstance(f, Finding) and "--disable-smart-memory" in f.cause and f.cost_s == pytest.approx(8.0)
    assert result(process_trace(3, []), "reloaded") is None


def test_first_run_warmup_is_a_note_and_later_runs_are_not():
    f = result(process_trace(1, []), "warmup")
    assert isinstance(f, Finding) and f.severity == "info"
    assert result(process_trace(2, []), "warmup") is None
    assert result(process_trace(1, [], load_ms=100), "warmup") is None


# --- queue wait ---


def test_queue_wait_dominating():
    assert isinstance(result(scenario(wall_ms=2000, queue_wait_s=30.0), "queue-wait"), Finding)
    assert result(scenario(wall_ms=2000, queue_wait_s=0.2), "queue-wait") is None


# --- RAM / swap pressure ---


def memory_trace(swap_after, available_after):
    before = {"available": 20 * GB, "total": 32 * GB, "swap_used": 0}
    after = {"available": available_after, "total": 32 * GB, "swap_used": swap_after}
    return scenario(span("model_load.build", "checkpoint", 0, 100, memory_before=before, memory_after=after))


def test_swap_growth_while_loading_is_found():
    f = result(memory_trace(4 * GB, 1 * GB), "memory-pressure")
    assert isinstance(f, Finding) and "swap grew by 4.3 GB" in f.evidence
    assert result(memory_trace(0, 10 * GB), "memory-pressure") is None


# --- GPU idle gaps ---


def test_gpu_idle_between_kernels_is_found_and_busy_gpu_is_not():
    idle = scenario(*[gpu_window("sample.step", 300, 1000) for _ in range(10)], other={"gpu": cupti()})
    f = result(idle, "gpu-idle")
    assert isinstance(f, Finding) and "30 %" in f.evidence and f.cost_s == pytest.approx(7.0)
    busy = scenario(*[gpu_window("sample.step", 950, 1000) for _ in range(10)], other={"gpu": cupti()})
    assert result(busy, "gpu-idle") is None
    assert isinstance(result(scenario(other={"gpu": {"collection": "unavailable", "reason": "x"}}), "gpu-idle"),
                      NotChecked)


# --- per-step rate ---


def rate_trace(s_per_step, device=RTX3090):
    anatomy = [{"path": "sdxl.safetensors", "family": "sdxl", "components": [{"kind": "diffusion_model"}]}]
    steps = [span("sample.step", "s", i * s_per_step * 1000, s_per_step * 1000) for i in range(20)]
    return scenario(*steps, span("vae_decode", "VAE decode", 0, 10, shape=[1, 4, 128, 128]),
                    other={"anatomy": anatomy, "gpu": cupti(devices=[device])})


def test_steps_far_slower_than_the_family_and_gpu_class_expect():
    f = result(rate_trace(5.0), "step-rate")  # SDXL 1024x1024 on a 3090: about 0.7 s a step expected
    assert isinstance(f, Finding) and "1024x1024" in f.evidence and "RTX 3090" in f.evidence
    assert result(rate_trace(0.8), "step-rate") is None
    unknown_gpu = rate_trace(5.0, device={"name": "Some Future GPU", "fp8_compute": True})
    assert isinstance(result(unknown_gpu, "step-rate"), NotChecked)


# --- The report as a whole ---


def test_every_rule_has_a_trigger_test_here():
    tested = {"slow-read", "partial-offload", "cpu-sampling", "fp8-no-compute", "missing-clip-vae", "vae-tiled",
              "reloaded", "warmup", "queue-wait", "memory-pressure", "gpu-idle", "step-rate", "node-failed",
              "interrupted", "unreadable-file", "regression"}
    assert {r.id for r in RULES} == tested


def test_a_stage_slower_than_the_workflows_earlier_runs():
    """The regression rule (tests/test_history.py has it over real traces and a real database)."""
    def run(sample_ms):
        return scenario(span("sample", "KSampler", 100, sample_ms), wall_ms=sample_ms + 500)

    history = [{"prompt_id": f"e{i}", "outcome": "ok", "wall_s": 1.5, "stages": {"sample": 1.0 + i / 100}}
               for i in range(5)]
    f = diagnose(run(2500), history=history).findings[0]
    assert f.rule == "regression" and f.title.startswith("Sampling took 2.5x the median of the last 5 runs")
    assert f.figures["median_s"] == 1.02 and abs(f.cost_s - 1.48) < 1e-9 and "--compare p e0" in f.fix
    assert not [f for f in diagnose(run(1100), history=history).findings if f.rule == "regression"]
    few = diagnose(run(2500), history=history[:2])
    assert [n.rule for n in few.not_checked if n.rule == "regression"] == ["regression"]


# --- broken runs: the failure, the interrupt, the unreadable file ---


def message(name, ts_ms, **args):
    return {"ph": "i", "s": "t", "cat": "prompt", "name": name, "ts": ts_ms * MS, "pid": 1, "tid": 1, "args": args}


def node(name, node_id, ts_ms, dur_ms, outcome="ok"):
    return span("node", name, ts_ms, dur_ms, node_id=node_id, outcome=outcome)


def failed_run():
    """Loader and sampler ran; VAEDecode #8 raised inside its vae_decode stage."""
    return scenario(node("CheckpointLoaderSimple", "4", 0, 2000), node("KSampler", "3", 2000, 6000),
                    span("sample", "euler", 2100, 5800, steps=20, outcome="ok"),
                    node("VAEDecode", "8", 8000, 900, outcome="error"),
                    span("vae_decode", "VAE decode", 8010, 880, outcome="error"),
                    message("execution_error", 8900, node_id="8", node_type="VAEDecode",
                            exception_type="torch.OutOfMemoryError",
                            exception_message="CUDA out of memory. Tried to allocate 4.00 GiB\nmore"),
                    wall_ms=8900, other={"process": {"prompt_index": 1}})


def test_a_failed_node_is_named_with_its_stage_and_what_ran_before():
    f = result(failed_run(), "node-failed")
    assert isinstance(f, Finding) and f.severity == "error" and f.title == "VAEDecode #8 failed: torch.OutOfMemoryError"
    assert f.figures == {"node_id": "8", "class_type": "VAEDecode", "exception_type": "torch.OutOfMemoryError",
                         "exception_message": "CUDA out of memory. Tried to allocate 4.00 GiB", "stage": "vae_decode",
                         "step": None, "of": None, "completed_nodes": 2}
    assert "in vae_decode" in f.evidence and "CheckpointLoaderSimple #4, KSampler #3" in f.evidence
    assert "--lowvram" in f.fix
    assert result(scenario(node("KSampler", "3", 0, 10)), "node-failed") is None


def test_a_failure_inside_a_step_names_the_step():
    trace = scenario(node("KSampler", "3", 0, 5000, outcome="error"),
                     span("sample", "euler", 10, 4900, steps=10, outcome="error"),
                     span("sample.step", "step 4/10", 3000, 1000, step=4, of=10, outcome="error"),
                     message("execution_error", 5000, node_id="3", node_type="KSampler", exception_type="ValueError",
                             exception_message="bad sigma"), wall_ms=5000)
    f = result(trace, "node-failed")
    assert f.figures["stage"] == "sample.step" and (f.figures["step"], f.figures["of"]) == (4, 10)
    assert "in denoising step 4 of 10" in f.evidence


def test_an_interrupt_names_the_node_and_the_step():
    trace = scenario(node("KSampler", "3", 0, 3000, outcome="interrupted"),
                     span("sample", "euler", 10, 2900, steps=6, outcome="interrupted"),
                     span("sample.step", "step 2/6", 0, 1000, step=2, of=6, outcome="ok"),
                     span("sample.step", "step 3/6", 1000, 1000, step=3, of=6, outcome="interrupted"),
                     message("execution_interrupted", 3000, node_id="3", node_type="KSampler"), wall_ms=3000)
    f = result(trace, "interrupted")
    assert f.title == "Interrupted in KSampler #3 at step 3 of 6"
    assert f.figures == {"node_id": "3", "class_type": "KSampler", "step": 3, "of": 6}
    assert result(scenario(node("KSampler", "3", 0, 10)), "interrupted") is None


def test_a_partial_download_says_how_much_of_it_is_there():
    entry = {"path": "/m/qwen.safetensors", "node_id": "4", "error": "/m/qwen.safetensors: byte offset 5000000: "
             "tensor data beyond the end of the file", "status": "truncated", "offset": 5_000_000,
             "file_bytes": 5_000_000, "expected_bytes": 20_430_000_000}
    f = result(scenario(other={"anatomy": [entry]}), "unreadable-file")
    assert f.title == "qwen.safetensors is incomplete: 5.0 MB of 20.4 GB (0.0 %)" and f.severity == "error"
    assert f.figures["file_bytes"] == 5_000_000 and f.figures["expected_bytes"] == 20_430_000_000
    assert "byte offset 5000000" in f.evidence and "download qwen.safetensors again" in f.fix
    assert result(scenario(other={"anatomy": [{"path": "/m/ok.safetensors", "family": "sd1", "components": []}]}),
                  "unreadable-file") is None


# --- the order: what broke the run first, then by the seconds lost, whatever the severity ---


def test_ranking_crosses_severity_labels_by_cost():
    """A queue wait (an 'info') of 5 s outranks CPU sampling (a 'warning') of 0.3 s; a first run's loading
    (info) that took most of the run outranks a small warning too."""
    trace = scenario(span("sample", "euler", 4600, 300, steps=2),
                     span("model_load.to_device", "load", 4500, 50, models=[{"model": "BaseModel", "device": "cpu",
                                                                              "loaded_bytes": 1, "total_bytes": 1}]),
                     wall_ms=400, queue_wait_s=5.0, other={"process": {"prompt_index": 2}})
    report = diagnose(trace)
    assert [f.rule for f in report.findings][:2] == ["queue-wait", "cpu-sampling"]
    assert report.findings[0].severity == "info" and report.findings[1].severity == "warning"
    assert report.findings[0].title == "The prompt waited 5.000 s in the queue, 12x its run"


def test_a_broken_prompt_puts_its_failure_before_any_cost():
    trace = failed_run()  # the sampler ran 5.8 s on the CPU before VAEDecode failed
    trace["traceEvents"].append(span("model_load.to_device", "load", 1000, 10, models=[
        {"model": "BaseModel", "device": "cpu", "loaded_bytes": 1, "total_bytes": 1}]))
    report = diagnose(trace)
    assert [f.rule for f in report.findings] == ["node-failed", "cpu-sampling"]
    assert report.findings[1].cost_s > 5


def test_the_structural_cause_comes_before_the_failure_it_causes():
    trace = scenario(node("CheckpointLoaderSimple", "4", 0, 100),
                     node("TextEncodeQwenImageEdit", "6", 100, 5, outcome="error"),
                     message("execution_error", 105, node_id="6", node_type="TextEncodeQwenImageEdit",
                             exception_type="RuntimeError", exception_message="ERROR: clip input is invalid: None"),
                     wall_ms=105, other={"loader_gaps": [qwen_gap(QWEN_PROMPT)]})
    report = diagnose(trace)
    assert [f.rule for f in report.findings][:2] == ["missing-clip-vae", "node-failed"]
    assert "the finding above" in report.findings[1].cause


def test_warmup_does_not_claim_the_seconds_a_slow_read_explains():
    trace = slow_read_trace(1183)
    trace["otherData"]["process"] = {"prompt_index": 1}
    report = diagnose(trace)
    assert report.findings[0].rule == "slow-read"
    warmup = next(f for f in report.findings if f.rule == "warmup")
    assert warmup.cost_s < report.findings[0].cost_s
    assert warmup.title.startswith("Model loading took ") and "% of this first run" in warmup.title


def test_comfyui_options_are_named_as_the_cause():
    reload = scenario(span("model_load.read", "a.safetensors", 0, 500), wall_ms=1000,
                      other={"process": {"prompt_index": 2, "reread_files": ["/m/a.safetensors"],
                                         "comfyui": {"cache_type": "DEPENDENCY_AWARE", "smart_memory": True,
                                                     "options": {"--cache-none": True}}}})
    f = result(reload, "reloaded")
    assert f.figures["option"] == "--cache-none" and "--cache-none" in f.cause and "without --cache-none" in f.fix
    cpu = scenario(span("sample", "euler", 0, 900, steps=2),
                   span("model_load.to_device", "load", 0, 5, models=[{"model": "M", "device": "cpu", "loaded_bytes": 1,
                                                                       "total_bytes": 1}]),
                   other={"gpu": {"collection": "unavailable", "reason": "GPU collection unavailable: no NVIDIA driver "
                                  "(libcuda not found); cuptiSubscribe failed: CUPTI_ERROR_UNKNOWN"},
                          "process": {"comfyui": {"options": {"--cpu": True}}}})
    f = result(cpu, "cpu-sampling")
    assert f.figures["option"] == "--cpu" and "without --cpu" in f.fix and "CUPTI_ERROR_UNKNOWN" not in f.evidence


def test_findings_come_most_costly_first_and_nothing_is_invented():
    trace = slow_read_trace(1183)
    trace["traceEvents"] += offload_trace(True)["traceEvents"][1:]
    trace["otherData"]["gpu"] = cupti()
    report = diagnose(trace)
    costs = [f.cost_s for f in report.findings if f.severity == "warning"]
    assert costs == sorted(costs, reverse=True) and report.findings[0].rule == "slow-read"
    empty = diagnose(scenario())
    assert empty.findings == [] and {n.rule for n in empty.not_checked} >= {"slow-read", "gpu-idle", "step-rate"}


def test_a_failing_rule_is_reported_as_not_checked(monkeypatch):
    import comfy_nodes.analysis.diagnose as d

    def broken(ev):
        raise KeyError("x")

    rules = (d.Rule("broken", "Broken", broken),)
    report = d.diagnose(scenario(), rules)
    (nc,) = report.not_checked
    assert "KeyError" in nc.why


def test_report_formats(tmp_path):
    trace = slow_read_trace(1183)
    report = diagnose(trace)
    text, md, page, as_json = (render(report, fmt, trace) for fmt in ("text", "md", "html", "json"))
    assert "Model files are read at 17 MB/s" in text and "### 1. Model files are read at 17 MB/s" in md
    assert json.loads(as_json)["findings"][0]["rule"] == "slow-read"
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and 'class="stage"' in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    path = tmp_path / "t.trace.json"
    path.write_text(json.dumps(trace))
    out = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", "--format", "md", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("# StageTrace report")


def test_malformed_loader_gaps_in_a_trace_file_are_named_not_fatal(tmp_path):
    """A trace edited by hand (or from a buggy writer): each bad gap is named by its field; the rest renders."""
    good = qwen_gap(QWEN_PROMPT)
    trace = {"traceEvents": [], "otherData": {"loader_gaps": [good, {"loader": "X"}, 7,
                                                              dict(good, missing=[{"what": "VAE"}])]}}
    path = tmp_path / "edited.trace.json"
    path.write_text(json.dumps(trace))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", str(path)], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "otherData.loader_gaps[1]: field 'node_id' missing or not a str" in out.stdout
    assert "otherData.loader_gaps[2]: not an object but int" in out.stdout
    assert "otherData.loader_gaps[3]: field 'missing[0].consumers' missing or not a list" in out.stdout
    assert "TextEncodeQwenImageEdit #6" in out.stdout  # the good one still renders, and gives the finding
    f = result(trace, "missing-clip-vae")
    assert isinstance(f, Finding) and "UNETLoader" in f.fix
