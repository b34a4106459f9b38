"""The NVML sampler (csrc/st_nvml.c) against a scripted NVML: gcc builds
tests/nvml/fake_nvml.c into a stand-in for libnvidia-ml.so.1 and the sampler
(+ st_clock.c + tests/nvml/harness.c) into libstnvml_test.so, which ctypes
drives. No GPU or driver needed. The sampler loads NVML once per process, so
each scenario runs in a fresh interpreter: this file run as a script
(``python tests/test_nvml.py SCENARIO ...``) plays one scenario and prints one
JSON line of facts, which the tests check."""

import ctypes
import importlib.util
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "tests", "nvml")
CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC"]

# Mirrors of csrc/st_nvml.h, checked against C by test_ctypes_mirror_matches_the_header.
STATUSES = [
    "OK",
    "NO_HEADERS",
    "BAD_ARGUMENT",
    "ALREADY_RUNNING",
    "NOT_FOUND",
    "MISSING_SYMBOL",
    "INIT_FAILED",
    "COUNT_FAILED",
    "NO_DEVICES",
    "NO_MEMORY",
    "THREAD_FAILED",
]
HAS_UTILIZATION, HAS_MEMORY, HAS_TEMPERATURE, HAS_POWER = 1, 2, 4, 8
HAS_ALL = 15
NOT_SUPPORTED, DRIVER_NOT_LOADED, UNKNOWN = 3, 9, 999  # nvmlReturn_t
GIB = 1 << 30


class Sample(ctypes.Structure):
    _fields_ = [
        ("t_ns", ctypes.c_uint64),
        ("mem_used_bytes", ctypes.c_uint64),
        ("mem_total_bytes", ctypes.c_uint64),
        ("power_mw", ctypes.c_uint32),
        ("device", ctypes.c_uint16),
        ("temperature_c", ctypes.c_uint16),
        ("gpu_util_pct", ctypes.c_uint8),
        ("mem_util_pct", ctypes.c_uint8),
        ("valid", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8),
    ]


# --- Building (in the pytest process) ---


def nvml_include_candidates():
    """Where to look for nvml.h when setup.py has no find_nvml_include (yet): the same order."""
    env = os.environ.get("STAGETRACE_NVML_INCLUDE")
    if env:
        yield env
    sites = [sysconfig.get_paths().get(key) for key in ("purelib", "platlib")] + sys.path
    for site in filter(None, sites):
        yield os.path.join(site, "nvidia", "nvml_dev", "include")  # nvidia-nvml-dev-cu12
        yield os.path.join(site, "nvidia", "cu13", "include")  # nvidia-nvml-dev (CUDA 13)
    cuda = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda:
        yield os.path.join(cuda, "include")
    yield "/usr/local/cuda/include"


