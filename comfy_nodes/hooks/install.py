"""Hooks StageTrace into a running ComfyUI (shared/design.md, "Where to hook").

The Python side decides which ComfyUI functions to wrap; the C side does the timing. Whether each
target fits is decided by targets.py's table (``fit_live``): a hook reads its target's arguments by
parameter name, so it fits when every name it reads is still there; when one is gone, the hook is not
installed, StageTrace does the table's named fallback instead, logs one line saying so, and the trace
metadata (``otherData.fallbacks``) names it.

- ``execution.execute``: one node span per node (the recorder's node_begin/node_end around each call,
  timed by the C recorder). A node that returns pending and runs again later is one span with its
  pending time; a node expanded from another is attributed to the node the user sees.
  Fallback: a progress handler registered through ``reset_progress_state``.
- ``PromptExecutor.execute_async``: the prompt span; the prompt is handed to the writer thread when
  it returns.
- ``PromptExecutor.add_message``: tap for cached nodes and prompt events.
- ``PromptQueue.put``: submit time, for the queue wait.
- Inside the nodes (stage_hooks.py): model_load.read with each model file's anatomy,
  model_load.build, model_load.to_device, text_encode, sample with one span per step,
  vae_decode/vae_encode, save.
- The log tap (log_tap.py) for ComfyUI's telling log lines, added with the first prompt.

Importing the custom node installs these hooks and nothing else: CUPTI, the NVML thread and the log
tap start with the first prompt. Installation is all or nothing: when it fails half way, every hook
already in place is put back.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import sys

from ..core import native as native_loader
from ..core import stages
from ..core.log import log_once, logger
from ..core.settings import Settings
from ..record.recorder import Recorder
from .guard import GUARD, HookGuard
from .log_tap import LogTap
from .stage_hooks import Spans, StageHooks
from .targets import TargetFit, binder, fit_live, target

_MARK = "_stagetrace_installation"  # attribute on the execution module
EXIT_FLUSH_S = 10.0  # at exit, how long the last traces may take to be written
HISTORY_FILE = "history.sqlite3"  # in StageTrace's output folder, beside the traces


class Installation:
    """The hooks in place; ``uninstall()`` puts every original back."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self._restore: list[tuple[object, str, object]] = []

    def replace(self, owner: object, name: str, new: object, label: str) -> None:
        self._restore.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
        setattr(owner, name, new)
        self.recorder.hooks.append(label)

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()
        if self.recorder.log_tap is not None:
            self.recorder.log_tap.uninstall()
        atexit.unregister(self.recorder.flush)
        execution = sys.modules.get("execution")
        if execution is not None and getattr(execution, _MARK, None) is self:
            delattr(execution, _MARK)


def output_dir(settings: Settings) -> str:
    if settings.output_dir:
        return settings.output_dir
    folder_paths = sys.modules.get("folder_paths")
    base = folder_paths.get_output_directory() if folder_paths else os.path.join(os.getcwd(), "output")
    return os.path.join(base, "stagetrace")


def setup(settings: Settings | None = None) -> Installation | None:
    """Install into the ComfyUI of this process. Never raises; logs one line and returns None when
    StageTrace cannot or should not run."""
    try:
        settings = settings or Settings.from_env()
        if settings.disabled:
            logger.info("StageTrace: disabled by STAGETRACE_DISABLE")
            _unavailable("StageTrace is disabled in this ComfyUI (STAGETRACE_DISABLE is set)")
            return None
        if native_loader._native is None:
            log_once("native", "%s. ComfyUI runs normally, without profiling.", native_loader.LOAD_ERROR)
            _unavailable(f"StageTrace is not running in this ComfyUI: {native_loader.LOAD_ERROR}")
            return None
        execution = sys.modules.get("execution")
        if execution is None:
            logger.info("StageTrace: not running inside ComfyUI (no 'execution' module); no hooks installed")
            return None
        existing = getattr(execution, _MARK, None)
        if existing is not None:
            return existing
        return _install(native_loader._native, settings, execution)
    except Exception as exc:  # never break the host
        log_once("setup", "could not install its hooks (%s: %s); ComfyUI runs without profiling",
                 type(exc).__name__, exc)
        return None


