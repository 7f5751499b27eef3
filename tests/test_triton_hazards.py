"""DESIGN.md section 4's hazards for the Triton launchers, under the interpreter on the CPU (a GPU runs them too),
where the per-op tests leave them open: inputs that are views into NaN-filled buffers (a read past a valid
length, row or channel turns the output NaN), outputs NaN-poisoned or pre-filled with NaN where the launcher
takes an `out`, and the edge shapes that reach code paths the per-op cases miss (several decode splits, several
row or channel blocks with a partial last one, a partial last element block, head dim 96).

Every result is compared with the float64 reference under the tolerance rule (assert_matches_oracle).
fp32 only: the interpreter's tl.dot on bf16 is wrong, and fp16 runs in the per-op tests.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast import UpdateCoefficients
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.testing import assert_matches_oracle

pytestmark = pytest.mark.skipif(bool(backend_unavailable_reasons("triton")),
                                reason="; ".join(backend_unavailable_reasons("triton")) or "triton available")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAN = float("nan")


def nan_framed(shape: tuple[int, ...], pad: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
    """randn of `shape` as the leading corner of a NaN-filled buffer `pad` larger in each dimension: every
    element a kernel may not read (past a row, a column, a channel, a sequence) is NaN."""
    buf = torch.full(tuple(n + p for n, p in zip(shape, pad, strict=True)), NAN, device=DEVICE)
    view = buf[tuple(slice(0, n) for n in shape)]
    view.copy_(torch.randn(shape) * scale)
    return view


def nan_strided_vector(n: int, step: int = 2) -> torch.Tensor:
    """randn [n] with stride `step`, NaN in between and after."""
    buf = torch.full((n * step + 1,), NAN, device=DEVICE)
    view = buf[: n * step : step]
    view.copy_(torch.randn(n))
    return view


# ---------------------------------------------------------------- attention


# (B, Hq, Hkv, Sq, S_max, D, Dv, lengths)
DECODE_CASES = {
    # S_max 300: three cache splits on the interpreter (the per-op cases never have more than one, so the
    # combine kernel only ever merged one partial); lengths end in each split, 0 and S_max.
    "three-splits-ragged-gqa4:2": (4, 4, 2, 2, 300, 40, 24, [0, 129, 257, 300]),
    # GQA 5:1 x 13 queries = 65 rows of one KV head: two row blocks of 64, the last holding one row (the per-op
    # and GPU cases fit one); causal rows that see nothing (length 5 < 13 queries).
    "two-row-blocks-gqa10:2": (2, 10, 2, 13, 40, 16, 16, [5, 40]),
}


@pytest.mark.parametrize("case", DECODE_CASES.keys())
def test_decode_over_nan_framed_caches(case):
    """kernels.attention.decode_fwd with q and the caches sliced out of NaN buffers (NaN past every length, after
    each head-dim row, in the batch beyond B), both mask modes, against the float64 reference."""
    from genai_fast.kernels.attention import decode_fwd

    B, Hq, Hkv, Sq, s_max, D, Dv, lens = DECODE_CASES[case]
    lengths = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = nan_framed((B, Hq, Sq, D), (1, 1, 2, 3))
    k_cache = nan_framed((B, Hkv, s_max, D), (1, 0, 5, 3))
    v_cache = nan_framed((B, Hkv, s_max, Dv), (1, 0, 5, 7))
    for b, n in enumerate(lens):  # NaN past each length
        k_cache[b, :, n:] = NAN
        v_cache[b, :, n:] = NAN
    for causal in (True, False):
        with memory.poison_outputs():
            out = decode_fwd(q, k_cache, v_cache, lengths, causal, 1 / math.sqrt(D))
        oracle = genai_fast.attention_with_kvcache_reference(q.double().cpu(), k_cache.double().cpu(),
                                                             v_cache.double().cpu(), lengths.cpu(), causal=causal)
        baseline = genai_fast.attention_with_kvcache_reference(q, k_cache, v_cache, lengths, causal=causal)
        assert_matches_oracle(out, oracle, baseline, what=f"decode_fwd {case} causal={causal}")


def test_sdpa_head_dim_96_two_key_blocks_nan_framed_mask():
    """Forward and backward at head dim 96 (the per-op cases run 40 and 80), 150 keys (a full key block of 128 and
    a partial one), GQA 2:1, and an additive mask sliced out of a NaN buffer: NaN past Sk and past Sq, so a mask
    read out of bounds poisons the output or the gradients."""
    B, Hq, Hkv, Sq, Sk, D = 1, 2, 1, 20, 150, 96
    q = nan_framed((B, Hq, Sq, D), (0, 0, 3, 5))
    k = nan_framed((B, Hkv, Sk, D), (0, 0, 3, 5))
    v = nan_framed((B, Hkv, Sk, D), (0, 0, 3, 5))
    mask = nan_framed((B, 1, Sq, Sk), (0, 0, 2, 9), scale=2.0)
    mask.masked_fill_(torch.rand(mask.shape, device=DEVICE) > 0.8, float("-inf"))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with memory.poison_outputs():
        out = genai_fast.scaled_dot_product_attention(*leaves, mask, enable_gqa=True, backend="triton")
        grad = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, grad, retain_graph=True)
    leaves64 = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    oracle = genai_fast.scaled_dot_product_attention_reference(*leaves64, mask.double().cpu(), 0.0, False, None, True)
    base_leaves = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    baseline = F.scaled_dot_product_attention(*base_leaves, mask.contiguous(), enable_gqa=True)
    assert_matches_oracle(out, oracle, baseline, what="sdpa[triton] D=96 out")
    oracle_grads = torch.autograd.grad(oracle, leaves64, grad.double().cpu())
    base_grads = torch.autograd.grad(baseline, base_leaves, grad)
    for name, got, want, base in zip("qkv", grads, oracle_grads, base_grads, strict=True):
        assert_matches_oracle(got, want, base, what=f"sdpa[triton] D=96 d{name}")
    # The backward has no atomics (one program owns each dK/dV block): a second run is bitwise the first.
    again = torch.autograd.grad(out, leaves, grad)
    for name, first, second in zip("qkv", grads, again, strict=True):
        assert torch.equal(first, second), f"d{name} differs between two runs of the same backward"


# ---------------------------------------------------------------- conv2d


def _conv_oracle(x, w, bias, residual, stride, padding, scale, dtype=torch.float64):
    """The reference conv: float64 on the CPU (the oracle), or in `dtype` on the inputs' device (the budget: on a
    GPU, cuDNN with torch's TF32 setting, which the kernel follows)."""
    from genai_fast.ops.conv2d import conv2d_reference

    def cast(t):
        device = "cpu" if dtype == torch.float64 else t.device if t is not None else None
        return None if t is None else t.detach().to(device=device, dtype=dtype)

    return conv2d_reference(cast(x), cast(w), cast(bias), stride, padding, 1, 1, "silu", cast(residual), scale)


