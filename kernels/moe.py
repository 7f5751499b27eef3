"""Triton mixture-of-experts products for the LLM decode step on a GPU: each token's top-k experts, read through
the router's expert ids on the device.

A sparse MoE layer (Mixtral, Qwen2-MoE, Qwen3-MoE) sends each token to k of E experts, each a gated MLP
act(x @ Wg_e^T) * (x @ Wu_e^T) @ Wd_e^T, and adds their outputs weighted by the router's probabilities. HF loops
over the experts a batch hits, which needs the ids on the host: a synchronisation per layer, and no CUDA graph.
Here the ids stay on the device and two kernels index the stacked expert weights with them:

- `moe_gate_up_fwd`: for every (token, choice) pair, act(gate) * up of its expert, [R * k, I] (GPT-OSS: its
  clamped GLU, (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g) with g = min(gate, limit));
- `moe_down_fwd`: for every token, sum_j weight_j * (a_j @ Wd_{e_j}^T), [R, H]: the down projections of its k
  experts, scaled and summed inside one program (no [R, k, H] intermediate, no scatter).

Both add the experts' biases when given (GPT-OSS). At decode sizes these are matrix-vector products bound by the
expert weights they read: only the k chosen experts' rows are loaded, as a dense kernel would load one MLP's.
Numerics follow the torch reference (genai_fast.ops.moe.moe_experts_reference): fp32 products, the gate and up
projections rounded to the input dtype, act(gate) rounded, then its product with up rounded; the down projections
accumulate in fp32 and the weighted sum is rounded once (the reference rounds each expert's output and each add: the
tolerance rule covers the difference).

Layout: gate_up is [E, 2I, H] (the gate rows, then the up rows, as transformers stores them) and down [E, H, I], both
with unit stride along their last dimension. Each program owns BLOCK_N output features of one pair (or token) and
walks the reduction in BLOCK_K chunks, keeping per-lane partial sums that it reduces once after the loop.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genai_fast.backends import memory
from genai_fast.backends.availability import multiprocessor_count

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "gpt_oss")
SQRT_HALF = tl.constexpr(0.7071067811865476)
TANH_SCALE = tl.constexpr(1.5957691216057308)  # 2 sqrt(2 / pi)


@triton.jit
def _activation(g, ACT: tl.constexpr):
    """act(g) in fp32 for ACT 0 silu, 1 gelu (erf), 2 gelu (tanh form, as x sigmoid(2u): no cancellation)."""
    if ACT == 0:
        return g / (1.0 + tl.exp(-g))
    elif ACT == 1:
        return g * 0.5 * (1.0 + tl.math.erf(g * SQRT_HALF))
    else:
        u = TANH_SCALE * (g + 0.044715 * g * g * g)
        return g / (1.0 + tl.exp(-u))


@triton.jit
def _moe_gate_up_kernel(x_ptr, w_ptr, b_ptr, ids_ptr, a_ptr, inter, H, stride_x, stride_we, stride_wn, stride_be,
                        alpha, limit, TOP_K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pair = tl.program_id(1).to(tl.int64)  # token * TOP_K + choice
    token = pair // TOP_K
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < inter
    offs_c = tl.arange(0, BLOCK_K)
    gate_rows = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
    up_rows = gate_rows + inter * stride_wn
    acc_gate = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + offs_c
        k_valid = offs_k < H
        x = tl.load(x_ptr + token * stride_x + offs_k, mask=k_valid, other=0.0).to(tl.float32)
        w_mask = n_valid[:, None] & k_valid[None, :]
        acc_gate += tl.load(gate_rows + offs_k[None, :], mask=w_mask, other=0.0).to(tl.float32) * x[None, :]
        acc_up += tl.load(up_rows + offs_k[None, :], mask=w_mask, other=0.0).to(tl.float32) * x[None, :]
    dtype = a_ptr.dtype.element_ty
    gate = tl.sum(acc_gate, axis=1)
    up = tl.sum(acc_up, axis=1)
    if HAS_BIAS:  # added in fp32 before the one rounding, as F.linear's fused bias
        bias = b_ptr + expert * stride_be + offs_n
        gate += tl.load(bias, mask=n_valid, other=0.0).to(tl.float32)
        up += tl.load(bias + inter, mask=n_valid, other=0.0).to(tl.float32)
    gate = gate.to(dtype).to(tl.float32)  # the projections round to the dtype, as F.linear
    up = up.to(dtype).to(tl.float32)
    if ACT == 3:  # GPT-OSS's clamped GLU
        gate = tl.minimum(gate, limit)
        act = (gate / (1.0 + tl.exp(-alpha * gate))).to(dtype).to(tl.float32)
        up = (tl.minimum(tl.maximum(up, -limit), limit) + 1.0).to(dtype).to(tl.float32)
    else:
        act = _activation(gate, ACT).to(dtype).to(tl.float32)
    tl.store(a_ptr + pair * inter + offs_n, (act * up).to(dtype), mask=n_valid)


@triton.jit
def _moe_down_kernel(a_ptr, w_ptr, b_ptr, ids_ptr, p_ptr, y_ptr, H, inter, stride_we, stride_wn, stride_be,
                     TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    token = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < H
    offs_c = tl.arange(0, BLOCK_K)
    total = tl.zeros([BLOCK_N], tl.float32)
    for choice in tl.static_range(TOP_K):
        pair = token * TOP_K + choice
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        rows = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            offs_k = k0 + offs_c
            k_valid = offs_k < inter
            a = tl.load(a_ptr + pair * inter + offs_k, mask=k_valid, other=0.0).to(tl.float32)
            w = tl.load(rows + offs_k[None, :], mask=n_valid[:, None] & k_valid[None, :], other=0.0)
            acc += w.to(tl.float32) * a[None, :]
        out = tl.sum(acc, axis=1)
        if HAS_BIAS:
            out += tl.load(b_ptr + expert * stride_be + offs_n, mask=n_valid, other=0.0).to(tl.float32)
        total += tl.load(p_ptr + pair).to(tl.float32) * out
    tl.store(y_ptr + token * H + offs_n, total.to(y_ptr.dtype.element_ty), mask=n_valid)


def _tiles(device: torch.device, N: int, K: int, programs_per_n: int) -> dict[str, int]:
    """BLOCK_N, BLOCK_K and warps: as kernels/decode_gemv.py's, about two programs per SM over the whole grid
    (programs_per_n of them share each block of features: the pairs or tokens) and about 8k weight values a chunk.
    The interpreter: small tiles."""
    if device.type != "cuda":
        return {"BLOCK_N": min(16, triton.next_power_of_2(N)), "BLOCK_K": min(64, triton.next_power_of_2(K)),
                "num_warps": 4}
    sms = multiprocessor_count(device)
    target = max(N * programs_per_n // (2 * sms), 1)
    block_n = min(64, max(4, 1 << target.bit_length() - 1))
    block_k = min(max(64, 8192 // block_n), 1024, max(64, triton.next_power_of_2(K)))
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": 4}


def moe_gate_up_fwd(x: torch.Tensor, gate_up: torch.Tensor, ids: torch.Tensor, activation: str,
                    bias: torch.Tensor | None = None, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """x [R, H] (unit stride along H), gate_up [E, 2I, H] (unit stride along H), ids [R, k] int (each in [0, E); the
    caller checks), bias [E, 2I] or None -> act(gate) * up [R * k, I] in x's dtype, row r * k + j for token r's
    j-th expert (activation "gpt_oss": the clamped GLU with alpha and limit)."""
    R, H = x.shape
    top_k, inter = ids.shape[1], gate_up.shape[1] // 2
    out = memory.empty((R * top_k, inter), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    ids = ids.contiguous()
    bias = None if bias is None else bias.contiguous()
    cfg = _tiles(x.device, inter, H, R * top_k)
    _moe_gate_up_kernel[(triton.cdiv(inter, cfg["BLOCK_N"]), R * top_k)](
        x, gate_up, gate_up if bias is None else bias, ids, out, inter, H, x.stride(0), gate_up.stride(0),
        gate_up.stride(1), 0 if bias is None else bias.stride(0), float(alpha), float(limit), TOP_K=top_k,
        ACT=ACTIVATIONS.index(activation), HAS_BIAS=bias is not None, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"])
    return out


def moe_down_fwd(a: torch.Tensor, down: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """a [R * k, I] contiguous (moe_gate_up_fwd's), down [E, H, I] (unit stride along I), ids [R, k], weights [R, k]
    (any float dtype), bias [E, H] or None -> sum_j weights[r, j] * (a[r * k + j] @ down[ids[r, j]]^T + bias[ids[r,
    j]]), [R, H] in a's dtype."""
    R, top_k = ids.shape
    H, inter = down.shape[1], down.shape[2]
    out = memory.empty((R, H), dtype=a.dtype, device=a.device)
    if out.numel() == 0:
        return out
    if top_k == 0 or (inter == 0 and bias is None):
        return out.zero_()
    ids, weights = ids.contiguous(), weights.contiguous()
    bias = None if bias is None else bias.contiguous()
    cfg = _tiles(a.device, H, max(inter, 1), R)
    _moe_down_kernel[(triton.cdiv(H, cfg["BLOCK_N"]), R)](
        a, down, down if bias is None else bias, ids, weights, out, H, inter, down.stride(0), down.stride(1),
        0 if bias is None else bias.stride(0), TOP_K=top_k, HAS_BIAS=bias is not None, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"])
    return out


def moe_experts_fwd(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, ids: torch.Tensor,
                    weights: torch.Tensor, activation: str, gate_up_bias: torch.Tensor | None = None,
                    down_bias: torch.Tensor | None = None, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """The two kernels: x [R, H] -> [R, H] (see genai_fast.ops.moe.moe_experts)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    a = moe_gate_up_fwd(x, gate_up, ids, activation, gate_up_bias, alpha, limit)
    return moe_down_fwd(a, down, ids, weights, down_bias)
