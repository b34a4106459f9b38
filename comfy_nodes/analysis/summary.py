"""The stage summary of one prompt, computed from trace events alone, so the
console summary and ``stagetrace report TRACE`` always agree."""

from __future__ import annotations

import heapq
from array import array
from collections import defaultdict
from dataclasses import dataclass, field

from ..core.stages import STAGES
from ..core.units import format_bytes, format_duration, format_share
from .loaders import describe_gap, valid_gaps

TOP_NODES = 5
UNCATEGORISED = "uncategorised"  # the category of a foreign trace's span that has none


@dataclass
class NodeTime:
    node_id: str
    class_type: str
    seconds: float
    outcome: str


@dataclass
class Summary:
    prompt_id: str
    outcome: str
    wall_s: float
    queue_wait_s: float | None
    stage_s: dict[str, float]  # union of each stage's spans
    nodes: list[NodeTime]  # executed nodes, slowest first
    cached: list[NodeTime]
    failures: list[str] = field(default_factory=list)  # "failed: ...", "interrupted at: ..."
    warnings: list[str] = field(default_factory=list)
    events: int = 0
    dropped: int = 0
    trace_path: str | None = None
    gpu: str | None = None  # one line: what the GPU did, or why there are no GPU figures
    # each stage's own time: a moment belongs to the innermost stage running then, so these add up to the
    # union of all spans (the wall time). "prompt": outside every node; "node": in a node, outside any stage.
    exclusive_s: dict[str, float] = field(default_factory=dict)


# How deep a stage sits: the innermost (highest) one running at a moment owns it. A stage of another
# version's vocabulary counts as a stage inside a node.
DEPTH = {"prompt": 0, "node": 1, "model_load.read": 3, "sample.step": 3}
# Words for the exclusive rows that are not a stage of their own.
EXCLUSIVE_LABELS = {"prompt": "outside nodes", "node": "in nodes, outside stages"}


