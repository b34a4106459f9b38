"""The GPU tracks of a trace, recorded through the C recorder: one span per stage window that had GPU
work (its figures as args) on the "GPU (CUPTI)" track, and, on request, each kernel, copy and memset
on a track per CUDA stream."""

from __future__ import annotations

from ..core import stages

GPU_TRACK_TID = 0x6770_0000  # the "GPU (CUPTI)" track's thread id in the trace


def name_track(native, tid: int, name: str, sort_index: int | None = None) -> None:
    """Metadata events that name a track (and place it) in Perfetto and chrome://tracing."""
    native.record(0, native.intern("thread_name"), 0, 0, 0, kind=native.EVENT_METADATA, tid=tid,
                  args={"name": name})
    if sort_index is not None:
        native.record(0, native.intern("thread_sort_index"), 0, 0, 0, kind=native.EVENT_METADATA, tid=tid,
                      args={"sort_index": sort_index})


def record_windows(native, reports: list[dict]) -> int:
    """The GPU track: one span per window that had GPU work, from its first record's start to its last
    record's end, carrying the window's figures. Returns the number of spans recorded."""
    if not reports:
        return 0
    name_track(native, GPU_TRACK_TID, "GPU (CUPTI)", sort_index=-1)
    category, other = native.intern("gpu"), stages.STAGES.index("other")
    for r in reports:
        stage = stages.STAGES[r["stage"]] if r["window"] and r["stage"] < len(stages.STAGES) else None
        name = (native.name_of(r["name_id"]) or stage or "?") if r["window"] else "outside every stage"
        native.record(other, native.intern(f"GPU: {name}"), 0, r["first_ns"], max(r["first_ns"], r["last_ns"]),
                      kind=native.EVENT_SPAN, cat_id=category, tid=GPU_TRACK_TID, args=gpu_args(r, stage))
    return len(reports)


def record_kernels(native, records: list[tuple]) -> None:
    """Per-record spans (STAGETRACE_GPU_KERNELS): one track per CUDA stream."""
    for stream in sorted({r[4] for r in records}):
        name_track(native, GPU_TRACK_TID + 1 + stream, f"GPU stream {stream}")
    other = stages.STAGES.index("other")
    for kind, start, end, device, stream, name, nbytes, copy in records:
        args: dict = {"device": device, "stream": stream}
        if kind == "kernel":
            label = name or "kernel"
        else:
            label = f"{kind} {copy.upper()}" if copy else kind
            args["bytes"] = nbytes
        native.record(other, native.intern(label), 0, start, max(start, end), kind=native.EVENT_SPAN,
                      cat_id=native.intern(f"gpu.{kind}"), tid=GPU_TRACK_TID + 1 + stream, args=args)


def gpu_args(r: dict, stage: str | None = None) -> dict:
    """A window's GPU figures in the units a reader expects (ms, bytes)."""
    args = {
        "stage": stage,
        "window": r["window"],
        "busy_ms": r["busy_ns"] / 1e6,
        "kernels": r["kernels"],
        "kernel_ms": r["kernel_ns"] / 1e6,
        "top_kernels": [{"name": name, "count": count, "ms": ns / 1e6} for name, count, ns in r["top_kernels"]],
        "copies": {d: {"count": c["count"], "bytes": c["bytes"], "ms": c["ns"] / 1e6}
                   for d, c in r["copies"].items()},
        "memsets": r["memsets"],
        "memset_bytes": r["memset_bytes"],
    }
    if r["window"] and r["t1"]:
        span = r["t1"] - r["t0"]
        args["window_ms"] = span / 1e6
        args["busy_fraction"] = r["busy_ns"] / span if span else None
    return args
