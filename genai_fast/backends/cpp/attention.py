"""Launcher for the C++ decode attention kernel (csrc/cpu/decode_attention.cpp): attention_with_kvcache's
cpp backend. Strides cross as arguments (a cache is read in place); the C++ side checks every row it will
read against the extent of each tensor's storage from its address."""

from __future__ import annotations

from typing import Any

import torch

from genai_fast.backends import memory
from genai_fast.backends.cpp import extension, require_cpu


def _extent(t: torch.Tensor) -> int:
    """Elements addressable from t.data_ptr() to the end of its storage."""
    return t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, names: tuple[str, str, str]) -> None:
    """fp32 CPU q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv]: the kernels take B, Hq, Sq and D from q
    and Hkv, Sk from k, so a k or v of other sizes would be read at the wrong places (or past its end)."""
    for name, t in zip(names, (q, k, v), strict=True):
        require_cpu(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor, got shape {tuple(t.shape)}")
    B, D = q.shape[0], q.shape[3]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{names[1]}: expected shape [{B}, Hkv, S, {D}] (q's batch and head dim), got "
                         f"{tuple(k.shape)}")
    if tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise ValueError(f"{names[2]}: expected shape [{', '.join(map(str, k.shape[:3]))}, Dv] ({names[1]}'s first "
                         f"three), got {tuple(v.shape)}")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def decode_attention_fwd(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: list[int],
                         scale: float, causal: bool, num_threads: int | None = None, *,
                         heads_inner: bool = False, with_lse: bool = False, softcap: float = 0.0,
                         window: int = 0, sinks: torch.Tensor | None = None) -> Any:
    """q [B, Hq, Sq, D], caches [B, Hkv, S_max, D / Dv] (fp32, CPU), lengths: B valid cache lengths (new tokens
    included) -> out [B, Hq, Sq, Dv]; causal aligned bottom-right.

    heads_inner: out is a [B, Sq, Hq, Dv] buffer seen as [B, Hq, Sq, Dv] (transpose(1, 2) then a reshape to
    [B, Sq, Hq * Dv] is a view, as an attention layer's output projection wants it).
    with_lse: return (out, lse [B, Hq, Sq] fp32, each row's natural-log log-sum-exp of its scaled (capped) scores,
    -inf for a row that sees nothing).
    softcap > 0: each scaled score s becomes softcap * tanh(s / softcap) (0: none).
    window > 0 (causal only): query i, at position p = lengths[b] - Sq + i, sees positions p - window < j <= p
    (0: none); positions below every query's window are not read.
    sinks: None, or [Hq] logits (any float dtype; GPT-OSS's s_aux), one more term of each row's softmax (the lse
    includes it)."""
    _check_qkv(q, k_cache, v_cache, ("q", "k_cache", "v_cache"))
    q, k_cache, v_cache = _unit_last(q), _unit_last(k_cache), _unit_last(v_cache)
    B, Hq, Sq, D = q.shape
    Hkv, S_max, Dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    out = memory.new_empty(q, (B, Sq, Hq, Dv) if heads_inner else (B, Hq, Sq, Dv))
    out = out.transpose(1, 2) if heads_inner else out
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32) if with_lse else None
    if sinks is not None:
        if sinks.device.type != "cpu" or sinks.dim() != 1:
            raise ValueError(f"sinks: expected a 1-D CPU tensor [Hq], got {tuple(sinks.shape)} on {sinks.device}")
        sinks = sinks.detach().to(torch.float32).contiguous()
    extension().decode_attention_forward(
        q.data_ptr(), _extent(q), list(q.stride()[:3]), k_cache.data_ptr(), _extent(k_cache),
        list(k_cache.stride()[:3]), v_cache.data_ptr(), _extent(v_cache), list(v_cache.stride()[:3]),
        [int(n) for n in lengths], out.data_ptr(), _extent(out), list(out.stride()[:3]),
        0 if lse is None else lse.data_ptr(), 0 if lse is None else lse.numel(), B, Hq, Hkv, Sq, S_max, D, Dv,
        float(scale), bool(causal), num_threads or torch.get_num_threads(), float(softcap), int(window),
        0 if sinks is None else sinks.data_ptr(), 0 if sinks is None else sinks.numel())
    return (out, lse) if with_lse else out


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
                  num_threads: int | None = None, streamed: bool | None = None,
                  mask: torch.Tensor | None = None, softcap: float = 0.0,
                  window: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv] (fp32, CPU, any strides; Hq a multiple of Hkv)
    -> (out [B, Hq, Sq, Dv] contiguous, lse [B, Hq, Sq] fp32: each row's natural-log log-sum-exp of its scaled
    scores). causal: aligned top-left (query i sees keys j <= i), as torch's SDPA. streamed: run the key-blocked
    (online softmax) scheme or the short-sequence one; None chooses by the size of a head's keys. mask: None, or
    [B, Hq, Sq, Sk] (any strides, broadcast views included) of booleans (False removes a score) or fp32 values
    added to the scaled scores; a masked call runs the key-blocked scheme. A row whose scores are all removed
    gives zeros and lse -inf.

    softcap > 0 (FlashAttention's softcap): each scaled score s becomes softcap * tanh(s / softcap), before the
    mask; lse is then over the capped scores. window > 0 (causal only): query i sees keys i - window < j <= i;
    keys outside every row's window are skipped, so a long sequence costs O(Sq * window). Both schemes take
    both; 0 means none."""
    _check_qkv(q, k, v, ("q", "k", "v"))
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    out = memory.new_empty(q, (B, Hq, Sq, Dv))
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32)
    extension().attention_forward(
        q.data_ptr(), _extent(q), list(q.stride()[:3]), k.data_ptr(), _extent(k), list(k.stride()[:3]),
        v.data_ptr(), _extent(v), list(v.stride()[:3]), out.data_ptr(), out.numel(), lse.data_ptr(), lse.numel(),
        B, Hq, Hkv, Sq, Sk, D, Dv, float(scale), bool(causal), num_threads or torch.get_num_threads(),
        -1 if streamed is None else int(streamed), *_mask_args(mask, (B, Hq, Sq, Sk)), float(softcap), int(window))
    return out, lse


def _mask_args(mask: torch.Tensor | None, shape: tuple[int, int, int, int]) -> tuple[int, int, list[int], int]:
    """(address, kind: 0 none / 1 additive fp32 / 2 booleans, 4 strides, extent) for attention_forward and
    attention_backward."""
    if mask is None:
        return 0, 0, [], 0
    if not mask.is_cpu:
        raise TypeError(f"mask: expected a CPU tensor, got one on {mask.device}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask: expected shape {list(shape)} (a broadcast view is fine), got {list(mask.shape)}")
    if mask.dtype == torch.bool:
        mask, kind = mask.view(torch.uint8), 2
    elif mask.dtype == torch.float32:
        kind = 1
    else:
        raise TypeError(f"mask: expected bool or float32, got {mask.dtype}")
    return mask.data_ptr(), kind, list(mask.stride()), _extent(mask)


def attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, scale: float, causal: bool, num_threads: int | None = None,
                  mask: torch.Tensor | None = None, softcap: float = 0.0,
                  window: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of `attention_fwd` (same shapes as q, k, v; contiguous) from its inputs, output
    `out`, row log-sum-exps `lse` and the output's gradient `grad_out` (fp32, CPU). mask, softcap, window: the
    forward's, as `attention_fwd` takes them (the mask's own gradient is not computed; the capped scores are
    recomputed, and the gradient flows through the cap)."""
    _check_qkv(q, k, v, ("q", "k", "v"))
    for name, t in (("out", out), ("grad_out", grad_out), ("lse", lse)):
        require_cpu(name, t)
    q, k, v, out, grad_out, lse = (t.contiguous() for t in (q, k, v, out, grad_out, lse))
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[3]
    dq, dk, dv = (memory.new_empty(t, t.shape) for t in (q, k, v))
    extension().attention_backward(
        q.data_ptr(), q.numel(), k.data_ptr(), k.numel(), v.data_ptr(), v.numel(), out.data_ptr(), out.numel(),
        grad_out.data_ptr(), grad_out.numel(), lse.data_ptr(), lse.numel(), dq.data_ptr(), dq.numel(),
        dk.data_ptr(), dk.numel(), dv.data_ptr(), dv.numel(), B, Hq, Hkv, Sq, Sk, D, Dv, float(scale), bool(causal),
        num_threads or torch.get_num_threads(), *_mask_args(mask, (B, Hq, Sq, Sk)), float(softcap), int(window))
    return dq, dk, dv