def nvml_include():
    """The directory holding nvml.h that setup.py builds with, or None."""
    try:
        spec = importlib.util.spec_from_file_location("stagetrace_setup", os.path.join(ROOT, "setup.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # defines functions only: setup() runs under __main__
        find = module.find_nvml_include
    except Exception:  # no setup.py search for nvml.h (yet), or setup.py mid-edit
        find = None
    if find is not None:
        return find()
    for path in nvml_include_candidates():
        if os.path.isfile(os.path.join(path, "nvml.h")):
            return path
    return None


def gcc(out, sources, *flags):
    """Compile and link sources into out; -l flags go after the sources."""
    options = [f for f in flags if not f.startswith("-l")]
    libraries = [f for f in flags if f.startswith("-l")]
    subprocess.run(["gcc", *CFLAGS, *options, *sources, "-o", str(out), *libraries], check=True)
    return str(out)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Paths of the built libraries (fake, fake without power, sampler, sampler without NVML)."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the NVML sampler and its fake NVML")
    d = tmp_path_factory.mktemp("nvml")
    sampler_sources = [os.path.join(HERE, "harness.c"), os.path.join(ROOT, "csrc", "st_nvml.c")]
    sampler_sources.append(os.path.join(ROOT, "csrc", "st_clock.c"))
    libs = {
        "plain": gcc(d / "libstnvml_plain.so", sampler_sources, "-shared", f"-I{ROOT}/csrc", "-lpthread"),
    }
    include = nvml_include()
    libs["include"] = include
    if include:
        inc = f"-I{include}"
        libs["fake"] = gcc(d / "libfake_nvml.so", [os.path.join(HERE, "fake_nvml.c")], "-shared", inc, "-lpthread")
        libs["fake_no_power"] = gcc(
            d / "libfake_nvml_no_power.so",
            [os.path.join(HERE, "fake_nvml.c")],
            "-shared",
            "-DFAKE_NVML_OMIT_POWER",
            inc,
            "-lpthread",
        )
        libs["sampler"] = gcc(
            d / "libstnvml_test.so",
            sampler_sources,
            "-shared",
            "-DST_HAVE_NVML",
            inc,
            f"-I{ROOT}/csrc",
            "-ldl",
            "-lpthread",
        )
    libs["dir"] = str(d)
    return libs


@pytest.fixture(scope="module")
def libs(build):
    if not build["include"]:
        pytest.skip("no nvml.h to build against (pip install nvidia-nvml-dev-cu12, or set STAGETRACE_NVML_INCLUDE)")
    return build


def play(scenario, sampler, nvml_lib, *args):
    """Run one scenario in a fresh interpreter with STAGETRACE_NVML_LIB=nvml_lib; its facts."""
    env = dict(os.environ)
    if nvml_lib is None:
        env.pop("STAGETRACE_NVML_LIB", None)
    else:
        env["STAGETRACE_NVML_LIB"] = nvml_lib
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), scenario, sampler, str(nvml_lib), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# --- The tests ---


def test_ctypes_mirror_matches_the_header(build):
    lib = ctypes.CDLL(build["plain"])
    offsets = (ctypes.c_size_t * len(Sample._fields_))()
    lib.harness_sample_layout.restype = ctypes.c_size_t
    size = lib.harness_sample_layout(offsets, len(offsets))
    assert size == ctypes.sizeof(Sample) == 40
    assert list(offsets) == [getattr(Sample, name).offset for name, _ in Sample._fields_]
    assert lib.harness_status_count() == len(STATUSES)


def test_samples_every_device_at_the_period_with_the_scripted_readings(libs):
    facts = play("steady", libs["sampler"], libs["fake"], 20, 0.2)
    assert facts["start"] == ["OK", ""]
    assert facts["names"] == ["NVIDIA Fake A100", "NVIDIA Fake L4"]
    ran = (facts["t_stopped"] - facts["t_started"]) / 1e9  # surely running: after start returned
    could_run = (facts["t_stopped"] - facts["t_before_start"]) / 1e9  # at most
    by_device = {0: [], 1: []}
    for s in facts["samples"]:
        by_device[s["device"]].append(s)
    for device, samples in by_device.items():
        # a round at once, then one each 20 ms: fewer when late, never more
        assert 0.5 * ran / 0.02 <= len(samples) <= could_run / 0.02 + 1, (device, len(samples), ran, could_run)
        times = [s["t_ns"] for s in samples]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert facts["t_before_start"] <= times[0] and times[-1] <= facts["t_stopped"]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert 15e6 <= statistics.median(gaps) <= 40e6, gaps
        expected = facts["scripted"][device]
        for s in samples:
            assert s["valid"] == HAS_ALL
            got = [s[k] for k in ("gpu_util_pct", "mem_util_pct", "mem_used_bytes", "mem_total_bytes")]
            assert got + [s["temperature_c"], s["power_mw"]] == expected
    assert facts["dropped"] == 0 and facts["errors"] == [0, ""]
    assert facts["threads"]["running"] == facts["threads"]["before"] + 1  # one sampler thread
    assert facts["threads"]["after"] == facts["threads"]["before"]
    assert facts["running"] == [1, 0]
    assert facts["init_depth_after"] == 0  # stop shut NVML down: init and shutdown balance
    assert facts["stop_s"] < 0.5


