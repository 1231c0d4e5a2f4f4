"""Mixed precision: bf16 autocast where the device runs bf16 natively, fp32 elsewhere."""
from __future__ import annotations

import contextlib

import torch


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products run natively (about twice as fast as fp32 for the LLM)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's probes (torch >= 2.3)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"auto" -> "bf16" or "fp32" for this device; other names are checked against it."""
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"
    if precision == "fp16" and kind != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device, this run is on {kind}: use bf16 or fp32")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return precision


def autocast(precision: str, device: torch.device | str):
    """A context that runs matrix products in the given precision (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)
