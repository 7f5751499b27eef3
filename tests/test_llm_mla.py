"""DeepSeek's multi-head latent attention in genai_fast.llm (genai_fast/llm/mla.py): the conversion's reorderings
and scale each matter, the caches hold keys and values of their own sizes, bf16 follows transformers' bf16 model.
Greedy tokens, padded batches, routers and speculation of the DeepSeek models: tests/test_llm_moe.py."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import load  # noqa: E402
from genai_fast.llm import mla as llm_mla  # noqa: E402
from genai_fast.llm.mla import MlaProjection  # noqa: E402
from tests.llm_cases import tiny_moe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

IDS = torch.tensor([[1, 5, 9, 33, 70, 11, 12, 13, 14, 3, 60, 61]])
MLA_KINDS = ("deepseek_v2", "deepseek_v3", "glm4_moe_lite")


def _logits_error(hf, engine) -> float:
    engine.model.allocate_cache(1, 96)
    with torch.no_grad():
        want = hf(IDS).logits.float()
    return (engine.model.prefill(IDS, all_logits=True).float() - want).abs().max().item()


@pytest.mark.parametrize("kind", MLA_KINDS)
def test_caches_hold_expanded_heads_of_their_own_sizes(kind):
    hf = tiny_moe(kind)
    model = load(hf, max_seq_len=96).model
    config = hf.config
    key_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
    assert all(isinstance(layer.mla, MlaProjection) and layer.wqkv is None for layer in model.layers)
    model.allocate_cache(2, 40)
    heads = config.num_attention_heads
    assert model.layers[0].k_cache.shape == (2, heads, 40, key_dim)
    assert model.layers[0].v_cache.shape == (2, heads, 40, config.v_head_dim)
    assert model.kv_bytes_per_position() == 3 * heads * (key_dim + config.v_head_dim) * 4
    assert _logits_error(hf, load(hf, max_seq_len=96)) < 1e-4


@pytest.mark.parametrize("kind", ["deepseek_v2", "deepseek_v3"])
def test_interleaved_rotary_pairs_need_their_rows_reordered(kind, monkeypatch):
    """V2's complex rotation and V3's rope_interleave turn pairs (2i, 2i + 1): without the evens-then-odds order the
    engine's rotate-half rope is a different model."""
    hf = tiny_moe(kind)
    assert _logits_error(hf, load(hf, max_seq_len=96)) < 1e-4
    monkeypatch.setattr(llm_mla, "rope_order", lambda rope_dim, interleaved: torch.arange(rope_dim))
    assert _logits_error(hf, load(hf, max_seq_len=96)) > 1e-2


def test_yarn_mscale_reaches_the_attention_scale():
    """DeepSeek-V3 with YaRN scales its scores by mscale^2 / sqrt(192)-style factors that HF's module holds."""
    hf = tiny_moe("deepseek_v3")
    engine = load(hf, max_seq_len=96)
    key_dim = hf.config.qk_nope_head_dim + hf.config.qk_rope_head_dim
    assert engine.model.layers[0].scale != pytest.approx(key_dim ** -0.5)
    for layer in engine.model.layers:
        layer.scale = None  # 1 / sqrt(key size)
    assert _logits_error(hf, engine) > 1e-3


@pytest.mark.parametrize("kind", MLA_KINDS)
def test_bf16_logits_are_as_close_as_hf_bf16(kind):
    hf = tiny_moe(kind)
    with torch.no_grad():
        exact = hf(IDS).logits
    hf16 = tiny_moe(kind).to(torch.bfloat16)
    with torch.no_grad():
        hf_error = (hf16(IDS).logits.float() - exact).abs().max().item()
    engine = load(hf16, max_seq_len=96)
    engine.model.allocate_cache(1, 96)
    error = (engine.model.prefill(IDS, all_logits=True).float() - exact).abs().max().item()
    assert error <= 2 * hf_error + 1e-2, (error, hf_error)


def test_projection_refuses_mismatched_rows():
    with pytest.raises(ValueError, match="wq, kv_b: expected 48 and 56 rows"):
        MlaProjection(2, 8, 16, 20, torch.zeros(40, 32), None, None, None, torch.zeros(24, 32), None,
                      torch.nn.Identity(), torch.zeros(56, 8))
