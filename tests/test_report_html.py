"""The HTML report of one prompt (render/report.py render_html, charts.timeline): what a person reads on
the page, checked from the page itself.

Traces are the recorded scenario runs (tests/fixtures/scenarios/*.trace.json, with GPU windows), the same
runs scaled to another wall time (every ts offset, dur and GPU figure multiplied by one factor), and
synthetic traces in the recorder's shape (complete events with cat/name/ts/dur/args) for what no recorded
run has: hostile names, hundreds of thousands of spans. One test opens pages in headless Chromium and keeps
the screenshots (STAGETRACE_SCREENSHOTS=folder keeps them somewhere to look at).
"""

from __future__ import annotations

import copy
import functools
import html
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from comfy_nodes.analysis.diagnose import diagnose
from comfy_nodes.analysis.summary import EXCLUSIVE_LABELS
from comfy_nodes.core.units import format_duration
from comfy_nodes.render import charts
from comfy_nodes.render.report import LANES, render, render_html, render_md, shares_to_100

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = os.path.join(HERE, "fixtures", "scenarios")
T0 = 81_234_567_000.0


@functools.cache
def _scenario(name: str) -> str:
    with open(os.path.join(SCENARIOS, f"{name}.trace.json")) as f:
        return f.read()


def scenario(name: str) -> dict:
    return json.loads(_scenario(name))


def scaled(name: str, wall_s: float) -> dict:
    """A recorded run with every time stretched so that its prompt lasts ``wall_s``."""
    trace = scenario(name)
    prompt = next(e for e in trace["traceEvents"] if e.get("cat") == "prompt" and e.get("name") == "prompt")
    k, origin = wall_s * 1e6 / prompt["dur"], prompt["ts"]
    for e in trace["traceEvents"]:
        if e.get("ph") != "M" and "ts" in e:
            e["ts"] = origin + (e["ts"] - origin) * k
        if "dur" in e:
            e["dur"] *= k
        args = e.get("args") or {}
        for key in ("busy_ms", "window_ms", "kernel_ms"):
            if key in args:
                args[key] *= k
    return trace


def page_of(trace: dict, **kw) -> str:
    return render(diagnose(trace), "html", trace, **kw)


def svg(page: str, chart_id: str) -> str:
    start = page.index(f'id="{chart_id}"')
    return page[start:page.index("</svg>", start)]


def ticks(fragment: str) -> list[str]:
    return re.findall(r'class="tick-x"[^>]*>([^<]*)<', fragment)


def titles(fragment: str, cls: str = "stage") -> list[str]:
    return [html.unescape(t) for t in re.findall(rf'<rect class="{cls}"[^>]*><title>([^<]*)</title>', fragment)]


def tick_seconds(label: str) -> float:
    if label == "0":
        return 0.0
    number, unit = label.split(" ")
    return float(number) * {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}[unit]


def span(cat: str, name: str, start_s: float, dur_s: float, **args) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": T0 + start_s * 1e6, "dur": dur_s * 1e6, "pid": 1, "tid": 1,
            "args": {"outcome": "ok", **args}}


def synthetic(wall_s: float, steps: int = 10) -> dict:
    """One prompt in the recorder's shape: a loader node reading a file, a sampler node with its steps, a
    decode node and a save node, laid out over ``wall_s``."""
    w = wall_s
    ev = [span("prompt", "queue_wait", -0.01 * w, 0.01 * w, prompt_id="syn"),
          span("node", "CheckpointLoaderSimple", 0.0, 0.1 * w, node_id="4"),
          span("model_load.read", "model.safetensors", 0.0, 0.08 * w, path="/m/model.safetensors", file_bytes=2e9),
          span("node", "KSampler", 0.1 * w, 0.7 * w, node_id="3"),
          span("sample", "euler", 0.12 * w, 0.66 * w, steps=steps)]
    ev += [span("sample.step", f"step {i + 1}/{steps}", 0.12 * w + i * 0.066 * w, 0.066 * w, step=i + 1, of=steps)
           for i in range(steps)]
    ev += [span("node", "VAEDecode", 0.8 * w, 0.15 * w, node_id="8"),
           span("vae_decode", "VAE decode", 0.81 * w, 0.13 * w, shape=[1, 4, 64, 64], tiled_fallback=False),
           span("node", "SaveImage", 0.95 * w, 0.05 * w, node_id="9"),
           span("save", "SaveImage", 0.95 * w, 0.05 * w, bytes_written=123456),
           span("prompt", "prompt", 0.0, w, prompt_id="syn")]
    return {"traceEvents": ev, "otherData": {"prompt_id": "syn"}}


