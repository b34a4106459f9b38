"""What the run history costs: a prompt's insert against the writer's diagnose, the last runs of a workflow
over 10 000 stored prompts, the file's size.

    python benchmarks/bench_history.py [--quick] [--check]

1. Per prompt, what the writer thread adds for the history: ``History.recent(workflow, 10)`` (the runs the
   regression rule compares with) and ``History.record(run)`` (an insert, then retention) into a database
   that already holds 10 000 prompts at its ``keep_runs`` bound of 10 000, so retention deletes as it would
   in a long-lived ComfyUI; against ``diagnose(trace, history=...)`` for the same prompt (the writer's
   existing Python work), on the recorded GPU runs of tests/fixtures/scenarios/. Median and p99 of the
   repeats (time.perf_counter_ns), the two taking turns. The insert's p99 shows the retention batch
   (once every keep_runs / 100 inserts).
2. "The last 10 runs of this workflow" over 10 000 stored prompts of 50 workflows: ``recent(workflow, 10)``
   and, for scale, the same query without the index (``NOT INDEXED``), median and p99.
3. The file after 10 000 prompts (each with its stages, findings and nodes): the database and its WAL.

Exits 0 unless --check is given and a target is missed.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchutil import parse_args, print_targets  # noqa: E402  (beside this script)

sys.path.insert(0, ROOT)

from comfy_nodes.analysis.diagnose import diagnose  # noqa: E402
from comfy_nodes.history.store import History, run_from_report  # noqa: E402

SCENARIOS = os.path.join(ROOT, "tests", "fixtures", "scenarios")
STORED = 10_000
WORKFLOWS = 50


def median_p99(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]


def load_traces() -> list[tuple[str, dict]]:
    traces = []
    for path in sorted(glob.glob(os.path.join(SCENARIOS, "*.trace.json"))):
        with open(path) as f:
            traces.append((os.path.basename(path).removesuffix(".trace.json"), json.load(f)))
    return traces


def fill(history: History, runs: list[dict], count: int, start: float) -> None:
    """``count`` prompts of WORKFLOWS workflows, one a second from ``start``, made from the real runs."""
    for i in range(count):
        base = runs[i % len(runs)]
        history.record({**base, "prompt_id": f"stored-{i:06d}", "workflow_id": f"wf{i % WORKFLOWS:02d}",
                        "ended": start + i, "trace": f"20261130-000000_stored-{i:06d}.trace.json"})


def per_prompt(history: History, traces: list[tuple[str, dict]], repeats: int, now: float) -> tuple[list, list]:
    """For each trace: (name, diagnose µs, recent µs, record µs median, record µs p99); and the µs of the
    inserts that ran a retention batch."""
    rows, batches = [], []
    n = 0
    for name, trace in traces:
        diag, recent, record = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            previous = history.recent("wf07", 10)
            t1 = time.perf_counter_ns()
            report = diagnose(trace, history=previous)
            t2 = time.perf_counter_ns()
            run = run_from_report(report, {"workflow_id": "wf07", "ended": now + n}, f"{name}.trace.json")
            run["prompt_id"] = f"new-{n:06d}"
            rows_before = history._rows
            t3 = time.perf_counter_ns()
            history.record(run)
            t4 = time.perf_counter_ns()
            if history._rows < rows_before:
                batches.append((t4 - t3) / 1e3)
            n += 1
            recent.append((t1 - t0) / 1e3)
            diag.append((t2 - t1) / 1e3)
            record.append((t4 - t3) / 1e3)
        rows.append((name, statistics.median(diag), statistics.median(recent), *median_p99(record)))
    return rows, batches


def time_query(history: History, sql: str, params: tuple, calls: int) -> tuple[float, float]:
    times = []
    with history._db() as db:  # the same connection, the query alone
        for i in range(calls):
            t0 = time.perf_counter_ns()
            db.execute(sql, (f"wf{i % WORKFLOWS:02d}", *params)).fetchall()
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return median_p99(times)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    repeats, calls = (40, 100) if args.quick else (400, 1000)
    started = time.perf_counter()
    traces = load_traces()
    runs = [run_from_report(diagnose(trace), {}, None) for _, trace in traces]
    targets = []
    with tempfile.TemporaryDirectory(prefix="stagetrace-bench-history-") as folder:
        path = os.path.join(folder, "history.sqlite3")
        now = time.time()
        history = History(path, keep_runs=STORED)
        t0 = time.perf_counter()
        fill(history, runs, STORED, now - STORED - 10)
        fill_s = time.perf_counter() - t0

        # 1. Per prompt
        rows, batches = per_prompt(history, traces, repeats, now)
        print(f"1. per prompt, at the bound ({history.count()} stored, keep_runs {STORED}): recent(wf, 10) + record() "
              f"against diagnose(trace, history=...); median of {repeats}, taking turns")
        print(f"   {'trace':<16} {'diagnose':>10} {'recent':>9} {'record':>9} {'record p99':>11} "
              f"{'record/diag':>11} {'(recent+record)/diag':>21}")
        worst = 0.0
        for name, diag_us, recent_us, record_us, record_p99 in rows:
            worst = max(worst, record_us / diag_us)
            print(f"   {name:<16} {diag_us:>7.1f} us {recent_us:>6.1f} us {record_us:>6.1f} us {record_p99:>8.1f} us "
                  f"{record_us / diag_us:>11.0%} {(recent_us + record_us) / diag_us:>21.0%}")
        record_median = statistics.median(r[3] for r in rows)
        if batches:
            print(f"   inserts that ran a retention batch (deleting {STORED // 100} rows): {len(batches)}, median "
                  f"{statistics.median(batches) / 1e3:.2f} ms")
        print(f"   (filling {STORED} prompts one record() at a time: {fill_s:.2f} s, "
              f"{fill_s / STORED * 1e6:.0f} us each)")
        targets.append(("record() < half the writer's diagnose (worst)", f"{worst:.0%}", worst < 0.5))
        targets.append(("record() < 1 ms (median)", f"{record_median:.0f} us", record_median < 1000))

        # 2. The last 10 runs of a workflow
        indexed = ("SELECT prompt_id, stages, outcome, wall_s FROM runs WHERE workflow_id = ? "
                   "ORDER BY ended DESC LIMIT 10")
        scan = indexed.replace("FROM runs", "FROM runs NOT INDEXED")
        api = []
        for i in range(calls):
            t = time.perf_counter_ns()
            history.recent(f"wf{i % WORKFLOWS:02d}", 10)
            api.append((time.perf_counter_ns() - t) / 1e6)
        api_med, api_p99 = median_p99(api)
        idx_med, idx_p99 = time_query(history, indexed, (), calls)
        scan_med, scan_p99 = time_query(history, scan, (), max(20, calls // 10))
        print(f"2. the last 10 runs of a workflow over {history.count()} stored prompts of {WORKFLOWS} workflows; "
              f"{calls} calls")
        print(f"   History.recent(wf, 10)              median {api_med:6.3f} ms   p99 {api_p99:6.3f} ms")
        print(f"   the query alone, with the index     median {idx_med:6.3f} ms   p99 {idx_p99:6.3f} ms")
        print(f"   the query alone, NOT INDEXED        median {scan_med:6.3f} ms   p99 {scan_p99:6.3f} ms   "
              f"({scan_med / idx_med:.0f}x)")
        targets.append(("the last 10 runs < 50 ms (p99, 10 000 stored)", f"{api_p99:.3f} ms", api_p99 < 50))

        # 3. The file
        size = os.path.getsize(path)
        wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        history.close()  # the last connection checkpoints the WAL into the file
        closed = os.path.getsize(path)
        print(f"3. the file after {STORED} prompts (and {sum(1 for _ in rows) * repeats} more at the bound)")
        print(f"   open: {size / 1e6:.1f} MB + WAL {wal / 1e6:.1f} MB; closed (checkpointed): {closed / 1e6:.1f} MB, "
              f"{closed / STORED:.0f} bytes a prompt")
        targets.append(("file < 50 MB at 10 000 prompts", f"{closed / 1e6:.1f} MB", closed < 50e6))
    print(f"   ({time.perf_counter() - started:.1f} s in all)")
    return print_targets(targets, args.check)


if __name__ == "__main__":
    sys.exit(main())