def test_timestamps_come_from_the_stagetrace_clock(libs):
    facts = play("fake_clock", libs["sampler"], libs["fake"])
    times = [s["t_ns"] for s in facts["samples"]]
    assert times and all(t < 10**9 for t in times)  # the fake clock's, not CLOCK_MONOTONIC's
    assert times[0] == 1_000_000 + 500  # midway between the two readings around the queries
    assert times == sorted(times)


def test_a_failing_query_invalidates_only_its_field(libs):
    facts = play("faults", libs["sampler"], libs["fake"])
    assert facts["start"] == ["OK", ""]
    assert facts["names"] == ["NVIDIA Fake A100", "NVIDIA Fake L4", ""]  # device 2's handle failed
    samples = facts["samples"]
    assert {s["device"] for s in samples} == {0, 1}  # no handle, no samples
    dev0 = [s for s in samples if s["device"] == 0]
    dev1 = [s for s in samples if s["device"] == 1]
    # device 0: power Not Supported -> never valid, asked once, everything else valid
    assert dev0 and all(s["valid"] == HAS_ALL & ~HAS_POWER and s["power_mw"] == 0 for s in dev0)
    assert all(s["temperature_c"] == 71 and s["gpu_util_pct"] == 97 for s in dev0)
    assert facts["calls"]["power0"] == 1 and facts["calls"]["temperature0"] >= len(dev0)
    # device 1: temperature fails with Unknown Error for a while -> invalid then, asked every round
    failing = [s for s in dev1 if s["t_ns"] < facts["t_cleared"]]
    healed = [s for s in dev1 if s["t_ns"] > facts["t_cleared"]]
    assert failing and healed
    assert all(s["valid"] == HAS_ALL & ~HAS_TEMPERATURE and s["temperature_c"] == 0 for s in failing)
    assert all(s["valid"] == HAS_ALL and s["temperature_c"] == 45 for s in healed)
    assert all(s["power_mw"] == 72_000 and s["mem_total_bytes"] == 24 * GIB for s in dev1)
    count, last = facts["errors"]
    assert count >= 2 + len(failing)  # the handle, power once, each failed temperature
    assert last == "nvmlDeviceGetTemperature(device 1): Unknown Error (NVML error 999)"


def test_a_full_ring_drops_new_samples_and_counts_them(libs):
    facts = play("overflow", libs["sampler"], libs["fake"], 5)
    assert facts["start"] == facts["restart"] == ["OK", ""]
    assert facts["max_pending"] == 5  # never more than the capacity
    first = facts["first_drain"]
    assert [s["device"] for s in first] == [0, 1, 0, 1, 0]  # the oldest kept: rounds 1, 2 and half of 3
    assert facts["refilled"] == 5  # a drain makes room; the sampler fills it again
    assert facts["kept"] == 10
    assert facts["dropped"] > 0 and facts["dropped"] + facts["kept"] == 2 * facts["rounds"]
    assert facts["dropped_after_restart"] == 0  # counters are per run


def test_stop_returns_at_once_however_long_the_period(libs):
    facts = play("stop_quick", libs["sampler"], libs["fake"])
    assert facts["start"] == ["OK", ""]
    assert facts["first_round_s"] < 2.5  # the first round at once, not after a period
    assert facts["stop_s"] < 0.5  # period is 5 s: the sampler waits on a condition, not a sleep
    assert facts["samples"] == 1  # the first round only
    assert facts["threads_after"] == facts["threads_before"]
    assert facts["stop_twice_and_idle"] == "fine"


def test_a_forked_child_starts_stopped_and_can_sample_on_its_own(libs):
    facts = play("fork", libs["sampler"], libs["fake"])
    child = facts["child"]
    assert child["running"] == 0 and child["pending"] == 0  # no thread crossed fork; the ring starts empty
    assert child["threads"] == 1
    assert child["restart"] == ["OK", ""] and child["samples"] > 0
    assert facts["parent_running"] == 1 and facts["parent_samples_after_fork"] > 0


