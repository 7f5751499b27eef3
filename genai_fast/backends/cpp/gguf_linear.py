"""Launcher for the C++ GGUF-block linear kernel (csrc/cpu/gguf_linear.cpp).

Called once per linear layer per generated token, so it stays a few microseconds: positional arguments
to the extension, no reshape when x is already [M, K]."""

from __future__ import annotations

import torch

from genai_fast.backends import memory
from genai_fast.backends.cpp import as_rows, extension, require_cpu


def gguf_linear_fwd(x: torch.Tensor, blocks: torch.Tensor, block_code: int, bias: torch.Tensor | None,
                    num_threads: int | None = None) -> torch.Tensor:
    """x [*, K] with at most 16 rows in all (fp32, CPU), blocks [N, K / 32 * block bytes] uint8 contiguous,
    block_code 0/1/2 for Q4_0/Q4_1/Q8_0, bias [N] or None -> [*, N], on num_threads threads (default:
    torch's intra-op thread count)."""
    require_cpu("x", x)
    require_cpu("blocks", blocks, torch.uint8, contiguous=True)
    if bias is not None:
        require_cpu("bias", bias, contiguous=True)
    K, N = x.shape[-1], blocks.shape[0]
    rows, M, row_stride = as_rows(x)
    out = memory.new_empty(x, (*x.shape[:-1], N))  # x is fp32 here
    extension().gguf_linear_forward(
        rows.data_ptr(), (M - 1) * row_stride + K, row_stride, blocks.data_ptr(), blocks.numel(), block_code,
        0 if bias is None else bias.data_ptr(), 0 if bias is None else bias.numel(), out.data_ptr(), out.numel(),
        M, K, N, num_threads or torch.get_num_threads())
    return out


def gguf_dequantize_cpp(blocks: torch.Tensor, block_code: int, K: int, num_threads: int = 1) -> torch.Tensor:
    """The kernel's own expansion of contiguous blocks [N, K / 32 * block bytes] -> [N, K] float32 (tests
    compare it with the gguf package's bit for bit)."""
    require_cpu("blocks", blocks, torch.uint8, contiguous=True)
    out = torch.empty((blocks.shape[0], K), dtype=torch.float32)
    extension().gguf_dequantize(blocks.data_ptr(), blocks.numel(), block_code, out.data_ptr(), out.numel(),
                                blocks.shape[0], K, num_threads)
    return out
