"""Triton fused attention: FlashAttention-style forward and backward, and split-K decode over a KV cache.

Layout: every tensor is read as [B, H, S, D] through runtime strides (broadcast dimensions of a mask
have stride 0, so a [1, 1, Sq, Sk] or [B, 1, 1, Sk] mask is never expanded in memory). GQA: query head
h reads key/value head h // GROUP, no copies.

Forward (grid: query blocks x B*Hq): online softmax in the log2 domain (scores pre-multiplied by
scale * log2(e) so exp2 is used), fp32 running max/sum/accumulator, never an Sq x Sk matrix. The key
loop is split in two: blocks that need no masking (all columns valid, below the causal diagonal) and
the rest (sequence end, causal diagonal), so the common case pays for no masks. It stores the
natural-log log-sum-exp per row for the backward (-inf for a row that sees no key).

Rows that see no key (all masked) produce 0, as torch's SDPA does in 2.13 for boolean and -inf masks.

Backward: a preprocess kernel for delta = rowsum(dO * O); one kernel per key block (grid: key blocks x
B*Hkv) that accumulates dK and dV over every query head of its GQA group and every query block, so no
atomics are needed; one kernel per query block for dQ. Both recompute P from the saved log-sum-exp.

Decode (flash-decoding): grid (splits, B*Hkv, row blocks). A program takes one slice of one sequence's
cache and all GROUP x Sq query rows that read its KV head (each K/V block is loaded once for the whole
group), writes a normalised partial output and its log-sum-exp; a combine kernel merges the splits.

Head dims that are not powers of two (40, 80, 96) are padded to the next power of two with masked
loads; the padding never reaches memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory
from genai_fast.backends.availability import multiprocessor_count
from genai_fast.ops.layout import slice_reach

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

MASK_NONE, MASK_BOOL, MASK_ADD = 0, 1, 2
# CUDA limits grid dimensions 1 and 2 to 65535; batch x heads runs there (dimension 0, up to 2^31 - 1,
# holds the sequence blocks so that neighbouring programs share K/V in L2). Larger batches are split.
MAX_GRID_Y = 65535


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # fp32 inputs must not silently drop to TF32: the tolerance is fp32's, not TF32's.
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def tanh(x):
    """tanh in fp32 from exp2 (libdevice's tanh does not run in the interpreter): an odd series near 0, where
    (1 - e) / (1 + e) would lose the relative precision of small scores, the exponential form elsewhere."""
    ax = tl.abs(x)
    e = tl.math.exp2(ax * -2.8853900817779268)  # exp(-2|x|)
    x2 = x * x
    series = ax * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * -0.05396825396825397)))
    t = tl.where(ax < 0.125, series, (1.0 - e) / (1.0 + e))
    return tl.where(x < 0.0, -t, t)


@triton.jit
def capped(raw, qk_scale, cap_in, cap_out, SOFTCAP: tl.constexpr):
    """(scores in log2 units, t) of raw dot products q.k: raw * scale * log2(e), or with a soft cap c
    c * tanh(raw * scale / c) * log2(e), where t = tanh(raw * scale / c) (cap_in = scale / c, cap_out = c log2 e)
    is what the backward's chain rule needs (1 - t^2); without a cap t is the scores themselves, unused."""
    if SOFTCAP:
        t = tanh(raw * cap_in)
        return t * cap_out, t
    else:
        s = raw * qk_scale
        return s, s


@triton.jit
def window_start(pid_m, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(lo, full_lo) of query block pid_m under a causal window (row i sees keys i - window < j <= i): no row
    sees a key before lo, and every row sees every key from full_lo up to its causal edge. BLOCK_N multiples."""
    m0 = pid_m * BLOCK_M
    lo = (tl.maximum(m0 - window + 1, 0) // BLOCK_N) * BLOCK_N
    full_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - window, 0), BLOCK_N) * BLOCK_N
    return lo, full_lo


@triton.jit
def _scores(q, k_ptrs, mask_ptrs, offs_m, offs_n, n_valid, d_valid, Sq, qk_scale, cap_in, cap_out, window,
            IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr,
            SOFTCAP: tl.constexpr, WINDOWED: tl.constexpr):
    """(scores of one [BLOCK_M, BLOCK_N] tile in log2 units, -inf where masked; t of `capped`).
    MASKED: bounds, causal and window."""
    if MASKED:
        k = tl.load(k_ptrs, mask=n_valid[:, None] & d_valid[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs, mask=d_valid[None, :], other=0.0)
    s, t = capped(_dot(q, tl.trans(k), IEEE), qk_scale, cap_in, cap_out, SOFTCAP)
    if MASK_KIND == 1:
        keep = tl.load(mask_ptrs, mask=(offs_m < Sq)[:, None] & n_valid[None, :], other=0)
        s = tl.where(keep != 0, s, float("-inf"))
    elif MASK_KIND == 2:
        bias = tl.load(mask_ptrs, mask=(offs_m < Sq)[:, None] & n_valid[None, :], other=0.0)
        s = s + bias.to(tl.float32) * 1.4426950408889634
    if MASKED:
        valid = n_valid[None, :]
        if IS_CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None])
        if WINDOWED:
            valid = valid & (offs_m[:, None] - offs_n[None, :] < window)
        s = tl.where(valid, s, float("-inf"))
    return s, t


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, offs_m, offs_n, d_valid, dv_valid, Sq, Sk,
              qk_scale, cap_in, cap_out, window, IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
              MASKED: tl.constexpr, IEEE: tl.constexpr, SOFTCAP: tl.constexpr, WINDOWED: tl.constexpr):
    n_valid = offs_n < Sk
    s, _t = _scores(q, k_ptrs, mask_ptrs, offs_m, offs_n, n_valid, d_valid, Sq, qk_scale, cap_in, cap_out, window,
                    IS_CAUSAL, MASK_KIND, MASKED, IEEE, SOFTCAP, WINDOWED)
    p, alpha, l_i, m_new = online_softmax(s, m_i, l_i)
    if MASKED:
        v = tl.load(v_ptrs, mask=n_valid[:, None] & dv_valid[None, :], other=0.0)
    else:
        v = tl.load(v_ptrs, mask=dv_valid[None, :], other=0.0)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return acc, l_i, m_new


@triton.jit
def online_softmax(s, m_i, l_i):
    """One key block's scores s [M, N] (log2 units) folded into the running max m_i and sum l_i [M]:
    (p = exp2(s - new max), alpha = the old accumulator's rescale, new l_i, new max)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row with nothing visible yet keeps max -inf; subtracting 0 instead avoids (-inf) - (-inf).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    return p, alpha, l_i * alpha + tl.sum(p, 1), m_new


@triton.jit
def query_block(IS_CAUSAL: tl.constexpr):
    """The program's query block (grid dimension 0). Causal rows see more keys the further down they are, and
    the GPU starts a grid's programs in order: reversed, the heaviest blocks start first and the lightest fill
    the last wave's tail."""
    pid = tl.program_id(0)
    if IS_CAUSAL:
        pid = tl.num_programs(0) - 1 - pid
    return pid


@triton.jit
def query_head(Hq, GROUP):
    """(bh, b, h, hk) of a program whose grid dimension 1 runs over batch x query heads: the sequence, the query
    head and the K/V head it reads (GQA: query head h reads h // GROUP)."""
    bh = tl.program_id(1)
    h = bh % Hq
    return bh, bh // Hq, h, h // GROUP


@triton.jit
def key_ranges(pid_m, Sk, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(n_full, hi) for query block pid_m: key columns [0, n_full) need no bounds or causal masking,
    [n_full, hi) do, and none past hi is visible."""
    hi = Sk
    n_full = (Sk // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        hi = tl.minimum(Sk, (pid_m + 1) * BLOCK_M)
        n_full = tl.minimum(n_full, ((pid_m * BLOCK_M + 1) // BLOCK_N) * BLOCK_N)
    return n_full, hi


@triton.jit
def finish_rows(acc, l_i, m_i):
    """The normalised output rows and their natural-log log-sum-exp (0 and -inf for a row that saw no key)."""
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    return out, lse


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, M, OUT, LSE, SINKS,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    smb, smh, smm, smn, sob, soh, som, sod,
    Hq, GROUP, Sq, Sk, D, DV, qk_scale, cap_in, cap_out, window,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, IEEE: tl.constexpr, EVEN_D: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOWED: tl.constexpr, HAS_SINKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = query_block(IS_CAUSAL)
    bh, b, h, hk = query_head(Hq, GROUP)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if EVEN_D:  # a constant-true mask: the compiler drops it and vectorises the loads fully
        d_valid = tl.full([BLOCK_D], 1, tl.int1)
        dv_valid = tl.full([BLOCK_DV], 1, tl.int1)
    else:
        d_valid = offs_d < D
        dv_valid = offs_dv < DV
    m_valid = offs_m < Sq

    q_ptrs = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
    q = tl.load(q_ptrs, mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    k_ptrs = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_n[:, None] * skn + offs_d[None, :] * skd
    v_ptrs = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd
    mask_ptrs = M + b.to(tl.int64) * smb + h.to(tl.int64) * smh + offs_m[:, None] * smm + offs_n[None, :] * smn

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if HAS_SINKS:  # the head's sink logit starts every row's softmax: a key of value zero (nothing to accumulate)
        m_i = tl.zeros([BLOCK_M], tl.float32) + tl.load(SINKS + h).to(tl.float32) * 1.4426950408889634
        l_i = l_i + 1.0
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    # Key blocks [lo, full_lo) cross the window's lower edge, [full_lo, n_full) need no masking, [.., hi) reach
    # the causal diagonal or the sequence end; without a window lo = full_lo = 0.
    n_full, hi = key_ranges(pid_m, Sk, IS_CAUSAL, BLOCK_M, BLOCK_N)
    lo, full_lo = 0, 0
    if WINDOWED:
        lo, full_lo = window_start(pid_m, window, BLOCK_M, BLOCK_N)
    for start_n in range(lo, tl.minimum(full_lo, hi), BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_ptrs + start_n * skn, v_ptrs + start_n * svn,
                                  mask_ptrs + start_n * smn, offs_m, start_n + offs_n, d_valid, dv_valid,
                                  Sq, Sk, qk_scale, cap_in, cap_out, window, IS_CAUSAL, MASK_KIND, True, IEEE,
                                  SOFTCAP, WINDOWED)
    for start_n in range(full_lo, n_full, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_ptrs + start_n * skn, v_ptrs + start_n * svn,
                                  mask_ptrs + start_n * smn, offs_m, start_n + offs_n, d_valid, dv_valid,
                                  Sq, Sk, qk_scale, cap_in, cap_out, window, IS_CAUSAL, MASK_KIND, False, IEEE,
                                  SOFTCAP, WINDOWED)
    for start_n in range(tl.maximum(n_full, full_lo), hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_ptrs + start_n * skn, v_ptrs + start_n * svn,
                                  mask_ptrs + start_n * smn, offs_m, start_n + offs_n, d_valid, dv_valid,
                                  Sq, Sk, qk_scale, cap_in, cap_out, window, IS_CAUSAL, MASK_KIND, True, IEEE,
                                  SOFTCAP, WINDOWED)

    out, lse = finish_rows(acc, l_i, m_i)
    o_ptrs = OUT + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * som + offs_dv[None, :] * sod
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_valid[:, None] & dv_valid[None, :])
    tl.store(LSE + bh.to(tl.int64) * Sq + offs_m, lse, mask=m_valid)


@triton.jit
def _attn_bwd_preprocess_kernel(
    OUT, DO, DELTA, sob, soh, som, sod, sdb, sdh, sdm, sdd, Hq, Sq, DV,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = (offs_m < Sq)[:, None] & (offs_dv < DV)[None, :]
    o = tl.load(OUT + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sdm + offs_dv[None, :] * sdd,
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * Sq + offs_m, tl.sum(o * do, 1), mask=offs_m < Sq)


@triton.jit
def _load_row_stats(LSE, DELTA, row0, offs_m, Sq):
    """lse in log2 units (+inf for rows out of range or with no visible key, so P = 0) and delta."""
    m_valid = offs_m < Sq
    lse = tl.load(LSE + row0 + offs_m, mask=m_valid, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + row0 + offs_m, mask=m_valid, other=0.0)
    return lse2, delta


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, M, DO, LSE, DELTA, DK, DV_OUT,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    smb, smh, smm, smn, sdb, sdh, sdm, sdd, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
    Hq, Hkv, GROUP, Sq, Sk, D, DV, qk_scale, sm_scale, cap_in, cap_out, window,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, IEEE: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOWED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_valid = offs_n < Sk
    d_valid = offs_d < D
    dv_valid = offs_dv < DV

    k = tl.load(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                mask=n_valid[:, None] & d_valid[None, :], other=0.0)
    v = tl.load(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                mask=n_valid[:, None] & dv_valid[None, :], other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)

    # Causal (top-left): query row i sees key j when j <= i, so rows before start_n see none of this block.
    # With a window, rows from start_n + BLOCK_N - 1 + window on see none of it either.
    lo = 0
    if IS_CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
    hi_m = Sq
    if WINDOWED:
        hi_m = tl.minimum(Sq, start_n + BLOCK_N - 1 + window)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        do_base = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        m_base = M + b.to(tl.int64) * smb + h.to(tl.int64) * smh
        row0 = (b * Hq + h).to(tl.int64) * Sq
        for start_m in range(lo, hi_m, BLOCK_M):
            offs_m = start_m + offs_m0
            m_valid = offs_m < Sq
            q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                        mask=m_valid[:, None] & d_valid[None, :], other=0.0)
            do = tl.load(do_base + offs_m[:, None] * sdm + offs_dv[None, :] * sdd,
                         mask=m_valid[:, None] & dv_valid[None, :], other=0.0)
            lse2, delta = _load_row_stats(LSE, DELTA, row0, offs_m, Sq)
            # Transposed tile: sT[n, m] = score of query m against key n.
            sT, tT = capped(_dot(k, tl.trans(q), IEEE), qk_scale, cap_in, cap_out, SOFTCAP)
            mask_ptrs = m_base + offs_m[None, :] * smm + offs_n[:, None] * smn
            if MASK_KIND == 1:
                keep = tl.load(mask_ptrs, mask=m_valid[None, :] & n_valid[:, None], other=0)
                sT = tl.where(keep != 0, sT, float("-inf"))
            elif MASK_KIND == 2:
                bias = tl.load(mask_ptrs, mask=m_valid[None, :] & n_valid[:, None], other=0.0)
                sT = sT + bias.to(tl.float32) * 1.4426950408889634
            valid = n_valid[:, None]
            if IS_CAUSAL:
                valid = valid & (offs_n[:, None] <= offs_m[None, :])
            if WINDOWED:
                valid = valid & (offs_m[None, :] - offs_n[:, None] < window)
            sT = tl.where(valid, sT, float("-inf"))
            pT = tl.math.exp2(sT - lse2[None, :])
            dv += _dot(pT.to(do.dtype), do, IEEE)
            dpT = _dot(v, tl.trans(do), IEEE)
            dsT = pT * (dpT - delta[None, :])
            if SOFTCAP:  # d(c tanh(x / c)) / dx = 1 - tanh^2
                dsT = dsT * (1.0 - tT * tT)
            dk += _dot(dsT.to(q.dtype), q, IEEE)

    dk = dk * sm_scale
    tl.store(DK + b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh + offs_n[:, None] * sdkn + offs_d[None, :] * sdkd,
             dk.to(DK.dtype.element_ty), mask=n_valid[:, None] & d_valid[None, :])
    tl.store(DV_OUT + b.to(tl.int64) * sdvb + hk.to(tl.int64) * sdvh + offs_n[:, None] * sdvn
             + offs_dv[None, :] * sdvd, dv.to(DV_OUT.dtype.element_ty), mask=n_valid[:, None] & dv_valid[None, :])


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, M, DO, LSE, DELTA, DQ,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    smb, smh, smm, smn, sdb, sdh, sdm, sdd, sdqb, sdqh, sdqm, sdqd,
    Hq, GROUP, Sq, Sk, D, DV, qk_scale, sm_scale, cap_in, cap_out, window,
    IS_CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, IEEE: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOWED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = query_block(IS_CAUSAL)
    bh, b, h, hk = query_head(Hq, GROUP)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_valid = offs_m < Sq
    d_valid = offs_d < D
    dv_valid = offs_dv < DV

    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sdm + offs_dv[None, :] * sdd,
                 mask=m_valid[:, None] & dv_valid[None, :], other=0.0)
    lse2, delta = _load_row_stats(LSE, DELTA, bh.to(tl.int64) * Sq, offs_m, Sq)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    m_base = M + b.to(tl.int64) * smb + h.to(tl.int64) * smh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    lo, hi = 0, Sk
    if IS_CAUSAL:
        hi = tl.minimum(Sk, (pid_m + 1) * BLOCK_M)
    if WINDOWED:
        lo, _full_lo = window_start(pid_m, window, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_valid = offs_n < Sk
        s, t = _scores(q, k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                       m_base + offs_m[:, None] * smm + offs_n[None, :] * smn, offs_m, offs_n, n_valid, d_valid,
                       Sq, qk_scale, cap_in, cap_out, window, IS_CAUSAL, MASK_KIND, True, IEEE, SOFTCAP, WINDOWED)
        p = tl.math.exp2(s - lse2[:, None])
        v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=n_valid[:, None] & dv_valid[None, :], other=0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=n_valid[:, None] & d_valid[None, :], other=0.0)
        dq += _dot(ds.to(k.dtype), k, IEEE)

    dq = dq * sm_scale
    tl.store(DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + offs_m[:, None] * sdqm + offs_d[None, :] * sdqd,
             dq.to(DQ.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])


@triton.jit
def _decode_split_kernel(
    Q, K, V, LENS, PO, PLSE,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    Hkv, GROUP, Sq, D, DV, R, num_splits, split_len, s_max, qk_scale, cap_in, cap_out, window,
    IS_CAUSAL: tl.constexpr, IEEE: tl.constexpr, SOFTCAP: tl.constexpr, WINDOWED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    split = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    # Rows r = g * Sq + i: query token i of query head hk * GROUP + g.
    offs_r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_valid = offs_r < R
    g = offs_r // Sq
    i = offs_r % Sq
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_valid = offs_d < D
    dv_valid = offs_dv < DV
    length = tl.load(LENS + b)

    h = hk * GROUP + g
    q = tl.load(Q + b.to(tl.int64) * sqb + h[:, None].to(tl.int64) * sqh + i[:, None] * sqm + offs_d[None, :] * sqd,
                mask=r_valid[:, None] & d_valid[None, :], other=0.0)
    # Causal aligned bottom-right: query i of Sq sees cache positions <= length - Sq + i.
    last = tl.where(r_valid, length - 1, -1)
    if IS_CAUSAL:
        last = tl.where(r_valid, length - Sq + i, -1)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    start = split * split_len
    # Never past the cache, whatever the length says: under CUDA graph capture no host checks the lengths.
    end = tl.minimum(tl.minimum(start + split_len, length), s_max)
    if WINDOWED:  # no query's window starts before the first query's: nothing earlier is read
        start = tl.maximum(start, length - Sq - window + 1)
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < end
        k = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                    mask=n_valid[None, :] & d_valid[:, None], other=0.0)
        s, _t = capped(_dot(q, k, IEEE), qk_scale, cap_in, cap_out, SOFTCAP)
        visible = n_valid[None, :] & (offs_n[None, :] <= last[:, None])
        if WINDOWED:
            visible = visible & (last[:, None] - offs_n[None, :] < window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=n_valid[:, None] & dv_valid[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse2 = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    row = (bhk.to(tl.int64) * num_splits + split) * R + offs_r
    tl.store(PO + row[:, None] * DV + offs_dv[None, :], out, mask=r_valid[:, None] & dv_valid[None, :])
    tl.store(PLSE + row, lse2, mask=r_valid)


@triton.jit
def _decode_combine_kernel(
    PO, PLSE, OUT, SINKS, sob, soh, som, sod, Hkv, GROUP, Sq, DV, R, num_splits,
    HAS_SINKS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bhk = tl.program_id(0)
    b = bhk // Hkv
    hk = bhk % Hkv
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_dv = tl.arange(0, BLOCK_DV)
    r_valid = offs_r < R
    mask = r_valid[:, None] & (offs_dv < DV)[None, :]
    base = bhk.to(tl.int64) * num_splits * R
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(0, num_splits):
        m = tl.maximum(m, tl.load(PLSE + base + s * R + offs_r, mask=r_valid, other=float("-inf")))
    g = offs_r // Sq
    h = hk * GROUP + g
    if HAS_SINKS:  # the head's sink logit, in the split kernel's log2 units: one more term of the denominator
        sink = tl.load(SINKS + h, mask=r_valid, other=0.0).to(tl.float32) * 1.4426950408889634
        m = tl.maximum(m, sink)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], tl.float32)
    for s in range(0, num_splits):
        w = tl.math.exp2(tl.load(PLSE + base + s * R + offs_r, mask=r_valid, other=float("-inf")) - m_safe)
        part = tl.load(PO + (base + s * R + offs_r)[:, None] * DV + offs_dv[None, :], mask=mask, other=0.0)
        acc += w[:, None] * part
        total += w
    if HAS_SINKS:
        total += tl.math.exp2(sink - m_safe)
    out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
    i = offs_r % Sq
    tl.store(OUT + b.to(tl.int64) * sob + h[:, None].to(tl.int64) * soh + i[:, None] * som + offs_dv[None, :] * sod,
             out.to(OUT.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- launchers


def _batch_chunks(B: int, heads: int) -> list[slice]:
    """Batch ranges whose batch x heads fits in one grid dimension."""
    per = max(1, MAX_GRID_Y // max(heads, 1))
    return [slice(i, min(i + per, B)) for i in range(0, B, per)]


INT32_MAX = 2**31 - 1


def offset_reasons(tensors: dict[str, tuple[tuple[int, ...], tuple[int, ...]] | torch.Tensor | None]) -> list[str]:
    """Why the kernels cannot address these [B, H, S, D] tensors (empty: they can): name -> tensor, or (shape,
    strides) of one the launcher will allocate. Batch and head offsets are 64-bit; a row or column index times
    its stride inside one (batch, head) slice is a 32-bit product, which must stay below 2^31."""
    reasons = []
    for name, t in tensors.items():
        if t is None:
            continue
        shape, strides = (tuple(t.shape), t.stride()) if isinstance(t, torch.Tensor) else t
        if slice_reach(shape, strides) > INT32_MAX:
            reasons.append(f"{name}: shape {shape} with strides {strides} puts elements of one (batch, head) slice "
                           "2^31 or more apart, past the Triton kernels' 32-bit offsets (use the torch backend)")
    return reasons


def _check_launch(heads: tuple[str, int],
                  tensors: dict[str, tuple[tuple[int, ...], tuple[int, ...]] | torch.Tensor | None]) -> None:
    """ValueError before a launch whose grid or offsets the kernels cannot handle. heads: (the tensor whose
    heads share grid dimension 1 with the batch, their number); a batch is split, one sequence's heads not."""
    name, count = heads
    if count > MAX_GRID_Y:
        raise ValueError(f"{name}: {count} heads exceed the {MAX_GRID_Y} programs of grid dimension 1")
    reasons = offset_reasons(tensors)
    if reasons:
        raise ValueError("; ".join(reasons))


def _dense(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape, strides) of a contiguous tensor the launcher allocates."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(shape), tuple(reversed(strides))


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # tl.dot needs every dimension >= 16


def _fwd_config(device: torch.device, Sq: int, Sk: int, block_d: int, causal: bool,
                element_size: int = 2) -> dict[str, int]:
    """Tile sizes and launch options. The interpreter runs numpy per tile, so it gets large tiles.

    GPU choices come from a sweep on an H100 (bf16, 16k tokens, S 4096; TFLOP/s of the best vs the
    runner-up): D 128 causal 64x64/4 warps (430 vs 409 for 128x64/8), D 128 full 128x128/8 (486 vs 474),
    D 64 128x64/8 warps (379 causal, 425 full).
    """
    if device.type != "cuda":
        return {"BLOCK_M": min(128, max(16, triton.next_power_of_2(Sq))),
                "BLOCK_N": min(128, max(16, triton.next_power_of_2(Sk)))}
    if block_d <= 64:
        cfg = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    elif block_d <= 128:
        cfg = ({"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3} if causal else
               {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3})
    else:  # D 256: q, k and v tiles must fit in shared memory
        cfg = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2}
    if element_size > 2:
        # fp32 tiles take twice the shared memory of the 16-bit ones the sweep measured.
        cfg.update(BLOCK_N=min(cfg["BLOCK_N"], 64), num_stages=2)
    cfg["BLOCK_M"] = min(cfg["BLOCK_M"], max(16, triton.next_power_of_2(Sq)))
    return cfg


def _bwd_config(device: torch.device, Sq: int, Sk: int, block_d: int) -> dict[str, int]:
    """H100 sweep (bf16, D 128, causal, S 4096): 64x64 tiles with 4 warps, 2 stages gave 312 TFLOP/s;
    8 warps 154, 64x128 238, 128x64 184."""
    if device.type != "cuda":
        return {"BLOCK_M": min(64, max(16, triton.next_power_of_2(Sq))),
                "BLOCK_N": min(64, max(16, triton.next_power_of_2(Sk)))}
    if block_d <= 128:  # fp32 at D 128 ran with these tiles on the H100 too
        return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}


def _cap_args(scale: float, softcap: float, window: int) -> dict[str, object]:
    """The kernels' soft-cap and window arguments: (qk_scale, cap_in, cap_out, window) and their constexpr flags.
    softcap c > 0: scores c * tanh(scale * q.k / c); window w > 0: row i sees keys i - w < j <= i (causal)."""
    cap_in, cap_out = (scale / softcap, softcap * LOG2E) if softcap > 0 else (0.0, 0.0)
    return {"args": (scale * LOG2E, cap_in, cap_out, int(window)),
            "flags": {"SOFTCAP": softcap > 0, "WINDOWED": window > 0}}


def _mask_args(mask: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], int]:
    """(tensor the kernel reads, its 4 strides, MASK_KIND). Booleans are read as bytes."""
    if mask is None:
        return q, (0, 0, 0, 0), MASK_NONE
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), tuple(mask.stride()), MASK_BOOL
    return mask, tuple(mask.stride()), MASK_ADD


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  is_causal: bool, scale: float, config: dict[str, int] | None = None, softcap: float = 0.0,
                  window: int = 0, sinks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv], mask None or [B, Hq, Sq, Sk] (any
    strides, bool or additive) -> (out [B, Hq, Sq, Dv] in q's dtype, lse [B, Hq, Sq] fp32, natural log).
    config: tile/launch options overriding the heuristic (for tuning scripts). softcap > 0: scores capped as
    softcap * tanh(score / softcap) before the mask; window > 0 (causal only): row i sees keys i - window < j <= i,
    and key blocks outside every row's window are skipped. sinks: None or [Hq], each head's sink logit in every
    row's softmax (the lse includes it)."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk, DV = k.shape[1], k.shape[2], v.shape[3]
    _check_launch(("query", Hq), {"query": q, "key": k, "value": v, "attn_mask": mask, "out": _dense((B, Hq, Sq, DV))})
    chunks = _batch_chunks(B, Hq)
    if len(chunks) > 1:
        parts = [attention_fwd(q[c], k[c], v[c], None if mask is None else mask[c], is_causal, scale, config,
                               softcap, window, sinks) for c in chunks]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    out = memory.empty((B, Hq, Sq, DV), dtype=q.dtype, device=q.device)
    lse = memory.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    block_d, block_dv = _block_d(D), _block_d(DV)
    cfg = config or _fwd_config(q.device, Sq, Sk, max(block_d, block_dv), is_causal, q.element_size())
    m, mstrides, kind = _mask_args(mask, q)
    grid = (triton.cdiv(Sq, cfg["BLOCK_M"]), B * Hq)
    cap = _cap_args(scale, softcap, window)
    sink_logits = lse if sinks is None else sinks.to(torch.float32).contiguous()  # lse: an unread placeholder
    _attn_fwd_kernel[grid](
        q, k, v, m, out, lse, sink_logits, *q.stride(), *k.stride(), *v.stride(), *mstrides, *out.stride(),
        Hq, Hq // Hkv, Sq, Sk, D, DV, *cap["args"], **cap["flags"], HAS_SINKS=sinks is not None,
        IS_CAUSAL=is_causal, MASK_KIND=kind, IEEE=q.dtype == torch.float32,
        EVEN_D=D == block_d and DV == block_dv, BLOCK_D=block_d, BLOCK_DV=block_dv, **cfg,
    )
    return out, lse


def attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  mask: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor, is_causal: bool,
                  scale: float, softcap: float = 0.0, window: int = 0,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) with the shapes of q, k, v (contiguous), from the forward's out and lse (softcap
    and window: the forward's)."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk, DV = k.shape[1], k.shape[2], v.shape[3]
    _check_launch(("query", Hq), {"query": q, "key": k, "value": v, "attn_mask": mask, "out": out, "grad_out": grad_out,
                       "grad_query": _dense(tuple(q.shape)), "grad_key": _dense(tuple(k.shape)),
                       "grad_value": _dense(tuple(v.shape))})
    chunks = _batch_chunks(B, Hq)
    if len(chunks) > 1:
        parts = [attention_bwd(grad_out[c], q[c], k[c], v[c], None if mask is None else mask[c], out[c], lse[c],
                               is_causal, scale, softcap, window) for c in chunks]
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))
    block_d, block_dv = _block_d(D), _block_d(DV)
    delta = memory.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    pre_m = min(64, max(16, triton.next_power_of_2(Sq)))
    _attn_bwd_preprocess_kernel[(triton.cdiv(Sq, pre_m), B * Hq)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), Hq, Sq, DV, BLOCK_M=pre_m, BLOCK_DV=block_dv)
    dq = memory.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = memory.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = memory.empty(v.shape, dtype=v.dtype, device=v.device)
    cfg = _bwd_config(q.device, Sq, Sk, max(block_d, block_dv))
    m, mstrides, kind = _mask_args(mask, q)
    cap = _cap_args(scale, softcap, window)
    qk_scale, cap_in, cap_out, window = cap["args"]
    common = dict(IS_CAUSAL=is_causal, MASK_KIND=kind, IEEE=q.dtype == torch.float32, BLOCK_D=block_d,
                  BLOCK_DV=block_dv, **cap["flags"], **cfg)
    strides = (*q.stride(), *k.stride(), *v.stride(), *mstrides, *grad_out.stride())
    _attn_bwd_dkdv_kernel[(triton.cdiv(Sk, cfg["BLOCK_N"]), B * Hkv)](
        q, k, v, m, grad_out, lse, delta, dk, dv, *strides, *dk.stride(), *dv.stride(),
        Hq, Hkv, Hq // Hkv, Sq, Sk, D, DV, qk_scale, scale, cap_in, cap_out, window, **common)
    _attn_bwd_dq_kernel[(triton.cdiv(Sq, cfg["BLOCK_M"]), B * Hq)](
        q, k, v, m, grad_out, lse, delta, dq, *strides, *dq.stride(),
        Hq, Hq // Hkv, Sq, Sk, D, DV, qk_scale, scale, cap_in, cap_out, window, **common)
    return dq, dk, dv


def _decode_config(device: torch.device, s_max: int, block_d: int, element_size: int) -> tuple[int, dict[str, int]]:
    """(BLOCK_N, launch options) of the decode split kernel."""
    if device.type != "cuda":
        return min(128, max(16, triton.next_power_of_2(s_max))), {}
    # fp32 K/V tiles with 3 stages overflow an A100's shared memory (tests/attention_compile_check.py).
    return (64 if block_d <= 128 else 32), {"num_warps": 4, "num_stages": 3 if element_size <= 2 else 2}


def _num_splits(device: torch.device, programs: int, s_max: int, block_n: int) -> int:
    """Cache splits so that batch x KV heads x splits fills the GPU (a few splits on the interpreter)."""
    blocks = triton.cdiv(s_max, block_n)
    if device.type != "cuda":
        return max(1, min(3, blocks))
    target = 2 * multiprocessor_count(device)
    return max(1, min(blocks, triton.cdiv(target, programs), 128))


def _check_lengths(lengths: torch.Tensor, q: torch.Tensor) -> None:
    """lengths as the split kernel reads it: one integer per sequence, on q's device (its values are clamped to
    the cache in the kernel: reading them here would need a device sync, and none is allowed in a CUDA graph)."""
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths: expected dtype int32 or int64, got {lengths.dtype}")
    if tuple(lengths.shape) != (q.shape[0],) or lengths.device != q.device:
        raise ValueError(f"lengths: expected shape ({q.shape[0]},) on q's device {q.device}, got "
                         f"{tuple(lengths.shape)} on {lengths.device}")


def decode_fwd(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
               causal: bool, scale: float, softcap: float = 0.0, window: int = 0,
               sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, Hq, Sq, D] against the first lengths[b] positions of k_cache/v_cache [B, Hkv, S_max, D(v)]
    (lengths: int32 [B], already including the newly written tokens) -> out [B, Hq, Sq, Dv]. softcap and window
    (causal only: query i at position p = length - Sq + i sees p - window < j <= p) as attention_fwd's. sinks:
    [Hq] logits, one more term of each row's softmax denominator (added where the splits are combined)."""
    B, Hq, Sq, D = q.shape
    Hkv, s_max, DV = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    _check_lengths(lengths, q)
    _check_launch(("k_cache", Hkv), {"q": q, "k_cache": k_cache, "v_cache": v_cache, "out": _dense((B, Hq, Sq, DV))})
    chunks = _batch_chunks(B, Hkv)
    if len(chunks) > 1:
        return torch.cat([decode_fwd(q[c], k_cache[c], v_cache[c], lengths[c], causal, scale, softcap, window, sinks)
                          for c in chunks])
    group = Hq // Hkv
    rows = group * Sq
    block_d, block_dv = _block_d(D), _block_d(DV)
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    block_n, launch = _decode_config(q.device, s_max, max(block_d, block_dv), q.element_size())
    splits = _num_splits(q.device, B * Hkv, s_max, block_n)
    split_len = triton.cdiv(triton.cdiv(s_max, splits), block_n) * block_n
    splits = triton.cdiv(s_max, split_len)
    workspace = memory.empty((B * Hkv * splits * rows * (DV + 1),), dtype=torch.float32, device=q.device)
    partial_out = workspace[: B * Hkv * splits * rows * DV]
    partial_lse = workspace[B * Hkv * splits * rows * DV :]
    cap = _cap_args(scale, softcap, window)
    _decode_split_kernel[(splits, B * Hkv, triton.cdiv(rows, block_m))](
        q, k_cache, v_cache, lengths, partial_out, partial_lse, *q.stride(), *k_cache.stride(),
        *v_cache.stride(), Hkv, group, Sq, D, DV, rows, splits, split_len, s_max, *cap["args"], **cap["flags"],
        IS_CAUSAL=causal, IEEE=q.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        BLOCK_DV=block_dv, **launch,
    )
    out = memory.empty((B, Hq, Sq, DV), dtype=q.dtype, device=q.device)
    block_r = min(64, max(1, triton.next_power_of_2(rows)))
    _decode_combine_kernel[(B * Hkv, triton.cdiv(rows, block_r))](
        partial_out, partial_lse, out, partial_lse if sinks is None else sinks.contiguous(), *out.stride(), Hkv, group,
        Sq, DV, rows, splits, HAS_SINKS=sinks is not None, BLOCK_R=block_r, BLOCK_DV=block_dv,
    )
    return out
