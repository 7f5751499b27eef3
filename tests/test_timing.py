"""genai_fast.ops.timing: the first-call timer behind the CPU choices that depend on the host."""

import time

from genai_fast.ops import timing


def test_median_ms_warms_each_candidate_up_then_alternates():
    """Each candidate is warmed up for at least WARMUP_MS (and two calls), then the candidates take turns; the
    result is each one's median over the timed rounds."""
    order = []

    def sleeper(name, seconds):
        def run():
            order.append(name)
            time.sleep(seconds)
        return run

    got = timing.median_ms({"slow": sleeper("slow", 0.006), "fast": sleeper("fast", 0.0005)}, repeats=3)
    warm_slow = order.index("fast")
    assert warm_slow >= max(timing.WARMUP_MIN_CALLS, timing.WARMUP_MS / 6.0 - 1)
    timed = order[-6:]
    assert timed == ["slow", "fast"] * 3
    warm_fast = len(order) - 6 - warm_slow
    assert timing.WARMUP_MIN_CALLS <= warm_fast <= timing.WARMUP_MAX_CALLS
    assert got["slow"] >= 6.0 and got["fast"] < got["slow"]
