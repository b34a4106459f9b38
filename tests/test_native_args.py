"""Events with args, categories, counters, metadata and explicit tracks, all through the C
recorder: args serialized once in C at record time (every value type, never raising), the
per-thread args arena and its drop counter, EventBatch.events() equal to what the writer writes,
and the stage spans opened and closed by token (stage_begin / stage_end / stage_abandon)."""

import json
import math
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_native_core import DEFAULT_CAPACITY, NODE, OTHER, PROMPT, READ, STEP, Worker, join_fully

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_TRACK = 0x7FFF0000


@pytest.fixture
def fresh(native):
    """Empty buffers before the test; real clock, default capacity, recording and no GPU windows after."""
    native.drain()
    try:
        yield native
    finally:
        native.set_fake_clock(None)
        native.set_buffer_capacity(DEFAULT_CAPACITY)
        native.set_enabled(True)
        native.gpu_set_windows(False)
        native.drain()


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.stop()


def recorded_args(n, args, kind=None):
    """args through record -> drain -> events(): what the trace says the event carried."""
    kind = n.EVENT_COUNTER if kind is None else kind
    assert n.record(OTHER, n.intern("a"), 0, 1, 2, args=args, kind=kind)
    (event,) = n.drain().events()
    return event["args"]


def canon(v):
    """A comparable form that tells floats from ints and compares floats by repr (-0.0 != 0.0)."""
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, float):
        return ("float", repr(v))
    if isinstance(v, (list, tuple)):
        return ("list", [canon(x) for x in v])
    if isinstance(v, dict):
        return ("dict", {k: canon(x) for k, x in v.items()})
    return (type(v).__name__, v)


# --- Values -------------------------------------------------------------------------------------


class Unprintable:
    def __str__(self):
        raise RuntimeError("no")


class Printable:
    def __str__(self):
        return "printed \ud800"


class LoudStr(str):
    def __str__(self):
        return "not the content"


VALUES = [
        (None, None),
        (True, True),
        (False, False),
        (0, 0),
        (-1, -1),
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
        (2**64, 2**64),
        (-(10**40) - 7, -(10**40) - 7),
        (10**4299 + 1, 10**4299 + 1),  # 4 300 digits: Python's int-to-str limit, still read back
        (0.0, 0.0),
        (-0.0, -0.0),
        (1.0, 1.0),
        (0.1, 0.1),
        (1e22, 1e22),
        (1e300, 1e300),
        (5e-324, 5e-324),
        (-2.5e-8, -2.5e-8),
        (float("nan"), None),
        (float("inf"), None),
        (float("-inf"), None),
        ("", ""),
        ('quote " backslash \\ tab \t nl \n nul \x00 del \x7f', 'quote " backslash \\ tab \t nl \n nul \x00 del \x7f'),
        ("é😀", "é😀"),
        ("lone \ud800 surrogate", "lone \ufffd\ufffd\ufffd surrogate"),
        (b"bytes", "bytes"),
        (b"\xff\xc3(\xe2\x82", "\ufffd\ufffd(\ufffd"),
        ([1, "a", None], [1, "a", None]),
        ((1, 2.5), [1, 2.5]),
        ({"k": {"n": [True]}}, {"k": {"n": [True]}}),
        (Unprintable(), "<unprintable>"),
        (Printable(), "printed \ufffd\ufffd\ufffd"),
        (LoudStr("content"), "content"),
        (object, "<class 'object'>"),
        (frozenset([3]), "frozenset({3})"),
        (bytearray(b"ab"), "bytearray(b'ab')"),
]


@pytest.mark.parametrize(("value", "expected"), VALUES, ids=[f"value{i}" for i in range(len(VALUES))])
def test_every_value_type(fresh, value, expected):
    assert canon(recorded_args(fresh, {"v": value})) == canon({"v": expected})


def test_ints_past_what_json_reads_back_are_said(fresh):
    # json.loads refuses more than sys.get_int_max_str_digits() (4 300) digits: such an int would
    # make the whole trace unreadable, so it is written as a string saying so
    assert recorded_args(fresh, {"v": 10**4300}) == {"v": "<int too large>"}
    assert recorded_args(fresh, {"v": -(10**4300) + 1}) == {"v": -(10**4300) + 1}  # 4 300 nines
    assert recorded_args(fresh, {"v": 1 << 100000}) == {"v": "<int too large>"}


