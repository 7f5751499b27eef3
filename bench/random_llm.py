"""Write a random-weight model with SmolLM2-135M-Instruct's architecture, for timing the LLM engine where the
real model cannot go (a lent GPU machine: no network, and the 93 MB model package exceeds what a call carries).

    python bench/random_llm.py --out /tmp/smollm2-random
    python bench/llm.py --model /tmp/smollm2-random --device cuda --dtype bfloat16 --batch 1 8

The folder holds config.json (LlamaConfig: hidden 576, 30 layers, 9 query and 3 K/V heads, MLP 1536,
vocabulary 49,152, tied embeddings), model.safetensors (normal(0, 0.02) weights, seeded) and a word-level
tokenizer over the same 49,152 ids (the prompts' words, then filler tokens): every shape, and therefore every
byte read and every FLOP of a decode step, is the real model's; only the values, and so the text, differ.
Decode speed does not depend on the values (no early stopping: the benchmark makes both sides produce exactly
--new-tokens tokens).

`--shape llama-1b --dtype bfloat16` writes Llama-3.2-1B's shapes instead (2.5 GB). Its decode step reads
enough bytes for a bandwidth measurement; SmolLM2's small layers are bound by kernel latency.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True, "bos_token_id": 1,
                "eos_token_id": 2, "pad_token_id": 2}
# Llama-3.2-1B's shapes (1.24B parameters, 2.5 GB in bf16): a decode step that reads enough bytes to measure
# bandwidth against issue 5's target, where SmolLM2-135M's 30 small layers are bound by kernel latency.
LLAMA_1B = {**SMOLLM2_135M, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0}
# A small Qwen3-MoE (32 experts of which 4 per token, 12 layers; 0.4B parameters, 0.1B of them active per token):
# the engine's routed experts against transformers' loop, at a size a CPU decodes in seconds.
QWEN3_MOE_SMALL = {**SMOLLM2_135M, "architecture": "qwen3_moe", "hidden_size": 768, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "num_key_value_heads": 4, "num_experts": 32, "num_experts_per_tok": 4,
                   "moe_intermediate_size": 384, "intermediate_size": 1536, "norm_topk_prob": True}
# A small GPT-OSS (the same sizes; attention sinks, sliding layers of 128 positions every other layer, experts with
# biases and the clamped GLU, YaRN rope): the engine against transformers' eager GPT-OSS.
GPT_OSS_SMALL = {**QWEN3_MOE_SMALL, "architecture": "gpt_oss", "intermediate_size": 384, "num_local_experts": 32,
                 "sliding_window": 128, "rope_parameters": {
                     "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                     "rope_theta": 150000.0, "original_max_position_embeddings": 256}}
for _key in ("num_experts", "moe_intermediate_size", "norm_topk_prob", "rope_theta"):
    GPT_OSS_SMALL.pop(_key, None)
# A small DeepSeek-V3 (the same width and depth; multi-head latent attention with compressed queries, keys of 96 dims
# (64 + 32 rotary) and values of 64, the sigmoid router over 4 groups of 8 experts, 4 per token, a shared expert,
# the first layer dense): the engine's expanded-cache MLA against transformers' eager DeepSeek-V3.
DEEPSEEK_V3_SMALL = {**{k: v for k, v in QWEN3_MOE_SMALL.items() if k not in ("num_experts", "head_dim")},
                     "architecture": "deepseek_v3", "num_key_value_heads": 12, "kv_lora_rank": 256,
                     "q_lora_rank": 384, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64,
                     "n_routed_experts": 32, "n_shared_experts": 1, "n_group": 4, "topk_group": 2,
                     "routed_scaling_factor": 2.5, "first_k_dense_replace": 1}
SHAPES = {"smollm2-135m": SMOLLM2_135M, "llama-1b": LLAMA_1B, "qwen3-moe-small": QWEN3_MOE_SMALL,
          "gpt-oss-small": GPT_OSS_SMALL, "deepseek-v3-small": DEEPSEEK_V3_SMALL}
ARCHITECTURES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
                 "gpt_oss": ("GptOssConfig", "GptOssForCausalLM"),
                 "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM")}
SPECIAL = ["<unk>", "<s>", "</s>"]


def word_level_tokenizer(vocab_size: int, words: list[str]):
    """A fast tokenizer: the special tokens, then `words`, then filler tokens up to vocab_size ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    for i in range(len(vocab), vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def build_random_llm(shape: str = "smollm2-135m", dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu", seed: int = 0, **overrides: int):
    """(model, tokenizer): a random model of `shape` (SHAPES: a Llama unless its "architecture" says otherwise;
    config keys in `overrides` replace the shape's: the tests make a small one) in `dtype`, its weights drawn on
    `device`, and the word-level tokenizer. In memory: `bench/llm.py --random-shape` uses it on a GPU, where
    writing and reloading 2.5 GB would cost device time."""
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llm import PROMPTS

    words = sorted({w for p in PROMPTS for w in re.findall(r"\w+|[^\w\s]", p)})
    torch.manual_seed(seed)
    settings = {**SHAPES[shape], **overrides}
    config_name, model_name = ARCHITECTURES[settings.pop("architecture", "llama")]
    config = getattr(transformers, config_name)(**settings)
    with torch.device(device):
        model = getattr(transformers, model_name)(config)
    return model.eval().to(dtype), word_level_tokenizer(config.vocab_size, words)


def write_random_llm(out: Path, seed: int = 0, shape: str = "smollm2-135m", dtype: torch.dtype = torch.float32,
                     **overrides: int) -> Path:
    """Create `out` with build_random_llm's checkpoint (config, safetensors weights) and tokenizer; returns out."""
    model, tokenizer = build_random_llm(shape, dtype, "cpu", seed, **overrides)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to create (config, weights, tokenizer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="of the saved weights (bfloat16 halves the file of the 1B shape)")
    args = parser.parse_args()
    path = write_random_llm(Path(args.out), args.seed, args.shape, getattr(torch, args.dtype))
    print(f"wrote a random {args.shape}-shaped model to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
