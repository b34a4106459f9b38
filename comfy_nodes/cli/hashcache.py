"""Content hashes of model files (BLAKE2b-256 of every byte, and of three 1 MiB samples, which tell most
different files apart without reading them whole), cached in a small sqlite3 file by (device, inode, size,
mtime_ns), so a second walk over a models folder reads nothing it hashed before.

Where: $STAGETRACE_HASH_CACHE (a file, or a folder to hold hashes.sqlite3; 0/off turns the cache off), else
$XDG_CACHE_HOME/stagetrace/hashes.sqlite3, else ~/.cache/stagetrace/hashes.sqlite3. Hashes are committed in
sqlite transactions of a few seconds' worth each (a commit per hash would wait for the disk every time), so
the file is whole whenever a walk is interrupted, losing at most those seconds; a cache that sqlite cannot
read (corrupt, not a database, another schema) is reported in one line and started again; a cache that cannot
be written is reported once and the walk goes on without it. A hash is stored only when the file did not
change while it was read (size and mtime the same before and after)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time

from ..core.files import open_regular

SCHEMA_VERSION = 1
FILE_NAME = "hashes.sqlite3"
FULL, SAMPLES = "blake2b-256", "blake2b-256 of 3 x 1 MiB samples"  # the kinds of digest kept


def default_path() -> str:
    """The cache file when STAGETRACE_HASH_CACHE does not say: under $XDG_CACHE_HOME or ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not base or not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "stagetrace", FILE_NAME)


def configured_path() -> str | None:
    """The cache file the settings name (None: the cache is off)."""
    from ..core.settings import Settings

    path = Settings.from_env([]).hash_cache  # the cache's setting is a path or off: it has no bad values
    if path is None:
        return None
    return path or default_path()


SAMPLE_BYTES = 1 << 20
COMMIT_SECONDS = 2.0  # the most hashing time a crash can lose from the cache


def _hash_full(f, size: int) -> str:
    return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=32)).hexdigest()