def _install(native, settings: Settings, execution, guard: HookGuard = GUARD) -> Installation:
    native.set_buffer_capacity(settings.buffer_events)
    from ..record.live import LIVE

    LIVE.enabled = settings.live
    native.nvtx_set_enabled(settings.nvtx)
    recorder = Recorder(native, settings, lambda: output_dir(settings), guard, log_tap=LogTap(native, guard))
    inst = Installation(recorder)
    fits = {f.target: f for f in fit_live()}
    try:
        _hook_nodes(inst, native, recorder, guard, execution, fits["execution.execute"])
        executor = getattr(execution, "PromptExecutor", None)
        if _fits(recorder, fits["execution.PromptExecutor.execute_async"]):
            _hook_prompt(inst, native, recorder, guard, executor)
        if _fits(recorder, fits["execution.PromptExecutor.add_message"]):
            add_message = executor.__dict__["add_message"]
            bind = binder(add_message, target("execution.PromptExecutor.add_message"))

            def observe(*args, **kwargs):
                recorder.on_message(bind.get(args, kwargs, "event"), bind.get(args, kwargs, "data"))

            inst.replace(executor, "add_message", _tap(add_message, guard, "message tap", observe),
                         "PromptExecutor.add_message")
        stage_hooks = StageHooks(Spans(native, guard), inst.replace)
        stage_hooks.install(sys.modules, on_model_file=recorder.on_model_file)
        for line in stage_hooks.missing:
            log_once(f"fallback-{line}", "%s", line)
        recorder.fallbacks.extend(stage_hooks.missing)
        if _fits(recorder, fits["execution.PromptQueue.put"]):
            queue = execution.PromptQueue
            put = queue.__dict__["put"]
            bind_put = binder(put, target("execution.PromptQueue.put"))
            inst.replace(queue, "put", _tap(put, guard, "queue tap", lambda *a, **k: recorder.on_submit(
                queue_item_prompt_id(bind_put.get(a, k, "item")))), "PromptQueue.put")
    except BaseException:
        inst.uninstall()  # all or nothing: put back what was already replaced
        raise
    setattr(execution, _MARK, inst)
    metrics, metrics_why = _metrics(native, settings, recorder)
    history, history_why = None, "the run history is off (STAGETRACE_HISTORY=0)"
    if settings.history:  # opened with the first prompt that needs it (history/lazy.py)
        from ..history.lazy import LazyHistory

        history = recorder.writer.history = LazyHistory(
            lambda: os.path.join(output_dir(settings), HISTORY_FILE), settings.history_keep, settings.history_days)
    try:  # the /stagetrace/ routes (surfaces/routes.py): their failure is named, never ComfyUI's
        from ..surfaces.routes import register as register_routes

        why_not = register_routes(lambda: output_dir(settings), native, metrics, metrics_why, history=history,
                                  history_why=history_why)
    except Exception as exc:  # noqa: BLE001
        why_not = f"no HTTP routes: {type(exc).__name__}: {exc}"
    if why_not:
        recorder.fallbacks.append(why_not)
    atexit.register(recorder.flush, EXIT_FLUSH_S)
    logger.info("StageTrace: profiling every prompt (hooks: %s; NVTX %s)", ", ".join(recorder.hooks),
                "on" if native.nvtx_enabled() else "off")
    return inst


def _unavailable(why: str) -> None:
    try:
        from ..surfaces.routes import register_unavailable

        register_unavailable(why)
    except Exception as exc:  # noqa: BLE001 - never break the host
        log_once("routes", "could not register its HTTP routes (%s: %s)", type(exc).__name__, exc)


def _metrics(native, settings: Settings, recorder: Recorder):
    """The Prometheus metrics (surfaces/metrics.py), counted by the writer thread after each prompt, with
    their own port when STAGETRACE_METRICS_PORT asks for one and the middleware that counts the prompts
    ComfyUI refuses at validation; (None, why) when they are off or prometheus_client is missing."""
    if not settings.metrics:
        return None, "StageTrace's metrics are off (STAGETRACE_METRICS=0)"
    from ..surfaces import metrics as metrics_module

    why = metrics_module.available()
    if why is not None:
        log_once("metrics", "no Prometheus metrics: %s", why)
        recorder.fallbacks.append(f"no metrics: {why}")
        return None, why
    try:
        from ..record.recorder import VERSION

        metrics = metrics_module.Metrics(settings.metrics_node_classes, queue=metrics_module.comfy_queue,
                                         gpu=native.nvml_latest, version=VERSION,
                                         dropped_prompts=lambda: recorder.writer.dropped_prompts)
    except Exception as exc:  # noqa: BLE001 - never break the host
        log_once("metrics", "no Prometheus metrics (%s: %s)", type(exc).__name__, exc)
        return None, f"the metrics could not be set up: {type(exc).__name__}: {exc}"
    recorder.writer.metrics = metrics
    for problem in (metrics_module.count_validation_errors(metrics),
                    metrics_module.serve_port(metrics, settings.metrics_addr, settings.metrics_port)):
        if problem:
            recorder.fallbacks.append(problem)
    return metrics, None


def _fits(recorder: Recorder, fit: TargetFit) -> bool:
    """fit.fits; otherwise the fallback is logged (one line) and named in the trace metadata."""
    if fit.fits:
        return True
    line = f"{fit.target}: {fit.fallback} ({fit.why})"
    log_once(f"fallback-{fit.target}", "%s", line)
    recorder.fallbacks.append(line)
    return False


