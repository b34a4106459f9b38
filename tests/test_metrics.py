"""StageTrace's Prometheus metrics (surfaces/metrics.py) from real ComfyUI servers started by the tests on
loopback: what a prompt adds to each series, failures by outcome and class, the route behind ComfyUI's auth,
a scrape during a prompt, the metrics port, a ComfyUI where StageTrace is disabled or not built; and two
workers scraped by a real Prometheus (Debian's package), queried through its HTTP API with PromQL."""

import json
import os
import shutil
import threading
import time
import urllib.request

import pytest
from comfy_server import FAKE_GPU_USED, FAKE_GPU_UTIL, ROOT, running_server

from comfy_nodes.demo.harness import tiny_txt2img

pytest.importorskip("prometheus_client", reason="prometheus_client is not installed (tests/requirements.txt)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(server, path="/stagetrace/metrics", headers=None) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape."""
    status, headers_out, body = server.get(path, headers)
    assert status == 200, body[:500]
    assert headers_out["content-type"].startswith("text/plain; version=0.0.4")
    return parse(body.decode())


def parse(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def run_and_wait(server, prompt: dict) -> str:
    prompt_id = server.run_prompt(prompt)
    server.wait_trace(prompt_id)  # the writer thread counts the prompt after writing its trace
    return prompt_id


def sleep_workflow(seconds: float, seed: int = 0) -> dict:
    return {"1": {"class_type": "HarnessSleep", "inputs": {"seconds": seconds, "seed": seed}}}


# --- one worker ---------------------------------------------------------------------------------------------


def test_a_prompt_adds_to_its_outcome_its_stages_its_nodes_and_its_findings(comfy_server):
    before = scrape(comfy_server)
    prompt_id = run_and_wait(comfy_server, tiny_txt2img("tiny_sd15.safetensors", seed=501, steps=3))
    after = scrape(comfy_server)
    report = comfy_server.get_json(f"/stagetrace/prompts/{prompt_id}")[1]
    assert delta(before, after, "stagetrace_prompts_total", outcome="success") == 1
    assert delta(before, after, "stagetrace_prompt_execution_seconds_count", outcome="success") == 1
    assert delta(before, after, "stagetrace_prompt_execution_seconds_sum", outcome="success") == pytest.approx(
        report["wall_s"], rel=1e-6)
    assert delta(before, after, "stagetrace_prompt_queue_wait_seconds_count") == 1
    assert delta(before, after, "stagetrace_stage_seconds_count", stage="sample") == 1
    assert delta(before, after, "stagetrace_stage_seconds_count", stage="sample.step") == 3  # one per step
    assert delta(before, after, "stagetrace_stage_seconds_count", stage="vae_decode") == 1
    stages = report["stages_inclusive"]  # the metrics observe each stage's whole time
    assert delta(before, after, "stagetrace_stage_seconds_sum", stage="sample") == pytest.approx(stages["sample"],
                                                                                                 rel=1e-6)
    assert delta(before, after, "stagetrace_node_seconds_count", node_class="KSampler") == 1
    from comfy_nodes.surfaces.metrics import DEFAULT_NODE_CLASSES

    ran_elsewhere = [n for n in report["summary"]["nodes"] if n["class_type"] not in DEFAULT_NODE_CLASSES
                     and n["outcome"] != "cached"]  # the test's own nodes, when ComfyUI's cache did not serve them
    assert delta(before, after, "stagetrace_node_seconds_count", node_class="other") == len(ran_elsewhere)
    for finding in report["findings"]:
        assert delta(before, after, "stagetrace_findings_total", rule=finding["rule"]) >= 1
    # every series is bounded: no prompt id, file or seed ever becomes a label value
    labels = {v for (_name, pairs) in after for _k, v in pairs}
    assert prompt_id not in labels and "tiny_sd15.safetensors" not in labels
    assert value(after, "stagetrace_build_info", version="0.1.0") == 1
    assert ("stagetrace_queue_pending", ()) in after and ("stagetrace_queue_running", ()) in after


def test_failed_refused_and_interrupted_prompts_are_counted_by_outcome_and_class(comfy_server):
    before = scrape(comfy_server)
    broken = tiny_txt2img("tiny_sd15.safetensors", seed=502, steps=1)
    broken["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}}  # no CLIP in it
    run_and_wait(comfy_server, broken)
    body = json.dumps({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}).encode()
    status, _, _ = comfy_server.request("POST", "/prompt", body, {"Content-Type": "application/json"})
    assert status == 400  # refused at validation: it never runs
    prompt = json.dumps({"prompt": sleep_workflow(5.0, seed=503), "client_id": "metrics-test"}).encode()
    status, _, raw = comfy_server.request("POST", "/prompt", prompt, {"Content-Type": "application/json"})
    interrupted = json.loads(raw)["prompt_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not comfy_server.get_json("/queue")[1]["queue_running"]:
        time.sleep(0.02)
    comfy_server.request("POST", "/interrupt", b"{}", {"Content-Type": "application/json"})
    comfy_server.wait_trace(interrupted)
    after = scrape(comfy_server)
    assert delta(before, after, "stagetrace_prompts_total", outcome="error") == 1
    assert delta(before, after, "stagetrace_prompts_total", outcome="interrupted") == 1
    assert delta(before, after, "stagetrace_errors_total", **{"class": "other"}) == 1
    assert delta(before, after, "stagetrace_errors_total", **{"class": "validation"}) == 1
    assert delta(before, after, "stagetrace_prompt_execution_seconds_count", outcome="interrupted") == 1
    assert delta(before, after, "stagetrace_findings_total", rule="interrupted") == 1


def test_the_route_sits_behind_comfyuis_auth(comfy_server):
    with comfy_server.auth("login"):
        status, headers, _ = comfy_server.get("/stagetrace/metrics")
        assert status == 302 and "/login" in headers["location"]
        samples = scrape(comfy_server, headers={"Authorization": f"Bearer {comfy_server.login_token}"})
        assert value(samples, "stagetrace_build_info", version="0.1.0") == 1


def test_a_scrape_during_a_prompt_returns_promptly(comfy_server):
    """The worker holds the GIL while it samples; the scrape must still answer quickly."""
    done = threading.Event()
    latencies = []

    def run():
        try:
            run_and_wait(comfy_server, tiny_txt2img("tiny_sd15.safetensors", seed=504, steps=40))
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    while not done.is_set():
        t0 = time.perf_counter()
        status, _, _ = comfy_server.get("/stagetrace/metrics")
        latencies.append(time.perf_counter() - t0)
        assert status == 200
        time.sleep(0.05)
    thread.join()
    latencies.sort()
    print(f"scrape during a prompt: {len(latencies)} scrapes, median {latencies[len(latencies) // 2] * 1e3:.1f} ms, "
          f"max {latencies[-1] * 1e3:.1f} ms")
    assert len(latencies) >= 5 and latencies[-1] < 2.0


# --- recorded GPU runs (tests/fixtures/scenarios: real-shaped traces of GPU prompts) -------------------------


def scenario(name: str) -> dict:
    from comfy_nodes.record.tracefile import load

    return load(os.path.join(ROOT, "tests", "fixtures", "scenarios", f"{name}.trace.json"))


def copies(trace: dict, direction: str) -> int:
    return sum((e["args"].get("copies") or {}).get(direction, {}).get("bytes", 0) for e in trace["traceEvents"]
               if e.get("cat") == "gpu" and e.get("ph") == "X")


def test_gpu_prompts_count_their_copies_tiled_fallbacks_unloads_and_findings():
    from comfy_nodes.analysis.diagnose import diagnose
    from comfy_nodes.surfaces.metrics import Metrics

    metrics = Metrics(version="test")
    before = parse(metrics.exposition()[0].decode())
    tiled, offload = scenario("vae-tiled"), scenario("partial-offload")
    for trace in (tiled, offload):
        metrics.observe(trace, diagnose(trace))
    after = parse(metrics.exposition()[0].decode())
    assert delta(before, after, "stagetrace_copy_bytes_total", direction="host_to_device") == copies(
        tiled, "htod") + copies(offload, "htod") > 0
    assert delta(before, after, "stagetrace_copy_bytes_total", direction="device_to_host") == copies(
        tiled, "dtoh") + copies(offload, "dtoh") > 0
    assert delta(before, after, "stagetrace_vae_tiled_fallbacks_total") == 1  # the span and the log line: one
    assert delta(before, after, "stagetrace_models_unloaded_total") >= 1
    assert delta(before, after, "stagetrace_models_loaded_total") == 4  # two to_device spans each
    assert delta(before, after, "stagetrace_findings_total", rule="vae-tiled") == 1
    assert delta(before, after, "stagetrace_findings_total", rule="partial-offload") == 1
    assert delta(before, after, "stagetrace_stage_seconds_count", stage="sample.step") == sum(
        1 for t in (tiled, offload) for e in t["traceEvents"] if e.get("cat") == "sample.step" and e.get("ph") == "X")


def test_error_classes_come_from_the_exception_and_the_failing_node():
    from comfy_nodes.surfaces.metrics import error_class

    assert error_class({"exception_type": "torch.OutOfMemoryError", "exception_message": "CUDA out of memory. "
                        "Tried to allocate 2.00 GiB"}, False) == "out_of_memory"
    assert error_class({"exception_type": "RuntimeError", "exception_message": "Error(s) in loading state_dict",
                        "node_type": "CheckpointLoaderSimple"}, False) == "model_load"
    assert error_class({"exception_type": "FileNotFoundError", "node_type": "KSampler"}, True) == "model_load"
    assert error_class({"exception_type": "AttributeError", "node_type": "CLIPTextEncode"}, False) == "other"
    assert error_class(None, False) == "other"


# --- StageTrace off or not built: ComfyUI runs on, the route says why ---------------------------------------


def test_with_stagetrace_disabled_comfyui_runs_and_the_route_says_so():
    with running_server({"STAGETRACE_DISABLE": "1"}) as server:
        status, _, body = server.get("/stagetrace/metrics")
        assert status == 503 and "disabled" in json.loads(body)["error"]
        prompt_id = server.run_prompt(sleep_workflow(0.01))
        assert server.get_json(f"/history/{prompt_id}")[1][prompt_id]["status"]["status_str"] == "success"


def test_with_the_extension_not_built_comfyui_runs_and_the_route_says_so(tmp_path):
    """A checkout without the compiled C core, as a fresh clone is before its build."""
    checkout = tmp_path / "StageTrace"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(".git", "build", "tests", "benchmarks", "*.so",
                                                                     "__pycache__", "*.egg-info", "docs", "csrc"))
    with running_server(stagetrace=False) as server:
        server.stop()
        os.symlink(checkout, os.path.join(server.base, "custom_nodes", "StageTrace"))
        server.start()
        status, _, body = server.get("/stagetrace/metrics")
        error = json.loads(body)["error"]
        assert status == 503 and "not running" in error and "build" in error
        prompt_id = server.run_prompt(sleep_workflow(0.01))
        assert server.get_json(f"/history/{prompt_id}")[1][prompt_id]["status"]["status_str"] == "success"


def test_metrics_off_or_prometheus_client_missing_answer_503():
    with running_server({"STAGETRACE_METRICS": "0"}) as server:
        status, _, body = server.get("/stagetrace/metrics")
        assert status == 503 and "STAGETRACE_METRICS=0" in json.loads(body)["error"]
        assert server.get_json("/stagetrace/prompts")[0] == 200  # the other routes serve on


# --- a fleet: two workers scraped by a real Prometheus ------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(fake_nvml):
    """Two real workers: A serves the metrics at /stagetrace/metrics; B (with a fake NVML GPU, a TEST DOUBLE at
    the hardware boundary) also on its own STAGETRACE_METRICS_PORT."""
    from comfy_nodes.demo.serve import free_port

    port = free_port()
    with running_server() as a, running_server({"STAGETRACE_NVML_LIB": fake_nvml, "STAGETRACE_TEST_FAKE_GPU": "1",
                                                "STAGETRACE_METRICS_PORT": str(port)}) as b:
        b.metrics_port = port
        yield a, b


def test_the_exposition_is_the_documented_catalogue(fleet):
    """What a worker serves is what deploy/ (tests/test_deploy.py's CATALOGUE) and the README name: every
    metric, none other, each label value from its fixed set."""
    from test_deploy import CATALOGUE, catalogue_name

    _, b = fleet  # with the (fake) GPU, so the GPU gauges are there too
    run_and_wait(b, tiny_txt2img("tiny_sd15.safetensors", seed=801, steps=1))  # every stage series exists
    samples = scrape(b)
    names = {name for name, _ in samples if not name.endswith("_created")}
    assert {catalogue_name(name) for name in names} == set(CATALOGUE), names
    for name, labels in samples:
        if name.endswith("_created"):
            continue
        allowed = CATALOGUE[catalogue_name(name)][1]
        for label, label_value in labels:
            if label == "le":
                continue
            assert label in allowed, (name, label)
            assert allowed[label] is None or label_value in allowed[label] or label_value == "other", (name, label,
                                                                                                    label_value)


def test_the_metrics_port_serves_the_same_registry_outside_comfyuis_auth(fleet):
    _, b = fleet
    with b.auth("basic"):
        assert b.get("/stagetrace/metrics")[0] == 401  # ComfyUI's route is behind the auth plugin
        with urllib.request.urlopen(f"http://127.0.0.1:{b.metrics_port}/metrics", timeout=10) as answer:
            samples = parse(answer.read().decode())
    assert value(samples, "stagetrace_build_info", version="0.1.0") == 1


def test_prometheus_scrapes_two_workers_and_promql_matches_the_traces(fleet):
    from prom_server import running_prometheus

    a, b = fleet
    for i in range(2):
        run_and_wait(a, tiny_txt2img("tiny_sd15.safetensors", seed=600 + i, steps=2))
    for i in range(3):
        run_and_wait(b, tiny_txt2img("tiny_sd15.safetensors", seed=700 + i, steps=2))
    # every prompt each worker ran (the module's other tests ran some too), as StageTrace recorded it
    traces = {server: [p for p in server.get_json("/stagetrace/prompts?limit=200")[1]["prompts"]
                       if p["outcome"] == "ok"] for server in (a, b)}
    a_target, b_target = a.url.removeprefix("http://"), f"127.0.0.1:{b.metrics_port}"
    extra = {"job_name": "comfyui-port", "metrics_path": "/metrics", "static_configs": [{"targets": [b_target]}]}
    with running_prometheus([a_target], metrics_path="/stagetrace/metrics", scrape_interval="1s",
                            extra_jobs=[extra]) as prom:
        expr = 'sum by (instance) (stagetrace_prompts_total{outcome="success"})'
        result = prom.wait_for(expr, lambda r: len(r) == 2, timeout=60)
        counts = {r["metric"]["instance"]: float(r["value"][1]) for r in result}
        assert counts == {a_target: len(traces[a]), b_target: len(traces[b])} and len(traces[b]) >= 3
        # per-stage histogram counts match the traces
        for server, target in ((a, a_target), (b, b_target)):
            got = prom.query(f'stagetrace_stage_seconds_count{{stage="sample", instance="{target}"}}')["result"]
            assert float(got[0]["value"][1]) == sum(1 for t in traces[server] if t["stages_inclusive"].get("sample"))
            got = prom.query(f'stagetrace_stage_seconds_sum{{stage="sample", instance="{target}"}}')["result"]
            expected = sum(t["stages_inclusive"].get("sample", 0.0) for t in traces[server])
            assert float(got[0]["value"][1]) == pytest.approx(expected, rel=1e-6)
        # histogram_quantile lands in the bucket of the traces' own median, fleet-wide
        walls = sorted(t["wall_s"] for ts in traces.values() for t in ts)
        from comfy_nodes.surfaces.metrics import BUCKETS

        q = float(prom.query('histogram_quantile(0.5, sum by (le) (stagetrace_prompt_execution_seconds_bucket'
                             '{outcome="success"}))')["result"][0]["value"][1])
        median = walls[len(walls) // 2]
        upper = next(bound for bound in BUCKETS if bound >= median)
        lower = max([0.0] + [bound for bound in BUCKETS if bound < median])
        assert lower <= q <= upper, (q, walls)
        # the fake GPU's figures reach Prometheus through the NVML sampler
        util = prom.query(f'stagetrace_gpu_utilization_ratio{{instance="{b_target}"}}')["result"]
        assert float(util[0]["value"][1]) == pytest.approx(FAKE_GPU_UTIL / 100)
        used = prom.query(f'stagetrace_gpu_memory_used_bytes{{instance="{b_target}"}}')["result"]
        assert float(used[0]["value"][1]) == FAKE_GPU_USED
        dashboard_and_rules_evaluate(prom)
        load_reads_the_server_side_back(prom, a, b, a_target, b_target)


def load_reads_the_server_side_back(prom, a, b, a_target, b_target) -> None:
    """`stagetrace load --prometheus`: the fleet's server-side figures of the run, beside the client's."""
    import asyncio

    from comfy_nodes.client.load import load, table
    from comfy_nodes.client.server import Credentials

    # a baseline first: Prometheus has scraped both workers a few times before the run begins
    prom.wait_for("min(count_over_time(stagetrace_build_info[1m])) >= 3", timeout=30)
    code, out = asyncio.run(load([a.url, b.url], sleep_workflow(0.2), Credentials(), users=2, requests=2,
                                 timeout=60, seed=99, prometheus=prom.url))
    assert code == 0 and out["ok"] == 4
    side = out["server_side"]
    assert "error" not in side, side
    assert side["prompts_seen"] == 4 and side["no_baseline"] == []  # it waited for the run's last prompts
    assert {i: row["prompts"] for i, row in side["instances"].items()} == {a_target: 2, b_target: 2}
    # the server's execution of a 0.2 s sleep lies in the histogram's bucket around it, below the client's e2e
    assert 0.1 <= side["fleet"]["execution_s"]["p50"] <= 0.25
    assert side["fleet"]["e2e_s"]["p95"] <= 1.0 and out["e2e_s"]["p50"] >= 0.2
    assert "server side, from each worker's StageTrace via Prometheus (4 prompts" in table(out)
    from comfy_nodes.render.runreport import load_report

    for fmt in ("html", "md"):
        page = load_report(out, fmt)
        assert "Server side (Prometheus)" in page and a_target in page and b_target in page


def dashboard_and_rules_evaluate(prom) -> None:
    """Every PromQL expression of the shipped dashboard and rules evaluates against this Prometheus and its
    real data."""
    import re

    import yaml

    exprs = []
    with open(os.path.join(ROOT, "deploy", "grafana", "stagetrace-dashboard.json")) as f:
        for panel in json.load(f)["panels"]:
            exprs += [t["expr"] for t in panel.get("targets") or () if t.get("expr")]
    with open(os.path.join(ROOT, "deploy", "prometheus", "rules.yml")) as f:
        exprs += [rule["expr"] for group in yaml.safe_load(f)["groups"] for rule in group["rules"]]
    assert len(exprs) >= 10
    for expr in exprs:
        expr = re.sub(r"\$\{?instance\}?", ".*", expr)
        expr = re.sub(r"\$__(rate_)?interval", "1m", expr).replace("$__range", "1h")
        prom.query(expr)  # raises with Prometheus' error text when it does not parse or evaluate
