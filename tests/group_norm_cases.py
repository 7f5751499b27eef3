"""Shared GroupNorm test helpers: inputs in each layout, and one backend checked against the oracle."""

import torch

import genai_fast
from genai_fast.backends import memory
from genai_fast.ops.group_norm import group_norm_reference
from genai_fast.testing import assert_matches_oracle


def make_input(shape, layout, dtype, device="cpu"):
    x = (torch.randn(shape, dtype=torch.float64) * 2.5 + 0.7).to(dtype).to(device)
    if layout == "channels_last" and x.dim() >= 3:
        perm = (0, *range(2, x.dim()), 1)
        inverse = [perm.index(i) for i in range(x.dim())]
        x = x.permute(*perm).contiguous().permute(*inverse)
    elif layout == "strided":
        x = torch.cat([x, x], dim=-1)[..., : shape[-1]]  # a view with gaps between rows
    return x


def check_backend(backend, shape, groups, layout, dtype, affine=True, activation="silu", device="cpu"):
    x = make_input(shape, layout, dtype, device)
    C = shape[1]
    weight = torch.randn(C, device=device) if affine else None
    bias = torch.randn(C, device=device) if affine else None
    with memory.poison_outputs():
        out = genai_fast.group_norm(x, groups, weight, bias, eps=1e-5, activation=activation, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.stride() == torch.empty_like(x).stride(), "output layout differs from empty_like(x)"
    w64 = weight.double().cpu() if affine else None
    b64 = bias.double().cpu() if affine else None
    oracle = group_norm_reference(x.double().cpu(), groups, w64, b64, 1e-5, activation)
    baseline = group_norm_reference(x, groups, weight, bias, 1e-5, activation)
    assert_matches_oracle(out, oracle, baseline, what=f"group_norm[{backend}]")
