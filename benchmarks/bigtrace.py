"""Big traces for the reading benchmarks and tests, written event by event (never held in memory).

``write_stagetrace(path, events)``: a trace the way StageTrace writes one with full per-kernel detail
(STAGETRACE_GPU_KERNELS): the prompt, its nodes, the load stages, a sampler whose steps each have a
GPU window (busy time, top kernels, copies) and ~2 000 kernel events on two streams, NVML counters and
ComfyUI log lines. ``write_torch_profiler(path, events)``: a foreign trace shaped like torch.profiler's
export: CPU ops, CUDA runtime calls, kernels and copies as complete events without StageTrace's stages,
flow events, process/thread metadata and a memory counter. Both are deterministic for a given count.
"""

from __future__ import annotations

import json
import random

KERNELS = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
           "ampere_bf16_s16816gemm_bf16_256x128_ldg8_f2f_stages_64x3_tn",
           "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false>>",
           "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float>>>",
           "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>",
           "sm80_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x32_stage4_warpsize2x2x1_tensor16x8x16")


KERNEL_JSON = [json.dumps(k) for k in KERNELS]


class _Writer:
    """Events into a file as one compact JSON array, a line each."""

    def __init__(self, f):
        self.f, self.count, self._first = f, 0, True

    def __call__(self, event: dict) -> None:
        self.raw(json.dumps(event, separators=(",", ":")))

    def raw(self, text: str) -> None:
        self.f.write(("\n" if self._first else ",\n") + text)
        self._first = False
        self.count += 1


def _x(cat, name, ts, dur, tid=1, **args) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": round(ts, 3), "dur": round(dur, 3), "pid": 1, "tid": tid,
            "args": args}


