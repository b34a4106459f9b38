"""Why was the run slow or broken: findings read from a trace, the true cause first.

``diagnose(trace)`` gathers the evidence a trace holds (:class:`Evidence`) and runs every rule of
``RULES``, the one catalogue. A rule is a record: an id, a generic title, and a check that returns a
:class:`Finding` (a title that says what the figures say, the measured evidence in words and as
``figures``, the seconds it cost, the cause and the fix), ``None`` when the evidence shows nothing
wrong, or :class:`NotChecked` saying which evidence was missing. No finding is ever made up: without
GPU data, the GPU rules say they could not check. ``diagnose(trace, history=...)`` also takes the earlier
runs of the same workflow (``History.recent``): the regression rule compares this run's stages with theirs.

The order (``rank``): what broke the prompt comes first (a file that cannot be read or a loader that
cannot give what the workflow needs, which break it before the failure shows; then the failing node or
the interrupt); then every other finding by the seconds it cost, whatever its severity.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..analysis.summary import Summary, first_line, summarize
from ..core.units import format_bytes, format_duration, format_share
from .loaders import advice_text, describe_gap, fitting_advice, valid_gaps

# --- What a finding is ----------------------------------------------------------------------------


@dataclass
class Finding:
    rule: str
    title: str  # says what the figures say: "Model loading took 36 % of this first run"
    evidence: str  # the measured figure, in words
    cost_s: float | None  # estimated seconds lost; None when it cannot be put in seconds
    cause: str
    fix: str
    severity: str = "warning"  # "error": the run failed or will; "warning": time lost; "info": a note
    figures: dict = field(default_factory=dict)  # the evidence as numbers and names, for machines

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
    messages: list[dict] = field(default_factory=list)  # ComfyUI's prompt events (execution_error, ...)
    other: dict = field(default_factory=dict)
    history: list[dict] | None = None  # earlier runs of the same workflow (History.recent), newest first

    @property
    def gpu(self) -> dict:
        gpu = self.other.get("gpu")
        return gpu if isinstance(gpu, dict) else {}

    @property
    def gpu_collected(self) -> bool:
        return self.gpu.get("collection") == "cupti"

    @property
    def gpu_unavailable_because(self) -> str:
        """Why there are no GPU figures, in a few words: the first reason of the GPU line."""
        reason = str(self.gpu.get("reason") or "GPU collection unavailable")
        return reason.removeprefix("GPU collection unavailable: ").split(";")[0].strip()

    @property
    def devices(self) -> list[dict]:
        return [d for d in self.gpu.get("devices") or [] if isinstance(d, dict)]

    @property
    def comfyui(self) -> dict:
        """ComfyUI's own facts: memory mode, cache type, launch options (otherData.process.comfyui)."""
        facts = (self.other.get("process") or {}).get("comfyui") if isinstance(self.other.get("process"), dict) \
            else None
        return facts if isinstance(facts, dict) else {}

    @property
    def options(self) -> dict:
        """ComfyUI's launch options that are not at their default ({"--cpu": True, ...})."""
        options = self.comfyui.get("options")
        return options if isinstance(options, dict) else {}

    def seconds(self, stage: str) -> float:
        return self.summary.stage_s.get(stage, 0.0)

    def load_seconds(self) -> float:
        return self.seconds("model_load.read") + self.seconds("model_load.build") + self.seconds("model_load.to_device")

    def log_kinds(self) -> set[str]:
        return {e.get("name") for e in self.logs}

    def message(self, name: str) -> dict | None:
        """The args of ComfyUI's last prompt event of that name (execution_error, ...), or None."""
        found = [e for e in self.messages if e.get("name") == name]
        return (found[-1].get("args") or {}) if found else None

    def anatomy(self) -> list[dict]:
        anatomy = self.other.get("anatomy")
        return [a for a in anatomy if isinstance(a, dict)] if isinstance(anatomy, list) else []

    def diffusion_anatomy(self) -> list[dict]:
        return [a for a in self.anatomy() if a.get("family") and isinstance(a.get("components"), list)
                and any(c.get("kind") == "diffusion_model" for c in a["components"] if isinstance(c, dict))]


def gather(trace: dict) -> Evidence:
    other = trace.get("otherData")
    ev = Evidence(trace=trace, summary=summarize(trace), other=other if isinstance(other, dict) else {})
    for e in trace.get("traceEvents", []):
        cat, ph = e.get("cat"), e.get("ph")
        if ph == "X" and cat == "gpu":
            ev.gpu_windows.append(e.get("args") or {})
        elif ph == "X" and cat:
            ev.spans[cat].append(e)
        elif ph in ("i", "I") and cat == "comfyui_log":
            ev.logs.append(e)
        elif ph in ("i", "I") and cat == "prompt":
            ev.messages.append(e)
    return ev


Check = Callable[[Evidence], "Finding | NotChecked | None"]


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    check: Check


def _name(path: object) -> str:
    return str(path).replace("\\\\", "/").rsplit("/", 1)[-1]



# --- What broke the prompt ------------------------------------------------------------------------


