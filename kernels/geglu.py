"""Triton GEGLU: out[r, j] = x[r, j] * GELU(x[r, H + j]) in one pass over [rows, 2H] rows.

Grid (row blocks, column blocks): each program loads a BLOCK_R x BLOCK_H tile of both halves (the value
half and the gate half of the same rows), computes GELU in fp32 and stores the product in x's dtype.
The row stride is a runtime argument, so a view with padded rows is read in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory

# Module constants a jitted function reads must be constexpr (the interpreter accepts plain floats, the
# compiler does not).
SQRT_HALF = tl.constexpr(0.7071067811865476)
TANH_SCALE = tl.constexpr(1.5957691216057308)  # 2 sqrt(2 / pi)


@triton.jit
def _geglu_fwd_kernel(x_ptr, out_ptr, rows, H, stride_x, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
                      TANH: tl.constexpr):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_r < rows)[:, None] & (offs_h < H)[None, :]
    row = x_ptr + offs_r[:, None].to(tl.int64) * stride_x + offs_h[None, :]
    value = tl.load(row, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(row + H, mask=mask, other=0.0).to(tl.float32)
    if TANH:
        # x (1 + tanh u) / 2 = x sigmoid(2u): no cancellation for negative u.
        u = TANH_SCALE * (gate + 0.044715 * gate * gate * gate)
        gelu = gate / (1.0 + tl.exp(-u))
        gelu = tl.where(gate == -float("inf"), float("nan"), gelu)  # as torch: -inf * 0 = NaN
    else:
        gelu = gate * 0.5 * (1.0 + tl.math.erf(gate * SQRT_HALF))
    out = out_ptr + offs_r[:, None].to(tl.int64) * H + offs_h[None, :]
    tl.store(out, (value * gelu).to(out_ptr.dtype.element_ty), mask=mask)


def _tiles(H: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_H): 4096-element tiles, as wide as the half allows."""
    block_h = min(triton.next_power_of_2(H), 1024)
    return max(1, 4096 // block_h), block_h


def geglu_fwd(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """x [*, 2H] (CUDA, or CPU under TRITON_INTERPRET=1) -> [*, H] contiguous in x's dtype."""
    H = x.shape[-1] // 2
    rows = x.reshape(-1, 2 * H)
    if rows.stride(-1) != 1 or (rows.shape[0] > 1 and rows.stride(0) < 2 * H):
        rows = rows.contiguous()
    R = rows.shape[0]
    out = memory.empty((*x.shape[:-1], H), dtype=x.dtype, device=x.device)
    block_r, block_h = _tiles(H)
    grid = (triton.cdiv(R, block_r), triton.cdiv(H, block_h))
    _geglu_fwd_kernel[grid](rows, out, R, H, rows.stride(0) if R > 1 else 2 * H, BLOCK_R=block_r, BLOCK_H=block_h,
                            TANH=approximate == "tanh")
    return out
