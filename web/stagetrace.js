// StageTrace inside ComfyUI's page: a sidebar panel with the last prompt's time by stage, its findings,
// a timeline, the GPU line, links to the report and trace, live progress while a prompt runs, and the
// history of runs; and time badges on the canvas's nodes after a run.
//
// Frontend APIs used (ComfyUI frontend 1.27): app.registerExtension (settings, setup, nodeCreated),
// app.extensionManager.sidebarTab.registerSidebarTab (else the deprecated
// app.extensionManager.registerSidebarTab), app.extensionManager.setting.get, api.addEventListener,
// api.fetchApi / api.apiURL, LGraphNode.badges and LGraphCanvas.convertEventToCanvasOffset/setDirty.
// Where one is missing the panel degrades and says so in ONE console line each ("StageTrace: ..."): no
// sidebar tab API -> a floating box behind a toggle button; no canvas/badge API -> no badges. Nothing here
// throws into ComfyUI's page: every callback is guarded, and a failure is logged once as a warning.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { Badges, graphNode } from "./stagetrace/badges.js";
import { formatSeconds } from "./stagetrace/format.js";
import { Panel } from "./stagetrace/panel.js";

const TAB_ID = "stagetrace";
const BADGE_SETTING = "StageTrace.Badges";
const LIVE_EVENT = "stagetrace.live";
const DONE_GRACE_MS = 2500; // after ComfyUI says a prompt ended, how long to wait for StageTrace's "done"
const POLL_MS = 1000; // then how often to look for the prompt's trace, at most POLL_TRIES times
const POLL_TRIES = 20;
const HISTORY_LIMIT = 20;
const REQUEST_TIMEOUT_MS = 20000;

// --- Logging: one line per thing, never an error ------------------------------------------------------

const said = new Set();

function sayOnce(key, level, text) {
  if (said.has(key)) return;
  said.add(key);
  (level === "warn" ? console.warn : console.info)(`StageTrace: ${text}`);
}

function errText(err) {
  return err && err.message ? err.message : String(err);
}

// fn, guarded: an exception (or a rejected promise) is logged once, as a warning naming `what`, and swallowed.
function guard(what, fn) {
  const failed = (err) => sayOnce(`fail-${what}`, "warn", `${what} failed (${errText(err)}); the panel carries on`);
  return (...args) => {
    try {
      const r = fn(...args);
      return r && typeof r.catch === "function" ? r.catch(failed) : r;
    } catch (err) {
      failed(err);
      return undefined;
    }
  };
}

// --- Requests -------------------------------------------------------------------------------------------

// GET `path` through ComfyUI's api (auth, base path): {ok, status, body} where body is the parsed JSON or
// null. Never throws.
async function getJSON(path) {
  const abort = typeof AbortController === "function" ? new AbortController() : null;
  const timer = abort ? setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS) : null;
  try {
    const res = await api.fetchApi(path, abort ? { signal: abort.signal } : undefined);
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    return { ok: res.ok, status: res.status, body };
  } catch (err) {
    return { ok: false, status: 0, body: { error: err && err.message ? err.message : String(err) } };
  } finally {
    if (timer) clearTimeout(timer);
  }
}

function reasonOf(res) {
  const b = res.body;
  if (b && typeof b === "object" && (b.error || b.message)) return String(b.error || b.message);
  return res.status ? `HTTP ${res.status}` : "no answer from the server";
}

function fileURL(path) {
  return typeof api.apiURL === "function" ? api.apiURL(path) : path;
}

// --- Settings -------------------------------------------------------------------------------------------

function badgesEnabled() {
  try {
    const setting = app.extensionManager && app.extensionManager.setting;
    const value = setting && typeof setting.get === "function" ? setting.get(BADGE_SETTING) : undefined;
    return value !== false;
  } catch {
    return true;
  }
}

// The workflow open in the canvas now (the workflow store's object), or null where the frontend has none.
function activeWorkflow() {
  try {
    const store = app.extensionManager && app.extensionManager.workflow;
    return (store && store.activeWorkflow) || null;
  } catch {
    return null;
  }
}

