"""Run the Triton launchers on edge-case shapes, each kernel launch compiled for a GPU instead of run.

    TRITON_INTERPRET=0 python -m tests.launch_compile_check [--arch 90] [--dtypes fp16 bf16 fp32] [--ops ...]

Why: under the interpreter an int argument stays a Python int, but the compiling JIT turns every int
argument equal to 1 into a constant and marks multiples of 16 as such. Shapes with a size or stride of 1
(batch 1, one head, one query, a 1x1 image, one channel per group) therefore compile code that no CPU test
runs, and a kernel that calls a tensor method on such a value fails only on a lent GPU. Here the launchers
run on CPU tensors with the tile choices they make for a GPU; every launch becomes `triton.compile` for
sm_<arch> with exactly the signature, constants and attributes the JIT derives from those arguments
(autotuned kernels: every config that survives pruning). The arguments' values are never read, so
nothing runs. Prints one JSON line per distinct compilation; exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
H100_SMS = 132


class CompileLog:
    """Compiles instead of launching; one record per distinct (kernel, specialisation)."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)
        self.backend = make_backend(self.target)
        self.seen: set[tuple] = set()
        self.records: list[dict] = []
        self.case = ""

    def compile_launch(self, fn: JITFunction, args: tuple, kwargs: dict) -> None:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        binder = create_function_from_signature(fn.signature, fn.params, self.backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constants, attrs = fn._pack_args(self.backend, kwargs, bound, specialization, options)
        key = (fn.fn.__name__, tuple(specialization), str(options))
        if key in self.seen:
            return
        self.seen.add(key)
        record = {"kernel": fn.fn.__name__, "case": self.case, "arch": f"sm_{self.target.arch}",
                  "constants": sorted(k if isinstance(k, str) else fn.arg_names[k[0]] for k in constants)}
        start = time.perf_counter()
        try:
            compiled = triton.compile(ASTSource(fn, signature, constants, attrs), target=self.target,
                                      options=options.__dict__)
            record["shared"] = compiled.metadata.shared
        except Exception as exc:  # every failing launch is reported, not just the first
            record["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        record["seconds"] = round(time.perf_counter() - start, 2)
        self.records.append(record)
        print(json.dumps(record), flush=True)


@contextlib.contextmanager
def compiling_instead_of_launching(arch: int = 90) -> Iterator[CompileLog]:
    """Within: Triton launches compile for sm_<arch> and return None, and the launchers see a GPU."""
    log = CompileLog(arch)

    def jit_run(fn, *args, **kwargs):
        log.compile_launch(fn, args, kwargs)

    def autotuned_run(tuner, *args, **kwargs):
        tuner.nargs = dict(zip(tuner.arg_names, args, strict=False))  # the rest come as keywords
        for config in tuner.prune_configs(kwargs):
            tuner.fn.run(*args, **kwargs, **config.all_kwargs())

    from genai_fast.kernels import attention, attention_tma, decode_gemv, group_norm, moe

    def as_gpu(config_fn: Callable) -> Callable:
        return lambda device, *a, **k: config_fn(torch.device("cuda"), *a, **k)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(JITFunction, "run", jit_run))
        stack.enter_context(mock.patch.object(Autotuner, "run", autotuned_run))
        for module in (attention, decode_gemv, group_norm, moe):
            stack.enter_context(mock.patch.object(module, "multiprocessor_count", lambda device: H100_SMS))
        for name in ("_fwd_config", "_bwd_config", "_decode_config", "_num_splits"):
            stack.enter_context(mock.patch.object(attention, name, as_gpu(getattr(attention, name))))
        stack.enter_context(mock.patch.object(attention_tma, "_config", as_gpu(attention_tma._config)))
        stack.enter_context(mock.patch.object(decode_gemv, "_tiles", as_gpu(decode_gemv._tiles)))
        stack.enter_context(mock.patch.object(moe, "_tiles", as_gpu(moe._tiles)))
        stack.enter_context(mock.patch.object(group_norm, "_num_programs_target", lambda device: 4 * H100_SMS))
        yield log


# ---------------------------------------------------------------- edge-case launches per op


def _attention_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels import attention as A

    shapes = [  # B, Hq, Hkv, Sq, Sk, D, causal, mask
        (1, 1, 1, 1, 1, 40, False, None),
        (1, 1, 1, 1, 77, 64, True, None),
        (2, 9, 3, 7, 129, 80, False, "bool-broadcast"),
        (1, 2, 1, 16, 16, 16, True, "additive"),
        (1, 1, 1, 33, 1000, 256, False, None),
    ]
    for B, Hq, Hkv, Sq, Sk, D, causal, mask_kind in shapes:
        q, k, v = torch.empty(B, Hq, Sq, D, dtype=dtype), torch.empty(B, Hkv, Sk, D, dtype=dtype), \
            torch.empty(B, Hkv, Sk, D, dtype=dtype)
        mask = None
        if mask_kind == "bool-broadcast":
            mask = torch.ones(1, 1, Sq, Sk, dtype=torch.bool).expand(B, Hq, Sq, Sk)
        elif mask_kind == "additive":
            mask = torch.zeros(Sq, Sk, dtype=dtype).expand(B, Hq, Sq, Sk)
        label = f"B{B} H{Hq}:{Hkv} Sq{Sq} Sk{Sk} D{D} causal={causal} mask={mask_kind}"

        def forward_and_backward(q=q, k=k, v=v, mask=mask, causal=causal):
            out, lse = A.attention_fwd(q, k, v, mask, causal, 0.125)
            A.attention_bwd(torch.empty_like(out), q, k, v, mask, out, lse, causal, 0.125)

        yield f"attention {label}", forward_and_backward
    for B, Hq, Hkv, Sq, s_max, D in [(1, 1, 1, 1, 1, 64), (3, 9, 3, 2, 100, 64), (1, 4, 1, 1, 4096, 128),
                                     (2, 2, 2, 1, 33, 256)]:
        q = torch.empty(B, Hq, Sq, D, dtype=dtype)
        cache = torch.empty(B, Hkv, s_max, D, dtype=dtype)
        lengths = torch.full((B,), s_max, dtype=torch.int32)
        yield (f"decode B{B} H{Hq}:{Hkv} Sq{Sq} S_max{s_max} D{D}",
               lambda q=q, cache=cache, lengths=lengths: A.decode_fwd(q, cache, cache, lengths, True, 0.125))
        sinks = torch.empty(Hq, dtype=dtype)  # GPT-OSS's, with its sliding window
        yield (f"decode B{B} H{Hq}:{Hkv} Sq{Sq} S_max{s_max} D{D} sinks window",
               lambda q=q, cache=cache, lengths=lengths, sinks=sinks: A.decode_fwd(q, cache, cache, lengths, True,
                                                                                   0.125, 0.0, 128, sinks))


def _attention_tma_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    """The Hopper TMA forward (fp16/bf16 only): one query row, one head, GQA, Sq != Sk, a [B, S, H, D] layout."""
    from genai_fast.kernels import attention_tma as T

    if dtype not in (torch.float16, torch.bfloat16):
        return
    for B, Hq, Hkv, Sq, Sk, D, causal, transposed in [(1, 1, 1, 1, 1, 64, True, False),
                                                      (2, 8, 2, 77, 1000, 128, False, False),
                                                      (1, 4, 4, 4096, 4096, 128, True, True)]:
        def make(h, s, B=B, D=D, transposed=transposed):
            return torch.empty(B, s, h, D, dtype=dtype).transpose(1, 2) if transposed else \
                torch.empty(B, h, s, D, dtype=dtype)

        q, k, v = make(Hq, Sq), make(Hkv, Sk), make(Hkv, Sk)
        label = f"B{B} H{Hq}:{Hkv} Sq{Sq} Sk{Sk} D{D} causal={causal} layout={'BSHD' if transposed else 'BHSD'}"
        yield f"attention_tma {label}", lambda q=q, k=k, v=v, causal=causal: T.attention_fwd_tma(q, k, v, causal, 0.1)


def _group_norm_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.group_norm import group_norm_fwd

    for shape, groups in [((1, 1, 1, 1), 1), ((1, 3, 5, 1), 3), ((2, 64, 8, 8), 32), ((1, 320, 64, 64), 32)]:
        for channels_last in (False, True):
            x = torch.empty(shape, dtype=dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            for weight in (None, torch.ones(shape[1])):
                yield (f"group_norm {shape} G{groups} channels_last={channels_last} weight={weight is not None}",
                       lambda x=x, groups=groups, weight=weight: group_norm_fwd(x, groups, weight, weight, 1e-5,
                                                                                 "silu"))


def _geglu_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.geglu import geglu_fwd

    # One row and H 1 (constants), SD1.5's widest feed-forward, and rows read in place at a padded stride.
    for shape in [(1, 2), (2, 4096, 2560), (3, 90)]:
        for approximate in ("none", "tanh"):
            x = torch.empty(shape, dtype=dtype)
            yield f"geglu {shape} {approximate}", lambda x=x, a=approximate: geglu_fwd(x, a)
    x = torch.empty(5, 100, dtype=dtype)[:, :90]
    yield "geglu (5, 90) at row stride 100", lambda: geglu_fwd(x, "none")


def _guided_update_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.guided_update import guided_update_fwd

    # Every term on with the clamp (DDPM/DDIM-like), DPM-Solver++'s shape with an fp32 history, Euler's
    # unguided two terms; one element and an SDXL batch.
    for n in (1, 4 * 4 * 128 * 128):
        x, out = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
        model, other = torch.empty(2 * n, dtype=dtype), torch.empty(n, dtype=torch.float32)
        yield (f"guided_update n{n} all terms",
               lambda x=x, model=model, other=other, out=out: guided_update_fwd(
                   x, model, other, other, out, out, True, 7.5, (1.5, -0.5, 0.9, 0.4, 0.2, -0.3, 0.05), 1.0))
        yield (f"guided_update n{n} dpm++",
               lambda x=x, model=model, other=other, out=out: guided_update_fwd(
                   x, model, other, None, out, other, True, 7.5, (1.5, -0.5, 0.9, 0.4, 0.0, -0.3, 0.0), float("inf")))
        yield (f"guided_update n{n} euler unguided",
               lambda x=x, half=model[:n], out=out: guided_update_fwd(
                   x, half, None, None, out, None, False, 1.0, (0.0, 0.0, 1.0, 0.0, -0.8, 0.0, 0.0), float("inf")))


def _rms_norm_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.rms_norm import MAX_D, rms_norm_fwd

    # One value (D 1 and one row: constants), a decode batch at SmolLM2's width, odd D, Llama-8B's width,
    # the widest row, and rows read in place at a padded stride.
    for shape in [(1, 1), (1, 576), (8, 576), (3, 7), (2, 4096), (1, MAX_D)]:
        for weight in (None, torch.empty(shape[-1], dtype=dtype)):
            x = torch.empty(shape, dtype=dtype)
            yield (f"rms_norm {shape} weight={weight is not None}",
                   lambda x=x, weight=weight: rms_norm_fwd(x, weight, 1e-6))
    x = torch.empty(5, 600, dtype=dtype)[:, :576]
    yield "rms_norm (5, 576) at row stride 600", lambda: rms_norm_fwd(x, None, 1e-6)
    from genai_fast.kernels.rms_norm import add_rms_norm_fwd

    for shape in [(1, 1), (1, 576), (8, 576), (3, 7), (2, 4096)]:
        h, delta = torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
        w = torch.empty(shape[-1], dtype=dtype)
        yield f"add_rms_norm {shape}", lambda h=h, delta=delta, w=w: add_rms_norm_fwd(h, delta, w, 1e-6)


def _rope_append_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.rope_append import rope_append_fwd

    # One sequence, one head of 2 values (constants); SmolLM2's heads; Llama-8B's at batch 8 in a batch-16
    # cache; GPT-2's (no rotation).
    for B, Hq, Hkv, D, rope in [(1, 1, 1, 2, True), (1, 9, 3, 64, True), (8, 32, 8, 128, True),
                                (2, 12, 12, 64, False)]:
        qkv = torch.empty(B, (Hq + 2 * Hkv) * D, dtype=dtype)
        k_cache, v_cache = (torch.empty(max(B, 16), Hkv, 256, D, dtype=dtype) for _ in range(2))
        table = torch.empty(256, D, dtype=dtype) if rope else None
        seqlens = torch.zeros(B, dtype=torch.int32)
        yield (f"rope_append B{B} Hq{Hq} Hkv{Hkv} D{D} rope={rope}",
               lambda qkv=qkv, Hq=Hq, Hkv=Hkv, k=k_cache, v=v_cache, s=seqlens, t=table:
               rope_append_fwd(qkv, Hq, Hkv, k, v, s, t, t))


def _swiglu_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.swiglu import swiglu_fwd

    # One row of one pair (constants), SmolLM2's MLP at batch 1 and 8, Llama-8B's at batch 4.
    for shape in [(1, 2), (1, 3072), (8, 3072), (4, 28672)]:
        h = torch.empty(shape, dtype=dtype)
        yield f"swiglu {shape}", lambda h=h: swiglu_fwd(h)


def _decode_gemv_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.decode_gemv import norm_linear_fwd, swiglu_linear_fwd

    # One value (constants); SmolLM2's QKV (with Qwen2's bias), gate/up and LM head; Llama-3.2-1B's; two rows.
    for R, K, N in [(1, 1, 1), (1, 576, 960), (1, 576, 3072), (1, 576, 49152), (1, 2048, 16384), (2, 2048, 3072)]:
        h, delta = torch.empty(R, K, dtype=dtype), torch.empty(R, K, dtype=dtype)
        norm_weight, weight = torch.empty(K, dtype=dtype), torch.empty(N, K, dtype=dtype)
        bias = torch.empty(N, dtype=dtype)
        yield (f"norm_linear R{R} K{K} N{N}",
               lambda h=h, d=delta, nw=norm_weight, w=weight, b=bias: (
                   norm_linear_fwd(h, d, nw, 1e-5, w), norm_linear_fwd(h, None, nw, 1e-5, w, b)))
    # One value; SmolLM2's down projection; Llama-3.2-1B's.
    for R, K, N in [(1, 1, 1), (1, 1536, 576), (1, 8192, 2048)]:
        gate_up, weight = torch.empty(R, 2 * K, dtype=dtype), torch.empty(N, K, dtype=dtype)
        yield f"swiglu_linear R{R} K{K} N{N}", lambda g=gate_up, w=weight: swiglu_linear_fwd(g, w)


def _moe_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.moe import moe_experts_fwd

    # One value, one expert (constants); Qwen3-MoE-30B's experts (H 2048, I 768, k 8) at batch 1; Mixtral-like
    # (H 4096, I 14336, k 2) at batch 4; every activation.
    for R, H, inter, E, k, act in [(1, 1, 1, 1, 1, "silu"), (1, 2048, 768, 8, 8, "silu"),
                                   (4, 4096, 14336, 4, 2, "gelu"), (2, 96, 40, 3, 2, "gelu_tanh")]:
        x, ids, weights = torch.empty(R, H, dtype=dtype), torch.zeros(R, k, dtype=torch.long), torch.empty(R, k)
        gate_up, down = torch.empty(E, 2 * inter, H, dtype=dtype), torch.empty(E, H, inter, dtype=dtype)
        yield (f"moe R{R} H{H} I{inter} E{E} k{k} {act}",
               lambda x=x, g=gate_up, d=down, i=ids, w=weights, a=act: moe_experts_fwd(x, g, d, i, w, a))
    # GPT-OSS-20B's experts (H 2880, I 2880, k 4) with their biases and clamped GLU.
    x, ids, weights = torch.empty(1, 2880, dtype=dtype), torch.zeros(1, 4, dtype=torch.long), torch.empty(1, 4)
    gate_up, down = torch.empty(4, 5760, 2880, dtype=dtype), torch.empty(4, 2880, 2880, dtype=dtype)
    biases = torch.empty(4, 5760, dtype=dtype), torch.empty(4, 2880, dtype=dtype)
    yield "moe gpt-oss-20b biases", lambda: moe_experts_fwd(x, gate_up, down, ids, weights, "gpt_oss", *biases)


def _conv2d_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.conv2d import conv2d_epilogue_, conv2d_fwd

    layers = [  # N, C_in, H, W, C_out, k, stride, padding, groups
        (1, 1, 1, 1, 1, 1, 1, 0, 1),
        (1, 32, 8, 8, 32, 3, 1, 1, 1),
        (2, 64, 9, 9, 32, 3, 2, 1, 1),
        (1, 16, 5, 5, 16, 3, 1, 1, 16),
    ]
    for N, C_in, H, W, C_out, ksize, stride, padding, groups in layers:
        x = torch.empty(N, C_in, H, W, dtype=dtype).to(memory_format=torch.channels_last)
        weight = torch.empty(C_out, C_in // groups, ksize, ksize, dtype=dtype).to(memory_format=torch.channels_last)
        H_out, W_out = (H + 2 * padding - ksize) // stride + 1, (W + 2 * padding - ksize) // stride + 1
        out = torch.empty(N, C_out, H_out, W_out, dtype=dtype).to(memory_format=torch.channels_last)
        bias, residual = torch.empty(C_out, dtype=dtype), torch.empty_like(out)
        label = f"N{N} C{C_in}->{C_out} {H}x{W} k{ksize} s{stride} p{padding} g{groups}"
        yield (f"conv2d {label}",
               lambda x=x, weight=weight, bias=bias, residual=residual, out=out, stride=stride, padding=padding,
               groups=groups: conv2d_fwd(x, weight, bias, residual, [stride] * 2, [padding] * 2, [1, 1], groups,
                                         "silu", 1.0, out))
        yield (f"conv2d epilogue {label}",
               lambda bias=bias, residual=residual, out=out: conv2d_epilogue_(out, bias, residual, "silu", 0.5))


def _word2vec_cases(dtype: torch.dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    from genai_fast.kernels.word2vec import word2vec_draws, word2vec_train_fwd

    del dtype  # the embedding tables are always fp32 (repeated launches compile once)
    for vocab, dim, window, negative in [(1, 1, 1, 1), (50, 100, 5, 5), (1000, 300, 10, 20)]:
        syn0, syn1 = torch.empty(vocab, dim), torch.empty(vocab, dim)
        tokens, alphas = torch.zeros(64, dtype=torch.int32), torch.empty(64)
        bounds = torch.tensor([[0, 64, 0, 64]], dtype=torch.int32)
        prob, alias = torch.ones(vocab), torch.zeros(vocab, dtype=torch.int32)
        for mode in ("sg_shared", "sg_pair", "cbow"):
            yield (f"word2vec {mode} V{vocab} D{dim} window{window} negative{negative}",
                   lambda syn0=syn0, syn1=syn1, tokens=tokens, alphas=alphas, bounds=bounds, prob=prob, alias=alias,
                   mode=mode, window=window, negative=negative: (
                       word2vec_train_fwd(syn0, syn1, tokens, alphas, bounds, prob, alias, mode=mode, window=window,
                                          negative=negative, cbow_mean=True, shrink_windows=True, compute_loss=True,
                                          seed=1),
                       word2vec_draws(3, prob, alias, mode=mode, window=window, negative=negative, seed=1)))
            # Hierarchical softmax, alone (negative 0) and beside negative sampling; depth 40 > BLOCK_L 32.
            for hs_negative in (0, negative):
                tree = (torch.empty(vocab, dim), torch.zeros(vocab, 40, dtype=torch.int32),
                        torch.zeros(vocab, 40, dtype=torch.uint8), torch.zeros(vocab, dtype=torch.int32))
                yield (f"word2vec hs {mode} V{vocab} D{dim} window{window} negative{hs_negative}",
                       lambda syn0=syn0, syn1=syn1, tokens=tokens, alphas=alphas, bounds=bounds, prob=prob,
                       alias=alias, mode=mode, window=window, negative=hs_negative, tree=tree:
                       word2vec_train_fwd(syn0, syn1, tokens, alphas, bounds, prob, alias, mode=mode, window=window,
                                          negative=negative, cbow_mean=True, shrink_windows=True, compute_loss=True,
                                          seed=1, tree=tree))


OPS = {"attention": _attention_cases, "attention_tma": _attention_tma_cases, "group_norm": _group_norm_cases,
       "conv2d": _conv2d_cases, "decode_gemv": _decode_gemv_cases,
       "geglu": _geglu_cases, "guided_update": _guided_update_cases, "moe": _moe_cases, "rms_norm": _rms_norm_cases,
       "rope_append": _rope_append_cases, "swiglu": _swiglu_cases, "word2vec": _word2vec_cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, choices=(80, 90))
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--ops", nargs="+", default=sorted(OPS), choices=sorted(OPS))
    args = parser.parse_args()
    failed = False
    with compiling_instead_of_launching(args.arch) as log:
        for op in args.ops:
            for dtype in args.dtypes:
                for label, launch in OPS[op](DTYPES[dtype]):
                    log.case = f"{label} {dtype}"
                    try:
                        launch()
                    except Exception as exc:  # a launcher that fails before any kernel compiles
                        print(json.dumps({"case": log.case, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}))
                        failed = True
    failed |= any("error" in r for r in log.records)
    print(json.dumps({"compiled": len(log.records), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
