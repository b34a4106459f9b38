"""StageTrace's Prometheus metrics: what every prompt spent in each stage, and what the GPU did, for a fleet.

Exposed at ``GET /stagetrace/metrics`` inside ComfyUI (behind its middleware and auth plugins) in the text
format written by ``prometheus_client``, and, with ``STAGETRACE_METRICS_PORT``, on a port of its own for
scrapers that cannot pass ComfyUI's auth (``STAGETRACE_METRICS_ADDR``, loopback by default).

The writer thread calls :meth:`Metrics.observe` with each prompt's recorded events and its diagnosis, after
the trace is written: the prompt worker never waits for the metrics. Gauges (queue, GPU) are read when a
scrape comes. Every label value comes from a fixed set (outcomes, stages, error classes, copy directions,
the diagnosis rules, a configured list of node classes, GPU indices), so the number of series is bounded
whatever the prompts: a checkpoint or LoRA name is never a label.

    stagetrace_prompt_queue_wait_seconds                 histogram
    stagetrace_prompt_execution_seconds{outcome}         histogram   success | error | interrupted
    stagetrace_prompt_end_to_end_seconds{outcome}        histogram   queue wait + execution
    stagetrace_stage_seconds{stage}                      histogram   a stage's time in a prompt; sample.step:
                                                                     each denoising step
    stagetrace_node_seconds{node_class}                  histogram   configured classes, else "other"
    stagetrace_prompts_total{outcome}                    counter
    stagetrace_errors_total{class}                       counter     out_of_memory | validation | model_load | other
    stagetrace_cached_nodes_total                        counter
    stagetrace_model_read_bytes_total                    counter     bytes of the model files the loaders read
    stagetrace_copy_bytes_total{direction}               counter     host_to_device | device_to_host (CUPTI)
    stagetrace_models_loaded_total                       counter     models moved to the device
    stagetrace_models_unloaded_total                     counter     as ComfyUI's log reports them
    stagetrace_vae_tiled_fallbacks_total                 counter
    stagetrace_findings_total{rule}                      counter     the diagnosis rule ids
    stagetrace_dropped_events_total                      counter     StageTrace's own losses
    stagetrace_dropped_prompts_total                     counter
    stagetrace_queue_pending, stagetrace_queue_running   gauges
    stagetrace_gpu_utilization_ratio{gpu}                gauges      from the NVML sampler's newest sample
    stagetrace_gpu_memory_used_bytes{gpu}, stagetrace_gpu_memory_total_bytes{gpu},
    stagetrace_gpu_temperature_celsius{gpu}, stagetrace_gpu_power_watts{gpu}
    stagetrace_build_info{version}                       gauge (1)
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..core.log import log_once

# From a millisecond to an hour: model loading and sampling routinely take minutes, and 120 s (a common
# alert threshold) is a bucket boundary.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
           180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
OUTCOMES = {"ok": "success", "error": "error", "interrupted": "interrupted"}
STAGES = ("model_load.read", "model_load.build", "model_load.to_device", "text_encode", "sample", "sample.step",
          "vae_decode", "vae_encode", "save")
ERROR_CLASSES = ("out_of_memory", "validation", "model_load", "other")
DIRECTIONS = {"htod": "host_to_device", "dtoh": "device_to_host"}
OTHER = "other"
MAX_NODE_CLASSES = 200  # a configured list longer than this is cut: the series must stay bounded
# ComfyUI's core nodes where time goes; a workflow's other classes are counted as "other".
DEFAULT_NODE_CLASSES = (
    "CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader", "DiffusionModelLoader", "CLIPLoader",
    "DualCLIPLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader", "VAELoader", "LoraLoader", "LoraLoaderModelOnly",
    "ControlNetLoader", "CLIPVisionLoader", "UpscaleModelLoader", "CLIPTextEncode", "CLIPTextEncodeSDXL",
    "CLIPTextEncodeFlux", "TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus", "KSampler", "KSamplerAdvanced",
    "SamplerCustom", "SamplerCustomAdvanced", "VAEDecode", "VAEDecodeTiled", "VAEEncode", "VAEEncodeTiled",
    "VAEEncodeForInpaint", "SaveImage", "PreviewImage", "LoadImage", "ImageScale", "ImageUpscaleWithModel",
    "EmptyLatentImage", "EmptySD3LatentImage", "ControlNetApplyAdvanced",
)
OOM = re.compile(r"out of memory|outofmemory|CUDA_ERROR_OUT_OF_MEMORY|allocation on device", re.IGNORECASE)
UNLOADED = re.compile(r"(\d+) models? unloaded")
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def available() -> str | None:
    """None when prometheus_client can be imported; else why not, in words."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        return f"prometheus_client is not installed in ComfyUI's Python ({exc}): pip install prometheus_client"
    return None


