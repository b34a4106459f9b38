"""The built wheel in a fresh virtual environment: ``pip install`` of the wheel alone, then the installed
``stagetrace`` command run from a folder that is not the clone, with and without a ComfyUI. The venv
sees this Python's packages (torch, ComfyUI's requirements) through a .pth file, as
``--system-site-packages`` would, so nothing large is installed again."""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from comfy_nodes.record.tracefile import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the sources (no build folder, extension or egg-info of the clone's
    own gets in, and nothing is written into the clone)."""
    source = tmp_path_factory.mktemp("source") / "stagetrace"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "__pycache__", "*.so", "tests", "benchmarks"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           "--disable-pip-version-check", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (path,) = out.glob("stagetrace-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed without its dependencies (aiohttp, tqdm, prometheus_client: this
    machine has no index to fetch them from in a test) and this Python's site-packages, which has them, visible
    after its own."""
    home = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=300)
    python = home / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parents = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (home / site / "_stagetrace_test_parent.pth").write_text("\n".join(parents) + "\n")
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", "--disable-pip-version-check",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return home


def user_env(**extra):
    """A user's environment: no COMFYUI_DIR, nothing of the clone on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    return env | extra


def printed_commands(stdout):
    return [line[len("  $ "):] for line in stdout.splitlines() if line.startswith("  $ ")]


def test_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = os.path.join(ROOT, "comfy_nodes")
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                inside = os.path.relpath(os.path.join(folder, name), package).replace(os.sep, "/")
                assert f"stagetrace/{inside}" in names, inside
    assert any(n.startswith("stagetrace/_native") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "stagetrace = stagetrace.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_demo_outside_comfyui(venv, tmp_path):
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    proc = subprocess.run([str(venv / "bin" / "stagetrace"), "demo", "--workdir", str(tmp_path / "work")], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=user_env(PWD=str(cwd)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("stagetrace demo: no ComfyUI found")
    assert "[error] CheckpointLoaderSimple #4 cannot give the text encoder (CLIP) or the VAE" in proc.stdout
    commands = printed_commands(proc.stdout)
    assert commands and all(c.startswith(shlex.quote(str(venv / "bin" / "stagetrace")) + " ") for c in commands)
    for command in commands:
        again = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300,
                               env=user_env())
        assert again.returncode in (0, 1), again.stderr  # inspect: 1 = incomplete for text-to-image
        assert "No module named" not in again.stderr


@pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout to run this test")
def test_installed_demo_runs_comfyui(venv, tmp_path):
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    work = tmp_path / "work"
    env = user_env(PWD=str(cwd), PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["stagetrace", "demo", "--comfyui", COMFYUI_DIR, "--workdir", str(work)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "StageTrace: profiling every prompt" in proc.stdout  # ComfyUI loaded the installed package
    node = work / "custom_nodes" / "StageTrace"
    assert not node.is_symlink() and "from stagetrace.hooks import setup" in (node / "__init__.py").read_text()
    (trace_path,) = (work / "traces").glob("*.trace.json")
    trace = load(str(trace_path))
    assert {e["name"] for e in trace["traceEvents"] if e.get("cat") == "node"} >= {"KSampler", "SaveImage"}
    (command,) = printed_commands(proc.stdout)
    assert command.startswith("stagetrace report ")  # the command on PATH, by its name
    again = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] in proc.stdout
