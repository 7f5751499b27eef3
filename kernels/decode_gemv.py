"""Triton matrix-vector products for the LLM decode step on a GPU, with the small ops before them folded in:

- `norm_linear_fwd`: (h + delta, (rms_norm(h + delta) * norm_weight) @ W^T + b): the residual add, the RMSNorm
  and the projection after it (QKV, gate/up, the LM head) in one kernel;
- `swiglu_linear_fwd`: (silu(gate) * up) @ W^T + b from the gate/up projection's rows [gate | up]: the SwiGLU
  and the down projection in one kernel.

Why: at batch 1 a decode step is a few hundred small kernels, and inside a CUDA graph each costs a few
microseconds of latency whatever its size (a 135M model's step: 1.07 ms on an H200, 6 % of the copy bandwidth).
These two take a layer from ten kernels to seven: the norms and the SwiGLU become prologues of the matrix-vector
products that read their results.

Numerics are the unfused step's (kernels/rms_norm.py, kernels/swiglu.py, HF's modules): the residual sum is
rounded to the input dtype, the norm's statistics are fp32, the normalised row is rounded, then scaled by the
weight and rounded again; silu(gate) is rounded, then its product with up. The projection accumulates fp32
products and rounds once, with the bias added in fp32, as cuBLAS's epilogue does; only the order of the fp32
sums differs from cuBLAS's.

Layout: each program owns BLOCK_N output features of one input row and walks K in BLOCK_K chunks. Every
program recomputes the row's prologue (K values, read from L2), which costs far less than its BLOCK_N weight
rows; program 0 of each row stores the residual sum. W is [N, K] with unit stride along K.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory
from genai_fast.backends.availability import multiprocessor_count

MAX_GRID_Y = 65535  # rows per launch (grid dimension 1)


@triton.jit
def _residual(h_ptr, d_ptr, row, stride_h, stride_d, offs_k, k_valid, HAS_DELTA: tl.constexpr):
    """The residual stream's chunk: h + delta rounded to h's dtype (torch's add), or h."""
    h = tl.load(h_ptr + row * stride_h + offs_k, mask=k_valid, other=0.0)
    if HAS_DELTA:
        delta = tl.load(d_ptr + row * stride_d + offs_k, mask=k_valid, other=0.0)
        h = (h.to(tl.float32) + delta.to(tl.float32)).to(h.dtype)
    return h


@triton.jit
def _store_row(y_ptr, b_ptr, row, N, offs_n, n_valid, acc, HAS_BIAS: tl.constexpr):
    """The row's BLOCK_N products plus the bias (in fp32), rounded once to y's dtype."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_valid, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * N + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_valid)


@triton.jit
def _norm_linear_kernel(h_ptr, d_ptr, nw_ptr, w_ptr, b_ptr, sum_ptr, y_ptr, N, K, stride_h, stride_d, stride_w, eps,
                        HAS_DELTA: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < N
    offs_c = tl.arange(0, BLOCK_K)
    # Pass 1: the row's mean square; program 0 also stores the residual sum for the layers after this one.
    squares = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_c
        k_valid = offs_k < K
        x = _residual(h_ptr, d_ptr, row, stride_h, stride_d, offs_k, k_valid, HAS_DELTA)
        if HAS_DELTA:  # noqa: SIM102 (a compile-time test, then a run-time one: Triton keeps them apart)
            if pid_n == 0:
                tl.store(sum_ptr + row * K + offs_k, x, mask=k_valid)
        xf = x.to(tl.float32)
        squares += xf * xf
    rstd = 1.0 / tl.sqrt_rn(tl.sum(squares, axis=0) / K + eps)
    # Pass 2: the normalised, scaled chunk (HF's two roundings) against BLOCK_N weight rows. The products
    # accumulate per lane and are summed across the row once, after the loop (no shuffles per chunk).
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_w
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_c
        k_valid = offs_k < K
        x = _residual(h_ptr, d_ptr, row, stride_h, stride_d, offs_k, k_valid, HAS_DELTA)
        normed = (x.to(tl.float32) * rstd).to(x.dtype)
        scale = tl.load(nw_ptr + offs_k, mask=k_valid, other=0.0).to(tl.float32)
        xw = (scale * normed.to(tl.float32)).to(x.dtype).to(tl.float32)
        w = tl.load(w_rows + offs_k[None, :], mask=n_valid[:, None] & k_valid[None, :], other=0.0)
        acc += w.to(tl.float32) * xw[None, :]
    _store_row(y_ptr, b_ptr, row, N, offs_n, n_valid, tl.sum(acc, axis=1), HAS_BIAS)


@triton.jit
def _swiglu_linear_kernel(g_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_g, stride_w, HAS_BIAS: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < N
    offs_c = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)  # per-lane partial products, summed after the loop
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_w
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_c
        k_valid = offs_k < K
        gate = tl.load(g_ptr + row * stride_g + offs_k, mask=k_valid, other=0.0)
        up = tl.load(g_ptr + row * stride_g + K + offs_k, mask=k_valid, other=0.0)
        g = gate.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # silu, rounded as torch's F.silu in gate's dtype
        a = (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype).to(tl.float32)
        w = tl.load(w_rows + offs_k[None, :], mask=n_valid[:, None] & k_valid[None, :], other=0.0)
        acc += w.to(tl.float32) * a[None, :]
    _store_row(y_ptr, b_ptr, row, N, offs_n, n_valid, tl.sum(acc, axis=1), HAS_BIAS)


def _tiles(device: torch.device, N: int, K: int) -> dict[str, int]:
    """BLOCK_N, BLOCK_K and warps. On a GPU: about two programs per SM when N allows (a batch-1 product is
    bound by how many weight bytes are in flight), and about 8k weight values a chunk (64 a thread at 4
    warps). Each program re-reads its row's prologue (2K values from L2 against its BLOCK_N x K weights), so
    it takes at least 8 features where N still gives every SM a program, else 4. The interpreter: small."""
    if device.type != "cuda":
        return {"BLOCK_N": min(16, triton.next_power_of_2(N)), "BLOCK_K": min(64, triton.next_power_of_2(K)),
                "num_warps": 4}
    sms = multiprocessor_count(device)
    least = 8 if N >= 8 * sms else 4
    block_n = min(64, max(least, 1 << max(N // (2 * sms), 1).bit_length() - 1))
    block_k = min(max(64, 8192 // block_n), 1024, max(64, triton.next_power_of_2(K)))
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": 4}


def _check_weight(weight: torch.Tensor, bias: torch.Tensor | None, K: int, dtype: torch.dtype) -> None:
    if weight.dim() != 2 or weight.shape[1] != K or weight.stride(1) != 1 or weight.dtype != dtype:
        raise ValueError(f"weight: expected [N, {K}] {dtype} with unit stride along K, got {tuple(weight.shape)} "
                         f"{weight.dtype} strides {weight.stride()}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != dtype):
        raise ValueError(f"bias: expected [{weight.shape[0]}] {dtype}, got {tuple(bias.shape)} {bias.dtype}")


def _bias_pointer(bias: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    """What the kernels read as the bias: it at unit stride (the kernels index it by feature, so a strided view
    is copied), or the weight as a placeholder pointer when there is none (HAS_BIAS=False never reads it)."""
    return bias.contiguous() if bias is not None else weight


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def norm_linear_fwd(h: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """h, delta [R, K] of one dtype (CUDA, or CPU under TRITON_INTERPRET=1; delta None: no add), norm_weight [K],
    weight [N, K], bias [N] or None -> (h + delta [R, K], (rms_norm(h + delta) * norm_weight) @ weight^T + bias
    [R, N]), both contiguous in h's dtype; the first is h itself when delta is None."""
    if h.dim() != 2:
        raise ValueError(f"h: expected [R, K], got {tuple(h.shape)}")
    R, K = h.shape
    if delta is not None and (delta.shape != h.shape or delta.dtype != h.dtype):
        raise ValueError(f"delta: expected h's shape {tuple(h.shape)} and dtype {h.dtype}, got "
                         f"{tuple(delta.shape)} {delta.dtype}")
    if norm_weight.shape != (K,):
        raise ValueError(f"norm_weight: expected [{K}], got {tuple(norm_weight.shape)}")
    _check_weight(weight, bias, K, h.dtype)
    N = weight.shape[0]
    h = _rows(h)
    total = h if delta is None else memory.empty((R, K), dtype=h.dtype, device=h.device)
    y = memory.empty((R, N), dtype=h.dtype, device=h.device)
    if R == 0 or N == 0:
        return total, y
    if K == 0:
        raise ValueError("h: expected at least one feature to normalise, got K = 0")
    d = _rows(delta) if delta is not None else h
    bias_t = _bias_pointer(bias, weight)
    cfg = _tiles(h.device, N, K)
    for r0 in range(0, R, MAX_GRID_Y):
        rows = min(MAX_GRID_Y, R - r0)
        _norm_linear_kernel[(triton.cdiv(N, cfg["BLOCK_N"]), rows)](
            h[r0:], d[r0:], norm_weight.contiguous(), weight, bias_t, total[r0:],
            y[r0:], N, K, h.stride(0), d.stride(0), weight.stride(0), float(eps),
            HAS_DELTA=delta is not None, HAS_BIAS=bias is not None, **cfg)
    return total, y


def swiglu_linear_fwd(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """gate_up [R, 2K] (gate columns, then up columns, unit stride in the row; CUDA, or CPU under
    TRITON_INTERPRET=1), weight [N, K], bias [N] or None -> (silu(gate) * up) @ weight^T + bias [R, N], contiguous
    in gate_up's dtype."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2 or gate_up.stride(1) != 1:
        raise ValueError(f"gate_up: expected [R, 2K] with unit stride in the row, got {tuple(gate_up.shape)} "
                         f"strides {gate_up.stride()}")
    R, K = gate_up.shape[0], gate_up.shape[1] // 2
    _check_weight(weight, bias, K, gate_up.dtype)
    N = weight.shape[0]
    y = memory.empty((R, N), dtype=gate_up.dtype, device=gate_up.device)
    if R == 0 or N == 0:
        return y
    if K == 0:  # an empty product: the bias alone
        return y.copy_((bias if bias is not None else torch.zeros(N, dtype=y.dtype, device=y.device)).expand(R, N))
    bias_t = _bias_pointer(bias, weight)
    cfg = _tiles(gate_up.device, N, K)
    for r0 in range(0, R, MAX_GRID_Y):
        rows = min(MAX_GRID_Y, R - r0)
        _swiglu_linear_kernel[(triton.cdiv(N, cfg["BLOCK_N"]), rows)](
            gate_up[r0:], weight, bias_t, y[r0:], N, K, gate_up.stride(0),
            weight.stride(0), HAS_BIAS=bias is not None, **cfg)
    return y