def _nan_out(N: int, C: int, H: int, W: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, the buffer it lies in): NaN-filled, NCHW, NHWC, or NHWC with two NaN channels after each pixel's."""
    if layout == "nchw":
        out = torch.full((N, C, H, W), NAN, device=DEVICE)
        return out, out
    extra = 2 if layout == "nhwc-sliced" else 0
    buf = torch.full((N, H, W, C + extra), NAN, device=DEVICE)
    return buf[..., :C].permute(0, 3, 1, 2), buf


@pytest.mark.parametrize("out_layout", ["nhwc", "nchw", "nhwc-sliced"])
def test_conv2d_launcher_channel_gaps_and_nan_prefilled_out(out_layout):
    """kernels.conv2d.conv2d_fwd on x, weight, a per-sample bias and the residual all sliced out of NaN buffers
    (NaN channels between the pixels of a channels_last x, NaN weight columns, a bias read at stride 2), written
    into an `out` pre-filled with NaN: every output element must be written, from valid elements only."""
    from genai_fast.kernels.conv2d import conv2d_fwd

    N, C_in, H, W, C_out = 2, 5, 7, 6, 11
    x = torch.full((N, H, W, C_in + 3), NAN, device=DEVICE)[..., :C_in].permute(0, 3, 1, 2)  # channel gap
    x.copy_(torch.randn(N, C_in, H, W))
    w_view = nan_framed((C_out, C_in, 3, 3), (2, 3, 0, 1)).mul_(1 / math.sqrt(C_in * 9))
    bias = torch.full((N, 2 * C_out), NAN, device=DEVICE)[:, ::2]
    bias.copy_(torch.randn(N, C_out))
    H_out, W_out = 4, 3  # stride 2, padding 1
    residual = nan_framed((N, C_out, H_out, W_out), (1, 2, 1, 2))
    out, buf = _nan_out(N, C_out, H_out, W_out, out_layout)
    got = conv2d_fwd(x, w_view, bias, residual, [2, 2], [1, 1], [1, 1], 1, "silu", 0.7, out)
    assert got is out
    oracle = _conv_oracle(x, w_view, bias, residual, 2, 1, 0.7)
    baseline = _conv_oracle(x, w_view, bias, residual, 2, 1, 0.7, dtype=torch.float32)
    assert_matches_oracle(out, oracle, baseline, what=f"conv2d_fwd {out_layout} out")
    assert buf.isnan().sum() == buf.numel() - out.numel(), "conv2d_fwd wrote outside out"


