"""genai_fast attention in transformers models beyond the plain forward: sliding windows, packed sequences, custom
4-D masks, static caches, attention dropout, output_attentions, and the arguments SDPA semantics cannot honour.

Tiny random models, fp32 on the CPU. At these sizes the automatic choice runs torch's own SDPA, so the parity
tests force the C++ backend: it is genai_fast's kernel that must match the unpatched (SDPA) model.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.backends.availability import backend_unavailable_reasons  # noqa: E402
from genai_fast.backends.dispatch import ENV_BACKEND, OPS  # noqa: E402
from genai_fast.integrations.transformers import genai_fast_attention_forward, patch, unpatch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}


@pytest.fixture
def cpp_backend(monkeypatch):
    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    monkeypatch.setenv(ENV_BACKEND, "cpp")
    OPS["scaled_dot_product_attention"].last_backend = None
    yield
    assert OPS["scaled_dot_product_attention"].last_backend == "cpp"


def _decoder(kind, **overrides):
    torch.manual_seed(0)
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    model = model_class(config_class(**{**SMALL, **overrides})).eval()
    model.set_attn_implementation("sdpa")
    return model


def _left_padded(batch=2, length=20, pad=5):
    ids = torch.randint(1, 100, (batch, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return ids, mask


@pytest.mark.parametrize("kind, overrides", [
    ("mistral", {"sliding_window": 6}),
    ("qwen2", {"sliding_window": 6, "use_sliding_window": True,
               "layer_types": ["sliding_attention", "full_attention"]}),
], ids=["mistral", "qwen2-layer-types"])
def test_sliding_window_prefill_and_generate_match_sdpa(kind, overrides, cpp_backend):
    """A window (6) shorter than the prompt (20): the mask function must give the banded mask, prefill and decode."""
    model = _decoder(kind, **overrides)
    ids, mask = _left_padded()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        want_tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        patch(model)
        got = model(input_ids=ids, attention_mask=mask).logits
        got_tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(got_tokens, want_tokens)


def test_packed_sequences_and_custom_4d_masks_match_sdpa(cpp_backend):
    """position_ids restarting inside a row (transformers' packing detection, no cache) and user 4-D masks, bool and
    additive float, reach the patched attention as they reach SDPA."""
    model = _decoder("llama")
    ids = torch.randint(1, 100, (2, 16), generator=torch.Generator().manual_seed(2))
    positions = torch.stack([torch.cat([torch.arange(7), torch.arange(9)]), torch.arange(16)])
    block = torch.ones(2, 1, 16, 16, dtype=torch.bool).tril()
    block[0, :, 7:, :7] = False  # the same two documents as the packed row
    additive = torch.zeros(block.shape).masked_fill(~block, torch.finfo(torch.float32).min)
    calls = [{"position_ids": positions, "use_cache": False},
             {"position_ids": positions, "attention_mask": block},
             {"position_ids": positions, "attention_mask": additive}]
    with torch.no_grad():
        want = [model(input_ids=ids, **kwargs).logits for kwargs in calls]
        patch(model)
        got = [model(input_ids=ids, **kwargs).logits for kwargs in calls]
        separate = model(input_ids=ids[:1, 7:]).logits  # the second document alone
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0][0, 7:], separate[0], rtol=1e-5, atol=1e-5)


def test_static_cache_generate_matches_sdpa(cpp_backend):
    model = _decoder("llama")
    ids, mask = _left_padded(length=12, pad=4)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "cache_implementation": "static", "output_logits": True,
              "return_dict_in_generate": True}
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        got = patch(model).generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), rtol=1e-5, atol=1e-5)


def test_attention_dropout_applies_in_training_only():
    """attention_dropout > 0 in train mode must drop (the kernels have none: the op runs its reference), and the
    same seed must give the same output; eval mode must not drop."""
    model = _decoder("llama", attention_dropout=0.5)
    ids, _ = _left_padded(pad=0)
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        patch(model).train()
        torch.manual_seed(5)
        dropped = model(input_ids=ids).logits
        torch.manual_seed(5)
        again = model(input_ids=ids).logits
        evaluated = model.eval()(input_ids=ids).logits
    assert (dropped - clean).abs().max() > 1e-2
    torch.testing.assert_close(again, dropped, rtol=0, atol=0)
    torch.testing.assert_close(evaluated, clean, rtol=1e-5, atol=1e-5)


def test_output_attentions_warns_as_sdpa_does():
    """SDPA returns no attention weights and warns; the patched model must not return the empty tuple silently."""
    model = _decoder("llama")
    ids, _ = _left_padded(pad=0)
    with torch.no_grad():
        want = model(input_ids=ids, output_attentions=True).attentions
        patch(model)
        with pytest.warns(UserWarning, match="^output_attentions:"):
            got = model(input_ids=ids, output_attentions=True).attentions
    assert got == want == ()


def test_patch_unpatch_round_trip_and_switching_back():
    """patch twice, unpatch, set_attn_implementation("eager") after patch: each time the model's own results."""
    model = _decoder("llama")
    ids, mask = _left_padded(length=12, pad=3)
    valid = mask.bool()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        patch(patch(model))
        twice = model(input_ids=ids, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids, attention_mask=mask).logits
        unpatched = unpatch(model)(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "sdpa"
    for got in (twice, eager, unpatched):
        torch.testing.assert_close(got[valid], want[valid], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- arguments SDPA semantics cannot honour


def test_sparse_indexed_attention_is_refused_not_made_dense():
    """DeepSeek-V3.2 folds its indexer's top-k selection into the mask only for "eager"/"sdpa"; for any other name
    it passes `indices` to the attention function. Ignoring them computes dense attention: other logits."""
    torch.manual_seed(0)
    config = transformers.DeepseekV32Config(
        vocab_size=100, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=4, n_group=1,
        topk_group=1, num_experts_per_tok=2, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16,
        qk_nope_head_dim=16, head_dim=8, index_topk=4, index_head_dim=16, index_n_heads=2, first_k_dense_replace=1,
        max_position_embeddings=64, mlp_layer_types=["dense"], layer_types=["indexed_attention"])
    model = transformers.DeepseekV32ForCausalLM(config).eval()
    ids = torch.randint(1, 100, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        model(input_ids=ids)  # the model itself runs on SDPA semantics
        patch(model)
        with pytest.raises(ValueError, match=r"^indices: .*'sdpa'"):
            model(input_ids=ids)


@pytest.mark.parametrize("name", ["sinks", "block_indices"])
def test_attention_function_refuses_sinks_and_block_sparse_selection(name):
    # Inkling2 passes per-token sinks as `sinks`; MiniMax-M3 its block selection as `block_indices`.
    q, k, v = torch.randn(3, 1, 4, 5, 16).unbind(0)
    with pytest.raises(ValueError, match=f"^{name}: "):
        genai_fast_attention_forward(torch.nn.Module(), q, k, v, None, **{name: torch.zeros(1, 4, 5, 1)})


def test_sub_model_that_cannot_run_on_sdpa_is_refused_by_patch():
    """Gemma 4's audio tower declares `_supports_sdpa = False`: it builds eager's float mask inline, and on the
    genai_fast name failed with "torch.finfo() requires a floating point input type". patch names it instead."""
    config = transformers.Gemma4AudioConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            output_proj_dims=32)
    model = transformers.Gemma4AudioModel(config).eval()
    with pytest.raises(ValueError, match=r"^model: Gemma4AudioModel cannot run on SDPA"):
        patch(model)
    assert model.config._attn_implementation != "genai_fast"


# ---------------------------------------------------------------- soft-capped attention (Gemma 2)


def test_gemma2_soft_capped_attention_runs_fused_and_matches_eager():
    """Gemma 2 refuses SDPA only because SDPA cannot soft-cap scores; genai_fast attention does, so patch takes it:
    logits equal eager's over a padded batch past the sliding window, and greedy generation gives eager's tokens.
    With the cap ignored the logits would move (the tiny model caps its scores at 2)."""
    from tests.llm_cases import tiny_variant

    torch.manual_seed(0)
    model = tiny_variant("gemma2", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    ids = torch.randint(3, 128, (2, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    with torch.no_grad():
        model.set_attn_implementation("eager")
        want = model(input_ids=ids, attention_mask=mask).logits
        want_tokens = model.generate(ids[:1], max_new_tokens=12, do_sample=False)
        patch(model)
        got = model(input_ids=ids, attention_mask=mask).logits
        got_tokens = model.generate(ids[:1], max_new_tokens=12, do_sample=False)
    assert model.config._attn_implementation == "genai_fast"
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], rtol=1e-4, atol=1e-4)
    assert torch.equal(got_tokens, want_tokens)
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = None  # the uncapped model is another model
    with torch.no_grad():
        uncapped = model(input_ids=ids, attention_mask=mask).logits
    assert (uncapped[valid] - want[valid]).abs().max() > 0.05


@pytest.mark.parametrize("family", ["vaultgemma", "t5gemma"])
def test_other_soft_capped_families_patch_and_match_eager(family):
    """VaultGemma and T5Gemma (its bidirectional, padded encoder too) refuse SDPA only for the soft cap as well."""
    torch.manual_seed(0)
    size = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, attn_logit_softcapping=2.0, sliding_window=6)
    ids = torch.randint(3, 128, (2, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    if family == "vaultgemma":
        model = transformers.VaultGemmaForCausalLM(transformers.VaultGemmaConfig(**size, max_position_embeddings=64))
        inputs = {"input_ids": ids}
    else:
        model = transformers.T5GemmaForConditionalGeneration(transformers.T5GemmaConfig(
            encoder=size, decoder=size, vocab_size=128))
        inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": ids[:, :9]}
    model.eval()
    with torch.no_grad():
        model.set_attn_implementation("eager")
        want = model(**inputs).logits
        patch(model)
        got = model(**inputs).logits
    assert model.config._attn_implementation == "genai_fast"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
