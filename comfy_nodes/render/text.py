"""Plain-text rendering for the console: the summary of a prompt."""

from __future__ import annotations

from ..analysis.summary import EXCLUSIVE_LABELS, TOP_NODES, Summary
from ..core.units import format_duration, format_share


def format_line(s: Summary, first_finding: str | None = None) -> str:
    """The one console line a prompt gets by default: outcome, wall time, the stage that took the most of it,
    the first finding, and where the trace is."""
    parts = [f"StageTrace · prompt {s.prompt_id} · {s.outcome} in {format_duration(s.wall_s)}"]
    named = {k: v for k, v in s.exclusive_s.items() if k not in EXCLUSIVE_LABELS}
    if named:
        stage, secs = max(named.items(), key=lambda kv: kv[1])
        parts.append(f"most in {stage} {format_duration(secs)} ({format_share(secs, s.wall_s).strip()})")
    if first_finding:
        parts.append(first_finding)
    if s.trace_path:
        parts.append(s.trace_path)
    return " · ".join(parts)


def format_text(s: Summary) -> str:
    """The console summary: wall time, each stage's own time (the shares add to 100 %), slowest nodes, cached
    nodes."""
    head = f"StageTrace · prompt {s.prompt_id} · {s.outcome} · wall {format_duration(s.wall_s)}"
    if s.queue_wait_s is not None:
        head += f" · queue wait {format_duration(s.queue_wait_s)}"
    lines = [head, f"  {'stage (its own time)':<32}{'time':>12}{'share':>9}"]
    for stage, secs in s.exclusive_s.items():
        label = f"({EXCLUSIVE_LABELS[stage]})" if stage in EXCLUSIVE_LABELS else stage
        lines.append(f"  {label:<32}{format_duration(secs):>12}{format_share(secs, s.wall_s):>9}")
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
