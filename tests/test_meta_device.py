"""Every public op runs on device types the kernels do not know, through its torch reference (DESIGN.md section
3: "the torch reference is last and always runs"): MPS and XPU users get the reference, and meta tensors (shape
inference, memory estimates, FLOP counting of a patched model) get torch's output shapes, dtypes and layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends.dispatch import OPS


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=dtype)


CHANNELS_LAST = meta(2, 8, 6, 6).to(memory_format=torch.channels_last)

# (ours, torch's equivalent) on meta tensors
CASES = {
    "group_norm+silu": (lambda: genai_fast.group_norm(meta(2, 8, 6, 6), 4, meta(8), meta(8), activation="silu"),
                        lambda: F.silu(F.group_norm(meta(2, 8, 6, 6), 4, meta(8), meta(8)))),
    "group_norm channels_last": (lambda: genai_fast.group_norm(CHANNELS_LAST, 4),
                                 lambda: F.group_norm(CHANNELS_LAST, 4)),
    "conv2d epilogue": (
        lambda: genai_fast.conv2d(meta(2, 8, 6, 6), meta(16, 8, 3, 3), meta(16), padding=1, activation="silu",
                                  residual=meta(2, 16, 6, 6)),
        lambda: F.silu(F.conv2d(meta(2, 8, 6, 6), meta(16, 8, 3, 3), meta(16), padding=1)) + meta(2, 16, 6, 6)),
    "conv2d channels_last stride 2": (lambda: genai_fast.conv2d(CHANNELS_LAST, meta(16, 8, 3, 3), stride=2),
                                      lambda: F.conv2d(CHANNELS_LAST, meta(16, 8, 3, 3), stride=2)),
    "sdpa causal gqa": (
        lambda: genai_fast.scaled_dot_product_attention(meta(1, 4, 5, 8), meta(1, 2, 7, 8), meta(1, 2, 7, 16),
                                                        is_causal=True, enable_gqa=True),
        lambda: F.scaled_dot_product_attention(meta(1, 4, 5, 8), meta(1, 2, 7, 8), meta(1, 2, 7, 16),
                                               is_causal=True, enable_gqa=True)),
    "sdpa fp16 mask": (
        lambda: genai_fast.scaled_dot_product_attention(*(meta(2, 5, 8, dtype=torch.float16),) * 3,
                                                        attn_mask=meta(5, 5, dtype=torch.float16)),
        lambda: F.scaled_dot_product_attention(*(meta(2, 5, 8, dtype=torch.float16),) * 3,
                                               attn_mask=meta(5, 5, dtype=torch.float16))),
    "rms_norm": (lambda: genai_fast.rms_norm(meta(3, 8), meta(8)), lambda: F.rms_norm(meta(3, 8), (8,), meta(8))),
    "geglu": (lambda: genai_fast.geglu(meta(3, 8)), lambda: meta(3, 8)[:, :4] * F.gelu(meta(3, 8)[:, 4:])),
    "linear": (lambda: genai_fast.linear(meta(3, 8), meta(5, 8), meta(5)),
               lambda: F.linear(meta(3, 8), meta(5, 8), meta(5))),
    "guided_update": (lambda: genai_fast.guided_update(meta(1, 4, 8, 8), meta(2, 4, 8, 8), [1, 0, 0, 0, 0, 0, 0],
                                                       guidance_scale=3.0)[0],
                      lambda: meta(1, 4, 8, 8)),
    "attention_with_kvcache": (
        lambda: genai_fast.attention_with_kvcache(meta(1, 4, 1, 8), meta(1, 2, 16, 8), meta(1, 2, 16, 8),
                                                  torch.tensor([3])),
        lambda: meta(1, 4, 1, 8)),
}


def _layout(t: torch.Tensor) -> str:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return "channels_last"
    return "contiguous" if t.is_contiguous() else "strided"


@pytest.mark.parametrize("case", list(CASES))
def test_meta_tensors_get_torch_shapes_and_dtypes_and_the_cpu_layout(case):
    ours, theirs = CASES[case]
    out, expected = ours(), theirs()
    assert out.device.type == "meta"
    assert (out.shape, out.dtype) == (expected.shape, expected.dtype)
    # torch's meta kernels do not always keep channels_last (a conv's is contiguous); the op's CPU call is the
    # layout to match.
    on_cpu = _on_cpu(ours)
    assert _layout(out) == _layout(on_cpu)


def _on_cpu(fn) -> torch.Tensor:
    """fn run with CPU tensors of the same shapes in place of its meta ones."""
    global meta, CHANNELS_LAST
    saved = meta, CHANNELS_LAST

    def cpu_empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape).to(dtype)

    meta, CHANNELS_LAST = cpu_empty, torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    try:
        return fn()
    finally:
        meta, CHANNELS_LAST = saved


# The public ops (OPS also holds the benchmark's composite entries and the LLM's internal kernels, which have no
# torch reference). word2vec_train_chunk is left out: it trains from host arrays (token ids, a sampling table) on
# the CPU or a CUDA GPU only, Word2Vec's device argument.
PUBLIC_OPS = ["attention_with_kvcache", "cbow_step", "conv2d", "geglu", "gguf_linear", "group_norm", "guided_update",
              "hs_step", "linear", "rms_norm", "scaled_dot_product_attention",
              "scaled_dot_product_attention_backward", "sgns_step"]


@pytest.mark.parametrize("op", PUBLIC_OPS)
def test_torch_reference_accepts_any_device_type(op):
    """Every op's torch reference declares no device limit: an MPS or XPU tensor is never refused by every
    backend."""
    (reference,) = [impl for impl in OPS[op].implementations if impl.backend == "torch"]
    dtype = torch.float32
    for device in ("mps", "xpu", "meta"):
        assert reference.capability.reasons(torch.device(device), dtype) == [], (op, device)
