"""The LLM decode step's GPU kernels under the Triton interpreter.

- Rope-and-append (kernels/rope_append.py) against the unfused step's own arithmetic (apply_rope, slice writes
  into the caches) in every kernel dtype, with and without rotation, GQA, a batch smaller than the caches,
  positions at both ends of the cache and one past it.
- SwiGLU (kernels/swiglu.py) against torch's silu(gate) * up.
- The residual add folded into RMSNorm (kernels/rms_norm.py's add_rms_norm_fwd) against torch's add, then the
  norm's arithmetic.
- Three greedy decode steps of tiny Llama, Qwen2/3, GPT-2, SmolLM3, Gemma, Granite and Gemma 3 models through
  these kernels (the Llama-family steps with every residual add folded into a norm), against the same steps
  unfused.
"""

import pytest
import torch

from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.llm.model import apply_rope
from tests.llm_cases import VARIANT_KINDS, tiny_qwen3, tiny_variant

pytestmark = pytest.mark.skipif(bool(backend_unavailable_reasons("triton")),
                                reason="; ".join(backend_unavailable_reasons("triton")) or "triton available")
transformers = pytest.importorskip("transformers")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _tables(max_len: int, D: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.arange(max_len)[:, None] * (10000.0 ** (-torch.arange(0, D, 2) / D))[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    sin = emb.sin()
    return emb.cos().to(dtype), torch.cat([-sin[:, :D // 2], sin[:, D // 2:]], dim=-1).to(dtype)


def _reference(qkv, Hq, Hkv, k_cache, v_cache, seqlens, cos, sin):
    """The unfused step: rotate with apply_rope (bitwise HF's), write k and v with slice copies."""
    B, D = qkv.shape[0], k_cache.shape[3]
    qk = qkv[:, :(Hq + Hkv) * D].view(B, Hq + Hkv, 1, D)
    if cos is not None:
        qk = apply_rope(qk, cos.index_select(0, seqlens)[:, None, None], sin.index_select(0, seqlens)[:, None, None])
    v = qkv[:, (Hq + Hkv) * D:].view(B, Hkv, 1, D)
    for b, n in enumerate(seqlens.tolist()):
        if n < k_cache.shape[2]:
            k_cache[b, :, n] = qk[b, Hq:, 0]
            v_cache[b, :, n] = v[b, :, 0]
    return qk[:, :Hq].contiguous()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("Hq, Hkv, D, rope", [(9, 3, 64, True), (4, 2, 16, True), (2, 2, 8, False), (1, 1, 2, True)],
                         ids=["smollm2-heads", "gqa-d16", "gpt2-no-rope", "one-head-d2"])
def test_matches_the_unfused_step(Hq, Hkv, D, rope, dtype):
    from genai_fast.kernels.rope_append import rope_append_fwd

    B, B_alloc, S_max = 3, 4, 10
    qkv = torch.randn(B, (Hq + 2 * Hkv) * D).to(dtype)
    cos, sin = _tables(S_max, D, dtype) if rope else (None, None)
    seqlens = torch.tensor([0, S_max - 1, 4], dtype=torch.int32)
    caches = [torch.randn(B_alloc, Hkv, S_max, D).to(dtype) for _ in range(2)]
    expected_caches = [c.clone() for c in caches]
    expected_q = _reference(qkv, Hq, Hkv, *expected_caches, seqlens, cos, sin)
    with memory.poison_outputs():
        q = rope_append_fwd(qkv, Hq, Hkv, *caches, seqlens, cos, sin)
    assert q.shape == (B, Hq, 1, D) and q.dtype == dtype
    # fp16: each product and the sum rounded as torch rounds them, so bitwise. fp32 may differ by a
    # contraction into an FMA. bf16: Triton's interpreter converts fp32 to bf16 by truncation (the GPU rounds
    # to nearest), so each of the three roundings may be one bf16 ulp off here.
    tolerance = {torch.float16: 0.0, torch.float32: 1e-6, torch.bfloat16: 3 * 2.0 ** -8}[dtype]
    for got, want in ((q, expected_q), *zip(caches, expected_caches, strict=True)):
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


def test_a_position_past_the_cache_writes_nothing():
    from genai_fast.kernels.rope_append import rope_append_fwd

    k_cache, v_cache = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8)
    cos, sin = _tables(8, 8, torch.float32)
    q = rope_append_fwd(torch.randn(1, 24), 1, 1, k_cache, v_cache, torch.tensor([4], dtype=torch.int32), cos, sin)
    assert torch.isfinite(q).all() and not k_cache.any() and not v_cache.any()
    with pytest.raises(ValueError, match=r"^qkv: expected"):
        rope_append_fwd(torch.randn(1, 23), 1, 1, k_cache, v_cache, torch.tensor([0], dtype=torch.int32), cos, sin)


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                                                    n_positions=32)).eval()
    common = dict(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=32)
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval()
    if kind == "qwen3":
        return tiny_qwen3(16, **common)
    if kind in VARIANT_KINDS:
        return tiny_variant(kind, **common)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", [(1, 2), (3, 3072), (2, 40)], ids=["one-value", "smollm2-mlp", "odd"])
def test_swiglu_matches_torch(shape, dtype):
    from genai_fast.kernels.swiglu import swiglu_fwd

    h = (torch.randn(shape) * 4).to(dtype)
    gate, up = h.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    with memory.poison_outputs():
        out = swiglu_fwd(h)
    assert out.shape == expected.shape and out.dtype == dtype
    # Two roundings as torch's (silu, then the product). bf16: the interpreter truncates instead of rounding,
    # twice, against torch's two roundings to nearest: up to four bf16 ulps apart here.
    tolerance = {torch.float16: 1e-3, torch.float32: 1e-6, torch.bfloat16: 2.0 ** -5}[dtype]
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)
    wide = (torch.randn(shape[0], shape[1] + 6) * 4).to(dtype)
    torch.testing.assert_close(swiglu_fwd(wide[:, 3:3 + shape[1]]), swiglu_fwd(wide[:, 3:3 + shape[1]].contiguous()),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^h: expected"):
        swiglu_fwd(torch.randn(2, 3))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", [(1, 576), (3, 40), (2, 1)], ids=["smollm2-hidden", "odd-batch", "one-value"])
def test_add_rms_norm_matches_the_add_then_the_norm(shape, dtype):
    from genai_fast.kernels.rms_norm import add_rms_norm_fwd

    from genai_fast.llm.model import Norm

    h, delta = (torch.randn(shape) * 3).to(dtype), torch.randn(shape).to(dtype)
    norm = Norm(torch.randn(shape[1]).to(dtype), None, 1e-5)
    want_sum = h + delta
    want = norm(want_sum)
    with memory.poison_outputs():
        got_sum, got = add_rms_norm_fwd(h, delta, norm.weight, norm.eps)
    # bf16: the interpreter truncates where the GPU rounds to nearest (a few bf16 ulps over the two roundings).
    tolerance = {torch.float16: 2e-3, torch.float32: 1e-6, torch.bfloat16: 2.0 ** -5}[dtype]
    torch.testing.assert_close(got_sum, want_sum, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(got, want, rtol=4 * tolerance, atol=4 * tolerance)
    same, normed = add_rms_norm_fwd(h, None, norm.weight, norm.eps)
    assert same is h and torch.allclose(normed.float(), norm(h).float(), rtol=4 * tolerance, atol=4 * tolerance)
    with pytest.raises(ValueError, match=r"^delta: expected"):
        add_rms_norm_fwd(h, torch.cat([delta, delta]), norm.weight, norm.eps)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gpt2", *VARIANT_KINDS])
def test_decode_steps_through_the_kernels_match_the_unfused_steps(kind, monkeypatch):
    """DecoderModel.decode without host lengths (the GPU graph path) with all three kernels resolved (RMSNorm,
    rope-and-append, SwiGLU), against the same steps unfused: after a ragged prefill, three greedy steps give
    the same logits, and the caches the same rows."""
    from genai_fast.kernels.rms_norm import add_rms_norm_fwd, rms_norm_fwd
    from genai_fast.kernels.rope_append import rope_append_fwd
    from genai_fast.kernels.swiglu import swiglu_fwd

    from genai_fast.llm import load
    from genai_fast.llm import model as model_module
    from genai_fast.llm.model import DecoderModel

    model = load(_tiny(kind), max_seq_len=16).model
    ids = torch.randint(0, 64, (2, 5))
    runs = []
    for fused in (False, True):
        # Through decode_append's own rule (no rope-and-append for sliding layers), resolved afresh per run.
        monkeypatch.setattr(model_module, "resolve_rope_append", lambda *args, f=fused: rope_append_fwd if f else None)
        model._decode_kernels.clear()
        monkeypatch.setattr(DecoderModel, "decode_swiglu",
                            lambda self, f=fused: swiglu_fwd if f and self.cfg.activation == "silu" else None)
        monkeypatch.setattr(DecoderModel, "decode_rms_norm", lambda self, f=fused: rms_norm_fwd if f else None)
        monkeypatch.setattr(DecoderModel, "decode_add_rms_norm",
                            lambda self, f=fused: add_rms_norm_fwd if f and self.cfg.family == "llama" else None)
        model.allocate_cache(2, 16)
        seqlens = torch.tensor([5, 3], dtype=torch.int32)
        tokens = model.prefill(ids, seqlens.long() - 1).argmax(-1, keepdim=True)
        steps = []
        for _ in range(3):
            logits = model.decode(tokens, seqlens)
            steps.append(logits)
            tokens, seqlens = logits.argmax(-1, keepdim=True), seqlens + 1
        runs.append((steps, [layer.k_cache.clone() for layer in model.layers],
                     [layer.v_cache.clone() for layer in model.layers]))
    (plain, k_plain, v_plain), (fused, k_fused, v_fused) = runs
    for got, want in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(k_plain + v_plain, k_fused + v_fused, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
