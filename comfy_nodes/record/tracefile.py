"""Reading StageTrace traces (Chrome Trace Event JSON) back, with errors that
name the file and the byte offset or field."""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field

from ..core.jsonfile import read_json

SUFFIX = ".trace.json"


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and where."""


def trace_path(output_dir: str, prompt_id: str, when: float | None = None) -> str:
    """``<output_dir>/<YYYYmmdd-HHMMSS>_<prompt-id>.trace.json``, with ``-2``,
    ``-3``... added when that name is taken (files are never overwritten; the
    writer still refuses to replace one that appears meanwhile). The prompt id
    is reduced to letters, digits, '-' and '_' so it is always a safe name."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    safe_id = re.sub(r"[^A-Za-z0-9_-]", "_", prompt_id)[:80] or "prompt"
    path = os.path.join(output_dir, f"{stamp}_{safe_id}{SUFFIX}")
    n = 1
    while os.path.lexists(path):
        n += 1
        path = os.path.join(output_dir, f"{stamp}_{safe_id}-{n}{SUFFIX}")
    return path


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The metadata fields the analysis reads as plain values: (key, check, what it must be).
OTHER_FIELDS = (
    ("queue_wait_s", lambda v: _number(v) and v >= 0, "a number of seconds"),
    ("dropped_events", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a count"),
    ("dropped_prompts", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a count"),
    ("prompt_id", lambda v: isinstance(v, str), "a string"),
    ("outcome", lambda v: isinstance(v, str), "a string"),
    ("workflow_id", lambda v: isinstance(v, str), "a string"),
)


def load(path: str) -> dict:
    """The parsed trace; TraceError naming the file and the field for anything that is not a Chrome Trace Event
    JSON trace StageTrace can read (its own, Perfetto's, Chrome's, torch.profiler's). Checked here, once, so
    the analysis and the renderers can trust the shapes: an object with a traceEvents list (or the bare list);
    each event an object; its name, cat and ph strings when present, its args and the otherData objects; ts
    and dur finite numbers where the event kind needs them, dur not negative; an args outcome a string."""
    trace = read_json(path, TraceError)
    if isinstance(trace, list):  # the bare-array form of the format
        trace = {"traceEvents": trace}
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise TraceError(f"{path}: field 'traceEvents': missing or not a list")
    _check_other(path, trace.get("otherData", {}))
    for i, event in enumerate(trace["traceEvents"]):
        where = f"{path}: field 'traceEvents[{i}]"
        if not isinstance(event, dict):
            raise TraceError(f"{where}': not an object")
        for key in ("name", "cat", "ph"):
            if key in event and not isinstance(event[key], str):
                raise TraceError(f"{where}.{key}': not a string")
        args = event.get("args")
        if args is not None and not isinstance(args, dict):
            raise TraceError(f"{where}.args': not an object")
        if isinstance(args, dict) and "outcome" in args and not isinstance(args["outcome"], str):
            raise TraceError(f"{where}.args.outcome': not a string")
        ph = event.get("ph")
        if ph in ("X", "i", "I", "B", "E", "C") and not _number(event.get("ts")):
            raise TraceError(f"{where}.ts': missing or not a finite number")
        if ph == "X" and not (_number(event.get("dur")) and event["dur"] >= 0):
            raise TraceError(f"{where}.dur': missing, negative or not a finite number")
    return trace


def _check_other(path: str, other: object) -> None:
    if not isinstance(other, dict):
        raise TraceError(f"{path}: field 'otherData': not an object")
    for key, ok, what in OTHER_FIELDS:
        if other.get(key) is not None and not ok(other[key]):
            raise TraceError(f"{path}: field 'otherData.{key}': not {what}")


# --- Reading big traces: streaming and bounded ------------------------------------------------------

# What the analysis reads whole: the spans of StageTrace's stages and its GPU windows, ComfyUI's log lines
# and prompt events. Every other complete event (per-kernel detail, a foreign trace's CPU ops and kernels)
# is kept whole only up to OTHER_KEPT; beyond, it is its interval in its category's columns and a count.
# Counters, metadata and flow events are counted and checked, never kept.
PRIORITY_KEPT = 100_000
OTHER_KEPT = 20_000
MAX_VALUE = 256 << 20  # the most bytes of one event, or of one top-level value such as otherData
CHUNK = 1 << 20
MISSING_CAT = "\x1e"  # the scanner's name for the category of an event that has none


@dataclass
class SpanColumn:
    """The intervals (µs) of every complete event of one category, as packed doubles in file order."""

    begins: bytes
    ends: bytes
    min_begin: float
    max_end: float
    omitted: int  # of these events, how many were not kept whole
    names: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (spans, summed µs)
    other_names: tuple[int, float] = (0, 0.0)  # the spans of names beyond the scanner's names table

    def __len__(self) -> int:
        return len(self.begins) // 8


@dataclass
class Digest:
    """What the streaming reader measured over all of a trace's events, beside the events it kept whole."""

    events: int  # traceEvents in the file
    columns: dict[str | None, SpanColumn] = field(default_factory=dict)  # category (None: none) -> intervals
    omitted_priority: int = 0  # StageTrace-stage events beyond PRIORITY_KEPT
    omitted_other: int = 0  # other complete events beyond OTHER_KEPT

    @property
    def omitted(self) -> int:
        return self.omitted_priority + self.omitted_other


class StreamedTrace(dict):
    """A trace as ``read`` gives it: a dict like ``load``'s whose traceEvents holds the events kept whole,
    with ``digest`` (Digest) for the figures over all of them."""

    digest: Digest


def digest_of(trace: object) -> Digest | None:
    return getattr(trace, "digest", None)


def _scan(path: str, fd: int):
    from ..core import native as core_native
    from ..core.stages import STAGES

    native = core_native._native
    if native is None or not hasattr(native, "scan_trace"):
        return None
    keep = (*STAGES, "gpu", "comfyui_log")
    return native.scan_trace(fd, keep, ("execution_error", "execution_interrupted"), ("gpu", "prompt\x1fqueue_wait"),
                             PRIORITY_KEPT, OTHER_KEPT, MAX_VALUE, CHUNK)


def _too_big(result: dict) -> str:
    from ..core.units import format_bytes

    return (f"byte offset {result['offset']}: one value is larger than {format_bytes(MAX_VALUE)}, more than "
            "StageTrace reads at once")


# The scanner's failures that end the read before its results are looked at: the message after "<path>: ".
_SCAN_FAILURES = {
    "utf8": lambda result: f"byte offset {result['offset']}: not UTF-8",
    "json": lambda result: f"byte offset {result['offset']}: invalid JSON: {result['text']}",
    "deep": lambda result: "nested too deeply to be read",
    "big": _too_big,
    "io": lambda result: f"cannot read: {result['errno_text'] or 'read error'}",
    "memory": lambda result: "out of memory while reading it",
    "shape": lambda result: "field 'traceEvents': missing or not a list",
}


def read(path: str) -> dict:
    """The trace at path for the report, read in one streaming pass in bounded memory: the same checks and
    the same error messages as ``load`` (the file and the byte offset, or the field), the events the
    analysis reads whole kept whole (see PRIORITY_KEPT, OTHER_KEPT), and a Digest of every complete event's
    interval by category. Memory is about 16 bytes per complete event plus the kept events, never one
    object per event. Without the C extension: ``load``."""
    from ..core.files import open_regular

    try:
        fd = open_regular(path)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        result = _scan(path, fd)
    finally:
        os.close(fd)
    if result is None:
        return load(path)
    status = result["status"]
    failure = _SCAN_FAILURES.get(status)
    if failure is not None:
        raise TraceError(f"{path}: {failure(result)}")
    try:
        other = json.loads(result["other"]) if result["other"] is not None else {}
        events = json.loads(result["kept"]) if result["kept"] is not None else []
    except (ValueError, RecursionError) as exc:  # checked by the scanner already; Python's own limits remain
        raise TraceError(f"{path}: cannot be read: {exc}") from None
    _check_other(path, other)
    if status == "field":
        raise TraceError(f"{path}: field 'traceEvents[{result['index']}]{result['field']}': {result['text']}")
    digest = Digest(result["events"], omitted_priority=result["omitted_priority"],
                    omitted_other=result["omitted_other"])
    columns = []
    for name, begins, ends, lo, hi, omitted, other_n, other_us in result["cats"]:
        columns.append(SpanColumn(begins, ends, lo, hi, omitted, other_names=(other_n, other_us)))
        digest.columns[None if name == MISSING_CAT else name] = columns[-1]
    for cat, name, count, total_us in result["names"]:  # only categories that are not StageTrace's stages
        columns[cat].names[name] = (count, total_us)
    trace = StreamedTrace(traceEvents=events)
    if result["other"] is not None:
        trace["otherData"] = other
    trace.digest = digest
    return trace


def write_new(path: str, text: str) -> bool:
    """Write text to path whole or not at all, never replacing a file: a temporary file in the same
    folder, fsynced, then linked to path (which fails if path exists). False when path exists."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)