// --- The badges a prompt's panel data gives ------------------------------------------------------------

function badgeInfo(data) {
  const info = new Map();
  const warnings = new Map();
  for (const f of Array.isArray(data.findings) ? data.findings : []) {
    if (!f || !Array.isArray(f.node_ids)) continue;
    for (const id of f.node_ids) {
      const key = String(id);
      warnings.set(key, [...(warnings.get(key) || []), String(f.title ?? f.rule ?? "finding")]);
    }
  }
  for (const n of Array.isArray(data.nodes) ? data.nodes : []) {
    if (!n || n.node_id === undefined || n.node_id === null) continue;
    const id = String(n.node_id);
    const kind = n.outcome === "error" ? "failed" : n.outcome === "interrupted" ? "interrupted" : "time";
    const text = kind === "failed" ? "failed" : kind === "interrupted" ? "interrupted" : formatSeconds(n.seconds);
    info.set(id, { text, kind, seconds: n.seconds, warnings: warnings.get(id) || [] });
  }
  for (const n of Array.isArray(data.cached) ? data.cached : []) {
    if (!n || n.node_id === undefined || n.node_id === null || info.has(String(n.node_id))) continue;
    const id = String(n.node_id);
    info.set(id, { text: "cached", kind: "cached", seconds: null, warnings: warnings.get(id) || [] });
  }
  return info;
}

// --- The extension --------------------------------------------------------------------------------------

class StageTraceUI {
  constructor() {
    this.panel = new Panel({
      nodeClicked: guard("showing a node", (id) => this.showNode(id, true)),
      loadHistory: guard("loading the history", (force, scope) => this.loadHistory(force, scope)),
      compare: guard("comparing runs", (a, b) => this.compare(a, b)),
      showLatest: guard("loading the latest prompt", () => this.loadLast(true)),
      fileURL,
    });
    this.badges = null;
    this.available = true; // false once the server said StageTrace does not run
    this.current = null; // the prompt running now: {prompt_id, gotLive, startedAt, firstStepAt, ...}
    this.loadToken = 0;
    this.historyScope = "workflow"; // the history's runs: "workflow" (the shown prompt's) or "all"
    this.historyLoaded = false;
    this.shownWorkflow = null; // the workflow the shown prompt was queued from, when this page queued it
    this.sidebar = null; // the sidebar tab store, when the panel lives there
    this.floatBox = null;
  }

  // Called from the extension's setup(): mount the panel, badges, listeners, then show the last prompt.
  setup() {
    this.mountPanel();
    this.installBadges();
    this.listen();
    guard("loading the last prompt", () => this.loadLast())();
  }

  mountPanel() {
    const em = app.extensionManager;
    const store = em && em.sidebarTab && typeof em.sidebarTab.registerSidebarTab === "function" ? em.sidebarTab : null;
    const register = store ? (tab) => store.registerSidebarTab(tab)
      : em && typeof em.registerSidebarTab === "function" ? (tab) => em.registerSidebarTab(tab) : null;
    if (register) {
      try {
        register({
          id: TAB_ID,
          icon: "pi pi-chart-bar",
          title: "StageTrace",
          tooltip: "StageTrace: where the last prompt's time went",
          type: "custom",
          render: guard("showing the panel", (host) => this.panel.mount(host)),
        });
        this.sidebar = store;
        return;
      } catch (err) {
        sayOnce("sidebar", "warn", `the sidebar tab could not be registered (${errText(err)}); ` +
          "the panel opens from a floating StageTrace button instead");
      }
    } else {
      sayOnce("sidebar", "info", "this ComfyUI frontend has no sidebar tab API " +
        "(app.extensionManager.registerSidebarTab); the panel opens from a floating StageTrace button instead");
    }
    this.mountFloating();
  }

  mountFloating() {
    const box = document.createElement("div");
    box.className = "st-float-box";
    box.hidden = true;
    box.setAttribute("data-stagetrace", "floating");
    const button = document.createElement("button");
    button.className = "st-float-toggle";
    button.type = "button";
    button.textContent = "StageTrace";
    button.title = "Show or hide the StageTrace panel";
    button.setAttribute("data-stagetrace", "toggle");
    button.addEventListener("click", guard("toggling the panel", () => {
      box.hidden = !box.hidden;
      if (!box.hidden) this.panel.mount(box);
    }));
    document.body.append(box, button);
    this.panel.mount(box);
    this.floatBox = box;
  }

