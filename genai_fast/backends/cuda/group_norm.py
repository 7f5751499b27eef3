"""Launcher for the CUDA GroupNorm(+SiLU) kernels (csrc/cuda/group_norm.cu), compiled by NVRTC via CuPy.

Three launches on torch's current stream (see the .cu file for the kernels):
  1. stats:    grid (N * num_chunks, channel_blocks): per-(n, chunk, c) fp32 partial (mean, M2);
  2. finalize: grid (N * G): per-group Chan merge in double -> per-(n, c) fp32 scale and shift;
  3. apply:    grid-stride, y = x * scale + shift (+ SiLU), in x's dtype and layout.
The spatial axis is split into chunks so that N * num_chunks * channel_blocks is about 4x the SM count:
batch 1 fills the GPU. The reductions have a fixed order, so results are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genai_fast.backends import memory
from genai_fast.backends.cuda import f64, i32, i64, launch, load_kernel, multiprocessor_count, ptr
from genai_fast.ops.layout import as_ncs

SOURCE = "group_norm.cu"
THREADS = 256  # every kernel's block size (the .cu file's GN_THREADS)
BLOCKS_PER_SM = 4  # stats blocks aimed at per SM
APPLY_BLOCKS_PER_SM = 8  # resident apply blocks per SM; the grid-stride loop covers the rest
MAX_CHUNK_ROWS = 1 << 20  # keeps per-block counts exact in fp32
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535

_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class GroupNormPlan:
    """How one call is split: vector width, channels per stats block, chunks of the spatial axis."""

    channels_last: bool
    vec: int  # elements per vector access: 16 bytes' worth, or 1 (scalar)
    block_c: int  # channels per stats block
    channel_blocks: int  # stats grid y
    num_chunks: int  # chunks of the spatial axis per sample (stats grid x = N * num_chunks)
    chunk_len: int  # rows of the spatial axis per chunk (the last may be shorter)
    apply_blocks: int  # apply grid x


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def plan_group_norm(N: int, C: int, S: int, *, channels_last: bool, itemsize: int, aligned: bool,
                    sm_count: int) -> GroupNormPlan:
    """The launch plan for x as [N, C, S] (N, C, S >= 1) with elements of `itemsize` bytes.

    aligned: x and the output start on 16-byte boundaries (vector accesses need it, together with the
    innermost dimension, C for channels-last and S for channels-first, being a multiple of the width).
    """
    if min(N, C, S) < 1:
        raise ValueError(f"plan_group_norm: expected N, C, S >= 1, got {N}, {C}, {S}")
    width = 16 // itemsize
    inner = C if channels_last else S
    vec = width if aligned and inner % width == 0 else 1
    if channels_last:
        # threads_c threads side by side read block_c = threads_c * vec contiguous channels of a row
        # (up to 256 bytes); the other THREADS // threads_c thread rows walk the chunk's rows.
        threads_c = min(max(1, (256 // itemsize) // vec), _next_pow2(_ceil_div(C, vec)))
        block_c = threads_c * vec
        rows_step = THREADS // threads_c
        min_rows = max(rows_step, _ceil_div(4096, block_c))  # at least ~4K elements per block
        align = 1
    else:
        # one warp per channel, its lanes over the chunk's contiguous rows
        block_c = THREADS // 32
        min_rows = 2 * 32 * vec  # at least two vector loads per lane
        align = vec  # chunks start on vector boundaries
    channel_blocks = _ceil_div(C, block_c)
    wanted_chunks = max(1, _ceil_div(BLOCKS_PER_SM * sm_count, N * channel_blocks))
    chunk_len = min(max(_ceil_div(S, wanted_chunks), min_rows), MAX_CHUNK_ROWS)
    chunk_len = min(_ceil_div(chunk_len, align) * align, _ceil_div(S, align) * align)
    num_chunks = _ceil_div(S, chunk_len)
    apply_blocks = max(1, min(_ceil_div(N * C * S // vec, THREADS), APPLY_BLOCKS_PER_SM * sm_count))
    if N * num_chunks > MAX_GRID_X or channel_blocks > MAX_GRID_Y:
        raise ValueError(f"group_norm (cuda): shape N={N}, C={C}, S={S} exceeds the launch grid limits")
    return GroupNormPlan(channels_last, vec, block_c, channel_blocks, num_chunks, chunk_len, apply_blocks)


def _check_param(name: str, param: torch.Tensor | None, C: int, device: torch.device) -> None:
    if param is None:
        return
    if tuple(param.shape) != (C,):
        raise ValueError(f"{name}: expected shape ({C},), got {tuple(param.shape)}")
    if param.device != device:
        raise ValueError(f"{name}: expected a tensor on x's device {device}, got {param.device}")


def group_norm_fwd(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str | None,
) -> torch.Tensor:
    """GroupNorm over x [N, C, *] (CUDA, fp32/fp16/bf16, contiguous or channels_last), then SiLU if
    activation == "silu". Returns a new tensor with x's shape, dtype and layout."""
    if x.device.type != "cuda":
        raise ValueError(f"x: expected a CUDA tensor, got device {x.device}")
    if x.dtype not in _SUFFIX:
        raise TypeError(f"x: expected float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x: expected at least 2 dimensions [N, C, *], got shape {tuple(x.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    view = as_ncs(x)
    xt = view.tensor
    N, C, S, G = view.N, view.C, view.S, int(num_groups)
    if G < 1 or C % G != 0:
        raise ValueError(f"num_groups: expected a positive divisor of C={C}, got {num_groups}")
    if xt.numel() != N * C * S:
        raise ValueError(f"x: expected N*C*S={N * C * S} elements, got {xt.numel()}")
    _check_param("weight", weight, C, x.device)
    _check_param("bias", bias, C, x.device)

    out = memory.empty_like(xt)  # NaN-filled under memory.poison_outputs()
    if out.numel() == 0:
        return view.restore(out)
    if out.stride() != xt.stride():
        raise RuntimeError(f"output strides {out.stride()} differ from the input's {xt.stride()}")
    if N * G > MAX_GRID_X:
        raise ValueError(f"group_norm (cuda): N * num_groups = {N * G} exceeds the launch grid limit")

    device = x.device
    index = device.index if device.index is not None else torch.cuda.current_device()
    aligned = xt.data_ptr() % 16 == 0 and out.data_ptr() % 16 == 0
    plan = plan_group_norm(N, C, S, channels_last=view.channels_last, itemsize=xt.element_size(),
                           aligned=aligned, sm_count=multiprocessor_count(index))

    w = None if weight is None else weight.detach().to(device=device, dtype=torch.float32).contiguous()
    b = None if bias is None else bias.detach().to(device=device, dtype=torch.float32).contiguous()

    # One fp32 workspace: partial means, partial M2s, scales, shifts; each part starts on 16 bytes.
    partials = _ceil_div(N * plan.num_chunks * C, 4) * 4
    params = _ceil_div(N * C, 4) * 4
    ws = memory.empty((2 * partials + 2 * params,), dtype=torch.float32, device=device)
    ws_mean, ws_m2 = ws[:partials], ws[partials:2 * partials]
    scale, shift = ws[2 * partials:2 * partials + params], ws[2 * partials + params:]

    layout = "cl" if plan.channels_last else "cf"
    suffix = _SUFFIX[x.dtype]
    vectorized = i32(1 if plan.vec > 1 else 0)
    stats = load_kernel(SOURCE, f"group_norm_stats_{layout}_{suffix}", index)
    finalize = load_kernel(SOURCE, "group_norm_finalize", index)
    apply = load_kernel(SOURCE, f"group_norm_apply_{layout}_{suffix}", index)

    launch(stats, (N * plan.num_chunks, plan.channel_blocks), (THREADS,),
           (ptr(xt), ptr(ws_mean), ptr(ws_m2), i64(C), i64(S), i64(plan.num_chunks), i64(plan.chunk_len),
            i64(plan.block_c), vectorized), device=index)
    launch(finalize, (N * G,), (THREADS,),
           (ptr(ws_mean), ptr(ws_m2), ptr(w), ptr(b), ptr(scale), ptr(shift), i64(C), i64(S), i64(G),
            i64(plan.num_chunks), i64(plan.chunk_len), f64(eps)), device=index)
    launch(apply, (plan.apply_blocks,), (THREADS,),
           (ptr(xt), ptr(out), ptr(scale), ptr(shift), i64(N * C * S), i64(C), i64(S),
            i32(1 if activation == "silu" else 0), vectorized), device=index)
    return view.restore(out)
