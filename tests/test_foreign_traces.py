"""Traces StageTrace did not write, and malformed ones: a minimal Chrome trace, Perfetto/torch.profiler-like
events, wrong types, non-finite or negative times, deep nesting. Any JSON gives a report or one clear error
naming the file and the field: never a traceback (fuzzed with hypothesis), and one bad file never stops the
others."""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_nodes.analysis.diagnose import diagnose
from comfy_nodes.record.tracefile import TraceError, load
from comfy_nodes.render.report import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def report_or_error(tmp_path, document, name="t.json"):
    """(the rendered text, html and json) or the TraceError message."""
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    try:
        trace = load(str(path))
    except TraceError as exc:
        assert str(path) in str(exc)
        return str(exc)
    report = diagnose(trace)
    return [render(report, fmt, trace) for fmt in ("text", "md", "html", "json")]


def test_a_minimal_chrome_trace_without_cat_is_reported(tmp_path):
    out = report_or_error(tmp_path, {"traceEvents": [{"name": "work", "ph": "X", "ts": 0, "dur": 1500, "pid": 1,
                                                      "tid": 1}]})
    assert isinstance(out, list) and "1.500 ms" in out[0] or "1.5 ms" in out[0]


def test_torch_profiler_like_events_are_reported(tmp_path):
    events = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 10.5, "dur": 20.25, "pid": 1, "tid": 2,
               "args": {"External id": 3}},
              {"ph": "X", "cat": "kernel", "name": "volta_sgemm", "ts": 15, "dur": 5, "pid": 0, "tid": 7},
              {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "python"}},
              {"ph": "i", "name": "marker", "ts": 12, "s": "t"}]
    out = report_or_error(tmp_path, {"traceEvents": events, "displayTimeUnit": "ms"})
    assert isinstance(out, list) and json.loads(out[3])["outcome"] == "ok"


@pytest.mark.parametrize("document, field", [
    ({"traceEvents": [], "otherData": []}, "otherData"),
    ({"traceEvents": [{"ph": "X", "ts": 0, "dur": 1, "args": "x"}]}, "traceEvents[0].args"),
    ({"traceEvents": [{"ph": "X", "ts": 0, "dur": 1, "cat": 5}]}, "traceEvents[0].cat"),
    ({"traceEvents": [{"ph": "X", "ts": 0, "dur": 1, "name": None}]}, "traceEvents[0].name"),
    ({"traceEvents": [{"ph": "X", "ts": 0, "dur": 1, "args": {"outcome": 3}}]}, "traceEvents[0].args.outcome"),
    ({"traceEvents": [{"ph": "X", "ts": 0, "dur": -1000}]}, "traceEvents[0].dur"),
    ('{"traceEvents": [{"ph": "X", "ts": 0, "dur": NaN}]}', "traceEvents[0].dur"),
    ('{"traceEvents": [{"ph": "X", "ts": Infinity, "dur": 1}]}', "traceEvents[0].ts"),
    ({"traceEvents": [{"ph": "X", "ts": True, "dur": 1}]}, "traceEvents[0].ts"),
])
def test_a_malformed_field_gives_one_error_naming_the_file_and_the_field(tmp_path, document, field):
    out = report_or_error(tmp_path, document)
    assert isinstance(out, str) and f"field '{field}'" in out


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    out = report_or_error(tmp_path, '{"traceEvents": [], "otherData": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert isinstance(out, str) and "nested too deeply" in out


def test_one_bad_trace_among_several_does_not_stop_the_others(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"traceEvents": [{"ph": "X", "ts": 0, "dur": -5}]}')
    good = os.path.join(ROOT, "tests", "fixtures", "scenarios", "vae-tiled.trace.json")
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", str(bad), good], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}: field 'traceEvents[0].dur'" in proc.stderr and "VAE ran out of memory" in proc.stdout


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
KEYS = ("ph", "name", "cat", "ts", "dur", "pid", "tid", "args", "id", "s")
EVENT = st.dictionaries(st.sampled_from(KEYS), st.one_of(
    st.sampled_from(["X", "i", "I", "M", "B", "E", "C", "prompt", "node", "sample", "sample.step", "gpu",
                     "model_load.read", "vae_decode", "queue_wait", "execution_error", "ok", "error"]),
    st.floats(-1e9, 1e15, allow_nan=False), st.integers(-5, 10**9),
    st.dictionaries(st.sampled_from(["outcome", "node_id", "step", "of", "busy_ms", "copies", "bytes",
                                     "file_bytes", "tiled_fallback", "prompt_id", "node_type"]), JSON, max_size=4),
    JSON), max_size=8)
TRACE = st.fixed_dictionaries({"traceEvents": st.lists(EVENT, max_size=12)},
                              optional={"otherData": st.dictionaries(st.sampled_from(
                                  ["gpu", "outcome", "queue_wait_s", "loader_gaps", "anatomy", "process",
                                   "dropped_events", "prompt_id", "workflow_id"]), JSON, max_size=5)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(JSON, TRACE))
def test_any_json_gives_a_report_or_one_clear_error(tmp_path, document):
    report_or_error(tmp_path, document)  # any other exception fails the test


def test_a_real_torch_profiler_trace_gives_its_ops_their_own_time(tmp_path):
    """A trace written by torch.profiler itself (CPU activities here): its whole-run ``Trace`` span wraps
    the ``cpu_op`` spans, so the ops own their time and the wrapper only the gaps between them."""
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    x = torch.randn(16, 64)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(20):
            model(x).sum().backward()
    path = tmp_path / "torch.json"
    prof.export_chrome_trace(str(path))
    done = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", "--format", "json", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    own = {row["stage"]: row["seconds"] for row in report["stages"]}
    inclusive = report["stages_inclusive"]
    assert own["cpu_op"] == pytest.approx(inclusive["cpu_op"])  # nothing of it handed to the wrapper
    assert own.get("Trace", 0.0) < inclusive["Trace"] - inclusive["cpu_op"] + 1e-9
    assert sum(own.values()) == pytest.approx(report["wall_s"])
