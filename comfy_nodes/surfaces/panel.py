"""The data of ComfyUI's StageTrace panel for one prompt (``GET /stagetrace/prompts/{id}/panel``), built from
its trace and diagnosis: the stage split, the findings with the nodes they are about, each node's time and
stages, a bounded timeline, the step times, the GPU windows and the links.

The timeline keeps at most ``MAX_SPANS`` spans: nodes and stages first, then steps; beyond that the shortest
spans of the busiest lanes are left out and ``truncated`` says so (the trace has them all)."""

from __future__ import annotations

from ..analysis.summary import EXCLUSIVE_LABELS

MAX_SPANS = 2000
LANES = ("node", "model_load.read", "model_load.build", "model_load.to_device", "text_encode", "sample",
         "sample.step", "vae_decode", "vae_encode", "save")
# The stage a rule is about, for the rules whose figures name no node: the node holding that stage's first
# span (for vae-tiled, the span that fell back to tiles) gets the finding's mark.
RULE_STAGE = {"vae-tiled": "vae_decode", "slow-read": "model_load.read", "partial-offload": "sample",
              "cpu-sampling": "sample", "fp8-no-compute": "sample", "step-rate": "sample", "gpu-idle": "sample",
              "memory-pressure": "sample", "reloaded": "model_load.read", "warmup": "model_load.read",
              "regression": None}


def _spans(trace: dict) -> tuple[dict | None, list[dict]]:
    prompt, spans = None, []
    for ev in trace.get("traceEvents") or ():
        if ev.get("ph") != "X" or not isinstance(ev.get("ts"), (int, float)) or not isinstance(ev.get("dur"),
                                                                                                (int, float)):
            continue
        if ev.get("cat") == "prompt" and ev.get("name") == "prompt" and prompt is None:
            prompt = ev
        elif ev.get("cat") in LANES or ev.get("cat") == "gpu":
            spans.append(ev)
    return prompt, spans


def _node_of(node_spans: list[dict], ev: dict) -> str | None:
    """The id of the node span that contains ev (the innermost), or None."""
    t0, t1 = ev["ts"], ev["ts"] + ev["dur"]
    best = None
    for n in node_spans:
        if n["ts"] <= t0 and t1 <= n["ts"] + n["dur"] and (best is None or n["dur"] <= best["dur"]):
            best = n
    return None if best is None else str((best.get("args") or {}).get("node_id"))


def panel_data(trace: dict, report, base_url: str, findings: list[dict] | None = None) -> dict:
    """The panel's JSON for one prompt; report is diagnose(trace); findings, when given, are the ones the
    writer thread's report holds (with what only it knew: the run history's regression finding)."""
    s = report.summary
    prompt, spans = _spans(trace)
    origin = prompt["ts"] if prompt is not None else min((e["ts"] for e in spans), default=0.0)
    node_spans = [e for e in spans if e.get("cat") == "node" and e["dur"] > 0]
    stage_spans = [e for e in spans if e.get("cat") not in ("node", "gpu")]
    gpu_spans = [e for e in spans if e.get("cat") == "gpu"]

    nodes: dict[str, dict] = {}
    for n in node_spans:
        args = n.get("args") or {}
        node_id = str(args.get("node_id"))
        row = nodes.setdefault(node_id, {"node_id": node_id, "class_type": str(n.get("name")), "seconds": 0.0,
                                         "outcome": args.get("outcome", "ok"), "stages": {}, "gpu_busy_ms": 0.0})
        row["seconds"] += n["dur"] / 1e6
    for ev in stage_spans:
        node_id = _node_of(node_spans, ev)
        if node_id in nodes and ev.get("cat") != "sample.step":
            stages = nodes[node_id]["stages"]
            stages[ev["cat"]] = stages.get(ev["cat"], 0.0) + ev["dur"] / 1e6
    for ev in gpu_spans:
        node_id = _node_of(node_spans, ev)
        if node_id in nodes:
            nodes[node_id]["gpu_busy_ms"] += float((ev.get("args") or {}).get("busy_ms") or 0.0)
    for row in nodes.values():
        busy = row.pop("gpu_busy_ms")
        row["gpu_busy_fraction"] = (busy / 1e3 / row["seconds"]) if gpu_spans and row["seconds"] > 0 else None

    marked = []
    for f in findings if findings is not None else [f.to_dict() for f in report.findings]:
        if not isinstance(f, dict):
            continue
        node_ids = []
        figures = f.get("figures") if isinstance(f.get("figures"), dict) else {}
        if figures.get("node_id") is not None:
            node_ids.append(str(figures["node_id"]))
        else:
            stage = RULE_STAGE.get(f.get("rule"))
            candidates = [e for e in stage_spans if e.get("cat") == stage]
            if f.get("rule") == "vae-tiled":
                candidates = [e for e in candidates if (e.get("args") or {}).get("tiled_fallback")] or candidates
            if candidates:
                node_id = _node_of(node_spans, candidates[0])
                if node_id is not None:
                    node_ids.append(node_id)
        marked.append({key: f.get(key) for key in ("rule", "severity", "title", "evidence", "cause", "fix", "cost_s")}
                      | {"node_ids": node_ids})

    timeline, truncated = [], False
    ordered = sorted(node_spans + stage_spans, key=lambda e: (e.get("cat") == "sample.step", -e["dur"]))
    if len(ordered) > MAX_SPANS:
        ordered, truncated = ordered[:MAX_SPANS], True
    for ev in sorted(ordered, key=lambda e: e["ts"]):
        args = ev.get("args") or {}
        lane = ev.get("cat")
        label = f"{ev.get('name')} #{args.get('node_id')}" if lane == "node" else str(ev.get("name"))
        timeline.append({"lane": lane, "label": label, "node_id": _node_of(node_spans, ev) if lane != "node" else
                         str(args.get("node_id")), "t_ms": (ev["ts"] - origin) / 1e3, "dur_ms": ev["dur"] / 1e3,
                         "outcome": args.get("outcome", "ok")})
    steps = [{"step": i + 1, "ms": e["dur"] / 1e3} for i, e in
             enumerate(sorted((e for e in stage_spans if e.get("cat") == "sample.step"), key=lambda e: e["ts"]))]
    gpu = None
    if s.gpu or gpu_spans:
        gpu = {"line": s.gpu, "windows": [{"t_ms": (e["ts"] - origin) / 1e3, "dur_ms": e["dur"] / 1e3,
                                           "busy_fraction": (e.get("args") or {}).get("busy_fraction")}
                                          for e in gpu_spans[:MAX_SPANS]]}
    other = trace.get("otherData") if isinstance(trace.get("otherData"), dict) else {}
    return {
        "prompt_id": s.prompt_id, "outcome": s.outcome, "wall_s": s.wall_s, "queue_wait_s": s.queue_wait_s,
        "workflow_id": other.get("workflow_id"),
        "ended": other.get("ended"),
        "stages": [{"stage": stage, "seconds": secs, "share": share, "label": EXCLUSIVE_LABELS.get(stage, stage)}
                   for stage, secs, share in report.stages],
        "stages_inclusive": dict(s.stage_s),
        "findings": marked,
        "nodes": sorted(nodes.values(), key=lambda r: r["seconds"], reverse=True),
        "cached": [{"node_id": n.node_id, "class_type": n.class_type} for n in s.cached],
        "timeline": {"wall_ms": s.wall_s * 1e3, "spans": timeline, "truncated": truncated},
        "steps": steps,
        "gpu": gpu,
        "links": {"report": f"{base_url}/report.html", "trace": f"{base_url}/trace"},
    }
