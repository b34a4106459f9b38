"""StageTrace's panel in ComfyUI's own page (web/stagetrace.js), driven by Playwright in the system's Chromium
against the real ComfyUI server of tests/comfy_server.py (its real frontend package and StageTrace's real
routes and WebSocket messages).

One prompt (the tiny SD1.5 workflow, STEPS sampling steps) is queued through the page with the page's client
id; while it runs the panel's live step counter is recorded, then the panel must show that prompt's stages,
findings, timeline and links as the /panel route gives them, and the canvas's nodes carry StageTrace's
badges (a click on one opens that node's stages; the setting hides them). A failing prompt marks its node
failed and clears the last run's badges; the history lists runs and compares two; markup in every server
string stays text. A server with STAGETRACE_LIVE=0 is followed through ComfyUI's own messages. Against a
frontend that lacks an API the extension uses, it degrades and says so in one console line.

Console errors: every "error" console message and page error fails a test unless it is one of ComfyUI's own
listed in COMFYUI_OWN (with why), and none may mention StageTrace. Every wait has a timeout; the file takes
about 45 s on two cores (most of it two server starts and the prompts' CPU sampling), screenshots go to each
test's tmp_path and /tmp/stagetrace-panel*.png.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.parse

import pytest
from comfy_server import CHECKPOINT

from comfy_nodes.demo.harness import tiny_txt2img

STEPS = 32  # enough steps for the live counter to move at ~10 messages a second, few enough for a CPU run
PAGE_TIMEOUT_MS = 60_000
PROMPT_TIMEOUT_MS = 150_000
SCREENSHOT = "/tmp/stagetrace-panel.png"
VIEWPORT = {"width": 1500, "height": 1350}

# ComfyUI's own console errors on a fresh user of a ComfyUI without the optional packages: (why, what the
# message says or the resource it failed to load[, what its stack must show]); never filtered when anything
# in them mentions StageTrace.
COMFYUI_OWN = [
    # A new user has no user.css, no saved workflows or subgraphs folder yet: the frontend asks and gets 404.
    ("missing user files", re.compile(r"^/(api/)?(userdata/user\.css|user\.css|userdata\?dir=(workflows|subgraphs)"
                                      r"|userdata/comfy\.templates\.json)")),
    # The comfyui-workflow-templates package is not installed (ComfyUI logs it at start): no templates index.
    ("no templates package", re.compile(r"^/templates/")),
    ("no templates package", re.compile(r"^Error fetching workflow templates")),
    # Chromium asks for a favicon ComfyUI does not serve.
    ("no favicon", re.compile(r"^/favicon\.ico$")),
    # Frontend 1.27 on a first visit: Comfy.Canvas.NavigationMode's onChange sets a setting not registered yet
    # and its settings store reads `.id` of undefined (a page error whose stack is only the frontend's bundle).
    ("frontend settings store on first visit", re.compile(r"^Cannot read properties of undefined \(reading 'id'\)"),
     re.compile(r"at onChange .*/assets/index-[^/]*\.js(.|\n)*at Proxy\.addSetting")),
]

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def comfyui_own(message: dict) -> bool:
    """Whether a console message is one of COMFYUI_OWN: its text (for "Failed to load resource", the resource's
    path and query) matches, its stack shows what the entry asks, and nothing in it mentions StageTrace."""
    stack = message.get("stack", "")
    if "stagetrace" in " ".join((message["text"], message["url"], stack)).lower():
        return False
    said = message["text"]
    if said.startswith("Failed to load resource") and message["url"]:
        parts = urllib.parse.urlsplit(message["url"])
        said = parts.path + (f"?{parts.query}" if parts.query else "")
    for _why, pattern, *stack_pattern in COMFYUI_OWN:
        if pattern.search(said) and all(p.search(stack) for p in stack_pattern):
            return True
    return False


# --- The browser and the page ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Chromium through Playwright; skips saying what is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    if _CHROMIUM is None:
        pytest.skip("no Chromium on PATH (Debian: apt install chromium); the tests never download a browser")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=_CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


class Page:
    """One ComfyUI page, its console and page errors collected from the start."""

    def __init__(self, browser, server, init_script: str | None = None, wide_sidebar: bool = True):
        self.server = server
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT_MS)
        self.console: list[dict] = []
        self.page.on("console", lambda m: self.console.append(
            {"type": m.type, "text": m.text, "url": (m.location or {}).get("url", "")}))
        self.page.on("pageerror", lambda e: self.console.append(
            {"type": "pageerror", "text": str(e), "url": "", "stack": e.stack or ""}))
        if wide_sidebar:  # the sidebar's splitter sizes, as a user who widened it leaves them in localStorage
            self.page.add_init_script("for (const k of ['unified-sidebar', 'stagetrace'])"
                                      " localStorage.setItem(k, '[32,68]');")
        if init_script:
            self.page.add_init_script(init_script)

    def open(self) -> Page:
        # a returning user: no "Get Started" template dialog over the canvas
        status, _, _ = self.server.request("POST", "/api/settings/Comfy.TutorialCompleted", b"true",
                                           {"Content-Type": "application/json"})
        assert status == 200
        self.page.goto(self.server.url)
        self.page.wait_for_function("() => { const a = window.comfyAPI?.app?.app;"
                                    " return a && a.graph && a.canvas && a.extensionManager; }")
        self.page.wait_for_selector("link[data-stagetrace]", state="attached")  # the extension's setup ran
        return self

    def js(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def errors(self) -> list[dict]:
        """Console errors and page errors that are not ComfyUI's own (COMFYUI_OWN)."""
        return [m for m in self.console if m["type"] in ("error", "pageerror") and not comfyui_own(m)]

    def stagetrace_lines(self) -> list[str]:
        return [m["text"] for m in self.console if m["type"] != "pageerror" and m["text"].startswith("StageTrace:")]

    def close(self) -> None:
        self.context.close()


