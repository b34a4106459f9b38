"""The C core through its real boundary, the extension module: clock, event
buffers, the JSON escaper, the span wrapper and the trace writer. No mocks:
every test drives _native and checks what it recorded or wrote."""

import asyncio
import json
import os
import queue
import threading
import time
import traceback

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROMPT, NODE, READ, STEP, OTHER = 0, 1, 2, 8, 12  # indices into STAGES (checked below)
SPAN, INSTANT = 0, 1
DEFAULT_CAPACITY = 65536


@pytest.fixture
def fresh(native):
    """Empty buffers before the test; real clock, default capacity, recording on after."""
    native.drain()  # drain() takes every thread's events: start from nothing
    try:
        yield native
    finally:
        native.set_fake_clock(None)
        native.set_buffer_capacity(DEFAULT_CAPACITY)
        native.set_enabled(True)
        native.drain()


class Worker:
    """One long-lived thread that runs the callables handed to run(), so every
    call appends to the same per-thread buffer (created on its first append)."""

    def __init__(self):
        self._jobs = queue.Queue()
        self._results = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        self.tid = self.run(threading.get_native_id)

    def _loop(self):
        while (job := self._jobs.get()) is not None:
            try:
                self._results.put((True, job()))
            except BaseException as exc:  # handed back to the caller
                self._results.put((False, exc))

    def run(self, fn):
        self._jobs.put(fn)
        ok, value = self._results.get(timeout=60)
        if not ok:
            raise value
        return value

    def stop(self):
        self._jobs.put(None)
        join_fully([self._thread])


def join_fully(threads):
    """Join the threads and wait until each OS thread is gone. Thread.join()
    returns before the OS thread runs its exit handlers, one of which marks its
    event buffer dead (measured: up to a few ms later); waiting for
    /proc/self/task/<tid> to vanish makes "the thread has exited" exact."""
    deadline = time.monotonic() + 10
    for t in threads:
        t.join()
        while os.path.exists(f"/proc/self/task/{t.native_id}"):
            assert time.monotonic() < deadline, f"thread {t.native_id} still exiting after 10 s"
            time.sleep(0.0005)


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.stop()


def test_stage_and_outcome_indices(native):
    assert [native.STAGES[i] for i in (PROMPT, NODE, READ, STEP, OTHER)] == [
        "prompt",
        "node",
        "model_load.read",
        "sample.step",
        "other",
    ]
    assert native.OUTCOMES == ("ok", "error", "interrupted", "pending", "cached")
    assert len(native.STAGE_COLOURS) == len(native.STAGES)


# --- clock ------------------------------------------------------------------


def test_clock_never_goes_back_within_a_thread(fresh):
    def sample():
        values = [fresh.now_ns() for _ in range(50_000)]
        return all(a <= b for a, b in zip(values, values[1:], strict=False))

    results = []
    threads = [threading.Thread(target=lambda: results.append(sample())) for _ in range(4)]
    [t.start() for t in threads]
    join_fully(threads)
    assert results == [True] * 4


