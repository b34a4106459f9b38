"""The recorder's trace, the summary computed from it and the `stagetrace report`
command, through the real C core (no ComfyUI needed)."""

import json
import os
import subprocess
import sys

import pytest

from comfy_nodes.analysis.summary import summarize
from comfy_nodes.core import stages
from comfy_nodes.core.settings import Settings
from comfy_nodes.hooks.guard import HookGuard
from comfy_nodes.record.recorder import Recorder
from comfy_nodes.record.tracefile import TraceError, load
from comfy_nodes.render.text import format_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_python_vocabulary_matches_c(native):
    assert stages.STAGES == native.STAGES
    assert stages.OUTCOMES == native.OUTCOMES


@pytest.fixture
def recorded_prompt(native, tmp_path):
    """A prompt recorded the way the ComfyUI hooks record one: node spans from
    the C Wrapper (one failing), a cached node only listed in execution_cached,
    and prompt messages; written by Recorder.prompt_end."""
    native.drain()
    settings = Settings(disabled=False, output_dir=str(tmp_path), nvtx=False, summary=True, buffer_events=1024)
    rec = Recorder(native, settings, lambda: str(tmp_path), HookGuard())
    prompt = {
        "1": {"class_type": "Loader"},
        "2": {"class_type": "Sampler"},
        "3": {"class_type": "Decode"},
        "4": {"class_type": "CachedThing"},
    }
    rec.prompt_begin(prompt, "p-1", {})

    def run(node_id):
        if node_id == "3":
            raise RuntimeError("boom")
        return ("SUCCESS", None, None)

    node = native.Wrapper(run, stages.NODE, "node", namer=lambda i: (prompt[i]["class_type"], i))
    outer = native.Wrapper(lambda: [node("1"), node("2")], stages.PROMPT, "prompt", detail="p-1")
    rec.on_message("execution_start", {"prompt_id": "p-1"})
    rec.on_message("execution_cached", {"nodes": ["4"], "prompt_id": "p-1"})
    outer()
    with pytest.raises(RuntimeError):
        node("3")
    rec.on_message("execution_error", {"prompt_id": "p-1", "node_id": "3", "node_type": "Decode",
                                       "exception_type": "RuntimeError", "exception_message": "boom"})
    rec.prompt_end()  # on the worker: the drain; the trace is written by the writer thread
    assert rec.flush(30)
    return rec, rec.last_trace


def test_trace_is_valid_and_complete(recorded_prompt):
    rec, path = recorded_prompt
    trace = load(path)
    assert trace["stagetraceFormat"] == 1
    assert trace["otherData"]["prompt_id"] == "p-1"
    assert trace["otherData"]["outcome"] == "error"
    nodes = [e for e in trace["traceEvents"] if e.get("cat") == "node"]
    by_id = {e["args"]["node_id"]: e for e in nodes}
    assert sorted(by_id) == ["1", "2", "3", "4"] and len(nodes) == 4  # every node once
    assert by_id["3"]["args"]["outcome"] == "error"
    assert by_id["4"]["args"]["outcome"] == "cached" and by_id["4"]["dur"] == 0
    prompt = next(e for e in trace["traceEvents"] if e.get("cat") == "prompt" and e["ph"] == "X")
    for node_id in ("1", "2"):  # nested inside the prompt span
        assert prompt["ts"] <= by_id[node_id]["ts"]
        assert by_id[node_id]["ts"] + by_id[node_id]["dur"] <= prompt["ts"] + prompt["dur"]
    names = {e["name"] for e in trace["traceEvents"] if e["ph"] == "M"}
    assert names == {"process_name", "thread_name"}
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp." in f]


def test_summary_names_failures_cache_and_slowest(recorded_prompt):
    rec, path = recorded_prompt
    s = rec.last_summary
    assert s.prompt_id == "p-1"
    assert [n.node_id for n in s.cached] == ["4"]
    assert {n.node_id for n in s.nodes} == {"1", "2", "3"}
    assert s.failures == ["failed: Decode #3: RuntimeError: boom"]
    text = format_text(s)
    assert "cached: 1 node (CachedThing #4)" in text
    assert "failed: Decode #3: RuntimeError: boom" in text
    assert path in text


def test_report_command_prints_the_same_summary(recorded_prompt):
    rec, path = recorded_prompt
    out = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", path], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith(format_text(rec.last_summary) + "\n")  # the console summary, then the findings
    assert "findings:" in out or "1. [" in out
    as_json = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", "--json", path], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert json.loads(as_json)["prompt_id"] == "p-1"


def test_stage_time_is_a_union_not_a_sum():
    events = [
        {"ph": "X", "cat": "prompt", "name": "prompt", "ts": 0, "dur": 100, "args": {"prompt_id": "x"}},
        {"ph": "X", "cat": "node", "name": "A", "ts": 10, "dur": 50, "args": {"node_id": "1"}},
        {"ph": "X", "cat": "node", "name": "B", "ts": 40, "dur": 40, "args": {"node_id": "2"}},  # overlaps A
    ]
    s = summarize({"traceEvents": events})
    assert s.stage_s["node"] == pytest.approx(70e-6)
    assert s.wall_s == pytest.approx(100e-6)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"traceEvents": [', "byte offset 17: invalid JSON"),
        (b'{"traceEvents": [{"ph": "X", "ts": 1}]}', "field 'traceEvents[0].dur'"),
        (b'{"traceEvents": 3}', "field 'traceEvents'"),
        (b'\xff\xfe', "byte offset 0: not UTF-8"),
        (b'{"traceEvents": [{"ph": "i", "ts": "soon"}]}', "field 'traceEvents[0].ts'"),
    ],
)
def test_bad_traces_name_file_and_place(tmp_path, content, expected):
    path = tmp_path / "bad.trace.json"
    path.write_bytes(content)
    with pytest.raises(TraceError) as err:
        load(str(path))
    assert str(path) in str(err.value) and expected in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", str(path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and expected in proc.stderr


