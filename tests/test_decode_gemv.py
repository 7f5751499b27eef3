"""kernels/decode_gemv.py under the Triton interpreter: the LLM decode step's projections with the RMSNorm (and
the residual add before it) or the SwiGLU folded in.

- Each kernel against the float64 oracle with DESIGN.md's tolerance rule (the budget: torch's unfused ops in the
  kernel's dtype, as HF runs them), outputs poisoned with NaN first, on curated shapes: one value, SmolLM2's
  widths, K and N that are not multiples of the tiles, several rows, a bias, no residual add, rows at a padded
  stride.
- Bad arguments raise ValueError naming them.
- Three greedy decode steps of tiny Llama and Qwen2 models through the fused projections against the same steps
  with cuBLAS-style separate ops, and the resolution rules (batch 1, RMSNorm/SwiGLU models only).
"""

import pytest
import torch
import torch.nn.functional as F

from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.testing import assert_matches_oracle
from tests.llm_cases import VARIANT_KINDS, tiny_qwen3, tiny_variant

pytestmark = pytest.mark.skipif(bool(backend_unavailable_reasons("triton")),
                                reason="; ".join(backend_unavailable_reasons("triton")) or "triton available")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EPS = 1e-5


def _norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """HF's LlamaRMSNorm in x's dtype (float64: the oracle)."""
    h = x.float() if x.dtype != torch.float64 else x
    normed = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)
    return weight * normed


def _norm_linear_reference(h, delta, norm_weight, weight, bias):
    total = h if delta is None else h + delta
    return total, F.linear(_norm(total, norm_weight), weight, bias)


def _inputs(R, K, N, dtype, with_delta, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(R, K, generator=g) * 2).to(dtype)
    delta = torch.randn(R, K, generator=g).to(dtype) if with_delta else None
    norm_weight = (1 + 0.2 * torch.randn(K, generator=g)).to(dtype)
    weight = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype) if with_bias else None
    return h, delta, norm_weight, weight, bias


def _f64(t):
    return None if t is None else t.double()


SHAPES = {  # R, K, N
    "one-value": (1, 1, 1),
    "smollm2-qkv": (1, 576, 40),
    "odd": (3, 100, 37),
    "k-one-tile-plus-one": (2, 65, 16),
}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("with_delta, with_bias", [(True, False), (False, True)], ids=["add", "bias-no-add"])
def test_norm_linear_matches_float64(shape, dtype, with_delta, with_bias):
    from genai_fast.kernels.decode_gemv import norm_linear_fwd

    R, K, N = shape
    h, delta, norm_weight, weight, bias = _inputs(R, K, N, dtype, with_delta, with_bias, seed=R * K + N)
    want_total, want = _norm_linear_reference(*map(_f64, (h, delta, norm_weight, weight, bias)))
    base_total, base = _norm_linear_reference(h, delta, norm_weight, weight, bias)
    with memory.poison_outputs():
        total, y = norm_linear_fwd(h, delta, norm_weight, EPS, weight, bias)
    assert y.shape == (R, N) and y.dtype == dtype and total.shape == (R, K)
    assert_matches_oracle(y, want, base, "norm_linear")
    if delta is None:
        assert total is h
    else:
        assert_matches_oracle(total, want_total, base_total, "residual sum")


def test_norm_linear_reads_rows_at_a_padded_stride():
    from genai_fast.kernels.decode_gemv import norm_linear_fwd

    h, delta, norm_weight, weight, bias = _inputs(3, 48, 20, torch.float32, True, True, seed=1)
    wide_h, wide_delta = torch.randn(3, 60), torch.randn(3, 60)
    wide_h[:, 5:53], wide_delta[:, 2:50] = h, delta
    got = norm_linear_fwd(wide_h[:, 5:53], wide_delta[:, 2:50], norm_weight, EPS, weight, bias)
    want = norm_linear_fwd(h, delta, norm_weight, EPS, weight, bias)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _swiglu_linear_reference(gate_up, weight, bias):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, weight, bias)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1536, 24), (3, 40, 37)], ids=["one-value", "smollm2-down", "odd"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_swiglu_linear_matches_float64(shape, dtype, with_bias):
    from genai_fast.kernels.decode_gemv import swiglu_linear_fwd

    R, K, N = shape
    g = torch.Generator().manual_seed(R + K + N)
    gate_up = (torch.randn(R, 2 * K, generator=g) * 3).to(dtype)
    weight = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype) if with_bias else None
    want = _swiglu_linear_reference(*map(_f64, (gate_up, weight, bias)))
    with memory.poison_outputs():
        y = swiglu_linear_fwd(gate_up, weight, bias)
    assert y.shape == (R, N) and y.dtype == dtype
    assert_matches_oracle(y, want, _swiglu_linear_reference(gate_up, weight, bias), "swiglu_linear")


def test_bad_arguments_name_themselves():
    from genai_fast.kernels.decode_gemv import norm_linear_fwd, swiglu_linear_fwd

    h, delta, norm_weight, weight, bias = _inputs(2, 8, 4, torch.float32, True, True, seed=0)
    cases = [
        ("h", lambda: norm_linear_fwd(h[0], None, norm_weight, EPS, weight)),
        ("delta", lambda: norm_linear_fwd(h, delta[:1], norm_weight, EPS, weight)),
        ("norm_weight", lambda: norm_linear_fwd(h, delta, norm_weight[:7], EPS, weight)),
        ("weight", lambda: norm_linear_fwd(h, delta, norm_weight, EPS, weight[:, :7])),
        ("weight", lambda: norm_linear_fwd(h, delta, norm_weight, EPS, weight.t().contiguous().t())),
        ("weight", lambda: norm_linear_fwd(h, delta, norm_weight, EPS, weight.double())),
        ("bias", lambda: norm_linear_fwd(h, delta, norm_weight, EPS, weight, bias[:3])),
        ("gate_up", lambda: swiglu_linear_fwd(torch.randn(2, 7), weight)),
        ("weight", lambda: swiglu_linear_fwd(torch.randn(2, 10), weight)),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=rf"^{name}: expected"):
            call()


