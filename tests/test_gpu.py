"""GPU activity: CUPTI loading, back-off, and attribution of activity records to stage windows.

There is no GPU here. The real libcupti (NVIDIA's wheel) is loaded to check that it reports why it
cannot collect, without loading libcuda. Everything else runs through tests/cupti/fake_cupti.c, a
TEST DOUBLE of libcupti at the hardware boundary: it is compiled against NVIDIA's real cupti.h and
fills activity buffers with the real record structs, so StageTrace's buffer-completed callback,
record decoding (through the double's own record iterator) and attribution are the production code.

CUPTI is loaded once per process, so each scenario runs in a fresh interpreter."""

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from setup import find_cupti_include  # noqa: E402

# CUPTI's copy kinds (cupti_activity.h: CUpti_ActivityMemcpyKind)
HTOD, DTOH, HTOA, DTOD, HTOH, PTOP = 1, 2, 3, 8, 9, 10
MULTIPLE_SUBSCRIBERS, INSUFFICIENT_PRIVILEGES = 39, 35


def build_fake(out, own_clock: bool = True) -> str:
    """Compile the CUPTI test double into out; skips the test when headers or gcc are missing."""
    include = find_cupti_include()
    if include is None:
        pytest.skip("no CUPTI headers (pip install nvidia-cuda-cupti nvidia-cuda-runtime nvidia-cuda-crt)")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    lib = os.path.join(str(out), f"libfake_cupti_{'own' if own_clock else 'cupti'}_clock.so")
    extra = [] if own_clock else ["-DFAKE_NO_TIMESTAMP_CALLBACK"]
    subprocess.run(["gcc", "-std=c11", "-D_GNU_SOURCE", "-O1", "-Wall", "-Werror", "-fPIC", "-shared", "-pthread",
                    *extra, *(f"-I{d}" for d in include), os.path.join(ROOT, "tests", "cupti", "fake_cupti.c"),
                    "-o", lib],
                   check=True)
    return lib


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """The CUPTI test double, built twice: with and without cuptiActivityRegisterTimestampCallback."""
    out = tmp_path_factory.mktemp("cupti")
    return {"own_clock": build_fake(out, True), "cupti_clock": build_fake(out, False)}


PRELUDE = """
import ctypes, json, sys
from comfy_nodes import _native as n
U = ctypes.c_ulonglong
def out(value):
    print("RESULT " + json.dumps(value))
"""


