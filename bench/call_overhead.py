"""Small calls: each op's own cost where the kernel is tiny, against the torch call it replaces.

On a small CPU row (an LLM decode step's RMSNorm, a projection of one token, a tiny U-Net's GroupNorm) the
checks and the dispatch of a Python op cost as much as the arithmetic, so the op replays each call signature's
checked choice (genai_fast/ops/plans.py). This times the public ops on such inputs against their torch
counterparts, alternating the two in rounds so that drift on a shared VM hits both alike.

    python -m genai_fast.bench.call_overhead [--rounds 5] [--calls 5000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends.dispatch import OPS
from genai_fast.io import atomic_write_text

Case = tuple[str, str, Callable[[], object], Callable[[], object]]


def _cases() -> list[Case]:
    """(name, op, genai_fast call, torch call) on fixed random inputs."""
    g = torch.Generator().manual_seed(0)
    row, weight = torch.randn(1, 576, generator=g), torch.randn(576, generator=g)
    proj_w, proj_b = torch.randn(576, 576, generator=g), torch.randn(576, generator=g)
    gate = torch.randn(2, 8, 512, generator=g)
    image = torch.randn(1, 64, 8, 8, generator=g)
    gn_w, gn_b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    q, k, v = (torch.randn(1, 4, 8, 16, generator=g) for _ in range(3))

    def torch_geglu() -> torch.Tensor:
        hidden, gate_half = gate.chunk(2, dim=-1)
        return hidden * F.gelu(gate_half)

    return [
        ("rms_norm 1x576", "rms_norm", lambda: genai_fast.rms_norm(row, weight),
         lambda: F.rms_norm(row, (576,), weight, 1e-6)),
        ("linear 1x576 @ 576x576", "linear", lambda: genai_fast.linear(row, proj_w, proj_b),
         lambda: F.linear(row, proj_w, proj_b)),
        ("group_norm+silu 1x64x8x8 g32", "group_norm",
         lambda: genai_fast.group_norm(image, 32, gn_w, gn_b, activation="silu"),
         lambda: F.silu(F.group_norm(image, 32, gn_w, gn_b))),
        ("geglu 2x8x512", "geglu", lambda: genai_fast.geglu(gate), torch_geglu),
        ("sdpa 1x4x8x16", "scaled_dot_product_attention", lambda: genai_fast.scaled_dot_product_attention(q, k, v),
         lambda: F.scaled_dot_product_attention(q, k, v)),
    ]


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def measure(rounds: int = 5, calls: int = 5000) -> list[dict[str, object]]:
    """Median microseconds per call of each op and its torch counterpart, alternated over `rounds` rounds."""
    rows = []
    with torch.inference_mode():
        for name, op, ours, theirs in _cases():
            for fn in (ours, theirs):  # warm-up: the first call checks and plans, torch's kernels load
                for _ in range(min(calls, 500)):
                    fn()
            ours_us, theirs_us = [], []
            for _ in range(rounds):
                ours_us.append(_per_call_us(ours, calls))
                theirs_us.append(_per_call_us(theirs, calls))
            a, b = statistics.median(ours_us), statistics.median(theirs_us)
            rows.append({"case": name, "genai_fast_us": a, "torch_us": b, "speedup": b / a,
                         "backend": OPS[op].last_backend})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls: expected positive integers")
    rows = measure(args.rounds, args.calls)
    print(f"{'case':32s} {'genai_fast us':>14s} {'torch us':>9s} {'ratio':>6s}  backend")
    for r in rows:
        print(f"{r['case']:32s} {r['genai_fast_us']:14.2f} {r['torch_us']:9.2f} {r['speedup']:6.2f}  {r['backend']}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
