"""Build StageTrace's C core (csrc/) as ``stagetrace._native``.

The Python package is the ``comfy_nodes/`` folder, installed as ``stagetrace``;
``python setup.py build_ext --inplace`` (what ``install.py`` runs) drops the
extension next to it so ComfyUI can import the cloned folder directly.

NVTX v3 is header-only. Its headers are looked up, in order, at
$STAGETRACE_NVTX_INCLUDE, in NVIDIA's pip wheels in this Python's site-packages
(nvidia-nvtx-cu12: nvidia/nvtx/include; nvidia-nvtx for CUDA 13:
nvidia/cu13/include), under $CUDA_HOME/include and /usr/local/cuda/include.
Without them the extension still builds, with NVTX calls compiled out.

CUPTI's headers (cupti.h and the CUDA headers it includes) come the same way:
$STAGETRACE_CUPTI_INCLUDE, NVIDIA's wheels (nvidia-cuda-cupti, nvidia-cuda-runtime,
nvidia-cuda-crt), or a toolkit. Only the headers are used: libcupti is loaded
with dlopen at run time, so nothing links CUDA. Without them the extension
builds and reports GPU collection as unavailable.

NVML's nvml.h (for the utilisation/memory/temperature/power sampler) comes from
$STAGETRACE_NVML_INCLUDE, NVIDIA's nvidia-nvml-dev wheels or a toolkit;
libnvidia-ml is loaded with dlopen at run time.

STAGETRACE_FULL_API=1 builds against the full C API (vectorcall) instead of
the stable ABI (abi3); benchmarks/ uses it to measure what abi3 costs.
"""

import os
import sys
import sysconfig

from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCES = [
    "csrc/module.c",
    "csrc/bind_args.c",
    "csrc/bind_events.c",
    "csrc/bind_gpu.c",
    "csrc/bind_names.c",
    "csrc/bind_nvml.c",
    "csrc/bind_safetensors.c",
    "csrc/bind_spans.c",
    "csrc/bind_trace.c",
    "csrc/bind_tracescan.c",
    "csrc/st_clock.c",
    "csrc/st_cupti.c",
    "csrc/st_events.c",
    "csrc/st_fork.c",
    "csrc/st_gpu.c",
    "csrc/st_intern.c",
    "csrc/st_json.c",
    "csrc/st_jsonscan.c",
    "csrc/st_jsonw.c",
    "csrc/st_nvml.c",
    "csrc/st_nvtx.c",
    "csrc/st_safetensors.c",
    "csrc/st_sfgroup.c",
    "csrc/st_sink.c",
    "csrc/st_spanmath.c",
    "csrc/st_stage.c",
    "csrc/st_stagespan.c",
    "csrc/st_trace.c",
    "csrc/st_tracescan.c",
]
LIMITED_API_HEX = "0x030A0000"  # abi3 for CPython 3.10 and newer


def site_dirs():
    for key in ("purelib", "platlib"):
        site = sysconfig.get_paths().get(key)
        if site:
            yield site
    yield from sys.path  # isolated build environments put wheels here


def toolkit_roots():
    cuda = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    return ([cuda] if cuda else []) + ["/usr/local/cuda"]


def header_dirs(env: str, wheel_folders: tuple[str, ...]):
    """Folders that may hold a header, in order: $env; NVIDIA's wheels in this Python's site-packages
    (nvidia/<folder>/include for each of wheel_folders); a CUDA toolkit's include."""
    value = os.environ.get(env)
    if value:
        yield value
    for site in site_dirs():
        for folder in wheel_folders:
            yield os.path.join(site, "nvidia", folder, "include")
    for root in toolkit_roots():
        yield os.path.join(root, "include")


def first_with(candidates, header: str):
    return next((path for path in candidates if os.path.isfile(os.path.join(path, header))), None)


def nvtx_include_candidates():
    """nvidia-nvtx-cu12: nvidia/nvtx/include; nvidia-nvtx for CUDA 13: nvidia/cu13/include."""
    return header_dirs("STAGETRACE_NVTX_INCLUDE", ("nvtx", "cu13"))