def run_process(script: str, timeout: float = 60, **env) -> tuple[dict, str]:
    """Run script in a fresh interpreter: (its RESULT, its stderr)."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), proc.stderr


def run(script: str, **env) -> dict:
    return run_process(script, **env)[0]


def real_libcupti() -> str | None:
    site = sysconfig.get_paths()["purelib"]
    for rel in ("nvidia/cu13/lib/libcupti.so.13", "nvidia/cuda_cupti/lib/libcupti.so.12"):
        if os.path.isfile(os.path.join(site, rel)):
            return os.path.join(site, rel)
    return None


# --- The real libcupti, no driver ---


def test_real_libcupti_without_a_driver_says_why_and_leaves_libcuda_unloaded(native):
    path = real_libcupti()
    if path is None:
        pytest.skip("NVIDIA's libcupti wheel (nvidia-cuda-cupti) is not installed")
    if ctypes.util.find_library("cuda"):
        pytest.skip("this machine has a CUDA driver: the no-driver case cannot be checked here")
    result = run(f"""
        ok, status, reason = n.cupti_start([{path!r}])
        maps = open("/proc/self/maps").read()
        out({{"ok": ok, "status": status, "reason": reason, "info": n.cupti_info(),
              "libcupti": "libcupti" in maps, "libcuda": "libcuda" in maps}})
    """)
    assert result["ok"] is False
    assert result["status"] == "a CUPTI call failed"
    assert result["reason"].startswith("cupti")  # names the call that failed and CUPTI's error
    assert result["info"]["errors"] >= 1 and result["info"]["last_error"].startswith("cupti")
    assert result["libcupti"] and result["info"]["library"] == path and result["info"]["version"] > 0
    assert result["libcuda"] is False
    assert result["info"]["active"] is False


def test_no_library_at_all(native):
    result = run("""
        out(n.cupti_start(["/nonexistent/libcupti.so.13", "libcupti-not-here.so"]))
    """)
    ok, status, reason = result
    assert not ok and status == "CUPTI library not found"
    assert "/nonexistent/libcupti.so.13" in reason and "libcupti-not-here.so" in reason


# --- Back-off ---


def test_backs_off_when_another_subscriber_holds_cupti(native, fakes):
    result = run(f"""
        fake = ctypes.CDLL({fakes["own_clock"]!r})
        fake.fake_cupti_set_subscribe_result({MULTIPLE_SUBSCRIBERS})
        ok, status, reason = n.cupti_start([{fakes["own_clock"]!r}])
        wid = n.gpu_window_open(1, n.intern("node"), n.now_ns())  # windows and spans still work
        n.gpu_window_close(wid, n.now_ns())
        out({{"ok": ok, "status": status, "reason": reason, "enabled": fake.fake_cupti_enabled_kinds(),
              "active": n.cupti_info()["active"], "window": wid}})
    """)
    assert result["ok"] is False and result["status"] == "another CUPTI client is active"
    assert "Nsight Systems" in result["reason"] and "NVTX" in result["reason"]
    assert result["enabled"] == 0 and result["active"] is False and result["window"] > 0


def test_a_failed_enable_undoes_everything(native, fakes):
    result = run(f"""
        fake = ctypes.CDLL({fakes["own_clock"]!r})
        fake.fake_cupti_set_enable_result({INSUFFICIENT_PRIVILEGES})
        ok, status, reason = n.cupti_start([{fakes["own_clock"]!r}])
        out({{"ok": ok, "reason": reason, "enabled": fake.fake_cupti_enabled_kinds(),
              "subscribed": fake.fake_cupti_subscribed()}})
    """)
    assert result["ok"] is False
    assert "cuptiActivityEnable(CONCURRENT_KERNEL)" in result["reason"]
    assert "INSUFFICIENT_PRIVILEGES" in result["reason"]
    assert result["enabled"] == 0 and result["subscribed"] == 0


# --- Callbacks from inside CUPTI's own calls, and the checking of every call ---


@pytest.mark.parametrize("mode", [1, 2], ids=["on the calling thread", "on a cupti worker the call waits for"])
def test_callbacks_run_from_inside_control_calls_do_not_deadlock(native, fakes, mode):
    """CUPTI may call buffer requested/completed synchronously from inside Subscribe, RegisterCallbacks,
    Enable/Disable, FlushAll and Unsubscribe. A lock StageTrace held across those calls and took again in a
    callback hung here (and on a real GPU); the timeout turns such a regression into a failure."""
    lib = fakes["own_clock"]
    script = f"""
        fake = ctypes.CDLL({lib!r})
        fake.fake_cupti_set_reentry({mode})
        ok, _, reason = n.cupti_start([{lib!r}])
        assert ok, reason
        t = n.now_ns()
        w = n.gpu_window_open(1, n.intern("node"), t)
        n.gpu_window_close(w, t + 10**6)
        fake.fake_cupti_kernel(10, U(t + 10), U(t + 20), 0, 7, b"inside")
        n.cupti_flush()
        report = n.gpu_report()
        n.cupti_stop()
        out({{"reentries": fake.fake_cupti_reentries(), "info": n.cupti_info(), "report": report}})
    """
    try:
        result = run(script, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: a CUPTI callback run from inside a CUPTI call waited for a lock its caller held")
    # register, 3 enables, flush, 3 disables, flush, unsubscribe: each called back into StageTrace
    assert result["reentries"] == 10
    (window,) = result["report"]
    assert window["kernels"] == 1 and window["top_kernels"][0][0] == "inside"
    info = result["info"]
    assert info["active"] is False and info["errors"] == 0 and info["buffers_refused"] == 0
    assert info["buffers_completed"] >= result["reentries"]


def test_a_failed_cupti_call_is_logged_once_with_cuptis_error_string(native, fakes):
    lib = fakes["own_clock"]
    result, stderr = run_process(f"""
        fake = ctypes.CDLL({lib!r})
        ok, _, reason = n.cupti_start([{lib!r}])
        assert ok, reason
        fake.fake_cupti_set_flush_result(13)  # CUPTI_ERROR_NOT_READY
        n.cupti_flush()
        n.cupti_flush()
        out(n.cupti_info())
    """)
    assert result["errors"] == 2  # every failure counted
    assert result["last_error"] == "cuptiActivityFlushAll(FLUSH_FORCED): CUPTI_ERROR_NOT_READY"
    lines = [line for line in stderr.splitlines() if "CUPTI" in line]
    assert lines == ["stagetrace: CUPTI call cuptiActivityFlushAll(FLUSH_FORCED) failed: CUPTI_ERROR_NOT_READY"]


def test_the_checking_macro_wraps_every_cupti_call():
    """No CUPTI entry point is called except through CUPTI_CALL (cuptiGetResultString is the checker's own)."""
    import re
    source = open(os.path.join(ROOT, "csrc", "st_cupti.c")).read()
    direct = [m.group(0) for m in re.finditer(r"api\.cupti\w+\s*\(", source)
              if not m.group(0).startswith("api.cuptiGetResultString")]
    assert direct == []
    assert "cupti_check(api.fn(__VA_ARGS__)" in source


# --- Attribution through the buffer-completed path ---

ATTRIBUTION = """
fake = ctypes.CDLL(LIB)
ok, status, reason = n.cupti_start([LIB], buffer_bytes=BUFFER)
assert ok, reason
t = n.now_ns() + 1_000_000  # windows a little ahead of now: all times below are relative to t
ms = 1_000_000
prompt = n.gpu_window_open(0, n.intern("prompt"), t)
node_a = n.gpu_window_open(1, n.intern("node A"), t + 10 * ms)
step = n.gpu_window_open(7, n.intern("step 1"), t + 20 * ms)
n.gpu_window_close(step, t + 40 * ms)
n.gpu_window_close(node_a, t + 50 * ms)
node_b = n.gpu_window_open(1, n.intern("node B"), t + 60 * ms)
n.gpu_window_close(node_b, t + 80 * ms)
n.gpu_window_close(prompt, t + 100 * ms)
K, C = KERNEL, COPY
# inside the step: two overlapping kernels on two streams, one after a gap
fake.fake_cupti_kernel(K, U(t + 21 * ms), U(t + 25 * ms), 0, 7, b"gemm")
fake.fake_cupti_kernel(K, U(t + 23 * ms), U(t + 27 * ms), 0, 8, b"gemm")
fake.fake_cupti_kernel(K, U(t + 30 * ms), U(t + 31 * ms), 0, 7, b"softmax")
# copies of each direction inside node A but outside the step
for kind, size in ((HTOD, 4096), (DTOH, 512), (DTOD, 256), (HTOH, 128), (PTOP, 64), (HTOA, 32)):
    fake.fake_cupti_memcpy(C, kind, U(size), U(t + 12 * ms), U(t + 13 * ms), 7)
fake.fake_cupti_memset(U(1000), U(t + 14 * ms), U(t + 15 * ms), 7)
# a kernel crossing the end of node A: belongs to the prompt
fake.fake_cupti_kernel(K, U(t + 45 * ms), U(t + 55 * ms), 0, 7, b"crossing")
# node B, then a kernel after the prompt (outside every window)
fake.fake_cupti_kernel(K, U(t + 61 * ms), U(t + 62 * ms), 0, 7, b"vae_conv")
fake.fake_cupti_kernel(K, U(t + 200 * ms), U(t + 201 * ms), 0, 7, b"late")
fake.fake_cupti_other_record()  # a kind StageTrace did not enable: skipped
fake.fake_cupti_set_dropped(U(3))  # CUPTI says it lost 3 records
n.cupti_flush()
report = {r["window"]: r for r in n.gpu_report()}
out({"windows": {"prompt": prompt, "node_a": node_a, "step": step, "node_b": node_b},
     "report": report, "counters": n.gpu_counters(), "info": n.cupti_info()})
"""


def attribution(fakes, clock="own_clock", kernel=10, copy=6, buffer=1 << 20):
    script = (ATTRIBUTION.replace("LIB", repr(fakes[clock])).replace("BUFFER", str(buffer))
              .replace("KERNEL", str(kernel)).replace("COPY", str(copy)))
    script = f"HTOD, DTOH, HTOA, DTOD, HTOH, PTOP = {HTOD}, {DTOH}, {HTOA}, {DTOD}, {HTOH}, {PTOP}\n" + script
    return run(script)


def check_attribution(result):
    w, report = result["windows"], {int(k): v for k, v in result["report"].items()}
    ms = 1_000_000
    step = report[w["step"]]
    assert step["kernels"] == 3
    assert step["kernel_ns"] == 4 * ms + 4 * ms + 1 * ms
    assert step["busy_ns"] == 6 * ms + 1 * ms  # the union: [21, 27] and [30, 31]
    assert step["top_kernels"][0][:2] == ["gemm", 2] and step["top_kernels"][0][2] == 8 * ms
    assert step["top_kernels"][1] == ["softmax", 1, 1 * ms]
    assert step["parent"] == w["node_a"] and step["stage"] == 7
    node_a = report[w["node_a"]]
    assert node_a["kernels"] == 0
    assert node_a["copies"] == {"htod": {"count": 1, "bytes": 4096, "ns": ms},
                                "dtoh": {"count": 1, "bytes": 512, "ns": ms},
                                "dtod": {"count": 1, "bytes": 256, "ns": ms},
                                "htoh": {"count": 1, "bytes": 128, "ns": ms},
                                "ptop": {"count": 1, "bytes": 64, "ns": ms},
                                "other": {"count": 1, "bytes": 32, "ns": ms}}
    assert (node_a["memsets"], node_a["memset_bytes"]) == (1, 1000)
    prompt = report[w["prompt"]]
    assert prompt["kernels"] == 1 and prompt["top_kernels"][0][0] == "crossing"
    assert report[w["node_b"]]["top_kernels"][0][0] == "vae_conv"
    outside = report[0]
    assert outside["kernels"] == 1 and outside["top_kernels"][0][0] == "late"
    counters = result["counters"]
    assert counters["records"] == 3 + 6 + 1 + 1 + 1 + 1
    assert counters["unattributed"] == 1 and counters["dropped_records"] == 3
    assert result["info"]["records"] == counters["records"]


def test_attribution_with_the_newest_record_structs(native, fakes):
    result = attribution(fakes, kernel=10, copy=6)
    assert result["info"]["own_clock"] is True
    check_attribution(result)


def test_attribution_with_the_older_record_structs(native, fakes):
    check_attribution(attribution(fakes, kernel=9, copy=5))


def test_records_on_cuptis_own_clock_are_moved_to_the_trace_clock(native, fakes):
    result = attribution(fakes, clock="cupti_clock")
    assert result["info"]["own_clock"] is False
    assert abs(result["info"]["clock_offset_ns"] + 1_000_000_000_000) < 5_000_000  # the double's clock: +1000 s
    check_attribution(result)


def test_small_buffers_are_walked_one_after_another(native, fakes):
    result = attribution(fakes, buffer=512)  # a few records a buffer
    check_attribution(result)
    assert result["info"]["buffers_completed"] >= 4


def test_a_full_buffer_pool_drops_records_and_counts_them(native, fakes):
    result = run(f"""
        fake = ctypes.CDLL({fakes["own_clock"]!r})
        fake.fake_cupti_set_hold(1)  # CUPTI keeps full buffers: StageTrace's cap is reached
        ok, _, reason = n.cupti_start([{fakes["own_clock"]!r}], buffer_bytes=1024, max_buffers=2)
        assert ok, reason
        t = n.now_ns()
        w = n.gpu_window_open(1, n.intern("node"), t)
        n.gpu_window_close(w, t + 10**9)
        for i in range(40):
            fake.fake_cupti_kernel(10, U(t + 1000 * i), U(t + 1000 * i + 500), 0, 7, b"k")
        n.cupti_flush()
        report = n.gpu_report()
        out({{"kernels": sum(r["kernels"] for r in report), "counters": n.gpu_counters(), "info": n.cupti_info(),
              "refused": fake.fake_cupti_refused()}})
    """)
    info, counters = result["info"], result["counters"]
    assert info["buffers_refused"] > 0 and result["refused"] > 0
    assert result["kernels"] + counters["dropped_records"] == 40
    assert 0 < result["kernels"] < 40


def test_window_table_cap_counts_what_it_refuses(native, fakes):
    result = run("""
        n.gpu_set_window_capacity(4)
        n.gpu_reset()
        ids = [n.gpu_window_open(1, 0, 1000 * i) for i in range(6)]
        out({"ids": ids, "counters": n.gpu_counters()})
    """)
    slots = [i & 0xFFFFFF for i in result["ids"]]  # an id: the round's low 8 bits, then the slot + 1
    assert slots[:4] == [1, 2, 3, 4] and result["ids"][4:] == [0, 0]
    assert len({i >> 24 for i in result["ids"][:4]}) == 1
    assert result["counters"]["dropped_windows"] == 2


def test_wrapper_spans_open_windows_that_collect_their_kernels(native, fakes):
    result = run(f"""
        fake = ctypes.CDLL({fakes["own_clock"]!r})
        ok, _, reason = n.cupti_start([{fakes["own_clock"]!r}])
        assert ok, reason
        n.gpu_set_windows(True)
        def node_body():
            t = n.now_ns()
            fake.fake_cupti_kernel(10, U(t + 10), U(t + 20), 0, 7, b"inside")
            return 42
        wrapped = n.Wrapper(node_body, 1, "KSampler")
        assert wrapped() == 42
        n.cupti_flush()
        out(n.gpu_report())
    """)
    (window,) = result
    assert window["stage"] == 1 and window["kernels"] == 1 and window["top_kernels"][0][0] == "inside"
    assert window["t1"] > window["t0"] > 0


def test_a_window_id_from_before_a_reset_closes_nothing_of_the_new_round(native, fakes):
    """A prompt's window opened before the round's reset sits in the slot the new round hands out again (to a
    node, on the same thread): closing the old id must leave the node's window open, so its kernel stays in it."""
    lib = fakes["own_clock"]
    result = run(f"""
        fake = ctypes.CDLL({lib!r})
        ok, _, reason = n.cupti_start([{lib!r}])
        assert ok, reason
        n.gpu_reset()
        t = n.now_ns()
        prompt = n.gpu_window_open(0, n.intern("prompt"), t)
        n.gpu_reset()  # the round begins after the prompt's window opened
        node = n.gpu_window_open(1, n.intern("node"), t + 10)
        n.gpu_window_close(prompt, t + 20)  # the old round's id
        n.gpu_window_close(node, t + 1000)
        fake.fake_cupti_kernel(10, U(t + 500), U(t + 600), 0, 7, b"in node")
        n.cupti_flush()
        out({{"ids": [prompt, node], "report": n.gpu_report()}})
    """)
    prompt, node = result["ids"]
    assert prompt & 0xFFFFFF == node & 0xFFFFFF and prompt != node  # the same slot, two rounds
    (window,) = result["report"]
    assert window["window"] == result["ids"][1] and window["kernels"] == 1
    assert window["t1"] - window["t0"] == 990


def test_stop_disables_and_unsubscribes(native, fakes):
    result = run(f"""
        fake = ctypes.CDLL({fakes["own_clock"]!r})
        ok, _, _ = n.cupti_start([{fakes["own_clock"]!r}])
        before = fake.fake_cupti_enabled_kinds()
        n.cupti_stop()
        out({{"ok": ok, "before": before, "after": fake.fake_cupti_enabled_kinds(),
              "subscribed": fake.fake_cupti_subscribed(), "active": n.cupti_info()["active"]}})
    """)
    assert result["ok"] and result["before"] != 0
    assert result["after"] == 0 and result["subscribed"] == 0 and result["active"] is False


# --- The Python layer: rounds, trace events, kernel events on request ---


def test_prompt_rounds_give_gpu_tracks_aligned_with_the_stages(native, fakes):
    result = run(f"""
        import os
        from comfy_nodes.gpu.cupti import GpuCollection
        from comfy_nodes.gpu.tracks import record_kernels, record_windows
        fake = ctypes.CDLL({fakes["own_clock"]!r})
        gpu = GpuCollection(n, enabled=True, kernels=3)
        assert gpu.active, gpu.reason
        rounds = []
        for prompt in range(2):
            gpu.round_begin()
            def sampler():
                t = n.now_ns()
                for i in range(4):
                    fake.fake_cupti_kernel(10, U(t + 1000 * i), U(t + 1000 * i + 500), 0, 7 + i % 2, b"gemm")
                fake.fake_cupti_memcpy(6, 1, U(1 << 20), U(t + 100), U(t + 200), 7)
            n.Wrapper(sampler, 1, "KSampler")()
            reports, meta, detail = gpu.round_end()
            n.drain()  # the round's own node span: not on the GPU track
            record_windows(n, reports)
            windows = n.drain().events(1)
            record_kernels(n, detail)
            rounds.append({{"meta": meta, "windows": windows, "records": n.drain().events(1)}})
        out(rounds)
    """, STAGETRACE_CUPTI_LIB=fakes["own_clock"])
    for r in result:  # each prompt is its own round: nothing carried over
        meta = r["meta"]
        assert meta["collection"] == "cupti" and meta["records"] == 5
        assert meta["kernel_events"] == 3 and meta["kernel_events_dropped"] == 2
        (track,) = [e for e in r["windows"] if e["ph"] == "X"]
        assert track["name"] == "GPU: KSampler" and track["cat"] == "gpu"
        assert track["args"]["kernels"] == 4 and track["args"]["copies"]["htod"]["bytes"] == 1 << 20
        assert track["args"]["stage"] == "node" and 0 < track["args"]["busy_fraction"] <= 1
        names = {e["args"]["name"] for e in r["windows"] + r["records"]
                 if e["ph"] == "M" and e["name"] == "thread_name"}
        assert {"GPU (CUPTI)", "GPU stream 7", "GPU stream 8"} <= names
        kernels = [e for e in r["records"] if e["ph"] == "X"]
        assert len(kernels) == 3 and all(e["dur"] == 0.5 for e in kernels if e["cat"] == "gpu.kernel")


class FakeCuda:
    """TEST DOUBLE of torch.cuda for a machine without a GPU: the figures an RTX 3090 would give."""

    def __init__(self):
        self.allocated, self.peak, self.resets = 2 << 30, 2 << 30, 0

    def is_initialized(self):
        return True

    def device_count(self):
        return 1

    def current_device(self):
        return 0

    def get_device_properties(self, index):
        import types

        return types.SimpleNamespace(name="NVIDIA GeForce RTX 3090", major=8, minor=6, total_memory=24 << 30)

    def mem_get_info(self, device):
        return (24 << 30) - self.allocated - (1 << 30), 24 << 30

    def memory_allocated(self, device):
        return self.allocated

    def memory_reserved(self, device):
        return self.allocated + (1 << 30)

    def max_memory_allocated(self, device):
        return self.peak

    def reset_peak_memory_stats(self, device):
        self.resets += 1
        self.peak = self.allocated


def test_device_facts_and_memory_per_node_from_torch(monkeypatch, native):
    torch = pytest.importorskip("torch")
    from comfy_nodes.gpu.memory import TorchMemory, device_facts

    native.drain()
    fake = FakeCuda()
    monkeypatch.setattr(torch, "cuda", fake)
    (facts,) = device_facts()
    assert facts["name"] == "NVIDIA GeForce RTX 3090" and facts["compute_capability"] == "8.6"
    assert facts["fp8_compute"] is False  # sm_86: FP8 weights are cast on every layer
    assert facts["total_memory_bytes"] == 24 << 30 and facts["cuda_runtime"] == torch.version.cuda
    memory = TorchMemory(native)
    memory.sample(1_000, "4", "start")
    fake.allocated = fake.peak = 20 << 30  # the checkpoint lands on the GPU
    memory.sample(2_000, "4", "end")
    memory.sample(3_000, "3", "start")
    fake.peak = 22 << 30
    fake.allocated = 21 << 30
    memory.sample(4_000, "3", "end")
    assert fake.resets == 2
    assert memory.peaks() == {"4": 20 << 30, "3": 22 << 30}
    counters = [e for e in native.drain().events(1) if e["ph"] == "C"]  # recorded through the C recorder
    assert [c["ts"] for c in counters] == [1.0, 2.0, 3.0, 4.0]
    assert counters[1]["args"]["allocated"] == (20 << 30) / 1e6 and counters[1]["ph"] == "C"


def test_no_cuda_in_use_means_no_facts_and_no_samples(native):
    from comfy_nodes.gpu.memory import TorchMemory, device_facts

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA is in use in this process")
    native.drain()
    memory = TorchMemory(native)
    memory.sample(1, "1", "start")
    assert device_facts() == [] and memory.samples == [] and native.drain().events(1) == []


# --- NVML: counter tracks and device facts (tests/nvml/fake_nvml.c: TEST DOUBLE of libnvidia-ml) ---


def test_nvml_sampler_gives_counter_tracks_and_device_facts(native, fake_nvml):
    result = run(f"""
        import time
        from comfy_nodes.gpu.memory import merge_devices
        from comfy_nodes.gpu.nvml import NvmlSampler
        fake = ctypes.CDLL({fake_nvml!r})
        fake.fake_nvml_set_device(0, b"NVIDIA GeForce RTX 3090", 0, 3, U(23 << 30), U(24 << 30), 71, 350000)
        sampler = NvmlSampler(n, enabled=True, hz=50)
        assert sampler.running, sampler.reason
        time.sleep(0.1)
        sampler.round_begin()  # what came before the prompt is dropped
        t0 = n.now_ns()
        time.sleep(0.3)
        n.drain()
        meta = sampler.round_end()  # the samples become counter events in the C recorder
        out({{"t0": t0, "events": n.drain().events(1), "meta": meta, "devices": merge_devices([], meta),
             "latest": n.nvml_latest(), "pending": n.nvml_info()["pending"]}})
    """, STAGETRACE_NVML_LIB=fake_nvml)
    events, meta = result["events"], result["meta"]
    assert meta["sampler"] == "nvml" and meta["dropped"] == 0 and 8 <= meta["samples"] <= 20
    util = [e for e in events if e["name"] == "GPU 0 utilisation (%)"]
    assert util and all(e["args"] == {"gpu": 0, "memory": 3} and e["ph"] == "C" for e in util)
    assert all(e["ts"] * 1e3 >= result["t0"] - 25e6 for e in events)  # none from before the round
    (used,) = {e["args"]["used"] for e in events if e["name"] == "GPU 0 memory used (MB)"}
    assert used == (23 << 30) / 1e6
    assert {e["args"]["power"] for e in events if e["name"] == "GPU 0 power (W)"} == {350.0}
    # the newest sample stays readable after the drain (what a metrics scrape shows between prompts)
    ((t_ns, device, gpu, memory, used, total, temperature, power),) = result["latest"]
    assert (device, gpu, memory, used, total, temperature, power) == (0, 0, 3, 23 << 30, 24 << 30, 71, 350000)
    assert t_ns >= result["t0"]
    (device,) = result["devices"]
    assert device["name"] == "NVIDIA GeForce RTX 3090" and device["compute_capability"] == "8.6"
    assert device["fp8_compute"] is False and device["driver_version"] == "580.95.05"
    assert device["total_memory_bytes"] == 24 << 30 and device["cuda_driver_version"] == 13000


def test_nvml_absent_is_said_and_changes_nothing(native):
    result = run("""
        from comfy_nodes.gpu.nvml import NvmlSampler
        sampler = NvmlSampler(n, enabled=True)
        n.drain()
        out({"running": sampler.running, "reason": sampler.reason, "end": sampler.round_end(),
             "recorded": len(n.drain())})
    """, STAGETRACE_NVML_LIB="/nonexistent/libnvidia-ml.so.1")
    assert result["running"] is False and "not found" in result["reason"]
    assert result["end"] == {"sampler": "unavailable", "reason": result["reason"]} and result["recorded"] == 0
