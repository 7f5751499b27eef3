"""Where the GPU time goes, for the paths the benchmark table cannot explain: run on a lent GPU machine
(bench/gpu_check.sh runs it last) and read the text it prints.

    python bench/gpu_profile.py [--parts llm decode] [--llm-model FOLDER]

- llm: one decode step of the LLM engine (batch 1; a random model of SmolLM2-135M's shapes from
  bench/random_llm.py, or --llm-model), profiled eagerly with torch.profiler. It prints how many kernels the
  step launches, how many per layer, the top kernels by GPU time, and the step's time replayed from its CUDA
  graph.
- word2vec: two skip-gram epochs on the GPU over the corpus gpu_check.sh unpacks (/tmp/w2v_corpus.txt). It
  prints the kernels' share of the training's wall time: what is left is host work the GPU waits for.
- decode: attention_with_kvcache at batch 1 and 16. It prints the op with lengths on the GPU (a host read,
  which syncs) and on the CPU, the bare Triton launcher, the launcher replayed from a CUDA graph with its
  GB/s, and torch SDPA flash over K/V repeated to the query heads.
- group_norm: GroupNorm+SiLU through the CUDA backend at SD shapes: the call, each of its three kernels, the
  call replayed from a CUDA graph with its GB/s, and torch's GroupNorm + SiLU.
- unet: one step of the SD1.5-shaped U-Net of the benchmark (fp16, batch 2, 64x64; needs diffusers), patched and
  as diffusers runs it: the GPU time by kind of kernel (convolution, matrix products, attention, norms, GEGLU,
  the rest), the top kernels, and the patched step replayed from a CUDA graph. This is what says which kernels
  stand between the patched step and torch.compile's.

Numbers are medians of triton.testing.do_bench (CUDA events) after warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch


def _device_us(event: Any) -> float:
    """A profiler event's GPU time in microseconds (device_time_total; cuda_time_total on older torch)."""
    total = getattr(event, "device_time_total", None)
    return event.cuda_time_total if total is None else total


def _kernels_of(fn) -> list[Any]:
    """The GPU kernels one call of fn launches (torch.profiler events, after the GPU went idle)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def _bench_us(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, return_mode="median") * 1e3


def _graph_us(fn) -> float:
    """fn captured once as a CUDA graph (after a warm-up on a side stream), then its replays timed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _bench_us(graph.replay)


def _llm_model(path: str | None):
    """The engine on a checkpoint folder when one is given, else on bench/random_llm.py's random model of
    SmolLM2-135M's exact shapes, made in memory on the GPU."""
    from genai_fast.llm import load

    if path and Path(path, "config.json").exists():
        return load(path, dtype=torch.bfloat16, device="cuda"), Path(path).name
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from random_llm import build_random_llm

    hf, tokenizer = build_random_llm("smollm2-135m", torch.bfloat16, "cuda")
    return load(hf, tokenizer=tokenizer, max_seq_len=512), "random Llama of SmolLM2-135M's shapes"


def profile_llm_step(args: argparse.Namespace) -> None:
    engine, name = _llm_model(args.llm_model)
    model = engine.model
    model.allocate_cache(1, engine.max_seq_len)
    model.prefill(torch.randint(0, 100, (1, 16), device="cuda"))
    token = torch.randint(0, 100, (1, 1), device="cuda")
    seqlens = torch.full((1,), 16, dtype=torch.int32, device="cuda")

    def step() -> torch.Tensor:
        return model.decode(token, seqlens)

    for _ in range(3):
        step()
    kernels = _kernels_of(step)
    layers = len(model.layers)
    print(f"LLM decode step ({name}, bf16, batch 1): {len(kernels)} kernels eagerly, "
          f"{len(kernels) / layers:.1f} per layer over {layers} layers")
    by_name = Counter()
    time_by_name = Counter()
    for e in kernels:
        by_name[e.name[:70]] += 1
        time_by_name[e.name[:70]] += _device_us(e)
    for kernel, total in time_by_name.most_common(12):
        print(f"  {total:9.1f} us  x{by_name[kernel]:<4d} {kernel}")
    print(f"  step replayed from a CUDA graph: {_graph_us(step):.0f} us; eagerly: {_bench_us(step):.0f} us")


