"""ComfyUI drift: hooks bind by name (hooks/targets.py), the signature fixtures of 0.3.64 and newer ComfyUI
give every hook or its named fallback, a real ComfyUI with newer signatures still records a whole trace,
a pending node is one node with its pending time, expanded nodes are attributed to the node the user
sees, and a mapped model's bytes are measured where they are really read (hooks/deferred.py).

The ComfyUI runs (COMFYUI_DIR) go through tests/comfy_drift.py in a fresh process each."""

import json
import os
import pathlib
import threading

import pytest
from test_comfyui import node_events, stage_events

from comfy_nodes.analysis.diagnose import gather, rule_slow_read
from comfy_nodes.analysis.summary import node_self_times, summarize
from comfy_nodes.hooks.deferred import MIN_DEFERRED_BYTES, ReadMeter
from comfy_nodes.hooks.install import queue_item_prompt_id
from comfy_nodes.hooks.targets import (
    CALLED,
    HOOK,
    TARGETS,
    Binder,
    fit_params,
    source_params,
    target,
)
from comfy_nodes.record.tracefile import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
FIXTURES = pathlib.Path(ROOT, "tests", "fixtures", "signatures")
NEEDS_COMFYUI = pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR is not set")


def fixture(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def fixture_names():
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


# --- binding by name ----------------------------------------------------------------------------------


def test_binder_reads_by_name_whatever_the_position():
    def v064(server, dynprompt, caches, current_item, extra_data, executed, prompt_id, execution_list,
             pending_subgraph_results, pending_async_nodes):
        pass

    def newer(server, dynprompt, caches, current_item, extra_data, executed, prompt_id, execution_list,
              pending_subgraph_results, pending_async_nodes, ui_outputs, asset_manager):
        pass

    def reordered(current_item, dynprompt, *rest, ui_outputs=None, **more):
        pass

    for func, args, kwargs in ((v064, ("s", "dp", "c", "7", {}, set(), "p", "el", {}, {}), {}),
                               (newer, ("s", "dp", "c", "7", {}, set(), "p", "el", {}, {}, {}, "am"), {}),
                               (newer, ("s", "dp"), {"caches": "c", "current_item": "7", "asset_manager": 1}),
                               (reordered, ("7", "dp", "extra"), {"ui_outputs": {}})):
        bind = Binder(func, ("dynprompt", "current_item"))
        assert bind.values(args, kwargs) == {"dynprompt": "dp", "current_item": "7"}, func
    with pytest.raises(TypeError, match="current_item"):
        Binder(lambda *args, **kwargs: None, ("current_item",))  # nothing to bind by name: it does not fit


def test_binder_replaces_where_the_caller_passed_it():
    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None):
        pass

    bind = Binder(sample, ("self", "sigmas", "callback"))
    args, kwargs = bind.replace(("k", "m", [1.0], {}, "cb", "n"), {}, "callback", "new")
    assert args == ("k", "m", [1.0], {}, "new", "n") and kwargs == {}
    args, kwargs = bind.replace(("k", "m", [1.0], {}), {"callback": "cb", "noise": "n"}, "callback", "new")
    assert args == ("k", "m", [1.0], {}) and kwargs == {"callback": "new", "noise": "n"}
    args, kwargs = bind.replace(("k", "m", [1.0], {}), {"noise": "n"}, "callback", "new")  # not passed: keyword
    assert kwargs == {"noise": "n", "callback": "new"}
    assert bind.get(("k", "m", [1.0], {}), {}, "latent_image", "x") is None  # the signature's default


def test_queue_items_of_five_and_six_members():
    assert queue_item_prompt_id((0, "p1", {}, {}, [])) == "p1"
    assert queue_item_prompt_id((0, "p2", {}, {}, [], {"api_key": "x"})) == "p2"  # newer ComfyUI: + sensitive
    assert queue_item_prompt_id("nonsense") is None and queue_item_prompt_id(()) is None


# --- the signature fixtures -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names())
def test_every_fixture_gives_every_hook_or_its_named_fallback(name):
    fits = fit_params(fixture(name)["params"])
    assert [f.target for f in fits] == [t.name for t in TARGETS]
    for fit in fits:
        t = target(fit.target)
        if t.kind in (HOOK, CALLED):
            assert fit.fits or (fit.fallback and fit.why), fit
    # every hook of the table fits each ComfyUI the fixtures describe: the full set, no fallback
    assert [f.target for f in fits if target(f.target).kind == HOOK and not f.fits] == []


