"""Per-prompt bookkeeping: what the hooks learn during a prompt, recorded through the C recorder, and
the hand-over of each prompt to the writer thread when it ends.

One prompt runs at a time in ComfyUI (its single prompt worker thread); the recorder keeps the state
of the prompt in progress. The Python side decides what to record; every span, instant event, counter
and track name goes through the C recorder (bounded per-thread rings, interned names, args escaped by
the one C escaper). Only ``otherData``, the trace's metadata, is a Python structure, written once.

On the worker a prompt's end costs the drain and a metadata dict; writing, diagnosing and rendering
happen on the writer thread (record/writer.py).
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core import stages
from ..core.log import log_once, logger
from ..gpu.memory import TorchMemory, device_facts, merge_devices
from ..gpu.tracks import record_kernels, record_windows
from .live import LIVE
from .writer import PromptRecord, TraceWriterThread

VERSION = "0.1.0"
MAX_QUEUED_SUBMITS = 1024
MAX_ANATOMY = 64  # model files described per prompt
START_ATTEMPTS = 3  # prompts that try to start a collector whose start failed
MESSAGE_FIELDS = ("prompt_id", "node_id", "node_type", "exception_type", "exception_message", "nodes")


@dataclass
class NodeCall:
    """One call of ComfyUI's execute() for one node, between node_begin and node_end."""

    node_id: str  # ComfyUI's id of what runs: "5", or "5.0.0.3" for a node expanded from node 5
    class_type: str
    shown_id: str  # the node the user sees in the workflow (dynprompt's display node)
    shown_class: str
    t0: int
    token: int  # the stage span's token: its NVTX range and GPU window


@dataclass
class PendingNode:
    """A node that returned pending (lazy inputs, async work, its expansion running) and runs again."""

    t_first: int  # when its first call began
    active_ns: int = 0  # time inside execute() so far
    calls: int = 0
    call: NodeCall | None = None  # its last call (names, ids)


