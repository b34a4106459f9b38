"""Big traces: `stagetrace report` reads a trace in one streaming pass (tracefile.read, the C reader
csrc/st_tracescan.c) in bounded memory, gives the same report as the whole-file path (tracefile.load) for
traces of a normal size, the same errors naming the file and the byte offset or the field, and an HTML page
of bounded size for a trace of any size."""

import gc
import glob
import json
import os
import re
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_nodes.analysis import summary
from comfy_nodes.analysis.diagnose import diagnose
from comfy_nodes.core import native
from comfy_nodes.record import tracefile
from comfy_nodes.record.tracefile import TraceError, load, read
from comfy_nodes.render.report import FORMATS, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bigtrace  # noqa: E402

SCENARIOS = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "scenarios", "*.trace.json")))

pytestmark = pytest.mark.skipif(native._native is None, reason="the C extension is not built")


def outcome(fn, path):
    """("ok", the four rendered reports) or ("error", the TraceError message)."""
    try:
        trace = fn(path)
    except TraceError as exc:
        return "error", str(exc)
    report = diagnose(trace)
    return "ok", [render(report, fmt, trace) for fmt in FORMATS]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("big") / "big.trace.json")
    bigtrace.write_stagetrace(path, 200_000)
    return path


# --- The same results as the whole-file path -------------------------------------------------------


@pytest.mark.parametrize("path", SCENARIOS, ids=[os.path.basename(p) for p in SCENARIOS])
def test_streaming_gives_the_reports_of_the_whole_trace(path):
    whole, streamed = outcome(load, path), outcome(read, path)
    assert streamed[0] == "ok" and streamed == whole
    assert tracefile.digest_of(read(path)).omitted == 0


@pytest.mark.parametrize("path", SCENARIOS[:3], ids=[os.path.basename(p) for p in SCENARIOS[:3]])
def test_the_c_span_arithmetic_is_the_python_sweep_to_the_last_bit(path, monkeypatch):
    trace = load(path)
    fast = summary.summarize(trace)
    monkeypatch.setattr(summary, "_native", lambda: None)  # the Python reference: exclusive_times, _union_us
    slow = summary.summarize(trace)
    assert fast.stage_s == slow.stage_s and list(fast.stage_s) == list(slow.stage_s)
    assert fast.exclusive_s == slow.exclusive_s and list(fast.exclusive_s) == list(slow.exclusive_s)


CATS = st.sampled_from(["prompt", "node", "sample", "sample.step", "gpu.kernel", "cpu_op", "kernel", "zz", "aa"])
TIMES = st.floats(0, 1e4, allow_nan=False).map(lambda x: round(x, 1))


@settings(max_examples=300, deadline=None)
@given(spans=st.lists(st.tuples(CATS, TIMES, st.floats(0, 500).map(lambda x: round(x, 2))), max_size=40))
def test_span_figures_match_the_python_sweep_for_any_spans(spans):
    events = [{"ph": "X", "cat": cat, "name": cat, "ts": ts, "dur": dur} for cat, ts, dur in spans]
    fast = summary.summarize({"traceEvents": events})
    original = summary._native
    summary._native = lambda: None
    try:
        slow = summary.summarize({"traceEvents": events})
    finally:
        summary._native = original
    assert fast.stage_s == slow.stage_s
    assert list(fast.exclusive_s.items()) == list(slow.exclusive_s.items())


# --- Bounded memory --------------------------------------------------------------------------------


def read_measured(path) -> tuple[dict, int, int]:
    """(the trace read, the peak of Python's allocations while reading, the number of objects it left alive)."""
    gc.collect()
    before = len(gc.get_objects())
    tracemalloc.start()
    try:
        trace = read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gc.collect()
    return trace, peak, len(gc.get_objects()) - before


def test_reading_keeps_no_object_per_event(big):
    size = os.path.getsize(big)
    trace, peak, retained = read_measured(big)
    digest = tracefile.digest_of(trace)
    assert digest.events == 200_000 and digest.omitted > 150_000
    # the whole-file path peaks at about 5x the file's size and keeps an object per event
    assert peak < 0.9 * size, (peak, size)
    assert retained < 0.15 * digest.events, retained
    assert len(trace["traceEvents"]) <= tracefile.PRIORITY_KEPT + tracefile.OTHER_KEPT


def test_what_is_kept_whole_follows_the_limit_not_the_file(big, monkeypatch):
    monkeypatch.setattr(tracefile, "OTHER_KEPT", 500)
    size = os.path.getsize(big)
    trace, peak, retained = read_measured(big)
    assert retained < 3_000
    assert peak < 0.25 * size, (peak, size)  # the intervals: 16 bytes a span
    kernels = [e for e in trace["traceEvents"] if e.get("cat") == "gpu.kernel"]
    assert len(kernels) == 500
    s = summary.summarize(trace)
    assert s.events == 200_000 and "read as figures only" in " ".join(s.warnings)
    whole = summary.summarize(load(big))  # every span still counts in the stage times
    assert s.stage_s == whole.stage_s and s.exclusive_s == whole.exclusive_s and s.wall_s == whole.wall_s


def test_the_html_page_of_a_big_trace_is_bounded_and_says_so(big):
    trace = read(big)
    page = render(diagnose(trace), "html", trace)
    assert len(page.encode()) < 1_000_000, len(page)
    assert "too big to draw span by span: gpu kernels: 198,000 spans drawn as" in page
    assert page.count("<rect") <= 3000 + 60
    names = re.search(r'<table id="names">(.*?)</table>', page, re.S).group(1)
    assert names.count("<tr>") + names.count('<tr class="others">') == 1 + len(bigtrace.KERNELS)  # header + names
    row = r"<td>gpu.kernel</td><td>[^<]*</td><td class=r>([\d,]+)<"
    counts = [int(c.replace(",", "")) for c in re.findall(row, names)]
    assert "ampere_bf16_s16816gemm" in names and sum(counts) == 198_000  # every kernel, under its name