def test_the_newer_fixtures_hold_the_known_changes():
    old, new, assets = fixture("0.3.64")["params"], fixture("master-2026")["params"], \
        fixture("master-asset-manager")["params"]
    assert new["execution.execute"] == old["execution.execute"] + ["ui_outputs"]
    assert assets["execution.execute"][-2:] == ["ui_outputs", "asset_manager"]
    assert "not_video" in new["comfy.sd.VAE.encode"] and "not_video" not in old["comfy.sd.VAE.encode"]
    assert "not_video" in new["comfy.sd.VAE.encode_tiled"]
    for fn in ("outer_sample", "inner_sample"):
        assert new[f"comfy.samplers.CFGGuider.{fn}"][-1] == "latent_shapes"
    assert new["server.PromptServer.__init__"] == ["self", "loop", "asset_manager"]
    assert old["server.PromptServer.__init__"] == ["self", "loop"]
    assert "cache_args" in new["execution.PromptExecutor.__init__"]
    assert assets["execution.PromptExecutor.__init__"][-2:] == ["cache_args", "asset_manager"]
    assert old["comfy.memory_management.read_tensor_file_slice_into"] is None  # no comfy-aimdo in 0.3.64


def test_a_target_that_lost_a_parameter_gets_its_named_fallback():
    params = dict(fixture("master-2026")["params"])
    params["execution.execute"] = [p for p in params["execution.execute"] if p != "current_item"]
    params["comfy.sd.VAE.decode"] = None  # gone
    fits = {f.target: f for f in fit_params(params)}
    execute = fits["execution.execute"]
    assert not execute.fits and "progress handler" in execute.fallback and "'current_item'" in execute.why
    decode = fits["comfy.sd.VAE.decode"]
    assert not decode.found and decode.fallback == "no vae_decode spans"
    assert fits["comfy.sd.VAE.encode"].fits  # the others are untouched


@NEEDS_COMFYUI
def test_the_0_3_64_fixture_is_what_its_source_says():
    assert source_params(COMFYUI_DIR) == fixture("0.3.64")["params"]


def test_a_nodes_own_time_excludes_the_nodes_that_ran_while_it_waited():
    # node 12 waited (lazy) while 3 ran; 11's expanded nodes carry its id; 10 was pending between two calls
    times = node_self_times([(0, 100, "12"), (10, 20, "3"), (30, 50, "11"), (32, 40, "11"), (60, 70, "10"),
                             (80, 85, "10")])
    assert times == {"12": 55.0, "3": 10.0, "11": 20.0, "10": 15.0}
    assert sum(times.values()) == 100.0  # nothing counted twice


# --- deferred reads (unit) ------------------------------------------------------------------------------


def test_read_meter_counts_timed_reads_once_in_the_innermost_span(tmp_path):
    meter = ReadMeter()
    assert meter.begin() is None  # no mapped file: a span costs nothing more
    assert not meter.file_loaded("/m/a.safetensors", 100 << 20, 100 << 20, "ext4")  # read whole: not mapped
    assert meter.file_loaded("/m/a.safetensors", 100 << 20, 1 << 20, "ext4")
    outer = meter.begin()
    inner = meter.begin()
    meter.timed_read(30 << 20, 3_000_000_000)  # 30 MB in 3 s
    got = meter.end(inner)
    assert got["bytes"] == 30 << 20 and got["seconds"] == 3.0 and got["how"] == "timed reads"
    assert got["files"] == ["a.safetensors"] and got["fs_type"] == "ext4"
    assert round(got["mb_s"], 1) == round((30 << 20) / 1e6 / 3, 1)
    assert meter.end(outer) is None  # the inner span had them: not counted twice
    small = meter.begin()
    meter.timed_read(MIN_DEFERRED_BYTES - 1, 1000)
    assert meter.end(small) is None