  openPanel() {
    if (this.floatBox) {
      this.floatBox.hidden = false;
      this.panel.mount(this.floatBox);
      return;
    }
    const store = this.sidebar;
    if (store && store.activeSidebarTabId !== TAB_ID && typeof store.toggleSidebarTab === "function") {
      store.toggleSidebarTab(TAB_ID);
    } else if (!store) {
      const cmd = app.extensionManager && app.extensionManager.command;
      if (cmd && typeof cmd.execute === "function") cmd.execute(`Workspace.ToggleSidebarTab.${TAB_ID}`);
    }
  }

  installBadges() {
    const badges = new Badges(app, badgesEnabled, activeWorkflow,
      guard("opening a node's stages", (id) => this.showNode(id, false)));
    let why;
    try {
      why = badges.install();
    } catch (err) {
      why = `the canvas could not be reached (${errText(err)})`;
    }
    if (why) {
      sayOnce("badges", "info", `no node badges: ${why}`);
      return;
    }
    this.badges = badges;
  }

  // A node picked in the panel or on the canvas: open the panel on its stages; from the panel, also
  // select it on the canvas.
  showNode(id, fromPanel) {
    this.openPanel();
    this.panel.focusNode(id);
    requestAnimationFrame(() => requestAnimationFrame(guard("showing a node", () => this.panel.revealFocus())));
    // on the canvas only when it shows the workflow the prompt ran from (another workflow's #3 is another node)
    if (!fromPanel || !this.shownWorkflow || this.shownWorkflow !== activeWorkflow()) return;
    const canvas = app.canvas;
    const node = graphNode(app.graph, id);
    if (node && canvas) {
      if (typeof canvas.selectNode === "function") canvas.selectNode(node);
      if (typeof canvas.centerOnNode === "function") canvas.centerOnNode(node);
      if (typeof canvas.setDirty === "function") canvas.setDirty(true, true);
    }
  }

  // --- Following prompts -------------------------------------------------------------------------------

  listen() {
    const on = (type, what, fn) => api.addEventListener(type, guard(what, (e) => fn(e && e.detail)));
    on(LIVE_EVENT, "a live message", (d) => this.onLive(d));
    on("execution_start", "execution_start", (d) => this.begin(d && d.prompt_id, false));
    on("executing", "executing", (d) => this.onExecuting(d));
    on("progress", "progress", (d) => this.onProgress(d));
    on("execution_success", "execution_success", (d) => this.ended(d && d.prompt_id));
    on("execution_error", "execution_error", (d) => this.ended(d && d.prompt_id));
    on("execution_interrupted", "execution_interrupted", (d) => this.ended(d && d.prompt_id));
  }

  begin(promptId, fromLive) {
    if (this.current && this.current.prompt_id === promptId && promptId) return this.current;
    if (this.current && this.current.timer) clearTimeout(this.current.timer);
    this.current = { prompt_id: promptId || null, workflow: activeWorkflow(), gotLive: fromLive,
      startedAt: performance.now(), firstStepAt: null,
      node_id: null, class_type: null, stage: null, step: null, steps: null, rate: null, ended: false, timer: null };
    if (this.badges) this.badges.clear();
    this.showLive();
    return this.current;
  }

  showLive() {
    const c = this.current;
    if (!c || c.ended) return this.panel.setLive(null);
    const elapsed = c.elapsed_s ?? (performance.now() - c.startedAt) / 1000;
    this.panel.setLive({ prompt_id: c.prompt_id, node_id: c.node_id, class_type: c.class_type, stage: c.stage,
      step: c.step, steps: c.steps, rate: c.rate, elapsed_s: elapsed });
  }

