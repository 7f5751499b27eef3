"""Logit soft-capping (softcap) and the causal sliding window (window) of the C++ CPU attention kernels: the
forward's two schemes, the backward and the decode kernel against a float64 reference written here (scores
materialised, capped with tanh, masked, the causal band and window applied, a softmax that gives zeros to rows
with no visible key), with the project's tolerance rule (twice the same reference's error in fp32, plus a floor).

Covered: softcap alone, window alone, both, with additive and boolean masks, GQA, Sq != Sk, head dims 40, 64,
80 and 128, window 1, a window wider than the keys, rows left with no visible key, key blocks skipped under a
window (300 keys, window 64), decode with ragged lengths, NaN past each cache length, split-K chunks, and the
arguments' checks."""

from __future__ import annotations

import pytest
import torch

from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.testing import assert_matches_oracle
from tests.attention_cases import guarded

_REASONS = backend_unavailable_reasons("cpp")
pytestmark = pytest.mark.skipif(bool(_REASONS), reason="; ".join(_REASONS) or "cpp available")

if not _REASONS:
    from genai_fast.backends.cpp.attention import attention_bwd, attention_fwd, decode_attention_fwd


# ---- the reference


def visible_keys(Sq: int, Sk: int, causal: bool, window: int, first_position: torch.Tensor | int = 0) -> torch.Tensor:
    """[..., Sq, Sk] booleans: query i (at position first_position + i) sees key j when j <= position (causal)
    and position - j < window (window > 0)."""
    position = torch.as_tensor(first_position).reshape(-1, 1, 1) + torch.arange(Sq).reshape(1, Sq, 1)
    key = torch.arange(Sk).reshape(1, 1, Sk)
    keep = torch.ones(position.shape[0], Sq, Sk, dtype=torch.bool)
    if causal:
        keep &= key <= position
    if window:
        keep &= position - key < window
    return keep


def reference(q, k, v, scale: float, keep: torch.Tensor, softcap: float = 0.0, mask: torch.Tensor | None = None):
    """(out, lse) of attention in q's dtype: scores scale q k^T, capped, masked (boolean: removed; else added),
    then removed where `keep` (broadcast to [B, Hq, Sq, Sk]) is False; rows with no score left give zeros and
    lse -inf."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = q @ k.transpose(-1, -2) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.to(q.dtype)
    scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    empty = torch.isneginf(scores).all(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return weights @ v, lse


def check_lse(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal -inf entries (rows with no visible key), the others to fp32 rounding."""
    empty = torch.isneginf(want)
    assert torch.equal(torch.isneginf(got), empty), f"{what}: rows with no visible key differ"
    torch.testing.assert_close(got.double()[~empty], want[~empty], rtol=2e-5, atol=2e-5, msg=lambda m: f"{what}: {m}")


# ---- forward and backward

# (B, Hq, Hkv, Sq, Sk, D, causal, softcap, window, mask)
CASES = {
    "softcap-d64-noncausal": (2, 2, 2, 33, 47, 64, False, 2.0, 0, None),
    "softcap-d40-causal-bool": (1, 2, 2, 70, 70, 40, True, 1.5, 0, "bool"),
    "window-s129-d40": (1, 2, 2, 129, 129, 40, True, 0.0, 17, None),
    "window-s129-d80-additive": (1, 2, 1, 129, 129, 80, True, 0.0, 40, "additive"),
    "both-gqa6:2-sq7-sk77-d80": (1, 6, 2, 7, 77, 80, True, 3.0, 3, None),
    "both-gqa6:2-s129-d64-bool": (2, 6, 2, 129, 129, 64, True, 2.5, 33, "bool"),
    "both-s300-w64-d64": (1, 2, 2, 300, 300, 64, True, 5.0, 64, None),
    "both-s300-w64-d40-additive": (1, 2, 2, 300, 300, 40, True, 2.0, 64, "additive"),
    "window1-s40-d64": (1, 2, 2, 40, 40, 64, True, 0.0, 1, None),
    "window-wider-than-keys": (1, 2, 2, 77, 77, 40, True, 1.0, 500, None),
    "empty-rows-sq20-sk5-w2": (1, 2, 2, 20, 5, 40, True, 0.0, 2, None),
    "empty-rows-sq20-sk5-w2-softcap-bool": (1, 2, 1, 20, 5, 64, True, 2.0, 2, "bool"),
    "sq77-sk300-w50-d64": (1, 2, 2, 77, 300, 64, True, 0.0, 50, None),
}


