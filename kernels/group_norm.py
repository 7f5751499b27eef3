"""Triton GroupNorm(+SiLU): a split reduction in three launches, for both memory layouts.

x is read as [N, C, S] with runtime strides (channels-first: stride_s == 1; channels-last:
stride_c == 1; Triton specialises on the stride that equals 1, so each layout gets coalesced loads).

1. stats:    grid (N, chunks, channel blocks). Each program reduces a chunk of S for BLOCK_C channels
             and writes per-(n, chunk, c) partial mean (as hi + lo) and M2 (tile corrected two-pass,
             merged with Chan's formula).
             Splitting S into chunks is what lets batch 1 fill the GPU: one program per (n, group)
             would use 32 of an H100's 132 SMs.
2. finalize: grid (N * G). Merges the chunk x channel partials of a group (Chan's formula, corrected two
             passes over the partials) and writes per-(n, c) scale = rstd * w, center = the group mean's
             fp32 part mean_hi and shift = b - mean_lo * scale.
3. apply:    grid as stats. y = act((x - center) * scale + shift), stored in x's dtype.
All statistics are fp32. Precision where the variance is ~0 against the mean (a group of one value far from 0,
rstd ~1 / sqrt(eps)): any error in the mean, or in x * scale + (b - mean * scale) (rounded at |mean * scale|'s
ulp), comes out 1 / sqrt(eps) times larger. So the means are carried as hi + lo pairs, finer than one fp32
value, and x is centred on the group's mean_hi before scaling (exact for x near it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory
from genai_fast.backends.availability import multiprocessor_count
from genai_fast.ops.layout import as_ncs

MAX_GRID_Z = 65535  # CUDA's limit on grid dimension 2, which runs over the channel blocks


@triton.jit
def _two_sum(a, b):
    """(s, e): s = a + b rounded and e its rounding error, so that s + e == a + b exactly."""
    s = a + b
    b_in_s = s - a
    return s, (a - (s - b_in_s)) + (b - b_in_s)


@triton.jit
def _group_norm_stats_kernel(
    x_ptr, mean_hi_ptr, mean_lo_ptr, m2_ptr,
    C, S, stride_n, stride_c, stride_s, chunk_len, num_chunks,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    s_begin = chunk * chunk_len
    s_end = tl.minimum(s_begin + chunk_len, S)
    base = x_ptr + n.to(tl.int64) * stride_n
    mean_hi = tl.zeros([BLOCK_C], dtype=tl.float32)  # the running mean is mean_hi + mean_lo
    mean_lo = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    count = 0.0
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = (offs_s < s_end)[:, None] & c_mask[None, :]
        ptrs = base + offs_s[:, None].to(tl.int64) * stride_s + offs_c[None, :].to(tl.int64) * stride_c
        x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        tile_count = tl.minimum(s_end - s0, BLOCK_S).to(tl.float32)
        tile_hi = tl.sum(x, axis=0) / tile_count
        deviation = tl.where(mask, x - tile_hi[None, :], 0.0)
        tile_deviation = tl.sum(deviation, axis=0)
        # Corrected two-pass: the fp32 sum leaves tile_hi ulps off the mean, by tile_lo; the tile's mean is
        # tile_hi + tile_lo and its M2 the squared deviations less what tile_lo accounts for.
        tile_lo = tile_deviation / tile_count
        tile_m2 = tl.maximum(tl.sum(deviation * deviation, axis=0) - tile_deviation * tile_lo, 0.0)
        # Chan's merge of (count, mean, m2) with the tile's statistics, the mean kept as hi + lo: the hi parts'
        # step is added exactly (its rounding error goes to lo), so no tile's lo is lost to an fp32 rounding.
        total = count + tile_count
        r = tile_count / total
        delta_hi = tile_hi - mean_hi
        delta_lo = tile_lo - mean_lo
        mean_hi, rounding = _two_sum(mean_hi, delta_hi * r)
        mean_lo = mean_lo + delta_lo * r + rounding
        delta = delta_hi + delta_lo
        m2 = m2 + tile_m2 + delta * delta * (count * r)
        count = total
    out = (n * num_chunks + chunk).to(tl.int64) * C + offs_c
    tl.store(mean_hi_ptr + out, mean_hi, mask=c_mask)
    tl.store(mean_lo_ptr + out, mean_lo, mask=c_mask)
    tl.store(m2_ptr + out, m2, mask=c_mask)


@triton.jit
def _partials_tile(k0, c0, row0, c_first, C, S, chunk_len, num_chunks, channels,
                   BLOCK_K: tl.constexpr, BLOCK_CG: tl.constexpr):
    """Chunks [k0, k0 + BLOCK_K) x group channels [c0, c0 + BLOCK_CG): element counts per chunk, flat
    indices into the [N, num_chunks, C] partials, and the validity mask."""
    ks = k0 + tl.arange(0, BLOCK_K)
    cs = c0 + tl.arange(0, BLOCK_CG)
    counts = tl.where(ks < num_chunks, tl.minimum(chunk_len, S - ks * chunk_len), 0).to(tl.float32)
    mask = (ks < num_chunks)[:, None] & (cs < channels)[None, :]
    idx = (row0 + ks[:, None]) * C + c_first + cs[None, :]
    return counts, idx, mask


@triton.jit
def _group_norm_finalize_kernel(
    mean_hi_ptr, mean_lo_ptr, m2_ptr, weight_ptr, bias_ptr, scale_ptr, center_ptr, shift_ptr,
    C, S, G, chunk_len, num_chunks, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // G
    group = pid % G
    channels = C // G
    c_first = group * channels
    group_count = (S * channels).to(tl.float32)
    row0 = (n * num_chunks).to(tl.int64)

    # Pass 1 over the partials: the group mean's fp32 part, from the chunks' mean_hi weighted by their counts.
    weighted = tl.zeros([BLOCK_K, BLOCK_CG], dtype=tl.float32)
    for k0 in range(0, num_chunks, BLOCK_K):
        for c0 in range(0, channels, BLOCK_CG):
            counts, idx, mask = _partials_tile(k0, c0, row0, c_first, C, S, chunk_len, num_chunks, channels,
                                               BLOCK_K, BLOCK_CG)
            weighted += counts[:, None] * tl.load(mean_hi_ptr + idx, mask=mask, other=0.0)
    mean_hi = tl.sum(tl.sum(weighted, axis=1), axis=0) / group_count

    # Pass 2: M2 = sum(M2_i + n_i * (mean_i - mean_hi)^2) (exact merge, no E[x^2] - E[x]^2), and the deviations
    # sum(n_i * (mean_i - mean_hi)): the group mean is mean_hi + mean_lo and M2 less what mean_lo accounts for
    # (corrected two-pass, as in the stats kernel).
    acc = tl.zeros([BLOCK_K, BLOCK_CG], dtype=tl.float32)
    dev = tl.zeros([BLOCK_K, BLOCK_CG], dtype=tl.float32)
    for k0 in range(0, num_chunks, BLOCK_K):
        for c0 in range(0, channels, BLOCK_CG):
            counts, idx, mask = _partials_tile(k0, c0, row0, c_first, C, S, chunk_len, num_chunks, channels,
                                               BLOCK_K, BLOCK_CG)
            chunk_hi = tl.load(mean_hi_ptr + idx, mask=mask, other=0.0)
            chunk_lo = tl.load(mean_lo_ptr + idx, mask=mask, other=0.0)
            chunk_m2 = tl.load(m2_ptr + idx, mask=mask, other=0.0)
            delta = tl.where(mask, (chunk_hi - mean_hi) + chunk_lo, 0.0)
            acc += tl.where(mask, chunk_m2 + counts[:, None] * delta * delta, 0.0)
            dev += counts[:, None] * delta
    deviation = tl.sum(tl.sum(dev, axis=1), axis=0)
    mean_lo = deviation / group_count
    m2 = tl.maximum(tl.sum(tl.sum(acc, axis=1), axis=0) - deviation * mean_lo, 0.0)
    rstd = 1.0 / tl.sqrt(m2 / group_count + eps)

    for c0 in range(0, channels, BLOCK_CG):
        cs = c_first + c0 + tl.arange(0, BLOCK_CG)
        c_mask = (c0 + tl.arange(0, BLOCK_CG)) < channels
        scale = tl.full([BLOCK_CG], 1.0, tl.float32) * rstd
        if HAS_WEIGHT:
            scale = scale * tl.load(weight_ptr + cs, mask=c_mask, other=1.0)
        b = tl.zeros([BLOCK_CG], tl.float32)
        if HAS_BIAS:
            b = tl.load(bias_ptr + cs, mask=c_mask, other=0.0)
        out = n.to(tl.int64) * C + cs
        tl.store(scale_ptr + out, scale, mask=c_mask)
        tl.store(center_ptr + out, tl.zeros([BLOCK_CG], tl.float32) + mean_hi, mask=c_mask)
        # (x - mean_hi - mean_lo) * scale + b, with mean_lo's part (a few ulps of the mean, times scale) in shift.
        tl.store(shift_ptr + out, tl.fma(-mean_lo, scale, b), mask=c_mask)


@triton.jit
def _group_norm_apply_kernel(
    x_ptr, out_ptr, scale_ptr, center_ptr, shift_ptr,
    C, S, stride_n, stride_c, stride_s, chunk_len,
    SILU: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    scale = tl.load(scale_ptr + n.to(tl.int64) * C + offs_c, mask=c_mask, other=0.0)
    center = tl.load(center_ptr + n.to(tl.int64) * C + offs_c, mask=c_mask, other=0.0)
    shift = tl.load(shift_ptr + n.to(tl.int64) * C + offs_c, mask=c_mask, other=0.0)
    s_begin = chunk * chunk_len
    s_end = tl.minimum(s_begin + chunk_len, S)
    offset_n = n.to(tl.int64) * stride_n
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = (offs_s < s_end)[:, None] & c_mask[None, :]
        offsets = offset_n + offs_s[:, None].to(tl.int64) * stride_s + offs_c[None, :].to(tl.int64) * stride_c
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        # x - center is exact for x near the mean (no |mean * scale| ulps), and the fma, which the GPU would fuse
        # anyway, is explicit so that the interpreter rounds the same way.
        y = tl.fma(x - center[None, :], scale[None, :], shift[None, :])
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def _tiles(channels_last: bool, C: int, S: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_C): the contiguous axis gets the long side; about 4096 elements a tile."""
    if channels_last:
        block_c = min(triton.next_power_of_2(C), 128)
        return max(1, min(4096 // block_c, triton.next_power_of_2(S))), block_c
    block_s = min(triton.next_power_of_2(S), 1024)
    return block_s, max(1, min(4096 // block_s, triton.next_power_of_2(C)))


def _num_programs_target(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the CPU interpreter: few programs keep tests fast
    return 4 * multiprocessor_count(device)


def group_norm_fwd(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str | None,
) -> torch.Tensor:
    """Launch the three kernels on x [N, C, *] (CUDA, or CPU under TRITON_INTERPRET=1)."""
    view = as_ncs(x)
    t, N, C, S, G = view.tensor, view.N, view.C, view.S, num_groups
    if G < 1 or C % G:
        raise ValueError(f"num_groups: expected a positive divisor of C={C}, got {num_groups}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (C,):
            raise ValueError(f"{name}: expected shape ({C},), got {tuple(param.shape)}")
    stride_c, stride_s = (1, C) if view.channels_last else (S, 1)
    block_s, block_c = _tiles(view.channels_last, C, S)
    channel_blocks = triton.cdiv(C, block_c)
    if channel_blocks > MAX_GRID_Z:
        raise ValueError(f"x: C={C} channels need {channel_blocks} channel blocks, above grid dimension 2's "
                         f"{MAX_GRID_Z}")
    max_chunks = triton.cdiv(S, block_s)
    num_chunks = max(1, min(max_chunks, triton.cdiv(_num_programs_target(x.device), N * channel_blocks)))
    chunk_len = triton.cdiv(triton.cdiv(S, num_chunks), block_s) * block_s  # whole tiles per chunk
    num_chunks = triton.cdiv(S, chunk_len)

    # One workspace allocation: partial means (hi, lo) and M2s, per-(n, c) scale, center and shift.
    partials = N * num_chunks * C
    workspace = memory.empty((3 * partials + 3 * N * C,), device=x.device, dtype=torch.float32)
    partial_hi, partial_lo, partial_m2, params = workspace.split([partials, partials, partials, 3 * N * C])
    scale, center, shift = params.split(N * C)
    w = weight.detach().to(torch.float32).contiguous() if weight is not None else scale  # dummy if absent
    b = bias.detach().to(torch.float32).contiguous() if bias is not None else scale
    out = memory.empty_like(t)

    grid = (N, num_chunks, channel_blocks)
    _group_norm_stats_kernel[grid](
        t, partial_hi, partial_lo, partial_m2, C, S, C * S, stride_c, stride_s, chunk_len, num_chunks,
        BLOCK_S=block_s, BLOCK_C=block_c,
    )
    channels = C // G
    _group_norm_finalize_kernel[(N * G,)](
        partial_hi, partial_lo, partial_m2, w, b, scale, center, shift, C, S, G, chunk_len, num_chunks, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_K=min(triton.next_power_of_2(num_chunks), 32),
        BLOCK_CG=min(triton.next_power_of_2(channels), 128),
    )
    _group_norm_apply_kernel[grid](
        t, out, scale, center, shift, C, S, C * S, stride_c, stride_s, chunk_len,
        SILU=activation == "silu", BLOCK_S=block_s, BLOCK_C=block_c,
    )
    return view.restore(out)
