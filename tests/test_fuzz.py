"""Bounded libFuzzer runs under ASan/UBSan: the safetensors reader (with prefix grouping) and the JSON
escaper; the streaming trace reader and the span arithmetic. From the seed corpus in tests/fuzz/corpus (copied: the
repository's corpus is never modified). Skips when clang with libFuzzer is
missing (.ci/run installs it)."""

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS = int(os.environ.get("STAGETRACE_FUZZ_SECONDS", "20"))
SOURCES = ["tests/fuzz/fuzz_safetensors.c", "csrc/st_safetensors.c", "csrc/st_sfgroup.c", "csrc/st_jsonscan.c",
           "csrc/st_json.c", "csrc/st_sink.c"]


def fuzz(tmp_path, target: str, sources: list[str], link: tuple[str, ...] = (), options: tuple[str, ...] = ()) -> None:
    """Build tests/fuzz/fuzz_<target>.c with sources under libFuzzer, ASan and UBSan, run it for SECONDS from a
    copy of tests/fuzz/corpus/<target>, and assert that it found nothing and did more than 1000 runs. Skips when
    clang or its libFuzzer runtime is missing. link: libraries after the sources; options: more libFuzzer flags."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang (with libFuzzer) is not installed: apt-get install clang libclang-rt-14-dev")
    exe = tmp_path / f"fuzz_{target}"
    build = subprocess.run([clang, "-g", "-O1", "-std=c11", "-D_GNU_SOURCE", "-fsanitize=fuzzer,address,undefined",
                            "-fno-sanitize-recover=undefined", "-Icsrc", *sources, *link, "-o", str(exe)],
                           cwd=ROOT, capture_output=True, text=True)
    if build.returncode != 0 and "fuzzer" in build.stderr:
        pytest.skip(f"clang has no libFuzzer runtime: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    corpus = tmp_path / "corpus"
    shutil.copytree(os.path.join(ROOT, "tests", "fuzz", "corpus", target), corpus)
    run = subprocess.run([str(exe), str(corpus), f"-max_total_time={SECONDS}", "-timeout=5", "-rss_limit_mb=1024",
                          *options, f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True,
                         timeout=SECONDS + 120)
    tail = "\n".join(run.stderr.splitlines()[-25:])
    assert run.returncode == 0, tail
    done = re.search(r"Done (\d+) runs", run.stderr)
    assert done and int(done.group(1)) > 1000, tail


def test_fuzz_safetensors_reader_and_escaper(tmp_path):
    fuzz(tmp_path, "safetensors", SOURCES)


TRACESCAN_SOURCES = ["tests/fuzz/fuzz_tracescan.c", "csrc/st_tracescan.c", "csrc/st_spanmath.c"]


def test_fuzz_trace_reader_and_span_arithmetic(tmp_path):
    fuzz(tmp_path, "tracescan", TRACESCAN_SOURCES, link=("-lm", "-lpthread"), options=("-max_len=4096",))
