"""Every StageTrace setting, read from the environment in one place.

| variable                 | default                          | meaning                                   |
|--------------------------|----------------------------------|-------------------------------------------|
| STAGETRACE_DISABLE       | 0                                | 1: install no hooks at all (off switch)   |
| STAGETRACE_OUTPUT_DIR    | <ComfyUI output>/stagetrace      | where traces are written                  |
| STAGETRACE_NVTX          | 1                                | 0: no NVTX ranges                         |
| STAGETRACE_SUMMARY       | 1                                | 1: one console line a prompt (the full    |
|                          |                                  | summary when it failed); full: the full   |
|                          |                                  | summary every time; 0: nothing            |
| STAGETRACE_REPORT        | 1                                | 0: no report files (.report.html/.json)   |
|                          |                                  | beside each trace                         |
| STAGETRACE_BUFFER_EVENTS | 65536                            | events each thread's buffer holds         |
| STAGETRACE_GPU           | 1                                | 0: no CUPTI GPU activity collection       |
| STAGETRACE_CUPTI_LIB     | (searched: see gpu.py)           | path of the libcupti to load              |
| STAGETRACE_GPU_KERNELS   | 0                                | N: also write up to N kernel/copy events  |
|                          |                                  | a prompt on per-stream GPU tracks         |
| STAGETRACE_NVML          | 1                                | 0: no NVML sampler (utilisation, memory,  |
|                          |                                  | temperature, power counter tracks)        |
| STAGETRACE_NVML_HZ       | 10                               | samples a second                          |
| STAGETRACE_NVML_LIB      | libnvidia-ml.so.1                | the NVML library to load                  |
| STAGETRACE_KEEP_TRACES   | 1000                             | traces kept (each with its reports);      |
|                          |                                  | the oldest are removed past this          |
| STAGETRACE_KEEP_DAYS     | 30                               | traces older than this are removed        |
| STAGETRACE_KEEP_MB       | 2000                             | traces and reports take at most this (MB) |
| STAGETRACE_WRITER_QUEUE  | 64                               | prompts waiting for the writer thread;    |
|                          |                                  | past this whole prompts are dropped and   |
|                          |                                  | counted (the worker never waits)          |
| STAGETRACE_LIVE          | 1                                | 0: no live progress messages to the page  |
| STAGETRACE_METRICS       | 1                                | 0: no Prometheus metrics (the route says  |
|                          |                                  | so with a 503)                            |
| STAGETRACE_METRICS_PORT  | 0                                | N: also serve /metrics on its own port,   |
|                          |                                  | outside ComfyUI's auth (0: no such port)  |
| STAGETRACE_METRICS_ADDR  | 127.0.0.1                        | the address that port listens on          |
| STAGETRACE_METRICS_NODE_CLASSES | (ComfyUI's core loaders,  | node classes with their own node_class    |
|                          | samplers, encoders, decoders)    | label (comma-separated); others: "other"  |
| STAGETRACE_HISTORY       | 1                                | 0: no run history (history.sqlite3 in the |
|                          |                                  | trace folder: the regression finding,     |
|                          |                                  | `stagetrace history`, the history routes) |
| STAGETRACE_HISTORY_KEEP  | 10000                            | runs the history keeps; the oldest go     |
| STAGETRACE_HISTORY_DAYS  | 90                               | runs older than this leave the history    |
| STAGETRACE_HASH_CACHE    | $XDG_CACHE_HOME/stagetrace/      | `inspect --models-dir`'s content-hash     |
|                          | hashes.sqlite3 (~/.cache/...)    | cache: a file, or a folder to hold it;    |
|                          |                                  | 0/off: no cache (every copy is re-hashed) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off", "none"}


class _Reader:
    """Reads the variables strictly: a value that is not understood, or out of its bounds, is reported in one
    line naming the variable and the default used instead (never a silent guess, never profiling off)."""

    def __init__(self, report):
        self.report = report

    def _bad(self, name: str, value: str, what: str, default) -> None:
        shown = ("on" if default else "off") if isinstance(default, bool) else default
        self.report(f"{name}={value!r} is not {what}: using the default ({shown})")

    def flag(self, name: str, default: bool, extra: tuple[str, ...] = ()) -> bool:
        value = os.environ.get(name)
        if value is None or not value.strip():
            return default
        word = value.strip().lower()
        if word in _TRUE or word in extra:
            return True
        if word in _FALSE:
            return False
        self._bad(name, value, "a switch (1/0, true/false, yes/no, on/off" + "".join(f", {e}" for e in extra) + ")",
                  default)
        return default

    def number(self, name: str, default, parse, low, high, low_open: bool = False):
        """The variable as a number within [low, high] ((low, high] with low_open); the default otherwise."""
        value = os.environ.get(name)
        if value is None or not value.strip():
            return default
        kind = "a whole number" if parse is int else "a number"
        def shown(x) -> str:
            return f"{x:,}" if isinstance(x, int) else f"{x:g}"

        bounds = f"{'over' if low_open else 'from'} {shown(low)} {'up to' if low_open else 'to'} {shown(high)}"
        try:
            number = parse(value.strip())
        except ValueError:
            self._bad(name, value, f"{kind} {bounds}", default)
            return default
        if number != number or not ((number > low) if low_open else (number >= low)) or number > high:
            self._bad(name, value, f"{kind} {bounds}", default)
            return default
        return number

    def path(self, name: str) -> str | None:
        """A folder: ~ and $VARIABLES expanded, made absolute; None when unset or empty."""
        value = os.environ.get(name)
        if value is None or not value.strip():
            return None
        return os.path.abspath(os.path.expanduser(os.path.expandvars(value.strip())))

    def path_or_off(self, name: str) -> str | None:
        """A file or folder path (~ and $VARIABLES expanded, made absolute); None for a switch's off word (0,
        off, no, false, none); "" when unset or empty (the caller's default place)."""
        value = os.environ.get(name)
        if value is None or not value.strip():
            return ""
        if value.strip().lower() in _FALSE:
            return None
        return os.path.abspath(os.path.expanduser(os.path.expandvars(value.strip())))

    def names(self, name: str, most: int) -> tuple[str, ...] | None:
        """A comma-separated list of names (at most `most`); None when unset or empty."""
        value = os.environ.get(name)
        if value is None or not value.strip():
            return None
        names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
        if len(names) > most:
            self.report(f"{name} names {len(names)} node classes: only the first {most} are used")
        return names[:most]


def _log_problem(message: str) -> None:
    from .log import logger

    logger.warning("StageTrace: %s", message)


@dataclass(frozen=True)
class Settings:
    disabled: bool
    output_dir: str | None  # None: ComfyUI's output folder + "/stagetrace"
    nvtx: bool
    summary: bool
    buffer_events: int
    gpu: bool = True
    report: bool = True
    gpu_kernels: int = 0
    nvml: bool = True
    nvml_hz: int = 10
    keep_traces: int = 1000
    keep_days: float = 30.0
    keep_mb: float = 2000.0
    writer_queue: int = 64
    summary_full: bool = False  # STAGETRACE_SUMMARY=full: the whole summary after every prompt
    live: bool = True  # stagetrace.live WebSocket messages to the page that queued the prompt
    metrics: bool = True
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"
    metrics_node_classes: tuple[str, ...] | None = None  # None: metrics.DEFAULT_NODE_CLASSES
    history: bool = True
    history_keep: int = 10_000
    history_days: float = 90.0
    hash_cache: str | None = ""  # "": the default place (cli/hashcache.py); None: off

    @classmethod
    def from_env(cls, problems: list[str] | None = None) -> Settings:
        """The settings from the environment. A value that is not understood gives one line naming the variable
        and the default used instead: appended to problems when given, else logged as a warning."""
        r = _Reader(problems.append if problems is not None else _log_problem)
        summary = r.flag("STAGETRACE_SUMMARY", True, extra=("full",))
        return cls(
            disabled=r.flag("STAGETRACE_DISABLE", False),
            output_dir=r.path("STAGETRACE_OUTPUT_DIR"),
            nvtx=r.flag("STAGETRACE_NVTX", True),
            summary=summary,
            summary_full=summary and (os.environ.get("STAGETRACE_SUMMARY") or "").strip().lower() == "full",
            live=r.flag("STAGETRACE_LIVE", True),
            buffer_events=r.number("STAGETRACE_BUFFER_EVENTS", 65536, int, 1, 1 << 24),
            gpu=r.flag("STAGETRACE_GPU", True),
            report=r.flag("STAGETRACE_REPORT", True),
            gpu_kernels=r.number("STAGETRACE_GPU_KERNELS", 0, int, 0, 10_000_000),
            nvml=r.flag("STAGETRACE_NVML", True),
            nvml_hz=r.number("STAGETRACE_NVML_HZ", 10, int, 1, 1000),
            keep_traces=r.number("STAGETRACE_KEEP_TRACES", 1000, int, 1, 10_000_000),
            keep_days=r.number("STAGETRACE_KEEP_DAYS", 30.0, float, 0, 36_500, low_open=True),
            keep_mb=r.number("STAGETRACE_KEEP_MB", 2000.0, float, 0, 100_000_000, low_open=True),
            writer_queue=r.number("STAGETRACE_WRITER_QUEUE", 64, int, 1, 100_000),
            metrics=r.flag("STAGETRACE_METRICS", True),
            metrics_port=r.number("STAGETRACE_METRICS_PORT", 0, int, 0, 65535),
            metrics_addr=(os.environ.get("STAGETRACE_METRICS_ADDR") or "127.0.0.1").strip(),
            metrics_node_classes=r.names("STAGETRACE_METRICS_NODE_CLASSES", 200),
            history=r.flag("STAGETRACE_HISTORY", True),
            history_keep=r.number("STAGETRACE_HISTORY_KEEP", 10_000, int, 1, 10_000_000),
            history_days=r.number("STAGETRACE_HISTORY_DAYS", 90.0, float, 0, 36_500, low_open=True),
            hash_cache=r.path_or_off("STAGETRACE_HASH_CACHE"),
        )