def _tiny(kind: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=32)
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval()
    if kind == "qwen3":
        return tiny_qwen3(16, **common)
    if kind in VARIANT_KINDS:
        return tiny_variant(kind, **common)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "smollm3", "granite"])
def test_decode_steps_through_the_fused_projections_match_separate_ops(kind, monkeypatch):
    """DecoderModel.decode without host lengths (the GPU graph path) at batch 1: the norms and the SwiGLU folded
    into the projections (decode_gemv) against the same kernels run separately (add_rms_norm, F.linear,
    swiglu): three greedy steps after the prefill give the same logits and the same cache rows. fp32, so the
    only difference is the order of the projections' sums."""
    from genai_fast.kernels.decode_gemv import norm_linear_fwd, swiglu_linear_fwd
    from genai_fast.kernels.rms_norm import add_rms_norm_fwd
    from genai_fast.kernels.rope_append import rope_append_fwd
    from genai_fast.kernels.swiglu import swiglu_fwd

    from genai_fast.llm import load
    from genai_fast.llm.model import DecodeGemv, DecoderModel

    model = load(_tiny(kind), max_seq_len=16).model
    monkeypatch.setattr(DecoderModel, "decode_append", lambda self: rope_append_fwd)
    monkeypatch.setattr(DecoderModel, "decode_swiglu", lambda self: swiglu_fwd)
    monkeypatch.setattr(DecoderModel, "decode_add_rms_norm", lambda self: add_rms_norm_fwd)
    ids = torch.randint(0, 64, (1, 5))
    runs = []
    for fused in (False, True):
        gemv = DecodeGemv(norm_linear_fwd, swiglu_linear_fwd) if fused else None
        monkeypatch.setattr(DecoderModel, "decode_gemv", lambda self, batch, g=gemv: g if batch == 1 else None)
        model.allocate_cache(1, 16)
        seqlens = torch.tensor([5], dtype=torch.int32)
        tokens = model.prefill(ids).argmax(-1, keepdim=True)
        steps = []
        for _ in range(3):
            logits = model.decode(tokens, seqlens)
            steps.append(logits)
            tokens, seqlens = logits.argmax(-1, keepdim=True), seqlens + 1
        runs.append((steps, [torch.cat([layer.k_cache, layer.v_cache]).clone() for layer in model.layers]))
    (plain, caches_plain), (fused, caches_fused) = runs
    for got, want in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(caches_fused, caches_plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, expected", [("llama", True), ("qwen2", True), ("granite", True), ("gpt2", False),
                                            ("gemma", False)])
def test_the_fused_projections_resolve_for_rmsnorm_swiglu_models_at_batch_1(kind, expected, monkeypatch):
    """decode_gemv on a (pretended) GPU: Llama-family models with SwiGLU at batch 1 only; GPT-2's LayerNorm/GELU
    and Gemma's GeGLU never; off with fused_projections False."""
    transformers = pytest.importorskip("transformers")
    from genai_fast.llm import load
    from genai_fast.llm import model as model_module

    hf = (transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4,
                                                               n_positions=32)).eval()
          if kind == "gpt2" else _tiny(kind))
    model = load(hf, max_seq_len=16).model
    monkeypatch.setattr(model_module, "_resolve_gpu_kernel",
                        lambda device, dtype, name, function=None: (name, function))
    gemv = model.decode_gemv(1)
    assert (gemv is not None) == expected
    if expected:
        assert gemv == (("decode_gemv", "norm_linear_fwd"), ("decode_gemv", "swiglu_linear_fwd"))
        assert model.decode_gemv(2) is None
        model.fused_projections = False
        assert model.decode_gemv(1) is None


def test_half_precision_gemma_norms_stay_off_the_fused_norm_kernels(monkeypatch):
    """A bf16 Gemma's norms multiply by their weight in fp32 before rounding, which the fused add+RMSNorm kernel
    does not: on a (pretended) GPU the step resolves neither it nor the projections; an fp32 Gemma takes it."""
    from genai_fast.llm import load
    from genai_fast.llm import model as model_module

    monkeypatch.setattr(model_module, "_resolve_gpu_kernel",
                        lambda device, dtype, name, function=None: (name, function))
    assert load(_tiny("gemma"), max_seq_len=16).model.decode_add_rms_norm() is not None
    half = load(_tiny("gemma").to(torch.bfloat16), max_seq_len=16).model
    assert half.decode_add_rms_norm() is None and half.decode_gemv(1) is None and half.decode_swiglu() is None


def test_no_rows_and_no_features():
    """Zero rows give empty results without a launch; zero output features an empty [R, 0]."""
    from genai_fast.kernels.decode_gemv import norm_linear_fwd, swiglu_linear_fwd

    h, delta, norm_weight, weight, _ = _inputs(2, 8, 4, torch.float32, True, False, seed=3)
    total, y = norm_linear_fwd(h[:0], delta[:0], norm_weight, EPS, weight)
    assert total.shape == (0, 8) and y.shape == (0, 4)
    total, y = norm_linear_fwd(h, None, norm_weight, EPS, weight[:0])
    assert total is h and y.shape == (2, 0)
    assert swiglu_linear_fwd(torch.randn(0, 16), weight).shape == (0, 4)
