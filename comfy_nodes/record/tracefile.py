"""Reading StageTrace traces (Chrome Trace Event JSON) back, with errors that
name the file and the byte offset or field."""

from __future__ import annotations

import math
import os
import re
import time

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
    other = trace.get("otherData", {})
    if not isinstance(other, dict):
        raise TraceError(f"{path}: field 'otherData': not an object")
    for key, ok, what in OTHER_FIELDS:
        if other.get(key) is not None and not ok(other[key]):
            raise TraceError(f"{path}: field 'otherData.{key}': not {what}")
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
