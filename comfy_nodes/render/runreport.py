"""The one-page reports of ``stagetrace bench`` and ``stagetrace load``: Markdown (GitHub tables, no
pictures) or one self-contained HTML page with inline-SVG charts (render/charts.py) and no network
fetches, from the dict each command builds (what ``--json`` prints).

Both formats are rendered from one list of blocks (headings, facts, tables, charts), so they show the
same figures. The renderers compute nothing the commands did not, except what a picture or a table
needs: bins, shares of a total, the part of a run's execution outside its named stages ("other") and,
without StageTrace on the server, the mean time of each node. A partial result (a preflight that
stopped the run, an interrupt after one run, every request failed, no GPU samples) renders too.
"""

from __future__ import annotations

import contextlib
import html
import os
import tempfile
import time
from dataclasses import dataclass, field

from ..core.units import format_bytes, format_duration, format_share
from . import charts
from .report import LANES

FORMATS = ("md", "html")
SUFFIXES = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}

# The stages stacked in a run's bar, bottom-up: the leaves of the stage tree. "prompt" is the whole
# execution, "node" the sum of node spans, "sample.step" lies inside "sample" and "anatomy" is an
# instant: none of them is stacked. What the leaves leave of "prompt" is "other".
LEAF_STAGES = ("model_load.read", "model_load.build", "model_load.to_device", "text_encode", "sample", "vae_decode",
               "vae_encode", "save")
INSIDE = {"sample.step": "sample", "node": "prompt"}
COLOURS = {**dict(LANES), "queue wait": "#cfd5dc", "other": "#b4b9c1", "execution": "#5b7083",
           "steps/s": "#2471a3", "other nodes": "#b4b9c1"}
WARM_SPAN, COLD_SPAN = "#e4ecf6", "#f9ebdb"
TOP_NODES = 8  # node segments per bar without StageTrace; the rest are "other nodes"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}: one of {', '.join(FORMATS)}")


