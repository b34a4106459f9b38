"""What GPU activity attribution costs (csrc/st_gpu.c), in one run.

    python benchmarks/bench_gpu.py [--quick] [--check]

Builds gpu_records.c with csrc/st_gpu.c and runs it: records shaped like a
100-step sampling run (kernels on two streams with overlaps, copies, memsets),
handed over in buffers of 512 as CUPTI's buffer-completed callback does.
Prints, as medians of the repeats:
  - ns per record, records in CUPTI's delivery order, and fully shuffled;
  - the report read at a prompt's end (a flush), in microseconds;
  - memory growth with aggregates only, for N and for 10 x N records streamed.
Targets: under 50 ns per record (delivery order); memory bounded whatever the
run length (10 x the records adds nothing that grows with them).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchutil import parse_args, print_targets  # noqa: E402  (beside this script)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    if shutil.which("gcc") is None:
        print("gcc is needed to build benchmarks/gpu_records.c")
        return 1
    records, repeats = (200_000, 3) if args.quick else (1_000_000, 5)
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "gpu_records")
        subprocess.run(["gcc", "-std=c11", "-D_GNU_SOURCE", "-O2", "-I", os.path.join(ROOT, "csrc"),
                        os.path.join(ROOT, "benchmarks", "gpu_records.c"), os.path.join(ROOT, "csrc", "st_gpu.c"),
                        "-o", exe, "-lpthread"], check=True)
        rows = [list(map(float, subprocess.run([exe, str(records), "100"], capture_output=True, text=True,
                                               check=True).stdout.split())) for _ in range(repeats)]
    medians = [statistics.median(col) for col in zip(*rows, strict=True)]
    in_order, shuffled, report_us, windows, grow_1, grow_10 = medians
    print(f"GPU record attribution, {records:,} records over 100 step windows, median of {repeats} runs")
    print(f"   per record, CUPTI's delivery order   {in_order:8.1f} ns")
    print(f"   per record, fully shuffled           {shuffled:8.1f} ns")
    print(f"   report at the prompt's end           {report_us:8.1f} us  ({windows:.0f} windows)")
    print(f"   memory growth, {records:,} records   {grow_1:8.0f} kB")
    print(f"   memory growth, {10 * records:,} records  {grow_10:8.0f} kB")
    targets = [
        ("under 50 ns per record", f"{in_order:.1f} ns", in_order < 50),
        ("memory bounded (10x records, no growth)", f"{grow_10:.0f} kB vs {grow_1:.0f} kB", grow_10 <= grow_1 + 256),
    ]
    return print_targets(targets, args.check, width=42)


if __name__ == "__main__":
    sys.exit(main())
