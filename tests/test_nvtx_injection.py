"""NVTX through the real injection mechanism: NVTX itself loads a recorder
tool (tests/nvtx/recorder.c, built here with gcc) named by
NVTX_INJECTION64_PATH, the way Nsight Systems attaches, and the recorder logs
every NVTX call StageTrace makes. Each scenario runs in a fresh interpreter,
because NVTX looks for a tool only once per process."""

import collections
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from nvtx_paths import nvtx_include

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Call = collections.namedtuple("Call", "tid op domain message argb category payload range_id")


@pytest.fixture(scope="module")
def recorder_lib(tmp_path_factory):
    try:
        from comfy_nodes import _native
    except ImportError as exc:
        pytest.skip(f"C extension not built: run python setup.py build_ext --inplace ({exc})")
    if not _native.NVTX_COMPILED:
        pytest.skip("the extension was built without NVTX headers (NVTX_COMPILED is 0)")
    include = nvtx_include()
    if include is None:
        pytest.skip("no NVTX headers to build the recorder tool (pip install nvidia-nvtx-cu12)")
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the NVTX recorder tool")
    lib = tmp_path_factory.mktemp("nvtx") / "librecorder.so"
    source = os.path.join(ROOT, "tests", "nvtx", "recorder.c")
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O1",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{include}",
            source,
            "-o",
            str(lib),
            "-lpthread",
        ],
        check=True,
    )
    return str(lib)


# Runs in a child interpreter; prints one JSON line of facts the log is checked against.
SCRIPT = textwrap.dedent("""
    import asyncio, json, sys, threading
    from comfy_nodes import _native as n
    NODE, PROMPT, STEP = n.STAGES.index("node"), n.STAGES.index("prompt"), n.STAGES.index("sample.step")
    facts = {"prompt_detail_id": n.intern("p-1")}
    if sys.argv[1] == "off":
        n.nvtx_set_enabled(False)
        facts["off_range_id"] = n.nvtx_range_start(NODE, n.intern("Manual"))
    inner = n.Wrapper(lambda: 1, STEP, "Step", detail="12")
    outer = n.Wrapper(lambda: inner() + inner(), NODE, "KSampler", detail="3")
    outer()
    async def work():
        await asyncio.sleep(0.001)
        return outer()
    asyncio.run(n.Wrapper(work, PROMPT, "prompt", detail="p-1", coroutine=True)())
    threads = [threading.Thread(target=outer) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    n.record(NODE, n.intern("Marker"), n.intern("7"), n.now_ns(), n.now_ns(), instant=True)
    manual = n.intern("Manual")
    n.nvtx_push(NODE, manual, 99)
    n.nvtx_pop()
    facts["manual_range_id"] = n.nvtx_range_start(NODE, manual, 5)
    n.nvtx_range_end(facts["manual_range_id"])
    n.stage_end(n.stage_begin(NODE, "StageSpan", 42))  # a stage span's range: the node id as payload
    n.stage_end(n.stage_begin(NODE, "NoPayload"))
    if sys.argv[1] == "off":
        n.nvtx_set_enabled(True)  # on again: only this marker may appear
        n.record(NODE, n.intern("BackOn"), 0, n.now_ns(), n.now_ns(), instant=True)
    print(json.dumps(facts))
""")


