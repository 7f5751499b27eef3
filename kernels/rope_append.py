"""Triton kernel for the LLM decode step on a GPU: rotary embedding of the new token's q and k heads and the
append of its k and v to the KV cache, in one launch.

The step's fused QKV projection gives one row per sequence: [q heads | k heads | v heads], head_dim values
each. torch needs a flip, two products and a sum for the rotation, then index arithmetic and two scatters
for the append, with the position gathered from the rope tables first: about a dozen kernels per layer,
each a few microseconds inside a CUDA graph. Here one program per (sequence, head) reads its head, rotates
q and k heads by the sequence's position, and writes q to a [B, Hq, 1, D] output, k and v to the caches
at that position.

The rotation keeps torch's roundings (apply_rope in genai_fast/llm/model.py, itself bitwise HF's):
x * cos and swapped(x) * sin are each rounded to the model's dtype, then their sum is. A position outside
the cache writes nothing (the engine checks lengths on the host before decoding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory

MAX_HEAD_DIM = 256
MAX_GRID_Y = 65535  # CUDA's limit on grid dimension 1, which runs over the heads


@triton.jit
def _rope_append_kernel(qkv_ptr, cos_ptr, sin_ptr, seqlens_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                        stride_qkv, skb, skh, skn, svb, svh, svn, s_max, HQ, HKV, D,
                        HAS_ROPE: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    head = tl.program_id(1)  # 0 .. HQ-1: q heads; HQ .. HQ+HKV-1: k heads; then v heads
    pos = tl.load(seqlens_ptr + b)
    offs = tl.arange(0, BLOCK_D)
    d_valid = offs < D
    # A position outside the cache reads no table row and writes no cache row: no columns (the launcher makes
    # the tables cover the whole cache, so inside it every row exists).
    cache_cols = offs < tl.where((pos >= 0) & (pos < s_max), D, 0)
    row = qkv_ptr + b.to(tl.int64) * stride_qkv + head * D
    x = tl.load(row + offs, mask=d_valid, other=0.0)
    y = x
    if HAS_ROPE:  # noqa: SIM102 (a compile-time branch around a run-time one)
        if head < HQ + HKV:
            half = D // 2
            partner = tl.where(offs < half, offs + half, offs - half)  # rotate-half's source of each value
            swapped = tl.load(row + partner, mask=d_valid, other=0.0)
            cos = tl.load(cos_ptr + pos.to(tl.int64) * D + offs, mask=cache_cols, other=0.0)
            sin = tl.load(sin_ptr + pos.to(tl.int64) * D + offs, mask=cache_cols, other=0.0)
            a = (x.to(tl.float32) * cos.to(tl.float32)).to(x.dtype)
            c = (swapped.to(tl.float32) * sin.to(tl.float32)).to(x.dtype)
            y = (a.to(tl.float32) + c.to(tl.float32)).to(x.dtype)
    if head < HQ:
        tl.store(q_ptr + (b.to(tl.int64) * HQ + head) * D + offs, y, mask=d_valid)
    elif head < HQ + HKV:
        dst = k_cache_ptr + b.to(tl.int64) * skb + (head - HQ).to(tl.int64) * skh + pos.to(tl.int64) * skn
        tl.store(dst + offs, y, mask=cache_cols)
    else:
        dst = v_cache_ptr + b.to(tl.int64) * svb + (head - HQ - HKV).to(tl.int64) * svh + pos.to(tl.int64) * svn
        tl.store(dst + offs, y, mask=cache_cols)


def check_rope_append(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, seqlens: torch.Tensor, cos_table: torch.Tensor | None,
                      sin_signed_table: torch.Tensor | None) -> None:
    """Every size the kernel turns into an address, checked on the host (shapes only: no device sync, so the
    decode step's CUDA graph can capture the launch). ValueError naming the argument otherwise."""
    if qkv.dim() != 2 or k_cache.dim() != 4:
        raise ValueError(f"qkv/k_cache: expected [B, (Hq + 2 Hkv) D] and [B', Hkv, S_max, D], got "
                         f"{tuple(qkv.shape)} and {tuple(k_cache.shape)}")
    B, D = qkv.shape[0], k_cache.shape[3]
    heads = num_heads + 2 * num_kv_heads
    if num_heads < 1 or num_kv_heads < 1 or heads > MAX_GRID_Y:
        raise ValueError(f"num_heads/num_kv_heads: expected >= 1 each and Hq + 2 Hkv <= {MAX_GRID_Y}, got "
                         f"{num_heads} and {num_kv_heads}")
    if qkv.shape[1] != heads * D or qkv.stride(1) != 1:
        raise ValueError(f"qkv: expected [B, {heads * D}] with unit stride, got {tuple(qkv.shape)} "
                         f"strides {qkv.stride()}")
    if D > MAX_HEAD_DIM or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError(f"k_cache/v_cache: expected head_dim <= {MAX_HEAD_DIM} with unit stride, got "
                         f"{tuple(k_cache.shape)}, strides {k_cache.stride()} / {v_cache.stride()}")
    if k_cache.shape[0] < B or k_cache.shape[1] != num_kv_heads:
        raise ValueError(f"k_cache: expected [B' >= {B}, Hkv={num_kv_heads}, S_max, {D}], got {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache: expected k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("seqlens", seqlens)):
        if t.device != qkv.device:
            raise ValueError(f"{name}: expected a tensor on qkv's device {qkv.device}, got {t.device}")
    if seqlens.dtype not in (torch.int32, torch.int64) or tuple(seqlens.shape) != (B,):
        raise ValueError(f"seqlens: expected an int32 or int64 tensor of shape ({B},), got {seqlens.dtype} "
                         f"{tuple(seqlens.shape)}")
    if cos_table is None:
        return
    s_max = k_cache.shape[2]
    for name, table in (("cos_table", cos_table), ("sin_signed_table", sin_signed_table)):
        # Rows for every cache position: a position inside the cache always finds its row.
        if (table is None or table.dim() != 2 or table.shape[0] < s_max or table.shape[1] != D
                or not table.is_contiguous() or table.device != qkv.device):
            raise ValueError(f"{name}: expected a contiguous [max_len >= S_max={s_max}, {D}] table on qkv's "
                             f"device beside the other one, got "
                             f"{None if table is None else (tuple(table.shape), table.device)}")


def rope_append_fwd(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, seqlens: torch.Tensor, cos_table: torch.Tensor | None,
                    sin_signed_table: torch.Tensor | None) -> torch.Tensor:
    """qkv [B, (Hq + 2 Hkv) D] (unit stride in the row), caches [B', Hkv, S_max, D] with unit stride in D
    (B <= B'), seqlens int32 or int64 [B] (each sequence's position), rope tables [max_len >= S_max, D]
    contiguous or None (no rotation, GPT-2) -> q [B, Hq, 1, D]; k and v written at cache position seqlens[b].

    CUDA tensors, or CPU ones under TRITON_INTERPRET=1. The caller guarantees 0 <= seqlens < S_max; a position
    outside the cache (not checked here: that needs the values on the host) reads no rope row and writes
    nothing; its q heads come out as zeros where they are rotated."""
    check_rope_append(qkv, num_heads, num_kv_heads, k_cache, v_cache, seqlens, cos_table, sin_signed_table)
    B, D = qkv.shape[0], k_cache.shape[3]
    heads = num_heads + 2 * num_kv_heads
    has_rope = cos_table is not None
    q = memory.empty((B, num_heads, 1, D), dtype=qkv.dtype, device=qkv.device)
    cos = cos_table if has_rope else qkv
    sin = sin_signed_table if has_rope else qkv
    _rope_append_kernel[(B, heads)](
        qkv, cos, sin, seqlens, q, k_cache, v_cache, qkv.stride(0), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), k_cache.shape[2],
        num_heads, num_kv_heads, D, HAS_ROPE=has_rope, BLOCK_D=triton.next_power_of_2(D))
    return q
