"""``stagetrace inspect``: what a model file holds and what it lacks, read
from the safetensors header alone (the C reader) and classified by
``anatomy.py``; and a walk over a ComfyUI models folder that flags misplaced,
truncated, unloadable and unreadable files, unreadable folders, link loops,
copies (same bytes) and files of the same architecture (same tensors, other
weights).

The walk follows symlinked folders and files, as ComfyUI does, and enters
each folder once, by (st_dev, st_ino): a link back to a folder above it is a
loop, reported once. Copies are decided by content: files whose size and
header bytes match are hashed (BLAKE2b, cached by hashcache.py), so two
fine-tunes with the same tensors are "same architecture", not duplicates,
and a file reached twice through links is "the same file linked twice".

Exit codes: 0 every file complete, 1 some file incomplete for a text-to-image
run (or flagged by the folder walk), 2 some file or folder unreadable. Notes
(same architecture, the same file or folder linked twice) are no problem and
leave the exit code alone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field

from ..core import native as native_loader
from ..core.units import format_bytes

COMPLETE, INCOMPLETE, UNREADABLE = 0, 1, 2
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
OTHER_WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".gguf")
OPEN_STATUSES = ("OPEN_FAILED", "READ_FAILED")  # the reader could not read the bytes at all


class ModelsDirError(OSError):
    """The folder given to --models-dir does not exist, is not a folder, or cannot be listed."""


@dataclass
class FileReport:
    path: str
    size: int
    status: int  # COMPLETE, INCOMPLETE or UNREADABLE
    error: str | None = None
    error_status: str | None = None  # the reader's status name (OUT_OF_RANGE = truncated)
    anatomy: object | None = None
    header_digest: str | None = None
    flags: list[str] = field(default_factory=list)  # problems: they set the exit code
    notes: list[str] = field(default_factory=list)  # facts worth knowing that are no problem
    kind: str = "file"  # "file", or "folder" for a folder the walk flags (unreadable, a loop)
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the file, links followed
    mtime_ns: int = 0
    data_bytes: int = 0  # the data section the header declares
    link: str | None = None  # where a symlink leads, when the path is one
    content_hash: str | None = None  # BLAKE2b-256, only for files compared by content

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "kind": self.kind,
            "size": self.size,
            "status": ("complete", "incomplete", "unreadable")[self.status],
            "error": self.error,
            "error_status": self.error_status,
            "anatomy": self.anatomy.to_dict() if self.anatomy is not None else None,
            "link": self.link,
            "content_hash": self.content_hash,
            "flags": list(self.flags),
            "notes": list(self.notes),
        }


def _header_digest(path: str, header_bytes: int) -> str:
    from ..core.files import open_regular

    with os.fdopen(open_regular(path), "rb") as f:
        f.seek(8)
        return hashlib.sha256(f.read(header_bytes)).hexdigest()


def _reason(message: str, path: str) -> str:
    """An error message without its leading 'path: ' (and 'byte offset 0: ', where nothing was read): the flag
    sits under the path already."""
    for prefix in (f"{path}: byte offset 0: ", f"{path}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


# Dtypes the safetensors format and library accept but safetensors' PyTorch side cannot give as a tensor
# (safe_open(framework="pt").get_tensor: "Dtype not understood"): 6-bit floats have no torch dtype.
NO_TORCH_DTYPES = frozenset({"F6_E2M3", "F6_E3M2"})


def inspect_file(path: str) -> FileReport:
    """Read and classify one file; never raises for a bad file."""
    from ..analysis.anatomy import read_anatomy

    try:
        st = os.stat(path)
        size, inode, mtime_ns = st.st_size, (st.st_dev, st.st_ino), st.st_mtime_ns
    except OSError:
        size, inode, mtime_ns = 0, None, 0
    link = None
    try:
        if os.path.islink(path):
            link = os.readlink(path)
    except OSError:
        pass
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return FileReport(path, size, UNREADABLE, error=f"{path}: not a .safetensors file; StageTrace reads "
                          "safetensors headers only (pickled .ckpt/.pt files would have to be unpickled)",
                          inode=inode, link=link)
    from ..core.files import check_regular

    try:  # a named pipe or a device would block or never end: refused before the reader opens it
        check_regular(path)
    except OSError as exc:
        return FileReport(path, size, UNREADABLE, error=f"{path}: {exc.strerror or exc}", error_status="OPEN_FAILED",
                          inode=inode, link=link)
    native = native_loader.require()
    try:
        anatomy, header = read_anatomy(native, path)
        digest = _header_digest(path, header["header_bytes"])
    except native.SafetensorsError as exc:
        return FileReport(path, size, UNREADABLE, error=str(exc), error_status=exc.status, inode=inode, link=link)
    except OSError as exc:  # gone or unreadable between the reader and the digest
        return FileReport(path, size, UNREADABLE, error=f"{path}: {exc.strerror or exc}", error_status="READ_FAILED",
                          inode=inode, link=link)
    status = COMPLETE if anatomy.complete else INCOMPLETE
    report = FileReport(path, size, status, anatomy=anatomy, header_digest=digest, inode=inode, mtime_ns=mtime_ns,
                        data_bytes=header["data_bytes"], link=link)
    no_torch = sorted({dtype for group in header["groups"] for dtype in group[6]} & NO_TORCH_DTYPES)
    if no_torch:
        report.flags.append(f"unloadable in ComfyUI: {', '.join(no_torch)} tensors have no PyTorch type, so "
                            "safetensors' PyTorch side (which ComfyUI loads through) refuses them ('Dtype not "
                            "understood'), although the file itself is well formed")
    return report


# --- The folder walk ------------------------------------------------------------


def _is_weight_file(name: str) -> bool:
    return name.lower().endswith(SAFETENSORS_SUFFIXES + OTHER_WEIGHT_SUFFIXES)


def _folder_report(path: str, status: int, flag: str | None = None, note: str | None = None,
                   error: str | None = None) -> FileReport:
    return FileReport(path, 0, status, error=error, flags=[flag] if flag else [], notes=[note] if note else [],
                      kind="folder")


def _walk(models_dir: str) -> list[FileReport]:
    """Every weight file under models_dir (symlinks followed), in a stable order (each folder's files by name,
    then its subfolders by name), with a report for each folder or link that could not be walked."""
    try:
        top = os.stat(models_dir)
    except OSError as exc:
        what = "no such folder" if exc.errno == errno.ENOENT else exc.strerror
        raise ModelsDirError(exc.errno, f"--models-dir {models_dir}: {what}") from None
    if not stat.S_ISDIR(top.st_mode):
        raise ModelsDirError(f"--models-dir {models_dir}: not a folder")
    reports: list[FileReport] = []
    walked = {(top.st_dev, top.st_ino): models_dir}  # every folder entered, by identity: each is walked once
    # (folder, the identities of the folders from the top down to it): a link to one of those is a loop
    stack = [(models_dir, ((top.st_dev, top.st_ino),))]
    while stack:
        folder, chain = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if folder == models_dir:
                raise ModelsDirError(exc.errno, f"--models-dir {models_dir}: cannot list it: {exc.strerror}") from None
            reports.append(_folder_report(folder, UNREADABLE, f"unreadable folder: {exc.strerror}: the files in it "
                                          "were not checked (and ComfyUI cannot list them)", error=str(exc)))
            continue
        subfolders = []
        for entry in entries:
            path = entry.path
            is_link = False
            try:
                is_link = entry.is_symlink()
                st = os.stat(path)  # links followed
            except OSError as exc:
                if is_link and exc.errno in (errno.ENOENT, errno.ELOOP):
                    target = _readlink(path)
                    what = "does not exist" if exc.errno == errno.ENOENT else "is a loop of links"
                    reports.append(FileReport(path, 0, INCOMPLETE, link=target, kind="link",
                                              flags=[f"broken link: {target} {what}"]))
                elif is_link or _is_weight_file(entry.name) or _is_dir_entry(entry):
                    reports.append(FileReport(path, 0, UNREADABLE, error=f"{path}: {exc.strerror}",
                                              error_status="OPEN_FAILED", flags=[f"unreadable: {exc.strerror}"]))
                continue
            if stat.S_ISDIR(st.st_mode):
                identity = (st.st_dev, st.st_ino)
                flagged = len(reports)
                if identity in chain:
                    reports.append(_folder_report(path, COMPLETE, f"link loop: leads back to "
                                                  f"{walked.get(identity, '?')}, a folder above it; not walked again "
                                                  "(ComfyUI's own walk follows it round and lists the same files "
                                                  "over and over)"))
                elif identity in walked:
                    reports.append(_folder_report(path, COMPLETE, note=f"the same folder as {walked[identity]} "
                                                  "(linked twice): walked once, there"))
                else:
                    walked[identity] = path
                    subfolders.append((path, chain + (identity,)))
                if len(reports) > flagged and is_link:
                    reports[-1].link = _readlink(path)
            elif _is_weight_file(entry.name):
                reports.append(inspect_file(path))
        stack.extend(reversed(subfolders))
    return reports


def _is_dir_entry(entry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _architecture(native, path: str) -> str | None:
    """A digest of the file's tensors (names, dtypes, shapes; not metadata, not offsets), or None."""
    try:
        tensors = native.read_safetensors_header(path)["tensors"]
    except (native.SafetensorsError, OSError):
        return None
    layout = sorted((name, dtype, shape) for name, dtype, shape, _, _ in tensors)
    return hashlib.blake2b(repr(layout).encode(), digest_size=16).hexdigest()


