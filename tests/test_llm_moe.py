"""genai_fast.llm on mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE, GPT-OSS,
GLM-4.5): greedy tokens and logits equal to transformers', the router's details each doing something, batches equal
to one-by-one generation, extend and speculative decoding, checkpoint directories, bandwidth accounting and bad
configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import load  # noqa: E402
from genai_fast.llm.moe import DeepSeekRouting, SparseMoe  # noqa: E402
from tests.llm_cases import MOE_KINDS, hf_greedy, tiny_moe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)
PROMPTS = ([1, 5, 9, 33, 70], [7])


@pytest.mark.parametrize("kind", [*MOE_KINDS, "gpt_oss"])
def test_greedy_tokens_equal_hf(kind):
    hf = tiny_moe(kind)
    engine = load(hf, max_seq_len=96)
    assert any(layer.moe is not None for layer in engine.model.layers)
    for prompt in PROMPTS:
        want = hf_greedy(hf, prompt, 40)
        assert len(set(want)) > 5  # a model that repeats one token would test little
        assert engine.generate(prompt, 40).ids == want


@pytest.mark.parametrize("kind", [*MOE_KINDS, "gpt_oss"])
def test_padded_batch_logits_equal_hf(kind):
    """Every position's logits of a right-padded batch of two prompts against HF's per-prompt forward."""
    hf = tiny_moe(kind)
    model = load(hf, max_seq_len=96).model
    ids = torch.randint(3, 128, (2, 23), generator=torch.Generator().manual_seed(1))
    lengths = [23, 14]
    model.allocate_cache(2, 96)
    got = model.prefill(ids, torch.tensor(lengths) - 1, all_logits=True)
    for row, n in enumerate(lengths):
        with torch.no_grad():
            want = hf(ids[row:row + 1, :n]).logits[0]
        torch.testing.assert_close(got[row, :n], want, rtol=1e-4, atol=1e-4)


def _ablations(kind: str):
    """What each architecture's router adds to the plain one, switched off one at a time."""
    if kind == "mixtral":
        return {"renormalise": {"renormalise": False}, "top-1": {"top_k": 1}}
    if kind == "qwen2_moe":
        return {"renormalise": {"renormalise": True}, "shared expert": {"shared_gate_up": None},
                "shared expert's gate": {"shared_gate": None}}
    if kind == "olmoe":
        return {"renormalise": {"renormalise": True}}
    if kind == "granitemoe":
        return {"softmax after top-k": {"softmax_after_topk": False}}
    if kind == "granitemoeshared":
        return {"shared MLP": {"shared_gate_up": None}}
    if kind == "deepseek_v2":
        routing = DeepSeekRouting(sigmoid=False, n_group=4, topk_group=1, group_limited=True, renormalise=False,
                                  scale=1.5)
        return {"routed scale": {"deepseek": dataclasses.replace(routing, scale=1.0)},
                "groups": {"deepseek": dataclasses.replace(routing, group_limited=False)},
                "shared expert": {"shared_gate_up": None}}
    if kind in ("glm4_moe", "dots1", "deepseek_v3", "glm4_moe_lite"):
        routing = DeepSeekRouting(sigmoid=True, n_group=4, topk_group=2, group_limited=True, renormalise=True,
                                  scale=2.5)
        if kind == "glm4_moe_lite":  # its config's defaults: renormalised, scaled by 1.8, 1 of 2 groups
            routing = dataclasses.replace(routing, n_group=2, topk_group=1, scale=1.8)
        return {"correction bias": {"correction_bias": None}, "shared expert": {"shared_gate_up": None},
                "routed scale": {"deepseek": dataclasses.replace(routing, scale=1.0)},
                "groups": {"deepseek": dataclasses.replace(routing, n_group=1, topk_group=1)},
                "renormalise": {"deepseek": dataclasses.replace(routing, renormalise=False)},
                "softmax scores": {"deepseek": dataclasses.replace(routing, sigmoid=False, group_limited=False)}}
    if kind == "gpt_oss":
        return {"router bias": {"router_bias": None}, "experts' biases": {"gate_up_bias": None, "down_bias": None},
                "plain SwiGLU": {"clamped_glu": None, "glu": lambda h: torch.nn.functional.silu(h.chunk(2, -1)[0])
                                 * h.chunk(2, -1)[1]}}
    return {"renormalise": {"renormalise": False}, "top-1": {"top_k": 1}}


@pytest.mark.parametrize("kind", [*MOE_KINDS, "gpt_oss"])
def test_each_router_detail_changes_the_logits(kind):
    """Guards the parity tests: with any one of the router's details changed, the logits leave HF's."""
    hf = tiny_moe(kind)
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 11]])
    with torch.no_grad():
        want = hf(ids).logits
    for name, change in _ablations(kind).items():
        engine = load(hf, max_seq_len=96)
        for layer in engine.model.layers:
            if layer.moe is not None:
                for attr, value in change.items():
                    setattr(layer.moe, attr, value)
        engine.model.allocate_cache(1, 96)
        got = engine.model(ids, last_only=False)
        assert (got - want).abs().max() > 1e-3, name


