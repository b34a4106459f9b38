// StageTrace panel: the vocabulary shared by the panel, the timeline and the badges — stage colours (the
// HTML report's), time formatting in units that fit, and two DOM builders that only ever set text through
// textContent / attributes (no innerHTML: every string from the server is data, never markup).

// The HTML report's colours (comfy_nodes/render/report.py), so a stage looks the same everywhere.
export const STAGE_COLOURS = {
  prompt: "#5b7083",
  node: "#8a8f98",
  "model_load.read": "#c0392b",
  "model_load.build": "#e67e22",
  "model_load.to_device": "#d4ac0d",
  text_encode: "#16a085",
  sample: "#2471a3",
  "sample.step": "#5dade2",
  vae_decode: "#7d3c98",
  vae_encode: "#a569bd",
  save: "#27ae60",
  gpu: "#1e8449",
};
const OTHER_COLOUR = "#b4b9c1";

export const FAILED_COLOUR = "#e74c3c";
export const CACHED_COLOUR = "#566573";

// The colour of a stage; an unknown stage gets a neutral grey. This function can't fail.
export function stageColour(stage) {
  return Object.prototype.hasOwnProperty.call(STAGE_COLOURS, stage) ? STAGE_COLOURS[stage] : OTHER_COLOUR;
}

function finite(x) {
  return typeof x === "number" && Number.isFinite(x);
}

// Seconds as a short human figure: "0.42 ms", "34.2 ms", "342 ms", "1.23 s", "12.3 s", "2 min 05 s",
// "1 h 02 min"; "–" for anything that is not a finite number. This function can't fail.
export function formatSeconds(s) {
  if (!finite(s)) return "–";
  const sign = s < 0 ? "-" : "";
  s = Math.abs(s);
  if (s < 1) {
    const ms = s * 1000;
    if (ms < 10) return `${sign}${ms.toFixed(2)} ms`;
    if (ms < 100) return `${sign}${ms.toFixed(1)} ms`;
    return `${sign}${Math.round(ms)} ms`;
  }
  if (s < 10) return `${sign}${s.toFixed(2)} s`;
  if (s < 60) return `${sign}${s.toFixed(1)} s`;
  if (s < 3600) {
    const m = Math.floor(s / 60);
    return `${sign}${m} min ${String(Math.floor(s - m * 60)).padStart(2, "0")} s`;
  }
  const h = Math.floor(s / 3600);
  return `${sign}${h} h ${String(Math.floor((s - h * 3600) / 60)).padStart(2, "0")} min`;
}

// A difference in seconds with its sign: "+1.20 s", "-340 ms", "±0". This function can't fail.
export function formatDelta(s) {
  if (!finite(s)) return "–";
  if (s === 0) return "±0";
  return (s > 0 ? "+" : "") + formatSeconds(s);
}

// A share (0..1) as a percentage: "42 %", "3.5 %", "<0.1 %". This function can't fail.
export function formatShare(x) {
  if (!finite(x)) return "–";
  const p = x * 100;
  if (p > 0 && p < 0.1) return "<0.1 %";
  return `${p < 10 ? p.toFixed(1) : Math.round(p)} %`;
}

// A rate in steps a second: "8.3 it/s", or "2.4 s/it" when slower than one a second. This function
// can't fail.
export function formatRate(r) {
  if (!finite(r) || r <= 0) return "";
  return r >= 1 ? `${r.toFixed(r < 10 ? 1 : 0)} it/s` : `${(1 / r).toFixed(1)} s/it`;
}

// Time axis ticks for a span of `wallMs` drawn over `widthPx` pixels: [{ms, label}] at the finest
// 1/2/5 x 10^k step (whole seconds and minutes beyond 2 min) whose labels do not collide, labelled in the
// unit that fits the whole span (ms under 2 s, s under 2 min, m:ss beyond, h:mm:ss past an hour). This
// function can't fail.
export function timeTicks(wallMs, widthPx) {
  if (!finite(wallMs) || wallMs <= 0 || !finite(widthPx) || widthPx <= 0) return [];
  let candidates;
  if (wallMs >= 120000) {
    candidates = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400].map((s) => s * 1000);
  } else {
    candidates = [];
    for (let k = Math.floor(Math.log10(wallMs)) - 3; k <= Math.floor(Math.log10(wallMs)) + 1; k += 1) {
      for (const m of [1, 2, 5]) candidates.push(m * Math.pow(10, k));
    }
  }
  const label = (t, step) => {
    if (wallMs < 2000) return `${+t.toFixed(Math.max(0, -Math.floor(Math.log10(step))))} ms`;
    if (wallMs < 120000) return `${(t / 1000).toFixed(Math.max(0, -Math.floor(Math.log10(step / 1000))))} s`;
    const total = Math.round(t / 1000);
    const two = (n) => String(n).padStart(2, "0");
    if (wallMs >= 3600000) return `${Math.floor(total / 3600)}:${two(Math.floor(total / 60) % 60)}:${two(total % 60)}`;
    return `${Math.floor(total / 60)}:${two(total % 60)}`;
  };
  for (const step of candidates) {
    const n = Math.floor(wallMs / step + 1e-9);
    if (n > 60) continue;
    const ticks = [];
    for (let i = 0; i <= n; i += 1) ticks.push({ ms: i * step, label: label(i * step, step) });
    const widest = Math.max(...ticks.map((t) => t.label.length)) * 6 + 24;
    if ((step / wallMs) * widthPx >= widest) return ticks;
  }
  return [{ ms: 0, label: label(0, wallMs) }];
}

// A text shortened to about `maxChars` characters with an ellipsis ("" when nothing fits). This
// function can't fail.
export function fitText(text, maxChars) {
  text = String(text ?? "");
  if (maxChars < 2) return "";
  return text.length <= maxChars ? text : text.slice(0, Math.max(1, maxChars - 1)) + "…";
}

// An HTML element: el("div", {class: "x", title: "t", onclick: fn}, child, "text", ...). Attributes
// are set with setAttribute (on* keys become listeners); string children become text nodes, null and
// false children are skipped. Never parses markup.
export function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

const SVG_NS = "http://www.w3.org/2000/svg";

// An SVG element, built like el().
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "style" && typeof value === "object") Object.assign(node.style, value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  return node;
}
