"""The record layer outside ComfyUI: the writer thread (bounded queue, never blocking the worker, the
report built from the recorded events), the retention bound, and the package's shape (no import
circles, a folder per step of the flow)."""

import ast
import json
import os
import subprocess
import sys
import threading
import time

from comfy_nodes.core import stages
from comfy_nodes.core.settings import Settings
from comfy_nodes.hooks.guard import HookGuard
from comfy_nodes.record.recorder import Recorder
from comfy_nodes.record.tracefile import load
from comfy_nodes.record.writer import prune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "comfy_nodes")


def settings(tmp_path, **changes):
    base = Settings(disabled=False, output_dir=str(tmp_path), nvtx=False, summary=False, buffer_events=4096,
                    gpu=False, nvml=False)
    return base.__class__(**{**base.__dict__, **changes})


def one_prompt(native, rec, prompt_id):
    rec.prompt_begin({"1": {"class_type": "Loader"}}, prompt_id, {})
    native.Wrapper(lambda: None, stages.PROMPT, "prompt", detail=prompt_id)()
    rec.prompt_end()


def test_a_full_writer_queue_drops_whole_prompts_and_never_blocks(native, tmp_path):
    release = threading.Event()
    entered = threading.Event()

    def slow_output_dir():  # called by the writer thread as it starts each prompt
        entered.set()
        release.wait(10)
        return str(tmp_path)

    native.drain()
    rec = Recorder(native, settings(tmp_path, writer_queue=1), slow_output_dir, HookGuard())
    metrics = None
    try:
        from comfy_nodes.surfaces.metrics import Metrics

        rec.writer.metrics = metrics = Metrics(version="test", dropped_prompts=lambda: rec.writer.dropped_prompts)
    except ImportError:  # prometheus_client missing: the rest of the test stands
        pass
    one_prompt(native, rec, "p-1")
    assert entered.wait(10)  # the writer thread holds p-1
    started = time.perf_counter()
    one_prompt(native, rec, "p-2")  # queued
    one_prompt(native, rec, "p-3")  # the queue is full: dropped and counted
    assert time.perf_counter() - started < 0.5  # the worker did not wait for the writer
    assert rec.writer.dropped_prompts == 1
    release.set()
    assert rec.flush(30)
    written = sorted(load(str(p))["otherData"]["prompt_id"] for p in tmp_path.glob("*.trace.json"))
    assert written == ["p-1", "p-2"]
    one_prompt(native, rec, "p-4")
    assert rec.flush(30)
    assert load(rec.last_trace)["otherData"]["dropped_prompts"] == 1  # the next trace says so
    if metrics is not None:  # the dropped prompt ran: the metrics still count it, by outcome
        text = metrics.exposition()[0].decode()
        assert 'stagetrace_prompts_total{outcome="success"} 4.0' in text
        assert 'stagetrace_prompt_execution_seconds_count{outcome="success"} 3.0' in text
        assert "stagetrace_dropped_prompts_total 1.0" in text


def test_the_report_is_built_from_the_recorded_events(native, tmp_path):
    """The report the writer thread writes equals the one `stagetrace report` rebuilds from the file."""
    from comfy_nodes.analysis.diagnose import diagnose
    from comfy_nodes.render.report import render

    native.drain()
    rec = Recorder(native, settings(tmp_path, report=True), lambda: str(tmp_path), HookGuard())
    one_prompt(native, rec, "p-1")
    assert rec.flush(30)
    path = rec.last_trace
    written = json.loads(open(path[: -len(".trace.json")] + ".report.json").read())
    report = diagnose(load(path))
    report.summary.trace_path = path
    assert written == json.loads(render(report, "json"))


def test_retention_keeps_the_newest_and_never_touches_other_files(tmp_path):
    now = time.time()
    names = []
    for i in range(6):
        stem = f"2026110{i}-120000_p-{i}"
        for suffix in (".trace.json", ".report.html", ".report.json"):
            (tmp_path / (stem + suffix)).write_bytes(b"x" * 100)
            os.utime(tmp_path / (stem + suffix), (now - (6 - i) * 3600, now - (6 - i) * 3600))
        names.append(stem)
    (tmp_path / "notes.trace.json").write_text("mine")  # not a name StageTrace makes
    (tmp_path / "model.safetensors").write_text("mine")
    assert prune(str(tmp_path), max_count=4, max_age_s=1e9, max_bytes=1e9, keep=None) == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "notes.trace.json" in left and "model.safetensors" in left
    assert [n for n in names if (tmp_path / (n + ".trace.json")).exists()] == names[2:]
    assert not (tmp_path / (names[1] + ".report.html")).exists()  # the reports go with their trace
    # by age: older than 2.5 h
    assert prune(str(tmp_path), max_count=100, max_age_s=2.5 * 3600, max_bytes=1e9) == 2
    # by size: 300 bytes a trace with its reports; the newest is always kept
    assert prune(str(tmp_path), max_count=100, max_age_s=1e9, max_bytes=250,
                 keep=str(tmp_path / (names[5] + ".trace.json"))) == 1
    assert [n for n in names if (tmp_path / (n + ".trace.json")).exists()] == names[5:]