def test_gpt_oss_sinks_and_sliding_layers():
    """GPT-OSS: the sinks change the logits (the parity tests guard them), its sliding layers keep rings past the
    window by default, and every step of a decode past the window gives HF's logits."""
    hf = tiny_moe("gpt_oss")
    engine = load(hf, max_seq_len=96)
    model = engine.model
    assert [layer.window for layer in model.layers] == [6, None]
    assert all(layer.sinks is not None for layer in model.layers)
    ids = torch.randint(3, 128, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf(ids).logits[0]
    model.allocate_cache(1, 96)
    assert model.layers[0].ring and not model.layers[1].ring
    got = [model.prefill(ids[:, :8])[0]]
    for position in range(8, 19):
        got.append(model.decode(ids[:, position:position + 1], torch.tensor([position], dtype=torch.int32),
                                [position])[0])
    torch.testing.assert_close(torch.stack(got), want[7:19], rtol=1e-4, atol=1e-4)
    for layer in model.layers:
        layer.sinks = None
    model.allocate_cache(1, 96)
    assert (model(ids, last_only=False)[0] - want).abs().max() > 1e-3


def test_olmoe_norms_span_all_heads_and_clip():
    """OLMoE's q/k norms over all heads and its clip_qkv each change the logits (the parity tests guard both)."""
    hf = tiny_moe("olmoe")
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 11]])
    with torch.no_grad():
        want = hf(ids).logits
    for change in ({"clip_qkv": None}, {"q_norm": None}):
        engine = load(hf, max_seq_len=96)
        for layer in engine.model.layers:
            for attr, value in change.items():
                setattr(layer, attr, value)
        engine.model.allocate_cache(1, 96)
        assert (engine.model(ids, last_only=False) - want).abs().max() > 1e-3, change


def test_dense_layers_of_a_moe_model_stay_dense():
    """Qwen3-MoE's mlp_only_layers: layer 1 is a dense SwiGLU MLP."""
    model = load(tiny_moe("qwen3_moe"), max_seq_len=96).model
    assert model.layers[0].moe is not None and model.layers[0].mlp_in is None
    assert model.layers[1].moe is None and model.layers[1].mlp_in is not None


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_batch_equals_one_by_one(kind):
    engine = load(tiny_moe(kind), max_seq_len=96)
    prompts = [[1, 5, 9, 33, 70], [7], [4, 4, 90, 12, 3, 3, 8, 100, 41]]
    batch = engine.generate(prompts, 24)
    assert [r.ids for r in batch] == [engine.generate(p, 24).ids for p in prompts]


@pytest.mark.parametrize("kind", [*MOE_KINDS, "gpt_oss"])
def test_extend_and_prompt_lookup_give_hf_tokens(kind):
    """extend() over several tokens (the routed experts of each row) equals HF's logits, and speculative decoding
    with prompt-lookup drafts gives plain greedy decoding's tokens (GPT-OSS: sliding layers with full caches)."""
    hf = tiny_moe(kind)
    engine = load(hf, max_seq_len=96, sliding_window_cache="full")
    ids = torch.randint(3, 128, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(ids).logits[0]
    model = engine.model
    model.allocate_cache(1, 96)
    model.prefill(ids[:, :9])
    got = torch.cat([model.extend(ids[:, 9:14], 9), model.extend(ids[:, 14:], 14)])
    torch.testing.assert_close(got, want[9:], rtol=1e-4, atol=1e-4)
    engine.eos_ids = set()
    prompt = [1, 5, 9, 33, 70, 1, 5, 9, 33, 70, 1, 5]
    assert engine.generate(prompt, 32, prompt_lookup=6).ids == engine.generate(prompt, 32).ids


def test_checkpoint_directory_roundtrip(tmp_path):
    hf = tiny_moe("qwen2_moe")
    hf.save_pretrained(tmp_path)
    assert load(tmp_path).generate([1, 5, 9], 12).ids == hf_greedy(hf, [1, 5, 9], 12)


def test_sampling_with_a_seed_is_reproducible():
    engine = load(tiny_moe("mixtral"), max_seq_len=96)
    first = engine.generate([1, 2, 3], 24, temperature=1.2, top_k=20, seed=5).ids
    assert first == engine.generate([1, 2, 3], 24, temperature=1.2, top_k=20, seed=5).ids


def test_half_precision_logits_follow_hf():
    """bf16 on a CPU: the engine's logits against HF's in bf16, within bf16's rounding of a two-layer model."""
    hf = tiny_moe("mixtral").to(torch.bfloat16)
    model = load(hf, max_seq_len=96).model
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 11]])
    with torch.no_grad():
        want = hf(ids).logits.float()
    model.allocate_cache(1, 96)
    got = model(ids, last_only=False).float()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