class Recorder:
    def __init__(self, native, settings, output_dir: Callable[[], str], guard, log_tap=None):
        self.native = native
        self.settings = settings
        self.guard = guard
        self.log_tap = log_tap  # hooks.log_tap.LogTap: installed with the first prompt
        self.writer = TraceWriterThread(native, settings, output_dir, guard)
        self.hooks: list[str] = []  # what was wrapped, for the trace metadata
        self.fallbacks: list[str] = []
        self.on_self_check_failed: Callable[[], None] | None = None
        self.gpu = None  # gpu.cupti.GpuCollection, from the first prompt on
        self.nvml = None  # gpu.nvml.NvmlSampler, likewise
        self.prompts_run = 0  # in this process, this one included
        self.memory = TorchMemory(native)
        self._submitted: dict[str, int] = {}  # prompt id -> submit time, ns
        self._lock = threading.Lock()
        self._open_nodes: dict[str, int] = {}  # progress-handler fallback: node id -> start ns
        self._files_read: set[str] = set()  # model files earlier prompts read
        self._static: dict | None = None  # process facts that do not change
        self._started = False
        self._start_attempts = 0
        self._tap_installed = log_tap is None
        self._names = {k: native.intern(k) for k in ("prompt", "thread_name", "process_name", "queue_wait")}
        self._reset_prompt()

    # --- prompt state -------------------------------------------------------------------------

    def _reset_prompt(self) -> None:
        self.prompt_id: str | None = None
        self.prompt: dict = {}
        self.cached_nodes: set[str] = set()
        self.cached_at = 0
        self.executed_nodes: set[str] = set()
        self.events_seen: list[str] = []
        self.outcome = stages.OK
        self.t_begin = 0
        self.queue_wait_ns: int | None = None
        self.anatomy: list[dict] = []  # model files read during the prompt
        self.loader_gaps: list[dict] = []  # analysis.loaders.loader_gap facts
        self.files_read: set[str] = set()
        self.cache_type: str | None = None  # the executor's cache (CLASSIC, LRU, DEPENDENCY_AWARE = --cache-none)
        self.node_spans = 0
        self._pending: dict[str, PendingNode] = {}  # node id -> the node that returned pending
        self._shown: dict[str, str] = {}  # an expanded node's id -> the id of the node the user sees
        self._expanded_class: dict[str, str] = {}  # progress-handler fallback: an expanded node's own class
        self._shown_class: dict[str, str] = {}  # and the class of the node the user sees for it
        self.client_id: str | None = None  # the page that queued the prompt (live messages go there)
        self.workflow_id: str | None = None  # the graph's identity, whatever the seeds and texts (history)

    def _start_collectors(self) -> None:
        """With the first prompt, not on import: CUPTI, the NVML thread, the log tap. One that fails for a
        reason of StageTrace's own is tried again with the next prompts (START_ATTEMPTS in all); one that
        cannot collect on this machine (no driver) is started and says why in every trace."""
        from ..gpu.cupti import GpuCollection
        from ..gpu.nvml import NvmlSampler

        self._start_attempts += 1
        if self.gpu is None:
            self.gpu = self.guard.call("GPU start", GpuCollection, self.native, self.settings.gpu,
                                       self.settings.gpu_kernels)
        if self.nvml is None:
            self.nvml = self.guard.call("NVML start", NvmlSampler, self.native, self.settings.nvml,
                                        self.settings.nvml_hz)
        if self.log_tap is not None and not self._tap_installed:
            self._tap_installed = self.guard.call("log tap", self.log_tap.install, default=False) is not False
        self._started = (self.gpu is not None and self.nvml is not None and self._tap_installed) or \
            self._start_attempts >= START_ATTEMPTS

    def on_submit(self, prompt_id: str) -> None:
        """A prompt entered the queue (PromptQueue.put)."""
        with self._lock:
            if len(self._submitted) >= MAX_QUEUED_SUBMITS:
                self._submitted.pop(next(iter(self._submitted)))
            self._submitted[str(prompt_id)] = self.native.now_ns()

    def prompt_begin(self, prompt: dict, prompt_id: str, extra_data: dict | None, executor=None) -> None:
        self._reset_prompt()
        self.prompt_id = str(prompt_id)
        cache_type = getattr(executor, "cache_type", None)
        self.cache_type = getattr(cache_type, "name", None if cache_type is None else str(cache_type))
        if not self._started:
            self._start_collectors()
        self.prompt = prompt if isinstance(prompt, dict) else {}
        client_id = extra_data.get("client_id") if isinstance(extra_data, dict) else None
        self.client_id = client_id if isinstance(client_id, str) else None
        self.workflow_id = self.guard.call("workflow id", _workflow_id, self.prompt)
        self.guard.call("live", LIVE.begin, self.prompt_id, self.client_id)
        if self.gpu is not None:
            self.guard.call("GPU round", self.gpu.round_begin)
        if self.nvml is not None:
            self.guard.call("NVML round", self.nvml.round_begin)
        self.memory.clear()
        if self.log_tap is not None:
            self.log_tap.active = True
        self.t_begin = self.native.now_ns()
        with self._lock:
            submitted = self._submitted.pop(self.prompt_id, None)
        if submitted is not None:
            self.queue_wait_ns = max(0, self.t_begin - submitted)
        elif isinstance(extra_data, dict) and isinstance(extra_data.get("create_time"), (int, float)):
            # newer ComfyUI stamps the submit time (epoch milliseconds)
            self.queue_wait_ns = max(0, int((time.time() * 1000 - extra_data["create_time"]) * 1e6))
        if self.queue_wait_ns is not None:
            n = self.native
            n.record(stages.PROMPT, self._names["queue_wait"], 0, self.t_begin - self.queue_wait_ns, self.t_begin,
                     args={"prompt_id": self.prompt_id})

    def prompt_namer(self, *args, **kwargs):
        """The prompt span's name and detail: its id, set by prompt_begin (so whatever the signature)."""
        return "prompt", str(self.prompt_id)

    def prompt_outcome(self, _result) -> int:
        return self.outcome

    def class_type(self, node_id: str) -> str:
        node = self.prompt.get(node_id)
        if isinstance(node, dict) and isinstance(node.get("class_type"), str):
            return node["class_type"]
        return "?"

    # --- node hooks (around each call of execution.execute) ----------------------------------

    def node_begin(self, dynprompt, current_item) -> NodeCall | None:
        """A call of execute() for current_item begins: open its NVTX range and GPU window. A node expanded
        from another (ids like "5.0.0.3", dynprompt's ephemeral nodes) is attributed to the node the user
        sees: dynprompt's display node, with its class."""
        n = self.native
        if not n.enabled():  # recording switched off: the call runs untimed
            return None
        node_id = str(current_item)
        class_type = _node_class(dynprompt, current_item) or self.class_type(node_id)
        shown_id, shown_class = node_id, class_type
        display = getattr(dynprompt, "get_display_node_id", None)
        if display is not None:
            shown = display(current_item)
            if shown is not None and str(shown) != node_id:
                shown_id = str(shown)
                shown_class = _node_class(dynprompt, shown) or self.class_type(shown_id)
                self._shown[node_id] = shown_id
        self.node_spans += 1
        self.executed_nodes.add(node_id)
        now = n.now_ns()
        self.guard.call("GPU memory", self.memory.sample, now, shown_id, "start")
        if node_id not in self.cached_nodes:
            self.guard.call("live", LIVE.node, shown_id, shown_class)
        # the NVTX range carries the node id as its payload when it is a number, as Nsight shows it
        payload = int(shown_id) if shown_id.isascii() and shown_id.isdigit() and len(shown_id) < 19 else 0
        token = n.stage_begin(stages.NODE, shown_class, payload)
        return NodeCall(node_id, class_type, shown_id, shown_class, now, token)

    def node_end(self, call: NodeCall | None, result, exc: BaseException | None) -> None:
        """The call returned result (execute()'s (ExecutionResult, error_details, exception)) or raised exc.
        Pending: nothing is recorded yet, the node's time so far is kept. Otherwise one node span, from the
        node's first call to now when it was pending before, with its pending time."""
        if call is None:  # node_begin failed (counted by the guard)
            return
        n = self.native
        t1 = n.now_ns()
        self.guard.call("GPU memory", self.memory.sample, t1, call.shown_id, "end")
        outcome = _node_outcome(result, exc)
        if outcome == stages.PENDING:
            n.stage_abandon(call.token)  # its NVTX range and GPU window end; the node's span comes later
            pending = self._pending.setdefault(call.node_id, PendingNode(call.t0))
            pending.active_ns += t1 - call.t0
            pending.calls += 1
            pending.call = call
            return
        if outcome == stages.OK and call.node_id in self.cached_nodes:
            outcome = stages.CACHED
        pending = self._pending.pop(call.node_id, None)
        if pending is None and call.token:  # the usual node: the C recorder times and records the span it opened
            args = {"node_id": call.shown_id}
            if call.shown_id != call.node_id:
                args.update(expanded_id=call.node_id, expanded_class=call.class_type)
            n.stage_end(call.token, args, outcome)
            return
        n.stage_abandon(call.token)  # token 0 (a node span already open on this thread): recorded from here
        self._record_call(call, t1, outcome, pending)

    def _record_call(self, call: NodeCall, t1: int, outcome: int, pending: PendingNode | None) -> None:
        """The node's span recorded from here: for a node that was pending, from its first call to t1 with
        its pending time."""
        n = self.native
        args, t0 = {}, call.t0
        if pending is not None:
            t0 = pending.t_first
            active = pending.active_ns + (t1 - call.t0 if call is not pending.call else 0)
            calls = pending.calls + (call is not pending.call)
            args = {"pending_s": max(0, t1 - t0 - active) / 1e9, "active_s": active / 1e9, "calls": calls}
        if call.shown_id != call.node_id:
            args.update(expanded_id=call.node_id, expanded_class=call.class_type)
        n.record(stages.NODE, n.intern(call.shown_class), n.intern(call.shown_id), t0, t1, outcome, args=args or None)

    def _close_pending_nodes(self) -> None:
        """Nodes still pending when the prompt ends (it failed or was interrupted meanwhile): one span each,
        to the prompt's end, with the prompt's outcome."""
        now = self.native.now_ns()
        outcome = stages.ERROR if self.outcome == stages.OK else self.outcome
        for pending in self._pending.values():
            if pending.call is not None:
                self._record_call(pending.call, now, outcome, pending)
        self._pending.clear()

    def shown_node(self, node_id: str | None) -> str | None:
        """The node the user sees for node_id (itself, or the node it was expanded from)."""
        return self._shown.get(node_id, node_id) if node_id is not None else None

    def on_message(self, event: str, data: dict) -> None:
        """PromptExecutor.add_message tap: cached nodes and prompt events, as instant events."""
        n = self.native
        now = n.now_ns()
        data = data if isinstance(data, dict) else {}
        if event == "execution_cached":
            self.cached_nodes = {str(x) for x in data.get("nodes") or ()}
        elif event == "execution_error":
            self.outcome = stages.ERROR
        elif event == "execution_interrupted":
            self.outcome = stages.INTERRUPTED
        self.events_seen.append(event)
        n.record(stages.PROMPT, n.intern(str(event)), 0, now, now, kind=n.EVENT_INSTANT,
                 cat_id=self._names["prompt"], args={k: v for k, v in data.items() if k in MESSAGE_FIELDS})
        if event == "execution_cached":
            self.cached_at = now

    # --- model files (comfy.utils.load_torch_file) --------------------------------------------

    def on_model_file(self, path: str, node_id: str | None = None) -> None:
        """Before a loader reads a file: record its anatomy, and warn when the loader node cannot give
        what its downstream nodes need (the gap is recorded as data, the warning rendered from it).
        node_id: the loader node; by default the node ComfyUI is executing."""
        self.files_read.add(path)
        if not path.lower().endswith((".safetensors", ".sft")) or len(self.anatomy) >= MAX_ANATOMY:
            return
        from ..analysis.anatomy import read_anatomy, unreadable_facts
        from ..analysis.loaders import describe_gap, loader_gap

        n = self.native
        node_id = self.shown_node(node_id if node_id is not None else _executing_node_id())
        name_id, path_id, now = n.intern("anatomy: " + os.path.basename(path)), n.intern(path), n.now_ns()
        try:
            anatomy, _ = read_anatomy(n, path)
        except n.SafetensorsError as exc:
            facts = unreadable_facts(path, exc)
            self.anatomy.append({"path": path, "node_id": node_id, **facts})
            n.record(stages.ANATOMY, name_id, path_id, now, now, stages.ERROR, kind=n.EVENT_INSTANT, args=facts)
            return
        facts = anatomy.to_dict()
        self.anatomy.append({"path": path, "node_id": node_id, **facts})
        n.record(stages.ANATOMY, name_id, path_id, now, now, stages.OK, kind=n.EVENT_INSTANT,
                 args={"family": facts["family"], "complete": facts["complete"]})
        gap = loader_gap(self.prompt, node_id, path, anatomy)
        if gap is not None:
            self.loader_gaps.append(gap)
            logger.warning("StageTrace: %s", describe_gap(gap))

    # --- progress-handler fallback (when execution.execute moved) -----------------------------

    def fallback_node_start(self, node_id: str, dynprompt=None) -> None:
        """A node starts (the progress handler's start): the first start is kept, so a node that returned
        pending and starts again is one span. dynprompt (the progress registry's) names the node the user
        sees for an expanded node."""
        node_id = str(node_id)
        self._open_nodes.setdefault(node_id, self.native.now_ns())
        display = getattr(dynprompt, "get_display_node_id", None)
        if display is not None and node_id not in self._shown:
            shown = display(node_id)
            if shown is not None and str(shown) != node_id:
                self._shown[node_id] = str(shown)
                self._expanded_class[node_id] = _node_class(dynprompt, node_id) or "?"
                self._shown_class[str(shown)] = _node_class(dynprompt, shown) or self.class_type(str(shown))

    def fallback_node_finish(self, node_id: str) -> None:
        now = self.native.now_ns()
        t0 = self._open_nodes.pop(str(node_id), None)
        if t0 is None:  # ComfyUI finishes cache hits without starting them
            self._record_node(str(node_id), now, now, stages.CACHED)
        else:
            self._record_node(str(node_id), t0, now, stages.OK)

    def _record_node(self, node_id: str, t0: int, t1: int, outcome: int) -> None:
        """One node span from the progress handler: an expanded node under the node the user sees."""
        n = self.native
        self.node_spans += 1
        shown = self._shown.get(node_id, node_id)
        if shown == node_id:
            n.record(stages.NODE, n.intern(self.class_type(node_id)), n.intern(node_id), t0, t1, outcome)
            return
        args = {"expanded_id": node_id, "expanded_class": self._expanded_class.get(node_id, "?")}
        n.record(stages.NODE, n.intern(self._shown_class.get(shown) or self.class_type(shown)), n.intern(shown),
                 t0, t1, outcome, args=args)

    def _close_fallback_nodes(self) -> None:
        now = self.native.now_ns()
        outcome = stages.ERROR if self.outcome == stages.OK else self.outcome
        for node_id, t0 in list(self._open_nodes.items()):
            self._record_node(node_id, t0, now, outcome)
        self._open_nodes.clear()

    # --- the end of a prompt ------------------------------------------------------------------

    def prompt_end(self) -> None:
        """On the worker: record what only the end knows, drain, hand the prompt to the writer thread."""
        if self.log_tap is not None:
            self.log_tap.active = False
        if self.prompt_id is None:  # prompt_begin failed: what the trace holds is of an unknown prompt
            self.prompt_id = "unknown"
        self._close_fallback_nodes()
        self.guard.call("pending nodes", self._close_pending_nodes)
        n = self.native
        for node_id in sorted(self.cached_nodes - self.executed_nodes):  # served from cache without execute()
            n.record(stages.NODE, n.intern(self.class_type(node_id)), n.intern(node_id), self.cached_at,
                     self.cached_at, stages.CACHED)
        gpu_meta = self.guard.call("GPU round", self._gpu_round, default={
            "collection": "unavailable", "reason": "GPU collection failed (see the log)"})
        nvml_meta = self.guard.call("NVML round", self.nvml.round_end) if self.nvml is not None else None
        self._name_threads()
        self._self_check()
        batch = self.native.drain()
        metadata = self._metadata(gpu_meta, nvml_meta)
        metadata["ended"] = ended = time.time()  # epoch seconds: the history's and the panel's clock
        self.writer.submit(PromptRecord(self.prompt_id, ended, batch, metadata, os.getpid(), self.client_id))
        self._reset_prompt()  # nothing of this prompt leaks into the next one, even if its prompt_begin fails

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the writer thread to write every prompt handed to it."""
        return self.writer.flush(timeout)

    @property
    def last_trace(self) -> str | None:
        return self.writer.last_trace

    @property
    def last_summary(self):
        return self.writer.last_summary

    @property
    def last_report(self):
        return self.writer.last_report

    def _gpu_round(self) -> dict | None:
        """The prompt's GPU aggregates as the GPU track; the round's metadata."""
        if self.gpu is None:
            return None
        reports, meta, detail = self.gpu.round_end()
        record_windows(self.native, reports)
        if detail:
            record_kernels(self.native, detail)
        return meta

    def _name_threads(self) -> None:
        n = self.native
        pid_name = {"name": "ComfyUI (StageTrace)"}
        n.record(0, self._names["process_name"], 0, 0, 0, kind=n.EVENT_METADATA, args=pid_name)
        for thread in threading.enumerate():
            if thread.native_id is not None:
                n.record(0, self._names["thread_name"], 0, 0, 0, kind=n.EVENT_METADATA, tid=thread.native_id,
                         args={"name": thread.name})

    def _self_check(self) -> None:
        """A prompt that ran nodes must have produced node spans."""
        succeeded = "execution_success" in self.events_seen
        ran_nodes = bool(self.prompt) and len(self.cached_nodes) < len(self.prompt)
        if succeeded and ran_nodes and self.node_spans == 0:
            log_once("self-check", "prompt %s ran with zero node spans: ComfyUI's execution.execute is no longer "
                     "called where StageTrace hooks it; node timing falls back to the progress handler from the "
                     "next prompt on", self.prompt_id)
            if self.on_self_check_failed is not None:
                self.on_self_check_failed()

    def _static_facts(self) -> dict:
        if self._static is None:
            self._static = {"stagetrace_version": VERSION,
                            "comfyui_version": getattr(sys.modules.get("comfyui_version"), "__version__", None),
                            "clock": "CLOCK_MONOTONIC, microseconds",
                            "python": platform.python_version(), "platform": platform.platform(),
                            "torch": getattr(sys.modules.get("torch"), "__version__", None)}
        return self._static

    def _process_facts(self) -> dict:
        """What this prompt shares with the ones before it in this process (warm-up, reloads), and
        ComfyUI's memory mode."""
        self.prompts_run += 1
        facts = {"prompt_index": self.prompts_run, "reread_files": sorted(self.files_read & self._files_read)}
        self._files_read |= self.files_read
        mm = sys.modules.get("comfy.model_management")
        if mm is not None:
            state = getattr(mm, "vram_state", None)
            facts["comfyui"] = {"smart_memory": not getattr(mm, "DISABLE_SMART_MEMORY", False),
                                "vram_state": getattr(state, "name", None),
                                "cpu_only": getattr(getattr(mm, "cpu_state", None), "name", None) == "CPU",
                                "cache_type": self.cache_type, "options": comfyui_options()}
        return facts

    def _metadata(self, gpu_meta: dict | None, nvml_meta: dict | None) -> dict:
        n = self.native
        count, last = n.hook_errors()
        meta = dict(self._static_facts())
        if gpu_meta is not None:
            gpu_meta["devices"] = merge_devices(self.guard.call("GPU devices", device_facts, default=[]),
                                                nvml_meta or {})
            gpu_meta["peak_allocated_by_node"] = self.memory.peaks()
            gpu_meta["nvml"] = nvml_meta
        meta.update({
            "prompt_id": self.prompt_id,
            "outcome": stages.OUTCOMES[self.outcome],
            "queue_wait_s": None if self.queue_wait_ns is None else self.queue_wait_ns / 1e9,
            "workflow_id": self.workflow_id,
            "hooks": list(self.hooks),
            "fallbacks": list(self.fallbacks),
            "dropped_events": n.dropped(),
            "dropped_args": n.args_dropped(),
            "dropped_prompts": self.writer.dropped_prompts,
            "hook_errors": count,
            "last_hook_error": last or None,
            "hook_failures": self.guard.snapshot(),
            "nvtx": bool(n.nvtx_enabled()),
            "anatomy": self.anatomy,
            "loader_gaps": self.loader_gaps,
            "process": self._process_facts(),
            "gpu": gpu_meta,
        })
        if count:
            log_once("hook-error", "a hook failed and was skipped (%s); the prompt was not affected", last)
        return meta


