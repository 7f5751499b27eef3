"""Triton conv2d: an implicit-GEMM convolution with a fused epilogue, and the epilogue alone.

Implicit GEMM: the convolution is the matrix product out[m, co] = sum_k A[m, k] * B[k, co] with
    m = (n, ho, wo)                     M = N * H_out * W_out output pixels,
    k = (r, s, ci)                      K = kh * kw * C_in/groups (ci innermost: contiguous in NHWC),
    A[m, k] = x[n, ci, ho * stride_h - pad_h + r * dil_h, wo * stride_w - pad_w + s * dil_w] (0 outside),
    B[k, co] = weight[co, ci, r, s],
and A is never materialised: each K step loads its [BLOCK_M, BLOCK_K] tile of A straight from x with
bounds masks (the padding). One loop over all K tiles (kernel position x channel block) lets Triton
pipeline the loads across kernel positions. Accumulation is fp32; the epilogue adds the bias (per
channel, or per sample: the bias is read through an [N, C_out] view with a zero N stride for [C_out]),
applies SiLU, adds the residual, multiplies by output_scale and stores once in the output dtype.
Groups are the grid's second axis. Every size and stride is a runtime argument.

The epilogue kernel applies the same epilogue in place to a finished convolution output (cuDNN's), one
read and one write of it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends.availability import triton_interpreter_enabled

MAX_GRID_Y = 65535  # CUDA's limit on grid dimension 1 (the groups here, the batch in the epilogue)
INT32_MAX = 2**31 - 1


def _configs() -> list[triton.Config]:
    """A small autotuning set on a GPU; one large tile under the interpreter (few programs run fastest)."""
    if triton_interpreter_enabled():
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4)]
    shapes = [  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
        (128, 128, 32, 4, 4),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (128, 128, 64, 8, 3),
        (64, 64, 32, 4, 4),
    ]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


def _prune(configs, named_args, **kwargs):
    """Drop tiles wider than the layer: BLOCK_N above the group's output channels (rounded up to a power
    of two, at least 16) only computes masked columns, and so does BLOCK_K above its input channels."""
    cout = max(16, triton.next_power_of_2(named_args["C_out_g"]))
    cin = max(16, triton.next_power_of_2(named_args["C_in_g"]))
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= cout and c.kwargs["BLOCK_K"] <= cin]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]


@triton.jit
def _epilogue(acc, n_idx, s_idx, co, c_mask, mask, bias_ptr, res_ptr, output_scale,
              sbn, sbc, srn, src, srs, HAS_BIAS: tl.constexpr, PER_SAMPLE_BIAS: tl.constexpr,
              HAS_RESIDUAL: tl.constexpr, SILU: tl.constexpr):
    """(act(acc + bias) + residual) * output_scale in fp32, for a tile of rows (sample n_idx, pixel s_idx)
    x channels co; c_mask: the valid channels, mask: the valid tile elements."""
    if HAS_BIAS:
        if PER_SAMPLE_BIAS:  # rows of a tile may belong to different samples: a gather through L1
            b = tl.load(bias_ptr + n_idx[:, None].to(tl.int64) * sbn + co[None, :] * sbc, mask=mask, other=0.0)
            acc = acc + b.to(tl.float32)
        else:  # one vector of channels, broadcast over the rows
            b = tl.load(bias_ptr + co * sbc, mask=c_mask, other=0.0)
            acc = acc + b.to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    if HAS_RESIDUAL:
        offsets = n_idx[:, None].to(tl.int64) * srn + co[None, :].to(tl.int64) * src + s_idx[:, None].to(tl.int64) * srs
        acc = acc + tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return acc * output_scale


@triton.autotune(configs=_configs(), key=["M", "C_in_g", "C_out_g", "KH", "KW"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.heuristics({"EVEN_K": lambda args: args["C_in_g"] % args["BLOCK_K"] == 0})
@triton.jit
def _conv2d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
    M, H, W, C_in_g, H_out, W_out, C_out_g, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    sbn, sbc,
    srn, src, srs,
    son, soc, sos,
    output_scale,
    HAS_BIAS: tl.constexpr, PER_SAMPLE_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SILU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped ordering of the (M, N) tiles: GROUP_M row tiles share their weight tiles in L2.
    pid = tl.program_id(0)
    group = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(C_out_g, BLOCK_N)
    per_band = GROUP_M * tiles_n
    first_m = (pid // per_band) * GROUP_M
    band_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_band) % band_m
    pid_n = (pid % per_band) // band_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < C_out_g
    pixels = H_out * W_out
    n_idx = offs_m // pixels
    s_idx = offs_m % pixels
    ho = s_idx // W_out
    wo = s_idx % W_out
    h_base = ho * stride_h - pad_h
    w_base = wo * stride_w - pad_w
    co = group * C_out_g + offs_n
    x_rows = x_ptr + n_idx.to(tl.int64) * sxn + (group * C_in_g).to(tl.int64) * sxc
    w_cols = w_ptr + co.to(tl.int64) * swo

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    c_tiles = tl.cdiv(C_in_g, BLOCK_K)
    for it in range(0, KH * KW * c_tiles):
        rs = it // c_tiles
        c0 = (it - rs * c_tiles) * BLOCK_K
        r = rs // KW
        s = rs - r * KW
        h = h_base + r * dil_h
        w = w_base + s * dil_w
        inside = m_mask & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        offs_k = c0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < C_in_g
        if EVEN_K:  # channel blocks tile C_in exactly (SD layers): no channel mask to evaluate
            k_mask = tl.full([BLOCK_K], 1, tl.int1)
        a_ptrs = (x_rows + h.to(tl.int64) * sxh + w.to(tl.int64) * sxw)[:, None] + offs_k[None, :].to(tl.int64) * sxc
        a = tl.load(a_ptrs, mask=inside[:, None] & k_mask[None, :], other=0.0)
        b_ptrs = (w_cols + r * swh + s * sww)[None, :] + offs_k[:, None].to(tl.int64) * swi
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    mask = m_mask[:, None] & n_mask[None, :]
    acc = _epilogue(acc, n_idx, s_idx, co, n_mask, mask, bias_ptr, res_ptr, output_scale, sbn, sbc, srn, src, srs,
                    HAS_BIAS, PER_SAMPLE_BIAS, HAS_RESIDUAL, SILU)
    out_offsets = n_idx[:, None].to(tl.int64) * son + co[None, :].to(tl.int64) * soc + s_idx[:, None].to(tl.int64) * sos
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv2d_epilogue_kernel(
    y_ptr, bias_ptr, res_ptr, C, S, syn, syc, sys, sbn, sbc, srn, src, srs, output_scale,
    HAS_BIAS: tl.constexpr, PER_SAMPLE_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SILU: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(1)
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_s < S)[:, None] & (offs_c < C)[None, :]
    n_idx = tl.zeros([BLOCK_S], dtype=tl.int32) + n
    offsets = n.to(tl.int64) * syn + offs_c[None, :].to(tl.int64) * syc + offs_s[:, None].to(tl.int64) * sys
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = _epilogue(y, n_idx, offs_s, offs_c, offs_c < C, mask, bias_ptr, res_ptr, output_scale, sbn, sbc, srn, src, srs,
                  HAS_BIAS, PER_SAMPLE_BIAS, HAS_RESIDUAL, SILU)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- launchers


def _ncs_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(stride_n, stride_c, stride_s) of [N, C, H, W] read as [N, C, H * W], or None when H and W do not
    merge into one strided axis."""
    sn, sc, sh, sw = t.stride()
    H, W = t.shape[2], t.shape[3]
    if H == 1:
        return sn, sc, sw
    if W == 1:
        return sn, sc, sh
    return (sn, sc, sw) if sh == W * sw else None


