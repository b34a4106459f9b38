"""The run history: one row per prompt StageTrace recorded, in an SQLite file beside the traces.

Each row holds what the report said of one prompt (its workflow's identity, end time, outcome, wall
time, queue wait, the inclusive seconds of each stage, the findings' rule/title/severity, the executed
nodes) and the name of its trace file. The writer thread inserts a row after each prompt
(:func:`run_from_report` builds it from the report); the diagnosis reads the last runs of the same
workflow (:meth:`History.recent`) to say when a stage got slower; the CLI and the HTTP routes read the
rest.

The file: SQLite in WAL mode (readers never wait for the writer), ``synchronous=NORMAL`` (a crash may
lose the last rows, never the file), a busy timeout of ``BUSY_TIMEOUT_S``, ``PRAGMA application_id``
marking it as StageTrace's and ``PRAGMA user_version`` holding the schema version, for later versions to
migrate. Retention runs with each insert: rows older than ``keep_days`` go (a range on the index of end
times), and when there are more than ``keep_runs`` rows the oldest go, down to one per cent under the
bound, so that cost is paid once every ``keep_runs / 100`` inserts.

Failures: every sqlite3 error (locked, busy, not a database, disk full, read-only) is raised as
:class:`HistoryError`, whose message names the file and what happened. A file that is not StageTrace's
history (another program's database, a damaged file, a text file) is refused and never written to,
deleted or replaced. The caller logs one line and carries on without history. ``readonly=True`` (the CLI)
opens an existing file with SQLite's ``mode=ro`` and never writes it (SQLite may leave the empty ``-wal``
and ``-shm`` files a WAL reader needs beside it).

One connection, shared by the threads that use it (the writer thread, the executor threads of the HTTP
routes) under one lock: every statement is short (an insert is tens of microseconds, the last runs of a
workflow about a millisecond), so the lock is never held for long except while SQLite waits out another
process's lock, at most the busy timeout.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1
APPLICATION_ID = 0x53547248  # "STrH": this file is StageTrace's history
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 2.0
DEFAULT_KEEP_RUNS = 10_000
DEFAULT_KEEP_DAYS = 90.0
FILE_NAME = "history.sqlite3"

_SCHEMA = (
    """CREATE TABLE runs (
        prompt_id TEXT PRIMARY KEY NOT NULL,
        workflow_id TEXT,
        ended REAL NOT NULL,
        outcome TEXT NOT NULL,
        wall_s REAL,
        queue_wait_s REAL,
        stages TEXT NOT NULL,
        findings TEXT NOT NULL,
        nodes TEXT NOT NULL,
        trace TEXT
    )""",
    "CREATE INDEX runs_by_workflow ON runs (workflow_id, ended, prompt_id)",
    "CREATE INDEX runs_by_end ON runs (ended, prompt_id)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_COLUMNS = "prompt_id, workflow_id, ended, outcome, wall_s, queue_wait_s, stages, findings, nodes, trace"


class HistoryError(Exception):
    """The history database cannot be used: the message names the file and what happened."""


class RunNotFound(LookupError):
    """No run of that prompt id (or of those: ``prompt_ids``) in the history."""

    def __init__(self, message: str, prompt_ids: tuple[str, ...] = ()):
        super().__init__(message)
        self.prompt_ids = prompt_ids


def _hint(message: str) -> str:
    """sqlite3's message, with what it means for the user."""
    lowered = message.lower()
    if "locked" in lowered or "busy" in lowered:
        return f"{message} (another process holds a lock on it; waited {BUSY_TIMEOUT_S:g} s)"
    if "not a database" in lowered or "malformed" in lowered:
        return f"{message} (the file is damaged or is not StageTrace's history; it was left as it is)"
    if "full" in lowered:
        return f"{message} (no space left on its disk)"
    if "readonly" in lowered or "read-only" in lowered:
        return f"{message} (the file or its folder cannot be written)"
    return message


