"""Cost of timing one ComfyUI node call: the execute() hook now (hooks/install.py ``timed_execute``:
arguments read by name, recorder.node_begin/node_end, one node span with its pending time) against the
hook it replaced (a C ``Wrapper`` around execute with a namer reading the arguments by position and an
outcome callback, as at 8fe780d), in the same run; and what reading arguments by name costs.

    python benchmarks/bench_nodes.py [--quick] [--check]

1. Per node call, through a real event loop: ``await execute(...)`` of a coroutine function with ComfyUI
   0.3.64's signature that returns ``(ExecutionResult.SUCCESS, None, None)`` at once, called plainly,
   through the old hook and through the new one. "added" is each hook minus the plain call. A node takes
   milliseconds at the least; the target: the new hook adds at most twice what the old one did.
2. Per node that returns pending once and runs again (an async or lazy node): two calls, one span.
3. Reading two arguments by name: ``targets.Binder.values`` (a cached position table) against
   ``inspect.Signature.bind`` (what binding by name costs done naively) and a positional unpack.

Variants take turns within every repeat; each figure is the median over the repeats.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import parse_args, print_targets  # noqa: E402

from comfy_nodes import _native  # noqa: E402
from comfy_nodes.core import stages  # noqa: E402
from comfy_nodes.core.settings import Settings  # noqa: E402
from comfy_nodes.hooks.guard import HookGuard  # noqa: E402
from comfy_nodes.hooks.install import timed_execute  # noqa: E402
from comfy_nodes.hooks.targets import Binder  # noqa: E402
from comfy_nodes.record.live import LIVE  # noqa: E402
from comfy_nodes.record.recorder import Recorder  # noqa: E402

TARGET_RATIO = 2.0  # what the hook adds per node call, against the C Wrapper hook it replaced (same run)


class ExecutionResult(enum.Enum):
    SUCCESS = 0
    FAILURE = 1
    PENDING = 2


class DynamicPrompt:
    """ComfyUI's DynamicPrompt, for what the hooks ask of it."""

    def __init__(self, prompt):
        self.prompt = prompt

    def get_node(self, node_id):
        return self.prompt[node_id]

    def get_display_node_id(self, node_id):
        return node_id


async def execute(server, dynprompt, caches, current_item, extra_data, executed, prompt_id, execution_list,
                  pending_subgraph_results, pending_async_nodes):
    return (ExecutionResult.SUCCESS, None, None)


def pending_once():
    """execute() for a node that returns pending on its first call, then succeeds."""
    seen = set()

    async def execute_pending(server, dynprompt, caches, current_item, extra_data, executed, prompt_id,
                              execution_list, pending_subgraph_results, pending_async_nodes):
        if current_item in seen:
            seen.discard(current_item)
            return (ExecutionResult.SUCCESS, None, None)
        seen.add(current_item)
        return (ExecutionResult.PENDING, None, None)
    return execute_pending


def old_hook(native, recorder):
    """The node hook before (rebuilt here as recorder.node_namer/node_outcome were at 8fe780d): a C Wrapper
    whose namer read (server, dynprompt, caches, current_item) by position, sampled GPU memory and told
    the live panel, and whose outcome callback classified the result."""
    stack = []
    guard = recorder.guard

    def namer(server, dynprompt, caches, current_item, *args, **kwargs):
        node_id = str(current_item)
        try:
            class_type = dynprompt.get_node(current_item)["class_type"]
        except Exception:
            class_type = "?"
        hint = stages.CACHED if node_id in recorder.cached_nodes else None
        recorder.node_spans += 1
        recorder.executed_nodes.add(node_id)
        stack.append(node_id)
        guard.call("GPU memory", recorder.memory.sample, native.now_ns(), node_id, "start")
        if hint is None:
            guard.call("live", LIVE.node, node_id, str(class_type))
        return class_type, node_id, hint

    def outcome(result):
        node_id = stack.pop() if stack else None
        guard.call("GPU memory", recorder.memory.sample, native.now_ns(), node_id, "end")
        status = getattr(result[0], "name", None) if isinstance(result, tuple) and result else None
        return stages.PENDING if status == "PENDING" else stages.ERROR if status == "FAILURE" else stages.OK

    return lambda fn: native.Wrapper(fn, stages.NODE, "node", namer=guard.wrap("node namer", namer),
                                     outcome=guard.wrap("node outcome", outcome), coroutine=True)


