"""The writer thread: everything after a prompt's drain happens here, never on ComfyUI's prompt worker.

The worker hands over one ``PromptRecord`` (the drained C event batch and the prompt's metadata) and
goes on: ComfyUI updates /history, sends the completion message and starts the next prompt while this
thread writes the trace with the C trace writer, builds the report from the same recorded events in
memory (never by reading the file back) and compares it with the workflow's earlier runs (the run
history), counts it in the Prometheus metrics, prints the console summary, writes the report files beside
the trace, and applies the retention bound. The queue is bounded: when it
is full a whole prompt is dropped and counted (``dropped_prompts`` in the next trace), the worker never
waits.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core.log import log_once, logger
from .live import LIVE
from .tracefile import SUFFIX, trace_path, write_new

REPORT_SUFFIXES = (".report.html", ".report.json")
AFTER_PROMPT_GRACE_S = 0.02
HISTORY_RUNS = 10  # earlier runs of the same workflow a prompt is compared with
# Only files of this shape are StageTrace's own: retention never touches anything else.
_OWN_TRACE = re.compile(r"^\d{8}-\d{6}_[A-Za-z0-9_-]+" + re.escape(SUFFIX) + "$")


@dataclass
class PromptRecord:
    """One prompt's recorded data, handed from the worker to the writer thread."""

    prompt_id: str
    ended: float  # time.time() at the prompt's end, for the file name
    batch: object  # the C EventBatch drained at the prompt's end
    metadata: dict  # the trace's otherData
    pid: int
    client_id: str | None = None  # the page that queued it: told when the trace and report are written


