"""Shared attention test helpers: NaN-guarded inputs, masks, and a backend checked against the oracle.

Inputs are narrow views of NaN-filled buffers (extra sequence positions and head-dim columns hold NaN),
so a kernel reading past a valid length or head dim turns its output into NaN; outputs are
NaN-poisoned before the kernels run, so an unwritten element shows up too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends import memory
from genai_fast.testing import assert_matches_oracle


@dataclass(frozen=True)
class Case:
    B: int
    Hq: int
    Hkv: int
    Sq: int
    Sk: int
    D: int
    Dv: int | None = None
    causal: bool = False
    mask: str | None = None  # None, "bool", "additive", "padding" ([B, 1, 1, Sk] bool), "2d" ([Sq, Sk] additive)
    grad: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def dv(self) -> int:
        return self.Dv or self.D


def guarded(shape: tuple[int, ...], dtype: torch.dtype, device: str, scale: float = 1.0,
            extra_cols: int = 5) -> torch.Tensor:
    """randn of `shape` as a view into a NaN-filled buffer with 3 extra rows and `extra_cols` extra columns
    (5 by default: rows that are not 16-byte aligned; 8 fp16 columns keep them aligned, as TMA needs)."""
    *lead, rows, cols = shape
    buf = torch.full((*lead, rows + 3, cols + extra_cols), float("nan"), dtype=dtype, device=device)
    view = buf[..., :rows, :cols]
    view.copy_((torch.randn(shape, dtype=torch.float64) * scale).to(dtype))
    return view


def make_mask(case: Case, dtype: torch.dtype, device: str) -> torch.Tensor | None:
    """The case's mask; boolean and additive masks include rows with every key masked."""
    B, H, Sq, Sk = case.B, case.Hq, case.Sq, case.Sk
    if case.mask is None:
        return None
    if case.mask == "bool":
        keep = torch.rand(B, H, Sq, Sk) > 0.4
        keep[:, :, Sq // 2] = False  # fully masked rows
        return keep.to(device)
    if case.mask == "additive":
        bias = torch.randn(B, 1, Sq, Sk, dtype=torch.float64) * 2
        bias = bias.masked_fill(torch.rand(B, 1, Sq, Sk) > 0.7, float("-inf"))
        bias[:, :, 0] = float("-inf")  # a fully masked row, additive flavour
        return bias.to(dtype).to(device)
    if case.mask == "padding":
        keep = torch.ones(B, 1, 1, Sk, dtype=torch.bool)
        keep[0, ..., Sk // 2 :] = False  # sequence 0 is padded on the right
        if B > 1:
            keep[-1] = False  # the last sequence is all padding: every row fully masked
        return keep.to(device)
    if case.mask == "2d":
        return (torch.randn(Sq, Sk, dtype=torch.float64)).to(dtype).to(device)
    raise ValueError(case.mask)


def make_inputs(case: Case, dtype: torch.dtype, device: str):
    pad = 16 // dtype.itemsize if case.extra.get("aligned") else 5
    q = guarded((case.B, case.Hq, case.Sq, case.D), dtype, device, extra_cols=pad)
    k = guarded((case.B, case.Hkv, case.Sk, case.D), dtype, device, extra_cols=pad)
    v = guarded((case.B, case.Hkv, case.Sk, case.dv), dtype, device, extra_cols=pad)
    return q, k, v, make_mask(case, dtype, device)


def _with_causal(mask: torch.Tensor | None, case: Case) -> torch.Tensor | None:
    """mask combined with the causal mask: torch's SDPA rejects both at once when autograd records."""
    if mask is None or not case.causal:
        return mask
    causal = torch.ones(case.Sq, case.Sk, dtype=torch.bool, device=mask.device).tril()
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, float("-inf"))


def _grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, inputs, grad)