def _loads(text: object, empty):
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    return value if isinstance(value, type(empty)) else empty


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class History:
    """The history database at ``path`` (created, with its folder, when missing, unless ``readonly``).
    Raises HistoryError when the file cannot be opened or is not StageTrace's history. Thread-safe."""

    def __init__(self, path: str | os.PathLike, keep_runs: int = DEFAULT_KEEP_RUNS,
                 keep_days: float = DEFAULT_KEEP_DAYS, readonly: bool = False):
        self.path = os.fspath(path)
        self.keep_runs = max(1, int(keep_runs))
        self.keep_days = float(keep_days)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._rows = 0  # rows in the table, as of the last count (inserts add one, replacements too)
        self._empty = False  # readonly over an empty database: no table to read
        self._open()

    # --- opening ------------------------------------------------------------------------------

    def _fail(self, what: str) -> HistoryError:
        return HistoryError(f"history database {self.path}: {what}")

    def _check_file(self) -> bool:
        """True when the file exists. HistoryError when it exists and is not an SQLite database (checked on
        its first bytes, before SQLite opens it, so nothing is ever written to a foreign file)."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            raise self._fail("is a folder, not a file") from None
        except OSError as exc:
            raise self._fail(f"cannot be read ({exc.strerror or exc})") from None
        if head and head != SQLITE_MAGIC:  # an empty file is an empty database: SQLite makes it one
            raise self._fail("is not an SQLite database (a damaged file, or another program's); "
                             "it was left as it is: move it away or give another path")
        return True

    def _open(self) -> None:
        exists = self._check_file()
        if self.readonly and not exists:
            raise self._fail("no such file")
        if not exists:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            except OSError as exc:
                raise self._fail(f"its folder cannot be created ({exc.strerror or exc})") from None
        try:
            if self.readonly:
                uri = Path(os.path.abspath(self.path)).as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                       isolation_level=None)
            else:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                       isolation_level=None)
        except sqlite3.Error as exc:
            raise self._fail(f"cannot be opened: {_hint(str(exc))}") from None
        try:
            self._prepare(conn)
        except HistoryError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._fail(_hint(str(exc))) from None
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check that the database is StageTrace's (or empty), then create or migrate its schema."""
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application_id == 0 and not tables:  # a new (or empty) database
            if self.readonly:
                self._empty = True
                return
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        elif application_id != APPLICATION_ID or "runs" not in tables:
            raise self._fail("is another program's SQLite database, not StageTrace's history; it was left as it "
                             "is: move it away or give another path")
        elif version > SCHEMA_VERSION:
            raise self._fail(f"was written by a newer StageTrace (schema {version}; this one reads up to "
                             f"{SCHEMA_VERSION}); it was left as it is")
        elif not self.readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            # version < SCHEMA_VERSION: the migrations go here, one step per version
        if not self.readonly:
            conn.execute("PRAGMA synchronous = NORMAL")
            self._rows = conn.execute("SELECT count(*) FROM runs").fetchone()[0]

    def close(self) -> None:
        """Close the connection; later calls raise HistoryError. This function can't fail."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; sqlite3 errors become HistoryError."""
        with self._lock:
            if self._conn is None:
                raise self._fail("closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise self._fail(_hint(str(exc))) from None

    # --- writing ------------------------------------------------------------------------------

    def record(self, run: dict) -> None:
        """Insert one run (or replace the row of the same prompt id), then apply retention. ``run`` as
        :func:`run_from_report` builds it. Raises HistoryError; ValueError for a run without a prompt id."""
        if self.readonly:
            raise self._fail("opened read-only")
        prompt_id = run.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            raise ValueError("a run needs a prompt_id")
        ended = _number(run.get("ended"))
        row = (prompt_id, run.get("workflow_id"), ended if ended is not None else time.time(),
               str(run.get("outcome") or "ok"), _number(run.get("wall_s")), _number(run.get("queue_wait_s")),
               json.dumps(run.get("stages") or {}, separators=(",", ":"), default=str),
               json.dumps(run.get("findings") or [], separators=(",", ":"), default=str),
               json.dumps(run.get("nodes") or [], separators=(",", ":"), default=str), run.get("trace"))
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(f"INSERT OR REPLACE INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            self._rows += 1
            self._retain(db)
            db.execute("COMMIT")

    def _retain(self, db: sqlite3.Connection) -> None:
        """Rows older than keep_days go; past keep_runs rows, the oldest go down to 1 % under the bound."""
        cutoff = time.time() - self.keep_days * 86400.0
        self._rows -= db.execute("DELETE FROM runs WHERE ended < ?", (cutoff,)).rowcount
        if self._rows <= self.keep_runs:
            return
        keep = self.keep_runs - self.keep_runs // 100
        db.execute("DELETE FROM runs WHERE (ended, prompt_id) <= (SELECT ended, prompt_id FROM runs "
                   "ORDER BY ended DESC, prompt_id DESC LIMIT 1 OFFSET ?)", (keep,))
        self._rows = db.execute("SELECT count(*) FROM runs").fetchone()[0]

    # --- reading ------------------------------------------------------------------------------

    def _select(self, where: str = "", params: tuple = (), limit: int = 50) -> list[dict]:
        if self._empty:
            return []
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM runs {where} ORDER BY ended DESC, prompt_id DESC LIMIT ?",
                              (*params, max(0, int(limit)))).fetchall()
        return [_run(row) for row in rows]

    def recent(self, workflow_id: str, limit: int = 10, before_prompt: str | None = None) -> list[dict]:
        """The last ``limit`` runs of a workflow, newest first, whatever their outcome. With
        ``before_prompt``: without that prompt, and when it is recorded, only the runs that ended before it
        (so a run's history is the same whether it is diagnosed before or after it is recorded)."""
        if before_prompt is None:
            return self._select("WHERE workflow_id = ?", (workflow_id,), limit)
        return self._select("WHERE workflow_id = ? AND prompt_id != ? AND ended <= coalesce("
                            "(SELECT ended FROM runs WHERE prompt_id = ?), 9e999)",
                            (workflow_id, before_prompt, before_prompt), limit)

    def runs(self, limit: int = 50, workflow_id: str | None = None) -> list[dict]:
        """The last ``limit`` runs, newest first; of one workflow when given."""
        if workflow_id is None:
            return self._select("", (), limit)
        return self._select("WHERE workflow_id = ?", (workflow_id,), limit)

    def get(self, prompt_id: str) -> dict | None:
        """One run by prompt id, or None."""
        found = self._select("WHERE prompt_id = ?", (prompt_id,), 1)
        return found[0] if found else None

    def count(self) -> int:
        """The number of runs held."""
        if self._empty:
            return 0
        with self._db() as db:
            return db.execute("SELECT count(*) FROM runs").fetchone()[0]

    def workflows(self, limit: int = 20) -> list[dict]:
        """The workflows with runs, the most recently run first: {workflow_id, runs, last_ended,
        median_wall_s (of its successful runs; None without any)}."""
        if self._empty:
            return []
        with self._db() as db:
            groups = db.execute("SELECT workflow_id, count(*), max(ended) FROM runs GROUP BY workflow_id "
                                "ORDER BY max(ended) DESC LIMIT ?", (max(0, int(limit)),)).fetchall()
            out = []
            for workflow_id, runs, last_ended in groups:
                walls = [w for (w,) in db.execute("SELECT wall_s FROM runs WHERE workflow_id IS ? AND outcome = 'ok' "
                                                  "AND wall_s IS NOT NULL", (workflow_id,))]
                out.append({"workflow_id": workflow_id, "runs": runs, "last_ended": last_ended,
                            "median_wall_s": statistics.median(walls) if walls else None})
        return out

    def compare(self, a_id: str, b_id: str) -> dict:
        """Run ``a`` against run ``b``: per stage and for the wall time, a's and b's seconds, the
        difference (a - b) and the ratio (a / b; None when b is 0), stages by the size of the difference;
        the findings (by rule) only one of them has. RunNotFound when either is not recorded."""
        a, b = self.get(a_id), self.get(b_id)
        missing = [p for p, run in ((a_id, a), (b_id, b)) if run is None]
        if missing:
            raise RunNotFound(f"no run of prompt {' or '.join(missing)} in {self.path}", tuple(missing))
        return compare_runs(a, b)


def compare_runs(a: dict, b: dict) -> dict:
    """The comparison of two recorded runs (see History.compare). This function can't fail."""
    def figure(x: float | None, y: float | None) -> dict:
        x, y = x or 0.0, y or 0.0
        return {"a": x, "b": y, "difference": x - y, "ratio": x / y if y else None}

    stages = [{"stage": stage, **figure(a["stages"].get(stage), b["stages"].get(stage))}
              for stage in dict.fromkeys([*a["stages"], *b["stages"]])]
    stages.sort(key=lambda s: -abs(s["difference"]))
    rules_a = {f.get("rule") for f in a["findings"]}
    rules_b = {f.get("rule") for f in b["findings"]}
    brief = ("prompt_id", "workflow_id", "ended", "outcome", "wall_s", "queue_wait_s", "trace")
    return {"a": {k: a.get(k) for k in brief}, "b": {k: b.get(k) for k in brief},
            "same_workflow": a.get("workflow_id") == b.get("workflow_id"),
            "wall": figure(a.get("wall_s"), b.get("wall_s")), "stages": stages,
            "findings_only_in_a": [f for f in a["findings"] if f.get("rule") not in rules_b],
            "findings_only_in_b": [f for f in b["findings"] if f.get("rule") not in rules_a]}


def _run(row: tuple) -> dict:
    prompt_id, workflow_id, ended, outcome, wall_s, queue_wait_s, stages, findings, nodes, trace = row
    stages = {str(k): v for k, v in _loads(stages, {}).items() if _number(v) is not None}
    return {"prompt_id": prompt_id, "workflow_id": workflow_id, "ended": ended, "outcome": outcome,
            "wall_s": wall_s, "queue_wait_s": queue_wait_s, "stages": stages,
            "findings": [f for f in _loads(findings, []) if isinstance(f, dict)],
            "nodes": [n for n in _loads(nodes, []) if isinstance(n, dict)], "trace": trace}


# --- From a report ----------------------------------------------------------------------------------

NOT_STORED_STAGES = ("prompt",)  # the prompt's span is the wall time, stored on its own


def run_from_report(report, metadata: dict, trace_name: str | None) -> dict:
    """The row :meth:`History.record` takes, from a ``diagnose()`` Report and the trace's otherData
    (``workflow_id``; ``ended``, else now). Stages are the inclusive seconds of each stage
    (``summary.stage_s``). This function can't fail on a well-formed Report."""
    summary = report.summary
    metadata = metadata if isinstance(metadata, dict) else {}
    ended = _number(metadata.get("ended"))
    workflow_id = metadata.get("workflow_id")
    return {
        "prompt_id": str(summary.prompt_id),
        "workflow_id": str(workflow_id) if workflow_id is not None else None,
        "ended": ended if ended is not None else time.time(),
        "outcome": summary.outcome,
        "wall_s": summary.wall_s,
        "queue_wait_s": summary.queue_wait_s,
        "stages": {stage: seconds for stage, seconds in summary.stage_s.items() if stage not in NOT_STORED_STAGES},
        "findings": [{"rule": f.rule, "title": f.title, "severity": f.severity} for f in report.findings],
        "nodes": [{"node_id": n.node_id, "class_type": n.class_type, "seconds": n.seconds, "outcome": n.outcome}
                  for n in summary.nodes],
        "trace": os.path.basename(trace_name) if trace_name else None,
    }
