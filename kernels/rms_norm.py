"""Triton RMSNorm over the last dimension: one program per block of rows, the whole row in registers.

For the LLM decode step on a GPU. There, torch's composite (cast, square, mean, add, rsqrt, multiply, cast,
scale) is eight kernels per norm and a step runs two norms per layer. Inside a CUDA graph each kernel
costs a few microseconds of latency whatever its size. This is one kernel. It keeps HF's LlamaRMSNorm
arithmetic: fp32 statistics, the normalised row rounded to x's dtype, then scaled by the weight (product in
fp32, rounded once to x's dtype, as a torch elementwise multiply in that dtype).

`add_rms_norm_fwd` also folds in the residual add that precedes every norm of a pre-norm decoder
(h = h + delta; x = norm(h)): one kernel instead of two, two of a layer's dozen. The sum is rounded to h's
dtype before the norm reads it, as torch's add and then the norm do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory

MAX_D = 16384  # a row lives in registers: BLOCK_D = next_pow2(D) fp32 values per program


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, w_ptr, out_ptr, rows, D, stride_x, eps, HAS_WEIGHT: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < D
    mask = (offs_r < rows)[:, None] & d_valid[None, :]
    x = tl.load(x_ptr + offs_r[:, None].to(tl.int64) * stride_x + offs_d[None, :], mask=mask, other=0.0)
    h = x.to(tl.float32)
    mean_square = tl.sum(h * h, axis=1) / D
    y = (h * (1.0 / tl.sqrt_rn(mean_square + eps))[:, None]).to(out_ptr.dtype.element_ty)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + offs_d, mask=d_valid, other=0.0).to(tl.float32)
        y = (w[None, :] * y.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs_r[:, None].to(tl.int64) * D + offs_d[None, :], y, mask=mask)


def _check_weight(weight: torch.Tensor | None, D: int) -> None:
    """The kernels read D weights (a shape check only: no device sync on the decode step)."""
    if weight is not None and tuple(weight.shape) != (D,):
        raise ValueError(f"weight: expected shape ({D},), got {tuple(weight.shape)}")


def _tiles(D: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_D, num_warps): rows of 2048+ values get their own program, shorter rows share one."""
    block_d = triton.next_power_of_2(D)
    block_r = max(1, min(16, 2048 // block_d))
    warps = 4 if block_d * block_r <= 4096 else 8 if block_d <= 8192 else 16
    return block_r, block_d, warps


def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x [*, D] (CUDA, or CPU under TRITON_INTERPRET=1; D <= MAX_D), weight [D] or None -> [*, D] contiguous
    in x's dtype. Rows are read in place when D has unit stride and the rows are evenly spaced."""
    D = x.shape[-1]
    if D > MAX_D:
        raise ValueError(f"x: the Triton RMSNorm takes rows of at most {MAX_D} values, got {D}")
    _check_weight(weight, D)
    rows = x.reshape(-1, D)
    if rows.stride(-1) != 1 or (rows.shape[0] > 1 and rows.stride(0) < D):
        rows = rows.contiguous()
    R = rows.shape[0]
    out = memory.empty(x.shape, dtype=x.dtype, device=x.device)
    if R == 0:
        return out
    w = weight.contiguous() if weight is not None else rows  # a placeholder pointer when there is no weight
    block_r, block_d, warps = _tiles(D)
    _rms_norm_fwd_kernel[(triton.cdiv(R, block_r),)](
        rows, w, out, R, D, rows.stride(0) if R > 1 else D, float(eps), HAS_WEIGHT=weight is not None,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    return out


@triton.jit
def _add_rms_norm_fwd_kernel(h_ptr, d_ptr, w_ptr, sum_ptr, out_ptr, rows, D, stride_h, stride_d, eps,
                             BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < D
    mask = (offs_r < rows)[:, None] & d_valid[None, :]
    rows64 = offs_r[:, None].to(tl.int64)
    h = tl.load(h_ptr + rows64 * stride_h + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.load(d_ptr + rows64 * stride_d + offs_d[None, :], mask=mask, other=0.0)
    total = (h.to(tl.float32) + delta.to(tl.float32)).to(sum_ptr.dtype.element_ty)  # torch's add: one rounding
    tl.store(sum_ptr + rows64 * D + offs_d[None, :], total, mask=mask)
    x = total.to(tl.float32)
    mean_square = tl.sum(x * x, axis=1) / D
    y = (x * (1.0 / tl.sqrt_rn(mean_square + eps))[:, None]).to(out_ptr.dtype.element_ty)
    w = tl.load(w_ptr + offs_d, mask=d_valid, other=0.0).to(tl.float32)
    y = (w[None, :] * y.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows64 * D + offs_d[None, :], y, mask=mask)


def add_rms_norm_fwd(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + delta, rms_norm(h + delta) * weight) for h, delta [R, D] of one dtype (CUDA, or CPU under
    TRITON_INTERPRET=1), weight [D]: both results [R, D] contiguous in h's dtype. delta None: (h, the norm of h)."""
    if delta is None:
        return h, rms_norm_fwd(h, weight, eps)
    if h.dim() != 2 or delta.shape != h.shape or delta.dtype != h.dtype:
        raise ValueError(f"delta: expected h's shape {tuple(h.shape)} and dtype {h.dtype} (2-D), got "
                         f"{tuple(delta.shape)} {delta.dtype}")
    R, D = h.shape
    if D > MAX_D:
        raise ValueError(f"h: the Triton RMSNorm takes rows of at most {MAX_D} values, got {D}")
    if weight is None:
        raise ValueError(f"weight: expected a [{D}] tensor, got None")
    _check_weight(weight, D)
    h, delta = (t if t.stride(-1) == 1 else t.contiguous() for t in (h, delta))
    total = memory.empty((R, D), dtype=h.dtype, device=h.device)
    out = memory.empty((R, D), dtype=h.dtype, device=h.device)
    if R == 0:
        return total, out
    block_r, block_d, warps = _tiles(D)
    _add_rms_norm_fwd_kernel[(triton.cdiv(R, block_r),)](
        h, delta, weight.contiguous(), total, out, R, D, h.stride(0) if R > 1 else D, delta.stride(0) if R > 1 else D,
        float(eps),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    return total, out

