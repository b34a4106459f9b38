"""`stagetrace doctor`: real runs of ``python -m comfy_nodes doctor`` against the real ComfyUI (tests/comfy_server.py's
lookup; skipped with the reason when there is none), its --json schema and exit codes; the GPU facts through the
NVML TEST DOUBLE (tests/nvml/fake_nvml.c, scripted with $FAKE_NVML_DEVICES since doctor reads NVML in a child
process: there is no GPU here); mountinfo, cgroup, meminfo and WSL parsing on this machine's files and on crafted
ones; the read throughput of a real safetensors file; auth plugins from tests/fixtures/auth_nodes; NVTX attached
through the real injection mechanism (tests/nvtx/recorder.c)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
from comfy_server import find_comfyui, skip_reason

from comfy_nodes.cli import doctor, doctor_gpu, doctor_system
from comfy_nodes.core.files import NotRegularFile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUSES = {"ok", "info", "warning", "problem", "skipped", "unavailable"}
IDS = {"comfyui", "hooks", "extension", "nvtx", "driver", "torch", "device_choice", "cupti", "gpu_probe", "nvml",
       "models", "models_read", "ram", "cgroup", "wsl", "auth"}
GB = 10**9
SEED_GPUS = "NVIDIA GeForce RTX 4080|8.9|16000000000|400000000|0;NVIDIA GeForce RTX 3090|8.6|24000000000|300000000|0"


def run_doctor(*args, env: dict | None = None, cwd: str = ROOT, timeout: float = 240):
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                                                             "CUDA_DEVICE_ORDER", "NVTX_INJECTION64_PATH")}
    proc = subprocess.run([sys.executable, "-m", "comfy_nodes", "doctor", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**base, **(env or {})})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def run_json(*args, **kw):
    proc = run_doctor(*args, "--json", **kw)
    result = json.loads(proc.stdout)
    assert proc.returncode == result["exit_code"], proc.stderr
    return result, {c["id"]: c for c in result["checks"]}


@pytest.fixture(scope="module")
def comfyui():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    return find_comfyui()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A models folder holding one real safetensors checkpoint-sized file (8 MB), written by safetensors."""
    np = pytest.importorskip("numpy")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    folder = tmp_path_factory.mktemp("models")
    (folder / "checkpoints").mkdir()
    path = folder / "checkpoints" / "tiny.safetensors"
    safetensors_numpy.save_file({"model.diffusion_model.w": np.arange(2 << 20, dtype=np.float32)}, str(path))
    return folder


def mirror_comfyui(comfyui: str, dest, custom_nodes: dict) -> str:
    """A ComfyUI folder whose every entry links to the real one, except custom_nodes: a real folder holding
    the given {name: target} links. Doctor reads the real ComfyUI through it."""
    dest = dest / "ComfyUI"
    dest.mkdir()
    for name in os.listdir(comfyui):
        if name != "custom_nodes":
            os.symlink(os.path.join(comfyui, name), dest / name)
    (dest / "custom_nodes").mkdir()
    for name, target in custom_nodes.items():
        os.symlink(target, dest / "custom_nodes" / name)
    return str(dest)


# --- Real runs against the real ComfyUI -------------------------------------------------------------------------


