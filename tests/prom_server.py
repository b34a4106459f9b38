"""A real Prometheus on loopback for tests: it scrapes the given targets and evaluates the given rules.

``running_prometheus(targets, ...)`` (a context manager) writes a config file into a temporary folder,
starts ::

    prometheus --config.file <tmp>/prometheus.yml --web.listen-address 127.0.0.1:<free port>
               --storage.tsdb.path <tmp>/data --web.enable-lifecycle

waits (bounded) for ``/-/ready``, and yields a ``PromServer`` whose methods call Prometheus's HTTP API. On
exit it terminates Prometheus, kills it when it has not stopped within 10 s, and removes the folder.

The binary is $PROMETHEUS_BIN, else ``prometheus`` on PATH, else /usr/bin/prometheus (Debian's package:
``apt-get install prometheus``); without one the test skips, saying so. Every address involved is on
127.0.0.1: targets elsewhere are refused, and the HTTP client here ignores any proxy settings. The config
has no alerting section, so Prometheus sends no alert anywhere.

    with running_prometheus(["127.0.0.1:8188", "127.0.0.1:8189"], rule_files=[RULES]) as prom:
        prom.wait_for_targets()
        prom.wait_for("stagetrace_queue_pending", lambda result: len(result) == 2, timeout=30)
        for labels, value in prom.vector("sum by (instance) (stagetrace_prompts_total)"):
            ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence

HOST = "127.0.0.1"  # Prometheus listens here and scrapes nothing else
LOOPBACK_NAMES = (HOST, "localhost")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 10.0
LOG_NAME = "prometheus.log"

# No proxy for anything: a test's requests go to 127.0.0.1 directly, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PromQueryError(RuntimeError):
    """Prometheus answered a request with status "error" (the message holds its errorType and error),
    or not with JSON at all."""


def find_prometheus() -> str | None:
    """The Prometheus binary to run: $PROMETHEUS_BIN, else `prometheus` on PATH, else /usr/bin/prometheus;
    None when none of them is an executable file. This function can't fail."""
    for candidate in (os.environ.get("PROMETHEUS_BIN"), shutil.which("prometheus"), "/usr/bin/prometheus"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def skip_reason() -> str | None:
    """Why a test that needs Prometheus cannot run here, or None when it can."""
    if find_prometheus() is None:
        return "no Prometheus binary: apt-get install prometheus (or set PROMETHEUS_BIN)"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may take it before Prometheus binds it;
    Prometheus then exits and running_prometheus raises with its log)."""
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_loopback(target: str) -> str:
    """target ("host:port") when its host is 127.0.0.1 or localhost; raises ValueError otherwise."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or host not in LOOPBACK_NAMES:
        raise ValueError(f"scrape target {target!r}: only 127.0.0.1:<port> (or localhost:<port>) is allowed")
    return target


def check_job(job: dict) -> dict:
    """job (a scrape config) when everything it scrapes is on loopback: static targets only, no proxy, no
    relabelling of the address; raises ValueError otherwise."""
    name = job.get("job_name")
    for key in job:
        if key.endswith("_sd_configs") or key in ("proxy_url", "proxy_from_environment"):
            raise ValueError(f"job {name!r}: {key} is not allowed (static_configs on loopback only)")
    for rule in job.get("relabel_configs", []):
        if rule.get("target_label") == "__address__" or rule.get("action") == "labelmap":
            raise ValueError(f"job {name!r}: relabel_configs must not change __address__ (nor use labelmap)")
    for static in job.get("static_configs", []):
        for target in static.get("targets", []):
            check_loopback(target)
    return job


def prometheus_config(targets: Sequence[str], metrics_path: str, scrape_interval: str,
                      rule_files: Sequence[str], extra_scrape: dict | None,
                      extra_jobs: Sequence[dict]) -> dict:
    """The configuration running_prometheus writes (as JSON, which Prometheus reads as YAML): job
    `comfyui` scraping targets at metrics_path every scrape_interval, rules evaluated at that interval,
    extra_scrape's keys merged into that job, extra_jobs appended as further jobs. Raises ValueError
    when a job would scrape anything off loopback (check_job)."""
    job = {
        "job_name": "comfyui",
        "metrics_path": metrics_path,
        "scrape_interval": scrape_interval,
        "static_configs": [{"targets": list(targets)}],
    }
    job.update(extra_scrape or {})
    jobs = [check_job(j) for j in (job, *extra_jobs)]
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "rule_files": [os.path.abspath(f) for f in rule_files],
        "scrape_configs": jobs,
    }


