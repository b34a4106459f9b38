"""The diagnosis report of one prompt in four forms: console text, Markdown, one self-contained HTML page
and JSON.

The HTML page has no script and fetches nothing (the routes serve it under a CSP that forbids both): a
timeline of the prompt (one lane per stage in the stage colours, node and step bars labelled where they
fit, every bar's figures in its tooltip, time ticks in the unit that fits the run), the time by stage (each
stage's own time, the shares adding to 100 %, and its whole time), the sampler's step times, the nodes with
the GPU's busy time inside each when the trace has GPU windows, the comparison with the previous run of the
same workflow when there is one, and the findings. Everything taken from the trace is escaped, and what is
drawn is bounded (charts.timeline merges short spans beyond ``charts.MAX_MARKS``), so a trace of millions
of events gives a page of a few hundred kB.
"""

from __future__ import annotations

import bisect
import html
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..analysis.diagnose import Report
from ..analysis.summary import EXCLUSIVE_LABELS, Summary
from ..core.stages import STAGES
from ..core.units import format_bytes, format_duration
from . import charts
from .text import format_text

FORMATS = ("text", "md", "html", "json")

# Timeline lanes, top to bottom, and their colours (the stage colours of the NVTX ranges, as CSS).
LANES = (
    ("prompt", "#5b7083"), ("node", "#8a8f98"), ("model_load.read", "#c0392b"), ("model_load.build", "#e67e22"),
    ("model_load.to_device", "#d4ac0d"), ("text_encode", "#16a085"), ("sample", "#2471a3"),
    ("sample.step", "#5dade2"), ("vae_decode", "#7d3c98"), ("vae_encode", "#a569bd"), ("save", "#27ae60"),
    ("gpu", "#1e8449"),
)
COLOUR = dict(LANES)
OTHER_COLOUR = "#b4b9c1"  # lanes of categories this version does not know, the time no span covers
KERNEL_LANE, KERNEL_COLOUR = "gpu kernels", "#52be80"  # per-kernel spans (STAGETRACE_GPU_KERNELS)
MAX_EXTRA_LANES = 4  # lanes for unknown categories; the rest share the lane "other"
TOP_NODE_ROWS = 25  # rows of the node table; the other nodes share one row
TIP_CHARS = 900  # the most characters of one tooltip
BINS = 1000  # a lane of spans read as figures only (tracefile.read) is drawn as one bar per time bin at most
TOP_NAMES, NAMED_LANES = 12, 8  # the names table: rows per category, categories


def render(report: Report, fmt: str, trace: dict | None = None, previous: dict | None = None) -> str:
    """The report in ``fmt`` (one of FORMATS). ``trace`` feeds the HTML page's pictures; ``previous`` is the
    previous run of the same workflow as the run history stores it ({"prompt_id", "wall_s", "stages": {stage:
    inclusive seconds}, "ended"}): every format but JSON then compares this run with it, JSON carries it."""
    if fmt == "text":
        return render_text(report, previous=previous)
    if fmt == "md":
        return render_md(report, previous=previous)
    if fmt == "html":
        return render_html(report, trace or {}, previous=previous)
    if fmt == "json":
        out = report.to_dict()
        if isinstance(previous, dict):
            out["previous"] = previous
        return json.dumps(out, indent=2, default=str)
    raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def lost(f) -> str:
    """The seconds a finding cost, in words; nothing for what broke the run (the whole run was lost)."""
    return format_duration(f.cost_s) if f.cost_s and f.severity != "error" else ""


# --- Figures every format shows --------------------------------------------------------------------


def stage_label(stage: str) -> str:
    """The name of an exclusive row: the stage, or what its own time means for "prompt" and "node"."""
    return f"({EXCLUSIVE_LABELS[stage]})" if stage in EXCLUSIVE_LABELS else stage


def shares_to_100(values: Sequence[float]) -> list[float]:
    """Percentages of the values' sum with one decimal that add up to exactly 100.0 (largest remainder);
    all zeros when the sum is not positive."""
    total = sum(values)
    if total <= 0:
        return [0.0] * len(values)
    tenths = [v / total * 1000 for v in values]
    floors = [math.floor(t) for t in tenths]
    order = sorted(range(len(values)), key=lambda i: tenths[i] - floors[i], reverse=True)
    for i in order[:1000 - sum(floors)]:
        floors[i] += 1
    return [f / 10 for f in floors]


@dataclass
class StageRow:
    stage: str  # the stage, "(no span)" for time no span covers
    own_s: float
    share: float  # percent; the rows add up to 100.0
    whole_s: float | None  # the stage's inclusive time (summary.stage_s)


def stage_rows(report: Report) -> list[StageRow]:
    """Each stage's own time (report.stages) with shares of the wall time that add to 100 %; a row for the
    wall time no span covers, when there is some."""
    s = report.summary
    rows = [(stage, secs) for stage, secs, _ in report.stages]
    covered = sum(secs for _, secs in rows)
    if s.wall_s - covered > max(1e-6, 1e-3 * s.wall_s):
        rows.append(("(no span)", s.wall_s - covered))
    shares = shares_to_100([secs for _, secs in rows])
    return [StageRow(stage, secs, share, s.stage_s.get(stage)) for (stage, secs), share in zip(rows, shares,
                                                                                                 strict=True)]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class Comparison:
    prompt_id: str
    ended: str
    outcome: str  # the previous run's outcome, "" when it is not recorded
    rows: list[tuple[str, float | None, float | None]]  # (what, this run, previous run), the wall time first


