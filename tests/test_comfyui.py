"""StageTrace inside real ComfyUI on the CPU (COMFYUI_DIR): each scenario runs
in a fresh child process through tests/comfy_harness.py, with this repository
loaded by ComfyUI as a custom node, exactly as a user's clone would be."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from comfy_nodes.analysis.loaders import describe_gap
from comfy_nodes.record.tracefile import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR, reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout to run these tests"
)
WORKFLOW_NODES = {"3", "4", "5", "6", "7", "8", "9"}


def _custom_nodes(tmp_path, source=ROOT):
    folder = tmp_path / "custom_nodes"
    folder.mkdir(parents=True)
    os.symlink(source, folder / "StageTrace")
    return str(folder)


def run_harness(tmp_path, scenario, stagetrace=True, extra=(), source=ROOT, env=None):
    return run_script_file(tmp_path, "comfy_harness.py", stagetrace, env, args=("--scenario", scenario, *extra),
                           source=source)


def run_script_file(tmp_path, script, stagetrace=True, env=None, prefix=(), args=(), source=ROOT):
    """tests/<script> in a fresh process (optionally under a command prefix); its HARNESS_RESULT and log."""
    cmd = [*prefix, sys.executable, os.path.join(ROOT, "tests", script), "--comfyui", COMFYUI_DIR,
           "--workdir", str(tmp_path), *args]
    if stagetrace:
        cmd += ["--custom-node-dir", _custom_nodes(tmp_path, source)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, **(env or {})))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("HARNESS_RESULT ")][-1]
    return json.loads(line[len("HARNESS_RESULT "):]), log


def traces(tmp_path):
    folder = tmp_path / "output" / "stagetrace"
    return sorted(folder.glob("*.trace.json")) if folder.is_dir() else []


def node_events(trace):
    return [e for e in trace["traceEvents"] if e.get("cat") == "node" and e["ph"] == "X"]


def test_prompt_trace_and_summary(tmp_path):
    result, log = run_harness(tmp_path, "basic")
    assert result["runs"][0]["success"]
    (path,) = traces(tmp_path)
    trace = load(str(path))
    hooks = trace["otherData"]["hooks"]
    assert hooks[:4] == ["execution.execute", "PromptExecutor.execute_async", "PromptExecutor.add_message",
                         "comfy.utils.load_torch_file"] and hooks[-1] == "PromptQueue.put"
    assert trace["otherData"]["fallbacks"] == []  # every stage hook found its target
    (anatomy,) = trace["otherData"]["anatomy"]
    assert anatomy["node_id"] == "4" and anatomy["family"] == "sd1" and trace["otherData"]["loader_gaps"] == []
    assert [e["name"] for e in trace["traceEvents"] if e.get("cat") == "anatomy"] == [
        "anatomy: tiny_sd15.safetensors"]
    assert trace["otherData"]["comfyui_version"]
    nodes = node_events(trace)
    assert sorted(e["args"]["node_id"] for e in nodes) == sorted(WORKFLOW_NODES)  # every node, once
    assert all(e["args"]["outcome"] == "ok" for e in nodes)
    (prompt,) = [e for e in trace["traceEvents"] if e.get("cat") == "prompt" and e["ph"] == "X"]
    assert prompt["args"] == {"outcome": "ok", "prompt_id": "basic-1"}
    for e in nodes:
        assert prompt["ts"] <= e["ts"] and e["ts"] + e["dur"] <= prompt["ts"] + prompt["dur"]
        assert e["tid"] == prompt["tid"]
    sampler = next(e for e in nodes if e["name"] == "KSampler")
    assert sampler["dur"] > 1000  # a real 2-step sampler run takes well over a millisecond
    # the console line (one a prompt), and the report rebuilt from the file, agree on the wall time
    (line,) = [x for x in log.splitlines() if x.startswith("StageTrace · prompt basic-1 · ")]
    assert line.startswith("StageTrace · prompt basic-1 · ok in ") and str(path) in line and "most in " in line
    report = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", str(path)], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    wall = report.splitlines()[0].split(" · wall ")[1].split(" · ")[0]
    assert f" · ok in {wall} · " in line and "KSampler #3" in report


def test_second_run_marks_cached_nodes(tmp_path):
    result, _ = run_harness(tmp_path, "twice")
    assert [r["success"] for r in result["runs"]] == [True, True]
    first, second = (load(str(p)) for p in traces(tmp_path))
    assert all(e["args"]["outcome"] == "ok" for e in node_events(first))
    cached = node_events(second)
    assert sorted(e["args"]["node_id"] for e in cached) == sorted(WORKFLOW_NODES)
    assert {e["args"]["outcome"] for e in cached} == {"cached"}
    assert {e["name"] for e in cached} >= {"KSampler", "CheckpointLoaderSimple", "SaveImage"}


def test_failing_node_is_recorded(tmp_path):
    result, log = run_harness(tmp_path, "fail")
    assert not result["runs"][0]["success"]
    (path,) = traces(tmp_path)
    trace = load(str(path))
    by_id = {e["args"]["node_id"]: e for e in node_events(trace)}
    assert by_id["10"]["name"] == "HarnessFail" and by_id["10"]["args"]["outcome"] == "error"
    assert "8" not in by_id and "9" not in by_id  # never ran
    assert trace["otherData"]["outcome"] == "error"
    error = next(e for e in trace["traceEvents"] if e.get("name") == "execution_error")
    assert error["args"]["exception_type"].endswith("RuntimeError")
    assert "failed: HarnessFail #10: RuntimeError: harness: deliberate failure" in log


def test_interrupted_prompt_is_recorded(tmp_path):
    result, log = run_harness(tmp_path, "interrupt")
    assert "execution_interrupted" in result["runs"][0]["status_messages"]
    (path,) = traces(tmp_path)
    trace = load(str(path))
    by_id = {e["args"]["node_id"]: e for e in node_events(trace)}
    assert by_id["8"]["args"]["outcome"] == "interrupted"
    assert by_id["10"]["args"]["outcome"] == "ok"
    assert trace["otherData"]["outcome"] == "interrupted"
    assert "interrupted at: VAEDecode #8" in log


def test_images_identical_with_and_without_stagetrace(tmp_path):
    plain, _ = run_harness(tmp_path / "plain", "basic", stagetrace=False)
    traced, _ = run_harness(tmp_path / "traced", "basic")
    assert plain["runs"][0]["sha256"] and plain["runs"][0]["sha256"] == traced["runs"][0]["sha256"]
    assert not traces(tmp_path / "plain") and len(traces(tmp_path / "traced")) == 1


# Failures that surface in the next prompt's trace: the prompt's own trace is not written (prompt end,
# trace writer) or is written before the failure (report, retention run on the writer thread after it).
NEXT_TRACE = {"prompt end", "trace writer", "report", "retention"}
NO_TRACE = {"prompt end", "trace writer", "all"}


def test_every_hook_failing_leaves_the_prompt_untouched(tmp_path):
    """Fault injection at the real call sites (tests/comfy_faults.py): each hook of StageTrace's fails in
    turn, then all at once. Every run gives the image the run without StageTrace gives, byte for byte; the
    trace says which hook failed; each failure is logged once."""
    plain, _ = run_script_file(tmp_path / "plain", "comfy_faults.py", stagetrace=False)
    (baseline,) = plain["runs"]
    assert baseline["success"] and baseline["images"]
    expected = next(iter(baseline["sha256"].values()))
    faulty, log = run_script_file(tmp_path / "faults", "comfy_faults.py")
    runs = faulty["runs"]
    assert [r["label"] for r in runs][-1] == "all" and len(runs) > 20
    folder = tmp_path / "faults" / "output" / "stagetrace"
    by_prompt, paths = {r["prompt_id"]: None for r in runs}, {}
    for path in folder.glob("*.trace.json"):
        trace = load(str(path))
        by_prompt[trace["otherData"]["prompt_id"]], paths[trace["otherData"]["prompt_id"]] = trace, path
    # a failing prompt_begin never learnt its prompt's id: its trace says "unknown"
    begin = next(r for r in runs if r["label"] == "prompt begin")
    by_prompt[begin["prompt_id"]], paths[begin["prompt_id"]] = by_prompt.pop("unknown"), paths.pop("unknown")
    for i, run in enumerate(runs):
        label = run["label"]
        assert run["reached"] >= 1, label
        assert run["success"], (label, run["errors"])
        (sha,) = run["sha256"].values()
        assert sha == expected, f"injected fault in {label!r} changed the image"
        trace = by_prompt[run["prompt_id"]]
        assert (trace is None) == (label in NO_TRACE), label
        if label == "all":
            continue
        before = by_prompt[runs[i - 1]["prompt_id"]] if i else None
        said = (by_prompt[runs[i + 1]["prompt_id"]] if label in NEXT_TRACE else trace)["otherData"]["hook_failures"]
        assert label in said and "injected StageTrace fault" in said[label]["last"], label
        if before is not None:
            assert label not in before["otherData"]["hook_failures"], label  # it failed at prompt i, not before
        assert log.count(f"StageTrace: {label} failed (InjectedFault") == 1, label
    for run in runs:  # the report failed for that prompt alone: no half report beside its trace
        if run["label"] not in NO_TRACE:
            path = paths[run["prompt_id"]]
            assert path.with_name(path.name.replace(".trace.json", ".report.html")).exists() == (
                run["label"] != "report"), run["label"]


def test_a_non_utf8_mount_point_does_not_break_a_model_load(tmp_path):
    """/proc/self/mountinfo with a mount point that is not UTF-8 (a tmpfs mounted in a private mount
    namespace): the model loads, and the read span still names the filesystem."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root to mount a tmpfs in a private mount namespace")
    weird = os.path.join(os.fsencode(str(tmp_path)), b"mnt-\xff\xfe-latin1-\xe9")
    os.makedirs(weird)
    probe = subprocess.run([unshare, "-m", "sh", "-c", 'mount -t tmpfs none "$1"', "sh", weird], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a private namespace here: {probe.stderr.decode(errors='replace')}")
    script = ("mount -t tmpfs none \"$1\" && shift && exec \"$@\"")
    prefix = [unshare, "-m", "sh", "-c", script, "sh", weird]
    result, log = run_script_file(tmp_path, "comfy_harness.py", prefix=prefix)
    assert result["runs"][0]["success"] and result["runs"][0]["images"], log[-3000:]
    (path,) = traces(tmp_path)
    trace = load(str(path))
    (read,) = [e for e in trace["traceEvents"] if e.get("cat") == "model_load.read"]
    assert read["args"]["fs_type"] and read["args"]["mount"]
    assert trace["otherData"]["hook_failures"] == {}


def test_unbuilt_extension_keeps_comfyui_running(tmp_path):
    source = tmp_path / "unbuilt"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns("*.so", ".git", "build", "__pycache__"))
    result, log = run_harness(tmp_path / "run", "basic", source=str(source))
    assert result["runs"][0]["success"] and result["runs"][0]["images"]
    assert log.count("C extension not loaded") == 1
    assert f"cd {tmp_path / 'run' / 'custom_nodes' / 'StageTrace'} && python install.py" in log
    assert not traces(tmp_path / "run")


