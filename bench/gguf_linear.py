"""Benchmark entry: the decode linear layer over GGUF blocks (genai_fast.gguf_linear) against
torch.nn.functional.linear (BLAS) over the fp32 weights the blocks expand to, which is what transformers'
GGUF loader leaves a model with. CPU only. Bytes and GB/s count the blocks (the kernel's traffic); the
reference reads 32 / 5 (Q4_1) or 32 / 8.5 (Q8_0) times more."""

from __future__ import annotations

import torch
from genai_fast.bench.linear import flops, oracle, torch_linear  # the same matrix product, fp32 weights
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast
from genai_fast.ops.gguf_linear import BLOCK_FORMATS, gguf_dequantize


def _case(rows: int, k: int, n: int, block_type: str, what: str) -> Case:
    return Case({"rows": rows, "k": k, "n": n, "block_type": block_type}, torch.float32,
                f"{rows}x{k} @ {block_type} {n}x{k}^T {what}")


# SmolLM2-135M's decode shapes: the Q8_0 tied LM head, the Q4_1 fused gate/up and down projections.
PRESETS = {
    "quick": {"cpu": [_case(1, 576, 49152, "Q8_0", "lm head"), _case(8, 576, 49152, "Q8_0", "lm head"),
                      _case(1, 576, 3072, "Q4_1", "gate/up"), _case(1, 1536, 576, "Q4_1", "down")]},
    "full": {"cpu": [_case(rows, 576, 49152, "Q8_0", "lm head") for rows in (1, 2, 4, 8, 16)]
             + [_case(rows, 576, 3072, "Q4_1", "gate/up") for rows in (1, 8)]
             + [_case(rows, 1536, 576, "Q4_1", "down") for rows in (1, 8)]},
}


def _random_blocks(n: int, k: int, block_type: str, device: torch.device) -> torch.Tensor:
    """Random quants with fp16 scales near 0.02 (and minimums near -0.1 for Q4_1)."""
    fmt = BLOCK_FORMATS[block_type]
    blocks = torch.randint(0, 256, (n, k // 32, fmt.block_bytes), dtype=torch.uint8)
    blocks[..., 0:2] = (torch.randn(n, k // 32, 1) * 0.02).half().view(torch.uint8)
    if block_type == "Q4_1":
        blocks[..., 2:4] = (torch.randn(n, k // 32, 1) * 0.05 - 0.1).half().view(torch.uint8)
    return blocks.reshape(n, -1).to(device)


def make_inputs(case: Case, device: torch.device) -> Inputs:
    p = case.params
    blocks = _random_blocks(p["n"], p["k"], p["block_type"], device)
    return {"x": torch.randn(p["rows"], p["k"], device=device), "blocks": blocks, "block_type": p["block_type"],
            "weight": gguf_dequantize(blocks.cpu(), p["block_type"]).to(device)}


def run(inputs: Inputs, backend: str) -> torch.Tensor:
    return genai_fast.gguf_linear(inputs["x"], inputs["blocks"], inputs["block_type"], backend=backend)


def bytes_moved(case: Case) -> float:
    p = case.params
    blocks = p["n"] * p["k"] // 32 * BLOCK_FORMATS[p["block_type"]].block_bytes
    return blocks + 4.0 * p["rows"] * (p["k"] + p["n"])


ENTRY = register(BenchEntry(
    op="gguf_linear",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"torch F.linear on the expanded fp32 weights (BLAS)": torch_linear},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="memory",
))