class Metrics:
    """StageTrace's registry (its own, not prometheus_client's global one) and the prompt observer.

    queue: () -> (pending, running) or None; gpu: () -> nvml_latest() tuples; dropped_prompts: () -> int.
    They are called at scrape time, in the scraping thread, and may fail (the gauge is then left out)."""

    def __init__(self, node_classes: tuple[str, ...] | None = None, queue: Callable | None = None,
                 gpu: Callable | None = None, dropped_prompts: Callable | None = None, version: str = "?"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.node_classes = frozenset((node_classes or DEFAULT_NODE_CLASSES)[:MAX_NODE_CLASSES])
        self.registry = r = CollectorRegistry(auto_describe=True)

        def histogram(name, doc, labels=()):
            return Histogram(name, doc, labels, buckets=BUCKETS, registry=r)

        self.queue_wait = histogram("stagetrace_prompt_queue_wait_seconds",
                                    "Time from a prompt's submission to the start of its execution")
        self.execution = histogram("stagetrace_prompt_execution_seconds", "A prompt's execution time", ["outcome"])
        self.end_to_end = histogram("stagetrace_prompt_end_to_end_seconds",
                                    "A prompt's queue wait plus its execution", ["outcome"])
        self.stage = histogram("stagetrace_stage_seconds", "Time in a stage in one prompt (sample.step: one "
                               "denoising step)", ["stage"])
        self.node = histogram("stagetrace_node_seconds", "A node's execution time, by class (a configured set; "
                              "others are 'other')", ["node_class"])
        self.prompts = Counter("stagetrace_prompts", "Prompts executed, by outcome", ["outcome"], registry=r)
        self.errors = Counter("stagetrace_errors", "Errors by class", ["class"], registry=r)
        self.cached = Counter("stagetrace_cached_nodes", "Nodes served from ComfyUI's cache", registry=r)
        self.read_bytes = Counter("stagetrace_model_read_bytes", "Bytes of model files read by the loaders",
                                  registry=r)
        self.copy_bytes = Counter("stagetrace_copy_bytes", "Bytes copied between host and device (CUPTI)",
                                  ["direction"], registry=r)
        self.loaded = Counter("stagetrace_models_loaded", "Models moved to the device", registry=r)
        self.unloaded = Counter("stagetrace_models_unloaded", "Models unloaded, as ComfyUI's log reports them",
                                registry=r)
        self.tiled = Counter("stagetrace_vae_tiled_fallbacks", "VAE decodes or encodes that fell back to tiles "
                             "after running out of memory", registry=r)
        self.findings = Counter("stagetrace_findings", "Diagnosis findings, by rule", ["rule"], registry=r)
        self.dropped_events = Counter("stagetrace_dropped_events", "Events StageTrace dropped (full buffers)",
                                      registry=r)
        Gauge("stagetrace_build_info", "StageTrace's version", ["version"], registry=r).labels(version).set(1)
        from ..analysis.diagnose import RULES

        self.rules = frozenset(rule.id for rule in RULES)
        for outcome in OUTCOMES.values():  # every series exists from the start, at 0
            self.prompts.labels(outcome)
        for cls in ERROR_CLASSES:
            self.errors.labels(cls)
        for direction in DIRECTIONS.values():
            self.copy_bytes.labels(direction)
        for rule in sorted(self.rules):
            self.findings.labels(rule)
        r.register(_Live(queue, gpu, dropped_prompts))
        # the children the per-event loop feeds, looked up once (labels() takes a lock and builds a key)
        self._step = self.stage.labels("sample.step")
        self._nodes: dict[str, object] = {}  # node class -> its histogram child; bounded by node_classes + 1

    def _node(self, name: str):
        """The node histogram's child for a class: a configured class's own, else "other"'s (cached: bounded by
        the configured classes, whatever class names the workflows use)."""
        if name not in self.node_classes:
            name = OTHER
        child = self._nodes.get(name)
        if child is None:
            child = self._nodes[name] = self.node.labels(name)
        return child

    # --- a prompt ---------------------------------------------------------------------------------

    def observe(self, trace: dict, report) -> None:
        """Count one prompt from its recorded events (``trace``: traceEvents and otherData) and its diagnosis.
        Runs in the writer thread; thread-safe (prometheus_client's metrics are)."""
        summary = report.summary
        outcome = OUTCOMES.get(summary.outcome, "error")
        self.prompts.labels(outcome).inc()
        queue_wait = summary.queue_wait_s if isinstance(summary.queue_wait_s, (int, float)) else None
        if queue_wait is not None:
            self.queue_wait.observe(max(0.0, queue_wait))
        if isinstance(summary.wall_s, (int, float)) and summary.wall_s >= 0:
            self.execution.labels(outcome).observe(summary.wall_s)
            self.end_to_end.labels(outcome).observe(summary.wall_s + (queue_wait or 0.0))
        for stage in STAGES:
            seconds = (summary.stage_s or {}).get(stage)
            if stage != "sample.step" and seconds:
                self.stage.labels(stage).observe(seconds)
        self.cached.inc(len(summary.cached or ()))
        read = copies_h2d = copies_d2h = 0
        loaded = unloaded = tiled_spans = tiled_lines = 0
        error_event = None
        load_failed = False
        for ev in trace.get("traceEvents") or ():
            cat, args = ev.get("cat"), ev.get("args") if isinstance(ev.get("args"), dict) else {}
            if ev.get("ph") == "X":
                dur = ev.get("dur")
                if cat == "node" and isinstance(dur, (int, float)):
                    if args.get("outcome") != "cached":  # served from ComfyUI's cache: it did not run
                        self._node(str(ev.get("name"))).observe(dur / 1e6)
                elif cat == "sample.step" and isinstance(dur, (int, float)):
                    self._step.observe(dur / 1e6)
                elif cat == "model_load.read":
                    read += _int(args.get("file_bytes"))
                elif cat == "model_load.to_device":
                    loaded += 1
                elif cat == "gpu":
                    for direction, figures in (args.get("copies") or {}).items():
                        if isinstance(figures, dict):
                            if direction == "htod":
                                copies_h2d += _int(figures.get("bytes"))
                            elif direction == "dtoh":
                                copies_d2h += _int(figures.get("bytes"))
                if cat in ("vae_decode", "vae_encode") and args.get("tiled_fallback") is True:
                    tiled_spans += 1
                if str(cat).startswith("model_load") and args.get("outcome") == "error":
                    load_failed = True
            elif ev.get("ph") == "i":
                name = ev.get("name")
                if name == "execution_error":
                    error_event = args
                elif cat == "comfyui_log" and name == "models_unloaded":
                    m = UNLOADED.search(str(args.get("message", "")))
                    unloaded += int(m.group(1)) if m else 1
                elif cat == "comfyui_log" and name == "tiled_vae_retry":
                    tiled_lines += 1
        self.read_bytes.inc(read)
        self.copy_bytes.labels("host_to_device").inc(copies_h2d)
        self.copy_bytes.labels("device_to_host").inc(copies_d2h)
        self.loaded.inc(loaded)
        self.unloaded.inc(unloaded)
        self.tiled.inc(max(tiled_spans, tiled_lines))
        if outcome == "error":
            self.errors.labels(error_class(error_event, load_failed)).inc()
        for finding in report.findings:
            self.findings.labels(finding.rule if finding.rule in self.rules else OTHER).inc()
        dropped = _int((trace.get("otherData") or {}).get("dropped_events"))
        if dropped:
            self.dropped_events.inc(dropped)

    def count_unrecorded(self, outcome: str | None) -> None:
        """A prompt whose trace the writer dropped (it was behind): counted by outcome, nothing more is known."""
        self.prompts.labels(OUTCOMES.get(outcome or "", "error")).inc()

    def validation_error(self) -> None:
        """A prompt ComfyUI refused at validation (POST /prompt answered 400): it never ran."""
        self.errors.labels("validation").inc()

    def exposition(self) -> tuple[bytes, str]:
        """(the text format, its content type). The classic text format 0.0.4, which every Prometheus reads
        (newer prometheus_client releases label the same text 1.0.0, which older servers do not know)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry), TEXT_FORMAT


def error_class(event: dict | None, load_failed: bool) -> str:
    """out_of_memory, model_load or other, from the prompt's execution_error message."""
    event = event or {}
    text = f"{event.get('exception_type', '')}: {event.get('exception_message', '')}"
    if OOM.search(text):
        return "out_of_memory"
    node_type = str(event.get("node_type", ""))
    if load_failed or "Loader" in node_type:
        return "model_load"
    return "other"


def _int(value) -> int:
    return int(value) if isinstance(value, (int, float)) and value > 0 else 0


class _Live:
    """The gauges read when a scrape comes: the queue and the GPU's newest sample."""

    def __init__(self, queue: Callable | None, gpu: Callable | None, dropped_prompts: Callable | None):
        self.queue, self.gpu, self.dropped_prompts = queue, gpu, dropped_prompts

    def describe(self):
        return []  # collected only at scrape time (auto_describe would call collect() at registration)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        dropped = CounterMetricFamily("stagetrace_dropped_prompts", "Prompts whose trace StageTrace dropped "
                                      "(the writer was behind)")
        dropped.add_metric([], float(_call(self.dropped_prompts, "dropped prompts") or 0))
        yield dropped
        queue = _call(self.queue, "queue")
        if queue is not None:
            pending, running = queue
            yield GaugeMetricFamily("stagetrace_queue_pending", "Prompts waiting in ComfyUI's queue", value=pending)
            yield GaugeMetricFamily("stagetrace_queue_running", "Prompts executing now", value=running)
        samples = _call(self.gpu, "GPU") or ()
        families = {
            "util": GaugeMetricFamily("stagetrace_gpu_utilization_ratio", "Fraction of the last sample period a "
                                      "kernel ran (NVML)", labels=["gpu"]),
            "used": GaugeMetricFamily("stagetrace_gpu_memory_used_bytes", "Device memory in use (NVML)",
                                      labels=["gpu"]),
            "total": GaugeMetricFamily("stagetrace_gpu_memory_total_bytes", "Device memory (NVML)", labels=["gpu"]),
            "temperature": GaugeMetricFamily("stagetrace_gpu_temperature_celsius", "GPU temperature (NVML)",
                                             labels=["gpu"]),
            "power": GaugeMetricFamily("stagetrace_gpu_power_watts", "GPU power draw (NVML)", labels=["gpu"]),
        }
        for _t, device, gpu_pct, _mem_pct, used, total, temperature, power_mw in samples:
            label = [str(device)]
            for key, value in (("util", None if gpu_pct is None else gpu_pct / 100.0), ("used", used),
                               ("total", total), ("temperature", temperature),
                               ("power", None if power_mw is None else power_mw / 1000.0)):
                if value is not None:
                    families[key].add_metric(label, float(value))
        for family in families.values():
            if family.samples:
                yield family


