"""Benchmark entry: the linear layer against torch.nn.functional.linear (BLAS): decode rows (a few rows against a
large weight matrix) and GEMM-sized products (oneDNN or BLAS). CPU only: on a GPU genai_fast.linear is cuBLAS
itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast


def _case(rows: int, k: int, n: int, what: str) -> Case:
    return Case({"rows": rows, "k": k, "n": n}, torch.float32, f"{rows}x{k} @ {n}x{k}^T {what}")


# SmolLM2-135M's decode shapes: the tied LM head and the fused gate/up projection, at batch 1 and 8. Then GEMM-sized
# products, where automatic dispatch times oneDNN against BLAS: an 87-token prefill's gate/up projection and an
# SD-sized attention projection (1024 positions, 320 -> 1280).
GEMM_CASES = [_case(87, 576, 3072, "prefill gate/up"), _case(1024, 320, 1280, "SD projection")]
PRESETS = {
    "quick": {"cpu": [_case(1, 576, 49152, "lm head"), _case(8, 576, 49152, "lm head"),
                      _case(1, 576, 3072, "gate/up"), _case(8, 576, 3072, "gate/up"), GEMM_CASES[0]]},
    "full": {"cpu": [_case(rows, 576, 49152, "lm head") for rows in (1, 2, 4, 8, 16)]
             + [_case(rows, 576, 3072, "gate/up") for rows in (1, 8)] + GEMM_CASES},
}


def make_inputs(case: Case, device: torch.device) -> Inputs:
    p = case.params
    return {"x": torch.randn(p["rows"], p["k"], device=device), "weight": torch.randn(p["n"], p["k"], device=device)}


def run(inputs: Inputs, backend: str) -> torch.Tensor:
    return genai_fast.linear(inputs["x"], inputs["weight"], backend=backend)


def torch_linear(inputs: Inputs) -> torch.Tensor:
    return F.linear(inputs["x"], inputs["weight"])


def oracle(inputs: Inputs) -> torch.Tensor:
    return F.linear(inputs["x"].double().cpu(), inputs["weight"].double().cpu())


def flops(case: Case) -> float:
    p = case.params
    return 2.0 * p["rows"] * p["k"] * p["n"]


def bound(case: Case) -> str:
    """Decode rows read a weight matrix for a few rows each: memory bound. The GEMM-sized products do ~100 FLOPs
    per byte: against the copy bandwidth their "% of peak" would read a few percent at the machine's matmul rate."""
    return "compute" if case in GEMM_CASES else "memory"


def bytes_moved(case: Case) -> float:
    p = case.params
    return 4.0 * (p["n"] * p["k"] + p["rows"] * (p["k"] + p["n"]))  # the weights dominate


ENTRY = register(BenchEntry(
    op="linear",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"torch F.linear (BLAS)": torch_linear},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound=bound,
))