def test_depth_is_bounded(fresh):
    def nest(levels, leaf="leaf"):
        v = leaf
        for _ in range(levels):
            v = [v]
        return v

    assert recorded_args(fresh, {"v": nest(7)}) == {"v": nest(7)}  # 8 levels with the args object
    assert recorded_args(fresh, {"v": nest(8)}) == {"v": nest(7, "<too deep>")}
    loop = []
    loop.append(loop)
    assert json.dumps(recorded_args(fresh, {"v": loop})).count("<too deep>") == 1
    d = {}
    d["d"] = d
    assert "<too deep>" in json.dumps(recorded_args(fresh, d))


def test_keys_that_are_not_str_go_through_str(fresh):
    got = recorded_args(fresh, {1: "int", None: "none", (1, 2): "tuple", LoudStr("k"): "sub", Unprintable(): "x"})
    assert got == {"1": "int", "None": "none", "(1, 2)": "tuple", "k": "sub", "<unprintable>": "x"}


def test_duplicate_keys_after_str_read_back_alike(fresh, tmp_path):
    fresh.record(OTHER, fresh.intern("dup"), 0, 1, 2, args={1: "first", "1": "second"})
    batch = fresh.drain()
    (event,) = batch.events(7)
    assert event["args"] == {"outcome": "ok", "1": "second"}  # JSON's last member wins, in both
    assert write_and_load(fresh, batch, tmp_path, 7) == [event]


def test_values_whose_str_misbehaves_never_raise(fresh):
    args = {}

    class Mutator:
        def __str__(self):
            args.clear()  # the dict being serialized changes under the walk
            args["new"] = 1
            return "mutated"

    class Recorder:
        def __str__(self):  # re-entrant: records while the outer record serializes
            fresh.record(OTHER, fresh.intern("inner"), 0, 1, 2, args={"x": 1})
            return "outer"

    args.update(c=Recorder(), b=Unprintable(), a=Mutator())
    assert fresh.record(OTHER, fresh.intern("outer"), 0, 1, 2, args=args, kind=fresh.EVENT_COUNTER)
    events = fresh.drain().events()
    assert [e["name"] for e in events] in (["inner", "outer"], ["outer", "inner"])
    try:
        raise KeyError("in flight")
    except KeyError:
        assert fresh.record(OTHER, 0, 0, 1, 2, args={"v": Unprintable()})
        assert sys.exc_info()[0] is KeyError  # the handled exception is untouched
    assert len(fresh.drain()) == 1
    assert recorded_args(fresh, {"v": Unprintable()}) == {"v": "<unprintable>"}


def test_args_must_be_a_dict(fresh):
    for bad in ([("a", 1)], "x", 3):
        with pytest.raises(TypeError, match="args must be a dict"):
            fresh.record(OTHER, 0, 0, 1, 2, args=bad)
    assert len(fresh.drain()) == 0


