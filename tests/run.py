"""The test command (``make test``): from a fresh clone with Python and a C compiler, installs what the
tests need into this Python, builds the C extension, finds a ComfyUI for the integration tests, and
runs the tests and the linter.

    python3 tests/run.py [pytest arguments]

1. tests/requirements.txt (pip, skipped when every requirement is already installed);
2. the C extension, in place (``setup.py build_ext --inplace``);
3. a ComfyUI: $COMFYUI_DIR, else the newest ``ComfyUI-*.tar.gz`` in ``../shared/comfyui/`` beside the
   repository, unpacked once into ``build/comfyui/``; without one the ComfyUI tests skip and say why;
4. with a ComfyUI, its requirements: tests/comfyui-requirements.txt, and torch + torchvision (pinned)
   when they are missing;
5. ``python -m pytest tests -q [arguments]`` (without ``tests`` when the arguments name test files), then
   ``ruff check .``.

Exits with pytest's status (5, no tests collected, is a failure too), or 1 when only the linter failed.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(ROOT, "tests", "requirements.txt")
COMFYUI_REQUIREMENTS = os.path.join(ROOT, "tests", "comfyui-requirements.txt")
COMFYUI_ARCHIVES = os.path.join(os.path.dirname(ROOT), "shared", "comfyui", "ComfyUI-*.tar.gz")
COMFYUI_CACHE = os.path.join(ROOT, "build", "comfyui")
# torch 2.14.1 + torchvision 0.29.1 import together (ComfyUI needs torchvision); pinned so pip never
# pulls another multi-GB build.
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
PIP = (sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check")


def step(text: str) -> None:
    print(f"== {text}", flush=True)


def unmet(requirements_file: str) -> list[str]:
    """The requirements of the file this Python does not satisfy; every line when that cannot be told
    (no ``packaging`` yet, before the first install)."""
    lines = []
    with open(requirements_file) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                lines.append(line)
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        return lines
    missing = []
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            missing.append(line)
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def install(requirements_file: str) -> None:
    missing = unmet(requirements_file)
    if missing:
        step(f"pip install -r {os.path.relpath(requirements_file, ROOT)} ({len(missing)} to install or update)")
        subprocess.run([*PIP, "-r", requirements_file], check=True)


def build() -> None:
    step("build the C extension (setup.py build_ext --inplace)")
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, capture_output=True,
                          text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("stagetrace:"):  # which NVIDIA headers it found
            print("   " + line)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise SystemExit(f"the C extension did not build (exit {proc.returncode})")


def is_comfyui(folder: str) -> bool:
    return all(os.path.exists(os.path.join(folder, name)) for name in ("main.py", "execution.py", "comfy"))


def _version_key(path: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", os.path.basename(path)))


def find_comfyui() -> str | None:
    """$COMFYUI_DIR, or the shared ComfyUI archive unpacked once into build/comfyui/."""
    if os.environ.get("COMFYUI_DIR"):
        return os.environ["COMFYUI_DIR"]
    archives = sorted(glob.glob(COMFYUI_ARCHIVES), key=_version_key)
    if not archives:
        return None
    archive = archives[-1]
    target = os.path.join(COMFYUI_CACHE, os.path.basename(archive)[: -len(".tar.gz")])
    if not is_comfyui(os.path.join(target, "ComfyUI")):
        step(f"unpack {os.path.relpath(archive, ROOT)} into {os.path.relpath(target, ROOT)}")
        os.makedirs(COMFYUI_CACHE, exist_ok=True)
        scratch = tempfile.mkdtemp(dir=COMFYUI_CACHE, prefix=".unpack-")
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(scratch, filter="data")
            else:  # Python without extraction filters (3.10 before 3.10.12)
                tar.extractall(scratch)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)
    return os.path.join(target, "ComfyUI")


def install_comfyui_requirements() -> None:
    """tests/comfyui-requirements.txt, with the pinned torch pair in the same pip run when torch is missing
    (ComfyUI's requirements pull torch in; unpinned, pip could pick another build)."""
    missing = unmet(COMFYUI_REQUIREMENTS)
    torch = [] if all(importlib.util.find_spec(m) for m in ("torch", "torchvision")) else list(TORCH)
    if missing or torch:
        step(f"pip install -r {os.path.relpath(COMFYUI_REQUIREMENTS, ROOT)} ({len(missing)} to install or update)"
             + (f" and {' '.join(torch)} (a large download the first time)" if torch else ""))
        subprocess.run([*PIP, "-r", COMFYUI_REQUIREMENTS, *torch], check=True)


def main(pytest_args: list[str]) -> int:
    started = time.perf_counter()
    install(REQUIREMENTS)
    build()
    env = dict(os.environ)
    comfyui = find_comfyui()
    if comfyui:
        step(f"ComfyUI for the integration tests: {comfyui}")
        install_comfyui_requirements()
        env["COMFYUI_DIR"] = os.path.abspath(comfyui)
    else:
        step("no ComfyUI (set COMFYUI_DIR, or put ComfyUI-*.tar.gz in ../shared/comfyui/): those tests skip")
    # the whole suite, unless the arguments name test files or folders themselves
    named = any(os.path.exists(os.path.join(ROOT, arg.split("::")[0])) for arg in pytest_args
                if not arg.startswith("-"))
    step("pytest")
    tests = subprocess.run([sys.executable, "-m", "pytest", *([] if named else ["tests"]), "-q", *pytest_args],
                           cwd=ROOT, env=env)
    step("ruff check")
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT)
    print(f"== done in {time.perf_counter() - started:.0f} s: pytest exit {tests.returncode}"
          f"{' (no tests ran)' if tests.returncode == 5 else ''}, ruff exit {lint.returncode}")
    return tests.returncode or (1 if lint.returncode else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