def test_init_failure_names_the_nvml_error_and_leaves_nothing_running(libs):
    facts = play("init_fails", libs["sampler"], libs["fake"])
    status, why = facts["start"]
    assert status == "INIT_FAILED"
    assert why == "nvmlInit_v2 failed: Driver Not Loaded (NVML error 9)"
    assert facts["threads_after"] == facts["threads_before"] and facts["running"] == 0
    assert facts["shutdown_calls"] == 0  # nothing to shut down after a failed init
    assert facts["retry"] == ["OK", ""]  # init is retried by the next start (loading is not)


def test_other_start_failures_leave_nvml_shut_down(libs):
    facts = play("start_failures", libs["sampler"], libs["fake"])
    assert facts["no_devices"] == ["NO_DEVICES", "NVML sees no GPU (nvmlDeviceGetCount_v2 gave 0)"]
    assert facts["count_fails"] == [
        "COUNT_FAILED",
        "nvmlDeviceGetCount_v2 failed: Insufficient Permissions (NVML error 4)",
    ]
    assert facts["init_depth"] == 0 and facts["init_calls"] == facts["shutdown_calls"] == 2
    assert facts["bad_period"][0] == "BAD_ARGUMENT" and "period must be" in facts["bad_period"][1]
    assert facts["bad_capacity"][0] == "BAD_ARGUMENT"
    assert facts["already_running"] == ["ALREADY_RUNNING", "the NVML sampler is already running"]
    assert facts["still_running_after"] == 1
    assert facts["truncated_why"] == "nvmlIni"  # the reason fits the caller's buffer, NUL included
    assert facts["threads_after"] == facts["threads_before"]


def test_absent_library_is_reported_not_found_and_starts_nothing(libs, tmp_path):
    missing = str(tmp_path / "no-such" / "libnvidia-ml.so.1")
    facts = play("absent", libs["sampler"], missing)
    status, why = facts["start"]
    assert status == "NOT_FOUND"
    assert why.startswith(f"{missing} not found: ") and "No such file" in why
    assert facts["again"] == facts["start"]  # loading happens once: the answer is final
    assert facts["threads_after"] == facts["threads_before"] and facts["running"] == 0
    assert facts["devices"] == 0


def test_default_library_name_is_libnvidia_ml(libs):
    """Without STAGETRACE_NVML_LIB the sampler asks the loader for libnvidia-ml.so.1:
    not found on a machine without the driver, and sampling a real GPU with one."""
    facts = play("default_lib", libs["sampler"], None)
    status, why = facts["start"]
    if status == "NOT_FOUND":
        assert why.startswith("libnvidia-ml.so.1 not found: ")
    else:
        assert status in ("OK", "INIT_FAILED", "NO_DEVICES"), facts
    if status == "OK":  # a real driver: every sample is of a known device
        assert facts["samples"] and {s["device"] for s in facts["samples"]} <= set(range(facts["devices"]))


def test_a_library_lacking_one_function_is_not_used_at_all(libs):
    facts = play("absent", libs["sampler"], libs["fake_no_power"])
    status, why = facts["start"]
    assert status == "MISSING_SYMBOL"
    assert why == f"{libs['fake_no_power']} has no nvmlDeviceGetPowerUsage (NVIDIA driver too old?)"
    assert facts["init_calls"] == 0  # all or nothing: not even nvmlInit was called


def test_without_nvml_headers_start_says_so(build):
    facts = play("absent", build["plain"], "/nonexistent/libnvidia-ml.so.1")
    assert facts["start"] == ["NO_HEADERS", "unavailable: built without NVML headers"]
    assert facts["threads_after"] == facts["threads_before"] and facts["devices"] == 0