def time_calls(fn, calls: int, args: tuple) -> float:
    """ns per call of await fn(*args) in a running loop."""
    async def loop():
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            await fn(*args)
        return time.perf_counter_ns() - t0
    return asyncio.run(loop()) / calls


def time_sync(fn, calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - t0) / calls


def main() -> int:
    opts = parse_args(__doc__.splitlines()[0])
    calls, repeats = (20_000, 3) if opts.quick else (200_000, 7)
    native = _native
    native.set_buffer_capacity(1 << 22)
    with tempfile.TemporaryDirectory() as out:
        recorder = Recorder(native, Settings.from_env(), lambda: out, HookGuard())
        recorder.prompt = {"3": {"class_type": "KSampler", "inputs": {}}}
        dp = DynamicPrompt(recorder.prompt)
        args = (None, dp, None, "3", {}, set(), "p", None, {}, {})
        plain, before, now = execute, old_hook(native, recorder)(execute), timed_execute(execute, recorder, HookGuard())
        pend_before = old_hook(native, recorder)(pending_once())
        pend_now = timed_execute(pending_once(), recorder, HookGuard())
        figures: dict[str, list[float]] = {k: [] for k in ("plain", "before", "now", "pend before", "pend now")}
        for _ in range(repeats):
            for name, fn in (("plain", plain), ("before", before), ("now", now)):
                figures[name].append(time_calls(fn, calls, args))
                native.drain()
            for name, fn in (("pend before", pend_before), ("pend now", pend_now)):
                figures[name].append(2 * time_calls(fn, calls, args))  # two calls per node
                recorder._pending.clear()
                native.drain()
        med = {k: statistics.median(v) for k, v in figures.items()}
        print(f"1. per node call (await execute(...)), {calls:,} calls x {repeats} repeats, ns")
        print(f"   plain call                         {med['plain']:8.0f}")
        for name, label in (("before", "before: C Wrapper + namer/outcome"), ("now", "now: timed_execute")):
            print(f"   {label:<34} {med[name]:8.0f}   added {med[name] - med['plain']:6.0f}")
        added_before, added_now = med["before"] - med["plain"], med["now"] - med["plain"]
        print(f"   ratio now/before (added)           {added_now / added_before:8.2f}")
        print("2. per node that returns pending once (two calls), ns")
        print(f"   before (two spans)                 {med['pend before']:8.0f}")
        print(f"   now (one span with its pending time) {med['pend now']:6.0f}   ratio "
              f"{med['pend now'] / med['pend before']:.2f}")
        print(f"   dropped events: {native.dropped()}")

    bind = Binder(execute, ("dynprompt", "current_item"))
    sig = inspect.signature(execute)
    by_name = {"binder": [], "signature.bind": [], "positional": []}
    bind_calls = calls * 5
    for _ in range(repeats):
        by_name["binder"].append(time_sync(lambda: bind.values(args, {}), bind_calls))
        by_name["signature.bind"].append(time_sync(lambda: sig.bind(*args).arguments, bind_calls))
        by_name["positional"].append(time_sync(lambda: (args[1], args[3]), bind_calls))
    bmed = {k: statistics.median(v) for k, v in by_name.items()}
    print(f"3. reading dynprompt and current_item, {bind_calls:,} calls x {repeats} repeats, ns")
    for k, v in bmed.items():
        print(f"   {k:<34} {v:8.0f}")
    print(f"   Signature.bind / Binder            {bmed['signature.bind'] / bmed['binder']:8.1f}x")
    return print_targets([(f"node hook adds at most {TARGET_RATIO:.0f}x the C Wrapper's",
                           f"{added_now / added_before:.2f}x ({added_now / 1000:.1f} us a call)",
                           added_now / added_before <= TARGET_RATIO)], opts.check)


if __name__ == "__main__":
    sys.exit(main())
