"""Benchmark entry: RMSNorm (Llama's, HF's arithmetic) against HF's LlamaRMSNorm formula in eager torch (cast,
square, mean, rsqrt, scale, cast back, weight) and torch's own F.rms_norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast

EPS = 1e-5


def _case(rows: int, D: int, dtype: torch.dtype) -> Case:
    return Case({"rows": rows, "D": D}, dtype, f"{rows}x{D}")


# Decode rows (batch 1 and 8) at SmolLM2's width and Llama-8B's, and a prefill's 4096 tokens.
PRESETS = {
    "quick": {
        "cpu": [_case(1, 576, torch.float32), _case(8, 576, torch.float32)],
        "cuda": [_case(1, 576, torch.bfloat16), _case(4096, 4096, torch.bfloat16)],
    },
    "full": {
        "cpu": [_case(1, 576, torch.float32), _case(8, 576, torch.float32), _case(512, 2048, torch.float32)],
        "cuda": [_case(1, 576, torch.bfloat16), _case(8, 4096, torch.bfloat16), _case(4096, 4096, torch.bfloat16),
                 _case(4096, 4096, torch.float32)],
    },
}


def make_inputs(case: Case, device: torch.device) -> Inputs:
    p = case.params
    return {"x": torch.randn(p["rows"], p["D"], device=device).to(case.dtype),
            "weight": torch.randn(p["D"], device=device).to(case.dtype)}


def run(inputs: Inputs, backend: str) -> torch.Tensor:
    return genai_fast.rms_norm(inputs["x"], inputs["weight"], EPS, backend=backend)


def hf_eager(inputs: Inputs) -> torch.Tensor:
    x = inputs["x"]
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    return inputs["weight"] * h.to(x.dtype)


def torch_rms_norm(inputs: Inputs) -> torch.Tensor:
    return F.rms_norm(inputs["x"], inputs["weight"].shape, inputs["weight"], EPS)


def oracle(inputs: Inputs) -> torch.Tensor:
    return genai_fast.rms_norm_reference(inputs["x"].double().cpu(), inputs["weight"].double().cpu(), EPS)


def flops(case: Case) -> float:
    return 4.0 * case.params["rows"] * case.params["D"]  # square, sum, scale, weight


def bytes_moved(case: Case) -> float:
    element = torch.empty((), dtype=case.dtype).element_size()
    p = case.params
    return (2 * p["rows"] + 1) * p["D"] * element  # x read, out written, the weight once


ENTRY = register(BenchEntry(
    op="rms_norm",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"HF LlamaRMSNorm formula (eager)": hf_eager, "torch F.rms_norm": torch_rms_norm},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="memory",
))
