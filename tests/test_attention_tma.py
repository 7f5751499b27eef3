"""The Hopper TMA attention forward (`backend="triton+tma"`, kernels/attention_tma.py) under the interpreter:
against the float64 reference (NaN beyond every valid row and column, outputs NaN-poisoned), its backward
(the pointer kernels'), the inputs it refuses with their reasons, and automatic dispatch never choosing it.
On a GPU the same checks run on sm_90+ (tests/test_gpu_attention.py); tests/launch_compile_check.py
compiles it for sm_90 here."""

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS, BackendNotSupportedError
from tests.attention_cases import Case, check_sdpa, guarded

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ALIGNED = {"aligned": True}
CASES = {
    "s1-d64": Case(1, 2, 2, 1, 1, 64, grad=False, extra=ALIGNED),
    "s77-d64-causal": Case(2, 2, 2, 77, 77, 64, causal=True, extra=ALIGNED),
    "s129-gqa4:2-d128-causal": Case(1, 4, 2, 129, 129, 128, causal=True, grad=False, extra=ALIGNED),
    "sq7-sk77-causal": Case(1, 2, 1, 7, 77, 64, causal=True, grad=False, extra=ALIGNED),
    "sq77-sk7-causal": Case(1, 2, 2, 77, 7, 64, causal=True, grad=False, extra=ALIGNED),
    "sq33-sk130-d128": Case(1, 2, 2, 33, 130, 128, extra=ALIGNED),
}


def _require_tma():
    reasons = backend_unavailable_reasons("triton")
    if reasons:
        pytest.skip("; ".join(reasons))
    if DEVICE == "cuda" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA kernel needs compute capability 9.0 (Hopper) or newer")


@pytest.mark.parametrize("case", CASES.keys())
def test_tma_forward_matches_float64(case):
    _require_tma()
    check_sdpa("triton+tma", CASES[case], torch.float16, DEVICE)


def test_tma_reads_a_bshd_layout_through_its_strides():
    _require_tma()
    B, S, H, D = 2, 40, 3, 64
    q, k, v = (torch.randn(B, S, H, D, dtype=torch.float16, device=DEVICE).transpose(1, 2) for _ in range(3))
    out = genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, backend="triton+tma")
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert float((out.double() - ref).abs().max()) < 2e-3


def test_tma_with_broadcast_batch_dimensions_matches_torch():
    _require_tma()
    q = torch.randn(2, 3, 2, 20, 64, dtype=torch.float16, device=DEVICE)
    k, v = (torch.randn(1, 3, 2, 20, 64, dtype=torch.float16, device=DEVICE) for _ in range(2))
    out = genai_fast.scaled_dot_product_attention(q, k, v, backend="triton+tma")
    ref = F.scaled_dot_product_attention(q.double(), k.double().expand(2, -1, -1, -1, -1),
                                         v.double().expand(2, -1, -1, -1, -1))
    assert out.shape == q.shape and float((out.double() - ref).abs().max()) < 2e-3


@pytest.mark.parametrize(("change", "reason"), [
    ("mask", "attn_mask tensor"),
    ("fp32", "dtype float32 is not supported"),
    ("d80", "head dims q 80"),
    ("unaligned", "multiples of 16 bytes"),
])
def test_tma_refuses_what_it_cannot_run(change, reason):
    _require_tma()
    dtype = torch.float32 if change == "fp32" else torch.float16
    D = 80 if change == "d80" else 64
    shape = (1, 2, 9, D)
    if change == "unaligned":
        q, k, v = (guarded(shape, dtype, DEVICE) for _ in range(3))  # rows of 69 halves: 138 bytes
    else:
        q, k, v = (torch.randn(shape, dtype=dtype, device=DEVICE) for _ in range(3))
    mask = torch.ones(9, 9, dtype=torch.bool, device=DEVICE) if change == "mask" else None
    with pytest.raises(BackendNotSupportedError, match=reason):
        genai_fast.scaled_dot_product_attention(q, k, v, mask, backend="triton+tma")


def test_automatic_dispatch_never_picks_the_tma_kernel():
    op = OPS["scaled_dot_product_attention"]
    names = [impl.backend for impl in op.implementations]
    assert names.index("triton+tma") > names.index("torch"), "it must stay behind the reference until measured"
    q = torch.randn(1, 2, 16, 64, dtype=torch.float16, device=DEVICE)
    genai_fast.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert op.last_backend != "triton+tma"
