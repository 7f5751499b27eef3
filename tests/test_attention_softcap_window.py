"""Soft-capped and sliding-window attention (FlashAttention's `softcap` and a causal `window`) and attention sinks
(GPT-OSS's per-head `s_aux`) through scaled_dot_product_attention and attention_with_kvcache: every backend against
the float64 reference, block skipping on small tiles, the equivalences that define them, bad input, custom ops and
compile."""

import math

import pytest
import torch

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from genai_fast.testing import assert_matches_oracle
from tests.attention_cases import Case, guarded, make_cache, make_mask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# extra: softcap and window. Sizes one past a tile, GQA, rows left with no visible key (Sq > Sk top-left with a
# window of 2), masks of both kinds combined with the cap, window 1 and a window longer than the sequence.
CASES = {
    "cap-s77-d40-gqa": Case(1, 4, 2, 77, 77, 40, causal=True, extra={"softcap": 5.0}),
    "window-s130-d64-b2": Case(2, 2, 1, 130, 130, 64, causal=True, extra={"window": 17}),
    "cap-window-s129-bool": Case(1, 2, 2, 129, 129, 64, causal=True, mask="bool",
                                 extra={"softcap": 3.0, "window": 40}),
    "window-sq20-sk5-empty-rows": Case(1, 2, 2, 20, 5, 32, causal=True, extra={"window": 2}),
    "cap-sq7-sk77-additive-dv40": Case(1, 2, 1, 7, 77, 64, Dv=40, mask="additive", extra={"softcap": 2.0}),
    # Each row sees only its own key: P is exactly 1, dq and dk exactly 0, where fp32 rounding of dP - delta is all
    # a kernel can show (eager torch happens to cancel exactly): forward only.
    "window-1-s33-d80": Case(1, 2, 2, 33, 33, 80, causal=True, grad=False, extra={"window": 1}),
    "window-beyond-s77": Case(1, 3, 1, 77, 77, 32, causal=True, extra={"window": 1000, "softcap": 1.5}),
    # Sinks: with GQA, a window, a boolean mask whose fully masked rows then give 0 (all weight on the sink).
    "sinks-s77-gqa-window": Case(1, 4, 2, 77, 77, 40, causal=True, extra={"sinks": True, "window": 9}),
    "sinks-cap-s33-bool": Case(2, 2, 2, 33, 33, 64, mask="bool", extra={"sinks": True, "softcap": 3.0}),
}
BACKENDS = ("triton", "cpp", "torch")


def _require(backend: str) -> None:
    reasons = backend_unavailable_reasons(backend)
    if reasons:
        pytest.skip("; ".join(reasons))