def sanitizer_runtime(name):
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.parametrize("sanitizer", ["address,undefined", "thread"])
def test_stress_under_sanitizers(libs, sanitizer, tmp_path):
    """harness.c's stress program: start/stop cycles with concurrent drains, under ASan+UBSan and TSan."""
    runtime = "libasan.so" if sanitizer.startswith("address") else "libtsan.so"
    if sanitizer_runtime(runtime) is None:
        pytest.skip(f"gcc has no {runtime}")
    exe = gcc(
        tmp_path / "harness",
        [
            os.path.join(HERE, "harness.c"),
            os.path.join(ROOT, "csrc", "st_nvml.c"),
            os.path.join(ROOT, "csrc", "st_clock.c"),
        ],
        f"-fsanitize={sanitizer}",
        "-fno-omit-frame-pointer",
        "-g",
        "-DHARNESS_MAIN",
        "-DST_HAVE_NVML",
        f"-I{libs['include']}",
        f"-I{ROOT}/csrc",
        "-ldl",
        "-lpthread",
    )
    env = dict(
        os.environ,
        STAGETRACE_NVML_LIB=libs["fake"],
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        TSAN_OPTIONS="halt_on_error=1",
    )
    done = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=120)
    if sanitizer == "thread" and "FATAL: ThreadSanitizer: unexpected memory mapping" in done.stderr:
        pytest.skip("TSan cannot run with this kernel's address-space layout (vm.mmap_rnd_bits)")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "samples drained" in done.stdout


# --- Scenarios (in the child interpreter) ---


