"""What `stagetrace doctor` reads about the machine: the filesystem under a folder (/proc/self/mountinfo), RAM
and swap (/proc/meminfo), the cgroup (container) memory limit (v1 and v2), WSL, and the read throughput of one
model file with the page cache bypassed where the kernel allows it.

Every reader takes the path of the file it parses, so the tests give it crafted files as well as this
machine's; each returns None (or an answer saying what it could not tell) where the kernel does not say, and
none raises for that. Nothing here imports ComfyUI, torch or the C core."""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
import time
from dataclasses import dataclass

from ..core.files import NotRegularFile, check_regular, open_regular

# --- Filesystems ---------------------------------------------------------------------------------------

# Filesystem types and what they mean for reading multi-gigabyte model files, in plain words.
FILESYSTEMS = {
    "overlay": ("overlay", "a container's layered filesystem: every read goes through the storage driver, and "
                "large files on it read slowly; mount the models folder into the container as a bind mount or "
                "a volume instead"),
    "9p": ("9p", "a folder shared from another system (WSL 2's /mnt/c, a VM's shared folder): reads cross the "
           "VM boundary, often under 100 MB/s; keep the models inside the Linux filesystem"),
    "virtiofs": ("virtiofs", "a folder shared from the VM's host: reads cross the VM boundary"),
    "fuse": ("FUSE", "a filesystem run by a user-space program (s3fs, gcsfuse, rclone, sshfs, blobfuse...): "
             "every read goes through that program, often over the network; copy the models to a local disk"),
    "nfs": ("NFS", "a network filesystem: reads are as fast as the network and the server; copy the models to a "
            "local disk, or make sure the network gives several hundred MB/s"),
    "cifs": ("SMB/CIFS", "a Windows network share: reads are as fast as the network; copy the models to a local "
             "disk"),
    "drvfs": ("drvfs", "WSL 1's view of a Windows drive: slow for large files; keep the models inside the Linux "
              "filesystem"),
    "tmpfs": ("tmpfs", "a RAM disk: fast, but the models take RAM twice (the file and the loaded weights)"),
}
LOCAL_FILESYSTEMS = {"ext4", "ext3", "ext2", "xfs", "btrfs", "zfs", "f2fs", "bcachefs", "jfs", "reiserfs", "vfat",
                     "exfat", "ntfs", "ntfs3", "apfs", "hfsplus"}
NETWORK_FAMILIES = {"nfs": "nfs", "nfs4": "nfs", "cifs": "cifs", "smb3": "cifs", "smbfs": "cifs", "9p": "9p",
                    "virtiofs": "virtiofs", "drvfs": "drvfs", "ceph": "nfs", "glusterfs": "nfs", "lustre": "nfs",
                    "gpfs": "nfs", "beegfs": "nfs", "afs": "nfs"}