def test_clock_never_goes_back_across_threads(fresh):
    """Two threads take turns (each turn happens-after the previous one): the
    merged sequence of timestamps is still non-decreasing."""
    turns = [threading.Event() for _ in range(2)]
    stamps = []

    def player(me):
        for _ in range(500):
            turns[me].wait()
            turns[me].clear()
            stamps.append(fresh.now_ns())
            turns[1 - me].set()

    threads = [threading.Thread(target=player, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    turns[0].set()
    join_fully(threads)
    assert len(stamps) == 1000
    assert all(a <= b for a, b in zip(stamps, stamps[1:], strict=False))


def test_clock_is_the_monotonic_clock(fresh):
    before = time.monotonic_ns()
    now = fresh.now_ns()
    after = time.monotonic_ns()
    assert before <= now <= after


def test_fake_clock_is_deterministic(fresh):
    def run_once():
        fresh.set_fake_clock(1_000, 250)
        stamps = [fresh.now_ns() for _ in range(3)]
        fresh.Wrapper(lambda: None, NODE, "f")()
        return stamps, fresh.drain().tolist()

    first, second = run_once(), run_once()
    assert first == second
    stamps, (event,) = first
    assert stamps == [1_000, 1_250, 1_500]
    assert event[:2] == (1_750, 2_000)  # the wrapper took exactly two readings
    fresh.set_fake_clock(7_000)  # default step: 1 us
    assert [fresh.now_ns() for _ in range(3)] == [7_000, 8_000, 9_000]


def test_fake_clock_is_process_wide_and_restorable(fresh, worker):
    fresh.set_fake_clock(50, 10)
    assert fresh.now_ns() == 50
    assert worker.run(fresh.now_ns) == 60  # other threads share the one fake clock
    fresh.set_fake_clock(None)
    before = time.monotonic_ns()
    assert fresh.now_ns() >= before and worker.run(fresh.now_ns) >= before


# --- buffers ----------------------------------------------------------------


def test_full_buffer_keeps_the_oldest_and_counts_drops(fresh):
    fresh.set_buffer_capacity(8)
    worker = Worker()  # a new thread: its buffer is created with capacity 8
    try:
        name, detail = fresh.intern("ring.event"), fresh.intern("d-1")
        dropped_before = fresh.dropped()

        def append_20():
            return [fresh.record(NODE, name, detail, 1000 * i, 1000 * i + 500, i % 5) for i in range(20)]

        assert worker.run(append_20) == [True] * 8 + [False] * 12
        assert fresh.dropped() - dropped_before == 12
        assert fresh.stats()["dropped"] == fresh.dropped()
        batch = fresh.drain()
        expected = [(1000 * i, 1000 * i + 500, name, detail, worker.tid, NODE, i % 5, SPAN, None, 0) for i in range(8)]
        assert len(batch) == 8 and batch.tolist() == expected  # the oldest 8, oldest first
        assert [batch[i] for i in range(8)] == expected and batch[-1] == expected[-1]
        with pytest.raises(IndexError):
            batch[8]
        assert len(fresh.drain()) == 0  # drained means gone
    finally:
        worker.stop()


def test_ring_wraps_and_keeps_order_after_drains(fresh):
    fresh.set_buffer_capacity(8)
    worker = Worker()
    try:
        name = fresh.intern("wrap")

        def append(start, count, instant=False):
            return [fresh.record(OTHER, name, 0, t, t + 1, instant=instant) for t in range(start, start + count)]

        dropped_before = fresh.dropped()
        assert worker.run(lambda: append(0, 5)) == [True] * 5
        assert [e[0] for e in fresh.drain()] == list(range(5))  # positions 0..4 consumed
        # positions 5..12 land in slots 5,6,7,0,1,2,3,4: across the end of the ring
        assert worker.run(lambda: append(100, 9)) == [True] * 8 + [False]
        assert [e[0] for e in fresh.drain().tolist()] == list(range(100, 108))
        assert worker.run(lambda: append(200, 3, instant=True)) == [True] * 3  # slots 5,6,7
        assert worker.run(lambda: append(300, 5)) == [True] * 5  # slots 0..4: full again
        assert worker.run(lambda: append(400, 1)) == [False]
        events = fresh.drain().tolist()
        assert [e[0] for e in events] == [200, 201, 202, 300, 301, 302, 303, 304]
        assert [e[7] for e in events] == [INSTANT] * 3 + [SPAN] * 5
        assert all(e[1] == e[0] for e in events[:3])  # an instant has no duration
        assert {e[4] for e in events} == {worker.tid}
        assert fresh.dropped() - dropped_before == 2
    finally:
        worker.stop()


def test_capacity_applies_to_new_threads_only(fresh, worker):
    name = fresh.intern("cap")
    assert worker.run(lambda: fresh.record(NODE, name, 0, 0, 1))  # buffer made at 65536
    fresh.set_buffer_capacity(2)
    assert all(worker.run(lambda: [fresh.record(NODE, name, 0, i, i + 1) for i in range(10)]))
    newcomer = Worker()
    try:
        assert (
            newcomer.run(lambda: [fresh.record(NODE, name, 0, i, i + 1) for i in range(4)]) == [True] * 2 + [False] * 2
        )
    finally:
        newcomer.stop()


@pytest.mark.parametrize(
    ("asked", "rounded"), [(1, 1), (2, 2), (5, 8), (8, 8), (9, 16), (1000, 1024), (1 << 24, 1 << 24)]
)
def test_capacity_rounds_up_to_a_power_of_two(fresh, asked, rounded):
    fresh.set_buffer_capacity(asked)
    assert fresh.stats()["capacity"] == rounded


def test_rounded_capacity_is_what_a_new_buffer_holds(fresh):
    fresh.set_buffer_capacity(5)
    worker = Worker()
    try:
        stored = worker.run(lambda: [fresh.record(NODE, 0, 0, i, i + 1) for i in range(10)])
        assert stored == [True] * 8 + [False] * 2
    finally:
        worker.stop()


@pytest.mark.parametrize("bad", [0, -5, (1 << 24) + 1, 1 << 30, 1 << 32, 1 << 70])
def test_bad_capacity_is_refused_by_value(fresh, bad):
    fresh.set_buffer_capacity(64)
    with pytest.raises(ValueError, match=rf"capacity {bad} is not within"):
        fresh.set_buffer_capacity(bad)
    assert fresh.stats()["capacity"] == 64  # unchanged


def test_dead_threads_buffers_are_drained_then_freed(fresh):
    fresh.drain()  # frees the buffers of threads earlier tests left (joined fully)
    before = fresh.stats()["buffers"]
    worker = Worker()
    worker.run(lambda: fresh.record(NODE, 0, 0, 1, 2))
    assert fresh.stats()["buffers"] == before + 1
    worker.stop()  # the thread is gone with one event still buffered
    assert fresh.stats()["buffers"] == before + 1  # kept until drained
    (event,) = fresh.drain().tolist()
    assert event[4] == worker.tid  # its events survive the thread
    assert fresh.stats()["buffers"] == before  # then the buffer is freed


FORK_SCRIPT = """
import os, signal, sys, threading
from comfy_nodes import _native as n
STEP = n.STAGES.index("sample.step")
stop = threading.Event()
def hammer(k):
    i = 0
    while not stop.is_set():
        n.stage_end(n.stage_begin(STEP, f"parent {k}"), {"i": i})
        n.Wrapper(lambda: None, 1, f"wrapped {i % 50}")()
        i += 1
def drain():
    while not stop.is_set():
        n.drain()
threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)] + [threading.Thread(target=drain)]
[t.start() for t in threads]
codes = []
for _ in range(10):
    pid = os.fork()
    if pid == 0:  # the child: its own buffer only, and it records
        signal.alarm(10)
        if n.stats()["buffers"] > 1:
            os._exit(3)
        for j in range(100):
            n.stage_end(n.stage_begin(STEP, "child"), {"j": j})
        names = [e["name"] for e in n.drain().events()]
        os._exit(0 if names == ["child"] * 100 else 4)
    _, status = os.waitpid(pid, 0)
    codes.append(os.waitstatus_to_exitcode(status))
stop.set()
[t.join() for t in threads]
print(codes)
"""


def test_fork_while_threads_record_gives_a_child_that_records_and_exits(native):
    """os.fork() while four threads record spans and one drains: each child starts with only its own (empty)
    buffer, records, drains exactly its own events and exits (its alarm turns a deadlock into a failure)."""
    import subprocess
    import sys
    try:
        done = subprocess.run([sys.executable, "-c", FORK_SCRIPT], cwd=os.path.dirname(os.path.dirname(__file__)),
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a forked child or the parent hung")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([0] * 10), done.stdout + done.stderr  # -14 would be the child's alarm


def test_record_validates_fields(fresh):
    with pytest.raises(ValueError, match="stage 99"):
        fresh.record(99, 0, 0, 1, 2)
    with pytest.raises(ValueError, match="outcome 9"):
        fresh.record(NODE, 0, 0, 1, 2, 9)
    with pytest.raises(ValueError, match="before t_begin_ns"):
        fresh.record(NODE, 0, 0, 5, 4)
    assert len(fresh.drain()) == 0


def test_interned_names_round_trip(fresh):
    ids = {s: fresh.intern(s) for s in ("KSampler", "é", "a\x00b", "KSampler ", "😀")}
    assert len(set(ids.values())) == len(ids) and fresh.intern("KSampler") == ids["KSampler"]
    assert all(fresh.name_of(i) == s for s, i in ids.items())
    assert fresh.intern("") == 0 and fresh.intern(None) == 0
    with pytest.raises(KeyError):
        fresh.name_of(1 << 31)
    with pytest.raises(TypeError):
        fresh.intern(b"bytes")


# --- JSON escaper -------------------------------------------------------------

SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


@pytest.mark.parametrize("code", [*range(0x20), 0x7F])
def test_escaper_escapes_every_control_character(native, code):
    expected = SHORT_ESCAPES.get(code, f"\\u{code:04x}")
    out = native.json_escape(f"a{chr(code)}b")
    assert out == f'"a{expected}b"'
    assert json.loads(out) == f"a{chr(code)}b"


@pytest.mark.parametrize(
    ("text", "escaped"), [('say "hi"', '"say \\"hi\\""'), ("C:\\dir\\", '"C:\\\\dir\\\\"'), ("/", '"/"'), ("", '""')]
)
def test_escaper_quotes_and_backslashes_exactly(native, text, escaped):
    assert native.json_escape(text) == escaped
    assert json.loads(escaped) == text


VALID_TEXT = [
    "\u2028 and \u2029",
    "😀 é ü 中 \U0010ffff",
    "\ufeffbom",
    'mixed \x00\x1f"\\ 😀 \u2028 \x7f end',
    "x" * 5000,
]


@pytest.mark.parametrize("text", VALID_TEXT)
def test_escaper_keeps_valid_text(native, text):
    out = native.json_escape(text)
    assert json.loads(out) == text
    assert native.json_escape(text.encode()) == out  # str and its UTF-8 bytes agree
    for ch in text:  # non-ASCII characters pass through raw, as UTF-8
        if ord(ch) > 0x7F:
            assert ch in out


# Each maximal ill-formed subpart becomes one U+FFFD (Unicode ch. 3, "U+FFFD
# substitution of maximal subparts"); the expected text is written out by hand.
R = "\ufffd"
INVALID_UTF8 = [
    (b"\x80", R),  # stray continuation
    (b"a\xbfb", f"a{R}b"),
    (b"\x80\x80\x80", R * 3),
    (b"\xc3", R),  # truncated 2-byte
    (b"\xc3a", f"{R}a"),
    (b"\xe2\x82", R),  # truncated 3-byte: one subpart
    (b"\xe2\x82a", f"{R}a"),
    (b"\xf0\x9f\x98", R),  # truncated 4-byte
    (b"\xf0\x9f\x98a", f"{R}a"),
    (b"\xc0\x80", R * 2),  # overlong NUL: C0 is never valid
    (b"\xc1\xbf", R * 2),
    (b"\xe0\x80\x80", R * 3),  # overlong 3-byte: E0 needs A0..BF next
    (b"\xf0\x80\x80\x80", R * 4),
    (b"\xed\xa0\x80", R * 3),  # UTF-16 surrogate D800
    (b"\xed\xbf\xbf", R * 3),
    (b"\xf4\x90\x80\x80", R * 4),  # above U+10FFFF
    (b"\xf5\x80\x80\x80", R * 4),
    (b"\xfe", R),
    (b"\xff", R),
    (b"\xfe\xff", R * 2),
    (b"\xf8\x88\x80\x80\x80", R * 5),  # old 5-byte form
    (b"ok\xe2\x28\xa1", f"ok{R}({R}"),
    (b"\x61\xf1\x80\x80\xe1\x80\xc2\x62\x80\x63\x80\xbf\x64", f"a{R}{R}{R}b{R}c{R}{R}d"),  # the standard's example
    (b"\xed\x9f\xbf\xee\x80\x80", "\ud7ff\ue000"),  # just outside the surrogates: valid
    (b"\xf4\x8f\xbf\xbf", "\U0010ffff"),  # the last code point: valid
]


@pytest.mark.parametrize(("data", "expected"), INVALID_UTF8)
def test_cpython_replace_is_the_maximal_subpart_rule(data, expected):
    """The property tests compare against bytes.decode('utf-8', 'replace'): check it is the same rule."""
    assert data.decode("utf-8", "replace") == expected


@pytest.mark.parametrize(("data", "expected"), INVALID_UTF8)
def test_escaper_replaces_each_maximal_invalid_subpart(native, data, expected):
    out = native.json_escape(data)
    assert json.loads(out) == expected
    assert_valid_literal(out)


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "\udcff", "\ud83d\ude00"])
def test_escaper_replaces_lone_surrogates(native, text):
    # str is passed on as surrogatepass UTF-8; each surrogate is 3 ill-formed bytes
    out = native.json_escape(text)
    assert json.loads(out) == text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert "\ufffd" in json.loads(out)
    assert_valid_literal(out)


def assert_valid_literal(out: str):
    """One JSON string literal, valid UTF-8, no raw control characters."""
    assert out.startswith('"') and out.endswith('"') and len(out) >= 2
    assert not any(ord(c) < 0x20 or c == "\x7f" for c in out)
    assert out.encode("utf-8").decode("utf-8") == out  # no lone surrogates: encodable


PROPERTY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(st.binary(max_size=80))
def test_escaper_property_random_bytes(native, data):
    out = native.json_escape(data)
    assert_valid_literal(out)
    assert json.loads(out) == data.decode("utf-8", "replace")


@PROPERTY
@given(
    st.lists(
        st.sampled_from(
            [
                b"\x80",
                b"\xbf",
                b"\xc2",
                b"\xe0",
                b"\xed",
                b"\xf0",
                b"\xf4",
                b"\xa0",
                b"\x90",
                b"\x8f",
                b"\x9f",
                b"\xff",
                b"a",
                b'"',
                b"\\",
                b"\n",
                b"\xc3\xa9",
                b"\xe2\x82\xac",
            ]
        ),
        max_size=30,
    ).map(b"".join)
)
def test_escaper_property_lead_and_continuation_soup(native, data):
    """Random bytes rarely form near-valid sequences; this mixes lead and continuation bytes."""
    out = native.json_escape(data)
    assert_valid_literal(out)
    assert json.loads(out) == data.decode("utf-8", "replace")


@PROPERTY
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=80))
def test_escaper_property_random_text(native, text):
    out = native.json_escape(text)
    assert_valid_literal(out)
    assert json.loads(out) == text
    assert native.json_escape(text.encode("utf-8")) == out