# --- Time ticks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wall_s", "expected"), [
    (0.005, ["0", "1 ms", "2 ms", "3 ms", "4 ms", "5 ms"]),
    (0.009, ["0", "2 ms", "4 ms", "6 ms", "8 ms"]),
    (5.0, ["0", "1 s", "2 s", "3 s", "4 s", "5 s"]),
    (1200.0, ["0", "5 min", "10 min", "15 min", "20 min"]),
])
def test_timeline_ticks_read_in_the_unit_of_the_run(wall_s, expected):
    for trace in (scaled("step-rate", wall_s), synthetic(wall_s)):
        labels = ticks(svg(page_of(trace), "timeline"))
        assert labels == expected, labels


def test_time_ticks_are_increasing_distinct_round_and_in_one_unit():
    for end in [1e-5, 3.3e-4, 0.001, 0.0049, 0.009, 0.05, 0.3, 0.999, 1.0, 1.5, 2.7, 9.3, 59.0, 62.7, 119.0, 150.0,
                200.0, 599.0, 601.0, 1199.0, 1200.0, 1205.0, 3000.0, 7300.0, 10800.0, 86400.0 * 3]:
        for most in (4, 6, 8, 10):
            ticks_ = charts.time_ticks(end, most)
            labels = [label for _, label in ticks_]
            values = [value for value, _ in ticks_]
            assert labels[0] == "0" and len(labels) == len(set(labels)) >= 2, (end, labels)
            assert values == sorted(values) and values[-1] <= end * (1 + 1e-9) and len(values) - 1 <= most
            assert len({label.split(" ")[1] for label in labels[1:]}) == 1, labels  # one unit on an axis
            for value, label in ticks_:  # each label reads its value
                assert abs(tick_seconds(label) - value) <= 1e-9 * max(1.0, value), (label, value)
            assert not any(re.fullmatch(r"0\.0+ \w+", label) for label in labels)  # never "0.00 s"


# --- The timeline --------------------------------------------------------------------------------


def drawable(trace: dict) -> list[dict]:
    """The spans the timeline draws: complete events, without the queue wait and cached nodes."""
    return [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("name") != "queue_wait"
            and not (e.get("cat") == "node" and (e["args"].get("outcome") == "cached" or e["dur"] <= 0))]


def test_bars_are_labelled_where_they_fit_and_every_bar_has_its_figures():
    trace = scaled("step-rate", 5.0)
    page = page_of(trace)
    timeline = svg(page, "timeline")
    labels = [html.unescape(t) for t in re.findall(r'class="bar-label"[^>]*>([^<]*)<', timeline)]
    assert "KSampler #3" in labels and "prompt step-rate-1" in labels and "sample · euler" in labels
    assert all(re.fullmatch(r"step \d+/25|\d+", t) for t in labels if re.match(r"step |\d+$", t))
    assert sum(bool(re.fullmatch(r"step \d+/25|\d+", t)) for t in labels) == 25  # each step labelled
    tips = titles(timeline)
    spans = drawable(trace)
    assert len(tips) == len(spans)  # one bar per span, none merged at this size
    for e in spans:  # each span's tooltip: its duration, its start and its outcome
        dur, start = format_duration(e["dur"] / 1e6), format_duration((e["ts"] - T0) / 1e6)
        assert any(f"{e['cat']} · {dur}" in t and f"starts at +{start}" in t and "outcome ok" in t for t in tips), e
    read = next(t for t in tips if t.startswith("model_load.read"))
    assert "file size: 6.9 GB" in read and "in node CheckpointLoaderSimple #4" in read and "file system: ext4" in read
    decode = next(t for t in tips if t.startswith("vae_decode"))
    assert "shape: [1, 4, 128, 128]" in decode and "tiled fallback (after running out of memory): no" in decode
    node = next(t for t in tips if t.startswith("KSampler #3"))
    assert "node id 3" in node and "GPU busy" in node
    window = next(t for t in tips if t.startswith("GPU: step 1/25"))
    assert "GPU busy share: 97.0 %" in window and "window of stage sample.step" in window