def report_format(path: str) -> str:
    """The report format a file name asks for: "md" for .md/.markdown, "html" for .html/.htm (any case);
    ValueError naming the path otherwise."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: a report file name ends in .html (or .htm) or .md (or .markdown)")
    return SUFFIXES[suffix]


def write_report(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all: into a temporary file in the same folder,
    flushed to disk, then renamed over ``path``. On any failure the temporary file is removed, ``path`` is
    as it was, and the OSError is raised. The file gets the mode of the one it replaces, or 0644."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o644
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself to disk; not every file system lets a folder be synced
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --- The blocks both formats render ----------------------------------------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # one letter per column: "l" left, "r" right (figures), "w" left and wrapping (long text)
    row_class: list[str] = field(default_factory=list)  # HTML only: "cold", "failed", "total"...
    swatch: list[str | None] = field(default_factory=list)  # HTML only: a colour square before the first cell


@dataclass
class Block:
    kind: str  # h2, h3, p, note, facts, tiles, table, list, chart (HTML only: an SVG figure from charts.py)
    content: object


def _h2(text: str) -> Block:
    return Block("h2", text)


def _p(text: str) -> Block:
    return Block("p", text)


def _note(text: str) -> Block:
    return Block("note", text)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _when(epoch: object) -> str | None:
    if not isinstance(epoch, (int, float)):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _dicts(items: object) -> list[dict]:
    return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --- bench -----------------------------------------------------------------------------------------


def _run_total(stages: dict) -> float | None:
    return _number(stages.get("prompt"))


def stage_segments(run: dict, nodes: bool = True) -> list[tuple[str, float]]:
    """A run's execution stacked: its leaf stages (LEAF_STAGES order) and "other", the rest of "prompt"
    (or of the measured execution when the server gave no "prompt"); without a stage split, its node times
    from the WebSocket and what they leave of the execution (unless ``nodes`` is false); without either,
    the execution whole."""
    execution = _number(run.get("execution_s"))
    stages = run.get("stages_s")
    if isinstance(stages, dict) and stages:
        segments = [(s, float(stages[s])) for s in LEAF_STAGES if (_number(stages.get(s)) or 0.0) > 0]
        total = _run_total(stages)
        total = total if total is not None else execution
        other = max(0.0, total - sum(v for _, v in segments)) if total is not None else \
            (_number(stages.get("other")) or 0.0)  # the server's own "other" lies inside the remainder
        return segments + ([("other", other)] if other > 0 else [])
    node_s = run.get("nodes_s")
    if nodes and isinstance(node_s, dict) and node_s:
        segments = [(str(n), float(v)) for n, v in node_s.items() if (_number(v) or 0.0) > 0]
        rest = max(0.0, (execution or 0.0) - sum(v for _, v in segments))
        return segments + ([("other", rest)] if rest > 0 else [])
    return [("execution", execution)] if execution else []


def _run_kind(run: dict) -> str:
    return "cold" if run.get("cold") else "warm"


def _bench_header(out: dict, runs: list[dict]) -> list[Block]:
    facts = [("Server", str(out.get("url") or "-"))]
    when = _when(out.get("started_at"))
    if when:
        facts.append(("Started", when))
    if out.get("workflow"):
        facts.append(("Workflow", str(out["workflow"])))
    stagetrace = out.get("stagetrace")
    if stagetrace is True:
        facts.append(("StageTrace on the server", "yes: each run's stage split comes from its route"))
    elif stagetrace is False:
        facts.append(("StageTrace on the server", "no: node times come from the WebSocket and there is no stage "
                      "split (install StageTrace in the server's custom_nodes for one)"))
    if runs:
        cold = sum(1 for r in runs if r.get("cold"))
        ok = sum(1 for r in runs if r.get("outcome") == "ok")
        facts.append(("Runs", f"{len(runs)} ({cold} cold, {len(runs) - cold} warm): {ok} ok, {len(runs) - ok} failed"))
    blocks = [Block("facts", facts)]
    if out.get("interrupted"):
        cancelled = out.get("cancelled") or []
        text = "Interrupted (Ctrl-C): the report holds the runs measured before."
        if cancelled:
            text += f" Cancelled on the server: {', '.join(str(c) for c in cancelled)}."
        if out.get("cancel_failed"):
            text += f" Cancelling the queued prompts failed: {out['cancel_failed']}."
        blocks.append(_note(text))
    if out.get("message") and not out.get("preflight"):
        blocks.append(_note(str(out["message"])))
    return blocks


def _preflight(problems: list[dict]) -> list[Block]:
    rows = [[str(p.get("kind") or "-"),
             " ".join(x for x in (str(p.get("class_type") or ""), f"#{p['node_id']}" if p.get("node_id") else "")
                      if x) or "-",
             str(p.get("input") or "-"), str(p.get("message") or "-"),
             ", ".join(str(s) for s in p.get("suggestions") or []) or "-"] for p in problems]
    return [_h2("Preflight: the workflow was not run"),
            _p(f"The preflight found {len(problems)} problem{'s' if len(problems) != 1 else ''} on the server; "
               "nothing was submitted."),
            Block("table", Table(["problem", "node", "input", "what is wrong", "instead"], rows, "lllww",
                                 row_class=["failed"] * len(rows)))]


def _runs_table(runs: list[dict]) -> Table:
    rows, classes = [], []
    for r in runs:
        steps = r.get("steps")
        rows.append([str(r.get("index", "?")), _run_kind(r), str(r.get("outcome") or "-"),
                     format_duration(_number(r.get("at_s"))), format_duration(_number(r.get("queue_wait_s"))),
                     format_duration(_number(r.get("execution_s"))), format_duration(_number(r.get("e2e_s"))),
                     str(steps) if steps else "-", _num(_number(r.get("steps_per_s"))),
                     str(r.get("error") or "")])
        classes.append("failed" if r.get("outcome") != "ok" else _run_kind(r))
    return Table(["run", "kind", "outcome", "submitted at", "queue wait", "execution", "end to end", "steps",
                  "steps/s", "error"], rows, "lllrrrrrrw", classes)


STAT_ROWS = (("queue_wait_s", "queue wait", "duration"), ("execution_s", "execution", "duration"),
             ("e2e_s", "end to end", "duration"), ("steps_per_s", "steps/s", "number"))


def _stats_table(group: dict) -> Table | None:
    rows = []
    for key, label, kind in STAT_ROWS:
        s = group.get(key)
        if not isinstance(s, dict):
            continue
        show = format_duration if kind == "duration" else _num
        rows.append([label] + [show(_number(s.get(k))) for k in ("mean", "median", "min", "max", "stdev")]
                    + [str(s.get("n", "-"))])
    return Table(["metric", "mean", "median", "min", "max", "stdev", "n"], rows, "lrrrrrr") if rows else None


def _summary(runs: list[dict], summary: dict) -> list[Block]:
    blocks = [_h2("Summary")]
    for name, title in (("warm", "Warm runs"), ("cold", "Cold runs (the first, models loading)")):
        group = summary.get(name) or {}
        chosen = [r for r in runs if _run_kind(r) == name]
        if not chosen:
            continue
        ok = sum(1 for r in chosen if r.get("outcome") == "ok")
        blocks.append(Block("h3", f"{title}: {ok} ok of {len(chosen)}"))
        table = _stats_table(group)
        blocks.append(Block("table", table) if table else _p("No run of this kind succeeded: no figures."))
    if len(blocks) == 1:
        blocks.append(_p("No run was measured."))
    return blocks


def _split_rows(groups: list[dict]) -> tuple[list[str], list[list[float | None]], list[str], list[str | None]]:
    """(stage names, seconds per group, row classes, colours) of the stage-split table: the leaves, "other",
    the total ("prompt"), then the stages inside others and any the vocabulary does not stack."""
    names = [s for s in LEAF_STAGES if any((_number(g.get(s)) or 0) > 0 for g in groups)]
    values = [[_number(g.get(s)) for g in groups] for s in names]
    others, totals = [], []
    for g in groups:
        total = _run_total(g)
        named = sum(_number(g.get(s)) or 0.0 for s in LEAF_STAGES)
        others.append(None if total is None else max(0.0, total - named))
        totals.append(total)
    classes, colours = [""] * len(names), [COLOURS.get(s) for s in names]
    if any(o for o in others):
        names.append("other")
        values.append(others)
        classes.append("")
        colours.append(COLOURS["other"])
    if any(t is not None for t in totals):
        names.append("total (prompt, measured by the server)")
        values.append(totals)
        classes.append("total")
        colours.append(None)
    extra = [s for g in groups for s in g if s not in LEAF_STAGES and s not in ("prompt", "other", "anatomy")]
    for s in dict.fromkeys(extra):
        names.append(f"{s} (inside {INSIDE[s]})" if s in INSIDE else f"{s} (not stacked)")
        values.append([_number(g.get(s)) for g in groups])
        classes.append("inside")
        colours.append(COLOURS.get(s))
    return names, values, classes, colours


def _stage_split(out: dict, runs: list[dict], summary: dict) -> list[Block]:
    blocks = [_h2("Where the time went")]
    groups = [(name, summary.get(name, {}).get("stages_s") or {}) for name in ("warm", "cold")]
    groups = [(name, g) for name, g in groups if g]
    if groups:
        names, values, classes, colours = _split_rows([g for _, g in groups])
        rows = []
        for name, row in zip(names, values, strict=True):
            cells = [name]
            for (_, g), v in zip(groups, row, strict=True):
                total = _run_total(g) or 0.0
                cells += [format_duration(v), format_share(v, total) if v is not None and "inside" not in name
                          else "-"]
            rows.append(cells)
        header = ["stage"] + [h for name, _ in groups for h in (f"{name} mean", "share")]
        blocks.append(_p("Mean seconds per stage over the runs that succeeded, from StageTrace on the server; the "
                         "share is of the whole execution (prompt). \"other\" is the execution outside the named "
                         "stages (ComfyUI's own work, nodes without a stage)."))
        blocks.append(Block("table", Table(header, rows, "l" + "rr" * len(groups), classes, colours)))
        return blocks
    if out.get("stagetrace") is False or any(r.get("nodes_s") for r in runs):
        blocks.append(_note("The server has no StageTrace (or gave no stage split): node times come from the "
                            "WebSocket, from one node's start message to the next."))
        means: dict[str, dict[str, float]] = {}  # kind -> node -> mean seconds
        totals: dict[str, float] = {}  # kind -> mean execution
        for kind in ("warm", "cold"):
            chosen = [r for r in runs if _run_kind(r) == kind and r.get("outcome") == "ok"
                      and isinstance(r.get("nodes_s"), dict)]
            if not chosen:
                continue
            sums: dict[str, float] = {}
            for r in chosen:
                for node, seconds in r["nodes_s"].items():
                    sums[str(node)] = sums.get(str(node), 0.0) + (_number(seconds) or 0.0)
            means[kind] = {node: total / len(chosen) for node, total in sums.items()}
            totals[kind] = sum(_number(r.get("execution_s")) or 0.0 for r in chosen) / len(chosen)
        nodes = sorted({n for m in means.values() for n in m},
                       key=lambda n: tuple(-means.get(k, {}).get(n, 0.0) for k in ("warm", "cold")))
        rows = []
        for node in nodes:
            cells = [node]
            for kind in means:
                mean = means[kind].get(node)
                cells += [format_duration(mean), "-" if mean is None else format_share(mean, totals[kind])]
            rows.append(cells)
        if rows:
            header = ["node"] + [h for kind in means for h in (f"{kind} mean", "share")]
            blocks.append(Block("table", Table(header, rows, "l" + "rr" * len(means))))
        else:
            blocks.append(_p("No run succeeded: no node times."))
        return blocks
    blocks.append(_p("No stage split: no run succeeded."))
    return blocks


def _node_bars(runs: list[dict]) -> dict[str, str]:
    """Node names kept as their own segment (the TOP_NODES slowest over all runs) -> the name drawn."""
    sums: dict[str, float] = {}
    for r in runs:
        for name, seconds in stage_segments(r):
            sums[name] = sums.get(name, 0.0) + seconds
    ordered = [n for n, _ in sorted(sums.items(), key=lambda kv: -kv[1]) if n not in ("other", "execution")]
    return {n: n for n in ordered[:TOP_NODES]}


def _run_bars(runs: list[dict]) -> list[charts.Bar]:
    split = any(isinstance(r.get("stages_s"), dict) and r["stages_s"] for r in runs)
    keep = None if split else _node_bars(runs)
    bars = []
    for r in runs:
        segments: list[tuple[str, float]] = []
        if (_number(r.get("queue_wait_s")) or 0) > 0:
            segments.append(("queue wait", float(r["queue_wait_s"])))
        rest = 0.0
        for name, seconds in stage_segments(r, nodes=not split):
            if keep is not None and name not in keep and name not in ("other", "execution"):
                rest += seconds
            else:
                segments.append((name, seconds))
        if rest > 0:
            segments.append(("other nodes", rest))
        note = _run_kind(r)
        if r.get("outcome") != "ok":
            note += f" · {r.get('outcome')}" + (f": {r['error']}" if r.get("error") else "")
        label = f"{r.get('index', '?')}" + (" cold" if r.get("cold") else "")
        bars.append(charts.Bar(label, segments, note, r.get("outcome") != "ok"))
    return bars


def _gpu_source(gpu: dict) -> str | None:
    source = gpu.get("source")
    return {"stagetrace": "StageTrace's GPU samples on the server",
            "system_stats": "ComfyUI's /system_stats (memory only)"}.get(source, str(source) if source else None)


def _gpu_charts(out: dict, runs: list[dict]) -> list[Block]:
    gpu = out.get("gpu") if isinstance(out.get("gpu"), dict) else {}
    samples = _dicts(gpu.get("samples"))
    source = _gpu_source(gpu)
    if not samples:
        return []
    spans = []
    for r in runs:
        at, e2e = _number(r.get("at_s")), _number(r.get("e2e_s"))
        if at is not None:
            end = at + (e2e if e2e is not None else 0.0)
            spans.append(charts.Span(at, max(end, at), f"run {r.get('index')} ({_run_kind(r)}, {r.get('outcome')}): "
                                     f"{format_duration(at)} – {format_duration(end)}",
                                     COLD_SPAN if r.get("cold") else WARM_SPAN))
    devices = list(dict.fromkeys(str(s.get("device") or "GPU") for s in samples))
    colour = {d: charts.PALETTE[i % len(charts.PALETTE)] for i, d in enumerate(devices)}
    util, used, total = [], [], []
    for d in devices:
        mine = sorted((s for s in samples if str(s.get("device") or "GPU") == d),
                      key=lambda s: _number(s.get("t")) or 0.0)
        pts = [(_number(s.get("t")) or 0.0, _number(s.get("util_pct"))) for s in mine]
        if any(y is not None for _, y in pts):
            util.append(charts.Series(d, pts, colour[d]))
        pts = [(_number(s.get("t")) or 0.0, _number(s.get("mem_used_bytes"))) for s in mine]
        if any(y is not None for _, y in pts):
            used.append(charts.Series(f"{d} used", pts, colour[d]))
        pts = [(_number(s.get("t")) or 0.0, _number(s.get("mem_total_bytes"))) for s in mine]
        if any(y is not None for _, y in pts):
            total.append(charts.Series(f"{d} total", pts, colour[d], dashed=True))
    caption = "Shaded: each run from its submit to its end (cold runs in orange)." if spans else ""
    memory = "System memory (the server runs on the CPU)" if gpu.get("on_cpu") else "GPU memory"
    blocks = []
    if util:
        blocks.append(Block("chart", charts.line_chart(util, x_label="time since the bench began",
                                                       y_label="GPU utilisation", y_kind="percent", y_max=100.0,
                                                       spans=spans, chart_id="chart-gpu-util",
                                                       title="GPU utilisation over time", caption=caption)))
    else:
        blocks.append(Block("chart", charts.empty("No GPU utilisation in the samples"
                                                  + (f" from {source}." if source else "."))))
    if used or total:
        blocks.append(Block("chart", charts.line_chart(used + total, x_label="time since the bench began",
                                                       y_label=memory.split(" (")[0], y_kind="bytes", spans=spans,
                                                       chart_id="chart-gpu-memory", title=f"{memory} over time",
                                                       caption=caption)))
    return blocks


def _gpu_table(out: dict) -> list[Block]:
    """The GPU during the runs: the bench's own summary of the samples when it gave one, else the peaks per
    device; or why there are no samples."""
    gpu = out.get("gpu") if isinstance(out.get("gpu"), dict) else {}
    samples = _dicts(gpu.get("samples"))
    if not samples:
        why = gpu.get("note") or ("the server gave no GPU figures" if gpu else "the bench collected no GPU samples")
        return [_p(f"No GPU samples: {why}.")]
    summary = gpu.get("summary") if isinstance(gpu.get("summary"), dict) else None
    header = ["device", "samples", "utilisation mean", "utilisation max", "memory peak", "memory total"]
    if summary:
        mean, most = _number(summary.get("util_mean_pct")), _number(summary.get("util_max_pct"))
        devices = ", ".join(dict.fromkeys(str(s.get("device") or "GPU") for s in samples))
        rows = [[devices, str(summary.get("samples", len(samples))), "-" if mean is None else f"{mean:.0f} %",
                 "-" if most is None else f"{most:.0f} %", format_bytes(_number(summary.get("mem_peak_bytes"))),
                 format_bytes(_number(summary.get("mem_total_bytes")))]]
    else:
        rows = []
        for d in dict.fromkeys(str(s.get("device") or "GPU") for s in samples):
            mine = [s for s in samples if str(s.get("device") or "GPU") == d]

            def peak(key: str, mine=mine) -> float | None:
                values = [v for v in (_number(s.get(key)) for s in mine) if v is not None]
                return max(values) if values else None

            most = peak("util_pct")
            rows.append([d, str(len(mine)), "-", "-" if most is None else f"{most:.0f} %",
                         format_bytes(peak("mem_used_bytes")), format_bytes(peak("mem_total_bytes"))])
    blocks = [Block("table", Table(header, rows, "lrrrrr"))]
    source = _gpu_source(gpu)
    text = " ".join(x for x in ((f"From {source}." if source else ""),
                                (f"{gpu['note'][:1].upper()}{gpu['note'][1:]}." if gpu.get("note") else "")) if x)
    if text:
        blocks.append(_p(text))
    return blocks


def _bench_errors(out: dict, runs: list[dict]) -> list[Block]:
    failed = [r for r in runs if r.get("outcome") != "ok"]
    if not failed:
        return [_h2("Errors"), _p("None: every run succeeded." if runs else "None.")]
    rows = [[str(r.get("index", "?")), _run_kind(r), str(r.get("outcome") or "-"), str(r.get("error") or "-")]
            for r in failed]
    return [_h2("Errors"), Block("table", Table(["run", "kind", "outcome", "error"], rows, "lllw",
                                                row_class=["failed"] * len(rows)))]


def _bench_blocks(out: dict, html_page: bool) -> list[Block]:
    runs = _dicts(out.get("runs"))
    summary = out.get("summary") if isinstance(out.get("summary"), dict) else {}
    blocks = _bench_header(out, runs)
    problems = _dicts(out.get("preflight"))
    if problems:
        blocks += _preflight(problems)
    if not runs:
        if not problems:
            blocks.append(_p("No run was measured."))
        return blocks
    blocks += [_h2("Runs"), Block("table", _runs_table(runs))]
    blocks += _summary(runs, summary)
    blocks += _stage_split(out, runs, summary)
    if html_page:
        blocks.append(_h2("Charts"))
        bars = _run_bars(runs)
        blocks.append(Block("chart", charts.bar_chart(
            bars, colours=COLOURS, y_label="seconds", x_label="run", chart_id="chart-runs",
            title="Each run: queue wait, then its stages",
            caption="Each bar is one run, bottom-up: its queue wait, then its execution by stage"
                    + (" (from StageTrace on the server)." if any(r.get("stages_s") for r in runs)
                       else " (node times from the WebSocket)."))))
        rates = [charts.Bar(b.label, [("steps/s", float(r["steps_per_s"]))], b.note, b.failed)
                 for r, b in zip(runs, bars, strict=True) if _number(r.get("steps_per_s"))]
        blocks.append(Block("chart", charts.bar_chart(rates, colours=COLOURS, y_label="steps/s", x_label="run",
                                                      y_kind="number", chart_id="chart-steps", title="Denoising rate",
                                                      caption="Denoising steps a second in each run, from the "
                                                              "progress messages.")
                            if rates else charts.empty("No step rate: no run reported denoising progress.")))
    gpu = out.get("gpu") if isinstance(out.get("gpu"), dict) else {}
    blocks.append(_h2("Server memory" if gpu.get("on_cpu") else "GPU"))
    blocks += _gpu_table(out)
    if html_page:
        blocks += _gpu_charts(out, runs)
    blocks += _bench_errors(out, runs)
    return blocks


def bench_report(out: dict, fmt: str) -> str:
    """The page of one ``stagetrace bench``: what was run where, the preflight's problems, every run (cold
    ones marked), the warm runs' mean/median/min/max/stdev with the cold ones apart, the stage split,
    errors; the HTML adds per-run stage bars, the step rate per run and the GPU over time with each run
    shaded. fmt is "md" or "html"; ValueError otherwise."""
    _check_format(fmt)
    title = f"StageTrace bench · {out.get('url') or 'no server'}"
    return _render(title, _bench_blocks(out, fmt == "html"), fmt)


# --- load ------------------------------------------------------------------------------------------


def _mode(mode: object) -> str | None:
    if not isinstance(mode, dict):
        return None
    if mode.get("model") == "closed":
        limit = _number(mode.get("duration_s"))
        return (f"closed: {mode.get('users', '?')} users, each sending {mode.get('requests', '?')} requests one after "
                "the other" + (f", none started after {format_duration(limit)}" if limit else ""))
    if mode.get("model") == "open":
        duration = _number(mode.get("duration_s"))
        rate = _number(mode.get("rate_per_min"))
        return f"open: {'?' if rate is None else f'{rate:g}'} arrivals a minute for {format_duration(duration)}"
    return ", ".join(f"{k} {v}" for k, v in mode.items())


PERCENTILES = ("p50", "p95", "p99", "max")
METRICS = (("queue_wait_s", "queue wait"), ("execution_s", "execution"), ("e2e_s", "end to end"))


def _load_header(out: dict) -> list[Block]:
    urls = [str(u) for u in out.get("urls") or []]
    facts = [("Servers" if len(urls) > 1 else "Server", ", ".join(urls) or "-")]
    when = _when(out.get("started_at"))
    if when:
        facts.append(("Started", when))
    if out.get("workflow"):
        facts.append(("Workflow", str(out["workflow"])))
    mode = _mode(out.get("mode"))
    if mode:
        facts.append(("Arrivals", mode))
    if _number(out.get("wall_s")) is not None:
        facts.append(("Wall time", format_duration(out["wall_s"])))
    stagetrace = out.get("stagetrace") if isinstance(out.get("stagetrace"), dict) else {}
    if stagetrace:
        without = [str(u) for u, has in stagetrace.items() if not has]
        facts.append(("StageTrace on the server" + ("s" if len(stagetrace) > 1 else ""),
                      "yes: each request's stage split comes from its route" if not without else
                      f"not on {', '.join(without)}: no stage split from there"))
    blocks = [Block("facts", facts)]
    if out.get("interrupted"):
        cancelled = out.get("cancelled") or []
        blocks.append(_note("Interrupted (Ctrl-C): the report holds the requests that ended before; "
                            f"{len(cancelled)} prompt{'s' if len(cancelled) != 1 else ''} still queued were cancelled "
                            "on the servers."))
    for line in out.get("unreachable_at_start") or []:
        blocks.append(_note(f"Unreachable at the start: {line}"))
    if out.get("message"):
        blocks.append(_note(str(out["message"])))
    return blocks


def _tiles(out: dict) -> Block:
    requests, ok = int(out.get("requests") or 0), int(out.get("ok") or 0)
    e2e = out.get("e2e_s") if isinstance(out.get("e2e_s"), dict) else {}
    tiles = [("success rate", _pct(_number(out.get("success_rate"))), f"{ok:,} of {requests:,} requests"),
             ("throughput", f"{_num(_number(out.get('images_per_minute')), 1)} /min", "images a minute")]
    slo = out.get("slo") if isinstance(out.get("slo"), dict) else None
    if slo:
        metric = str(slo.get("metric") or "e2e_s").removesuffix("_s").replace("e2e", "end to end")
        within = format_duration(_number(slo.get("limit_s")))
        tiles.append(("goodput", f"{_num(_number(out.get('goodput_per_minute')), 1)} /min",
                      f"{metric} within {within}: {slo.get('met', 0):,} requests"))
    tiles.append(("p95 end to end", format_duration(_number(e2e.get("p95"))),
                  f"p50 {format_duration(_number(e2e.get('p50')))}"))
    return Block("tiles", tiles)


def _percentile_table(figures: dict) -> Table:
    rows = []
    for key, label in METRICS:
        s = figures.get(key) if isinstance(figures.get(key), dict) else {}
        rows.append([label] + [format_duration(_number(s.get(p))) for p in PERCENTILES])
    return Table(["metric", *PERCENTILES], rows, "lrrrr")


def _stage_order(stages: dict) -> list[str]:
    known = [s for s, _ in LANES if s in stages and s not in ("prompt", "node")]
    return known + [s for s in stages if s not in known and s not in ("prompt", "node")] + \
        [s for s in ("node", "prompt") if s in stages]


def _load_stages(out: dict) -> list[Block]:
    stages = out.get("stages_s") if isinstance(out.get("stages_s"), dict) else {}
    if not stages:
        return [_h2("Where the time went"), _p("No stage split: the server has no StageTrace, or no request "
                                               "succeeded.")]
    rows, colours = [], []
    for s in _stage_order(stages):
        figures = stages[s] if isinstance(stages[s], dict) else {}
        name = {"prompt": "prompt (whole execution)", "node": "node (sum of node spans)"}.get(s, s)
        if s in INSIDE and s != "node":
            name = f"{s} (inside {INSIDE[s]})"
        rows.append([name, format_duration(_number(figures.get("p50"))), format_duration(_number(figures.get("p95")))])
        colours.append(COLOURS.get(s))
    return [_h2("Where the time went"),
            _p("Seconds per stage of each request that succeeded, from StageTrace on the server."),
            Block("table", Table(["stage", "p50", "p95"], rows, "lrr", swatch=colours))]


def _server_side(out: dict) -> list[Block]:
    """The fleet's own figures for the run, read back from Prometheus (``load --prometheus``)."""
    side = out.get("server_side") if isinstance(out.get("server_side"), dict) else None
    if side is None:
        return []
    blocks = [_h2("Server side (Prometheus)")]
    if side.get("error"):
        return blocks + [_p(f"Prometheus {side.get('prometheus')} could not answer: {side['error']}")]
    blocks.append(_p(f"From each worker's StageTrace histograms, via Prometheus {side.get('prometheus')}: "
                     f"{side.get('prompts_seen')} prompts in the run's {side.get('window_s')} s."))
    fleet = side.get("fleet") if isinstance(side.get("fleet"), dict) else {}
    rows = []
    for metric, label in (("queue_wait_s", "queue wait"), ("execution_s", "execution"), ("e2e_s", "end to end")):
        figures = fleet.get(metric) if isinstance(fleet.get(metric), dict) else {}
        rows.append([label, format_duration(_number(figures.get("p50"))), format_duration(_number(figures.get("p95")))])
    stages = side.get("stages_s") if isinstance(side.get("stages_s"), dict) else {}
    for stage in _stage_order(stages):
        figures = stages[stage] if isinstance(stages[stage], dict) else {}
        rows.append([stage, format_duration(_number(figures.get("p50"))), format_duration(_number(figures.get("p95")))])
    blocks.append(Block("table", Table(["fleet", "p50", "p95"], rows, "lrr")))
    instances = side.get("instances") if isinstance(side.get("instances"), dict) else {}
    if instances:
        rows = []
        for instance, row in sorted(instances.items()):
            row = row if isinstance(row, dict) else {}
            e2e = row.get("e2e_s") if isinstance(row.get("e2e_s"), dict) else {}
            rows.append([str(instance), str(row.get("prompts", "-")), format_duration(_number(e2e.get("p50"))),
                         format_duration(_number(e2e.get("p95")))])
        blocks.append(Block("table", Table(["instance", "prompts", "end to end p50", "p95"], rows, "lrrr")))
    if side.get("no_baseline"):
        blocks.append(_note("Prometheus had not scraped " + ", ".join(map(str, side["no_baseline"])) +
                            " before the run began: their counts include earlier prompts."))
    return blocks


