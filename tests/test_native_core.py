"""The C core through its real boundary (the extension module): clock, event
buffers, the JSON escaper, the span wrapper and the trace writer."""

import asyncio
import json
import os
import threading
import traceback

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NODE = 1
PROMPT = 0


@pytest.fixture
def fresh(native):
    """Empty buffers before the test; the real clock and default capacity after."""
    native.drain()
    yield native
    native.set_fake_clock(None)
    native.set_buffer_capacity(65536)
    native.set_enabled(True)
    native.drain()


def in_new_thread(fn):
    """Run fn in a fresh thread (so it gets a new buffer) and return its result."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()))
    t.start()
    t.join()
    return out["r"]


# --- clock ------------------------------------------------------------------


def test_clock_is_monotonic_across_threads(fresh):
    def sample():
        values = [fresh.now_ns() for _ in range(20000)]
        return all(a <= b for a, b in zip(values, values[1:], strict=False)), values[0], values[-1]

    results = []
    threads = [threading.Thread(target=lambda: results.append(sample())) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(ok for ok, _, _ in results)
    assert max(last for _, _, last in results) <= fresh.now_ns()


def test_fake_clock_is_deterministic_and_restorable(fresh):
    fresh.set_fake_clock(1_000, 250)
    assert [fresh.now_ns() for _ in range(3)] == [1_000, 1_250, 1_500]
    fresh.Wrapper(lambda: None, NODE, "f")()
    (event,) = fresh.drain().tolist()
    assert event[:2] == (1_750, 2_000)
    fresh.set_fake_clock(None)
    assert fresh.now_ns() > 10_000


# --- buffers ----------------------------------------------------------------


def test_full_buffer_drops_and_counts_then_wraps(fresh):
    fresh.set_buffer_capacity(8)
    name = fresh.intern("e")
    go, done = threading.Event(), threading.Event()
    stored = []

    def producer():
        stored.append([fresh.record(NODE, name, 0, i, i + 1) for i in range(20)])
        go.wait()
        stored.append([fresh.record(NODE, name, 0, 100 + i, 101 + i) for i in range(6)])
        done.set()

    dropped_before = fresh.dropped()
    t = threading.Thread(target=producer)
    t.start()
    while not stored:
        pass
    assert stored[0] == [True] * 8 + [False] * 12
    assert fresh.dropped() - dropped_before == 12
    first = fresh.drain().tolist()
    assert [e[0] for e in first] == list(range(8))  # the oldest 8, in order
    go.set()
    done.wait()
    t.join()
    assert stored[1] == [True] * 6  # room again; positions 8..13 wrap around the ring of 8
    second = fresh.drain().tolist()
    assert [e[0] for e in second] == list(range(100, 106))
    assert {e[4] for e in first + second} == {t.native_id}
    assert fresh.dropped() - dropped_before == 12


def test_capacity_rounds_up_and_rejects_nonsense(fresh):
    fresh.set_buffer_capacity(5)
    assert fresh.stats()["capacity"] == 8
    for bad in (0, 1 << 30):
        with pytest.raises(ValueError, match=str(bad)):
            fresh.set_buffer_capacity(bad)


def test_dead_threads_buffers_are_drained_then_freed(fresh):
    before = fresh.stats()["buffers"]
    in_new_thread(lambda: fresh.record(NODE, 0, 0, 1, 2))
    assert fresh.stats()["buffers"] == before + 1
    assert len(fresh.drain()) == 1
    assert fresh.stats()["buffers"] == before


def test_record_validates_fields(fresh):
    with pytest.raises(ValueError, match="stage 99"):
        fresh.record(99, 0, 0, 1, 2)
    with pytest.raises(ValueError, match="outcome 9"):
        fresh.record(NODE, 0, 0, 1, 2, 9)
    with pytest.raises(ValueError, match="before t_begin_ns"):
        fresh.record(NODE, 0, 0, 5, 4)


def test_interned_names_round_trip(fresh):
    ids = {s: fresh.intern(s) for s in ("KSampler", "é", "a\x00b", "KSampler ")}
    assert len(set(ids.values())) == 4 and fresh.intern("KSampler") == ids["KSampler"]
    assert all(fresh.name_of(i) == s for s, i in ids.items())
    assert fresh.intern("") == 0 and fresh.intern(None) == 0
    with pytest.raises(KeyError):
        fresh.name_of(1 << 31)


# --- JSON escaper -------------------------------------------------------------

TRICKY_TEXT = ["".join(map(chr, range(0x20))) + "\x7f", 'say "hi" \\ there', "\u2028\u2029", "😀 é ü 中",
               "", "/", "\ufeff"]
INVALID_UTF8 = [b"\x80", b"a\xbfb", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc0\x80", b"\xe0\x80\x80",
                b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xfe\xff", b"\xf8\x88\x80\x80\x80", b"ok\xe2\x28\xa1"]


def _valid_output(out: str):
    assert out.startswith('"') and out.endswith('"')
    assert all(ord(c) >= 0x20 and c != "\x7f" for c in out)  # no raw control characters
    out.encode("utf-8")  # no lone surrogates


@pytest.mark.parametrize("text", TRICKY_TEXT)
def test_escaper_round_trips_valid_text(native, text):
    out = native.json_escape(text)
    _valid_output(out)
    assert json.loads(out) == text
    assert native.json_escape(text.encode()) == out


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_escaper_replaces_each_maximal_invalid_subpart(native, data):
    out = native.json_escape(data)
    _valid_output(out)
    assert json.loads(out) == data.decode("utf-8", "replace")  # CPython uses the same maximal-subpart rule


def test_escaper_replaces_lone_surrogates(native):
    assert json.loads(native.json_escape("a\ud800b")) == "a\ufffd\ufffd\ufffdb"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_escaper_property_bytes(native, data):
    out = native.json_escape(data)
    _valid_output(out)
    assert json.loads(out) == data.decode("utf-8", "replace")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=64))
def test_escaper_property_text(native, text):
    out = native.json_escape(text)
    _valid_output(out)
    assert json.loads(out) == text


# --- the span wrapper -----------------------------------------------------------


def test_wrapper_passes_values_through(fresh):
    def f(a, b=2, *rest, **kw):
        return (a, b, rest, kw)

    w = fresh.Wrapper(f, NODE, "f")
    assert w(1) == (1, 2, (), {})
    assert w(1, 3, 4, x=5) == (1, 3, (4,), {"x": 5})
    assert fresh.Wrapper(lambda: None, NODE, "g")() is None
    sentinel = object()
    assert fresh.Wrapper(lambda: sentinel, NODE, "h")() is sentinel
    assert w.__wrapped__ is f and w.__name__ == "f" and w.stage == NODE and w.name == "f"
    assert [e[6] for e in fresh.drain().tolist()] == [0, 0, 0, 0]


def test_wrapper_reraises_the_exact_exception(fresh):
    error = ValueError("original")

    def raising_frame():
        raise error

    with pytest.raises(ValueError) as caught:
        fresh.Wrapper(raising_frame, NODE, "boom")()
    assert caught.value is error
    assert "raising_frame" in "".join(traceback.format_tb(caught.value.__traceback__))
    (event,) = fresh.drain().tolist()
    assert event[6] == fresh.OUTCOMES.index("error")


def test_wrapper_outcomes_for_interrupts(fresh):
    class Interrupted(Exception):
        pass

    def raise_(exc):
        raise exc

    w = fresh.Wrapper(raise_, NODE, "n", interrupts=Interrupted)
    for exc in (Interrupted(), KeyboardInterrupt(), RuntimeError()):
        with pytest.raises(type(exc)):
            w(exc)
    assert [fresh.OUTCOMES[e[6]] for e in fresh.drain().tolist()] == ["interrupted", "interrupted", "error"]


def test_namer_and_outcome_callbacks(fresh):
    w = fresh.Wrapper(lambda node_id, result: result, NODE, "node",
                      namer=lambda node_id, result: ("KSampler", node_id, fresh.OUTCOMES.index("cached")),
                      outcome=lambda result: fresh.OUTCOMES.index(result))
    assert w("3", "ok") == "ok"
    assert w("4", "pending") == "pending"
    first, second = fresh.drain().tolist()
    assert fresh.name_of(first[2]) == "KSampler" and fresh.name_of(first[3]) == "3"
    assert fresh.OUTCOMES[first[6]] == "cached"  # a plain success takes the namer's hint
    assert fresh.OUTCOMES[second[6]] == "pending"  # a classified result keeps its own outcome


def test_failing_namer_is_dropped_after_three_failures(fresh):
    count_before, _ = fresh.hook_errors()

    def bad_namer(*args):
        raise LookupError("namer broke")

    w = fresh.Wrapper(lambda x: x * 2, NODE, "static", namer=bad_namer)
    assert [w(i) for i in range(5)] == [0, 2, 4, 6, 8]
    count, last = fresh.hook_errors()
    assert count - count_before == 3 and "namer broke" in last
    assert w.has_namer is False
    assert {fresh.name_of(e[2]) for e in fresh.drain().tolist()} == {"static"}


def test_failing_outcome_callback_counts_as_ok(fresh):
    w = fresh.Wrapper(lambda: 5, NODE, "x", outcome=lambda r: 1 / 0)
    assert w() == 5
    (event,) = fresh.drain().tolist()
    assert event[6] == 0 and "division by zero" in fresh.hook_errors()[1]


def test_coroutines_are_timed_until_they_finish(fresh):
    async def work(x):
        await asyncio.sleep(0.02)
        return x + 1

    async def fail():
        await asyncio.sleep(0)
        raise KeyError("k")

    wrapped = fresh.Wrapper(work, NODE, "work", coroutine=True)
    failing = fresh.Wrapper(fail, NODE, "fail", coroutine=True)

    async def main():
        assert await wrapped(1) == 2
        assert await asyncio.gather(wrapped(2), wrapped(3)) == [3, 4]
        with pytest.raises(KeyError):
            await failing()
        assert await asyncio.create_task(wrapped(5)) == 6  # a coroutine to asyncio
        task = asyncio.ensure_future(wrapped(4))
        await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    events = fresh.drain().tolist()
    outcomes = [fresh.OUTCOMES[e[6]] for e in events]
    assert sorted(outcomes) == ["error", "interrupted", "ok", "ok", "ok", "ok"]
    assert all(e[1] - e[0] >= 15_000_000 for e, o in zip(events, outcomes, strict=True) if o == "ok")  # waited 20 ms


def test_class_level_wrapper_binds_self(fresh):
    class Executor:
        def run(self, x):
            return (self, x)

    Executor.run = fresh.Wrapper(Executor.run, PROMPT, "run")
    e = Executor()
    assert e.run(7) == (e, 7)
    assert Executor.run(e, 8) == (e, 8)


def test_disabled_recording_records_nothing(fresh):
    w = fresh.Wrapper(lambda: 1, NODE, "x")
    fresh.set_enabled(False)
    assert w() == 1 and not fresh.enabled()
    fresh.set_enabled(True)
    assert len(fresh.drain()) == 0


def test_wrapper_across_threads(fresh):
    w = fresh.Wrapper(lambda i: i, NODE, "t")
    tids = []

    def worker():
        tids.append(threading.get_native_id())
        assert [w(i) for i in range(1000)] == list(range(1000))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    events = fresh.drain().tolist()
    per_thread = {tid: sum(1 for e in events if e[4] == tid) for tid in tids}
    assert per_thread == {tid: 1000 for tid in tids}


def test_wrapper_rejects_bad_arguments(native):
    with pytest.raises(TypeError):
        native.Wrapper(42, NODE, "x")
    with pytest.raises(ValueError, match="stage 77"):
        native.Wrapper(print, 77, "x")
    with pytest.raises(TypeError):
        native.Wrapper(print, NODE, "x", namer=3)


# --- the trace writer -------------------------------------------------------------


def test_writer_output_is_valid_nested_json(fresh, tmp_path):
    inner = fresh.Wrapper(lambda: None, NODE, 'Node "quoted"\n', detail="5")
    fresh.Wrapper(lambda: inner(), PROMPT, "prompt", detail="p")()
    fresh.record(NODE, fresh.intern("mark"), 0, fresh.now_ns(), fresh.now_ns(), instant=True)
    path = tmp_path / "t.trace.json"
    w = fresh.TraceWriter(str(path))
    w.write_batch(fresh.drain(), 42)
    w.write_raw('{"ph":"M","name":"process_name","pid":42,"args":{"name":"x"}}')
    assert not path.exists()  # nothing at the final name before commit
    w.commit('{"k":[1,2]}')
    assert w.closed and w.events == 4
    trace = json.loads(path.read_text())
    assert trace["otherData"] == {"k": [1, 2]} and trace["stagetraceFormat"] == 1
    inner_ev, outer_ev, mark, meta = trace["traceEvents"]
    assert inner_ev["name"] == 'Node "quoted"\n' and inner_ev["args"] == {"outcome": "ok", "node_id": "5"}
    assert outer_ev["args"]["prompt_id"] == "p"
    assert outer_ev["ts"] <= inner_ev["ts"] and inner_ev["ts"] + inner_ev["dur"] <= outer_ev["ts"] + outer_ev["dur"]
    assert mark["ph"] == "i" and "dur" not in mark and meta["ph"] == "M"
    assert os.listdir(tmp_path) == ["t.trace.json"]


def test_writer_never_overwrites(fresh, tmp_path):
    path = tmp_path / "taken.trace.json"
    path.write_text("precious")
    w = fresh.TraceWriter(str(path))
    with pytest.raises(FileExistsError, match="taken.trace.json"):
        w.commit()
    assert path.read_text() == "precious" and os.listdir(tmp_path) == ["taken.trace.json"]


def test_writer_abort_and_unfinished_block_leave_nothing(fresh, tmp_path):
    w = fresh.TraceWriter(str(tmp_path / "a.trace.json"))
    w.write_raw('{"ph":"M"}')
    w.abort()
    with fresh.TraceWriter(str(tmp_path / "b.trace.json")) as w2:
        w2.write_raw('{"ph":"M"}')
    del w2
    fresh.TraceWriter(str(tmp_path / "c.trace.json"))  # dropped unreferenced
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="closed"):
        w.write_raw("{}")


def test_writer_errors_name_the_path(fresh, tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "t.trace.json"
    with pytest.raises(OSError, match="no/such/dir/t.trace.json"):
        fresh.TraceWriter(str(missing))
    w = fresh.TraceWriter(str(tmp_path / "x.trace.json"))
    with pytest.raises(ValueError, match="one JSON object"):
        w.write_raw("[1]")
    w.abort()