class Sampler:
    """libstnvml_test.so and the fake NVML through ctypes."""

    def __init__(self, sampler_path, nvml_path):
        self.lib = lib = ctypes.CDLL(sampler_path)
        lib.st_nvml_start.argtypes = [ctypes.c_uint, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
        lib.st_nvml_drain.argtypes = [ctypes.POINTER(Sample), ctypes.c_size_t]
        lib.st_nvml_drain.restype = ctypes.c_size_t
        lib.st_nvml_pending.restype = ctypes.c_size_t
        lib.st_nvml_dropped.restype = ctypes.c_uint64
        lib.st_nvml_errors.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.st_nvml_errors.restype = ctypes.c_uint64
        lib.st_nvml_device_count.restype = ctypes.c_uint
        lib.st_nvml_device_name.argtypes = [ctypes.c_uint, ctypes.c_char_p, ctypes.c_size_t]
        lib.st_clock_now_ns.restype = ctypes.c_uint64
        lib.st_clock_set_fake.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
        self.fake = None
        if nvml_path != "None" and os.path.exists(nvml_path):
            # Loaded first, by the same path the sampler will dlopen: one copy, one state.
            self.fake = fake = ctypes.CDLL(nvml_path)
            fake.fake_nvml_set_device.argtypes = [
                ctypes.c_uint,
                ctypes.c_char_p,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.c_ulonglong,
                ctypes.c_ulonglong,
                ctypes.c_uint,
                ctypes.c_uint,
            ]
            fake.fake_nvml_set_failure.argtypes = [ctypes.c_uint, ctypes.c_char_p, ctypes.c_int]
            fake.fake_nvml_set_count.argtypes = [ctypes.c_int, ctypes.c_uint]
            fake.fake_nvml_calls.argtypes = [ctypes.c_uint, ctypes.c_char_p]
            fake.fake_nvml_calls.restype = ctypes.c_long
            fake.fake_nvml_init_depth.restype = ctypes.c_uint

    def start(self, period_ms, capacity, why_len=256):
        why = ctypes.create_string_buffer(why_len)
        status = self.lib.st_nvml_start(period_ms, capacity, why, why_len)
        return [STATUSES[status], why.value.decode()]

    def stop(self):
        t = time.perf_counter()
        self.lib.st_nvml_stop()
        return time.perf_counter() - t

    def now(self):
        return self.lib.st_clock_now_ns()

    def drain(self, limit=100000):
        out = (Sample * limit)()
        n = self.lib.st_nvml_drain(out, limit)
        return [{name: getattr(out[i], name) for name, _ in Sample._fields_} for i in range(n)]

    def errors(self):
        text = ctypes.create_string_buffer(256)
        return [self.lib.st_nvml_errors(text, 256), text.value.decode()]

    def names(self):
        text = ctypes.create_string_buffer(128)
        names = []
        for i in range(self.lib.st_nvml_device_count()):
            assert self.lib.st_nvml_device_name(i, text, 128) == 1
            names.append(text.value.decode())
        assert self.lib.st_nvml_device_name(len(names), text, 128) == 0
        return names

    def script(self, devices):
        self.fake.fake_nvml_set_count(0, len(devices))
        for i, (name, readings) in enumerate(devices):
            self.fake.fake_nvml_set_device(i, name.encode(), *readings)

    def calls(self, device, query):
        return self.fake.fake_nvml_calls(device, query.encode())


def threads():
    return len(os.listdir("/proc/self/task"))


TWO_GPUS = [
    ("NVIDIA Fake A100", [97, 40, 30 * GIB, 80 * GIB, 71, 310_500]),
    ("NVIDIA Fake L4", [12, 3, 2 * GIB, 24 * GIB, 45, 72_000]),
]


def scenario_steady(s, period_ms, seconds):
    s.script(TWO_GPUS)
    before = threads()
    t_before_start = s.now()
    start = s.start(int(period_ms), 1024)
    t_started = s.now()
    running = [s.lib.st_nvml_running()]
    time.sleep(float(seconds))
    during = threads()
    stop_s = s.stop()
    running.append(s.lib.st_nvml_running())
    return {
        "start": start,
        "names": s.names(),
        "t_before_start": t_before_start,
        "t_started": t_started,
        "t_stopped": s.now(),
        "samples": s.drain(),
        "scripted": [readings for _, readings in TWO_GPUS],
        "dropped": s.lib.st_nvml_dropped(),
        "errors": s.errors(),
        "threads": {"before": before, "running": during, "after": threads()},
        "running": running,
        "init_depth_after": s.fake.fake_nvml_init_depth(),
        "stop_s": stop_s,
    }


def scenario_fake_clock(s):
    s.script(TWO_GPUS[:1])
    s.lib.st_clock_set_fake(1_000_000, 1000)
    start = s.start(10, 64)
    time.sleep(0.05)
    s.stop()
    return {"start": start, "samples": s.drain()}


def scenario_faults(s):
    s.script(TWO_GPUS + [("NVIDIA Fake Lost", [0, 0, 0, 0, 0, 0])])
    s.fake.fake_nvml_set_failure(0, b"power", NOT_SUPPORTED)
    s.fake.fake_nvml_set_failure(1, b"temperature", UNKNOWN)
    s.fake.fake_nvml_set_failure(2, b"handle", UNKNOWN)
    start = s.start(10, 1024)
    time.sleep(0.1)
    errors = s.errors()
    t_cleared = s.now()
    s.fake.fake_nvml_set_failure(1, b"temperature", 0)
    time.sleep(0.1)
    s.stop()
    return {
        "start": start,
        "names": s.names(),
        "samples": s.drain(),
        "t_cleared": t_cleared,
        "errors": errors,
        "calls": {"power0": s.calls(0, "power"), "temperature0": s.calls(0, "temperature")},
    }


def scenario_overflow(s, capacity):
    s.script(TWO_GPUS)
    start = s.start(5, int(capacity))
    max_pending = 0
    deadline = time.monotonic() + 0.15
    while time.monotonic() < deadline:
        max_pending = max(max_pending, s.lib.st_nvml_pending())
        time.sleep(0.002)
    first = s.drain()  # mid-run: the oldest samples, and room again
    time.sleep(0.05)
    refilled = s.lib.st_nvml_pending()
    s.stop()
    rounds = s.calls(0, "utilization")  # one per round
    dropped = s.lib.st_nvml_dropped()
    rest = s.drain()
    restart = s.start(5000, int(capacity))  # one round only: nothing can overflow
    t = time.monotonic()
    while s.lib.st_nvml_pending() < 2 and time.monotonic() - t < 5:
        time.sleep(0.001)
    dropped_after_restart = s.lib.st_nvml_dropped()
    s.stop()
    return {
        "start": start,
        "restart": restart,
        "max_pending": max_pending,
        "first_drain": first,
        "kept": len(first) + len(rest),
        "dropped": dropped,
        "rounds": rounds,
        "refilled": refilled,
        "dropped_after_restart": dropped_after_restart,
    }


def scenario_stop_quick(s):
    s.script(TWO_GPUS[:1])
    before = threads()
    t = time.monotonic()
    start = s.start(5000, 16)
    while not s.lib.st_nvml_pending() and time.monotonic() - t < 5:
        time.sleep(0.001)
    first_round_s = time.monotonic() - t
    stop_s = s.stop()
    samples = len(s.drain())
    s.lib.st_nvml_stop()  # twice
    return {
        "start": start,
        "first_round_s": first_round_s,
        "stop_s": stop_s,
        "samples": samples,
        "threads_before": before,
        "threads_after": threads(),
        "stop_twice_and_idle": "fine",
    }


def scenario_fork(s):
    s.script(TWO_GPUS)
    assert s.start(5, 1024) == ["OK", ""]
    time.sleep(0.03)
    s.drain()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running Python's exit machinery
        child = {"running": s.lib.st_nvml_running(), "pending": s.lib.st_nvml_pending(), "threads": threads()}
        s.stop()  # nothing to join: returns
        child["restart"] = s.start(5, 64)
        time.sleep(0.03)
        s.stop()
        child["samples"] = len(s.drain())
        os.write(write, json.dumps(child).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    time.sleep(0.03)
    facts = {"child": child, "parent_running": s.lib.st_nvml_running(), "parent_samples_after_fork": len(s.drain())}
    s.stop()
    return facts


def scenario_init_fails(s):
    s.script(TWO_GPUS)
    s.fake.fake_nvml_set_init_result(DRIVER_NOT_LOADED)
    before = threads()
    start = s.start(20, 64)
    facts = {
        "start": start,
        "threads_before": before,
        "threads_after": threads(),
        "running": s.lib.st_nvml_running(),
        "shutdown_calls": s.calls(0, "shutdown"),
    }
    s.fake.fake_nvml_set_init_result(0)
    facts["retry"] = s.start(20, 64)
    s.stop()
    return facts


def scenario_start_failures(s):
    before = threads()
    s.fake.fake_nvml_set_count(0, 0)
    no_devices = s.start(20, 64)
    s.fake.fake_nvml_set_count(4, 2)  # NVML_ERROR_NO_PERMISSION
    count_fails = s.start(20, 64)
    facts = {
        "no_devices": no_devices,
        "count_fails": count_fails,
        "init_depth": s.fake.fake_nvml_init_depth(),
        "init_calls": s.calls(0, "init"),
        "shutdown_calls": s.calls(0, "shutdown"),
        "bad_period": s.start(0, 64),
        "bad_capacity": s.start(20, 0),
    }
    s.script(TWO_GPUS)
    s.fake.fake_nvml_set_init_result(DRIVER_NOT_LOADED)
    facts["truncated_why"] = s.start(20, 64, why_len=8)[1]
    s.fake.fake_nvml_set_init_result(0)
    assert s.start(20, 64) == ["OK", ""]
    facts["already_running"] = s.start(20, 64)
    facts["still_running_after"] = s.lib.st_nvml_running()
    s.stop()
    facts["threads_before"], facts["threads_after"] = before, threads()
    return facts


def scenario_absent(s):
    before = threads()
    start = s.start(20, 64)
    facts = {
        "start": start,
        "again": s.start(20, 64),
        "threads_before": before,
        "threads_after": threads(),
        "running": s.lib.st_nvml_running(),
        "devices": s.lib.st_nvml_device_count(),
    }
    if s.fake:
        facts["init_calls"] = s.calls(0, "init")
    s.stop()  # harmless when nothing started
    return facts


def scenario_default_lib(s):
    start = s.start(50, 256)
    facts = {"start": start, "devices": s.lib.st_nvml_device_count(), "samples": []}
    if start[0] == "OK":
        time.sleep(0.3)
        s.stop()
        facts["samples"] = s.drain()
        facts["names"] = s.names()
        facts["errors"] = s.errors()
    return facts


if __name__ == "__main__":
    scenario, sampler_path, nvml_path, *rest = sys.argv[1:]
    result = globals()[f"scenario_{scenario}"](Sampler(sampler_path, nvml_path), *rest)
    print(json.dumps(result))
