"""The load generator must never be what limits a test: requests a second it sustains, its CPU time per
request, and its memory with hundreds of requests in flight, against a real ComfyUI server.

    python benchmarks/bench_load.py [--requests 600] [--rate 6000]

Starts a real ComfyUI on loopback (tests/comfy_server.py: COMFYUI_DIR or ../shared/comfyui's tarball) with a
model-free workflow ComfyUI completes in milliseconds (the tests' HarnessSleep node, sleeping 0 s). An open-model
run at a rate far above what the server completes keeps the requests in flight (the server's queue holds
them); the figures are the client's: the arrival rate it kept, its CPU time (process time) per request,
the peak requests in flight, and its peak RSS growth over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from comfy_server import ComfyServer, find_comfyui  # noqa: E402

from comfy_nodes.client import load as load_module  # noqa: E402
from comfy_nodes.client.server import Credentials  # noqa: E402

WORKFLOW = {"1": {"class_type": "HarnessSleep", "inputs": {"seconds": 0.0, "seed": 0}}}  # a run of milliseconds


def rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def measure(url: str, requests: int, rate: float) -> dict:
    in_flight = {"now": 0, "peak": 0}
    original = load_module.LoadRun.one

    async def counted(self, user):  # count the requests waiting for their result
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        try:
            return await original(self, user)
        finally:
            in_flight["now"] -= 1

    load_module.LoadRun.one = counted
    before_rss, cpu0, wall0 = rss_kb(), time.process_time(), time.perf_counter()
    duration = requests / (rate / 60.0)
    code, out = await load_module.load([url], WORKFLOW, Credentials(), rate=rate, duration=duration, timeout=600)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    load_module.LoadRun.one = original
    arrivals = out["requests_detail"]
    span = arrivals[-1]["submitted_at"] - arrivals[0]["submitted_at"] if len(arrivals) > 1 else 0
    return {"code": code, "requests": out["requests"], "ok": out["ok"], "errors": out["errors"],
            "arrival_rate_per_s": (len(arrivals) - 1) / span if span else None, "asked_per_s": rate / 60,
            "cpu_ms_per_request": cpu / max(1, out["requests"]) * 1e3, "wall_s": wall,
            "peak_in_flight": in_flight["peak"], "rss_growth_mb": (rss_kb() - before_rss) / 1024, "out": out}


def report_cost(out: dict, scale_to: int = 100_000) -> list[str]:
    """The cost of the --report files: this run's, and the same run's requests repeated to scale_to (the page
    bounds what it draws, so its size must not grow with the requests)."""
    from comfy_nodes.render.runreport import load_report

    lines = []
    detail = out["requests_detail"]
    big = dict(out, requests_detail=[dict(r, index=i + 1, submitted_at=r["submitted_at"] + (i // len(detail)) *
                                          out["wall_s"]) for i, r in enumerate(detail * (scale_to // len(detail)))])
    for label, data in ((f"{len(detail)} requests", out), (f"{len(big['requests_detail'])} requests", big)):
        t0 = time.perf_counter()
        page = load_report(data, "html")
        t_html = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_report(data, "md")
        t_md = time.perf_counter() - t0
        lines.append(f"   report of {label}: HTML {len(page.encode()) / 1024:.0f} KB in {t_html * 1e3:.0f} ms, "
                     f"Markdown in {t_md * 1e3:.0f} ms")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rate", type=float, default=6000.0, help="arrivals a minute (default 6000 = 100/s)")
    args = parser.parse_args()
    comfyui = find_comfyui()
    if comfyui is None:
        print("no ComfyUI (COMFYUI_DIR or ../shared/comfyui): nothing measured")
        return 0
    server = ComfyServer(comfyui, tempfile.mkdtemp(prefix="stagetrace-bench-load-"))
    server.prepare()
    server.start()
    try:
        r = asyncio.run(measure(server.url, args.requests, args.rate))
    finally:
        server.stop()
    print(f"load generator, open model, {r['requests']} requests asked at {r['asked_per_s']:.0f}/s against a "
          f"real ComfyUI (model-free workflow): {r['ok']} ok, errors {r['errors'] or 'none'}")
    print(f"   arrivals kept at {r['arrival_rate_per_s']:.1f}/s; client CPU {r['cpu_ms_per_request']:.2f} ms a "
          f"request; {r['wall_s']:.1f} s in all")
    print(f"   peak requests in flight: {r['peak_in_flight']}; client peak RSS growth {r['rss_growth_mb']:.1f} MB")
    for line in report_cost(r["out"]):
        print(line)
    print("targets")
    print(f"   {'PASS' if r['peak_in_flight'] >= 500 else 'FAIL'}  at least 500 requests in flight"
          f"{'':20} {r['peak_in_flight']}")
    print(f"   {'PASS' if r['arrival_rate_per_s'] >= 0.9 * r['asked_per_s'] else 'FAIL'}  the asked arrival rate "
          f"kept (>= 90 %){'':9} {r['arrival_rate_per_s']:.1f}/s")
    return 0  # the targets are printed; make bench goes on to the next benchmark either way


if __name__ == "__main__":
    sys.exit(main())
