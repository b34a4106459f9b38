"""Hooks StageTrace into a running ComfyUI (shared/design.md, "Where to hook").

The Python side decides which ComfyUI functions to wrap; the C Wrapper does
the timing. Each target's signature is checked first; when ComfyUI has moved,
the hook falls back to a coarser one and the trace metadata says so.

- ``execution.execute``: replaced by a C Wrapper (one node span per call).
  Fallback: a progress handler registered through ``reset_progress_state``.
- ``PromptExecutor.execute_async``: the prompt span; the trace and summary
  are written when it returns.
- ``PromptExecutor.add_message``: tap for cached nodes and prompt events.
- ``PromptQueue.put``: submit time, for the queue wait.
- ``comfy.utils.load_torch_file``: each model file's anatomy (header only),
  and a warning when a loader cannot give the CLIP/VAE its consumers need;
  the model_load.read span.
- Inside the nodes (stagehooks.py): model_load.build, model_load.to_device,
  text_encode, sample with one span per step, vae_decode/vae_encode, save;
  a logging tap for ComfyUI's telling warnings.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys

from . import native as native_loader
from . import stages
from .log import log_once, logger
from .recorder import Recorder
from .settings import Settings

_MARK = "_stagetrace_installation"  # attribute on the execution module
_EXECUTE_PARAMS = ["server", "dynprompt", "caches", "current_item"]


class Installation:
    """The hooks in place; ``uninstall()`` puts every original back."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self._restore: list[tuple[object, str, object]] = []
        self._undo: list = []  # other things to undo (the log tap)

    def replace(self, owner: object, name: str, new: object, label: str) -> None:
        self._restore.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
        setattr(owner, name, new)
        self.recorder.hooks.append(label)

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        execution = sys.modules.get("execution")
        if execution is not None and getattr(execution, _MARK, None) is self:
            delattr(execution, _MARK)


def _params(func) -> list[str]:
    try:
        return list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return []


def output_dir(settings: Settings) -> str:
    if settings.output_dir:
        return settings.output_dir
    folder_paths = sys.modules.get("folder_paths")
    base = folder_paths.get_output_directory() if folder_paths else os.path.join(os.getcwd(), "output")
    return os.path.join(base, "stagetrace")


def setup(settings: Settings | None = None) -> Installation | None:
    """Install into the ComfyUI of this process. Never raises; logs one line
    and returns None when StageTrace cannot or should not run."""
    try:
        settings = settings or Settings.from_env()
        if settings.disabled:
            logger.info("StageTrace: disabled by STAGETRACE_DISABLE")
            return None
        if native_loader._native is None:
            log_once("native", "%s. ComfyUI runs normally, without profiling.", native_loader.LOAD_ERROR)
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


def _install(native, settings: Settings, execution) -> Installation:
    native.set_buffer_capacity(settings.buffer_events)
    native.nvtx_set_enabled(settings.nvtx)
    recorder = Recorder(native, settings, lambda: output_dir(settings))
    inst = Installation(recorder)
    mm = sys.modules.get("comfy.model_management")
    interrupt = getattr(mm, "InterruptProcessingException", None)
    interrupts = (interrupt, KeyboardInterrupt) if interrupt else (KeyboardInterrupt,)

    # --- node spans ---
    original_execute = getattr(execution, "execute", None)
    if _params(original_execute)[:4] == _EXECUTE_PARAMS:
        inst.replace(execution, "execute", native.Wrapper(
            original_execute, stages.NODE, "node", namer=recorder.node_namer, outcome=recorder.node_outcome,
            interrupts=interrupts, coroutine=inspect.iscoroutinefunction(original_execute),
        ), "execution.execute")
        recorder.on_self_check_failed = lambda: _install_progress_fallback(inst, execution)
    else:
        log_once("execute-moved", "execution.execute has an unknown signature %s; timing nodes through the "
                 "progress handler instead", _params(original_execute))
        _install_progress_fallback(inst, execution)

    # --- the prompt span, and the trace at its end ---
    executor = getattr(execution, "PromptExecutor", None)
    if executor is not None:
        _hook_prompt(inst, native, recorder, executor)
        add_message = executor.__dict__.get("add_message")
        if add_message is not None and _params(add_message)[:4] == ["self", "event", "data", "broadcast"]:
            inst.replace(executor, "add_message", _tap_messages(add_message, recorder), "PromptExecutor.add_message")
        else:
            inst.recorder.fallbacks.append("no add_message tap: cached nodes and prompt events not recorded")
    _hook_model_files(inst, recorder)
    _hook_stages(inst, native, recorder)
    queue = getattr(execution, "PromptQueue", None)
    put = queue.__dict__.get("put") if queue is not None else None
    if put is not None and _params(put)[:2] == ["self", "item"]:
        inst.replace(queue, "put", _tap_submit(put, recorder), "PromptQueue.put")
    _start_gpu(native, settings, recorder)
    if recorder.spans is not None and recorder.gpu is not None:
        recorder.spans.gpu_windows = recorder.gpu.active
    setattr(execution, _MARK, inst)
    logger.info("StageTrace: profiling every prompt (hooks: %s; NVTX %s)", ", ".join(recorder.hooks),
                "on" if native.nvtx_enabled() else "off")
    return inst


