"""genai_fast.integrations.transformers on mixture-of-experts models: "genai_fast" as the experts implementation
(transformers' ExpertsInterface) gives the unpatched model's logits and greedy tokens, actually runs (CPU: the
grouped experts on the patched linear), hands back to the model's previous implementation where it does not apply
(gradients, GPT-OSS's biased experts), and unpatch restores that implementation."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("transformers.integrations.moe")

from genai_fast.integrations import transformers as integration  # noqa: E402
from tests.llm_cases import MOE_KINDS, tiny_moe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)
IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 11], [4, 8, 15, 16, 23, 42, 0]])
MASK = torch.tensor([[1] * 7, [1] * 6 + [0]])


@pytest.fixture
def expert_calls(monkeypatch):
    """The grouped-experts calls the patched forward makes (a list of their token counts)."""
    calls = []
    grouped = integration.grouped_experts

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return grouped(x, *args, **kwargs)

    monkeypatch.setattr(integration, "grouped_experts", counting)
    return calls


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_patched_experts_give_the_unpatched_logits_and_tokens(kind, expert_calls):
    hf = tiny_moe(kind)
    with torch.no_grad():
        want = hf(IDS, attention_mask=MASK).logits
        tokens = hf.generate(IDS[:1], attention_mask=MASK[:1], max_new_tokens=16, do_sample=False)
    before = hf.config._experts_implementation
    integration.patch(hf)
    assert hf.config._experts_implementation == "genai_fast"
    with torch.no_grad():
        got = hf(IDS, attention_mask=MASK).logits
        assert torch.equal(hf.generate(IDS[:1], attention_mask=MASK[:1], max_new_tokens=16, do_sample=False), tokens)
    torch.testing.assert_close(got[MASK.bool()], want[MASK.bool()], rtol=1e-4, atol=1e-4)
    assert 14 in expert_calls and 1 in expert_calls  # the prompts' 14 tokens, then one token a decode step
    integration.unpatch(hf)
    assert hf.config._experts_implementation == before


def test_gradients_take_the_previous_implementation(expert_calls):
    """Training through a patched model: the experts run the model's previous implementation (autograd through
    transformers' own code) and the gradients equal the unpatched model's."""
    hf = tiny_moe("mixtral")
    loss = hf(IDS, attention_mask=MASK, labels=IDS).loss
    loss.backward()
    want = [p.grad.clone() for p in hf.parameters()]
    hf.zero_grad()
    integration.patch(hf)
    hf(IDS, attention_mask=MASK, labels=IDS).loss.backward()
    assert expert_calls == []
    for p, g in zip(hf.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_gpt_oss_biased_experts_keep_their_implementation(expert_calls):
    """GPT-OSS's experts (biases, interleaved gate/up, a clamped GLU) are not the op's: handed back, same logits."""
    torch.manual_seed(0)
    cfg = transformers.GptOssConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                                    num_experts_per_tok=2, max_position_embeddings=32, sliding_window=4)
    hf = transformers.GptOssForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        want = hf(ids).logits
        integration.patch(hf)
        got = hf(ids).logits
    assert expert_calls == []
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_model_without_experts_is_left_alone():
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)).eval()
    integration.patch(hf)
    assert not hasattr(hf, "_genai_fast_previous_experts")
    integration.unpatch(hf)


def test_experts_false_leaves_the_experts_alone(expert_calls):
    hf = tiny_moe("qwen3_moe")
    before = hf.config._experts_implementation
    integration.patch(hf, experts=False)
    assert hf.config._experts_implementation == before and not hasattr(hf, "_genai_fast_previous_experts")
    with torch.no_grad():
        hf(IDS, attention_mask=MASK)
    assert expert_calls == []