def case_inputs(name: str):
    B, Hq, Hkv, Sq, Sk, D, causal, softcap, window, mask_kind = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    q = guarded((B, Hq, Sq, D), torch.float32, "cpu")  # views of NaN-filled buffers: nothing past them is read
    k, v = (guarded((B, Hkv, Sk, D), torch.float32, "cpu") for _ in range(2))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(B, Hq, Sq, Sk) > 0.3
        mask[:, :, Sq // 3] = False  # a row masked whole
    elif mask_kind == "additive":
        mask = (torch.randn(B, 1, Sq, Sk) * 2).expand(B, Hq, Sq, Sk)  # a broadcast view
    settings = dict(scale=2.0 / D ** 0.5, causal=causal, softcap=softcap, window=window, mask=mask)
    return q, k, v, settings


def reference_of(q, k, v, s, dtype):
    keep = visible_keys(q.shape[2], k.shape[2], s["causal"], s["window"])
    return reference(q.to(dtype), k.to(dtype), v.to(dtype), s["scale"], keep, s["softcap"], s["mask"])


# Both forward schemes; the short-sequence one takes no mask.
SCHEMES = [pytest.param(name, streamed, id=f"{name}-{'streamed' if streamed else 'short'}")
           for name, case in CASES.items() for streamed in (False, True) if streamed or case[-1] is None]


@pytest.mark.parametrize("name, streamed", SCHEMES)
def test_forward_matches_reference(name, streamed):
    q, k, v, s = case_inputs(name)
    with memory.poison_outputs():
        out, lse = attention_fwd(q, k, v, s["scale"], s["causal"], streamed=streamed, mask=s["mask"],
                                 softcap=s["softcap"], window=s["window"])
    want, want_lse = reference_of(q, k, v, s, torch.float64)
    baseline, _ = reference_of(q, k, v, s, torch.float32)
    assert_matches_oracle(out, want, baseline, what=f"{name} out")
    check_lse(lse, want_lse, f"{name} lse")


def test_rows_with_no_visible_key_give_zeros_and_minus_inf():
    """Sq 20 over 5 keys with a window of 2 (top-left): rows 6 and on see nothing."""
    q, k, v, s = case_inputs("empty-rows-sq20-sk5-w2")
    for streamed in (False, True):
        out, lse = attention_fwd(q, k, v, s["scale"], True, streamed=streamed, window=2)
        assert torch.equal(out[:, :, 6:], torch.zeros_like(out[:, :, 6:]))
        assert torch.isneginf(lse[:, :, 6:]).all() and torch.isfinite(lse[:, :, :6]).all()


@pytest.mark.parametrize("name", CASES)
def test_backward_matches_reference(name):
    q, k, v, s = case_inputs(name)
    out, lse = attention_fwd(q, k, v, s["scale"], s["causal"], mask=s["mask"], softcap=s["softcap"],
                             window=s["window"])
    grad = torch.randn_like(out)
    with memory.poison_outputs():
        got = attention_bwd(grad, q, k, v, out, lse, s["scale"], s["causal"], mask=s["mask"], softcap=s["softcap"],
                            window=s["window"])
    wants = []
    for dtype in (torch.float64, torch.float32):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        ref, _ = reference_of(*leaves, s, dtype)
        wants.append(torch.autograd.grad(ref, leaves, grad.to(dtype)))
    for label, g, want, baseline in zip(("dq", "dk", "dv"), got, *wants, strict=True):
        assert_matches_oracle(g, want, baseline, what=f"{name} {label}")


@pytest.mark.parametrize("threads", [1, 3])
def test_backward_window_with_key_blocks_shared_between_threads(threads):
    """One (sequence, K/V head) pair over more threads: its key blocks are split into shares (dq summed after)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 260, 32), torch.randn(1, 1, 260, 32), torch.randn(1, 1, 260, 48)
    s = dict(scale=0.3, causal=True, softcap=1.5, window=70, mask=None)
    out, lse = attention_fwd(q, k, v, 0.3, True, softcap=1.5, window=70)
    grad = torch.randn_like(out)
    got = attention_bwd(grad, q, k, v, out, lse, 0.3, True, num_threads=threads, softcap=1.5, window=70)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref, _ = reference_of(*leaves, s, torch.float64)
    for g, want in zip(got, torch.autograd.grad(ref, leaves, grad.double()), strict=True):
        torch.testing.assert_close(g.double(), want, rtol=2e-5, atol=2e-5)


def test_zero_softcap_and_window_are_bitwise_the_defaults():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 150, 40), torch.randn(1, 2, 150, 40), torch.randn(1, 2, 150, 24)
    for causal in (False, True):
        for streamed in (False, True):
            plain = attention_fwd(q, k, v, 0.2, causal, streamed=streamed)
            zeros = attention_fwd(q, k, v, 0.2, causal, streamed=streamed, softcap=0.0, window=0)
            assert all(torch.equal(a, b) for a, b in zip(plain, zeros, strict=True))
        out, lse = attention_fwd(q, k, v, 0.2, causal)
        grad = torch.randn_like(out)
        plain = attention_bwd(grad, q, k, v, out, lse, 0.2, causal)
        zeros = attention_bwd(grad, q, k, v, out, lse, 0.2, causal, softcap=0.0, window=0)
        assert all(torch.equal(a, b) for a, b in zip(plain, zeros, strict=True))
    # A window as wide as the sequence is plain causal (the same arithmetic).
    for streamed in (False, True):
        plain = attention_fwd(q, k, v, 0.2, True, streamed=streamed)
        wide = attention_fwd(q, k, v, 0.2, True, streamed=streamed, window=150)
        assert all(torch.equal(a, b) for a, b in zip(plain, wide, strict=True))
    cache_q, cache_k, cache_v = torch.randn(2, 4, 3, 64), torch.randn(2, 2, 90, 64), torch.randn(2, 2, 90, 64)
    plain = decode_attention_fwd(cache_q, cache_k, cache_v, [90, 41], 0.125, True, with_lse=True)
    zeros = decode_attention_fwd(cache_q, cache_k, cache_v, [90, 41], 0.125, True, with_lse=True, softcap=0.0,
                                 window=0)
    assert all(torch.equal(a, b) for a, b in zip(plain, zeros, strict=True))


# ---- decode


def decode_case(lengths, Sq, D, softcap, window, seed=0, Hq=6, Hkv=2, extra=11):
    """q [B, Hq, Sq, D] and caches of max(lengths) + extra positions, NaN past each sequence's length."""
    torch.manual_seed(seed)
    B, S_max = len(lengths), max(lengths) + extra
    q = torch.randn(B, Hq, Sq, D)
    k_cache, v_cache = torch.randn(B, Hkv, S_max, D), torch.randn(B, Hkv, S_max, D)
    for b, length in enumerate(lengths):
        k_cache[b, :, length:] = float("nan")
        v_cache[b, :, length:] = float("nan")
    return q, k_cache, v_cache


def decode_reference(q, k_cache, v_cache, lengths, scale, softcap, window, dtype):
    B, Sq, S_max = q.shape[0], q.shape[2], k_cache.shape[2]
    lengths_t = torch.tensor(lengths)
    keep = visible_keys(Sq, S_max, True, window, lengths_t - Sq)  # bottom-right: query i at length - Sq + i
    keep &= (torch.arange(S_max) < lengths_t.reshape(B, 1, 1))
    k, v = k_cache.nan_to_num(0.0), v_cache.nan_to_num(0.0)  # the NaN positions are never visible
    return reference(q.to(dtype), k.to(dtype), v.to(dtype), scale, keep.unsqueeze(1), softcap)


DECODE_CASES = [  # (lengths, Sq, D, softcap, window)
    ([1, 37, 130], 1, 64, 2.0, 0),
    ([1, 37, 130], 1, 64, 0.0, 16),
    ([1, 37, 130], 4, 64, 3.0, 5),
    ([1, 37, 130], 1, 128, 2.0, 33),
    ([1, 37, 130], 4, 128, 0.0, 1),
    ([1, 37, 130], 1, 40, 1.5, 20),
    ([1, 37, 130], 4, 40, 2.0, 7),
    ([1, 37, 130], 4, 40, 0.0, 500),
    ([5, 3], 4, 64, 0.0, 2),  # query 0 of sequence 1 sits before position 0: it sees nothing
]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("lengths, Sq, D, softcap, window", DECODE_CASES)
def test_decode_matches_reference(lengths, Sq, D, softcap, window, threads):
    q, k_cache, v_cache = decode_case(lengths, Sq, D, softcap, window)
    scale = 2.0 / D ** 0.5
    with memory.poison_outputs():
        out, lse = decode_attention_fwd(q, k_cache, v_cache, lengths, scale, True, threads, with_lse=True,
                                        softcap=softcap, window=window)
    want, want_lse = decode_reference(q, k_cache, v_cache, lengths, scale, softcap, window, torch.float64)
    baseline, _ = decode_reference(q, k_cache, v_cache, lengths, scale, softcap, window, torch.float32)
    what = f"decode lengths={lengths} Sq={Sq} D={D} softcap={softcap} window={window}"
    assert_matches_oracle(out, want, baseline, what=what)
    check_lse(lse, want_lse, what)


@pytest.mark.parametrize("D", [64, 40])
def test_decode_window_over_split_chunks(D):
    """Long sequences on few (sequence, K/V head) pairs are cut into chunks (split-K); under a window the chunks
    start at the first position any query sees; heads_inner output."""
    lengths, Sq, softcap, window = [1000, 700], 4, 2.5, 300
    q, k_cache, v_cache = decode_case(lengths, Sq, D, softcap, window, seed=3, Hq=4, Hkv=1)
    scale = 2.0 / D ** 0.5
    with memory.poison_outputs():
        out, lse = decode_attention_fwd(q, k_cache, v_cache, lengths, scale, True, 4, heads_inner=True,
                                        with_lse=True, softcap=softcap, window=window)
    want, want_lse = decode_reference(q, k_cache, v_cache, lengths, scale, softcap, window, torch.float64)
    baseline, _ = decode_reference(q, k_cache, v_cache, lengths, scale, softcap, window, torch.float32)
    assert_matches_oracle(out, want, baseline, what="decode split chunks")
    check_lse(lse, want_lse, "decode split chunks")


@pytest.mark.parametrize("lengths, Sq, window, threads", [([1, 37, 130], 1, 0, 1), ([1000, 700], 4, 300, 4),
                                                       ([0, 5], 2, 0, 1), ([9, 3], 3, 2, 2)],
                         ids=["ragged", "split-chunks-window", "empty-sequence", "window-before-start"])
def test_decode_sinks_match_reference(lengths, Sq, window, threads):
    """GPT-OSS's sinks in the C++ decode: one more logit per row, added where the chunks are combined (one chunk or
    several); a row that sees no key gives zeros and the sink as its lse."""
    import genai_fast

    q, k_cache, v_cache = decode_case(lengths, Sq, 64, 0.0, window, seed=5, Hq=4, Hkv=2)
    sinks = torch.randn(4) * 2 + 2
    scale = 0.2
    with memory.poison_outputs():
        out, lse = decode_attention_fwd(q, k_cache, v_cache, lengths, scale, True, threads, with_lse=True,
                                        window=window, sinks=sinks)
    seqlens = torch.tensor(lengths)
    kwargs = {"scale": scale, "window": window or None}
    want = genai_fast.attention_with_kvcache_reference(q.double(), k_cache.double(), v_cache.double(), seqlens,
                                                       sinks=sinks.double(), **kwargs)
    baseline = genai_fast.attention_with_kvcache_reference(q, k_cache, v_cache, seqlens, sinks=sinks, **kwargs)
    assert_matches_oracle(out, want, baseline, what=f"decode sinks {lengths}")
    plain = decode_attention_fwd(q, k_cache, v_cache, lengths, scale, True, threads, window=window)
    assert (plain - out).abs().max() > 1e-2  # the sinks took weight
    # The lse includes the sink: log(exp(sink) + sum over the visible keys of exp(score)).
    _, plain_lse = decode_attention_fwd(q, k_cache, v_cache, lengths, scale, True, threads, with_lse=True,
                                        window=window)
    torch.testing.assert_close(lse, torch.logaddexp(plain_lse, sinks.view(1, 4, 1).expand_as(plain_lse)),
                               rtol=1e-5, atol=1e-5)


def test_decode_sinks_of_the_wrong_size_are_refused():
    q, k_cache, v_cache = decode_case([4], 1, 16, 0.0, 0, Hq=4, Hkv=2)
    with pytest.raises(ValueError, match="sinks: expected 4 elements"):
        decode_attention_fwd(q, k_cache, v_cache, [4], 0.25, True, 1, sinks=torch.zeros(3))


def test_decode_cache_below_the_window_is_not_read():
    """NaN in the cache below every query's window (and past the length) leaves the output finite."""
    lengths, Sq, window = [200], 2, 10
    q, k_cache, v_cache = decode_case(lengths, Sq, 64, 0.0, window, Hq=2, Hkv=1)
    k_cache[:, :, :189] = float("nan")  # the first query sits at 198 and sees 189 .. 198
    v_cache[:, :, :189] = float("nan")
    for threads in (1, 3):
        out = decode_attention_fwd(q, k_cache, v_cache, lengths, 0.125, True, threads, window=window)
        want, _ = decode_reference(q, k_cache, v_cache, lengths, 0.125, 0.0, window, torch.float64)
        torch.testing.assert_close(out.double(), want, rtol=2e-5, atol=2e-5)


# ---- argument checks


def _calls():
    q, k, v = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    out, lse = attention_fwd(q, k, v, 0.25, True)
    grad = torch.randn_like(out)
    return {
        "forward": lambda causal, **kw: attention_fwd(q, k, v, 0.25, causal, **kw),
        "backward": lambda causal, **kw: attention_bwd(grad, q, k, v, out, lse, 0.25, causal, **kw),
        "decode": lambda causal, **kw: decode_attention_fwd(q[:, :, :1], k, v, [8], 0.25, causal, **kw),
    }


@pytest.mark.parametrize("entry", ["forward", "backward", "decode"])
@pytest.mark.parametrize("causal, changes, match", [
    (False, {"window": 4}, "window: a sliding window needs causal=True"),
    (True, {"window": -1}, "window: expected >= 0"),
    (True, {"softcap": -1.0}, "softcap: expected a finite value >= 0"),
    (True, {"softcap": float("nan")}, "softcap: expected a finite value"),
    (True, {"softcap": float("inf")}, "softcap: expected a finite value"),
])
def test_invalid_softcap_and_window_are_refused(entry, causal, changes, match):
    with pytest.raises(ValueError, match=match):
        _calls()[entry](causal, **changes)