def find_nvtx_include():
    return first_with(nvtx_include_candidates(), os.path.join("nvtx3", "nvToolsExt.h"))


def cupti_include_candidates():
    """Include-directory sets holding cupti.h and what it includes (cuda.h, crt/host_defines.h):
    $STAGETRACE_CUPTI_INCLUDE (os.pathsep-separated); NVIDIA's CUDA 13 wheels (nvidia-cuda-cupti,
    nvidia-cuda-runtime and nvidia-cuda-crt all install into nvidia/cu13/include); the CUDA 12
    wheels' separate folders; a toolkit's include and extras/CUPTI/include."""
    env = os.environ.get("STAGETRACE_CUPTI_INCLUDE")
    if env:
        yield env.split(os.pathsep)
    for site in site_dirs():
        yield [os.path.join(site, "nvidia", "cu13", "include")]
        nv = os.path.join(site, "nvidia")
        yield [os.path.join(nv, "cuda_cupti", "include"), os.path.join(nv, "cuda_runtime", "include"),
               os.path.join(nv, "cuda_nvcc", "include")]
    for root in toolkit_roots():
        yield [os.path.join(root, "include"), os.path.join(root, "extras", "CUPTI", "include")]


def find_cupti_include():
    needed = ("cupti.h", "cuda.h", os.path.join("crt", "host_defines.h"))
    for dirs in cupti_include_candidates():
        if all(any(os.path.isfile(os.path.join(d, f)) for d in dirs) for f in needed):
            return [d for d in dirs if os.path.isdir(d)]
    return None


def nvml_include_candidates():
    """nvidia-nvml-dev-cu12: nvidia/nvml_dev/include; nvidia-nvml-dev for CUDA 13: nvidia/cu13/include."""
    return header_dirs("STAGETRACE_NVML_INCLUDE", ("nvml_dev", "cu13"))


def find_nvml_include():
    return first_with(nvml_include_candidates(), "nvml.h")


def extension():
    full_api = os.environ.get("STAGETRACE_FULL_API") == "1"
    macros = [("_GNU_SOURCE", None)]
    include_dirs = ["csrc"]
    headers = (
        ("NVTX headers", "ST_HAVE_NVTX", find_nvtx_include(),
         "pip install nvidia-nvtx-cu12, or set STAGETRACE_NVTX_INCLUDE", "NVTX ranges"),
        ("CUPTI headers", "ST_HAVE_CUPTI", find_cupti_include(),
         "pip install nvidia-cuda-cupti nvidia-cuda-runtime nvidia-cuda-crt, or set STAGETRACE_CUPTI_INCLUDE",
         "GPU activity collection"),
        ("NVML header", "ST_HAVE_NVML", find_nvml_include(),
         "pip install nvidia-nvml-dev-cu12, or set STAGETRACE_NVML_INCLUDE", "GPU sampling"),
    )
    for what, macro, found, how, feature in headers:
        if found:
            dirs = found if isinstance(found, list) else [found]
            macros.append((macro, "1"))
            include_dirs.extend(dirs)
            print(f"stagetrace: {what} from {os.pathsep.join(dirs)}")
        else:
            print(f"stagetrace: no {what} found ({how}); building without {feature}")
    if not full_api:
        macros.append(("Py_LIMITED_API", LIMITED_API_HEX))
    return Extension(
        "stagetrace._native",
        sources=SOURCES,
        include_dirs=include_dirs,
        define_macros=macros,
        libraries=["dl", "pthread"],
        extra_compile_args=["-std=c11", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra"],
        py_limited_api=not full_api,
    )


def main():
    options = {}
    if os.environ.get("STAGETRACE_FULL_API") != "1":
        options["bdist_wheel"] = {"py_limited_api": "cp310"}
    setup(  # the packages are listed in pyproject.toml ([tool.setuptools])
        ext_modules=[extension()],
        options=options,
    )


# setuptools (pip, build_meta, `python setup.py`) runs this file as __main__;
# tests and benchmarks import it for find_nvtx_include() without building.
if __name__ == "__main__":
    main()