def profile_decode_attention(args: argparse.Namespace) -> None:
    del args  # no options
    for B, L in ((1, 4096), (16, 4096)):
        _profile_decode_case(B, L)


def _profile_decode_case(B: int, L: int) -> None:
    import torch.nn.functional as F
    from genai_fast.kernels.attention import decode_fwd
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import genai_fast

    q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, 8, L, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    lens = torch.full((B,), L, dtype=torch.int32, device="cuda")
    host_lens = lens.cpu()
    op_gpu = _bench_us(lambda: genai_fast.attention_with_kvcache(q, k, v, lens))
    op_cpu = _bench_us(lambda: genai_fast.attention_with_kvcache(q, k, v, host_lens))
    launcher = _bench_us(lambda: decode_fwd(q, k, v, lens, False, 128 ** -0.5))
    graphed = _graph_us(lambda: decode_fwd(q, k, v, lens, False, 128 ** -0.5))
    k_rep, v_rep = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = _bench_us(lambda: F.scaled_dot_product_attention(q, k_rep, v_rep))
    gbps = 2 * k.numel() * k.element_size() / (graphed * 1e-6) / 1e9
    print(f"decode B{B} Hq32 Hkv8 L{L} D128 bf16: op (lengths on GPU) {op_gpu:.0f} us, op (lengths on CPU) "
          f"{op_cpu:.0f} us, launcher {launcher:.0f} us, launcher in a graph {graphed:.0f} us ({gbps:.0f} GB/s), "
          f"SDPA flash over repeated K/V {flash:.0f} us")


