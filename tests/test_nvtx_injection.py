"""NVTX through the real injection mechanism: NVTX itself loads a recorder
tool (tests/nvtx/recorder.c, built here) named by NVTX_INJECTION64_PATH, the
way Nsight Systems attaches, and the recorder logs every call StageTrace makes."""

import collections
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nvtx_include():
    """The NVTX include directory setup.py builds with (it prints it), or None."""
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, capture_output=True, text=True).stdout
    found = re.search(r"NVTX headers from (.+)", out)
    return found.group(1).strip() if found else None


@pytest.fixture(scope="module")
def recorder_lib(tmp_path_factory):
    from comfy_nodes import _native

    if not _native.NVTX_COMPILED:
        pytest.skip("the extension was built without NVTX headers")
    include = nvtx_include()
    if include is None or shutil.which("gcc") is None:
        pytest.skip("no NVTX headers or no gcc to build the recorder tool")
    lib = tmp_path_factory.mktemp("nvtx") / "librecorder.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror", f"-I{include}",
                    os.path.join(ROOT, "tests", "nvtx", "recorder.c"), "-o", str(lib), "-lpthread"], check=True)
    return str(lib)


SCRIPT = textwrap.dedent("""
    import asyncio, sys, threading
    from comfy_nodes import _native as n
    NODE, PROMPT, STEP = n.STAGES.index("node"), n.STAGES.index("prompt"), n.STAGES.index("sample.step")
    if sys.argv[1] == "off":
        n.nvtx_set_enabled(False)
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
""")


def run_recorded(recorder_lib, tmp_path, mode="on"):
    log = tmp_path / f"nvtx-{mode}.log"
    env = dict(os.environ, NVTX_INJECTION64_PATH=recorder_lib, STAGETRACE_NVTX_LOG=str(log))
    subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=env, check=True, timeout=60)
    Call = collections.namedtuple("Call", "tid op domain message argb category payload range_id")
    return [Call(*line.split("\t")) for line in log.read_text().splitlines()] if log.exists() else []


def test_domain_names_colours_and_payloads(recorder_lib, tmp_path):
    from comfy_nodes import _native

    calls = run_recorded(recorder_lib, tmp_path)
    assert [c.domain for c in calls if c.op == "domain_create"] == ["StageTrace"]
    assert {c.domain for c in calls} == {"StageTrace"}
    categories = [c.message for c in calls if c.op == "name_category"]
    assert categories == [f"txt:{i + 1}={name}" for i, name in enumerate(_native.STAGES)]
    registered = {c.message[4:] for c in calls if c.op == "register_string"}
    assert {"KSampler", "Step", "prompt", "Marker"} <= registered
    ranges = [c for c in calls if c.op in ("push", "start", "mark")]
    assert ranges and all(c.message.startswith("reg:") for c in ranges)  # registered strings, not copies
    stage_of = {"KSampler": "node", "Step": "sample.step", "prompt": "prompt", "Marker": "node"}
    for c in ranges:
        stage = _native.STAGES.index(stage_of[c.message[4:]])
        assert int(c.argb) == _native.STAGE_COLOURS[stage]
        assert int(c.category) == stage + 1
    payloads = {c.message[4:]: int(c.payload) for c in ranges}
    assert payloads["Step"] == 12 and payloads["KSampler"] == 3 and payloads["Marker"] == 7
    assert [c.op for c in calls if c.message == "reg:Marker"] == ["mark"]


def test_ranges_balance_and_nest_per_thread(recorder_lib, tmp_path):
    calls = run_recorded(recorder_lib, tmp_path)
    stacks = collections.defaultdict(list)
    for c in calls:
        if c.op == "push":
            stacks[c.tid].append(c.message)
        elif c.op == "pop":
            assert stacks[c.tid], f"pop without push on thread {c.tid}"
            stacks[c.tid].pop()
    assert all(not stack for stack in stacks.values())
    assert len({c.tid for c in calls if c.op == "push"}) == 4  # main thread + 3 workers
    main = calls[0].tid
    sequence = [(c.op, c.message) for c in calls if c.tid == main and c.op in ("push", "pop")][:6]
    assert sequence == [("push", "reg:KSampler"), ("push", "reg:Step"), ("pop", "-"),
                        ("push", "reg:Step"), ("pop", "-"), ("pop", "-")]
    # the coroutine span is a start/end range (it may suspend), matched by id
    starts = {c.range_id for c in calls if c.op == "start"}
    ends = [c.range_id for c in calls if c.op == "end"]
    assert len(starts) == 1 and sorted(ends) == sorted(starts)
    assert [c.message for c in calls if c.op == "start"] == ["reg:prompt"]


def test_disabled_nvtx_emits_no_ranges(recorder_lib, tmp_path):
    calls = run_recorded(recorder_lib, tmp_path, mode="off")
    assert not [c for c in calls if c.op in ("push", "pop", "start", "end", "mark")]