def test_the_writer_applies_the_retention_bound(native, tmp_path):
    native.drain()
    rec = Recorder(native, settings(tmp_path, report=True, keep_traces=3), lambda: str(tmp_path), HookGuard())
    for i in range(5):
        one_prompt(native, rec, f"p-{i}")
        assert rec.flush(30)
    kept = sorted(load(str(p))["otherData"]["prompt_id"] for p in tmp_path.glob("*.trace.json"))
    assert kept == ["p-2", "p-3", "p-4"]
    assert len(list(tmp_path.glob("*.report.html"))) == 3


# --- The package's shape ----------------------------------------------------------------------------


def module_imports() -> dict[str, set[str]]:
    """Module-level imports between comfy_nodes modules (those inside functions run later, on demand)."""
    graph: dict[str, set[str]] = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)
            is_package = parts[-1] == "__init__"
            module = ".".join(["comfy_nodes", *parts[:-1]] if is_package else ["comfy_nodes", *parts])
            package = module if is_package else module.rpartition(".")[0]
            deps = graph.setdefault(module, set())
            for node in ast.parse(open(path).read()).body:
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                    for alias in node.names:
                        full = f"{target}.{alias.name}"
                        deps.add(full if os.path.exists(os.path.join(ROOT, *full.split(".")) + ".py") else target)
    return graph


def test_no_import_circles_between_modules_or_steps():
    graph = module_imports()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph.get(node, ()):
            if dep == node or dep not in graph:
                continue
            assert state.get(dep) != 1, "import circle: " + " -> ".join(stack + [node, dep])
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
    steps = {m: {d.split(".")[1] for d in deps if d.count(".") >= 1} - {m.split(".")[1]} for m, deps in graph.items()
             if m.count(".") >= 1}
    step_graph: dict[str, set[str]] = {}
    for module, deps in steps.items():
        step_graph.setdefault(module.split(".")[1], set()).update(deps)
    for step, deps in step_graph.items():  # no two steps of the flow import each other
        for dep in deps:
            assert step not in step_graph.get(dep, set()), f"{step} and {dep} import each other"


def test_a_folder_per_step_of_the_flow():
    folders = {d for d in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, d, "__init__.py"))}
    assert {"core", "hooks", "record", "gpu", "analysis", "render", "cli", "client", "demo"} <= folders
    loose = [f for f in os.listdir(PACKAGE) if f.endswith(".py")]
    assert sorted(loose) == ["__init__.py", "__main__.py"]


IMPORT_ONLY = r"""
import importlib.util, logging, sys, threading, types
sys.modules["execution"] = types.ModuleType("execution")
before = set(logging.getLogger().handlers), threading.active_count()
spec = importlib.util.spec_from_file_location("StageTrace", sys.argv[1] + "/__init__.py",
                                              submodule_search_locations=[sys.argv[1]])
module = importlib.util.module_from_spec(spec)
sys.modules["StageTrace"] = module
spec.loader.exec_module(module)
from StageTrace.comfy_nodes import _native
print(set(logging.getLogger().handlers) == before[0], threading.active_count() == before[1],
      _native.cupti_info()["active"], _native.nvml_info()["running"],
      "libcupti" in open("/proc/self/maps").read())
"""


def test_importing_the_custom_node_starts_nothing(native):
    """No log handler, no thread, no CUPTI, no NVML until the first prompt."""
    out = subprocess.run([sys.executable, "-c", IMPORT_ONLY, ROOT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False", "False", "False"], out.stdout + out.stderr


def test_settings_for_retention_and_the_queue_are_checked(monkeypatch):
    monkeypatch.setenv("STAGETRACE_KEEP_DAYS", "0")
    problems = []
    assert Settings.from_env(problems).keep_days == 30.0 and "STAGETRACE_KEEP_DAYS" in problems[0]
    monkeypatch.setenv("STAGETRACE_KEEP_DAYS", "0.5")
    monkeypatch.setenv("STAGETRACE_WRITER_QUEUE", "x")
    problems = []
    settings = Settings.from_env(problems)
    assert (settings.keep_days, settings.writer_queue) == (0.5, 64) and "STAGETRACE_WRITER_QUEUE" in problems[0]
