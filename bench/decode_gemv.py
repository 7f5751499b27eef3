"""Benchmark entry "decode_gemv": the LLM decode step's batch-1 projections with the small ops before them folded
in (kernels/decode_gemv.py), against those ops run separately as the unfused step runs them on a GPU.

- kind "norm_linear": h + delta, RMSNorm, then the projection (QKV, gate/up, the LM head); the reference is
  torch's add, HF's RMSNorm formula and F.linear (cuBLAS).
- kind "swiglu_linear": silu(gate) * up, then the down projection; the reference is F.silu, the product and
  F.linear.

Shapes: SmolLM2-135M's (the model of issue 5's targets) and Llama-3.2-1B's (the bandwidth run). GPU only: the
kernels are the GPU decode step's (the Triton interpreter on a CPU would time numpy). Bytes: the weights, the
row's inputs and outputs, each once. The kernels are not a dispatched op of the package, so this module defines
the entry "decode_gemv" with one implementation, "triton".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

from genai_fast.backends.dispatch import Capability, define_op

EPS = 1e-5
DECODE_GEMV = define_op("decode_gemv")


@DECODE_GEMV.register("triton", Capability(devices=("cuda",), dtypes=(torch.float16, torch.bfloat16, torch.float32),
                                           features=("RMSNorm (and the residual add) or SwiGLU folded into a "
                                                     "batch-1 matrix-vector product",)))
def _run_triton(inputs: Inputs) -> torch.Tensor:
    from genai_fast.kernels.decode_gemv import norm_linear_fwd, swiglu_linear_fwd

    if inputs["kind"] == "norm_linear":
        return norm_linear_fwd(inputs["h"], inputs["delta"], inputs["norm_weight"], EPS, inputs["weight"])[1]
    return swiglu_linear_fwd(inputs["gate_up"], inputs["weight"])


def _case(kind: str, K: int, N: int, model: str) -> Case:
    return Case({"kind": kind, "K": K, "N": N}, torch.bfloat16, f"{model} {kind} 1x{K} -> {N}")


PRESETS = {
    "quick": {"cuda": [_case("norm_linear", 576, 3072, "smollm2 gate/up"), _case("swiglu_linear", 1536, 576,
                                                                                "smollm2 down")]},
    # The budget runs cases round-robin across ops and cuts each op's tail: the bandwidth-bound shapes first.
    "full": {"cuda": [
        _case("norm_linear", 2048, 16384, "llama1b gate/up"),
        _case("norm_linear", 576, 49152, "smollm2 lm head"),
        _case("swiglu_linear", 8192, 2048, "llama1b down"),
        _case("norm_linear", 576, 3072, "smollm2 gate/up"),
        _case("swiglu_linear", 1536, 576, "smollm2 down"),
        _case("norm_linear", 576, 960, "smollm2 qkv"),
        _case("norm_linear", 2048, 3072, "llama1b qkv"),
    ]},
}


def make_inputs(case: Case, device: torch.device) -> Inputs:
    p, dtype = case.params, case.dtype
    g = torch.Generator().manual_seed(p["K"] * 7 + p["N"])
    K, N = p["K"], p["N"]
    inputs: Inputs = {"kind": p["kind"],
                      "weight": (torch.randn(N, K, generator=g) / K ** 0.5).to(device=device, dtype=dtype)}
    if p["kind"] == "norm_linear":
        inputs["h"] = (torch.randn(1, K, generator=g) * 2).to(device=device, dtype=dtype)
        inputs["delta"] = torch.randn(1, K, generator=g).to(device=device, dtype=dtype)
        inputs["norm_weight"] = (1 + 0.2 * torch.randn(K, generator=g)).to(device=device, dtype=dtype)
    else:
        inputs["gate_up"] = (torch.randn(1, 2 * K, generator=g) * 3).to(device=device, dtype=dtype)
    return inputs


def run(inputs: Inputs, backend: str | None) -> torch.Tensor:
    impl = DECODE_GEMV.select({"device": inputs["weight"].device, "dtype": inputs["weight"].dtype}, backend)
    return impl.run(inputs)


def _separate_ops(inputs: Inputs, weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The unfused step's ops (in `dtype` when given: the oracle's float64)."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    if inputs["kind"] == "norm_linear":
        total = cast(inputs["h"]) + cast(inputs["delta"])
        x = total.float() if total.dtype != torch.float64 else total
        normed = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)).to(total.dtype)
        return F.linear(cast(inputs["norm_weight"]) * normed, weight)
    gate, up = cast(inputs["gate_up"]).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, weight)


def separate_ops(inputs: Inputs) -> torch.Tensor:
    return _separate_ops(inputs, inputs["weight"])


def oracle(inputs: Inputs) -> torch.Tensor:
    cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return _separate_ops(cpu, cpu["weight"].double(), torch.float64)


def flops(case: Case) -> float:
    return 2.0 * case.params["K"] * case.params["N"]


def bytes_moved(case: Case) -> float:
    p = case.params
    inputs = 2 * p["K"] if p["kind"] == "swiglu_linear" else 3 * p["K"]  # gate+up, or h, delta, norm weight
    outputs = p["N"] if p["kind"] == "swiglu_linear" else p["K"] + p["N"]  # norm_linear also writes h + delta
    element = torch.empty((), dtype=case.dtype).element_size()
    return float(element * (p["K"] * p["N"] + inputs + outputs))


ENTRY = register(BenchEntry(
    op="decode_gemv",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"separate ops (add + RMSNorm or SiLU * up, then F.linear on cuBLAS)": separate_ops},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="memory",
))
