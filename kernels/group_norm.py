"""Triton GroupNorm(+SiLU): a split reduction in three launches, for both memory layouts.

x is read as [N, C, S] with runtime strides (channels-first: stride_s == 1; channels-last:
stride_c == 1; Triton specialises on the stride that equals 1, so each layout gets coalesced loads).

1. stats:    grid (N, chunks, channel blocks). Each program reduces a chunk of S for BLOCK_C channels
             and writes per-(n, chunk, c) partial mean and M2 (tile two-pass, merged with Chan's formula).
             Splitting S into chunks is what lets batch 1 fill the GPU: one program per (n, group)
             would use 32 of an H100's 132 SMs.
2. finalize: grid (N * G). Merges the chunk x channel partials of a group (Chan's formula, two passes
             over the partials) and writes per-(n, c) scale = rstd * w and shift = b - mean * scale.
3. apply:    grid as stats. y = act(x * scale + shift), stored in x's dtype.
All statistics are fp32.
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
def _group_norm_stats_kernel(
    x_ptr, mean_ptr, m2_ptr,
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
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    count = 0.0
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = (offs_s < s_end)[:, None] & c_mask[None, :]
        ptrs = base + offs_s[:, None].to(tl.int64) * stride_s + offs_c[None, :].to(tl.int64) * stride_c
        x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        tile_count = tl.minimum(s_end - s0, BLOCK_S).to(tl.float32)
        tile_mean = tl.sum(x, axis=0) / tile_count
        deviation = tl.where(mask, x - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(deviation * deviation, axis=0)
        # Chan's merge of (count, mean, m2) with the tile's statistics.
        total = count + tile_count
        delta = tile_mean - mean
        mean = mean + delta * (tile_count / total)
        m2 = m2 + tile_m2 + delta * delta * (count * tile_count / total)
        count = total
    out = (n * num_chunks + chunk).to(tl.int64) * C + offs_c
    tl.store(mean_ptr + out, mean, mask=c_mask)
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
    mean_ptr, m2_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr,
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

    # Pass 1 over the partials: the group mean, each chunk weighted by its element count.
    weighted = tl.zeros([BLOCK_K, BLOCK_CG], dtype=tl.float32)
    for k0 in range(0, num_chunks, BLOCK_K):
        for c0 in range(0, channels, BLOCK_CG):
            counts, idx, mask = _partials_tile(k0, c0, row0, c_first, C, S, chunk_len, num_chunks, channels,
                                               BLOCK_K, BLOCK_CG)
            weighted += counts[:, None] * tl.load(mean_ptr + idx, mask=mask, other=0.0)
    mean = tl.sum(tl.sum(weighted, axis=1), axis=0) / group_count

    # Pass 2: M2 = sum(M2_i + n_i * (mean_i - mean)^2) (exact merge, no E[x^2] - E[x]^2).
    acc = tl.zeros([BLOCK_K, BLOCK_CG], dtype=tl.float32)
    for k0 in range(0, num_chunks, BLOCK_K):
        for c0 in range(0, channels, BLOCK_CG):
            counts, idx, mask = _partials_tile(k0, c0, row0, c_first, C, S, chunk_len, num_chunks, channels,
                                               BLOCK_K, BLOCK_CG)
            chunk_mean = tl.load(mean_ptr + idx, mask=mask, other=0.0)
            chunk_m2 = tl.load(m2_ptr + idx, mask=mask, other=0.0)
            delta = chunk_mean - mean
            acc += tl.where(mask, chunk_m2 + counts[:, None] * delta * delta, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(acc, axis=1), axis=0) / group_count + eps)

    for c0 in range(0, channels, BLOCK_CG):
        cs = c_first + c0 + tl.arange(0, BLOCK_CG)
        c_mask = (c0 + tl.arange(0, BLOCK_CG)) < channels
        scale = tl.full([BLOCK_CG], 1.0, tl.float32) * rstd
        if HAS_WEIGHT:
            scale = scale * tl.load(weight_ptr + cs, mask=c_mask, other=1.0)
        b = tl.zeros([BLOCK_CG], tl.float32)
        if HAS_BIAS:
            b = tl.load(bias_ptr + cs, mask=c_mask, other=0.0)
        tl.store(scale_ptr + n.to(tl.int64) * C + cs, scale, mask=c_mask)
        tl.store(shift_ptr + n.to(tl.int64) * C + cs, b - mean * scale, mask=c_mask)


@triton.jit
def _group_norm_apply_kernel(
    x_ptr, out_ptr, scale_ptr, shift_ptr,
    C, S, stride_n, stride_c, stride_s, chunk_len,
    SILU: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    scale = tl.load(scale_ptr + n.to(tl.int64) * C + offs_c, mask=c_mask, other=0.0)
    shift = tl.load(shift_ptr + n.to(tl.int64) * C + offs_c, mask=c_mask, other=0.0)
    s_begin = chunk * chunk_len
    s_end = tl.minimum(s_begin + chunk_len, S)
    offset_n = n.to(tl.int64) * stride_n
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = (offs_s < s_end)[:, None] & c_mask[None, :]
        offsets = offset_n + offs_s[:, None].to(tl.int64) * stride_s + offs_c[None, :].to(tl.int64) * stride_c
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        y = x * scale[None, :] + shift[None, :]
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

    # One workspace allocation: partial means, partial M2s, per-(n, c) scale and shift.
    partials = N * num_chunks * C
    workspace = memory.empty((2 * partials + 2 * N * C,), device=x.device, dtype=torch.float32)
    partial_mean, partial_m2 = workspace[:partials], workspace[partials : 2 * partials]
    scale, shift = workspace[2 * partials : 2 * partials + N * C], workspace[2 * partials + N * C :]
    w = weight.detach().to(torch.float32).contiguous() if weight is not None else scale  # dummy if absent
    b = bias.detach().to(torch.float32).contiguous() if bias is not None else scale
    out = memory.empty_like(t)

    grid = (N, num_chunks, channel_blocks)
    _group_norm_stats_kernel[grid](
        t, partial_mean, partial_m2, C, S, C * S, stride_c, stride_s, chunk_len, num_chunks,
        BLOCK_S=block_s, BLOCK_C=block_c,
    )
    channels = C // G
    _group_norm_finalize_kernel[(N * G,)](
        partial_mean, partial_m2, w, b, scale, shift, C, S, G, chunk_len, num_chunks, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_K=min(triton.next_power_of_2(num_chunks), 32),
        BLOCK_CG=min(triton.next_power_of_2(channels), 128),
    )
    _group_norm_apply_kernel[grid](
        t, out, scale, shift, C, S, C * S, stride_c, stride_s, chunk_len,
        SILU=activation == "silu", BLOCK_S=block_s, BLOCK_C=block_c,
    )
    return view.restore(out)
