"""Launcher for the C++ GEGLU kernel (csrc/cpu/geglu.cpp)."""

from __future__ import annotations

import torch

from genai_fast.backends import memory
from genai_fast.backends.cpp import as_rows, extension, require_cpu


def geglu_fwd(x: torch.Tensor, approximate: str, num_threads: int | None = None) -> torch.Tensor:
    """x [*, 2H] fp32 CPU -> [*, H] contiguous: x[..., :H] * GELU(x[..., H:])."""
    require_cpu("x", x)
    if x.shape[-1] % 2:
        raise ValueError(f"x: expected an even last dimension (value and gate halves), got {x.shape[-1]}")
    H = x.shape[-1] // 2
    rows, R, row_stride = as_rows(x)
    out = memory.new_empty(x, (*x.shape[:-1], H))  # x is fp32 here
    extension().geglu_forward(rows.data_ptr(), (R - 1) * row_stride + 2 * H, row_stride, out.data_ptr(), out.numel(),
                              R, H, approximate == "tanh", num_threads or torch.get_num_threads())
    return out