def test_read_meter_is_safe_across_threads():
    meter = ReadMeter()
    meter.file_loaded("/m/b.safetensors", 1 << 40, 0, None)
    span = meter.begin()
    threads = [threading.Thread(target=lambda: [meter.timed_read(1 << 20, 1000) for _ in range(100)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert meter.end(span)["bytes"] == 800 << 20  # reads on other threads (a prefetch thread) count


def trace_with(*spans):
    base = [{"ph": "X", "cat": "prompt", "name": "prompt", "ts": 0, "dur": 60e6, "pid": 1, "tid": 1,
             "args": {"prompt_id": "p", "outcome": "ok"}}]
    return {"traceEvents": base + list(spans), "otherData": {"prompt_id": "p", "anatomy": []}}


def span(cat, ts_s, dur_s, **args):
    return {"ph": "X", "cat": cat, "name": cat, "ts": ts_s * 1e6, "dur": dur_s * 1e6, "pid": 1, "tid": 1,
            "args": args}


def test_slow_read_fires_on_a_deferred_read_where_it_happened():
    read = span("model_load.read", 0, 0.05, path="/models/x.safetensors", file_bytes=2_000_000_000,
                storage_read_bytes=0, fs_type="ext4", mapped=True)
    slow = span("sample", 1, 50, deferred_read={"bytes": 1_000_000_000, "seconds": 40.0, "mb_s": 25.0,
                                                "how": "timed reads", "files": ["x.safetensors"], "fs_type": "ext4"})
    finding = rule_slow_read(gather(trace_with(read, slow)))
    assert finding.rule == "slow-read" and round(finding.figures["mb_s"]) == 25
    assert finding.figures["during"] == "sample" and "during sample" in finding.evidence
    assert "x.safetensors" in finding.evidence
    fast = span("sample", 1, 50, deferred_read={"bytes": 1_000_000_000, "seconds": 1.0, "mb_s": 1000.0,
                                                "how": "timed reads", "files": ["x.safetensors"], "fs_type": "ext4"})
    assert rule_slow_read(gather(trace_with(read, fast))) is None
    few = span("sample", 1, 50, deferred_read={"bytes": 8 << 20, "seconds": 1.0, "how": "page faults"})
    assert rule_slow_read(gather(trace_with(read, few))) is None  # too few paged bytes to judge the disk


# --- real ComfyUI ---------------------------------------------------------------------------------------


def run_drift(tmp_path, scenario, *extra):
    """tests/comfy_drift.py's one run of scenario, which must succeed: (its trace, the harness result, the log,
    the trace's path)."""
    from test_comfyui import run_script_file

    result, log = run_script_file(tmp_path, "comfy_drift.py", args=("--scenario", scenario, *extra))
    (run,) = result["runs"]
    assert run["success"], run["errors"]
    return load(run["trace"]), result, log, run["trace"]


@NEEDS_COMFYUI
def test_newer_signatures_in_real_comfyui_still_give_a_whole_trace(tmp_path):
    trace, result, log, _ = run_drift(tmp_path, "newer")
    other = trace["otherData"]
    assert {"execution.execute", "comfy.sd.VAE.encode", "comfy.samplers.KSAMPLER.sample",
            "comfy.sd.load_state_dict_guess_config", "PromptQueue.put"} <= set(other["hooks"])
    # the one target that no longer fits is named with its fallback, once in the log, and nothing else is
    (fallback,) = other["fallbacks"]
    assert fallback.startswith("comfy.sd.VAE.decode: no vae_decode spans (") and "'samples_in'" in fallback
    assert log.count(fallback) == 1
    nodes = node_events(trace)
    assert sorted(e["args"]["node_id"] for e in nodes) == sorted(["3", "4", "5", "6", "7", "8", "9", "11", "12", "13"])
    assert all(e["args"]["outcome"] == "ok" for e in nodes)
    (encode,) = stage_events(trace, "vae_encode")  # bound by name through VAE.encode(self, pixel_samples, not_video)
    assert encode["args"]["shape"] == [1, 64, 64, 3]
    assert stage_events(trace, "vae_decode") == []
    assert len(stage_events(trace, "sample.step")) == 2
    (wait,) = [e for e in trace["traceEvents"] if e.get("name") == "queue_wait"]  # a 6-tuple went through
    assert wait["dur"] >= 0.15e6
    live = {f["target"]: f for f in result["live"]}
    assert live["execution.execute"]["params"][-2:] == ["ui_outputs", "asset_manager"]
    assert live["comfy.sd.VAE.encode"]["params"] == ["self", "pixel_samples", "not_video"]
    assert live["comfy.sd.VAE.decode"]["fits"] is False  # what the installer saw
    source = {f["target"]: f for f in result["source"]}  # the files on disk are still 0.3.64's
    assert source["execution.execute"]["params"] == fixture("0.3.64")["params"]["execution.execute"]


@NEEDS_COMFYUI
def test_pending_nodes_are_one_node_and_expanded_nodes_the_node_the_user_sees(tmp_path):
    trace, _, _, _ = run_drift(tmp_path, "pending")
    nodes = node_events(trace)
    own = [e for e in nodes if "expanded_id" not in e["args"]]
    ids = [e["args"]["node_id"] for e in own]
    assert sorted(ids) == sorted(["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"])  # one each, none lost
    by_id = {e["args"]["node_id"]: e for e in own}
    wait = by_id["10"]  # async: pending while its task slept, then executed again
    assert wait["name"] == "DriftAsyncWait" and wait["args"]["calls"] == 2
    assert 0.25 <= wait["args"]["pending_s"] <= wait["dur"] / 1e6
    assert wait["args"]["active_s"] < wait["args"]["pending_s"]
    assert by_id["12"]["args"]["calls"] == 2 and by_id["12"]["args"]["pending_s"] > 0  # lazy input
    expand = by_id["11"]
    assert expand["name"] == "DriftExpandTwice" and expand["args"]["calls"] == 2
    children = [e for e in nodes if "expanded_id" in e["args"]]
    assert len(children) == 2
    for child in children:  # the ephemeral nodes, attributed to node 11 and its class, inside its span
        assert child["args"]["node_id"] == "11" and child["name"] == "DriftExpandTwice"
        assert child["args"]["expanded_class"] == "DriftScale" and child["args"]["expanded_id"].startswith("11.")
        assert expand["ts"] <= child["ts"] and child["ts"] + child["dur"] <= expand["ts"] + expand["dur"]
    summary = summarize(trace)
    seconds = {n.node_id: n.seconds for n in summary.nodes}
    assert sorted(seconds) == sorted(ids)
    assert abs(seconds["11"] - expand["dur"] / 1e6) < 1e-3  # its children are inside it: not counted twice
    lazy = by_id["12"]  # it waited while its input's nodes (the sampler among them) ran: not charged for them
    assert seconds["12"] < lazy["dur"] / 1e6 - seconds["3"]


@NEEDS_COMFYUI
def test_the_progress_handler_fallback_keeps_pending_and_expanded_nodes_with_the_node_the_user_sees(tmp_path):
    """execute() moved: nodes are timed by the progress handler; a node that returned pending is still one
    span from its first start, and the expanded nodes are attributed to the node the user sees."""
    trace, _, _, _ = run_drift(tmp_path, "pending", "--moved-execute")
    assert trace["otherData"]["fallbacks"][0].startswith("execution.execute: nodes are timed through ComfyUI's")
    nodes = node_events(trace)
    own = [e for e in nodes if "expanded_id" not in e["args"]]
    assert sorted(e["args"]["node_id"] for e in own) == sorted(["3", "4", "5", "6", "7", "8", "9", "10", "11",
                                                                 "12"])
    by_id = {e["args"]["node_id"]: e for e in own}
    assert by_id["10"]["name"] == "DriftAsyncWait" and by_id["10"]["dur"] >= 0.25e6  # from its first start
    children = [e for e in nodes if "expanded_id" in e["args"]]
    assert len(children) == 2
    for child in children:
        assert child["args"]["node_id"] == "11" and child["name"] == "DriftExpandTwice"
        assert child["args"]["expanded_class"] == "DriftScale" and child["args"]["expanded_id"].startswith("11.")


@NEEDS_COMFYUI
def test_a_mapped_model_is_read_during_sampling_and_measured_there(tmp_path):
    trace, _, _, _ = run_drift(tmp_path, "mapped")
    (read,) = stage_events(trace, "model_load.read")
    size = read["args"]["file_bytes"]
    assert read["args"]["mapped"] is True and read["args"]["storage_read_bytes"] < 0.5 * size
    (sample,) = stage_events(trace, "sample")
    deferred = sample["args"]["deferred_read"]
    assert deferred["how"] == "page faults" and deferred["files"] == [os.path.basename(read["args"]["path"])]
    assert deferred["bytes"] >= 0.5 * size  # the diffusion model's weights: most of the file
    assert deferred["seconds"] <= sample["dur"] / 1e6 and deferred["mb_s"] > 0
    # the VAE's weights were copied (read) while the checkpoint was built; the rest waited for the sampler
    assert not any("deferred_read" in e["args"] for e in stage_events(trace, "model_load.to_device"))


@NEEDS_COMFYUI
def test_slow_deferred_reads_fire_the_slow_read_finding(tmp_path):
    trace, _, _, path = run_drift(tmp_path, "mapped", "--slow-mb-s", "20")
    assert "comfy.memory_management.read_tensor_file_slice_into" in trace["otherData"]["hooks"]
    (sample,) = stage_events(trace, "sample")
    deferred = sample["args"]["deferred_read"]
    assert deferred["how"] == "timed reads" and 12 <= deferred["mb_s"] <= 21
    finding = rule_slow_read(gather(trace))
    assert finding is not None and finding.figures["during"] == "sample" and finding.figures["mb_s"] < 21
    report = json.loads(pathlib.Path(path.replace(".trace.json", ".report.json")).read_text())
    assert "slow-read" in [f["rule"] for f in report["findings"]]


# --- the recorder's node bookkeeping, without ComfyUI ---------------------------------------------------


class Result:  # ComfyUI's ExecutionResult members, compared by name as the recorder does
    def __init__(self, name):
        self.name = name


class Graph:
    """What the recorder asks of ComfyUI's DynamicPrompt: each node's class, and for an expanded node the
    node it is displayed as."""

    def __init__(self, nodes, display=None):
        self.nodes, self.display = nodes, display or {}

    def get_node(self, node_id):
        return {"class_type": self.nodes[node_id]}

    def get_display_node_id(self, node_id):
        return self.display.get(node_id, node_id)


@pytest.fixture
def recorder(native, tmp_path):
    from comfy_nodes.core.settings import Settings
    from comfy_nodes.hooks.guard import HookGuard
    from comfy_nodes.record.recorder import Recorder

    native.drain()
    rec = Recorder(native, Settings.from_env(), lambda: str(tmp_path), HookGuard())
    rec.prompt = {"1": {"class_type": "Load"}, "2": {"class_type": "Wait"}}
    yield rec
    native.drain()


def test_pending_node_left_when_the_prompt_fails_is_closed_not_lost(recorder, native):
    graph = Graph({"1": "Load", "2": "Wait", "2.0.0.1": "Inner"}, {"2.0.0.1": "2"})
    call = recorder.node_begin(graph, "2")
    recorder.node_end(call, (Result("PENDING"), None, None), None)
    inner = recorder.node_begin(graph, "2.0.0.1")  # expanded from node 2: attributed to it
    recorder.node_end(inner, (Result("SUCCESS"), None, None), None)
    failing = recorder.node_begin(graph, "1")
    recorder.node_end(failing, (Result("FAILURE"), {}, RuntimeError("x")), None)
    recorder.outcome = 1  # the prompt failed (execution_error)
    recorder._close_pending_nodes()
    events = [e for e in native.drain().events(1) if e.get("cat") == "node"]
    by = {(e["args"]["node_id"], e["args"].get("expanded_id")): e for e in events}
    assert by[("2", "2.0.0.1")]["name"] == "Wait" and by[("2", "2.0.0.1")]["args"]["expanded_class"] == "Inner"
    assert by[("1", None)]["args"]["outcome"] == "error"
    waited = by[("2", None)]
    assert waited["args"]["outcome"] == "error" and waited["args"]["calls"] == 1  # to the prompt's end
    assert waited["ts"] <= by[("2", "2.0.0.1")]["ts"]


def test_a_node_span_already_open_on_the_thread_still_records_the_node(recorder, native):
    from comfy_nodes.core import stages

    token = native.stage_begin(stages.NODE, "outer")  # a custom node calling execute() inside a node
    call = recorder.node_begin(Graph({"1": "Load"}), "1")
    assert call.token == 0
    recorder.node_end(call, (Result("SUCCESS"), None, None), None)
    native.stage_end(token)
    names = [e["name"] for e in native.drain().events(1) if e.get("cat") == "node"]
    assert sorted(names) == ["Load", "outer"]