def _load_errors(out: dict, detail: list[dict]) -> list[Block]:
    errors = out.get("errors") if isinstance(out.get("errors"), dict) else {}
    if not errors:
        return [_h2("Errors"), _p("None." if out.get("requests") else "No request was sent.")]
    requests = int(out.get("requests") or 0)
    example: dict[str, str] = {}
    for r in detail:
        if r.get("outcome") != "ok" and r.get("error") and r.get("outcome") not in example:
            example[str(r["outcome"])] = str(r["error"])
    rows = [[str(k), f"{int(v):,}", format_share(int(v), requests), example.get(str(k), "-")]
            for k, v in sorted(errors.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))]
    return [_h2("Errors by class"), Block("table", Table(["class", "requests", "share", "first message"], rows,
                                                         "lrrw", row_class=["failed"] * len(rows)))]


def _per_worker(out: dict) -> list[Block]:
    workers = out.get("per_worker") if isinstance(out.get("per_worker"), dict) else {}
    if not workers:
        return []
    rows = []
    for url, w in workers.items():
        w = w if isinstance(w, dict) else {}
        e2e = w.get("e2e_s") if isinstance(w.get("e2e_s"), dict) else {}
        queue = w.get("queue_wait_s") if isinstance(w.get("queue_wait_s"), dict) else {}
        errors = w.get("errors") if isinstance(w.get("errors"), dict) else {}
        rows.append([str(url), f"{int(w.get('requests') or 0):,}", f"{int(w.get('ok') or 0):,}",
                     _pct(_number(w.get("success_rate"))), _num(_number(w.get("images_per_minute")), 1),
                     format_duration(_number(queue.get("p95"))), format_duration(_number(e2e.get("p50"))),
                     format_duration(_number(e2e.get("p95"))),
                     ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "-"])
    return [_h2("Per worker"), Block("table", Table(
        ["worker", "requests", "ok", "success", "images/min", "queue wait p95", "e2e p50", "e2e p95", "errors"],
        rows, "wrrrrrrrw"))]