def test_json_run_against_the_real_comfyui(comfyui, model_dir, native):
    result, checks = run_json("--comfyui", comfyui, "--models-dir", str(model_dir))
    assert result["format_version"] == 1 and result["comfyui"] == comfyui
    assert IDS <= set(checks), IDS - set(checks)
    for c in result["checks"]:
        assert c["status"] in STATUSES and c["summary"] and isinstance(c["details"], list)
        assert isinstance(c["facts"], dict) and (c["fix"] is None or isinstance(c["fix"], str))
    problems = [c for c in result["checks"] if c["status"] == "problem"]
    assert result["problems"] == len(problems)
    assert result["exit_code"] == (1 if problems else 0)
    with open(os.path.join(comfyui, "comfyui_version.py")) as f:
        version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
    assert checks["comfyui"]["facts"]["version"] == version and version in checks["comfyui"]["summary"]
    assert checks["comfyui"]["facts"]["found_by"] == "--comfyui"
    assert checks["hooks"]["status"] == "ok" and "hook targets fit this ComfyUI" in checks["hooks"]["summary"]
    targets = {t["target"]: t for t in checks["hooks"]["facts"]["targets"]}
    assert targets["execution.execute"]["fits"] and "dynprompt" in targets["execution.execute"]["params"]
    assert checks["extension"]["status"] == "ok"
    assert checks["nvtx"]["status"] == "ok" and checks["nvtx"]["facts"]["attached"] is False
    # the models folder: this machine's filesystem under it, and the whole 8 MB file read past the cache
    size = os.path.getsize(model_dir / "checkpoints" / "tiny.safetensors")
    assert checks["models"]["facts"]["files"] == 1 and checks["models"]["facts"]["largest_bytes"] == size
    assert checks["models"]["facts"]["fs_type"] == doctor_system.mount_of(str(model_dir)).fs_type
    read = checks["models_read"]["facts"]
    assert read["bytes"] == size and read["mb_per_s"] > 0
    assert read["method"] in ("O_DIRECT", "posix_fadvise(DONTNEED)")
    assert checks["ram"]["facts"]["total"] == doctor_system.read_meminfo()["total"]


def test_text_run_says_the_version_and_the_exit_code(comfyui, model_dir):
    proc = run_doctor("--comfyui", comfyui, "--models-dir", str(model_dir))
    lines = proc.stdout.splitlines()
    assert lines[0] == "StageTrace doctor"
    assert any("ComfyUI 0.3" in line or "ComfyUI " in line for line in lines)
    assert re.search(rf"\(exit {proc.returncode}; ", lines[-1]), lines[-1]
    assert proc.returncode in (0, 1)
    # every check is one line with its status word, then its indented details
    assert any(line.split()[0] == "ok" for line in lines[1:-1] if line.strip())


def test_no_comfyui_is_a_problem_naming_the_folder(tmp_path, native):
    missing = str(tmp_path / "no-such-comfyui")
    result, checks = run_json("--comfyui", missing, "--models-dir", str(tmp_path))
    assert result["exit_code"] == 1
    assert checks["comfyui"]["status"] == "problem" and missing in checks["comfyui"]["summary"]
    assert "hooks" not in checks  # nothing to check without a ComfyUI; the rest still ran
    assert checks["extension"]["status"] == "ok" and checks["ram"]["status"] in ("ok", "warning")


def test_a_missing_models_folder_is_a_problem(comfyui, tmp_path):
    result, checks = run_json("--comfyui", comfyui, "--models-dir", str(tmp_path / "nope"))
    assert result["exit_code"] == 1
    assert checks["models"]["status"] == "problem" and "does not exist" in checks["models"]["summary"]


def test_bad_options_exit_2_without_a_traceback():
    proc = run_doctor("--cuda-device", "first")
    assert proc.returncode == 2 and "--cuda-device" in proc.stderr


def test_found_through_comfyui_dir(comfyui, tmp_path):
    result, checks = run_json("--models-dir", str(tmp_path), env={"COMFYUI_DIR": comfyui})
    assert checks["comfyui"]["facts"]["found_by"] == "$COMFYUI_DIR"
    assert result["comfyui"] == os.path.abspath(comfyui)


def test_found_as_the_custom_nodes_parent_with_auth_plugins(comfyui, tmp_path):
    auth = os.path.join(ROOT, "tests", "fixtures", "auth_nodes")
    mirror = mirror_comfyui(comfyui, tmp_path, {"StageTrace": ROOT, "login_like": os.path.join(auth, "login_like"),
                                                "basic_auth": os.path.join(auth, "basic_auth")})
    here = os.path.join(mirror, "custom_nodes", "StageTrace")
    result, checks = run_json("--models-dir", str(tmp_path), cwd=here, env={"PWD": here, "COMFYUI_DIR": ""})
    assert result["comfyui"] == mirror
    c = checks["comfyui"]
    assert c["status"] == "ok" and c["facts"]["found_by"] == "the ComfyUI whose custom_nodes holds this StageTrace"
    assert c["facts"]["stagetrace_installed"] == here
    plugins = {p["node"]: p for p in checks["auth"]["facts"]["plugins"]}
    assert set(plugins) == {"login_like", "basic_auth"} and checks["auth"]["status"] == "warning"
    assert plugins["login_like"]["answers"] == "redirects to a login page"
    assert plugins["basic_auth"]["answers"] == "answers 401" and "--user" in plugins["basic_auth"]["option"]


