"""First-call timing for CPU choices whose winner depends on the host.

Which of two implementations is faster on a CPU can depend on the machine more than on the shape: the same VM type
has run torch's BLAS at half oneDNN's rate on one host and ahead of it on another. Where the ops cannot tell from a
rule, they time the candidates once per shape (or shape bucket) and keep the answer; this is the timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def median_ms(runs: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Median milliseconds of each callable: one warm-up call each (first-touch allocations, oneDNN's primitive
    creation, thread start), then `repeats` rounds in which the candidates take turns, since a shared CPU's load
    drifts."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}
