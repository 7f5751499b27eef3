"""Benchmark entries: fused attention forward ("scaled_dot_product_attention"), backward
("scaled_dot_product_attention_backward": the backward alone, on a recorded forward) and KV-cache decode
("attention_with_kvcache") against each torch SDPA backend (flash, efficient, cuDNN, math) on the same inputs.

Shapes (full, GPU) follow the FlashAttention benchmark: B * S = 16k tokens, H * D = 2048, S from 512 to
16k, D 64 and 128, causal and not. FLOPs: 4 * B * H * Sq * Sk * D forward, halved when causal; the
backward is 2.5x the forward. Decode is memory bound: bytes = K and V read once + Q and O.

The oracle is the float64 reference, computed on the inputs' device in query blocks (an Sq x Sk
float64 matrix for a whole head at S = 16k would not fit). The CPU numbers (op vs torch SDPA, where the
op dispatches to torch's own SDPA) come from `python -m genai_fast.bench.attention`, since the runner
times only non-reference backends and the Triton interpreter is not timed; `--training` times forward and
backward through autograd instead.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast
from genai_fast.ops.attention import _attention_probs

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def _sdp_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]


def _sdpa_with(name: str, q, k, v, causal: bool, gqa: bool = False) -> torch.Tensor:
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([_sdp_backend(name)]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


def _usable_sdpa_backends(backward: bool) -> list[str]:
    """The SDPA backends that run a small bf16 causal problem here (fwd, and bwd when asked)."""
    if not torch.cuda.is_available():
        return ["auto"]
    usable = []
    for name in SDPA_BACKENDS:
        try:
            q = torch.randn(1, 2, 256, 128, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
            out = _sdpa_with(name, q, q, q, True)
            if backward:
                out.sum().backward()
            torch.cuda.synchronize()
            usable.append(name)
        except Exception:  # an SDPA backend that is unavailable here raises; it is left out
            continue
    return usable


# ---------------------------------------------------------------- cases


def _fwd_case(B: int, H: int, S: int, D: int, causal: bool, dtype: torch.dtype, Sk: int | None = None) -> Case:
    """Sq = S query rows against Sk keys (default S)."""
    tag = " causal" if causal else ""
    Sk = S if Sk is None else Sk
    lengths = f"S{S}" if Sk == S else f"Sq{S} Sk{Sk}"
    return Case({"B": B, "H": H, "S": S, "Sk": Sk, "D": D, "causal": causal}, dtype, f"B{B} H{H} {lengths} D{D}{tag}")


# A small U-Net's attention on a CPU (diffusers' tiny test U-Net at 16x16, 8 heads of 8 channels): self-attention
# over 64 positions and cross-attention to 7 text tokens; then SD-shaped cross-attention to 77 tokens.
CPU_UNET_CASES = [_fwd_case(2, 8, 64, 8, False, torch.float32), _fwd_case(2, 8, 64, 8, False, torch.float32, Sk=7)]
CPU_SD_CROSS_CASES = [_fwd_case(2, 8, 1024, 40, False, torch.float32, Sk=77),
                      _fwd_case(2, 8, 4096, 40, False, torch.float32, Sk=77)]

# SD1.5's self-attention at its two finest levels (64x64 and 32x32 latents, CFG batch 2), and a long causal prefill
# over heads of 128: the calls the streamed cpp kernel is for.
CPU_LONG_CASES = [_fwd_case(2, 8, 4096, 40, False, torch.float32), _fwd_case(2, 8, 1024, 80, False, torch.float32),
                  _fwd_case(1, 16, 2048, 128, True, torch.float32)]


# Small calls, where the op's own Python shows: a tiny one (torch's SDPA runs it, so the row is the dispatch
# overhead) and a batch of one-query heads (cross-attention of a sampling step; the cpp backend's decode kernel).
CPU_SMALL_CASES = [_fwd_case(1, 2, 4, 8, False, torch.float32), _fwd_case(32, 16, 1, 64, False, torch.float32, Sk=77)]


def _fa_cases(seqlens: list[int], dims: list[int], dtype: torch.dtype) -> list[Case]:
    """FlashAttention benchmark shapes: 16k tokens per batch, 2048 model width (causal first: the target)."""
    return [_fwd_case(max(1, 16384 // S), 2048 // D, S, D, causal, dtype)
            for D in dims for S in seqlens for causal in (True, False)]


def _decode_case(B: int, Hq: int, Hkv: int, L: int, D: int, dtype: torch.dtype) -> Case:
    return Case({"B": B, "Hq": Hq, "Hkv": Hkv, "L": L, "D": D}, dtype, f"B{B} Hq{Hq} Hkv{Hkv} L{L} D{D}")


FWD_PRESETS = {
    "quick": {
        "cpu": [_fwd_case(1, 8, 512, 64, c, torch.float32) for c in (False, True)] + CPU_UNET_CASES,
        "cuda": _fa_cases([1024, 4096], [128], torch.bfloat16),
    },
    "full": {
        "cpu": [_fwd_case(1, 8, 512, 64, c, torch.float32) for c in (False, True)]
        + [_fwd_case(4, 12, 128, 64, False, torch.float32)] + CPU_UNET_CASES + CPU_SD_CROSS_CASES
        + CPU_LONG_CASES + CPU_SMALL_CASES,
        # The target's lengths (4k-16k, DESIGN.md section 6) first: a time budget cuts the tail of each op's list.
        "cuda": _fa_cases([4096, 16384, 1024, 8192, 2048, 512], [128], torch.bfloat16)
        + _fa_cases([4096], [64], torch.bfloat16),
    },
}
# CPU backward: the self-attention of the text-to-image U-Net's training step (batch 32, 16x16 positions, heads of
# 8 channels) and a tiny U-Net's; then wider heads (a 512-token text model's, a 32x32 U-Net level's, a causal
# 1024-token prefill at D 128).
CPU_TRAINING_CASES = [_fwd_case(32, 8, 256, 8, False, torch.float32), _fwd_case(2, 8, 64, 8, False, torch.float32)]
CPU_WIDE_TRAINING_CASES = [_fwd_case(1, 8, 512, 64, c, torch.float32) for c in (False, True)] + [
    _fwd_case(2, 8, 1024, 40, False, torch.float32), _fwd_case(1, 16, 1024, 128, True, torch.float32)]
BWD_PRESETS = {
    "quick": {"cuda": _fa_cases([2048], [128], torch.bfloat16), "cpu": CPU_TRAINING_CASES[1:]},
    "full": {"cuda": _fa_cases([4096, 16384, 1024], [128], torch.bfloat16)
             + _fa_cases([4096], [64], torch.bfloat16),
             "cpu": CPU_TRAINING_CASES + CPU_WIDE_TRAINING_CASES},
}
# Llama-3-8B-like heads (32 query, 8 KV, D 128) and SmolLM2-like (9:3, D 64) on CPU.
DECODE_PRESETS = {
    "quick": {
        "cpu": [_decode_case(1, 9, 3, 1024, 64, torch.float32)],
        "cuda": [_decode_case(8, 32, 8, 4096, 128, torch.bfloat16)],
    },
    "full": {
        "cpu": [_decode_case(1, 9, 3, 1024, 64, torch.float32), _decode_case(4, 9, 3, 2048, 64, torch.float32)],
        # The target's "large batch x cache length" first (1 GB of K/V read per call, so the op's fixed host cost
        # is amortised), then batch 1 (LLM decode). B64 x 16k last: its float64 oracle over GQA-repeated K/V
        # needs over 100 GB of GPU memory.
        "cuda": [_decode_case(B, 32, 8, L, 128, torch.bfloat16) for B, L in
                 ((16, 16384), (1, 4096), (16, 4096), (1, 16384), (64, 4096), (64, 16384))],
    },
}


# ---------------------------------------------------------------- forward


def make_fwd_inputs(case: Case, device: torch.device) -> Inputs:
    p = case.params
    q = torch.randn((p["B"], p["H"], p["S"], p["D"]), device=device).to(case.dtype)
    k, v = (torch.randn((p["B"], p["H"], p.get("Sk", p["S"]), p["D"]), device=device).to(case.dtype)
            for _ in range(2))
    return {"q": q, "k": k, "v": v, "causal": p["causal"]}


def run_fwd(inputs: Inputs, backend: str | None) -> torch.Tensor:
    return genai_fast.scaled_dot_product_attention(inputs["q"], inputs["k"], inputs["v"],
                                                   is_causal=inputs["causal"], backend=backend)


def _oracle_blocks(q, k, v, fn, block: int = 1024) -> torch.Tensor:
    """fn(q rows, k, v, row offset, b, h) over query blocks per (batch, head), float64 on q's device."""
    outs = []
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            rows = [fn(q[b, h, i:i + block].double(), k[b, h].double(), v[b, h].double(), i, b, h)
                    for i in range(0, q.shape[2], block)]
            outs.append(torch.cat(rows))
    return torch.stack(outs).reshape(*q.shape[:2], q.shape[2], -1).cpu()


