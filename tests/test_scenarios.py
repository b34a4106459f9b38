"""The diagnosis scenario suite: runs of the kinds users have, each with one true cause, judged by
StageTrace's diagnosis of the run's trace (``diagnose(load(path))``).

Each scenario states its true cause (a rule id), the figures the finding that names it must carry,
and the causes it excludes. For each, the first finding must name the true cause with those figures,
and no finding may claim an excluded cause. ``test_accuracy`` prints the figure over all scenarios
(``pytest -s`` shows it): the first findings that are right, out of all scenarios.

Two kinds of scenario:

* real ComfyUI runs (tests/comfy_scenarios.py, one fresh process each, StageTrace loaded as a custom
  node; they skip, saying why, without a ComfyUI: $COMFYUI_DIR, or ../shared/comfyui/ComfyUI-*.tar.gz
  unpacked as tests/run.py does it). They run on the CPU, several at once (STAGETRACE_SCENARIO_JOBS),
  each built so that its cause dominates whatever the machine's speed;
* recorded runs for what needs a GPU (tests/fixtures/scenarios/*.trace.json, written by
  make_traces.py beside them).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from comfy_nodes.analysis.diagnose import diagnose
from comfy_nodes.record.tracefile import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
RECORDED = os.path.join(TESTS, "fixtures", "scenarios")
# real runs at once: each is mostly one busy core; the scenarios hold whatever the machine's speed
JOBS = int(os.environ.get("STAGETRACE_SCENARIO_JOBS") or max(1, min(4, os.cpu_count() or 1)))
RUN_TIMEOUT_S = 600

if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import comfy_scenarios as cs  # noqa: E402  (tests/comfy_scenarios.py: the real runs' settings)
from comfy_server import find_comfyui  # noqa: E402

# --- What a scenario states ----------------------------------------------------------------------

GPU_RULES = frozenset({"partial-offload", "fp8-no-compute", "vae-tiled", "gpu-idle", "step-rate"})
BROKEN = frozenset({"node-failed", "interrupted", "unreadable-file", "missing-clip-vae"})


@dataclass
class Judged:
    """A scenario's run: the judged trace, what the scenario set up, the harness's report."""

    trace: dict
    path: str
    facts: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    cause: str  # the rule id of the true cause
    why: str  # what was set up, and why that is the cause
    figures: Callable[[Judged], dict]  # the figures the cause's finding must carry (values or matchers)
    excludes: frozenset[str]  # causes no finding may claim
    real: bool = True  # a real ComfyUI run; False: a recorded trace

    def __repr__(self) -> str:
        return self.name


class Between:
    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def __eq__(self, other) -> bool:
        return isinstance(other, (int, float)) and not isinstance(other, bool) and self.low <= other <= self.high

    def __repr__(self) -> str:
        return f"between {self.low:g} and {self.high:g}"


class SameItems:
    def __init__(self, items):
        self.items = sorted(items)

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, tuple)) and sorted(other) == self.items

    def __repr__(self) -> str:
        return f"the items {self.items} in any order"


class OneOf:
    def __init__(self, *values):
        self.values = values

    def __eq__(self, other) -> bool:
        return other in self.values

    def __repr__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))


def approx(value: float, rel: float = 0.05, abs: float = 0.0):  # noqa: A002 - pytest.approx's names
    return pytest.approx(value, rel=rel, abs=abs)


# --- Facts read from a trace, to state the figures a finding must carry ----------------------------


def _union_s(trace: dict, *cats: str) -> float:
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace["traceEvents"]
                   if e.get("ph") == "X" and e.get("cat") in cats)
    total, end = 0.0, float("-inf")
    for begin, finish in spans:
        if finish > end:
            total += finish - max(begin, end)
            end = finish
    return total / 1e6


def load_s(trace: dict) -> float:
    return _union_s(trace, "model_load.read", "model_load.build", "model_load.to_device")


def wall_s(trace: dict) -> float:
    (prompt,) = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "prompt"
                 and e.get("name") == "prompt"]
    return prompt["dur"] / 1e6


def read_span(trace: dict, path: str) -> dict:
    return next(e for e in trace["traceEvents"] if e.get("cat") == "model_load.read" and e["args"].get("path") == path)


def earlier_runs_s(j: Judged) -> float:
    return sum(r["seconds"] for r in j.result["runs"] if r["prompt_id"] != j.result["judged"])


# --- The scenarios ---------------------------------------------------------------------------------

MB_S = cs.SLOW_READ_MB_S
SCENARIOS = (
    # real ComfyUI runs
    Scenario(
        "wrong-loader", "missing-clip-vae",
        "a diffusion-model-only file in CheckpointLoaderSimple: no CLIP and no VAE for CLIPTextEncode and VAEDecode; "
        "ComfyUI's failure at CLIPTextEncode follows from it",
        lambda j: {"loader": "CheckpointLoaderSimple", "node_id": "4", "file": cs.DIFFUSION_ONLY,
                   "missing": SameItems(["text_encoder", "vae"]),
                   "add": SameItems(["UNETLoader", "CLIPLoader", "VAELoader"])},
        frozenset({"unreadable-file", "interrupted", "slow-read", "queue-wait", "reloaded", "cpu-sampling"})
        | GPU_RULES),
    Scenario(
        "missing-vae", "missing-clip-vae",
        "a checkpoint with its UNet and no VAE, a CLIPLoader already giving the text encoder: VAEDecode gets None "
        "after the sampler ran; a VAELoader is all the workflow lacks",
        lambda j: {"loader": "CheckpointLoaderSimple", "node_id": "4", "file": cs.NO_VAE, "missing": ["vae"],
                   "add": ["VAELoader"]},
        frozenset({"unreadable-file", "interrupted", "slow-read", "queue-wait", "reloaded"}) | GPU_RULES),
    Scenario(
        "slow-disk", "slow-read",
        f"the checkpoint (73 MB) comes off storage at {MB_S:g} MB/s (a slow share), then 1 step at 64x64",
        lambda j: {"mb_s": Between(0.75 * MB_S, 1.05 * MB_S), "bytes": j.facts["file_bytes"],
                   "seconds": Between(j.facts["file_bytes"] / (1.05 * MB_S * 1e6),
                                      j.facts["file_bytes"] / (0.75 * MB_S * 1e6)),
                   "fs_type": read_span(j.trace, j.facts["path"])["args"]["fs_type"]},
        frozenset({"unreadable-file", "node-failed", "interrupted", "missing-clip-vae", "queue-wait", "reloaded"})
        | GPU_RULES),
    Scenario(
        "busy-queue", "queue-wait",
        f"{cs.QUEUED_PROMPTS} prompts queued at once, each held {cs.QUEUE_HOLD_S:g} s before the worker takes it; "
        "the last one waits for all of that and runs 1 step with its models loaded",
        lambda j: {"wait_s": Between(cs.QUEUED_PROMPTS * cs.QUEUE_HOLD_S,
                                     cs.QUEUED_PROMPTS * cs.QUEUE_HOLD_S + earlier_runs_s(j) + 3.0),
                   "run_s": approx(wall_s(j.trace), rel=0.02, abs=0.002)},
        frozenset({"slow-read", "reloaded", "warmup"}) | BROKEN | GPU_RULES),
    Scenario(
        "first-run", "warmup",
        "the first prompt of the process loads the 246 MB CLIP-L and the checkpoint, then samples 1 step at 64x64",
        lambda j: {"load_s": approx(load_s(j.trace), rel=0.05, abs=0.005), "wall_s": approx(wall_s(j.trace), rel=0.01),
                   "share": approx(load_s(j.trace) / wall_s(j.trace), abs=0.03)},
        frozenset({"slow-read", "reloaded", "queue-wait"}) | BROKEN | GPU_RULES),
    Scenario(
        "reload", "reloaded",
        "ComfyUI with --cache-none runs the same prompt twice: the second reads the CLIP-L and the checkpoint again "
        "to sample 1 step",
        lambda j: {"files": SameItems(j.facts["files"]), "load_s": approx(load_s(j.trace), rel=0.05, abs=0.005),
                   "option": "--cache-none"},
        frozenset({"slow-read", "warmup", "queue-wait"}) | BROKEN | GPU_RULES),
    Scenario(
        "node-fails", "node-failed",
        f"HarnessFail raises after a {cs.FAIL_STEPS}-step sampler on the CPU",
        lambda j: {"node_id": "10", "class_type": "HarnessFail", "exception_type": "RuntimeError",
                   "exception_message": "harness: deliberate failure", "stage": None, "completed_nodes": 5},
        frozenset({"interrupted", "missing-clip-vae", "unreadable-file", "slow-read", "queue-wait", "reloaded"})
        | GPU_RULES),
    Scenario(
        "interrupt", "interrupted",
        f"the interrupt comes while step {cs.INTERRUPT_STEP} of {cs.INTERRUPT_OF} runs; the sampler stops at its end",
        lambda j: {"node_id": "3", "class_type": "KSampler", "step": cs.INTERRUPT_STEP, "of": cs.INTERRUPT_OF},
        frozenset({"node-failed", "missing-clip-vae", "unreadable-file", "slow-read", "queue-wait", "reloaded"})
        | GPU_RULES),
    Scenario(
        "partial-download", "unreadable-file",
        f"the checkpoint holds {cs.PARTIAL_FRACTION:.0%} of its bytes (an aborted download); the loader fails on it",
        lambda j: {"path": j.facts["path"], "offset": j.facts["file_bytes"], "file_bytes": j.facts["file_bytes"],
                   "expected_bytes": j.facts["expected_bytes"], "node_id": "4"},
        frozenset({"missing-clip-vae", "slow-read", "interrupted", "queue-wait", "reloaded", "cpu-sampling"})
        | GPU_RULES),
    Scenario(
        "cpu-only", "cpu-sampling",
        f"a plain run with ComfyUI's --cpu: {cs.CPU_STEPS} steps at {cs.CPU_SIZE}x{cs.CPU_SIZE}, a 36 MB checkpoint",
        lambda j: {"sample_s": approx(_union_s(j.trace, "sample"), rel=0.05), "option": "--cpu"},
        frozenset({"slow-read", "reloaded", "queue-wait", "warmup"}) | BROKEN | GPU_RULES),
    # recorded runs (GPU)
    Scenario(
        "partial-offload", "partial-offload",
        "Flux.1-dev bf16 (23.8 GB) on a 12 GB RTX 3060: 9.1 GB on the GPU, 14.7 GB copied to it in each of 20 steps",
        lambda j: {"loaded_bytes": 9_103_507_456, "total_bytes": 23_802_932_552,
                   "htod_bytes_per_step": approx(23_802_932_552 - 9_103_507_456, rel=0.01), "steps": 20,
                   "option": None},
        frozenset({"fp8-no-compute", "gpu-idle", "cpu-sampling", "warmup", "reloaded", "slow-read", "vae-tiled",
                   "memory-pressure", "queue-wait"}) | BROKEN,
        real=False),
    Scenario(
        "fp8-no-compute", "fp8-no-compute",
        "flux1-dev-fp8 on an RTX 3090 (sm_86): every layer's FP8 weights cast to bf16 on each of 30 steps (7.5 s), "
        "more than the first run's 4 s of loading",
        lambda j: {"dtype": OneOf("fp8_e4m3fn", "torch.float8_e4m3fn"), "gpu": "NVIDIA GeForce RTX 3090",
                   "compute_capability": "8.6"},
        frozenset({"partial-offload", "cpu-sampling", "gpu-idle", "warmup", "reloaded", "queue-wait", "slow-read",
                   "memory-pressure", "vae-tiled"}) | BROKEN,
        real=False),
    Scenario(
        "vae-tiled", "vae-tiled",
        "SDXL, 4 images at 1024x1024 on an 8 GB RTX 3070: the VAE decode runs out of memory and is redone in tiles "
        "(21.5 s); the steps run at the rate 4 images take",
        lambda j: {"calls": 1, "seconds": approx(21.5, rel=0.01)},
        frozenset({"partial-offload", "step-rate", "gpu-idle", "fp8-no-compute", "cpu-sampling", "warmup",
                   "reloaded", "slow-read", "memory-pressure", "queue-wait"}) | BROKEN,
        real=False),
    Scenario(
        "gpu-idle", "gpu-idle",
        "SD1.5 at 512x512 on an RTX 4090: 32 ms of GPU work in each 95 ms step, the GPU waiting for the CPU",
        lambda j: {"busy_fraction": approx(0.032 / 0.095, abs=0.02), "busy_s": approx(30 * 0.032, rel=0.02),
                   "total_s": approx(30 * 0.095, rel=0.02)},
        frozenset({"partial-offload", "fp8-no-compute", "cpu-sampling", "warmup", "reloaded", "slow-read",
                   "vae-tiled", "memory-pressure", "queue-wait"}) | BROKEN,
        real=False),
    Scenario(
        "step-rate", "step-rate",
        "SDXL at 1024x1024 on a hot, power-limited RTX 3090: 2.3 s a step with the GPU busy, fully loaded, fp16",
        lambda j: {"s_per_step": approx(2.3, rel=0.02), "expected_s_per_step": Between(0.4, 1.0), "family": "sdxl",
                   "gpu": "NVIDIA GeForce RTX 3090"},
        frozenset({"partial-offload", "fp8-no-compute", "cpu-sampling", "gpu-idle", "warmup", "reloaded",
                   "slow-read", "vae-tiled", "memory-pressure", "queue-wait"}) | BROKEN,
        real=False),
    Scenario(
        "memory-pressure", "memory-pressure",
        "a 17 GB checkpoint on a machine with 16 GB of RAM: swap grows 7.5 GB, the build re-reads evicted pages "
        "from a fast NVMe for 148 s",
        lambda j: {"swap_growth_bytes": approx(7.51e9, rel=0.001), "available_bytes": 350_000_000},
        frozenset({"slow-read", "partial-offload", "fp8-no-compute", "cpu-sampling", "gpu-idle", "reloaded",
                   "vae-tiled", "queue-wait"}) | BROKEN,
        real=False),
)
BY_NAME = {s.name: s for s in SCENARIOS}
assert set(cs.SCENARIOS) == {s.name for s in SCENARIOS if s.real}


# --- Running them ----------------------------------------------------------------------------------


# $COMFYUI_DIR, else the shared ComfyUI archive (../shared/comfyui/ComfyUI-*.tar.gz), unpacked once into
# build/comfyui/ the way tests/run.py does it (tests/comfy_server.py's lookup, asked once)
comfyui_dir = functools.cache(find_comfyui)


def skip_reason() -> str | None:
    if not comfyui_dir():
        return ("no ComfyUI: set COMFYUI_DIR to a ComfyUI checkout, or put ComfyUI-*.tar.gz in ../shared/comfyui/, "
                "to run the real scenarios")
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed: tests/run.py installs ComfyUI's requirements"
    try:
        from comfy_nodes import _native  # noqa: F401
    except ImportError as exc:
        return f"C extension not built: run python setup.py build_ext --inplace ({exc})"
    return None


def run_real(name: str, folder: str, models: str, custom_nodes: str) -> Judged:
    """tests/comfy_scenarios.py --scenario name in a fresh process; the trace of its judged prompt."""
    workdir = os.path.join(folder, name)
    os.makedirs(workdir)
    cmd = [sys.executable, os.path.join(TESTS, "comfy_scenarios.py"), "--comfyui", comfyui_dir(), "--workdir", workdir,
           "--scenario", name, "--models", models, "--custom-node-dir", custom_nodes]
    started = time.perf_counter()
    # one torch thread each: several run at once, and spinning OpenMP threads would slow them past any ratio
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    log = proc.stdout + proc.stderr
    with open(os.path.join(workdir, "log.txt"), "w") as f:
        f.write(log)
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{log[-5000:]}"
    line = [x for x in proc.stdout.splitlines() if x.startswith("HARNESS_RESULT ")][-1]
    result = json.loads(line[len("HARNESS_RESULT "):])
    result["wall_s"] = time.perf_counter() - started
    (run,) = [r for r in result["runs"] if r["prompt_id"] == result["judged"]]
    assert run["trace"], f"{name}: StageTrace wrote no trace for {result['judged']}\n{log[-3000:]}"
    return Judged(load(run["trace"]), run["trace"], result["facts"], result)


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory):
    """Every real scenario, started at once on a pool of JOBS processes: name -> future Judged."""
    reason = skip_reason()
    if reason:
        yield reason
        return
    folder = str(tmp_path_factory.mktemp("scenarios"))
    models = os.path.join(folder, "models")
    prepared = subprocess.run([sys.executable, os.path.join(TESTS, "comfy_scenarios.py"), "--prepare-models", models],
                              cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    custom_nodes = os.path.join(folder, "custom_nodes")
    os.makedirs(custom_nodes)
    os.symlink(ROOT, os.path.join(custom_nodes, "StageTrace"))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=JOBS)
    futures = {s.name: pool.submit(run_real, s.name, folder, models, custom_nodes) for s in SCENARIOS if s.real}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def judged_run(scenario: Scenario, real_runs) -> Judged:
    if not scenario.real:
        path = os.path.join(RECORDED, f"{scenario.name}.trace.json")
        return Judged(load(path), path)
    if isinstance(real_runs, str):
        pytest.skip(real_runs)
    return real_runs[scenario.name].result(timeout=RUN_TIMEOUT_S)


# --- Judging --------------------------------------------------------------------------------------


def verdict(scenario: Scenario, judged: Judged) -> tuple[list[str], object]:
    """What is wrong with the diagnosis of the scenario (empty when it is right), and the report."""
    report = diagnose(judged.trace)
    findings = report.findings
    problems = []
    if not findings:
        problems.append(f"no finding; expected {scenario.cause}")
    elif findings[0].rule != scenario.cause:
        named = next((i for i, f in enumerate(findings) if f.rule == scenario.cause), None)
        problems.append(f"first finding is {findings[0].rule} ({findings[0].title!r}, cost {findings[0].cost_s}); "
                        f"expected {scenario.cause}"
                        + (f" (ranked #{named + 1})" if named is not None else " (not found)"))
    cause = next((f for f in findings if f.rule == scenario.cause), None)
    if cause is not None:
        figures = getattr(cause, "figures", None) or {}
        for key, expected in scenario.figures(judged).items():
            actual = figures.get(key, "<missing>")
            if not (expected == actual):
                problems.append(f"{scenario.cause} figure {key}: {actual!r}, expected {expected!r}")
    claimed = [f.rule for f in findings if f.rule in scenario.excludes]
    if claimed:
        problems.append(f"findings claim excluded causes: {', '.join(claimed)}")
    return problems, report


def describe(report) -> str:
    return "\n".join(f"  {i + 1}. {f.rule} [{f.severity}] cost {f.cost_s}: {f.title} {getattr(f, 'figures', {})}"
                     for i, f in enumerate(report.findings)) or "  (no findings)"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_first_finding_is_the_true_cause(scenario, real_runs):
    judged = judged_run(scenario, real_runs)
    problems, report = verdict(scenario, judged)
    assert not problems, (f"{scenario.name} ({scenario.why}; trace {judged.path}):\n" + "\n".join(problems)
                          + "\nfindings:\n" + describe(report))


def test_accuracy(real_runs):
    """Correct first findings out of all scenarios: the first finding names the true cause with its figures and
    no finding claims an excluded cause. Printed whatever it is; the suite needs every scenario right."""
    right, misses, skipped = [], [], []
    for scenario in SCENARIOS:
        if scenario.real and isinstance(real_runs, str):
            skipped.append(scenario.name)
            continue
        try:
            judged = judged_run(scenario, real_runs)
        except Exception as exc:  # noqa: BLE001 - a run that failed is a miss, named
            misses.append(f"{scenario.name}: the run failed ({type(exc).__name__}: {str(exc)[:300]})")
            continue
        problems, report = verdict(scenario, judged)
        if problems:
            first = report.findings[0].rule if report.findings else "none"
            misses.append(f"{scenario.name}: expected {scenario.cause}, first finding {first}: " + "; ".join(problems))
        else:
            right.append(scenario.name)
    total = len(right) + len(misses)
    print(f"\nStageTrace diagnosis accuracy: {len(right)}/{total} correct first findings "
          f"({100.0 * len(right) / total if total else 0:.0f} %)"
          + (f"; {len(skipped)} real scenarios skipped ({skip_reason()})" if skipped else ""))
    for miss in misses:
        print("  miss: " + miss)
    assert not misses, f"{len(misses)} of {total} scenarios diagnosed wrong:\n" + "\n".join(misses)


def test_recorded_traces_are_what_make_traces_writes():
    """The recorded runs are generated, not edited by hand: make_traces.py writes them byte for byte."""
    spec = importlib.util.spec_from_file_location("make_traces", os.path.join(RECORDED, "make_traces.py"))
    make_traces = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_traces)
    assert set(make_traces.RUNS) == {s.name for s in SCENARIOS if not s.real}
    for name in make_traces.RUNS:
        with open(os.path.join(RECORDED, f"{name}.trace.json")) as f:
            assert f.read() == make_traces.trace_text(name), (
                f"{name}.trace.json differs from make_traces.py's output: run python {RECORDED}/make_traces.py")
