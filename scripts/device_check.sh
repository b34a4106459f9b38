#!/usr/bin/env bash
# scripts/device_check.sh: StageTrace's one prepared check for a lent GPU machine (an NVIDIA GPU with its driver,
# Python 3.12 with torch 2.11 built for CUDA 13, a C compiler, no network).
#
#   here, with PyPI:       scripts/device_check.sh --prepare
#       downloads what the GPU machine lacks into .device/ (ignored by git through .git/info/exclude): the wheels
#       in .device/wheels (Python 3.12, x86-64: torchsde and trampoline, av, which ComfyUI imports; the CUPTI
#       crt headers and nvml.h for the build) and ComfyUI's source archive (../shared/comfyui/ComfyUI-*.tar.gz, or
#       $COMFYUI_ARCHIVE). About 40 MB; carry .device with the repository.
#   there, without network: scripts/device_check.sh
#       1. installs .device/wheels into /tmp/st-site (nothing else is installed or changed);
#       2. builds the C extension in place (python3 setup.py build_ext --inplace);
#       3. runs `stagetrace doctor` (text and --json): its GPU probe must come back attributed with exact bytes;
#       4. runs the gpu tests (tests/test_gpu_real.py: CUPTI attribution, NVML, device facts, doctor's probe);
#       5. runs a tiny real ComfyUI prompt on the GPU with StageTrace loaded (the demo's SD1.5-shaped
#          checkpoint, 3 prompts of 8 steps), and `stagetrace report` on its last trace;
#       6. runs the GPU-facing test files with the real driver (tests/test_gpu.py, tests/test_nvml.py).
#   Everything goes under $OUT (default ./device-out): log.txt (every step's output), figures.txt (one line per
#   figure), doctor.json, doctor.txt, prompt-report.txt, prompt-report.json. Each step is bounded (timeout) and a
#   failed step never stops the next; the exit status is the number of failed steps (0: all passed).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE_DIR=${DEVICE_DIR:-$ROOT/.device}
PYTHON=${PYTHON:-python3}

