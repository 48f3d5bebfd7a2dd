"""Which floating-point formats a device computes natively, and what ``precision: auto`` means there.

bf16 pays off only where the hardware has bf16 units: CUDA GPUs that support it, and CPUs with AMX or AVX512-BF16.
Elsewhere (e.g. an AVX2-only CPU) torch emulates bf16 matmuls, 20-30x slower than fp32, so ``auto`` is fp32.
"""

from __future__ import annotations

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
"""The torch dtype of each ``train.precision`` name."""


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> 'bf16' where the device has native bf16, else 'fp32'; other names unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_supported(device) else "fp32"