# --- One prompt queued through the page -------------------------------------------------------------------------

RECORD_STEPS = """() => {
  window.__stSteps = [];
  const seen = (t) => { if (t && window.__stSteps[window.__stSteps.length - 1] !== t) window.__stSteps.push(t); };
  new MutationObserver(() => {
    const e = document.querySelector('.st-live:not([hidden]) .st-live-step');
    if (e) seen(e.textContent);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""

QUEUE = """async (prompt) => {
  const api = window.comfyAPI.api.api;
  const res = await api.fetchApi('/prompt', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({prompt, client_id: api.clientId})});
  return {status: res.status, body: await res.json()};
}"""

BADGES = """() => window.comfyAPI.app.app.graph.nodes.map((n) => {
  const slot = (n.badges || []).find((b) => typeof b === 'function' && b.stagetrace);
  const badge = slot ? slot() : null;
  return {id: String(n.id), type: n.type, slot: !!slot, info: badge && badge.visible ? badge.stagetrace : null,
          area: badge ? badge.area : null};
})"""


@pytest.fixture(scope="module")
def ran(browser, comfy_server):
    """The page after one prompt ran: (page, prompt id, the /panel data, live step texts, timings in s)."""
    timings = {}
    t0 = time.monotonic()
    page = Page(browser, comfy_server).open()
    timings["page load"] = time.monotonic() - t0
    try:
        page.js("() => window.comfyAPI.app.app.extensionManager.sidebarTab.toggleSidebarTab('stagetrace')")
        page.page.wait_for_selector(".st-panel", state="visible")
        prompt = tiny_txt2img(CHECKPOINT, seed=int(time.time() * 1000) % 2**31, steps=STEPS, filename_prefix="panel")
        page.js("(p) => window.comfyAPI.app.app.loadApiJson(p, 'stagetrace-panel.json')", prompt)
        page.page.wait_for_function("() => window.comfyAPI.app.app.graph.nodes.length >= 7")
        page.js(RECORD_STEPS)
        t1 = time.monotonic()
        queued = page.js(QUEUE, prompt)
        assert queued["status"] == 200, queued
        prompt_id = queued["body"]["prompt_id"]
        page.page.wait_for_function("(pid) => document.querySelector('.st-sub')?.title === 'prompt ' + pid",
                                    arg=prompt_id, timeout=PROMPT_TIMEOUT_MS)
        timings["prompt to panel"] = time.monotonic() - t1
        status, data = comfy_server.get_json(f"/stagetrace/prompts/{prompt_id}/panel")
        assert status == 200, data
        steps = page.js("() => window.__stSteps")
        yield page, prompt_id, data, steps, timings
    finally:
        page.close()
        print(f"\ntest_panel timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


# --- Tests --------------------------------------------------------------------------------------------------------


def test_the_extension_loads_without_console_errors(ran):
    page, *_ = ran
    assert page.js("() => !!window.comfyAPI.app.app.extensionManager.sidebarTab.sidebarTabs"
                   ".find((t) => t.id === 'stagetrace')")
    assert page.errors() == [], json.dumps(page.errors(), indent=1)
    assert page.stagetrace_lines() == []  # nothing degraded: no "StageTrace:" line at all
    assert page.js("() => window.comfyAPI.app.app.extensionManager.setting.get('StageTrace.Badges')") is True


def test_the_live_step_counter_moves_while_sampling(ran):
    _, _, _, steps, _ = ran
    counted = [(int(m.group(1)), int(m.group(2))) for m in (re.match(r"step (\d+) of (\d+)$", t) for t in steps) if m]
    assert counted, f"no 'step i of N' seen; the live texts were {steps}"
    assert {n for _, n in counted} == {STEPS}
    values = [i for i, _ in counted]
    assert values == sorted(values) and len(set(values)) >= 2, f"the counter did not move: {steps}"
    print(f"\nlive step texts seen: {steps}")


def test_the_panel_shows_the_prompts_stages_and_findings(ran, tmp_path):
    page, prompt_id, data, _, _ = ran
    assert data["prompt_id"] == prompt_id and data["outcome"] == "ok"
    dom = page.js("""() => {
      const p = document.querySelector('.st-panel');
      const rows = [...p.querySelectorAll('.st-stages tr[data-stage]')].map((r) => [r.dataset.stage, r.textContent]);
      return {
        wall: p.querySelector('.st-wall-figure').textContent,
        outcome: p.querySelector('.st-summary .st-outcome').textContent,
        rows, segments: [...p.querySelectorAll('.st-stack-seg')].map((s) => s.dataset.stage),
        findings: [...p.querySelectorAll('.st-finding')].map((f) => [f.dataset.rule, f.textContent]),
        lanes: [...new Set([...p.querySelectorAll('svg.st-timeline .st-tl-bar')].map((b) => b.dataset.lane))],
        stepBars: p.querySelectorAll('svg.st-timeline .st-tl-bar[data-lane="sample.step"]').length,
        ticks: [...p.querySelectorAll('svg.st-timeline .st-tl-tick')].map((t) => t.textContent),
        links: Object.fromEntries([...p.querySelectorAll('a[data-link]')].map((a) => [a.dataset.link, a.href])),
        hint: p.querySelector('.st-hint').textContent,
        nodes: [...p.querySelectorAll('.st-nodes tr[data-node]')].map((r) => r.dataset.node),
      };
    }""")
    assert dom["outcome"] == "ok" and dom["wall"].endswith(" s")
    stages = [s["stage"] for s in data["stages"]]
    assert [stage for stage, _ in dom["rows"]] == stages
    for stage, text in dom["rows"]:
        assert stage in text and "%" in text, (stage, text)
    assert set(dom["segments"]) == {s["stage"] for s in data["stages"] if s["share"] > 0}
    assert data["findings"], "a CPU run has at least the cpu-sampling finding"
    assert [rule for rule, _ in dom["findings"]] != [] and len(dom["findings"]) == len(data["findings"])
    by_rule = dict(dom["findings"])
    for f in data["findings"]:
        for key in ("title", "evidence", "fix"):
            assert f[key] in by_rule[f["rule"]], (f["rule"], key)
    assert {"prompt", "node", "sample", "sample.step"} <= set(dom["lanes"])
    assert {s["lane"] for s in data["timeline"]["spans"]} <= set(dom["lanes"])
    if not data["timeline"]["truncated"]:
        assert dom["stepBars"] == len(data["steps"]) == STEPS
    assert len(dom["ticks"]) >= 2 and all(re.match(r"^[\d.:]+ ?(ms|s)?$", t) for t in dom["ticks"]), dom["ticks"]
    assert dom["links"]["report"].endswith(f"/stagetrace/prompts/{prompt_id}/report.html")
    assert dom["links"]["trace"].endswith(f"/stagetrace/prompts/{prompt_id}/trace")
    assert "ui.perfetto.dev" in dom["hint"] and "nsys profile" in dom["hint"]
    assert set(dom["nodes"]) == {n["node_id"] for n in data["nodes"]} | {n["node_id"] for n in data["cached"]}
    report = page.js("async (url) => (await fetch(url)).status", dom["links"]["report"])
    assert report == 200
    # the picture, for people
    page.page.locator(".st-panel").screenshot(path=str(tmp_path / "panel.png"))
    shutil.copyfile(tmp_path / "panel.png", SCREENSHOT)
    page.page.screenshot(path=str(tmp_path / "page.png"))
    assert page.errors() == [], json.dumps(page.errors(), indent=1)


def test_badges_mark_the_nodes_that_ran_and_open_their_stages(ran, tmp_path):
    page, _, data, _, _ = ran
    badges = {b["id"]: b for b in page.js(BADGES)}
    assert all(b["slot"] for b in badges.values()), "every node of the graph has StageTrace's badge slot"
    ran_nodes = {n["node_id"]: n for n in data["nodes"]}
    cached = {n["node_id"] for n in data["cached"]}
    marked = {i for f in data["findings"] for i in f["node_ids"]}
    assert ran_nodes, data
    for node_id, node in ran_nodes.items():
        info = badges[node_id]["info"]
        assert info and info["kind"] == "time" and re.match(r"^[\d.]+ (ms|s)$|^\d+ (min|h) ", info["text"]), info
        assert abs(info["seconds"] - node["seconds"]) < 1e-9
        assert bool(info["warnings"]) == (node_id in marked), info
    for node_id in cached:
        assert badges[node_id]["info"]["text"] == "cached"
    assert "3" in marked and badges["3"]["info"]["warnings"], "the CPU-sampling finding marks the KSampler"

    # a click on the KSampler's badge opens the panel on that node's stages
    where = page.js("""async () => {
      const app = window.comfyAPI.app.app;
      const node = app.graph.getNodeById(3);
      app.canvas.centerOnNode(node);
      app.canvas.setDirty(true, true);
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      const slot = node.badges.find((b) => typeof b === 'function' && b.stagetrace);
      const [x, y, w, h] = slot().area;
      const [ox, oy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + x + w / 2, node.pos[1] + y + h / 2]);
      const rect = app.canvas.canvas.getBoundingClientRect();
      return [rect.left + ox, rect.top + oy];
    }""")
    page.page.mouse.click(*where)
    page.page.wait_for_selector('.st-focus[data-node="3"]', timeout=10_000)
    page.page.screenshot(path=str(tmp_path / "badges.png"))
    shutil.copyfile(tmp_path / "badges.png", SCREENSHOT.replace(".png", "-badges.png"))
    focus = page.js("""() => [...document.querySelectorAll('.st-focus tr[data-stage]')].map((r) => r.dataset.stage)""")
    assert set(focus) == set(ran_nodes["3"]["stages"])

    # the setting turns them off
    page.js("() => window.comfyAPI.app.app.extensionManager.setting.set('StageTrace.Badges', false)")
    try:
        assert all(b["info"] is None for b in page.js(BADGES))
    finally:
        page.js("() => window.comfyAPI.app.app.extensionManager.setting.set('StageTrace.Badges', true)")
    assert page.errors() == [], json.dumps(page.errors(), indent=1)


def test_a_failed_node_is_marked_failed_and_the_last_runs_badges_are_cleared(ran, tmp_path):
    page, first_id, _, _, _ = ran
    prompt = tiny_txt2img(CHECKPOINT, seed=int(time.time() * 1000) % 2**31, steps=2, filename_prefix="panel-fail")
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}}  # no CLIP: fails
    queued = page.js(QUEUE, prompt)
    assert queued["status"] == 200, queued
    prompt_id = queued["body"]["prompt_id"]
    page.page.wait_for_function("(pid) => document.querySelector('.st-sub')?.title === 'prompt ' + pid",
                                arg=prompt_id, timeout=PROMPT_TIMEOUT_MS)
    status, data = page.server.get_json(f"/stagetrace/prompts/{prompt_id}/panel")
    assert status == 200 and data["outcome"] == "error", data
    failed = [n["node_id"] for n in data["nodes"] if n["outcome"] == "error"]
    assert failed == ["6"], data["nodes"]
    badges = {b["id"]: b["info"] for b in page.js(BADGES)}
    assert badges["6"]["kind"] == "failed" and badges["6"]["text"] == "failed" and badges["6"]["warnings"]
    assert badges["3"] is None, "the KSampler did not run this time: its badge from the last run is gone"
    assert page.js("() => document.querySelector('.st-summary .st-outcome').textContent") == "failed"
    tag = page.js("() => document.querySelector('.st-nodes tr[data-node=\"6\"] .st-tag-failed')?.textContent")
    assert tag == "failed"
    # ComfyUI's own dialog about the failed prompt: closed, as a user would
    page.page.wait_for_selector(".p-dialog-mask", timeout=10_000)
    page.page.keyboard.press("Escape")
    page.page.wait_for_selector(".p-dialog-mask", state="detached", timeout=10_000)
    page.page.screenshot(path=str(tmp_path / "failed.png"))
    # another workflow with the same node ids: the run's badges are not its nodes'
    page.js("(p) => window.comfyAPI.app.app.loadApiJson(p, 'stagetrace-other.json')", prompt)
    page.page.wait_for_function("() => window.comfyAPI.app.app.extensionManager.workflow.activeWorkflow?.key"
                                " === 'stagetrace-other.json'")
    assert all(b["info"] is None for b in page.js(BADGES))
    assert page.errors() == [], json.dumps(page.errors(), indent=1)


HOSTILE = "<img src=x onerror=\"window.__stOwned=1\"><script>window.__stOwned=1</script>"


def test_server_strings_are_text_never_markup(ran):
    """The panel's own module, fed a /panel answer whose every string is markup: it shows the text and runs or
    builds nothing of it; a link to another scheme is not drawn."""
    page, *_ = ran
    result = page.js("""async (hostile) => {
      const base = document.querySelector('link[data-stagetrace]').href;
      const { Panel } = await import(new URL('./panel.js', base).href);
      const panel = new Panel({nodeClicked() {}, loadHistory() {}, compare() {}, showLatest() {}, fileURL: (p) => p});
      const host = document.createElement('div');
      host.style.width = '420px';
      document.body.appendChild(host);
      panel.mount(host);
      panel.setData({prompt_id: hostile, outcome: hostile, wall_s: 1.5, queue_wait_s: 0.01,
        stages: [{stage: hostile, seconds: 1.5, share: 1, label: hostile}], stages_inclusive: {},
        findings: [{rule: hostile, severity: hostile, title: hostile, evidence: hostile, cause: hostile, fix: hostile,
                    cost_s: 1, node_ids: [hostile]}],
        nodes: [{node_id: hostile, class_type: hostile, seconds: 1, outcome: hostile, stages: {[hostile]: 1}}],
        cached: [{node_id: '9', class_type: hostile}],
        timeline: {wall_ms: 1500, truncated: false, spans: [{lane: hostile, label: hostile, node_id: hostile,
                   t_ms: 0, dur_ms: 1000, outcome: hostile}]},
        steps: [], gpu: {line: hostile, windows: [{t_ms: 0, dur_ms: 10, busy_fraction: 0.5}]},
        links: {report: 'javascript:window.__stOwned=1', trace: hostile}});
      panel.focusNode(hostile);
      panel.setLive({prompt_id: hostile, node_id: hostile, class_type: hostile, stage: hostile, step: 1, steps: 2});
      panel.setHistory({status: 'ok', runs: [{prompt_id: hostile, outcome: hostile, wall_s: 1, stages: {[hostile]: 1}}],
                        scope: hostile});
      const out = {imgs: host.querySelectorAll('img, script').length,
                   links: [...host.querySelectorAll('a')].map((a) => a.href),
                   shown: host.textContent.includes('<img src=x'), owned: !!window.__stOwned};
      host.remove();
      return out;
    }""", HOSTILE)
    assert result == {"imgs": 0, "links": [], "shown": True, "owned": False}, result


def test_the_history_lists_runs_and_compares_two(ran):
    page, *_ = ran
    status, body = page.server.get_json("/stagetrace/history?limit=10")
    shown = page.js("() => document.querySelector('.st-sub').title.replace('prompt ', '')")
    page.js("() => { document.querySelector('details.st-history').open = true; }")
    if status == 503:  # the history is off in this server: the panel says so, and nothing else happens
        page.page.wait_for_selector(".st-history-off", timeout=10_000)
        assert page.js("() => document.querySelector('.st-history-off').textContent").startswith("History is off")
        # Chromium logs every non-2xx fetch as a console error: the one line for the route's 503 is expected
        errors = page.errors()
        assert len(errors) == 1 and "/stagetrace/history" in errors[0]["url"] and "503" in errors[0]["text"], errors
        page.console.remove(errors[0])
        return
    assert status == 200, body
    if len(body["runs"]) < 2:  # run alone (-k): one more run to compare with
        page.server.wait_trace(page.server.run_prompt(tiny_txt2img(CHECKPOINT, seed=9, filename_prefix="panel-h")))
        page.page.click(".st-history-head .st-btn")  # Refresh
        status, body = page.server.get_json("/stagetrace/history?limit=10")
    runs = [r["prompt_id"] for r in body["runs"]]
    assert shown in runs and len(runs) >= 2, (shown, runs)
    page.page.wait_for_selector(f'.st-runs tr[data-prompt="{shown}"]', timeout=10_000)
    page.page.click(".st-history-scope .st-linkbtn")  # all runs, not only this workflow's
    page.page.wait_for_function("(n) => document.querySelectorAll('.st-runs tr[data-prompt]').length >= n",
                                arg=min(len(runs), 2), timeout=10_000)
    for prompt_id in runs[:2]:
        page.page.check(f'.st-runs tr[data-prompt="{prompt_id}"] input')
    page.page.wait_for_selector('.st-compare tr[data-stage="wall"]', timeout=10_000)
    status, compared = page.server.get_json(f"/stagetrace/history/compare?a={runs[0]}&b={runs[1]}")
    assert status == 200, compared
    rows = page.js("() => [...document.querySelectorAll('.st-compare tbody tr')].map((r) => r.dataset.stage)")
    assert rows == ["wall"] + [s["stage"] for s in compared["stages"]]
    assert page.errors() == [], json.dumps(page.errors(), indent=1)


def test_without_stagetraces_live_messages_it_follows_comfyuis_own(browser):
    """A server with STAGETRACE_LIVE=0 sends no stagetrace.live: the counter comes from ComfyUI's "progress"
    messages, and the panel finds the finished prompt's trace by itself."""
    from comfy_server import running_server

    steps = 12
    with running_server(env={"STAGETRACE_LIVE": "0"}) as server:
        page = Page(browser, server).open()
        try:
            page.js("() => window.comfyAPI.app.app.extensionManager.sidebarTab.toggleSidebarTab('stagetrace')")
            prompt = tiny_txt2img(CHECKPOINT, seed=5, steps=steps, filename_prefix="panel-nolive")
            page.js("(p) => window.comfyAPI.app.app.loadApiJson(p, 'stagetrace-nolive.json')", prompt)
            page.page.wait_for_function("() => window.comfyAPI.app.app.graph.nodes.length >= 7")
            page.js(RECORD_STEPS)
            queued = page.js(QUEUE, prompt)
            assert queued["status"] == 200, queued
            prompt_id = queued["body"]["prompt_id"]
            page.page.wait_for_function("(pid) => document.querySelector('.st-sub')?.title === 'prompt ' + pid",
                                        arg=prompt_id, timeout=PROMPT_TIMEOUT_MS)
            seen = page.js("() => window.__stSteps")
            values = [int(m.group(1)) for m in (re.match(rf"step (\d+) of {steps}$", t) for t in seen) if m]
            assert len(set(values)) >= 2 and values == sorted(values), seen
            badges = {b["id"]: b["info"] for b in page.js(BADGES)}
            assert badges["3"] and badges["3"]["kind"] == "time"
            assert page.errors() == [], json.dumps(page.errors(), indent=1)
        finally:
            page.close()