def _eager(q, k, v, mask, causal, scale, softcap, window, sinks=None):
    """The computation as transformers' eager attention writes it, in the inputs' dtype (the error budget):
    scores, cap, masks, (sinks as one more column, dropped after the softmax), softmax in fp32 cast back, then
    the values."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    Sq, Sk = s.shape[-2:]
    i, j = torch.arange(Sq, device=q.device)[:, None], torch.arange(Sk, device=q.device)[None, :]
    keep = (j <= i) & (i - j < (window or Sk + Sq)) if causal else torch.ones_like(i - j, dtype=torch.bool)
    if mask is not None and mask.dtype == torch.bool:
        keep = keep & mask
    elif mask is not None:
        s = s + mask.to(s.dtype)
    s = s.masked_fill(~keep, -math.inf)
    if sinks is not None:
        s = torch.cat([s, sinks.to(s.dtype).view(1, -1, 1, 1).expand(*s.shape[:-1], 1)], dim=-1)
    p = torch.softmax(s.float(), -1).nan_to_num(0.0).to(q.dtype)
    return (p if sinks is None else p[..., :-1]) @ v


def check_case(backend: str, case: Case, dtype: torch.dtype) -> None:
    """Forward and gradients of `backend` against the float64 reference, eager torch in `dtype` as the budget."""
    grad = case.grad
    softcap, window = case.extra.get("softcap", 0.0), case.extra.get("window")
    sinks = (torch.randn(case.Hq, dtype=torch.float64) * 2).float().to(DEVICE) if case.extra.get("sinks") else None
    q, k, v = (guarded(shape, dtype, DEVICE) for shape in ((case.B, case.Hq, case.Sq, case.D),
                                                              (case.B, case.Hkv, case.Sk, case.D),
                                                              (case.B, case.Hkv, case.Sk, case.dv)))
    mask = make_mask(case, dtype, DEVICE)
    gqa = case.Hq != case.Hkv
    scale = 0.7 / math.sqrt(case.D) * 4  # large scores, so that the cap bends them
    tensors = (q, k, v) if sinks is None else (q, k, v, sinks)
    leaves = tuple(t.detach().requires_grad_(grad) for t in tensors)
    with memory.poison_outputs():
        out = genai_fast.scaled_dot_product_attention(*leaves[:3], mask, is_causal=case.causal, scale=scale,
                                                      enable_gqa=gqa, backend=backend, softcap=softcap,
                                                      window=window, sinks=leaves[3] if len(leaves) > 3 else None)
        g = torch.randn_like(out)
        ours = torch.autograd.grad(out, leaves, g) if grad else ()
    assert OPS["scaled_dot_product_attention"].last_backend == backend
    leaves64 = tuple(t.detach().double().requires_grad_(grad) for t in tensors)
    mask64 = None if mask is None or mask.dtype == torch.bool else mask.double()
    oracle = genai_fast.scaled_dot_product_attention_reference(
        *leaves64[:3], mask if mask64 is None else mask64, 0.0, case.causal, scale, gqa, softcap=softcap,
        window=window, sinks=leaves64[3] if len(leaves64) > 3 else None)
    base_leaves = tuple(t.detach().contiguous().requires_grad_(grad) for t in tensors)
    baseline = _eager(*base_leaves[:3], mask, case.causal, scale, softcap, window,
                      base_leaves[3] if len(base_leaves) > 3 else None)
    assert_matches_oracle(out, oracle, baseline, what=f"sdpa[{backend}] softcap={softcap} window={window}")
    if not grad:
        return
    oracle_grads = torch.autograd.grad(oracle, leaves64, g.double())
    base_grads = torch.autograd.grad(baseline, base_leaves, g)
    for name, got, want, base in zip(("q", "k", "v", "sinks"), ours, oracle_grads, base_grads, strict=False):
        assert_matches_oracle(got, want, base, what=f"sdpa[{backend}] d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES.keys())
def test_sdpa_softcap_window_fp32(case, backend):
    _require(backend)
    if backend == "cpp" and CASES[case].extra.get("sinks"):
        pytest.skip("the cpp kernels have no sinks (test_cpp_refuses_sinks_with_the_reason)")
    check_case(backend, CASES[case], torch.float32)


def test_cpp_refuses_sinks_with_the_reason():
    _require("cpp")
    q = torch.randn(1, 2, 40, 16)
    with pytest.raises(genai_fast.BackendNotSupportedError, match="sinks run on the reference"):
        genai_fast.scaled_dot_product_attention(q, q, q, sinks=torch.zeros(2), backend="cpp")
    out = genai_fast.scaled_dot_product_attention(q, q, q, sinks=torch.zeros(2))  # automatic: elsewhere
    assert OPS["scaled_dot_product_attention"].last_backend != "cpp" and out.shape == q.shape


def test_fully_masked_rows_with_sinks_are_zero_and_their_lse_is_the_sink():
    q = torch.randn(1, 2, 6, 8)
    keep = torch.ones(6, 6, dtype=torch.bool)
    keep[2] = False
    sinks = torch.tensor([0.5, -1.0])
    out, lse = genai_fast.scaled_dot_product_attention_reference(q, q, q, keep, sinks=sinks, return_lse=True)
    assert torch.equal(out[:, :, 2], torch.zeros(1, 2, 8))
    torch.testing.assert_close(lse[0, :, 2], sinks)
    plain = genai_fast.scaled_dot_product_attention_reference(q, q, q, keep)
    assert (out - plain).abs().max() > 1e-3  # elsewhere the sink takes some of each row's weight


@pytest.mark.parametrize("case", ["cap-s77-d40-gqa", "cap-window-s129-bool"])
def test_triton_softcap_window_fp16(case):
    _require("triton")
    check_case("triton", CASES[case], torch.float16)


def test_triton_window_skips_blocks_on_small_tiles(monkeypatch):
    """16 x 16 tiles, so that a window of 37 over 300 tokens leaves whole key blocks out (forward and backward)
    and the three forward ranges (window edge, unmasked middle, causal edge) all run."""
    _require("triton")
    from genai_fast.kernels import attention as kernels

    monkeypatch.setattr(kernels, "_bwd_config", lambda *args: {"BLOCK_M": 16, "BLOCK_N": 16})
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 300, 32, device=DEVICE) for _ in range(3))
    out, lse = kernels.attention_fwd(q, k, v, None, True, 0.3, config={"BLOCK_M": 16, "BLOCK_N": 16}, softcap=4.0,
                                     window=37)
    leaves64 = tuple(t.double().requires_grad_() for t in (q, k, v))
    oracle, oracle_lse = genai_fast.scaled_dot_product_attention_reference(
        *leaves64, is_causal=True, scale=0.3, return_lse=True, softcap=4.0, window=37)
    torch.testing.assert_close(out.double(), oracle.detach(), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), oracle_lse.detach(), atol=2e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grads = kernels.attention_bwd(g, q, k, v, None, out, lse, True, 0.3, 4.0, 37)
    want = torch.autograd.grad(oracle, leaves64, g.double())
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got.double(), ref, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_is_a_band_mask_and_defaults_change_nothing(backend):
    _require(backend)
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 70, 16, device=DEVICE) for _ in range(3))
    i, j = torch.arange(70, device=DEVICE)[:, None], torch.arange(70, device=DEVICE)[None, :]
    band = (j <= i) & (i - j < 9)
    windowed = genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, window=9, backend=backend)
    masked = genai_fast.scaled_dot_product_attention(q, k, v, band, backend=backend)
    torch.testing.assert_close(windowed, masked, atol=1e-5, rtol=1e-5)
    plain = genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend)
    defaults = genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend, softcap=0.0,
                                                       window=None)
    assert torch.equal(plain, defaults)
    assert not torch.allclose(windowed, plain, atol=1e-3)
    capped = genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend, softcap=0.5)
    assert not torch.allclose(capped, plain, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Sq,softcap,window,with_sinks", [(1, 4.0, None, False), (4, 0.0, 9, False),
                                                          (3, 2.0, 30, True), (1, 0.0, 1, False),
                                                          (2, 0.0, None, True), (1, 0.0, 5, True)])
def test_kvcache_softcap_window(backend, Sq, softcap, window, with_sinks):
    _require(backend)
    torch.manual_seed(2)
    B, Hq, Hkv, s_max, D = 3, 4, 2, 160, 64
    lengths = [1, 37, 130]
    k_cache, v_cache = make_cache(B, Hkv, s_max, D, lengths, torch.float32, DEVICE)  # NaN past each length
    q = torch.randn(B, Hq, Sq, D, device=DEVICE)
    k, v = (torch.randn(B, Hkv, Sq, D, device=DEVICE) for _ in range(2))
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    sinks = (torch.randn(Hq) * 2 + 3).to(DEVICE) if with_sinks else None  # large enough to take weight
    k64, v64 = k_cache.double().cpu(), v_cache.double().cpu()
    kb, vb = k_cache.clone(), v_cache.clone()
    with memory.poison_outputs():
        out = genai_fast.attention_with_kvcache(q, k_cache, v_cache, seqlens, k, v, backend=backend,
                                                softcap=softcap, window=window, sinks=sinks)
    assert OPS["attention_with_kvcache"].last_backend == backend
    sinks64 = None if sinks is None else sinks.double().cpu()
    oracle = genai_fast.attention_with_kvcache_reference(q.double().cpu(), k64, v64, seqlens.cpu(), k.double().cpu(),
                                                         v.double().cpu(), softcap=softcap, window=window,
                                                         sinks=sinks64)
    baseline = genai_fast.attention_with_kvcache_reference(q, kb, vb, seqlens, k, v, softcap=softcap, window=window,
                                                           sinks=sinks)
    assert_matches_oracle(out, oracle, baseline, what=f"attention_with_kvcache[{backend}]")
    # The oracle itself: each sequence's queries over its own prefix, with the cap and the band written out.
    for b, length in enumerate(lengths):
        L = length + Sq
        pos = torch.arange(L)[None, :]
        last = (L - Sq + torch.arange(Sq))[:, None]
        band = (pos <= last) & (last - pos < (window or L))
        want = genai_fast.scaled_dot_product_attention_reference(
            q[b:b + 1].double().cpu(), k64[b:b + 1, :, :L], v64[b:b + 1, :, :L], band, enable_gqa=True,
            softcap=softcap, sinks=sinks64)
        torch.testing.assert_close(oracle[b:b + 1], want)
    if with_sinks:  # the sinks take weight: without them the output moves
        plain = genai_fast.attention_with_kvcache_reference(q.double().cpu(), k64, v64, seqlens.cpu(),
                                                            k.double().cpu(), v.double().cpu(), softcap=softcap,
                                                            window=window)
        assert (plain - oracle).abs().max() > 1e-2


BAD = [
    ({"sinks": torch.zeros(3)}, "sinks"),
    ({"sinks": torch.zeros(2, dtype=torch.long)}, "sinks"),
    ({"sinks": [0.0, 0.0]}, "sinks"),
    ({"softcap": -1.0}, "softcap"),
    ({"softcap": float("nan")}, "softcap"),
    ({"softcap": True}, "softcap"),
    ({"window": 0, "is_causal": True}, "window"),
    ({"window": 2.5, "is_causal": True}, "window"),
    ({"window": True, "is_causal": True}, "window"),
    ({"window": 4}, "window"),  # without is_causal
]


@pytest.mark.parametrize("kwargs,name", BAD)
def test_bad_softcap_or_window_names_the_argument(kwargs, name):
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises((ValueError, TypeError), match=f"^{name}: "):
        genai_fast.scaled_dot_product_attention(q, q, q, **kwargs)


@pytest.mark.parametrize("kwargs,name", [({"softcap": -2.0}, "softcap"), ({"window": 0}, "window"),
                                         ({"window": 3, "causal": False}, "window"),
                                         ({"sinks": torch.zeros(3)}, "sinks"),
                                         ({"sinks": torch.zeros(2, dtype=torch.long)}, "sinks")])
def test_kvcache_bad_softcap_or_window_names_the_argument(kwargs, name):
    q = torch.randn(1, 2, 1, 8)
    cache = torch.zeros(1, 2, 10, 8)
    with pytest.raises((ValueError, TypeError), match=f"^{name}: "):
        genai_fast.attention_with_kvcache(q, cache, cache.clone(), torch.tensor([3]), **kwargs)


def test_opcheck_with_softcap_and_window():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, 9, 16, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.genai_fast.scaled_dot_product_attention.default,
                          (q, k, v, None, True, 0.25, "torch", 2.0, 4))
    torch.library.opcheck(torch.ops.genai_fast.scaled_dot_product_attention.default,
                          (q, k, v, None, True, 0.25, "torch", 0.0, 0, torch.randn(2, requires_grad=True)))
    cache = torch.randn(1, 2, 12, 16)
    torch.library.opcheck(torch.ops.genai_fast.attention_with_kvcache.default,
                          (q[:, :, :2].detach(), cache, cache.clone(), torch.tensor([5], dtype=torch.int32), None,
                           None, 0.25, True, "torch", 3.0, 2))
    torch.library.opcheck(torch.ops.genai_fast.attention_with_kvcache.default,
                          (q[:, :, :2].detach(), cache, cache.clone(), torch.tensor([5], dtype=torch.int32), None,
                           None, 0.25, True, "torch", 0.0, 0, torch.randn(2)))


def test_compiles_fullgraph_with_softcap_and_window():
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 33, 16) for _ in range(3))

    def attend(q, k, v):
        return genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, softcap=3.0, window=5)

    compiled = torch.compile(attend, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), attend(q, k, v))
