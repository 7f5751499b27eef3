"""First-call timing for CPU choices whose winner depends on the host.

Which of two implementations is faster on a CPU can depend on the machine more than on the shape: the same VM type
has run torch's BLAS at half oneDNN's rate on one host and ahead of it on another. Where the ops cannot tell from a
rule, they time the candidates once per shape (or shape bucket) and keep the answer; this is the timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Warm-up per candidate: at least this long and two calls. One call was not enough on the 2-core VM: after an
# idle spell the first ~10 ms of calls ran the kernels' second thread late (a 128-query attention call took
# 1.3 ms for ten calls, then 0.65), which once made the race keep torch where the kernel was 1.9x faster.
WARMUP_MS = 20.0
WARMUP_MIN_CALLS = 2
WARMUP_MAX_CALLS = 50


def median_ms(runs: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Median milliseconds of each callable: a warm-up first (first-touch allocations, oneDNN's primitive
    creation, threads waking up: see WARMUP_MS), then `repeats` rounds in which the candidates take turns, since a
    shared CPU's load drifts."""
    for run in runs.values():
        start, calls = time.perf_counter(), 0
        while calls < WARMUP_MIN_CALLS or (1e3 * (time.perf_counter() - start) < WARMUP_MS
                                           and calls < WARMUP_MAX_CALLS):
            run()
            calls += 1
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}