class PromServer:
    """One running Prometheus: its URL, and its HTTP API (GET requests, answers' `data` as dicts)."""

    def __init__(self, url: str, log_path: str, process: subprocess.Popen):
        self.url = url
        self.log_path = log_path
        self.process = process

    # --- HTTP API ---

    def api(self, path: str, **params) -> dict | list:
        """GET {url}/api/v1/{path}?params; the answer's `data`. Raises PromQueryError with Prometheus's
        error text when its status is not "success" (a bad expression is HTTP 400 with a JSON body)."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with _OPENER.open(url, timeout=REQUEST_TIMEOUT_S) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise PromQueryError(f"GET {url}: not JSON: {body[:200]!r}") from exc
        if answer.get("status") != "success":
            raise PromQueryError(f"GET {url}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> dict:
        """An instant query (now, or at epoch seconds): {"resultType": ..., "result": [...]}; raises
        PromQueryError on an error."""
        return self.api("query", query=expr, time=at)

    def query_range(self, expr: str, start: float | None = None, end: float | None = None,
                    step: str | float = "1s") -> dict:
        """A range query from start to end (epoch seconds; end defaults to now, start to a minute before
        end): {"resultType": "matrix", "result": [...]}; raises PromQueryError on an error."""
        end = time.time() if end is None else end
        start = end - 60.0 if start is None else start
        return self.api("query_range", query=expr, start=start, end=end, step=step)

    def vector(self, expr: str) -> list[tuple[dict, float]]:
        """An instant query's samples as (labels, value) pairs; raises PromQueryError on an error, and
        ValueError when the result is not a vector."""
        data = self.query(expr)
        if data["resultType"] != "vector":
            raise ValueError(f"{expr}: a {data['resultType']}, not a vector")
        return [(sample["metric"], float(sample["value"][1])) for sample in data["result"]]

    def targets(self) -> dict:
        """/api/v1/targets: {"activeTargets": [{"labels", "health", "lastError", ...}], "droppedTargets": ...}."""
        return self.api("targets")

    def rules(self) -> dict:
        """/api/v1/rules: {"groups": [{"name", "rules": [{"name", "query", "health", "lastError", ...}]}]}."""
        return self.api("rules")

    # --- Waiting ---

    def wait_for(self, expr: str, predicate: Callable[[list], bool] = bool, timeout: float = 30.0) -> list:
        """Polls the instant query expr until predicate(result) is true (result: the list of samples;
        by default, until there is one) and returns that result. Raises PromQueryError at once when the
        query fails, and TimeoutError after timeout seconds with the last result, the targets' health and
        the log's tail."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)["result"]
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{expr}: not as expected after {timeout:.0f} s; last result {result}\n"
                                   f"targets: {self.target_health()}\n{self.log_tail()}")
            time.sleep(0.25)

    def wait_for_targets(self, timeout: float = 30.0) -> list[dict]:
        """Waits until every active target has been scraped successfully (health "up") and returns the
        active targets; raises TimeoutError with each target's health and last error."""
        deadline = time.monotonic() + timeout
        while True:
            active = self.targets()["activeTargets"]
            if active and all(t["health"] == "up" for t in active):
                return active
            if time.monotonic() >= deadline:
                raise TimeoutError(f"targets not up after {timeout:.0f} s: {self.target_health()}\n"
                                   f"{self.log_tail()}")
            time.sleep(0.25)

    def target_health(self) -> list[tuple[str, str, str]]:
        """(scrape URL, health, last error) of each active target; empty when Prometheus does not answer."""
        try:
            return [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()["activeTargets"]]
        except (OSError, PromQueryError):
            return []

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Prometheus's output (stdout and stderr); "" when there is none."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def _ready(url: str) -> bool:
    try:
        with _OPENER.open(f"{url}/-/ready", timeout=2.0) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_prometheus(targets: Sequence[str], metrics_path: str = "/stagetrace/metrics",
                       scrape_interval: str = "1s", rule_files: Sequence[str] = (),
                       extra_scrape: dict | None = None, extra_jobs: Sequence[dict] = ()) -> Iterator[PromServer]:
    """A Prometheus scraping targets ("127.0.0.1:port" strings) as job `comfyui` at metrics_path every
    scrape_interval, evaluating rule_files (paths) at that interval, for the duration of the block.

    extra_scrape: keys merged into that job (e.g. {"authorization": {"credentials": token}} or
    {"basic_auth": {"username": u, "password": p}}); extra_jobs: further scrape jobs, each a dict with
    job_name and static_configs on loopback (e.g. a worker's separate metrics port at /metrics).

    Skips the calling test when there is no Prometheus binary. Raises ValueError for a target off
    loopback, and RuntimeError with the log's tail when Prometheus exits or is not ready within 60 s
    (a bad rule file is such an exit)."""
    binary = find_prometheus()
    if binary is None:
        import pytest

        pytest.skip(skip_reason())
    config = prometheus_config(targets, metrics_path, scrape_interval, rule_files, extra_scrape, extra_jobs)
    with tempfile.TemporaryDirectory(prefix="stagetrace-prom-") as workdir:
        config_path = os.path.join(workdir, "prometheus.yml")
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)
        for attempt in range(3):  # again on another port when one was taken between free_port and the bind
            server = _start(binary, workdir, config_path)
            try:
                _wait_ready(server)
                break
            except BaseException as exc:
                _stop(server.process)
                port_taken = isinstance(exc, RuntimeError) and "address already in use" in server.log_tail()
                if attempt == 2 or not port_taken:
                    raise
        try:
            yield server
        finally:
            _stop(server.process)


def _start(binary: str, workdir: str, config_path: str) -> PromServer:
    port = free_port()
    log_path = os.path.join(workdir, LOG_NAME)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--web.listen-address={HOST}:{port}",
             f"--storage.tsdb.path={os.path.join(workdir, 'data')}", "--web.enable-lifecycle", "--log.level=info"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    return PromServer(f"http://{HOST}:{port}", log_path, process)


def _wait_ready(server: PromServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _ready(server.url):
        if server.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with status {server.process.returncode} before it was ready:\n"
                               f"{server.log_tail()}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"prometheus not ready at {server.url} after {READY_TIMEOUT_S:.0f} s:\n"
                               f"{server.log_tail()}")
        time.sleep(0.1)