@PROPERTY
@given(st.text(max_size=40))
def test_escaper_property_text_with_surrogates(native, text):
    out = native.json_escape(text)
    assert_valid_literal(out)
    assert json.loads(out) == text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def test_escaper_rejects_other_types(native):
    with pytest.raises(TypeError):
        native.json_escape(42)


# --- the span wrapper -----------------------------------------------------------


def outcome_names(native, events):
    return [native.OUTCOMES[e[6]] for e in events]


def test_wrapper_passes_values_through(fresh):
    def f(a, b=2, *rest, **kw):
        return (a, b, rest, kw)

    w = fresh.Wrapper(f, NODE, "f")
    assert w(1) == (1, 2, (), {})
    assert w(1, 3, 4, x=5) == (1, 3, (4,), {"x": 5})
    assert w(a=7, b=8) == (7, 8, (), {})
    assert w(*(1, 2, 3), **{"k": None}) == (1, 2, (3,), {"k": None})
    assert fresh.Wrapper(lambda: None, NODE, "g")() is None
    sentinel = object()
    assert fresh.Wrapper(lambda: sentinel, NODE, "h")() is sentinel
    assert fresh.Wrapper(lambda: (sentinel, None), NODE, "t")() == (sentinel, None)
    events = fresh.drain().tolist()
    assert len(events) == 7 and outcome_names(fresh, events) == ["ok"] * 7
    assert [fresh.name_of(e[2]) for e in events] == ["f"] * 4 + ["g", "h", "t"]
    assert {e[5] for e in events} == {NODE} and {e[7] for e in events} == {SPAN}
    assert all(e[0] <= e[1] for e in events)


