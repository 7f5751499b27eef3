"""Parity of scaled_dot_product_attention and attention_with_kvcache with torch's SDPA on calls that used to
diverge: GQA with different key and value head counts, head dim 0, and a first call under torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.ops import attention as attention_module


def _grads_of(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn's output on leaf copies of `tensors` and their gradients for a fixed random output gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out.backward(grad_out.to(out.dtype))  # the same values for a float64 reference and a float32 call
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("backend", [None, "cpp"])
@pytest.mark.parametrize("Sq", [20, 64])
def test_gqa_with_key_and_value_head_counts_neither_dividing_the_other(backend, Sq):
    """6 query heads over 2 key heads and 3 value heads: torch accepts it (each divides 6); 64 queries take the
    cpp kernels automatically."""
    q, k, v = torch.randn(2, 6, Sq, 32), torch.randn(2, 2, 48, 32), torch.randn(2, 3, 48, 24)
    want, want_grads = _grads_of(lambda *t: F.scaled_dot_product_attention(*t, enable_gqa=True),
                                 q.double(), k.double(), v.double())
    got, got_grads = _grads_of(lambda *t: genai_fast.scaled_dot_product_attention(*t, enable_gqa=True,
                                                                                  backend=backend), q, k, v)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", got_grads, want_grads, strict=True):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", [None, "cpp"])
def test_query_batch_broadcast_against_the_keys(backend):
    """A query of batch 1 against keys of batch 3 broadcasts as in torch (the 4-D fast path took only the keys'
    batch, and the forced cpp kernel refused the query); FlopCounterMode counts all 3 batches, as torch does."""
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(3, 2, 7, 8), torch.randn(3, 2, 7, 8)
    want, want_grads = _grads_of(F.scaled_dot_product_attention, q.double(), k.double(), v.double())
    got, got_grads = _grads_of(lambda *t: genai_fast.scaled_dot_product_attention(*t, backend=backend), q, k, v)
    assert got.shape == want.shape == (3, 2, 5, 8)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5, msg=name)
    with FlopCounterMode(display=False) as counter:
        genai_fast.scaled_dot_product_attention(q, k, v, backend=backend)
    assert counter.get_total_flops() == 2 * 3 * 2 * 5 * 7 * (8 + 8)


@pytest.mark.parametrize("backend", [None, "torch", "cpp"])
def test_head_dim_zero_with_the_default_scale_averages_the_values_like_torch(backend):
    """Head dim 0: torch's SDPA gives each row the mean of its values (every score is 0), no error."""
    q, k, v = torch.randn(2, 3, 5, 0), torch.randn(2, 3, 7, 0), torch.randn(2, 3, 7, 4)
    want, (want_dv,) = _grads_of(lambda v: F.scaled_dot_product_attention(q, k, v), v)
    got, (got_dv,) = _grads_of(lambda v: genai_fast.scaled_dot_product_attention(q, k, v, backend=backend), v)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_dv, want_dv)


@pytest.mark.parametrize("backend", [None, "torch", "cpp"])
def test_kvcache_head_dim_zero_averages_each_sequences_visible_values(backend):
    q, k_cache, v_cache = torch.randn(2, 4, 1, 0), torch.randn(2, 2, 10, 0), torch.randn(2, 2, 10, 3)
    lengths = [3, 7]
    out = genai_fast.attention_with_kvcache(q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32),
                                            backend=backend)
    for b, length in enumerate(lengths):
        want = F.scaled_dot_product_attention(q[b], k_cache[b, :, :length], v_cache[b, :, :length],
                                              enable_gqa=True)
        torch.testing.assert_close(out[b], want)


@pytest.mark.parametrize("backend", [None, "cpp"])
def test_first_call_under_torch_compile_fullgraph(backend, monkeypatch):
    """A model compiled before any eager call: the dispatcher's first look at a backend cannot be traced, so the
    choice is left to the custom op at run time; a forced backend too."""
    monkeypatch.setattr(attention_module, "_AUTO_CHOICES", {})  # as in a fresh process
    torch._dynamo.reset()

    def attend(q, k, v):
        return genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend) * 2

    q, k, v = (torch.randn(2, 4, 64, 32) for _ in range(3))
    want, want_grads = _grads_of(lambda *t: 2 * F.scaled_dot_product_attention(*t, is_causal=True),
                                 q.double(), k.double(), v.double())
    compiled = torch.compile(attend, fullgraph=True, backend="eager")
    got, got_grads = _grads_of(compiled, q, k, v)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5, msg=name)
    assert attention_module.ATTENTION.last_backend == "cpp"  # the op's own choice, recorded when it ran


def test_compiled_dropout_still_refuses_a_forced_kernel(monkeypatch):
    monkeypatch.setattr(attention_module, "_AUTO_CHOICES", {})
    torch._dynamo.reset()
    q = torch.randn(1, 2, 8, 16)

    def attend(q):
        return genai_fast.scaled_dot_product_attention(q, q, q, dropout_p=0.5, backend="cpp")

    with pytest.raises(genai_fast.BackendNotSupportedError, match="dropout_p"):
        torch.compile(attend, backend="eager")(q)
