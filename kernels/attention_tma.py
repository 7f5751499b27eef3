"""Triton attention forward for Hopper (sm_90+) with TMA tensor descriptors: an experimental variant of
kernels/attention.py's `_attn_fwd_kernel`, measured against it by the benchmark as `backend="triton+tma"`.

Why: on an H200 the pointer-based forward reached 400-465 TFLOP/s at S 4k-16k, 0.76-0.78x cuDNN
(bench/results/nvidia-h200-20261128b.md). On Hopper, tiles copied by the Tensor Memory Accelerator
(one instruction per tile, asynchronous, pipelined over `num_stages` buffers) leave the warps free for the
two matrix products and the softmax. The arithmetic is the same online softmax as the pointer kernel's
(log2 domain, fp32 statistics; the helpers are kernels/attention.py's), so the outputs agree to rounding and
the backward is shared.

Scope (the launcher's `tma_reasons` says why anything else is refused): no mask tensor (is_causal is
fine), fp16/bf16, D == Dv in (64, 128), GQA, q/k/v of any strides whose last one is 1 and whose others
and base address are multiples of 16 bytes (TMA's rule). A descriptor covers a whole [B, H, S, D] tensor,
so a tile that reaches past S reads zeros, never another head's rows; those columns are masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from genai_fast.kernels.attention import (
    finish_rows,
    key_ranges,
    offset_reasons,
    online_softmax,
    query_block,
    query_head,
)

from genai_fast.backends import memory

LOG2E = 1.4426950408889634
TMA_HEAD_DIMS = (64, 128)
MAX_GRID_Y = 65535


@triton.jit
def _tma_tile(acc, l_i, m_i, q, k_desc, v_desc, b, hk, start_n, offs_m, offs_n, Sk, qk_scale,
              IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One key block: scores, online-softmax update, P @ V. MASKED: the sequence end or the causal diagonal."""
    k = k_desc.load([b, hk, start_n, 0]).reshape(BLOCK_N, D)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASKED:
        cols = start_n + offs_n
        valid = (cols < Sk)[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= offs_m[:, None])
        s = tl.where(valid, s, float("-inf"))
    p, alpha, l_i, m_new = online_softmax(s, m_i, l_i)
    v = v_desc.load([b, hk, start_n, 0]).reshape(BLOCK_N, D)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_tma_kernel(
    q_desc, k_desc, v_desc, OUT, LSE, sob, soh, som, Hq, GROUP, Sq, Sk, qk_scale,
    IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
):
    pid_m = query_block(IS_CAUSAL)
    bh, b, h, hk = query_head(Hq, GROUP)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = q_desc.load([b, h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, D)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    n_full, hi = key_ranges(pid_m, Sk, IS_CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _tma_tile(acc, l_i, m_i, q, k_desc, v_desc, b, hk, start_n, offs_m, offs_n, Sk, qk_scale,
                                  IS_CAUSAL, False, BLOCK_N, D)
    for start_n in range(n_full, hi, BLOCK_N):
        acc, l_i, m_i = _tma_tile(acc, l_i, m_i, q, k_desc, v_desc, b, hk, start_n, offs_m, offs_n, Sk, qk_scale,
                                  IS_CAUSAL, True, BLOCK_N, D)

    out, lse = finish_rows(acc, l_i, m_i)
    m_valid = offs_m < Sq
    o_ptrs = OUT + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * som + offs_d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_valid[:, None])
    tl.store(LSE + bh.to(tl.int64) * Sq + offs_m, lse, mask=m_valid)


def _aligned(t: torch.Tensor) -> bool:
    """TMA's rule: unit last stride, a 16-byte aligned base, other strides multiples of 16 bytes. A broadcast
    (zero) stride is refused too, unless its dimension has one element."""
    size = t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(
        (s * size) % 16 == 0 and (s > 0 or n == 1) for s, n in zip(t.stride()[:-1], t.shape[:-1], strict=True))


def tma_reasons(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, has_mask: bool) -> list[str]:
    """Why the TMA kernel cannot run these [B, H, S, D] inputs (empty: it can). The dtype (fp16, bf16) is
    the dispatcher's Capability check."""
    reasons = []
    if has_mask:
        reasons.append("an attn_mask tensor (the TMA kernel supports is_causal only)")
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1] and q.shape[-1] in TMA_HEAD_DIMS):
        reasons.append(f"head dims q {q.shape[-1]}, v {v.shape[-1]} (the TMA kernel needs D == Dv in {TMA_HEAD_DIMS})")
    if not all(_aligned(t) for t in (q, k, v)):
        reasons.append("q, k and v need a last stride of 1 and other strides and base addresses that are "
                       "multiples of 16 bytes, none of them a broadcast (TMA)")
    return reasons


def _config(device: torch.device, Sq: int, Sk: int, D: int, causal: bool) -> dict[str, int]:
    """Tiles and launch options. Hopper: 128-row query tiles with 8 warps (two warpgroups of wgmma); the
    interpreter gets small tiles."""
    if device.type != "cuda":
        return {"BLOCK_M": min(64, max(16, triton.next_power_of_2(Sq))),
                "BLOCK_N": min(64, max(16, triton.next_power_of_2(Sk)))}
    block_n = 128 if D > 64 and not causal else 64
    # 128 x 128 tiles at D 128 in three stages need 225 KB of shared memory for sm_90's 227: two stages leave room.
    stages = 2 if block_n == 128 else 3
    return {"BLOCK_M": 128, "BLOCK_N": block_n, "num_warps": 8 if D > 64 else 4, "num_stages": stages}


def attention_fwd_tma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float,
                      config: dict[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] (tma_reasons empty) -> (out [B, Hq, Sq, D], lse [B, Hq, Sq] fp32,
    natural log), as kernels.attention.attention_fwd returns them."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if Hq > MAX_GRID_Y:
        raise ValueError(f"query: {Hq} heads exceed the {MAX_GRID_Y} programs of grid dimension 1")
    # q, k and v are read through descriptors (64-bit strides); the output is stored through 32-bit row offsets.
    reasons = offset_reasons({"out": (tuple(q.shape), (Hq * Sq * D, Sq * D, D, 1))})
    if reasons:
        raise ValueError(reasons[0])
    cfg = config or _config(q.device, Sq, Sk, D, is_causal)
    if B * Hq > MAX_GRID_Y:  # grid dimension 1 holds batch x heads; larger batches run in chunks
        return _chunked(q, k, v, is_causal, scale, cfg, max(1, MAX_GRID_Y // Hq))
    out = memory.empty((B, Hq, Sq, D), dtype=q.dtype, device=q.device)
    lse = memory.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    q_desc = TensorDescriptor(q, list(q.shape), list(q.stride()), [1, 1, bm, D])
    k_desc = TensorDescriptor(k, list(k.shape), list(k.stride()), [1, 1, bn, D])
    v_desc = TensorDescriptor(v, list(v.shape), list(v.stride()), [1, 1, bn, D])
    _attn_fwd_tma_kernel[(triton.cdiv(Sq, bm), B * Hq)](
        q_desc, k_desc, v_desc, out, lse, *out.stride()[:3], Hq, Hq // Hkv, Sq, Sk, scale * LOG2E,
        IS_CAUSAL=is_causal, D=D, **cfg)
    return out, lse


def _chunked(q, k, v, is_causal, scale, cfg, per_call):
    parts = [attention_fwd_tma(q[i:i + per_call], k[i:i + per_call], v[i:i + per_call], is_causal, scale, cfg)
             for i in range(0, q.shape[0], per_call)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
