"""The run history (comfy_nodes/history/): workflow identity, the SQLite store on real files, the
regression rule over real traces (the recorded scenario traces, and real ComfyUI runs of the tiny
workflow with one run slowed inside its sampler), ``stagetrace history`` and the history routes on a real
aiohttp server on loopback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from loopback import LoopbackApp

from comfy_nodes.analysis.diagnose import Finding, diagnose
from comfy_nodes.demo.harness import tiny_txt2img
from comfy_nodes.history.identity import workflow_id
from comfy_nodes.history.store import History, HistoryError, RunNotFound, run_from_report
from comfy_nodes.record.tracefile import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = os.path.join(ROOT, "tests", "fixtures", "scenarios")
CKPT = "tiny_sd15.safetensors"


def scenario_trace(name: str) -> dict:
    return load(os.path.join(SCENARIOS, f"{name}.trace.json"))


# --- Workflow identity ----------------------------------------------------------------------------


def with_texts(prompt: dict, positive: str, negative: str) -> dict:
    """The tiny workflow with real CLIPTextEncode nodes (their texts), as users' workflows have them."""
    prompt = json.loads(json.dumps(prompt))
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}}
    prompt["7"] = {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]},
                   "_meta": {"title": "Negative"}}
    return prompt


def test_the_same_workflow_with_other_seeds_and_texts_is_one_workflow():
    runs = [with_texts(tiny_txt2img(CKPT, seed=seed), positive, "blurry")
            for seed, positive in ((1, "a cat"), (2, "a dog on a beach"), (987654321, ""))]
    runs.append(with_texts(tiny_txt2img(CKPT, seed=5), "a cat", "watermark, text"))
    flux = {"1": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip_l": "a", "t5xxl": "b", "guidance": 3.5,
                                                                 "clip": ["2", 0]}},
            "3": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["4", 0]}},
            "4": {"class_type": "RandomNoise", "inputs": {"noise_seed": 11}}}
    flux_other = json.loads(json.dumps(flux))
    flux_other["1"]["inputs"].update(clip_l="another", t5xxl="text")
    flux_other["4"]["inputs"]["noise_seed"] = 12
    ids = {workflow_id(p) for p in runs}
    assert len(ids) == 1
    (wid,) = ids
    assert len(wid) == 16 and int(wid, 16) >= 0
    assert workflow_id(flux) == workflow_id(flux_other) != wid


def test_a_changed_workflow_is_another_workflow():
    base = with_texts(tiny_txt2img(CKPT, seed=1), "a cat", "blurry")
    changed = []
    more_steps = with_texts(tiny_txt2img(CKPT, seed=1, steps=3), "a cat", "blurry")
    changed.append(more_steps)
    other_model = with_texts(tiny_txt2img("other.safetensors", seed=1), "a cat", "blurry")
    changed.append(other_model)
    bigger = json.loads(json.dumps(base))
    bigger["5"]["inputs"]["width"] = 128
    changed.append(bigger)
    no_save = json.loads(json.dumps(base))
    del no_save["9"]
    changed.append(no_save)
    relinked = json.loads(json.dumps(base))
    relinked["3"]["inputs"]["positive"] = ["7", 0]
    changed.append(relinked)
    ids = [workflow_id(p) for p in [base, *changed]]
    assert len(set(ids)) == len(ids)
    # a text-encoder node's model file is part of the workflow; its text is not
    encoder = {"1": {"class_type": "DualCLIPTextEncodeX", "inputs": {"clip_name": "t5.safetensors", "text": "x"}}}
    other_file = {"1": {"class_type": "DualCLIPTextEncodeX", "inputs": {"clip_name": "t5xl.gguf", "text": "x"}}}
    other_text = {"1": {"class_type": "DualCLIPTextEncodeX", "inputs": {"clip_name": "t5.safetensors", "text": "y"}}}
    assert workflow_id(encoder) == workflow_id(other_text) != workflow_id(other_file)


