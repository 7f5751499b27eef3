"""DeepSeek's multi-head latent attention (MLA: DeepSeek-V2, V3, Kimi K2, GLM-4.7-Flash) for the compact decoder.

Per token, transformers computes: queries q = q_proj(x), or q_b(norm(q_a(x))) where the model compresses them, each
head [nope | rope]; a latent c and one rotary key shared by all heads from kv_a(x) = [c | k_rope]; and, per head,
the keys' nope part and the values from kv_b(norm(c)). Attention then runs over keys [k_nope | rotated k_rope] and
values of their own size (DeepSeek-V3: keys of 192, values of 128).

`MlaProjection` gives the engine what a fused q/k/v projection gives it, so that every path of `Layer` (prefill,
decode, extend) runs unchanged, the KV cache holding each head's keys and values expanded (Hkv = Hq). Two
reorderings at load time make the engine's own rotary embedding apply:

  * each query and key head is laid out [rope | nope] instead of [nope | rope]: q.k is the same sum over the same
    pairs, and the rotary part now comes first, where a partial rotary embedding rotates;
  * where the checkpoint rotates interleaved pairs (dims 2i and 2i + 1: V2's complex rotation, V3's
    rope_interleave), the rope rows of the projections are reordered evens first, odds after, which turns them into
    the rotate-half pairs (i, i + r/2) with the same products and sums.

Caching the expanded heads costs memory (V3: 128 x (192 + 128) values per token and layer, against 512 + 64 for the
latent); the absorbed form, which attends over the latent itself, needs head sizes of 576 that the kernels here do
not take."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LinearFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _param(t: torch.Tensor | None, dtype: torch.dtype) -> nn.Parameter | None:
    # A contiguous copy: `.to(dtype)` of a same-dtype tensor would share storage with the HF model.
    return None if t is None else nn.Parameter(t.detach().to(dtype).clone(memory_format=torch.contiguous_format),
                                               requires_grad=False)


def rope_order(rope_dim: int, interleaved: bool) -> torch.Tensor:
    """The rope dims' new order: evens then odds for interleaved pairs, else as they are."""
    if not interleaved:
        return torch.arange(rope_dim)
    return torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)])


class MlaProjection(nn.Module):
    """x [..., hidden] -> [..., H * (r + n) + H * (r + n) + H * v]: the queries, keys and values of H heads, query
    and key heads laid out [rope (r) | nope (n)], values of v dims, before the rotation (see the module docstring).

    wq [H (r + n), hidden or q_rank]: the query rows in that layout; q_a [q_rank, hidden] and q_norm: the query
    compression and its RMSNorm (None: q = x wq^T); kv_a [c_rank + r, hidden]: the latent rows, then the shared key's
    rope rows (reordered like the queries'); kv_norm: the latent's RMSNorm; kv_b [H (n + v), c_rank]: each head's key
    nope rows, then its value rows. Biases: None where the checkpoint has none."""

    def __init__(self, heads: int, nope_dim: int, rope_dim: int, v_dim: int, wq: torch.Tensor,
                 q_a: torch.Tensor | None, q_a_bias: torch.Tensor | None, q_norm: nn.Module | None,
                 kv_a: torch.Tensor, kv_a_bias: torch.Tensor | None, kv_norm: nn.Module, kv_b: torch.Tensor) -> None:
        super().__init__()
        dtype = wq.dtype
        self.heads, self.nope_dim, self.rope_dim, self.v_dim = heads, nope_dim, rope_dim, v_dim
        self.latent_dim = kv_a.shape[0] - rope_dim
        if wq.shape[0] != heads * (nope_dim + rope_dim) or kv_b.shape[0] != heads * (nope_dim + v_dim):
            raise ValueError(f"wq, kv_b: expected {heads * (nope_dim + rope_dim)} and {heads * (nope_dim + v_dim)} "
                             f"rows, got {wq.shape[0]} and {kv_b.shape[0]}")
        self.wq, self.q_a, self.q_a_bias = _param(wq, dtype), _param(q_a, dtype), _param(q_a_bias, dtype)
        self.q_norm, self.kv_norm = q_norm, kv_norm
        self.kv_a, self.kv_a_bias, self.kv_b = _param(kv_a, dtype), _param(kv_a_bias, dtype), _param(kv_b, dtype)

    @classmethod
    def from_hf(cls, attn: nn.Module, config: object, dtype: torch.dtype, norm: Callable[[nn.Module], nn.Module],
                interleaved: bool) -> MlaProjection:
        """From transformers' DeepseekV2Attention or DeepseekV3Attention; norm converts its RMSNorms; interleaved:
        whether the checkpoint rotates interleaved pairs."""
        heads, n, r, v = (config.num_attention_heads, config.qk_nope_head_dim, config.qk_rope_head_dim,
                          config.v_head_dim)
        order = rope_order(r, interleaved)
        per_head = torch.cat([n + order, torch.arange(n)])  # [rope | nope], rope reordered
        q_rows = (torch.arange(heads)[:, None] * (n + r) + per_head[None, :]).flatten()
        latent = attn.kv_a_proj_with_mqa.weight.shape[0] - r
        kv_rows = torch.cat([torch.arange(latent), latent + order])
        compressed = getattr(attn, "q_a_proj", None) is not None
        wq = (attn.q_b_proj if compressed else attn.q_proj).weight[q_rows]
        kv_a_bias = attn.kv_a_proj_with_mqa.bias
        return cls(heads, n, r, v, wq.to(dtype),
                   attn.q_a_proj.weight.to(dtype) if compressed else None,
                   _bias(attn.q_a_proj, dtype) if compressed else None,
                   norm(attn.q_a_layernorm) if compressed else None,
                   attn.kv_a_proj_with_mqa.weight[kv_rows].to(dtype),
                   None if kv_a_bias is None else kv_a_bias[kv_rows].to(dtype), norm(attn.kv_a_layernorm),
                   attn.kv_b_proj.weight.to(dtype))

    def forward(self, x: torch.Tensor, linear: LinearFn) -> torch.Tensor:
        if self.q_a is None:
            q = linear(x, self.wq, None)
        else:
            q = linear(self.q_norm(linear(x, self.q_a, self.q_a_bias)), self.wq, None)
        latent, k_rope = linear(x, self.kv_a, self.kv_a_bias).split([self.latent_dim, self.rope_dim], dim=-1)
        kv = linear(self.kv_norm(latent), self.kv_b, None).unflatten(-1, (self.heads, self.nope_dim + self.v_dim))
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat([k_rope.unsqueeze(-2).expand(*k_nope.shape[:-1], self.rope_dim), k_nope], dim=-1)
        return torch.cat([q, k.flatten(-2), v.flatten(-2)], dim=-1)


def _bias(linear: nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.to(dtype)


def is_mla(attn: nn.Module) -> bool:
    """Whether an HF attention module is DeepSeek's MLA (a joint latent and rotary-key projection)."""
    return hasattr(attn, "kv_a_proj_with_mqa")