def exclusive_times(spans: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Seconds each stage owns (µs intervals in): a sweep over every span boundary, giving each stretch to
    the deepest stage running then (DEPTH; ties to the vocabulary's order). Categories that are not
    StageTrace's (a foreign trace's ``Trace``, ``cpu_op``, ``kernel``...) have no known depth: among them
    the one covering less time in all is taken as the inner one (a whole-run span wraps the ops in it)."""
    order = {stage: i for i, stage in enumerate(STAGES)}
    rank = {stage: (DEPTH.get(stage, 2), order.get(stage, len(order)),
                    0.0 if stage in order else -_union_us(spans[stage])) for stage in spans}
    edges = sorted((t, delta, stage) for stage, intervals in spans.items() for b, e in intervals if e > b
                   for t, delta in ((b, 1), (e, -1)))
    active: dict[str, int] = defaultdict(int)
    owned: dict[str, float] = defaultdict(float)
    last = None
    for t, delta, stage in edges:
        if last is not None and t > last:
            running = [s for s, n in active.items() if n > 0]
            if running:
                owned[max(running, key=rank.__getitem__)] += t - last
        active[stage] += delta
        last = t
    ordered = sorted(owned, key=lambda s: order.get(s, len(order)))
    return {stage: owned[stage] / 1e6 for stage in ordered if owned[stage] > 0}


def _native():
    from ..core import native

    module = native._native
    return module if module is not None and hasattr(module, "spans_exclusive") else None


def span_figures(columns: dict[str, tuple[bytes, bytes]]) -> tuple[dict[str, float], dict[str, float]]:
    """(each stage's union, each stage's own time), in µs and seconds, from the intervals (µs) of each
    stage as packed doubles: the C core's sweep over millions of intervals, the same to the last bit as
    ``_union_us`` and ``exclusive_times`` (which stand in without the C extension)."""
    native = _native()
    if native is None:
        spans = {stage: list(zip(array("d", b), array("d", e), strict=True)) for stage, (b, e) in columns.items()}
        return {stage: _union_us(iv) for stage, iv in spans.items()}, exclusive_times(spans)
    order = {stage: i for i, stage in enumerate(STAGES)}
    stages = list(columns)
    union = {stage: native.spans_union(*columns[stage]) for stage in stages}
    # exclusive_times gives a stretch to the highest rank; among equal ranks, to the stage whose first span
    # came first (then the smaller name): the order of the sweep's dict. Ranks here are that total order.
    def first_begin(stage: str) -> float:
        return native.spans_first_begin(*columns[stage])

    ties = sorted(stages, key=lambda st: (first_begin(st) if st not in order else 0.0, st), reverse=True)
    ranked = sorted(ties, key=lambda st: (DEPTH.get(st, 2), order.get(st, len(order)),
                                          0.0 if st in order else -union[st]))
    rank = {stage: i for i, stage in enumerate(ranked)}
    owned = native.spans_exclusive([columns[st] for st in stages], [rank[st] for st in stages])
    firsts = {stage: first for stage, (secs, first) in zip(stages, owned, strict=True) if secs > 0}
    ordered = sorted(firsts, key=lambda st: (order.get(st, len(order)), firsts[st]))
    own = {stage: secs for stage, (secs, _) in zip(stages, owned, strict=True)}
    return union, {stage: own[stage] / 1e6 for stage in ordered}


def first_line(text: object) -> str:
    """The first non-blank line of a message (ComfyUI's exception messages run on for lines)."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def node_self_times(spans: list[tuple[float, float, str]]) -> dict[str, float]:
    """Each node's own time (µs): the moments it is the innermost node span open, so a node that waited
    while others ran (pending on its lazy inputs, an async node's task) is not charged their time, the
    nodes expanded from a node (carrying its id) are its time, and nothing is counted twice. A sweep over
    the spans' edges; the innermost open span is the one that began last."""
    edges = sorted((t, delta, i) for i, (begin, end, _) in enumerate(spans) if end > begin
                   for t, delta in ((begin, 1), (end, -1)))  # at one moment, ends before starts
    open_spans: set[int] = set()
    innermost: list[tuple[float, int]] = []  # heap of (-begin, span), stale entries skipped
    owned: dict[str, float] = defaultdict(float)
    last = None
    for t, delta, i in edges:
        if last is not None and t > last:
            while innermost and innermost[0][1] not in open_spans:
                heapq.heappop(innermost)
            if innermost:
                owned[spans[innermost[0][1]][2]] += t - last
        if delta > 0:
            open_spans.add(i)
            heapq.heappush(innermost, (-spans[i][0], i))
        else:
            open_spans.discard(i)
        last = t
    return owned


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for begin, finish in sorted(intervals):
        if finish <= end:
            continue
        total += finish - max(begin, end)
        end = finish
    return total


def _columns(trace: dict, events: list) -> dict[str, tuple[bytes, bytes]] | None:
    """Each stage's intervals from the streaming reader's digest (every complete event of the file, not
    only the ones kept whole), or None for a trace held whole."""
    from ..record.tracefile import digest_of

    digest = digest_of(trace)
    if digest is None:
        return None
    out: dict[str, tuple[bytes, bytes]] = {}
    for cat, column in digest.columns.items():
        stage = cat or UNCATEGORISED
        b, e = out.get(stage, (b"", b""))
        out[stage] = (b + column.begins, e + column.ends)
    return out


def summarize(trace: dict, trace_path: str | None = None) -> Summary:
    """Summary of the (first) prompt in a parsed trace (``tracefile.load``'s or ``tracefile.read``'s)."""
    from ..record.tracefile import digest_of

    events = trace.get("traceEvents", [])
    other = trace.get("otherData") or {}
    columns = _columns(trace, events)
    spans: dict[str, tuple[array, array]] = defaultdict(lambda: (array("d"), array("d")))
    node_time: dict[str, NodeTime] = {}
    cached: dict[str, NodeTime] = {}
    failures: list[str] = []
    prompt = None
    queue_wait = None
    gpu_windows: list[dict] = []
    # a node's spans: one per node, or several (the nodes expanded from it, attributed to it, inside its
    # span; a trace from before pending nodes were one span): see node_self_times
    node_spans: list[tuple[float, float, str]] = []
    for ev in events:
        ph, cat, args = ev.get("ph"), ev.get("cat") or UNCATEGORISED, ev.get("args") or {}
        if ph == "i" and ev.get("name") == "execution_error":
            failures.append(
                f"failed: {args.get('node_type', '?')} #{args.get('node_id', '?')}: "
                f"{args.get('exception_type', 'error')}: {first_line(args.get('exception_message', ''))}".rstrip()
            )
        elif ph == "i" and ev.get("name") == "execution_interrupted":
            failures.append(f"interrupted at: {args.get('node_type', '?')} #{args.get('node_id', '?')}")
        if ph != "X":
            continue
        ts, dur = float(ev["ts"]), float(ev["dur"])
        if cat == "gpu":  # the GPU track: figures, not a stage of the host
            gpu_windows.append(args)
            continue
        if cat == "prompt" and ev.get("name") == "queue_wait":
            queue_wait = dur / 1e6
            continue
        if cat == "prompt" and prompt is None:
            prompt = ev
        if columns is None:
            begins, ends = spans[cat]
            begins.append(ts)
            ends.append(ts + dur)
        if cat == "node":
            node_id = str(args.get("node_id", "?"))
            outcome = args.get("outcome", "ok")
            if outcome == "cached":
                cached.setdefault(node_id, NodeTime(node_id, ev.get("name", "?"), 0.0, outcome))
                continue
            entry = node_time.setdefault(node_id, NodeTime(node_id, ev.get("name", "?"), 0.0, outcome))
            node_spans.append((ts, ts + dur, node_id))
            if outcome != "pending":
                entry.outcome = outcome
    if columns is None:
        columns = {stage: (b.tobytes(), e.tobytes()) for stage, (b, e) in spans.items()}
    columns = {stage: c for stage, c in columns.items() if c[0]}
    if prompt is not None:
        wall = float(prompt["dur"]) / 1e6
        prompt_id = str((prompt.get("args") or {}).get("prompt_id", other.get("prompt_id", "?")))
        outcome = (prompt.get("args") or {}).get("outcome", "ok")
    else:  # a trace without a prompt span: the extent of everything in it
        ends = [max(array("d", e)) for _, e in columns.values()]
        begins = [min(array("d", b)) for b, _ in columns.values()]
        wall = (max(ends) - min(begins)) / 1e6 if ends else 0.0
        prompt_id, outcome = str(other.get("prompt_id", "?")), "ok"
    union, exclusive = span_figures(columns)
    stage_s = {stage: union[stage] / 1e6 for stage in STAGES if stage in union}
    for stage in union.keys() - set(STAGES):  # categories from newer versions
        stage_s[stage] = union[stage] / 1e6
    self_times = node_self_times(node_spans)
    for node_id, entry in node_time.items():
        entry.seconds = self_times.get(node_id, 0.0) / 1e6
    for node_id in cached.keys() & node_time.keys():
        del cached[node_id]
    digest = digest_of(trace)
    warnings = _warnings(other)
    if digest is not None and digest.omitted:
        warnings.append(f"{digest.omitted:,} of the trace's {digest.events:,} events were read as figures only "
                        "(a trace this big is read in bounded memory): the stage times count every span; the "
                        "per-span findings and pictures use the first ones")
    return Summary(
        prompt_id=prompt_id,
        outcome=outcome,
        wall_s=wall,
        queue_wait_s=queue_wait if queue_wait is not None else other.get("queue_wait_s"),
        stage_s=stage_s,
        nodes=sorted(node_time.values(), key=lambda n: n.seconds, reverse=True),
        cached=sorted(cached.values(), key=lambda n: n.node_id),
        failures=failures,
        warnings=warnings,
        events=digest.events if digest is not None else len(events),
        dropped=int(other.get("dropped_events", 0) or 0),
        trace_path=trace_path,
        gpu=_gpu_line(other.get("gpu"), gpu_windows, wall),
        exclusive_s=exclusive,
    )


def _gpu_line(meta: object, windows: list[dict], wall_s: float) -> str | None:
    """What the GPU did over the prompt: busy time, kernels, bytes copied each way."""
    if not isinstance(meta, dict):
        return None  # a trace from before GPU collection existed
    if meta.get("collection") != "cupti":
        return str(meta.get("reason") or "GPU collection unavailable")
    busy = sum(float(w.get("busy_ms") or 0) for w in windows) / 1e3
    kernels = sum(int(w.get("kernels") or 0) for w in windows)
    copied: dict[str, int] = defaultdict(int)
    for w in windows:
        for direction, c in (w.get("copies") or {}).items():
            copied[direction] += int(c.get("bytes") or 0)
    moved = ", ".join(f"{d.upper()} {format_bytes(b)}" for d, b in copied.items() if b)
    line = f"GPU busy {format_duration(busy).strip()} ({format_share(busy, wall_s).strip()} of wall), {kernels} kernels"
    line += f"; copies {moved}" if moved else ""
    dropped = int(meta.get("dropped_records") or 0)
    return line + (f"; {dropped} GPU records dropped" if dropped else "")


def _warnings(other: dict) -> list[str]:
    """The loader gaps in words, a line naming each malformed one, and the prose warnings of traces from
    before loader gaps were data."""
    gaps, problems = valid_gaps(other)
    old = other.get("warnings") or []
    foreign = [] if "stagetrace_version" in other else [
        "this trace was not written by StageTrace: its spans are summed by category, and what needs StageTrace's "
        "stages and metadata (the loader gaps, the GPU rounds, model files, the ComfyUI options) cannot be told"]
    return foreign + [describe_gap(g) for g in gaps] + problems + [
        str(w) for w in (old if isinstance(old, list) else [old])]