def rule_unreadable_file(ev: Evidence) -> Finding | NotChecked | None:
    """A model file the loader was given that cannot be read: a partial download says how much is there."""
    bad = [a for a in ev.anatomy() if a.get("error")]
    if not bad:
        return None if "anatomy" in ev.other else NotChecked("unreadable-file", TITLES["unreadable-file"],
                                                             "the trace has no model-file anatomy")
    a = bad[0]
    path, have, want = a.get("path", "?"), a.get("file_bytes"), a.get("expected_bytes")
    truncated = isinstance(have, int) and isinstance(want, int) and have < want
    figures = {"path": path, "offset": a.get("offset"), "file_bytes": have, "expected_bytes": want,
               "node_id": a.get("node_id")}
    if truncated:
        title = (f"{_name(path)} is incomplete: {format_bytes(have)} of {format_bytes(want)} "
                 f"({format_share(have, want)})")
        cause = "the download (or the copy) of the file stopped before its end"
        fix = (f"download {_name(path)} again and check its size ({want} bytes, as its header declares) or its "
               "SHA-256 against the source; `stagetrace inspect --models-dir models` finds other incomplete files")
    else:
        title = f"{_name(path)} cannot be read as a safetensors file"
        cause = "the file is damaged, or it is not a safetensors file"
        fix = f"download {_name(path)} again from its source; `stagetrace inspect {path}` says what is wrong with it"
    evidence = str(a["error"])
    if truncated:
        evidence += f"; the file has {have} of the {want} bytes its header declares"
    if len(bad) > 1:
        evidence += f"; {len(bad) - 1} more unreadable file(s): " + ", ".join(_name(b.get("path")) for b in bad[1:4])
    return Finding("unreadable-file", title, evidence, ev.summary.wall_s, cause, fix, "error", figures)


def rule_missing_parts(ev: Evidence) -> Finding | NotChecked | None:
    """From the recorded loader gaps (analysis.loaders): what the file holds, what is missing and who
    needs it, and the loaders this workflow still needs. ComfyUI's own log lines stand in for a trace
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
                       "ComfyUI logged " + ", ".join(sorted({"no_clip", "no_vae"} & kinds)), ev.summary.wall_s,
                       _MISSING_CAUSE, "load the diffusion model, text encoder and VAE with their own loader nodes",
                       "error", {"missing": sorted({"no_clip": "text_encoder", "no_vae": "vae"}[k]
                                                   for k in {"no_clip", "no_vae"} & kinds)})
    gap = gaps[0]
    missing = [m["what"] for m in gap["missing"]]
    users = [f"{c.get('class_type', '?')} #{c.get('node_id', '?')}" for m in gap["missing"] for c in m["consumers"]]
    title = (f"{gap['loader']} #{gap['node_id']} cannot give the {' or the '.join(missing)} that "
             f"{', '.join(users)} need{'s' if len(users) == 1 else ''}")
    evidence = describe_gap(gap)
    evidence = evidence[: evidence.index(" Load it with:")] if " Load it with:" in evidence else evidence
    steps = fitting_advice(gap)
    fix = _loader_fix(gap, steps, users)
    figures = {"loader": gap["loader"], "node_id": gap["node_id"], "file": gap["file"],
               "missing": [m.get("kind") for m in gap["missing"]], "add": [s.get("node") for s in steps],
               "components": gap.get("components") or []}
    return Finding("missing-clip-vae", title, evidence, ev.summary.wall_s, _MISSING_CAUSE, fix, "error", figures)


def _loader_fix(gap: dict, steps: list[dict], users: list[str]) -> str:
    """The change to this workflow, in the nodes it names: replace the loader when the file is not a
    checkpoint, add a loader for each missing part, connect the nodes that need them."""
    if not steps:
        return "use a complete checkpoint, or load the missing parts with their own loader nodes"
    replace = [s for s in steps if s.get("node") == "UNETLoader"]
    add = [s for s in steps if s.get("node") != "UNETLoader"]
    parts = []
    if replace:
        parts.append(f"replace {gap['loader']} #{gap['node_id']} with {advice_text(replace)}")
    if add:
        parts.append(("and add " if replace else "add ") + advice_text(add))
    return ", ".join(parts) + f", and connect {', '.join(users)} to {'it' if len(add) == 1 else 'them'}"


_MISSING_CAUSE = ("the checkpoint loader was given a file that holds only part of the model (a diffusion-model-"
                  "only file, or one without a VAE), so the nodes after it get None")


def _failing_stage(ev: Evidence, node_id: str, outcome: str) -> tuple[str | None, dict]:
    """The innermost stage span that ended with ``outcome`` inside node ``node_id``'s span, and its args."""
    nodes = [e for e in ev.spans.get("node", []) if str((e.get("args") or {}).get("node_id")) == node_id
             and (e.get("args") or {}).get("outcome") == outcome]
    if not nodes:
        return None, {}
    node = nodes[-1]
    end = node["ts"] + node["dur"]
    inner = [(cat, e) for cat, events in ev.spans.items() if cat not in ("node", "prompt") for e in events
             if (e.get("args") or {}).get("outcome") == outcome and node["ts"] <= e["ts"] <= end]
    if not inner:
        return None, {}
    cat, e = max(inner, key=lambda x: (x[1]["ts"], -x[1]["dur"]))
    return cat, e.get("args") or {}


def _ran_before(ev: Evidence, ts: float) -> list[str]:
    return [f"{e.get('name', '?')} #{(e.get('args') or {}).get('node_id', '?')}" for e in
            sorted(ev.spans.get("node", []), key=lambda e: e["ts"])
            if (e.get("args") or {}).get("outcome") == "ok" and e["ts"] + e["dur"] <= ts]