def test_disable_switch_installs_nothing(tmp_path):
    result, log = run_harness(tmp_path, "basic", env={"STAGETRACE_DISABLE": "1"})
    assert result["runs"][0]["success"]
    assert "StageTrace: disabled by STAGETRACE_DISABLE" in log and not traces(tmp_path)


FALLBACK_SCRIPT = textwrap.dedent("""
    import json, sys
    from comfy_nodes.demo.harness import Harness, tiny_txt2img
    h = Harness(sys.argv[1], sys.argv[2])
    h.boot()
    import execution
    original = execution.execute
    async def execute(*args, **kwargs):  # "ComfyUI moved": a signature StageTrace does not know
        return await original(*args, **kwargs)
    execution.execute = execute
    from comfy_nodes.hooks.install import setup
    inst = setup()
    run = h.run(tiny_txt2img(h.write_checkpoint()), "fallback-1")
    print("RESULT " + json.dumps({"success": run["success"], "trace": inst.recorder.last_trace}))
""")

SELF_CHECK_SCRIPT = textwrap.dedent("""
    import json, sys
    from comfy_nodes.demo.harness import Harness, tiny_txt2img
    h = Harness(sys.argv[1], sys.argv[2])
    h.boot()
    import execution
    from comfy_nodes.hooks.install import setup
    inst = setup()
    execution.execute = execution.execute.__wrapped__  # ComfyUI no longer calls what was hooked
    runs = [h.run(tiny_txt2img(h.write_checkpoint(), seed=seed), f"moved-{seed}") for seed in (1, 2)]
    print("RESULT " + json.dumps({"success": [r["success"] for r in runs]}))
""")


