"""Launcher for the C++ GroupNorm(+SiLU) kernel (csrc/cpu/group_norm.cpp)."""

from __future__ import annotations

import torch

from genai_fast.backends import memory
from genai_fast.backends.cpp import address, dtype_code, extension
from genai_fast.ops.layout import as_ncs


def group_norm_fwd(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str,
) -> torch.Tensor:
    """GroupNorm over x [N, C, *] (CPU, fp32/fp16/bf16) on all of torch's intra-op threads."""
    if not x.is_cpu:
        raise TypeError(f"x: expected a CPU tensor, got one on {x.device}")
    code = dtype_code(x.dtype)
    view = as_ncs(x)
    out = memory.empty_like(view.tensor)
    w, b = _fp32_param(weight), _fp32_param(bias)
    extension().group_norm_forward(
        address(view.tensor), view.tensor.numel(), address(out), out.numel(), address(w), _numel(w), address(b),
        _numel(b), code, view.N, view.C, view.S, num_groups, view.channels_last, float(eps),
        activation == "silu", torch.get_num_threads(),
    )
    return view.restore(out)


def _numel(param: torch.Tensor | None) -> int:
    return 0 if param is None else param.numel()


def _fp32_param(param: torch.Tensor | None) -> torch.Tensor | None:
    """A [C] parameter as the dense fp32 vector the kernel reads (no copy when it already is one)."""
    if param is None or (param.dtype == torch.float32 and param.is_contiguous()):
        return param
    return param.detach().to(torch.float32).contiguous()
