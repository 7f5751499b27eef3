"""Launcher for the C++ RMSNorm kernel (csrc/cpu/rms_norm.cpp): called twice per layer per generated token,
so it stays a few microseconds (positional arguments, no reshape when x is already [rows, D])."""

from __future__ import annotations

import torch

from genai_fast.backends import memory
from genai_fast.backends.cpp import as_rows, extension, require_cpu


def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor | None, eps: float, num_threads: int | None = None
                 ) -> torch.Tensor:
    """x [*, D] fp32 CPU with unit stride in D, weight [D] contiguous or None -> [*, D] contiguous."""
    require_cpu("x", x)
    if weight is not None:
        require_cpu("weight", weight, contiguous=True)
    D = x.shape[-1]
    rows, R, row_stride = as_rows(x)
    out = memory.new_empty(x, tuple(x.shape))  # x is fp32 here
    extension().rms_norm_forward(rows.data_ptr(), (R - 1) * row_stride + D, row_stride,
                                 0 if weight is None else weight.data_ptr(), 0 if weight is None else weight.numel(),
                                 out.data_ptr(), out.numel(), R, D, float(eps), num_threads or torch.get_num_threads())
    return out