def drifted_comfyui(comfyui: str, tmp_path, edit) -> str:
    """The real ComfyUI with its execution.py copied and edited (the rest linked)."""
    mirror = mirror_comfyui(comfyui, tmp_path, {})
    os.unlink(os.path.join(mirror, "execution.py"))
    with open(os.path.join(comfyui, "execution.py")) as f:
        source = f.read()
    edited = edit(source)
    assert edited != source
    with open(os.path.join(mirror, "execution.py"), "w") as f:
        f.write(edited)
    return mirror


def test_a_hook_target_that_moved_takes_its_fallback(comfyui, tmp_path):
    mirror = drifted_comfyui(comfyui, tmp_path, lambda s: re.sub(r"def add_message\(self, event, data",
                                                                 "def add_message(self, kind, payload", s))
    result, checks = run_json("--comfyui", mirror, "--models-dir", str(tmp_path))
    hooks = checks["hooks"]
    assert hooks["status"] == "warning" and "execution.PromptExecutor.add_message" in hooks["summary"]
    assert "has no parameter named 'event', 'data'" in hooks["details"][0]
    assert "cached nodes" in hooks["details"][0]  # the fallback, in plain words


def test_a_comfyui_stagetrace_cannot_profile_is_a_problem(comfyui, tmp_path):
    mirror = drifted_comfyui(comfyui, tmp_path, lambda s: s.replace("async def execute_async(",
                                                                    "async def run_prompt_async("))
    result, checks = run_json("--comfyui", mirror, "--models-dir", str(tmp_path))
    assert checks["hooks"]["status"] == "problem" and result["exit_code"] == 1
    assert "StageTrace cannot profile it" in checks["hooks"]["summary"]


