"""torch.utils.flop_counter.FlopCounterMode counts genai_fast's custom ops as it counts the torch ops they replace
(genai_fast/ops/flops.py): a patched model's FLOP total, and any utilisation computed from it, is the unpatched
model's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count

import genai_fast

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


# (ours, torch's op): on meta tensors torch's SDPA decomposes into products its counter sees.
CASES = {
    "attention": (lambda: genai_fast.scaled_dot_product_attention(meta(2, 4, 9, 16), meta(2, 4, 13, 16),
                                                                  meta(2, 4, 13, 24), is_causal=False),
                  lambda: F.scaled_dot_product_attention(meta(2, 4, 9, 16), meta(2, 4, 13, 16), meta(2, 4, 13, 24))),
    "attention gqa 3-d": (
        lambda: genai_fast.scaled_dot_product_attention(meta(6, 5, 8), meta(2, 7, 8), meta(2, 7, 8), enable_gqa=True),
        lambda: F.scaled_dot_product_attention(meta(6, 5, 8), meta(2, 7, 8), meta(2, 7, 8), enable_gqa=True)),
    "conv2d grouped strided": (
        lambda: genai_fast.conv2d(meta(2, 8, 9, 9), meta(12, 4, 3, 3), meta(12), stride=2, padding=1, groups=2,
                                  activation="silu"),
        lambda: F.conv2d(meta(2, 8, 9, 9), meta(12, 4, 3, 3), meta(12), stride=2, padding=1, groups=2)),
    "linear 3-d": (lambda: genai_fast.linear(meta(2, 3, 8), meta(5, 8), meta(5)),
                   lambda: F.linear(meta(2, 3, 8), meta(5, 8), meta(5))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_counts_equal_torch_counts(case):
    ours, theirs = CASES[case]
    expected = _flops(theirs)
    assert expected > 0
    assert _flops(ours) == expected


def test_attention_backward_counts_as_torch_sdpa_backward():
    q = torch.randn(1, 2, 33, 16, requires_grad=True)
    k, v = torch.randn(1, 2, 21, 16, requires_grad=True), torch.randn(1, 2, 21, 16, requires_grad=True)
    out = genai_fast.scaled_dot_product_attention(q, k, v, backend="cpp")
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == sdpa_backward_flop_count(out.shape, q.shape, k.shape, v.shape)


def test_gguf_linear_and_kvcache_decode_are_counted():
    x = torch.randn(3, 64)
    blocks = torch.zeros(8, 2 * 34, dtype=torch.uint8)  # Q8_0: 8 rows of 64 (scales of zero)
    assert _flops(lambda: genai_fast.gguf_linear(x, blocks, "Q8_0")) == 2 * 3 * 8 * 64
    q, cache = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 16, 8)
    lengths = torch.tensor([3, 9])
    new = torch.randn(2, 2, 1, 8)
    # Each query against its sequence's keys after the append (4 and 10), scores and output.
    expected = 2 * 4 * 1 * (8 + 8) * (4 + 10)
    assert _flops(lambda: genai_fast.attention_with_kvcache(q, cache, cache.clone(), lengths, new, new)) == expected


diffusers = pytest.importorskip("diffusers")


def test_patched_unet_counts_what_the_unpatched_one_counts():
    from genai_fast.integrations.diffusers import patch

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval()
    inputs = {"sample": torch.randn(2, 4, 8, 8), "timestep": torch.tensor([3, 700]),
              "encoder_hidden_states": torch.randn(2, 5, 32)}
    patched = copy.deepcopy(unet)
    patch(patched)
    with torch.no_grad():
        # On meta tensors torch's own SDPA is counted too (its CPU kernel has no formula in torch's counter).
        expected = _flops(lambda: copy.deepcopy(unet).to("meta")(**{k: v.to("meta") for k, v in inputs.items()}))
        on_cpu = _flops(lambda: patched(**inputs))
    assert expected > 0 and on_cpu == expected