def compare(s: Summary, previous: dict | None) -> Comparison | None:
    """This run against the previous run of the same workflow: the wall time, then each stage's whole
    (inclusive) time in the vocabulary's order. None without a previous run."""
    if not isinstance(previous, dict):
        return None
    before = previous.get("stages") if isinstance(previous.get("stages"), dict) else {}
    order = {stage: i for i, stage in enumerate(STAGES)}
    names = [k for k in {**s.stage_s, **before} if isinstance(k, str) and k != "prompt"]
    names.sort(key=lambda k: (order.get(k, len(order)), k))
    rows = [("wall time", s.wall_s, _number(previous.get("wall_s")))]
    rows += [(k, s.stage_s.get(k), _number(before.get(k))) for k in names]
    ended = previous.get("ended")
    if _number(ended) is not None and ended > 0:  # seconds since the epoch, as the history stores it
        try:
            ended = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(ended)))
        except (OverflowError, OSError, ValueError):
            pass
    outcome = previous.get("outcome")
    return Comparison(str(previous.get("prompt_id", "?")), "" if ended is None else str(ended),
                      "" if outcome is None else str(outcome), rows)


def difference(now: float | None, before: float | None) -> tuple[str, str]:
    """('+1.200 s', '×1.25'): the change from the previous run, in words; '-' where a side is missing."""
    if now is None or before is None:
        return ("new" if before is None and now else "-"), "-"
    diff = now - before
    sign = "+" if diff > 0 else "−" if diff < 0 else "±"
    ratio = f"×{now / before:.2f}" if before > 0 else "-"
    return f"{sign}{format_duration(abs(diff))}", ratio


# --- Text and Markdown -----------------------------------------------------------------------------


def render_text(report: Report, previous: dict | None = None) -> str:
    """The console summary (as printed after each prompt), then the findings."""
    lines = [format_text(report.summary)]
    c = compare(report.summary, previous)
    if c is not None:
        _, now, before = c.rows[0]
        diff, ratio = difference(now, before)
        lines.append(f"  previous run ({c.prompt_id}): wall {format_duration(before)} → {format_duration(now)} "
                     f"({diff}, {ratio})")
    if not report.findings:
        lines.append("findings: none")
    for i, f in enumerate(report.findings, 1):
        cost = f" · about {lost(f)} lost" if lost(f) else ""
        lines += [f"{i}. [{f.severity}] {f.title}{cost}", f"   measured: {f.evidence}", f"   cause: {f.cause}",
                  f"   fix: {f.fix}"]
    if report.not_checked:
        lines.append("not checked: " + "; ".join(f"{n.title} ({n.why})" for n in report.not_checked))
    return "\n".join(lines)


def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_md(report: Report, previous: dict | None = None) -> str:
    s = report.summary
    out = [f"# StageTrace report: prompt {_md_cell(s.prompt_id)}", "",
           f"Outcome **{s.outcome}**, wall time **{format_duration(s.wall_s)}**.", "",
           "| stage | own time | share | whole time |", "|---|---:|---:|---:|"]
    out += [f"| {_md_cell(stage_label(r.stage))} | {format_duration(r.own_s)} | {r.share:.1f} % | "
            f"{format_duration(r.whole_s)} |" for r in stage_rows(report)]
    out += ["", "_Own time: the time in a stage and in no stage inside it, so the shares add to 100 %. "
                "Whole time: from the stage's start to its end, the stages inside it included._"]
    if s.gpu:
        out += ["", s.gpu]
    c = compare(s, previous)
    if c is not None:
        ended = f", ended {c.ended}" if c.ended else ""
        ended += f" (outcome {c.outcome})" if c.outcome not in ("", "ok") else ""
        out += ["", "## Compared with the previous run", "",
                f"The previous run of this workflow: prompt {_md_cell(c.prompt_id)}{_md_cell(ended)}. Whole times.",
                "", "| | this run | previous | difference | ratio |", "|---|---:|---:|---:|---:|"]
        for what, now, before in c.rows:
            diff, ratio = difference(now, before)
            out.append(f"| {_md_cell(what)} | {format_duration(now)} | {format_duration(before)} | {diff} | {ratio} |")
    out += ["", "## Findings", ""]
    if not report.findings:
        out.append("None.")
    for i, f in enumerate(report.findings, 1):
        cost = f" (about {lost(f)} lost)" if lost(f) else ""
        out += [f"### {i}. {f.title}{cost}", "", f"- **Measured:** {f.evidence}", f"- **Cause:** {f.cause}",
                f"- **Fix:** {f.fix}", ""]
    if report.not_checked:
        out += ["## Not checked", ""] + [f"- {n.title}: {n.why}" for n in report.not_checked]
    return "\n".join(out) + "\n"


# --- What the page reads from the trace ------------------------------------------------------------


@dataclass
class Column:
    """The spans of one lane as three columns, in start order: seconds from the prompt's start, and the
    events. Columns rather than a tuple per span: a trace of millions of events then allocates nothing the
    garbage collector has to walk (with a tuple per span, the collector's passes cost more than the rest)."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.starts)

    def durations(self) -> list[float]:
        return [e - b for b, e in zip(self.starts, self.ends, strict=True)]


@dataclass
class TraceSpans:
    """The complete events of one trace by lane, on seconds from the prompt's start."""

    origin_us: float = 0.0
    end_s: float = 0.0
    lanes: dict[str, Column] = field(default_factory=dict)
    binned: dict[str, int] = field(default_factory=dict)  # lane -> spans drawn from time bins (figures only)
    nodes: Column = field(default_factory=Column)  # executed node spans (the lane "node")
    steps: Column = field(default_factory=Column)  # sample.step spans
    windows: Column = field(default_factory=Column)  # GPU windows (the lane "gpu")

    def node_at(self, t: float) -> dict | None:
        """The innermost executed node span running at ``t`` seconds, or None."""
        i = bisect.bisect_right(self.nodes.starts, t) - 1
        for j in range(i, max(-1, i - 16), -1):
            if self.nodes.starts[j] <= t <= self.nodes.ends[j]:
                return self.nodes.events[j]
        return None


