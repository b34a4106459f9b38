"""Model bytes read where they are really read.

A loader that maps a model file instead of reading it (safetensors' and comfy-aimdo's mmap, ComfyUI's
dynamic VRAM) makes ``load_torch_file`` fast: the bytes come off storage later, when the weights are first
touched, during the build, the move to the device or the sampler's first steps. The model_load.read span
then shows few storage bytes, and the file is *mapped*: from then on every stage span measures the
storage reads that happen inside it, and a span that read at least ``MIN_DEFERRED_BYTES`` of mapped
files carries ``deferred_read``: the bytes, the read time, MB/s, the files and how the time was measured.

Two ways the bytes are read, two ways the time is measured:

- comfy-aimdo's reads (``comfy.memory_management.read_tensor_file_slice_into``, hooked when that module
  exists): each read is timed around the call, its bytes counted: ``how: "timed reads"``;
- page faults on the mapping: ``/proc/self/io`` read_bytes counts the bytes, and the time is the smaller of
  two upper bounds of the time spent waiting for storage: the span's time off the CPU of its thread, and
  the kernel's I/O pressure stall time (``/proc/pressure/io``, "some"), over the span:
  ``how: "page faults"`` (an estimate: the MB/s is a lower bound).

An inner span's reads are not counted again by the span around it. Counters are process-wide (aimdo
may read on a prefetch thread): what is read while a span is open on the worker is that span's.
"""

from __future__ import annotations

import os
import threading
import time

from .facts import storage_read_bytes

MIN_DEFERRED_BYTES = 4 << 20  # less than this read inside a span is not called a deferred model read
MAPPED_FRACTION = 0.5  # a read span that read less than this share of its file mapped it


def io_stall_us() -> int | None:
    """Microseconds some task waited for I/O so far (/proc/pressure/io "some total"), None without PSI."""
    try:
        with open("/proc/pressure/io") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class ReadMeter:
    """The mapped model files of this process and the reads of their bytes after the load. Thread-safe;
    never raises for what the kernel does not say."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.mapped: dict[str, dict] = {}  # path -> {"file_bytes", "unread", "fs_type"}
        self.timed_bytes = 0  # aimdo's reads, as timed by the hook
        self.timed_ns = 0
        self.timed_calls = 0
        self._claimed_bytes = 0  # what inner spans already took
        self._claimed_ns = 0

    # --- what the hooks tell ---------------------------------------------------------------------

    def file_loaded(self, path: str, file_bytes: int | None, read_bytes: int | None, fs_type: str | None) -> bool:
        """After a model_load.read span: the file is mapped when the span read less than half of it.
        Returns whether it is."""
        if not file_bytes or read_bytes is None or read_bytes >= MAPPED_FRACTION * file_bytes:
            return False
        with self._lock:
            self.mapped[path] = {"file_bytes": file_bytes, "unread": file_bytes - max(0, read_bytes),
                                 "fs_type": fs_type}
        return True

    def timed_read(self, nbytes: int, ns: int) -> None:
        """One read of mapped bytes that StageTrace timed itself (comfy-aimdo's slice reads)."""
        with self._lock:
            self.timed_bytes += nbytes
            self.timed_ns += ns
            self.timed_calls += 1

    @property
    def pending(self) -> bool:
        """Whether a mapped file still has bytes that were not read."""
        return any(m["unread"] > 0 for m in self.mapped.values())

    # --- around a stage span -----------------------------------------------------------------------

    def begin(self) -> tuple | None:
        """A snapshot for end(), or None when no mapped file is waiting to be read (then the span costs
        nothing more)."""
        if not self.pending:
            return None
        with self._lock:
            counters = (self.timed_bytes, self.timed_ns, self._claimed_bytes, self._claimed_ns)
        return (storage_read_bytes(), io_stall_us(), time.thread_time_ns(), time.monotonic_ns(), *counters)

    def end(self, before: tuple | None) -> dict | None:
        """The deferred read inside the span that began with before, or None when it read less than
        MIN_DEFERRED_BYTES of mapped files."""
        if before is None:
            return None
        storage0, stall0, cpu0, wall0, timed_b0, timed_ns0, claimed_b0, claimed_ns0 = before
        storage1, stall1, cpu1, wall1 = storage_read_bytes(), io_stall_us(), time.thread_time_ns(), time.monotonic_ns()
        with self._lock:
            timed_bytes = self.timed_bytes - timed_b0
            timed_ns = self.timed_ns - timed_ns0
            inner_bytes = self._claimed_bytes - claimed_b0
            inner_ns = self._claimed_ns - claimed_ns0
            if timed_bytes > 0:  # aimdo's own reads, timed: they are the storage reads too, not added twice
                nbytes, ns, how = timed_bytes, timed_ns, "timed reads"
            else:
                nbytes = (storage1 - storage0) if storage0 is not None and storage1 is not None else 0
                off_cpu = max(0, (wall1 - wall0) - (cpu1 - cpu0))
                stall = (stall1 - stall0) * 1000 if stall0 is not None and stall1 is not None else None
                ns, how = (off_cpu if stall is None else min(off_cpu, stall)), "page faults"
            nbytes -= inner_bytes
            ns = max(0, ns - inner_ns)
            unread = sum(m["unread"] for m in self.mapped.values())
            nbytes = min(nbytes, unread)
            if nbytes < MIN_DEFERRED_BYTES:
                return None
            self._claimed_bytes += nbytes
            self._claimed_ns += ns
            files, fs_types = self._take(nbytes)
        seconds = ns / 1e9
        return {"bytes": nbytes, "seconds": seconds, "mb_s": nbytes / 1e6 / seconds if seconds > 0 else None,
                "how": how, "files": files, "fs_type": fs_types[0] if len(set(fs_types)) == 1 else None}

    def _take(self, nbytes: int) -> tuple[list[str], list[str | None]]:
        """Count nbytes as read from the mapped files, oldest first; the files and filesystems they came
        from. Holds the lock."""
        files, fs_types = [], []
        for path, m in self.mapped.items():
            if nbytes <= 0:
                break
            if m["unread"] <= 0:
                continue
            taken = min(nbytes, m["unread"])
            m["unread"] -= taken
            nbytes -= taken
            files.append(os.path.basename(path))
            fs_types.append(m["fs_type"])
        return files, fs_types


METER = ReadMeter()
