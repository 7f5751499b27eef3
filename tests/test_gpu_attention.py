"""Attention on a GPU: the Triton kernels in bf16 and fp16 at larger shapes, head dims up to 256."""

import pytest
import torch

import genai_fast
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from tests.attention_cases import Case, check_kvcache, check_sdpa

pytestmark = pytest.mark.gpu

# Each (dtype, mask kind, causal, head dim) compiles its own kernels (seconds each; fp32 with IEEE dots
# 10-20 s), so bf16 covers every shape and fp16 one: the GPU check gives all GPU tests three minutes.
# fp32 runs in the interpreter on every CPU run, and tests/attention_compile_check.py compiles its GPU
# variants for sm_90 without a GPU.
CASES = {
    "s1024-d128-causal-bf16": (Case(2, 4, 4, 1024, 1024, 128, causal=True), torch.bfloat16),
    "s1000-d64-bool-bf16": (Case(1, 4, 4, 1000, 1000, 64, mask="bool"), torch.bfloat16),
    "s513-d96-gqa8:2-bf16": (Case(2, 8, 2, 513, 513, 96), torch.bfloat16),
    "s300-d256-causal-bf16": (Case(1, 2, 2, 300, 300, 256, causal=True), torch.bfloat16),
    "sq77-sk1500-d80-causal-additive-bf16": (Case(1, 4, 1, 77, 1500, 80, causal=True, mask="additive"),
                                             torch.bfloat16),
    "s129-d40-padding-bf16": (Case(3, 2, 2, 129, 129, 40, mask="padding"), torch.bfloat16),
    "s2048-d128-gqa32:8-causal-fwd-bf16": (Case(1, 32, 8, 2048, 2048, 128, causal=True, grad=False), torch.bfloat16),
    "s1024-d128-causal-fp16": (Case(2, 4, 4, 1024, 1024, 128, causal=True), torch.float16),
}


def _require():
    reasons = backend_unavailable_reasons("triton")
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.mark.parametrize("case", CASES.keys())
def test_gpu_triton_sdpa(case):
    _require()
    check_sdpa("triton", *CASES[case], "cuda")


TMA_CASES = {
    "s1024-d128-causal-bf16": (Case(2, 4, 4, 1024, 1024, 128, causal=True, extra={"aligned": True}), torch.bfloat16),
    "s1000-d128-full-bf16": (Case(1, 4, 4, 1000, 1000, 128, grad=False, extra={"aligned": True}), torch.bfloat16),
    "sq77-sk1500-d64-gqa4:1-causal-fp16": (Case(1, 4, 1, 77, 1500, 64, causal=True, grad=False,
                                                 extra={"aligned": True}), torch.float16),
}


@pytest.mark.parametrize("case", TMA_CASES.keys())
def test_gpu_tma_sdpa(case):
    """The experimental Hopper TMA forward (forced; its backward is the pointer kernels')."""
    _require()
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA kernel needs compute capability 9.0 (Hopper) or newer")
    check_sdpa("triton+tma", *TMA_CASES[case], "cuda")


def test_gpu_triton_kvcache():
    _require()
    check_kvcache("triton", 4, 32, 8, 4096, 128, [0, 1, 1000, 4095], 1, 1, True, torch.bfloat16, "cuda")
    check_kvcache("triton", 2, 9, 3, 600, 64, [5, 590], 4, 4, True, torch.bfloat16, "cuda")


def test_gpu_kvcache_with_lengths_on_the_host():
    """cache_seqlens on the CPU with CUDA caches: validated on the host without a sync (CUDA's sync debug mode
    raises on one), the same result as lengths on the GPU, out-of-range lengths still rejected before the caches
    are written, and refused while a CUDA graph is captured."""
    _require()
    q = torch.randn(3, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
    k_cache, v_cache = (torch.randn(3, 2, 300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(3, 2, 1, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    host = torch.tensor([5, 299, 120], dtype=torch.int32)
    caches = (k_cache.clone(), v_cache.clone())
    expected = genai_fast.attention_with_kvcache(q, *caches, host.cuda(), k, v)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = genai_fast.attention_with_kvcache(q, k_cache, v_cache, host, k, v)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(k_cache, caches[0], rtol=0, atol=0)
    before = k_cache.clone()
    with pytest.raises(ValueError, match=r"^cache_seqlens:"):
        genai_fast.attention_with_kvcache(q, k_cache, v_cache, torch.tensor([5, 300, 1], dtype=torch.int32), k, v)
    assert torch.equal(k_cache, before)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match=r"^cache_seqlens: a CPU tensor"), torch.cuda.graph(graph):
        genai_fast.attention_with_kvcache(q, k_cache, v_cache, host)


def test_gpu_backward_is_deterministic():
    """dK/dV are accumulated inside one program per key block (no atomics): bitwise repeatable."""
    _require()
    q, k, v = (torch.randn(1, 8, 777, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(1, 8, 777, 64, device="cuda", dtype=torch.bfloat16)
    first = torch.autograd.grad(genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), grad)
    second = torch.autograd.grad(genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_gpu_auto_dispatch_uses_triton():
    _require()
    q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.float16)
    genai_fast.scaled_dot_product_attention(q, q, q)
    assert OPS["scaled_dot_product_attention"].last_backend == "triton"


SOFTCAP_WINDOW_CASES = {
    "s2048-d128-gqa8:2-cap30-window512-bf16": Case(1, 8, 2, 2048, 2048, 128, causal=True,
                                                   extra={"softcap": 30.0, "window": 512}),
    "s1000-d64-bool-window129-bf16": Case(2, 4, 4, 1000, 1000, 64, causal=True, mask="bool", extra={"window": 129}),
    "sq77-sk1500-d80-additive-cap5-bf16": Case(1, 4, 1, 77, 1500, 80, mask="additive", extra={"softcap": 5.0}),
    "s1024-d64-gqa8:1-sinks-window128-bf16": Case(2, 8, 1, 1024, 1024, 64, causal=True,
                                                  extra={"sinks": True, "window": 128}),
}


@pytest.mark.parametrize("case", SOFTCAP_WINDOW_CASES.keys())
def test_gpu_triton_softcap_window(case):
    """Soft cap, sliding window and sinks in the compiled kernels (bf16), forward and backward, against float64."""
    from tests.test_attention_softcap_window import check_case

    _require()
    check_case("triton", SOFTCAP_WINDOW_CASES[case], torch.bfloat16)


def test_gpu_triton_kvcache_softcap_window():
    _require()
    from tests.test_attention_softcap_window import test_kvcache_softcap_window

    for Sq, softcap, window in ((1, 4.0, None), (4, 2.0, 30)):
        test_kvcache_softcap_window("triton", Sq, softcap, window)
