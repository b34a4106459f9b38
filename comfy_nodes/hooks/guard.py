"""Fail-open for everything of StageTrace's own inside ComfyUI's calls.

Every piece of StageTrace code that runs inside a hooked ComfyUI call goes through one ``HookGuard``:
an exception raised by StageTrace's own code is caught, counted under the hook's label, logged once
and never reaches ComfyUI; ComfyUI's own exceptions pass through untouched, because the guarded
code never wraps the original call. The counts go into every trace (``otherData.hook_failures``), so
a trace says which hook failed.

Fault injection (``inject_faults``) makes a labelled hook raise at its real call site, inside the
guard, so the tests prove the prompt runs on with byte-identical images whichever hook fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..core.log import log_once

ALL = "all"


class InjectedFault(RuntimeError):
    """Raised by a hook whose label is in the injected set (tests only ask for it)."""


class HookGuard:
    """Counts the failures of StageTrace's own code per hook label; never raises."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}
        self.last: dict[str, str] = {}
        self.inject: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def _check_injected(self, label: str) -> None:
        if label in self.inject or ALL in self.inject:
            raise InjectedFault(f"injected StageTrace fault in {label}")

    def failed(self, label: str, exc: BaseException) -> None:
        """Count one failure of ``label`` and log it the first time. Can't fail."""
        try:
            with self._lock:
                self.failures[label] = self.failures.get(label, 0) + 1
                self.last[label] = f"{type(exc).__name__}: {exc}"[:300]
            log_once(f"hook-{label}", "%s failed (%s: %s); ComfyUI carries on, StageTrace records less",
                     label, type(exc).__name__, exc)
        except Exception:  # noqa: BLE001 - the guard itself must never break the host
            pass

    def call(self, label: str, fn: Callable[..., Any], *args: Any, default: Any = None, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), or ``default`` when it raises (counted under label)."""
        try:
            if self.inject:
                self._check_injected(label)
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - StageTrace's own failure: never into ComfyUI
            self.failed(label, exc)
            return default

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn for a C Wrapper callback (namer, outcome): failures are counted under label and re-raised
        to the Wrapper, which swallows them, keeps the span with its static name, and drops a callback
        that keeps failing."""
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                if self.inject:
                    self._check_injected(label)
                return fn(*args, **kwargs)
            except Exception as exc:
                self.failed(label, exc)
                raise
        guarded.__name__ = getattr(fn, "__name__", label)
        return guarded

    def snapshot(self) -> dict:
        """{label: {"count": n, "last": message}} of the hooks that failed so far."""
        with self._lock:
            return {label: {"count": n, "last": self.last.get(label)} for label, n in self.failures.items()}


GUARD = HookGuard()


def inject_faults(spec: str) -> None:
    """Make the hooks named in spec ("all", or labels separated by commas) raise inside their guard."""
    GUARD.inject = frozenset(label.strip() for label in spec.split(",") if label.strip())