# --- Errors: the same as the whole-file path, wherever the chunks end -------------------------------


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                    | st.text(max_size=12), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=16)
EVENT = st.dictionaries(st.sampled_from(("ph", "name", "cat", "ts", "dur", "args", "pid")), st.one_of(
    st.sampled_from(["X", "i", "I", "C", "M", "prompt", "node", "gpu", "gpu.kernel", "cpu_op", "execution_error"]),
    st.floats(-10, 1e9, allow_nan=False), st.integers(-5, 10**9),
    st.dictionaries(st.sampled_from(["outcome", "node_id", "busy_ms"]), JSON, max_size=3), JSON), max_size=7)
TRACE = st.one_of(JSON, st.lists(EVENT, max_size=8), st.fixed_dictionaries(
    {"traceEvents": st.lists(EVENT, max_size=10)}, optional={"otherData": st.dictionaries(
        st.sampled_from(["prompt_id", "queue_wait_s", "gpu", "stagetrace_version"]), JSON, max_size=3),
        "displayTimeUnit": JSON}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=TRACE, chunk=st.sampled_from([1, 7, 64, 1 << 20]), indent=st.sampled_from([None, 1]))
def test_any_json_gives_the_same_report_or_error_as_the_whole_file_path(tmp_path, monkeypatch, document, chunk,
                                                                       indent):
    monkeypatch.setattr(tracefile, "CHUNK", chunk)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(document, indent=indent))
    assert outcome(read, str(path)) == outcome(load, str(path))


@pytest.mark.parametrize("text, expected", [
    ('{"traceEvents": [', "byte offset 17: invalid JSON"),
    ('{"traceEvents": [{"ph": "X", "ts": 1}]}', "field 'traceEvents[0].dur'"),
    ('{"traceEvents": 3}', "field 'traceEvents'"),
    ('{"traceEvents": [{"ph": "X", "ts": 0, "dur": NaN}]}', "field 'traceEvents[0].dur': missing, negative"),
    ('{"traceEvents": [{"ph": "X", "ts": -Infinity, "dur": 1}]}', "field 'traceEvents[0].ts'"),
    ('{"traceEvents": [], "otherData": []}', "field 'otherData': not an object"),
    ('{"traceEvents": [{"ph": "X", "ts": 0, "dur": 1, "args": {"outcome": 3}}]}', "'traceEvents[0].args.outcome'"),
    ('{"traceEvents": [], "otherData": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply to be read"),
    ('{"traceEvents": []} x', "byte offset 20: invalid JSON"),
    ('[1, 2', "byte offset 5: invalid JSON"),
])
@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_malformed_input_names_the_byte_offset_or_the_field(tmp_path, monkeypatch, text, expected, chunk):
    monkeypatch.setattr(tracefile, "CHUNK", chunk)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TraceError) as err:
        read(str(path))
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_a_bad_byte_deep_in_a_big_file_is_found_at_its_offset(tmp_path):
    good = json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": f"op {i}", "ts": i, "dur": 1}
                                       for i in range(50_000)]}).encode()
    at = good.index(b"op 40000") + 1
    path = tmp_path / "bad.json"
    path.write_bytes(good[:at] + b"\xff" + good[at + 1:])
    for fn in (read, load):
        with pytest.raises(TraceError, match=f"byte offset {at}: not UTF-8"):
            fn(str(path))
    cut = tmp_path / "cut.json"
    cut.write_bytes(good[:at])
    with pytest.raises(TraceError, match=f"byte offset {at}: invalid JSON"):
        read(str(cut))
    syntax = tmp_path / "syntax.json"
    colon = good.index(b'"name": "op 40000"') + 6
    syntax.write_bytes(good[:colon] + b"}" + good[colon + 1:])
    with pytest.raises(TraceError, match=f"byte offset {colon}: invalid JSON"):
        read(str(syntax))


def test_one_event_over_the_limit_is_an_error_not_a_memory_blowup(tmp_path, monkeypatch):
    monkeypatch.setattr(tracefile, "MAX_VALUE", 4096)
    monkeypatch.setattr(tracefile, "CHUNK", 1024)
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"traceEvents": [{"ph": "X", "ts": 0, "dur": 1, "args": {"x": "y" * 100_000}}]}))
    with pytest.raises(TraceError, match=r"byte offset 17: one value is larger than 4.1 kB"):
        read(str(path))


def test_special_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(TraceError, match="not a regular file"):
            read(path)


# --- The command ----------------------------------------------------------------------------------


def test_several_traces_each_reported_and_the_failed_ones_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"traceEvents": [{"ph": "X", "ts": 0, "dur": -5}]}')
    missing = tmp_path / "missing.json"
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", SCENARIOS[0], str(bad), str(missing),
                           SCENARIOS[1]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stdout.count("StageTrace · prompt") == 2
    assert f"{bad}: field 'traceEvents[0].dur'" in proc.stderr and f"{missing}: cannot read" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"stagetrace report: 2 of 4 traces failed: {bad}, {missing}"
    ok = subprocess.run([sys.executable, "-m", "comfy_nodes", "report", *SCENARIOS[:2]], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stderr == ""


def test_an_integer_past_pythons_digit_limit_is_one_clear_error(tmp_path):
    path = tmp_path / "bigint.json"
    path.write_text('{"traceEvents": [{"ph": "X", "cat": "node", "ts": 0, "dur": 1, "args": {"n": ' + "1" * 5000
                    + "}}]}")
    for fn in (read, load):
        with pytest.raises(TraceError, match="cannot be read: Exceeds the limit"):
            fn(str(path))
