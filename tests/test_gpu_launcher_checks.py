"""The GPU launchers refuse, before any launch, the sizes and indices their kernels would turn into wild addresses.

Runs on the CPU under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), or calls the launchers'
checks directly; the `gpu`-marked tests repeat what only a GPU can show (grid limits, 2^31-element tensors).

- rope_append: seqlens, cache and table shapes are checked; a position outside the cache reads no rope row.
- decode attention: lengths are checked; a length past the cache reads nothing past it (CUDA graphs capture the
  launch with no host check of the values).
- attention: a (batch, head) slice whose row or column offsets reach 2^31 (32-bit products in the kernels) and
  more heads than grid dimension 1 holds are refused.
- conv2d: the epilogue splits batches above grid dimension 1's 65535; more groups than that are refused.
- group_norm, rms_norm, guided_update, word2vec (Triton and CUDA): parameter and table sizes.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from genai_fast.backends.availability import backend_unavailable_reasons

needs_triton = pytest.mark.skipif(bool(backend_unavailable_reasons("triton")),
                                  reason="; ".join(backend_unavailable_reasons("triton")) or "triton available")
pytestmark = needs_triton

LAZY_BYTES = 2**31 + 64  # a CPU allocation this large is only address space until its pages are touched


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- rope_append


def _rope_inputs(B=2, Hq=2, Hkv=1, D=8, S_max=6, device="cpu"):
    qkv = torch.randn(B, (Hq + 2 * Hkv) * D, device=device)
    caches = [torch.zeros(B, Hkv, S_max, D, device=device) for _ in range(2)]
    angles = torch.arange(S_max, device=device)[:, None] * torch.linspace(0.1, 1.0, D // 2, device=device)
    cos = torch.cat([angles.cos(), angles.cos()], dim=1).contiguous()
    sin = torch.cat([-angles.sin(), angles.sin()], dim=1).contiguous()
    return qkv, Hq, Hkv, caches[0], caches[1], torch.zeros(B, dtype=torch.int32, device=device), cos, sin


def _replace(args: tuple, index: int, value) -> tuple:
    return (*args[:index], value, *args[index + 1:])


ROPE_BAD = {  # case: (the argument the error names, the change to good inputs)
    "seqlens-short": ("seqlens", lambda a: _replace(a, 5, a[5][:1])),  # fewer positions than sequences
    "seqlens-float": ("seqlens", lambda a: _replace(a, 5, a[5].float())),
    "cache-batch": ("k_cache", lambda a: _replace(a, 3, a[3][:1])),  # cache batch below qkv's
    "cache-heads": ("k_cache", lambda a: _replace(_replace(a, 2, 2), 0, torch.randn(2, 6 * 8))),  # Hkv 2, cache 1
    "v-shorter": ("v_cache", lambda a: _replace(a, 4, a[4][:, :, :3])),
    "cos-rows": ("cos_table", lambda a: _replace(a, 6, a[6][:4])),  # fewer rows than cache positions
    "sin-missing": ("sin_signed_table", lambda a: _replace(a, 7, None)),
}


@pytest.mark.parametrize("case", ROPE_BAD, ids=ROPE_BAD)
def test_rope_append_refuses_sizes_it_would_index_past(case):
    from genai_fast.kernels.rope_append import rope_append_fwd

    name, change = ROPE_BAD[case]
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        rope_append_fwd(*change(_rope_inputs()))


def _padded_table(table: torch.Tensor) -> torch.Tensor:
    """table as a view with a NaN row before it and NaN rows after it: a read outside it poisons the result."""
    padded = torch.full((table.shape[0] + 8, table.shape[1]), float("nan"), device=table.device)
    padded[1:1 + table.shape[0]] = table
    return padded[1:1 + table.shape[0]]


def _rotate(x: torch.Tensor, cos_row: torch.Tensor, sin_row: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos_row + torch.cat([x[..., half:], x[..., :half]], dim=-1) * sin_row


def test_rope_append_position_outside_the_cache_reads_no_table_row():
    from genai_fast.kernels.rope_append import rope_append_fwd

    qkv, Hq, Hkv, k_cache, v_cache, _, cos, sin = _rope_inputs(B=3)
    D, S_max = k_cache.shape[3], k_cache.shape[2]
    seqlens = torch.tensor([-1, S_max + 2, 2], dtype=torch.int32)
    q = rope_append_fwd(qkv, Hq, Hkv, k_cache, v_cache, seqlens, _padded_table(cos), _padded_table(sin))
    assert torch.isfinite(q).all(), "a position outside the cache read a row outside the rope tables"
    assert not k_cache[:2].any() and not v_cache[:2].any()
    # The sequence inside the cache: rotated as the unfused step rotates it, written at its position.
    heads = qkv[2].view(Hq + 2 * Hkv, D)
    torch.testing.assert_close(q[2, :, 0], _rotate(heads[:Hq], cos[2], sin[2]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_cache[2, :, 2], _rotate(heads[Hq:Hq + Hkv], cos[2], sin[2]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_cache[2, :, 2], heads[Hq + Hkv:], rtol=0, atol=0)


# ---------------------------------------------------------------- decode attention (split-K over a KV cache)


def _decode_inputs(device="cpu", S_max=20, extra=8):
    """q [2, 4, 1, 16] over caches [2, 2, S_max, 16] that are views of longer NaN-filled ones."""
    q = torch.randn(2, 4, 1, 16, device=device)
    caches = []
    for _ in range(2):
        full = torch.full((2, 2, S_max + extra, 16), float("nan"), device=device)
        full[:, :, :S_max] = torch.randn(2, 2, S_max, 16, device=device)
        caches.append(full[:, :, :S_max])
    return q, caches[0], caches[1]


def test_decode_length_past_the_cache_reads_nothing_past_it():
    from genai_fast.kernels.attention import decode_fwd

    q, k_cache, v_cache = _decode_inputs(_device())
    S_max = k_cache.shape[2]
    lengths = torch.tensor([S_max + 5, S_max], dtype=torch.int32, device=q.device)
    out = decode_fwd(q, k_cache, v_cache, lengths, False, 0.25)
    assert torch.isfinite(out).all(), "the kernel read cache positions past S_max"
    expected = F.scaled_dot_product_attention(q, k_cache, v_cache, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_decode_refuses_lengths_it_cannot_read():
    from genai_fast.kernels.attention import decode_fwd

    q, k_cache, v_cache = _decode_inputs()
    with pytest.raises(ValueError, match=r"^lengths: expected shape \(2,\)"):
        decode_fwd(q, k_cache, v_cache, torch.tensor([3], dtype=torch.int32), False, 0.25)
    with pytest.raises(TypeError, match=r"^lengths: expected dtype int32 or int64"):
        decode_fwd(q, k_cache, v_cache, torch.tensor([3.0, 3.0]), False, 0.25)


# ---------------------------------------------------------------- attention: 32-bit offsets, grid dimension 1


def test_attention_refuses_a_mask_slice_past_32_bit_offsets():
    from genai_fast.kernels.attention import attention_fwd

    # Row 2 of the mask starts 2^31 elements in: the kernel's 32-bit row offset would wrap to -2^31.
    storage = torch.empty(LAZY_BYTES, dtype=torch.bool)
    mask = storage.as_strided((1, 1, 3, 16), (0, 0, 2**30, 1))
    q, k, v = torch.randn(1, 1, 3, 16), torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"^attn_mask: shape \(1, 1, 3, 16\) with strides"):
        attention_fwd(q, k, v, mask, False, 0.25)


def test_dispatch_leaves_a_mask_slice_past_32_bit_offsets_to_another_backend():
    """The automatic choice never picks a Triton kernel that would refuse the call at launch."""
    from genai_fast.ops.attention import _dispatch_inputs, _triton_reasons

    mask = torch.empty(LAZY_BYTES, dtype=torch.bool).as_strided((1, 1, 3, 16), (0, 0, 2**30, 1))
    q = torch.randn(1, 1, 3, 16)
    assert any("32-bit offsets" in r for r in _triton_reasons(_dispatch_inputs(q, q, q, mask, 0.0)))
    assert _triton_reasons(_dispatch_inputs(q, q, q, mask[:, :, :2], 0.0)) == []  # row 1 is 2^30 in: fits


def test_offset_reasons_name_each_tensor_past_32_bit_offsets():
    from genai_fast.kernels.attention import offset_reasons

    fits = ((1, 8, 4096, 128), (8 * 4096 * 128, 128, 8 * 128, 1))   # a [B, S, H, D] layout read as [B, H, S, D]
    rows = ((1, 8, 2**21 + 1, 128), (2**21 * 8 * 128, 128, 8 * 128, 1))  # row 2^21 of 1024 elements: 2^31 in
    columns = ((1, 1, 4, 128), (0, 0, 1, 2**25))                          # column 127 at 127 * 2^25 > 2^31
    reasons = offset_reasons({"query": fits, "key": rows, "grad_out": columns, "attn_mask": None})
    assert [r.split(":")[0] for r in reasons] == ["key", "grad_out"]
    assert offset_reasons({"key": ((1, 8, 2**21, 128), rows[1])}) == []  # rows up to 2^31 - 1024 elements in


def test_attention_refuses_more_heads_than_grid_dimension_1():
    from genai_fast.kernels.attention import MAX_GRID_Y, attention_fwd, decode_fwd

    heads = MAX_GRID_Y + 1
    q = torch.randn(1, heads, 1, 16)
    with pytest.raises(ValueError, match=rf"^query: {heads} heads exceed"):
        attention_fwd(q, q, q, None, False, 0.25)
    with pytest.raises(ValueError, match=rf"^k_cache: {heads} heads exceed"):
        decode_fwd(q, q, q, torch.ones(1, dtype=torch.int32), False, 0.25)


# ---------------------------------------------------------------- conv2d


class _RecordingKernel:
    """Stands in for a jitted kernel: records each launch's grid and first argument, runs nothing."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def launch(y, *args, **kwargs):
            self.launches.append((grid, y.shape[0]))
        return launch