def _call(source: Callable | None, what: str):
    if source is None:
        return None
    try:
        return source()
    except Exception as exc:  # noqa: BLE001 - a gauge is left out; the scrape answers
        log_once(f"metrics-{what}", "metrics: could not read the %s (%s: %s); left out of the scrape", what,
                 type(exc).__name__, exc)
        return None


def comfy_queue() -> tuple[int, int] | None:
    """(pending, running) of ComfyUI's prompt queue, without copying it."""
    from ..core.comfyui import prompt_server

    queue = getattr(prompt_server(), "prompt_queue", None)
    if queue is None:
        return None
    mutex = getattr(queue, "mutex", None)
    if mutex is not None and hasattr(queue, "queue") and hasattr(queue, "currently_running"):
        with mutex:
            return len(queue.queue), len(queue.currently_running)
    remaining = queue.get_tasks_remaining()
    return remaining, 0


def count_validation_errors(metrics: Metrics) -> str | None:
    """Count the prompts ComfyUI refuses at validation (POST /prompt answered 400) with an aiohttp middleware
    on ComfyUI's app, added while custom nodes load, as auth plugins add theirs (so it sees only requests
    their middlewares let through). Returns None, or why they are not counted. Never raises."""
    from ..core.comfyui import prompt_server

    instance = prompt_server()
    if instance is None:
        return None
    try:
        from aiohttp import web

        @web.middleware
        async def stagetrace_validation_errors(request, handler):
            response = await handler(request)
            if response.status == 400 and request.method == "POST" and request.path in ("/prompt", "/api/prompt"):
                try:
                    metrics.validation_error()
                except Exception as exc:  # noqa: BLE001 - the answer goes out whatever happens here
                    log_once("metrics-validation", "metrics: a validation error was not counted (%s)", exc)
            return response

        instance.app.middlewares.append(stagetrace_validation_errors)
        return None
    except Exception as exc:  # noqa: BLE001 - e.g. the app already started (its middlewares are frozen)
        log_once("metrics-validation", "metrics: validation errors are not counted (%s: %s)", type(exc).__name__,
                 exc)
        return f"validation errors not counted: {type(exc).__name__}: {exc}"


def serve_port(metrics: Metrics, addr: str, port: int) -> str | None:
    """With a port: serve the metrics at http://addr:port/metrics from prometheus_client's own server thread,
    outside ComfyUI's auth (loopback by default). Returns None, or why there is no such port."""
    if not port:
        return None
    from prometheus_client import start_http_server

    from ..core.log import logger

    try:
        start_http_server(port, addr=addr, registry=metrics.registry)
    except (OSError, ValueError) as exc:
        log_once("metrics-port", "metrics: cannot listen on %s:%d (%s); /stagetrace/metrics still answers",
                 addr, port, exc)
        return f"no metrics port {addr}:{port}: {exc}"
    logger.info("StageTrace: Prometheus metrics on http://%s:%d/metrics", addr, port)
    return None