def test_a_narrow_bar_keeps_its_label_in_its_tooltip_only():
    trace = synthetic(10.0)
    trace["traceEvents"].append(span("node", "TinyNodeWithALongName", 9.9995, 0.0004, node_id="77"))
    timeline = svg(page_of(trace), "timeline")
    assert "TinyNodeWithALongName" not in re.findall(r'class="bar-label"[^>]*>([^<]*)<', timeline)
    assert any(t.startswith("TinyNodeWithALongName #77") for t in titles(timeline))


def test_the_legend_lists_the_stages_present_in_their_colours():
    trace = scenario("vae-tiled")
    timeline = svg(page_of(trace), "timeline")
    legend = re.findall(r'<g class="legend-item"><rect [^>]*fill="(#[0-9a-f]{6})"/><text[^>]*>([^<]*)<', timeline)
    present = {e["cat"] for e in drawable(trace)}
    assert [name for _, name in legend] == [name for name, _ in LANES if name in present]
    assert all(dict(LANES)[name] == colour for colour, name in legend)
    assert "model_load.read" not in present and "model_load.read" not in [n for _, n in legend]


# --- Steps, GPU, stages ----------------------------------------------------------------------------


def test_the_step_chart_has_one_bar_per_step_in_order():
    trace = scenario("step-rate")
    steps = [e for e in trace["traceEvents"] if e.get("cat") == "sample.step"]
    chart = svg(page_of(trace), "steps")
    bars = re.findall(r'<g class="bar" data-bar="([^"]*)"><rect class="seg"[^>]*data-value="([^"]*)"', chart)
    assert [label for label, _ in bars] == [str(e["args"]["step"]) for e in steps]
    assert [float(v) for _, v in bars] == pytest.approx([e["dur"] / 1e6 for e in steps])


def test_a_prompt_that_samples_twice_gets_a_colour_per_sampler_call():
    trace = synthetic(10.0, steps=4)
    trace["traceEvents"] += [span("sample.step", f"step {i}/3", 9.0 + 0.1 * i, 0.1, step=i, of=3) for i in (1, 2, 3)]
    chart = svg(page_of(trace), "steps")
    assert chart.count('<g class="bar"') == 7 and "sampler 1" in chart and "sampler 2" in chart


def test_gpu_busy_per_node_sums_to_the_gpu_windows():
    for name in ("vae-tiled", "partial-offload", "step-rate"):
        trace = scenario(name)
        page = page_of(trace)
        table = page[page.index('<table id="nodes">'):]
        table = table[:table.index("</table>")]
        rows = re.findall(r'<tr( class="[^"]*")?( data-node-id="[^"]*")? data-busy-ms="([^"]*)">', table)
        windows = [e for e in trace["traceEvents"] if e.get("cat") == "gpu" and e.get("ph") == "X"]
        total = sum(e["args"]["busy_ms"] for e in windows)
        parts = [float(ms) for cls, _, ms in rows if "total" not in cls]
        (whole,) = [float(ms) for cls, _, ms in rows if "total" in cls]
        assert sum(parts) == pytest.approx(total, abs=1e-3 * len(parts)) and whole == pytest.approx(total, abs=1e-3)
        nodes = [e for e in trace["traceEvents"] if e.get("cat") == "node" and e["dur"] > 0]
        by_node = {nid: float(ms) for _, nid, ms in ((c, re.sub(r'.*"(.*)"', r"\1", n), m) for c, n, m in rows if n)}
        for node in nodes:  # each node: the busy time of the windows that start inside it
            inside = [w for w in windows if node["ts"] <= w["ts"] <= node["ts"] + node["dur"]]
            assert by_node[node["args"]["node_id"]] == pytest.approx(sum(w["args"]["busy_ms"] for w in inside),
                                                                     abs=1e-3)
        assert "busy / node time" in page


