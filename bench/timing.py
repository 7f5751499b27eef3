"""Timers: CUDA events through triton.testing.do_bench on a GPU, perf_counter medians on a CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _summary(samples: list[float]) -> Timing:
    samples = sorted(samples)
    return Timing(statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8))


def time_cpu(fn: Callable[[], object], min_time_s: float = 0.3, min_reps: int = 10, warmup: int = 3) -> Timing:
    """Median of repeated wall-clock timings after warm-up, for at least min_time_s seconds.

    At least `min_reps` samples, except for slow calls (a whole sampling loop): once the samples have
    taken 4 x min_time_s, 5 of them are enough. Warm-up likewise stops after min_time_s (at least 1 call).
    """
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - start > min_time_s:
            break
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
        enough = len(samples) >= min_reps or (len(samples) >= 5 and elapsed > 4 * min_time_s)
        if (enough and elapsed >= min_time_s) or len(samples) >= 10_000:
            break
    return _summary(samples)


def time_cuda(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """do_bench medians (CUDA events; it flushes L2 between repetitions)."""
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return Timing(float(median), float(p20), float(p80))


def time_fn(fn: Callable[[], object], device: torch.device, quick: bool) -> Timing:
    return time_together({"fn": fn}, device, quick)["fn"]


CPU_ROUNDS = 3


def time_together(fns: dict[str, Callable[[], object]], device: torch.device, quick: bool) -> dict[str, Timing]:
    """Timings of candidates that are compared with each other.

    On a CPU the candidates take turns in CPU_ROUNDS rounds, each timed in a block of its own, and each
    keeps its round with the lowest median. Not interleaved call by call: torch's OpenMP workers keep
    spinning for a while after each torch op, so a C++ kernel called right after one competes with them
    for the cores (measured here: both sides 30-80% slower when interleaved). Rounds, because a shared
    machine's speed drifts over seconds: timed once each, one after the other, a 200 ms sampling loop
    measured 0.83x-1.35x against the same reference from run to run.
    """
    if device.type == "cuda":
        return {name: time_cuda(fn) for name, fn in fns.items()}
    min_time_s = (0.5 if quick else 1.0) / 2
    best: dict[str, Timing] = {}
    for _ in range(CPU_ROUNDS):
        for name, fn in fns.items():
            time.sleep(0.1)  # let the previous candidate's spinning OpenMP workers go to sleep first
            timing = time_cpu(fn, min_time_s)
            if name not in best or timing.median_ms < best[name].median_ms:
                best[name] = timing
    return best


def rotating(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One callable that cycles through several (each over its own inputs), so repeated runs do not
    find their inputs already in cache."""
    state = {"i": 0}

    def call() -> object:
        state["i"] = (state["i"] + 1) % len(calls)
        return calls[state["i"]]()

    return call
