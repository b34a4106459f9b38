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
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_FALSE = {"0", "false", "no", "off", ""}


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in _FALSE


def _number(name: str, default, parse, what: str, ok, bound: str):
    """The variable parsed as a number (parse: int or float) for which ok(number) holds; the default when
    unset or empty. ValueError naming the variable otherwise (NaN is never ok)."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = parse(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not {what}") from None
    if not ok(number):
        raise ValueError(f"{name}={value!r} must be {bound}")
    return number


def _int(name: str, default: int, minimum: int) -> int:
    return _number(name, default, int, "an integer", lambda n: n >= minimum,
                   "positive" if minimum == 1 else f"{minimum} or more")


def _positive_float(name: str, default: float) -> float:
    return _number(name, default, float, "a number", lambda n: n > 0, "positive")


def _positive_int(name: str, default: int) -> int:
    return _int(name, default, 1)


def _count(name: str, default: int) -> int:
    return _int(name, default, 0)


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

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            disabled=_flag("STAGETRACE_DISABLE", False),
            output_dir=os.environ.get("STAGETRACE_OUTPUT_DIR") or None,
            nvtx=_flag("STAGETRACE_NVTX", True),
            summary=_flag("STAGETRACE_SUMMARY", True),
            summary_full=(os.environ.get("STAGETRACE_SUMMARY") or "").strip().lower() == "full",
            live=_flag("STAGETRACE_LIVE", True),
            buffer_events=_positive_int("STAGETRACE_BUFFER_EVENTS", 65536),
            gpu=_flag("STAGETRACE_GPU", True),
            report=_flag("STAGETRACE_REPORT", True),
            gpu_kernels=_count("STAGETRACE_GPU_KERNELS", 0),
            nvml=_flag("STAGETRACE_NVML", True),
            nvml_hz=_positive_int("STAGETRACE_NVML_HZ", 10),
            keep_traces=_positive_int("STAGETRACE_KEEP_TRACES", 1000),
            keep_days=_positive_float("STAGETRACE_KEEP_DAYS", 30.0),
            keep_mb=_positive_float("STAGETRACE_KEEP_MB", 2000.0),
            writer_queue=_positive_int("STAGETRACE_WRITER_QUEUE", 64),
            metrics=_flag("STAGETRACE_METRICS", True),
            metrics_port=_number("STAGETRACE_METRICS_PORT", 0, int, "an integer", lambda n: 0 <= n <= 65535,
                                 "a port number (0 to 65535)"),
            metrics_addr=(os.environ.get("STAGETRACE_METRICS_ADDR") or "127.0.0.1").strip(),
            metrics_node_classes=_names("STAGETRACE_METRICS_NODE_CLASSES"),
            history=_flag("STAGETRACE_HISTORY", True),
            history_keep=_positive_int("STAGETRACE_HISTORY_KEEP", 10_000),
            history_days=_positive_float("STAGETRACE_HISTORY_DAYS", 90.0),
        )


def _names(name: str) -> tuple[str, ...] | None:
    """A comma-separated list of names; None when unset or empty."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