def test_no_gpu_table_without_gpu_windows():
    page = page_of(synthetic(3.0))
    assert "GPU busy</th>" not in page and '<table id="nodes">' in page and "KSampler #3" in page


def stage_shares(page: str) -> list[tuple[str, float, float]]:
    table = page[page.index('<table id="stages">'):]
    table = table[:table.index("</table>")]
    return [(html.unescape(s), float(own), float(share)) for s, own, share in
            re.findall(r'<tr data-stage="([^"]*)" data-own-s="([^"]*)" data-share="([^"]*)">', table)]


def test_the_time_by_stage_gives_own_times_whose_shares_add_to_100():
    traces = [scenario(n) for n in ("vae-tiled", "partial-offload", "step-rate", "gpu-idle", "memory-pressure",
                                    "fp8-no-compute")] + [scaled("step-rate", 0.005), synthetic(7.0)]
    for trace in traces:
        report = diagnose(trace)
        page = render_html(report, trace)
        rows = stage_shares(page)
        assert round(sum(share for _, _, share in rows), 6) == 100.0, rows
        assert sum(own for _, own, _ in rows) == pytest.approx(report.summary.wall_s, rel=1e-6)
        named = [row for row in rows if row[0] != "(no span)"]  # the rows of report.stages, in order
        assert [s for s, _, _ in named] == [s for s, _, _ in report.stages]
        assert [own for _, own, _ in named] == pytest.approx([t for _, t, _ in report.stages], rel=1e-6)
        for stage, label in EXCLUSIVE_LABELS.items():
            assert (f"({label})" in page) == (stage in report.summary.exclusive_s)
        for stage, whole in report.summary.stage_s.items():  # the whole (inclusive) time column
            if stage in {s for s, _, _ in rows}:
                assert format_duration(whole) in page
    md = render_md(diagnose(traces[0]))
    assert "| stage | own time | share | whole time |" in md and "(outside nodes)" in md


def test_shares_are_rounded_to_add_to_exactly_100():
    assert sum(shares_to_100([1, 1, 1])) == pytest.approx(100.0)
    assert shares_to_100([1, 1, 1]) == [33.4, 33.3, 33.3]
    assert shares_to_100([0.0, 0.0]) == [0.0, 0.0]
    assert sum(shares_to_100([0.001, 5, 7.77, 1e-9, 3])) == pytest.approx(100.0)


# --- The previous run ------------------------------------------------------------------------------


def previous_of(report, factor: float = 0.8) -> dict:
    return {"prompt_id": "earlier-1", "wall_s": report.summary.wall_s * factor,
            "stages": {k: v * factor for k, v in report.summary.stage_s.items() if k != "vae_decode"},
            "ended": 1764473100.0}


def test_the_comparison_with_the_previous_run_shows_only_when_given():
    trace = scenario("vae-tiled")
    report = diagnose(trace)
    previous = previous_of(report)
    page = render(report, "html", trace, previous=previous)
    block = page[page.index('<section id="previous">'):page.index("</section>", page.index('id="previous"'))]
    assert "earlier-1" in block and "2025-11-30 03:25:00 UTC" in block
    rows = re.findall(r'<tr( class="\w+")? data-what="([^"]*)"><td>.*?</td><td class=r>([^<]*)</td><td class=r>'
                      r'([^<]*)</td><td class=r>([^<]*)</td><td class=r>([^<]*)</td>', block)
    table = {what: (now, before, diff, ratio, cls) for cls, what, now, before, diff, ratio in rows}
    wall = report.summary.wall_s
    assert table["wall time"][:4] == (format_duration(wall), format_duration(wall * 0.8),
                                      "+" + format_duration(wall * 0.2), "×1.25")
    assert 'slower' in table["wall time"][4]
    assert table["sample.step"][3] == "×1.25" and table["vae_decode"][1:3] == ("-", "new")
    assert "prompt" not in table  # the prompt's whole time is the wall time
    without = render(report, "html", trace)
    assert 'id="previous"' not in without and "previous run" not in without.lower()
    md = render(report, "md", previous=previous)
    assert "## Compared with the previous run" in md and "| wall time |" in md and "×1.25" in md
    assert "Compared with the previous run" not in render(report, "md")
    assert json.loads(render(report, "json", previous=previous))["previous"] == previous
    assert "previous" not in json.loads(render(report, "json"))
    assert "previous run (earlier-1)" in render(report, "text", previous=previous)
    assert "previous" not in render(report, "text")