def run_recorded(tmp_path, recorder_lib, mode="on", script=SCRIPT):
    """Run script (SCRIPT by default) under the recorder; return (calls in log order, the script's facts)."""
    log = tmp_path / f"nvtx-{mode}.log"
    env = dict(os.environ, STAGETRACE_NVTX_LOG=str(log))
    if recorder_lib:
        env["NVTX_INJECTION64_PATH"] = recorder_lib
    else:
        env.pop("NVTX_INJECTION64_PATH", None)
    done = subprocess.run(
        [sys.executable, "-c", script, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    calls = [Call(*line.split("\t")) for line in log.read_text().splitlines()] if log.exists() else []
    return calls, json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def recorded(recorder_lib, tmp_path_factory):
    return run_recorded(tmp_path_factory.mktemp("on"), recorder_lib)


def text(c):
    """The message text without its reg:/txt: prefix."""
    return c.message.split(":", 1)[1]


def test_one_domain_with_stage_categories(recorded):
    from comfy_nodes import _native
    calls, _ = recorded
    assert [c.op for c in calls].count("domain_create") == 1
    assert [c.domain for c in calls if c.op == "domain_create"] == ["StageTrace"]
    assert {c.domain for c in calls} == {"StageTrace"}  # nothing outside the domain
    categories = [text(c) for c in calls if c.op == "name_category"]
    assert categories == [f"{i + 1}={name}" for i, name in enumerate(_native.STAGES)]


def test_ranges_carry_registered_names_colours_categories_payloads(recorded):
    from comfy_nodes import _native
    calls, facts = recorded
    registered = collections.Counter(text(c) for c in calls if c.op == "register_string")
    assert {"KSampler", "Step", "prompt", "Marker", "Manual"} <= set(registered)
    assert set(registered.values()) == {1}  # each name registered once, however often used
    ranges = [c for c in calls if c.op in ("push", "start", "mark")]
    assert ranges and all(c.message.startswith("reg:") for c in ranges)  # handles, not copied text
    stage_of = {"KSampler": "node", "Step": "sample.step", "prompt": "prompt", "Marker": "node", "Manual": "node",
                "StageSpan": "node", "NoPayload": "node"}
    for c in ranges:
        stage = _native.STAGES.index(stage_of[text(c)])
        assert int(c.argb) == _native.STAGE_COLOURS[stage], c
        assert int(c.category) == stage + 1, c
    payloads = collections.defaultdict(set)
    for c in ranges:
        payloads[c.op, text(c)].add(int(c.payload))
    assert payloads["push", "Step"] == {12}  # numeric node id as the number itself
    assert payloads["push", "KSampler"] == {3}
    assert payloads["mark", "Marker"] == {7}
    assert payloads["start", "prompt"] == {facts["prompt_detail_id"]}  # not numeric: the intern id
    assert payloads["push", "Manual"] == {99} and payloads["start", "Manual"] == {5}
    assert payloads["start", "StageSpan"] == {42} and payloads["start", "NoPayload"] == {0}
    assert [c.op for c in calls if c.message == "reg:Marker"] == ["mark"]  # an instant is a marker


def test_push_pop_balance_and_nest_per_thread(recorded):
    calls, _ = recorded
    stacks = collections.defaultdict(list)
    for c in calls:
        if c.op == "push":
            stacks[c.tid].append(text(c))
        elif c.op == "pop":
            assert stacks[c.tid], f"pop without a push on thread {c.tid}"
            stacks[c.tid].pop()
    assert stacks and all(not stack for stack in stacks.values())
    main = next(c.tid for c in calls if c.op == "domain_create")  # the importing thread
    workers = {c.tid for c in calls if c.op == "push"} - {main}
    assert len(workers) == 3
    nested = [("push", "KSampler"), ("push", "Step"), ("pop", "-"), ("push", "Step"), ("pop", "-"), ("pop", "-")]
    for tid in workers | {main}:
        sequence = [
            (c.op, text(c) if c.op == "push" else "-") for c in calls if c.tid == tid and c.op in ("push", "pop")
        ]
        assert sequence[:6] == nested, tid


def test_start_end_ranges_match(recorded):
    calls, facts = recorded
    starts = {c.range_id: text(c) for c in calls if c.op == "start"}
    ends = [c.range_id for c in calls if c.op == "end"]
    # coroutine and stage spans: start/end
    assert sorted(starts.values()) == ["Manual", "NoPayload", "StageSpan", "prompt"]
    assert sorted(ends) == sorted(starts) and len(set(ends)) == len(ends)
    assert starts[str(facts["manual_range_id"])] == "Manual"  # the tool's id reaches Python unchanged


def test_disabled_nvtx_emits_nothing(recorder_lib, tmp_path):
    calls, facts = run_recorded(tmp_path, recorder_lib, mode="off")
    emitted = [(c.op, c.message) for c in calls if c.op in ("push", "pop", "start", "end", "mark")]
    assert emitted == [("mark", "reg:BackOn")]  # only what happened after turning it on again
    assert facts["off_range_id"] == 0


def test_without_a_tool_nvtx_stays_silent(tmp_path, native):
    if not native.NVTX_COMPILED:
        pytest.skip("the extension was built without NVTX headers (NVTX_COMPILED is 0)")
    calls, facts = run_recorded(tmp_path, None)
    assert calls == [] and facts["manual_range_id"] == 0  # NVTX's no-tool path: no range ids


# NVTX switched off (or on) while a range is open: every push that reached NVTX is popped, no pop without one.
TOGGLE_SCRIPT = textwrap.dedent("""
    import json
    from comfy_nodes import _native as n
    NODE, STEP = n.STAGES.index("node"), n.STAGES.index("sample.step")
    def turn(on):
        def body():
            n.nvtx_set_enabled(on)
            return 1
        return body
    n.Wrapper(turn(False), NODE, "OpenedOn")()  # pushed while on, switched off inside: popped
    n.Wrapper(turn(True), NODE, "OpenedOff")()  # not pushed (off), switched on inside: not popped
    token = n.stage_begin(STEP, "StepOn")  # a start/end range: ended though off by then
    n.nvtx_set_enabled(False)
    n.stage_end(token)
    n.nvtx_set_enabled(True)
    manual = n.intern("Manual")
    n.nvtx_push(NODE, manual, 1)
    n.nvtx_set_enabled(False)
    n.nvtx_pop()  # popped: its push reached NVTX
    n.nvtx_pop()  # no push open on this thread: nothing
    n.nvtx_push(NODE, manual, 2)  # off: not pushed
    n.nvtx_set_enabled(True)
    n.nvtx_pop()  # so not popped
    n.Wrapper(lambda: n.Wrapper(turn(False), STEP, "Inner")(), NODE, "Outer")()  # nested, off inside the inner
    n.nvtx_set_enabled(True)
    n.Wrapper(lambda: 1, NODE, "After")()
    print(json.dumps({}))
""")


def test_push_pop_stay_balanced_when_nvtx_is_switched_mid_span(recorder_lib, tmp_path):
    calls, _ = run_recorded(tmp_path, recorder_lib, script=TOGGLE_SCRIPT)
    ranges = [(c.op, text(c) if c.op in ("push", "start") else "-") for c in calls
              if c.op in ("push", "pop", "start", "end")]
    assert ranges == [
        ("push", "OpenedOn"), ("pop", "-"),
        ("start", "StepOn"), ("end", "-"),
        ("push", "Manual"), ("pop", "-"),
        ("push", "Outer"), ("push", "Inner"), ("pop", "-"), ("pop", "-"),
        ("push", "After"), ("pop", "-"),
    ]  # fmt: skip
    starts = [c.range_id for c in calls if c.op == "start"]
    assert [c.range_id for c in calls if c.op == "end"] == starts


def test_real_comfyui_node_ranges_carry_the_node_id(recorder_lib, tmp_path):
    """A real ComfyUI prompt under the recorder tool: each node's NVTX range is named by its class and carries
    its id as the payload (what Nsight Systems shows beside the range), one range per executed node."""
    from test_comfyui import COMFYUI_DIR, node_events, run_harness, traces

    if not COMFYUI_DIR:
        pytest.skip("COMFYUI_DIR is not set")
    log = tmp_path / "nvtx-comfyui.log"
    result, _ = run_harness(tmp_path, "basic", env={"NVTX_INJECTION64_PATH": recorder_lib,
                                                    "STAGETRACE_NVTX_LOG": str(log)})
    assert result["runs"][0]["success"]
    (path,) = traces(tmp_path)
    from comfy_nodes.record.tracefile import load

    nodes = {(e["name"], int(e["args"]["node_id"])) for e in node_events(load(str(path)))}
    calls = [Call(*line.split("\t")) for line in log.read_text().splitlines()]
    from comfy_nodes import _native

    category = str(_native.STAGES.index("node") + 1)
    ranges = {(text(c), int(c.payload)) for c in calls if c.op == "start" and c.category == category}
    assert nodes and ranges == nodes
