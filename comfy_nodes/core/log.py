"""StageTrace's logger, and "say it once" for errors that could repeat."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("stagetrace")

_said: set[str] = set()
_said_lock = threading.Lock()


def log_once(key: str, message: str, *args: object, level: int = logging.WARNING) -> bool:
    """Log ``message`` the first time ``key`` is seen; return whether it was logged."""
    with _said_lock:
        if key in _said:
            return False
        _said.add(key)
    logger.log(level, "StageTrace: " + message, *args)
    return True
