"""Build StageTrace's C extension in place; ComfyUI-Manager runs this file.

    python install.py      (with the Python that runs ComfyUI)

NVTX headers come from NVIDIA's nvidia-nvtx wheels (torch's CUDA builds
already install one) or a CUDA toolkit; when none is present the small
nvidia-nvtx-cu12 wheel is installed for its headers. Without any, the
extension builds without NVTX ranges. requirements.txt (prometheus_client, for
the metrics route) is installed when it is missing.

CUPTI's headers (for GPU activity) come from NVIDIA's wheels too: torch's CUDA
13 build installs cupti.h and cuda.h; the header they include from
nvidia-cuda-crt is installed here when it is the one piece missing. Without
them the extension builds and reports GPU collection as unavailable. nvml.h
(for the NVML sampler) comes from the small nvidia-nvml-dev-cu12 wheel.
"""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_script():
    spec = importlib.util.spec_from_file_location("stagetrace_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs as __main__
    return module


def only_crt_missing(setup) -> bool:
    """torch's CUDA 13 wheels are here (cupti.h, cuda.h) but not crt/host_defines.h."""
    for site in setup.site_dirs():
        include = os.path.join(site, "nvidia", "cu13", "include")
        if os.path.isfile(os.path.join(include, "cupti.h")) and os.path.isfile(os.path.join(include, "cuda.h")):
            return True
    return False


def main() -> int:
    setup = build_script()
    if setup.find_nvtx_include() is None and not os.environ.get("STAGETRACE_NO_NVTX_WHEEL"):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "nvidia-nvtx-cu12"], check=False)
    if setup.find_cupti_include() is None and only_crt_missing(setup) and not os.environ.get("STAGETRACE_NO_WHEELS"):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "nvidia-cuda-crt>=13,<14"], check=False)
    if setup.find_nvml_include() is None and not os.environ.get("STAGETRACE_NO_WHEELS"):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "nvidia-nvml-dev-cu12"], check=False)
    if importlib.util.find_spec("prometheus_client") is None and not os.environ.get("STAGETRACE_NO_WHEELS"):
        # requirements.txt: the metrics route (ComfyUI-Manager installs it too; without it the route says so)
        requirements = os.path.join(ROOT, "requirements.txt")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", requirements], check=False)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT)
    if build.returncode != 0:
        print("StageTrace: the C extension did not build; ComfyUI still starts, without profiling.")
        return build.returncode
    print("StageTrace: built. Restart ComfyUI; every prompt is now profiled.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