  onLive(d) {
    if (!d || typeof d !== "object" || !d.prompt_id) return;
    if (d.state === "done") {
      if (this.current && this.current.prompt_id === d.prompt_id) {
        this.current.ended = true;
        if (this.current.timer) clearTimeout(this.current.timer);
        this.panel.setLive(null);
      }
      this.loadPrompt(String(d.prompt_id), true);
      return;
    }
    const c = this.begin(String(d.prompt_id), true);
    c.gotLive = true;
    Object.assign(c, { node_id: d.node_id ?? null, class_type: d.class_type ?? null, stage: d.stage ?? null,
      step: d.step ?? null, steps: d.steps ?? null, rate: d.rate ?? null, elapsed_s: d.elapsed_s ?? null });
    this.showLive();
  }

  // ComfyUI's own messages, used only until StageTrace's live messages come (a server with them off).
  onExecuting(nodeId) {
    const c = this.current;
    if (!c || c.gotLive || c.ended || nodeId === null || nodeId === undefined) return;
    const node = graphNode(app.graph, nodeId);
    Object.assign(c, { node_id: String(nodeId), class_type: node ? node.type || node.comfyClass || null : null,
      stage: null, step: null, steps: null, rate: null, firstStepAt: null });
    this.showLive();
  }

  onProgress(d) {
    if (!d || typeof d !== "object") return;
    const c = this.current && (!d.prompt_id || this.current.prompt_id === d.prompt_id) ? this.current : null;
    if (!c || c.gotLive || c.ended) return;
    const now = performance.now();
    if (c.firstStepAt === null || d.value <= 1) c.firstStepAt = now;
    Object.assign(c, { step: d.value, steps: d.max, stage: "sample",
      rate: d.value > 1 && now > c.firstStepAt ? (d.value - 1) / ((now - c.firstStepAt) / 1000) : null });
    if (d.node !== undefined && d.node !== null) c.node_id = String(d.node);
    this.showLive();
  }

  ended(promptId) {
    const c = this.current;
    if (!c || (promptId && c.prompt_id && c.prompt_id !== promptId)) return;
    c.ended = true;
    this.panel.setLive(null);
    if (!c.prompt_id || !this.available) return;
    // StageTrace's "done" normally follows; without it (live messages off), look for the trace.
    let tries = 0;
    const poll = guard("waiting for the trace", async () => {
      if (this.current !== c || c.loaded) return;
      tries += 1;
      const res = await getJSON(`/stagetrace/prompts?limit=10`);
      if (this.current !== c || c.loaded) return;
      const found = res.ok && res.body && Array.isArray(res.body.prompts) &&
        res.body.prompts.some((p) => p && p.prompt_id === c.prompt_id);
      if (found) this.loadPrompt(c.prompt_id, true);
      else if (res.ok && tries < POLL_TRIES) c.timer = setTimeout(poll, POLL_MS);
    });
    c.timer = setTimeout(poll, DONE_GRACE_MS);
  }

  // --- Loading ------------------------------------------------------------------------------------------

  // The newest prompt StageTrace recorded (from any client); `force`: even over a prompt shown already.
  async loadLast(force) {
    if (!this.available && !force) return;
    const res = await getJSON("/stagetrace/prompts?limit=1");
    if (!res.ok) {
      if (res.status === 503 || res.status === 404) {
        this.available = false;
        this.panel.setMessage(`StageTrace is not running in this ComfyUI: ${reasonOf(res)}`);
      } else {
        this.panel.setMessage(`The last prompt could not be read: ${reasonOf(res)}`);
      }
      return;
    }
    const last = res.body && Array.isArray(res.body.prompts) ? res.body.prompts[0] : null;
    this.available = true;
    if (!last || !last.prompt_id) {
      if (force) this.panel.setMessage("StageTrace has not recorded a prompt yet.");
      return;
    }
    if (force || !this.panel.data) await this.loadPrompt(String(last.prompt_id), false);
  }