def _hash_samples(f, size: int) -> str:
    """Three 1 MiB samples (the start, middle and end; the whole file under 3 MiB): files whose samples differ
    differ, so a full hash is needed only where they agree. Two fine-tunes differ in every sample; a copy
    agrees in all."""
    h = hashlib.blake2b(digest_size=32)
    if size <= 3 * SAMPLE_BYTES:
        h.update(f.read(3 * SAMPLE_BYTES))
    else:
        for at in (0, size // 2, size - SAMPLE_BYTES):
            f.seek(at)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


HASHERS = {FULL: _hash_full, SAMPLES: _hash_samples}


def file_digest(path: str, kind: str = FULL) -> tuple[str, os.stat_result, bool]:
    """(hex digest of the file of that kind, its stat, whether it stayed the same while read). Only a regular
    file is read (core.files.open_regular); OSError when it cannot be."""
    with os.fdopen(open_regular(path), "rb") as f:
        before = os.fstat(f.fileno())
        digest = HASHERS[kind](f, before.st_size)
        after = os.fstat(f.fileno())
    steady = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
    return digest, after, steady


def _stderr(message: str) -> None:
    print(f"stagetrace inspect: {message}", file=sys.stderr)


class HashCache:
    """Content hashes by (device, inode), valid while size and mtime_ns are unchanged. ``path`` None: no cache
    (every digest is computed). The file is opened (made if need be) at the first digest asked for, so a walk
    that compares no files never touches it. ``warn`` gets each problem with the cache, once. Not
    thread-safe."""

    def __init__(self, path: str | None, warn=_stderr):
        self.path = os.path.join(path, FILE_NAME) if path and os.path.isdir(path) else path
        self.warn = warn
        self.conn: sqlite3.Connection | None = None
        self.hits = self.computed = 0  # full hashes: from the cache, read
        self.sample_hits = self.samples_read = 0
        self.bytes_read = 0
        self._opened = not self.path  # no path: nothing to open
        self._warned_write = False
        self._committed = time.monotonic()

    def _ensure_open(self) -> None:
        if not self._opened:
            self._opened = True
            self.conn = self._open(self.path)

    # -- opening --

    def _connect(self, path: str) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        conn = sqlite3.connect(path, timeout=5, isolation_level=None)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("sqlite's quick_check failed")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and not tables:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TABLE IF NOT EXISTS hashes (inode TEXT NOT NULL, kind TEXT NOT NULL, "
                             "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL, path TEXT, "
                             "PRIMARY KEY (inode, kind))")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            elif version != SCHEMA_VERSION or "hashes" not in tables:
                raise sqlite3.DatabaseError(f"schema {version}, not StageTrace's {SCHEMA_VERSION}")
            conn.execute("SELECT inode, kind, size, mtime_ns, digest FROM hashes LIMIT 1").fetchall()
            return conn
        except BaseException:
            conn.close()
            raise

    def _open(self, path: str) -> sqlite3.Connection | None:
        try:
            return self._connect(path)
        except sqlite3.OperationalError as exc:  # locked, cannot be opened: not a reason to throw it away
            self.warn(f"hash cache {path}: {exc}: hashing without a cache")
            return None
        except sqlite3.DatabaseError as exc:  # corrupt, not a database, someone else's schema
            self.warn(f"hash cache {path} is unreadable ({exc}): starting a new one")
            for stale in (path, path + "-journal", path + "-wal", path + "-shm"):
                try:
                    os.unlink(stale)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    self.warn(f"hash cache {path}: cannot remove {stale} ({err.strerror}): hashing without a cache")
                    return None
            try:
                return self._connect(path)
            except (sqlite3.Error, OSError) as err:
                self.warn(f"hash cache {path}: {err}: hashing without a cache")
                return None
        except (sqlite3.Error, OSError) as exc:  # a folder that cannot be made, a locked or read-only file
            self.warn(f"hash cache {path}: {getattr(exc, 'strerror', None) or exc}: hashing without a cache")
            return None

    # -- use --

    @staticmethod
    def _key(st: os.stat_result) -> str:
        return f"{st.st_dev}:{st.st_ino}"

    def digest(self, path: str, st: os.stat_result) -> str:
        """The content hash (BLAKE2b-256 of every byte) of the file at path (st: its os.stat), from the cache
        when its size and mtime are those cached, else read and stored. OSError when the file cannot be
        read."""
        return self._get(FULL, path, st)

    def sample(self, path: str, st: os.stat_result) -> str:
        """The hash of three 1 MiB samples of the file (the whole file under 3 MiB), cached as digest() is."""
        return self._get(SAMPLES, path, st)

    def _get(self, kind: str, path: str, st: os.stat_result) -> str:
        self._ensure_open()
        if self.conn is not None:
            try:
                row = self.conn.execute("SELECT size, mtime_ns, digest FROM hashes WHERE inode = ? AND kind = ?",
                                        (self._key(st), kind)).fetchone()
            except sqlite3.Error as exc:
                self._write_failed(exc)
                row = None
            if row is not None and tuple(row[:2]) == (st.st_size, st.st_mtime_ns):
                if kind == FULL:
                    self.hits += 1
                else:
                    self.sample_hits += 1
                return row[2]
        digest, now, steady = file_digest(path, kind)
        if kind == FULL:
            self.computed += 1
            self.bytes_read += now.st_size
        else:
            self.samples_read += 1
            self.bytes_read += min(now.st_size, 3 * SAMPLE_BYTES)
        if self.conn is not None and steady:
            try:
                if not self.conn.in_transaction:
                    self.conn.execute("BEGIN")
                self.conn.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)",
                                  (self._key(now), kind, now.st_size, now.st_mtime_ns, digest, os.fsdecode(path)))
                if time.monotonic() - self._committed > COMMIT_SECONDS:
                    self._commit()
            except sqlite3.Error as exc:
                self._write_failed(exc)
        return digest

    def _commit(self) -> None:
        if self.conn is not None and self.conn.in_transaction:
            self.conn.execute("COMMIT")
        self._committed = time.monotonic()

    def _write_failed(self, exc: Exception) -> None:
        if not self._warned_write:
            self._warned_write = True
            self.warn(f"hash cache {self.path}: {exc}: going on without it")
        self.close()

    def close(self) -> None:
        """Commit what is pending and close the file; the cache computes without storing afterwards."""
        if self.conn is not None:
            try:
                self._commit()
            except sqlite3.Error as exc:
                if not self._warned_write:
                    self._warned_write = True
                    self.warn(f"hash cache {self.path}: {exc}: the last hashes were not kept")
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None