def test_a_spans_own_members_are_not_taken_from_args(fresh):
    fresh.record(NODE, fresh.intern("n"), fresh.intern("3"), 1, 2, 1, args={"outcome": "ok", "node_id": "9", "k": 1})
    fresh.record(NODE, fresh.intern("n"), 0, 1, 2, args={"outcome": "x", "node_id": "9"})
    fresh.record(OTHER, fresh.intern("c"), 0, 1, 1, args={"outcome": 5}, kind=fresh.EVENT_COUNTER)
    with_detail, without_detail, counter = fresh.drain().events()
    assert with_detail["args"] == {"outcome": "error", "node_id": "3", "k": 1}
    assert without_detail["args"] == {"outcome": "ok", "node_id": "9"}  # no detail: the key is free
    assert counter["args"] == {"outcome": 5}  # a counter's series are all its own


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.text(max_size=12),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=16),
            lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
            | st.dictionaries(st.text(max_size=6), inner, max_size=4),
            max_leaves=20,
        ),
        max_size=6,
    )
)
def test_args_round_trip(fresh, args):
    def expected(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        if isinstance(v, (list, tuple)):
            return [expected(x) for x in v]
        if isinstance(v, dict):
            return {k: expected(x) for k, x in v.items()}
        return v

    assert canon(recorded_args(fresh, args)) == canon(expected(args))


# --- Kinds, categories, tracks ---------------------------------------------------------------


def write_and_load(n, batch, tmp_path, pid=0, epoch=0):
    path = tmp_path / f"t{len(os.listdir(tmp_path))}.trace.json"
    w = n.TraceWriter(str(path))
    w.write_batch(batch, pid, epoch)
    w.commit()
    raw = path.read_bytes()
    raw.decode("utf-8")  # strict
    return json.loads(raw)["traceEvents"]


def test_counters_metadata_tracks_and_categories_are_written(fresh, tmp_path):
    n = fresh
    tid = threading.get_native_id()
    gpu_cat = n.intern("gpu")
    assert n.record(OTHER, n.intern("thread_name"), 0, 0, 0, args={"name": "GPU (CUPTI)"}, tid=GPU_TRACK,
                    kind=n.EVENT_METADATA)
    assert n.record(OTHER, n.intern("thread_sort_index"), 0, 0, 0, args={"sort_index": -1}, tid=GPU_TRACK,
                    kind=n.EVENT_METADATA)
    assert n.record(OTHER, n.intern("GPU memory (MB)"), 0, 2_000_500, 2_000_500,
                    args={"free": 1024.5, "allocated": 12.0}, tid=GPU_TRACK, kind=n.EVENT_COUNTER)
    assert n.record(STEP, n.intern("GPU: sample"), 0, 2_001_000, 2_003_000, args={"busy_ms": 1.25},
                    cat_id=gpu_cat, tid=GPU_TRACK + 1)
    assert n.record(READ, n.intern("log"), n.intern("/m.safetensors"), 2_004_000, 2_004_000, instant=True,
                    args={"line": "slow"}, cat_id=n.intern("comfyui_log"))
    assert n.record(PROMPT, n.intern("process_name"), 0, 0, 0, args={"name": "ComfyUI"}, kind=n.EVENT_METADATA)
    batch = n.drain()
    assert batch.tids() == sorted({tid, GPU_TRACK, GPU_TRACK + 1})
    assert [e[9] for e in batch] == [0, 0, 0, gpu_cat, n.intern("comfyui_log"), 0]
    assert [e[7] for e in batch] == [n.EVENT_METADATA, n.EVENT_METADATA, n.EVENT_COUNTER, n.EVENT_SPAN,
                                     n.EVENT_INSTANT, n.EVENT_METADATA]
    assert batch[2][8] == '{"free":1024.5,"allocated":12.0}' and batch[0][8] == '{"name":"GPU (CUPTI)"}'
    expected = [
        {"ph": "M", "name": "thread_name", "pid": 9, "tid": GPU_TRACK, "args": {"name": "GPU (CUPTI)"}},
        {"ph": "M", "name": "thread_sort_index", "pid": 9, "tid": GPU_TRACK, "args": {"sort_index": -1}},
        {"ph": "C", "cat": "other", "name": "GPU memory (MB)", "ts": 0.5, "pid": 9, "tid": GPU_TRACK,
         "args": {"free": 1024.5, "allocated": 12.0}},
        {"ph": "X", "cat": "gpu", "name": "GPU: sample", "ts": 1.0, "dur": 2.0, "pid": 9, "tid": GPU_TRACK + 1,
         "args": {"outcome": "ok", "busy_ms": 1.25}},
        {"ph": "i", "s": "t", "cat": "comfyui_log", "name": "log", "ts": 4.0, "pid": 9, "tid": tid,
         "args": {"outcome": "ok", "path": "/m.safetensors", "line": "slow"}},
        {"ph": "M", "name": "process_name", "pid": 9, "tid": tid, "args": {"name": "ComfyUI"}},
    ]
    assert batch.events(9, 2_000_000) == expected
    written = write_and_load(n, batch, tmp_path, 9, 2_000_000)
    assert written == expected
    assert [list(e) for e in written] == [list(e) for e in expected]  # the same member order


def test_kind_is_checked(fresh):
    with pytest.raises(ValueError, match="kind 7"):
        fresh.record(OTHER, 0, 0, 1, 2, kind=7)
    with pytest.raises(ValueError, match="instant=True"):
        fresh.record(OTHER, 0, 0, 1, 2, instant=True, kind=fresh.EVENT_COUNTER)
    assert fresh.record(OTHER, 0, 0, 1, 2, instant=True, kind=fresh.EVENT_INSTANT)
    assert fresh.record(OTHER, 0, 0, 1, 5, kind=fresh.EVENT_COUNTER)
    (instant, counter) = fresh.drain().tolist()
    assert instant[1] == 1 and counter[1] == 1  # only a span keeps its end
    assert [fresh.EVENT_SPAN, fresh.EVENT_INSTANT, fresh.EVENT_COUNTER, fresh.EVENT_METADATA] == [0, 1, 2, 3]


def test_written_file_equals_events_for_a_mix(fresh, tmp_path):
    n = fresh
    names = [n.intern(s) for s in ("KSampler", 'odd "name"\n\ud800', "c", "thread_name")]
    for i in range(200):
        stage = i % len(n.STAGES)
        kind = i % 4
        args = None if i % 3 == 0 else {"i": i, "f": i / 7, "s": "x" * (i % 5), "l": [i, None, {"b": b"\xff"}]}
        n.record(stage, names[i % 4], names[(i + 1) % 4] if i % 2 else 0, 10_000 + i * 1_001, 20_000 + i * 2_003,
                 i % 5, args=args, cat_id=names[2] if i % 7 == 0 else 0, tid=GPU_TRACK + i % 3 if i % 5 == 0 else 0,
                 kind=kind)
    n.record(NODE, names[0], 0, (1 << 60) + 123, (1 << 60) + 5_000_000_456)  # past 2**53 ns
    batch = n.drain()
    assert write_and_load(n, batch, tmp_path, 4321, 5_000) == batch.events(4321, 5_000)
    assert write_and_load(n, batch, tmp_path) == batch.events()


# --- The args arena and the ring -------------------------------------------------------------


def test_full_arena_keeps_events_without_args_and_counts(fresh):
    fresh.set_buffer_capacity(16)  # a new thread's arena: 16 * 64 -> 1024 bytes
    worker = Worker()
    try:
        name = fresh.intern("arena")
        pad = "p" * 80  # each args object is about 100 bytes
        before = fresh.args_dropped()

        def record_16():
            return [fresh.record(OTHER, name, 0, i, i, args={"i": i, "pad": pad}) for i in range(16)]

        assert worker.run(record_16) == [True] * 16  # every event is kept
        events = fresh.drain().tolist()
        with_args = [e for e in events if e[8] is not None]
        assert 5 <= len(with_args) < 16 and events[: len(with_args)] == with_args  # the first ones fit
        assert all(json.loads(e[8]) == {"i": e[0], "pad": pad} for e in with_args)
        assert fresh.args_dropped() - before == 16 - len(with_args)
        assert fresh.stats()["args_dropped"] == fresh.args_dropped()
        # drained: the room is back, and args larger than the whole arena are dropped alone
        assert worker.run(lambda: fresh.record(OTHER, name, 0, 1, 1, args={"big": "b" * 2000}))
        assert worker.run(lambda: fresh.record(OTHER, name, 0, 2, 2, args={"small": 1}))
        big, small = fresh.drain().tolist()
        assert big[8] is None and small[8] == '{"small":1}'
        assert fresh.args_dropped() - before == 16 - len(with_args) + 1
    finally:
        worker.stop()


def test_arena_wraps_and_keeps_every_args_whole(fresh):
    fresh.set_buffer_capacity(16)
    worker = Worker()
    try:
        name = fresh.intern("wrap")
        seen = 0
        for round_ in range(60):  # sizes that do not divide the arena: records straddle its end
            sizes = [(round_ * 7 + k * 13) % 90 for k in range(3)]

            def record(sizes=sizes, round_=round_):
                return [fresh.record(OTHER, name, 0, round_, round_, args={"s": "y" * s}) for s in sizes]

            assert worker.run(record) == [True] * 3
            events = fresh.drain().tolist()
            assert [json.loads(e[8]) for e in events] == [{"s": "y" * s} for s in sizes]
            seen += len(events)
        assert seen == 180
    finally:
        worker.stop()


def test_full_ring_drops_events_with_args_and_takes_no_arena_room(fresh):
    fresh.set_buffer_capacity(8)
    worker = Worker()
    try:
        dropped, args_dropped = fresh.dropped(), fresh.args_dropped()
        stored = worker.run(lambda: [fresh.record(OTHER, 0, 0, i, i, args={"i": i}) for i in range(20)])
        assert stored == [True] * 8 + [False] * 12
        assert fresh.dropped() - dropped == 12 and fresh.args_dropped() == args_dropped
        assert [json.loads(e[8]) for e in fresh.drain()] == [{"i": i} for i in range(8)]
    finally:
        worker.stop()


def test_threads_record_args_concurrently_while_draining(fresh):
    fresh.set_buffer_capacity(256)  # small rings and arenas: they fill, wrap and drain under load
    name = fresh.intern("concurrent")
    n_threads, per_thread = 8, 3000
    results, tids, start = {}, {}, threading.Barrier(n_threads + 1)
    args_dropped_before, dropped_before = fresh.args_dropped(), fresh.dropped()

    def produce(k):
        tids[k] = threading.get_native_id()
        start.wait()
        results[k] = [fresh.record(OTHER, name, 0, i, i, args={"t": k, "i": i, "pad": "z" * (i % 40)})
                      for i in range(per_thread)]

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    start.wait()
    drained = []
    while any(t.is_alive() for t in threads):
        drained.extend(fresh.drain().tolist())
    join_fully(threads)
    drained.extend(fresh.drain().tolist())
    by_thread = {k: [e for e in drained if e[4] == tids[k]] for k in range(n_threads)}
    bare = 0
    for k, events in by_thread.items():
        assert [e[0] for e in events] == [i for i, ok in enumerate(results[k]) if ok]  # in order, none lost
        for e in events:
            if e[8] is None:
                bare += 1
            else:
                assert json.loads(e[8]) == {"t": k, "i": e[0], "pad": "z" * (e[0] % 40)}
    assert fresh.args_dropped() - args_dropped_before == bare
    assert fresh.dropped() - dropped_before == sum(r.count(False) for r in results.values())


# --- Stage spans by token --------------------------------------------------------------------


def test_stage_span_records_with_args_and_outcome(fresh):
    n = fresh
    n.set_fake_clock(1_000, 500)
    token = n.stage_begin(READ, "model_load.read: x.safetensors")
    assert token > 0
    n.stage_end(token, {"path": "/m/x.safetensors", "bytes": 1 << 40, "mb_s": 812.5}, 2)
    (event,) = n.drain().events()
    assert event["ph"] == "X" and event["cat"] == "model_load.read"
    assert event["name"] == "model_load.read: x.safetensors"
    assert event["args"] == {"outcome": "interrupted", "path": "/m/x.safetensors", "bytes": 1 << 40, "mb_s": 812.5}
    assert event["tid"] == threading.get_native_id() and event["dur"] > 0


def test_spans_of_one_stage_do_not_nest_others_do(fresh):
    n = fresh
    outer = n.stage_begin(STEP, "step 1")
    assert n.stage_begin(STEP, "inner step") == 0  # the outer one covers it
    sample = n.stage_begin(n.STAGES.index("sample"), "sample")
    assert sample not in (0, outer)
    n.stage_end(0, {"ignored": True})  # token 0: nothing
    n.stage_end(sample)
    n.stage_end(outer, {"step": 1})
    again = n.stage_begin(STEP, "step 2")  # closed: the stage is free again
    assert again not in (0, outer)
    n.stage_end(again)
    assert [(e["name"], e["args"]) for e in n.drain().events()] == [
        ("sample", {"outcome": "ok"}), ("step 1", {"outcome": "ok", "step": 1}), ("step 2", {"outcome": "ok"})]


def test_abandoned_span_records_nothing_and_frees_the_stage(fresh):
    n = fresh
    token = n.stage_begin(STEP, "never ran")
    n.stage_abandon(token)
    assert len(n.drain()) == 0
    token = n.stage_begin(STEP, "ran")
    assert token
    n.stage_end(token)
    assert [e["name"] for e in n.drain().events()] == ["ran"]


def test_stale_foreign_and_garbage_tokens_are_ignored_and_counted(fresh, worker):
    n = fresh
    rejected = n.stats()["stage_tokens_rejected"]
    token = n.stage_begin(STEP, "mine")
    worker.run(lambda: n.stage_end(token, {"from": "another thread"}))  # foreign
    worker.run(lambda: n.stage_abandon(token))
    n.stage_end(token)
    n.stage_end(token)  # stale: closed already
    n.stage_abandon(token)
    for garbage in (1, 12345, (1 << 64) - 1, -5, 1 << 80, token + 32, token ^ (1 << 40)):
        n.stage_end(garbage)
        n.stage_abandon(garbage)
    assert n.stats()["stage_tokens_rejected"] - rejected == 2 + 2 + 14
    assert [e["name"] for e in n.drain().events()] == ["mine"]
    with pytest.raises(TypeError):
        n.stage_end("token")
    with pytest.raises(TypeError, match="args must be a dict"):
        n.stage_end(0, [1])
    with pytest.raises(ValueError, match="stage 99"):
        n.stage_begin(99, "x")
    with pytest.raises(TypeError):
        n.stage_begin(STEP, b"bytes")


def test_a_token_from_an_earlier_opening_of_the_same_stage_is_stale(fresh):
    n = fresh
    first = n.stage_begin(STEP, "a")
    n.stage_end(first)
    second = n.stage_begin(STEP, "b")
    rejected = n.stats()["stage_tokens_rejected"]
    n.stage_end(first, {"late": True})  # same slot, older opening
    assert n.stats()["stage_tokens_rejected"] - rejected == 1
    n.stage_end(second)
    assert [e["name"] for e in n.drain().events()] == ["a", "b"]


def test_stage_spans_per_thread_are_independent(fresh, worker):
    n = fresh
    mine = n.stage_begin(STEP, "main")
    theirs = worker.run(lambda: n.stage_begin(STEP, "worker"))
    assert mine and theirs and mine != theirs
    worker.run(lambda: n.stage_end(theirs))
    n.stage_end(mine)
    assert sorted(e["name"] for e in n.drain().events()) == ["main", "worker"]


def test_stage_spans_off_when_recording_is_off(fresh):
    fresh.set_enabled(False)
    assert fresh.stage_begin(STEP, "off") == 0
    fresh.set_enabled(True)
    assert len(fresh.drain()) == 0


def test_stage_spans_open_gpu_windows_when_on(fresh):
    n = fresh
    n.gpu_reset()
    before = n.gpu_counters()["windows"]
    n.stage_end(n.stage_begin(STEP, "no window"))
    assert n.gpu_counters()["windows"] == before
    n.gpu_set_windows(True)
    n.stage_end(n.stage_begin(STEP, "window"))
    n.stage_abandon(n.stage_begin(STEP, "abandoned window"))
    assert n.gpu_counters()["windows"] == before + 2
    n.gpu_reset()


def test_stage_span_dangers_in_a_child_process(native):
    """Tokens from threads that have exited, spans left open at exit, drains racing stage spans:
    nothing may crash (a crash is a non-zero exit)."""
    script = textwrap.dedent("""
        import threading
        from comfy_nodes import _native as n
        tokens = []
        def open_and_leave():
            tokens.append(n.stage_begin(8, "left open"))
        for _ in range(20):
            t = threading.Thread(target=open_and_leave); t.start(); t.join()
        for tok in tokens:
            n.stage_end(tok, {"x": 1}); n.stage_abandon(tok)
        def churn():
            for i in range(2000):
                n.stage_end(n.stage_begin(i % 13, "churn"), {"i": i})
        ts = [threading.Thread(target=churn) for _ in range(4)]
        [t.start() for t in ts]
        total = 0
        while any(t.is_alive() for t in ts):
            total += len(n.drain())
        [t.join() for t in ts]
        total += len(n.drain())
        n.stage_begin(8, "open at exit")
        print(total, n.stats()["stage_tokens_rejected"])
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    total, rejected = map(int, done.stdout.split())
    assert total == 8000 and rejected == 40


# The exact bytes of a small trace with every kind, args, categories and tracks, pinned before the
# writer was made faster: it may get faster, never different.
PINNED_KINDS = (
    b'{"traceEvents":[\n'
    b'{"ph":"M","name":"thread_name","pid":7,"tid":2147418112,"args":{"name":"GPU (CUPTI)"}},\n'
    b'{"ph":"C","cat":"other","name":"GPU memory (MB)","ts":1.500,"pid":7,"tid":2147418112,'
    b'"args":{"free":1.5,"big":1180591620717411303424}},\n'
    b'{"ph":"X","cat":"gpu","name":"step","ts":2.000,"dur":7.999,"pid":7,"tid":2147418113,'
    b'"args":{"outcome":"pending","step":"4","sigma":0.25,"l":[null,true,"x\\n"]}},\n'
    b'{"ph":"C","cat":"other","name":"c0","ts":0.000,"pid":7,"tid":TID,"args":{}},\n'
    b'{"ph":"i","s":"t","cat":"model_load.read","name":"log","ts":0.001,"pid":7,"tid":TID,'
    b'"args":{"outcome":"error","msg":"b\xc3\xa9"}}\n'
    b'],"displayTimeUnit":"ms","stagetraceFormat":1,"otherData":{}}\n'
)


def test_writer_bytes_for_every_kind_are_pinned(fresh, tmp_path):
    n = fresh
    n.record(OTHER, n.intern("thread_name"), 0, 0, 0, args={"name": "GPU (CUPTI)"}, tid=GPU_TRACK,
             kind=n.EVENT_METADATA)
    n.record(OTHER, n.intern("GPU memory (MB)"), 0, 1_000_001_500, 1_000_001_500, args={"free": 1.5, "big": 2**70},
             tid=GPU_TRACK, kind=n.EVENT_COUNTER)
    n.record(STEP, n.intern("step"), n.intern("4"), 1_000_002_000, 1_000_009_999, 3,
             args={"sigma": 0.25, "l": [None, True, "x\n"]}, cat_id=n.intern("gpu"), tid=GPU_TRACK + 1)
    n.record(OTHER, n.intern("c0"), 0, 1_000_000_000, 1_000_000_000, args={}, kind=n.EVENT_COUNTER)
    n.record(READ, n.intern("log"), 0, 1_000_000_001, 1_000_000_001, 1, instant=True, args={"msg": "b\xe9"})
    path = tmp_path / "kinds.trace.json"
    w = n.TraceWriter(str(path))
    w.write_batch(n.drain(), 7, 1_000_000_000)
    w.commit()
    assert path.read_bytes() == PINNED_KINDS.replace(b"TID", str(threading.get_native_id()).encode())


def test_writer_numbers_at_every_digit_count(fresh, tmp_path):
    n = fresh
    values = sorted({0, 1, 2**32 - 1, 2**63, 2**64 - 1} | {v + d for k in range(20) for d in (-1, 0, 1)
                                                              for v in [10**k] if 0 <= v + d < 2**64})
    name = n.intern("num")
    for v in values:
        n.record(OTHER, name, 0, v, v, tid=v % 2**32 or 1, kind=n.EVENT_COUNTER)
        n.record(OTHER, name, 0, 0, v, tid=1)  # dur
    path = tmp_path / "numbers.trace.json"
    w = n.TraceWriter(str(path))
    w.write_batch(n.drain(), 2**32 - 1)
    w.commit()
    lines = path.read_bytes().decode().split("\n")[1:-2]
    assert len(lines) == 2 * len(values)
    for v, counter, span in zip(values, lines[0::2], lines[1::2], strict=True):
        us = f"{v // 1000}.{v % 1000:03d}"
        assert f'"ts":{us},"pid":4294967295,"tid":{v % 2**32 or 1},' in counter
        assert f'"ts":0.000,"dur":{us},"pid":4294967295,"tid":1,' in span


def test_writer_events_larger_than_its_buffer_and_many_names(fresh, tmp_path):
    n = fresh
    huge_name = n.intern("N" * 1_200_000 + "\n")  # escaped once, larger than the 1 MiB sink buffer
    assert n.record(NODE, huge_name, n.intern("7"), 1, 2, args={"blob": "x" * 1_500_000})
    for i in range(3000):  # the name cache grows many times over, interleaved with the huge one
        n.record(NODE, n.intern(f"name {i} \u00e9"), n.intern(str(i)), i, i + 1, args={"i": i} if i % 2 else None)
        if i % 1000 == 0:
            n.record(NODE, huge_name, 0, i, i)
    n.record(NODE, 1 << 30, 1 << 30, 5, 6, cat_id=(1 << 30) + 1)  # ids never interned: "?"
    batch = n.drain()
    written = write_and_load(n, batch, tmp_path, 3)
    assert written == batch.events(3)
    assert written[0]["name"] == "N" * 1_200_000 + "\n" and len(written[0]["args"]["blob"]) == 1_500_000
    assert written[-1]["name"] == written[-1]["cat"] == written[-1]["args"]["node_id"] == "?"
