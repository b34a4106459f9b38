"""`stagetrace report` on a 2-million-event trace: time and peak memory, this tree against an older one.

    python benchmarks/bench_bigtrace.py [--quick] [--check] [--before REV] [--events N]

Writes two traces of N events (default 2 000 000; --quick: 200 000) in a temporary folder with
benchmarks/bigtrace.py: StageTrace's own with per-kernel detail, and a torch.profiler-shaped foreign one.
Then runs `python -m comfy_nodes report TRACE` (text) and `--format html` on each in a subprocess and reads
its wall time, its CPU time (user + system, from wait4), its peak resident memory (wait4's ru_maxrss) and
the size of the page. With --before REV, the same commands in the same run on REV's code (exported with
`git archive` into the temporary folder and built there), and the ratios. Targets: the text report under
5 s and 500 MB, the HTML page under 2 MB. The report runs on one core, so on an idle machine its wall time
is its CPU time; on a shared one the wall time grows with the other load, so the time target is judged on
the CPU time and both are printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bigtrace  # noqa: E402  (beside this script)
from benchutil import print_targets  # noqa: E402

MB = 1 << 20


def run_report(tree: str, trace: str, fmt: str, out_path: str) -> tuple[float, float, int, int, float]:
    """(wall seconds, peak RSS in MB, bytes written, exit status, CPU seconds) of one `report` run on the code
    in tree."""
    env = dict(os.environ, PYTHONPATH=tree)
    with open(out_path, "wb") as out, tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "comfy_nodes", "report", "--format", fmt, trace], cwd=tree,
                                env=env, stdout=out, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest child's so far
        took = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        err = errors.read().decode(errors="replace")
    if proc.returncode != 0:
        print(f"   ! {os.path.basename(tree)} report --format {fmt} {os.path.basename(trace)}: exit "
              f"{proc.returncode}: {err.strip()[-300:]}")
    return took, usage.ru_maxrss / 1024, os.path.getsize(out_path), proc.returncode, usage.ru_utime + usage.ru_stime


def export(rev: str, folder: str) -> str:
    """REV's tree, built, in folder/before."""
    tree = os.path.join(folder, "before")
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=tree,
                           capture_output=True, text=True)
    if build.returncode != 0:
        raise SystemExit(f"building {rev} failed:\n{build.stderr[-2000:]}")
    return tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 000 events instead of 2 000 000")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--before", metavar="REV", help="also run REV's code (a commit, branch or tag) and compare")
    parser.add_argument("--events", type=int, help="events per trace (default 2 000 000, --quick 200 000)")
    args = parser.parse_args()
    events = args.events or (200_000 if args.quick else 2_000_000)
    with tempfile.TemporaryDirectory(prefix="stagetrace-bigtrace-") as tmp:
        traces = {"StageTrace's own": os.path.join(tmp, "own.trace.json"),
                  "torch.profiler-like": os.path.join(tmp, "torch.json")}
        started = time.perf_counter()
        written = {"StageTrace's own": bigtrace.write_stagetrace(traces["StageTrace's own"], events),
                   "torch.profiler-like": bigtrace.write_torch_profiler(traces["torch.profiler-like"], events)}
        print(f"traces written in {time.perf_counter() - started:.1f} s: " + ", ".join(
            f"{kind} {written[kind]:,} events, {os.path.getsize(path) / MB:.0f} MB" for kind, path in traces.items()))
        trees = {"after": ROOT}
        if args.before:
            started = time.perf_counter()
            trees = {"before": export(args.before, tmp), "after": ROOT}
            print(f"{args.before} exported and built in {time.perf_counter() - started:.1f} s")
        results: dict[tuple[str, str, str], tuple[float, float, int, int, float]] = {}
        print(f"{'trace':<22}{'format':<8}{'code':<8}{'wall':>9}{'CPU':>9}{'peak RSS':>11}{'output':>11}")
        for kind, path in traces.items():
            for fmt in ("text", "html"):
                for label, tree in trees.items():
                    r = results[kind, fmt, label] = run_report(tree, path, fmt, os.path.join(tmp, f"out.{fmt}"))
                    print(f"{kind:<22}{fmt:<8}{label:<8}{r[0]:>7.2f} s{r[4]:>7.2f} s{r[1]:>8.0f} MB"
                          f"{r[2] / 1024:>8.0f} kB")
                if args.before:
                    b, a = results[kind, fmt, "before"], results[kind, fmt, "after"]
                    print(f"{'':<22}{'':<8}{'ratio':<8}{b[0] / a[0]:>7.1f} ×{b[4] / a[4]:>7.1f} ×"
                          f"{b[1] / a[1]:>9.1f} ×{b[2] / max(1, a[2]):>9.1f} ×   (before / after)")
    after = {key[:2]: value for key, value in results.items() if key[2] == "after"}
    text_s = max(after[kind, "text"][4] for kind in traces)
    text_wall = max(after[kind, "text"][0] for kind in traces)
    text_mb = max(after[kind, "text"][1] for kind in traces)
    page_kb = max(after[kind, "html"][2] for kind in traces) / 1024
    ok = all(r[3] == 0 for key, r in results.items() if key[2] == "after")
    return print_targets([(f"text report of {events:,} events under 5 s (CPU)",
                           f"{text_s:.2f} s CPU, {text_wall:.2f} s wall", text_s < 5.0),
                          ("text report under 500 MB peak RSS", f"{text_mb:.0f} MB", text_mb < 500),
                          ("HTML page under 2 MB", f"{page_kb:.0f} kB", page_kb < 2048),
                          ("every report ran (exit 0)", "yes" if ok else "no", ok)], args.check)


if __name__ == "__main__":
    sys.exit(main())
