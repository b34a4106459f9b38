"""The C core under threads, fork() and sanitizers: tests/native_stress.c, built here from the csrc/ units that
need no Python, runs spans on 8 threads while buffers are drained, GPU rounds reset, NVTX is toggled and short
threads come and go, forks three times in the middle (each child must record and exit within its alarm), and
checks that a thread's buffer is never reached after the thread has exited.

Built three ways: plain, under ASan+UBSan, and under TSan (a sanitizer the compiler lacks is a skip, with the
reason). When the headers are here, NVTX runs with the recorder tool attached (tests/nvtx/recorder.c, through
NVTX_INJECTION64_PATH) and CUPTI with its test double (tests/cupti/fake_cupti.c, which runs StageTrace's buffer
callbacks from inside its own calls on a worker thread). No suppressions: TSan must report nothing at all.

`make sanitize` and `make tsan` run the sanitizer builds; STAGETRACE_STRESS_SECONDS sets the run length (2 s)."""

import os
import shutil
import subprocess
import sys

import pytest
from nvtx_paths import nvtx_include

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from setup import find_cupti_include  # noqa: E402

# the units the stress program links: every csrc/ file it needs, none that needs Python
UNITS = ["st_clock.c", "st_cupti.c", "st_events.c", "st_fork.c", "st_gpu.c", "st_intern.c", "st_nvtx.c",
         "st_stage.c", "st_stagespan.c"]  # fmt: skip
SANITIZERS = {
    "plain": [],
    "asan-ubsan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"],
    "tsan": ["-fsanitize=thread"],
}
SECONDS = os.environ.get("STAGETRACE_STRESS_SECONDS", "2")


def compiler() -> str:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc})")
    return cc


def sanitizer_works(cc: str, flags: list[str], tmp) -> str | None:
    """None when cc builds and runs a threaded program with flags, else why not."""
    if not flags:
        return None
    src, exe = tmp / "probe.c", tmp / "probe"
    src.write_text("#include <pthread.h>\nstatic void *f(void *a) { return a; }\n"
                   "int main(void) { pthread_t t; pthread_create(&t, 0, f, 0); return pthread_join(t, 0); }\n")
    built = subprocess.run([cc, *flags, str(src), "-o", str(exe), "-lpthread"], capture_output=True, text=True)
    if built.returncode != 0:
        return f"{cc} {' '.join(flags)} does not build: {built.stderr.strip().splitlines()[-1:]}"
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    if ran.returncode != 0:
        return f"a {' '.join(flags)} program does not run here: {ran.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    """The CUPTI test double and the NVTX recorder tool, when their headers are here (else None)."""
    out = tmp_path_factory.mktemp("stress-helpers")
    cc = compiler()
    found = {"cupti": find_cupti_include(), "nvtx": nvtx_include(), "fake": None, "recorder": None}
    if found["cupti"]:
        found["fake"] = str(out / "libfake_cupti.so")
        subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O1", "-fPIC", "-shared", "-pthread",
                        *(f"-I{d}" for d in found["cupti"]), os.path.join(ROOT, "tests", "cupti", "fake_cupti.c"),
                        "-o", found["fake"]], check=True)  # fmt: skip
    if found["nvtx"]:
        found["recorder"] = str(out / "librecorder.so")
        subprocess.run([cc, "-std=c11", "-O1", "-fPIC", "-shared", f"-I{found['nvtx']}",
                        os.path.join(ROOT, "tests", "nvtx", "recorder.c"), "-o", found["recorder"], "-lpthread"],
                       check=True)  # fmt: skip
    return found


def build_stress(cc: str, flags: list[str], helpers: dict, exe: str) -> None:
    defines, includes = [], [f"-I{os.path.join(ROOT, 'csrc')}"]
    if helpers["nvtx"]:
        defines.append("-DST_HAVE_NVTX=1")
        includes.append(f"-I{helpers['nvtx']}")
    if helpers["cupti"]:
        defines.append("-DST_HAVE_CUPTI=1")
        includes += [f"-I{d}" for d in helpers["cupti"]]
    sources = [os.path.join(ROOT, "tests", "native_stress.c")] + [os.path.join(ROOT, "csrc", u) for u in UNITS]
    subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *flags, *defines,
                    *includes, *sources, "-o", exe, "-ldl", "-lpthread"], check=True)  # fmt: skip


@pytest.mark.parametrize("variant", list(SANITIZERS))
def test_spans_on_8_threads_with_drains_nvtx_toggles_and_fork(variant, helpers, tmp_path):
    cc = compiler()
    flags = SANITIZERS[variant]
    why = sanitizer_works(cc, flags, tmp_path)
    if why:
        pytest.skip(why)
    exe = str(tmp_path / f"native_stress-{variant}")
    build_stress(cc, flags, helpers, exe)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1", STAGETRACE_NVTX_LOG=os.devnull)
    env.pop("LD_PRELOAD", None)  # `make sanitize` preloads ASan for Python; this program links its own runtime
    if helpers["recorder"]:
        env["NVTX_INJECTION64_PATH"] = helpers["recorder"]
    else:
        env.pop("NVTX_INJECTION64_PATH", None)
    args = [exe, SECONDS] + ([helpers["fake"]] if helpers["fake"] else [])
    try:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=float(SECONDS) * 30 + 60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{variant}: the stress program hung (deadlock)")
    report = done.stdout + done.stderr
    assert "WARNING: ThreadSanitizer" not in report, report[-6000:]
    assert "ERROR: AddressSanitizer" not in report and "runtime error:" not in report, report[-6000:]
    assert done.returncode == 0, report[-6000:]
    summary = next(line for line in done.stdout.splitlines() if line.startswith("native_stress:"))
    assert " 3 forks" in summary and "on 8 threads" in summary, summary