def write_stagetrace(path: str, events: int = 2_000_000, kernels_per_step: int = 2_000) -> int:
    """A StageTrace trace of about ``events`` events; the number written."""
    steps = max(1, events // (kernels_per_step + 3))
    step_us, t0 = 1_000_000.0, 10_000_000.0
    end = t0 + steps * step_us + 1e6
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"traceEvents":[')
        put = _Writer(f)
        put(_x("prompt", "queue_wait", -20_000, 20_000, prompt_id="big"))
        put(_x("prompt", "prompt", 0, end, prompt_id="big", outcome="ok"))
        put(_x("node", "CheckpointLoaderSimple", 100, 9e6, node_id="4", outcome="ok"))
        put(_x("model_load.read", "model.safetensors", 200, 8e6, path="/m/model.safetensors", file_bytes=6_000_000_000,
               fs_type="overlay", mount="/", storage_read_bytes=0))
        put(_x("model_load.build", "checkpoint", 8.1e6, 0.8e6, storage_read_bytes=6_000_000_000))
        put(_x("node", "KSampler", t0, steps * step_us, node_id="3", outcome="ok"))
        put(_x("sample", "euler", t0 + 1000, steps * step_us - 2000, steps=steps))
        rng = random.Random(14)
        for i in range(steps):
            ts = t0 + 1000 + i * step_us
            put(_x("sample.step", f"step {i + 1}/{steps}", ts, step_us - 10, step=i + 1, of=steps, sigma=1.0))
            put(_x("gpu", f"GPU: step {i + 1}/{steps}", ts + 10, step_us - 50, tid=0x67700000, stage="sample.step",
                   window=i + 1, busy_ms=800.0, window_ms=step_us / 1e3, kernels=kernels_per_step, kernel_ms=810.0,
                   top_kernels=[{"name": KERNELS[1], "count": 400, "ms": 500.0}],
                   copies={"htod": {"count": 4, "bytes": 200_000_000, "ms": 20.0}}))
            for k in range(kernels_per_step):  # the bulk, formatted directly: json.dumps per event is slow
                put.raw(f'{{"ph":"X","cat":"gpu.kernel","name":{KERNEL_JSON[k % len(KERNELS)]},'
                        f'"ts":{round(ts + 20 + k * 480, 3)},"dur":{round(100 + rng.random() * 300, 3)},"pid":1,'
                        f'"tid":{0x67700001 + k % 2},"args":{{"device":0,"stream":{7 + k % 2},"window":{i + 1}}}}}')
            put({"ph": "C", "name": "GPU 0 utilisation (%)", "pid": 1, "tid": 9, "ts": ts, "args": {"gpu": 80}})
        put({"ph": "i", "s": "p", "cat": "comfyui_log", "name": "loaded_partially", "ts": t0 - 10, "pid": 1, "tid": 1,
             "args": {"message": "loaded partially 9000 MB"}})
        put(_x("node", "VAEDecode", end - 9e5, 8e5, node_id="8", outcome="ok"))
        put(_x("vae_decode", "decode", end - 8.9e5, 7e5))
        while put.count < events:
            put({"ph": "C", "name": "GPU 0 memory (MB)", "pid": 1, "tid": 9, "ts": t0 + put.count,
                 "args": {"used": 9000 + put.count % 100}})
        f.write('\n],"otherData":')
        json.dump({"stagetrace_version": "0.1", "prompt_id": "big", "queue_wait_s": 0.02, "anatomy": [],
                   "warnings": [], "gpu": {"collection": "cupti", "devices": [{"name": "NVIDIA GeForce RTX 3090",
                                                                               "compute_capability": "8.6",
                                                                               "fp8_compute": False}]},
                   "process": {"prompt_index": 2, "reread_files": []}}, f)
        f.write("}\n")
    return put.count


def write_torch_profiler(path: str, events: int = 2_000_000) -> int:
    """A torch.profiler-shaped trace of about ``events`` events; the number written."""
    rng = random.Random(15)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"schemaVersion":1,"deviceProperties":[{"id":0,"name":"NVIDIA H100","totalGlobalMem":85000000000}],'
                '"traceEvents":[')
        put = _Writer(f)
        put({"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}})
        put({"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "stream 7"}})
        ts, i = 1_000_000.0, 0
        while put.count < events - 8:
            i += 1
            put.raw(f'{{"ph":"X","cat":"cpu_op","name":"aten::linear","pid":1,"tid":1,"ts":{round(ts, 3)},'
                    f'"dur":40.0,"args":{{"External id":{i},"Sequence number":{i},"Fwd thread id":0}}}}')
            put.raw(f'{{"ph":"X","cat":"cuda_runtime","name":"cudaLaunchKernel","pid":1,"tid":1,'
                    f'"ts":{round(ts + 5, 3)},"dur":6.0,"args":{{"External id":{i},"correlation":{i},"cbid":211}}}}')
            put.raw(f'{{"ph":"s","id":{i},"pid":1,"tid":1,"ts":{round(ts + 5, 3)},"cat":"ac2g","name":"ac2g"}}')
            put.raw(f'{{"ph":"X","cat":"kernel","name":{KERNEL_JSON[i % len(KERNELS)]},"pid":0,"tid":7,'
                    f'"ts":{round(ts + 30, 3)},"dur":{round(20 + rng.random() * 60, 3)},"args":{{"External id":{i},'
                    f'"device":0,"stream":7,"correlation":{i},"registers per thread":72,"grid":[128,1,1],'
                    f'"block":[256,1,1]}}}}')
            put.raw(f'{{"ph":"f","id":{i},"pid":0,"tid":7,"ts":{round(ts + 30, 3)},"cat":"ac2g","name":"ac2g",'
                    f'"bp":"e"}}')
            if i % 50 == 0:
                put({"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "pid": 0, "tid": 7,
                     "ts": round(ts + 90, 3), "dur": 300.0, "args": {"bytes": 4_000_000, "device": 0, "stream": 7}})
                put({"ph": "C", "name": "[memory]", "pid": 1, "tid": 1, "ts": round(ts, 3),
                     "args": {"Total Allocated": 1e9 + i, "Total Reserved": 2e9}})
            ts += 100.0
        f.write('\n],"traceName":"torch_trace.json","displayTimeUnit":"ms"}\n')
    return put.count