# ComfyUI's launch options that change how fast or whether a prompt runs (comfy/cli_args.py), as the
# command line spells them; the diagnosis names the one responsible.
COMFYUI_OPTIONS = ("cpu", "lowvram", "novram", "highvram", "normalvram", "gpu_only", "cache_none", "cache_lru",
                   "cache_classic", "disable_smart_memory", "disable_mmap", "reserve_vram", "cpu_vae",
                   "force_fp16", "force_fp32", "fp8_e4m3fn_unet", "fp8_e5m2_unet")


def comfyui_options() -> dict:
    """The options ComfyUI was started with, among COMFYUI_OPTIONS, that are not at their default:
    {"--cache-none": True, "--reserve-vram": 2.0, ...}. Empty outside ComfyUI."""
    args = getattr(sys.modules.get("comfy.cli_args"), "args", None)
    out = {}
    for name in COMFYUI_OPTIONS:
        value = getattr(args, name, None)
        if value not in (None, False, 0):
            out["--" + name.replace("_", "-")] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def _node_class(dynprompt, node_id) -> str | None:
    """The class_type of node_id in ComfyUI's DynamicPrompt, None where it does not say."""
    try:
        class_type = dynprompt.get_node(node_id)["class_type"]
    except Exception:  # noqa: BLE001 - a node ComfyUI cannot find: the prompt's own entry is used
        return None
    return class_type if isinstance(class_type, str) else None


