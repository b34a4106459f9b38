"""The ComfyUI log lines that explain a slow or broken run, as instant events.

ComfyUI logs through the root logger ("no CLIP/text encoder weights in checkpoint", "loaded
partially", the tiled VAE retry, out of memory...). The tap is a handler on the root logger, added
with the first prompt, not on import. A record that is not ComfyUI's (another logger's name) or
that arrives between prompts costs one attribute compare; ComfyUI's records during a prompt are
matched against one combined pattern, and a match is recorded through the C recorder (category
``comfyui_log``, the message and level as args).
"""

from __future__ import annotations

import logging
import re

# (kind, pattern): the kind names the instant event; the patterns are ComfyUI 0.3.x's stable lines.
LOG_PATTERNS: tuple[tuple[str, str], ...] = (
    ("no_clip", r"no CLIP/text encoder weights in checkpoint"),
    ("no_vae", r"No VAE weights detected"),
    ("not_a_checkpoint", r"This is not a checkpoint file, trying to load it as a diffusion model only"),
    ("loaded_partially", r"loaded partially"),
    ("loaded_completely", r"loaded completely"),
    ("tiled_vae_retry", r"Ran out of memory when regular VAE (?:de|en)coding, retrying with tiled"),
    ("oom", r"(?i:out of memory|OutOfMemoryError)"),
    ("models_unloaded", r"\d+ models? unloaded"),
    ("vram_state", r"Set vram state to: "),
    ("weight_dtype", r"model weight dtype .*, manual cast: "),
)
COMBINED = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in LOG_PATTERNS))
COMFYUI_LOGGER = "root"  # ComfyUI calls logging.info/warning: the root logger
MAX_MESSAGE = 500


def match_kind(message: str) -> str | None:
    """The kind of a ComfyUI log line worth an event, or None."""
    m = COMBINED.search(message)
    return m.lastgroup if m else None


class LogTap(logging.Handler):
    """Turns ComfyUI's telling log lines into instant events while a prompt runs. Never raises."""

    def __init__(self, native, guard) -> None:
        super().__init__(level=logging.DEBUG)
        self.native = native
        self.guard = guard
        self.active = False  # on between prompt_begin and prompt_end
        self._category = native.intern("comfyui_log")

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle takes a lock and runs filters for every record; this one returns first for
        # records that are not ComfyUI's or arrive between prompts.
        if not self.active or record.name != COMFYUI_LOGGER:
            return False
        self.guard.call("log tap", self._record, record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # logging's interface; handle() does the work
        self.handle(record)

    def _record(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        kind = match_kind(message)
        if kind is None:
            return
        n = self.native
        now = n.now_ns()
        n.record(0, n.intern(kind), 0, now, now, kind=n.EVENT_INSTANT, cat_id=self._category,
                 args={"message": message[:MAX_MESSAGE], "level": record.levelname})

    def install(self) -> None:
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
