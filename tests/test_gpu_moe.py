"""genai_fast.moe_experts and the MoE models of genai_fast.llm on CUDA: the Triton experts in bf16/fp16 against the
float64 reference, captured in a CUDA graph with device-side ids, and Mixtral/Qwen-MoE greedy tokens equal to HF's
with and without the engine's decode graph. Skipped on machines without a GPU (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.dispatch import OPS
from genai_fast.testing import assert_matches_oracle

pytestmark = pytest.mark.gpu


def _inputs(rows, H, inter, E, k, dtype):
    g = torch.Generator().manual_seed(rows * 7 + H)
    x = torch.randn(rows, H, generator=g).to(dtype)
    gate_up = (torch.randn(E, 2 * inter, H, generator=g) / H ** 0.5).to(dtype)
    down = (torch.randn(E, H, inter, generator=g) / inter ** 0.5).to(dtype)
    weights, ids = torch.randn(rows, E, generator=g).softmax(-1).topk(k, dim=-1)
    return x, gate_up, down, ids, weights


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(1, 4096, 1408, 64, 6), (1, 2048, 768, 128, 8), (8, 1024, 352, 8, 2),
                                   (3, 200, 77, 5, 2)], ids=str)
def test_triton_experts_match_float64(shape, dtype):
    """Qwen2-MoE's and Qwen3-MoE-30B's expert shapes at batch 1, Mixtral-like routing at batch 8, odd sizes."""
    x, gate_up, down, ids, weights = _inputs(*shape, dtype)
    with memory.poison_outputs():
        out = genai_fast.moe_experts(x.cuda(), gate_up.cuda(), down.cuda(), ids.cuda(), weights.cuda(),
                                     backend="triton")
    assert OPS["moe_experts"].last_backend == "triton"
    oracle = genai_fast.moe_experts_reference(x.double(), gate_up.double(), down.double(), ids, weights.double())
    baseline = genai_fast.moe_experts_reference(x.cuda(), gate_up.cuda(), down.cuda(), ids.cuda(), weights.cuda())
    assert_matches_oracle(out.cpu(), oracle, baseline.cpu(), what=f"moe_experts[triton] {shape}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_triton_gpt_oss_experts_match_float64(dtype):
    """GPT-OSS-20B's expert shapes (H 2880, I 2880, 32 experts, 4 per token) with biases and the clamped GLU."""
    x, gate_up, down, ids, weights = _inputs(1, 2880, 2880, 32, 4, dtype)
    g = torch.Generator().manual_seed(1)
    biases = (torch.randn(32, 5760, generator=g).to(dtype), torch.randn(32, 2880, generator=g).to(dtype))
    cuda = [t.cuda() for t in (x, gate_up, down, ids, weights)]
    with memory.poison_outputs():
        out = genai_fast.moe_experts(*cuda, "gpt_oss", gate_up_bias=biases[0].cuda(), down_bias=biases[1].cuda(),
                                     backend="triton")
    oracle = genai_fast.moe_experts_reference(x.double(), gate_up.double(), down.double(), ids, weights.double(),
                                              "gpt_oss", biases[0].double(), biases[1].double())
    baseline = genai_fast.moe_experts_reference(*cuda, "gpt_oss", biases[0].cuda(), biases[1].cuda())
    assert_matches_oracle(out.cpu(), oracle, baseline.cpu(), what="moe_experts[triton] gpt-oss")


def test_resolved_experts_replay_in_a_cuda_graph():
    """Routing and experts captured once; replays with new tokens route them afresh (no host read of the ids)."""
    from genai_fast.ops.moe import resolve_moe_experts

    kernel = resolve_moe_experts(torch.device("cuda"), torch.bfloat16)
    assert kernel is not None
    x, gate_up, down, _, _ = (t.cuda() for t in _inputs(2, 256, 128, 16, 4, torch.bfloat16))
    router = torch.randn(16, 256, device="cuda", dtype=torch.bfloat16)

    def layer(rows):
        weights, ids = torch.softmax(rows @ router.t(), -1, dtype=torch.float32).topk(4, dim=-1)
        return kernel(rows, gate_up, down, ids, weights, "silu")

    static = x.clone()
    layer(static)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(static)
    for seed in range(3):
        fresh = torch.randn(2, 256, generator=torch.Generator().manual_seed(seed)).to("cuda", torch.bfloat16)
        static.copy_(fresh)
        graph.replay()
        weights, ids = torch.softmax(fresh @ router.t(), -1, dtype=torch.float32).topk(4, dim=-1)
        want = genai_fast.moe_experts_reference(fresh, gate_up, down, ids, weights)
        torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("graph", [True, False], ids=["cuda-graph", "eager"])
@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "gpt_oss", "glm4_moe",
                                  "deepseek_v3"])
def test_moe_greedy_matches_hf_on_cuda(kind, graph):
    """fp32 on the GPU: the engine (Triton experts at decode, grouped experts at prefill) against HF's argmax."""
    from genai_fast.llm import load
    from tests.llm_cases import tiny_moe

    hf = tiny_moe(kind, max_position_embeddings=128).cuda()
    engine = load(hf, max_seq_len=128, cuda_graph=graph)
    engine.eos_ids = set()
    for prompt in ([1, 5, 9, 33, 70], [7]):
        x = torch.tensor([prompt], device="cuda")
        with torch.no_grad():
            for _ in range(24):
                x = torch.cat([x, hf(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert engine.generate(prompt, 24).ids == x[0, len(prompt):].tolist()
