// StageTrace panel: the timeline of one prompt as an SVG — the prompt, its nodes, each stage, each
// denoising step and (when recorded) the GPU's busy windows, one lane each, on one time axis with ticks in
// the unit that fits. Names go on the bars when they fit; every bar's <title> carries its figures.

import { FAILED_COLOUR, fitText, formatSeconds, formatShare, stageColour, svg, timeTicks } from "./format.js";

// The lanes in the order of a prompt's flow (the panel route's lanes); unknown lanes follow, then gpu.
const LANE_ORDER = ["node", "model_load.read", "model_load.build", "model_load.to_device", "text_encode", "sample",
  "sample.step", "vae_decode", "vae_encode", "save"];
const LABEL_W_WIDE = 126; // the lane-name column; narrower, with short names, in a narrow panel
const LABEL_W_NARROW = 62;
const NARROW_PX = 380;
const SHORT_NAMES = { "model_load.read": "load read", "model_load.build": "load build",
  "model_load.to_device": "to device", text_encode: "text enc", "sample.step": "steps", vae_decode: "vae dec",
  vae_encode: "vae enc" };
const AXIS_H = 20;
const LANE_H = 17;
const LANE_GAP = 3;
const CHAR_W = 5.8; // about one character of the 10 px bar font
const MIN_PLOT_W = 120;

// Dark text on light bars, white on dark ones.
function textColour(hex) {
  const m = /^#([0-9a-f]{6})$/i.exec(hex);
  if (!m) return "#fff";
  const v = parseInt(m[1], 16);
  const lum = (0.299 * ((v >> 16) & 255) + 0.587 * ((v >> 8) & 255) + 0.114 * (v & 255)) / 255;
  return lum > 0.62 ? "#111" : "#fff";
}

function laneName(lane, narrow) {
  if (lane === "sample.step") return "steps";
  return narrow && SHORT_NAMES[lane] ? SHORT_NAMES[lane] : lane;
}

function finiteOr(x, fallback) {
  return typeof x === "number" && Number.isFinite(x) ? x : fallback;
}