def test_wrapper_forwards_identity_attributes(fresh):
    def compute(x):
        return x

    w = fresh.Wrapper(compute, NODE, "span name", detail="9")
    assert w.__wrapped__ is compute and w.__name__ == "compute" and w.__qualname__ == compute.__qualname__
    assert w.stage == NODE and w.name == "span name"
    assert "span name" in repr(w)
    with pytest.raises(AttributeError):
        w.no_such_attribute  # noqa: B018


def test_wrapper_reraises_the_exact_exception(fresh):
    error = ValueError("original")

    def raising_frame():
        raise error

    with pytest.raises(ValueError) as caught:
        fresh.Wrapper(raising_frame, NODE, "boom")()
    assert caught.value is error
    frames = [f.name for f in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "raising_frame"  # the raising frame is still the last one
    (event,) = fresh.drain().tolist()
    assert fresh.OUTCOMES[event[6]] == "error"


def test_wrapper_keeps_exception_context(fresh):
    def chained():
        try:
            {}["missing"]
        except KeyError as inner:
            raise RuntimeError("outer") from inner

    with pytest.raises(RuntimeError) as caught:
        fresh.Wrapper(chained, NODE, "c")()
    assert isinstance(caught.value.__cause__, KeyError)


def test_wrapper_outcomes_for_interrupts(fresh):
    class Interrupted(Exception):
        pass

    class Stopped(Exception):
        pass

    def raise_(exc):
        raise exc

    w = fresh.Wrapper(raise_, NODE, "n", interrupts=Interrupted)
    several = fresh.Wrapper(raise_, NODE, "n", interrupts=(Interrupted, Stopped))
    plain = fresh.Wrapper(raise_, NODE, "n")
    for wrapper, exc in [
        (w, Interrupted()),
        (w, KeyboardInterrupt()),
        (w, RuntimeError()),
        (w, Stopped()),
        (several, Stopped()),
        (plain, Interrupted()),
        (plain, SystemExit(1)),
    ]:
        with pytest.raises(type(exc)) as caught:
            wrapper(exc)
        assert caught.value is exc
    assert outcome_names(fresh, fresh.drain().tolist()) == [
        "interrupted",
        "interrupted",
        "error",
        "error",
        "interrupted",
        "error",
        "interrupted",
    ]


def test_namer_and_outcome_callbacks(fresh):
    seen = []

    def namer(node_id, result):
        seen.append((node_id, result))
        return ("KSampler", node_id, fresh.OUTCOMES.index("cached"))

    w = fresh.Wrapper(
        lambda node_id, result: result, NODE, "node", namer=namer, outcome=lambda result: fresh.OUTCOMES.index(result)
    )
    assert w("3", "ok") == "ok"
    assert w("4", "pending") == "pending"
    assert w(node_id="5", result="error") == "error"
    assert seen == [("3", "ok"), ("4", "pending"), ("5", "error")]  # the namer sees the call's arguments
    first, second, third = fresh.drain().tolist()
    assert fresh.name_of(first[2]) == "KSampler" and fresh.name_of(first[3]) == "3"
    assert fresh.name_of(third[3]) == "5"
    assert fresh.OUTCOMES[first[6]] == "cached"  # a plain success takes the namer's hint
    assert fresh.OUTCOMES[second[6]] == "pending"  # a classified result keeps its own outcome
    assert fresh.OUTCOMES[third[6]] == "error"


def test_namer_with_two_fields_and_empty_name(fresh):
    w = fresh.Wrapper(lambda x: x, NODE, "static", namer=lambda x: ("" if x else "dynamic", None))
    w(0)
    w(1)
    a, b = fresh.drain().tolist()
    assert fresh.name_of(a[2]) == "dynamic" and a[3] == 0 and a[6] == 0
    assert fresh.name_of(b[2]) == "static"  # an empty name keeps the static one


def test_failing_namer_is_dropped_after_three_failures(fresh):
    count_before, _ = fresh.hook_errors()
    calls = []

    def bad_namer(x):
        calls.append(x)
        raise LookupError("namer broke")

    w = fresh.Wrapper(lambda x: x * 2, NODE, "static", namer=bad_namer)
    assert w.has_namer is True
    assert [w(i) for i in range(5)] == [0, 2, 4, 6, 8]
    count, last = fresh.hook_errors()
    assert count - count_before == 3 and "namer broke" in last
    assert calls == [0, 1, 2]  # dropped after the third failure, never called again
    assert w.has_namer is False
    events = fresh.drain().tolist()
    assert len(events) == 5 and {fresh.name_of(e[2]) for e in events} == {"static"}
    assert outcome_names(fresh, events) == ["ok"] * 5


@pytest.mark.parametrize("result", [("only one",), ["name", "detail"], ("n", 5), ("n", "d", 99), "str"])
def test_malformed_namer_results_are_hook_errors(fresh, result):
    count_before, _ = fresh.hook_errors()
    w = fresh.Wrapper(lambda: "value", NODE, "static", namer=lambda: result)
    assert w() == "value"
    assert fresh.hook_errors()[0] == count_before + 1
    (event,) = fresh.drain().tolist()
    assert fresh.name_of(event[2]) == "static"


def test_failing_outcome_callback_counts_as_ok(fresh):
    count_before, _ = fresh.hook_errors()
    w = fresh.Wrapper(lambda: 5, NODE, "x", outcome=lambda r: 1 / 0)
    assert w() == 5
    (event,) = fresh.drain().tolist()
    assert event[6] == 0
    count, last = fresh.hook_errors()
    assert count == count_before + 1 and "division by zero" in last


def test_hook_errors_do_not_clobber_the_host_exception(fresh):
    error = KeyError("host")

    def host():
        raise error

    with pytest.raises(KeyError) as caught:
        fresh.Wrapper(host, NODE, "x", namer=lambda: 1 / 0, outcome=lambda r: 1 / 0)()
    assert caught.value is error and caught.value.__context__ is None


def test_coroutines_are_timed_until_they_finish(fresh):
    async def work(x):
        await asyncio.sleep(0.02)
        return x + 1

    async def fail():
        await asyncio.sleep(0)
        raise KeyError("k")

    wrapped = fresh.Wrapper(work, NODE, "work", coroutine=True)
    failing = fresh.Wrapper(fail, NODE, "fail", coroutine=True)
    key_error = []

    async def main():
        assert await wrapped(1) == 2
        with pytest.raises(KeyError) as caught:
            await failing()
        key_error.append(caught.value)

    asyncio.run(main())
    ok, err = fresh.drain().tolist()
    assert outcome_names(fresh, [ok, err]) == ["ok", "error"]
    assert ok[1] - ok[0] >= 15_000_000  # the span covers the 20 ms await, not just the call
    assert key_error[0].args == ("k",)


def test_coroutine_tasks_gather_and_cancellation(fresh):
    async def work(x, delay):
        await asyncio.sleep(delay)
        return x * 10

    wrapped = fresh.Wrapper(work, NODE, "work", coroutine=True)
    names = []

    async def main():
        aw = wrapped(0, 0)
        assert asyncio.iscoroutine(aw)  # SpanAwait is registered as a collections.abc.Coroutine
        assert await aw == 0
        task = asyncio.create_task(wrapped(5, 0))
        names.append(repr(task))  # asyncio can describe the task
        assert await task == 50
        assert await asyncio.gather(wrapped(2, 0.01), wrapped(3, 0)) == [20, 30]
        slow = asyncio.ensure_future(wrapped(4, 10))
        await asyncio.sleep(0.01)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(wrapped(6, 10), 0.01)

    asyncio.run(main())
    events = fresh.drain().tolist()
    assert sorted(outcome_names(fresh, events)) == ["interrupted"] * 2 + ["ok"] * 4
    assert names and names[0].startswith("<Task")


def test_coroutine_that_catches_a_thrown_exception(fresh):
    caught = []

    async def stubborn():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            caught.append(True)
            return "recovered"

    async def main():
        task = asyncio.create_task(fresh.Wrapper(stubborn, NODE, "s", coroutine=True)())
        await asyncio.sleep(0.01)
        task.cancel()
        return await task

    assert asyncio.run(main()) == "recovered"
    (event,) = fresh.drain().tolist()
    assert caught == [True] and fresh.OUTCOMES[event[6]] == "ok"  # it finished normally


def test_coroutine_driven_by_hand(fresh):
    async def two_steps():
        await asyncio.sleep(0)
        return "done"

    aw = fresh.Wrapper(two_steps, NODE, "manual", coroutine=True)()
    assert aw.send(None) is None  # asyncio.sleep(0) yields a bare None
    with pytest.raises(StopIteration) as stop:
        aw.send(None)
    assert stop.value.value == "done"
    abandoned = fresh.Wrapper(two_steps, NODE, "abandoned", coroutine=True)()
    abandoned.send(None)
    abandoned.close()
    events = fresh.drain().tolist()
    assert [(fresh.name_of(e[2]), fresh.OUTCOMES[e[6]]) for e in events] == [
        ("manual", "ok"),
        ("abandoned", "interrupted"),
    ]


def test_sync_wrapper_returning_a_coroutine_still_times_it(fresh):
    """coroutine=False (the default) only skips NVTX push/pop; a returned coroutine is still awaited-timed."""

    async def later():
        await asyncio.sleep(0.02)
        return 1

    assert asyncio.run(fresh.Wrapper(later, NODE, "later")()) == 1
    (event,) = fresh.drain().tolist()
    assert event[1] - event[0] >= 15_000_000


def test_class_level_wrapper_binds_self(fresh):
    class Executor:
        def run(self, x):
            return (self, x)

    original = Executor.run
    Executor.run = fresh.Wrapper(original, PROMPT, "run")
    e = Executor()
    assert e.run(7) == (e, 7)
    assert Executor.run(e, 8) == (e, 8)  # through the class: unbound, like a function
    assert Executor.__dict__["run"].__wrapped__ is original
    assert e.run.__self__ is e
    events = fresh.drain().tolist()
    assert len(events) == 2 and {fresh.name_of(ev[2]) for ev in events} == {"run"}


def test_disabled_recording_records_nothing(fresh):
    async def coro():
        return 2

    w = fresh.Wrapper(lambda: 1, NODE, "x", namer=lambda: 1 / 0)
    c = fresh.Wrapper(coro, NODE, "c", coroutine=True)
    errors_before = fresh.hook_errors()[0]
    fresh.set_enabled(False)
    assert not fresh.enabled()
    assert w() == 1
    aw = c()
    assert type(aw).__name__ == "coroutine"  # the plain coroutine, no SpanAwait
    assert asyncio.run(aw) == 2
    assert fresh.hook_errors()[0] == errors_before  # the namer was not even called
    fresh.set_enabled(True)
    assert fresh.enabled()
    assert len(fresh.drain()) == 0
    assert w() == 1 and len(fresh.drain()) == 1


def test_wrapper_across_threads(fresh):
    w = fresh.Wrapper(lambda i: i, NODE, "t", namer=lambda i: ("t", str(i)))
    start = threading.Barrier(8)  # all alive at once: eight distinct thread ids
    tids, errors = [], []

    def worker():
        tids.append(threading.get_native_id())
        start.wait()
        results = [w(i) for i in range(1000)]
        if results != list(range(1000)):
            errors.append(results)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in threads]
    join_fully(threads)
    assert not errors and len(set(tids)) == 8
    events = fresh.drain().tolist()
    assert len(events) == 8000
    for tid in tids:  # each call recorded once, on its own thread, in call order
        mine = [e for e in events if e[4] == tid]
        assert [fresh.name_of(e[3]) for e in mine] == [str(i) for i in range(1000)]