def test_identity_never_raises_on_odd_prompts():
    class Odd:
        def __str__(self):
            return "odd"

    nested: list = []
    for _ in range(200):
        nested = [nested]
    odd = [None, 5, "x", [], {}, {"1": 5}, {"1": {"inputs": {"seed": 3}}}, {"1": {"class_type": None}},
           {1: {"class_type": "A", "inputs": {2: [1, 0], "v": float("nan"), "o": Odd(), "s": {3, 1}}}},
           {"1": {"class_type": "A", "inputs": "not a dict"}}, {"1": {"class_type": "A", "inputs": {"n": nested}}},
           {"1": {"class_type": "A", "inputs": {"seed": True, "x_seed": "7"}}}]
    ids = [workflow_id(p) for p in odd]
    assert all(isinstance(i, str) and len(i) == 16 for i in ids)
    assert workflow_id({"1": 5}) != workflow_id({"1": 6})  # odd parts hash as they are


# --- The store ---------------------------------------------------------------------------------------


def recorded(history: History, names: list[str], workflow: str = "wf", start: float | None = None) -> list[dict]:
    """Record each scenario trace's report as one run of ``workflow``, one second apart, oldest first."""
    start = time.time() - 3600 if start is None else start
    runs = []
    for i, name in enumerate(names):
        trace = scenario_trace(name)
        report = diagnose(trace, history=history.recent(workflow, 10))
        run = run_from_report(report, {**trace["otherData"], "workflow_id": workflow, "ended": start + i},
                              f"/out/{name}.trace.json")
        history.record(run)
        runs.append(run)
    return runs


