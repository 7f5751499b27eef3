"""Launcher for the CUDA GroupNorm(+SiLU) kernels (csrc/cuda/group_norm.cu), compiled by NVRTC via CuPy.

Three launches on torch's current stream (see the .cu file for the kernels):
  1. stats:    grid (N * num_chunks, channel_blocks): per-(n, chunk, c) fp32 partial (mean, M2);
  2. finalize: grid (N * G): per-group Chan merge in double -> per-(n, c) fp32 scale and shift;
  3. apply:    grid-stride, y = x * scale + shift (+ SiLU), in x's dtype and layout.
The spatial axis is split into chunks so that the stats grid fills whole waves of resident blocks
(batch 1 fills the GPU too). The reductions have a fixed order, so results are deterministic.
Everything that depends only on the shape (kernels, plan, grids) is prepared once per shape and cached:
on a GPU the Python that launches a small GroupNorm takes longer than its kernels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from genai_fast.backends import memory
from genai_fast.backends.cuda import Launcher, cupy, load_launcher, multiprocessor_count, torch_stream_pointer
from genai_fast.ops.layout import as_ncs

SOURCE = "group_norm.cu"
THREADS = 256  # every kernel's block size (the .cu file's GN_THREADS)
STATS_BLOCKS_PER_SM = 4  # resident stats blocks per SM (the .cu file's GN_STATS_MIN_BLOCKS)
APPLY_BLOCKS_PER_SM = 8  # resident apply blocks per SM when the occupancy query is unavailable
BLOCK_ELEMENTS = 32768  # stats work per block aimed at once the GPU is full (more waves, less tail)
MAX_CHUNK_ROWS = 1 << 20  # keeps per-block counts exact in fp32
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535

_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
# Kernel parameter signatures (see Launcher): p pointer, q long long, i int, d double.
STATS_SIGNATURE = "pppqqqqqi"  # x, ws_mean, ws_m2, C, S, num_chunks, chunk_len, block_c, vec
FINALIZE_SIGNATURE = "pppipippqqqqqd"  # ws_mean, ws_m2, weight, w dtype, bias, b dtype, scale, shift,
#                                        C, S, G, num_chunks, chunk_len, eps
APPLY_SIGNATURE = "ppppqqqii"  # x, y, scale, shift, total, C, S, silu, vec


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


@functools.lru_cache(maxsize=512)
def plan_group_norm(N: int, C: int, S: int, *, channels_last: bool, itemsize: int, aligned: bool,
                    sm_count: int, stats_blocks_per_sm: int = STATS_BLOCKS_PER_SM,
                    apply_blocks_per_sm: int = APPLY_BLOCKS_PER_SM) -> GroupNormPlan:
    """The launch plan for x as [N, C, S] (N, C, S >= 1) with elements of `itemsize` bytes.

    aligned: x and the output start on 16-byte boundaries (vector accesses need it, together with the
    innermost dimension, C for channels-last and S for channels-first, being a multiple of the width).
    The stats grid aims at whole waves of stats_blocks_per_sm * sm_count blocks: one wave for small
    inputs (batch 1 still fills the GPU), more waves of about BLOCK_ELEMENTS elements for large ones.
    The apply grid is one wave of apply_blocks_per_sm * sm_count blocks striding over the tensor.
    """
    if min(N, C, S) < 1:
        raise ValueError(f"plan_group_norm: expected N, C, S >= 1, got {N}, {C}, {S}")
    width = 16 // itemsize
    inner = C if channels_last else S
    vec = width if aligned and inner % width == 0 else 1
    if channels_last:
        # threads_c threads side by side read block_c = threads_c * vec contiguous channels of a row
        # (up to 256 bytes); the other THREADS // threads_c thread rows walk the chunk's rows. Prefer a
        # block_c that divides C, so no channel block is half idle.
        max_threads_c = max(1, (256 // itemsize) // vec)
        threads_c = min(max_threads_c, _next_pow2(_ceil_div(C, vec)))
        t = max_threads_c
        while t >= 4:
            if C % (t * vec) == 0:
                threads_c = t
                break
            t //= 2
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
    wave = max(1, stats_blocks_per_sm) * sm_count
    waves = max(1, round(N * channel_blocks * block_c * S / (wave * BLOCK_ELEMENTS)))
    wanted_chunks = max(1, round(wave * waves / (N * channel_blocks)))
    chunk_len = min(max(_ceil_div(S, wanted_chunks), min_rows), MAX_CHUNK_ROWS)
    chunk_len = min(_ceil_div(chunk_len, align) * align, _ceil_div(S, align) * align)
    num_chunks = _ceil_div(S, chunk_len)
    apply_wave = max(1, apply_blocks_per_sm) * sm_count
    apply_blocks = max(1, min(_ceil_div(N * C * S // vec, THREADS), apply_wave))
    if N * num_chunks > MAX_GRID_X or channel_blocks > MAX_GRID_Y:
        raise ValueError(f"group_norm (cuda): shape N={N}, C={C}, S={S} exceeds the launch grid limits")
    return GroupNormPlan(channels_last, vec, block_c, channel_blocks, num_chunks, chunk_len, apply_blocks)


@dataclass(frozen=True)
class _PreparedCall:
    """What one shape needs at every call: the three kernels, the plan, grids and workspace layout."""

    stats: Launcher
    finalize: Launcher
    apply: Launcher
    plan: GroupNormPlan
    vec: int  # the kernels' `vec` flag
    stats_grid: tuple[int, int, int]
    finalize_grid: tuple[int, int, int]
    apply_grid: tuple[int, int, int]
    partials: int  # floats per partial array (a multiple of 4: every part starts on 16 bytes)
    params: int  # floats per scale / shift array
    workspace: int  # floats in all


_BLOCK = (THREADS, 1, 1)
_PREPARED: dict[tuple, _PreparedCall] = {}


def _prepare(index: int, dtype: torch.dtype, channels_last: bool, N: int, C: int, S: int, G: int,
             aligned: bool) -> _PreparedCall:
    layout = "cl" if channels_last else "cf"
    suffix = _SUFFIX[dtype]
    stats = load_launcher(SOURCE, f"group_norm_stats_{layout}_{suffix}", STATS_SIGNATURE, index)
    finalize = load_launcher(SOURCE, "group_norm_finalize", FINALIZE_SIGNATURE, index)
    apply = load_launcher(SOURCE, f"group_norm_apply_{layout}_{suffix}", APPLY_SIGNATURE, index)
    itemsize = torch.empty((), dtype=dtype).element_size()
    plan = plan_group_norm(N, C, S, channels_last=channels_last, itemsize=itemsize, aligned=aligned,
                           sm_count=multiprocessor_count(index),
                           stats_blocks_per_sm=stats.blocks_per_sm(THREADS) or STATS_BLOCKS_PER_SM,
                           apply_blocks_per_sm=apply.blocks_per_sm(THREADS) or APPLY_BLOCKS_PER_SM)
    if N * G > MAX_GRID_X:
        raise ValueError(f"group_norm (cuda): N * num_groups = {N * G} exceeds the launch grid limit")
    partials = _ceil_div(N * plan.num_chunks * C, 4) * 4
    params = _ceil_div(N * C, 4) * 4
    return _PreparedCall(stats, finalize, apply, plan, 1 if plan.vec > 1 else 0,
                         (N * plan.num_chunks, plan.channel_blocks, 1), (N * G, 1, 1), (plan.apply_blocks, 1, 1),
                         partials, params, 2 * partials + 2 * params)


_PARAM_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _param(param: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
    """weight or bias as the finalize kernel reads it: [C] with unit stride in fp32, fp16 or bf16 (no
    copy in the usual case), and its dtype code."""
    if param is None:
        return None, 0
    if param.dtype not in _PARAM_CODES:
        param = param.to(torch.float32)
    if param.dim() != 1 or (param.numel() > 1 and param.stride(0) != 1):
        param = param.contiguous()
    return param, _PARAM_CODES[param.dtype]


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


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
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    aligned = xt.data_ptr() % 16 == 0 and out.data_ptr() % 16 == 0
    key = (index, x.dtype, view.channels_last, N, C, S, G, aligned)
    call = _PREPARED.get(key)
    if call is None:
        if len(_PREPARED) >= 1024:  # many distinct shapes: start over rather than grow without bound
            _PREPARED.clear()
        call = _PREPARED[key] = _prepare(*key)
    plan = call.plan
    w, w_code = _param(weight)
    b, b_code = _param(bias)

    # One fp32 workspace: partial means, partial M2s, scales, shifts; each part starts on 16 bytes.
    ws = memory.empty((call.workspace,), dtype=torch.float32, device=x.device)
    ws_mean = ws.data_ptr()
    ws_m2 = ws_mean + 4 * call.partials
    scale = ws_m2 + 4 * call.partials
    shift = scale + 4 * call.params
    x_ptr, out_ptr = xt.data_ptr(), out.data_ptr()

    stream = torch_stream_pointer(index)
    runtime = cupy().cuda.runtime
    previous = runtime.getDevice()
    if previous != index:
        runtime.setDevice(index)
    try:
        call.stats(call.stats_grid, _BLOCK,
                   (x_ptr, ws_mean, ws_m2, C, S, plan.num_chunks, plan.chunk_len, plan.block_c, call.vec), stream)
        call.finalize(call.finalize_grid, _BLOCK,
                      (ws_mean, ws_m2, _address(w), w_code, _address(b), b_code, scale, shift, C, S, G,
                       plan.num_chunks, plan.chunk_len, float(eps)), stream)
        call.apply(call.apply_grid, _BLOCK,
                   (x_ptr, out_ptr, scale, shift, N * C * S, C, S, 1 if activation == "silu" else 0, call.vec),
                   stream)
    finally:
        if previous != index:
            runtime.setDevice(previous)
    return view.restore(out)
