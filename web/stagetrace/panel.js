// StageTrace panel: the view. One DOM tree, built once and re-rendered from plain state; the sidebar tab
// (or the floating box) only hosts it. It renders what the server computed (the /panel and /history
// routes) and computes no figure of its own beyond formatting. Every server string goes in as text.

import { el, formatDelta, formatRate, formatSeconds, formatShare, stageColour } from "./format.js";
import { renderTimeline } from "./timeline.js";

const SEVERITIES = ["error", "warning", "info"]; // in the order findings are listed
const OUTCOME_LABEL = { ok: "ok", error: "failed", interrupted: "interrupted", pending: "pending" };
const PERFETTO_HINT = "Perfetto: ui.perfetto.dev → Open trace file, then pick the trace. " +
  "Nsight Systems: run ComfyUI under ";
const NSYS_HINT = " to see these stages as NVTX ranges above the CUDA kernels.";

// --- Small pieces ----------------------------------------------------------------------------------------

function num(x) {
  return typeof x === "number" && Number.isFinite(x) ? x : null;
}

function str(x) {
  return x === null || x === undefined ? "" : String(x);
}

// The objects of a list from the server ([] for anything else).
function objects(x) {
  return Array.isArray(x) ? x.filter((v) => v && typeof v === "object") : [];
}

function shortId(id) {
  id = str(id);
  return id.length > 13 ? `${id.slice(0, 8)}…` : id;
}

function clockTime(epochS) {
  const t = num(epochS);
  if (t === null) return "";
  try {
    const options = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
    return new Date(t * 1000).toLocaleTimeString([], options);
  } catch {
    return "";
  }
}

function section(title, key, ...children) {
  return el("section", { class: "st-section", "data-section": key }, el("h4", { class: "st-h" }, title), ...children);
}

function swatch(stage) {
  return el("i", { class: "st-swatch", style: { background: stageColour(str(stage)) } });
}

function stageName(stage) {
  return [swatch(stage), el("span", { class: "st-stage-name" }, str(stage))];
}

function pill(outcome) {
  outcome = str(outcome);
  const known = ["ok", "error", "interrupted"].includes(outcome) ? outcome : "other";
  return el("span", { class: `st-outcome st-outcome-${known}` }, OUTCOME_LABEL[outcome] || outcome || "unknown");
}

function nodeLabel(n) {
  return [el("span", { class: "st-node-name" }, str(n.class_type)),
    el("span", { class: "st-dim" }, ` #${str(n.node_id)}`)];
}

function td(cls, ...children) {
  return el("td", { class: cls }, ...children);
}

export class Panel {
  // actions: {nodeClicked(nodeId), loadHistory(force, scope: "workflow" | "all" | undefined), compare(a, b),
  //           showLatest(), fileURL(path)}
  constructor(actions) {
    this.actions = actions;
    this.data = null; // the /panel JSON of the prompt shown
    this.message = "No prompt profiled yet: queue one and its stages show here.";
    this.focusNodeId = null;
    this.history = { status: "idle", runs: [], reason: "", scope: null, picked: [], compare: null };
    this.root = el("div", { class: "st-panel", "data-stagetrace": "panel" });
    this.liveBox = el("div", { class: "st-live", hidden: true });
    this.body = el("div", { class: "st-body" });
    this.notice = el("div", { class: "st-notice", hidden: true });
    this.historyBox = el("div", { class: "st-history-body" });
    this.historyDetails = el("details", { class: "st-section st-history", "data-section": "history",
      ontoggle: () => this.historyDetails.open && this.actions.loadHistory(false) },
    el("summary", { class: "st-h" }, "History"), this.historyBox);
    this.root.append(
      el("header", { class: "st-head" },
        el("span", { class: "st-title" }, "StageTrace"),
        el("span", { class: "st-sub" }, ""),
        el("button", { class: "st-icon-btn st-latest", "aria-label": "Show the latest prompt",
          title: "Show the latest prompt StageTrace recorded (from any client)",
          onclick: () => this.actions.showLatest() }, "↻")),
      this.notice, this.liveBox, this.body, this.historyDetails);
    this.timelineHost = null;
    this.lastWidth = 0;
    this.resize = typeof ResizeObserver === "function" ? new ResizeObserver(() => this.onResize()) : null;
    if (this.resize) this.resize.observe(this.root);
    this.render();
    this.renderHistory();
  }

