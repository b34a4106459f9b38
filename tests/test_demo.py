"""``python -m comfy_nodes demo``: inside a ComfyUI (found by walking up from where StageTrace sits) it
runs the real tiny workflow there; outside one it says so in one line and shows the user's case in
miniature. Every command it prints works from the folder it was run in."""

import os
import shlex
import subprocess
import sys
import time

import pytest

from comfy_nodes.demo import run as demo
from comfy_nodes.record.tracefile import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
needs_comfyui = pytest.mark.skipif(
    not COMFYUI_DIR, reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout to run these tests")


def run_demo(cwd, *args, env=None, shell_cd=False, timeout=600):
    """The demo as a user runs it: from ``cwd`` (through ``cd`` in a shell when shell_cd, so that $PWD is
    the path the user took), without COMFYUI_DIR unless env names it."""
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_DIR"} | (env or {})
    cmd = [sys.executable, "-m", "comfy_nodes", "demo", *map(str, args)]
    if shell_cd:
        line = " ".join(shlex.quote(c) for c in cmd)
        return subprocess.run(["bash", "-c", f"cd {shlex.quote(str(cwd))} && {line}"],
                              capture_output=True, text=True, env=env, timeout=timeout)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env | {"PWD": str(cwd)},
                          timeout=timeout)


def printed_commands(stdout):
    return [line[len("  $ "):] for line in stdout.splitlines() if line.startswith("  $ ")]