def test_conv2d_epilogue_in_place_on_a_channel_slice():
    """kernels.conv2d.conv2d_epilogue_ in place on y, a channel slice of a NaN-filled NHWC buffer: y's elements
    become the epilogue of their old values, and the NaN channels beside them are neither read nor written."""
    from genai_fast.kernels.conv2d import conv2d_epilogue_

    N, C, H, W = 2, 6, 5, 3
    buf = torch.full((N, H, W, C + 2), NAN, device=DEVICE)
    y = buf[..., :C].permute(0, 3, 1, 2)
    y.copy_(torch.randn(N, C, H, W))
    before = y.detach().double().cpu()
    bias = nan_strided_vector(C, 3)
    residual = nan_framed((N, C, H, W), (0, 1, 0, 2))
    conv2d_epilogue_(y, bias, residual, "silu", 0.5)
    b64, r64 = bias.double().cpu()[None, :, None, None], residual.double().cpu()
    pre = before + b64
    oracle = (pre * torch.sigmoid(pre) + r64) * 0.5
    pre32 = before.float() + bias.cpu()[None, :, None, None]
    baseline = (F.silu(pre32) + residual.cpu()) * 0.5
    assert_matches_oracle(y, oracle, baseline, what="conv2d_epilogue_")
    assert buf[..., C:].isnan().all(), "the epilogue wrote past the channel slice"


# ---------------------------------------------------------------- group_norm


@pytest.mark.parametrize("shape, groups, layout", [
    ((1, 8, 1100), 4, "contiguous"),      # two channel blocks x two S chunks, the last chunk partial
    ((1, 160, 3, 5), 8, "channels_last"),  # two channel blocks of 128, the last partial
], ids=["chunks-and-channel-blocks-nchw", "partial-channel-block-nhwc"])
def test_group_norm_split_reduction_edges(shape, groups, layout):
    """The split reduction where the per-op shapes never go: several chunks of S (the finalize kernel merges
    partials of unequal counts) and several channel blocks with a partial last one."""
    from genai_fast.ops.group_norm import group_norm_reference

    x = torch.randn(shape) * 2.5 + 0.7
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(DEVICE)
    C = shape[1]
    weight, bias = nan_strided_vector(C), nan_strided_vector(C)
    with memory.poison_outputs():
        out = genai_fast.group_norm(x, groups, weight, bias, eps=1e-5, activation="silu", backend="triton")
    oracle = group_norm_reference(x.double().cpu(), groups, weight.double().cpu(), bias.double().cpu(), 1e-5, "silu")
    baseline = group_norm_reference(x, groups, weight, bias, 1e-5, "silu")
    assert_matches_oracle(out, oracle, baseline, what=f"group_norm[triton] {shape}")


# ---------------------------------------------------------------- rms_norm, swiglu, decode projections


