"""Benchmark entry "moe_experts": a MoE layer's routed experts at decode sizes (genai_fast.moe_experts' Triton kernels,
which read the expert ids on the device) against transformers' loop over the experts a batch hits (its ids read on
the host) and against gathering the chosen experts' weights for batched matrix products (device-side, as a CUDA graph
could capture, but copying the weights first).

Shapes: Qwen3-30B-A3B's experts (H 2048, I 768, 128 experts, 8 per token), Qwen2-57B-A14B-like (H 3584, I 2560,
64 experts, 8 per token), Mixtral-8x7B's (H 4096, I 14336, 8 experts, 2 per token) and GPT-OSS-20B's (H 2880,
I 2880, 32 experts, 4 per token, with biases and its clamped GLU), at batch 1 where a decode step reads exactly its
k experts. GPU only: on a CPU the op's backend is the reference itself. Bytes: the k experts'
weights (3 H I each), the token and the output, once.
"""

from __future__ import annotations

import torch
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast
from genai_fast.ops.moe import gathered_experts, glu_for


def _case(H: int, inter: int, experts: int, top_k: int, model: str, dtype: torch.dtype = torch.bfloat16,
          gpt_oss: bool = False) -> Case:
    return Case({"H": H, "I": inter, "E": experts, "k": top_k, "gpt_oss": gpt_oss}, dtype,
                f"{model} 1x{H} E{experts} k{top_k} I{inter}")


PRESETS = {
    "quick": {"cuda": [_case(2048, 768, 128, 8, "qwen3-30b-a3b")]},
    "full": {"cuda": [
        _case(4096, 14336, 8, 2, "mixtral-8x7b"),
        _case(2048, 768, 128, 8, "qwen3-30b-a3b"),
        _case(3584, 2560, 64, 8, "qwen2-57b-a14b"),
        _case(2880, 2880, 32, 4, "gpt-oss-20b", gpt_oss=True),
        _case(2048, 768, 128, 8, "qwen3-30b-a3b", torch.float16),
    ]},
}


def make_inputs(case: Case, device: torch.device) -> Inputs:
    p = case.params
    g = torch.Generator().manual_seed(p["H"] + p["E"])
    H, inter, E = p["H"], p["I"], p["E"]
    weights, ids = torch.randn(1, E, generator=g).softmax(-1).topk(p["k"], dim=-1)
    inputs: Inputs = {
        "x": torch.randn(1, H, generator=g).to(device=device, dtype=case.dtype),
        "gate_up": (torch.randn(E, 2 * inter, H, generator=g) / H ** 0.5).to(device=device, dtype=case.dtype),
        "down": (torch.randn(E, H, inter, generator=g) / inter ** 0.5).to(device=device, dtype=case.dtype),
        "ids": ids.to(device), "weights": weights.to(device), "activation": "silu", "biases": (None, None)}
    if p.get("gpt_oss"):
        inputs["activation"] = "gpt_oss"
        inputs["biases"] = tuple((torch.randn(E, n, generator=g) * 0.1).to(device=device, dtype=case.dtype)
                                 for n in (2 * inter, H))
    return inputs


def _args(inputs: Inputs) -> tuple:
    return inputs["x"], inputs["gate_up"], inputs["down"], inputs["ids"], inputs["weights"], inputs["activation"]


def run(inputs: Inputs, backend: str | None) -> torch.Tensor:
    gate_up_bias, down_bias = inputs["biases"]
    return genai_fast.moe_experts(*_args(inputs), gate_up_bias=gate_up_bias, down_bias=down_bias, backend=backend)


def transformers_loop(inputs: Inputs) -> torch.Tensor:
    return genai_fast.moe_experts_reference(*_args(inputs), *inputs["biases"])


def gathered_bmm(inputs: Inputs) -> torch.Tensor:
    """The chosen experts' weights gathered ([R * k, 2I, H] and [R * k, H, I] copies), then batched products."""
    biases = None if inputs["biases"][0] is None else inputs["biases"]
    return gathered_experts(inputs["x"], inputs["gate_up"], inputs["down"], inputs["ids"], inputs["weights"],
                            glu_for(inputs["activation"]), biases)


def oracle(inputs: Inputs) -> torch.Tensor:
    biases = [None if b is None else b.cpu().double() for b in inputs["biases"]]
    return genai_fast.moe_experts_reference(*(inputs[k].cpu().double() for k in ("x", "gate_up", "down")),
                                            inputs["ids"].cpu(), inputs["weights"].cpu().double(),
                                            inputs["activation"], *biases)


def flops(case: Case) -> float:
    p = case.params
    return 2.0 * 3 * p["H"] * p["I"] * p["k"]


def bytes_moved(case: Case) -> float:
    p = case.params
    element = torch.empty((), dtype=case.dtype).element_size()
    biases = p["k"] * (2 * p["I"] + p["H"]) if p.get("gpt_oss") else 0  # the k experts' gate/up and down biases
    return float(element * (3 * p["H"] * p["I"] * p["k"] + biases + 2 * p["H"]))


ENTRY = register(BenchEntry(
    op="moe_experts",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"transformers' loop over the experts hit (ids read on the host)": transformers_loop,
                "gathered expert weights + torch.bmm (device-side)": gathered_bmm},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="memory",
))
