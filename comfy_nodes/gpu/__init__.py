"""The GPU side: CUPTI rounds attributed to stage windows (cupti.py), the GPU tracks recorded through the
C recorder (tracks.py), device facts and memory from torch (memory.py), the NVML sampler (nvml.py)."""