def test_known_auth_plugins_by_name(tmp_path):
    (tmp_path / "ComfyUI-Login").mkdir()
    (tmp_path / "ComfyUI-Login" / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (tmp_path / "plain_node").mkdir()
    (tmp_path / "plain_node" / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}  # 401 words, no middleware\n")
    os.mkfifo(tmp_path / "fifo_node.py")  # never read: a named pipe would block
    found = doctor.auth_plugins(str(tmp_path))
    assert [(p["node"], p["plugin"]) for p in found] == [("ComfyUI-Login", "ComfyUI-Login")]
    assert "--token" in found[0]["option"]


# --- GPU facts through the NVML test double ----------------------------------------------------------------------


def gpu_run(fake_nvml, tmp_path, *args, devices=SEED_GPUS, **env):
    return run_json("--comfyui", str(tmp_path / "no-comfyui"), "--models-dir", str(tmp_path), *args,
                    env={"STAGETRACE_NVML_LIB": fake_nvml, "FAKE_NVML_DEVICES": devices, **env})


def test_the_seed_machine_a_bigger_idle_gpu_left_unused(fake_nvml, tmp_path, native):
    result, checks = gpu_run(fake_nvml, tmp_path)
    assert checks["driver"]["status"] == "ok" and checks["driver"]["facts"]["driver_version"] == "580.95.05"
    devices = checks["devices"]["facts"]["devices"]
    assert [(d["name"], d["compute_capability"], d["total_memory_bytes"], d["free_bytes"]) for d in devices] == [
        ("NVIDIA GeForce RTX 4080", "8.9", 16 * GB, 15.6 * GB), ("NVIDIA GeForce RTX 3090", "8.6", 24 * GB, 23.7 * GB)]
    assert "(FP8 compute)" in checks["devices"]["details"][0]
    assert "(no FP8 compute)" in checks["devices"]["details"][1]
    choice = checks["device_choice"]
    assert choice["status"] == "warning" and choice["facts"]["index"] == 0
    assert "a bigger GPU is left unused: GPU 1 (NVIDIA GeForce RTX 3090, 24.0 GB)" in choice["summary"]
    unused = choice["facts"]["unused"]
    assert [(u["index"], u["bigger"], u["idle"]) for u in unused] == [(1, True, True)]
    assert "--cuda-device 1" in choice["fix"] and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in choice["fix"]
    assert checks["nvml"]["status"] == "ok" and checks["nvml"]["facts"]["samples"] >= 2
    assert len(checks["nvml"]["details"]) == 2 and "0 % busy" in checks["nvml"]["details"][1]
    # torch here is a CUDA build without a GPU: with NVML listing two, ComfyUI would run on the CPU
    assert checks["torch"]["status"] == "problem" and "sees no usable GPU" in checks["torch"]["summary"]
    assert result["exit_code"] == 1


def test_cuda_device_option_and_environment_choose_the_gpu(fake_nvml, tmp_path, native):
    _, checks = gpu_run(fake_nvml, tmp_path, "--cuda-device", "1")
    choice = checks["device_choice"]
    assert choice["facts"]["index"] == 1 and choice["facts"]["cuda_visible_devices"] == "1"
    assert choice["status"] == "ok" and "--cuda-device 1" in choice["details"][0]
    assert not [u for u in choice["facts"]["unused"] if u["bigger"]]  # the 16 GB one is smaller, only idle
    assert "idle" in choice["details"][-1] and "GPU 0" in choice["details"][-1]
    _, checks = gpu_run(fake_nvml, tmp_path, CUDA_VISIBLE_DEVICES="1", CUDA_DEVICE_ORDER="PCI_BUS_ID")
    choice = checks["device_choice"]
    assert choice["facts"]["index"] == 1 and choice["facts"]["exact"] is True
    assert "CUDA_VISIBLE_DEVICES='1'" in choice["details"][0]


def test_cuda_visible_devices_hiding_every_gpu_is_a_problem(fake_nvml, tmp_path, native):
    for value in ("", "-1", "none"):
        result, checks = gpu_run(fake_nvml, tmp_path, CUDA_VISIBLE_DEVICES=value)
        choice = checks["device_choice"]
        assert choice["status"] == "problem" and "hides every GPU" in choice["summary"], value
        assert result["exit_code"] == 1
    _, checks = gpu_run(fake_nvml, tmp_path, CUDA_VISIBLE_DEVICES="5")
    assert checks["device_choice"]["status"] == "problem"
    assert "asks for GPU 5, but only 2 GPU(s)" in checks["device_choice"]["summary"]


def test_torch_built_for_a_newer_cuda_than_the_driver_is_a_problem(fake_nvml, tmp_path, native):
    result, checks = gpu_run(fake_nvml, tmp_path, FAKE_NVML_CUDA_DRIVER="12040")
    assert "CUDA 12.4 at most" in checks["driver"]["summary"]
    torch_version = checks["torch"]["facts"]["cuda"]
    if torch_version and int(torch_version.split(".")[0]) >= 13:
        assert checks["torch"]["status"] == "problem" and "supports CUDA 12.4 at most" in checks["torch"]["summary"]
        assert result["exit_code"] == 1


def test_no_torch_is_a_problem_and_the_rest_still_runs(tmp_path, native):
    """torch hidden from the child processes (sitecustomize makes `import torch` fail): doctor says so."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # import torch fails\n")
    result, checks = run_json("--models-dir", str(tmp_path), env={"PYTHONPATH": str(hide)})
    assert checks["torch"]["status"] == "problem" and "torch is not installed" in checks["torch"]["summary"]
    assert checks["cupti"]["status"] in ("ok", "warning") and checks["extension"]["status"] == "ok"
    assert result["exit_code"] == 1


def test_a_driver_that_crashes_the_probe_does_not_crash_doctor(tmp_path, native):
    """A libnvidia-ml that aborts when loaded (a broken driver): the native probe dies, doctor says how and goes
    on."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the crashing library")
    source = tmp_path / "crash.c"
    source.write_text("#include <stdlib.h>\n__attribute__((constructor)) static void crash(void) { abort(); }\n"
                      "int nvmlInit_v2(void) { return 0; }\n")
    lib = tmp_path / "libcrash_nvml.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(source), "-o", str(lib)], check=True)
    result, checks = run_json("--models-dir", str(tmp_path), env={"STAGETRACE_NVML_LIB": str(lib)})
    assert checks["extension"]["status"] == "unavailable"
    assert "the native probe was killed by signal 6" in checks["extension"]["summary"]
    assert checks["driver"]["status"] == "unavailable" and checks["nvml"]["status"] == "skipped"
    assert checks["torch"]["status"] in ("ok", "problem") and checks["ram"]["status"] in ("ok", "warning")


