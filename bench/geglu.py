"""Benchmark entry: GEGLU (value * GELU(gate) over the halves of a projection's output) against diffusers'
own two ops, F.gelu on the gate view then the product (eager)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast


def _case(tokens: int, H: int, dtype: torch.dtype, batch: int = 2) -> Case:
    return Case({"shape": (batch, tokens, 2 * H)}, dtype, f"{batch}x{tokens}x{2 * H}")


# SD1.5's feed-forwards (CFG batch 2): 4096 tokens x 1280, 1024 x 2560, 256 x 5120 (H = 4 x the channels);
# on the CPU also the tiny U-Net's (64 tokens x 256).
PRESETS = {
    "quick": {
        "cpu": [_case(64, 256, torch.float32), _case(1024, 2560, torch.float32)],
        "cuda": [_case(4096, 1280, torch.float16)],
    },
    "full": {
        "cpu": [_case(64, 256, torch.float32), _case(1024, 2560, torch.float32), _case(4096, 1280, torch.float32)],
        "cuda": [_case(t, h, torch.float16) for t, h in ((4096, 1280), (1024, 2560), (256, 5120))]
        + [_case(4096, 1280, torch.bfloat16), _case(4096, 1280, torch.float32)],
    },
}


def make_inputs(case: Case, device: torch.device) -> Inputs:
    return {"x": torch.randn(case.params["shape"], device=device).to(case.dtype)}


def run(inputs: Inputs, backend: str) -> torch.Tensor:
    return genai_fast.geglu(inputs["x"], backend=backend)


def diffusers_eager(inputs: Inputs) -> torch.Tensor:
    hidden, gate = inputs["x"].chunk(2, dim=-1)
    return hidden * F.gelu(gate)


def oracle(inputs: Inputs) -> torch.Tensor:
    return genai_fast.geglu_reference(inputs["x"].double().cpu())


def flops(case: Case) -> float:
    return 20.0 * math.prod(case.params["shape"]) / 2  # erf, GELU and the product: ~20 per output


def bytes_moved(case: Case) -> float:
    element = torch.empty((), dtype=case.dtype).element_size()
    return 1.5 * math.prod(case.params["shape"]) * element  # read both halves once, write one half


ENTRY = register(BenchEntry(
    op="geglu",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"diffusers GEGLU after its projection: F.gelu(gate) * value (eager)": diffusers_eager},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="memory",
))
