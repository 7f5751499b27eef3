"""Tile-size sweep for the Triton attention kernels on a GPU (a tool, not part of the benchmark run).

    python -m genai_fast.bench.attention_tune [--seqlen 4096] [--dims 128 64]

Prints TFLOP/s of each forward config (BLOCK_M, BLOCK_N, warps, stages), causal and not, next to torch
SDPA's flash and cuDNN backends (on Hopper and newer also the TMA forward's configs, kernels/attention_tma.py),
then the backward configs at D 128 causal. The heuristics in
kernels/attention.py (_fwd_config, _bwd_config) quote the H100 numbers this produced.
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
import torch.nn.functional as F
from genai_fast.kernels import attention as kernels

FWD_CONFIGS = {
    128: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 64, 8, 4), (128, 128, 8, 2)],
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 4), (128, 128, 4, 3), (128, 32, 4, 4)],
}
# The TMA forward (kernels/attention_tma.py, Hopper): 128-row tiles for the two warpgroups, deeper pipelines.
TMA_CONFIGS = {
    128: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 4, 3)],
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 4, 3), (64, 64, 4, 4)],
}
BWD_CONFIGS = [(64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 3), (32, 128, 8, 2)]


def _ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=40))


def _config(bm: int, bn: int, warps: int, stages: int) -> dict[str, int]:
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}


def _sdpa_line(q, k, v, causal: bool, flops: float) -> str:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    parts = []
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                ms = _ms(lambda b=backend: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
            parts.append(f"{name} {flops / ms / 1e9:.0f}")
        except RuntimeError as exc:
            parts.append(f"{name} unavailable ({str(exc)[:60]})")
    return ", ".join(parts)


def _forward_call(q, k, v, causal: bool, config: dict[str, int]):
    return lambda: kernels.attention_fwd(q, k, v, None, causal, q.shape[-1] ** -0.5, config)


def _tma_call(q, k, v, causal: bool, config: dict[str, int]):
    from genai_fast.kernels.attention_tma import attention_fwd_tma

    return lambda: attention_fwd_tma(q, k, v, causal, q.shape[-1] ** -0.5, config)


def _sweep(label: str, configs: list[tuple[int, int, int, int]], make_call, q, k, v, causal: bool,
           flops: float) -> None:
    for cfg in configs:
        run = make_call(q, k, v, causal, _config(*cfg))
        try:
            ms = _ms(run)
            print(f"  {label} {cfg}: {flops / ms / 1e9:.0f} TFLOP/s")
        except Exception as exc:  # a config that does not fit (shared memory, registers)
            print(f"  {label} {cfg}: failed ({type(exc).__name__}: {str(exc)[:100]})")


def sweep_forward(seqlen: int, dims: list[int], tma: bool) -> None:
    for D in dims:
        B, H = max(1, 16384 // seqlen), 2048 // D
        q, k, v = (torch.randn(B, H, seqlen, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (True, False):
            flops = 4 * B * H * seqlen * seqlen * D / (2 if causal else 1)
            print(f"forward D{D} S{seqlen} causal={causal}: torch SDPA {_sdpa_line(q, k, v, causal, flops)}")
            _sweep("pointers", FWD_CONFIGS.get(D, FWD_CONFIGS[128]), _forward_call, q, k, v, causal, flops)
            if tma:
                _sweep("tma", TMA_CONFIGS.get(D, TMA_CONFIGS[128]), _tma_call, q, k, v, causal, flops)


def sweep_backward(seqlen: int) -> None:
    D, B, H = 128, max(1, 16384 // seqlen), 16
    q, k, v, grad = (torch.randn(B, H, seqlen, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    out, lse = kernels.attention_fwd(q, k, v, None, True, D**-0.5)
    flops = 2.5 * 4 * B * H * seqlen * seqlen * D / 2
    print(f"backward D{D} S{seqlen} causal")
    for cfg in BWD_CONFIGS:
        with mock.patch.object(kernels, "_bwd_config", lambda *a, c=cfg: _config(*c)):
            try:
                ms = _ms(lambda: kernels.attention_bwd(grad, q, k, v, None, out, lse, True, D**-0.5))
                print(f"  {cfg}: {flops / ms / 1e9:.0f} TFLOP/s")
            except Exception as exc:
                print(f"  {cfg}: failed ({type(exc).__name__}: {str(exc)[:100]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=4096)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--no-tma", action="store_true", help="skip the TMA forward's configs (Hopper+)")
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_tune: needs a CUDA GPU")
    tma = not args.no_tma and torch.cuda.get_device_capability() >= (9, 0)
    sweep_forward(args.seqlen, args.dims, tma)
    if not args.forward_only:
        sweep_backward(args.seqlen)


if __name__ == "__main__":
    main()