def test_choose_device_rules():
    devices = [{"index": 0, "name": "A", "total_memory_bytes": 16 * GB, "used_bytes": GB, "gpu_util_pct": 0},
               {"index": 1, "name": "B", "total_memory_bytes": 24 * GB, "used_bytes": GB // 2, "gpu_util_pct": 0}]
    # torch's device 0 is the one NVML calls 1 (CUDA's fastest-first order): matched by name and memory
    choice = doctor_gpu.choose_device(devices, {}, torch_devices=[{"name": "B", "total_memory_bytes": 24 * GB}])
    assert choice["index"] == 1 and choice["exact"]
    assert doctor_gpu.unused_devices(devices, 1) == []  # the other is smaller and 6 % used: not idle
    # --default-device lists that GPU first
    choice = doctor_gpu.choose_device(devices, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, default_device=1)
    assert choice["index"] == 1 and choice["cuda_visible_devices"].startswith("1,0,2")
    # a UUID cannot be matched to NVML's list without asking the driver
    choice = doctor_gpu.choose_device(devices, {"CUDA_VISIBLE_DEVICES": "GPU-8f3e2a1b-1234"})
    assert choice["index"] is None and not choice["exact"] and "UUID" in choice["notes"][0]
    # --cpu: no GPU, whatever is here
    assert doctor_gpu.choose_device(devices, {}, cpu=True)["index"] is None
    # a container started without GPUs, and one with none visible
    choice = doctor_gpu.choose_device([], {"NVIDIA_VISIBLE_DEVICES": "void"}, container=True)
    assert "NVIDIA_VISIBLE_DEVICES='void'" in choice["warnings"][0] and "--gpus all" in choice["warnings"][0]
    choice = doctor_gpu.choose_device([], {}, container=True)
    assert not choice["warnings"] and not choice["problems"] and "--gpus all" in choice["notes"][0]
    choice = doctor_gpu.choose_device(devices, {"NVIDIA_VISIBLE_DEVICES": "1"}, container=True)
    assert "GPU(s) 1 to this container" in choice["notes"][0]
    assert doctor_gpu.parse_visible("0,1,-1,2") == ["0", "1"] and doctor_gpu.parse_visible(None) is None


def test_a_busy_gpu_beside_an_idle_one_of_the_same_size():
    devices = [{"index": 0, "name": "A", "total_memory_bytes": 24 * GB, "used_bytes": 20 * GB, "gpu_util_pct": 97},
               {"index": 1, "name": "A", "total_memory_bytes": 24 * GB, "used_bytes": GB // 4, "gpu_util_pct": 0}]
    unused = doctor_gpu.unused_devices(devices, 0)
    assert [(u["index"], u["bigger"], u["idle"]) for u in unused] == [(1, False, True)]
    assert "--cuda-device 1" in unused[0]["message"]
    assert doctor_gpu.unused_devices(devices, 1) == []  # the busy one is neither bigger nor idle


def test_torch_cuda_build_against_the_driver():
    assert "driver supports CUDA 12.4 at most" in doctor_gpu.cuda_mismatch("13.0", 12040)
    assert doctor_gpu.cuda_mismatch("12.8", 13000) is None and doctor_gpu.cuda_mismatch(None, 13000) is None
    assert doctor_gpu.has_fp8({"compute_capability": "8.9"}) and not doctor_gpu.has_fp8({"compute_capability": "8.6"})
    assert doctor_gpu.has_fp8({"compute_capability": "12.0"}) and doctor_gpu.has_fp8({}) is None


def test_a_running_comfyui_is_read_from_proc(tmp_path):
    """A process running this ComfyUI's main.py with --cuda-device: doctor reads its options and environment."""
    fake_main = tmp_path / "ComfyUI"
    fake_main.mkdir()
    (fake_main / "main.py").write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "main.py", "--cuda-device", "1", "--listen"], cwd=fake_main,
                            env={**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    try:
        deadline = time.monotonic() + 10
        found = None
        while found is None and time.monotonic() < deadline:
            found = doctor_gpu.comfyui_process_args(str(fake_main))
            time.sleep(0.05)
        assert found is not None and found["pid"] == proc.pid
        assert found["cuda_device"] == 1 and found["cpu"] is False
        assert found["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    finally:
        proc.kill()
        proc.wait()
    assert doctor_gpu.comfyui_process_args(str(tmp_path)) is None  # no main.py of that folder runs
    # --cpu with GPUs here: everything runs on the CPU
    devices = [{"index": 0, "name": "A", "total_memory_bytes": 16 * GB, "used_bytes": GB, "gpu_util_pct": 0}]
    check = doctor._device_choice_check(doctor_gpu.choose_device(devices, {}, cpu=True), devices)
    assert check.status == "warning" and "runs with --cpu although 1 GPU(s)" in check.summary


# --- NVTX through the real injection mechanism ---------------------------------------------------------------------


def test_nvtx_tool_attached_or_not(native, tmp_path):
    from nvtx_paths import nvtx_include

    include = nvtx_include()
    if include is None or shutil.which("gcc") is None or not native.NVTX_COMPILED:
        pytest.skip("no NVTX headers or gcc to build the recorder tool, or NVTX not compiled in")
    lib = tmp_path / "librecorder.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-std=c11", f"-I{include}",
                    os.path.join(ROOT, "tests", "nvtx", "recorder.c"), "-o", str(lib), "-lpthread"], check=True)
    env = {"STAGETRACE_NVTX_LOG": str(tmp_path / "nvtx.log")}
    _, checks = run_json("--models-dir", str(tmp_path), env={**env, "NVTX_INJECTION64_PATH": str(lib)})
    assert checks["nvtx"]["status"] == "ok" and checks["nvtx"]["facts"]["attached"] is True
    assert "NVTX_INJECTION64_PATH" in checks["nvtx"]["summary"]
    _, checks = run_json("--models-dir", str(tmp_path), env={"NVTX_INJECTION64_PATH": str(tmp_path / "nope.so")})
    assert checks["nvtx"]["status"] == "warning" and "loaded no tool" in checks["nvtx"]["summary"]


# --- Bounded checks and probes -----------------------------------------------------------------------------------


def test_a_check_that_hangs_or_raises_says_so_and_doctor_goes_on():
    release = threading.Event()
    started = time.monotonic()
    [hung] = doctor.bounded("slow", "slow check", lambda: release.wait(30), timeout=0.3)
    release.set()
    assert time.monotonic() - started < 5
    assert hung.status == "unavailable" and "did not finish within 0 s" in hung.summary

    def broken():
        raise ValueError("a field the kernel never writes")

    [failed] = doctor.bounded("broken", "broken check", broken)
    assert failed.status == "unavailable" and "ValueError: a field the kernel never writes" in failed.summary


def test_a_probe_that_does_not_answer_is_cut_off():
    probe = doctor.Probe("gpu", timeout=0.05)  # importing torch takes longer than this
    assert probe.get() is None and "did not answer within" in probe.error
    probe = doctor.Probe("no-such-part", timeout=30)
    assert probe.get() is None and "exited with status 2" in probe.error and "usage" in probe.error


# --- mountinfo, cgroups, meminfo, WSL -------------------------------------------------------------------------------


def test_mountinfo_of_this_machine():
    proc_mount = doctor_system.mount_of("/proc/self")
    assert proc_mount.fs_type == "proc" and proc_mount.mount_point == "/proc"
    here = doctor_system.mount_of(ROOT)
    assert os.path.realpath(ROOT).startswith(here.mount_point.rstrip("/") + "/") or here.mount_point == "/"
    assert os.stat(ROOT).st_dev == os.stat(here.mount_point).st_dev


MOUNTINFO = r"""22 1 0:21 / /proc rw,relatime - proc proc rw
27 1 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/l1,upperdir=/u,workdir=/w
80 27 0:60 / /mnt/c rw,noatime - 9p drvfs rw,aname=drvfs;path=C:\;uid=1000
81 27 0:61 / {models}/s3 rw - fuse.s3fs s3fs rw,user_id=0
82 27 0:62 /exports/models {models}/nfs\040share rw - nfs4 server:/exports/models rw,vers=4.2
this line is not a mount
83 27 0:63 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
"""


def test_mountinfo_crafted(tmp_path):
    models = tmp_path / "models"
    (models / "s3").mkdir(parents=True)
    (models / "nfs share").mkdir()
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO.replace("{models}", str(models)))
    assert doctor_system.mount_of(str(models / "s3" / "x.safetensors"), str(info)).fs_type == "fuse.s3fs"
    nfs = doctor_system.mount_of(str(models / "nfs share"), str(info))
    assert (nfs.fs_type, nfs.source, nfs.mount_point) == ("nfs4", "server:/exports/models", str(models / "nfs share"))
    assert doctor_system.mount_of(str(models), str(info)).fs_type == "overlay"
    assert doctor_system.mount_of("/mnt/c/Users", str(info)).fs_type == "9p"
    assert doctor_system.describe_filesystem("fuse.s3fs")[0] == "FUSE (s3fs)"
    assert doctor_system.describe_filesystem("nfs4")[0] == "NFS" and doctor_system.describe_filesystem("nfs4")[2]
    assert doctor_system.describe_filesystem("overlay")[2] and "bind mount" in doctor_system.describe_filesystem(
        "overlay")[1]
    assert doctor_system.describe_filesystem("ext4")[2] is False
    assert doctor_system.mount_of("/x", str(tmp_path / "missing")) is None
    # the models check names the slow filesystem in plain words
    checks = {c.id: c for c in doctor.check_models(str(models / "s3"), "--models-dir", 1 << 20, 1.0, str(info))}
    assert checks["models"].status == "warning" and "FUSE (s3fs)" in checks["models"].summary
    assert "user-space program" in checks["models"].details[0]
    assert checks["models_read"].status == "skipped"


def cgroup_tree(tmp_path, proc_lines: str, mount_line: str, files: dict) -> tuple[str, str, str]:
    root = tmp_path / "cgroupfs"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "cgroup").write_text(proc_lines)
    (tmp_path / "mountinfo").write_text(mount_line)
    return str(tmp_path / "cgroup"), str(tmp_path / "mountinfo"), str(root)


def test_cgroup_v2_crafted(tmp_path):
    proc, info, root = cgroup_tree(
        tmp_path, "0::/kubepods/pod1/ctr\n", "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        {"kubepods/pod1/ctr/memory.max": "max\n", "kubepods/pod1/ctr/memory.swap.max": "0\n",
         "kubepods/pod1/ctr/memory.current": "1048576\n", "kubepods/pod1/memory.max": "8589934592\n",
         "kubepods/memory.max": "max\n"})
    cg = doctor_system.cgroup_memory(proc, info, root)
    assert cg["version"] == 2 and cg["limit"] == 8 << 30 and cg["swap_limit"] == 0 and cg["usage"] == 1 << 20
    assert cg["where"] == os.path.join(root, "kubepods", "pod1") and cg["path"] == "/kubepods/pod1/ctr"
    # a cgroup namespace: the container sees its own cgroup as "/"
    proc, info, root = cgroup_tree(tmp_path / "ns", "0::/\n", "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
                                   {"memory.max": "4294967296\n"})
    assert doctor_system.cgroup_memory(proc, info, root)["limit"] == 4 << 30


