"""FLOP formulas of the custom ops for torch.utils.flop_counter.FlopCounterMode.

Under a dispatch mode the public ops run their torch.library custom op, which FlopCounterMode cannot see into:
without a formula a patched model's attention, convolutions and projections would count 0 FLOPs, and a
utilisation computed from the count (MFU) would be wrong. Each formula counts what torch's counter counts for
the torch op it replaces, so a patched and an unpatched model give the same total:

- attention: the two products of torch's SDPA formula, 2*B*Hq*Sq*Sk*(D + Dv), causal not halved (torch does not
  halve it either); the backward 2.5 times the forward's D = Dv count, as torch's SDPA backward formula.
- conv2d: 2 * N * H_out * W_out * C_out * (C_in / groups) * kh * kw (bias and epilogue not counted, as torch).
- linear and gguf_linear: 2 * rows * N * K (torch counts the bias-free mm/addmm the same).
- attention_with_kvcache: both products against each sequence's cache length after the append (causal not
  counted, as for the prefill; the cache's full length where the lengths are not on the host, as under
  torch.compile's fake tensors).
GroupNorm, RMSNorm, GEGLU and the guided update count 0, as torch's norms and pointwise ops do.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

# The modules that define the custom ops (torch.ops.genai_fast.*) the formulas are registered for.
from genai_fast.ops import attention, conv2d, gguf_linear, linear  # noqa: F401

Shape = torch.Size | tuple[int, ...] | list[int]


def attention_flops(query_shape: Shape, key_shape: Shape, value_shape: Shape) -> int:
    """query [..., Hq, Sq, D] against key [..., Hkv, Sk, D] and value [..., Hkv, Sk, Dv]: scores and output."""
    *lead, heads, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(lead) * heads * s_q * s_k * (d + d_v)


def attention_backward_flops(query_shape: Shape, key_shape: Shape, value_shape: Shape) -> int:
    """The scores recomputed, then dV, dP, dQ and dK: five products of the forward's size each."""
    *lead, heads, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(lead) * heads * s_q * s_k * (3 * d + 2 * d_v)


def linear_flops(x_shape: Shape, out_features: int) -> int:
    return 2 * math.prod(x_shape[:-1]) * out_features * x_shape[-1]


@register_flop_formula(torch.ops.genai_fast.scaled_dot_product_attention)
def _attention(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.genai_fast.scaled_dot_product_attention_backward)
def _attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None,
                        **kwargs: Any) -> int:
    return attention_backward_flops(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.genai_fast.conv2d)
def _conv2d(x_shape, weight_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return conv_flop_count(x_shape, weight_shape, out_shape)  # torch's own conv formula


@register_flop_formula(torch.ops.genai_fast.linear)
def _linear(x_shape, weight_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return linear_flops(x_shape, weight_shape[0])


@register_flop_formula(torch.ops.genai_fast.gguf_linear)
def _gguf_linear(x_shape, blocks_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return linear_flops(x_shape, blocks_shape[0])


@register_flop_formula(torch.ops.genai_fast.attention_with_kvcache, get_raw=True)
def _kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
             k: torch.Tensor | None, v: torch.Tensor | None, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    batch, heads, s_q, d = q.shape
    s_new = 0 if k is None else k.shape[2]
    per_position = 2 * heads * s_q * (d + v_cache.shape[-1])
    if _known_on_host(cache_seqlens):
        return per_position * int((cache_seqlens.to(torch.int64) + s_new).sum())
    return per_position * batch * k_cache.shape[2]


def _known_on_host(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return t.device.type == "cpu" and not isinstance(t, FakeTensor)