def rule_node_failed(ev: Evidence) -> Finding | NotChecked | None:
    error = ev.message("execution_error")
    if error is None:
        return None
    node_id, cls = str(error.get("node_id", "?")), str(error.get("node_type", "?"))
    etype, message = str(error.get("exception_type", "error")), first_line(error.get("exception_message") or "")
    stage, args = _failing_stage(ev, node_id, "error")
    event = next(e for e in reversed(ev.messages) if e.get("name") == "execution_error")
    before = _ran_before(ev, event["ts"])
    where = ""
    if stage == "sample.step":
        where = f", in denoising step {args.get('step', '?')} of {args.get('of', '?')}"
    elif stage:
        where = f", in {stage}"
    evidence = f"{cls} #{node_id} raised {etype}: {message}{where}; " + (
        f"{len(before)} node(s) ran before it ({', '.join(before[-4:])})" if before else "it was the first node to run")
    lowered = (etype + " " + message).lower()
    if "out of memory" in lowered or "outofmemory" in lowered:
        cause = "the GPU (or RAM) ran out of memory in this node"
        fix = ("lower the resolution or batch size, use smaller (fp8/GGUF) weights, or start ComfyUI with "
               "--lowvram" + ("" if "--lowvram" not in ev.options else " (it is on: use --novram)"))
    elif "is invalid: none" in lowered:
        cause = "an input of this node is None: the node that should give it (a loader) gave nothing"
        fix = f"see what feeds {cls} #{node_id}: its loader cannot give that input (the finding above says which)"
    elif "safetensor" in lowered or "header" in lowered or "incomplete" in lowered:
        cause = "a model file could not be read"
        fix = "download the file again; `stagetrace inspect --models-dir models` names incomplete files"
    else:
        cause = f"{cls} raised {etype}"
        fix = f"fix what the message says for {cls} #{node_id}; ComfyUI's log holds the whole traceback"
    figures = {"node_id": node_id, "class_type": cls, "exception_type": etype, "exception_message": message,
               "stage": stage, "step": args.get("step") if stage == "sample.step" else None,
               "of": args.get("of") if stage == "sample.step" else None, "completed_nodes": len(before)}
    return Finding("node-failed", f"{cls} #{node_id} failed: {etype}", evidence, ev.summary.wall_s, cause, fix,
                   "error", figures)


def rule_interrupted(ev: Evidence) -> Finding | NotChecked | None:
    interrupted = ev.message("execution_interrupted")
    if interrupted is None and ev.summary.outcome != "interrupted":
        return None
    interrupted = interrupted or {}
    node_id, cls = str(interrupted.get("node_id", "?")), str(interrupted.get("node_type", "?"))
    stage, args = _failing_stage(ev, node_id, "interrupted")
    steps = [e for e in ev.spans.get("sample.step", []) if (e.get("args") or {}).get("outcome") == "interrupted"]
    if stage != "sample.step" and steps:
        args, stage = steps[-1].get("args") or {}, "sample.step"
    step, of = (args.get("step"), args.get("of")) if stage == "sample.step" else (None, None)
    where = f" at step {step} of {of}" if step is not None else ""
    figures = {"node_id": node_id, "class_type": cls, "step": step, "of": of}
    return Finding("interrupted", f"Interrupted in {cls} #{node_id}{where}",
                   f"the prompt was interrupted in {cls} #{node_id}{where}, after {format_duration(ev.summary.wall_s)}"
                   f"; {len(_ran_before(ev, float('inf')))} node(s) had finished",
                   ev.summary.wall_s, "the prompt was cancelled: the Cancel button, a POST to /interrupt, or a client "
                   "that gave up waiting", "nothing to fix if it was meant; otherwise look for the client or script "
                   "that sends /interrupt (a timeout shorter than the run)", "error", figures)


# --- Where the time went --------------------------------------------------------------------------

# Storage a model should come off at, at least (MB/s): below, the read is slow for any disk class.
SLOW_READ_MB_S = 150.0
EXPECTED_READ_MB_S = 500.0  # what an SSD gives, for the estimate of time lost
NETWORK_FILESYSTEMS = ("overlay", "9p", "fuse", "nfs", "cifs", "smb", "virtiofs", "sshfs", "s3", "gcsfuse")


# A mapped file's bytes read by page faults in a span, below this, are too few to judge the disk by.
MIN_PAGED_BYTES = 64 << 20


def _deferred_reads(ev: Evidence) -> list[tuple[float, float, int, dict, str]]:
    """(MB/s, seconds, bytes, figures, stage) of the mapped model files' bytes read after their load, where
    they were really read (hooks/deferred.py: the span's deferred_read)."""
    out = []
    for stage, spans in ev.spans.items():
        for span in spans:
            d = (span.get("args") or {}).get("deferred_read")
            if not isinstance(d, dict):
                continue
            nbytes, seconds = d.get("bytes"), d.get("seconds")
            if not isinstance(nbytes, (int, float)) or not isinstance(seconds, (int, float)) or seconds <= 0:
                continue
            if d.get("how") != "timed reads" and nbytes < MIN_PAGED_BYTES:
                continue
            out.append((nbytes / 1e6 / seconds, float(seconds), int(nbytes), d, stage))
    return out


def rule_slow_read(ev: Evidence) -> Finding | NotChecked | None:
    reads = ev.spans.get("model_load.read", [])
    deferred = _deferred_reads(ev)
    if not reads and not deferred:
        return NotChecked("slow-read", TITLES["slow-read"], "no model file was read in this prompt")
    builds = ev.spans.get("model_load.build", [])
    worst = None
    for rate, seconds, size, d, stage in deferred:  # mapped at load, read on first use
        if rate < SLOW_READ_MB_S and (worst is None or rate < worst[0]):
            files = ", ".join(str(f) for f in d.get("files") or ()) or "a mapped model file"
            worst = (rate, seconds, size, {"path": files, "fs_type": d.get("fs_type"),
                                           "during": stage, "how": d.get("how")})
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
        # what the storage delivered: pages evicted and read again (memory pressure) count too, so a fast
        # disk re-reading a file that does not fit in RAM is not called slow
        rate = max(size, stored) / 1e6 / seconds
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
    during = (f", during {args['during']} (the file was mapped when loaded and read on first use"
              f"{', ' + str(args['how']) if args.get('how') else ''})") if args.get("during") else ""
    figures = {"mb_s": rate, "bytes": size, "seconds": seconds, "fs_type": fs, "path": args.get("path")}
    if args.get("during"):
        figures["during"] = args["during"]
    return Finding("slow-read", f"Model files are read at {rate:.0f} MB/s",
                   f"read {format_bytes(size)} of {args.get('path', 'a model')} in {format_duration(seconds)} "
                   f"= {rate:.0f} MB/s from the {where}{during}", lost, cause, fix, "warning", figures)