def _start_gpu(native, settings: Settings, recorder: Recorder) -> None:
    """CUPTI collection; when it cannot run, each trace says why and nothing else changes."""
    from .gpu import GpuCollection, NvmlSampler

    try:
        recorder.gpu = GpuCollection(native, settings.gpu, settings.gpu_kernels)
    except Exception as exc:  # noqa: BLE001 - never break the host
        log_once("gpu-start", "GPU collection unavailable (%s: %s)", type(exc).__name__, exc)
    try:
        recorder.nvml = NvmlSampler(native, settings.nvml, settings.nvml_hz)
    except Exception as exc:  # noqa: BLE001
        log_once("nvml-start", "GPU sampling unavailable (%s: %s)", type(exc).__name__, exc)


def _hook_prompt(inst: Installation, native, recorder: Recorder, executor) -> None:
    original = executor.__dict__.get("execute_async")
    if original is None or _params(original)[:3] != ["self", "prompt", "prompt_id"]:
        log_once("prompt-moved", "PromptExecutor.execute_async not found or changed; prompts are not profiled")
        recorder.fallbacks.append("no prompt hook")
        return
    timed = native.Wrapper(original, stages.PROMPT, "prompt", namer=recorder.prompt_namer,
                           outcome=recorder.prompt_outcome, coroutine=True)

    @functools.wraps(original)
    async def execute_async(self, prompt, prompt_id, extra_data={}, *args, **kwargs):  # noqa: B006 (mirrors ComfyUI)
        try:
            recorder.prompt_begin(prompt, prompt_id, extra_data)
        except Exception as exc:
            log_once("prompt-begin", "prompt bookkeeping failed (%s: %s)", type(exc).__name__, exc)
        try:
            return await timed(self, prompt, prompt_id, extra_data, *args, **kwargs)
        finally:
            _finish_prompt(recorder)

    inst.replace(executor, "execute_async", execute_async, "PromptExecutor.execute_async")


def _hook_model_files(inst: Installation, recorder: Recorder) -> None:
    """comfy.utils.load_torch_file: every loader reads weights through it."""
    utils = sys.modules.get("comfy.utils")
    original = getattr(utils, "load_torch_file", None)
    if original is None or _params(original)[:1] != ["ckpt"]:
        recorder.fallbacks.append("no model-file hook: checkpoint anatomy not recorded")
        return

    from .stagehooks import measured_read

    @functools.wraps(original)
    def load_torch_file(ckpt, *args, **kwargs):
        try:
            recorder.on_model_file(ckpt)
        except Exception as exc:
            log_once("model-file", "checkpoint anatomy failed (%s: %s)", type(exc).__name__, exc)
        if recorder.spans is None:
            return original(ckpt, *args, **kwargs)
        with measured_read(recorder.spans, str(ckpt)):
            return original(ckpt, *args, **kwargs)

    inst.replace(utils, "load_torch_file", load_torch_file, "comfy.utils.load_torch_file")


def _hook_stages(inst: Installation, native, recorder: Recorder) -> None:
    """Spans inside the nodes (stagehooks.py) and the log tap for ComfyUI's telling warnings."""
    import logging

    from .stagehooks import LogTap, StageHooks, StageSpans

    try:
        recorder.spans = StageSpans(native)
        hooks = StageHooks(recorder.spans, inst.replace)
        hooks.install(sys.modules)
        recorder.fallbacks.extend(hooks.missing)
        tap = recorder.log_tap = LogTap(native)
        root = logging.getLogger()
        root.addHandler(tap)
        inst._undo.append(lambda: root.removeHandler(tap))
    except Exception as exc:  # noqa: BLE001 - never break the host
        log_once("stage-hooks", "stage spans unavailable (%s: %s)", type(exc).__name__, exc)


def _finish_prompt(recorder: Recorder) -> None:
    try:
        recorder.prompt_end()
    except Exception as exc:
        log_once("prompt-end", "could not write the trace (%s: %s); the prompt itself is unaffected",
                 type(exc).__name__, exc)


def _tap_messages(original, recorder: Recorder):
    @functools.wraps(original)
    def add_message(self, event, data, broadcast):
        try:
            recorder.on_message(event, data)
        except Exception as exc:
            log_once("message-tap", "message tap failed (%s: %s)", type(exc).__name__, exc)
        return original(self, event, data, broadcast)

    return add_message


def _tap_submit(original, recorder: Recorder):
    @functools.wraps(original)
    def put(self, item):
        try:
            recorder.on_submit(item[1])
        except Exception as exc:
            log_once("submit-tap", "queue tap failed (%s: %s)", type(exc).__name__, exc)
        return original(self, item)

    return put


def _install_progress_fallback(inst: Installation, execution) -> None:
    """Time nodes with a ComfyUI progress handler, registered anew for every
    prompt (ComfyUI builds a fresh progress registry per prompt)."""
    progress = sys.modules.get("comfy_execution.progress")
    reset = getattr(execution, "reset_progress_state", None)
    base = getattr(progress, "ProgressHandler", None)
    if progress is None or reset is None or base is None:
        inst.recorder.fallbacks.append("no node timing: neither execute() nor progress handlers are usable")
        return
    recorder = inst.recorder

    class StageTraceProgress(base):
        def __init__(self):
            super().__init__("stagetrace")

        def start_handler(self, node_id, state, prompt_id):
            recorder.fallback_node_start(node_id)

        def finish_handler(self, node_id, state, prompt_id):
            recorder.fallback_node_finish(node_id)

    @functools.wraps(reset)
    def reset_progress_state(*args, **kwargs):
        result = reset(*args, **kwargs)
        try:
            progress.add_progress_handler(StageTraceProgress())
        except Exception as exc:
            log_once("progress-fallback", "progress handler fallback failed (%s: %s)", type(exc).__name__, exc)
        return result

    inst.replace(execution, "reset_progress_state", reset_progress_state, "execution.reset_progress_state")
    recorder.fallbacks.append("node timing through the progress handler")
