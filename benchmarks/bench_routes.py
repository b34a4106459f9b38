"""What StageTrace's /stagetrace/ routes cost when they serve a 100-step prompt, against a real ComfyUI.

    COMFYUI_DIR=... python benchmarks/bench_routes.py [--requests N]

Starts a real ComfyUI on loopback the way the tests do (tests/comfy_server.py: --cpu, a temporary base
directory, StageTrace loaded), runs the tiny workflow with a 100-step sampler through POST /prompt,
then, over one keep-alive HTTP connection from this process, times:
  - the first GET /stagetrace/prompts/{id} (the report read from disk and cached),
  - N more of it (cached: the route's steady cost),
  - N of GET /stagetrace/prompts?limit=20,
  - N of GET /stagetrace/prompts/{id}/trace (the file served as is),
  - N of ComfyUI's own GET /system_stats, the baseline for "an HTTP round trip through this server".
Prints requests per second and milliseconds per request (median and p95), and each route's ratio to the
baseline. The client shares the machine's CPUs with the server, so the figures include both sides.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import comfy_server as cs  # noqa: E402  (tests/comfy_server.py)

from comfy_nodes.demo.harness import tiny_txt2img  # noqa: E402


def timed(conn: http.client.HTTPConnection, path: str, n: int) -> tuple[list[float], int]:
    """n GETs of path on conn; (seconds each, bytes of the last body)."""
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        times.append(time.perf_counter() - t0)
        assert resp.status == 200, (path, resp.status, body[:200])
        size = len(body)
    return times, size


def line(label: str, times: list[float], size: int, baseline_ms: float | None = None) -> str:
    ms = sorted(t * 1e3 for t in times)
    median, p95 = statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    rate = len(times) / sum(times)
    ratio = f"  {median / baseline_ms:5.1f}x /system_stats" if baseline_ms else ""
    return f"  {label:<44} {rate:8.0f} req/s   median {median:6.2f} ms   p95 {p95:6.2f} ms   {size:>8} B{ratio}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    reason = cs.skip_reason()
    if reason:
        print(f"bench_routes: skipped: {reason}")
        return 0
    base = tempfile.mkdtemp(prefix="stagetrace-bench-routes-")
    server = cs.ComfyServer(cs.find_comfyui(), base)
    try:
        server.prepare()
        server.start()
        prompt_id = server.run_prompt(tiny_txt2img(cs.CHECKPOINT, steps=args.steps), timeout=600)
        trace = server.wait_trace(prompt_id)
        conn = http.client.HTTPConnection(cs.HOST, server.port, timeout=30)
        one = f"/stagetrace/prompts/{prompt_id}"
        cold, size = timed(conn, one, 1)
        panel_cold, _ = timed(conn, one + "/panel", 1)
        timed(conn, "/system_stats", 20)  # warm the connection and the server
        base_t, base_size = timed(conn, "/system_stats", args.requests)
        baseline = statistics.median(base_t) * 1e3
        print(f"bench_routes: real ComfyUI on loopback (--cpu), a {args.steps}-step prompt "
              f"(trace {os.path.getsize(trace) / 1e3:.0f} kB), {args.requests} requests each, "
              "one keep-alive connection")
        print(line("GET /system_stats (ComfyUI's, baseline)", base_t, base_size))
        print(f"  {'GET /stagetrace/prompts/{id}, first (uncached)':<44} {'':>14}   {cold[0] * 1e3:6.2f} ms")
        print(f"  {'GET /stagetrace/prompts/{id}/panel, first':<44} {'':>14}   {panel_cold[0] * 1e3:6.2f} ms")
        for label, path in (("GET /stagetrace/prompts/{id} (summary)", one),
                            ("GET /stagetrace/prompts/{id}/panel (panel data)", one + "/panel"),
                            ("GET /stagetrace/prompts?limit=20", "/stagetrace/prompts?limit=20"),
                            ("GET /stagetrace/prompts/{id}/trace", one + "/trace")):
            times, size = timed(conn, path, args.requests)
            print(line(label, times, size, baseline))
        conn.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