prepare() {
    set -e
    mkdir -p "$DEVICE_DIR/wheels"
    local exclude
    exclude=$(git -C "$ROOT" rev-parse --git-path info/exclude)
    case $exclude in /*) ;; *) exclude=$ROOT/$exclude ;; esac
    mkdir -p "$(dirname "$exclude")"
    grep -qxF '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >>"$exclude"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEVICE_DIR/wheels" torchsde==0.2.6 trampoline==0.1.2 'av>=14.2.0,<20' \
        nvidia-cuda-crt==13.0.88 nvidia-nvml-dev-cu12
    local archive=${COMFYUI_ARCHIVE:-$(ls "$ROOT"/../shared/comfyui/ComfyUI-*.tar.gz 2>/dev/null | sort -V | tail -1)}
    [ -n "$archive" ] && [ -f "$archive" ] || { echo "no ComfyUI archive: set COMFYUI_ARCHIVE" >&2; exit 2; }
    cp "$archive" "$DEVICE_DIR/"
    du -sh "$DEVICE_DIR"
    echo "prepared $DEVICE_DIR: carry it (.device) with the repository and run scripts/device_check.sh there"
}

if [ "${1:-}" = "--prepare" ]; then
    prepare
    exit 0
fi

OUT=${OUT:-$ROOT/device-out}
mkdir -p "$OUT"
export OUT_DOCTOR=$OUT/doctor.txt
LOG=$OUT/log.txt
FIGURES=$OUT/figures.txt
: >"$LOG"
: >"$FIGURES"
FAILED=0
export PYTHONUNBUFFERED=1 CUDA_DEVICE_ORDER=${CUDA_DEVICE_ORDER:-PCI_BUS_ID}
cd "$ROOT"

figure() { echo "$*" | tee -a "$FIGURES"; }

# step NAME SECONDS COMMAND...: run bounded, its output into the log (and $STEP_OUT, read for the figures), count a
# failure
STEP_OUT=$(mktemp)
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (at most ${limit} s): $*" | tee -a "$LOG"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$STEP_OUT" 2>&1
    local status=$?
    cat "$STEP_OUT" >>"$LOG"
    figure "step $name: exit $status in $((SECONDS - started)) s"
    [ $status -eq 0 ] || FAILED=$((FAILED + 1))
    return $status
}

# --- 0. the machine -----------------------------------------------------------------------------------------
{
    echo "=== machine"
    uname -a
    timeout 20 nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu \
        --format=csv || echo "nvidia-smi failed"
    "$PYTHON" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), "devices", torch.cuda.device_count())'
    "$PYTHON" -c 'import sysconfig, os; h = os.path.join(sysconfig.get_paths()["include"], "Python.h");
print("Python.h", h, os.path.isfile(h))'
    command -v gcc cc || echo "no C compiler on PATH"
} >>"$LOG" 2>&1
figure "gpu: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
    paste -sd';' -)"

# --- 1. the carried wheels ------------------------------------------------------------------------------------
SITE=/tmp/st-site
if ls "$DEVICE_DIR"/wheels/*.whl >/dev/null 2>&1; then
    step install 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$DEVICE_DIR"/wheels/*.whl
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
    figure "step install: skipped (no $DEVICE_DIR/wheels: run scripts/device_check.sh --prepare where PyPI is reachable)"
fi
# cupti.h and cuda.h from the GPU machine's own wheels or toolkit, crt/host_defines.h from the carried wheel:
# every folder that may hold one of them, for setup.py's CUPTI header search.
STAGETRACE_CUPTI_INCLUDE=$("$PYTHON" - <<'EOF'
import os, sys, sysconfig
dirs = []
for site in [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path]:
    for sub in (("nvidia", "cu13", "include"), ("nvidia", "cuda_cupti", "include"), ("nvidia", "cuda_runtime", "include")):
        dirs.append(os.path.join(site or ".", *sub))
cuda = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
dirs += [os.path.join(cuda, "include"), os.path.join(cuda, "extras", "CUPTI", "include")]
print(os.pathsep.join(dict.fromkeys(d for d in dirs if os.path.isdir(d))))
EOF
)
export STAGETRACE_CUPTI_INCLUDE
echo "STAGETRACE_CUPTI_INCLUDE=$STAGETRACE_CUPTI_INCLUDE" >>"$LOG"

# --- 2. build -----------------------------------------------------------------------------------------------
step build 240 "$PYTHON" setup.py build_ext --inplace -q
"$PYTHON" -c 'from comfy_nodes import _native as n; from setup import find_cupti_include, find_nvml_include;
print("built: NVTX", n.NVTX_COMPILED, "| CUPTI headers", find_cupti_include(), "| nvml.h", find_nvml_include())' \
    >>"$LOG" 2>&1

# --- 3. ComfyUI and a model file, then stagetrace doctor -------------------------------------------------------
WORK=$(mktemp -d)
ARCHIVE=$(ls "$DEVICE_DIR"/ComfyUI-*.tar.gz 2>/dev/null | sort -V | tail -1)
COMFYUI=${COMFYUI_DIR:-}
if [ -z "$COMFYUI" ] && [ -n "$ARCHIVE" ]; then
    tar -xzf "$ARCHIVE" -C "$WORK" >>"$LOG" 2>&1
    COMFYUI=$(dirname "$(ls -d "$WORK"/*/main.py "$WORK"/*/*/main.py 2>/dev/null | head -1)")
fi
[ -n "$COMFYUI" ] && [ -f "$COMFYUI/main.py" ] || COMFYUI=""
figure "comfyui: ${COMFYUI:-none (set COMFYUI_DIR or carry .device/ComfyUI-*.tar.gz)}"
mkdir -p "$WORK/models/checkpoints" "$WORK/custom_nodes" "$WORK/traces"
ln -s "$ROOT" "$WORK/custom_nodes/StageTrace"
# the demo's tiny SD1.5-shaped checkpoint: doctor reads it past the page cache, the prompt loads it
"$PYTHON" -c 'import sys; from comfy_nodes.demo.tiny_checkpoint import write_tiny_sd15_checkpoint as w;
w(sys.argv[1])' "$WORK/models/checkpoints/tiny_sd15.safetensors" >>"$LOG" 2>&1
DOCTOR_ARGS=(--models-dir "$WORK/models")
[ -n "$COMFYUI" ] && DOCTOR_ARGS+=(--comfyui "$COMFYUI")
step doctor 200 bash -c '"$0" -m comfy_nodes doctor "${@}" >"$OUT_DOCTOR"; status=$?; cat "$OUT_DOCTOR"; exit $status' \
    "$PYTHON" "${DOCTOR_ARGS[@]}"
timeout 200 "$PYTHON" -m comfy_nodes doctor --json "${DOCTOR_ARGS[@]}" >"$OUT/doctor.json" 2>>"$LOG"
echo "doctor --json: exit $?" >>"$LOG"
"$PYTHON" - "$OUT/doctor.json" <<'PYEOF' | tee -a "$FIGURES"
import json, sys
try:
    result = json.load(open(sys.argv[1]))
except Exception as exc:
    print(f"doctor: no JSON ({exc})"); sys.exit(0)