@dataclass
class Mount:
    mount_point: str
    fs_type: str
    source: str
    root: str
    super_options: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mounts in a mountinfo file (proc(5)): mount point, type, source, root, super options. Lines that do
    not parse are skipped. OSError when the file cannot be read."""
    mounts = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.rstrip("\n").partition(" - ")
            fields, tail = left.split(), right.split()
            if not sep or len(fields) < 5 or len(tail) < 2:
                continue
            mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1]), _unescape(fields[3]),
                                tail[2] if len(tail) > 2 else ""))
    return mounts


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> Mount | None:
    """The mount holding path (the longest mount point that contains its real path; the last one mounted
    when several share it), or None when unknown."""
    try:
        mounts = read_mountinfo(mountinfo)
    except OSError:
        return None
    target = os.path.realpath(path)
    best = None
    for m in mounts:
        point = m.mount_point
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = m
    return best


def describe_filesystem(fs_type: str) -> tuple[str, str, bool]:
    """(plain name, what it means for model reads, slow) of a filesystem type."""
    family = "fuse" if fs_type.startswith("fuse") else NETWORK_FAMILIES.get(fs_type, fs_type)
    if family in FILESYSTEMS:
        name, meaning = FILESYSTEMS[family]
        if family == "fuse" and "." in fs_type:
            name = f"FUSE ({fs_type.split('.', 1)[1]})"
        return name, meaning, family not in ("tmpfs",)
    if fs_type in LOCAL_FILESYSTEMS:
        return fs_type, "a local disk filesystem: as fast as the disk under it", False
    return fs_type, "a filesystem StageTrace does not know: the measured throughput below tells", False


# --- RAM, swap, cgroups, WSL ------------------------------------------------------------------------------

UNLIMITED_V1 = 1 << 62  # cgroup v1 writes "no limit" as a page-rounded 2^63 - 1


def read_meminfo(path: str = "/proc/meminfo") -> dict | None:
    """RAM and swap in bytes: total, available, swap_total, swap_free; None when the file cannot be read or
    lacks MemTotal."""
    values = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[key.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    except OSError:
        return None
    if "MemTotal" not in values:
        return None
    return {"total": values["MemTotal"], "available": values.get("MemAvailable", values.get("MemFree")),
            "swap_total": values.get("SwapTotal", 0), "swap_free": values.get("SwapFree", 0)}


def _read_limit(path: str) -> int | None:
    """A cgroup limit file's value in bytes; None for no limit ("max", v1's huge number) or no file."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max" or not text.lstrip("-").isdigit():
        return None
    value = int(text)
    return None if value < 0 or value >= UNLIMITED_V1 else value