def _rms64(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return genai_fast.rms_norm_reference(x.double().cpu(), None if weight is None else weight.double().cpu(), eps)


def test_rms_norm_row_blocks_over_nan_gapped_rows():
    """rms_norm (Triton) on 37 rows of 40 (three 16-row programs, the last partial; the per-op cases fit one
    program) read in place at a padded row stride, NaN between the rows and in the row after the last."""
    x = nan_framed((37, 40), (1, 7), scale=3.0)
    w = nan_strided_vector(40)
    with memory.poison_outputs():
        out = genai_fast.rms_norm(x, w, 1e-5, backend="triton")
    assert_matches_oracle(out, _rms64(x, w, 1e-5), genai_fast.rms_norm_reference(x, w, 1e-5), "rms_norm[triton]")


def test_add_rms_norm_over_nan_gapped_rows():
    """kernels.rms_norm.add_rms_norm_fwd with h and delta read at padded strides (NaN gaps) over several row
    programs, a strided weight: the sum and the norm against float64."""
    from genai_fast.kernels.rms_norm import add_rms_norm_fwd

    R, D = 19, 96
    h, delta = nan_framed((R, D), (1, 5), scale=3.0), nan_framed((R, D), (2, 3))
    w = nan_strided_vector(D)
    with memory.poison_outputs():
        total, out = add_rms_norm_fwd(h, delta, w, 1e-5)
    sum64 = h.double().cpu() + delta.double().cpu()
    assert_matches_oracle(total, sum64, h + delta, "add_rms_norm sum")
    base = genai_fast.rms_norm_reference(h + delta, w, 1e-5)
    assert_matches_oracle(out, _rms64(sum64, w, 1e-5), base, "add_rms_norm norm")


def test_swiglu_over_nan_gapped_rows():
    """kernels.swiglu.swiglu_fwd on rows [gate | up] at a padded stride with NaN between them."""
    from genai_fast.kernels.swiglu import swiglu_fwd

    R, H = 5, 37
    h = nan_framed((R, 2 * H), (1, 3), scale=3.0)
    with memory.poison_outputs():
        out = swiglu_fwd(h)
    h64 = h.double().cpu()
    oracle = F.silu(h64[:, :H]) * h64[:, H:]
    assert_matches_oracle(out, oracle, F.silu(h[:, :H]) * h[:, H:], "swiglu")


def test_norm_linear_strided_bias_and_nan_gapped_weight():
    """kernels.decode_gemv.norm_linear_fwd with the weight's rows at a padded stride (NaN columns after K),
    h at a padded stride, and a bias that is a strided view ([N] at stride 2, NaN in between): the launcher
    documents bias [N] and must read it by its stride (or copy it), not as if it were contiguous."""
    from genai_fast.kernels.decode_gemv import norm_linear_fwd

    R, K, N, eps = 2, 70, 19, 1e-5
    h, delta = nan_framed((R, K), (1, 3), scale=2.0), nan_framed((R, K), (1, 4))
    norm_weight = nan_strided_vector(K)
    weight = nan_framed((N, K), (1, 6)) / math.sqrt(K)
    bias = nan_strided_vector(N)
    with memory.poison_outputs():
        total, y = norm_linear_fwd(h, delta, norm_weight, eps, weight, bias)
    sum64 = h.double().cpu() + delta.double().cpu()
    oracle = F.linear(_rms64(sum64, norm_weight, eps), weight.double().cpu(), bias.double().cpu())
    baseline = F.linear(genai_fast.rms_norm_reference(h + delta, norm_weight, eps), weight, bias)
    assert_matches_oracle(total, sum64, h + delta, "norm_linear residual sum")
    assert_matches_oracle(y, oracle, baseline, "norm_linear")


def test_swiglu_linear_strided_bias_and_nan_gapped_rows():
    """kernels.decode_gemv.swiglu_linear_fwd with [gate | up] rows and weight rows at padded strides (NaN gaps)
    and a bias read at stride 2."""
    from genai_fast.kernels.decode_gemv import swiglu_linear_fwd

    R, K, N = 3, 40, 21
    gate_up = nan_framed((R, 2 * K), (1, 3), scale=3.0)
    weight = nan_framed((N, K), (1, 5)) / math.sqrt(K)
    bias = nan_strided_vector(N)
    with memory.poison_outputs():
        y = swiglu_linear_fwd(gate_up, weight, bias)
    g64 = gate_up.double().cpu()
    oracle = F.linear(F.silu(g64[:, :K]) * g64[:, K:], weight.double().cpu(), bias.double().cpu())
    baseline = F.linear(F.silu(gate_up[:, :K]) * gate_up[:, K:], weight, bias)
    assert_matches_oracle(y, oracle, baseline, "swiglu_linear")


# ---------------------------------------------------------------- rope + cache append


def test_rope_append_into_nan_framed_caches():
    """kernels.rope_append.rope_append_fwd with qkv rows at a padded stride (NaN gaps), caches sliced out of
    NaN buffers (a batch larger than qkv's, padded positions, padded head rows): q and the written cache rows
    against the float64 rotation, and every other cache element still NaN (nothing written elsewhere)."""
    from genai_fast.kernels.rope_append import rope_append_fwd

    B, Hq, Hkv, D, s_max = 3, 4, 2, 40, 9
    qkv = nan_framed((B, (Hq + 2 * Hkv) * D), (1, 5))
    k_buf = torch.full((B + 1, Hkv, s_max + 2, D + 3), NAN, device=DEVICE)
    v_buf = torch.full_like(k_buf, NAN)
    k_cache, v_cache = k_buf[..., :s_max, :D], v_buf[..., :s_max, :D]
    angles = torch.arange(s_max + 4)[:, None] * (10000.0 ** (-torch.arange(0, D, 2) / D))[None, :]
    emb = torch.cat([angles, angles], dim=-1).double()
    cos64 = emb.cos()
    sin64 = torch.cat([-emb.sin()[:, : D // 2], emb.sin()[:, D // 2:]], dim=-1)
    cos, sin = cos64.float().to(DEVICE), sin64.float().to(DEVICE)
    seqlens = torch.tensor([0, s_max - 1, 4], dtype=torch.int32, device=DEVICE)
    with memory.poison_outputs():
        q = rope_append_fwd(qkv, Hq, Hkv, k_cache, v_cache, seqlens, cos, sin)

    def rotate(x, c, s):  # x [B, heads, D]; c, s [B, D]: x cos + rotate_half(x) sin (sign in the table)
        swapped = torch.cat([x[..., D // 2:], x[..., : D // 2]], dim=-1)
        return x * c[:, None] + swapped * s[:, None]

    heads = qkv.reshape(B, Hq + 2 * Hkv, D)
    pos = seqlens.long().cpu()
    want64 = rotate(heads.double().cpu()[:, : Hq + Hkv], cos64[pos], sin64[pos])
    base = rotate(heads.cpu()[:, : Hq + Hkv], cos.cpu()[pos], sin.cpu()[pos])
    assert_matches_oracle(q.reshape(B, Hq, D), want64[:, :Hq], base[:, :Hq], "rope q")
    rows = torch.arange(B)
    assert_matches_oracle(k_cache.cpu()[rows, :, pos], want64[:, Hq:], base[:, Hq:], "rope k cache row")
    torch.testing.assert_close(v_cache.cpu()[rows, :, pos], heads.cpu()[:, Hq + Hkv:], rtol=0, atol=0)
    for buf in (k_buf, v_buf):
        untouched = torch.ones(buf.shape, dtype=torch.bool)
        untouched[rows, :, pos, :D] = False
        assert buf.cpu()[untouched].isnan().all(), "rope_append wrote outside each sequence's cache row"


# ---------------------------------------------------------------- guided update


def test_guided_update_partial_last_block_into_nan_outputs():
    """kernels.guided_update.guided_update_fwd over 1083 elements (a full 1024-element block and a partial one;
    the per-op shapes are one block or exactly two), written into out and x0_out pre-filled with NaN."""
    from genai_fast.kernels.guided_update import guided_update_fwd

    shape = (1, 3, 19, 19)
    x, previous, noise = (torch.randn(shape, device=DEVICE) for _ in range(3))
    model_output = torch.randn((2, *shape[1:]), device=DEVICE)
    coefs = UpdateCoefficients(14.7, -14.6, 0.93, 0.41, 0.2, -0.37, 0.05)
    out, x0 = torch.full_like(x, NAN), torch.full_like(x, NAN)
    guided_update_fwd(x, model_output, previous, noise, out, x0, True, 7.5, tuple(coefs), 1.0)
    wide = [t.double().cpu() for t in (x, model_output, previous, noise)]
    oracle, oracle_x0 = genai_fast.guided_update_reference(*wide[:2], coefs, 7.5, *wide[2:], 1.0)
    base, base_x0 = genai_fast.guided_update_reference(x, model_output, coefs, 7.5, previous, noise, 1.0)
    assert_matches_oracle(out, oracle, base, "guided_update out")
    assert_matches_oracle(x0, oracle_x0, base_x0, "guided_update x0")
