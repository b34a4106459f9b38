"""The fleet deployment files under deploy/: Prometheus's config, rules and rule tests, Grafana's dashboard.

promtool (Debian's `prometheus` package: /usr/bin/promtool) checks the config and the rules and runs
rules_test.yml; a broken copy of the rules or of their expected alerts must fail. The dashboard's and
the rules' queries run in a real Prometheus (tests/prom_server.py) that scrapes two loopback exporters
serving the whole metric catalogue below (a TEST DOUBLE of a worker's /stagetrace/metrics, with every
series the catalogue names; the workers' real exposition is tested in test_metrics.py): every panel's
query and every rule must evaluate, and show data. Metric names, label names and label values used in
the files must be the catalogue's. No ComfyUI needed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prom_server import PromQueryError, check_loopback, prometheus_config, running_prometheus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMETHEUS_DIR = os.path.join(ROOT, "deploy", "prometheus")
PROMETHEUS_YML = os.path.join(PROMETHEUS_DIR, "prometheus.yml")
WORKERS_YML = os.path.join(PROMETHEUS_DIR, "workers.yml")
RULES_YML = os.path.join(PROMETHEUS_DIR, "rules.yml")
RULES_TEST_YML = os.path.join(PROMETHEUS_DIR, "rules_test.yml")
DASHBOARD_JSON = os.path.join(ROOT, "deploy", "grafana", "stagetrace-dashboard.json")
PROMTOOL_TIMEOUT_S = 60

# --- The metric catalogue: what every worker exposes at /stagetrace/metrics ---

OUTCOMES = ("success", "error", "interrupted")
STAGES = ("model_load.read", "model_load.build", "model_load.to_device", "text_encode", "sample", "sample.step",
          "vae_decode", "vae_encode", "save")
ERROR_CLASSES = ("out_of_memory", "validation", "model_load", "other")
FINDING_RULES = ("unreadable-file", "missing-clip-vae", "node-failed", "interrupted", "slow-read", "partial-offload",
                 "cpu-sampling", "fp8-no-compute", "vae-tiled", "reloaded", "warmup", "queue-wait",
                 "memory-pressure", "gpu-idle", "step-rate", "regression")
DIRECTIONS = ("host_to_device", "device_to_host")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300, 600,
           1200, 1800, 3600)
# The exporter's values for the labels the catalogue leaves open (node classes are a bounded set of
# ComfyUI classes plus `other`; gpu is the NVML index).
NODE_CLASSES = ("KSampler", "VAEDecode", "other")
GPUS = ("0", "1")

# name -> (type, {label: allowed values, or None where any value goes})
CATALOGUE: dict[str, tuple[str, dict[str, tuple[str, ...] | None]]] = {
    "stagetrace_prompt_queue_wait_seconds": ("histogram", {}),
    "stagetrace_prompt_execution_seconds": ("histogram", {"outcome": OUTCOMES}),
    "stagetrace_prompt_end_to_end_seconds": ("histogram", {"outcome": OUTCOMES}),
    "stagetrace_stage_seconds": ("histogram", {"stage": STAGES}),
    "stagetrace_node_seconds": ("histogram", {"node_class": None}),
    "stagetrace_prompts_total": ("counter", {"outcome": OUTCOMES}),
    "stagetrace_errors_total": ("counter", {"class": ERROR_CLASSES}),
    "stagetrace_cached_nodes_total": ("counter", {}),
    "stagetrace_model_read_bytes_total": ("counter", {}),
    "stagetrace_copy_bytes_total": ("counter", {"direction": DIRECTIONS}),
    "stagetrace_models_loaded_total": ("counter", {}),
    "stagetrace_models_unloaded_total": ("counter", {}),
    "stagetrace_vae_tiled_fallbacks_total": ("counter", {}),
    "stagetrace_findings_total": ("counter", {"rule": FINDING_RULES}),
    "stagetrace_dropped_events_total": ("counter", {}),
    "stagetrace_dropped_prompts_total": ("counter", {}),
    "stagetrace_queue_pending": ("gauge", {}),
    "stagetrace_queue_running": ("gauge", {}),
    "stagetrace_gpu_utilization_ratio": ("gauge", {"gpu": None}),
    "stagetrace_gpu_memory_used_bytes": ("gauge", {"gpu": None}),
    "stagetrace_gpu_memory_total_bytes": ("gauge", {"gpu": None}),
    "stagetrace_gpu_temperature_celsius": ("gauge", {"gpu": None}),
    "stagetrace_gpu_power_watts": ("gauge", {"gpu": None}),
    "stagetrace_build_info": ("gauge", {"version": None}),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels a query may group or match on: the catalogue's, Prometheus's target labels, a histogram's le.
KNOWN_LABELS = {"instance", "job", "le"} | {label for _, labels in CATALOGUE.values() for label in labels}
# The exporter's values for the open labels, per label.
EXPORTED_VALUES = {"node_class": NODE_CLASSES, "gpu": GPUS, "version": ("0.0.0-test",)}

METRIC_NAME = re.compile(r"stagetrace_[a-z_]+")
RECORDED_NAME = re.compile(r"stagetrace:[a-z0-9_:]+")
MATCHER = re.compile(r'\b([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
# Grafana's variables in an expression: ${name}, ${name:format}, $name, [[name]].
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
# What the query test puts in place of Grafana's built-in variables; the dashboard's own are ".*".
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def catalogue_name(name: str) -> str | None:
    """The catalogue metric a series name belongs to (a histogram's _bucket/_sum/_count included), or None."""
    if name in CATALOGUE:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and CATALOGUE.get(base, ("",))[0] == "histogram":
            return base
    return None


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def load_yaml(path: str):
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the rule files: pip install pyyaml")
    return yaml.safe_load(read(path))


def load_dashboard() -> dict:
    return json.loads(read(DASHBOARD_JSON))


def data_panels(dashboard: dict) -> list[dict]:
    """The dashboard's panels that draw data: all but rows (a collapsed row's panels included)."""
    panels = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every data panel."""
    return [(panel["title"], target["expr"]) for panel in data_panels(dashboard) for target in panel["targets"]]


def dashboard_variables(dashboard: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def substitute(expr: str, variables: dict[str, dict]) -> str:
    """expr with Grafana's variables replaced as a test query takes them: the dashboard's query variables
    by ".*" (they are used in =~ matchers only), the built-in ones by durations. Raises AssertionError
    for a variable the dashboard does not define, or for its datasource variable."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        assert name in variables, f"{expr}: ${name} is not a template variable of the dashboard"
        assert variables[name]["type"] == "query", f"{expr}: ${name} is a {variables[name]['type']} variable"
        return ".*"

    return VARIABLE.sub(replace, expr)


# --- promtool ---


def find_promtool() -> str | None:
    for candidate in (os.environ.get("PROMTOOL_BIN"), shutil.which("promtool"), "/usr/bin/promtool"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def promtool(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """promtool with args (stdout and stderr together in .stdout); skips the test without promtool."""
    binary = find_promtool()
    if binary is None:
        pytest.skip("no promtool: apt-get install prometheus (or set PROMTOOL_BIN)")
    return subprocess.run([binary, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=PROMTOOL_TIMEOUT_S)


@pytest.fixture
def prometheus_copy(tmp_path):
    """A copy of deploy/prometheus/ to break; returns its path."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    return copy


def edit(path, old: str, new: str) -> None:
    """Replaces the first old in the file by new; fails the test when old is not there."""
    text = read(path)
    assert old in text, f"{path}: {old!r} not found: the test's broken copy no longer breaks anything"
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


def test_prometheus_config_passes_promtool_check():
    # From another folder: rule_files and file_sd paths are relative to the config file.
    result = promtool("check", "config", PROMETHEUS_YML, cwd="/")
    assert result.returncode == 0, result.stdout
    assert "rules.yml" in result.stdout and "SUCCESS" in result.stdout


def test_prometheus_config_check_reads_the_workers_file(prometheus_copy):
    edit(prometheus_copy / "workers.yml", "  labels:\n", "  labelz:\n")
    result = promtool("check", "config", str(prometheus_copy / "prometheus.yml"))
    assert result.returncode != 0, result.stdout
    assert "workers.yml" in result.stdout


def test_prometheus_config_scrapes_the_workers_file():
    config = load_yaml(PROMETHEUS_YML)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "comfyui"
    assert job["metrics_path"] == "/stagetrace/metrics"
    assert job["scrape_interval"] == "15s"
    assert job["file_sd_configs"] == [{"files": ["workers.yml"], "refresh_interval": "1m"}]
    assert config["rule_files"] == ["rules.yml"]
    # The commented examples: bearer token or basic auth, and the separate metrics port.
    text = read(PROMETHEUS_YML)
    for example in ("# authorization:", "#   type: Bearer", "# basic_auth:", "STAGETRACE_METRICS_PORT",
                    "#   metrics_path: /metrics"):
        assert example in text

    workers = load_yaml(WORKERS_YML)
    assert [w["targets"] for w in workers] == [["gpu1:8188"], ["gpu2:8188"]]
    assert [w["labels"]["worker"] for w in workers] == ["gpu1", "gpu2"]


def test_rules_pass_promtool_check():
    result = promtool("check", "rules", RULES_YML)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


def test_rules_pass_their_unit_tests():
    result = promtool("test", "rules", RULES_TEST_YML, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


BROKEN_COPIES = {
    # An expected alert with the wrong severity.
    "expected severity": ("rules_test.yml", "              severity: warning\n", "              severity: page\n"),
    # A quiet case expecting the alert after all.
    "expected alert": ("rules_test.yml", "        alertname: StageTracePromptSlow\n        exp_alerts: []\n",
                       "        alertname: StageTracePromptSlow\n        exp_alerts:\n"
                       "          - exp_labels: {instance: gpu2:8188, severity: warning}\n"),
    # The threshold moved in the rules but not in the tests.
    "threshold": ("rules.yml", "stagetrace:prompt_end_to_end_seconds:p95_10m > 120",
                  "stagetrace:prompt_end_to_end_seconds:p95_10m > 180"),
    # The idle-GPU join lost a GPU-side condition.
    "join": ("rules.yml", "avg_over_time(stagetrace_gpu_utilization_ratio[5m])) < 0.05",
             "avg_over_time(stagetrace_gpu_utilization_ratio[5m])) < 0.5"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_COPIES))
def test_rule_unit_tests_fail_on_a_broken_copy(prometheus_copy, broken):
    name, old, new = BROKEN_COPIES[broken]
    edit(prometheus_copy / name, old, new)
    result = promtool("test", "rules", "rules_test.yml", cwd=str(prometheus_copy))
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout


def rule_groups() -> dict[str, list[dict]]:
    return {group["name"]: group["rules"] for group in load_yaml(RULES_YML)["groups"]}


def test_rule_groups_and_alert_fields():
    groups = rule_groups()
    assert set(groups) == {"stagetrace.recording", "stagetrace.alerts"}
    assert all("record" in rule for rule in groups["stagetrace.recording"])
    for rule in groups["stagetrace.recording"]:
        assert rule["record"].startswith("stagetrace:"), rule["record"]
    alerts = groups["stagetrace.alerts"]
    assert len(alerts) >= 6
    explainers = ("/stagetrace/", *FINDING_RULES)
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"StageTrace[A-Za-z0-9]+", name), name
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), f"{name}: no for:"
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"].get("summary") and alert["annotations"].get("description"), name
        description = alert["annotations"]["description"]
        assert any(e in description for e in explainers), f"{name}: no finding or route to look at"


def test_every_alert_is_tested_firing_and_quiet():
    alerts = {rule["alert"] for rule in rule_groups()["stagetrace.alerts"]}
    fired, quiet = set(), set()
    tests = load_yaml(RULES_TEST_YML)
    assert tests["rule_files"] == ["rules.yml"]
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - fired == set(), "alerts without a test where they fire"
    assert alerts - quiet == set(), "alerts without a test where they stay quiet"
    assert (fired | quiet) - alerts == set(), "tests of alerts that rules.yml does not have"

    records = {rule["record"] for rule in rule_groups()["stagetrace.recording"]}
    tested = {case["expr"] for test in tests["tests"] for case in test.get("promql_expr_test", [])}
    assert records - tested == set(), "recording rules without a test of their value"


# --- Names and labels against the catalogue ---


def files_text() -> dict[str, str]:
    return {path: read(path) for path in (RULES_YML, RULES_TEST_YML, DASHBOARD_JSON)}


def test_metric_names_are_the_catalogues():
    records = {rule["record"] for rule in rule_groups()["stagetrace.recording"]}
    for path, text in files_text().items():
        names = set(METRIC_NAME.findall(text))
        assert names, path
        unknown = {name for name in names if catalogue_name(name) is None}
        assert unknown == set(), f"{os.path.basename(path)}: not in the catalogue"
        recorded = set(RECORDED_NAME.findall(text)) - {"stagetrace:"}
        assert recorded - records == set(), f"{os.path.basename(path)}: recording rules that rules.yml lacks"


def test_label_names_and_values_are_the_catalogues():
    dashboard = load_dashboard()
    exprs = [expr for _, expr in dashboard_exprs(dashboard)]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    texts = [*exprs, read(RULES_YML), read(RULES_TEST_YML)]
    for text in texts:
        for label, _, value in MATCHER.findall(text):
            assert label in KNOWN_LABELS | {"alertname"}, f"label {label!r} in {text[:120]}"
            allowed = next((labels[label] for _, labels in CATALOGUE.values() if labels.get(label)), None)
            if allowed is None or "$" in value:
                continue
            for alternative in value.split("|"):
                assert alternative in allowed, f'{label}="{alternative}" is not a catalogue value'
        for grouping in GROUPING.findall(text):
            names = {name.strip() for name in grouping.split(",") if name.strip()}
            assert names <= KNOWN_LABELS, f"grouping by {names - KNOWN_LABELS} in {text[:120]}"
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            legend = target.get("legendFormat", "")
            assert set(LEGEND_LABEL.findall(legend)) <= KNOWN_LABELS, f"{panel['title']}: legend {legend!r}"


# --- The dashboard ---


def test_dashboard_structure():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    variables = dashboard_variables(dashboard)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query" and instance["includeAll"] and instance["allValue"] == ".*"
    assert "instance" in instance["definition"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        assert panel.get("title"), f"panel {panel['id']} has no title"
    panels = data_panels(dashboard)
    assert len(panels) >= 20
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title}: no target"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{title}: refIds repeat"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], title
            assert target["expr"].strip(), title
            # Every selector of a StageTrace metric follows the worker picker.
            for match in re.finditer(r"(stagetrace_[a-z_]+)(\{[^}]*\})?", target["expr"]):
                assert 'instance=~"$instance"' in (match.group(2) or ""), f"{title}: {match.group(0)}"
    # The panels the brief asks for.
    titles = " / ".join(panel["title"] for panel in panels).lower()
    for needed in ("stage latency", "p50 / p95", "queue wait", "queue pending / running", "throughput",
                   "errors by class", "gpu utilisation", "gpu memory", "gpu temperature", "gpu power",
                   "findings by rule", "dropped"):
        assert needed in titles, needed
    stage_heatmap = next(panel for panel in panels if panel["type"] == "heatmap" and panel.get("repeat") == "stage")
    assert stage_heatmap["targets"][0]["format"] == "heatmap"
    assert "stagetrace_stage_seconds_bucket" in stage_heatmap["targets"][0]["expr"]


def test_dashboard_layout_does_not_overlap():
    cells = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        for x, y in itertools.product(range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])):
            assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
            cells[(x, y)] = panel["title"]


def test_substitute_replaces_every_variable_form():
    variables = {"instance": {"type": "query"}, "datasource": {"type": "datasource"}}
    assert (substitute('rate(x{instance=~"$instance"}[$__rate_interval]) + y{a=~"${instance:regex}"}[[instance]]'
                       "[$__range]", variables)
            == 'rate(x{instance=~".*"}[1m]) + y{a=~".*"}.*[1h]')
    with pytest.raises(AssertionError, match=r"\$nope is not"):
        substitute('x{a=~"$nope"}', variables)
    with pytest.raises(AssertionError, match="datasource"):
        substitute('x{a=~"$datasource"}', variables)


# --- A real Prometheus scraping two catalogue exporters ---


def exposition(scrapes: int, instance_index: int) -> str:
    """The catalogue in Prometheus's text format, as a worker would expose it after `scrapes` scrapes:
    each histogram series one observation more at each scrape (a value fixed per series, inside the
    bucket range), each counter a little more, the gauges fixed."""
    lines = []
    for name, (kind, labels) in CATALOGUE.items():
        values = [labels[label] or EXPORTED_VALUES[label] for label in labels]
        lines.append(f"# HELP {name} StageTrace test double: {name}")
        lines.append(f"# TYPE {name} {kind}")
        for number, combination in enumerate(itertools.product(*values)):
            pairs = [f'{label}="{value}"' for label, value in zip(labels, combination, strict=True)]
            series = ",".join(pairs)
            if kind == "histogram":
                observed = BUCKETS[(3 * number + 5 * instance_index + 7) % len(BUCKETS)] * 0.9
                for le in (*BUCKETS, "+Inf"):
                    count = scrapes if le == "+Inf" or observed <= le else 0
                    bucket = ",".join([*pairs, f'le="{le}"'])
                    lines.append(f"{name}_bucket{{{bucket}}} {count}")
                lines.append(f"{name}_sum{{{series}}} {observed * scrapes}")
                lines.append(f"{name}_count{{{series}}} {scrapes}")
            elif kind == "counter":
                lines.append(f"{name}{{{series}}} {scrapes * (number + 1)}")
            else:
                lines.append(f"{name}{{{series}}} {1 if name == 'stagetrace_build_info' else number + 2}")
    return "\n".join(lines) + "\n"


class CatalogueExporter:
    """A loopback HTTP server serving exposition() at /stagetrace/metrics, counting its scrapes."""

    def __init__(self, instance_index: int):
        exporter = self
        self.instance_index = instance_index
        self.scrapes = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path != "/stagetrace/metrics":
                    self.send_error(404)
                    return
                with exporter.lock:
                    exporter.scrapes += 1
                    body = exposition(exporter.scrapes, exporter.instance_index).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="catalogue-exporter", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def prom():
    """A real Prometheus with rules.yml, scraping two catalogue exporters every second, after at least
    three scrapes of each (so that every rate has two samples or more)."""
    with contextlib.ExitStack() as stack:
        exporters = []
        for index in range(2):
            exporter = CatalogueExporter(index)
            stack.callback(exporter.close)
            exporters.append(exporter)
        server = stack.enter_context(running_prometheus([e.target for e in exporters], rule_files=[RULES_YML]))
        server.wait_for_targets(timeout=30)
        server.wait_for("count_over_time(stagetrace_build_info[1m])",
                        lambda result: len(result) == 2 and all(float(s["value"][1]) >= 3 for s in result),
                        timeout=30)
        yield server


def test_exposition_is_the_whole_catalogue(prom):
    names = {sample[0]["__name__"] for sample in prom.vector('{__name__=~"stagetrace_.+"}')}
    assert {catalogue_name(name) for name in names} == set(CATALOGUE)
    stages = {labels["stage"] for labels, _ in prom.vector("stagetrace_stage_seconds_count")}
    assert stages == set(STAGES)


def test_dashboard_queries_evaluate_and_show_data(prom):
    dashboard = load_dashboard()
    variables = dashboard_variables(dashboard)
    empty = []
    for title, expr in dashboard_exprs(dashboard):
        query = substitute(expr, variables)
        try:
            result = prom.query(query)["result"]
        except PromQueryError as exc:
            pytest.fail(f"{title}: {query}: {exc}")
        if not result:
            empty.append(f"{title}: {query}")
    assert empty == [], "queries with no data although every catalogue series is there"


def test_dashboard_variables_list_the_workers_and_stages(prom):
    variables = dashboard_variables(load_dashboard())
    for name, expected in (("instance", 2), ("stage", len(STAGES))):
        definition = variables[name]["definition"]
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
        assert match, definition
        selector = substitute(match.group(1), variables)
        values = prom.api(f"label/{match.group(2)}/values", **{"match[]": selector})
        assert len(values) == expected, (definition, values)


def test_rules_evaluate_against_the_catalogue(prom):
    groups = rule_groups()
    records = [rule["record"] for rule in groups["stagetrace.recording"]]
    for record in records:
        prom.wait_for(record, timeout=30)
    # Every rule loaded, evaluated (health "unknown" until then; the groups run every second), without error.
    deadline = time.monotonic() + 10
    while True:
        loaded = {rule["name"]: rule for group in prom.rules()["groups"] for rule in group["rules"]}
        if all(rule["health"] != "unknown" for rule in loaded.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert set(loaded) == set(records) | {rule["alert"] for rule in groups["stagetrace.alerts"]}
    for name, rule in loaded.items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule["health"], rule.get("lastError"))


# --- tests/prom_server.py itself ---


def test_prom_server_refuses_targets_off_loopback():
    assert check_loopback("127.0.0.1:9090") == "127.0.0.1:9090"
    for target in ("gpu1:8188", "10.0.0.1:8188", "127.0.0.1", "0.0.0.0:80"):
        with pytest.raises(ValueError, match="only 127.0.0.1"):
            check_loopback(target)
    with pytest.raises(ValueError, match="file_sd_configs"):
        prometheus_config([], "/metrics", "1s", (), None, [{"job_name": "x", "file_sd_configs": []}])
    with pytest.raises(ValueError, match="__address__"):
        prometheus_config(["127.0.0.1:1"], "/metrics", "1s", (), {"relabel_configs": [
            {"target_label": "__address__", "replacement": "example.com:80"}]}, [])
    config = prometheus_config(["127.0.0.1:1"], "/metrics", "1s", (RULES_YML,), {"basic_auth": {"username": "u"}},
                               [{"job_name": "port", "static_configs": [{"targets": ["localhost:2"]}]}])
    assert config["scrape_configs"][0]["basic_auth"] == {"username": "u"}
    assert config["rule_files"] == [RULES_YML]


def test_prom_server_reports_query_errors_and_timeouts(prom):
    with pytest.raises(PromQueryError, match="bad_data"):
        prom.query("sum by (")
    with pytest.raises(TimeoutError, match="not as expected"):
        prom.wait_for("stagetrace_queue_pending", lambda result: False, timeout=0.5)
    assert prom.query_range("stagetrace_queue_running", step="1s")["resultType"] == "matrix"
    assert "Server is ready" in prom.log_tail(200)
