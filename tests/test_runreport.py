"""The bench and load report pages (render/runreport.py) and their SVG charts (render/charts.py), from
dicts shaped as the commands build them: figures that must add up, units that fit the range, bounded
output, escaping, partial results, atomic writes, and a real browser parsing the page."""

import json
import os
import re
import shutil
import subprocess

import pytest

from comfy_nodes.render import charts
from comfy_nodes.render.runreport import (
    bench_report,
    load_report,
    md_text,
    report_format,
    stage_segments,
    write_report,
)

HOSTILE = "<script>alert(1)</script> | a\nb"
SAMPLES = "/tmp/samples"


# --- Inputs, shaped as `stagetrace bench --json` and `stagetrace load --json` print them -------------


def bench_run(index, cold=False, at=0.0, queue=0.05, read=0.0, sample=2.0, decode=0.3, save=0.05, other=0.1,
              outcome="ok", error=None, steps_per_s=9.5):
    """One run; its stage split adds up to its execution ("prompt") with ``other`` outside the stages."""
    stages = {"model_load.read": read, "model_load.build": 0.4 if cold else 0.0, "text_encode": 0.08,
              "sample": sample, "sample.step": sample * 0.95, "vae_decode": decode, "save": save}
    stages = {k: v for k, v in stages.items() if v}
    execution = sum(v for k, v in stages.items() if k != "sample.step") + other
    stages["prompt"] = execution
    stages["node"] = execution - other / 2
    if outcome != "ok":
        return {"index": index, "cold": cold, "prompt_id": f"p{index}", "outcome": outcome, "error": error,
                "at_s": at, "queue_wait_s": queue, "execution_s": 0.4, "e2e_s": queue + 0.4, "steps": 0,
                "steps_per_s": None, "nodes_s": {"KSampler #3": 0.4}, "cached": [], "stages_s": None}
    return {"index": index, "cold": cold, "prompt_id": f"p{index}", "outcome": "ok", "error": None, "at_s": at,
            "queue_wait_s": queue, "execution_s": execution, "e2e_s": queue + execution, "steps": 20,
            "steps_per_s": steps_per_s, "nodes_s": {"CheckpointLoaderSimple #4": read + 0.4, "KSampler #3": sample},
            "cached": ["4"] if not cold else [], "stages_s": stages}


def stats(values):
    n = len(values)
    mean = sum(values) / n
    return {"mean": mean, "median": sorted(values)[n // 2], "min": min(values), "max": max(values),
            "stdev": (sum((v - mean) ** 2 for v in values) / max(n - 1, 1)) ** 0.5, "n": n}


def bench_out(runs, stagetrace=True, gpu=None):
    summary = {}
    for group, chosen in (("warm", [r for r in runs if not r["cold"]]), ("cold", [r for r in runs if r["cold"]])):
        ok = [r for r in chosen if r["outcome"] == "ok"]
        summary[group] = {k: stats([r[k] for r in ok]) if ok else None
                          for k in ("queue_wait_s", "execution_s", "e2e_s", "steps_per_s")}
        stage_names = {s for r in ok for s in (r["stages_s"] or {})}
        summary[group]["stages_s"] = {s: sum(r["stages_s"][s] for r in ok if s in r["stages_s"]) / len(ok)
                                      for s in sorted(stage_names)}
        summary[group]["failed"] = len(chosen) - len(ok)
    return {"url": "http://127.0.0.1:8188", "stagetrace": stagetrace, "preflight": [], "started_at": 1_700_000_000.0,
            "workflow": "sd15.json", "runs": runs, "summary": summary, "gpu": gpu or {"source": None, "note": None,
                                                                                     "samples": []},
            "table": "ignored"}


def five_runs():
    runs = [bench_run(1, cold=True, at=0.0, read=3.0, sample=2.5)]
    at = runs[0]["e2e_s"] + 0.1
    for i in range(2, 6):
        runs.append(bench_run(i, at=at, sample=2.0 + 0.1 * i))
        at += runs[-1]["e2e_s"] + 0.1
    return runs


def gpu_samples(until, every=0.5):
    samples, t = [], 0.0
    while t <= until:
        samples.append({"t": t, "device": "NVIDIA H200", "util_pct": 95.0 if int(t) % 3 else 10.0,
                        "mem_used_bytes": 20e9 + 1e9 * (t % 4), "mem_total_bytes": 141e9})
        t += every
    return {"source": "stagetrace", "note": None, "samples": samples}


def load_request(index, at, worker="http://a:8188", outcome="ok", e2e=4.0, queue=1.0, error=None):
    ok = outcome == "ok"
    return {"index": index, "worker": worker, "user": index % 3, "submitted_at": at, "prompt_id": f"q{index}",
            "outcome": outcome, "error": error, "queue_wait_s": queue if ok else None,
            "execution_s": e2e - queue if ok else None, "e2e_s": e2e if ok else None,
            "stages_s": {"sample": (e2e - queue) * 0.8, "prompt": e2e - queue} if ok else None}


def percentiles(values):
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None, "max": None}

    def p(q):
        return ordered[min(len(ordered) - 1, int(round((len(ordered) - 1) * q / 100)))]

    return {"p50": p(50), "p95": p(95), "p99": p(99), "max": ordered[-1]}