checks = {c["id"]: c for c in result["checks"]}
print(f"doctor: exit {result['exit_code']}, {result['problems']} problem(s), {result['warnings']} warning(s), "
      f"{result['seconds']} s")
for cid in ("comfyui", "hooks", "extension", "nvtx", "driver", "torch", "devices", "device_choice", "cupti",
            "gpu_probe", "nvml", "models", "models_read"):
    c = checks.get(cid)
    if c:
        print(f"doctor {cid}: {c['status']}: {c['summary']}")
probe = (checks.get("gpu_probe") or {}).get("facts") or {}
if probe.get("htod"):
    print(f"probe: kernels {probe.get('kernels')}, htod {probe['htod']}, dtoh {probe.get('dtoh')}, "
          f"busy_ns {probe.get('busy_ns')}")
PYEOF

# --- 4. the gpu tests -------------------------------------------------------------------------------------------
step gpu-tests 300 "$PYTHON" -m pytest tests/test_gpu_real.py -m gpu -q -rs -p no:cacheprovider
grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed|skipped" "$STEP_OUT" | tail -8 | sed 's/^/gpu-tests: /' | tee -a "$FIGURES"

# --- 5. a tiny real ComfyUI prompt on the GPU --------------------------------------------------------------------
if [ -n "$COMFYUI" ]; then
    cat >"$WORK/prompt.py" <<'PYEOF'
"""Three tiny text-to-image prompts through ComfyUI's own executor on the GPU, StageTrace loaded."""
import json, os, sys, time
comfyui, work, root = sys.argv[1:4]
sys.path.insert(0, root)
from comfy_nodes.demo.harness import Harness, report, tiny_txt2img

class GpuHarness(Harness):
    def before_custom_nodes(self):
        import comfy.cli_args
        import torch
        # the demo's harness runs on the CPU; this one on the GPU (the CPU where there is none: a dry run)
        comfy.cli_args.args.cpu = not torch.cuda.is_available()

harness = GpuHarness(comfyui, work, (os.path.join(work, "custom_nodes"),))
started = time.perf_counter()
harness.boot()
boot_s = time.perf_counter() - started
import comfy.model_management as mm
runs = [harness.run(tiny_txt2img(harness.write_checkpoint(), seed=i, steps=8, filename_prefix=f"gpu{i}"),
                    f"device-{i}") for i in range(3)]
report(boot_s, runs, device=str(mm.get_torch_device()))
PYEOF
    step prompt 240 env STAGETRACE_OUTPUT_DIR="$WORK/traces" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
        "$PYTHON" "$WORK/prompt.py" "$COMFYUI" "$WORK" "$ROOT"
    TRACE=$(ls "$WORK"/traces/*.trace.json 2>/dev/null | sort | tail -1)
    if [ -n "$TRACE" ]; then
        timeout 60 "$PYTHON" -m comfy_nodes report "$TRACE" >"$OUT/prompt-report.txt" 2>>"$LOG"
        timeout 60 "$PYTHON" -m comfy_nodes report --json "$TRACE" >"$OUT/prompt-report.json" 2>>"$LOG"
        cp "$STEP_OUT" "$WORK/prompt.log"
        "$PYTHON" - "$TRACE" "$WORK/prompt.log" <<'PYEOF' | tee -a "$FIGURES"
import json, sys
trace = json.load(open(sys.argv[1]))
gpu = (trace.get("otherData") or {}).get("gpu") or {}
print("prompt trace gpu:", json.dumps({k: v for k, v in gpu.items() if not isinstance(v, (list, dict))}))
for line in open(sys.argv[2]):
    if line.startswith("HARNESS_RESULT "):
        result = json.loads(line[len("HARNESS_RESULT "):])
        print(f"prompt: device {result.get('device')}, boot {result['boot_s']:.1f} s, runs "
              + ", ".join(f"{r.get('seconds', 0):.3f} s ({'ok' if r.get('success') else 'failed'})"
                          for r in result["runs"]))
PYEOF
    else
        figure "prompt: no trace written in $WORK/traces"
        FAILED=$((FAILED + 1))
    fi
else
    figure "step prompt: skipped (no ComfyUI)"
fi

# --- 6. the GPU-facing test files with the real driver -----------------------------------------------------------
step gpu-files 240 "$PYTHON" -m pytest tests/test_gpu.py tests/test_nvml.py -q -rs -p no:cacheprovider
grep -E "^(FAILED|ERROR)|passed|failed" "$STEP_OUT" | tail -6 | sed 's/^/gpu-files: /' | tee -a "$FIGURES"

figure "failed steps: $FAILED"
exit "$FAILED"
