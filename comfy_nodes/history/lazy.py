"""The run history as the writer thread and the routes use it inside ComfyUI: opened on first use, and again
after a failure, at most once a minute (a locked file frees up; a corrupt or foreign file is refused every time
and never touched), so StageTrace runs on without it, with one log line."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .store import History, HistoryError

RETRY_S = 60.0


class LazyHistory:
    """A History opened when first needed; every method of History, raising HistoryError while the database
    cannot be used."""

    def __init__(self, path: Callable[[], str], keep_runs: int, keep_days: float):
        self._path, self._keep_runs, self._keep_days = path, keep_runs, keep_days
        self._history: History | None = None
        self._failed_at: float | None = None
        self._error: HistoryError | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        """The database file, whether or not it could be opened."""
        return self._path()

    def open(self) -> History:
        with self._lock:
            if self._history is not None:
                return self._history
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_S:
                raise self._error
            try:
                self._history = History(self._path(), self._keep_runs, self._keep_days)
            except HistoryError as exc:
                self._failed_at, self._error = time.monotonic(), exc
                raise
            except OSError as exc:  # the folder cannot be made, say
                self._failed_at = time.monotonic()
                self._error = HistoryError(f"history database {self._path()}: {exc}")
                raise self._error from None
            return self._history

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.open(), name)