def _cgroup_dirs(mount: Mount, cgroup_path: str, fs_root: str | None) -> list[str]:
    """The folders from the process's cgroup up to the mount's root (limits are hierarchical: the smallest on
    the way up applies). With a cgroup namespace the path is relative to the mount's root already."""
    point = fs_root if fs_root is not None else mount.mount_point
    rel = cgroup_path
    if mount.root not in ("/", "") and (rel == mount.root or rel.startswith(mount.root.rstrip("/") + "/")):
        rel = rel[len(mount.root.rstrip("/")):]
    parts = [p for p in rel.split("/") if p and p != ".."]
    return [os.path.join(point, *parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_memory(proc_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo",
                  fs_root: str | None = None) -> dict:
    """The memory limit of this process's cgroup: {"version": 1|2|None, "limit": bytes or None (no limit),
    "swap_limit": bytes or None, "usage": bytes or None, "path": the cgroup, "where": the folder read}.
    ``fs_root`` replaces the cgroup mount point (tests give a crafted tree); "version" is None when no memory
    cgroup is found."""
    out = {"version": None, "limit": None, "swap_limit": None, "usage": None, "path": None, "where": None}
    try:
        with open(proc_cgroup) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        mounts = read_mountinfo(mountinfo)
    except OSError:
        return out
    lines = [x for x in lines if len(x) == 3]
    v1 = next((x[2] for x in lines if "memory" in x[1].split(",")), None)
    v1_mount = next((m for m in mounts if m.fs_type == "cgroup" and "memory" in m.super_options.split(",")), None)
    v2 = next((x[2] for x in lines if x[0] == "0" and x[1] == ""), None)
    v2_mount = next((m for m in mounts if m.fs_type == "cgroup2"), None)
    if v1 is not None and v1_mount is not None:
        version, path, mount = 1, v1, v1_mount
        files = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.usage_in_bytes")
    elif v2 is not None and v2_mount is not None:
        version, path, mount = 2, v2, v2_mount
        files = ("memory.max", "memory.swap.max", "memory.current")
    else:
        return out
    dirs = [d for d in _cgroup_dirs(mount, path, fs_root) if os.path.isdir(d)]
    if not dirs:
        return out
    out.update(version=version, path=path, where=dirs[0])
    limits = [(d, _read_limit(os.path.join(d, files[0]))) for d in dirs]
    limits = [(d, v) for d, v in limits if v is not None]
    if limits:
        where, out["limit"] = min(limits, key=lambda x: x[1])
        out["where"] = where
    swaps = [v for v in (_read_limit(os.path.join(d, files[1])) for d in dirs) if v is not None]
    out["swap_limit"] = min(swaps) if swaps else None
    if version == 1 and out["swap_limit"] is not None and out["limit"] is not None:
        out["swap_limit"] = max(0, out["swap_limit"] - out["limit"])  # v1's memsw counts RAM + swap
    out["usage"] = _read_limit(os.path.join(dirs[0], files[2]))
    return out


def wsl(osrelease: str = "/proc/sys/kernel/osrelease", environ: dict | None = None) -> str | None:
    """"WSL 2" or "WSL 1" when Linux runs under Windows' WSL, else None."""
    environ = os.environ if environ is None else environ
    try:
        with open(osrelease) as f:
            release = f.read().strip().lower()
    except OSError:
        release = ""
    if "microsoft" not in release and "wsl" not in release and not environ.get("WSL_DISTRO_NAME"):
        return None
    return "WSL 2" if ("wsl2" in release or "microsoft-standard" in release) else "WSL 1" if release else "WSL"


# --- Reading one model file ---------------------------------------------------------------------------------

READ_CHUNK = 8 << 20
DIRECT_ALIGN = 4096


def storage_read_bytes() -> int | None:
    """Bytes this process read from storage (/proc/self/io read_bytes; cache hits do not count), or None."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_direct(path: str, max_bytes: int, deadline: float) -> int:
    """Bytes read from path with O_DIRECT (aligned buffer, aligned sizes); OSError where it is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_NONBLOCK | os.O_CLOEXEC)
    buf = mmap.mmap(-1, READ_CHUNK)  # page-aligned, as O_DIRECT asks
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", path)
        done, view = 0, memoryview(buf)
        while done < max_bytes and time.monotonic() < deadline:
            want = min(READ_CHUNK, -(-(max_bytes - done) // DIRECT_ALIGN) * DIRECT_ALIGN)  # aligned, as asked
            n = os.readv(fd, [view[:want]])
            if n <= 0:
                break
            done += n
            if n < want:
                break
        view.release()
        return done
    finally:
        buf.close()
        os.close(fd)


def _read_dropped(path: str, max_bytes: int, deadline: float) -> int:
    """Bytes read from path after asking the kernel to drop its cached pages (posix_fadvise DONTNEED)."""
    fd = open_regular(path)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        done = 0
        while done < max_bytes and time.monotonic() < deadline:
            chunk = os.read(fd, min(READ_CHUNK, max_bytes - done))
            if not chunk:
                break
            done += len(chunk)
        return done
    finally:
        os.close(fd)


def read_throughput(path: str, max_bytes: int = 256 << 20, max_seconds: float = 3.0) -> dict:
    """Read up to max_bytes of path (at most max_seconds) bypassing the page cache where possible: O_DIRECT,
    else posix_fadvise(DONTNEED) before a plain read. Returns {"bytes", "seconds", "mb_per_s", "method",
    "from_storage"} (from_storage: bytes the kernel counted as read from storage, None where it does not say);
    OSError (NotRegularFile included) when the file cannot be read."""
    before = storage_read_bytes()
    started = time.monotonic()
    deadline = started + max_seconds
    try:
        done, method = _read_direct(path, max_bytes, deadline), "O_DIRECT"
    except NotRegularFile:
        raise
    except OSError:  # tmpfs, overlay on some kernels, FUSE without direct I/O: fall back
        check_regular(path)  # a named pipe or a device is refused, never read
        started = time.monotonic()
        deadline = started + max_seconds
        done, method = _read_dropped(path, max_bytes, deadline), "posix_fadvise(DONTNEED)"
    seconds = time.monotonic() - started
    after = storage_read_bytes()
    return {"bytes": done, "seconds": seconds, "mb_per_s": done / seconds / 1e6 if seconds > 0 else None,
            "method": method, "from_storage": after - before if before is not None and after is not None else None}