class TraceWriterThread:
    """A daemon thread with a bounded queue of prompts to write. ``flush()`` waits for it to be idle."""

    def __init__(self, native, settings, output_dir: Callable[[], str], guard) -> None:
        self.native = native
        self.settings = settings
        self.output_dir = output_dir
        self.guard = guard
        self.dropped_prompts = 0
        self.written = 0
        self.last_trace: str | None = None
        self.last_report = None
        self.last_summary = None
        self.metrics = None  # surfaces.metrics.Metrics: each prompt is counted after its trace is written
        self.history = None  # history.lazy.LazyHistory: each prompt is compared with its workflow's last runs
        self._queue: queue.Queue[PromptRecord] = queue.Queue(maxsize=settings.writer_queue)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, record: PromptRecord) -> bool:
        """Queue a prompt for writing; False (and counted) when the queue is full. Never blocks."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped_prompts += 1
            if self.metrics is not None:  # still counted by outcome: the prompt ran, only its trace is lost
                self.guard.call("metrics", self.metrics.count_unrecorded, record.metadata.get("outcome"))
            log_once("writer-full", "the trace writer is behind (%d prompts queued): prompt %s was not written; "
                     "dropped prompts are counted in the next trace", self._queue.qsize(), record.prompt_id)
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued prompt is written; False when timeout (seconds) ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="StageTrace writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if self._queue.qsize() == 0:
                # Woken from idle: let ComfyUI finish its own end of the prompt first (the history, the
                # completion message, the next prompt's start) instead of taking the GIL from it. A backlog
                # is written straight on.
                time.sleep(AFTER_PROMPT_GRACE_S)
            try:
                self.guard.call("trace writer", self.write, record)
            finally:
                self._queue.task_done()

    # --- one prompt ---------------------------------------------------------------------------

    def write(self, record: PromptRecord) -> str | None:
        """Write the trace, then the summary and reports from the same events, then prune old files."""
        directory = self.output_dir()
        os.makedirs(directory, exist_ok=True)
        path = trace_path(directory, record.prompt_id, record.ended)
        writer = self.native.TraceWriter(path)
        try:
            writer.write_batch(record.batch, record.pid, 0)
            writer.commit(json.dumps(record.metadata, separators=(",", ":"), default=str))
        finally:
            writer.abort()  # no-op after commit; removes the temporary file otherwise
        self.last_trace = path
        self.written += 1
        if self.settings.summary or self.settings.report or self.metrics is not None or self.history is not None:
            self.guard.call("report", self._report, record, path)
        self.guard.call("retention", prune, directory, self.settings.keep_traces, self.settings.keep_days * 86400.0,
                        self.settings.keep_mb * 1e6, keep=path)
        self.guard.call("live", LIVE.done, record.prompt_id, str(record.metadata.get("outcome")), record.client_id)
        return path

    def _report(self, record: PromptRecord, path: str) -> None:
        from ..analysis.diagnose import diagnose
        from ..render.report import render

        trace = {"traceEvents": record.batch.events(record.pid), "otherData": record.metadata}
        earlier = self.guard.call("history", self._earlier_runs, record, default=None)
        report = diagnose(trace, history=earlier)
        report.summary.trace_path = path
        self.guard.call("history", self._remember, report, record, path)  # its failure spares the rest
        self.last_summary, self.last_report = report.summary, report
        if self.metrics is not None:
            self.guard.call("metrics", self.metrics.observe, trace, report)
        if self.settings.summary:  # one line; the whole summary when asked for, or when the prompt failed
            if self.settings.summary_full or report.summary.outcome != "ok" or report.summary.failures:
                logger.info("%s", render(report, "text"))
            else:
                from ..render.text import format_line

                first = report.findings[0] if report.findings else None
                logger.info("%s", format_line(report.summary, f"{first.title} (stagetrace report for more)"
                                              if first else None))
        if self.settings.report:
            stem = path[: -len(SUFFIX)]
            for fmt, suffix in (("html", ".report.html"), ("json", ".report.json")):
                if not write_new(stem + suffix, render(report, fmt, trace, previous=earlier[0] if earlier else None)):
                    log_once("report-exists", "%s exists; the report was not written over it", stem + suffix)

    # --- the run history (history/: the regression finding, `stagetrace history`, the panel's runs) ------

    def _earlier_runs(self, record: PromptRecord) -> list[dict] | None:
        """The last runs of this prompt's workflow, newest first; None without a history (off, or its database
        cannot be used now: one log line, and profiling goes on)."""
        workflow_id = record.metadata.get("workflow_id")
        if self.history is None or not workflow_id:
            return None
        from ..history.store import HistoryError

        try:
            return self.history.recent(workflow_id, HISTORY_RUNS, before_prompt=record.prompt_id)
        except HistoryError as exc:
            log_once("history", "the run history cannot be used (%s); profiling goes on without it", exc)
            return None

    def _remember(self, report, record: PromptRecord, path: str) -> None:
        if self.history is None:
            return
        from ..history.store import HistoryError, run_from_report

        try:
            self.history.record(run_from_report(report, {**record.metadata, "ended": record.ended}, path))
        except HistoryError as exc:
            log_once("history", "the run history cannot be used (%s); profiling goes on without it", exc)


# --- Retention ------------------------------------------------------------------------------------


def prune(directory: str, max_count: int, max_age_s: float, max_bytes: float, keep: str | None = None) -> int:
    """Remove StageTrace's oldest traces (each with its report files) until at most max_count remain,
    none is older than max_age_s and they take at most max_bytes; ``keep`` (the newest trace) is never
    removed. Files that are not StageTrace's (by name) are never touched. Returns traces removed."""
    now = time.time()
    groups = []  # (mtime, stem, bytes)
    with os.scandir(directory) as entries:
        sizes: dict[str, int] = {}
        mtimes: dict[str, float] = {}
        for entry in entries:
            name = entry.name
            stem = None
            if _OWN_TRACE.match(name):
                stem = name[: -len(SUFFIX)]
            else:
                for suffix in REPORT_SUFFIXES:
                    if name.endswith(suffix) and _OWN_TRACE.match(name[: -len(suffix)] + SUFFIX):
                        stem = name[: -len(suffix)]
            if stem is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            sizes[stem] = sizes.get(stem, 0) + st.st_size
            if name.endswith(SUFFIX):
                mtimes[stem] = st.st_mtime
    for stem, mtime in mtimes.items():
        groups.append((mtime, stem, sizes.get(stem, 0)))
    groups.sort()
    total = sum(size for _, _, size in groups)
    keep_stem = os.path.basename(keep)[: -len(SUFFIX)] if keep else None
    removed = 0
    for i, (mtime, stem, size) in enumerate(groups):
        left = len(groups) - i
        if stem == keep_stem:
            continue
        if left <= max_count and now - mtime <= max_age_s and total <= max_bytes:
            break
        for suffix in (SUFFIX, *REPORT_SUFFIXES):
            try:
                os.unlink(os.path.join(directory, stem + suffix))
            except FileNotFoundError:
                pass
        total -= size
        removed += 1
    return removed