def _causal_rows(Sk: int, offset: int, rows: int, device) -> torch.Tensor:
    i = torch.arange(offset, offset + rows, device=device)[:, None]
    return torch.arange(Sk, device=device)[None, :] <= i


def fwd_oracle(inputs: Inputs) -> torch.Tensor:
    causal = inputs["causal"]

    def rows(qb, kh, vh, offset, b, h):
        mask = _causal_rows(kh.shape[0], offset, qb.shape[0], qb.device) if causal else None
        p, _, _, v, _ = _attention_probs(qb, kh, vh, mask, False, None, False)
        return p @ v

    return _oracle_blocks(inputs["q"], inputs["k"], inputs["v"], rows)


def _fwd_reference(name: str):
    def ref(inputs: Inputs) -> torch.Tensor:
        if name == "auto":
            return F.scaled_dot_product_attention(inputs["q"], inputs["k"], inputs["v"], is_causal=inputs["causal"])
        return _sdpa_with(name, inputs["q"], inputs["k"], inputs["v"], inputs["causal"])

    return ref


def fwd_flops(case: Case) -> float:
    p = case.params
    return 4.0 * p["B"] * p["H"] * p["S"] * p.get("Sk", p["S"]) * p["D"] / (2 if p["causal"] else 1)


def fwd_bytes(case: Case) -> float:
    p = case.params  # q and out, k and v, each read or written once
    rows = 2 * p["S"] + 2 * p.get("Sk", p["S"])
    return float(p["B"] * p["H"] * rows * p["D"] * torch.empty((), dtype=case.dtype).element_size())


