"""Small inline-SVG charts for the bench, load and prompt reports: a line (or step) chart over time with
shaded spans, stacked bars with a legend, a histogram, a scatter over time and a timeline of lanes.

No dependencies and no script: each builder returns one ``<figure>`` (the ``<svg>`` and a caption) to
put inside an HTML page. Every string is escaped with ``html.escape``; every number is rounded the same
way, so the same input gives the same bytes. Axis ticks fall on round values in a unit that fits the
range (ms, s, min through ``format_duration``; bytes through ``format_bytes``), and each mark carries a
``<title>`` tooltip with the figure it stands for. What is drawn is bounded: beyond ``MAX_POINTS`` a
series keeps the lowest and highest point of each interval, beyond ``MAX_BARS`` consecutive bars are
merged into their mean, beyond a lane's share of ``MAX_MARKS`` a timeline merges short spans into runs,
and the caption says so.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..core.units import format_bytes, format_duration

MAX_POINTS = 2000  # marks per line chart or scatter, all series together
MAX_BARS = 240  # bars per bar chart; more are merged, consecutive ones together
MAX_SPANS = 400  # shaded spans per line chart
MAX_BINS = 40  # histogram bins
MAX_MARKS = 3000  # bars of a timeline, all lanes together; short spans beyond a lane's share are merged

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


# Tick steps of a time axis, in seconds, and the unit its labels read in (time_ticks).
_TIME_STEPS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2,
               0.25, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600,
               43200, 86400)


def time_unit(end: float, step: float) -> tuple[str, float]:
    """The unit every tick of a time axis from 0 to ``end`` seconds reads in, as (name, seconds): ms below
    a second, min (h) when the step is whole minutes (hours) past two minutes (two hours), s otherwise."""
    if end < 1:
        return "ms", 1e-3
    if end >= 7200 and step % 3600 == 0:
        return "h", 3600.0
    if end >= 120 and step % 60 == 0:
        return "min", 60.0
    return "s", 1.0


def time_ticks(end: float, most: int = 6) -> list[tuple[float, str]]:
    """Ticks of a time axis from 0 to ``end`` seconds as (seconds, label): at most ``most`` intervals of
    a round step, every label in the one unit time_unit() picks and with the decimals the step needs, so
    no two labels read the same ('0, 2 ms, 4 ms', '0, 1 s, 2 s', '0, 5 min, 10 min'). This function can't
    fail."""
    end = end if math.isfinite(end) and end > 0 else 1e-3
    step = next((float(s) for s in _TIME_STEPS if end / s <= most), 0.0)
    if not step:
        step = 86400.0
        while end / step > most:
            step *= 2
    unit, size = time_unit(end, step)
    decimals = next((d for d in range(7) if abs(round(step / size, d) - step / size) < 1e-9), 6)
    ticks = []
    for k in range(int(math.floor(end / step + 1e-9)) + 1):
        value = k * step
        if k == 0:
            ticks.append((0.0, "0"))
            continue
        text = f"{value / size:.{decimals}f}"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        ticks.append((value, f"{text} {unit}"))
    return ticks


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


def _legend(items: Sequence[tuple], width: int, left: float = LEFT) -> tuple[str, int]:
    """Legend entries (name, colour, shape) laid out left to right from ``left``, wrapping; (svg, height)."""
    parts, x, y = [], left, 12
    for name, colour, shape in items:
        text = _short(str(name))
        w = 22 + 6.4 * len(text) + 18
        if x + w > width - RIGHT and x > left:
            x, y = left, y + 18
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


# --- Timeline of lanes -----------------------------------------------------------------------------

TIMELINE_WIDTH = 1100
GUTTER = 158  # the lane names
LANE_HEIGHT, BAR_HEIGHT = 24, 17
GLYPH = 6.4  # px per character of an 11 px label, a little wide so labels never overflow their bar


@dataclass
class Lane:
    """One row of a timeline: its spans as three columns (``starts`` and ``ends`` in seconds from the
    origin, ``keys`` what ``describe`` takes), in any order. Columns, not a tuple per span, so that a lane of
    millions of spans allocates no object the garbage collector walks. ``describe(key)`` gives a drawn
    span's label candidates (longest first: the first that fits inside the bar is drawn, none when none
    fits), its tooltip and its opacity; it is called only for the spans drawn one by one. ``noun`` counts
    the spans of a merged run."""

    name: str
    colour: str
    starts: Sequence[float]
    ends: Sequence[float]
    keys: Sequence[object]
    describe: Callable[[object], tuple[Sequence[str], str, float]]
    noun: str = "spans"


def _text_colour(fill: str) -> str:
    """Dark text on a light fill, white on a dark one."""
    try:
        r, g, b = (int(fill[i:i + 2], 16) / 255 for i in (1, 3, 5))
    except ValueError:
        return "#1f2937"
    return "#1f2937" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.6 else "#ffffff"


def _fit(candidates: Sequence[str], width: float) -> str:
    """The first label that fits in a bar ``width`` px wide, or ''."""
    return next((c for c in candidates if c and GLYPH * len(c) + 8 <= width), "")


def _coalesce(lane: Lane, order: Sequence[int], px: float, budget: int, plot_width: float) -> list[tuple]:
    """At most ``budget`` marks for a lane's spans taken in ``order`` (by start): spans at least ``wide`` px
    wide stay as ('one', start, end, key); the narrower ones starting in the same ``bucket`` px of the axis
    become one ('run', start, end, count, covered seconds, first key, last key). The bucket starts at the
    width that gives the lane its budget of runs; both thresholds double until the marks fit."""
    starts, ends, keys = lane.starts, lane.ends, lane.keys
    wide, bucket = 4.0, max(1.0, plot_width / max(1, budget // 2))
    while True:
        marks: list = []
        run: list | None = None
        for i in order:
            start, end = starts[i], ends[i]
            if (end - start) * px >= wide:
                marks.append(("one", start, end, keys[i]))
                continue
            cell = int(start * px // bucket)
            if run is not None and run[7] == cell:
                run[4] += max(0.0, end - max(start, run[2]))
                run[2] = max(run[2], end)
                run[3] += 1
                run[6] = keys[i]
            else:
                run = ["run", start, end, 1, end - start, keys[i], keys[i], cell]
                marks.append(run)  # filled in place while the run grows
                if len(marks) > budget:
                    break
        if len(marks) <= budget:
            return [m if m[0] == "one" else ("one", m[1], m[2], m[5]) if m[3] == 1 else tuple(m[:7]) for m in marks]
        wide, bucket = wide * 2, bucket * 2


def _budgets(sizes: Sequence[int], most: int) -> list[int]:
    """Each lane's share of ``most`` marks (at least 20): lanes that need less than an even share leave the
    rest to the others."""
    budgets = [0] * len(sizes)
    left = most
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    for n, i in enumerate(order):
        budgets[i] = min(sizes[i], max(20, left // (len(order) - n)))
        left -= budgets[i]
    return budgets


def _by_start(starts: Sequence[float]) -> Sequence[int]:
    """The indices of ``starts`` in start order (a range when they are in order already)."""
    if all(a <= b for a, b in zip(starts, starts[1:], strict=False)):
        return range(len(starts))
    return sorted(range(len(starts)), key=starts.__getitem__)


def timeline(lanes: Sequence[Lane], *, end: float, chart_id: str = "timeline", title: str = "",
             caption: str = "", mark_class: str = "mark", data_attr: str = "lane", legend: bool = True,
             max_marks: int = MAX_MARKS, width: int = TIMELINE_WIDTH) -> str:
    """Lanes of bars over time from 0 to ``end`` seconds: a legend of the lanes' colours, time ticks in one
    unit (time_ticks), each bar a rect (class ``mark_class``, ``data-<data_attr>`` its lane's name) with its
    tooltip and, when it fits, its label. Beyond a lane's share of ``max_marks``, short spans are merged into
    runs (each with a tooltip counting them) and the caption says so. Bars are clipped to [0, end]."""
    lanes = [lane for lane in lanes if len(lane.starts)]
    if not lanes:
        return empty(f"{title or 'Timeline'}: no spans in this trace.")
    if not (math.isfinite(end) and end > 0):
        end = max(max(lane.ends) for lane in lanes)
        end = end if math.isfinite(end) and end > 0 else 1e-3
    items = [(lane.name, lane.colour, "swatch") for lane in lanes] if legend else []
    legend_svg, legend_height = _legend(items, width, GUTTER)
    axis_y = legend_height + 24
    top = axis_y + 8
    plot_left, plot_width = GUTTER, width - GUTTER - 24
    height = top + LANE_HEIGHT * len(lanes) + 8
    px = plot_width / end
    parts = [f'<svg class="chart timeline" id="{_esc(chart_id)}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title or "timeline")}" '
             f'font-family="{_esc(FONT)}" font-size="11" fill="#374151">{legend_svg}']
    for i in range(0, len(lanes), 2):
        parts.append(f'<rect class="lane-bg" x="0" y="{top + i * LANE_HEIGHT}" width="{width}" '
                     f'height="{LANE_HEIGHT}" fill="#f6f7f9"/>')
    for value, label in time_ticks(end, 8):
        x = _f(plot_left + value * px)
        parts.append(f'<line class="grid" x1="{x}" x2="{x}" y1="{axis_y}" y2="{height - 8}" stroke="{GRID}"/>'
                     f'<text class="tick-x" x="{x}" y="{axis_y - 6}" text-anchor="middle" fill="{AXIS}">'
                     f"{_esc(label)}</text>")
    notes = [caption] if caption else []
    merged_lanes = []
    for i, (lane, budget) in enumerate(zip(lanes, _budgets([len(x.starts) for x in lanes], max_marks), strict=True)):
        y = top + i * LANE_HEIGHT
        bar_y = y + (LANE_HEIGHT - BAR_HEIGHT) / 2
        parts.append(f'<text class="lane" x="8" y="{_f(y + LANE_HEIGHT / 2)}" dy="0.35em" font-size="12" '
                     f'fill="#1f2937">{_esc(_short(lane.name, 22))}<title>{_esc(lane.name)}</title></text>')
        order = _by_start(lane.starts)
        if len(order) <= budget:
            marks = [("one", lane.starts[j], lane.ends[j], lane.keys[j]) for j in order]
        else:
            marks = _coalesce(lane, order, px, budget, plot_width)
        if any(m[0] == "run" for m in marks):
            merged_lanes.append(f"{lane.name} ({len(order):,} {lane.noun} drawn as {len(marks):,} bars)")
        ink = _text_colour(lane.colour)
        for m in marks:
            start, stop = max(0.0, m[1]), min(end, m[2])
            if stop < start:
                continue  # wholly outside [0, end]
            x, w = plot_left + start * px, max((stop - start) * px, 1.0)
            stroke = ' stroke="#fff" stroke-width="0.75"' if w >= 4 else ""
            if m[0] == "one":
                labels, tip, opacity = lane.describe(m[3])
                shade = f' fill-opacity="{opacity:.2f}"' if opacity < 1 else ""
                parts.append(f'<rect class="{mark_class}" data-{data_attr}="{_esc(lane.name)}" x="{_f(x)}" '
                             f'y="{_f(bar_y)}" width="{_f(w)}" height="{BAR_HEIGHT}" rx="2" fill="{lane.colour}"'
                             f"{shade}{stroke}><title>{_esc(tip)}</title></rect>")
                label = _fit(labels, w)
                if label:
                    parts.append(f'<text class="bar-label" x="{_f(x + w / 2)}" y="{_f(bar_y + BAR_HEIGHT / 2)}" '
                                 f'dy="0.35em" text-anchor="middle" fill="{ink if opacity >= 0.6 else "#1f2937"}" '
                                 f'pointer-events="none">{_esc(label)}</text>')
                continue
            _, _, _, count, covered, first, last = m
            first_label = (lane.describe(first)[0] or ("",))[0]
            last_label = (lane.describe(last)[0] or ("",))[0]
            tip = (f"{count:,} {lane.noun} merged into this bar ({first_label} … {last_label}): from "
                   f"+{value_label(m[1], 'duration')} to +{value_label(m[2], 'duration')}, "
                   f"{value_label(covered, 'duration')} covered")
            parts.append(f'<rect class="{mark_class} merged" data-{data_attr}="{_esc(lane.name)}" data-count="{count}" '
                         f'x="{_f(x)}" y="{_f(bar_y)}" width="{_f(w)}" height="{BAR_HEIGHT}" fill="{lane.colour}" '
                         f'fill-opacity="0.7"{stroke}><title>{_esc(tip)}</title></rect>')
            label = _fit((f"{count:,} {lane.noun}", f"{count:,}"), w)
            if label:
                parts.append(f'<text class="bar-label" x="{_f(x + w / 2)}" y="{_f(bar_y + BAR_HEIGHT / 2)}" '
                             f'dy="0.35em" text-anchor="middle" fill="{ink}" pointer-events="none">{_esc(label)}'
                             f"</text>")
    parts.append("</svg>")
    if merged_lanes:
        notes.append("Short spans merged into runs so the page stays small: " + "; ".join(merged_lanes)
                     + ". Hover a run for its count.")
    return _figure("".join(parts), title, " ".join(notes))
