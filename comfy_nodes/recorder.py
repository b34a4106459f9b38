"""Per-prompt bookkeeping: what the hooks learn during a prompt, and the trace
and console summary written when it ends.

One prompt runs at a time in ComfyUI (its single prompt worker thread); the
recorder keeps the state of the prompt in progress. Every method called from
a hook is fail-open: it logs once and carries on, never raising into ComfyUI.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable

from . import stages
from .gpu import TorchMemory, device_facts, merge_devices, record_events, window_events
from .log import log_once, logger
from .tracefile import load, trace_path, write_new

VERSION = "0.1.0"
MAX_QUEUED_SUBMITS = 1024


class Recorder:
    def __init__(self, native, settings, output_dir: Callable[[], str]):
        self.native = native
        self.settings = settings
        self._output_dir = output_dir
        self.hooks: list[str] = []  # what was wrapped, for the trace metadata
        self.fallbacks: list[str] = []
        self.last_trace: str | None = None
        self.last_summary = None
        self.last_report = None
        self._submitted: dict[str, int] = {}  # prompt id -> submit time, ns
        self._lock = threading.Lock()
        self._reset_prompt()
        self._hook_errors_seen = 0
        self._open_nodes: dict[str, int] = {}  # fallback: node id -> start ns
        self.on_self_check_failed: Callable[[], None] | None = None
        self.gpu = None  # a gpu.GpuCollection once installed
        self.nvml = None  # a gpu.NvmlSampler once installed
        self.spans = None  # a stagehooks.StageSpans once installed
        self.prompts_run = 0  # in this process, this one included
        self._files_read: set[str] = set()  # model files earlier prompts read
        self.log_tap = None  # a stagehooks.LogTap once installed
        self.memory = TorchMemory()
        self._node_stack: list[str] = []  # nodes running now, for the memory samples at their end

    # --- prompt state ---------------------------------------------------

    def _reset_prompt(self) -> None:
        self.prompt_id: str | None = None
        self.prompt: dict = {}
        self.cached_nodes: set[str] = set()
        self.messages: list[tuple[int, str, dict]] = []
        self.outcome = stages.OK
        self.t_begin = 0
        self.queue_wait_ns: int | None = None
        self.anatomy: list[dict] = []  # model files read during the prompt
        self.warnings: list[str] = []

    def on_submit(self, prompt_id: str) -> None:
        """A prompt entered the queue (PromptQueue.put)."""
        with self._lock:
            if len(self._submitted) >= MAX_QUEUED_SUBMITS:
                self._submitted.pop(next(iter(self._submitted)))
            self._submitted[str(prompt_id)] = self.native.now_ns()

    def prompt_begin(self, prompt: dict, prompt_id: str, extra_data: dict | None) -> None:
        self._reset_prompt()
        self.prompt_id = str(prompt_id)
        self.prompt = prompt if isinstance(prompt, dict) else {}
        if self.gpu is not None:
            self.gpu.round_begin()
        if self.nvml is not None:
            _safe(self.nvml.round_begin, None)
        self.memory.clear()
        self._node_stack = []
        for collector in (self.spans, self.log_tap):
            if collector is not None:
                collector.clear()
        self.t_begin = self.native.now_ns()
        with self._lock:
            submitted = self._submitted.pop(self.prompt_id, None)
        if submitted is not None:
            self.queue_wait_ns = max(0, self.t_begin - submitted)
        elif isinstance(extra_data, dict) and isinstance(extra_data.get("create_time"), (int, float)):
            # newer ComfyUI stamps the submit time (epoch milliseconds)
            self.queue_wait_ns = max(0, int((time.time() * 1000 - extra_data["create_time"]) * 1e6))

    def prompt_namer(self, executor, prompt, prompt_id, *args, **kwargs):
        return "prompt", str(prompt_id)

    def prompt_outcome(self, _result) -> int:
        return self.outcome

    def class_type(self, node_id: str) -> str:
        node = self.prompt.get(node_id)
        if isinstance(node, dict) and isinstance(node.get("class_type"), str):
            return node["class_type"]
        return "?"

    # --- node hooks (called by the C wrapper around execution.execute) --

    def node_namer(self, server, dynprompt, caches, current_item, *args, **kwargs):
        node_id = str(current_item)
        try:
            class_type = dynprompt.get_node(current_item)["class_type"]
        except Exception:
            class_type = self.class_type(node_id)
        hint = stages.CACHED if node_id in self.cached_nodes else None
        self._sample_memory(node_id, "start")
        return class_type, node_id, hint

    def _sample_memory(self, node_id: str, boundary: str) -> None:
        try:
            if boundary == "start":
                self._node_stack.append(node_id)
            elif self._node_stack:
                node_id = self._node_stack.pop()
            self.memory.sample(self.native.now_ns(), node_id, boundary)
        except Exception as exc:  # noqa: BLE001 - never break the host
            log_once("gpu-memory", "GPU memory figures skipped (%s: %s)", type(exc).__name__, exc)

    def node_outcome(self, result) -> int:
        """Classify execute()'s (ExecutionResult, error_details, exception) tuple."""
        self._sample_memory("", "end")
        status = getattr(result[0], "name", None) if isinstance(result, tuple) and result else None
        if status == "FAILURE":
            exc = result[2] if len(result) > 2 else None
            return stages.INTERRUPTED if _is_interrupt(exc) else stages.ERROR
        if status == "PENDING":
            return stages.PENDING
        return stages.OK

    def on_message(self, event: str, data: dict) -> None:
        """PromptExecutor.add_message tap: cached nodes and prompt events."""
        now = self.native.now_ns()
        data = data if isinstance(data, dict) else {}
        if event == "execution_cached":
            self.cached_nodes = {str(n) for n in data.get("nodes") or ()}
        elif event == "execution_error":
            self.outcome = stages.ERROR
        elif event == "execution_interrupted":
            self.outcome = stages.INTERRUPTED
        self.messages.append((now, event, data))

    # --- model files (comfy.utils.load_torch_file) ------------------------

    def on_model_file(self, path: str) -> None:
        """Before a loader reads a file: record its anatomy, and warn when the
        loader node cannot give what its downstream nodes need."""
        if not str(path).lower().endswith((".safetensors", ".sft")):
            return
        from .anatomy import read_anatomy

        path = str(path)
        n = self.native
        node_id = _executing_node_id()
        name_id, path_id, now = n.intern("anatomy: " + os.path.basename(path)), n.intern(path), n.now_ns()
        try:
            anatomy, _ = read_anatomy(n, path)
        except n.SafetensorsError as exc:
            self.anatomy.append({"path": path, "node_id": node_id, "error": str(exc)})
            n.record(stages.ANATOMY, name_id, path_id, now, now, stages.ERROR, instant=True)
            return
        self.anatomy.append({"path": path, "node_id": node_id, **anatomy.to_dict()})
        n.record(stages.ANATOMY, name_id, path_id, now, now, stages.OK, instant=True)
        warning = self._loader_warning(node_id, path, anatomy)
        if warning:
            self.warnings.append(warning)
            logger.warning("StageTrace: %s", warning)

    def _loader_warning(self, node_id: str | None, path: str, anatomy) -> str | None:
        node = self.prompt.get(node_id) if node_id is not None else None
        outputs = _LOADER_OUTPUTS.get(node.get("class_type")) if isinstance(node, dict) else None
        if not outputs:
            return None
        missing = {index: what for index, (kind, what) in outputs.items() if not anatomy.of_kind(kind)}
        consumers = {index: [] for index in missing}
        for other_id, other in self.prompt.items():
            for value in (other.get("inputs") or {}).values() if isinstance(other, dict) else ():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) == node_id and value[1] in missing:
                    consumers[value[1]].append(f"{other.get('class_type', '?')} #{other_id}")
        needed = [f"no {missing[i]}, which {', '.join(users)} need{'s' if len(users) == 1 else ''}"
                  for i, users in consumers.items() if users]
        if not needed:
            return None
        advice = "; ".join(f"{step.node} ({', '.join(f'{k}={v}' for k, v in step.inputs.items())})"
                           for step in anatomy.loading_advice(os.path.basename(path)))
        text = (f"{node['class_type']} #{node_id} loads {os.path.basename(path)} ({anatomy.family_label}), which has "
                f"{' and '.join(needed)}: this prompt will fail there. ")
        return text + (f"Load it with: {advice}." if advice else "Use a complete checkpoint.")

    # --- progress-handler fallback (when execution.execute moved) -------

    def fallback_node_start(self, node_id: str) -> None:
        self._open_nodes[str(node_id)] = self.native.now_ns()

    def fallback_node_finish(self, node_id: str) -> None:
        now = self.native.now_ns()
        t0 = self._open_nodes.pop(str(node_id), None)
        if t0 is None:  # ComfyUI finishes cache hits without starting them
            self._record_node(str(node_id), now, now, stages.CACHED)
        else:
            self._record_node(str(node_id), t0, now, stages.OK)

    def _record_node(self, node_id: str, t0: int, t1: int, outcome: int) -> None:
        n = self.native
        n.record(stages.NODE, n.intern(self.class_type(node_id)), n.intern(node_id), t0, t1, outcome)

    # --- the end of a prompt ---------------------------------------------

    def prompt_end(self) -> str | None:
        """Drain, write the trace, print the summary. Returns the trace path."""
        self._close_fallback_nodes()
        batch = self.native.drain()
        recorded = batch.tolist()
        self._self_check(sum(1 for ev in recorded if ev[5] == stages.NODE))
        directory = self._output_dir()
        os.makedirs(directory, exist_ok=True)
        path = trace_path(directory, self.prompt_id or "prompt")
        gpu_reports, gpu_meta, gpu_records = self._gpu_round()
        writer = self.native.TraceWriter(path)
        try:
            pid = os.getpid()
            writer.write_batch(batch, pid, 0)
            nvml_events, nvml_meta = (_safe(lambda: self.nvml.round_end(pid), ([], None)) if self.nvml is not None
                                      else ([], None))
            events = (self._extra_events(recorded, pid) + window_events(gpu_reports, self.native.name_of, pid)
                      + record_events(gpu_records, pid) + self.memory.events(pid) + nvml_events
                      + (self.spans.trace_events(pid) if self.spans is not None else [])
                      + (self.log_tap.trace_events(pid) if self.log_tap is not None else []))
            for event in events:
                writer.write_raw(json.dumps(event, separators=(",", ":"), default=str))
            metadata = self._metadata()
            if self.spans is not None:
                metadata["dropped_stage_spans"] = self.spans.dropped
            metadata["process"] = self._process_facts()
            metadata["gpu"] = gpu_meta
            if gpu_meta is not None:
                gpu_meta["devices"] = merge_devices(_safe(device_facts, []), nvml_meta or {})
                gpu_meta["peak_allocated_by_node"] = self.memory.peaks()
                gpu_meta["nvml"] = nvml_meta
            writer.commit(json.dumps(metadata, separators=(",", ":"), default=str))
        finally:
            writer.abort()  # no-op after commit; removes the temporary file otherwise
        self.last_trace = path
        self._report_hook_errors()
        if self.settings.summary or self.settings.report:
            try:
                self._report(path)
            except Exception as exc:  # noqa: BLE001 - the trace is written; only the report is lost
                log_once("report", "the report for %s failed (%s: %s); the trace is complete", path,
                         type(exc).__name__, exc)
        return path

    def _report(self, path: str) -> None:
        """The console summary with the findings, and the report files beside the trace."""
        from .diagnose import diagnose
        from .report import render

        trace = load(path)
        report = diagnose(trace)
        report.summary.trace_path = path
        self.last_summary = report.summary
        self.last_report = report
        if self.settings.summary:
            logger.info("%s", render(report, "text"))
        if self.settings.report:
            stem = path[: -len(".trace.json")] if path.endswith(".trace.json") else path
            for fmt, suffix in (("html", ".report.html"), ("json", ".report.json")):
                if not write_new(stem + suffix, render(report, fmt, trace)):
                    log_once("report-exists", "%s exists; the report was not written over it", stem + suffix)

    def _process_facts(self) -> dict:
        """What this prompt shares with the ones before it in this process (warm-up, reloads), and
        ComfyUI's memory mode."""
        self.prompts_run += 1
        read_now = {e["args"].get("path") for e in (self.spans.events if self.spans is not None else ())
                    if e.get("cat") == "model_load.read" and e["args"].get("path")}
        facts = {"prompt_index": self.prompts_run, "reread_files": sorted(read_now & self._files_read)}
        self._files_read |= read_now
        mm = sys.modules.get("comfy.model_management")
        if mm is not None:
            state = getattr(mm, "vram_state", None)
            facts["comfyui"] = {"smart_memory": not getattr(mm, "DISABLE_SMART_MEMORY", False),
                                "vram_state": getattr(state, "name", None),
                                "cpu_only": getattr(getattr(mm, "cpu_state", None), "name", None) == "CPU"}
        return facts

    def _gpu_round(self) -> tuple[list[dict], dict | None, list[tuple]]:
        """The prompt's GPU aggregates; a failure here costs the GPU figures, never the trace."""
        if self.gpu is None:
            return [], None, []
        try:
            return self.gpu.round_end()
        except Exception as exc:  # noqa: BLE001
            log_once("gpu-round", "GPU figures skipped (%s: %s)", type(exc).__name__, exc)
            return [], {"collection": "unavailable", "reason": f"GPU collection failed: {exc}"}, []

    def _close_fallback_nodes(self) -> None:
        now = self.native.now_ns()
        outcome = stages.ERROR if self.outcome == stages.OK else self.outcome
        for node_id, t0 in list(self._open_nodes.items()):
            self._record_node(node_id, t0, now, outcome)
        self._open_nodes.clear()

    def _self_check(self, node_spans: int) -> None:
        """A prompt that ran nodes must have produced node spans."""
        succeeded = any(event == "execution_success" for _, event, _ in self.messages)
        ran_nodes = bool(self.prompt) and len(self.cached_nodes) < len(self.prompt)
        if succeeded and ran_nodes and node_spans == 0:
            log_once(
                "self-check",
                "prompt %s ran with zero node spans: ComfyUI's execution.execute is no "
                "longer called where StageTrace hooks it; node timing falls back to the "
                "progress handler from the next prompt on",
                self.prompt_id,
            )
            if self.on_self_check_failed is not None:
                self.on_self_check_failed()

    def _extra_events(self, recorded: list[tuple], pid: int) -> list[dict]:
        """Events only Python knows: names of threads, prompt messages, cached
        nodes that never reached execute(), the queue wait."""
        tid = threading.get_native_id()
        events: list[dict] = [
            {"ph": "M", "name": "process_name", "pid": pid, "tid": tid, "args": {"name": "ComfyUI (StageTrace)"}}
        ]
        native_names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        for thread_id in sorted({ev[4] for ev in recorded} | {tid}):
            name = native_names.get(thread_id, f"thread {thread_id}")
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": thread_id, "args": {"name": name}})
        executed = {
            self.native.name_of(ev[3]) for ev in recorded if ev[5] == stages.NODE and ev[3] != 0
        }
        for ts_ns, event, data in self.messages:
            args = {k: v for k, v in data.items() if k in _MESSAGE_FIELDS}
            events.append({"ph": "i", "s": "t", "cat": "prompt", "name": event, "ts": ts_ns / 1e3,
                           "pid": pid, "tid": tid, "args": args})
            if event == "execution_cached":
                for node_id in sorted(self.cached_nodes - executed):
                    events.append({"ph": "X", "cat": "node", "name": self.class_type(node_id), "ts": ts_ns / 1e3,
                                   "dur": 0, "pid": pid, "tid": tid,
                                   "args": {"outcome": "cached", "node_id": node_id}})
        if self.queue_wait_ns is not None:
            events.append({"ph": "X", "cat": "prompt", "name": "queue_wait",
                           "ts": (self.t_begin - self.queue_wait_ns) / 1e3, "dur": self.queue_wait_ns / 1e3,
                           "pid": pid, "tid": tid, "args": {"prompt_id": self.prompt_id}})
        return events

    def _metadata(self) -> dict:
        comfy_version = getattr(sys.modules.get("comfyui_version"), "__version__", None)
        torch = sys.modules.get("torch")
        count, last = self.native.hook_errors()
        return {
            "stagetrace_version": VERSION,
            "comfyui_version": comfy_version,
            "prompt_id": self.prompt_id,
            "outcome": stages.OUTCOMES[self.outcome],
            "queue_wait_s": None if self.queue_wait_ns is None else self.queue_wait_ns / 1e9,
            "hooks": list(self.hooks),
            "fallbacks": list(self.fallbacks),
            "dropped_events": self.native.dropped(),
            "hook_errors": count,
            "last_hook_error": last or None,
            "clock": "CLOCK_MONOTONIC, microseconds",
            "nvtx": bool(self.native.nvtx_enabled()),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": getattr(torch, "__version__", None),
            "anatomy": self.anatomy,
            "warnings": self.warnings,
        }

    def _report_hook_errors(self) -> None:
        count, last = self.native.hook_errors()
        if count > self._hook_errors_seen:
            self._hook_errors_seen = count
            log_once("hook-error", "a hook failed and was skipped (%s); the prompt was not affected", last)