def test_trace_names_never_collide(tmp_path):
    from comfy_nodes.record.tracefile import trace_path

    first = trace_path(str(tmp_path), "a/b c", when=0)
    assert os.path.basename(first).endswith("_a_b_c.trace.json")
    open(first, "w").close()
    second = trace_path(str(tmp_path), "a/b c", when=0)
    assert second != first and second.endswith("_a_b_c-2.trace.json")


def test_a_failing_report_leaves_the_trace_whole(native, tmp_path, monkeypatch, caplog):
    import comfy_nodes.analysis.diagnose as diagnose_module

    def broken(trace, *args, **kwargs):
        raise ZeroDivisionError("a bug in the report")

    monkeypatch.setattr(diagnose_module, "diagnose", broken)
    native.drain()
    settings = Settings(disabled=False, output_dir=str(tmp_path), nvtx=False, summary=True, buffer_events=1024)
    guard = HookGuard()
    rec = Recorder(native, settings, lambda: str(tmp_path), guard)
    rec.prompt_begin({"1": {"class_type": "Loader"}}, "p-2", {})
    native.Wrapper(lambda: None, stages.PROMPT, "prompt", detail="p-2")()
    rec.prompt_end()
    assert rec.flush(30)
    assert load(rec.last_trace)["otherData"]["prompt_id"] == "p-2"  # the trace is complete
    assert not list(tmp_path.glob("*.report.*"))  # and no half report beside it
    assert guard.failures == {"report": 1} and "ZeroDivisionError" in guard.last["report"]


# --- each stage's own time, and the console line --------------------------------------------------------------


def test_each_stage_owns_its_own_time_and_the_shares_add_to_the_whole():
    from comfy_nodes.analysis.summary import exclusive_times

    spans = {"prompt": [(0, 100)], "node": [(10, 50), (60, 90)], "sample": [(20, 45)],
             "sample.step": [(21, 30), (31, 44)], "vae_decode": [(61, 80)], "model_load.build": [(11, 19)],
             "model_load.read": [(12, 15)]}
    own = {k: round(v * 1e6, 6) for k, v in exclusive_times(spans).items()}
    assert own == {"prompt": 30, "node": 18, "model_load.read": 3, "model_load.build": 5, "sample": 3,
                   "sample.step": 22, "vae_decode": 19}
    assert sum(own.values()) == 100  # the union of every span


@pytest.mark.parametrize("name", ["step-rate", "partial-offload", "vae-tiled", "memory-pressure"])
def test_a_recorded_runs_stage_shares_add_to_100_percent(name):
    from comfy_nodes.analysis.diagnose import diagnose
    from comfy_nodes.render.report import render

    trace = load(os.path.join(os.path.dirname(__file__), "fixtures", "scenarios", f"{name}.trace.json"))
    report = diagnose(trace)
    assert sum(share for _, _, share in report.stages) == pytest.approx(1.0, abs=1e-6)
    assert sum(seconds for _, seconds, _ in report.stages) == pytest.approx(report.summary.wall_s, rel=1e-6)
    text = render(report, "text")
    assert "(outside nodes)" in text or "prompt" not in report.summary.exclusive_s
    inclusive = report.to_dict()["stages_inclusive"]
    assert inclusive["sample"] >= report.summary.exclusive_s.get("sample", 0.0)  # steps are inside sampling


def test_the_console_gets_one_line_per_prompt_and_the_whole_summary_when_it_failed(native, tmp_path, caplog):
    import logging

    settings = Settings(disabled=False, output_dir=str(tmp_path), nvtx=False, summary=True, buffer_events=1024)
    for prompt_id, fails in (("p-ok", False), ("p-bad", True)):
        native.drain()
        rec = Recorder(native, settings, lambda: str(tmp_path), HookGuard())
        rec.prompt_begin({"1": {"class_type": "Loader"}}, prompt_id, {})
        node = native.Wrapper(lambda: ("SUCCESS", None, None), stages.NODE, "node", namer=lambda: ("Loader", "1"))

        def run(fails=fails, prompt_id=prompt_id, node=node, rec=rec):
            node()
            if fails:  # as ComfyUI reports a node that raised, before the prompt ends
                rec.on_message("execution_error", {"prompt_id": prompt_id, "node_id": "1", "node_type": "Loader",
                                                   "exception_type": "RuntimeError", "exception_message": "boom"})

        native.Wrapper(run, stages.PROMPT, "prompt", detail=prompt_id)()
        with caplog.at_level(logging.INFO, logger="stagetrace"):
            caplog.clear()
            rec.prompt_end()
            assert rec.flush(30)
        printed = [r.getMessage() for r in caplog.records if "prompt " + prompt_id in r.getMessage()]
        assert len(printed) == 1
        if fails:
            assert "stage (its own time)" in printed[0] and "failed: Loader #1" in printed[0]  # the whole summary
        else:
            assert "\n" not in printed[0] and printed[0].startswith("StageTrace · prompt p-ok · ok in ")
            assert rec.last_trace in printed[0]


def test_piping_into_head_ends_quietly():
    """`stagetrace report ... | head -1`: the reader leaves early; no BrokenPipe traceback, exit 0."""
    trace = os.path.join(ROOT, "tests", "fixtures", "scenarios", "vae-tiled.trace.json")
    for fmt in ("text", "html", "json"):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m comfy_nodes report "
                               f"{trace} --format {fmt} | head -c 10 > /dev/null"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
