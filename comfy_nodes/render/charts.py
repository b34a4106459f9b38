"""Small inline-SVG charts for the bench and load reports: a line (or step) chart over time with shaded
spans, stacked bars with a legend, a histogram and a scatter over time.

No dependencies and no script: each builder returns one ``<figure>`` (the ``<svg>`` and a caption) to
put inside an HTML page. Every string is escaped with ``html.escape``; every number is rounded the same
way, so the same input gives the same bytes. Axis ticks fall on round values in a unit that fits the
range (ms, s, min through ``format_duration``; bytes through ``format_bytes``), and each mark carries a
``<title>`` tooltip with the figure it stands for. What is drawn is bounded: beyond ``MAX_POINTS`` a
series keeps the lowest and highest point of each interval, beyond ``MAX_BARS`` consecutive bars are
merged into their mean, and the caption says so.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..core.units import format_bytes, format_duration

MAX_POINTS = 2000  # marks per line chart or scatter, all series together
MAX_BARS = 240  # bars per bar chart; more are merged, consecutive ones together
MAX_SPANS = 400  # shaded spans per line chart
MAX_BINS = 40  # histogram bins

WIDTH = 920
PLOT_HEIGHT = 220
LEFT, RIGHT, BOTTOM = 78, 18, 46
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
AXIS, GRID, MUTED = "#6b7280", "#e7e9ee", "#9aa1ab"
FAILED = "#c0392b"

# Colours for series without a fixed one (workers, devices, nodes), in order of appearance.
PALETTE = ("#2471a3", "#e67e22", "#16a085", "#8e44ad", "#c0392b", "#d4ac0d", "#5b7083", "#27ae60",
           "#a569bd", "#5dade2")

KINDS = ("duration", "bytes", "percent", "number")

# Tick steps of a duration axis, in seconds: round in the unit format_duration prints.
_DURATION_STEPS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 20,
                   30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass(frozen=True)
class Series:
    """One line of a line chart: (x, y) points in x order; y None is a gap."""

    name: str
    points: Sequence[tuple[float, float | None]]
    colour: str
    dashed: bool = False


@dataclass(frozen=True)
class Span:
    """A shaded stretch of the x axis (a run), with its tooltip."""

    start: float
    end: float
    label: str
    colour: str = "#e8eef6"


@dataclass(frozen=True)
class Bar:
    """One stacked bar: segments bottom-up as (name, value); note goes in every tooltip of the bar."""

    label: str
    segments: Sequence[tuple[str, float]]
    note: str = ""
    failed: bool = False


@dataclass(frozen=True)
class Point:
    """One mark of a scatter; y None (no figure, e.g. a request refused) is drawn on the x axis."""

    x: float
    y: float | None
    ok: bool
    label: str


# --- Axis values -----------------------------------------------------------------------------------


def _trim(text: str) -> str:
    """'250.0 ms' -> '250 ms', '3.200 s' -> '3.2 s', '20.0 GB' -> '20 GB', '12 min 0 s' -> '12 min'."""
    text = re.sub(r"\.(\d*?)0+(?=\D|$)", lambda m: "." + m.group(1) if m.group(1) else "", text)
    return re.sub(r" min 0 s$", " min", text)


def tick_label(value: float, kind: str, step: float = 1.0) -> str:
    """The label of an axis tick: a duration or byte size in the unit that fits it, a percentage, or a
    number with as many decimals as the tick step needs. This function can't fail."""
    if value == 0:
        return "0"
    if kind == "duration":
        return _trim(format_duration(value))
    if kind == "bytes":
        return _trim(format_bytes(value))
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    text = f"{value:,.{decimals}f}"
    return text + " %" if kind == "percent" else text


def value_label(value: float | None, kind: str) -> str:
    """A measured figure as a tooltip shows it (the full format_duration / format_bytes text)."""
    if value is None:
        return "-"
    if kind == "duration":
        return format_duration(value)
    if kind == "bytes":
        return format_bytes(value)
    if kind == "percent":
        return f"{value:.1f} %"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value):,}"


