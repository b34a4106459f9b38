// StageTrace panel: time badges on the canvas's nodes after a run — "1.23 s" on a node that ran, "cached"
// on one ComfyUI's cache served, "failed" in red, and a warning mark on a node a finding is about.
//
// Drawn through the frontend's node badge list (LGraphNode.badges: LGraphBadge objects or functions
// returning one, drawn above the title bar) with a function that looks the node's id up at draw time, so
// nodes loaded after the run get their badge too. Where a frontend has no badge list, the node's
// onDrawForeground is chained instead. A click on a badge (hit-tested against the area it was last drawn
// at) calls onClick(nodeId). Only nodes of the root graph carry badges: a prompt's node ids are the root
// graph's (a subgraph's nodes run under "outer:inner" ids).

import { CACHED_COLOUR, FAILED_COLOUR } from "./format.js";

const FONT_PX = 12;
const HEIGHT = 20;
const PAD = 6;
const WARN = "⚠";
const WARN_COLOUR = "#f5b041";
const KIND_STYLE = {
  time: { bg: "#1b3a57", fg: "#d6eaf8" },
  cached: { bg: CACHED_COLOUR, fg: "#e5e8eb" },
  failed: { bg: FAILED_COLOUR, fg: "#ffffff" },
  interrupted: { bg: "#9a6b00", fg: "#ffffff" },
};
const ATTACHED = Symbol("stagetrace badge");

// The node of `graph` with the prompt's node id `id` (the graph's ids are numbers, a prompt's strings), or
// null. This function can't fail.
export function graphNode(graph, id) {
  try {
    if (!graph || typeof graph.getNodeById !== "function") return null;
    return graph.getNodeById(Number(id)) ?? graph.getNodeById(id) ?? null;
  } catch {
    return null;
  }
}

// The badge of one node: duck-typed like LGraphBadge (visible, height, getWidth(ctx), draw(ctx, x, y)),
// recording where it was drawn (node-local) for the click test.
class NodeBadge {
  constructor(info) {
    this.stagetrace = info; // {nodeId, text, kind, warnings: [titles]}: what tests and tools read
    this.height = HEIGHT;
    this.area = null;
  }

  get visible() {
    return !!this.stagetrace;
  }

  getWidth(ctx) {
    if (!this.visible) return 0;
    const font = ctx.font;
    ctx.font = `${FONT_PX}px sans-serif`;
    let w = ctx.measureText(this.stagetrace.text).width + PAD * 2;
    if (this.stagetrace.warnings.length) w += ctx.measureText(WARN).width + 4;
    ctx.font = font;
    return w;
  }

  draw(ctx, x, y) {
    if (!this.visible) return;
    const { font, fillStyle, textBaseline, textAlign } = ctx;
    const w = this.getWidth(ctx);
    const style = KIND_STYLE[this.stagetrace.kind] || KIND_STYLE.time;
    ctx.font = `${FONT_PX}px sans-serif`;
    ctx.fillStyle = style.bg;
    ctx.beginPath();
    if (ctx.roundRect) ctx.roundRect(x, y, w, HEIGHT, 5);
    else ctx.rect(x, y, w, HEIGHT);
    ctx.fill();
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    let tx = x + PAD;
    if (this.stagetrace.warnings.length) {
      ctx.fillStyle = WARN_COLOUR;
      ctx.fillText(WARN, tx, y + HEIGHT / 2 + 1);
      tx += ctx.measureText(WARN).width + 4;
    }
    ctx.fillStyle = style.fg;
    ctx.fillText(this.stagetrace.text, tx, y + HEIGHT / 2 + 1);
    this.area = [x, y, w, HEIGHT];
    ctx.font = font;
    ctx.fillStyle = fillStyle;
    ctx.textBaseline = textBaseline;
    ctx.textAlign = textAlign;
  }

  contains(x, y) {
    const a = this.area;
    return !!a && x >= a[0] && x <= a[0] + a[2] && y >= a[1] && y <= a[1] + a[3];
  }
}

export class Badges {
  // app: ComfyUI's app; enabled(): whether the setting allows badges; workflow(): the workflow open now (any
  // object, or null when unknown); onClick(nodeId): a badge was clicked.
  constructor(app, enabled, workflow, onClick) {
    this.app = app;
    this.enabled = enabled;
    this.workflow = workflow;
    this.onClick = onClick;
    this.info = new Map(); // node id (string) -> {nodeId, text, kind, warnings}
    this.owner = null; // the workflow the badges belong to (null: any)
    this.badges = new Map(); // node id (string) -> NodeBadge last handed out
    this.mode = null; // "badges" | "foreground" once installed
  }