def test_conv2d_epilogue_splits_batches_above_grid_dimension_1(monkeypatch):
    from genai_fast.kernels import conv2d

    recorder = _RecordingKernel()
    monkeypatch.setattr(conv2d, "_conv2d_epilogue_kernel", recorder)
    N = 2 * conv2d.MAX_GRID_Y + 3
    y = torch.empty(N, 2, 1, 1)
    conv2d.conv2d_epilogue_(y, torch.zeros(N, 2), torch.zeros(N, 2, 1, 1), "silu", 1.0)
    assert all(grid[1] <= conv2d.MAX_GRID_Y and grid[2] <= 65535 for grid, _ in recorder.launches)
    assert [rows for _, rows in recorder.launches] == [conv2d.MAX_GRID_Y, conv2d.MAX_GRID_Y, 3]


@pytest.mark.parametrize("per_sample_bias", [False, True], ids=["channel-bias", "per-sample-bias"])
def test_conv2d_epilogue_in_batch_slices_matches_torch(monkeypatch, per_sample_bias):
    from genai_fast.kernels import conv2d

    monkeypatch.setattr(conv2d, "MAX_GRID_Y", 2)  # five samples in slices of 2, 2 and 1
    y = torch.randn(5, 3, 4, 4)
    bias = torch.randn(5, 3) if per_sample_bias else torch.randn(3)
    residual = torch.randn(5, 3, 4, 4)
    expected = (F.silu(y + (bias[:, :, None, None] if per_sample_bias else bias[None, :, None, None])) + residual) * 0.5
    out = conv2d.conv2d_epilogue_(y.clone(), bias, residual, "silu", 0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_conv2d_refuses_more_groups_than_grid_dimension_1():
    from genai_fast.kernels.conv2d import MAX_GRID_Y, conv2d_fwd

    groups = MAX_GRID_Y + 1
    x, weight, out = torch.randn(1, groups, 1, 1), torch.randn(groups, 1, 1, 1), torch.empty(1, groups, 1, 1)
    with pytest.raises(ValueError, match=rf"^groups: .* got {groups}"):
        conv2d_fwd(x, weight, None, None, [1, 1], [0, 0], [1, 1], groups, None, 1.0, out)


# ---------------------------------------------------------------- group_norm, rms_norm, guided_update


def test_group_norm_refuses_sizes_it_would_index_past(monkeypatch):
    from genai_fast.kernels import group_norm

    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(ValueError, match=r"^num_groups: expected a positive divisor of C=6"):
        group_norm.group_norm_fwd(x, 4, None, None, 1e-5, None)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(6,\)"):
        group_norm.group_norm_fwd(x, 3, torch.ones(3), None, 1e-5, None)
    with pytest.raises(ValueError, match=r"^bias: expected shape \(6,\)"):
        group_norm.group_norm_fwd(x, 3, None, torch.ones(12), 1e-5, None)
    # 1024 pixels a channel take tiles of 4 channels: 6 channels need 2 programs on grid dimension 2.
    monkeypatch.setattr(group_norm, "MAX_GRID_Z", 1)
    with pytest.raises(ValueError, match=r"^x: C=6 channels need 2 channel blocks"):
        group_norm.group_norm_fwd(torch.randn(1, 6, 32, 32), 3, None, None, 1e-5, None)


def test_rms_norm_refuses_a_weight_of_another_size():
    from genai_fast.kernels.rms_norm import add_rms_norm_fwd, rms_norm_fwd

    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(8,\)"):
        rms_norm_fwd(x, torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(8,\)"):
        add_rms_norm_fwd(x, x, torch.ones(4), 1e-6)


def test_guided_update_refuses_tensors_of_other_sizes():
    from genai_fast.kernels.guided_update import guided_update_fwd

    x = torch.randn(2, 4, 3, 3)
    out = torch.empty_like(x)
    coefficients = (1.0, -1.0, 0.5, 0.5, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"^model_output: expected 144 elements"):
        guided_update_fwd(x, torch.randn(2, 4, 3, 3), None, None, out, None, True, 7.5, coefficients, float("inf"))
    with pytest.raises(ValueError, match=r"^out: expected 72 elements"):
        guided_update_fwd(x, torch.randn(4, 4, 3, 3), None, None, out[:1], None, True, 7.5, coefficients, 1.0)


# ---------------------------------------------------------------- word2vec


def _w2v_inputs(vocab=10, dim=16):
    syn0, syn1 = torch.zeros(vocab, dim), torch.zeros(vocab, dim)
    tokens, alphas = torch.zeros(8, dtype=torch.int32), torch.full((8,), 0.025)
    bounds = torch.tensor([[0, 8, 0, 8]], dtype=torch.int32)
    return syn0, syn1, tokens, alphas, bounds, torch.ones(vocab), torch.arange(vocab, dtype=torch.int32)


W2V_BAD = {
    "alias_prob": lambda a: _replace(a, 5, a[5][:4]),         # noise draws index [0, vocab)
    "alias_index": lambda a: _replace(a, 6, a[6].long()),
    "tokens": lambda a: _replace(a, 2, a[2].long()),
    "alphas": lambda a: _replace(a, 3, a[3][:4]),             # one learning rate per kept token
    "bounds": lambda a: _replace(a, 4, a[4][:, :2].contiguous()),
    "syn1neg": lambda a: _replace(a, 1, a[1][:5]),
}


@pytest.mark.parametrize("case", W2V_BAD, ids=W2V_BAD)
def test_word2vec_triton_refuses_tables_of_other_sizes(case):
    from genai_fast.kernels.word2vec import word2vec_train_fwd

    args = W2V_BAD[case](_w2v_inputs())
    with pytest.raises(ValueError, match=rf"^{case}: expected"):
        word2vec_train_fwd(*args, mode="sg_shared", window=2, negative=2, cbow_mean=True, shrink_windows=True,
                           compute_loss=False, seed=1)


def test_word2vec_triton_refuses_a_tree_of_other_sizes():
    from genai_fast.kernels.word2vec import word2vec_train_fwd

    args = _w2v_inputs()
    points = torch.zeros(10, 4, dtype=torch.int32)
    tree = (torch.zeros(10, 16), points, torch.zeros(10, 3, dtype=torch.uint8), torch.zeros(10, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"^tree.codes: expected"):
        word2vec_train_fwd(*args, mode="cbow", window=2, negative=0, cbow_mean=True, shrink_windows=True,
                           compute_loss=False, seed=1, tree=tree)


def test_word2vec_cuda_refuses_more_shared_memory_than_the_gpu_has(monkeypatch):
    """A compute capability 7.5 GPU opts in to 64 KB per block, below the 96 KB the launcher assumed."""
    from genai_fast.backends.cuda import word2vec as cuda_word2vec

    monkeypatch.setattr(cuda_word2vec, "device_index", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(shared_memory_per_block_optin=64 * 1024))
    need = cuda_word2vec.WARPS * cuda_word2vec.warp_area_bytes("sg_shared", 300, 5, 5)
    assert 64 * 1024 < need <= cuda_word2vec.MAX_OPTIN_SHARED_BYTES
    syn0, syn1, tokens, alphas, bounds, prob, alias = _w2v_inputs(dim=300)
    with pytest.raises(ValueError, match=r"^dim/window/negative: .* exceed this GPU's 65536 bytes"):
        cuda_word2vec.word2vec_train_fwd(syn0, syn1, tokens, alphas, bounds, prob, alias, mode="sg_shared", window=5,
                                         negative=5, cbow_mean=True, shrink_windows=True, compute_loss=False, seed=1)


def test_word2vec_dispatch_sends_what_the_gpu_cannot_stage_to_triton(monkeypatch):
    """The dispatcher's check uses the device's own shared-memory limit, so automatic dispatch passes a
    configuration too big for a 64 KB GPU to the Triton trainer instead of choosing CUDA and failing."""
    from genai_fast.backends.cuda import word2vec as cuda_word2vec
    from genai_fast.ops import word2vec_ops

    monkeypatch.setattr(word2vec_ops, "_gpu_train_check", lambda inputs: [])
    # A stand-in for CUDA tables (the check reads their device and width only).
    syn0 = types.SimpleNamespace(device=torch.device("cuda"), shape=(10, 300))
    inputs = {"syn0": syn0, "mode": "sg_shared", "window": 5, "negative": 5}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda_word2vec, "device_shared_limit", lambda index: 64 * 1024)
    (reason,) = word2vec_ops._cuda_train_check(inputs)
    assert "exceed 65536 bytes of shared memory" in reason
    monkeypatch.setattr(cuda_word2vec, "device_shared_limit", lambda index: cuda_word2vec.MAX_OPTIN_SHARED_BYTES)
    assert word2vec_ops._cuda_train_check(inputs) == []


# ---------------------------------------------------------------- on a GPU only


@pytest.mark.gpu
def test_gpu_rope_append_position_outside_the_cache():
    from genai_fast.kernels.rope_append import rope_append_fwd

    qkv, Hq, Hkv, k_cache, v_cache, _, cos, sin = _rope_inputs(B=3, device="cuda")
    seqlens = torch.tensor([-(2**30), 2**30, 2], dtype=torch.int32, device="cuda")  # far outside both tables
    q = rope_append_fwd(qkv, Hq, Hkv, k_cache, v_cache, seqlens, cos, sin)
    torch.cuda.synchronize()
    assert torch.isfinite(q).all() and not k_cache[:2].any() and not v_cache[:2].any()


@pytest.mark.gpu
def test_gpu_decode_length_far_past_the_cache():
    from genai_fast.kernels.attention import decode_fwd

    q, k_cache, v_cache = _decode_inputs("cuda")
    lengths = torch.tensor([2**30, 3], dtype=torch.int32, device="cuda")
    out = decode_fwd(q, k_cache, v_cache, lengths, True, 0.25)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


@pytest.mark.gpu
def test_gpu_conv2d_epilogue_batch_above_grid_dimension_1():
    from genai_fast.kernels.conv2d import MAX_GRID_Y, conv2d_epilogue_

    N = MAX_GRID_Y + 7
    y = torch.randn(N, 2, 2, 2, device="cuda")
    bias = torch.randn(N, 2, device="cuda")
    expected = F.silu(y + bias[:, :, None, None])
    torch.testing.assert_close(conv2d_epilogue_(y, bias, None, "silu", 1.0), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_gpu_group_norm_with_more_than_2_31_scale_entries():
    """N * C >= 2^31 (S = 1): the per-(n, c) scale and shift are indexed with 64-bit sample offsets."""
    from genai_fast.kernels.group_norm import group_norm_fwd

    free, _ = torch.cuda.mem_get_info()
    N, C = 2**16 + 2, 2**15
    if free < 64 * 2**30:  # x and out 8 GiB, the statistics' workspace (hi, lo, M2; center, scale, shift) 48
        pytest.skip(f"needs about 64 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    x = torch.randn(N, C, 1, dtype=torch.float16, device="cuda")
    out = group_norm_fwd(x, C // 2, None, None, 1e-5, None)
    tail = slice(N - 4, N)  # samples whose n * C is past 2^31
    expected = F.group_norm(x[tail].float(), C // 2, eps=1e-5).half()
    torch.testing.assert_close(out[tail], expected, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
def test_gpu_attention_refuses_a_mask_slice_past_32_bit_offsets():
    from genai_fast.kernels.attention import attention_fwd

    mask = torch.ones(2**31 + 64, dtype=torch.bool, device="cuda").as_strided((1, 1, 3, 16), (0, 0, 2**30, 1))
    q = torch.randn(1, 1, 3, 16, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^attn_mask:"):
        attention_fwd(q, q[:, :, :1].expand(1, 1, 16, 16), q[:, :, :1].expand(1, 1, 16, 16), mask, False, 0.25)