def test_wrapper_rejects_bad_arguments(native):
    with pytest.raises(TypeError):
        native.Wrapper(42, NODE, "x")
    with pytest.raises(ValueError, match="stage 77"):
        native.Wrapper(print, 77, "x")
    with pytest.raises(TypeError):
        native.Wrapper(print, NODE, "x", namer=3)
    with pytest.raises(TypeError):
        native.Wrapper(print, NODE, b"x")
    with pytest.raises(TypeError):
        native.SpanAwait()


# --- the trace writer -------------------------------------------------------------


def read_trace(path):
    raw = path.read_bytes()
    raw.decode("utf-8")  # strict: the file is valid UTF-8
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_writer_output_is_valid_nested_json(fresh, tmp_path):
    inner = fresh.Wrapper(lambda: None, NODE, 'Node "quoted"\n\ud800', detail="5")
    fresh.Wrapper(lambda: [inner(), inner()], PROMPT, "prompt", detail="p")()
    fresh.record(NODE, fresh.intern("mark"), 0, fresh.now_ns(), fresh.now_ns(), instant=True)
    path = tmp_path / "t.trace.json"
    w = fresh.TraceWriter(str(path))
    w.write_batch(fresh.drain(), 42)
    w.write_raw('{"ph":"M","name":"process_name","pid":42,"args":{"name":"x"}}')
    w.commit('{"k":[1,2]}')
    assert w.closed and w.events == 5
    trace = read_trace(path)
    assert trace["otherData"] == {"k": [1, 2]} and trace["stagetraceFormat"] == fresh.TRACE_FORMAT_VERSION
    first, second, outer, mark, meta = trace["traceEvents"]
    assert first["name"] == 'Node "quoted"\n\ufffd\ufffd\ufffd'  # the lone surrogate, replaced
    assert first["args"] == {"outcome": "ok", "node_id": "5"} and first["cat"] == "node"
    assert outer["args"] == {"outcome": "ok", "prompt_id": "p"} and outer["cat"] == "prompt"
    for span in (first, second):  # spans recorded inside another, on the same thread: within it
        assert span["ph"] == outer["ph"] == "X" and span["tid"] == outer["tid"] and span["pid"] == 42
        assert outer["ts"] <= span["ts"] and span["ts"] + span["dur"] <= outer["ts"] + outer["dur"]
    assert first["ts"] + first["dur"] <= second["ts"]
    assert mark["ph"] == "i" and mark["s"] == "t" and "dur" not in mark
    assert meta == {"ph": "M", "name": "process_name", "pid": 42, "args": {"name": "x"}}
    assert os.listdir(tmp_path) == ["t.trace.json"]


