"""Build StageTrace's C extension in place; ComfyUI-Manager runs this file.

    python install.py      (with the Python that runs ComfyUI)

NVTX headers come from NVIDIA's nvidia-nvtx wheels (torch's CUDA builds
already install one) or a CUDA toolkit; when none is present the small
nvidia-nvtx-cu12 wheel is installed for its headers. Without any, the
extension builds without NVTX ranges.
"""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def have_nvtx_headers() -> bool:
    spec = importlib.util.spec_from_file_location("stagetrace_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs as __main__
    return module.find_nvtx_include() is not None


def main() -> int:
    if not have_nvtx_headers() and not os.environ.get("STAGETRACE_NO_NVTX_WHEEL"):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "nvidia-nvtx-cu12"], check=False)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT)
    if build.returncode != 0:
        print("StageTrace: the C extension did not build; ComfyUI still starts, without profiling.")
        return build.returncode
    print("StageTrace: built. Restart ComfyUI; every prompt is now profiled.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