# ---------------------------------------------------------------- backward


def make_bwd_inputs(case: Case, device: torch.device) -> Inputs:
    inputs = make_fwd_inputs(case, device)
    for name in ("q", "k", "v"):
        inputs[name].requires_grad_()
    inputs["grad"] = torch.randn_like(inputs["q"])
    inputs["graphs"] = {}  # one forward graph per backend, built once: the timed call is the backward
    return inputs


def _backward_of(inputs: Inputs, key: str, forward) -> torch.Tensor:
    graphs = inputs["graphs"]
    if key not in graphs:
        graphs[key] = forward()
    dq, = torch.autograd.grad(graphs[key], inputs["q"], inputs["grad"], retain_graph=True)
    return dq


def run_bwd(inputs: Inputs, backend: str | None) -> torch.Tensor:
    return _backward_of(inputs, f"genai_fast:{backend}", lambda: run_fwd(inputs, backend))


def _bwd_reference(name: str):
    def ref(inputs: Inputs) -> torch.Tensor:
        return _backward_of(inputs, f"sdpa:{name}", lambda: _fwd_reference(name)(inputs))

    return ref


def bwd_oracle(inputs: Inputs) -> torch.Tensor:
    """dq of the float64 reference, by query blocks: dQ rows need only their own rows of P and dP."""
    causal, scale = inputs["causal"], 1.0 / math.sqrt(inputs["q"].shape[-1])
    grad = inputs["grad"]

    def rows(qb, kh, vh, offset, b, h):
        mask = _causal_rows(kh.shape[0], offset, qb.shape[0], qb.device) if causal else None
        p, _, _, v, _ = _attention_probs(qb, kh, vh, mask, False, None, False)
        do = grad[b, h, offset:offset + qb.shape[0]].double()
        dp = do @ v.T
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        return ds @ kh * scale

    q, k, v = (inputs[n].detach() for n in ("q", "k", "v"))
    return _oracle_blocks(q, k, v, rows)