def _lane_of(cat: str, extra: list[str]) -> str:
    if cat in COLOUR:
        return cat
    if cat.startswith("gpu."):
        return KERNEL_LANE
    if cat in extra:
        return cat
    if len(extra) < MAX_EXTRA_LANES:
        extra.append(cat)
        return cat
    return "other"


def read_spans(trace: dict) -> TraceSpans:
    """The trace's complete events by lane, on seconds from the start of its (first) prompt span, or from
    its first span without one. Malformed events (no finite number for ts or dur) are left out; so are the
    queue wait (it comes before the prompt) and cached nodes (they ran no time: the node table lists them).
    One pass over the events, then one over each lane."""
    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    by_cat: dict[str, Column] = {}
    origin, first = None, math.inf
    binned = _binned_columns(trace)
    for ev in events if isinstance(events, list) else ():
        if type(ev) is not dict or ev.get("ph") != "X":
            continue
        if binned and ev.get("cat") in binned:
            continue  # drawn from all of its spans' bins instead
        ts, dur = ev.get("ts"), ev.get("dur") or 0.0
        if type(ts) not in (int, float) or type(dur) not in (int, float):
            try:
                ts, dur = float(ts), float(dur)
            except (TypeError, ValueError):
                continue
        if not (-math.inf < ts < math.inf and 0 <= dur < math.inf):
            continue
        cat = ev.get("cat")
        if type(cat) is not str:
            cat = "other"
        elif cat == "prompt":
            if ev.get("name") == "queue_wait":
                continue
            if origin is None:
                origin = ts
        elif cat == "node":
            args = ev.get("args")
            if dur <= 0 or (type(args) is dict and args.get("outcome") == "cached"):
                continue
        column = by_cat.get(cat)
        if column is None:
            column = by_cat[cat] = Column()
        column.starts.append(ts)
        column.ends.append(ts + dur)
        column.events.append(ev)
        if ts < first:
            first = ts
    for cat, (_, bars) in binned.items():
        column = by_cat.setdefault(cat if type(cat) is str else "other", Column())
        for ev in bars:
            column.starts.append(ev["ts"])
            column.ends.append(ev["ts"] + ev["dur"])
            column.events.append(ev)
            first = min(first, ev["ts"])
    out = TraceSpans()
    binned_spans = {(cat if type(cat) is str else "other"): spans for cat, (spans, _) in binned.items()}
    if not by_cat:
        return out
    o = out.origin_us = float(origin if origin is not None else first)
    extra: list[str] = []
    for cat, column in by_cat.items():
        name = _lane_of(cat, extra)
        lane = out.lanes.setdefault(name, Column())
        if cat in binned_spans:
            out.binned[name] = out.binned.get(name, 0) + binned_spans[cat]
        lane.starts += [(b - o) / 1e6 for b in column.starts]
        lane.ends += [(e - o) / 1e6 for e in column.ends]
        lane.events += column.events
    for lane in out.lanes.values():
        if not all(a <= b for a, b in zip(lane.starts, lane.starts[1:], strict=False)):
            order = sorted(range(len(lane)), key=lane.starts.__getitem__)
            lane.starts = [lane.starts[i] for i in order]
            lane.ends = [lane.ends[i] for i in order]
            lane.events = [lane.events[i] for i in order]
        out.end_s = max(out.end_s, max(lane.ends))
    out.nodes = out.lanes.get("node", Column())
    out.steps = out.lanes.get("sample.step", Column())
    out.windows = out.lanes.get("gpu", Column())
    return out


def _binned_columns(trace: dict) -> dict:
    """For each category whose spans were read as figures only (tracefile.read over OTHER_KEPT), its span
    count and one synthetic event per non-empty time bin of BINS over its extent: the bin's first start to
    its last end, its count and summed time. StageTrace's own lanes keep the events kept whole."""
    from ..core import native as core_native
    from ..record.tracefile import digest_of

    digest = digest_of(trace)
    native = core_native._native
    if digest is None or native is None:
        return {}
    out = {}
    for cat, col in digest.columns.items():
        if not col.omitted or cat in COLOUR:
            continue
        bars = []
        for count, begin, end, covered in native.spans_bins(col.begins, col.ends, col.min_begin, col.max_end, BINS):
            name = f"{count:,} {cat or 'uncategorised'} spans" if count > 1 else f"{cat or 'uncategorised'} span"
            bars.append({"ph": "X", "cat": cat, "name": name, "ts": begin, "dur": end - begin,
                         "args": {"spans": count, "summed_ms": covered / 1e3}})
        out[cat] = (len(col), bars)
    return out


# --- Tooltips --------------------------------------------------------------------------------------


def _args(ev: dict) -> dict:
    return ev.get("args") if isinstance(ev.get("args"), dict) else {}


def _short(text: object, most: int = 80) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= most else text[:most - 1] + "…"