def test_cgroup_v1_crafted(tmp_path):
    proc, info, root = cgroup_tree(
        tmp_path, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        {"memory.limit_in_bytes": "9223372036854771712\n", "docker/abc/memory.limit_in_bytes": "4294967296\n",
         "docker/abc/memory.memsw.limit_in_bytes": "6442450944\n", "docker/abc/memory.usage_in_bytes": "123\n"})
    cg = doctor_system.cgroup_memory(proc, info, root)
    assert cg["version"] == 1 and cg["limit"] == 4 << 30 and cg["swap_limit"] == 2 << 30 and cg["usage"] == 123
    # the memory check: a limit below the largest model file stops the run
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       65536000 kB\nMemAvailable:   60000000 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n")
    checks = {c.id: c for c in doctor.check_memory(6 * GB, str(meminfo), proc, info, "/nonexistent", root)}
    assert checks["cgroup"].status == "problem" and "OOM killer" in checks["cgroup"].summary
    assert checks["ram"].status == "ok" and checks["ram"].facts["total"] == 65536000 * 1024
    assert checks["wsl"].status == "ok"


def test_cgroup_and_memory_of_this_machine():
    if not os.path.exists("/proc/self/cgroup"):
        pytest.skip("no /proc/self/cgroup here")
    cg = doctor_system.cgroup_memory()
    assert cg["version"] in (1, 2, None)
    if cg["version"]:
        assert os.path.isdir(cg["where"]) and (cg["limit"] is None or cg["limit"] > 0)
    mem = doctor_system.read_meminfo()
    assert mem["total"] > 0 and 0 <= mem["available"] <= mem["total"]


