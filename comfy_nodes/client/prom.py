"""``stagetrace load --prometheus URL``: the fleet's own figures for the run, read back from Prometheus.

The client measures what a user sees; each worker's StageTrace measures what the server did (its queue
wait, execution and end to end, and every stage), and Prometheus holds those histograms for the whole
fleet. After a load run this asks Prometheus, through its HTTP API, for the p50/p95 of each over the run's
window, per instance and per stage, so the report puts the server's side beside the client's. It first
waits (bounded) until Prometheus has scraped the run's last prompts.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.parse

import aiohttp

METRICS = {"queue_wait_s": "stagetrace_prompt_queue_wait_seconds_bucket",
           "execution_s": "stagetrace_prompt_execution_seconds_bucket",
           "e2e_s": "stagetrace_prompt_end_to_end_seconds_bucket"}
QUANTILES = {"p50": 0.5, "p95": 0.95}


class PrometheusError(Exception):
    pass


class Prometheus:
    def __init__(self, url: str, session: aiohttp.ClientSession):
        parsed = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--prometheus {url!r}: not an http(s) address")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.session = session

    async def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query's vector; PrometheusError with Prometheus' own error text."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            async with self.session.get(self.url + "/api/v1/query", params=params,
                                        timeout=aiohttp.ClientTimeout(total=30)) as answer:
                body = await answer.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise PrometheusError(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else str(body)[:200]
            raise PrometheusError(f"{self.url}: {expr}: {error}")
        return body["data"]["result"] if body["data"].get("resultType") == "vector" else []


def _number(sample: dict) -> float | None:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def during(series: str, window: int) -> str:
    """What a counter or histogram bucket gained in the last window seconds: the exact difference of the
    scraped values (increase() would extrapolate), and the whole value of a series born in the window."""
    return f"(({series} - {series} offset {window}s) or {series})"


async def server_side(url: str, started_epoch: float, expected_prompts: int, wait_s: float = 30.0) -> dict:
    """{"prometheus", "window_s", "prompts_seen", "instances": {instance: {"prompts", metric: {p50, p95}}},
    "stages_s": {stage: {p50, p95}}, "fleet": {metric: {p50, p95}}, "no_baseline": [instance]}, or
    {"prometheus", "error"} when Prometheus cannot answer.

    The run's share of each counter and bucket is what it gained from the run's start to the query. First this
    waits (at most wait_s) until Prometheus has scraped every worker after the run ended and has seen the
    run's prompts. An instance Prometheus had not scraped before the run began has no baseline: its whole
    count is taken, and it is listed in "no_baseline"."""
    ended = time.time()
    out: dict = {"prometheus": url, "window_s": None}
    async with aiohttp.ClientSession() as session:
        try:
            prom = Prometheus(url, session)
            before = await prom.query("count by (instance) (stagetrace_build_info)", started_epoch - 0.5)
            baseline = {sample["metric"].get("instance") for sample in before}
            deadline = time.monotonic() + wait_s
            while True:  # until every worker was scraped after the run and the prompts are in (bounded)
                now = time.time()
                window = max(1, math.ceil(now - started_epoch + 0.5))
                got = await prom.query(f"sum({during('stagetrace_prompts_total', window)})", now)
                seen = (_number(got[0]) if got else None) or 0.0
                fresh = await prom.query("min(timestamp(stagetrace_build_info))", now)
                scraped_after = (_number(fresh[0]) if fresh else None) or 0.0
                if (scraped_after >= ended + 0.25 and seen >= expected_prompts - 0.5) or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.5)
            out.update(window_s=window, prompts_seen=round(seen), instances={}, fleet={}, stages_s={})
            for metric, series in METRICS.items():
                for name, q in QUANTILES.items():
                    by_instance = f"histogram_quantile({q}, sum by (le, instance) ({during(series, window)}))"
                    for sample in await prom.query(by_instance, now):
                        row = out["instances"].setdefault(sample["metric"].get("instance", "?"), {})
                        row.setdefault(metric, {})[name] = _number(sample)
                    fleet = await prom.query(f"histogram_quantile({q}, sum by (le) ({during(series, window)}))", now)
                    out["fleet"].setdefault(metric, {})[name] = _number(fleet[0]) if fleet else None
            stage_series = during("stagetrace_stage_seconds_bucket", window)
            for name, q in QUANTILES.items():
                for sample in await prom.query(f"histogram_quantile({q}, sum by (le, stage) ({stage_series}))", now):
                    out["stages_s"].setdefault(sample["metric"].get("stage", "?"), {})[name] = _number(sample)
            prompts = f"sum by (instance) ({during('stagetrace_prompts_total', window)})"
            for sample in await prom.query(prompts, now):
                row = out["instances"].setdefault(sample["metric"].get("instance", "?"), {})
                row["prompts"] = round(_number(sample) or 0)
            out["stages_s"] = {s: v for s, v in out["stages_s"].items() if any(x is not None for x in v.values())}
            out["no_baseline"] = sorted(i for i in out["instances"] if i not in baseline)
        except (PrometheusError, ValueError) as exc:
            out["error"] = str(exc)
    return out


def lines(side: dict) -> list[str]:
    """The server side in the console table, beside the client's figures."""
    from ..core.units import format_duration

    if side.get("error"):
        return [f"server side (Prometheus {side['prometheus']}): not available: {side['error']}"]
    out = [f"server side, from each worker's StageTrace via Prometheus ({side['prompts_seen']} prompts in the "
           f"last {side['window_s']} s):"]
    if side.get("no_baseline"):
        out.append("  (Prometheus had not scraped " + ", ".join(side["no_baseline"]) + " before the run began: "
                   "their counts include earlier prompts)")
    for metric, label in (("queue_wait_s", "queue wait"), ("execution_s", "execution"), ("e2e_s", "end to end")):
        figures = side["fleet"].get(metric) or {}
        out.append(f"  {label:20}{format_duration(figures.get('p50')):>11}{format_duration(figures.get('p95')):>11}")
    for stage, figures in sorted(side["stages_s"].items()):
        out.append(f"  {stage:20}{format_duration(figures.get('p50')):>11}{format_duration(figures.get('p95')):>11}")
    for instance, row in sorted(side["instances"].items()):
        e2e = row.get("e2e_s") or {}
        out.append(f"  {instance}: {row.get('prompts', 0)} prompts, end to end p50 {format_duration(e2e.get('p50'))}"
                   f", p95 {format_duration(e2e.get('p95'))}")
    return out