LAZY_START_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    from comfy_nodes.demo.harness import Harness, tiny_txt2img
    h = Harness(sys.argv[1], sys.argv[2])
    h.boot()
    from comfy_nodes import _native
    from comfy_nodes.hooks.install import setup
    from comfy_nodes.hooks.log_tap import LogTap
    inst = setup()
    def state():
        return {"gpu": inst.recorder.gpu is not None, "nvml": inst.recorder.nvml is not None,
                "cupti_loaded": bool(_native.cupti_info()["library"]),
                "tap": any(isinstance(x, LogTap) for x in logging.getLogger().handlers)}
    after_setup = state()
    run = h.run(tiny_txt2img(h.write_checkpoint()), "lazy-1")
    print("RESULT " + json.dumps({"after_setup": after_setup, "after_prompt": state(), "success": run["success"]}))
""")

ROLLBACK_SCRIPT = textwrap.dedent("""
    import json, sys
    from comfy_nodes.demo.harness import Harness, tiny_txt2img
    h = Harness(sys.argv[1], sys.argv[2])
    h.boot()
    import comfy.utils, execution
    from comfy_nodes.hooks import install
    originals = (execution.execute, execution.PromptExecutor.execute_async, execution.PromptExecutor.add_message,
                 comfy.utils.load_torch_file, execution.PromptQueue.put)
    def fail_half_way(self, modules, on_model_file=None):
        self.wrap(comfy.utils, "load_torch_file", ["ckpt"], "comfy.utils.load_torch_file",
                  lambda f, bind: lambda *a, **k: 0)
        raise RuntimeError("a hook could not be installed")
    install.StageHooks.install = fail_half_way
    inst = install.setup()
    now = (execution.execute, execution.PromptExecutor.execute_async, execution.PromptExecutor.add_message,
           comfy.utils.load_torch_file, execution.PromptQueue.put)
    run = h.run(tiny_txt2img(h.write_checkpoint()), "rollback-1")
    print("RESULT " + json.dumps({"installed": inst is not None, "restored": [a is b for a, b in zip(originals, now)],
                                  "marked": hasattr(execution, "_stagetrace_installation"),
                                  "success": run["success"]}))