def test_meminfo_and_wsl_crafted(tmp_path):
    bad = tmp_path / "meminfo"
    bad.write_text("MemFree: 1 kB\n")
    assert doctor_system.read_meminfo(str(bad)) is None
    assert doctor_system.read_meminfo(str(tmp_path / "missing")) is None
    release = tmp_path / "osrelease"
    for text, kind in (("5.15.153.1-microsoft-standard-WSL2", "WSL 2"), ("4.4.0-19041-Microsoft", "WSL 1"),
                       ("6.8.0-45-generic", None)):
        release.write_text(text + "\n")
        assert doctor_system.wsl(str(release), environ={}) == kind, text


# --- Reading one model file -----------------------------------------------------------------------------------------


def test_read_throughput_of_a_real_safetensors_file(model_dir):
    path = str(model_dir / "checkpoints" / "tiny.safetensors")
    size = os.path.getsize(path)
    read = doctor_system.read_throughput(path)
    assert read["bytes"] == size and read["mb_per_s"] > 0 and read["seconds"] > 0
    assert read["method"] in ("O_DIRECT", "posix_fadvise(DONTNEED)")
    if read["from_storage"] is not None and read["method"] == "O_DIRECT":
        assert read["from_storage"] >= size // 2  # past the page cache: the kernel counts it as read from storage
    capped = doctor_system.read_throughput(path, max_bytes=1 << 20)
    assert 1 << 20 <= capped["bytes"] < (1 << 20) + 4096


def test_read_throughput_refuses_a_named_pipe_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    [check] = doctor.bounded("read", "read", lambda: doctor_system.read_throughput(str(fifo)), timeout=10)
    assert check.status == "unavailable" and "NotRegularFile" in check.summary
    with pytest.raises(NotRegularFile):
        doctor_system.read_throughput(str(fifo))


def test_a_named_pipe_for_comfyuis_version_file_is_refused_without_blocking(tmp_path):
    from comfy_nodes.cli.doctor import comfyui_version

    (tmp_path / "comfyui_version.py").write_text('__version__ = "9.9.9"\n')
    assert comfyui_version(str(tmp_path)) == "9.9.9"
    os.remove(tmp_path / "comfyui_version.py")
    os.mkfifo(tmp_path / "comfyui_version.py")  # nobody writes it: an open() for reading would wait forever
    assert comfyui_version(str(tmp_path)) is None
