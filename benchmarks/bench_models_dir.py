"""`stagetrace inspect --models-dir` over 10 000 files: the first walk (an empty hash cache) against the
second (the cache filled by the first), in one run.

    python benchmarks/bench_models_dir.py [--quick] [--check]

The folder (written once, under a temporary directory, by the safetensors library itself: real files):
  - 8 000 LoRA-like files, 4 KiB each, each with its own tensor names: nothing to compare;
  - 1 000 fine-tunes, 100 of each of 10 architectures (same names, shapes and dtypes, other weights),
    64 KiB each: compared by sampled bytes, never hashed whole ("same architecture");
  - 500 files and a copy of each, 256 KiB each: hashed whole ("duplicate of").
spread over ComfyUI's folders (checkpoints/, loras/, vae/ ...) 100 files a subfolder. Each walk is
inspect_files.walk_models_dir() with its own HashCache on one cache file: the first walk starts from no
cache file; the second finds every hash in it. A third walk runs without a cache (STAGETRACE_HASH_CACHE=off)
for reference. The files are in the page cache for every walk (just written, then walked once to warm up),
so the figures are CPU time, the floor of what a disk adds: on real models (gigabytes a file) the first
walk is bounded by reading the copies once, and the second reads headers only.
--quick: 1 000 files in the same proportions.
Target: the second walk at least 1.5x as fast as the first, and it reads no file bytes beyond headers.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchutil import parse_args, print_targets  # noqa: E402  (beside this script)

sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from comfy_nodes.cli.hashcache import HashCache  # noqa: E402
from comfy_nodes.cli.inspect_files import walk_models_dir  # noqa: E402

FOLDERS = ("checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "controlnet", "upscale_models",
           "embeddings")


def build(models: str, scale: int) -> dict[str, int]:
    """Write the folder (scale 10: 10 000 files); the count of each kind of file."""
    rng = np.random.default_rng(0)
    counter = iter(range(10**9))

    def place() -> str:
        n = next(counter)
        folder = os.path.join(models, FOLDERS[n // 100 % len(FOLDERS)], f"batch{n // 100:03d}")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"model{n:05d}.safetensors")

    unique, tunes, pairs = 800 * scale, 100 * scale, 50 * scale
    for i in range(unique):  # 4 KiB, names of its own
        save_file({f"lora_{i}.down.weight": rng.standard_normal(1024).astype(np.float16),
                   f"lora_{i}.up.weight": rng.standard_normal(1024).astype(np.float16)}, place())
    for i in range(tunes):  # 64 KiB, 10 architectures
        arch = i % 10
        save_file({f"arch{arch}.block{b}.weight": rng.standard_normal(4096).astype(np.float16)
                   for b in range(4)}, place())
    for i in range(pairs):  # 256 KiB, and a copy
        first = place()
        save_file({f"big{i}.weight": rng.standard_normal(64 * 1024).astype(np.float32)}, first)
        shutil.copy(first, place())
    return {"unique": unique, "same architecture": tunes, "copies": 2 * pairs}


def timed_walk(models: str, cache_path: str | None):
    cache = HashCache(cache_path, warn=lambda message: print("   warning:", message))
    t0 = time.perf_counter()
    reports = walk_models_dir(models, cache)
    seconds = time.perf_counter() - t0
    cache.close()
    return seconds, reports, cache


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    scale = 1 if args.quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        models = os.path.join(tmp, "models")
        t0 = time.perf_counter()
        kinds = build(models, scale)
        total = sum(kinds.values())
        print(f"wrote {total} files ({', '.join(f'{v} {k}' for k, v in kinds.items())}) in "
              f"{time.perf_counter() - t0:.1f} s")
        timed_walk(models, None)  # warm: page cache, imports, the classifier's tables
        cache_path = os.path.join(tmp, "cache", "hashes.sqlite3")
        first, reports, c1 = timed_walk(models, cache_path)
        second, again, c2 = timed_walk(models, cache_path)
        plain, _, c3 = timed_walk(models, None)
        dups = sum(any(f.startswith("duplicate of") for f in r.flags) for r in reports)
        same = sum(any(n.startswith("same architecture") for n in r.notes) for r in reports)
        print(f"found: {dups} duplicate of, {same} same architecture (expected {kinds['copies'] // 2} and "
              f"{kinds['same architecture'] - 10})")
        print(f"   {'walk':<28} {'seconds':>8} {'files/s':>9} {'hashed whole':>13} {'sampled':>8} {'MB read':>8}")
        for label, secs, c in (("first (empty cache)", first, c1), ("second (cache filled)", second, c2),
                               ("no cache (reference)", plain, c3)):
            print(f"   {label:<28} {secs:>8.2f} {total / secs:>9.0f} {c.computed:>13} {c.samples_read:>8}"
                  f" {c.bytes_read / 1e6:>8.1f}")
        ratio = first / second
        print(f"second walk / first walk: {ratio:.2f}x faster; cache hits {c2.hits} whole, {c2.sample_hits} sampled")
        same_flags = [(r.flags, r.notes) for r in reports] == [(r.flags, r.notes) for r in again]
        print(f"cache file: {os.path.getsize(cache_path) / 1e3:.0f} kB; both walks say the same: {same_flags}")
    targets = [("second walk >= 1.5x as fast as the first", f"{ratio:.2f}x", ratio >= 1.5),
               ("second walk reads no bytes beyond headers", f"{c2.bytes_read} bytes", c2.bytes_read == 0),
               ("duplicates and same-architecture files all found", f"{dups} + {same}",
                dups == kinds["copies"] // 2 and same == kinds["same architecture"] - 10 and same_flags)]
    return print_targets(targets, args.check)


if __name__ == "__main__":
    sys.exit(main())