  async loadPrompt(promptId, withBadges) {
    if (this.current && this.current.prompt_id === promptId) {
      this.current.loaded = true;
      if (this.current.timer) clearTimeout(this.current.timer);
    }
    const token = ++this.loadToken;
    const res = await getJSON(`/stagetrace/prompts/${encodeURIComponent(promptId)}/panel`);
    if (token !== this.loadToken) return; // a newer prompt is being shown
    if (!res.ok || !res.body || typeof res.body !== "object") {
      this.panel.setMessage(`Prompt ${promptId} could not be read: ${reasonOf(res)}`);
      return;
    }
    this.panel.setData(res.body);
    // the badges belong to the workflow the prompt was queued from (another tab's node #3 is another node)
    const run = this.current && this.current.prompt_id === promptId ? this.current : null;
    this.shownWorkflow = withBadges ? (run ? run.workflow : activeWorkflow()) : null;
    if (withBadges && this.badges) this.badges.set(badgeInfo(res.body), this.shownWorkflow);
    if (this.historyLoaded && this.panel.history.status !== "off") this.loadHistory(true);
  }

  // The recent runs: of the shown prompt's workflow (scope "workflow", the default) or of all ("all"); an
  // undefined scope keeps the last one. `force`: ask again even when loaded.
  async loadHistory(force, scope) {
    if (scope !== undefined) this.historyScope = scope;
    if (this.historyLoaded && !force) return;
    this.historyLoaded = true;
    const shown = this.panel.data && this.panel.data.workflow_id;
    const workflow = this.historyScope === "all" || !shown ? null : String(shown);
    this.panel.setHistory({ status: "loading" });
    const query = `limit=${HISTORY_LIMIT}${workflow ? `&workflow=${encodeURIComponent(workflow)}` : ""}`;
    const res = await getJSON(`/stagetrace/history?${query}`);
    if (res.status === 503 || res.status === 404) {
      const reason = res.status === 404 ? "this server has no history routes" : reasonOf(res);
      this.panel.setHistory({ status: "off", reason, runs: [], compare: null, picked: [] });
      return;
    }
    if (!res.ok) {
      this.panel.setHistory({ status: "error", reason: reasonOf(res) });
      return;
    }
    const runs = res.body && Array.isArray(res.body.runs) ? res.body.runs.filter((r) => r && r.prompt_id) : [];
    const ids = new Set(runs.map((r) => String(r.prompt_id)));
    const picked = this.panel.history.picked.filter((id) => ids.has(id));
    this.panel.setHistory({ status: "ok", runs, scope: workflow, picked,
      compare: picked.length === 2 ? this.panel.history.compare : null });
  }

  async compare(a, b) {
    const res = await getJSON(`/stagetrace/history/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
    const picked = this.panel.history.picked;
    if (picked[0] !== a || picked[1] !== b) return; // the user picked others meanwhile
    this.panel.setHistory({ compare: res.ok && res.body ? res.body : { error: reasonOf(res) } });
  }
}

// --- Registration ---------------------------------------------------------------------------------------

function loadStyle() {
  if (document.querySelector("link[data-stagetrace]")) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = new URL("./stagetrace/panel.css", import.meta.url).href;
  link.setAttribute("data-stagetrace", "style");
  document.head.appendChild(link);
}

let ui = null;

const extension = {
  name: "stagetrace.panel",
  settings: [
    {
      id: BADGE_SETTING,
      category: ["StageTrace", "Node badges", "Show"],
      name: "Show StageTrace time badges on nodes",
      tooltip: "After a run: each node's time, 'cached' or 'failed', and a warning mark on nodes a finding is about",
      type: "boolean",
      defaultValue: true,
      onChange: () => {
        try {
          if (ui && ui.badges) ui.badges.redraw();
        } catch {
          // redrawn on the next frame anyway
        }
      },
    },
  ],
  async setup() {
    try {
      loadStyle();
      ui = new StageTraceUI();
      ui.setup();
    } catch (err) {
      sayOnce("setup", "warn", `the panel could not start (${errText(err)})`);
    }
  },
  nodeCreated(node) {
    try {
      if (ui && ui.badges) ui.badges.attach(node);
    } catch {
      // this node goes without a badge
    }
  },
};

if (app && typeof app.registerExtension === "function") app.registerExtension(extension);
else sayOnce("register", "warn", "this ComfyUI frontend has no app.registerExtension; the panel is off");