def test_writer_times_are_exact_microseconds_from_the_epoch(fresh, tmp_path):
    name = fresh.intern("timed")
    fresh.record(NODE, name, 0, 1_000_000_123, 1_000_002_623)
    fresh.record(NODE, name, 0, 5, 7)  # before the epoch: clamped to 0
    path = tmp_path / "times.trace.json"
    w = fresh.TraceWriter(str(path))
    w.write_batch(fresh.drain(), 1, 1_000_000_000)
    w.commit()
    a, b = read_trace(path)["traceEvents"]
    assert (a["ts"], a["dur"]) == (0.123, 2.5)
    assert (b["ts"], b["dur"]) == (0.0, 0.002)


def test_writer_detail_key_per_stage(fresh, tmp_path):
    keys = {PROMPT: "prompt_id", NODE: "node_id", READ: "path", STEP: "step", OTHER: "detail"}
    for stage in keys:
        fresh.record(stage, fresh.intern("n"), fresh.intern(f"d{stage}"), 1, 2)
    fresh.record(NODE, fresh.intern("no detail"), 0, 1, 2, 3)
    path = tmp_path / "keys.trace.json"
    w = fresh.TraceWriter(str(path))
    w.write_batch(fresh.drain())
    w.commit()
    *with_detail, without = read_trace(path)["traceEvents"]
    for stage, event in zip(keys, with_detail, strict=True):
        assert event["cat"] == fresh.STAGES[stage]
        assert event["args"] == {"outcome": "ok", keys[stage]: f"d{stage}"}
    assert without["args"] == {"outcome": "pending"}


