"""Checkpoint header reading: StageTrace's C reader (+ classification) against
the safetensors library and against Python's json module, in one run.

    python benchmarks/bench_safetensors.py [--quick] [--check]

For files of 10, 1 000, 2 000 and 20 000 tensors (names and shapes shaped like
a UNet checkpoint; data kept tiny, since only headers are read):
  - C reader: _native.read_safetensors_header(path), then anatomy.classify()
  - safe_open: safetensors.safe_open(path).keys() + .metadata()
  - json.loads: read the 8-byte length and the header, json.loads it
Times are medians over repeats, the file in the page cache (warm) for all.
Targets: the C reader at least as fast as safe_open at every size; under
1 ms for the 2 000-tensor checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from comfy_nodes import _native  # noqa: E402

try:
    from comfy_nodes.anatomy import classify  # noqa: E402
except ImportError:  # classification lands separately; time the reader alone then
    classify = None

SIZES = (10, 1000, 2000, 20000)


def make_file(path: str, count: int) -> None:
    tensors = {}
    for i in range(count):
        block, part = divmod(i, 12)
        name = f"model.diffusion_model.input_blocks.{block}.{part % 3}.transformer_blocks.{part}.attn1.to_q.weight"
        tensors[name] = np.zeros((2, 2) if i % 2 else (1,), dtype=np.float16)
    save_file(tensors, path, metadata={"format": "pt", "modelspec.architecture": "stable-diffusion-v1"})


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm: page cache, imports
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e9)
    return statistics.median(samples)


def read_ours(path: str):
    header = _native.read_safetensors_header(path)
    if classify is not None:
        classify({name: (dtype, shape) for name, dtype, shape, _, _ in header["tensors"]}, header["metadata"])
    return header


def read_library(path: str):
    with safe_open(path, framework="numpy") as f:
        return list(f.keys()), f.metadata()


def read_json(path: str):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    repeats = 5 if args.quick else 30
    targets = []
    what = "C reader + classify" if classify is not None else "C reader (no classifier)"
    print(f"header read, median of {repeats} warm reads; ours = {what}")
    print(f"   {'tensors':>8} {'header KB':>10} {'ours ms':>9} {'safe_open ms':>13} {'json.loads ms':>14}"
          f" {'safe_open/ours':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for count in SIZES:
            path = os.path.join(tmp, f"{count}.safetensors")
            make_file(path, count)
            header_kb = _native.read_safetensors_header(path)["header_bytes"] / 1024
            ours = median_seconds(lambda p=path: read_ours(p), repeats)
            lib = median_seconds(lambda p=path: read_library(p), repeats)
            js = median_seconds(lambda p=path: read_json(p), repeats)
            print(f"   {count:>8} {header_kb:>10.1f} {ours * 1e3:>9.3f} {lib * 1e3:>13.3f} {js * 1e3:>14.3f}"
                  f" {lib / ours:>14.2f}x")
            targets.append((f"as fast as safe_open at {count} tensors", f"{lib / ours:.2f}x", ours <= lib))
            if count == 2000:
                targets.append(("under 1 ms for 2 000 tensors", f"{ours * 1e3:.3f} ms", ours < 1e-3))
    print("targets")
    for label, figure, ok in targets:
        print(f"   {'PASS' if ok else 'FAIL'}  {label:<40} {figure}")
    return 1 if args.check and not all(ok for _, _, ok in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