def rule_partial_offload(ev: Evidence) -> Finding | NotChecked | None:
    loads = ev.spans.get("model_load.to_device", [])
    if not loads:
        return NotChecked("partial-offload", TITLES["partial-offload"], "no model was loaded to a device")
    logged = [e for e in ev.logs if e.get("name") == "loaded_partially"]
    samplers = ev.spans.get("sample", [])
    if samplers:  # what was on the device for the steps: loads up to the sampler's end, none the VAE made
        vae = ev.spans.get("vae_decode", []) + ev.spans.get("vae_encode", [])
        end = max(e["ts"] + e["dur"] for e in samplers)

        def for_the_steps(e: dict) -> bool:
            return e["ts"] < end and not any(v["ts"] <= e["ts"] <= v["ts"] + v["dur"] for v in vae)

        loads, logged = [e for e in loads if for_the_steps(e)], [e for e in logged if for_the_steps(e)]
    partial = []
    for e in loads:
        for m in (e.get("args") or {}).get("models") or []:
            if m.get("partial") and m.get("total_bytes"):
                partial.append(m)
    if not partial and not logged:
        return None
    m = max(partial, key=lambda x: x["total_bytes"]) if partial else None
    steps = ev.spans.get("sample.step", [])
    htod = sum(((w.get("copies") or {}).get("htod") or {}).get("bytes", 0) for w in ev.gpu_windows
               if w.get("stage") == "sample.step")
    htod_ms = sum(((w.get("copies") or {}).get("htod") or {}).get("ms", 0) for w in ev.gpu_windows
                  if w.get("stage") == "sample.step")
    option = next((o for o in ("--novram", "--lowvram") if ev.options.get(o)), None)
    evidence = (f"{m['model']}: {format_bytes(m['loaded_bytes'])} of {format_bytes(m['total_bytes'])} on {m['device']}"
                if m else "ComfyUI logged 'loaded partially'")
    title = (f"Weights partly offloaded: {format_bytes(m['loaded_bytes'])} of {format_bytes(m['total_bytes'])} "
             "on the GPU" if m else TITLES["partial-offload"])
    cost = None
    if steps and htod:
        per_step = htod / len(steps)
        evidence += f"; {format_bytes(per_step)} copied host to device per step over {len(steps)} steps"
        title = f"Weights partly offloaded: {format_bytes(per_step)} copied to the GPU every step"
        cost = htod_ms / 1e3
    elif not ev.gpu_collected:
        evidence += " (no GPU data: the bytes streamed per step could not be measured)"
    if option:
        cause = f"ComfyUI was started with {option}, which keeps most weights in system RAM and streams them"
        fix = f"start ComfyUI without {option} if the model fits in VRAM; otherwise use a smaller (fp8/GGUF) variant"
    else:
        cause = ("the weights do not fit in free VRAM, so the part left in system RAM is copied to the GPU for "
                 "every step")
        fix = ("use a smaller variant (fp8 or GGUF quantised weights), lower the resolution or batch, close other "
               "programs using VRAM, or run ComfyUI with --reserve-vram 0; a GPU with more VRAM avoids it")
    figures = {"loaded_bytes": m["loaded_bytes"] if m else None, "total_bytes": m["total_bytes"] if m else None,
               "htod_bytes_per_step": htod / len(steps) if steps and htod else None, "steps": len(steps),
               "option": option}
    return Finding("partial-offload", title, evidence, cost, cause, fix, "warning", figures)


def rule_cpu_sampling(ev: Evidence) -> Finding | NotChecked | None:
    sample_s = ev.seconds("sample")
    if not sample_s:
        return NotChecked("cpu-sampling", TITLES["cpu-sampling"], "no sampler ran in this prompt")
    devices = {m.get("device", "") for e in ev.spans.get("model_load.to_device", [])
               for m in (e.get("args") or {}).get("models") or []}
    on_cpu = bool(devices) and all(d.startswith("cpu") for d in devices)
    sampler_kernels = sum(w.get("kernels", 0) for w in ev.gpu_windows if w.get("stage") in ("sample", "sample.step"))
    option = "--cpu" if ev.options.get("--cpu") else None
    if ev.gpu_collected and not on_cpu:
        if sampler_kernels:
            return None
        evidence = f"the sampler ran {format_duration(sample_s)} and the GPU ran no kernels in it"
    elif on_cpu:
        why = "ComfyUI was started with --cpu" if option else f"no usable GPU: {ev.gpu_unavailable_because}"
        evidence = f"the models were loaded to the CPU ({why}) and sampling took {format_duration(sample_s)}"
    else:
        return NotChecked("cpu-sampling", TITLES["cpu-sampling"],
                          "no GPU data and no model placement in this trace")
    if option:
        cause = "ComfyUI was started with --cpu: it does everything on the CPU"
        fix = "start ComfyUI without --cpu, on a machine with an NVIDIA GPU and a CUDA build of torch"
    else:
        cause = ("ComfyUI is not using the GPU: torch has no CUDA (a CPU build, or no driver in the container), "
                 "or the GPU is not visible to the process")
        fix = ("check `nvidia-smi` inside the container (run it with --gpus all / the NVIDIA runtime) and install a "
               "CUDA build of torch")
    return Finding("cpu-sampling", f"Sampling ran on the CPU: {format_duration(sample_s)}", evidence, 0.9 * sample_s,
                   cause, fix, "warning", {"sample_s": sample_s, "option": option})


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
    dtype = next(x for x in c.get("dtypes") or {} if x.startswith("fp8"))
    sm = f"sm_{str(d.get('compute_capability', '?')).replace('.', '')}"
    casts = sorted({m["manual_cast"] for e in ev.spans.get("model_load.to_device", [])
                    for m in (e.get("args") or {}).get("models") or [] if m.get("manual_cast")})
    cast = f"; ComfyUI computes it in {', '.join(casts)}" if casts else ""
    # what casting costs: at least the weights' bytes cast on every step (read fp8, write fp16/bf16)
    steps = len(ev.spans.get("sample.step", []))
    return Finding("fp8-no-compute", f"FP8 weights on {d.get('name')} ({sm}), which has no FP8 compute",
                   f"{path}: {c.get('label', 'diffusion model')} stored in {', '.join(c.get('dtypes', {}))}; "
                   f"{d.get('name')} is {sm}, without FP8 compute (sm_89 and newer have it){cast}", None,
                   "every layer's FP8 weights are cast to fp16/bf16 on each forward pass (or upcast at load, "
                   "doubling their memory)",
                   "use the fp16/bf16 (or GGUF) variant of the model on this GPU, or a GPU of the Ada/Hopper "
                   "generation or newer for FP8", "warning",
                   {"dtype": dtype, "gpu": d.get("name"), "compute_capability": d.get("compute_capability"),
                    "steps": steps, "casts": casts})