def _thresholds(out: dict) -> list[Block]:
    if "thresholds_missed" not in out:
        return []
    missed = [str(m) for m in out.get("thresholds_missed") or []]
    if not missed:
        return [_h2("Thresholds"), _p("None missed.")]
    return [_h2("Thresholds missed"), Block("list", missed)]


def _load_charts(out: dict, detail: list[dict]) -> list[Block]:
    wall = _number(out.get("wall_s"))
    ok = [r for r in detail if r.get("outcome") == "ok"]
    blocks = [_h2("Charts")]
    e2e = [v for v in (_number(r.get("e2e_s")) for r in ok) if v is not None]
    queue = [v for v in (_number(r.get("queue_wait_s")) for r in ok) if v is not None]
    blocks.append(Block("chart", charts.histogram(e2e, x_label="end to end", colour=COLOURS["sample"],
                                                  chart_id="chart-e2e-histogram", title="End to end, distribution",
                                                  caption="The requests that succeeded.")))
    blocks.append(Block("chart", charts.histogram(queue, x_label="queue wait", colour=COLOURS["prompt"],
                                                  chart_id="chart-queue-histogram", title="Queue wait, distribution",
                                                  caption="The requests that succeeded.")))
    points = []
    for r in detail:
        at = _number(r.get("submitted_at"))
        if at is None or r.get("outcome") in ("pending", "cancelled"):  # had not ended: not measured
            continue
        y = _number(r.get("e2e_s"))
        tip = f"request {r.get('index', '?')} · {r.get('worker', '')} · submitted at {format_duration(at)} · "
        tip += (f"end to end {format_duration(y)}" if r.get("outcome") == "ok" else
                f"{r.get('outcome')}" + (f" after {format_duration(y)}" if y is not None else "")
                + (f": {r['error']}" if r.get("error") else ""))
        points.append(charts.Point(at, y, r.get("outcome") == "ok", tip))
    blocks.append(Block("chart", charts.scatter(points, x_label="submitted at (since the run began)",
                                                y_label="end to end", x_max=wall, chart_id="chart-latency-time",
                                                title="End to end over time", ok_name="succeeded",
                                                failed_name="failed (on the axis when no time was measured)",
                                                caption="Each request at the time it was submitted.")))
    depth = out.get("queue_depth") if isinstance(out.get("queue_depth"), dict) else {}
    series = []
    for i, (url, samples) in enumerate(depth.items()):
        pts = [(float(p[0]), float(p[1])) for p in samples or [] if isinstance(p, (list, tuple)) and len(p) == 2
               and _number(p[0]) is not None and _number(p[1]) is not None]
        if pts:
            series.append(charts.Series(str(url), pts, charts.PALETTE[i % len(charts.PALETTE)]))
    blocks.append(Block("chart", charts.line_chart(series, x_label="time since the run began", y_label="prompts queued",
                                                   y_kind="number", step=True, x_max=wall,
                                                   chart_id="chart-queue-depth", title="Queue depth over time",
                                                   caption="The server's queue (running and pending), sampled once a "
                                                           "second, one line per worker.")
                        if series else charts.empty("Queue depth: no samples.")))
    done = [at + e for at, e in ((_number(r.get("submitted_at")), _number(r.get("e2e_s"))) for r in ok)
            if at is not None and e is not None]
    blocks.append(Block("chart", charts.histogram(done, x_label="time since the run began", colour=COLOURS["save"],
                                                  y_label="images completed", unit="completions", lo=0.0,
                                                  hi=max([wall or 0.0] + done) if done else None,
                                                  chart_id="chart-throughput", title="Throughput over time",
                                                  caption="Completions per interval.")))
    return blocks