// The timeline of `data` (the panel route's JSON) as an <svg> `width` pixels wide. `focusNodeId` (or
// null) outlines that node's bars; `onNodeClick(nodeId)` is called when a bar of a node is clicked.
// Returns null when there is nothing to draw.
export function renderTimeline(data, width, focusNodeId, onNodeClick) {
  const timeline = data && typeof data.timeline === "object" && data.timeline ? data.timeline : {};
  const spans = Array.isArray(timeline.spans) ? timeline.spans.filter((s) => s && typeof s === "object") : [];
  const gpuWindows = data && data.gpu && Array.isArray(data.gpu.windows) ? data.gpu.windows : [];
  let wallMs = finiteOr(timeline.wall_ms, 0);
  for (const s of spans) wallMs = Math.max(wallMs, finiteOr(s.t_ms, 0) + finiteOr(s.dur_ms, 0));
  if (wallMs <= 0 || (!spans.length && !gpuWindows.length)) return null;

  const present = new Set(spans.map((s) => String(s.lane)));
  const lanes = ["prompt", ...LANE_ORDER.filter((l) => present.has(l)),
    ...[...present].filter((l) => !LANE_ORDER.includes(l) && l !== "prompt" && l !== "gpu")];
  if (gpuWindows.length) lanes.push("gpu");

  const narrow = width < NARROW_PX;
  const labelW = narrow ? LABEL_W_NARROW : LABEL_W_WIDE;
  const plotW = Math.max(MIN_PLOT_W, Math.floor(width) - labelW - 10);
  const totalW = labelW + plotW + 10;
  const height = AXIS_H + lanes.length * (LANE_H + LANE_GAP) + 4;
  const x = (ms) => labelW + (Math.max(0, Math.min(ms, wallMs)) / wallMs) * plotW;
  const laneY = (lane) => AXIS_H + lanes.indexOf(lane) * (LANE_H + LANE_GAP);

  const root = svg("svg", { class: "st-timeline", width: totalW, height, viewBox: `0 0 ${totalW} ${height}`,
    role: "img", "aria-label": `timeline of prompt ${data.prompt_id ?? ""}` });

  // Axis: ticks across every lane.
  for (const tick of timeTicks(wallMs, plotW)) {
    const tx = x(tick.ms);
    root.appendChild(svg("line", { class: "st-tl-grid", x1: tx, x2: tx, y1: AXIS_H - 4, y2: height - 2 }));
    const anchor = tick.ms === 0 ? "start" : tx > labelW + plotW - 24 ? "end" : "middle";
    root.appendChild(svg("text", { class: "st-tl-tick", x: tx, y: AXIS_H - 8, "text-anchor": anchor }, tick.label));
  }

  // Lane names and backgrounds.
  for (const lane of lanes) {
    const y = laneY(lane);
    root.appendChild(svg("rect", { class: "st-tl-lane", x: labelW, y, width: plotW, height: LANE_H, rx: 2 }));
    root.appendChild(svg("text", { class: "st-tl-lane-name", x: labelW - 6, y: y + LANE_H / 2 + 3.5,
      "text-anchor": "end" }, fitText(laneName(lane, narrow), Math.floor((labelW - 8) / CHAR_W)),
    svg("title", null, lane === "sample.step" ? "sample.step: each denoising step" : lane)));
  }

  const bar = (lane, t, dur, label, title, colour, extra) => {
    const y = laneY(lane);
    const bx = x(t);
    const bw = Math.max(1, x(t + dur) - bx);
    const cls = ["st-tl-bar", extra && extra.cls].filter(Boolean).join(" ");
    const g = svg("g", { class: cls, "data-lane": lane, "data-node": extra && extra.nodeId });
    g.appendChild(svg("rect", { x: bx, y, width: bw, height: LANE_H, rx: 2, fill: colour,
      "fill-opacity": extra && extra.opacity !== undefined ? extra.opacity : 1 }));
    const text = bw > 18 ? fitText(label, Math.floor((bw - 6) / CHAR_W)) : "";
    if (text) {
      g.appendChild(svg("text", { class: "st-tl-label", x: bx + 3, y: y + LANE_H / 2 + 3.5,
        fill: textColour(colour) }, text));
    }
    g.appendChild(svg("title", null, title));
    if (extra && extra.nodeId && onNodeClick) {
      g.addEventListener("click", () => onNodeClick(extra.nodeId));
    }
    root.appendChild(g);
  };

  const outcome = data.outcome ? String(data.outcome) : "";
  bar("prompt", 0, wallMs, `prompt · ${formatSeconds(wallMs / 1000)}`,
    `prompt ${data.prompt_id ?? ""}\n${formatSeconds(wallMs / 1000)} wall${outcome ? `, ${outcome}` : ""}`,
    outcome && outcome !== "ok" ? FAILED_COLOUR : stageColour("prompt"));

  let step = 0;
  const ordered = spans.slice().sort((a, b) => finiteOr(a.t_ms, 0) - finiteOr(b.t_ms, 0));
  for (const s of ordered) {
    const lane = String(s.lane);
    const t = finiteOr(s.t_ms, 0);
    const dur = finiteOr(s.dur_ms, 0);
    const nodeId = s.node_id === null || s.node_id === undefined ? null : String(s.node_id);
    const failed = s.outcome && s.outcome !== "ok" && s.outcome !== "cached";
    const colour = lane === "node" && failed ? FAILED_COLOUR : stageColour(lane);
    const focus = focusNodeId !== null && focusNodeId !== undefined && nodeId === String(focusNodeId);
    let label = String(s.label ?? lane);
    let title = `${label}\n${lane}: ${formatSeconds(dur / 1000)} from ${formatSeconds(t / 1000)}`;
    if (lane === "sample.step") {
      step += 1;
      label = String(step);
      title = `step ${step}: ${formatSeconds(dur / 1000)} from ${formatSeconds(t / 1000)}`;
    }
    if (nodeId !== null && lane !== "node") title += `\nin node #${nodeId}`;
    if (failed) title += `\n${s.outcome}`;
    bar(lane, t, dur, label, title, colour, { nodeId, cls: focus ? "st-tl-focus" : null });
  }

  for (const w of gpuWindows) {
    if (!w || typeof w !== "object") continue;
    const busy = finiteOr(w.busy_fraction, null);
    const t = finiteOr(w.t_ms, 0);
    const dur = finiteOr(w.dur_ms, 0);
    const share = busy === null ? "–" : formatShare(busy);
    bar("gpu", t, dur, busy === null ? "" : share,
      `GPU busy ${share} of ${formatSeconds(dur / 1000)} from ${formatSeconds(t / 1000)}`,
      stageColour("gpu"), { opacity: busy === null ? 0.5 : 0.25 + 0.75 * Math.max(0, Math.min(1, busy)) });
  }
  return root;
}
