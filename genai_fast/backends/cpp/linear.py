"""Launcher for the C++ decode linear kernel (csrc/cpu/linear.cpp).

Called once per linear layer per generated token, so it stays a few microseconds: positional arguments
to the extension, no reshape when x is already [M, K]."""

from __future__ import annotations

import torch

from genai_fast.backends import memory
from genai_fast.backends.cpp import as_rows, extension, require_cpu


def skinny_linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      num_threads: int | None = None) -> torch.Tensor:
    """x [*, K] with at most 16 rows in all (fp32, CPU), weight [N, K] contiguous, bias [N] or None
    -> [*, N], on num_threads threads (default: torch's intra-op thread count)."""
    require_cpu("x", x)
    require_cpu("weight", weight, contiguous=True)
    if bias is not None:
        require_cpu("bias", bias, contiguous=True)
    K, N = x.shape[-1], weight.shape[0]
    rows, M, row_stride = as_rows(x)
    out = memory.new_empty(x, (*x.shape[:-1], N))  # x is fp32 here
    extension().skinny_linear_forward(
        rows.data_ptr(), (M - 1) * row_stride + K, row_stride, weight.data_ptr(), weight.numel(),
        0 if bias is None else bias.data_ptr(), 0 if bias is None else bias.numel(), out.data_ptr(), out.numel(),
        M, K, N, num_threads or torch.get_num_threads())
    return out