def _compact(value: object, most: int = 120) -> str:
    try:
        text = json.dumps(value, separators=(", ", ": "), default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(value)
    return _short(text, most)


def _models(models: list) -> list[str]:
    lines = []
    for m in models[:6]:
        if not isinstance(m, dict):
            continue
        loaded, total = _number(m.get("loaded_bytes")), _number(m.get("total_bytes"))
        line = f"{_short(m.get('model', '?'), 40)}: {format_bytes(loaded)} of {format_bytes(total)} on the device"
        line += " (partial)" if m.get("partial") else ""
        line += f", {m['dtype']}" if m.get("dtype") else ""
        line += f", computes in {m['manual_cast']}" if m.get("manual_cast") else ""
        lines.append(line)
    return lines + ([f"… and {len(models) - 6} more models"] if len(models) > 6 else [])


# Names of the args a person reads often; the others are their key with spaces.
ARG_NAMES = {"busy_ms": "GPU busy", "kernel_ms": "kernel time", "window_ms": "window",
             "busy_fraction": "GPU busy share", "file_bytes": "file size", "storage_read_bytes": "read from storage",
             "fs_type": "file system", "tiled_fallback": "tiled fallback (after running out of memory)"}
SKIPPED_ARGS = ("outcome", "node_id", "prompt_id", "window", "stage", "step", "of")  # shown in the heading


def arg_lines(args: dict) -> list[str]:
    """A span's args as lines a person reads: sizes in bytes units, milliseconds as durations, flags as
    yes/no, the models of a load, the copies and top kernels of a GPU window; anything else as compact
    JSON. Bounded: long values are cut."""
    lines = []
    for key, value in list(args.items())[:24]:
        key = str(key)
        if key in SKIPPED_ARGS or (key.startswith("memset") and not value):
            continue
        name = ARG_NAMES.get(key) or _short(key.removesuffix("_ms").removesuffix("_s").replace("_", " "), 40)
        number = _number(value)
        if key == "models" and isinstance(value, list):
            lines += _models(value)
        elif key == "copies" and isinstance(value, dict):
            for direction, c in list(value.items())[:4]:
                c = c if isinstance(c, dict) else {}
                ms = _number(c.get("ms")) or 0.0
                lines.append(f"copies {_short(direction, 12).upper()}: {c.get('count', '?')} × "
                             f"{format_bytes(_number(c.get('bytes')))} in {format_duration(ms / 1e3)}")
        elif key == "top_kernels" and isinstance(value, list):
            for k in value[:3]:
                if isinstance(k, dict):
                    lines.append(f"kernel {_short(k.get('name', '?'), 70)}: {k.get('count', '?')} calls, "
                                 f"{format_duration((_number(k.get('ms')) or 0) / 1e3)} in all")
        elif key in ("memory_before", "memory_after") and isinstance(value, dict):
            available, total, swap = (format_bytes(_number(value.get(k))) for k in ("available", "total", "swap_used"))
            lines.append(f"{name}: {available} available of {total}, swap {swap}")
        elif isinstance(value, bool):
            lines.append(f"{name}: {'yes' if value else 'no'}")
        elif number is not None and "bytes" in key:
            lines.append(f"{name}: {format_bytes(number)}")
        elif number is not None and key.endswith("_ms"):
            lines.append(f"{name}: {format_duration(number / 1e3)}")
        elif number is not None and key.endswith("_s"):
            lines.append(f"{name}: {format_duration(number)}")
        elif number is not None and key.endswith("fraction"):
            lines.append(f"{name}: {number * 100:.1f} %")
        elif isinstance(value, (dict, list)):
            lines.append(f"{name}: {_compact(value)}")
        elif isinstance(value, float):
            lines.append(f"{name}: {value:.4g}")
        elif isinstance(value, int):
            lines.append(f"{name}: {value:,}")
        elif value is not None:
            lines.append(f"{name}: {_short(value, 120)}")
    return lines


def _node_name(ev: dict | None) -> str:
    if ev is None:
        return ""
    return f"{_short(ev.get('name', '?'), 60)} #{_short(_args(ev).get('node_id', '?'), 20)}"


def _step_words(ev: dict) -> tuple[str, ...]:
    a = _args(ev)
    i, n = a.get("step"), a.get("of")
    if isinstance(i, int) and isinstance(n, int):
        return f"step {i}/{n}", f"{i}"
    return (_short(ev.get("name", "step"), 40),)


class _Tips:
    """The label candidates and tooltip of each drawn span (charts.Lane.describe)."""

    def __init__(self, spans: TraceSpans, wall_s: float, busy_by_node: dict[str, float]):
        self.spans, self.wall_s, self.busy_by_node = spans, wall_s, busy_by_node

    def tip(self, heading: str, ev: dict, lane: str, extra: Sequence[str] = ()) -> str:
        a = _args(ev)
        dur = (_number(ev.get("dur")) or 0.0) / 1e6
        start = ((_number(ev.get("ts")) or 0.0) - self.spans.origin_us) / 1e6
        share = f" ({100 * dur / self.wall_s:.1f} % of the wall time)" if self.wall_s > 0 else ""
        lines = [heading, f"{lane} · {format_duration(dur)}{share}",
                 f"starts at +{format_duration(start)}, ends at +{format_duration(start + dur)}"]
        if lane == "node":
            lines.append(f"node id {_short(a.get('node_id', '?'), 20)} · outcome {_short(a.get('outcome', 'ok'), 20)}")
        else:
            node = self.spans.node_at(start + dur / 2) if lane != "prompt" else None
            where = f"in node {_node_name(node)} · " if node is not None else ""
            lines.append(f"{where}outcome {_short(a.get('outcome', 'ok'), 20)}")
        lines += extra
        lines += arg_lines(a)
        text = "\n".join(lines)
        return text if len(text) <= TIP_CHARS else text[:TIP_CHARS - 1] + "…"

    def describe(self, lane: str):
        def node(ev: dict):
            a = _args(ev)
            cls, nid = _short(ev.get("name", "?"), 60), _short(a.get("node_id", "?"), 20)
            busy = self.busy_by_node.get(str(a.get("node_id")))
            extra = []
            if busy is not None:
                dur_ms = (_number(ev.get("dur")) or 0.0) / 1e3
                extra.append(f"GPU busy {format_duration(busy / 1e3)} in this node"
                             + (f" ({100 * busy / dur_ms:.0f} % of its time)" if dur_ms > 0 else ""))
            return (f"{cls} #{nid}", cls, f"#{nid}"), self.tip(f"{cls} #{nid}", ev, "node", extra), 1.0

        def step(ev: dict):
            words = _step_words(ev)
            return words, self.tip(words[0], ev, "sample.step"), 1.0

        def gpu(ev: dict):
            a = _args(ev)
            frac = _number(a.get("busy_fraction"))
            busy, window = _number(a.get("busy_ms")), _number(a.get("window_ms"))
            if frac is None and busy is not None and window:
                frac = busy / window
            labels = (f"GPU busy {frac * 100:.0f} %", f"{frac * 100:.0f} %") if frac is not None else ()
            extra = [f"GPU window of stage {_short(a.get('stage'), 30)}"] if a.get("stage") else []
            opacity = 0.3 + 0.7 * min(1.0, max(0.0, frac)) if frac is not None else 1.0
            return labels, self.tip(_short(ev.get("name", "GPU"), 80), ev, "gpu", extra), opacity

        def prompt(ev: dict):
            pid = _short(_args(ev).get("prompt_id", ""), 40)
            return (f"prompt {pid}", "prompt"), self.tip(f"prompt {pid}", ev, "prompt"), 1.0

        def stage(ev: dict):
            name = _short(ev.get("name", ""), 60)
            cat = _short(ev.get("cat", lane), 40)
            labels = (f"{cat} · {name}", cat) if name and name != cat else (cat,)
            return labels, self.tip(f"{cat} · {name}" if name else cat, ev, cat), 1.0

        return {"node": node, "sample.step": step, "gpu": gpu, "prompt": prompt}.get(lane, stage)


# --- GPU busy time by node -------------------------------------------------------------------------


@dataclass
class NodeGpu:
    busy_ms: dict[str, float]  # node id -> GPU busy ms of the windows that start inside its spans
    windows: dict[str, int]
    outside_ms: float  # the windows that start in no node
    outside_windows: int
    total_ms: float


def gpu_by_node(spans: TraceSpans) -> NodeGpu | None:
    """Each GPU window's busy time given to the node span running when the window starts (the node that
    launched the work); None when the trace has no GPU windows."""
    if not spans.windows:
        return None
    busy: dict[str, float] = {}
    count: dict[str, int] = {}
    outside, outside_n, total = 0.0, 0, 0.0
    for start, ev in zip(spans.windows.starts, spans.windows.events, strict=True):
        ms = _number(_args(ev).get("busy_ms")) or 0.0
        total += ms
        node = spans.node_at(start)
        if node is None:
            outside += ms
            outside_n += 1
            continue
        nid = str(_args(node).get("node_id", "?"))
        busy[nid] = busy.get(nid, 0.0) + ms
        count[nid] = count.get(nid, 0) + 1
    return NodeGpu(busy, count, outside, outside_n, total)


# --- HTML ------------------------------------------------------------------------------------------


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{_esc(colour)}"></span>'


def _meter(percent: float, colour: str) -> str:
    width = min(100.0, max(0.0, percent))
    return (f'<span class="meter"><span style="width:{width:.1f}%;background:{_esc(colour)}"></span></span>')


def _timeline(spans: TraceSpans, tips: _Tips) -> str:
    order = [name for name, _ in LANES] + [KERNEL_LANE]
    names = sorted(spans.lanes, key=lambda n: (order.index(n) if n in order else len(order), n))
    nouns = {"node": "nodes", "sample.step": "steps", "gpu": "GPU windows", KERNEL_LANE: "kernels",
             **{lane: "time bins" for lane in spans.binned}}
    lanes = [charts.Lane(name, COLOUR.get(name, KERNEL_COLOUR if name == KERNEL_LANE else OTHER_COLOUR),
                         spans.lanes[name].starts, spans.lanes[name].ends, spans.lanes[name].events,
                         tips.describe(name), nouns.get(name, "spans")) for name in names]
    caption = ("One lane per stage; a bar's tooltip has its figures. Node bars name the node class and id"
               + (", GPU bars are darker the busier the GPU was." if "gpu" in spans.lanes else "."))
    if spans.binned:
        caption += (" This trace is too big to draw span by span: " + "; ".join(
            f"{lane}: {count:,} spans drawn as {len(spans.lanes[lane]):,} time bins" for lane, count in
            spans.binned.items() if lane in spans.lanes) + " (a bar spans its bin's spans; its tooltip counts them).")
    return charts.timeline(lanes, end=spans.end_s, chart_id="timeline", title="", caption=caption,
                           mark_class="stage", data_attr="stage")


def _stage_table(report: Report) -> str:
    rows = []
    for r in stage_rows(report):
        colour = COLOUR.get(r.stage, OTHER_COLOUR) if r.stage != "(no span)" else "#e5e7eb"
        whole = format_duration(r.whole_s) if r.whole_s is not None else ""
        rows.append(f'<tr data-stage="{_esc(r.stage)}" data-own-s="{r.own_s:.9g}" data-share="{r.share:.1f}">'
                    f"<td>{_swatch(colour)}{_esc(stage_label(r.stage))}</td><td class=r>{format_duration(r.own_s)}</td>"
                    f"<td class=r>{r.share:.1f} %</td><td>{_meter(r.share, colour)}</td><td class=r>{whole}</td></tr>")
    if not rows:
        return '<p class="muted">No stage spans in this trace.</p>'
    wall = report.summary.wall_s
    return ('<table id="stages"><thead><tr><th>stage</th><th class=r>own time</th><th class=r>share</th><th></th>'
            '<th class=r>whole time</th></tr></thead><tbody>' + "".join(rows)
            + f'<tr class="total"><td>wall time</td><td class=r>{format_duration(wall)}</td><td class=r>100.0 %</td>'
              '<td></td><td></td></tr></tbody></table>'
              '<p class="muted">Own time: the time in a stage and in no stage inside it, so the shares add to 100 %. '
              "Whole time: from each of the stage's spans' start to its end, the stages inside included.</p>")


def _step_chart(spans: TraceSpans) -> str:
    """Each sample.step's time in the order they ran: a bar per step (a colour per sampler call when a
    prompt samples more than once), or past charts.MAX_BARS steps a line that keeps the peaks."""
    if not spans.steps:
        return ""
    times = spans.steps.durations()
    median = statistics.median(times)
    slowest = max(range(len(times)), key=times.__getitem__)
    caption = f"{len(times):,} steps in the order they ran, median {format_duration(median)}"
    if median > 0 and times[slowest] > 1.05 * median:
        caption += (f"; the slowest, {_step_words(spans.steps.events[slowest])[0]}, took "
                    f"{format_duration(times[slowest])} ({times[slowest] / median:.1f}× the median).")
    else:
        caption += f"; every step within 5 % of it (the slowest {format_duration(times[slowest])})."
    if len(times) > charts.MAX_BARS:
        series = charts.Series("step time", [(float(i), t) for i, t in enumerate(times, 1)], COLOUR["sample.step"])
        return charts.line_chart([series], x_label="step", y_label="step time", x_kind="number", chart_id="steps",
                                 caption=caption)
    bars, run, last = [], 0, None
    for ev, secs in zip(spans.steps.events, times, strict=True):
        a = _args(ev)
        i = a.get("step") if type(a.get("step")) is int else None
        if run == 0 or (i is not None and last is not None and i <= last):
            run += 1  # the step count starts again: another sampler call
        last = i
        sigma = _number(a.get("sigma"))
        note = _step_words(ev)[0] + (f", sigma {sigma:.4g}" if sigma is not None else "")
        bars.append((run, i if i is not None else len(bars) + 1, secs, note))
    name = "step time" if run == 1 else "sampler {}"
    colours = {name.format(k): COLOUR["sample.step"] if k == 1 else charts.PALETTE[k % len(charts.PALETTE)]
               for k in range(1, run + 1)}
    chart_bars = [charts.Bar(str(i), [(name.format(r), secs)], note) for r, i, secs, note in bars]
    return charts.bar_chart(chart_bars, colours=colours, y_label="step time", x_label="step", chart_id="steps",
                            caption=caption)


def _node_table(s: Summary, gpu: NodeGpu | None) -> str:
    if not s.nodes and not s.cached and gpu is None:
        return '<p class="muted">No node spans in this trace.</p>'
    head = "<th>node</th><th>outcome</th><th class=r>time</th><th class=r>share of wall</th>"
    if gpu is not None:
        head += "<th class=r>GPU busy</th><th class=r>busy / node time</th><th></th>"
    rows = []

    def row(label: str, outcome: str, secs: float | None, busy: float | None, cls: str = "", data: str = "") -> str:
        share = f"{100 * secs / s.wall_s:.1f} %" if secs is not None and s.wall_s > 0 else ""
        took = format_duration(secs) if secs is not None else ""
        cells = f"<td>{_esc(label)}</td><td>{_esc(outcome)}</td><td class=r>{took}</td><td class=r>{share}</td>"
        if gpu is not None:
            frac = 100 * busy / (secs * 1e3) if busy is not None and secs else None
            cells += (f"<td class=r>{format_duration(busy / 1e3) if busy is not None else ''}</td>"
                      f"<td class=r>{f'{frac:.0f} %' if frac is not None else ''}</td>"
                      f"<td>{_meter(frac, COLOUR['gpu']) if frac is not None else ''}</td>")
            data += f' data-busy-ms="{busy or 0.0:.3f}"'
        return f'<tr class="{cls}"{data}>{cells}</tr>' if cls else f"<tr{data}>{cells}</tr>"

    shown, rest = s.nodes[:TOP_NODE_ROWS], s.nodes[TOP_NODE_ROWS:]
    busy = gpu.busy_ms if gpu is not None else {}
    for n in shown:
        rows.append(row(f"{_short(n.class_type, 60)} #{_short(n.node_id, 20)}", n.outcome, n.seconds,
                        busy.get(n.node_id, 0.0) if gpu is not None else None, "",
                        f' data-node-id="{_esc(n.node_id)}"'))
    if rest:
        rows.append(row(f"{len(rest):,} other nodes", "", sum(n.seconds for n in rest),
                        sum(busy.get(n.node_id, 0.0) for n in rest) if gpu is not None else None, "inside"))
    if gpu is not None:
        listed = {n.node_id for n in s.nodes}
        unlisted = sum(ms for nid, ms in gpu.busy_ms.items() if nid not in listed)  # a node the summary did not list
        if gpu.outside_ms or gpu.outside_windows or unlisted:
            rows.append(row("(outside every node)", "", None, gpu.outside_ms + unlisted, "inside"))
        rows.append(row("all nodes", "", sum(n.seconds for n in s.nodes), gpu.total_ms, "total"))
    table = f'<table id="nodes"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    notes = []
    if gpu is not None:
        notes.append("GPU busy: the busy time of the GPU windows that started while the node ran (the work it "
                     "launched), over the node's own time.")
    if s.cached:
        names = ", ".join(f"{_short(n.class_type, 40)} #{_short(n.node_id, 20)}" for n in s.cached[:30])
        more = f" and {len(s.cached) - 30} more" if len(s.cached) > 30 else ""
        notes.append(f"Cached (not run): {names}{more}.")
    return table + "".join(f'<p class="muted">{_esc(n)}</p>' for n in notes)


def _comparison_html(c: Comparison, wall_s: float) -> str:
    rows = []
    for what, now, before in c.rows:
        diff, ratio = difference(now, before)
        cls = ""  # a change of 5 % of the stage and 1 % of the wall time or more is marked
        if now is not None and before is not None and abs(now - before) >= max(0.05 * before, 0.01 * wall_s, 1e-9):
            cls = ' class="slower"' if now > before else ' class="faster"'
        colour = COLOUR.get(what, "#374151" if what == "wall time" else OTHER_COLOUR)
        rows.append(f'<tr{cls} data-what="{_esc(what)}"><td>{_swatch(colour)}{_esc(what)}</td>'
                    f"<td class=r>{format_duration(now)}</td><td class=r>{format_duration(before)}</td>"
                    f"<td class=r>{_esc(diff)}</td><td class=r>{_esc(ratio)}</td></tr>")
    ended = f", ended {_esc(c.ended)}" if c.ended else ""
    ended += f" (outcome <b>{_esc(c.outcome)}</b>)" if c.outcome not in ("", "ok") else ""
    return (f'<section id="previous"><h2>Compared with the previous run</h2>'
            f"<p>The previous run of this workflow: prompt <b>{_esc(c.prompt_id)}</b>{ended}. Whole times "
            f"(each stage from its start to its end).</p><table><thead><tr><th></th><th class=r>this run</th>"
            f"<th class=r>previous</th><th class=r>difference</th><th class=r>ratio</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></section>")


def _names_table(trace: dict) -> str:
    """The spans read as figures only (tracefile.read), by category and name: the TOP_NAMES names of most
    summed time, then one row for the others; at most NAMED_LANES categories."""
    from ..record.tracefile import digest_of

    digest = digest_of(trace)
    if digest is None:
        return ""
    cats = sorted(((cat, col) for cat, col in digest.columns.items() if col.omitted and col.names),
                  key=lambda item: -sum(us for _, us in item[1].names.values()))
    if not cats:
        return ""
    rows = []
    for cat, col in cats[:NAMED_LANES]:
        names = sorted(col.names.items(), key=lambda item: item[1][1], reverse=True)
        total = sum(us for _, us in col.names.values()) + col.other_names[1]
        label = _esc(cat or "uncategorised")
        def row(name: str, count: int, us: float, css: str = "", label: str = label, total: float = total) -> str:
            share = 100 * us / total if total else 0.0
            return (f"<tr{css}><td>{label}</td><td>{_esc(_short(name, 120))}</td><td class=r>{count:,}</td>"
                    f"<td class=r>{format_duration(us / 1e6)}</td><td class=r>{share:.1f} %</td></tr>")

        rows += [row(name or "(no name)", count, us) for name, (count, us) in names[:TOP_NAMES]]
        rest = names[TOP_NAMES:]
        count = sum(c for _, (c, _) in rest) + col.other_names[0]
        if count:
            us = sum(u for _, (_, u) in rest) + col.other_names[1]
            n = len(rest) + (1 if col.other_names[0] else 0)
            rows.append(row(f"{n:,} other names" if rest else "other names", count, us, ' class="others"'))
    more = (f" {len(cats) - NAMED_LANES:,} more categories are left out." if len(cats) > NAMED_LANES else "")
    return ('<h2>Spans by name</h2><table id="names"><thead><tr><th>category</th><th>name</th>'
            '<th class=r>spans</th><th class=r>summed time</th><th class=r>share</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>"
            f'<p class="muted">This trace holds {digest.events:,} events, too many to keep one by one: these '
            f"categories were read as figures only. The {TOP_NAMES} names of most summed time in each; the rest "
            "in one row."
            f"{more}</p>")


def _tiles(s: Summary, spans: TraceSpans, gpu: NodeGpu | None) -> str:
    wait = f"queue wait {format_duration(s.queue_wait_s)}" if s.queue_wait_s is not None else ""
    tiles = [("outcome", s.outcome, ""), ("wall time", format_duration(s.wall_s), wait),
             ("nodes run", f"{len(s.nodes):,}", f"{len(s.cached):,} cached" if s.cached else "none cached")]
    if spans.steps:
        times = spans.steps.durations()
        tiles.append(("sampler steps", f"{len(times):,}", f"median {format_duration(statistics.median(times))}"))
    if gpu is not None and s.wall_s > 0:
        tiles.append(("GPU busy", f"{100 * gpu.total_ms / 1e3 / s.wall_s:.0f} %",
                      f"{format_duration(gpu.total_ms / 1e3)} of the wall time"))
    bad = {"outcome"} if s.outcome != "ok" else set()
    return '<div class="tiles">' + "".join(
        f'<div class="tile{" bad" if label in bad else ""}"><div class="label">{_esc(label)}</div>'
        f'<div class="value">{_esc(value)}</div><div class="sub">{_esc(sub)}</div></div>'
        for label, value, sub in tiles) + "</div>"


CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2937; background: #fff; }
main { max-width: 1150px; margin: 0 auto; padding: 24px 24px 48px; }
h1 { font-size: 21px; font-weight: 650; margin: 0 0 12px; overflow-wrap: anywhere; }
h2 { font-size: 16px; font-weight: 650; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e5e7eb; }
h3 { font-size: 15px; margin: 0 0 6px; }
p { margin: 4px 0; }
.muted { color: #6b7280; font-size: 12.5px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 4px; }
.tile { flex: 1 1 150px; border: 1px solid #e5e7eb; border-radius: 8px; padding: 8px 14px; }
.tile .label { color: #6b7280; font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; }
.tile .value { font-size: 21px; font-weight: 650; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.tile .sub { color: #6b7280; font-size: 12px; }
.tile.bad { border-color: #e6b0aa; } .tile.bad .value { color: #b03a2e; }
table { border-collapse: collapse; margin: 6px 0 8px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 14px 3px 0; text-align: left; border-bottom: 1px solid #f0f1f4; white-space: nowrap; }
th { font-weight: 600; color: #4b5563; border-bottom: 1px solid #d1d5db; }
td.r, th.r { text-align: right; }
tr.total td { font-weight: 600; border-top: 1px solid #d1d5db; }
tr.inside td { color: #6b7280; }
tr.slower td:nth-child(4), tr.slower td:nth-child(5) { color: #b03a2e; font-weight: 600; }
tr.faster td:nth-child(4), tr.faster td:nth-child(5) { color: #1e8449; font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 7px; }
.meter { display: inline-block; width: 120px; height: 9px; background: #eef0f3; border-radius: 2px;
  vertical-align: middle; }
.meter span { display: block; height: 9px; border-radius: 2px; }
figure.chart { margin: 8px 0; overflow-x: auto; }
figure.chart svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #6b7280; font-size: 12.5px; margin-top: 4px; }
.no-chart { color: #6b7280; font-style: italic; }
.finding { border-left: 4px solid #e67e22; padding: 6px 12px; margin: 10px 0; background: #fbf7f2; }
.finding.error { border-color: #c0392b; background: #fbf2f1; }
.finding.info { border-color: #2471a3; background: #f2f6fb; }
.finding p { overflow-wrap: anywhere; }
.cost { font-weight: normal; color: #a04000; }
.facts { color: #4b5563; overflow-wrap: anywhere; }
footer { margin-top: 36px; color: #9ca3af; font-size: 12px; }
"""


def render_html(report: Report, trace: dict | None = None, *, previous: dict | None = None) -> str:
    """One self-contained page (no script, nothing fetched, an inline style): the figures of the prompt, its
    timeline, the time by stage, the sampler's steps, the nodes (with the GPU's busy time when the trace
    has GPU windows), the comparison with ``previous`` when given, and the findings."""
    s = report.summary
    spans = read_spans(trace or {})
    gpu = gpu_by_node(spans)
    tips = _Tips(spans, s.wall_s, gpu.busy_ms if gpu is not None else {})
    findings = "".join(
        f'<section class="finding {_esc(f.severity)}"><h3>{i}. {_esc(f.title)}'
        + (f' <span class="cost">about {lost(f)} lost</span>' if lost(f) else "") + "</h3>"
        f"<p><b>Measured:</b> {_esc(f.evidence)}</p><p><b>Cause:</b> {_esc(f.cause)}</p>"
        f"<p><b>Fix:</b> {_esc(f.fix)}</p></section>"
        for i, f in enumerate(report.findings, 1)) or "<p>None.</p>"
    unchecked = "".join(f"<li>{_esc(n.title)}: {_esc(n.why)}</li>" for n in report.not_checked)
    facts = [s.gpu] if s.gpu else []
    facts += [f"warning: {w}" for w in s.warnings[:20]] + list(s.failures[:20])
    if s.dropped:
        facts.append(f"{s.dropped:,} events dropped (buffers full): the pictures miss them")
    c = compare(s, previous)
    steps = _step_chart(spans)
    title = f"StageTrace report · prompt {s.prompt_id}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>
<h1>StageTrace report · prompt {_esc(s.prompt_id)} · {_esc(s.outcome)} · wall {format_duration(s.wall_s)}</h1>
{_tiles(s, spans, gpu)}
{"".join(f'<p class="facts">{_esc(line)}</p>' for line in facts)}
{_comparison_html(c, s.wall_s) if c is not None else ""}
<h2>Timeline</h2>
{_timeline(spans, tips)}
<h2>Time by stage</h2>
{_stage_table(report)}
{f'<h2>Sampler steps</h2>{steps}' if steps else ""}
<h2>Nodes{" and GPU busy time" if gpu is not None else ""}</h2>
{_node_table(s, gpu)}
{_names_table(trace or {})}
<h2>Findings</h2>{findings}
<h2>Not checked</h2><ul>{unchecked or "<li>nothing</li>"}</ul>
<footer>StageTrace · one self-contained page: no scripts, nothing fetched.</footer>
</main></body></html>
"""