def test_writer_publishes_only_on_commit(fresh, tmp_path):
    path = tmp_path / "late.trace.json"
    w = fresh.TraceWriter(str(path))
    w.write_raw('{"ph":"M"}')
    (temporary,) = os.listdir(tmp_path)
    assert temporary.startswith("late.trace.json.tmp.")  # the data goes to a temporary name
    assert not path.exists()
    w.commit()
    assert os.listdir(tmp_path) == ["late.trace.json"]  # final name only; the temporary is gone
    assert read_trace(path)["traceEvents"] == [{"ph": "M"}]
    with pytest.raises(ValueError, match="closed"):
        w.commit()


def test_writer_never_overwrites(fresh, tmp_path):
    path = tmp_path / "taken.trace.json"
    path.write_text("precious")
    w = fresh.TraceWriter(str(path))
    w.write_raw('{"ph":"M"}')
    with pytest.raises(FileExistsError, match="taken.trace.json"):
        w.commit()
    assert path.read_text() == "precious" and os.listdir(tmp_path) == ["taken.trace.json"]
    assert w.closed


def test_writer_abort_and_unfinished_block_leave_nothing(fresh, tmp_path):
    w = fresh.TraceWriter(str(tmp_path / "a.trace.json"))
    w.write_raw('{"ph":"M"}')
    w.abort()
    assert w.closed and os.listdir(tmp_path) == []
    with fresh.TraceWriter(str(tmp_path / "b.trace.json")) as w2:
        w2.write_raw('{"ph":"M"}')
        assert len(os.listdir(tmp_path)) == 1
    assert w2.closed and os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError), fresh.TraceWriter(str(tmp_path / "c.trace.json")):
        raise RuntimeError("the block failed")
    fresh.TraceWriter(str(tmp_path / "d.trace.json"))  # dropped unreferenced
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="closed"):
        w.write_raw("{}")
    w.abort()  # a second abort is harmless