def _load_blocks(out: dict, html_page: bool) -> list[Block]:
    blocks = _load_header(out)
    if not isinstance(out.get("requests"), int):
        blocks.append(_p("No request was measured."))
        return blocks
    detail = _dicts(out.get("requests_detail"))
    blocks.append(_tiles(out))
    blocks += [_h2("Latency"), Block("table", _percentile_table(out))]
    blocks += _load_stages(out)
    blocks += _server_side(out)
    blocks += _load_errors(out, detail)
    blocks += _per_worker(out)
    blocks += _thresholds(out)
    if html_page:
        blocks += _load_charts(out, detail)
    return blocks


def load_report(out: dict, fmt: str) -> str:
    """The page of one ``stagetrace load``: servers, arrivals and wall time; success rate, throughput and
    goodput; p50/p95/p99/max of queue wait, execution and end to end; p50/p95 per stage; errors by class;
    per worker; thresholds missed. The HTML adds latency histograms, end to end over time (failed requests
    marked), queue depth per worker and completions over time. fmt is "md" or "html"; ValueError otherwise."""
    _check_format(fmt)
    urls = ", ".join(str(u) for u in out.get("urls") or []) or "no server"
    return _render(f"StageTrace load · {urls}", _load_blocks(out, fmt == "html"), fmt)