def load_out(detail, urls=("http://a:8188",), wall=60.0, **extra):
    ok = [r for r in detail if r["outcome"] == "ok"]
    errors = {}
    for r in detail:
        if r["outcome"] != "ok":
            errors[r["outcome"]] = errors.get(r["outcome"], 0) + 1
    out = {"urls": list(urls), "requests": len(detail), "ok": len(ok),
           "success_rate": len(ok) / len(detail) if detail else None,
           "images_per_minute": len(ok) / wall * 60, "wall_s": wall, "errors": errors,
           "queue_wait_s": percentiles([r["queue_wait_s"] for r in ok]),
           "execution_s": percentiles([r["execution_s"] for r in ok]),
           "e2e_s": percentiles([r["e2e_s"] for r in ok]),
           "stages_s": {"sample": {"p50": 2.4, "p95": 2.9}, "prompt": {"p50": 3.0, "p95": 3.6}} if ok else {},
           "per_worker": {}, "queue_depth": {u: [[float(t), t % 5] for t in range(int(wall))] for u in urls},
           "thresholds_missed": [], "mode": {"model": "closed", "users": 3, "requests": 3},
           "requests_detail": detail}
    out.update(extra)
    return out


def three_users():
    detail = [load_request(i + 1, at=4.0 * (i // 3), e2e=4.0 + i % 3, queue=1.0 + i % 3) for i in range(9)]
    detail[4] = load_request(5, at=4.0, outcome="execution error", error="KSampler #3: RuntimeError: boom")
    return detail


# --- helpers reading the SVG back ------------------------------------------------------------------


def svg_of(page, chart_id):
    m = re.search(rf'<svg class="chart" id="{chart_id}".*?</svg>', page, re.S)
    assert m, f"no chart {chart_id}"
    return m.group(0)


def segments(svg):
    """(bar label, segment, value, height) of every stacked segment."""
    out = []
    for bar in re.finditer(r'<g class="bar" data-bar="([^"]*)">(.*?)</g>', svg, re.S):
        for seg in re.finditer(r'<rect class="seg" data-segment="([^"]*)" data-value="([^"]*)".*?height="([^"]*)"',
                               bar.group(2)):
            out.append((bar.group(1), seg.group(1), float(seg.group(2)), float(seg.group(3))))
    return out


def ticks(svg, axis):
    return [t for t in re.findall(rf'class="tick-{axis}"[^>]*>([^<]*)<', svg)]


def md_rows(text, header):
    """The data rows of the Markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


# --- bench -----------------------------------------------------------------------------------------


def test_bench_html_draws_one_stacked_bar_per_run_with_heights_proportional_to_seconds():
    runs = five_runs()
    page = bench_report(bench_out(runs), "html")
    segs = segments(svg_of(page, "chart-runs"))
    assert sorted({s[0] for s in segs}) == ["1 cold", "2", "3", "4", "5"]
    px_per_s = {round(h / v, 3) for _, _, v, h in segs}
    assert len(px_per_s) == 1 and px_per_s.pop() > 0  # one scale for every segment of every bar
    for r in runs:
        label = f"{r['index']}" + (" cold" if r["cold"] else "")
        mine = {name: v for bar, name, v, _ in segs if bar == label}
        assert mine["queue wait"] == pytest.approx(r["queue_wait_s"])
        execution = sum(v for name, v in mine.items() if name != "queue wait")
        assert execution == pytest.approx(r["execution_s"]) == pytest.approx(r["stages_s"]["prompt"])
        assert "sample.step" not in mine and "node" not in mine and "prompt" not in mine  # not stacked twice
        assert mine["other"] == pytest.approx(0.1)
    assert 'data-segment="model_load.read"' in page and "#c0392b" in page  # report.py's LANES colour


def test_stage_segments_without_stagetrace_use_the_websocket_node_times():
    run = bench_run(2)
    run["stages_s"] = None
    run["nodes_s"] = {"KSampler #3": 1.5, "VAEDecode #8": 0.5}
    run["execution_s"] = 2.25
    assert stage_segments(run) == [("KSampler #3", 1.5), ("VAEDecode #8", 0.5), ("other", 0.25)]
    out = bench_out([run], stagetrace=False)
    for fmt in ("md", "html"):
        text = bench_report(out, fmt)
        assert "node times come from the WebSocket" in text
        assert "KSampler #3" in text


def test_bench_tick_labels_read_in_ms_for_a_short_run_and_in_min_for_a_long_one():
    short = bench_run(1, queue=0.01, sample=0.2, decode=0.05, save=0.01, other=0.02)
    svg = svg_of(bench_report(bench_out([short]), "html"), "chart-runs")
    labels = ticks(svg, "y")
    assert labels[0] == "0" and all(t.endswith(" ms") for t in labels[1:]), labels
    long = bench_run(1, queue=30.0, sample=1500.0, decode=20.0)
    svg = svg_of(bench_report(bench_out([long]), "html"), "chart-runs")
    labels = ticks(svg, "y")
    assert all(t.endswith(" min") for t in labels[1:]) and len(labels) >= 3, labels
    assert "25 min" in svg or "20 min" in svg


def test_tick_labels_and_steps():
    assert charts.tick_label(0.25, "duration") == "250 ms"
    assert charts.tick_label(2.5, "duration") == "2.5 s"
    assert charts.tick_label(1200, "duration") == "20 min"
    assert charts.tick_label(50e9, "bytes") == "50 GB"
    assert charts.tick_label(25, "percent", 25) == "25 %"
    assert charts.nice_step(0.9, "duration") == 0.2
    assert charts.nice_step(5400, "duration") == 1200  # steps in whole 10 minutes past 20 minutes
    assert charts.nice_step(7, "number") == 2


def test_bench_summary_tables_show_the_warm_figures_and_the_cold_run_apart():
    runs = five_runs()
    out = bench_out(runs)
    md = bench_report(out, "md")
    assert len(md_rows(md, "| run | kind |")) == 5
    warm = out["summary"]["warm"]["execution_s"]
    from comfy_nodes.core.units import format_duration

    row = next(r for r in md.split("### Warm runs")[1].splitlines() if r.startswith("| execution"))
    for key in ("mean", "median", "min", "max", "stdev"):
        assert format_duration(warm[key]) in row
    assert row.endswith("| 4 |")
    assert "### Cold runs" in md and "| 1 | cold | ok |" in md
    split = md_rows(md, "| stage |")
    names = [r.split("|")[1].strip() for r in split]
    assert names[:2] == ["model_load.read", "model_load.build"] and "other" in names
    assert "sample.step (inside sample)" in names and "total (prompt, measured by the server)" in names
    assert "the html form" in md.lower() and "<svg" not in md


def test_bench_gpu_over_time_with_each_run_shaded_or_a_line_saying_why_not():
    runs = five_runs()
    end = runs[-1]["at_s"] + runs[-1]["e2e_s"]
    page = bench_report(bench_out(runs, gpu=gpu_samples(end)), "html")
    util = svg_of(page, "chart-gpu-util")
    assert util.count('class="span"') == 5 and "run 1 (cold" in util
    assert ticks(util, "y") == ["0", "25 %", "50 %", "75 %", "100 %"]
    memory = svg_of(page, "chart-gpu-memory")
    assert "150 GB" in ticks(memory, "y") and "NVIDIA H200 total" in memory
    none = bench_report(bench_out(runs, gpu={"source": None, "note": "the server has no NVIDIA GPU", "samples": []}),
                        "html")
    assert "No GPU samples: the server has no NVIDIA GPU." in none and 'id="chart-gpu' not in none
    assert "No GPU samples: the server has no NVIDIA GPU." in bench_report(
        bench_out(runs, gpu={"note": "the server has no NVIDIA GPU", "samples": []}), "md")


def test_bench_gpu_table_uses_the_bench_summary_and_names_system_memory_on_a_cpu_server():
    gpu = gpu_samples(10) | {"summary": {"samples": 21, "util_mean_pct": 61.4, "util_max_pct": 95.0,
                                         "mem_peak_bytes": 23e9, "mem_total_bytes": 141e9}}
    md = bench_report(bench_out(five_runs(), gpu=gpu), "md")
    (row,) = md_rows(md, "| device | samples |")
    assert row == "| NVIDIA H200 | 21 | 61 % | 95 % | 23.0 GB | 141.0 GB |"
    cpu = {"source": "system_stats", "on_cpu": True, "note": "the server runs on the CPU: /system_stats gives the "
           "system memory in use", "samples": [{"t": float(t), "device": "cpu", "util_pct": None,
                                               "mem_used_bytes": 4e9, "mem_total_bytes": 16e9} for t in range(5)]}
    page = bench_report(bench_out(five_runs(), gpu=cpu), "html")
    assert "<h2>Server memory</h2>" in page and "System memory (the server runs on the CPU) over time" in page
    assert 'id="chart-gpu-util"' not in page and "No GPU utilisation in the samples from ComfyUI" in page


@pytest.mark.parametrize("case", ["preflight", "interrupted-none", "interrupted-one", "all-failed", "no-stages",
                                  "no-summary"])
def test_bench_partial_results_render(case):
    if case == "preflight":
        out = {"url": "http://x:8188", "runs": [], "preflight": [
            {"kind": "missing-model", "node_id": "4", "class_type": "CheckpointLoaderSimple", "input": "ckpt_name",
             "message": "the server has no checkpoint v1-5.safetensors", "suggestions": ["sd15.safetensors"]}],
            "message": "1 problem"}
    elif case == "interrupted-none":
        out = bench_out([]) | {"interrupted": True, "cancelled": ["abc"]}
    elif case == "interrupted-one":
        out = bench_out([bench_run(1, cold=True)]) | {"interrupted": True}
    elif case == "all-failed":
        out = bench_out([bench_run(i, outcome="error", error="KSampler #3: OOM") for i in (1, 2)])
    elif case == "no-stages":
        out = bench_out([bench_run(1) | {"stages_s": None, "nodes_s": {}}], stagetrace=False)
    else:
        out = {"url": "http://x:8188", "message": "authentication required (401)"}
    for fmt in ("md", "html"):
        text = bench_report(out, fmt)
        assert text.count("StageTrace bench") >= 1
    html_page = bench_report(out, "html")
    md = bench_report(out, "md")
    if case == "preflight":
        assert "not run" in md and "sd15.safetensors" in md and len(md_rows(md, "| problem |")) == 1
    if case == "interrupted-none":
        assert "Interrupted" in md and "abc" in md and "No run was measured" in md
    if case == "interrupted-one":
        assert svg_of(html_page, "chart-runs").count('<g class="bar"') == 1
    if case == "all-failed":
        assert html_page.count('class="failed-mark"') == 0 and "OOM" in md  # bars of what was measured
        assert len(md_rows(md, "| run | kind | outcome | error |")) == 2
        assert "No step rate" in html_page
    if case == "no-summary":
        assert "authentication required (401)" in md and "authentication required (401)" in html_page


def test_a_failed_run_with_nothing_measured_gets_a_cross():
    run = bench_run(1, outcome="rejected", error="HTTP 400")
    run.update(queue_wait_s=None, execution_s=None, e2e_s=None, nodes_s={})
    svg = svg_of(bench_report(bench_out([run, bench_run(2)]), "html"), "chart-runs")
    assert svg.count('class="failed-mark"') == 1 and "HTTP 400" in svg


def test_hostile_strings_are_escaped_in_both_formats():
    run = bench_run(1, outcome="error", error=HOSTILE)
    out = bench_out([run, bench_run(2)]) | {"url": "http://h/<script>x</script>|y", "workflow": HOSTILE}
    out["preflight"] = []
    page = bench_report(out, "html")
    assert "<script" not in page and "&lt;script&gt;" in page
    md = bench_report(out, "md")
    assert "<script" not in md and "&lt;script&gt;" in md
    error_row = md_rows(md, "| run | kind | outcome | error |")[0]
    assert error_row.count(" | ") == 3 and "\\|" in error_row and "a<br>b" in error_row
    assert md_text("a|b\nc[d](e)`f`\\") == "a\\|b<br>c\\[d\\](e)\\`f\\`\\\\"
    detail = [load_request(1, 0.0, worker=HOSTILE, outcome="http", error=HOSTILE), load_request(2, 1.0)]
    lout = load_out(detail, urls=(HOSTILE, "http://b"), per_worker={HOSTILE: {"requests": 1, "ok": 0}},
                    thresholds_missed=[HOSTILE])
    for fmt in ("md", "html"):
        text = load_report(lout, fmt)
        assert "<script" not in text and "&lt;script&gt;" in text
    md = load_report(lout, "md")
    for header in ("| class |", "| worker |"):
        for row in md_rows(md, header):
            assert row.count(" | ") == md_rows(md, header)[0].count(" | ")


def test_html_pages_fetch_nothing():
    runs = five_runs()
    pages = [bench_report(bench_out(runs, gpu=gpu_samples(20)), "html"), load_report(load_out(three_users()), "html")]
    for page in pages:
        assert not re.search(r"\b(src|href|xlink:href)\s*=", page, re.I)
        assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
        assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 3


def test_same_input_gives_the_same_bytes():
    out = bench_out(five_runs(), gpu=gpu_samples(20))
    assert bench_report(out, "html") == bench_report(json.loads(json.dumps(out)), "html")
    lout = load_out(three_users())
    assert load_report(lout, "html") == load_report(json.loads(json.dumps(lout)), "html")


# --- load ------------------------------------------------------------------------------------------


def test_load_md_tables():
    out = load_out(three_users(), slo={"metric": "e2e_s", "limit_s": 5.0, "met": 4}, goodput_per_minute=4.0,
                   thresholds_missed=["p95(e2e) = 6.000 s, not < 5.000 s"])
    md = load_report(out, "md")
    assert "88.9 %" in md and "8.0 /min" in md and "4.0 /min" in md
    metrics = [r.split("|")[1].strip() for r in md_rows(md, "| metric | p50 |")]
    assert metrics == ["queue wait", "execution", "end to end"]
    assert len(md_rows(md, "| stage | p50 | p95 |")) == 2
    (err,) = md_rows(md, "| class |")
    assert "execution error" in err and "| 1 |" in err and "KSampler #3: RuntimeError: boom" in err
    assert "- p95(e2e) = 6.000 s, not &lt; 5.000 s" in md  # GitHub shows the <
    assert "closed: 3 users" in md


def test_load_per_worker_table_has_one_row_per_worker():
    urls = ("http://a:8188", "http://b:8188")
    detail = [load_request(i, i * 1.0, worker=urls[i % 2]) for i in range(1, 7)]
    per = {u: {"requests": 3, "ok": 3, "success_rate": 1.0, "images_per_minute": 3.0, "errors": {},
               "queue_wait_s": percentiles([1.0]), "execution_s": percentiles([3.0]), "e2e_s": percentiles([4.0]),
               "stages_s": {}} for u in urls}
    out = load_out(detail, urls=urls, per_worker=per)
    assert len(md_rows(load_report(out, "md"), "| worker |")) == 2
    depth = svg_of(load_report(out, "html"), "chart-queue-depth")
    assert depth.count('class="series"') == 2 and "http://b:8188" in depth


def test_load_histograms_count_every_request():
    detail = [load_request(i, i * 0.5, e2e=2.0 + (i % 17) * 0.37, queue=0.1 * (i % 5)) for i in range(1, 301)]
    detail += [load_request(301, 10.0, outcome="timeout", error="no end within 600 s")]
    page = load_report(load_out(detail, wall=160.0), "html")
    for chart_id in ("chart-e2e-histogram", "chart-queue-histogram", "chart-throughput"):
        counts = [int(c) for c in re.findall(r'data-count="(\d+)"', svg_of(page, chart_id))]
        assert sum(counts) == 300 and 1 < len(counts) <= charts.MAX_BINS + 2, (chart_id, counts)
    scatter = svg_of(page, "chart-latency-time")
    assert scatter.count('class="pt ok"') == 300 and scatter.count('class="pt failed"') == 1


def test_histogram_bins_hold_each_value_once():
    for values in ([1.0], [0.0, 0.0], [0.001, 0.5, 0.5, 0.999], [float(i) for i in range(1000)], [5.0, 10.0]):
        start, width, counts = charts.bins_of(values, "duration")
        assert sum(counts) == len(values) and start <= min(values) and max(values) <= start + width * len(counts)
        assert (counts[0] and counts[-1]) or min(values) == max(values)  # no empty bin at either end


def test_decimation_beyond_the_cap_is_said_in_the_caption():
    detail = [load_request(i, i * 0.01, e2e=3.0 + (i % 97) / 10) for i in range(1, 100_001)]
    detail += [load_request(100_001 + i, i * 10.0, outcome="timeout", error="t") for i in range(5)]
    out = load_out(detail, wall=1000.0)
    out["queue_depth"] = {"http://a:8188": [[t * 0.1, t % 40] for t in range(10_000)]}
    page = load_report(out, "html")
    scatter = svg_of(page, "chart-latency-time")
    marks = scatter.count('class="pt ok"') + scatter.count('class="pt failed"')
    assert marks <= charts.MAX_POINTS and scatter.count('class="pt failed"') == 5
    assert "100,005 points drawn as" in page
    depth = svg_of(page, "chart-queue-depth")
    assert depth.count('class="pt"') <= charts.MAX_POINTS and "10,000 points drawn as" in page
    assert "39" in depth  # the peaks survive: the highest depth is still drawn
    assert len(page) < 1_500_000
    assert charts.decimate(list(range(10)), 100) == list(range(10))
    kept = charts.decimate([(i, (i * 37) % 101) for i in range(10_000)], 200)
    assert len(kept) <= 200 and max(y for _, y in kept) == 100 and min(y for _, y in kept) == 0


def test_many_bars_are_merged_and_said_so():
    bars = [charts.Bar(str(i), [("sample", 1.0 + i % 2)]) for i in range(1000)]
    figure = charts.bar_chart(bars, colours={"sample": "#2471a3"}, y_label="s", x_label="run")
    assert figure.count('<g class="bar"') <= charts.MAX_BARS and "1,000 bars drawn as" in figure
    spans = [charts.Span(i * 2.0, i * 2.0 + 1.5, f"run {i}") for i in range(1000)]
    figure = charts.line_chart([charts.Series("GPU", [(0.0, 10.0), (2000.0, 90.0)], "#1e8449")], spans=spans,
                               x_label="t", y_label="util", y_kind="percent", y_max=100.0)
    assert figure.count('class="span"') <= charts.MAX_SPANS and "1,000 shaded spans drawn as" in figure
    assert "run 0 … run 2 (3 spans)" in figure and "run 999" in figure  # the last runs are shaded too


@pytest.mark.parametrize("case", ["one-request", "empty-detail", "all-failed", "auth", "no-stages"])
def test_load_partial_results_render(case):
    if case == "one-request":
        out = load_out([load_request(1, 0.0)], wall=4.0)
    elif case == "empty-detail":
        out = load_out([], wall=0.5) | {"requests_detail": []}
    elif case == "all-failed":
        out = load_out([load_request(i, float(i), outcome="connection lost", error="closed") for i in range(3)])
    elif case == "auth":
        out = {"urls": ["http://x"], "message": "authentication required: give --token"}
    else:
        out = load_out(three_users()) | {"stages_s": {}}
    md, page = load_report(out, "md"), load_report(out, "html")
    assert "StageTrace load" in md and page.endswith("</html>\n")
    if case == "auth":
        assert "give --token" in md and "No request was measured" in page
    if case == "all-failed":
        assert "0.0 %" in md and "| connection lost | 3 | 100.0 % | closed |" in md
        assert 'class="pt failed"' in page and "nothing measured" in page  # no latency to bin
    if case == "no-stages":
        assert "No stage split" in md


# --- formats and files -----------------------------------------------------------------------------


def test_bad_format_or_suffix_is_a_value_error():
    for render in (bench_report, load_report):
        with pytest.raises(ValueError, match="unknown report format 'pdf'"):
            render({}, "pdf")
    assert [report_format(p) for p in ("a.md", "B.MARKDOWN", "x/c.html", "d.HTM")] == ["md", "md", "html", "html"]
    for bad in ("report.txt", "report", "report.html.bak"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            report_format(bad)


def test_write_report_replaces_the_file_whole(tmp_path):
    path = tmp_path / "r.html"
    write_report(str(path), "first")
    write_report(str(path), "second ünïcode")
    assert path.read_text(encoding="utf-8") == "second ünïcode" and os.listdir(tmp_path) == ["r.html"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_report_leaves_nothing_when_the_target_is_a_folder(tmp_path):
    (tmp_path / "r.md").mkdir()
    with pytest.raises(OSError):
        write_report(str(tmp_path / "r.md"), "x" * 100_000)
    assert os.listdir(tmp_path) == ["r.md"] and os.listdir(tmp_path / "r.md") == []


def test_write_report_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "r.md"
    path.write_text("old")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_report(str(path), "new" * 1000)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.md"]


def test_write_report_in_a_read_only_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            write_report(str(folder / "r.html"), "x")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


# --- in a real browser -----------------------------------------------------------------------------


def chromium_dom(page_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"file://{page_path}"], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "ERR_" not in dom.stderr
    return dom.stdout


def test_pages_open_in_headless_chromium_with_their_charts(tmp_path):
    runs = five_runs()
    bench_page = tmp_path / "bench.html"
    write_report(str(bench_page), bench_report(bench_out(runs, gpu=gpu_samples(20)), "html"))
    dom = chromium_dom(bench_page)
    for chart_id in ("chart-runs", "chart-steps", "chart-gpu-util", "chart-gpu-memory"):
        assert f'id="{chart_id}"' in dom
    assert dom.count('class="seg"') == bench_page.read_text().count('class="seg"') > 20
    load_page = tmp_path / "load.html"
    write_report(str(load_page), load_report(load_out(three_users()), "html"))
    dom = chromium_dom(load_page)
    for chart_id in ("chart-e2e-histogram", "chart-queue-histogram", "chart-latency-time", "chart-queue-depth",
                     "chart-throughput"):
        assert f'id="{chart_id}"' in dom
    assert dom.count("<svg") == 5


@pytest.mark.parametrize("name", ["bench", "load"])
def test_sample_outputs_render(name, tmp_path):
    """Real outputs of the commands, when someone left them in /tmp/samples."""
    source = os.path.join(SAMPLES, f"{name}.json")
    if not os.path.exists(source):
        pytest.skip(f"no {source}")
    with open(source) as f:
        out = json.load(f)
    render = bench_report if name == "bench" else load_report
    for fmt in ("md", "html"):
        write_report(str(tmp_path / f"{name}.{fmt}"), render(out, fmt))
    assert "<svg" in (tmp_path / f"{name}.html").read_text()