def profile_word2vec(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    from genai_fast.word2vec import Word2Vec

    if not Path(args.w2v_corpus).exists():
        print(f"word2vec: no corpus at {args.w2v_corpus} (gpu_check.sh unpacks it), skipped")
        return
    model = Word2Vec(vector_size=100, window=5, negative=5, min_count=5, sg=1, workers=16, seed=1, device="cuda")
    model.build_vocab(corpus_file=args.w2v_corpus)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        model.train(corpus_file=args.w2v_corpus, total_words=model.corpus_total_words, epochs=2)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(_device_us(e) for e in kernels) / 1e6
    trainer = sum(_device_us(e) for e in kernels if "word2vec" in e.name or "train" in e.name) / 1e6
    words = 2 * model.corpus_total_words
    print(f"word2vec SG, 2 epochs, {words / 1e6:.1f}M words: wall {wall:.2f} s ({words / wall / 1e6:.1f}M words/s "
          f"under the profiler); GPU kernels {busy:.2f} s ({busy / wall:.0%} of the wall), of which the trainer's "
          f"{trainer:.2f} s; {len(kernels)} kernels")


GROUP_NORM_SHAPES = [(2, 320, 64, 64), (2, 960, 64, 64), (8, 320, 128, 128)]  # SD1.5's largest; wider; SDXL x4


def profile_group_norm(args: argparse.Namespace) -> None:
    """GroupNorm+SiLU (fp16, channels_last, 32 groups) through the CUDA backend: the call's time, each of its
    kernels' GPU time (profiler), the call replayed from a CUDA graph, and its bandwidth against the minimal
    traffic (read x once, write y once), next to torch's GroupNorm + SiLU."""

    import genai_fast

    for N, C, H, W in GROUP_NORM_SHAPES:
        x = torch.randn(N, C, H, W, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
        weight, bias = (torch.randn(C, device="cuda", dtype=torch.float16) for _ in range(2))

        def ours(x=x, weight=weight, bias=bias):
            return genai_fast.group_norm(x, 32, weight, bias, activation="silu", backend="cuda")

        def torch_ref(x=x, weight=weight, bias=bias):
            return torch.nn.functional.silu(torch.nn.functional.group_norm(x, 32, weight, bias))

        call, graphed, ref = _bench_us(ours), _graph_us(ours), _bench_us(torch_ref)
        kernels = _kernels_of(ours)
        parts = ", ".join(f"{e.name.split('(')[0][:40]} {_device_us(e):.1f} us" for e in kernels)
        gbps = 2 * x.numel() * x.element_size() / (graphed * 1e-6) / 1e9
        print(f"group_norm {N}x{C}x{H}x{W} fp16 NHWC g32 silu: call {call:.1f} us, graphed {graphed:.1f} us "
              f"({gbps:.0f} GB/s), torch {ref:.1f} us; kernels: {parts}")


# Kernel families by name, first match wins (cuDNN, cuBLAS/CUTLASS and Triton kernel names as torch 2.11 shows them).
KERNEL_KINDS = [
    ("attention", ("attn", "attention", "flash", "fmha", "sdpa")),
    ("group_norm", ("group_norm", "groupnorm", "welford")),
    ("geglu", ("geglu",)),
    ("convolution", ("conv", "implicit", "winograd", "fprop", "dgrad", "nhwc", "xmma_fprop")),
    ("matmul", ("gemm", "cutlass", "cublas", "sm90_xmma", "matmul", "gemv")),
    ("layout", ("transpose", "permute", "copy", "cat", "nchw")),
]


def kernel_kind(name: str) -> str:
    """A kernel's family for the U-Net breakdown ("other" when no pattern of KERNEL_KINDS matches)."""
    lowered = name.lower()
    return next((kind for kind, patterns in KERNEL_KINDS if any(p in lowered for p in patterns)), "other")


def kernel_breakdown(events: list[Any], top: int = 10) -> list[str]:
    """Lines: the kernels' GPU time by family, then the `top` kernels by GPU time."""
    total = sum(_device_us(e) for e in events) or 1.0
    by_kind, by_name, count = Counter(), Counter(), Counter()
    for e in events:
        by_kind[kernel_kind(e.name)] += _device_us(e)
        by_name[e.name[:80]] += _device_us(e)
        count[e.name[:80]] += 1
    lines = ["  by kind: " + ", ".join(f"{kind} {us / 1e3:.2f} ms ({us / total:.0%})"
                                       for kind, us in by_kind.most_common())]
    lines += [f"  {us:9.1f} us  x{count[name]:<4d} {name}" for name, us in by_name.most_common(top)]
    return lines


def profile_unet(args: argparse.Namespace) -> None:
    from genai_fast.bench import unet as unet_bench  # bench/unet.py: the benchmark's SD1.5-shaped case

    if not unet_bench.HAVE_DIFFUSERS:
        print("unet: diffusers is not installed, skipped")
        return
    del args  # no options
    inputs = unet_bench.make_inputs(unet_bench._step_case(torch.float16), torch.device("cuda"))
    runs = {"patched": inputs["patched_call"],
            "diffusers eager": lambda: unet_bench._unet_step(inputs["eager"], inputs)}
    for name, call in runs.items():
        for _ in range(3):
            call()
        kernels = _kernels_of(call)
        busy = sum(_device_us(e) for e in kernels) / 1e3
        print(f"unet SD1.5 64x64 b2 fp16, {name}: {len(kernels)} kernels, {busy:.2f} ms of GPU time, "
              f"{_bench_us(call) / 1e3:.2f} ms a call")
        print("\n".join(kernel_breakdown(kernels)))
    graphed = inputs["graphed_call"]
    graphed()
    print(f"unet patched, replayed from its CUDA graph: {_bench_us(graphed) / 1e3:.2f} ms a call")


PARTS = {"llm": profile_llm_step, "word2vec": profile_word2vec, "decode": profile_decode_attention,
         "group_norm": profile_group_norm, "unet": profile_unet}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    parser.add_argument("--llm-model", default=None,
                        help="a checkpoint folder (default: a random model of SmolLM2-135M's shapes, in memory)")
    parser.add_argument("--w2v-corpus", default="/tmp/w2v_corpus.txt")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_profile: needs a CUDA GPU", file=sys.stderr)
        return 1
    failed = False
    for part in args.parts:
        start = time.perf_counter()
        try:
            PARTS[part](args)
        except Exception as exc:  # one part failing should not hide the others' numbers
            print(f"{part}: failed: {type(exc).__name__}: {exc}")
            failed = True
        print(f"[{part}: {time.perf_counter() - start:.1f} s]", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
