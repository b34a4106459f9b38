"""Checkpoint header reading: StageTrace's C reader (+ classification) against
the safetensors library and against Python's json module, in one run.

    python benchmarks/bench_safetensors.py [--quick] [--check]

For files of 10, 1 000, 2 000 and 20 000 tensors (names and shapes shaped like
an SD1.x all-in-one checkpoint; data kept tiny, since only headers are read):
  - ours: anatomy.read_anatomy(): the C reader, grouping the tensors by
    component prefix and totalling them, then the rules on those groups
  - safe_open: safetensors.safe_open(path).keys() + .metadata()
  - json.loads: read the 8-byte length and the header, json.loads it
Times are medians over repeats, the three taking turns in each repeat, the
file in the page cache (warm) for all.
Targets: the C reader at least as fast as safe_open at every size; under
1 ms for the 2 000-tensor checkpoint.
"""

from __future__ import annotations

import json
import os
import statistics
import struct
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchutil import parse_args, print_targets  # noqa: E402  (beside this script)

sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from comfy_nodes import _native  # noqa: E402
from comfy_nodes.analysis.anatomy import read_anatomy  # noqa: E402

SIZES = (10, 1000, 2000, 20000)


def make_file(path: str, count: int) -> None:
    """An SD1.x-shaped all-in-one checkpoint of ``count`` tensors (data kept tiny): the keys the rules
    look for, with their real shapes, then filler names split like a real file (about 60 % UNet,
    20 % text encoder, 20 % VAE), so the classifier runs on three components as it does for a real one."""
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": np.zeros((320, 4, 3, 3), dtype=np.float16),
        "model.diffusion_model.time_embed.0.weight": np.zeros((1280, 320), dtype=np.float16),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
            np.zeros((320, 768), dtype=np.float16),
    }
    for i in range(count - len(tensors)):
        block, part = divmod(i, 12)
        if i % 5 < 3:
            name = f"model.diffusion_model.output_blocks.{block}.{part % 3}.transformer_blocks.{part}.attn1.to_q.weight"
        elif i % 5 == 3:
            name = f"cond_stage_model.transformer.text_model.encoder.layers.{block}.mlp.fc{part}.weight"
        else:
            name = f"first_stage_model.decoder.up.{block}.block.{part}.conv1.weight"
        tensors[name] = np.zeros((2, 2) if i % 2 else (1,), dtype=np.float16)
    save_file(tensors, path, metadata={"format": "pt", "modelspec.architecture": "stable-diffusion-v1"})


def interleaved_medians(fns, repeats: int) -> list[float]:
    """Median seconds of each function, the functions taking turns in every repeat so a busy
    neighbour on a shared machine slows all of them alike, not one."""
    for fn in fns:
        fn()  # warm: page cache, imports
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples, strict=True):
            t0 = time.perf_counter_ns()
            fn()
            out.append((time.perf_counter_ns() - t0) / 1e9)
    return [statistics.median(out) for out in samples]


def read_ours(path: str):
    return read_anatomy(_native, path)


def read_library(path: str):
    with safe_open(path, framework="numpy") as f:
        return list(f.keys()), f.metadata()


def read_json(path: str):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    repeats = 5 if args.quick else 51
    targets = []
    print(f"header read, median of {repeats} warm reads; ours = C reader grouping by prefix + anatomy classify")
    print(f"   {'tensors':>8} {'header KB':>10} {'ours ms':>9} {'safe_open ms':>13} {'json.loads ms':>14}"
          f" {'safe_open/ours':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for count in SIZES:
            path = os.path.join(tmp, f"{count}.safetensors")
            make_file(path, count)
            header_kb = _native.read_safetensors_header(path)["header_bytes"] / 1024
            ours, lib, js = interleaved_medians([lambda p=path: read_ours(p), lambda p=path: read_library(p),
                                                 lambda p=path: read_json(p)], repeats)
            print(f"   {count:>8} {header_kb:>10.1f} {ours * 1e3:>9.3f} {lib * 1e3:>13.3f} {js * 1e3:>14.3f}"
                  f" {lib / ours:>14.2f}x")
            targets.append((f"as fast as safe_open at {count} tensors", f"{lib / ours:.2f}x", ours <= lib))
            if count == 2000:
                targets.append(("under 1 ms for 2 000 tensors", f"{ours * 1e3:.3f} ms", ours < 1e-3))
    return print_targets(targets, args.check, width=40)


if __name__ == "__main__":
    sys.exit(main())