def test_a_malformed_previous_run_renders_what_it_can():
    trace = synthetic(2.0)
    report = diagnose(trace)
    page = render(report, "html", trace, previous={"prompt_id": "<b>x</b>", "wall_s": "slow", "stages": [1],
                                                   "ended": "yesterday <i>"})
    assert '<section id="previous">' in page and "&lt;b&gt;x&lt;/b&gt;" in page and "yesterday &lt;i&gt;" in page
    assert render(report, "html", trace, previous="not a dict") == render(report, "html", trace)
    page = render(report, "html", trace, previous={"ended": 1e300, "wall_s": float("nan"), "stages": {"save": 1.0}})
    assert "ended 1e+300" in page and 'data-what="save"' in page


# --- Hostile traces, big traces --------------------------------------------------------------------


def test_names_from_the_trace_are_escaped():
    trace = synthetic(4.0)
    for e in trace["traceEvents"]:
        if e["name"] == "KSampler":
            e["name"] = "<script>alert(1)</script>"
            e["args"]["node_id"] = '3"><img src=x onerror=alert(1)>'
        if e["cat"] == "model_load.read":
            e["name"] = "it's \"quoted\" <model>.safetensors"
            e["args"]["path"] = "/m/it's \"quoted\" <model>.safetensors"
        if e["cat"] == "prompt":
            e["args"]["prompt_id"] = "</title><script>x</script>"
    trace["traceEvents"].append(span("<svg onload=alert(1)>", "x", 1.0, 1.0, note="</style><script>"))
    page = page_of(trace, previous={"prompt_id": "<script>", "wall_s": 1.0, "stages": {"<script>": 1.0}})
    assert "<script" not in page.lower() and "<img" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "it&#x27;s &quot;quoted&quot; &lt;model&gt;.safetensors" in page
    tags = parsed(page)
    assert {t for t, _ in tags} <= SAFE_TAGS, {t for t, _ in tags} - SAFE_TAGS
    assert not [a for _, attrs in tags for a, _ in attrs if a in ("src", "href") or a.startswith("on")]
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert page.count("<style>") == 1 and "@import" not in page and "url(" not in page


SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "p", "b", "div", "span",
             "section", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "figure", "figcaption", "footer",
             "svg", "g", "rect", "line", "text", "polyline", "circle", "path"}


def parsed(page: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag of a page as the browser's tokenizer sees it: (tag, attributes)."""
    from html.parser import HTMLParser

    tags = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, attrs))

    Collect().feed(page)
    return tags