def test_step_bytes_count_only_the_chosen_experts():
    """At batch 1 a step reads k of E experts: the bytes of the others are not counted; at a batch that can choose
    them all, every expert is."""
    model = load(tiny_moe("mixtral"), max_seq_len=96).model
    moe = model.layers[0].moe
    per_expert = (moe.gate_up[0].numel() + moe.down[0].numel()) * 4
    idle = (moe.num_experts - moe.top_k) * per_expert * len(model.layers)
    assert model.step_bytes(3) - model.step_bytes(1) == idle + 2 * 64 * 4  # and two more embedding rows


def test_bad_moe_configs_are_refused():
    gate_up, down, router = torch.zeros(4, 8, 6), torch.zeros(4, 6, 4), torch.zeros(4, 6)
    with pytest.raises(ValueError, match="num_experts_per_tok=5 with 4 experts"):
        SparseMoe(router, gate_up, down, 5, True, False, "silu")
    with pytest.raises(ValueError, match="unsupported MoE activation 'tanh'"):
        SparseMoe(router, gate_up, down, 2, True, False, "tanh")


def test_the_router_breaks_near_ties_as_transformers():
    """The router's projection runs on F.linear, as transformers' does, whatever linear the step's experts use."""
    moe = load(tiny_moe("mixtral"), max_seq_len=96).model.layers[0].moe
    rows = torch.randn(5, 64)
    calls = []

    def counting_linear(x, w, b):
        calls.append(tuple(w.shape))
        return torch.nn.functional.linear(x, w, b)

    moe(rows, counting_linear)
    assert tuple(moe.router.shape) not in calls and calls  # the experts ran on it, the router did not


@pytest.mark.parametrize("shape,model_type", [("qwen3-moe-small", "qwen3_moe"), ("gpt-oss-small", "gpt_oss"),
                                              ("deepseek-v3-small", "deepseek_v3")])
def test_random_moe_stand_in_for_the_benchmark(shape, model_type):
    """bench/random_llm.py's MoE shapes (bench/llm.py --random-shape ...), made small: models whose tokens the engine
    reproduces."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "random_llm.py"
    spec = importlib.util.spec_from_file_location("random_llm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "vocab_size": 500, "initializer_range": 0.2}
    small.update({"qwen3_moe": {"num_experts": 6, "moe_intermediate_size": 32},
                  "gpt_oss": {"num_local_experts": 6, "intermediate_size": 32, "sliding_window": 4},
                  "deepseek_v3": {"num_key_value_heads": 4, "n_routed_experts": 8, "moe_intermediate_size": 32,
                                  "kv_lora_rank": 16, "q_lora_rank": 24, "qk_nope_head_dim": 8,
                                  "qk_rope_head_dim": 8, "v_head_dim": 8, "head_dim": 8}}[model_type])  # V3's rope
    hf, tokenizer = module.build_random_llm(shape, **small)
    assert hf.config.model_type == model_type and hf.config.num_experts_per_tok == 4
    engine = load(hf, tokenizer=tokenizer)
    ids = tokenizer("What is the capital of England?")["input_ids"]
    assert engine.generate(ids, 8).ids == hf_greedy(hf, ids, 8)


@pytest.mark.parametrize("path", ["triton-kernels", "gathered"])
@pytest.mark.parametrize("kind", ["mixtral", "gpt_oss"])
def test_gpu_decode_paths_give_hf_tokens(kind, path, monkeypatch):
    """The decode step's two GPU paths, run on the CPU: the Triton experts under the interpreter (biases, the clamped
    GLU and its constants passed through) and the gathered experts (the device-side fallback), each in every decode
    step, with HF's greedy tokens."""
    from genai_fast.backends.availability import backend_unavailable_reasons

    if path == "triton-kernels":
        reasons = backend_unavailable_reasons("triton")
        if reasons:
            pytest.skip("; ".join(reasons))
        from genai_fast.kernels.moe import moe_experts_fwd

        calls = []

        def kernel(*args):
            calls.append(args[0].shape[0])
            return moe_experts_fwd(*args)

        monkeypatch.setattr(SparseMoe, "_decode_kernel", lambda self, rows: kernel)
    else:
        calls = []
        import genai_fast.llm.moe as moe_module

        gathered = moe_module.gathered_experts
        monkeypatch.setattr(moe_module, "gathered_experts", lambda *a: calls.append(a[0].shape[0]) or gathered(*a))
        monkeypatch.setattr(SparseMoe, "_device_side", staticmethod(lambda rows: True))
    hf = tiny_moe(kind)
    engine = load(hf, max_seq_len=96)
    assert engine.generate([1, 5, 9, 33, 70], 12).ids == hf_greedy(hf, [1, 5, 9, 33, 70], 12)
    assert calls.count(1) >= 11 * sum(layer.moe is not None for layer in engine.model.layers)