def bwd_flops(case: Case) -> float:
    return 2.5 * fwd_flops(case)


# ---------------------------------------------------------------- decode


def make_decode_inputs(case: Case, device: torch.device) -> Inputs:
    p = case.params
    B, Hq, Hkv, L, D = p["B"], p["Hq"], p["Hkv"], p["L"], p["D"]
    k_cache = torch.randn(B, Hkv, L, D, device=device).to(case.dtype)
    v_cache = torch.randn(B, Hkv, L, D, device=device).to(case.dtype)
    q = torch.randn(B, Hq, 1, D, device=device).to(case.dtype)
    # Every cache is full (uniform lengths), so SDPA over the cache is the same computation.
    return {"q": q, "k_cache": k_cache, "v_cache": v_cache,
            "seqlens": torch.full((B,), L, dtype=torch.int32, device=device)}


def run_decode(inputs: Inputs, backend: str | None) -> torch.Tensor:
    return genai_fast.attention_with_kvcache(inputs["q"], inputs["k_cache"], inputs["v_cache"], inputs["seqlens"],
                                             backend=backend)


def _decode_reference(name: str):
    """torch SDPA over the whole (full) cache. "auto" passes enable_gqa (torch then picks a kernel that
    takes grouped heads, the math one on torch 2.11); a named fused backend needs equal head counts, so
    it reads K/V repeated to Hq heads, made once outside the timed calls (it moves Hq/Hkv x the bytes)."""
    def ref(inputs: Inputs) -> torch.Tensor:
        q, k, v = inputs["q"], inputs["k_cache"], inputs["v_cache"]
        if name == "auto":
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        if "k_rep" not in inputs:
            group = q.shape[1] // k.shape[1]
            inputs["k_rep"], inputs["v_rep"] = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return _sdpa_with(name, q, inputs["k_rep"], inputs["v_rep"], False)

    return ref