def many_spans(count: int) -> dict:
    """One prompt of 500 nodes, each with steps, GPU windows and loads: ``count`` complete events."""
    wall = 600.0
    ev = [span("prompt", "prompt", 0.0, wall, prompt_id="big")]
    nodes = 500
    each = (count - 1) // nodes - 1
    node_s = wall / nodes
    cats = ("sample.step", "gpu", "text_encode", "model_load.read")
    for n in range(nodes):
        at = n * node_s
        ev.append(span("node", f"Node{n % 37}", at, node_s * 0.98, node_id=str(n)))
        sub = node_s * 0.98 / each
        for k in range(each):
            cat = cats[k % 4]
            args = {"step": k // 4 + 1, "of": each // 4} if cat == "sample.step" else {}
            if cat == "gpu":
                args = {"stage": "sample.step", "busy_ms": sub * 500, "window_ms": sub * 1e3, "busy_fraction": 0.5}
            ev.append(span(cat, f"{cat} {k}", at + k * sub, sub * 0.9, **args))
    return {"traceEvents": ev, "otherData": {"prompt_id": "big", "gpu": {"collection": "cupti"}}}


def test_a_trace_of_200_000_spans_renders_a_small_page_quickly():
    trace = many_spans(200_000)
    report = diagnose(trace)
    started = time.perf_counter()
    page = render_html(report, trace)
    took = time.perf_counter() - started
    assert len(page.encode()) < 1_500_000, len(page)
    assert took < 30, took  # about 1 s on a quiet machine
    timeline = svg(page, "timeline")
    assert timeline.count("<rect") <= charts.MAX_MARKS + 40  # bars, lane backgrounds and legend swatches
    assert "merged" in timeline and "Short spans merged into runs" in page
    merged = [int(c) for c in re.findall(r'class="stage merged"[^>]*data-count="(\d+)"', timeline)]
    single = len(re.findall(r'<rect class="stage" ', timeline))
    assert sum(merged) + single == len(drawable(trace))  # every span drawn once, alone or in a run
    assert len(re.findall(r'class="bar"', svg(page, "steps"))) == 0  # past MAX_BARS steps: a line
    assert round(sum(share for _, _, share in stage_shares(page)), 6) == 100.0


def test_a_hostile_lane_count_is_bounded():
    ev = [span(f"cat{i}", "x", i * 0.001, 0.001) for i in range(500)]
    ev.append(span("prompt", "prompt", 0.0, 0.5, prompt_id="p"))
    trace = {"traceEvents": ev}
    timeline = svg(render_html(diagnose(trace), trace), "timeline")
    lanes = re.findall(r'<text class="lane"[^>]*>([^<]*)<', timeline)
    assert len(lanes) <= 6 and "other" in lanes


def test_malformed_events_are_left_out():
    trace = synthetic(1.0)
    report = diagnose(copy.deepcopy(trace))  # the summary is not this renderer's: it gets the clean events
    trace["traceEvents"] += [{"ph": "X", "cat": "save", "ts": "soon", "dur": 5}, {"ph": "X", "cat": "save"},
                             {"ph": "X", "cat": "save", "ts": float("nan"), "dur": 1.0}, "not an event",
                             {"ph": "X", "cat": ["list"], "ts": T0, "dur": 10.0, "args": [1, 2]},
                             {"ph": "X", "cat": "node", "ts": T0, "dur": 10.0, "args": "x"}]
    page = render_html(report, trace)
    assert 'id="timeline"' in page and "KSampler #3" in page
    assert render_html(diagnose({"traceEvents": []}), {}).count("no spans in this trace") == 1


# --- In a browser ----------------------------------------------------------------------------------


def test_the_page_opens_in_headless_chromium_with_its_timeline_legend_and_ticks(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    keep = os.environ.get("STAGETRACE_SCREENSHOTS")
    for name, trace in (("vae-tiled", scenario("vae-tiled")), ("step-rate-5ms", scaled("step-rate", 0.005))):
        report = diagnose(trace)
        page = tmp_path / f"{name}.html"
        page.write_text(render(report, "html", trace, previous=previous_of(report)))
        text = page.read_text()
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                              f"file://{page}"], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        tree = dom.stdout
        assert '<svg class="chart timeline" id="timeline"' in tree and 'id="steps"' in tree
        assert tree.count('class="stage"') == text.count('class="stage"') > 20  # every bar parsed
        assert tree.count('class="legend-item"') >= 6 and ticks(svg(tree, "timeline")) == ticks(svg(text, "timeline"))
        assert ticks(svg(tree, "timeline"))[1] in ("20 s", "1 ms")
        shot = tmp_path / f"{name}.png"
        snap = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--screenshot={shot}", "--window-size=1200,1800", f"file://{page}"],
                              capture_output=True, text=True, timeout=120)
        assert snap.returncode == 0 and shot.stat().st_size > 20_000, snap.stderr[-2000:]
        assert "Uncaught" not in dom.stderr and "ERR_" not in dom.stderr
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(shot, os.path.join(keep, shot.name))