def _node_outcome(result, exc: BaseException | None) -> int:
    """Classify execute()'s (ExecutionResult, error_details, exception) tuple, or the exception it raised.
    ExecutionResult is compared by name: SUCCESS, FAILURE, PENDING."""
    if exc is not None:
        return stages.INTERRUPTED if _is_interrupt(exc) or not isinstance(exc, Exception) else stages.ERROR
    status = getattr(result[0], "name", None) if isinstance(result, tuple) and result else None
    if status == "FAILURE":
        failure = result[2] if len(result) > 2 else None
        return stages.INTERRUPTED if _is_interrupt(failure) else stages.ERROR
    if status == "PENDING":
        return stages.PENDING
    return stages.OK


def _executing_node_id() -> str | None:
    utils = sys.modules.get("comfy_execution.utils")
    context = utils.get_executing_context() if utils and hasattr(utils, "get_executing_context") else None
    return str(context.node_id) if context is not None else None


def _is_interrupt(exc: object) -> bool:
    mm = sys.modules.get("comfy.model_management")
    interrupt = getattr(mm, "InterruptProcessingException", None)
    return isinstance(exc, KeyboardInterrupt) or (interrupt is not None and isinstance(exc, interrupt))


def _workflow_id(prompt: dict) -> str | None:
    """The workflow's identity for the run history (history/identity.py), or None without it."""
    try:
        from ..history.identity import workflow_id
    except ImportError:
        return None
    return workflow_id(prompt)