def rule_vae_tiled(ev: Evidence) -> Finding | NotChecked | None:
    vae = ev.spans.get("vae_decode", []) + ev.spans.get("vae_encode", [])
    if not vae:
        return NotChecked("vae-tiled", TITLES["vae-tiled"], "no VAE decode or encode ran")
    tiled = [e for e in vae if (e.get("args") or {}).get("tiled_fallback")]
    if not tiled and "tiled_vae_retry" not in ev.log_kinds():
        return None
    seconds = sum(e["dur"] for e in tiled) / 1e6
    return Finding("vae-tiled", f"VAE ran out of memory and fell back to tiles: {format_duration(seconds)}",
                   f"{len(tiled) or 1} VAE call(s) ran out of memory and were retried tiled "
                   f"({format_duration(seconds)})",
                   seconds / 2 if seconds else None,
                   "the full-size VAE pass did not fit in free VRAM; ComfyUI threw that work away and decoded in tiles",
                   "use VAEDecodeTiled directly, free VRAM before decoding (smaller batch), or run the VAE on a GPU "
                   "with more free memory (--cpu-vae is slower still)", "warning",
                   {"calls": len(tiled) or 1, "seconds": seconds})


def rule_reloaded(ev: Evidence) -> Finding | NotChecked | None:
    process = ev.other.get("process")
    if not isinstance(process, dict):
        return NotChecked("reloaded", TITLES["reloaded"], "the trace has no record of earlier prompts")
    reread = [p for p in process.get("reread_files") or [] if isinstance(p, str)]
    if not reread:
        return None
    load_s = ev.load_seconds()
    cache_none = bool(ev.options.get("--cache-none")) or ev.comfyui.get("cache_type") == "DEPENDENCY_AWARE"
    smart = ev.comfyui.get("smart_memory", True) and not ev.options.get("--disable-smart-memory")
    if cache_none:
        option = "--cache-none"
        cause = ("ComfyUI runs with --cache-none: it keeps no node output between prompts, so every loader runs "
                 "and reads its file again")
        fix = "start ComfyUI without --cache-none (the default cache keeps the loaded models between prompts)"
    elif not smart:
        option = "--disable-smart-memory"
        cause = "ComfyUI runs with --disable-smart-memory, which unloads every model after each prompt"
        fix = "start ComfyUI without --disable-smart-memory"
    else:
        option = None
        cause = "the models were evicted between prompts (memory pressure, a changed workflow, or a cache of size 0)"
        fix = ("keep the workflow's loaders unchanged between runs, and give ComfyUI enough system RAM to keep the "
               "models cached")
    return Finding("reloaded", f"Models read again on this run: {format_duration(load_s)} of loading",
                   f"{len(reread)} model file(s) read again though an earlier prompt in this process loaded them "
                   f"({', '.join(_name(p) for p in reread[:3])}); loading took {format_duration(load_s)}",
                   load_s, cause, fix, "warning", {"files": reread, "load_s": load_s, "option": option})


def rule_warmup(ev: Evidence) -> Finding | NotChecked | None:
    process = ev.other.get("process") if isinstance(ev.other.get("process"), dict) else {}
    if process.get("prompt_index") != 1:
        return None if process else NotChecked("warmup", TITLES["warmup"], "the trace does not say which run it was")
    load_s, wall = ev.load_seconds(), ev.summary.wall_s
    if wall <= 0 or load_s < 0.3 * wall:
        return None
    share = load_s / wall
    return Finding("warmup", f"Model loading took {share * 100:.0f} % of this first run",
                   f"first prompt of this ComfyUI process: loading models took {format_duration(load_s)} of "
                   f"{format_duration(wall)}",
                   load_s, "the first run reads and prepares the models; later runs with the same models reuse them",
                   "judge speed on the second run; keep ComfyUI running between jobs instead of restarting it",
                   "info", {"load_s": load_s, "wall_s": wall, "share": share})


