"""Plain-text rendering for the console: the summary of a prompt."""

from __future__ import annotations

from ..analysis.summary import TOP_NODES, Summary
from ..core.units import format_duration, format_share


def format_text(s: Summary) -> str:
    """The console summary: wall time, time per stage, slowest nodes, cached nodes."""
    head = f"StageTrace · prompt {s.prompt_id} · {s.outcome} · wall {format_duration(s.wall_s)}"
    if s.queue_wait_s is not None:
        head += f" · queue wait {format_duration(s.queue_wait_s)}"
    lines = [head, f"  {'stage':<32}{'time':>12}{'share':>9}"]
    for stage, secs in s.stage_s.items():
        if stage != "prompt":
            lines.append(f"  {stage:<32}{format_duration(secs):>12}{format_share(secs, s.wall_s):>9}")
    if "node" in s.stage_s:
        outside = max(0.0, s.wall_s - s.stage_s["node"])
        lines.append(f"  {'(outside nodes)':<32}{format_duration(outside):>12}{format_share(outside, s.wall_s):>9}")
    if s.nodes:
        lines.append("  slowest nodes:")
        for n in s.nodes[:TOP_NODES]:
            mark = "" if n.outcome == "ok" else f"  [{n.outcome}]"
            label = f"{n.class_type} #{n.node_id}"
            label = label if len(label) <= 30 else label[:29] + "…"
            lines.append(f"    {label:<30}{format_duration(n.seconds):>12}{format_share(n.seconds, s.wall_s):>9}{mark}")
    if s.cached:
        names = ", ".join(f"{n.class_type} #{n.node_id}" for n in s.cached)
        lines.append(f"  cached: {len(s.cached)} node{'s' if len(s.cached) != 1 else ''} ({names})")
    if s.gpu:
        lines.append(f"  {s.gpu}")
    for warning in s.warnings:
        lines.append(f"  warning: {warning}")
    for failure in s.failures:
        lines.append(f"  {failure}")
    if s.trace_path:
        lines.append(f"  trace: {s.trace_path} ({s.events} events, {s.dropped} dropped)")
    elif s.dropped:
        lines.append(f"  {s.dropped} events dropped (buffers full)")
    return "\n".join(lines)