def _flag_copies(reports: list[FileReport], cache) -> None:
    """The same file reached twice, copies (same bytes) and same-architecture files (same tensors, other bytes).
    Only files that could be copies of one another are compared: the same data size first, then the same tensor
    layout, and only those of the same size and header bytes are hashed."""
    first_by_inode: dict[tuple[int, int], FileReport] = {}
    distinct = []
    for report in reports:
        if report.kind != "file" or report.anatomy is None or report.inode is None:
            continue
        first = first_by_inode.setdefault(report.inode, report)
        if first is not report:
            report.notes.append(f"the same file as {first.path}, linked twice (a symlink or hard link): one file "
                                "on disk, not a copy")
        else:
            distinct.append(report)
    by_data: dict[int, list[FileReport]] = {}
    for report in distinct:
        by_data.setdefault(report.data_bytes, []).append(report)
    native = None
    for group in by_data.values():
        if len(group) < 2:
            continue
        native = native or native_loader.require()
        by_arch: dict[str, list[FileReport]] = {}
        for report in group:
            arch = _architecture(native, report.path)
            if arch is not None:
                by_arch.setdefault(arch, []).append(report)
        for same in by_arch.values():
            if len(same) > 1:
                _compare_contents(same, cache)


def _compare_contents(same: list[FileReport], cache) -> None:
    """Flag each file of a group with the same tensor layout: a copy of an earlier one, or the same
    architecture as the first. Only files whose size, header bytes and sampled bytes (HashCache.sample) all
    agree are hashed whole."""
    def counts(key) -> dict:
        seen: dict = {}
        for report in same:
            k = key(report)
            if k is not None:
                seen[k] = seen.get(k, 0) + 1
        return seen

    by_header = counts(lambda r: (r.size, r.header_digest))
    samples: dict[int, str] = {}
    for report in same:
        if by_header[(report.size, report.header_digest)] > 1:
            try:
                samples[id(report)] = cache.sample(report.path, os.stat(report.path))
            except OSError as exc:
                report.flags.append(f"unreadable while hashing: {exc.strerror or exc}")
    by_sample = counts(lambda r: samples.get(id(r)))
    for report in same:
        if by_sample.get(samples.get(id(report)), 0) < 2:
            continue
        try:
            report.content_hash = cache.digest(report.path, os.stat(report.path))
        except OSError as exc:
            report.flags.append(f"unreadable while hashing: {exc.strerror or exc}")
    for i, report in enumerate(same[1:], 1):
        copy_of = next((earlier for earlier in same[:i] if report.content_hash is not None
                        and earlier.content_hash == report.content_hash), None)
        if copy_of is not None:
            report.flags.append(f"duplicate of {copy_of.path} (identical content, BLAKE2b "
                                f"{report.content_hash[:16]}…): a copy; removing one frees {format_bytes(report.size)}")
        else:
            report.notes.append(f"same architecture as {same[0].path} (same tensors, shapes and dtypes; other "
                                "weights or metadata): a different model, not a copy")