def queue_item_prompt_id(item) -> object:
    """The prompt id of a PromptQueue item: (number, prompt_id, prompt, extra_data, outputs), with a sixth
    member (the ``sensitive`` dict) in newer ComfyUI. None for anything else."""
    return item[1] if isinstance(item, (tuple, list)) and len(item) >= 2 else None


def _hook_nodes(inst: Installation, native, recorder: Recorder, guard: HookGuard, execution,
                fit: TargetFit) -> None:
    if not fit.fits:
        _fits(recorder, fit)  # names the fallback
        _install_progress_fallback(inst, guard, execution, named=True)
        return
    recorder.on_self_check_failed = lambda: _install_progress_fallback(inst, guard, execution)
    inst.replace(execution, "execute", timed_execute(execution.execute, recorder, guard), "execution.execute")


def timed_execute(original, recorder: Recorder, guard: HookGuard):
    """ComfyUI's execute(), with each call between recorder.node_begin and node_end (async when the
    original is, as in ComfyUI since 0.3.4x). dynprompt and current_item are read by name."""
    bind = binder(original, target("execution.execute"))

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def execute(*args, **kwargs):
            call = guard.call("node begin", recorder.node_begin, bind.get(args, kwargs, "dynprompt"),
                              bind.get(args, kwargs, "current_item"))
            try:
                result = await original(*args, **kwargs)
            except BaseException as exc:
                guard.call("node end", recorder.node_end, call, None, exc)
                raise
            guard.call("node end", recorder.node_end, call, result, None)
            return result
    else:  # ComfyUI before the async execution (2024)
        @functools.wraps(original)
        def execute(*args, **kwargs):
            call = guard.call("node begin", recorder.node_begin, bind.get(args, kwargs, "dynprompt"),
                              bind.get(args, kwargs, "current_item"))
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                guard.call("node end", recorder.node_end, call, None, exc)
                raise
            guard.call("node end", recorder.node_end, call, result, None)
            return result
    return execute


def _hook_prompt(inst: Installation, native, recorder: Recorder, guard: HookGuard, executor) -> None:
    original = executor.__dict__["execute_async"]
    bind = binder(original, target("execution.PromptExecutor.execute_async"))
    timed = native.Wrapper(original, stages.PROMPT, "prompt", namer=guard.wrap("prompt namer", recorder.prompt_namer),
                           outcome=guard.wrap("prompt outcome", recorder.prompt_outcome), coroutine=True)

    @functools.wraps(original)
    async def execute_async(*args, **kwargs):
        guard.call("prompt begin", lambda: recorder.prompt_begin(
            bind.get(args, kwargs, "prompt"), bind.get(args, kwargs, "prompt_id"),
            bind.get(args, kwargs, "extra_data"), bind.get(args, kwargs, "self")))
        try:
            return await timed(*args, **kwargs)
        finally:
            guard.call("prompt end", recorder.prompt_end)

    inst.replace(executor, "execute_async", execute_async, "PromptExecutor.execute_async")


def _tap(original, guard: HookGuard, label: str, observe):
    """original, after observe(*args) has seen the call (guarded: StageTrace's failure stays its own)."""
    @functools.wraps(original)
    def tapped(*args, **kwargs):
        guard.call(label, observe, *args, **kwargs)
        return original(*args, **kwargs)

    return tapped


def _install_progress_fallback(inst: Installation, guard: HookGuard, execution, named: bool = False) -> None:
    """Time nodes with a ComfyUI progress handler, registered anew for every prompt (ComfyUI builds a
    fresh progress registry per prompt). named: the trace's fallbacks already say so."""
    progress = sys.modules.get("comfy_execution.progress")
    reset = getattr(execution, "reset_progress_state", None)
    base = getattr(progress, "ProgressHandler", None)
    recorder = inst.recorder
    if progress is None or reset is None or base is None:
        recorder.fallbacks.append("no node timing: neither execute() nor progress handlers are usable")
        return

    class StageTraceProgress(base):
        def __init__(self):
            super().__init__("stagetrace")
            self.registry = None

        def set_registry(self, registry):  # its dynprompt tells which node the user sees
            self.registry = registry

        def start_handler(self, node_id, state, prompt_id):
            guard.call("progress fallback", recorder.fallback_node_start, node_id,
                       getattr(self.registry, "dynprompt", None))

        def finish_handler(self, node_id, state, prompt_id):
            guard.call("progress fallback", recorder.fallback_node_finish, node_id)

    @functools.wraps(reset)
    def reset_progress_state(*args, **kwargs):
        result = reset(*args, **kwargs)
        guard.call("progress fallback", lambda: progress.add_progress_handler(StageTraceProgress()))
        return result

    inst.replace(execution, "reset_progress_state", reset_progress_state, "execution.reset_progress_state")
    if not named:
        recorder.fallbacks.append("node timing through the progress handler")