def rule_queue_wait(ev: Evidence) -> Finding | NotChecked | None:
    wait, run = ev.summary.queue_wait_s, ev.summary.wall_s
    if wait is None:
        return NotChecked("queue-wait", TITLES["queue-wait"], "the trace has no queue wait")
    if wait < QUEUE_WAIT_MIN_S or wait < 0.5 * run:
        return None
    ratio = f", {wait / run:.0f}x its run" if run > 0 and wait >= 2 * run else ""
    return Finding("queue-wait", f"The prompt waited {format_duration(wait)} in the queue{ratio}",
                   f"the prompt waited {format_duration(wait)} in the queue and ran for {format_duration(run)}", wait,
                   "other prompts were queued ahead of this one: the worker runs one prompt at a time",
                   "measure one prompt at a time, or clear the queue before a benchmark; for a service, add workers "
                   "(one ComfyUI per GPU) behind a load balancer", "info", {"wait_s": wait, "run_s": run})


QUEUE_WAIT_MIN_S = 0.25


def rule_memory_pressure(ev: Evidence) -> Finding | NotChecked | None:
    spans = ev.spans.get("model_load.read", []) + ev.spans.get("model_load.build", [])
    facts = [(e.get("args") or {}) for e in spans]
    facts = [a for a in facts if a.get("memory_before") and a.get("memory_after")]
    if not facts:
        return NotChecked("memory-pressure", TITLES["memory-pressure"], "no memory figures around model loading")
    swap_growth = max(a["memory_after"]["swap_used"] - a["memory_before"]["swap_used"] for a in facts)
    low = min(a["memory_after"]["available"] / a["memory_after"]["total"] for a in facts if a["memory_after"]["total"])
    available = min(a["memory_after"]["available"] for a in facts)
    if swap_growth < 256e6 and low >= 0.05:
        return None
    # the loading time beyond what a fast read of the files would take: pages evicted and read again
    load_s = ev.seconds("model_load.read") + ev.seconds("model_load.build")
    file_bytes = sum((e.get("args") or {}).get("file_bytes") or 0 for e in ev.spans.get("model_load.read", []))
    cost = max(0.0, load_s - file_bytes / 1e6 / EXPECTED_READ_MB_S) if load_s else None
    evidence = []
    if swap_growth >= 256e6:
        evidence.append(f"swap grew by {format_bytes(swap_growth)} while loading")
    if low < 0.05:
        evidence.append(f"only {low * 100:.0f} % of system RAM was left available")
    title = (f"Swap grew by {format_bytes(swap_growth)} while loading" if swap_growth >= 256e6
             else f"Only {low * 100:.0f} % of system RAM left while loading")
    return Finding("memory-pressure", title, "; ".join(evidence),
                   cost, "system RAM is too small for the model being loaded (with mmap, pages are evicted and "
                   "read again)", "add RAM or swap on a fast disk, use smaller (fp8/GGUF) weights, or close other "
                   "memory-hungry programs", "warning",
                   {"swap_growth_bytes": swap_growth, "available_bytes": available})


def rule_gpu_idle(ev: Evidence) -> Finding | NotChecked | None:
    steps = [w for w in ev.gpu_windows if w.get("stage") == "sample.step" and w.get("window_ms")]
    if not ev.gpu_collected:
        return NotChecked("gpu-idle", TITLES["gpu-idle"], f"no GPU data ({ev.gpu_unavailable_because})")
    if not steps:
        return NotChecked("gpu-idle", TITLES["gpu-idle"], "no denoising step had GPU work")
    busy = sum(w["busy_ms"] for w in steps)
    total = sum(w["window_ms"] for w in steps)
    if total <= 0 or busy / total >= 0.6:
        return None
    return Finding("gpu-idle", f"The GPU was busy only {busy / total * 100:.0f} % of the denoising steps",
                   f"the GPU was busy {busy / total * 100:.0f} % of the denoising steps ({format_duration(busy / 1e3)} "
                   f"of {format_duration(total / 1e3)})", (total - busy) / 1e3,
                   "the GPU waits for the CPU between kernels: Python overhead per layer, weight casting, "
                   "synchronisations, or previews decoded every step",
                   "turn off live previews (--preview-method none), avoid weight casting (matching dtypes), and check "
                   "custom nodes that synchronise in the sampler", "warning",
                   {"busy_fraction": busy / total, "busy_s": busy / 1e3, "total_s": total / 1e3})


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
    return Finding("step-rate", f"Denoising steps take {format_duration(actual)}, {actual / expected:.0f}x the "
                   f"{format_duration(expected)} expected",
                   f"{format_duration(actual)} per step for {family} at {shape[-1] * 8}x{shape[-2] * 8} on {gpu}; "
                   f"about {format_duration(expected)} expected", (actual - expected) * len(steps),
                   "something above slows every step: see the other findings (partial offload, weight casting, CPU)",
                   "fix the findings above; if none applies, check GPU clocks and power limits (nvidia-smi -q -d "
                   "CLOCK,POWER)", "warning",
                   {"s_per_step": actual, "expected_s_per_step": expected, "family": family, "gpu": gpu})


# --- Slower than this workflow's earlier runs ---------------------------------------------------

# A stage regressed when it took at least REGRESSION_RATIO times the median of at least
# REGRESSION_MIN_RUNS earlier successful runs of the same workflow, and at least REGRESSION_MIN_S more:
# a ratio alone would fire on milliseconds of noise.
REGRESSION_MIN_RUNS = 3
REGRESSION_RATIO = 1.5
REGRESSION_MIN_S = 0.25
# The stages compared, in plain words; the three model-loading stages count as one.
REGRESSION_STAGES = (("model_load", "model loading", ("model_load.read", "model_load.build", "model_load.to_device")),
                     ("text_encode", "text encoding", ("text_encode",)), ("sample", "sampling", ("sample",)),
                     ("vae_decode", "VAE decode", ("vae_decode",)), ("vae_encode", "VAE encode", ("vae_encode",)),
                     ("save", "saving", ("save",)))