def test_writer_errors_name_the_path(fresh, tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "t.trace.json"
    with pytest.raises(OSError, match="no/such/dir/t.trace.json"):
        fresh.TraceWriter(str(missing))
    assert os.listdir(tmp_path) == []
    w = fresh.TraceWriter(str(tmp_path / "x.trace.json"))
    with pytest.raises(ValueError, match="one JSON object"):
        w.write_raw("[1]")
    with pytest.raises(TypeError):
        w.write_batch([])
    w.abort()


# The exact bytes of a small trace, pinned: the writer may get faster, never different.
PINNED_TRACE = (
    b'{"traceEvents":[\n'
    b'{"ph":"X","cat":"node","name":"KSampler","ts":0.123,"dur":2.500,"pid":42,"tid":TID,'
    b'"args":{"outcome":"ok","node_id":"3"}},\n'
    b'{"ph":"X","cat":"prompt","name":"prompt","ts":0.000,"dur":11.000,"pid":42,"tid":TID,'
    b'"args":{"outcome":"interrupted","prompt_id":"p-1"}},\n'
    b'{"ph":"i","s":"t","cat":"anatomy","name":"anatomy: \\"x\\"\\n\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",'
    b'"ts":0.500,"pid":42,"tid":TID,"args":{"outcome":"ok","path":"/m/a.safetensors"}},\n'
    b'{"ph":"X","cat":"other","name":"other","ts":0.000,"dur":0.002,"pid":42,"tid":TID,"args":{"outcome":"cached"}}\n'
    b'],"displayTimeUnit":"ms","stagetraceFormat":1,"otherData":{"k":1}}\n'
)


def test_writer_bytes_are_pinned(fresh, tmp_path):
    fresh.record(NODE, fresh.intern("KSampler"), fresh.intern("3"), 1_000_000_123, 1_000_002_623, 0)
    fresh.record(PROMPT, fresh.intern("prompt"), fresh.intern("p-1"), 999_999_000, 1_000_010_000, 2)
    anatomy = fresh.STAGES.index("anatomy")
    name = fresh.intern('anatomy: "x"\n\u00e9\ud800')
    fresh.record(anatomy, name, fresh.intern("/m/a.safetensors"), 1_000_000_500, 1_000_000_500, 0, instant=True)
    fresh.record(OTHER, fresh.intern("other"), 0, 5, 7, 4)
    path = tmp_path / "pinned.trace.json"
    w = fresh.TraceWriter(str(path))
    w.write_batch(fresh.drain(), 42, 1_000_000_000)
    w.commit('{"k":1}')
    assert path.read_bytes() == PINNED_TRACE.replace(b"TID", str(threading.get_native_id()).encode())