def _mergeable(t: torch.Tensor) -> torch.Tensor:
    """t itself when its H and W merge into one strided axis, else a contiguous copy."""
    return t if _ncs_strides(t) is not None else t.contiguous()


def _bias_args(bias: torch.Tensor | None, dummy: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """bias as an [N, C_out] view: (tensor, stride_n, stride_c); a [C_out] bias gets stride_n = 0."""
    if bias is None:
        return dummy, 0, 0
    if bias.dim() == 1:
        return bias, 0, bias.stride(0)
    return bias, bias.stride(0), bias.stride(1)


def _residual_args(residual: torch.Tensor | None, dummy: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    if residual is None:
        return dummy, 0, 0, 0
    residual = _mergeable(residual)
    return (residual, *_ncs_strides(residual))


def _input_precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's own setting for cuDNN convolutions (TF32 allowed by default), so "triton" and
    # "torch+triton" round alike; fp16/bf16 products are exact in fp32 either way.
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def conv2d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str | None,
    output_scale: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """Implicit-GEMM conv of x [N, C_in, H, W] and weight [C_out, C_in/groups, kh, kw] with the epilogue,
    written into out [N, C_out, H_out, W_out] (any layout whose H and W merge; CUDA, or CPU under
    TRITON_INTERPRET=1). Returns out."""
    N, _, H, W = x.shape
    C_out, C_in_g, KH, KW = weight.shape
    _, _, H_out, W_out = out.shape
    out_strides = _ncs_strides(out)
    if out_strides is None:
        raise ValueError(f"out: expected H and W to merge into one strided axis, got strides {out.stride()}")
    bias_t, sbn, sbc = _bias_args(bias, out)
    res_t, srn, src, srs = _residual_args(residual, out)
    M = N * H_out * W_out
    C_out_g = C_out // groups
    _check_conv_grid(M, groups)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(C_out_g, meta["BLOCK_N"]), groups)

    _conv2d_fwd_kernel[grid](
        x, weight, bias_t, res_t, out,
        M, H, W, C_in_g, H_out, W_out, C_out_g, KH, KW,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *x.stride(), *weight.stride(), sbn, sbc, srn, src, srs, *out_strides, float(output_scale),
        HAS_BIAS=bias is not None, PER_SAMPLE_BIAS=bias is not None and bias.dim() == 2,
        HAS_RESIDUAL=residual is not None, SILU=activation == "silu",
        INPUT_PRECISION=_input_precision(x.dtype),
    )
    return out


def _check_conv_grid(M: int, groups: int) -> None:
    """The groups run on grid dimension 1 (at most 65535); output pixels are 32-bit tile offsets (a tile of up to
    128 pixels past the last one must stay below 2^31)."""
    if groups > MAX_GRID_Y:
        raise ValueError(f"groups: the Triton convolution runs at most {MAX_GRID_Y} groups per launch, got {groups}")
    if M + 128 > INT32_MAX:
        raise ValueError(f"x: N * H_out * W_out = {M} output pixels exceed the Triton convolution's 32-bit pixel "
                         "offsets")


def _epilogue_tiles(channels_last: bool, C: int, S: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_C): the contiguous axis gets the long side; about 4096 elements a tile."""
    if channels_last:
        block_c = min(triton.next_power_of_2(C), 128)
        return max(1, min(4096 // block_c, triton.next_power_of_2(S))), block_c
    block_s = min(triton.next_power_of_2(S), 1024)
    return block_s, max(1, min(4096 // block_s, triton.next_power_of_2(C)))


def conv2d_epilogue_(
    y: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    activation: str | None,
    output_scale: float,
) -> torch.Tensor:
    """In place on a convolution output y [N, C, H, W] (H and W must merge into one strided axis, as in
    contiguous and channels_last tensors): y = (act(y + bias) + residual) * output_scale. Returns y."""
    N, C, H, W = y.shape
    strides = _ncs_strides(y)
    if strides is None:
        raise ValueError(f"y: expected H and W to merge into one strided axis, got strides {y.stride()}")
    if N > MAX_GRID_Y:  # the batch is grid dimension 1: larger batches run in slices
        for n0 in range(0, N, MAX_GRID_Y):
            part = slice(n0, min(n0 + MAX_GRID_Y, N))
            per_sample = bias is not None and bias.dim() == 2
            conv2d_epilogue_(y[part], bias[part] if per_sample else bias,
                             None if residual is None else residual[part], activation, output_scale)
        return y
    S = H * W
    bias_t, sbn, sbc = _bias_args(bias, y)
    res_t, srn, src, srs = _residual_args(residual, y)
    block_s, block_c = _epilogue_tiles(strides[1] == 1 and C > 1, C, S)
    grid = (triton.cdiv(S, block_s), N, triton.cdiv(C, block_c))  # pixels on the axis without a 65535 limit
    _conv2d_epilogue_kernel[grid](
        y, bias_t, res_t, C, S, *strides, sbn, sbc, srn, src, srs, float(output_scale),
        HAS_BIAS=bias is not None, PER_SAMPLE_BIAS=bias is not None and bias.dim() == 2,
        HAS_RESIDUAL=residual is not None, SILU=activation == "silu",
        BLOCK_S=block_s, BLOCK_C=block_c,
    )
    return y