# Findings that explain a slower stage when they are made on the same run: (stage, rule ids).
REGRESSION_EXPLAINED_BY = {"model_load": ("unreadable-file", "slow-read", "reloaded", "memory-pressure", "warmup"),
                           "sample": ("partial-offload", "cpu-sampling", "fp8-no-compute", "gpu-idle", "step-rate"),
                           "vae_decode": ("vae-tiled",), "vae_encode": ("vae-tiled",)}


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _stage_seconds(stages: dict, keys: tuple[str, ...]) -> float | None:
    """The seconds of a compared stage in a {stage: seconds} dict; None when none of its keys is there."""
    found = [s for s in (_seconds(stages.get(k)) for k in keys) if s is not None]
    return sum(found) if found else None


def rule_regression(ev: Evidence) -> Finding | NotChecked | None:
    """This run against the earlier successful runs of the same workflow: the stage that lost the most
    time against their median becomes the finding (the others that also regressed are named in its
    evidence); the whole prompt when no single stage did."""
    if ev.history is None:
        return NotChecked("regression", TITLES["regression"], "no earlier runs of this workflow were given "
                          "(the run history is off, or the trace was read on its own)")
    earlier = [r for r in ev.history if isinstance(r, dict) and r.get("outcome") == "ok"
               and isinstance(r.get("stages"), dict)]
    if len(earlier) < REGRESSION_MIN_RUNS:
        return NotChecked("regression", TITLES["regression"], f"{len(earlier)} earlier successful run(s) of this "
                          f"workflow; {REGRESSION_MIN_RUNS} are needed")

    def slower_than_before(now: float | None, before: list[tuple[dict, float]]) -> float | None:
        """The median of the earlier seconds when ``now`` is a regression against it; None otherwise."""
        if now is None or len(before) < REGRESSION_MIN_RUNS:
            return None
        median = statistics.median(s for _, s in before)
        return median if now >= REGRESSION_RATIO * median and now >= median + REGRESSION_MIN_S else None

    slower = []  # (seconds lost, stage, words, seconds, median, [(earlier run, its seconds)] newest first)
    for stage, words, keys in REGRESSION_STAGES:
        now = _stage_seconds(ev.summary.stage_s, keys)
        before = [(r, s) for r in earlier if (s := _stage_seconds(r["stages"], keys)) is not None]
        median = slower_than_before(now, before)
        if median is not None:
            slower.append((now - median, stage, words, now, median, before))
    if not slower:  # no compared stage is slower; the prompt may be, by time spent outside them (a custom node)
        walls = [(r, s) for r in earlier if (s := _seconds(r.get("wall_s"))) is not None]
        median = slower_than_before(ev.summary.wall_s, walls)
        if median is None:
            return None
        slower.append((ev.summary.wall_s - median, "prompt", "the whole prompt", ev.summary.wall_s, median, walls))
    slower.sort(key=lambda x: -x[0])
    excess, stage, words, now, median, before = slower[0]
    runs = len(before)
    ratio = now / median if median > 0 else None
    newest = before[0][0]  # the history is newest first
    this_id, earlier_id = ev.summary.prompt_id, str(newest.get("prompt_id", "?"))
    low, high = min(s for _, s in before), max(s for _, s in before)
    evidence = (f"{words} took {format_duration(now)} in this run; the median of the last {runs} "
                f"successful runs of this workflow is {format_duration(median)} (from "
                f"{format_duration(low)} to {format_duration(high)})")
    also = [{"stage": s, "seconds": n, "median_s": m} for _, s, _, n, m, _ in slower[1:]]
    if also:
        evidence += "; also slower: " + ", ".join(f"{w} {n / m:.1f}x" if m > 0 else f"{w} (0 s before)"
                                                  for _, _, w, n, m, _ in slower[1:])
    process = ev.other.get("process") if isinstance(ev.other.get("process"), dict) else {}
    severity = "warning"
    if stage == "model_load" and process.get("prompt_index") == 1:
        cause = ("this is the first prompt since ComfyUI started: it loads the models, which the earlier runs "
                 "found already loaded")
        severity = "info"
    elif stage == "model_load":
        cause = ("the models were loaded again, or loaded more slowly, than in those runs: evicted from the cache, "
                 "offloaded for another workflow, a slower disk or less free RAM")
    else:
        cause = ("something changed since those runs: a model reload, weights offloaded to system RAM, a slower "
                 "disk, another process on the GPU, other launch options or a changed custom node")
    fix = (f"compare this run with an earlier one: `stagetrace history --compare {this_id} {earlier_id}` shows what "
           "else changed, stage by stage")
    what = words[0].upper() + words[1:]
    if ratio is not None and ratio < 10:
        title = f"{what} took {ratio:.1f}x the median of the last {runs} runs of this workflow"
    else:  # against a median of (nearly) nothing a ratio says little: the seconds do
        title = (f"{what} took {format_duration(now)}; the median of the last {runs} runs of this workflow is "
                 f"{format_duration(median)}")
    figures = {"stage": stage, "seconds": now, "median_s": median, "runs": runs, "ratio": ratio,
               "min_s": low, "max_s": high, "compare_with": earlier_id, "also": also}
    return Finding("regression", title, evidence, excess, cause, fix, severity, figures)