# --- Markdown --------------------------------------------------------------------------------------


def md_text(text: object) -> str:
    """Text safe in GitHub Markdown, table cells included: HTML escaped, the characters that make links,
    code or cells (backslash, |, [, ], `) escaped, line breaks as <br>."""
    out = html.escape(str(text), quote=False)
    for ch in ("\\", "|", "[", "]", "`"):
        out = out.replace(ch, "\\" + ch)
    return out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def _md_table(t: Table) -> list[str]:
    width = len(t.header)
    align = (t.align or "").ljust(width, "l")
    lines = ["| " + " | ".join(md_text(h) for h in t.header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    for row in t.rows:
        cells = [md_text(c) for c in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md(title: str, blocks: list[Block]) -> str:
    lines = [f"# {md_text(title)}", ""]
    for b in blocks:
        if b.kind == "h2":
            lines += [f"## {md_text(b.content)}", ""]
        elif b.kind == "h3":
            lines += [f"### {md_text(b.content)}", ""]
        elif b.kind == "p":
            lines += [md_text(b.content), ""]
        elif b.kind == "note":
            lines += [f"> {md_text(b.content)}", ""]
        elif b.kind == "facts":
            lines += [f"- **{md_text(k)}:** {md_text(v)}" for k, v in b.content] + [""]
        elif b.kind == "tiles":
            lines += [f"- **{md_text(label[:1].upper() + label[1:])}:** {md_text(value)} ({md_text(sub)})"
                      for label, value, sub in b.content] + [""]
        elif b.kind == "table":
            lines += _md_table(b.content) + [""]
        elif b.kind == "list":
            lines += [f"- {md_text(item)}" for item in b.content] + [""]
    lines += ["---", "", "_The HTML form of this report (`--report FILE.html`) has the charts._", ""]
    return "\n".join(lines)


# --- HTML ------------------------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2937; background: #fff;
  margin: 0; }
main { max-width: 960px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 22px; font-weight: 650; margin: 0 0 14px; letter-spacing: -0.01em; overflow-wrap: anywhere; }
h2 { font-size: 16px; font-weight: 650; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e5e7eb; }
h3 { font-size: 14px; font-weight: 600; margin: 18px 0 6px; color: #374151; }
p { margin: 6px 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0 0 12px; }
dl.facts dt { color: #6b7280; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.note { border-left: 4px solid #e67e22; background: #fdf6ee; padding: 8px 12px; margin: 10px 0;
  overflow-wrap: anywhere; white-space: pre-wrap; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0 4px; }
.tile { flex: 1 1 180px; border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px 14px; }
.tile .label { color: #6b7280; font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; }
.tile .value { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
.tile .sub { color: #6b7280; font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 14px 4px 0; text-align: left; vertical-align: top; border-bottom: 1px solid #f0f1f4; }
th { font-weight: 600; color: #4b5563; border-bottom: 1px solid #d1d5db; white-space: nowrap; }
td.r, th.r { text-align: right; }
td { white-space: nowrap; }
td.w { white-space: pre-wrap; overflow-wrap: anywhere; min-width: 10em; }
.table { overflow-x: auto; }
tr.cold td { background: #fdf8f2; }
tr.failed td { color: #a93226; }
tr.total td { font-weight: 600; border-top: 1px solid #d1d5db; }
tr.inside td { color: #6b7280; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
figure.chart { margin: 22px 0 8px; }
.chart-title { font-weight: 600; font-size: 13px; color: #374151; margin-bottom: 2px; }
figure.chart svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #6b7280; font-size: 12px; margin-top: 2px; }
.no-chart { color: #6b7280; font-style: italic; }
footer { margin-top: 36px; color: #9ca3af; font-size: 12px; }
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_table(t: Table) -> str:
    align = (t.align or "").ljust(len(t.header), "l")
    head = "".join(f'<th class="{a}">{_esc(h)}</th>' for h, a in zip(t.header, align, strict=True))
    rows = []
    for i, row in enumerate(t.rows):
        cls = t.row_class[i] if i < len(t.row_class) and t.row_class[i] else ""
        colour = t.swatch[i] if i < len(t.swatch) else None
        cells = []
        for j, cell in enumerate(row):
            mark = f'<span class="swatch" style="background:{_esc(colour)}"></span>' if j == 0 and colour else ""
            cells.append(f'<td class="{align[j] if j < len(align) else "w"}">{mark}{_esc(cell)}</td>')
        rows.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(cells) + "</tr>")
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _html(title: str, blocks: list[Block]) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h2", "h3"):
            body.append(f"<{b.kind}>{_esc(b.content)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_esc(b.content)}</p>")
        elif b.kind == "note":
            body.append(f'<p class="note">{_esc(b.content)}</p>')
        elif b.kind == "facts":
            body.append('<dl class="facts">' + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in b.content)
                        + "</dl>")
        elif b.kind == "tiles":
            body.append('<div class="tiles">' + "".join(
                f'<div class="tile"><div class="label">{_esc(label)}</div><div class="value">{_esc(value)}</div>'
                f'<div class="sub">{_esc(sub)}</div></div>' for label, value, sub in b.content) + "</div>")
        elif b.kind == "table":
            body.append(_html_table(b.content))
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_esc(item)}</li>" for item in b.content) + "</ul>")
        elif b.kind == "chart":
            body.append(str(b.content))  # built by render/charts.py, escaped there
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n<h1>{_esc(title)}</h1>\n"
            + "\n".join(body) + "\n<footer>StageTrace · one self-contained page: no scripts, nothing fetched."
            "</footer>\n</main></body></html>\n")


def _render(title: str, blocks: list[Block], fmt: str) -> str:
    return _md(title, blocks) if fmt == "md" else _html(title, blocks)