  // Puts the panel into `host` (a sidebar tab's element or the floating box); idempotent.
  mount(host) {
    if (host && this.root.parentNode !== host) host.appendChild(this.root);
    this.renderTimeline();
  }

  // A sentence for when there is no prompt to show (over a shown prompt: a notice line above it).
  setMessage(text) {
    this.message = text;
    if (!this.data) this.render();
    else this.setNotice(text);
  }

  setNotice(text) {
    this.notice.textContent = text || "";
    this.notice.hidden = !text;
  }

  setData(data) {
    this.setNotice("");
    this.data = data && typeof data === "object" ? data : null;
    if (this.focusNodeId !== null && !this.nodeRow(this.focusNodeId) && !this.cachedRow(this.focusNodeId)) {
      this.focusNodeId = null;
    }
    this.render();
  }

  // Opens the card of one node's stages (null closes it).
  focusNode(nodeId) {
    this.focusNodeId = nodeId === null || nodeId === undefined ? null : String(nodeId);
    this.render();
    this.revealFocus();
  }

  revealFocus() {
    const card = this.root.querySelector(".st-focus");
    if (card) this.reveal(card);
  }

  // Scrolls the panel's own scroll box (the panel, or the sidebar's content box around it; never
  // ComfyUI's page layout) so that `child` is in view.
  reveal(child) {
    let box = null;
    for (let e = this.root, i = 0; e && i < 3 && !box; i += 1, e = e.parentElement) {
      const overflow = getComputedStyle(e).overflowY;
      if ((overflow === "auto" || overflow === "scroll") && e.scrollHeight > e.clientHeight) box = e;
    }
    if (!box || box === document.body || box === document.documentElement) return;
    const top = child.getBoundingClientRect().top - box.getBoundingClientRect().top + box.scrollTop;
    if (top < box.scrollTop || top + child.offsetHeight > box.scrollTop + box.clientHeight) {
      box.scrollTop = Math.max(0, top - 8);
    }
  }

  nodeRow(nodeId) {
    return objects(this.data && this.data.nodes).find((n) => str(n.node_id) === str(nodeId)) || null;
  }

  cachedRow(nodeId) {
    return objects(this.data && this.data.cached).find((n) => str(n.node_id) === str(nodeId)) || null;
  }

  // --- Live ------------------------------------------------------------------------------------------------