""")


def test_collectors_start_with_the_first_prompt_not_on_import(tmp_path):
    """Importing and installing StageTrace starts no CUPTI, no NVML thread and no log tap; the first
    prompt does."""
    result, _ = run_script(LAZY_START_SCRIPT, tmp_path)
    assert result["success"]
    assert result["after_setup"] == {"gpu": False, "nvml": False, "cupti_loaded": False, "tap": False}
    after = result["after_prompt"]
    assert after["gpu"] and after["nvml"] and after["tap"]


def test_a_failed_installation_puts_every_hook_back(tmp_path):
    result, log = run_script(ROLLBACK_SCRIPT, tmp_path)
    assert result == {"installed": False, "restored": [True] * 5, "marked": False, "success": True}
    assert log.count("could not install its hooks (RuntimeError: a hook could not be installed)") == 1
    assert not traces(tmp_path)


def run_script(script, tmp_path):
    """Run a harness script in a fresh process; its RESULT line and its log."""
    proc = subprocess.run([sys.executable, "-c", script, COMFYUI_DIR, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:]), log


def test_self_check_notices_zero_node_spans_and_falls_back(tmp_path):
    result, log = run_script(SELF_CHECK_SCRIPT, tmp_path)
    assert result["success"] == [True, True]
    assert log.count("ran with zero node spans") == 1
    first, second = (load(str(p)) for p in traces(tmp_path))
    assert first["otherData"]["prompt_id"] == "moved-1"
    assert node_events(first) == []
    assert sorted(e["args"]["node_id"] for e in node_events(second)) == sorted(WORKFLOW_NODES)
    assert second["otherData"]["fallbacks"] == ["node timing through the progress handler"]


def test_progress_handler_fallback_when_execute_moved(tmp_path):
    result, log = run_script(FALLBACK_SCRIPT, tmp_path)
    assert result["success"]
    said = ("execution.execute: nodes are timed through ComfyUI's progress handler (execution.reset_progress_state)"
            ": each node's start and finish, without its outcome detail or pending time (has no parameter named "
            "'dynprompt', 'current_item' (its parameters: *args, **kwargs))")
    assert log.count(said) == 1  # one line per fallback
    trace = load(result["trace"])
    assert trace["otherData"]["fallbacks"] == [said]
    assert "execution.execute" not in trace["otherData"]["hooks"]
    assert sorted(e["args"]["node_id"] for e in node_events(trace)) == sorted(WORKFLOW_NODES)


def test_demo_command_runs_real_comfyui(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "demo", "--comfyui", COMFYUI_DIR,
                           "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (path,) = (tmp_path / "traces").glob("*.trace.json")
    assert "StageTrace: profiling every prompt" in proc.stdout
    assert "StageTrace · prompt demo-1 · ok" in proc.stdout and f"trace: {path}" in proc.stdout
    assert sorted(e["args"]["node_id"] for e in node_events(load(str(path)))) == sorted(WORKFLOW_NODES)


def test_queue_wait_is_measured(tmp_path):
    result, log = run_harness(tmp_path, "queued", env={"STAGETRACE_SUMMARY": "full"})  # the whole summary
    assert result["runs"][0]["success"]
    (path,) = traces(tmp_path)
    trace = load(str(path))
    (wait,) = [e for e in trace["traceEvents"] if e.get("name") == "queue_wait"]
    (prompt,) = [e for e in trace["traceEvents"] if e.get("cat") == "prompt" and e["ph"] == "X"
                 and e["name"] == "prompt"]
    assert 0.3 <= trace["otherData"]["queue_wait_s"] < 5
    assert wait["dur"] >= 300_000 and wait["ts"] + wait["dur"] == pytest.approx(prompt["ts"], abs=50_000)
    shown = re.search(r"queue wait ([0-9.]+) (ms|s)\b", log)  # the summary line, in the one duration format
    assert shown and float(shown.group(1)) * (1e-3 if shown.group(2) == "ms" else 1) >= 0.3


def test_missing_clip_is_reported_before_the_failure(tmp_path):
    result, log = run_harness(tmp_path, "needs-clip")
    run = result["runs"][0]
    assert not run["success"]
    assert "clip input is invalid: None" in run["errors"][0]["exception_message"]
    (path,) = traces(tmp_path)
    trace = load(str(path))
    (gap,) = trace["otherData"]["loader_gaps"]  # recorded as data; the warning is rendered from it
    assert (gap["loader"], gap["node_id"], gap["file"]) == ("CheckpointLoaderSimple", "4", "tiny_sd15.safetensors")
    assert [(m["kind"], m["consumers"][0]["class_type"]) for m in gap["missing"]] == [
        ("text_encoder", "CLIPTextEncode")]
    warning = describe_gap(gap)
    assert "CheckpointLoaderSimple #4 loads tiny_sd15.safetensors" in warning
    assert "no text encoder (CLIP), which CLIPTextEncode #6 needs" in warning
    assert "CLIPLoader" in warning
    # logged once, and before ComfyUI's own error
    assert log.count("StageTrace: CheckpointLoaderSimple #4 loads") == 1
    assert log.index("StageTrace: CheckpointLoaderSimple #4 loads") < log.index("!!! Exception during processing")
    (event,) = [e for e in trace["traceEvents"] if e.get("cat") == "anatomy"]
    error = next(e for e in trace["traceEvents"] if e.get("name") == "execution_error")
    assert event["ts"] < error["ts"]
    assert f"warning: {warning}" in log  # the console summary repeats it


def test_diffusion_model_only_file_in_checkpoint_loader(tmp_path):
    """The user's case in miniature: a diffusion-model-only file through
    CheckpointLoaderSimple, with CLIPTextEncode and VAEDecode downstream."""
    result, log = run_harness(tmp_path, "diffusion-only")
    run = result["runs"][0]
    assert not run["success"] and "clip input is invalid" in run["errors"][0]["exception_message"]
    assert "This is not a checkpoint file, trying to load it as a diffusion model only" in log
    (path,) = traces(tmp_path)
    trace = load(str(path))
    (anatomy,) = trace["otherData"]["anatomy"]
    assert anatomy["family"] == "sd1" and anatomy["complete"] is False
    (gap,) = trace["otherData"]["loader_gaps"]
    assert {m["kind"] for m in gap["missing"]} == {"text_encoder", "vae"}
    assert sum(c["tensors"] for c in gap["components"]) == anatomy["tensors"] > 0  # what the file holds, counted
    warning = describe_gap(gap)
    assert "no text encoder (CLIP), which CLIPTextEncode #6 needs" in warning
    assert "no VAE, which VAEDecode #8 needs" in warning
    assert "UNETLoader" in warning and "VAELoader" in warning
    assert log.index("StageTrace: CheckpointLoaderSimple #4 loads") < log.index("!!! Exception during processing")


def test_trace_says_why_gpu_collection_is_unavailable(tmp_path):
    """No GPU here: the real libcupti loads and cannot collect; the trace and summary say why."""
    result, log = run_harness(tmp_path, "basic")
    assert result["runs"][0]["success"]
    (path,) = traces(tmp_path)
    gpu = load(str(path))["otherData"]["gpu"]
    assert gpu["collection"] == "unavailable"
    assert gpu["reason"].startswith("GPU collection unavailable: ")
    import ctypes.util

    if ctypes.util.find_library("cuda") is None:
        assert "no NVIDIA driver" in gpu["reason"]
    assert "GPU collection unavailable" in log
    report = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", str(path)], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    assert gpu["reason"] in report


def test_gpu_collection_through_the_cupti_double_in_real_comfyui(tmp_path):
    """STAGETRACE_CUPTI_LIB points at the CUPTI test double (tests/cupti/fake_cupti.c): collection
    starts inside ComfyUI, each prompt is a round, and a CPU run reports no GPU work."""
    from test_gpu import build_fake

    fake = build_fake(tmp_path)
    result, log = run_harness(tmp_path, "basic", env={"STAGETRACE_CUPTI_LIB": fake, "STAGETRACE_SUMMARY": "full"})
    assert result["runs"][0]["success"]
    (path,) = traces(tmp_path)
    trace = load(str(path))
    gpu = trace["otherData"]["gpu"]
    assert gpu["collection"] == "cupti" and gpu["library"] == fake
    assert gpu["records"] == 0 and gpu["dropped_records"] == 0
    assert gpu["cupti_errors"] == 0 and gpu["cupti_last_error"] is None  # every CUPTI call of the double succeeded
    assert not [e for e in trace["traceEvents"] if e.get("cat") == "gpu"]
    assert "GPU busy 0.0 ms" in log and "0 kernels" in log


def stage_events(trace, stage):
    return [e for e in trace["traceEvents"] if e.get("cat") == stage and e["ph"] == "X"]


def successful_run(tmp_path, scenario):
    """Run a scenario that must succeed: (its trace, the node spans by class)."""
    result, _ = run_harness(tmp_path, scenario)
    assert result["runs"][0]["success"]
    (path,) = traces(tmp_path)
    trace = load(str(path))
    return result, trace, {e["name"]: e for e in node_events(trace)}


def inside(inner, outer):
    return outer["ts"] <= inner["ts"] and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + 1e-3


def test_stage_spans_inside_the_nodes(tmp_path):
    """Read, build, to-device, the sampler with one span per step, VAE decode and save, each inside its
    node and carrying what it measured; ComfyUI's telling log lines as events."""
    result, trace, nodes = successful_run(tmp_path, "basic")
    (read,) = stage_events(trace, "model_load.read")
    checkpoint = tmp_path / "models" / "checkpoints" / "tiny_sd15.safetensors"
    assert read["name"] == "tiny_sd15.safetensors" and read["args"]["file_bytes"] == checkpoint.stat().st_size
    assert read["args"]["fs_type"] and read["args"]["path"].endswith("tiny_sd15.safetensors")
    assert "storage_read_bytes" in read["args"]
    (build,) = stage_events(trace, "model_load.build")
    assert build["name"] == "checkpoint"
    for span in (read, build):
        assert inside(span, nodes["CheckpointLoaderSimple"])
    loads = stage_events(trace, "model_load.to_device")
    unet = next(e for e in loads if e["name"] == "load BaseModel")
    (model,) = [m for m in unet["args"]["models"] if m["model"] == "BaseModel"]
    assert model["loaded_bytes"] == model["total_bytes"] > 0 and model["partial"] is False
    assert model["dtype"] == "torch.float32" and model["manual_cast"] is None  # the CPU computes in fp32
    (sample,) = stage_events(trace, "sample")
    steps = stage_events(trace, "sample.step")
    assert sample["args"]["steps"] == 2 and [s["args"]["step"] for s in steps] == [1, 2]
    assert all(s["args"]["of"] == 2 for s in steps)
    assert steps[0]["args"]["sigma"] > steps[1]["args"]["sigma"] > 0
    assert all(inside(s, sample) for s in steps) and inside(sample, nodes["KSampler"])
    assert sum(s["dur"] for s in steps) <= sample["dur"] and steps[0]["dur"] > 0
    (decode,) = stage_events(trace, "vae_decode")
    assert decode["args"]["tiled_fallback"] is False and decode["args"]["shape"][1] == 4
    assert inside(decode, nodes["VAEDecode"])
    (save,) = stage_events(trace, "save")
    (image,) = result["runs"][0]["images"]
    assert save["args"]["bytes_written"] == os.path.getsize(image) and inside(save, nodes["SaveImage"])
    logs = {e["name"] for e in trace["traceEvents"] if e.get("cat") == "comfyui_log"}
    assert {"no_clip", "loaded_completely"} <= logs  # the tiny checkpoint has no text encoder


