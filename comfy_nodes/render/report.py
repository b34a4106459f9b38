"""The diagnosis report in four forms: console text, Markdown, one self-contained HTML page with a
timeline picture of the stages (no network fetches), and JSON."""

from __future__ import annotations

import html
import json

from ..analysis.diagnose import Report
from ..core.units import format_duration
from .text import format_text

FORMATS = ("text", "md", "html", "json")

# Timeline lanes, top to bottom, and their colours (the stage colours of the NVTX ranges, as CSS).
LANES = (
    ("prompt", "#5b7083"), ("node", "#8a8f98"), ("model_load.read", "#c0392b"), ("model_load.build", "#e67e22"),
    ("model_load.to_device", "#d4ac0d"), ("text_encode", "#16a085"), ("sample", "#2471a3"),
    ("sample.step", "#5dade2"), ("vae_decode", "#7d3c98"), ("vae_encode", "#a569bd"), ("save", "#27ae60"),
    ("gpu", "#1e8449"),
)



def render(report: Report, fmt: str, trace: dict | None = None) -> str:
    if fmt == "text":
        return render_text(report)
    if fmt == "md":
        return render_md(report)
    if fmt == "html":
        return render_html(report, trace or {})
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, default=str)
    raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def lost(f) -> str:
    """The seconds a finding cost, in words; nothing for what broke the run (the whole run was lost)."""
    return format_duration(f.cost_s) if f.cost_s and f.severity != "error" else ""


def render_text(report: Report) -> str:
    """The console summary (as printed after each prompt), then the findings."""
    lines = [format_text(report.summary)]
    if not report.findings:
        lines.append("findings: none")
    for i, f in enumerate(report.findings, 1):
        cost = f" · about {lost(f)} lost" if lost(f) else ""
        lines += [f"{i}. [{f.severity}] {f.title}{cost}", f"   measured: {f.evidence}", f"   cause: {f.cause}",
                  f"   fix: {f.fix}"]
    if report.not_checked:
        lines.append("not checked: " + "; ".join(f"{n.title} ({n.why})" for n in report.not_checked))
    return "\n".join(lines)


def render_md(report: Report) -> str:
    s = report.summary
    out = [f"# StageTrace report: prompt {s.prompt_id}", "",
           f"Outcome **{s.outcome}**, wall time **{format_duration(s.wall_s)}**.", "", "| stage | time | share |",
           "|---|---:|---:|"]
    out += [f"| {stage} | {format_duration(secs)} | {share * 100:.1f} % |" for stage, secs, share in report.stages]
    if s.gpu:
        out += ["", s.gpu]
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


def _timeline_svg(trace: dict, width: int = 1100) -> str:
    spans = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and e.get("dur") is not None]
    lanes = [(name, colour) for name, colour in LANES if any(e.get("cat") == name for e in spans)]
    if not spans or not lanes:
        return "<p>No spans in this trace.</p>"
    t0 = min(e["ts"] for e in spans)
    t1 = max(e["ts"] + e["dur"] for e in spans)
    scale = (width - 170) / max(t1 - t0, 1.0)
    row, top = 26, 24
    height = top + row * len(lanes) + 10
    parts = [f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="stage timeline">']
    for k in range(6):  # the time axis
        x = 160 + (width - 170) * k / 5
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 8}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{top - 10}" font-size="10" text-anchor="middle">'
                     f"{format_duration((t1 - t0) * k / 5 / 1e6)}</text>")
    for i, (name, colour) in enumerate(lanes):
        y = top + i * row
        parts.append(f'<text x="4" y="{y + 16}" font-size="12">{html.escape(name)}</text>')
        for e in (e for e in spans if e.get("cat") == name):
            x = 160 + (e["ts"] - t0) * scale
            w = max(e["dur"] * scale, 1.0)
            label = f"{e.get('name', '')} · {format_duration(e['dur'] / 1e6)}"
            parts.append(f'<rect class="stage" data-stage="{html.escape(name)}" x="{x:.1f}" y="{y + 3}" '
                         f'width="{w:.1f}" height="{row - 8}" fill="{colour}" rx="2">'
                         f"<title>{html.escape(label)}</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report, trace: dict) -> str:
    s = report.summary
    wall = format_duration(s.wall_s)
    rows = "".join(f"<tr><td>{html.escape(stage)}</td><td>{format_duration(secs)}</td><td>{share * 100:.1f} %</td></tr>"
                   for stage, secs, share in report.stages)
    findings = "".join(
        f'<section class="finding {html.escape(f.severity)}"><h3>{i}. {html.escape(f.title)}'
        + (f' <span class="cost">about {lost(f)} lost</span>' if lost(f) else "") + "</h3>"
        f"<p><b>Measured:</b> {html.escape(f.evidence)}</p><p><b>Cause:</b> {html.escape(f.cause)}</p>"
        f"<p><b>Fix:</b> {html.escape(f.fix)}</p></section>"
        for i, f in enumerate(report.findings, 1)) or "<p>None.</p>"
    unchecked = "".join(f"<li>{html.escape(n.title)}: {html.escape(n.why)}</li>" for n in report.not_checked)
    gpu = f"<p>{html.escape(s.gpu)}</p>" if s.gpu else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>StageTrace report {html.escape(s.prompt_id)}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1150px; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }} h3 {{ font-size: 15px; margin: 0 0 6px; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 12px 2px 0; text-align: left; }}
.finding {{ border-left: 4px solid #e67e22; padding: 6px 12px; margin: 10px 0; background: #fbf7f2; }}
.finding.error {{ border-color: #c0392b; background: #fbf2f1; }} .finding.info {{ border-color: #2471a3;
background: #f2f6fb; }} .cost {{ font-weight: normal; color: #a04000; }} p {{ margin: 3px 0; }}
</style></head><body>
<h1>StageTrace report · prompt {html.escape(s.prompt_id)} · {html.escape(s.outcome)} · wall {wall}</h1>
<h2>Timeline</h2>
{_timeline_svg(trace)}
<h2>Time by stage</h2><table><tr><th>stage</th><th>time</th><th>share</th></tr>{rows}</table>{gpu}
<h2>Findings</h2>{findings}
<h2>Not checked</h2><ul>{unchecked or "<li>nothing</li>"}</ul>
</body></html>
"""
