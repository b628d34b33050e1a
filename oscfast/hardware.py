"""What the machine can do, detected through torch (never assumed)."""
from __future__ import annotations

import platform
from functools import lru_cache
from typing import Any

import torch

__all__ = ["cpu_description", "native_bf16", "native_bf16_cpu"]


def _probe(name: str) -> bool:
    check = getattr(torch.cpu, name, None)
    try:
        return bool(check()) if callable(check) else False
    except RuntimeError:  # pragma: no cover - a build without the probe
        return False


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16), as torch sees it."""
    return _probe("_is_amx_tile_supported") or _probe("_is_avx512_bf16_supported")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has native bf16 arithmetic (CUDA: compute capability 8.0 or newer)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    return native_bf16_cpu()


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> dict[str, Any]:
    """The CPU model, torch's vector capability and the native-bf16 features (for every CPU
    speed number)."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512": _probe("_is_avx512_supported"),
        "avx512_bf16": _probe("_is_avx512_bf16_supported"),
        "amx": _probe("_is_amx_tile_supported"),
        "native_bf16": native_bf16_cpu(),
    }