# --- Degrading on a frontend without an API ------------------------------------------------------------------------

# Runs before the frontend's bundle: catches the ComfyApp instance when the bundle publishes it on
# window.comfyAPI.app, then takes away what __HIDE__ names, as an older or stripped-down frontend would lack it:
# {"property of the app": {"proxy": [keys]}} hides keys behind a Proxy (the extension manager, a plain store);
# {"property": {"shadow": [keys]}} shadows methods with undefined own properties (the canvas, whose private
# fields a Proxy would break).
WITHOUT = """(() => {
  const take = (obj, how) => {
    if (!obj || typeof obj !== 'object') return obj;
    for (const k of how.shadow || []) Object.defineProperty(obj, k, {value: undefined, configurable: true});
    const keys = how.proxy || [];
    return keys.length ? new Proxy(obj, {get: (t, k, r) => keys.includes(k) ? undefined : Reflect.get(t, k, r),
                                         has: (t, k) => !keys.includes(k) && Reflect.has(t, k)}) : obj;
  };
  let app;
  const holder = {};
  Object.defineProperty(holder, 'app', {configurable: true, enumerable: true, get: () => app, set: (v) => {
    app = v;
    for (const [name, how] of Object.entries(__HIDE__)) {
      let value = take(v[name], how);
      Object.defineProperty(v, name, {configurable: true, enumerable: true,
        get: () => value, set: (x) => { value = take(x, how); }});
    }
  }});
  window.comfyAPI = window.comfyAPI || {};
  window.comfyAPI.app = holder;
})();"""