# --- The diagnosis report, from real runs ---


def report_of(tmp_path):
    (path,) = traces(tmp_path)
    stem = str(path)[: -len(".trace.json")]
    with open(stem + ".report.json") as f:
        return json.load(f), stem


def test_report_names_the_missing_clip_vae_and_the_loaders_to_use(tmp_path):
    result, log = run_harness(tmp_path, "diffusion-only")
    assert not result["runs"][0]["success"]
    report, _ = report_of(tmp_path)
    finding = report["findings"][0]  # the true cause first, before the failure it causes
    assert finding["rule"] == "missing-clip-vae" and finding["severity"] == "error"
    assert report["findings"][1]["rule"] == "node-failed"
    for loader in ("UNETLoader", "CLIPLoader", "VAELoader"):
        assert loader in finding["fix"]
    assert "CheckpointLoaderSimple #4 cannot give the text encoder (CLIP) or the VAE" in log


def test_report_says_sampling_ran_on_the_cpu(tmp_path):
    result, _ = run_harness(tmp_path, "basic")
    assert result["runs"][0]["success"]
    report, _ = report_of(tmp_path)
    (finding,) = [f for f in report["findings"] if f["rule"] == "cpu-sampling"]
    assert "loaded to the CPU" in finding["evidence"] and finding["cost_s"] > 0


