"""Shared GroupNorm test helpers: inputs in each layout, and one backend checked against the oracle."""

import torch

import genai_fast
from genai_fast.backends import memory
from genai_fast.ops.group_norm import group_norm_reference
from genai_fast.testing import assert_matches_oracle

EPS = 1e-5


def make_input(shape, layout, dtype, device="cpu", misaligned=False):
    """Random x of `shape` in `layout` ("contiguous", "channels_last", "strided": a view with gaps).

    misaligned: x starts one element into its storage (not 16-byte aligned: vector paths must not run).
    """
    x = torch.randn(shape, dtype=torch.float64) * 2.5 + 0.7
    if misaligned:
        flat = torch.empty(x.numel() + 1, dtype=dtype, device=device)
        flat[1:].copy_(x.reshape(-1))
        return flat[1:].view(shape)
    x = x.to(dtype).to(device)
    if layout == "channels_last" and x.dim() >= 3:
        perm = (0, *range(2, x.dim()), 1)
        inverse = [perm.index(i) for i in range(x.dim())]
        x = x.permute(*perm).contiguous().permute(*inverse)
    elif layout == "strided":
        x = torch.cat([x, x], dim=-1)[..., : shape[-1]]
    return x


def check_output(backend, x, groups, affine=True, activation="silu"):
    """Run `backend` on x with NaN-poisoned buffers; assert layout and the tolerance rule; return the output."""
    C = x.shape[1]
    weight = torch.randn(C, device=x.device) if affine else None
    bias = torch.randn(C, device=x.device) if affine else None
    with memory.poison_outputs():
        out = genai_fast.group_norm(x, groups, weight, bias, eps=EPS, activation=activation, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.stride() == torch.empty_like(x).stride(), "output layout differs from empty_like(x)"
    w64 = weight.double().cpu() if affine else None
    b64 = bias.double().cpu() if affine else None
    oracle = group_norm_reference(x.double().cpu(), groups, w64, b64, EPS, activation)
    baseline = group_norm_reference(x, groups, weight, bias, EPS, activation)
    assert_matches_oracle(out, oracle, baseline, what=f"group_norm[{backend}] strides {x.stride()}")
    return out


def check_backend(backend, shape, groups, layout, dtype, affine=True, activation="silu", device="cpu"):
    """check_output on a fresh random input of `shape` in `layout`."""
    return check_output(backend, make_input(shape, layout, dtype, device), groups, affine, activation)