def _usable_decode_backends() -> list[str]:
    """Fused SDPA backends that run a one-token query against a 256-long cache here."""
    usable = []
    for name in ("flash", "efficient", "cudnn"):
        try:
            q = torch.randn(2, 8, 1, 128, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(2, 8, 256, 128, device="cuda", dtype=torch.bfloat16)
            _sdpa_with(name, q, k, k, False)
            torch.cuda.synchronize()
            usable.append(name)
        except Exception:  # unavailable for this shape here: left out
            continue
    return usable


def decode_oracle(inputs: Inputs) -> torch.Tensor:
    q, k, v = (inputs[n].double() for n in ("q", "k_cache", "v_cache"))
    return genai_fast.scaled_dot_product_attention_reference(q, k, v, enable_gqa=True).cpu()


def decode_bytes(case: Case) -> float:
    p = case.params
    element = torch.empty((), dtype=case.dtype).element_size()
    return element * p["B"] * p["D"] * (2 * p["Hkv"] * p["L"] + 2 * p["Hq"])


def decode_flops(case: Case) -> float:
    p = case.params
    return 4.0 * p["B"] * p["Hq"] * p["L"] * p["D"]


# ---------------------------------------------------------------- registration


def _references(make, backward: bool = False) -> dict:
    names = _usable_sdpa_backends(backward)
    if "math" in names:
        # The math backward stores several S x S matrices (16k does not fit); its forward took 26-100 ms at the
        # target lengths on an H200, each call eating the bench budget that the fused references and larger
        # shapes need. The fused backends (flash, efficient, cuDNN) are the comparisons that matter.
        names.remove("math")
    return {f"torch SDPA ({name})": make(name) for name in names}


def _register() -> None:
    register(BenchEntry(
        op="scaled_dot_product_attention", presets=FWD_PRESETS, make_inputs=make_fwd_inputs, run=run_fwd,
        references=_references(_fwd_reference), oracle=fwd_oracle, flops=fwd_flops, bytes=fwd_bytes,
        bound="compute",
    ))
    register(BenchEntry(
        op="scaled_dot_product_attention_backward", presets=BWD_PRESETS, make_inputs=make_bwd_inputs, run=run_bwd,
        references=_references(_bwd_reference, backward=True), oracle=bwd_oracle, flops=bwd_flops,
        bytes=lambda case: 2 * fwd_bytes(case), bound="compute",
    ))
    decode_refs = {"torch SDPA (auto, enable_gqa)": _decode_reference("auto")}
    if torch.cuda.is_available():
        decode_refs.update({f"torch SDPA ({n}, K/V repeated)": _decode_reference(n) for n in _usable_decode_backends()})
    register(BenchEntry(
        op="attention_with_kvcache", presets=DECODE_PRESETS, make_inputs=make_decode_inputs, run=run_decode,
        references=decode_refs, oracle=decode_oracle, flops=decode_flops, bytes=decode_bytes, bound="memory",
    ))


_register()


# ---------------------------------------------------------------- CPU: op vs torch SDPA


def _alternating_best(ours, theirs) -> tuple[float, float]:
    """Best median ms of each of two calls over three alternating rounds (a shared CPU's load drifts)."""
    from genai_fast.bench.timing import time_cpu

    best_ours, best_theirs = float("inf"), float("inf")
    for _ in range(3):
        best_ours = min(best_ours, time_cpu(ours, 0.3).median_ms)
        best_theirs = min(best_theirs, time_cpu(theirs, 0.3).median_ms)
    return best_ours, best_theirs


def cpu_report(preset: str = "quick") -> list[dict]:
    """The op (automatic dispatch) vs torch SDPA on the CPU cases, timed alternately, same inputs."""

    rows = []
    device = torch.device("cpu")
    for make, run, ref, cases in (
        (make_fwd_inputs, run_fwd, _fwd_reference("auto"), FWD_PRESETS[preset]["cpu"]),
        (make_decode_inputs, run_decode, _decode_reference("auto"), DECODE_PRESETS[preset]["cpu"]),
    ):
        for case in cases:
            inputs = make(case, device)
            ours, theirs = _alternating_best(lambda inputs=inputs, run=run: run(inputs, None),
                                             lambda inputs=inputs, ref=ref: ref(inputs))
            rows.append({"shape": case.label, "ours_ms": ours, "torch_ms": theirs,
                         "overhead_us": 1e3 * (ours - theirs)})
    return rows


# Training on the CPU (forward and backward through autograd): head dims 8-128 over 64-1024 tokens, causal or
# not, B2 H8; quick keeps one length per head dim.
TRAINING_CASES = {
    "quick": [_fwd_case(2, 8, 256, D, c, torch.float32) for D in (8, 64) for c in (False, True)],
    "full": [_fwd_case(2, 8, S, D, c, torch.float32) for D in (8, 16, 32, 40, 64, 128) for S in (64, 256, 1024)
             for c in (False, True)] + [_fwd_case(2, 8, 256, 40, False, torch.float32, Sk=77)],
}


def cpu_training_report(preset: str = "quick") -> list[dict]:
    """Forward and backward through autograd, the op (automatic dispatch) vs torch SDPA, timed alternately on the
    same inputs and output gradient."""

    from genai_fast.backends.dispatch import OPS

    rows = []
    for case in TRAINING_CASES[preset]:
        inputs = make_fwd_inputs(case, torch.device("cpu"))
        leaves = [inputs[name].requires_grad_() for name in ("q", "k", "v")]
        grad = torch.randn_like(inputs["q"])

        def ours(inputs=inputs, leaves=leaves, grad=grad) -> None:
            torch.autograd.grad(run_fwd(inputs, None), leaves, grad)

        def theirs(leaves=leaves, grad=grad, causal=inputs["causal"]) -> None:
            torch.autograd.grad(F.scaled_dot_product_attention(*leaves, is_causal=causal), leaves, grad)

        best_ours, best_theirs = _alternating_best(ours, theirs)
        rows.append({"shape": case.label, "ours_ms": best_ours, "torch_ms": best_theirs,
                     "backend": OPS["scaled_dot_product_attention_backward"].last_backend})
    return rows


# Sliding-window and soft-capped causal prefill (Mistral-/Gemma-2-like heads at D 64 on a CPU, D 128 bf16 on a
# GPU): (S, window, softcap).
WINDOW_CASES = {"cpu": [(2048, 256, 0.0), (4096, 512, 0.0), (4096, 4096, 50.0), (4096, 512, 50.0)],
                "cuda": [(8192, 1024, 0.0), (16384, 4096, 0.0), (8192, 8192, 50.0), (16384, 4096, 50.0)]}


def _eager_capped(q, k, v, band, softcap, scale):
    """What a torch user runs for a soft cap: transformers' eager attention (scores, tanh, mask, fp32 softmax)."""
    s = (q @ k.transpose(-1, -2)) * scale
    s = torch.tanh(s / softcap) * softcap
    p = torch.softmax(s.masked_fill(~band, float("-inf")), dim=-1, dtype=torch.float32).to(q.dtype)
    return p @ v


def window_report(device: str = "cpu", heads: int = 8) -> list[dict]:
    """Causal prefill with a sliding window and/or soft cap, the op (automatic dispatch) against what torch offers:
    SDPA with the window as a boolean band mask (no cap), transformers' eager computation (a cap), and the op's
    own full causal attention without either (what the window saves). Medians of alternating runs, same inputs."""
    return [_window_row(device, heads, *case) for case in WINDOW_CASES[device]]


def _window_row(device: str, heads: int, S: int, window: int, softcap: float) -> dict:
    from genai_fast.bench.timing import time_together

    from genai_fast.backends.dispatch import OPS

    dtype, D = (torch.bfloat16, 128) if device == "cuda" else (torch.float32, 64)
    q, k, v = (torch.randn(1, heads, S, D, device=device).to(dtype) for _ in range(3))
    i = torch.arange(S, device=device)
    band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    win = window if window < S else None
    calls = {
        "genai_fast": lambda: genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, softcap=softcap,
                                                                      window=win),
        "genai_fast causal, no window or cap": lambda: genai_fast.scaled_dot_product_attention(q, k, v,
                                                                                               is_causal=True),
    }
    if softcap:
        calls["eager torch (HF)"] = lambda: _eager_capped(q, k, v, band, softcap, D ** -0.5)
    else:
        calls["torch SDPA, band mask"] = lambda: F.scaled_dot_product_attention(q, k, v, band)
    calls["genai_fast"]()
    backend = OPS["scaled_dot_product_attention"].last_backend
    timings = time_together(calls, torch.device(device), quick=False)
    return {"S": S, "window": window, "softcap": softcap, "backend": backend,
            **{f"{name} ms": t.median_ms for name, t in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description="attention on the CPU: genai_fast vs torch SDPA")
    parser.add_argument("--preset", choices=("quick", "full"), default="quick")
    parser.add_argument("--training", action="store_true", help="forward and backward through autograd")
    parser.add_argument("--window", action="store_true",
                        help="sliding-window / soft-capped causal prefill against torch's ways to compute them")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="for --window")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.window:
        for row in window_report(args.device):
            print(row)
        return
    if args.training:
        print(f"{'shape':<32} {'genai_fast ms':>14} {'torch SDPA ms':>14} {'speedup':>8} backward")
        for row in cpu_training_report(args.preset):
            print(f"{row['shape']:<32} {row['ours_ms']:>14.3f} {row['torch_ms']:>14.3f} "
                  f"{row['torch_ms'] / row['ours_ms']:>7.2f}x {row['backend']}")
        return
    print(f"{'shape':<32} {'genai_fast ms':>14} {'torch SDPA ms':>14} {'difference us':>14}")
    for row in cpu_report(args.preset):
        print(f"{row['shape']:<32} {row['ours_ms']:>14.3f} {row['torch_ms']:>14.3f} {row['overhead_us']:>14.1f}")


if __name__ == "__main__":
    main()