def test_record_recent_runs_get_compare_round_trip(tmp_path):
    path = tmp_path / "sub" / "history.sqlite3"
    with History(path) as history:
        runs = recorded(history, ["gpu-idle", "vae-tiled", "step-rate", "partial-offload"])
        recorded(history, ["fp8-no-compute"], workflow="other", start=time.time() - 60)
        got = history.get("vae-tiled-3")
        assert got == {**runs[1], "stages": pytest.approx(runs[1]["stages"])}
        assert got["trace"] == "vae-tiled.trace.json" and got["workflow_id"] == "wf"
        assert got["findings"][0] == {"rule": "vae-tiled", "severity": "warning",
                                      "title": "VAE ran out of memory and fell back to tiles: 21.5 s"}
        assert {"node_id": "3", "class_type": "KSampler", "outcome": "ok"}.items() <= got["nodes"][0].items()
        assert history.get("nope") is None
        assert [r["prompt_id"] for r in history.recent("wf")] == [
            "partial-offload-2", "step-rate-1", "vae-tiled-3", "gpu-idle-2"]
        assert [r["prompt_id"] for r in history.recent("wf", 2, before_prompt="partial-offload-2")] == [
            "step-rate-1", "vae-tiled-3"]
        # a recorded prompt's history is what came before it, not after
        assert [r["prompt_id"] for r in history.recent("wf", 10, before_prompt="vae-tiled-3")] == ["gpu-idle-2"]
        assert [r["prompt_id"] for r in history.runs(2)] == ["fp8-no-compute-1", "partial-offload-2"]
        assert [r["prompt_id"] for r in history.runs(50, "other")] == ["fp8-no-compute-1"]
        assert [(w["workflow_id"], w["runs"]) for w in history.workflows()] == [("other", 1), ("wf", 4)]
        c = history.compare("vae-tiled-3", "gpu-idle-2")
        assert c["same_workflow"] and c["a"]["prompt_id"] == "vae-tiled-3"
        assert c["wall"]["difference"] == pytest.approx(runs[1]["wall_s"] - runs[0]["wall_s"])
        sample = next(s for s in c["stages"] if s["stage"] == "sample")
        assert sample["ratio"] == pytest.approx(runs[1]["stages"]["sample"] / runs[0]["stages"]["sample"])
        assert [f["rule"] for f in c["findings_only_in_a"]] == ["vae-tiled"]
        assert [f["rule"] for f in c["findings_only_in_b"]] == ["gpu-idle"]
        with pytest.raises(RunNotFound, match="nope"):
            history.compare("vae-tiled-3", "nope")
        history.record({**runs[0], "outcome": "error"})  # the same prompt again: replaced, not doubled
        assert history.count() == 5 and history.get("gpu-idle-2")["outcome"] == "error"
    assert oct(os.stat(path).st_mode & 0o777) in ("0o644", "0o600", "0o640", "0o664")
    with sqlite3.connect(path) as db:  # the versioned schema and its index
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plan = " ".join(str(r) for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM runs WHERE workflow_id = ? ORDER BY ended DESC LIMIT 10", ("wf",)))
        assert "runs_by_workflow" in plan
    with History(path, readonly=True) as again:  # reopened: the same rows
        assert again.count() == 5
        with pytest.raises(HistoryError, match="read-only"):
            again.record(runs[0])


def test_retention_keeps_the_newest_runs_and_drops_old_ones(tmp_path):
    run = run_from_report(diagnose(scenario_trace("gpu-idle")), {}, "x.trace.json")
    now = time.time()
    with History(tmp_path / "h.sqlite3", keep_runs=50) as history:
        for i in range(120):
            history.record({**run, "prompt_id": f"p{i:03d}", "workflow_id": "w", "ended": now - 1000 + i})
        assert history.count() == 50
        assert {r["prompt_id"] for r in history.runs(200)} == {f"p{i:03d}" for i in range(70, 120)}
    with History(tmp_path / "d.sqlite3", keep_days=1.0) as history:
        for i, age_days in enumerate((5, 2, 1.5, 0.5, 0.1)):
            history.record({**run, "prompt_id": f"a{i}", "ended": now - age_days * 86400})
        assert [r["prompt_id"] for r in history.runs()] == ["a4", "a3"]


def test_a_locked_database_is_an_error_naming_the_file_within_the_busy_timeout(tmp_path):
    path = tmp_path / "history.sqlite3"
    run = run_from_report(diagnose(scenario_trace("gpu-idle")), {"workflow_id": "w"}, "x.trace.json")
    history = History(path)
    history.record(run)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(HistoryError) as raised:
            history.record({**run, "prompt_id": "second"})
        waited = time.monotonic() - started
        assert str(path) in str(raised.value) and "locked" in str(raised.value)
        assert 1.0 < waited < 6.0
        assert history.get(run["prompt_id"])["prompt_id"] == run["prompt_id"]  # WAL: readers still read
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    history.record({**run, "prompt_id": "second"})  # the lock is gone: it works again
    assert history.count() == 2
    history.close()
    # a database in rollback-journal mode locked exclusively: even opening waits, then fails cleanly
    other = tmp_path / "rollback.sqlite3"
    History(other).close()
    with sqlite3.connect(other, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode = DELETE")
    holder = sqlite3.connect(other, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO runs (prompt_id, ended, outcome, stages, findings, nodes) "
                   "VALUES ('x', 0, 'ok', '{}', '[]', '[]')")
    try:
        started = time.monotonic()
        with pytest.raises(HistoryError, match="rollback.sqlite3.*locked"):
            History(other)
        assert time.monotonic() - started < 6.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize("content", [os.urandom(4096), b"model: tiny\nsteps: 2\n" * 50,
                                     b"SQLite format 3\x00" + os.urandom(4080)],
                         ids=["random-bytes", "text-file", "damaged-sqlite"])
def test_a_corrupt_file_is_refused_and_left_as_it_is(tmp_path, content):
    path = tmp_path / "history.sqlite3"
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(HistoryError) as raised:
            History(path, readonly=readonly)
        assert str(path) in str(raised.value)
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["history.sqlite3"]


def test_another_programs_database_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    before = path.read_bytes()
    with pytest.raises(HistoryError, match="another program's SQLite database"):
        History(path)
    assert path.read_bytes() == before
    newer = tmp_path / "newer.sqlite3"
    History(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(HistoryError, match="newer StageTrace"):
        History(newer)


# --- The regression rule over real traces ----------------------------------------------------------


def warped(trace: dict, stage: str, factor: float, prompt_id: str) -> dict:
    """The trace with its ``stage`` window (the union of that stage's spans) stretched ``factor`` times, as
    if that stage ran slower: every timestamp inside the window is scaled, every one after it shifted, so
    the spans around it (node, prompt) and the GPU windows in it grow with it."""
    trace = json.loads(json.dumps(trace))
    spans = [e for e in trace["traceEvents"] if e.get("cat") == stage and e.get("ph") == "X"]
    start, end = min(e["ts"] for e in spans), max(e["ts"] + e["dur"] for e in spans)

    def at(t: float) -> float:
        if t <= start:
            return t
        if t <= end:
            return start + (t - start) * factor
        return t + (end - start) * (factor - 1)

    for e in trace["traceEvents"]:
        if "ts" not in e:
            continue
        begin = at(float(e["ts"]))
        if "dur" in e:
            e["dur"] = at(float(e["ts"]) + float(e["dur"])) - begin
        e["ts"] = begin
        if (e.get("args") or {}).get("prompt_id"):
            e["args"]["prompt_id"] = prompt_id
    trace["otherData"]["prompt_id"] = prompt_id
    return trace


def earlier_runs(history: History, base: dict, factors: list[float], keep_findings: bool = True) -> None:
    """Runs of one workflow from a real trace, each with its sampling a little faster or slower."""
    start = time.time() - 3600
    for i, factor in enumerate(factors):
        trace = warped(base, "sample", factor, f"earlier-{i}")
        run = run_from_report(diagnose(trace), {"workflow_id": "wf", "ended": start + i}, f"earlier-{i}.trace.json")
        history.record(run if keep_findings else {**run, "findings": []})


def regression(report) -> Finding | None:
    found = [f for f in report.findings if f.rule == "regression"]
    return found[0] if found else None


def test_a_slowed_sampling_stage_is_a_regression(tmp_path):
    base = scenario_trace("gpu-idle")  # a real GPU run: 2.85 s of sampling, with its GPU windows
    with History(tmp_path / "h.sqlite3") as history:
        earlier_runs(history, base, [1.0, 0.98, 1.03, 1.01, 0.99])
        previous = history.recent("wf", 10)
        slow = diagnose(warped(base, "sample", 2.4, "slow"), history=previous)
        f = regression(slow)
        assert f is not None and f.severity == "warning"
        assert f.title == "Sampling took 2.4x the median of the last 5 runs of this workflow"
        median = previous[-1]["stages"]["sample"]  # earlier-0, unchanged: the median of the five
        assert f.figures["stage"] == "sample" and f.figures["runs"] == 5
        assert f.figures["median_s"] == pytest.approx(median)
        assert f.figures["seconds"] == pytest.approx(2.4 * median, rel=1e-3)
        assert f.cost_s == pytest.approx(1.4 * median, rel=1e-3)
        assert "the median of the last 5 successful runs" in f.evidence
        assert "stagetrace history --compare slow earlier-4" in f.fix and "something changed" in f.cause
        assert slow.findings[0].rule == "regression"  # the most costly: before the GPU-idle finding all runs have
        # recorded in its turn, it can be compared with the run its fix names
        history.record(run_from_report(slow, {"workflow_id": "wf"}, "slow.trace.json"))
        c = history.compare("slow", "earlier-4")
        assert c["stages"][0]["stage"] in ("sample", "sample.step", "node")
        assert next(s for s in c["stages"] if s["stage"] == "sample")["ratio"] == pytest.approx(2.4 / 0.99, rel=1e-3)


def test_an_unchanged_run_or_too_few_runs_is_no_regression(tmp_path):
    base = scenario_trace("gpu-idle")
    with History(tmp_path / "h.sqlite3") as history:
        earlier_runs(history, base, [1.0, 1.02, 0.97])
        same = diagnose(warped(base, "sample", 1.04, "same"), history=history.recent("wf"))
        assert regression(same) is None and not [n for n in same.not_checked if n.rule == "regression"]
        two = diagnose(warped(base, "sample", 3.0, "slow"), history=history.recent("wf", 2))
        assert regression(two) is None
        assert [n.why for n in two.not_checked if n.rule == "regression"] == [
            "2 earlier successful run(s) of this workflow; 3 are needed"]
    none = diagnose(warped(base, "sample", 3.0, "slow"))
    assert regression(none) is None and any(n.rule == "regression" for n in none.not_checked)
    # failed earlier runs do not count
    failed = [{"prompt_id": f"f{i}", "outcome": "error", "wall_s": 1.0, "stages": {"sample": 1.0}} for i in range(5)]
    assert regression(diagnose(warped(base, "sample", 3.0, "slow"), history=failed)) is None
    # milliseconds: a 10 ms stage that takes 40 ms is 4x, but no regression
    tiny = [{"prompt_id": f"t{i}", "outcome": "ok", "wall_s": 3.0, "stages": {**run["stages"], "save": 0.010}}
            for i, run in enumerate([run_from_report(diagnose(base), {}, None)] * 3)]
    assert regression(diagnose(base, history=tiny)) is None


def test_a_regression_a_new_finding_explains_points_to_it(tmp_path):
    base = scenario_trace("gpu-idle")  # its GPU-idle finding: new when the earlier runs did not have it
    with History(tmp_path / "h.sqlite3") as history:
        earlier_runs(history, base, [1.0, 1.0, 1.0], keep_findings=False)
        report = diagnose(warped(base, "sample", 2.0, "slow"), history=history.recent("wf"))
    f = regression(report)
    idle = next(x for x in report.findings if x.rule == "gpu-idle")
    assert f.cause == f"{idle.title} (the finding above)"
    assert report.findings.index(idle) < report.findings.index(f)


def test_models_loaded_again_against_runs_that_found_them_loaded():
    """Earlier runs only checked their models were on the device (about a millisecond); this one read and
    built them: a ratio of thousands says little, so the title gives the seconds."""
    trace = scenario_trace("step-rate")  # it loads its model: read, build, to_device
    earlier = [{"prompt_id": f"e{i}", "outcome": "ok", "wall_s": 60.0,
                "stages": {"model_load.to_device": 0.001, "sample": 57.5, "vae_decode": 1.6}} for i in range(4)]
    f = regression(diagnose(trace, history=earlier))
    load_s = sum(diagnose(trace).summary.stage_s[s] for s in ("model_load.read", "model_load.build",
                                                              "model_load.to_device"))
    assert f.figures["stage"] == "model_load" and f.figures["seconds"] == pytest.approx(load_s)
    assert f.title == (f"Model loading took {load_s:.3f} s; the median of the last 4 runs of this workflow is "
                       "1.0 ms")
    assert f.severity == "info" and "first prompt since ComfyUI started" in f.cause  # this trace's prompt_index 1
    trace["otherData"]["process"]["prompt_index"] = 5
    later = regression(diagnose(trace, history=earlier))
    assert later.severity == "warning" and "loaded again" in later.cause


def test_history_settings(monkeypatch):
    from comfy_nodes.core.settings import Settings

    for name in ("STAGETRACE_HISTORY", "STAGETRACE_HISTORY_KEEP", "STAGETRACE_HISTORY_DAYS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.history, s.history_keep, s.history_days) == (True, 10_000, 90.0)
    monkeypatch.setenv("STAGETRACE_HISTORY", "0")
    monkeypatch.setenv("STAGETRACE_HISTORY_KEEP", "500")
    monkeypatch.setenv("STAGETRACE_HISTORY_DAYS", "7.5")
    s = Settings.from_env()
    assert (s.history, s.history_keep, s.history_days) == (False, 500, 7.5)
    for name, value in (("STAGETRACE_HISTORY_KEEP", "0"), ("STAGETRACE_HISTORY_KEEP", "many"),
                        ("STAGETRACE_HISTORY_DAYS", "-1"), ("STAGETRACE_HISTORY_DAYS", "nan")):
        monkeypatch.setenv(name, value)
        problems = []
        Settings.from_env(problems)  # the default is used, and the line names the variable
        assert len(problems) == 1 and problems[0].startswith(name)
        monkeypatch.delenv(name)


# --- Real ComfyUI runs: the tiny workflow, one run slowed inside its sampler -------------------------

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
SLEEP_PER_STEP_S = 0.4
HARNESS = """
import json, sys, time
sys.path.insert(0, {root!r})
from comfy_nodes.demo.harness import Harness, report, tiny_txt2img

import torch

# one thread: on a busy machine torch's spinning worker threads make a 0.15 s sampler take seconds, and
# that noise, not the sleep below, would decide the test
torch.set_num_threads(1)
harness = Harness({comfyui!r}, {workdir!r}, ({custom_nodes!r},))
harness.boot()
ckpt = harness.write_checkpoint()
runs = [harness.run(tiny_txt2img(ckpt, seed=seed), f"hist-{{seed}}") for seed in range(1, 6)]
import comfy.utils

def slow_step(value, total, preview_image, prompt_id=None, node_id=None):
    time.sleep({sleep})  # inside the sampler's step callback: the sampling stage is slower

comfy.utils.set_progress_bar_global_hook(slow_step)
runs.append(harness.run(tiny_txt2img(ckpt, seed=99), "hist-slow"))
comfy.utils.set_progress_bar_global_hook(None)
runs.append(harness.run(tiny_txt2img(ckpt, seed=100), "hist-again"))
report(0.0, runs)
"""


@pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout")
def test_real_runs_of_the_tiny_workflow_one_slowed_in_its_sampler(tmp_path):
    """Seven real prompts of one workflow (other seeds each time); the sixth sleeps in every sampler step.
    Each trace is diagnosed with the runs before it and recorded, as the writer thread does it."""
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    os.symlink(ROOT, custom / "StageTrace")
    script = tmp_path / "runs.py"
    script.write_text(HARNESS.format(root=ROOT, comfyui=COMFYUI_DIR, workdir=str(tmp_path), custom_nodes=str(custom),
                                     sleep=SLEEP_PER_STEP_S))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, STAGETRACE_SUMMARY="0", STAGETRACE_REPORT="0"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout.split("HARNESS_RESULT ")[-1])
    assert all(r["success"] for r in result["runs"])
    folder = tmp_path / "output" / "stagetrace"
    traces = {load(str(p))["otherData"]["prompt_id"]: p for p in folder.glob("*.trace.json")}
    order = [f"hist-{seed}" for seed in range(1, 6)] + ["hist-slow", "hist-again"]
    assert set(traces) == set(order)
    wid = workflow_id(tiny_txt2img(CKPT, seed=1))
    assert wid == workflow_id(tiny_txt2img(CKPT, seed=99))
    reports = {}
    # replayed from the traces into a database of the test's own, as the writer thread does it
    with History(tmp_path / "replay.sqlite3") as history:
        for i, prompt_id in enumerate(order):
            trace = load(str(traces[prompt_id]))
            assert trace["otherData"].get("workflow_id") in (wid, None)  # the recorder's identity, when it has one
            reports[prompt_id] = report = diagnose(trace, history=history.recent(wid, 10))
            history.record(run_from_report(report, {**trace["otherData"], "workflow_id": wid,
                                                    "ended": time.time() - 100 + i}, traces[prompt_id].name))
        slow_s = history.get("hist-slow")["stages"]["sample"]
    for prompt_id in order[:3]:
        assert any(n.rule == "regression" for n in reports[prompt_id].not_checked), prompt_id
    for prompt_id in (*order[3:5], "hist-again"):
        assert regression(reports[prompt_id]) is None, (prompt_id, [f.title for f in reports[prompt_id].findings])
    f = regression(reports["hist-slow"])
    assert f is not None and f.figures["stage"] == "sample" and f.figures["runs"] == 5
    assert f.figures["seconds"] == pytest.approx(slow_s) and slow_s >= 2 * SLEEP_PER_STEP_S
    # under 10x the title gives the ratio, beyond it the seconds (how far the sleep slows a run depends on
    # how fast this machine samples without it)
    ratio = f.figures["ratio"]
    assert ratio == pytest.approx(slow_s / f.figures["median_s"]) and ratio >= 2
    said = (f"{ratio:.1f}x the median of the last 5 runs of this workflow" if ratio < 10
            else "; the median of the last 5 runs of this workflow is ")
    assert f.title.startswith("Sampling took ") and said in f.title, f.title
    assert "--compare hist-slow hist-5" in f.fix
    # the writer thread's own history, when it keeps one (STAGETRACE_HISTORY, on by default), says the same
    written = folder / "history.sqlite3"
    if written.exists():
        with History(written, readonly=True) as history:
            assert [r["prompt_id"] for r in history.recent(wid, 10)] == order[::-1]
            assert [f["rule"] for f in history.get("hist-slow")["findings"]].count("regression") == 1
            assert "regression" not in [f["rule"] for f in history.get("hist-again")["findings"]]


# --- stagetrace history ------------------------------------------------------------------------------


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "comfy_nodes", "history", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=60,
                          env={**{k: v for k, v in os.environ.items() if k != "STAGETRACE_OUTPUT_DIR"},
                               "PYTHONPATH": ROOT, **(env or {})})


@pytest.fixture
def filled(tmp_path):
    path = tmp_path / "history.sqlite3"
    with History(path) as history:
        recorded(history, ["gpu-idle", "vae-tiled", "step-rate"])
        recorded(history, ["fp8-no-compute"], workflow="other", start=time.time() - 60)
    return path


def test_cli_lists_runs_as_text_and_json(filled):
    out = cli("--db", str(filled))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:6] == ["ended", "prompt", "workflow", "outcome", "wall", "top"]
    assert [line.split()[2] for line in lines[1:]] == ["fp8-no-compute-1", "step-rate-1", "vae-tiled-3", "gpu-idle-2"]
    assert "VAE ran out of memory and fell back to tiles" in lines[3] and "sample 107.8 s" in lines[3]
    as_json = json.loads(cli("--db", str(filled), "--json", "--workflow", "wf", "--limit", "2").stdout)
    assert [r["prompt_id"] for r in as_json] == ["step-rate-1", "vae-tiled-3"]
    # the default database: the trace folder's
    env_default = cli(env={"STAGETRACE_OUTPUT_DIR": str(filled.parent)}, cwd=str(filled.parent))
    assert env_default.returncode == 0 and "gpu-idle-2" in env_default.stdout
    workflows = cli("--db", str(filled), "--workflows")
    assert workflows.returncode == 0 and workflows.stdout.splitlines()[1].split()[:2] == ["other", "1"]


def test_cli_compares_two_runs(filled):
    out = cli("--db", str(filled), "--compare", "vae-tiled-3", "gpu-idle-2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("a: vae-tiled-3") and "\nb: gpu-idle-2" in out.stdout
    sample = next(line for line in out.stdout.splitlines() if line.startswith("sample "))
    assert sample.split() == ["sample", "107.8", "s", "2.851", "s", "+104.9", "s", "37.80x"]
    assert "findings only in a: VAE ran out of memory" in out.stdout
    as_json = json.loads(cli("--db", str(filled), "--compare", "vae-tiled-3", "gpu-idle-2", "--json").stdout)
    assert as_json["wall"]["a"] > as_json["wall"]["b"]
    unknown = cli("--db", str(filled), "--compare", "vae-tiled-3", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr


def test_cli_missing_or_corrupt_database_is_exit_2_naming_it(tmp_path):
    missing = tmp_path / "none.sqlite3"
    out = cli("--db", str(missing))
    assert out.returncode == 2 and str(missing) in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert out.stdout == "" and os.listdir(tmp_path) == []
    corrupt = tmp_path / "history.sqlite3"
    corrupt.write_bytes(b"not a database\n" * 100)
    out = cli("--db", str(corrupt))
    assert out.returncode == 2 and str(corrupt) in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert corrupt.read_bytes() == b"not a database\n" * 100 and os.listdir(tmp_path) == ["history.sqlite3"]
    nowhere = cli(cwd=str(tmp_path))  # no --db, no STAGETRACE_OUTPUT_DIR, no ./output/stagetrace/
    assert nowhere.returncode == 2 and "--db" in nowhere.stderr


# --- The routes: a real aiohttp server on loopback ---------------------------------------------------


class Server(LoopbackApp):
    """StageTrace's routes (Routes.table(), each behind ``guarded`` as register() adds them) on 127.0.0.1."""

    def __init__(self, history, history_why=None):
        from aiohttp import web

        from comfy_nodes.surfaces.routes import Routes, TraceStore, guarded

        app = web.Application()
        routes = Routes(TraceStore(lambda: "/nonexistent"), None, history=history, history_why=history_why)
        for path, handler in routes.table():
            app.router.add_get(path, guarded(handler))
        super().__init__(app)

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def test_history_routes(filled):
    pytest.importorskip("aiohttp")
    with History(filled, readonly=True) as history:
        server = Server(history)
        try:
            status, body = server.get("/stagetrace/history?limit=2")
            assert status == 200 and [r["prompt_id"] for r in body["runs"]] == ["fp8-no-compute-1", "step-rate-1"]
            status, body = server.get("/stagetrace/history?workflow=wf")
            assert status == 200 and len(body["runs"]) == 3 and body["limit"] == 20
            status, run = server.get("/stagetrace/history/vae-tiled-3")
            assert status == 200 and run["stages"]["vae_decode"] == pytest.approx(21.5)
            assert run["links"]["prompt"] == "/stagetrace/prompts/vae-tiled-3" and "/" not in run["trace"]
            status, c = server.get("/stagetrace/history/compare?a=vae-tiled-3&b=gpu-idle-2")
            assert status == 200 and c["a"]["prompt_id"] == "vae-tiled-3" and c["same_workflow"]
            assert server.get("/stagetrace/history/nope")[0] == 404
            status, body = server.get("/stagetrace/history/compare?a=vae-tiled-3&b=nope")
            assert status == 404 and "nope" in body["error"] and str(filled.parent) not in body["error"]
            for bad in ("/stagetrace/history?limit=0", "/stagetrace/history?limit=201", "/stagetrace/history?limit=x",
                        "/stagetrace/history?workflow=../x", "/stagetrace/history/compare?a=x",
                        "/stagetrace/history/compare?a=x&b=a%20b", "/stagetrace/history/a.b"):
                assert server.get(bad)[0] == 400, bad
        finally:
            server.stop()
    off = Server(None)
    try:
        status, body = off.get("/stagetrace/history")
        assert status == 503 and "STAGETRACE_HISTORY" in body["error"]
    finally:
        off.stop()
    broken = History(filled, readonly=True)
    broken.close()  # a database that fails under the route: 503, the message without the server's folder
    server = Server(broken)
    try:
        status, body = server.get("/stagetrace/history/gpu-idle-2")
        assert status == 503 and "history.sqlite3" in body["error"] and str(filled.parent) not in body["error"]
    finally:
        server.stop()