def nice_step(span: float, kind: str, most: int = 6, labels: bool = True) -> float:
    """The smallest round step that cuts ``span`` into at most ``most`` intervals. The ticks of a duration
    axis longer than 20 minutes (``labels``) step in whole 10 minutes, so their labels all read in min."""
    span = max(span, 1e-9)
    if kind == "duration":
        steps = [s for s in _DURATION_STEPS if not labels or span < 1200 or s % 600 == 0]
        for step in steps:
            if span / step <= most:
                return float(step)
        step = 86400.0
        while span / step > most:
            step *= 2
        return step
    if kind == "percent" and span <= 100:
        return 25.0 if span > 50 else 10.0 if span > 20 else 5.0 if span > 10 else 1.0 if span > 2 else 0.5
    magnitude = 10 ** math.floor(math.log10(span / most))
    for mult in (1, 2, 2.5, 5, 10):
        if span / (mult * magnitude) <= most:
            return mult * magnitude
    return 10 * magnitude


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _round_up(value: float, step: float) -> float:
    return math.ceil(value / step - 1e-9) * step


# --- Bounding what is drawn ------------------------------------------------------------------------


def decimate(points: Sequence, budget: int, key=lambda p: p[1]) -> list:
    """At most ``budget`` of ``points`` (in order): each of budget/2 consecutive intervals keeps its lowest
    and highest point by ``key`` (None counts as lowest), so peaks survive. Deterministic."""
    if len(points) <= budget:
        return list(points)
    buckets = max(1, budget // 2)
    kept = []
    for b in range(buckets):
        chunk = points[b * len(points) // buckets:(b + 1) * len(points) // buckets]
        if not chunk:
            continue
        order = [i for i in range(len(chunk)) if key(chunk[i]) is not None]
        if not order:
            kept.append(chunk[0])
            continue
        low = min(order, key=lambda i: key(chunk[i]))
        high = max(order, key=lambda i: key(chunk[i]))
        kept += [chunk[i] for i in sorted({low, high})]
    return kept


# --- Frame: axes, grid, legend ---------------------------------------------------------------------


def _f(value: float) -> str:
    """A coordinate with one decimal, the same text for the same value."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _short(name: str, most: int = 46) -> str:
    return name if len(name) <= most else name[:most - 1] + "…"


class _Frame:
    """The geometry of one chart (data ranges to pixels) and its axes, grid and legend."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], legend: Sequence[tuple],
                 width: int = WIDTH, plot_height: int = PLOT_HEIGHT):
        self.width = width
        self.legend_svg, legend_height = _legend(legend, width)
        self.top = legend_height + 14
        self.left, self.plot_width = LEFT, width - LEFT - RIGHT
        self.plot_height = plot_height
        self.height = self.top + plot_height + BOTTOM
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1.0

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.plot_width

    def py(self, y: float) -> float:
        return self.top + self.plot_height - (y - self.y0) / (self.y1 - self.y0) * self.plot_height

    def scale_y(self, dy: float) -> float:
        """Pixels for a height of dy in y units."""
        return dy / (self.y1 - self.y0) * self.plot_height

    def open(self, chart_id: str, title: str) -> str:
        return (f'<svg class="chart" id="{_esc(chart_id)}" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{_esc(title)}" '
                f'font-family="{_esc(FONT)}" font-size="11" fill="#374151">{self.legend_svg}')

    def y_axis(self, kind: str, step: float, label: str) -> str:
        parts = []
        for v in _ticks(self.y0, self.y1, step):
            y = _f(self.py(v))
            parts.append(f'<line x1="{self.left}" x2="{self.left + self.plot_width}" y1="{y}" y2="{y}" '
                         f'stroke="{GRID}"/><text class="tick-y" x="{self.left - 6}" y="{y}" dy="0.32em" '
                         f'text-anchor="end" fill="{AXIS}">{_esc(tick_label(v, kind, step))}</text>')
        mid = _f(self.top + self.plot_height / 2)
        parts.append(f'<text class="axis-label" transform="translate(14 {mid}) rotate(-90)" text-anchor="middle" '
                     f'fill="{AXIS}">{_esc(label)}</text>')
        return "".join(parts)

    def x_axis(self, kind: str, step: float, label: str) -> str:
        base = _f(self.top + self.plot_height)
        parts = [f'<line x1="{self.left}" x2="{self.left + self.plot_width}" y1="{base}" y2="{base}" '
                 f'stroke="{AXIS}"/>']
        for v in _ticks(self.x0, self.x1, step):
            x = _f(self.px(v))
            parts.append(f'<line x1="{x}" x2="{x}" y1="{base}" y2="{_f(self.top + self.plot_height + 4)}" '
                         f'stroke="{AXIS}"/><text class="tick-x" x="{x}" y="{_f(self.top + self.plot_height + 16)}" '
                         f'text-anchor="middle" fill="{AXIS}">{_esc(tick_label(v, kind, step))}</text>')
        parts.append(self.x_title(label))
        return "".join(parts)

    def x_title(self, label: str) -> str:
        return (f'<text class="axis-label" x="{_f(self.left + self.plot_width / 2)}" '
                f'y="{_f(self.height - 8)}" text-anchor="middle" fill="{AXIS}">{_esc(label)}</text>')


def _legend(items: Sequence[tuple], width: int) -> tuple[str, int]:
    """Legend entries (name, colour, shape) laid out left to right, wrapping; (svg, height)."""
    parts, x, y = [], LEFT, 12
    for name, colour, shape in items:
        text = _short(str(name))
        w = 22 + 6.4 * len(text) + 18
        if x + w > width - RIGHT and x > LEFT:
            x, y = LEFT, y + 18
        if shape == "line":
            mark = f'<line x1="{_f(x)}" x2="{_f(x + 16)}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2"/>'
        elif shape == "dash":
            mark = (f'<line x1="{_f(x)}" x2="{_f(x + 16)}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="2" '
                    f'stroke-dasharray="4 3"/>')
        elif shape == "cross":
            mark = _cross(x + 8, y, colour)
        elif shape == "dot":
            mark = f'<circle cx="{_f(x + 8)}" cy="{y}" r="3.5" fill="{colour}"/>'
        else:  # a swatch
            mark = f'<rect x="{_f(x + 2)}" y="{y - 6}" width="12" height="12" rx="2" fill="{colour}"/>'
        parts.append(f'<g class="legend-item">{mark}<text x="{_f(x + 22)}" y="{y}" dy="0.32em">{_esc(text)}'
                     f"<title>{_esc(name)}</title></text></g>")
        x += w
    return "".join(parts), (y + 8 if items else 0)


def _cross(x: float, y: float, colour: str, r: float = 3.5) -> str:
    return (f'<path d="M{_f(x - r)} {_f(y - r)}L{_f(x + r)} {_f(y + r)}M{_f(x - r)} {_f(y + r)}'
            f'L{_f(x + r)} {_f(y - r)}" stroke="{colour}" stroke-width="1.8"/>')


def _figure(svg: str, title: str, caption: str) -> str:
    head = f'<div class="chart-title">{_esc(title)}</div>' if title else ""
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart">{head}{svg}{cap}</figure>'


def empty(text: str) -> str:
    """The place of a chart that has nothing to draw: one line saying why."""
    return f'<p class="no-chart">{_esc(text)}</p>'


# --- Line / step chart over time -------------------------------------------------------------------


def _merge_spans(spans: list[Span], most: int) -> list[Span]:
    """At most ``most`` spans: consecutive ones merged (from the first's start to the last's end)."""
    if len(spans) <= most:
        return spans
    size = math.ceil(len(spans) / most)
    merged = []
    for i in range(0, len(spans), size):
        group = spans[i:i + size]
        merged.append(Span(group[0].start, max(sp.end for sp in group),
                           f"{group[0].label} … {group[-1].label} ({len(group)} spans)", group[0].colour))
    return merged



def line_chart(series: Sequence[Series], *, x_label: str, y_label: str, y_kind: str = "duration",
               x_kind: str = "duration", spans: Sequence[Span] = (), step: bool = False,
               y_max: float | None = None, x_max: float | None = None, chart_id: str = "line", title: str = "",
               caption: str = "", max_points: int = MAX_POINTS) -> str:
    """Lines (or steps: each value holds until the next) of several series over x, on optional shaded
    spans; each point has a tooltip. Beyond ``max_points`` points in all, each series is decimated
    (decimate()) and the caption says so. A chart with no points is one line saying so."""
    drawn_series = [s for s in series if any(y is not None for _, y in s.points)]
    total = sum(len(s.points) for s in drawn_series)
    if not drawn_series:
        return empty(f"{title or y_label}: nothing measured.")
    budget = max(2, max_points // len(drawn_series))
    reduced = [(s, decimate(s.points, budget)) for s in drawn_series]
    kept = sum(len(p) for _, p in reduced)
    ys = [y for _, pts in reduced for _, y in pts if y is not None]
    xs = [x for _, pts in reduced for x, _ in pts]
    spans_shown = _merge_spans(list(spans), MAX_SPANS)
    x_hi = max(xs + [sp.end for sp in spans_shown] + ([x_max] if x_max is not None else []))
    x_lo = min(xs + [sp.start for sp in spans_shown] + [0.0])
    y_step = nice_step((y_max if y_max is not None else max(ys + [0.0])) - min(ys + [0.0]), y_kind, 5)
    y_top = y_max if y_max is not None else _round_up(max(ys + [0.0]), y_step) or y_step
    y_bottom = 0.0 if min(ys) >= 0 else math.floor(min(ys) / y_step) * y_step
    legend = [(s.name, s.colour, "dash" if s.dashed else "line") for s in drawn_series]
    frame = _Frame((x_lo, x_hi), (y_bottom, y_top), legend)
    parts = [frame.open(chart_id, title or y_label)]
    for sp in spans_shown:
        x0, x1 = frame.px(max(sp.start, x_lo)), frame.px(min(sp.end, x_hi))
        parts.append(f'<rect class="span" x="{_f(x0)}" y="{frame.top}" width="{_f(max(x1 - x0, 1.0))}" '
                     f'height="{frame.plot_height}" fill="{sp.colour}"><title>{_esc(sp.label)}</title></rect>')
    parts.append(frame.y_axis(y_kind, y_step, y_label))
    parts.append(frame.x_axis(x_kind, nice_step(x_hi - x_lo, x_kind, 8), x_label))
    marks = []
    for s, pts in reduced:
        runs, current = [], []
        for x, y in pts:  # a None breaks the line
            if y is None:
                if current:
                    runs.append(current)
                current = []
            else:
                current.append((x, y))
        if current:
            runs.append(current)
        for run in runs:
            coords = []
            for i, (x, y) in enumerate(run):
                if step and i:
                    coords.append(f"{_f(frame.px(x))},{_f(frame.py(run[i - 1][1]))}")
                coords.append(f"{_f(frame.px(x))},{_f(frame.py(y))}")
            dash = ' stroke-dasharray="5 4"' if s.dashed else ""
            parts.append(f'<polyline class="series" data-series="{_esc(s.name)}" points="{" ".join(coords)}" '
                         f'fill="none" stroke="{s.colour}" stroke-width="1.8" stroke-linejoin="round"{dash}/>')
        hidden = "" if kept <= 60 else ' fill-opacity="0"'  # many points: the line shows them, dots only hold tips
        for x, y in pts:
            if y is None:
                continue
            tip = f"{s.name} · {value_label(x, x_kind)}: {value_label(y, y_kind)}"
            marks.append(f'<circle class="pt" cx="{_f(frame.px(x))}" cy="{_f(frame.py(y))}" r="3" fill="{s.colour}"'
                         f"{hidden}><title>{_esc(tip)}</title></circle>")
    parts += marks
    parts.append("</svg>")
    notes = [caption] if caption else []
    if kept < total:
        notes.append(f"{total:,} points drawn as {kept:,}: each series keeps the lowest and highest value of each "
                     f"interval.")
    if len(spans) > len(spans_shown):
        notes.append(f"{len(spans):,} shaded spans drawn as {len(spans_shown):,}: consecutive ones merged.")
    return _figure("".join(parts), title, " ".join(notes))


# --- Stacked bars ----------------------------------------------------------------------------------


def _merge_bars(bars: Sequence[Bar], most: int) -> tuple[list[Bar], int]:
    """Consecutive bars merged into groups whose segments are the group's mean; (bars, group size)."""
    size = math.ceil(len(bars) / most)
    merged = []
    for i in range(0, len(bars), size):
        group = bars[i:i + size]
        sums: dict[str, float] = {}
        for bar in group:
            for name, value in bar.segments:
                sums[name] = sums.get(name, 0.0) + value
        label = group[0].label if len(group) == 1 else f"{group[0].label}–{group[-1].label}"
        failed = sum(b.failed for b in group)
        merged.append(Bar(label, [(n, v / len(group)) for n, v in sums.items()],
                          f"mean of {len(group)}" + (f", {failed} failed" if failed else ""), failed == len(group)))
    return merged, size


def bar_chart(bars: Sequence[Bar], *, colours: Mapping[str, str], y_label: str, x_label: str,
              y_kind: str = "duration", chart_id: str = "bars", title: str = "", caption: str = "",
              max_bars: int = MAX_BARS) -> str:
    """One stacked bar per item, segments in the order given, heights proportional to their values
    (each segment's rect carries data-value); a legend of the segment names; a failed bar with nothing
    to stack gets a cross on the axis. Beyond ``max_bars`` consecutive bars are merged (their mean)."""
    if not bars:
        return empty(f"{title or y_label}: nothing measured.")
    shown, group = (list(bars), 1) if len(bars) <= max_bars else _merge_bars(bars, max_bars)
    totals = [sum(max(v, 0.0) for _, v in b.segments) for b in shown]
    names: list[str] = []
    for b in shown:
        names += [n for n, v in b.segments if v > 0 and n not in names]
    legend = [(n, colours.get(n, PALETTE[i % len(PALETTE)]), "swatch") for i, n in enumerate(names)]
    colour_of = {n: c for n, c, _ in legend}
    if any(b.failed for b in shown):
        legend.append(("failed", FAILED, "cross"))
    y_step = nice_step(max(totals + [0.0]), y_kind, 5)
    frame = _Frame((0.0, float(len(shown))), (0.0, _round_up(max(totals + [0.0]), y_step) or y_step), legend)
    parts = [frame.open(chart_id, title or y_label), frame.y_axis(y_kind, y_step, y_label)]
    slot = frame.plot_width / len(shown)
    bar_width = max(1.0, min(slot * 0.7, 56.0))
    label_px = 7.0 * max(len(_short(b.label, 14)) for b in shown) + 12
    every = max(1, math.ceil(len(shown) * label_px / frame.plot_width))  # every nth bar labelled: no collisions
    base = frame.top + frame.plot_height
    for i, (b, total) in enumerate(zip(shown, totals, strict=True)):
        x = frame.left + slot * (i + 0.5) - bar_width / 2
        y = base
        parts.append(f'<g class="bar" data-bar="{_esc(b.label)}">')
        for name, value in b.segments:
            if value <= 0:
                continue
            h = frame.scale_y(value)
            y -= h
            share = f" ({100 * value / total:.0f} %)" if total > 0 and len(b.segments) > 1 else ""
            tip = f"{b.label} · {name}: {value_label(value, y_kind)}{share}" + (f" · {b.note}" if b.note else "")
            parts.append(f'<rect class="seg" data-segment="{_esc(name)}" data-value="{value:.9g}" x="{_f(x)}" '
                         f'y="{y:.2f}" width="{_f(bar_width)}" height="{h:.3f}" fill="{colour_of[name]}">'
                         f"<title>{_esc(tip)}</title></rect>")
        if b.failed and total <= 0:
            parts.append(f'<g class="failed-mark">{_cross(x + bar_width / 2, base - 6, FAILED, 4)}'
                         f"<title>{_esc(b.label + (' · ' + b.note if b.note else ''))}</title></g>")
        elif total > 0 and len(shown) <= 30 and len(b.segments) > 1:
            parts.append(f'<text class="bar-total" x="{_f(x + bar_width / 2)}" y="{_f(y - 4)}" text-anchor="middle" '
                         f'font-size="10" fill="{AXIS}">{_esc(tick_label(total, y_kind, 0.01))}</text>')
        parts.append("</g>")
        if i % every == 0:
            parts.append(f'<text class="tick-x" x="{_f(x + bar_width / 2)}" y="{_f(base + 16)}" text-anchor="middle" '
                         f'fill="{AXIS if not b.failed else FAILED}">{_esc(_short(b.label, 14))}</text>')
    parts.append(f'<line x1="{frame.left}" x2="{frame.left + frame.plot_width}" y1="{_f(base)}" y2="{_f(base)}" '
                 f'stroke="{AXIS}"/>')
    parts.append(frame.x_title(x_label))
    parts.append("</svg>")
    notes = [caption] if caption else []
    if group > 1:
        notes.append(f"{len(bars):,} bars drawn as {len(shown):,}: each is the mean of {group} consecutive ones.")
    return _figure("".join(parts), title, " ".join(notes))


# --- Histogram -------------------------------------------------------------------------------------


def bins_of(values: Sequence[float], kind: str, lo: float | None = None, hi: float | None = None,
            most: int = MAX_BINS) -> tuple[float, float, list[int]]:
    """(first edge, bin width, counts): round-width bins over [lo, hi] (the values' range by default; from 0
    when every value is the same) holding every value once: the last bin holds its upper edge, and values
    outside a given range go to the first or last bin."""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    if hi <= lo:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        hi = hi if hi > lo else lo + 1e-3
    target = max(1, min(most, math.ceil(math.sqrt(len(values))) * 2))
    width = nice_step(hi - lo, kind, target, labels=False)
    start = math.floor(lo / width + 1e-9) * width
    count = max(1, math.ceil((hi - start) / width - 1e-9))
    counts = [0] * count
    for v in values:
        counts[min(count - 1, max(0, int((v - start) / width + 1e-9)))] += 1
    return start, width, counts


def histogram(values: Sequence[float], *, x_label: str, colour: str, x_kind: str = "duration",
              y_label: str = "requests", unit: str = "requests", lo: float | None = None, hi: float | None = None,
              chart_id: str = "histogram", title: str = "", caption: str = "") -> str:
    """Counts of values in round-width bins (bins_of); each bin's rect carries data-count and a tooltip
    'from – to: n unit'. The caption gives the number of values and the bin width."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return empty(f"{title or x_label}: nothing measured.")
    start, width, counts = bins_of(values, x_kind, lo, hi)
    top = max(counts)
    y_step = nice_step(top, "number", 5)
    y_step = max(1.0, y_step)
    frame = _Frame((start, start + width * len(counts)), (0.0, _round_up(top, y_step)), [])
    parts = [frame.open(chart_id, title or x_label), frame.y_axis("number", y_step, y_label)]
    pixel = frame.plot_width / len(counts)
    gap = 1.0 if pixel > 4 else 0.0
    for i, n in enumerate(counts):
        edge = start + i * width
        tip = f"{value_label(edge, x_kind)} – {value_label(edge + width, x_kind)}: {n:,} {unit}"
        h = frame.scale_y(n)
        parts.append(f'<rect class="bin" data-count="{n}" x="{_f(frame.px(edge) + gap / 2)}" '
                     f'y="{frame.top + frame.plot_height - h:.2f}" width="{_f(max(pixel - gap, 0.5))}" '
                     f'height="{h:.3f}" fill="{colour}"><title>{_esc(tip)}</title></rect>')
    parts.append(frame.x_axis(x_kind, nice_step(width * len(counts), x_kind, 8), x_label))
    parts.append("</svg>")
    notes = [caption] if caption else []
    notes.append(f"{len(values):,} {unit} in bins of {value_label(width, x_kind)}.")
    return _figure("".join(parts), title, " ".join(notes))


# --- Scatter over time -----------------------------------------------------------------------------


def scatter(points: Sequence[Point], *, x_label: str, y_label: str, x_kind: str = "duration",
            y_kind: str = "duration", colour: str = "#2471a3", ok_name: str = "ok", failed_name: str = "failed",
            x_max: float | None = None, chart_id: str = "scatter", title: str = "", caption: str = "",
            max_points: int = MAX_POINTS) -> str:
    """Dots for the points that succeeded, crosses for the failed ones (on the x axis when they have no
    figure), each with its tooltip. Beyond ``max_points`` both kinds are decimated in x order (failed
    ones keep up to half the budget) and the caption says so."""
    if not points:
        return empty(f"{title or y_label}: nothing measured.")
    ordered = sorted(points, key=lambda p: (p.x, p.y if p.y is not None else -1.0))
    ok = [p for p in ordered if p.ok]
    failed = [p for p in ordered if not p.ok]
    failed_budget = min(len(failed), max_points // 2) if len(points) > max_points else len(failed)
    ok_kept = decimate(ok, max_points - failed_budget, key=lambda p: p.y)
    failed_kept = decimate(failed, max(2, failed_budget), key=lambda p: p.y) if failed else []
    ys = [p.y for p in ok_kept + failed_kept if p.y is not None]
    xs = [p.x for p in ok_kept + failed_kept] + ([x_max] if x_max is not None else [])
    y_step = nice_step(max(ys + [0.0]), y_kind, 5)
    legend = [(ok_name, colour, "dot")] if ok else []
    legend += [(failed_name, FAILED, "cross")] if failed else []
    frame = _Frame((min(xs + [0.0]), max(xs)), (0.0, _round_up(max(ys + [0.0]), y_step) or y_step), legend)
    parts = [frame.open(chart_id, title or y_label), frame.y_axis(y_kind, y_step, y_label),
             frame.x_axis(x_kind, nice_step(frame.x1 - frame.x0, x_kind, 8), x_label)]
    for p in ok_kept:
        parts.append(f'<circle class="pt ok" cx="{_f(frame.px(p.x))}" cy="{_f(frame.py(p.y or 0.0))}" r="2.6" '
                     f'fill="{colour}" fill-opacity="0.75"><title>{_esc(p.label)}</title></circle>')
    for p in failed_kept:
        parts.append(f'<g class="pt failed">{_cross(frame.px(p.x), frame.py(p.y or 0.0), FAILED)}'
                     f"<title>{_esc(p.label)}</title></g>")
    parts.append("</svg>")
    notes = [caption] if caption else []
    kept = len(ok_kept) + len(failed_kept)
    if kept < len(points):
        notes.append(f"{len(points):,} points drawn as {kept:,}: the lowest and highest of each interval"
                     + (f", failed ones included ({len(failed_kept):,} of {len(failed):,})." if failed else "."))
    return _figure("".join(parts), title, " ".join(notes))