# Loader node class -> {output index: (component kind it needs, what to call it)}
_LOADER_OUTPUTS = {
    "CheckpointLoaderSimple": {1: ("text_encoder", "text encoder (CLIP)"), 2: ("vae", "VAE")},
    "CheckpointLoader": {1: ("text_encoder", "text encoder (CLIP)"), 2: ("vae", "VAE")},
    "unCLIPCheckpointLoader": {1: ("text_encoder", "text encoder (CLIP)"), 2: ("vae", "VAE")},
}


def _safe(fn, default):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        log_once(f"safe-{fn.__name__}", "%s skipped (%s: %s)", fn.__name__, type(exc).__name__, exc)
        return default


def _executing_node_id() -> str | None:
    utils = sys.modules.get("comfy_execution.utils")
    context = utils.get_executing_context() if utils and hasattr(utils, "get_executing_context") else None
    return str(context.node_id) if context is not None else None


_MESSAGE_FIELDS = ("prompt_id", "node_id", "node_type", "exception_type", "exception_message", "nodes")


def _is_interrupt(exc: object) -> bool:
    mm = sys.modules.get("comfy.model_management")
    interrupt = getattr(mm, "InterruptProcessingException", None)
    return isinstance(exc, KeyboardInterrupt) or (interrupt is not None and isinstance(exc, interrupt))