def check_sdpa(backend: str, case: Case, dtype: torch.dtype, device: str = "cpu") -> None:
    """Forward (and backward when case.grad) of `backend` against the float64 reference."""
    q, k, v, mask = make_inputs(case, dtype, device)
    gqa = case.Hq != case.Hkv
    leaves = tuple(t.detach().requires_grad_(case.grad) for t in (q, k, v))
    with memory.poison_outputs():
        out = genai_fast.scaled_dot_product_attention(*leaves, mask, is_causal=case.causal, enable_gqa=gqa,
                                                      backend=backend)
        grad = torch.randn_like(out) if case.grad else None
        ours = _grads(out, leaves, grad) if case.grad else ()
    assert genai_fast.backends.dispatch.OPS["scaled_dot_product_attention"].last_backend == backend
    assert out.shape == (case.B, case.Hq, case.Sq, case.dv) and out.dtype == dtype

    # Oracle: the math reference in float64 (on the inputs' device: a GPU does it in a blink);
    # budget: torch's own SDPA in `dtype`, on contiguous copies (its fused GPU kernels reject the
    # unaligned rows of the guarded views).
    leaves64 = tuple(t.detach().double().requires_grad_(case.grad) for t in (q, k, v))
    mask64 = None if mask is None else mask if mask.dtype == torch.bool else mask.double()
    oracle = genai_fast.scaled_dot_product_attention_reference(*leaves64, mask64, 0.0, case.causal, None, gqa)
    base_leaves = tuple(t.detach().contiguous().requires_grad_(case.grad) for t in (q, k, v))
    causal_only = case.causal and mask is None
    baseline = F.scaled_dot_product_attention(*base_leaves, _with_causal(mask, case), is_causal=causal_only,
                                              enable_gqa=gqa)
    # torch's SDPA may return NaN for fully masked rows on some backends/versions, where the contract
    # (and the oracle) is 0: the baseline is the error budget, so its NaNs must not make it infinite.
    assert_matches_oracle(out, oracle, baseline.nan_to_num(0.0), what=f"sdpa[{backend}] out")
    if not case.grad:
        return
    oracle_grads = _grads(oracle, leaves64, grad.double())
    base_grads = _grads(baseline, base_leaves, grad)
    for name, got, want, base in zip("qkv", ours, oracle_grads, base_grads, strict=True):
        assert_matches_oracle(got, want, base.nan_to_num(0.0), what=f"sdpa[{backend}] d{name}")


def make_cache(B: int, Hkv: int, s_max: int, D: int, lengths: list[int], dtype: torch.dtype, device: str):
    """K/V caches [B, Hkv, S_max, D] holding random values up to each length and NaN beyond."""
    k_cache = torch.full((B, Hkv, s_max, D), float("nan"), dtype=dtype, device=device)
    v_cache = torch.full((B, Hkv, s_max, D), float("nan"), dtype=dtype, device=device)
    for b, n in enumerate(lengths):
        k_cache[b, :, :n] = torch.randn(Hkv, n, D).to(dtype)
        v_cache[b, :, :n] = torch.randn(Hkv, n, D).to(dtype)
    return k_cache, v_cache


def check_kvcache(backend: str, B: int, Hq: int, Hkv: int, s_max: int, D: int, lengths: list[int], s_new: int,
                  Sq: int, causal: bool, dtype: torch.dtype, device: str = "cpu") -> None:
    """attention_with_kvcache against the float64 reference, including the in-place cache update."""
    k_cache, v_cache = make_cache(B, Hkv, s_max, D, lengths, dtype, device)
    q = torch.randn(B, Hq, Sq, D).to(dtype).to(device)
    k = torch.randn(B, Hkv, s_new, D).to(dtype).to(device) if s_new else None
    v = torch.randn(B, Hkv, s_new, D).to(dtype).to(device) if s_new else None
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    k64, v64 = k_cache.double().cpu(), v_cache.double().cpu()
    kb, vb = k_cache.clone(), v_cache.clone()
    with memory.poison_outputs():
        out = genai_fast.attention_with_kvcache(q, k_cache, v_cache, seqlens, k, v, causal=causal, backend=backend)
    assert genai_fast.backends.dispatch.OPS["attention_with_kvcache"].last_backend == backend
    as64 = (lambda t: t.double().cpu() if t is not None else None)
    oracle = genai_fast.attention_with_kvcache_reference(as64(q), k64, v64, seqlens.cpu(), as64(k), as64(v),
                                                         causal=causal)
    baseline = genai_fast.attention_with_kvcache_reference(q, kb, vb, seqlens, k, v, causal=causal)
    assert_matches_oracle(out, oracle, baseline, what=f"attention_with_kvcache[{backend}]")
    # The new tokens landed in the caches, and nothing else changed.
    torch.testing.assert_close(k_cache.double().cpu(), k64, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(v_cache.double().cpu(), v64, equal_nan=True, rtol=0, atol=0)