TITLES = {
    "unreadable-file": "A model file cannot be read",
    "missing-clip-vae": "The loader cannot give the text encoder or VAE the workflow needs",
    "node-failed": "A node failed",
    "interrupted": "The prompt was interrupted",
    "slow-read": "Model files are read slowly",
    "partial-offload": "Weights partly offloaded: they stream to the GPU every step",
    "cpu-sampling": "Sampling ran on the CPU",
    "fp8-no-compute": "FP8 weights on a GPU without FP8 compute",
    "vae-tiled": "VAE ran out of memory and fell back to tiles",
    "reloaded": "Models read again on this run",
    "warmup": "Model loading on the first run",
    "queue-wait": "Time waiting in the queue",
    "memory-pressure": "System RAM or swap pressure while loading",
    "gpu-idle": "GPU idle between kernels during the steps (CPU-bound)",
    "step-rate": "Denoising steps far slower than expected",
    "regression": "A stage slower than in this workflow's earlier runs",
}

RULES: tuple[Rule, ...] = tuple(Rule(rule_id, TITLES[rule_id], check) for rule_id, check in (
    ("unreadable-file", rule_unreadable_file),
    ("missing-clip-vae", rule_missing_parts),
    ("node-failed", rule_node_failed),
    ("interrupted", rule_interrupted),
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
    ("regression", rule_regression),
))

# What breaks a prompt before its failure shows (the true cause of it), then the failure itself.
STRUCTURAL = ("unreadable-file", "missing-clip-vae")
FAILURES = ("node-failed", "interrupted")
# Findings whose seconds another finding explains: (finding, the one that explains part of its cost).
OVERLAPS = (("warmup", "slow-read"), ("reloaded", "slow-read"), ("warmup", "memory-pressure"),
            ("reloaded", "memory-pressure"))


def rank(findings: list[Finding]) -> list[Finding]:
    """What broke the prompt first: the structural cause (which breaks it before the failure shows), then the
    failure or the interrupt; then every other finding by the seconds it cost, whatever its severity (a
    finding that cannot be put in seconds goes after those that can, errors and warnings before notes)."""
    order = {"error": 0, "warning": 1, "info": 2}

    def key(f: Finding):
        if f.rule in STRUCTURAL and f.severity == "error":
            return (0, STRUCTURAL.index(f.rule), 0.0, 0)
        if f.rule in FAILURES:
            return (1, FAILURES.index(f.rule), 0.0, 0)
        return (2, 0, -(f.cost_s or 0.0), order.get(f.severity, 3))

    return sorted(findings, key=key)


def _share_costs(findings: list[Finding]) -> None:
    """Seconds two findings both claim are counted once: the finding that explains them keeps them."""
    by_rule = {f.rule: f for f in findings}
    for rule, explained_by in OVERLAPS:
        f, other = by_rule.get(rule), by_rule.get(explained_by)
        if f is not None and other is not None and f.cost_s and other.cost_s:
            f.cost_s = max(0.0, f.cost_s - other.cost_s)


def _link_regression(findings: list[Finding], history: list[dict] | None) -> None:
    """A slower stage that another finding of this run explains says so, and keeps only the seconds that
    finding does not claim (so it ranks after it). Only a finding that is new explains it: one that most of
    the earlier successful runs also had was there when they were fast."""
    regression = next((f for f in findings if f.rule == "regression"), None)
    if regression is None:
        return
    earlier = [r for r in history or [] if isinstance(r, dict) and r.get("outcome") == "ok"]
    runs_with = Counter(rule for r in earlier
                        for rule in {f.get("rule") for f in r.get("findings") or [] if isinstance(f, dict)})
    usual = {rule for rule, n in runs_with.items() if 2 * n >= len(earlier)}
    explained_by = [rule for rule in REGRESSION_EXPLAINED_BY.get(regression.figures.get("stage"), ())
                    if rule not in usual]
    other = next((f for f in rank(findings) if f.rule in explained_by), None)
    if other is not None:
        regression.cause = f"{other.title.rstrip('.')} (the finding above)"
        if regression.cost_s is not None and other.cost_s:
            regression.cost_s = max(0.0, regression.cost_s - other.cost_s)


def _link_failure(findings: list[Finding]) -> None:
    """A failure a structural finding explains says so, instead of guessing at its own cause."""
    structural = next((f for f in findings if f.rule in STRUCTURAL and f.severity == "error"), None)
    for f in findings:
        if f.rule == "node-failed" and structural is not None:
            f.cause = f"{structural.title.rstrip('.')} (the finding above)"
            f.fix = "fix the finding above; this node then gets what it needs"


# --- The report -----------------------------------------------------------------------------------


@dataclass
class Report:
    summary: Summary
    findings: list[Finding]
    not_checked: list[NotChecked]
    stages: list[tuple[str, float, float]]  # (stage, exclusive seconds, share of wall): the shares add to 100 %

    def to_dict(self) -> dict:
        return {"prompt_id": self.summary.prompt_id, "outcome": self.summary.outcome, "wall_s": self.summary.wall_s,
                "stages": [{"stage": s, "seconds": t, "share": f} for s, t, f in self.stages],
                "stages_inclusive": dict(self.summary.stage_s),
                "findings": [f.to_dict() for f in self.findings],
                "not_checked": [asdict(n) for n in self.not_checked],
                "summary": asdict(self.summary)}


def diagnose(trace: dict, rules: tuple[Rule, ...] = RULES, *, history: list[dict] | None = None) -> Report:
    """The report of one trace. ``history``: the earlier runs of the same workflow, newest first
    (History.recent), for the regression rule; without it that rule is not checked."""
    ev = gather(trace)
    ev.history = history
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
    _share_costs(findings)
    _link_failure(findings)
    _link_regression(findings, history)
    wall = ev.summary.wall_s
    # each stage's own (exclusive) time, so the shares add up to the prompt's wall time
    stages = [(s, t, t / wall if wall else 0.0) for s, t in ev.summary.exclusive_s.items()]
    return Report(ev.summary, rank(findings), not_checked, stages)
