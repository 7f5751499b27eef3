"""Triton SwiGLU for the LLM decode step on a GPU: out = silu(gate) * up from the fused gate/up projection's
rows [gate | up], in one launch instead of torch's two (silu, then the product).

It keeps torch's roundings, so the engine's tokens stay HF's: silu is computed in fp32 and rounded to the
row's dtype, then the product is computed in fp32 and rounded again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory


@triton.jit
def _swiglu_kernel(h_ptr, out_ptr, rows, H, stride_h, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_r < rows)[:, None] & (offs_h < H)[None, :]
    row = h_ptr + offs_r[:, None].to(tl.int64) * stride_h + offs_h[None, :]
    gate = tl.load(row, mask=mask, other=0.0)
    up = tl.load(row + H, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    out = (act.to(tl.float32) * up.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs_r[:, None].to(tl.int64) * H + offs_h[None, :], out, mask=mask)


def swiglu_fwd(h: torch.Tensor) -> torch.Tensor:
    """h [R, 2H] (gate columns, then up columns; unit stride in the row; CUDA, or CPU under TRITON_INTERPRET=1)
    -> silu(gate) * up [R, H] contiguous in h's dtype."""
    if h.dim() != 2 or h.shape[1] % 2 or h.stride(1) != 1:
        raise ValueError(f"h: expected [R, 2H] with unit stride in the row, got {tuple(h.shape)} strides "
                         f"{h.stride()}")
    R, H = h.shape[0], h.shape[1] // 2
    out = memory.empty((R, H), dtype=h.dtype, device=h.device)
    block_h = min(triton.next_power_of_2(max(H, 1)), 1024)
    block_r = max(1, 4096 // block_h)
    if R and H:
        _swiglu_kernel[(triton.cdiv(R, block_r), triton.cdiv(H, block_h))](
            h, out, R, H, h.stride(0) if R > 1 else 2 * H, BLOCK_R=block_r, BLOCK_H=block_h)
    return out