def run_printed(command, cwd, env=None):
    """A command the demo printed, typed into a shell in the folder the demo ran in."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env)


def fake_comfyui(tmp_path, comfyui_dir=None):
    """A ComfyUI folder (the real one's files linked in, or just the three markers) with an empty
    custom_nodes/ of its own."""
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    if comfyui_dir:
        for name in os.listdir(comfyui_dir):
            if name != "custom_nodes":
                os.symlink(os.path.join(comfyui_dir, name), comfy / name)
    else:
        (comfy / "comfy").mkdir()
        (comfy / "main.py").write_text("")
        (comfy / "execution.py").write_text("")
    return comfy


# --- outside a ComfyUI -----------------------------------------------------------------------------


@pytest.fixture
def outside_comfyui():
    if demo.find_comfyui():
        pytest.skip(f"this clone sits inside the ComfyUI at {demo.find_comfyui()}")


@pytest.mark.parametrize("where", ["clone root", "elsewhere"])
def test_outside_comfyui_shows_the_case_in_miniature(native, outside_comfyui, tmp_path, where):
    cwd = ROOT if where == "clone root" else tmp_path
    env = {} if where == "clone root" else {"PYTHONPATH": ROOT}
    started = time.perf_counter()
    proc = run_demo(cwd, "--workdir", tmp_path / "work", env=env)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # says so in one line, first
    assert out.splitlines()[0].startswith("stagetrace demo: no ComfyUI found") and "COMFYUI_DIR" in out.splitlines()[0]
    assert not out.splitlines()[1].strip()
    # the anatomy of the miniature file, with the loaders to use instead
    assert "Qwen-Image (qwen_image): not complete for text-to-image" in out
    assert "UNETLoader (Load Diffusion Model, models/diffusion_models): unet_name=qwen_image_mini" in out
    assert "type=qwen_image" in out and "VAELoader" in out
    # the report of the recorded prompt, with its findings
    assert "StageTrace · prompt miniature · error" in out
    assert "[error] CheckpointLoaderSimple #4 cannot give the text encoder (CLIP) or the VAE" in out
    assert "fix: replace CheckpointLoaderSimple #4 with UNETLoader" in out
    assert elapsed < 60  # real work on a small file: no sleeping, no busy loops
    (trace_path,) = (tmp_path / "work" / "traces").glob("*.trace.json")
    trace = load(str(trace_path))
    nodes = {e["name"]: e["args"]["outcome"] for e in trace["traceEvents"] if e.get("cat") == "node"}
    assert nodes == {"CheckpointLoaderSimple": "ok", "CLIPTextEncode": "error"}
    (model,) = (tmp_path / "work" / "models" / "checkpoints").glob("*.safetensors")
    (read,) = [e for e in trace["traceEvents"] if e.get("cat") == "model_load.read"]
    assert read["args"]["file_bytes"] == model.stat().st_size
    (anatomy,) = trace["otherData"]["anatomy"]
    assert anatomy["family"] == "qwen_image" and anatomy["node_id"] == "4"
    assert trace_path.with_name(trace_path.name.replace(".trace.json", ".report.html")).is_file()
    # every printed command works where it was printed
    report_cmd, inspect_cmd = printed_commands(out)
    if where == "elsewhere":
        assert report_cmd.startswith(f"cd {ROOT} && ")
    report = run_printed(report_cmd, cwd)
    assert report.returncode == 0, report.stderr
    assert "[error] CheckpointLoaderSimple #4 cannot give the text encoder (CLIP) or the VAE" in report.stdout
    inspect = run_printed(inspect_cmd, cwd)
    assert inspect.returncode == 1 and "UNETLoader" in inspect.stdout  # 1: incomplete for text-to-image


def test_no_comfyui_at_a_given_path(native, tmp_path):
    proc = run_demo(ROOT, "--comfyui", tmp_path, "--workdir", tmp_path / "work")
    assert proc.returncode == 2 and "is not a ComfyUI folder" in proc.stderr


# --- finding the ComfyUI and saying how to run again ----------------------------------------------


def test_finds_the_comfyui_it_sits_in_through_a_link(tmp_path, monkeypatch):
    """custom_nodes/StageTrace -> the clone: the walk follows the path the shell took ($PWD)."""
    comfy = fake_comfyui(tmp_path)
    link = comfy / "custom_nodes" / "StageTrace"
    os.symlink(ROOT, link)
    monkeypatch.chdir(link)
    monkeypatch.setenv("PWD", str(link))
    assert demo.find_comfyui() == str(comfy)
    monkeypatch.setenv("PWD", "/")  # a $PWD that is not the current folder is not trusted
    assert demo.find_comfyui() != str(comfy)


def test_printed_command_runs_from_the_current_folder(tmp_path, monkeypatch):
    python = os.path.basename(sys.executable)
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, "comfy_nodes", "__main__.py"), "demo"])
    monkeypatch.chdir(ROOT)
    assert demo.command().endswith(f"{python} -m comfy_nodes") and not demo.command().startswith("cd ")
    monkeypatch.chdir(tmp_path)
    assert demo.command().startswith(f"cd {ROOT} && ") and demo.command().endswith(" -m comfy_nodes")
    # the installed script: by name when that name runs it, else by its path
    script = tmp_path / "bin" / "stagetrace"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert demo.command() == str(script)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert demo.command() == "stagetrace"


# --- inside a ComfyUI -------------------------------------------------------------------------------


@needs_comfyui
def test_demo_in_custom_nodes_finds_its_comfyui(native, tmp_path):
    """The README's layout: the clone in ComfyUI/custom_nodes/StageTrace, the demo run from there with
    no COMFYUI_DIR: it runs the real tiny workflow in that ComfyUI."""
    comfy = fake_comfyui(tmp_path, COMFYUI_DIR)
    here = comfy / "custom_nodes" / "StageTrace"
    os.symlink(ROOT, here)
    proc = run_demo(here, "--workdir", tmp_path / "work", shell_cd=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"running a tiny SD1.5-shaped workflow on the CPU in the ComfyUI at {comfy}" in proc.stdout
    assert "StageTrace: profiling every prompt" in proc.stdout  # loaded by ComfyUI as a custom node
    (trace_path,) = (tmp_path / "work" / "traces").glob("*.trace.json")
    trace = load(str(trace_path))
    nodes = {e["name"]: e["args"]["outcome"] for e in trace["traceEvents"] if e.get("cat") == "node"}
    assert nodes["KSampler"] == "ok" and nodes["SaveImage"] == "ok"
    assert trace["otherData"]["comfyui_version"]
    assert list((tmp_path / "work" / "output").rglob("*.png"))
    (report_cmd,) = printed_commands(proc.stdout)
    report = subprocess.run(["bash", "-c", f"cd {shlex.quote(str(here))} && {report_cmd}"], capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines()[0] in proc.stdout  # the same summary


# --- the demo honours the settings ------------------------------------------------------------------------


def test_the_demo_honours_stagetrace_disable(native, tmp_path):
    proc = run_demo(tmp_path, "--workdir", tmp_path / "work", env={"PYTHONPATH": ROOT, "STAGETRACE_DISABLE": "1"})
    assert proc.returncode == 2 and "StageTrace is disabled here (STAGETRACE_DISABLE is set)" in proc.stderr
    assert not (tmp_path / "work" / "traces").exists()  # nothing was profiled


def test_the_demo_writes_its_traces_where_stagetrace_output_dir_says(native, outside_comfyui, tmp_path):
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("the user's")
    proc = run_demo(tmp_path, "--workdir", tmp_path / "work", env={"PYTHONPATH": ROOT, "HOME": str(tmp_path),
                                                                   "STAGETRACE_OUTPUT_DIR": "~/mine",
                                                                   "STAGETRACE_NVML_HZ": "fast"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(elsewhere.glob("*.trace.json"))) == 1 and (elsewhere / "keep.txt").read_text() == "the user's"
    assert not (tmp_path / "work" / "traces").exists()
    assert "stagetrace demo: STAGETRACE_NVML_HZ='fast' is not a whole number" in proc.stderr  # said, and run on