@pytest.mark.parametrize("case", ["no sidebar tabs", "no canvas API"])
def test_it_degrades_on_a_frontend_without_an_api(browser, comfy_server, case, tmp_path):
    hide = {"no sidebar tabs": {"extensionManager": {"proxy": ["registerSidebarTab", "sidebarTab"]}},
            "no canvas API": {"canvas": {"shadow": ["convertEventToCanvasOffset"]}}}[case]
    page = Page(browser, comfy_server, init_script=WITHOUT.replace("__HIDE__", json.dumps(hide))).open()
    try:
        page.page.wait_for_timeout(500)  # the last prompt's panel data loads
        if case == "no sidebar tabs":
            assert page.js("() => window.comfyAPI.app.app.extensionManager.registerSidebarTab") is None
            box = page.page.locator('[data-stagetrace="floating"]')
            assert box.count() == 1 and not box.is_visible()
            page.page.click('[data-stagetrace="toggle"]')
            page.page.wait_for_selector('[data-stagetrace="floating"] .st-panel', state="visible", timeout=10_000)
            page.page.screenshot(path=str(tmp_path / "floating.png"))
            shutil.copyfile(tmp_path / "floating.png", SCREENSHOT.replace(".png", "-floating.png"))
            expected = "no sidebar tab API"
        else:
            assert page.js("() => window.comfyAPI.app.app.extensionManager.sidebarTab.sidebarTabs"
                           ".some((t) => t.id === 'stagetrace')")
            page.js("(p) => window.comfyAPI.app.app.loadApiJson(p, 'degraded.json')", tiny_txt2img(CHECKPOINT))
            page.page.wait_for_function("() => window.comfyAPI.app.app.graph.nodes.length >= 7")
            assert page.js(BADGES) and not any(b["slot"] for b in page.js(BADGES))
            expected = "no node badges"
        lines = page.stagetrace_lines()
        assert len(lines) == 1 and expected in lines[0], lines
        assert page.errors() == [], json.dumps(page.errors(), indent=1)
    finally:
        page.close()
