"""Reading StageTrace traces (Chrome Trace Event JSON) back, with errors that
name the file and the byte offset or field."""

from __future__ import annotations

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


def load(path: str) -> dict:
    """The parsed trace; TraceError for anything that is not a StageTrace/Chrome trace."""
    trace = read_json(path, TraceError)
    if isinstance(trace, list):  # the bare-array form of the format
        trace = {"traceEvents": trace}
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise TraceError(f"{path}: field 'traceEvents': missing or not a list")
    for i, event in enumerate(trace["traceEvents"]):
        if not isinstance(event, dict):
            raise TraceError(f"{path}: field 'traceEvents[{i}]': not an object")
        if event.get("ph") in ("X", "i", "I") and not isinstance(event.get("ts"), (int, float)):
            raise TraceError(f"{path}: field 'traceEvents[{i}].ts': missing or not a number")
        if event.get("ph") == "X" and not isinstance(event.get("dur"), (int, float)):
            raise TraceError(f"{path}: field 'traceEvents[{i}].dur': missing or not a number")
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