  // state: null (nothing running) or {prompt_id, node_id, class_type, stage, step, steps, rate, elapsed_s}.
  setLive(state) {
    const box = this.liveBox;
    box.replaceChildren();
    box.hidden = !state;
    if (!state) return;
    const where = [];
    if (state.class_type || state.node_id) {
      where.push(el("span", { class: "st-live-node" },
        `${str(state.class_type) || "node"}${state.node_id ? ` #${str(state.node_id)}` : ""}`));
    }
    if (state.stage) where.push(el("span", { class: "st-live-stage" }, swatch(state.stage), str(state.stage)));
    const elapsed = num(state.elapsed_s);
    box.append(el("div", { class: "st-live-line" },
      el("span", { class: "st-live-dot" }), el("b", null, "Running"),
      where.length ? el("span", { class: "st-live-where" }, where) : el("span", { class: "st-dim" }, "waiting…"),
      elapsed !== null ? el("span", { class: "st-live-elapsed" }, formatSeconds(elapsed)) : null));
    const step = num(state.step);
    if (step === null) return;
    const steps = num(state.steps);
    const fraction = steps ? Math.max(0, Math.min(1, step / steps)) : 0;
    box.append(
      el("div", { class: "st-progress" },
        el("div", { class: "st-progress-fill", style: { width: `${(fraction * 100).toFixed(1)}%` } })),
      el("div", { class: "st-live-line st-live-steps" },
        el("span", { class: "st-live-step", "data-step": step }, `step ${step}${steps ? ` of ${steps}` : ""}`),
        el("span", { class: "st-live-rate" }, formatRate(num(state.rate)))));
  }

  // --- The prompt's figures ------------------------------------------------------------------------------

  render() {
    const d = this.data;
    const sub = this.root.querySelector(".st-sub");
    sub.textContent = d ? `prompt ${shortId(d.prompt_id)}${d.ended ? ` · ${clockTime(d.ended)}` : ""}` : "";
    sub.title = d ? `prompt ${str(d.prompt_id)}` : "";
    this.timelineHost = null;
    if (!d) {
      this.body.replaceChildren(el("p", { class: "st-empty" }, this.message));
      return;
    }
    const parts = [this.renderSummary(d), this.renderFocus(d), this.renderStages(d), this.renderFindings(d),
      this.renderNodes(d), this.renderTimelineSection(d), this.renderLinks(d)];
    this.body.replaceChildren(...parts.filter(Boolean));
    this.renderTimeline();
  }

  renderSummary(d) {
    const wait = num(d.queue_wait_s);
    const ran = objects(d.nodes).length;
    const cached = objects(d.cached).length;
    return el("div", { class: "st-summary", "data-section": "summary" },
      el("div", { class: "st-wall" },
        el("span", { class: "st-wall-figure", "data-wall": num(d.wall_s) ?? "" }, formatSeconds(num(d.wall_s))),
        pill(d.outcome)),
      el("div", { class: "st-dim" }, "wall time",
        wait !== null ? ` · waited ${formatSeconds(wait)} in the queue` : "",
        ` · ${ran} node${ran === 1 ? "" : "s"} ran`, cached ? ` · ${cached} cached` : ""));
  }

  renderFocus(d) {
    const id = this.focusNodeId;
    if (id === null) return null;
    const row = this.nodeRow(id);
    const close = el("button", { class: "st-icon-btn", title: "Close", "aria-label": "Close",
      onclick: () => this.focusNode(null) }, "×");
    if (!row) {
      const cached = this.cachedRow(id);
      return el("div", { class: "st-focus", "data-node": id },
        el("div", { class: "st-focus-head" },
          el("b", null, `${str(cached && cached.class_type) || "node"} #${id}`), close),
        el("div", { class: "st-dim" },
          cached ? "Served from ComfyUI's cache: it did not run." : "This node did not run in this prompt."));
    }
    const seconds = num(row.seconds);
    const stages = row.stages && typeof row.stages === "object" ? Object.entries(row.stages) : [];
    stages.sort((a, b) => (num(b[1]) ?? 0) - (num(a[1]) ?? 0));
    const findings = objects(d.findings).filter((f) => Array.isArray(f.node_ids) && f.node_ids.map(str).includes(id));
    const gpu = num(row.gpu_busy_fraction);
    const table = el("table", { class: "st-table" }, el("tbody", null, stages.map(([stage, s]) =>
      el("tr", { "data-stage": stage },
        el("td", { class: "st-name", title: stage }, stageName(stage)),
        td("st-num st-time", formatSeconds(num(s))),
        td("st-num st-share st-dim", seconds ? formatShare((num(s) ?? 0) / seconds) : "")))));
    return el("div", { class: "st-focus", "data-node": id },
      el("div", { class: "st-focus-head" }, el("b", null, `${str(row.class_type)} #${str(row.node_id)}`),
        pill(row.outcome), el("span", { class: "st-focus-time" }, formatSeconds(seconds)), close),
      stages.length ? table : el("div", { class: "st-dim" }, "No stage recorded inside this node."),
      gpu !== null ? el("div", { class: "st-dim" }, `GPU busy ${formatShare(gpu)} of its time`) : null,
      findings.map((f) => el("div", { class: "st-focus-finding" }, "⚠ ", str(f.title))));
  }

  renderStages(d) {
    const stages = objects(d.stages).filter((s) => num(s.seconds) !== null);
    if (!stages.length) return section("Time by stage", "stages", el("p", { class: "st-dim" }, "No stage recorded."));
    const inclusive = d.stages_inclusive && typeof d.stages_inclusive === "object" ? d.stages_inclusive : {};
    const labelled = (s) => s.label && s.label !== s.stage;
    const title = (s) => {
      const own = num(s.seconds);
      const whole = num(inclusive[s.stage]);
      const name = labelled(s) ? `${str(s.stage)} (${str(s.label)})` : str(s.stage);
      const inner = whole !== null && Math.abs(whole - own) > 1e-6;
      return `${name}: ${formatSeconds(own)} own time, ${formatShare(num(s.share))} of the prompt` +
        (inner ? `\n${formatSeconds(whole)} including what ran inside it` : "");
    };
    const bar = el("div", { class: "st-stack", role: "img", "aria-label": "time by stage" },
      stages.filter((s) => (num(s.share) ?? 0) > 0).map((s) => el("div", { class: "st-stack-seg",
        "data-stage": str(s.stage), title: title(s),
        style: { flexGrow: String(num(s.share)), background: stageColour(str(s.stage)) } })));
    const table = el("table", { class: "st-table st-stages" }, el("tbody", null, stages.map((s) =>
      el("tr", { "data-stage": str(s.stage), title: title(s) },
        td("st-name", stageName(s.stage),
          labelled(s) ? el("span", { class: "st-dim st-stage-label" }, ` ${str(s.label)}`) : null),
        td("st-num st-time", formatSeconds(num(s.seconds))),
        td("st-num st-share st-dim", formatShare(num(s.share)))))));
    return section("Time by stage", "stages", bar, table);
  }

  renderFindings(d) {
    const findings = objects(d.findings);
    if (!findings.length) {
      return section("Findings", "findings",
        el("p", { class: "st-dim st-none" }, "Nothing to report for this prompt."));
    }
    const severity = (f) => (SEVERITIES.includes(f.severity) ? f.severity : "info");
    const sorted = findings.slice().sort((a, b) => SEVERITIES.indexOf(severity(a)) - SEVERITIES.indexOf(severity(b)));
    const line = (key, label, text) => (text
      ? el("div", { class: `st-finding-row st-${key}` }, el("span", { class: "st-k" }, label), str(text)) : null);
    return section(`Findings (${findings.length})`, "findings", sorted.map((f) => {
      const ids = Array.isArray(f.node_ids) ? f.node_ids.map(str) : [];
      const cost = num(f.cost_s);
      return el("div", { class: `st-finding st-sev-${severity(f)}`, "data-rule": str(f.rule) },
        el("div", { class: "st-finding-title" }, str(f.title), cost !== null && cost > 0
          ? el("span", { class: "st-cost", title: "estimated time lost" }, `≈${formatSeconds(cost)}`) : null),
        line("evidence", "Evidence", f.evidence), line("cause", "Cause", f.cause), line("fix", "Fix", f.fix),
        ids.length ? el("div", { class: "st-finding-nodes" }, ids.map((nodeId) => el("button", { class: "st-chip",
          title: "Show this node", onclick: () => this.actions.nodeClicked(nodeId) }, `#${nodeId}`))) : null);
    }));
  }

  renderNodes(d) {
    const nodes = objects(d.nodes);
    const cached = objects(d.cached);
    if (!nodes.length && !cached.length) return null;
    const wall = num(d.wall_s);
    const row = (n, cls, title, ...cells) => el("tr", { class: `st-node-row ${cls}`, "data-node": str(n.node_id), title,
      onclick: () => this.actions.nodeClicked(str(n.node_id)) }, ...cells);
    const rows = nodes.map((n) => {
      const failed = n.outcome && n.outcome !== "ok";
      const selected = str(n.node_id) === this.focusNodeId ? "st-selected" : "";
      return row(n, selected, `${str(n.class_type)} #${str(n.node_id)}: show its stages`,
        td("st-name", failed ? el("span", { class: "st-tag st-tag-failed" }, OUTCOME_LABEL[n.outcome] || str(n.outcome))
          : null, nodeLabel(n)),
        td("st-num st-time", formatSeconds(num(n.seconds))),
        td("st-num st-share st-dim", wall ? formatShare((num(n.seconds) ?? 0) / wall) : ""));
    });
    for (const n of cached) {
      rows.push(row(n, "st-cached-row", `${str(n.class_type)} #${str(n.node_id)}: served from ComfyUI's cache`,
        td("st-name", nodeLabel(n)), td("st-num st-time st-dim", "cached"), td("st-num st-share")));
    }
    return section("Nodes", "nodes", el("table", { class: "st-table st-nodes" }, el("tbody", null, rows)));
  }

  renderTimelineSection(d) {
    this.timelineHost = el("div", { class: "st-timeline-host" });
    const truncated = d.timeline && d.timeline.truncated
      ? el("div", { class: "st-dim" }, "Shortened: the shortest spans are left out here; the trace file has them all.")
      : null;
    const gpuLine = d.gpu && d.gpu.line
      ? el("div", { class: "st-gpu-line", "data-section": "gpu" }, swatch("gpu"), str(d.gpu.line)) : null;
    return section("Timeline", "timeline", this.timelineHost, truncated, gpuLine);
  }

  renderTimeline() {
    const host = this.timelineHost;
    if (!host || !this.data) return;
    const width = host.clientWidth || this.root.clientWidth;
    if (!width) return; // not shown yet: drawn when it gets a size
    this.lastWidth = width;
    const picture = renderTimeline(this.data, width - 2, this.focusNodeId, (id) => this.actions.nodeClicked(id));
    host.replaceChildren(picture || el("p", { class: "st-dim" }, "No spans recorded."));
  }

  onResize() {
    try {
      const host = this.timelineHost;
      const width = host ? host.clientWidth : 0;
      if (width && Math.abs(width - this.lastWidth) > 8) this.renderTimeline();
    } catch {
      // drawn again with the next prompt
    }
  }

  renderLinks(d) {
    const links = d.links && typeof d.links === "object" ? d.links : {};
    const ours = (link) => typeof link === "string" && link.startsWith("/stagetrace/"); // never another scheme
    const link = (key, text, extra) => el("a", { class: "st-link", href: this.actions.fileURL(links[key]),
      target: "_blank", rel: "noopener", "data-link": key, ...extra }, text);
    const items = [
      ours(links.report) ? link("report", "Full report") : null,
      ours(links.trace) ? link("trace", "Trace file", { download: `stagetrace-${str(d.prompt_id)}.trace.json` }) : null,
    ].filter(Boolean);
    return section("Open", "links",
      items.length ? el("div", { class: "st-links" }, items)
        : el("p", { class: "st-dim" }, "No files for this prompt."),
      el("p", { class: "st-hint" }, PERFETTO_HINT, el("code", null, "nsys profile -t cuda,nvtx"), NSYS_HINT));
  }

  // --- History ---------------------------------------------------------------------------------------------

  // patch of {status: "idle"|"loading"|"off"|"error"|"ok", runs, reason, scope, picked: [ids], compare}
  setHistory(patch) {
    this.history = { ...this.history, ...patch };
    this.renderHistory();
  }

  renderHistory() {
    const h = this.history;
    const box = this.historyBox;
    box.replaceChildren();
    const refresh = el("button", { class: "st-btn", onclick: () => this.actions.loadHistory(true) }, "Refresh");
    if (h.status === "idle" || h.status === "loading") {
      box.append(el("p", { class: "st-dim" }, "Loading the recent runs…"));
      return;
    }
    if (h.status === "off") {
      box.append(el("p", { class: "st-dim st-history-off" }, `History is off${h.reason ? `: ${h.reason}` : "."}`));
      return;
    }
    if (h.status === "error") {
      box.append(el("p", { class: "st-dim" }, `History could not be read: ${str(h.reason)}`), refresh);
      return;
    }
    const scopeLink = (text, scope) => el("button", { class: "st-linkbtn",
      onclick: () => this.actions.loadHistory(true, scope) }, text);
    const workflow = this.data && this.data.workflow_id;
    const scope = h.scope
      ? el("div", { class: "st-dim st-history-scope" }, `Runs of this workflow (${shortId(h.scope)}) · `,
        scopeLink("all runs", "all"))
      : el("div", { class: "st-dim st-history-scope" }, "All recent runs",
        workflow ? [" · ", scopeLink("this workflow's", "workflow")] : null);
    box.append(el("div", { class: "st-history-head" }, scope, refresh));
    const runs = objects(h.runs);
    if (!runs.length) {
      box.append(el("p", { class: "st-dim" }, "No run recorded yet."));
      return;
    }
    box.append(el("div", { class: "st-dim" }, "Tick two runs to compare them stage by stage."),
      el("table", { class: "st-table st-runs" }, el("tbody", null, runs.map((r) => this.renderRun(r)))));
    if (h.compare) box.append(this.renderCompare(h.compare));
  }

  renderRun(r) {
    const id = str(r.prompt_id);
    const stages = r.stages && typeof r.stages === "object" ? Object.entries(r.stages) : [];
    // the biggest stage inside the nodes ("prompt" and "node" hold everything else)
    const top = stages.filter(([s]) => s !== "prompt" && s !== "node")
      .sort((a, b) => (num(b[1]) ?? 0) - (num(a[1]) ?? 0))[0];
    const tick = el("input", { type: "checkbox", "aria-label": `compare ${id}` });
    tick.checked = this.history.picked.includes(id);
    tick.addEventListener("change", () => this.pick(id, tick.checked));
    const shown = id === str(this.data && this.data.prompt_id);
    return el("tr", { "data-prompt": id, class: shown ? "st-selected" : "" },
      td("st-pick", tick),
      el("td", { class: "st-when st-dim", title: id }, clockTime(r.ended) || shortId(id)),
      td("st-num st-time", formatSeconds(num(r.wall_s))),
      td("st-run-outcome", pill(r.outcome)),
      el("td", { class: "st-name st-dim", title: top ? `biggest stage: ${top[0]}` : "" },
        top ? `${top[0]} ${formatSeconds(num(top[1]))}` : ""));
  }

  pick(id, on) {
    let picked = this.history.picked.filter((p) => p !== id);
    if (on) picked = [...picked, id].slice(-2);
    this.history = { ...this.history, picked, compare: null };
    this.renderHistory();
    if (picked.length === 2) this.actions.compare(picked[0], picked[1]);
  }

  renderCompare(c) {
    if (c.error) return el("p", { class: "st-dim" }, `Comparison failed: ${str(c.error)}`);
    const row = (name, f, cls) => {
      const diff = num(f && f.difference);
      const ratio = num(f && f.ratio);
      const trend = diff > 0 ? "st-worse" : diff < 0 ? "st-better" : "";
      return el("tr", { class: cls || "", "data-stage": name },
        el("td", { class: "st-name", title: name }, name === "wall" ? el("b", null, "wall") : stageName(name)),
        td("st-num st-time", formatSeconds(num(f && f.a))),
        td("st-num st-time", formatSeconds(num(f && f.b))),
        td(`st-num st-delta ${trend}`, formatDelta(diff)),
        td("st-num st-ratio st-dim", ratio === null ? "" : `×${ratio.toFixed(2)}`));
    };
    const run = (x) => clockTime(x && x.ended) || shortId(x && x.prompt_id);
    const th = (cls, text) => el("th", { class: cls }, text);
    return el("div", { class: "st-compare", "data-section": "compare" },
      el("div", { class: "st-dim" }, `A ${run(c.a)} against B ${run(c.b)}`,
        c.same_workflow === false ? " (different workflows)" : ""),
      el("table", { class: "st-table" },
        el("thead", null, el("tr", null, th("st-name", "stage"), th("st-num st-time", "A"), th("st-num st-time", "B"),
          th("st-num st-delta", "A − B"), th("st-num st-ratio", "A / B"))),
        el("tbody", null, row("wall", c.wall, "st-wall-row"),
          objects(c.stages).filter((s) => s.stage).map((s) => row(str(s.stage), s)))));
  }
}
