"""Files that are not regular files (a named pipe, a character device, a folder) given to the commands: one clear
error naming the file, at once; never a hang waiting on a pipe, never reading /dev/zero until memory runs out."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stagetrace(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "comfy_nodes", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # a hang fails the test through the timeout


@pytest.fixture
def fifo(tmp_path):
    def make(name):
        path = tmp_path / name
        os.mkfifo(path)
        return path
    return make


def test_report_refuses_a_named_pipe_and_a_character_device_and_goes_on_with_the_rest(native, fifo, tmp_path):
    good = os.path.join(ROOT, "tests", "fixtures", "scenarios", "vae-tiled.trace.json")
    proc = stagetrace("report", fifo("a.trace.json"), "/dev/zero", tmp_path, good)
    assert proc.returncode == 2
    errors = proc.stderr.splitlines()
    assert any("a.trace.json: cannot read: a named pipe, not a regular file" in e for e in errors)
    assert any("/dev/zero: cannot read: a character device, not a regular file" in e for e in errors)
    assert any(f"{tmp_path}: cannot read" in e for e in errors)  # a folder
    assert "VAE ran out of memory" in proc.stdout  # the good trace is still reported


def test_inspect_flags_special_files_and_a_models_folder_with_one(native, fifo, tmp_path):
    pipe = fifo("model.safetensors")
    proc = stagetrace("inspect", pipe, "--json")
    (report,) = json.loads(proc.stdout)
    assert proc.returncode == 2 and report["status"] == "unreadable" and "a named pipe" in report["error"]
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    os.mkfifo(models / "stuck.safetensors")
    proc = stagetrace("inspect", "--models-dir", tmp_path / "models", "--json")
    (report,) = json.loads(proc.stdout)
    assert report["status"] == "unreadable" and "named pipe" in report["error"]
    proc = stagetrace("inspect", "--models-dir", tmp_path / "no-such-folder")
    assert proc.returncode == 2 and "no-such-folder: no such folder" in proc.stderr


def test_bench_refuses_a_workflow_that_is_a_pipe_or_a_device(fifo):
    for path in (fifo("workflow.json"), "/dev/zero"):
        proc = stagetrace("bench", "http://127.0.0.1:9", path)
        assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr
