"""Fused attention: scaled_dot_product_attention (prefill/training) and attention_with_kvcache (decode).

Layers (DESIGN.md section 3): the Triton kernels and launchers live in kernels/attention.py; this module
holds the public functions, validation, the custom ops `genai_fast::scaled_dot_product_attention` (with
fake and autograd), `genai_fast::scaled_dot_product_attention_backward` and
`genai_fast::attention_with_kvcache`, the references, and each backend's registration in priority order.

Inside the custom ops every tensor is 4-D: q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv], and
the mask (if any) a broadcast view [B, Hq, Sq, Sk] (stride 0 on broadcast dimensions, never copied).
The public function reduces torch's general [..., H, S, D] broadcasting to that form with views, so
autograd sums gradients over broadcast dimensions by itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genai_fast.backends.availability import triton_interpreter_enabled
from genai_fast.backends.cpp import attention as cpp_attention
from genai_fast.backends.dispatch import (
    ANY_DEVICE,
    ENV_BACKEND,
    BackendNotSupportedError,
    Capability,
    Implementation,
    Op,
    define_op,
    resolve_backend_name,
    validate_backend_name,
)
from genai_fast.ops.autocast import LOWER_PRECISION, autocast_active, autocast_dtype, autocast_off, cast_inputs
from genai_fast.ops.eager import can_bypass_custom_op, is_plain_eager
from genai_fast.ops.layout import slice_reach
from genai_fast.ops.plans import PlanTable, signatures_allowed, tensor_signature
from genai_fast.ops.timing import median_ms

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_KERNEL_HEAD_DIM = 256

ATTENTION = define_op("scaled_dot_product_attention")
ATTENTION_BWD = define_op("scaled_dot_product_attention_backward")
KVCACHE = define_op("attention_with_kvcache")


class AttentionInputError(ValueError, RuntimeError):
    """Bad shapes or values. Also a RuntimeError, the type torch's SDPA raises, so code that catches
    torch's errors catches these."""


class AttentionTypeError(TypeError, RuntimeError):
    """Bad dtypes (a RuntimeError too, as torch raises)."""


# ---------------------------------------------------------------- public functions


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    backend: str | None = None,
    softcap: float = 0.0,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(query @ key^T * scale + mask) @ value, fused (the S x S matrix is never stored).

    Args:
        query: [..., Hq, Sq, D]; key: [..., Hkv, Sk, D]; value: [..., Hkv, Sk, Dv]. fp32, fp16, bf16
            (fp64 runs on the reference); at least 2-D; leading dimensions broadcast as in torch.
        attn_mask: None, or bool (True = attend) or additive float (float32 or query's dtype),
            broadcastable to [..., Hq, Sq, Sk].
        dropout_p: dropout on the attention weights; > 0 runs on the reference (the kernels have none).
        is_causal: query i sees key j <= i (aligned top-left, as torch). Combined with attn_mask if both.
        scale: defaults to 1 / sqrt(D).
        enable_gqa: Hq a multiple of Hkv; query head h reads key/value head h // (Hq // Hkv).
        backend: force "triton", "cpp" (CPU, fp32) or "torch"; None picks the fastest that can run (on a CPU:
            "cpp" where the measured rules, or for contested shapes in inference a timing of both on the first
            call, find it faster than torch's own SDPA; see the CPP_* constants).
        softcap: beyond torch's signature (FlashAttention's `softcap`, Gemma 2's attn_logit_softcapping): with
            c > 0 each scaled score s becomes c * tanh(s / c) before the mask is applied. 0: none.
        window: beyond torch's signature, with is_causal only: a sliding window, query i sees keys
            i - window < j <= i (Mistral's and Gemma's sliding layers, HF's sliding_window); the kernels skip key
            blocks outside it. None: the whole causal prefix.
        sinks: beyond torch's signature, attention sinks (GPT-OSS's `s_aux`): a float tensor [Hq] on query's
            device, one logit per query head that joins every row's softmax as an extra key whose value is zero
            (not capped, not masked), so a row's weights may sum to less than 1. Differentiable. None: no sinks.

    Returns [..., Hq, Sq, Dv] in query's dtype. A row with every key masked is 0, as in torch 2.13.
    Errors: the types torch raises (RuntimeError; here subclasses of ValueError/TypeError as well),
    with messages that start with the argument's name.

    Equivalent PyTorch::

        torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p,
                                                         is_causal, scale=scale, enable_gqa=enable_gqa)
    """
    if autocast_active(query):
        # As torch's autocast treats its SDPA: query, key, value and a float mask in the lower precision.
        dtype = autocast_dtype(LOWER_PRECISION, query.device.type)
        query, key, value, attn_mask = cast_inputs(dtype, query, key, value, attn_mask)
        with autocast_off(query):
            return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                                enable_gqa, backend=backend, softcap=softcap, window=window,
                                                sinks=sinks)
    plan = _call_plan(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend, softcap,
                      window, sinks)
    softcap, window = float(softcap), int(window or 0)
    if plan.route == "reference":
        # Dropout is random: the forward and its backward must see the same mask, so it runs as plain
        # differentiable PyTorch, after the dispatcher recorded (or, when forced, raised) the reason. So does a
        # soft cap or window on the fallback, which torch's SDPA cannot compute.
        return scaled_dot_product_attention_reference(query, key, value, attn_mask, dropout_p, is_causal,
                                                      plan.sm_scale, enable_gqa, softcap=softcap, window=window,
                                                      sinks=sinks)
    if plan.route == "torch":
        # Plain eager on the fallback: torch's own SDPA (its fused CPU kernels, forward and backward, under
        # autograd too), not the math reference.
        return F.scaled_dot_product_attention(query, key, value, attn_mask, 0.0, is_causal, scale=plan.sm_scale,
                                              enable_gqa=enable_gqa)
    q, k, v, mask, out_shape = _canonical(query, key, value, attn_mask, enable_gqa, plan.prefix)
    if plan.route == "direct":
        out, _lse = plan.impl.run(q, k, v, mask, is_causal, plan.sm_scale, softcap, window, sinks)
    else:
        # The plan's choice, not a new one inside the op: autograd is off in there, so it would take a training
        # call for inference (whose rules differ on a CPU). Only a call traced before any eager call made the
        # choice leaves it to the op (see _select_while_tracing).
        out, _lse = torch.ops.genai_fast.scaled_dot_product_attention(q, k, v, mask, is_causal, plan.sm_scale,
                                                                      backend or _planned_backend(plan), softcap,
                                                                      window, sinks)
    return out if out_shape is None else out.reshape(out_shape)


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    causal: bool = True,
    backend: str | None = None,
    softcap: float = 0.0,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode attention of a few new query tokens per sequence against a preallocated KV cache.

    Args:
        q: [B, Hq, Sq, D] new query tokens (fp32, fp16, bf16; fp64 on the reference).
        k_cache, v_cache: [B, Hkv, S_max, D] and [B, Hkv, S_max, Dv], query's dtype; Hq % Hkv == 0.
        cache_seqlens: int32 or int64 [B], valid cache length of each sequence before this call, on q's
            device or on the CPU. On the CPU, validating it needs no GPU sync. (On q's GPU it costs one: on an
            H200 at batch 1 the call took 145 us, its two kernel launches alone about 50.)
        k, v: optional [B, Hkv, S_new, D] / [B, Hkv, S_new, Dv], written in place into the caches at
            positions cache_seqlens[b] .. cache_seqlens[b] + S_new - 1 before attending.
        scale: defaults to 1 / sqrt(D).
        causal: aligned bottom-right: with L_b = cache_seqlens[b] + S_new, query i sees positions
            <= L_b - Sq + i. Otherwise every query sees positions < L_b.
        backend: force "triton", "cpp" (CPU, fp32) or "torch"; None picks the fastest that can run.
        softcap: scores s become softcap * tanh(s / softcap) (0: none), as scaled_dot_product_attention's.
        window: with causal only, a sliding window: query i (at position p = L_b - Sq + i) sees positions
            p - window < j <= p; positions before the first query's window are not read. None: all of them.
        sinks: attention sinks (GPT-OSS's `s_aux`), a float tensor [Hq]: as scaled_dot_product_attention's, one
            more logit in every row's softmax. None: none.

    Returns [B, Hq, Sq, Dv]. cache_seqlens is not updated (the caller advances it). Validation reads
    cache_seqlens on the host before anything touches the caches (one sync when it is on a GPU), except
    while a CUDA graph is being captured (then it must be on q's device).

    Equivalent PyTorch::

        for b in range(B):
            L = cache_seqlens[b] + S_new
            k_cache[b, :, L - S_new:L] = k[b]; v_cache[b, :, L - S_new:L] = v[b]
            keys, values = k_cache[b, :, :L], v_cache[b, :, :L]
            mask = causal bottom-right [Sq, L] if causal else None
            out[b] = F.scaled_dot_product_attention(q[b], keys, values, mask, scale=scale, enable_gqa=True)
    """
    if autocast_active(q):
        with autocast_off(q):  # the cache's dtype is the precision (ops/autocast.py)
            return attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, scale=scale, causal=causal,
                                          backend=backend, softcap=softcap, window=window, sinks=sinks)
    uniform = _validate_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, backend)
    _validate_cap_window(softcap, window, causal, "causal")
    _validate_sinks(sinks, q, q.shape[1])
    softcap, window = float(softcap), int(window or 0)
    if cache_seqlens.device != q.device:
        # Lengths kept on the host were validated without a sync. A non-blocking copy from pageable memory is
        # staged before it returns, so the caller may change cache_seqlens right after this call.
        cache_seqlens = cache_seqlens.to(q.device, non_blocking=True)
    sm_scale = _default_scale(q.shape[-1]) if scale is None else float(scale)
    if can_bypass_custom_op(q, k_cache, v_cache, k, v, sinks):
        return _kvcache_run(q, k_cache, v_cache, cache_seqlens, k, v, sm_scale, bool(causal), backend, uniform,
                            softcap, window, sinks)
    return torch.ops.genai_fast.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, sm_scale,
                                                       bool(causal), backend or "", softcap, window, sinks)


# (q, k_cache, v_cache, lengths: list[int], scale, softcap=0.0, window=0, sinks=None) -> out
DecodeAttendFn = Callable[..., torch.Tensor]


def resolve_decode_attention(device: torch.device | str, dtype: torch.dtype, head_dim: int, head_dim_v: int,
                             backend: str | None = None) -> DecodeAttendFn | None:
    """For decode loops that know every cache length on the host (CPU): attention_with_kvcache's C++ kernel
    bound to torch's current thread count, as fn(q, k_cache, v_cache, lengths, scale) -> [B, Hq, Sq, Dv]
    (causal, no append; lengths include the new tokens), or None when the op would not run the C++ backend
    for these inputs. It skips the op's per-call validation (one host read of the lengths, the dispatcher);
    the kernel itself still checks every length and extent before reading. softcap, window (0: none), sinks
    (None: none): as the op's."""
    inputs = {"device": torch.device(device), "dtype": dtype, "head_dim": head_dim, "head_dim_v": head_dim_v}
    if KVCACHE.select(inputs, backend).backend != "cpp":
        return None
    from genai_fast.backends.cpp.attention import decode_attention_fwd

    threads = torch.get_num_threads()

    def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: list[int],
               scale: float, softcap: float = 0.0, window: int = 0, sinks: torch.Tensor | None = None
               ) -> torch.Tensor:
        return decode_attention_fwd(q, k_cache, v_cache, lengths, scale, True, threads, softcap=softcap,
                                    window=window, sinks=sinks)

    return attend


# ---------------------------------------------------------------- references


def scaled_dot_product_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    return_lse: bool = False,
    softcap: float = 0.0,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch math SDPA: the fallback inside the custom op and the test oracle (call it on
    float64 inputs). Computes in float64 for float64 inputs and float32 otherwise; returns query's dtype.

    Rows with every key masked give 0 (and lse -inf) with finite gradients. return_lse: also return the
    natural-log log-sum-exp of each row's scaled, masked scores [..., Hq, Sq] (fp32 or fp64; with sinks, the sink
    included). softcap, window and sinks: as scaled_dot_product_attention's.
    """
    p, total, row_max, v, _ = _attention_probs(query, key, value, attn_mask, is_causal, scale, enable_gqa,
                                               softcap, window, sinks)
    if dropout_p > 0:
        p = torch.dropout(p, dropout_p, train=True)
    out = (p @ v).to(query.dtype)
    if not return_lse:
        return out
    return out, (torch.log(total) + row_max).squeeze(-1)


def _attention_probs(query, key, value, attn_mask, is_causal, scale, enable_gqa, softcap=0.0, window=None,
                     sinks=None):
    """(P, row sums, row maxima, value with repeated heads, tanh(scores / softcap) or None), in float64 for
    float64 inputs else float32."""
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    q, k, v = query.to(compute), key.to(compute), value.to(compute)
    if enable_gqa and q.dim() >= 3:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    sm_scale = _default_scale(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * sm_scale
    tanh = None
    if softcap:
        tanh = torch.tanh(scores / softcap)
        scores = tanh * softcap
    Sq, Sk = scores.shape[-2], scores.shape[-1]
    if is_causal:
        causal = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device).tril()
        if window:  # and i - j < window
            causal = causal.triu(diagonal=1 - window)
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(compute)
    # Safe softmax: a row with no visible key has max -inf; subtracting 0 instead keeps it (and its
    # gradient) free of NaN, and dividing by 1 instead of 0 makes it 0.
    row_max = scores.detach().amax(dim=-1, keepdim=True) if Sk else scores.new_zeros((*scores.shape[:-1], 1))
    sink = None
    if sinks is not None:  # one more logit per row (its value is zero): in the maximum and the sum only
        sink = sinks.to(compute).view(-1, 1, 1).expand(*scores.shape[:-1], 1)
        row_max = torch.maximum(row_max, sink.detach())
    row_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)
    p = torch.exp(scores - row_max)
    total = p.sum(dim=-1, keepdim=True)
    if sink is not None:
        total = total + torch.exp(sink - row_max)
    return p / torch.where(total == 0, torch.ones_like(total), total), total, row_max, v, tanh


def scaled_dot_product_attention_backward_reference(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    mask_grad: bool = False,
    softcap: float = 0.0,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients (dq, dk, dv, dmask or None) of the reference on 4-D GQA inputs, by the explicit formulas
    (dS = P * (dP - rowsum(dO * O)), times 1 - tanh^2 under a soft cap for dq and dk); GQA gradients are summed
    over each group's query heads. With sinks, P is normalised over them too (their own gradient comes from the
    lse: see _sinks_grad).

    Written out rather than through autograd because it runs inside a custom op, where autograd is off.
    """
    p, _, _, v, tanh = _attention_probs(query, key, value, attn_mask, is_causal, scale, True, softcap, window,
                                        sinks)
    compute = p.dtype
    do, q = grad_out.to(compute), query.to(compute)
    hq, hk = query.shape[1], key.shape[1]
    k = key.to(compute).repeat_interleave(hq // hk, dim=1)
    dv = p.transpose(-2, -1) @ do
    dp = do @ v.transpose(-2, -1)
    ds = p * (dp - (dp * p).sum(dim=-1, keepdim=True))
    dmask = ds.to(attn_mask.dtype) if mask_grad and attn_mask is not None else None  # the mask follows the cap
    if tanh is not None:
        ds = ds * (1 - tanh * tanh)
    dq = (ds @ k) * scale
    dk = (ds.transpose(-2, -1) @ q) * scale
    if hq != hk:
        dk = dk.unflatten(1, (hk, hq // hk)).sum(2)
        dv = dv.unflatten(1, (hk, hq // hk)).sum(2)
    return (dq.to(query.dtype).contiguous(), dk.to(key.dtype).contiguous(), dv.to(value.dtype).contiguous(),
            dmask.contiguous() if dmask is not None else None)


def attention_with_kvcache_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    scale: float | None = None,
    causal: bool = True,
    softcap: float = 0.0,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """attention_with_kvcache in plain PyTorch (writes k/v into the caches in place, as the op does)."""
    lengths = _append_to_cache(k_cache, v_cache, cache_seqlens, k, v)
    sm_scale = _default_scale(q.shape[-1]) if scale is None else scale
    return _kvcache_attend_reference(q, k_cache, v_cache, lengths, sm_scale, causal, softcap, window, sinks)


def _kvcache_attend_reference(q, k_cache, v_cache, lengths, scale, causal, softcap=0.0, window=None, sinks=None):
    Sq, s_max = q.shape[2], k_cache.shape[2]
    pos = torch.arange(s_max, device=q.device)
    lengths = lengths.to(device=q.device, dtype=torch.int64)
    valid = pos[None, :] < lengths[:, None]  # [B, S_max]
    mask = valid[:, None, None, :].expand(-1, 1, Sq, -1)
    if causal:
        last = lengths[:, None] - Sq + torch.arange(Sq, device=q.device)[None, :]  # [B, Sq]
        mask = mask & (pos[None, None, :] <= last[:, :, None])[:, None]
        if window:
            mask = mask & (last[:, :, None] - pos[None, None, :] < window)[:, None]
    # Positions past a sequence's length may hold anything (NaN in the tests): zero them, since
    # 0 * NaN in P @ V would poison the row.
    keep = valid[:, None, :, None]
    keys = torch.where(keep, k_cache, torch.zeros((), dtype=k_cache.dtype, device=k_cache.device))
    values = torch.where(keep, v_cache, torch.zeros((), dtype=v_cache.dtype, device=v_cache.device))
    return scaled_dot_product_attention_reference(q, keys, values, mask, 0.0, False, scale, enable_gqa=True,
                                                  softcap=softcap, sinks=sinks)


# ---------------------------------------------------------------- validation


def _default_scale(head_dim: int) -> float:
    """1 / sqrt(head_dim). With head dim 0 every score is an empty sum, 0, whatever the scale: 1.0 keeps it
    finite (as torch, which returns the mean of the values there) instead of dividing by zero."""
    return 1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0


def _require_tensor(name: str, t: Any) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _validate_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend) -> tuple[int, ...]:
    """Raise on bad input; returns the output's leading dims (batch..., Hq)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        _require_tensor(name, t)
        if t.dim() < 2:
            raise AttentionInputError(f"{name}: expected at least 2 dimensions [..., S, D], got shape "
                                      f"{tuple(t.shape)}")
    if query.dtype not in SUPPORTED_DTYPES:
        raise AttentionTypeError(f"query: expected dtype float32, float16, bfloat16 or float64, got {query.dtype}")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise AttentionTypeError(f"{name}: expected query's dtype {query.dtype}, got {t.dtype}")
        if t.device != query.device:
            raise AttentionInputError(f"{name}: expected a tensor on query's device {query.device}, got {t.device}")
    if key.shape[-1] != query.shape[-1]:
        raise AttentionInputError(f"key: head dim {key.shape[-1]} must equal query's {query.shape[-1]}")
    if value.shape[-2] != key.shape[-2]:
        raise AttentionInputError(f"value: sequence length {value.shape[-2]} must equal key's {key.shape[-2]}")
    prefix = _output_prefix(query, key, value, enable_gqa)  # raises on heads/batch that do not broadcast
    if attn_mask is not None:
        _validate_mask(attn_mask, query, key, prefix)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p <= 1.0:
        raise AttentionInputError(f"dropout_p: expected a number in [0, 1], got {dropout_p!r}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal: expected a bool, got {type(is_causal).__name__}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise AttentionInputError(f"scale: expected None or a finite number, got {scale!r}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa: expected a bool, got {type(enable_gqa).__name__}")
    validate_backend_name(backend, ATTENTION.extra_names())
    return prefix


def _validate_cap_window(softcap, window, causal, causal_name) -> None:
    """softcap: a finite number >= 0; window: None or an int >= 1, only with a causal mask (a window is a band
    below the causal diagonal)."""
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not math.isfinite(softcap) or softcap < 0:
        raise AttentionInputError(f"softcap: expected a finite number >= 0 (0: no cap), got {softcap!r}")
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise AttentionInputError(f"window: expected None or an int >= 1, got {window!r}")
    if not causal:
        raise AttentionInputError(f"window: a sliding window needs {causal_name}=True (query i sees keys "
                                  "i - window < j <= i)")


def _validate_sinks(sinks, query, heads: int) -> None:
    """sinks: None, or a float tensor [heads] on query's device."""
    if sinks is None:
        return
    _require_tensor("sinks", sinks)
    if not sinks.is_floating_point():
        raise AttentionTypeError(f"sinks: expected a floating-point tensor, got {sinks.dtype}")
    if tuple(sinks.shape) != (heads,):
        raise AttentionInputError(f"sinks: expected shape ({heads},) (one logit per query head), got "
                                  f"{tuple(sinks.shape)}")
    if sinks.device != query.device:
        raise AttentionInputError(f"sinks: expected a tensor on query's device {query.device}, got {sinks.device}")


def _validate_mask(attn_mask, query, key, prefix) -> None:
    _require_tensor("attn_mask", attn_mask)
    if attn_mask.dtype != torch.bool and attn_mask.dtype not in (torch.float32, query.dtype):
        raise AttentionTypeError(f"attn_mask: expected dtype bool, float32 or query's dtype {query.dtype}, "
                                 f"got {attn_mask.dtype}")
    if attn_mask.device != query.device:
        raise AttentionInputError(f"attn_mask: expected a tensor on query's device {query.device}, "
                                  f"got {attn_mask.device}")
    weights = (*prefix, query.shape[-2], key.shape[-2])
    if attn_mask.dim() < 2 or attn_mask.dim() > len(weights) or _broadcast(attn_mask.shape, weights) != weights:
        raise AttentionInputError(f"attn_mask: shape {tuple(attn_mask.shape)} does not broadcast to the "
                                  f"attention weights' shape {weights}")


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    """torch's broadcasting of shapes, or None when they do not broadcast. (torch.broadcast_shapes costs
    ~7 us a call, which on a CPU is half of a small attention call.)"""
    ndim = max(len(shape) for shape in shapes)
    out = []
    for i in range(-ndim, 0):
        size = 1
        for shape in shapes:
            if len(shape) >= -i and shape[i] != 1:
                if size != 1 and size != shape[i]:
                    return None
                size = shape[i]
        out.append(size)
    return tuple(out)


def _heads(t: torch.Tensor) -> int:
    return t.shape[-3] if t.dim() >= 3 else 1


def _output_prefix(query, key, value, enable_gqa) -> tuple[int, ...]:
    """The output's leading dims (batch..., Hq); raises when heads or batch dims do not broadcast."""
    qs, ks, vs = query.shape, key.shape, value.shape
    if len(qs) == len(ks) == len(vs) == 4 and qs[0] == ks[0] == vs[0] and qs[1] == ks[1] == vs[1]:
        return (qs[0], qs[1])  # the common case, without the general broadcasting below
    hq, hk, hv = _heads(query), _heads(key), _heads(value)
    if enable_gqa:
        for name, h in (("key", hk), ("value", hv)):
            if h == 0 or hq % h != 0:
                raise AttentionInputError(f"{name}: with enable_gqa, its {h} heads must divide query's {hq}")
        heads = (hq,)
    else:
        heads = _broadcast((hq,), (hk,), (hv,))
        if heads is None:
            raise AttentionInputError(f"key: {hk} heads (value: {hv}) do not match query's {hq}; "
                                      f"pass enable_gqa=True for grouped-query attention")
    batch = _broadcast(query.shape[:-3], key.shape[:-3], value.shape[:-3])
    if batch is None:
        raise AttentionInputError(f"key: batch dims {tuple(key.shape[:-3])} (value: {tuple(value.shape[:-3])}) "
                                  f"do not broadcast with query's {tuple(query.shape[:-3])}")
    return (*batch, *heads)


def _validate_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, backend) -> int | None:
    """Raise on bad input; returns the common length after the append when every sequence has it."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("cache_seqlens", cache_seqlens)):
        _require_tensor(name, t)
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dim() != 4:
            raise ValueError(f"{name}: expected 4 dimensions [B, H, S, D], got shape {tuple(t.shape)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q: expected dtype float32, float16, bfloat16 or float64, got {q.dtype}")
    B, Hq, _, D = q.shape
    _, Hkv, s_max, _ = k_cache.shape
    _check_like("k_cache", k_cache, q, (B, Hkv, s_max, D))
    _check_like("v_cache", v_cache, q, (B, Hkv, s_max, v_cache.shape[3]))
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"k_cache: its {Hkv} heads must divide q's {Hq}")
    if (k is None) != (v is None):
        raise ValueError(f"{'k' if k is None else 'v'}: k and v must be given together")
    s_new = 0
    if k is not None:
        _require_tensor("k", k)
        _require_tensor("v", v)
        s_new = k.shape[2] if k.dim() == 4 else -1
        _check_like("k", k, q, (B, Hkv, s_new, D))
        _check_like("v", v, q, (B, Hkv, s_new, v_cache.shape[3]))
    bounds = _validate_seqlens(cache_seqlens, q, B, s_max, s_new)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale: expected None or a finite number, got {scale!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    validate_backend_name(backend)
    return bounds[0] + s_new if bounds is not None and bounds[0] == bounds[1] else None


def _check_like(name: str, t: torch.Tensor, q: torch.Tensor, shape: tuple[int, ...]) -> None:
    if t.dtype != q.dtype:
        raise TypeError(f"{name}: expected q's dtype {q.dtype}, got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{name}: expected a tensor on q's device {q.device}, got {t.device}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")


def _validate_seqlens(cache_seqlens, q, B, s_max, s_new) -> tuple[int, int] | None:
    """(min, max) of cache_seqlens, read on the host (None while a CUDA graph is captured)."""
    if cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cache_seqlens: expected dtype int32 or int64, got {cache_seqlens.dtype}")
    if tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"cache_seqlens: expected shape ({B},) (one length per sequence), "
                         f"got {tuple(cache_seqlens.shape)}")
    on_host = cache_seqlens.device.type == "cpu"
    if cache_seqlens.device != q.device and not on_host:
        raise ValueError(f"cache_seqlens: expected a tensor on q's device {q.device} or on the CPU, got "
                         f"{cache_seqlens.device}")
    capturing = q.is_cuda and torch.cuda.is_current_stream_capturing()
    if capturing and on_host and q.device.type != "cpu":
        raise ValueError("cache_seqlens: a CPU tensor cannot be read while a CUDA graph is captured (the replays "
                         "would keep this call's lengths); pass it on q's device")
    # Reading values needs the host: not while tracing (the custom op's body checks them at run time)
    # nor while a CUDA graph is captured.
    if B == 0 or torch.compiler.is_compiling() or capturing:
        return None
    values = cache_seqlens.tolist()  # one host read (a sync when on a GPU); cheaper than aminmax for few values
    lo, hi = min(values), max(values)
    if lo < 0 or hi + s_new > s_max:
        raise ValueError(f"cache_seqlens: values must lie in [0, S_max - S_new] = [0, {s_max - s_new}] "
                         f"(S_max={s_max}, S_new={s_new}), got min {lo}, max {hi}")
    return lo, hi


# ---------------------------------------------------------------- canonical 4-D form


def _canonical(query, key, value, attn_mask, enable_gqa, prefix):
    """(q, k, v, mask, out_shape): 4-D views [B, H, S, D] (mask [B, Hq, Sq, Sk] broadcast view) and the shape
    the output takes, None when it is already the kernels' [B, Hq, Sq, Dv].

    Broadcast batch/head dims become stride-0 views; flattening several batch dims copies only when
    they cannot be viewed as one.
    """
    batch, hq = prefix[:-1], prefix[-1]
    Sq, Sk, D, Dv = query.shape[-2], key.shape[-2], query.shape[-1], value.shape[-1]
    hk, hv = (_heads(key), _heads(value)) if enable_gqa else (hq, hq)
    if (attn_mask is None and hk == hv and query.dim() == key.dim() == value.dim() == 4
            and query.shape[:2] == (*batch, hq) and key.shape[:2] == value.shape[:2] == (*batch, hk)):
        return query, key, value, None, None  # already canonical (the usual call): nothing to reshape
    if enable_gqa and hk != hv:
        # torch repeats key and value heads separately; the kernels share one group size. Both counts divide
        # hq, but neither need divide the other (2 key heads and 3 value heads for 6 query heads), so both are
        # repeated to hq (a rare call).
        heads = hq
        key = key.repeat_interleave(heads // hk, dim=-3) if hk != heads else key
        value = value.repeat_interleave(heads // hv, dim=-3) if hv != heads else value
        hk = hv = heads
    q = _flatten_batch(query, batch, hq, Sq, D)
    k = _flatten_batch(key, batch, hk, Sk, D)
    v = _flatten_batch(value, batch, hv, Sk, Dv)
    mask = None
    if attn_mask is not None:
        mask = _flatten_batch(attn_mask, batch, hq, Sq, Sk)
    return q, k, v, mask, (*batch, *((hq,) if query.dim() >= 3 or key.dim() >= 3 else ()), Sq, Dv)


def _flatten_batch(t: torch.Tensor, batch: tuple[int, ...], heads: int, rows: int, cols: int) -> torch.Tensor:
    t = t.expand(*batch, heads, rows, cols)
    return t.reshape(-1, heads, rows, cols) if len(batch) != 1 else t


_AUTO_CHOICES: dict[tuple[Any, ...], Implementation] = {}


def _select(op: Op, inputs: dict[str, Any], backend: str | None) -> Implementation:
    """op.select, with automatic choices cached on everything the attention checks read (the
    dispatcher caches only ops without checks; on a CPU its walk is a third of a small call)."""
    if backend is not None or os.environ.get(ENV_BACKEND):
        return op.select(inputs, backend)
    key = _auto_key(op, inputs)
    impl = _AUTO_CHOICES.get(key)
    if impl is None:
        impl = _AUTO_CHOICES[key] = op.select({**inputs, "automatic": True}, None)
    op.last_backend = impl.backend
    return impl


def _auto_key(op: Op, inputs: dict[str, Any]) -> tuple[Any, ...]:
    return (op.name, len(op.implementations), bool(inputs.get("softcap") or inputs.get("window")),
            bool(inputs.get("sinks")),
            inputs["device"], inputs["dtype"], inputs["head_dim"],
            inputs["head_dim_v"], inputs.get("dropout_p", 0.0) > 0, bool(inputs.get("mask_grad")),
            bool(inputs.get("has_mask")), bool(inputs.get("needs_grad")), bool(inputs.get("backward")),
            _cpp_pays(inputs), triton_interpreter_enabled(), inputs.get("offsets_32bit", True))


def _select_while_tracing(op: Op, inputs: dict[str, Any], backend: str | None) -> Implementation | None:
    """The automatic choice an eager call already made for inputs like these, else None: the custom op then
    chooses (or checks the forced backend) when it runs.

    torch.compile cannot trace the dispatcher's first look at a backend (it imports the backend's module), so
    a compiled call whose choice is not cached yet must not make it while tracing (a first call under
    torch.compile(fullgraph=True) would fail)."""
    if backend is not None or os.environ.get(ENV_BACKEND):
        return None
    return _AUTO_CHOICES.get(_auto_key(op, inputs))


def _cpp_pays(inputs: dict[str, Any]) -> bool:
    """Whether the cpp kernels' checks, automatic rules included, accept these fp32 CPU inputs."""
    return "keys" in inputs and _on_cpu_in_fp32(inputs) and not _cpp_reasons({**inputs, "automatic": True})


def _dispatch_inputs(query, key, value, attn_mask, dropout_p, is_causal=False) -> dict[str, Any]:
    # "tensors" serves the forced-only "triton+tma" check; "keys", "queries", "rows" (query rows in all heads),
    # "is_causal", "needs_grad" and "has_mask" the cpp kernels' rules.
    grad_enabled = torch.is_grad_enabled()
    return {"device": query.device, "dtype": query.dtype, "head_dim": query.shape[-1],
            "head_dim_v": value.shape[-1], "dropout_p": dropout_p,
            "mask_grad": attn_mask is not None and attn_mask.requires_grad and grad_enabled,
            "needs_grad": grad_enabled and (query.requires_grad or key.requires_grad or value.requires_grad),
            "keys": key.shape[-2], "queries": query.shape[-2], "rows": query.numel() // max(query.shape[-1], 1),
            "is_causal": bool(is_causal),
            "tensors": (query, key, value), "has_mask": attn_mask is not None,
            # The Triton kernels' offsets inside one (batch, head) slice are 32-bit (kernels/attention.py).
            "offsets_32bit": all(slice_reach(t.shape, t.stride()) < 2**31
                                 for t in (query, key, value, attn_mask) if t is not None)}


# ---------------------------------------------------------------- call plans


@dataclass(frozen=True)
class _CallPlan:
    """What the checks and the dispatcher decided for one call signature of scaled_dot_product_attention."""

    prefix: tuple[int, ...]  # the output's leading dims (batch..., Hq)
    sm_scale: float
    # The dispatcher's choice (the reference's registration for dropout); None while torch.compile traces a call
    # whose choice is left to the custom op at run time.
    impl: Implementation | None
    route: str  # "reference" (dropout), "torch" (torch's own SDPA), "direct" (impl.run) or "custom_op"


# Checking a call and walking the dispatcher cost ~8 us of Python, as much as torch's whole SDPA on small CPU
# shapes; a signature costs ~2 us (genai_fast/ops/plans.py).
_PLANS = PlanTable()


def _call_plan(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend, softcap=0.0,
               window=None, sinks=None) -> _CallPlan:
    """The plan of this call: replayed when a call with the same signature passed the checks before, else
    checked and decided now (raising on bad input)."""
    signature = _signature(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend)
    if signature is not None:
        try:
            signature = (*signature, type(softcap), softcap, type(window), window, tensor_signature(sinks))
        except AttributeError:  # sinks that are not a tensor: the checks raise
            signature = None
    plan = _PLANS.get(signature)
    if plan is None:
        plan = _checked_plan(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend,
                             softcap, window, sinks)
        # The TMA kernel's check reads the tensors' addresses and strides, which no signature holds.
        if backend != "triton+tma":
            _PLANS.put(signature, plan)
    if plan.impl is not None:  # else the custom op records its choice when it runs
        ATTENTION.last_backend = plan.impl.backend
    return plan


def _signature(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend) -> tuple | None:
    """Everything the checks and the dispatcher read from a call, or None where the checked path must run
    every time (torch.compile tracing, dispatch modes, arguments that are not tensors).

    Scalars enter with their types: False == 0.0 and True == 1, but the checks accept only one of each pair.
    """
    if not signatures_allowed():
        return None
    try:
        tensors = (tensor_signature(query), tensor_signature(key), tensor_signature(value),
                   tensor_signature(attn_mask))
    except AttributeError:
        return None
    # The thread count too: contested CPU shapes are timed per thread count.
    return (tensors, type(dropout_p), dropout_p, type(is_causal), is_causal, type(scale), scale,
            type(enable_gqa), enable_gqa, backend, torch.is_grad_enabled(), os.environ.get(ENV_BACKEND),
            triton_interpreter_enabled(), torch.get_num_threads())


def _checked_plan(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend, softcap=0.0,
                  window=None, sinks=None) -> _CallPlan:
    """Check the call (raising on bad input) and decide how it runs."""
    prefix = _validate_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, backend)
    _validate_cap_window(softcap, window, is_causal, "is_causal")
    _validate_sinks(sinks, query, prefix[-1])
    sm_scale = _default_scale(query.shape[-1]) if scale is None else float(scale)
    inputs = {**_dispatch_inputs(query, key, value, attn_mask, dropout_p, is_causal), "softcap": float(softcap),
              "window": int(window or 0), "sinks": sinks is not None}
    if torch.compiler.is_compiling():
        if dropout_p > 0:
            _refuse_dropout(backend)
            return _CallPlan(prefix, sm_scale, None, "reference")
        return _CallPlan(prefix, sm_scale, _select_while_tracing(ATTENTION, inputs, backend), "custom_op")
    impl = _select(ATTENTION, inputs, backend)
    if dropout_p > 0:
        return _CallPlan(prefix, sm_scale, impl, "reference")
    bypass = can_bypass_custom_op(query, key, value, attn_mask)
    if bypass or is_plain_eager(query, key, value, attn_mask):
        empty = query.numel() == 0 or key.numel() == 0 or value.numel() == 0
        both = is_causal and attn_mask is not None  # torch's SDPA refuses the pair; the reference applies both
        if (impl.backend == "torch" or empty) and (softcap or window or sinks is not None):
            return _CallPlan(prefix, sm_scale, impl, "reference")  # beyond torch's SDPA
        if (impl.backend == "torch" or empty) and not both:
            return _CallPlan(prefix, sm_scale, impl, "torch")
    return _CallPlan(prefix, sm_scale, impl, "direct" if bypass else "custom_op")


def _planned_backend(plan: _CallPlan) -> str:
    """The backend the custom op is told to run: the plan's choice, or "" for its own choice at run time."""
    return plan.impl.backend if plan.impl is not None else ""


def _refuse_dropout(backend: str | None) -> None:
    """While tracing, the check the dispatcher makes of a forced backend for dropout: only the reference has it."""
    forced = resolve_backend_name(backend, ATTENTION.extra_names())
    if forced is not None and forced != "torch":
        raise BackendNotSupportedError(f"scaled_dot_product_attention: backend {forced!r} cannot run these inputs: "
                                       "dropout_p > 0 runs on the reference (the kernels have no dropout)")


# ---------------------------------------------------------------- custom ops, fake, autograd


@torch.library.custom_op("genai_fast::scaled_dot_product_attention", mutates_args=())
def _sdpa_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    backend: str,
    softcap: float = 0.0,
    window: int = 0,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """4-D inputs -> (out [B, Hq, Sq, Dv], lse [B, Hq, Sq] fp32, natural log, -inf for empty rows)."""
    if query.numel() == 0 or key.numel() == 0 or value.numel() == 0:
        return _sdpa_torch(query, key, value, attn_mask, is_causal, scale, softcap, window, sinks)
    inputs = {**_dispatch_inputs(query, key, value, attn_mask, 0.0, is_causal),  # autograd is off: no mask_grad
              "softcap": softcap, "window": window, "sinks": sinks is not None}
    return _select(ATTENTION, inputs, backend or None).run(query, key, value, attn_mask, is_causal, scale, softcap,
                                                          window, sinks)


@_sdpa_op.register_fake
def _sdpa_fake(query, key, value, attn_mask, is_causal, scale, backend, softcap=0.0, window=0, sinks=None):
    B, H, Sq, _ = query.shape
    out = query.new_empty((B, H, Sq, value.shape[-1]))
    return out, query.new_empty((B, H, Sq), dtype=torch.float32)


@torch.library.custom_op("genai_fast::scaled_dot_product_attention_backward", mutates_args=())
def _sdpa_backward_op(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    is_causal: bool,
    scale: float,
    mask_grad: bool,
    backend: str,
    softcap: float = 0.0,
    window: int = 0,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dmask); dmask is [B, Hq, Sq, Sk] when mask_grad, else an empty tensor. (The sinks' gradient
    comes from the lse: _sinks_grad.)"""
    inputs = {**_dispatch_inputs(query, key, value, attn_mask, 0.0, is_causal), "mask_grad": mask_grad,
              "backward": True, "softcap": softcap, "window": window, "sinks": sinks is not None}
    if query.numel() == 0 or key.numel() == 0 or value.numel() == 0:
        impl = ATTENTION_BWD.get("torch")
    else:
        impl = _select(ATTENTION_BWD, inputs, backend or None)
    return impl.run(grad_out, query, key, value, attn_mask, out, lse, is_causal, scale, mask_grad, softcap, window,
                    sinks)


@_sdpa_backward_op.register_fake
def _sdpa_backward_fake(grad_out, query, key, value, attn_mask, out, lse, is_causal, scale, mask_grad, backend,
                        softcap=0.0, window=0, sinks=None):
    dmask = attn_mask.new_empty(attn_mask.shape) if mask_grad and attn_mask is not None else query.new_empty((0,))
    # Contiguous gradients whatever the inputs' strides: every backend allocates them that way.
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape), dmask


def _setup_context(ctx, inputs, output):
    query, key, value, attn_mask, is_causal, scale, backend, softcap, window, sinks = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, attn_mask, out, lse, sinks)
    # The TMA forward's gradients come from the pointer kernels (same out and lse).
    ctx.is_causal, ctx.scale, ctx.backend = is_causal, scale, "triton" if backend == "triton+tma" else backend
    ctx.softcap, ctx.window = softcap, window
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    query, key, value, attn_mask, out, lse, sinks = ctx.saved_tensors
    mask_grad = attn_mask is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dmask = torch.ops.genai_fast.scaled_dot_product_attention_backward(
        grad_out, query, key, value, attn_mask, out, lse, ctx.is_causal, ctx.scale, mask_grad, ctx.backend,
        ctx.softcap, ctx.window, sinks)
    dsinks = _sinks_grad(sinks, out, grad_out, lse) if sinks is not None and ctx.needs_input_grad[9] else None
    return dq, dk, dv, dmask if mask_grad else None, None, None, None, None, None, dsinks


def _sinks_grad(sinks: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """d loss / d sinks [H] from the forward's out, lse [B, H, Sq] (sinks included) and grad_out: a sink is a key
    whose value is zero, so its score's gradient is P_sink (0 - delta) with delta = rowsum(dO * O), summed over
    the head's rows."""
    delta = (out.float() * grad_out.float()).sum(-1)
    p_sink = torch.exp(sinks.float()[None, :, None] - lse.float())
    return -(p_sink * delta).sum(dim=(0, 2)).to(sinks.dtype)


_sdpa_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("genai_fast::attention_with_kvcache", mutates_args=("k_cache", "v_cache"))
def _kvcache_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    scale: float,
    causal: bool,
    backend: str,
    softcap: float = 0.0,
    window: int = 0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    s_new = k.shape[2] if k is not None else 0
    bounds = _validate_seqlens(cache_seqlens, q, q.shape[0], k_cache.shape[2], s_new)  # compiled callers
    uniform = bounds[0] + s_new if bounds is not None and bounds[0] == bounds[1] else None
    return _kvcache_run(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, backend or None, uniform, softcap,
                        window, sinks)


@_kvcache_op.register_fake
def _kvcache_fake(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, backend, softcap=0.0, window=0,
                  sinks=None):
    return q.new_empty((*q.shape[:3], v_cache.shape[3]))


def _append_to_cache(k_cache, v_cache, cache_seqlens, k, v) -> torch.Tensor:
    """Write k/v at each sequence's end (in place); returns the new lengths as int32 [B]."""
    if k is None or k.shape[2] == 0:
        return cache_seqlens if cache_seqlens.dtype == torch.int32 else cache_seqlens.to(torch.int32)
    B, Hkv, s_new, _ = k.shape
    positions = cache_seqlens.to(torch.int64)[:, None] + torch.arange(s_new, device=k.device)[None, :]
    index = positions[:, None, :, None]
    k_cache.scatter_(2, index.expand(B, Hkv, s_new, k.shape[3]), k)
    v_cache.scatter_(2, index.expand(B, Hkv, s_new, v.shape[3]), v)
    return (cache_seqlens + s_new).to(torch.int32)


def _kvcache_run(q, k_cache, v_cache, cache_seqlens, k, v, scale, causal, backend, uniform, softcap=0.0, window=0,
                 sinks=None):
    """Append, then attend. uniform: the common length of every sequence when known on the host."""
    lengths = _append_to_cache(k_cache, v_cache, cache_seqlens, k, v)
    if q.shape[0] * q.shape[1] * q.shape[2] * v_cache.shape[3] == 0:
        return q.new_zeros((*q.shape[:3], v_cache.shape[3]))
    if q.shape[3] == 0:
        # Head dim 0: every score is 0, so each row averages its visible values (torch's SDPA does); the
        # kernels are not written for an empty head.
        return KVCACHE.get("torch").run(q, k_cache, v_cache, lengths, scale, causal, uniform, softcap, window,
                                        sinks)
    inputs = {"device": q.device, "dtype": q.dtype, "head_dim": q.shape[3], "head_dim_v": v_cache.shape[3],
              "softcap": softcap, "window": window, "sinks": sinks is not None}
    return _select(KVCACHE, inputs, backend).run(q, k_cache, v_cache, lengths, scale, causal, uniform, softcap,
                                                 window, sinks)


# ---------------------------------------------------------------- backends, in priority order


def _triton_reasons(inputs: dict[str, Any]) -> list[str]:
    reasons = []
    if max(inputs["head_dim"], inputs["head_dim_v"]) > MAX_KERNEL_HEAD_DIM:
        reasons.append(f"head dim {max(inputs['head_dim'], inputs['head_dim_v'])} is above "
                       f"{MAX_KERNEL_HEAD_DIM}")
    if inputs.get("dropout_p", 0.0) > 0:
        reasons.append("dropout_p > 0 runs on the reference (the kernels have no dropout)")
    if inputs.get("mask_grad"):
        reasons.append("the gradient of an additive attn_mask is computed by the reference")
    if not inputs.get("offsets_32bit", True):
        reasons.append("a tensor's rows or columns lie 2^31 or more elements apart within one (batch, head) "
                       "slice, past the kernels' 32-bit offsets")
    return reasons


_TRITON = Capability(devices=("cuda", "cpu"), dtypes=KERNEL_DTYPES, min_compute_capability=(8, 0),
                     layouts=("any strides",),
                     features=(f"head dim <= {MAX_KERNEL_HEAD_DIM}", "GQA without copies", "bool/additive masks",
                               "causal", "soft cap", "sliding window (blocks skipped)", "sinks"))
_TORCH = Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",))


@ATTENTION.register("triton", _TRITON, check=_triton_reasons)
def _sdpa_triton(query, key, value, attn_mask, is_causal, scale, softcap=0.0, window=0, sinks=None):
    from genai_fast.kernels.attention import attention_fwd

    return attention_fwd(query, key, value, attn_mask, is_causal, scale, softcap=softcap, window=window,
                         sinks=sinks)


# When the cpp kernels beat torch's CPU SDPA (fp32, 2-core AVX-512 VM, `genai-fast bench --device cpu --full
# --ops scaled_dot_product_attention`, and a sweep of B*H 2-16, Sq 1-64, Sk 7-77, D 8-64 against torch's SDPA).
# - Work: a call costs ~10 us of fixed Python and packing against torch's ~4 us, so calls under 1024 query rows
#   and 16384 scores stay on torch (the sweep: 0.4-0.9x there, 1.0-1.8x above).
# - Rows per head: the kernel packs each head's keys per 32-row task; under 16 queries per head that costs more
#   than the rows save (0.5-0.85x at 1-4 queries of D 64). There the decode kernel (attention_with_kvcache's,
#   which reads keys in place) runs instead where its register-held rows fit the head dim: 1.5-2.4x at D 64.
#   Its fixed costs are lower, and it reads each K/V row once for a whole GQA group (torch repeats K/V): one
#   query of SmolLM2's 9:3 heads at D 64 measured 0.95x torch over 256 keys, 2.8x over 1024; 32:8 heads at D 128
#   1.5x over 128 keys; 12 plain heads 1.0x over 512. So from CPP_DECODE_MIN_SCORES scores.
# - Forward: torch multiplies blocks with BLAS. From 64 query rows per head and 32 keys the kernel streams the
#   keys in L2-sized blocks (csrc/cpu/attention.cpp); on session 23's host (AMD family 26) that measured 1.5-2.2x torch
#   at D 8-128 from 64 to 4096 keys, causal or not. On session 21's host the earlier, unblocked kernel lost to
#   torch at D 40-64 from 128 keys (0.76-0.86x) while winning with few keys (1.1-1.3x at 7 to 77), small head
#   dims (1.4-2x at D 4 and 8) and causal masks (1.2-1.6x: torch computes the masked blocks too). Where hosts
#   may disagree (see _contested_reason) the first call at each shape times both.
# - Forward and backward together (the backward key-blocked, csrc/cpu/attention_backward.cpp; session 24's sweep of
#   B2 H8, D 8-128, 64-1024 tokens, causal or not, against torch's SDPA forward and backward, `python -m
#   genai_fast.bench.attention --training --preset full`): 1.1-3.3x from 256 tokens, the least at D 16 without a
#   causal mask; at 64 tokens 1.3-1.7x from D 40 and 0.7-1.2x at D 8-32, where torch's own time varies as much
#   between runs. So with gradients every call that passes the work and rows-per-head rules takes the kernels,
#   contested shapes included (the backward, about three quarters of the time, is not what makes them
#   contested), and so do masked calls unless the mask itself needs a gradient.
CPP_MIN_ROWS = 1024
CPP_MIN_SCORES = 16384
CPP_MIN_QUERIES = 16
CPP_DECODE_MIN_SCORES = 4096
CPP_FEW_KEYS = 96
CPP_SMALL_HEAD_DIM = 16
CPP_MAX_PACKED_KV_BYTES = 256 * 1024
CPP_MAX_PACKED_KV_BYTES_CAUSAL = 640 * 1024
CPP_MAX_HEAD_DIM_V = 256
# Head dims the decode kernel holds in registers (csrc/cpu/decode_attention.cpp, chunk_routine).
DECODE_KERNEL_HEAD_DIMS = (32, 64, 80, 96, 128, 256)


def _packed_kv_bytes(keys: int, head_dim: int, head_dim_v: int) -> int:
    """Bytes of one head's keys and values as the cpp kernel packs them (fp32, rows rounded up to 16)."""
    return 4 * ((keys + 31) // 16 * 16 * head_dim + keys * ((head_dim_v + 15) // 16 * 16))


def _few_rows_on_decode_kernel(queries: int, keys: int, head_dim: int, head_dim_v: int, causal: bool) -> bool:
    """Whether the cpp backend runs these rows on the decode kernel: few queries per head, a head dim it holds
    in registers, and no causal mask unless queries and keys align (the decode kernel's causal mask is aligned
    bottom-right, SDPA's top-left)."""
    return (queries < CPP_MIN_QUERIES and head_dim == head_dim_v and head_dim in DECODE_KERNEL_HEAD_DIMS
            and (not causal or queries == keys))


def _cpp_slower_reason(inputs: dict[str, Any]) -> str | None:
    """Why torch's SDPA is expected to be faster than the cpp kernels for these shapes, or None."""
    keys, causal, head_dim = inputs["keys"], inputs.get("is_causal", False), inputs["head_dim"]
    queries, rows = inputs["queries"], inputs["rows"]
    training = inputs.get("needs_grad") or inputs.get("backward")
    if not training and not inputs.get("has_mask") and _few_rows_on_decode_kernel(queries, keys, head_dim,
                                                                                   inputs["head_dim_v"], causal):
        if rows * keys < CPP_DECODE_MIN_SCORES:
            return (f"{rows} query rows against {keys} keys are too little work for the decode kernel (under "
                    f"{CPP_DECODE_MIN_SCORES} scores torch's fixed costs are lower)")
        return None
    if rows < CPP_MIN_ROWS and rows * keys < CPP_MIN_SCORES:
        return (f"{rows} query rows against {keys} keys are too little work (under {CPP_MIN_ROWS} rows and "
                f"{CPP_MIN_SCORES} scores torch's fixed costs are lower)")
    if queries < CPP_MIN_QUERIES:
        return f"{queries} queries per head (under {CPP_MIN_QUERIES}) do not repay packing the head's keys"
    if training:
        return None
    contested = _contested_reason(inputs)
    if contested is None or torch.compiler.is_compiling():
        return contested
    timings = _race(inputs)
    if timings is None:
        return f"{contested}; one group of heads is too large to time both on a first call"
    if timings["cpp"] < CPP_RACE_MARGIN * timings["torch"]:
        return None
    return f"{contested}; timed at this shape: torch's SDPA {timings['torch']:.3g} ms, cpp {timings['cpp']:.3g} ms"


def _contested_reason(inputs: dict[str, Any]) -> str | None:
    """Where the kernel's speed against torch's SDPA depends on the host: why torch is likely faster, or None."""
    keys, causal, head_dim = inputs["keys"], inputs.get("is_causal", False), inputs["head_dim"]
    packed = _packed_kv_bytes(keys, head_dim, inputs["head_dim_v"])
    limit = CPP_MAX_PACKED_KV_BYTES_CAUSAL if causal else CPP_MAX_PACKED_KV_BYTES
    if packed > limit:
        return f"a head's keys and values take {packed} bytes packed, above {limit}"
    if not causal and keys > CPP_FEW_KEYS and head_dim > CPP_SMALL_HEAD_DIM:
        return (f"{keys} keys (above {CPP_FEW_KEYS}) of head dim {head_dim} (above {CPP_SMALL_HEAD_DIM}) "
                "without a causal mask")
    return None


# Contested shapes (long keys over wide heads, or past the packed-size budget) measured differently on two hosts of
# this VM type: session 21's (0.76-0.86x torch's SDPA at D 40-64 from 128 keys) and session 22's (AMD family 26,
# whose vector units are twice as wide: 1.13-1.30x at D 40 and 64 up to 2048 keys, 0.6-0.9x at D 128; with the
# streamed kernel of session 23, 1.5-2.2x at D 40-128). So automatic dispatch times both on the first call at
# each such shape (synthetic inputs of the call's sizes, a 20 ms warm-up and three alternating runs each) and keeps
# the kernel only when its median is under CPP_RACE_MARGIN of torch's. A call above CPP_RACE_MAX_FLOP (about
# 0.1 s on the VM) is timed on fewer of its heads (both sides' time grows with the heads); where one GQA group of
# heads is above it, the call is not timed and stays on torch.
CPP_RACE_MARGIN = 0.95
CPP_RACE_REPEATS = 3
CPP_RACE_MAX_FLOP = 2e10
_RACES: dict[tuple[Any, ...], dict[str, float] | None] = {}


def _race(inputs: dict[str, Any]) -> dict[str, float] | None:
    """Median ms of torch's SDPA and of the cpp kernel at the inputs' sizes (cached per sizes and thread count),
    or None when a call is too large to time."""
    keys, queries, rows, causal = inputs["keys"], inputs["queries"], inputs["rows"], inputs.get("is_causal", False)
    head_dim, head_dim_v = inputs["head_dim"], inputs["head_dim_v"]
    heads_q = rows // max(queries, 1)
    key_tensor = inputs["tensors"][1]
    heads_kv = key_tensor.numel() // max(keys * head_dim, 1)
    if heads_kv == 0 or heads_q % heads_kv:
        heads_kv = heads_q
    sizes = (heads_q, heads_kv, queries, keys, head_dim, head_dim_v, causal, torch.get_num_threads())
    if sizes not in _RACES:
        proxy = _race_proxy(*sizes[:-1])
        _RACES[sizes] = None if proxy is None else _time_both(*proxy)
    return _RACES[sizes]


def _race_proxy(heads_q: int, heads_kv: int, queries: int, keys: int, head_dim: int, head_dim_v: int,
                causal: bool) -> tuple[int, int, int, int, int, int, bool] | None:
    """The sizes to time for a call of these sizes: as many of its GQA groups of heads as fit under
    CPP_RACE_MAX_FLOP (all of them for most calls); None when one group is above it."""
    group = heads_q // heads_kv
    flop_per_group = 2.0 * group * queries * keys * (head_dim + head_dim_v)
    groups = min(heads_kv, int(CPP_RACE_MAX_FLOP // flop_per_group))
    return None if groups == 0 else (groups * group, groups, queries, keys, head_dim, head_dim_v, causal)


def _time_both(heads_q: int, heads_kv: int, queries: int, keys: int, head_dim: int, head_dim_v: int,
               causal: bool) -> dict[str, float]:
    q = torch.randn(1, heads_q, queries, head_dim)
    k, v = torch.randn(1, heads_kv, keys, head_dim), torch.randn(1, heads_kv, keys, head_dim_v)
    scale = head_dim ** -0.5
    return median_ms({"torch": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                                                      enable_gqa=heads_q != heads_kv),
                      "cpp": lambda: _sdpa_cpp(q, k, v, None, causal, scale)}, CPP_RACE_REPEATS)


def _cpp_reasons(inputs: dict[str, Any]) -> list[str]:
    reasons = []
    if inputs.get("sinks"):
        reasons.append("attention sinks run on the reference (the cpp kernels have none)")
    if inputs.get("mask_grad"):
        reasons.append("the gradient of an additive attn_mask is computed by torch (the cpp backward leaves it out)")
    if inputs.get("dropout_p", 0.0) > 0:
        reasons.append("dropout_p > 0 runs on the reference (the kernels have no dropout)")
    if inputs["head_dim_v"] > CPP_MAX_HEAD_DIM_V:
        reasons.append(f"value head dim {inputs['head_dim_v']} is above {CPP_MAX_HEAD_DIM_V}")
    if inputs.get("automatic") and not reasons and _on_cpu_in_fp32(inputs):
        slower = _cpp_slower_reason(inputs)
        if slower is not None:
            reasons.append(f"{slower}: torch's SDPA is faster there (automatic choice)")
    return reasons


def _on_cpu_in_fp32(inputs: dict[str, Any]) -> bool:
    return inputs["device"].type == "cpu" and inputs["dtype"] == torch.float32


@ATTENTION.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,), layouts=("any strides",),
               features=("key-blocked online softmax", "GQA without copies", "causal (top-left)",
                         "boolean and additive masks", "soft cap", "sliding window (blocks skipped)")),
    check=_cpp_reasons,
)
def _sdpa_cpp(query, key, value, attn_mask, is_causal, scale, softcap=0.0, window=0, sinks=None):
    Sq, Sk = query.shape[-2], key.shape[-2]
    if attn_mask is None and _few_rows_on_decode_kernel(Sq, Sk, query.shape[-1], value.shape[-1], is_causal):
        # Every query sees all Sk keys (or, causal with Sq == Sk, the same keys and window either alignment shows).
        return cpp_attention.decode_attention_fwd(query, key, value, [Sk] * query.shape[0], scale, is_causal,
                                                  with_lse=True, softcap=softcap, window=window)
    return cpp_attention.attention_fwd(query, key, value, scale, is_causal, mask=attn_mask, softcap=softcap,
                                       window=window)


@ATTENTION.register("torch", _TORCH, check=lambda inputs: [])
def _sdpa_torch(query, key, value, attn_mask, is_causal, scale, softcap=0.0, window=0, sinks=None):
    out, lse = scaled_dot_product_attention_reference(query, key, value, attn_mask, 0.0, is_causal, scale,
                                                      enable_gqa=True, return_lse=True, softcap=softcap,
                                                      window=window, sinks=sinks)
    return out.contiguous(), lse.to(torch.float32).contiguous()


def _tma_reasons(inputs: dict[str, Any]) -> list[str]:
    reasons = _triton_reasons(inputs)
    if "tensors" not in inputs:
        return [*reasons, "the TMA kernel is checked against the tensors of a scaled_dot_product_attention call"]
    from genai_fast.kernels.attention_tma import tma_reasons

    return reasons + tma_reasons(*inputs["tensors"], inputs.get("has_mask", False)) + _beyond_tma_reasons(inputs)


def _beyond_tma_reasons(inputs: dict[str, Any]) -> list[str]:
    """The TMA kernel computes no soft cap, sliding window or sinks."""
    return [f"{name} is not computed by the TMA kernel" for name in ("softcap", "window", "sinks") if inputs.get(name)]


# Registered after the reference, so automatic dispatch never picks it: an experimental Hopper forward that
# only `backend="triton+tma"` (and the benchmark, beside "triton") runs until a GPU run shows it faster.
_TRITON_TMA = Capability(devices=("cuda", "cpu"), dtypes=(torch.float16, torch.bfloat16),
                         min_compute_capability=(9, 0), layouts=("any strides, 16-byte aligned",),
                         features=("TMA tensor descriptors", "head dim 64 or 128", "causal", "GQA", "no mask"))


@ATTENTION.register("triton+tma", _TRITON_TMA, check=_tma_reasons, requires="triton")
def _sdpa_triton_tma(query, key, value, attn_mask, is_causal, scale, softcap=0.0, window=0, sinks=None):
    from genai_fast.kernels.attention_tma import attention_fwd_tma, tma_reasons

    # The dispatcher checked the caller's tensors; these are their 4-D canonical views (broadcast batch
    # dimensions can leave strides TMA refuses), so check again before any descriptor is made.
    reasons = tma_reasons(query, key, value, attn_mask is not None) + _beyond_tma_reasons(
        {"softcap": softcap, "window": window, "sinks": sinks is not None})
    if reasons:
        raise BackendNotSupportedError("scaled_dot_product_attention: backend 'triton+tma' cannot run these "
                                       "inputs: " + "; ".join(reasons))
    return attention_fwd_tma(query, key, value, is_causal, scale)


@ATTENTION_BWD.register("triton", _TRITON, check=_triton_reasons)
def _sdpa_backward_triton(grad_out, query, key, value, attn_mask, out, lse, is_causal, scale, mask_grad, softcap=0.0,
                          window=0, sinks=None):
    # Sinks enter through the lse: P = exp(score - lse) is already normalised over them.
    from genai_fast.kernels.attention import attention_bwd

    dq, dk, dv = attention_bwd(grad_out, query, key, value, attn_mask, out, lse, is_causal, scale, softcap, window)
    return dq, dk, dv, query.new_empty((0,))


@ATTENTION_BWD.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,), layouts=("any strides",),
               features=("key-blocked", "GQA without copies", "causal (top-left)",
                         "boolean and additive masks (not their gradient)", "soft cap", "sliding window")),
    check=_cpp_reasons,
)
def _sdpa_backward_cpp(grad_out, query, key, value, attn_mask, out, lse, is_causal, scale, mask_grad, softcap=0.0,
                       window=0, sinks=None):
    from genai_fast.backends.cpp.attention import attention_bwd

    dq, dk, dv = attention_bwd(grad_out, query, key, value, out, lse, scale, is_causal, mask=attn_mask,
                               softcap=softcap, window=window)
    return dq, dk, dv, query.new_empty((0,))


@ATTENTION_BWD.register("torch", _TORCH, check=lambda inputs: [])
def _sdpa_backward_torch(grad_out, query, key, value, attn_mask, out, lse, is_causal, scale, mask_grad, softcap=0.0,
                         window=0, sinks=None):
    """The reference's gradient formulas, recomputing P (out and lse are not needed)."""
    dq, dk, dv, dmask = scaled_dot_product_attention_backward_reference(grad_out, query, key, value, attn_mask,
                                                                        is_causal, scale, mask_grad, softcap, window,
                                                                        sinks)
    return dq, dk, dv, dmask if dmask is not None else query.new_empty((0,))


@KVCACHE.register("triton", _TRITON, check=_triton_reasons)
def _kvcache_triton(q, k_cache, v_cache, lengths, scale, causal, uniform, softcap=0.0, window=0, sinks=None):
    from genai_fast.kernels.attention import decode_fwd

    return decode_fwd(q, k_cache, v_cache, lengths, causal, scale, softcap, window, sinks)


@KVCACHE.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,), layouts=("any strides",),
               features=("ragged lengths in one call", "GQA without copies", "causal (bottom-right)", "soft cap",
                         "sliding window", "sinks")),
    check=lambda inputs: [],
)
def _kvcache_cpp(q, k_cache, v_cache, lengths, scale, causal, uniform, softcap=0.0, window=0, sinks=None):
    from genai_fast.backends.cpp.attention import decode_attention_fwd

    host = [uniform] * q.shape[0] if uniform is not None else lengths.tolist()
    return decode_attention_fwd(q, k_cache, v_cache, host, scale, causal, softcap=softcap, window=window, sinks=sinks)


@KVCACHE.register("torch", _TORCH, check=lambda inputs: [])
def _kvcache_torch(q, k_cache, v_cache, lengths, scale, causal, uniform, softcap=0.0, window=0, sinks=None):
    # torch's SDPA over each valid prefix: no copies of the cache, and positions past a length are never
    # read. Equal lengths (batch 1 decode, for one) take one call; ragged ones one call per sequence. A soft cap,
    # window or sinks, which torch's SDPA lacks, run the reference.
    if softcap or window or sinks is not None:
        return _kvcache_attend_reference(q, k_cache, v_cache, lengths, scale, causal, softcap, window, sinks)
    if uniform is None and bool((lengths == lengths[0]).all()):
        uniform = int(lengths[0])
    if uniform is not None:
        return _sdpa_prefix(q, k_cache, v_cache, uniform, scale, causal)
    out = q.new_empty((*q.shape[:3], v_cache.shape[3]))
    for b, length in enumerate(lengths.tolist()):
        out[b:b + 1] = _sdpa_prefix(q[b:b + 1], k_cache[b:b + 1], v_cache[b:b + 1], length, scale, causal)
    return out


def _sdpa_prefix(q, k_cache, v_cache, length, scale, causal):
    """Attention of q [B, Hq, Sq, D] over the first `length` cache positions (causal: bottom-right)."""
    Sq = q.shape[2]
    if length == 0:
        return q.new_zeros((*q.shape[:3], v_cache.shape[3]))
    mask = None
    if causal and Sq > 1:
        mask = torch.ones(Sq, length, dtype=torch.bool, device=q.device).tril(diagonal=length - Sq)
    return F.scaled_dot_product_attention(q, k_cache[:, :, :length], v_cache[:, :, :length], mask, scale=scale,
                                          enable_gqa=True)
