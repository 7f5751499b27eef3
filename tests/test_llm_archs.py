"""genai_fast.llm on Phi, StarCoder2, OLMo 2 and 3, Cohere, Command R7B, parallel StableLM, Ministral, Seed-OSS,
Helium, ERNIE 4.5 and GLM-4: transformers' models as the oracle (greedy tokens, logits, bf16 rounding), batches,
speculation, checkpoints, and ablations showing that each conversion detail matters."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import load  # noqa: E402
from genai_fast.llm import model as llm_model  # noqa: E402
from tests.llm_cases import ARCH_KINDS, hf_greedy, tiny_arch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

IDS = torch.tensor([[1, 5, 9, 33, 70, 11, 12, 13, 14, 3]])


def _prefill_logits(engine, ids: torch.Tensor = IDS) -> torch.Tensor:
    engine.model.allocate_cache(ids.shape[0], 96)
    return engine.model.prefill(ids, all_logits=True)


def _hf_logits(hf, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return hf(ids).logits


@pytest.mark.parametrize("kind", ARCH_KINDS)
def test_greedy_tokens_and_logits_match_hf(kind):
    """30 greedy tokens (past the sliding windows of 6) equal HF generate's; the prompt's logits agree in fp32."""
    hf = tiny_arch(kind)
    engine = load(hf, max_seq_len=96)
    for prompt in ([1, 5, 9, 33, 70], [7]):
        want = hf_greedy(hf, prompt, 30)
        assert len(set(want)) > 2  # a model that repeats one token would test little
        assert engine.generate(prompt, 30).ids == want
    torch.testing.assert_close(_prefill_logits(engine), _hf_logits(hf), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ARCH_KINDS)
def test_bf16_logits_are_as_close_as_hf_bf16(kind):
    """In bf16 the engine's logits lie as close to the fp32 model's as HF's own bf16 model's do (the same roundings
    or others of the same size: Cohere and OLMo normalise in fp32, which the conversion keeps)."""
    hf = tiny_arch(kind)
    exact = _hf_logits(hf)
    hf16 = tiny_arch(kind).to(torch.bfloat16)
    hf_error = (_hf_logits(hf16).float() - exact).abs().max().item()
    engine = load(hf16, max_seq_len=96)
    assert engine.model.dtype == torch.bfloat16
    error = (_prefill_logits(engine).float() - exact).abs().max().item()
    assert error <= 2 * hf_error + 1e-2, (error, hf_error)


@pytest.mark.parametrize("kind", ["phi", "cohere2", "olmo3", "stablelm-parallel"])
def test_ragged_batch_equals_one_by_one(kind):
    engine = load(tiny_arch(kind), max_seq_len=96)
    prompts = [[1, 5, 9, 33, 70, 11, 12], [7], [40, 41, 42]]
    batch = engine.generate(prompts, 20)
    assert [r.ids for r in batch] == [engine.generate(p, 20).ids for p in prompts]


@pytest.mark.parametrize("kind", ["phi", "starcoder2", "olmo2", "cohere2", "stablelm-parallel"])
def test_speculation_gives_plain_greedy_tokens(kind):
    """Prompt lookup verifies drafts through DecoderModel.extend (its own copy of each layer's arithmetic)."""
    engine = load(tiny_arch(kind), max_seq_len=96, sliding_window_cache="full")
    prompt = [1, 5, 9, 33, 70, 1, 5, 9, 33, 70, 1, 5]
    assert engine.generate(prompt, 30, prompt_lookup=4).ids == engine.generate(prompt, 30).ids


@pytest.mark.parametrize("kind", ARCH_KINDS)
def test_checkpoint_directory_roundtrip(kind, tmp_path):
    hf = tiny_arch(kind)
    hf.save_pretrained(tmp_path)
    assert load(tmp_path).generate([1, 5, 9], 12).ids == hf_greedy(hf, [1, 5, 9], 12)


def _moved(kind: str, monkeypatch, name: str, replacement) -> float:
    """How far the prompt's logits move from HF's when the conversion step `name` is replaced."""
    hf = tiny_arch(kind)
    monkeypatch.setattr(llm_model, name, replacement)
    return (_prefill_logits(load(hf, max_seq_len=96)) - _hf_logits(hf)).abs().max().item()


@pytest.mark.parametrize("kind", ["cohere", "helium", "glm"])
def test_interleaved_pairs_need_their_rows_regrouped(kind, monkeypatch):
    """Rotating interleaved pairs (Cohere, Helium; GLM over half of each head) as halves, without reordering the q/k
    rows, is a different model."""
    def unchanged(wqkv, bqkv, norms, cfg, rotary_dims):
        return wqkv, bqkv, norms

    assert _moved(kind, monkeypatch, "_halves_from_pairs", unchanged) > 0.05


def test_command_r7b_full_layers_do_not_rotate(monkeypatch):
    assert _moved("cohere2", monkeypatch, "_layer_uses_rope", lambda config, index: True) > 0.05


def test_olmo3_sliding_layers_rotate_with_their_own_tables(monkeypatch):
    assert _moved("olmo3", monkeypatch, "_has_local_rope", lambda config: False) > 0.05


def test_phi_lm_head_bias_is_applied():
    hf = tiny_arch("phi")
    engine = load(hf, max_seq_len=96)
    assert engine.model.lm_head_bias is not None
    engine.model.lm_head_bias = None
    assert (_prefill_logits(engine) - _hf_logits(hf)).abs().max().item() > 0.05


def test_stablelm_per_head_norms_keep_each_heads_weight():
    """StableLM's qk_layernorm holds one LayerNorm per head: one shared weight (their mean) is a different model."""
    hf = tiny_arch("stablelm-parallel")
    engine = load(hf, max_seq_len=96)
    norm = engine.model.layers[0].q_norm
    assert norm.weight.shape == (4, 16)
    with torch.no_grad():
        norm.weight.copy_(norm.weight.mean(0, keepdim=True).expand_as(norm.weight))
    assert (_prefill_logits(engine) - _hf_logits(hf)).abs().max().item() > 0.01


def test_olmo2_has_no_norm_before_its_sublayers():
    """OLMo 2 normalises sublayer outputs only: the layers' input norms are identities, so the decode step's fused
    RMSNorm paths (which assume a norm before each sublayer) stay off."""
    engine = load(tiny_arch("olmo2"), max_seq_len=96)
    layer = engine.model.layers[0]
    assert isinstance(layer.norm1, llm_model.NoNorm) and layer.post_norm1 is not None
    x = torch.randn(3, 64)
    assert torch.equal(layer.norm1(x), x)
    assert not all(n.plain_rms for n in engine.model._norms())
