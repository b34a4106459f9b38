"""Why was the run slow or broken: findings read from a trace, most costly first.

``diagnose(trace)`` gathers the evidence a trace holds (:class:`Evidence`) and runs every rule of
``RULES``, the one catalogue. A rule is a record: an id, a title, and a check that returns a
:class:`Finding` (what was measured, the seconds it cost, the cause and the fix), ``None`` when the
evidence shows nothing wrong, or :class:`NotChecked` saying which evidence was missing. No finding is
ever made up: without GPU data, the GPU rules say they could not check.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..analysis.summary import Summary, summarize
from ..core.units import format_bytes, format_duration
from .loaders import advice_text, describe_gap, fitting_advice, valid_gaps

# --- What a finding is ----------------------------------------------------------------------------


@dataclass
class Finding:
    rule: str
    title: str
    evidence: str  # the measured figure, in words
    cost_s: float | None  # estimated seconds lost; None when it cannot be put in seconds
    cause: str
    fix: str
    severity: str = "warning"  # "error": the run failed or will; "warning": time lost; "info": a note

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NotChecked:
    rule: str
    title: str
    why: str


@dataclass
class Evidence:
    """What a trace says, indexed for the rules."""

    trace: dict
    summary: Summary
    spans: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))  # stage -> X events
    gpu_windows: list[dict] = field(default_factory=list)  # the GPU track's per-window args
    logs: list[dict] = field(default_factory=list)  # comfyui_log instant events
    other: dict = field(default_factory=dict)

    @property
    def gpu(self) -> dict:
        return self.other.get("gpu") or {}

    @property
    def gpu_collected(self) -> bool:
        return self.gpu.get("collection") == "cupti"

    @property
    def devices(self) -> list[dict]:
        return list(self.gpu.get("devices") or [])

    def seconds(self, stage: str) -> float:
        return self.summary.stage_s.get(stage, 0.0)

    def log_kinds(self) -> set[str]:
        return {e.get("name") for e in self.logs}

    def diffusion_anatomy(self) -> list[dict]:
        return [a for a in self.other.get("anatomy") or [] if a.get("family") and "components" in a
                and any(c.get("kind") == "diffusion_model" for c in a["components"])]


def gather(trace: dict) -> Evidence:
    ev = Evidence(trace=trace, summary=summarize(trace), other=trace.get("otherData") or {})
    for e in trace.get("traceEvents", []):
        cat, ph = e.get("cat"), e.get("ph")
        if ph == "X" and cat == "gpu":
            ev.gpu_windows.append(e.get("args") or {})
        elif ph == "X" and cat:
            ev.spans[cat].append(e)
        elif ph in ("i", "I") and cat == "comfyui_log":
            ev.logs.append(e)
    return ev


Check = Callable[[Evidence], "Finding | NotChecked | None"]


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    check: Check



# --- The rules ------------------------------------------------------------------------------------

# Storage a model should come off at, at least (MB/s): below, the read is slow for any disk class.
SLOW_READ_MB_S = 150.0
EXPECTED_READ_MB_S = 500.0  # what an SSD gives, for the estimate of time lost
NETWORK_FILESYSTEMS = ("overlay", "9p", "fuse", "nfs", "cifs", "smb", "virtiofs", "sshfs", "s3", "gcsfuse")


def rule_missing_parts(ev: Evidence) -> Finding | NotChecked | None:
    """From the recorded loader gaps (analysis.loaders): what the file holds, what is missing and who
    needs it, and the loaders the workflow still needs. ComfyUI's own log lines stand in for a trace
    without gaps (an older trace, or a loader StageTrace does not know)."""
    gaps = [g for g in valid_gaps(ev.other)[0] if g["missing"]]
    kinds = ev.log_kinds()
    failed = " ".join(ev.summary.failures)
    if not gaps:
        if not ({"no_clip", "no_vae"} & kinds and "invalid: None" in failed):
            if "anatomy" not in ev.other:
                return NotChecked("missing-clip-vae", TITLES["missing-clip-vae"], "the trace has no model-file anatomy")
            return None
        return Finding("missing-clip-vae", TITLES["missing-clip-vae"],
                       "ComfyUI logged " + ", ".join(sorted({"no_clip", "no_vae"} & kinds)), None, _MISSING_CAUSE,
                       "load the diffusion model, text encoder and VAE with their own loader nodes", "error")
    gap = gaps[0]
    evidence = describe_gap(gap)
    evidence = evidence[: evidence.index(" Load it with:")] if " Load it with:" in evidence else evidence
    steps = fitting_advice(gap)
    fix = ("load it with " + advice_text(steps)) if steps else \
        "use a complete checkpoint, or load the missing parts with their own loader nodes"
    return Finding("missing-clip-vae", TITLES["missing-clip-vae"], evidence, None, _MISSING_CAUSE, fix, "error")


_MISSING_CAUSE = ("the checkpoint loader was given a file that holds only part of the model (a diffusion-model-"
                  "only file, or one without a VAE), so the nodes after it get None")


def rule_slow_read(ev: Evidence) -> Finding | NotChecked | None:
    reads = ev.spans.get("model_load.read", [])
    if not reads:
        return NotChecked("slow-read", TITLES["slow-read"], "no model file was read in this prompt")
    builds = ev.spans.get("model_load.build", [])
    worst = None
    for read in reads:
        args = read.get("args") or {}
        size = args.get("file_bytes")
        if not size:
            continue
        # with mmap (safetensors), the bytes come off storage during the build that follows the read
        build = next((b for b in builds if b["ts"] >= read["ts"]), None)
        seconds = (read["dur"] + (build["dur"] if build else 0.0)) / 1e6
        stored = (args.get("storage_read_bytes") or 0) + ((build or {}).get("args", {}).get("storage_read_bytes") or 0)
        if seconds <= 0 or stored < 0.5 * size:  # served from the page cache: not a read of the disk
            continue
        rate = size / 1e6 / seconds
        if rate < SLOW_READ_MB_S and (worst is None or rate < worst[0]):
            worst = (rate, seconds, size, args)
    if worst is None:
        return None
    rate, seconds, size, args = worst
    fs = args.get("fs_type") or "?"
    where = f"{fs} filesystem at {args.get('mount')}" if args.get("mount") else f"{fs} filesystem"
    network = any(fs.startswith(n) for n in NETWORK_FILESYSTEMS)
    lost = max(0.0, seconds - size / 1e6 / EXPECTED_READ_MB_S)
    cause = (f"the model sits on a {fs} filesystem, which reads far slower than a local disk" if network
             else "the disk (or the storage behind it) delivers the file slowly")
    fix = ("keep the models folder on a local SSD: mount it into the container as a plain bind mount or volume "
           "(not through the image's overlay or a 9p/FUSE share), or copy the model to local disk once"
           if network else "move the model to a faster local disk (NVMe or SATA SSD)")
    return Finding("slow-read", TITLES["slow-read"],
                   f"read {format_bytes(size)} of {args.get('path', 'a model')} in {format_duration(seconds)} "
                   f"= {rate:.0f} MB/s from the "
                   f"{where}", lost, cause, fix)


def rule_partial_offload(ev: Evidence) -> Finding | NotChecked | None:
    loads = ev.spans.get("model_load.to_device", [])
    if not loads:
        return NotChecked("partial-offload", TITLES["partial-offload"], "no model was loaded to a device")
    partial = []
    for e in loads:
        for m in (e.get("args") or {}).get("models") or []:
            if m.get("partial") and m.get("total_bytes"):
                partial.append(m)
    if not partial and "loaded_partially" not in ev.log_kinds():
        return None
    m = max(partial, key=lambda x: x["total_bytes"]) if partial else None
    steps = ev.spans.get("sample.step", [])
    htod = sum(((w.get("copies") or {}).get("htod") or {}).get("bytes", 0) for w in ev.gpu_windows
               if w.get("stage") == "sample.step")
    htod_ms = sum(((w.get("copies") or {}).get("htod") or {}).get("ms", 0) for w in ev.gpu_windows
                  if w.get("stage") == "sample.step")
    evidence = (f"{m['model']}: {format_bytes(m['loaded_bytes'])} of {format_bytes(m['total_bytes'])} on {m['device']}"
                if m else "ComfyUI logged 'loaded partially'")
    cost = None
    if steps and htod:
        evidence += f"; {format_bytes(htod / len(steps))} copied host to device per step over {len(steps)} steps"
        cost = htod_ms / 1e3
    elif not ev.gpu_collected:
        evidence += " (no GPU data: the bytes streamed per step could not be measured)"
    return Finding("partial-offload", TITLES["partial-offload"], evidence, cost,
                   "the weights do not fit in free VRAM, so the part left in system RAM is copied to the GPU for "
                   "every step",
                   "use a smaller variant (fp8 or GGUF quantised weights), lower the resolution or batch, close other "
                   "programs using VRAM, or run ComfyUI with --reserve-vram 0; a GPU with more VRAM avoids it")


def rule_cpu_sampling(ev: Evidence) -> Finding | NotChecked | None:
    sample_s = ev.seconds("sample")
    if not sample_s:
        return NotChecked("cpu-sampling", TITLES["cpu-sampling"], "no sampler ran in this prompt")
    devices = {m.get("device", "") for e in ev.spans.get("model_load.to_device", [])
               for m in (e.get("args") or {}).get("models") or []}
    on_cpu = bool(devices) and all(d.startswith("cpu") for d in devices)
    sampler_kernels = sum(w.get("kernels", 0) for w in ev.gpu_windows if w.get("stage") in ("sample", "sample.step"))
    if ev.gpu_collected and not on_cpu:
        if sampler_kernels:
            return None
        evidence = f"the sampler ran {format_duration(sample_s)} and the GPU ran no kernels in it"
    elif on_cpu:
        evidence = (f"the models were loaded to the CPU and sampling took {format_duration(sample_s)} "
                    f"({ev.gpu.get('reason', '')})")
        evidence = evidence.replace(" ()", "")
    else:
        return NotChecked("cpu-sampling", TITLES["cpu-sampling"],
                          "no GPU data and no model placement in this trace")
    return Finding("cpu-sampling", TITLES["cpu-sampling"], evidence, 0.9 * sample_s,
                   "ComfyUI is not using the GPU: it was started with --cpu, torch has no CUDA (a CPU build, or no "
                   "driver in the container), or the GPU is not visible to the process",
                   "check `nvidia-smi` inside the container (run it with --gpus all / the NVIDIA runtime), install a "
                   "CUDA build of torch, and start ComfyUI without --cpu")


def rule_fp8(ev: Evidence) -> Finding | NotChecked | None:
    fp8 = []
    for a in ev.diffusion_anatomy():
        for c in a["components"]:
            if c.get("kind") == "diffusion_model" and any(d.startswith("fp8") for d in c.get("dtypes") or {}):
                fp8.append((a.get("path", "?"), c))
    if not fp8:
        return None if "anatomy" in ev.other else NotChecked("fp8-no-compute", TITLES["fp8-no-compute"],
                                                             "the trace has no model-file anatomy")
    if not ev.devices:
        return NotChecked("fp8-no-compute", TITLES["fp8-no-compute"],
                          "FP8 weights were loaded, but the trace has no GPU facts to tell whether it computes in FP8")
    no_fp8 = [d for d in ev.devices if d.get("fp8_compute") is False]
    if not no_fp8:
        return None
    path, c = fp8[0]
    d = no_fp8[0]
    casts = sorted({m["manual_cast"] for e in ev.spans.get("model_load.to_device", [])
                    for m in (e.get("args") or {}).get("models") or [] if m.get("manual_cast")})
    cast = f"; ComfyUI computes it in {', '.join(casts)}" if casts else ""
    return Finding("fp8-no-compute", TITLES["fp8-no-compute"],
                   f"{path}: {c.get('label', 'diffusion model')} stored in {', '.join(c.get('dtypes', {}))}; "
                   f"{d.get('name')} is sm_{str(d.get('compute_capability', '?')).replace('.', '')}, without FP8 "
                   f"compute (sm_89 and newer have it){cast}", None,
                   "every layer's FP8 weights are cast to fp16/bf16 on each forward pass (or upcast at load, "
                   "doubling their memory)",
                   "use the fp16/bf16 (or GGUF) variant of the model on this GPU, or a GPU of the Ada/Hopper "
                   "generation or newer for FP8")


def rule_vae_tiled(ev: Evidence) -> Finding | NotChecked | None:
    vae = ev.spans.get("vae_decode", []) + ev.spans.get("vae_encode", [])
    if not vae:
        return NotChecked("vae-tiled", TITLES["vae-tiled"], "no VAE decode or encode ran")
    tiled = [e for e in vae if (e.get("args") or {}).get("tiled_fallback")]
    if not tiled and "tiled_vae_retry" not in ev.log_kinds():
        return None
    seconds = sum(e["dur"] for e in tiled) / 1e6
    return Finding("vae-tiled", TITLES["vae-tiled"],
                   f"{len(tiled) or 1} VAE call(s) ran out of memory and were retried tiled "
                   f"({format_duration(seconds)})",
                   seconds / 2 if seconds else None,
                   "the full-size VAE pass did not fit in free VRAM; ComfyUI threw that work away and decoded in tiles",
                   "use VAEDecodeTiled directly, free VRAM before decoding (smaller batch), or run the VAE on a GPU "
                   "with more free memory (--cpu-vae is slower still)")


def rule_reloaded(ev: Evidence) -> Finding | NotChecked | None:
    process = ev.other.get("process")
    if not process:
        return NotChecked("reloaded", TITLES["reloaded"], "the trace has no record of earlier prompts")
    reread = process.get("reread_files") or []
    if not reread:
        return None
    load_s = ev.seconds("model_load.read") + ev.seconds("model_load.build") + ev.seconds("model_load.to_device")
    smart = (process.get("comfyui") or {}).get("smart_memory", True)
    cause = ("ComfyUI runs with --disable-smart-memory, which unloads every model after each prompt" if not smart
             else "the models were evicted between prompts (memory pressure, a changed workflow, or a cache of size 0)")
    return Finding("reloaded", TITLES["reloaded"],
                   f"{len(reread)} model file(s) read again though an earlier prompt in this process loaded them "
                   f"({', '.join(p.rsplit('/', 1)[-1] for p in reread[:3])}); loading took {format_duration(load_s)}",
                   load_s, cause, "drop --disable-smart-memory, keep the workflow's loaders unchanged between runs, "
                   "and give ComfyUI enough system RAM to keep the models cached")


def rule_warmup(ev: Evidence) -> Finding | NotChecked | None:
    process = ev.other.get("process") or {}
    if process.get("prompt_index") != 1:
        return None if process else NotChecked("warmup", TITLES["warmup"], "the trace does not say which run it was")
    load_s = ev.seconds("model_load.read") + ev.seconds("model_load.build") + ev.seconds("model_load.to_device")
    if ev.summary.wall_s <= 0 or load_s < 0.3 * ev.summary.wall_s:
        return None
    return Finding("warmup", TITLES["warmup"],
                   f"first prompt of this ComfyUI process: loading models took {format_duration(load_s)} of "
                   f"{format_duration(ev.summary.wall_s)}",
                   None, "the first run reads and prepares the models; later runs with the same models reuse them",
                   "judge speed on the second run; keep ComfyUI running between jobs instead of restarting it",
                   "info")


def rule_queue_wait(ev: Evidence) -> Finding | NotChecked | None:
    wait = ev.summary.queue_wait_s
    if wait is None:
        return NotChecked("queue-wait", TITLES["queue-wait"], "the trace has no queue wait")
    if wait < max(1.0, ev.summary.wall_s):
        return None
    return Finding("queue-wait", TITLES["queue-wait"],
                   f"the prompt waited {format_duration(wait)} in the queue and ran for "
                   f"{format_duration(ev.summary.wall_s)}", wait,
                   "other prompts were queued ahead of this one", "measure one prompt at a time, or clear the queue "
                   "before a benchmark", "info")


def rule_memory_pressure(ev: Evidence) -> Finding | NotChecked | None:
    spans = ev.spans.get("model_load.read", []) + ev.spans.get("model_load.build", [])
    facts = [(e.get("args") or {}) for e in spans]
    facts = [a for a in facts if a.get("memory_before") and a.get("memory_after")]
    if not facts:
        return NotChecked("memory-pressure", TITLES["memory-pressure"], "no memory figures around model loading")
    swap_growth = max(a["memory_after"]["swap_used"] - a["memory_before"]["swap_used"] for a in facts)
    low = min(a["memory_after"]["available"] / a["memory_after"]["total"] for a in facts if a["memory_after"]["total"])
    if swap_growth < 256e6 and low >= 0.05:
        return None
    evidence = []
    if swap_growth >= 256e6:
        evidence.append(f"swap grew by {format_bytes(swap_growth)} while loading")
    if low < 0.05:
        evidence.append(f"only {low * 100:.0f} % of system RAM was left available")
    return Finding("memory-pressure", TITLES["memory-pressure"], "; ".join(evidence),
                   None, "system RAM is too small for the model being loaded (with mmap, pages are evicted and "
                   "read again)", "add RAM or swap on a fast disk, use smaller (fp8/GGUF) weights, or close other "
                   "memory-hungry programs")


def rule_gpu_idle(ev: Evidence) -> Finding | NotChecked | None:
    steps = [w for w in ev.gpu_windows if w.get("stage") == "sample.step" and w.get("window_ms")]
    if not ev.gpu_collected:
        return NotChecked("gpu-idle", TITLES["gpu-idle"], f"no GPU data ({ev.gpu.get('reason', 'not collected')})")
    if not steps:
        return NotChecked("gpu-idle", TITLES["gpu-idle"], "no denoising step had GPU work")
    busy = sum(w["busy_ms"] for w in steps)
    total = sum(w["window_ms"] for w in steps)
    if total <= 0 or busy / total >= 0.6:
        return None
    return Finding("gpu-idle", TITLES["gpu-idle"],
                   f"the GPU was busy {busy / total * 100:.0f} % of the denoising steps ({format_duration(busy / 1e3)} "
                   f"of {format_duration(total / 1e3)})", (total - busy) / 1e3,
                   "the GPU waits for the CPU between kernels: Python overhead per layer, weight casting, "
                   "synchronisations, or previews decoded every step",
                   "turn off live previews (--preview-method none), avoid weight casting (matching dtypes), and check "
                   "custom nodes that synchronise in the sampler")


# Reference denoising speed: seconds per step for SD1.x at 512x512 on an RTX 3090, then a cost factor
# per family (same resolution) and a speed factor per GPU class. Rough figures, to flag runs that are
# several times off, never to grade close ones.
REFERENCE_S_PER_STEP = 0.067
REFERENCE_PIXELS = 512 * 512
FAMILY_COST = {"sd1": 1.0, "sd2": 1.1, "sdxl": 2.5, "sdxl_refiner": 2.0, "sd3": 4.0, "flux": 12.0,
               "chroma": 10.0, "qwen_image": 18.0, "lumina2": 6.0, "hunyuan_video": 25.0, "wan": 20.0,
               "ltxv": 4.0}
GPU_SPEED = (("h200", 3.2), ("h100", 3.0), ("b200", 4.5), ("a100", 1.6), ("l40", 1.5), ("a6000", 1.1),
             ("5090", 2.4), ("4090", 1.8), ("4080", 1.3), ("4070", 0.9), ("4060", 0.6), ("3090", 1.0),
             ("3080", 0.85), ("3070", 0.6), ("3060", 0.45), ("a10", 0.7), ("t4", 0.25), ("v100", 0.8))


def rule_step_rate(ev: Evidence) -> Finding | NotChecked | None:
    steps = ev.spans.get("sample.step", [])
    if not steps:
        return NotChecked("step-rate", TITLES["step-rate"], "no denoising steps")
    families = [a.get("family") for a in ev.diffusion_anatomy()]
    family = next((f for f in families if f in FAMILY_COST), None)
    decode = next(iter(ev.spans.get("vae_decode", [])), None)
    shape = (decode or {}).get("args", {}).get("shape") or []
    gpu = next((d.get("name", "") for d in ev.devices), "")
    speed = next((v for k, v in GPU_SPEED if k in gpu.lower()), None)
    missing = [what for what, ok in (("the model family", family), ("the image size (from the VAE decode)",
                                     len(shape) >= 4), ("a known GPU class", speed)) if not ok]
    if missing:
        return NotChecked("step-rate", TITLES["step-rate"], "needs " + ", ".join(missing))
    pixels = shape[-1] * 8 * shape[-2] * 8
    expected = REFERENCE_S_PER_STEP * pixels / REFERENCE_PIXELS * FAMILY_COST[family] / speed
    actual = sum(s["dur"] for s in steps) / 1e6 / len(steps)
    if actual < 3 * expected:
        return None
    return Finding("step-rate", TITLES["step-rate"],
                   f"{format_duration(actual)} per step for {family} at {shape[-1] * 8}x{shape[-2] * 8} on {gpu}; "
                   f"about {format_duration(expected)} expected", (actual - expected) * len(steps),
                   "something above slows every step: see the other findings (partial offload, weight casting, CPU)",
                   "fix the findings above; if none applies, check GPU clocks and power limits (nvidia-smi -q -d "
                   "CLOCK,POWER)")


TITLES = {
    "missing-clip-vae": "The loader cannot give the text encoder or VAE the workflow needs",
    "slow-read": "Model files are read slowly",
    "partial-offload": "Weights partly offloaded: they stream to the GPU every step",
    "cpu-sampling": "Sampling ran on the CPU",
    "fp8-no-compute": "FP8 weights on a GPU without FP8 compute",
    "vae-tiled": "VAE ran out of memory and fell back to tiles",
    "reloaded": "Models reloaded on this run",
    "warmup": "First run: model loading dominates",
    "queue-wait": "Waiting in the queue dominates",
    "memory-pressure": "System RAM or swap pressure while loading",
    "gpu-idle": "GPU idle between kernels during the steps (CPU-bound)",
    "step-rate": "Denoising steps far slower than expected",
}

RULES: tuple[Rule, ...] = tuple(Rule(rule_id, TITLES[rule_id], check) for rule_id, check in (
    ("missing-clip-vae", rule_missing_parts),
    ("slow-read", rule_slow_read),
    ("partial-offload", rule_partial_offload),
    ("cpu-sampling", rule_cpu_sampling),
    ("fp8-no-compute", rule_fp8),
    ("vae-tiled", rule_vae_tiled),
    ("reloaded", rule_reloaded),
    ("warmup", rule_warmup),
    ("queue-wait", rule_queue_wait),
    ("memory-pressure", rule_memory_pressure),
    ("gpu-idle", rule_gpu_idle),
    ("step-rate", rule_step_rate),
))


# --- The report -----------------------------------------------------------------------------------


@dataclass
class Report:
    summary: Summary
    findings: list[Finding]
    not_checked: list[NotChecked]
    stages: list[tuple[str, float, float]]  # (stage, seconds, share of wall)

    def to_dict(self) -> dict:
        return {"prompt_id": self.summary.prompt_id, "outcome": self.summary.outcome, "wall_s": self.summary.wall_s,
                "stages": [{"stage": s, "seconds": t, "share": f} for s, t, f in self.stages],
                "findings": [f.to_dict() for f in self.findings],
                "not_checked": [asdict(n) for n in self.not_checked],
                "summary": asdict(self.summary)}


def diagnose(trace: dict, rules: tuple[Rule, ...] = RULES) -> Report:
    ev = gather(trace)
    findings, not_checked = [], []
    for rule in rules:
        try:
            result = rule.check(ev)
        except Exception as exc:  # noqa: BLE001 - a broken rule must not hide the others
            result = NotChecked(rule.id, rule.title, f"the rule failed on this trace ({type(exc).__name__}: {exc})")
        if isinstance(result, Finding):
            findings.append(result)
        elif isinstance(result, NotChecked):
            not_checked.append(result)
    # what broke the run first, then the most costly (by the seconds each lost), then the notes
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: (order.get(f.severity, 3), -(f.cost_s or 0.0)))
    wall = ev.summary.wall_s
    stages = [(s, t, t / wall if wall else 0.0) for s, t in ev.summary.stage_s.items() if s != "prompt"]
    return Report(ev.summary, findings, not_checked, stages)
