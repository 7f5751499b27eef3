"""Triton sampler update with classifier-free guidance, in one pass over the latents.

    m   = uncond + guidance * (cond - uncond)          (m = model_output without guidance)
    x0  = clamp(x0_from_x * x + x0_from_m * m, -clip, clip)
    out = c_x * x + c_x0 * x0 + c_m * m + c_change * (x0 - previous_x0) + c_noise * noise

Every tensor is a flat run of n elements in one memory layout (the op makes them so); the guided model
output holds the unconditional half in its first n elements and the conditional half in the next n.
Which terms take part is constexpr, so a sampler's step compiles to exactly its own arithmetic; the
coefficients change per step and are runtime scalars. fp32 arithmetic, inputs of any float dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _guided_update_fwd_kernel(x_ptr, model_ptr, previous_ptr, noise_ptr, out_ptr, x0_ptr, n, guidance,
                              x0_from_x, x0_from_m, clip, c_x, c_x0, c_m, c_change, c_noise,
                              GUIDED: tl.constexpr, USE_X: tl.constexpr, USE_X0: tl.constexpr, USE_M: tl.constexpr,
                              USE_CHANGE: tl.constexpr, USE_NOISE: tl.constexpr, CLIP: tl.constexpr,
                              KEEP_X0: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(model_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if GUIDED:
        cond = tl.load(model_ptr + n + offs, mask=mask, other=0.0).to(tl.float32)
        m = m + guidance * (cond - m)
    out = tl.zeros([BLOCK], dtype=tl.float32)
    if USE_X:
        out += c_x * x
    if USE_M:
        out += c_m * m
    if USE_X0 or USE_CHANGE or KEEP_X0:
        x0 = x0_from_x * x + x0_from_m * m
        if CLIP:  # NaN fails both comparisons and passes through, as in torch.clamp
            x0 = tl.where(x0 < -clip, -clip, x0)
            x0 = tl.where(x0 > clip, clip, x0)
        if USE_X0:
            out += c_x0 * x0
        if USE_CHANGE:
            previous = tl.load(previous_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            out += c_change * (x0 - previous)
        if KEEP_X0:
            tl.store(x0_ptr + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)
    if USE_NOISE:
        out += c_noise * tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _check_sizes(n: int, guided: bool, tensors: dict[str, torch.Tensor | None]) -> None:
    """Every tensor the kernel reads or writes holds the n elements it indexes (model_output 2n when guided)."""
    for name, t in tensors.items():
        want = 2 * n if guided and name == "model_output" else n
        if t is not None and t.numel() != want:
            raise ValueError(f"{name}: expected {want} elements (x has {n}), got {t.numel()}")


def guided_update_fwd(x: torch.Tensor, model_output: torch.Tensor, previous_x0: torch.Tensor | None,
                      noise: torch.Tensor | None, out: torch.Tensor, x0_out: torch.Tensor | None, guided: bool,
                      guidance: float, coefficients: tuple[float, ...], clip: float) -> None:
    """Fill out (and x0_out) from dense tensors of one memory layout: x, previous_x0, noise, out, x0_out
    of n elements, model_output of 2n (guided) or n. CUDA, or CPU under TRITON_INTERPRET=1."""
    x0_from_x, x0_from_m, c_x, c_x0, c_m, c_change, c_noise = coefficients
    n = x.numel()
    _check_sizes(n, guided, {"model_output": model_output, "previous_x0": previous_x0, "noise": noise, "out": out,
                             "x0_out": x0_out})
    # An absent tensor is never read (its constexpr flag is off); any pointer of the right device serves.
    _guided_update_fwd_kernel[(triton.cdiv(n, BLOCK),)](
        x, model_output, x if previous_x0 is None else previous_x0, x if noise is None else noise, out,
        out if x0_out is None else x0_out, n, guidance, x0_from_x, x0_from_m, clip, c_x, c_x0, c_m, c_change,
        c_noise, GUIDED=guided, USE_X=c_x != 0, USE_X0=c_x0 != 0, USE_M=c_m != 0, USE_CHANGE=c_change != 0,
        USE_NOISE=c_noise != 0, CLIP=clip != float("inf"), KEEP_X0=x0_out is not None, BLOCK=BLOCK)