  // Checks the canvas and graph this frontend offers and starts listening for badge clicks. Returns null
  // when badges can be drawn, else a sentence saying what is missing (the caller logs it once).
  install() {
    const app = this.app;
    if (!app || !app.canvas || !app.graph || !Array.isArray(app.graph.nodes)) {
      return "no canvas or graph (app.canvas / app.graph) to draw on";
    }
    if (typeof app.canvas.convertEventToCanvasOffset !== "function" || typeof app.canvas.setDirty !== "function") {
      return "the canvas lacks convertEventToCanvasOffset / setDirty";
    }
    this.mode = "badges";
    for (const node of app.graph.nodes) this.attach(node);
    window.addEventListener("pointerdown", (e) => this.pointerDown(e), true);
    return null;
  }

  // Gives one node its badge slot. Safe to call more than once per node; never throws.
  attach(node) {
    if (!this.mode || !node || node[ATTACHED]) return;
    try {
      const badgeOf = () => this.badgeFor(node);
      badgeOf.stagetrace = true;
      if (Array.isArray(node.badges)) {
        node.badges.push(badgeOf);
      } else {
        const previous = node.onDrawForeground;
        const titleH = (globalThis.LiteGraph && globalThis.LiteGraph.NODE_TITLE_HEIGHT) || 30;
        node.onDrawForeground = function (ctx, ...rest) {
          const r = typeof previous === "function" ? previous.call(this, ctx, ...rest) : undefined;
          const badge = badgeOf();
          if (badge.visible) badge.draw(ctx, 0, -titleH - HEIGHT - 2);
          return r;
        };
      }
      Object.defineProperty(node, ATTACHED, { value: badgeOf, enumerable: false });
    } catch {
      // a node we cannot extend just goes without a badge
    }
  }

  // The node's badge now (an invisible one when it has none, badges are off, or another workflow is open).
  badgeFor(node) {
    const id = this.rootId(node);
    const open = this.owner ? this.workflow() : null;
    const shown = id !== null && this.enabled() && (!this.owner || !open || open === this.owner);
    const info = shown ? this.info.get(id) || null : null;
    let badge = id === null ? null : this.badges.get(id);
    if (!badge || badge.stagetrace !== info) {
      badge = new NodeBadge(info);
      if (id !== null) this.badges.set(id, badge);
    }
    return badge;
  }

  rootId(node) {
    if (!node || node.id === undefined || node.id === null || node.id === -1) return null;
    if (node.graph && this.app.graph && node.graph !== this.app.graph) return null; // inside a subgraph
    return String(node.id);
  }

  // Replaces every badge with `info` (Map of node id -> {text, kind, warnings}), shown while `owner` (the
  // workflow the prompt was queued from; null: any) is open, and redraws.
  set(info, owner) {
    this.owner = owner || null;
    this.info = new Map([...info].map(([id, v]) => [String(id), { nodeId: String(id), ...v }]));
    this.badges.clear();
    this.redraw();
  }

  clear() {
    if (!this.info.size) return;
    this.info = new Map();
    this.badges.clear();
    this.redraw();
  }

  redraw() {
    try {
      this.app.canvas && this.app.canvas.setDirty(true, true);
    } catch {
      // nothing to redraw
    }
  }

  pointerDown(e) {
    try {
      const canvas = this.app.canvas;
      if (!this.info.size || !canvas || e.target !== canvas.canvas || e.button !== 0 || !this.enabled()) return;
      const [gx, gy] = canvas.convertEventToCanvasOffset(e);
      for (const [id, badge] of this.badges) {
        if (!badge.visible || !badge.area) continue;
        const node = graphNode(this.app.graph, id);
        if (!node || !node.pos || canvas.graph && canvas.graph !== this.app.graph) continue;
        if (badge.contains(gx - node.pos[0], gy - node.pos[1])) {
          e.stopPropagation();
          e.preventDefault();
          this.onClick(id);
          return;
        }
      }
    } catch {
      // a click we cannot place is the canvas's
    }
  }
}