def test_report_finds_a_slow_read(tmp_path):
    """slow-read: the checkpoint is dropped from the page cache and read at 20 MB/s (the harness's
    throttled reader, in front of ComfyUI's load_torch_file)."""
    result, _ = run_harness(tmp_path, "slow-read")
    assert result["runs"][0]["success"]
    report, _ = report_of(tmp_path)
    (finding,) = [f for f in report["findings"] if f["rule"] == "slow-read"]
    rate = int(finding["evidence"].split(" MB/s")[0].rsplit(" ", 1)[-1])
    assert 10 <= rate <= 22 and "tiny_sd15.safetensors" in finding["evidence"]
    assert report["findings"].index(finding) <= 1  # the costliest after nothing, or after an error


def test_html_report_opens_in_headless_chromium_with_its_timeline(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    run_harness(tmp_path, "basic")
    _, stem = report_of(tmp_path)
    page = stem + ".report.html"
    html = open(page).read()
    for stage in ("model_load.read", "sample.step", "vae_decode", "save"):
        assert f'data-stage="{stage}"' in html
    shot = tmp_path / "report.png"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"file://{page}"],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="stage"') == html.count('class="stage"') > 5  # the browser parsed every span
    snap = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1200,900", f"file://{page}"], capture_output=True, text=True, timeout=120)
    assert snap.returncode == 0 and shot.stat().st_size > 10_000, snap.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "ERR_" not in dom.stderr


def test_text_encoding_with_a_real_clip_l(tmp_path):
    """CLIPLoader + CLIPTextEncode with a full-size CLIP-L of zero weights: the clip file's read and
    build, its move to the device, and the text_encode span inside CLIPTextEncode."""
    _, trace, nodes = successful_run(tmp_path, "with-clip")
    (encode,) = stage_events(trace, "text_encode")
    assert encode["name"] == "SD1ClipModel" and encode["args"]["tokens"] == 77 and encode["dur"] > 0
    assert inside(encode, nodes["CLIPTextEncode"])
    reads = {e["name"]: e for e in stage_events(trace, "model_load.read")}
    assert reads["clip_l_zeros.safetensors"]["args"]["file_bytes"] == 246_144_192
    builds = {e["name"]: e for e in stage_events(trace, "model_load.build")}
    assert inside(builds["text encoder"], nodes["CLIPLoader"])
    clip_loads = [e for e in stage_events(trace, "model_load.to_device") if e["name"] == "load SD1ClipModel"]
    assert clip_loads and all(m["loaded_bytes"] == m["total_bytes"] for e in clip_loads
                              for m in e["args"]["models"] if m["model"] == "SD1ClipModel")
