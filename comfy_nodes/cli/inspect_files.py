"""``stagetrace inspect``: what a model file holds and what it lacks, read
from the safetensors header alone (the C reader) and classified by
``anatomy.py``; and a walk over a ComfyUI models folder that flags misplaced,
truncated, unreadable and duplicate files.

Exit codes: 0 every file complete, 1 some file incomplete for a text-to-image
run (or flagged by the folder walk), 2 some file unreadable.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from ..core import native as native_loader
from ..core.units import format_bytes

COMPLETE, INCOMPLETE, UNREADABLE = 0, 1, 2
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
OTHER_WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".gguf")


@dataclass
class FileReport:
    path: str
    size: int
    status: int  # COMPLETE, INCOMPLETE or UNREADABLE
    error: str | None = None
    error_status: str | None = None  # the reader's status name (OUT_OF_RANGE = truncated)
    anatomy: object | None = None
    header_digest: str | None = None
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "status": ("complete", "incomplete", "unreadable")[self.status],
            "error": self.error,
            "error_status": self.error_status,
            "anatomy": self.anatomy.to_dict() if self.anatomy is not None else None,
            "flags": list(self.flags),
        }


def _header_digest(path: str, header_bytes: int) -> str:
    with open(path, "rb") as f:
        f.seek(8)
        return hashlib.sha256(f.read(header_bytes)).hexdigest()


def inspect_file(path: str) -> FileReport:
    """Read and classify one file; never raises for a bad file."""
    from ..analysis.anatomy import read_anatomy

    try:
        size = os.stat(path).st_size if os.path.exists(path) else 0
    except OSError:
        size = 0
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return FileReport(path, size, UNREADABLE, error=f"{path}: not a .safetensors file; StageTrace reads "
                          "safetensors headers only (pickled .ckpt/.pt files would have to be unpickled)")
    from ..core.files import check_regular

    try:  # a named pipe or a device would block or never end: refused before the reader opens it
        check_regular(path)
    except OSError as exc:
        return FileReport(path, size, UNREADABLE, error=f"{path}: {exc.strerror or exc}")
    native = native_loader.require()
    try:
        anatomy, header = read_anatomy(native, path)
    except native.SafetensorsError as exc:
        return FileReport(path, size, UNREADABLE, error=str(exc), error_status=exc.status)
    status = COMPLETE if anatomy.complete else INCOMPLETE
    return FileReport(path, size, status, anatomy=anatomy, header_digest=_header_digest(path, header["header_bytes"]))


def walk_models_dir(models_dir: str) -> list[FileReport]:
    """Every weight file under a ComfyUI models folder, with folder-level flags."""
    reports: list[FileReport] = []
    for root, _, files in os.walk(models_dir):
        for name in sorted(files):
            if not name.lower().endswith(SAFETENSORS_SUFFIXES + OTHER_WEIGHT_SUFFIXES):
                continue
            path = os.path.join(root, name)
            report = inspect_file(path)
            folder = os.path.relpath(root, models_dir).split(os.sep)[0]
            if report.error_status == "OUT_OF_RANGE":
                report.flags.append("truncated: the data is shorter than the header says (partial download?)")
            elif report.status == UNREADABLE and name.lower().endswith(SAFETENSORS_SUFFIXES):
                report.flags.append("unreadable")
            if folder == "checkpoints" and report.status == INCOMPLETE:
                report.flags.append("in checkpoints/ but not a complete checkpoint: "
                                    "CheckpointLoaderSimple will not find everything it needs")
            reports.append(report)
    by_digest: dict[str, list[FileReport]] = {}
    for report in reports:
        if report.header_digest:
            by_digest.setdefault(report.header_digest, []).append(report)
    for same in by_digest.values():
        for report in same[1:] if len(same) > 1 else ():
            report.flags.append(f"duplicate of {same[0].path} (identical header)")
    return reports


def format_report(report: FileReport) -> str:
    lines = [f"{report.path}  ({format_bytes(report.size)})"]
    if report.error:
        lines.append(f"  unreadable: {report.error}")
    anatomy = report.anatomy
    if anatomy is not None:
        lines.extend("  " + line for line in anatomy.describe(os.path.basename(report.path)).splitlines())
    for flag in report.flags:
        lines.append(f"  ! {flag}")
    return "\n".join(lines)


def exit_code(reports: list[FileReport]) -> int:
    worst = max((r.status for r in reports), default=COMPLETE)
    if worst == COMPLETE and any(r.flags for r in reports):
        return INCOMPLETE
    return worst