def _flag_file(report: FileReport, models_dir: str) -> None:
    if report.kind != "file":
        return
    name = os.path.basename(report.path)
    top = os.path.join(models_dir, "")
    inside = report.path[len(top):] if report.path.startswith(top) else os.path.relpath(report.path, models_dir)
    folder = inside.split(os.sep)[0] if os.sep in inside else "."
    if report.error_status == "OUT_OF_RANGE":
        report.flags.append("truncated: the data is shorter than the header says (partial download?)")
    elif report.status == UNREADABLE and report.error_status in OPEN_STATUSES and not report.flags:
        report.flags.append(f"unreadable: {_reason(report.error or '', report.path)}")
    elif report.status == UNREADABLE and name.lower().endswith(SAFETENSORS_SUFFIXES) and not report.flags:
        report.flags.append("unloadable: the safetensors library (and so ComfyUI) refuses this file: "
                            f"{_reason(report.error or '', report.path)}")
    if folder == "checkpoints" and report.status == INCOMPLETE and report.anatomy is not None:
        report.flags.append("in checkpoints/ but not a complete checkpoint: "
                            "CheckpointLoaderSimple will not find everything it needs")


def walk_models_dir(models_dir: str, cache=None) -> list[FileReport]:
    """Every weight file under a ComfyUI models folder, with folder-level flags. ``cache``: a
    hashcache.HashCache (None: the one the settings name, closed at the end). ModelsDirError when models_dir
    does not exist, is not a folder or cannot be listed."""
    from .hashcache import HashCache, configured_path

    reports = _walk(models_dir)
    for report in reports:
        _flag_file(report, models_dir)
    own = cache is None
    if own:
        cache = HashCache(configured_path())
    try:
        _flag_copies(reports, cache)
    finally:
        if own:
            cache.close()
    return reports


def format_report(report: FileReport) -> str:
    if report.kind == "folder":
        lines = [f"{report.path}{os.sep}  (folder)"]
    else:
        lines = [f"{report.path}  ({format_bytes(report.size)})"]
    if report.link:
        lines[0] += f"  -> {report.link}"
    if report.error:  # read but refused (the library would refuse it too), or not read at all
        refused = report.error_status is not None and report.error_status not in OPEN_STATUSES
        lines.append(f"  {'unloadable' if refused else 'unreadable'}: {report.error}")
    anatomy = report.anatomy
    if anatomy is not None:
        lines.extend("  " + line for line in anatomy.describe(os.path.basename(report.path)).splitlines())
    for flag in report.flags:
        lines.append(f"  ! {flag}")
    for note in report.notes:
        lines.append(f"  - {note}")
    return "\n".join(lines)


def exit_code(reports: list[FileReport]) -> int:
    worst = max((r.status for r in reports), default=COMPLETE)
    if worst == COMPLETE and any(r.flags for r in reports):
        return INCOMPLETE
    return worst
