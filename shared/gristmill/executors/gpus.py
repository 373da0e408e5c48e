"""What the GPUs of this machine are like, for turning `gpu_memory_gb` into a share of a card."""

from __future__ import annotations

import functools

__all__ = ["gpu_memory_gb"]


@functools.cache
def gpu_memory_gb() -> float | None:
    """The memory of the smallest visible GPU in GB, or None (no GPU, or no NVML to ask)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
            sizes = [
                pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                for i in range(count)
            ]
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None
    return min(sizes) / 1e9 if sizes else None
