"""Numerics helpers shared by the tests, the benchmark runner and the GPU check (DESIGN.md section 4).

The rule: a kernel's error against the float64 oracle may be at most twice the error of the same
computation done by PyTorch in the kernel's dtype, plus a rounding floor scaled by the output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rounding floors, relative to max(1, max |oracle|): a few units in the last place of each dtype.
FLOORS = {
    torch.float64: 1e-12,
    torch.float32: 2e-6,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


@dataclass(frozen=True)
class ErrorStats:
    """max_abs: largest |out - oracle|; rel_l2: ||out - oracle|| / ||oracle||; nan: any non-finite
    output where the oracle is finite."""

    max_abs: float
    rel_l2: float
    nan: bool

    def __str__(self) -> str:
        return f"max-abs {self.max_abs:.3e}, rel-L2 {self.rel_l2:.3e}" + (", NON-FINITE values" if self.nan else "")


def error_stats(out: torch.Tensor, oracle: torch.Tensor) -> ErrorStats:
    """Errors of `out` against the float64 `oracle` (compared on the CPU in float64)."""
    out64 = out.detach().to(device="cpu", dtype=torch.float64)
    ref64 = oracle.detach().to(device="cpu", dtype=torch.float64)
    if out64.shape != ref64.shape:
        raise ValueError(f"out: expected shape {tuple(ref64.shape)}, got {tuple(out64.shape)}")
    finite = torch.isfinite(ref64)
    bad = bool((torch.isfinite(out64) != finite).any())  # NaN where the oracle is finite, or vice versa
    diff = torch.where(finite, out64 - ref64, torch.zeros_like(ref64))
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    norm = float(torch.where(finite, ref64, torch.zeros_like(ref64)).norm())
    rel = float(diff.norm()) / norm if norm > 0 else float(diff.norm())
    return ErrorStats(max_abs, rel, bad)


def tolerance(baseline: ErrorStats, oracle: torch.Tensor, dtype: torch.dtype) -> float:
    """Allowed max-abs error: 2 x PyTorch's own error in `dtype` + the dtype's floor."""
    scale = max(1.0, float(oracle.detach().abs().max())) if oracle.numel() else 1.0
    return 2.0 * baseline.max_abs + FLOORS[dtype] * scale


def assert_matches_oracle(
    out: torch.Tensor, oracle: torch.Tensor, baseline_out: torch.Tensor, what: str = "output"
) -> None:
    """Raise AssertionError unless `out` is within the tolerance rule.

    out: the kernel's output; oracle: the float64 reference; baseline_out: PyTorch's reference computed
    in out's dtype (the error budget the kernel is held to).
    """
    got = error_stats(out, oracle)
    base = error_stats(baseline_out, oracle)
    allowed = tolerance(base, oracle, out.dtype)
    if got.nan or got.max_abs > allowed:
        raise AssertionError(
            f"{what} ({out.dtype}, shape {tuple(out.shape)}): {got}; allowed max-abs {allowed:.3e} "
            f"(torch in {out.dtype}: {base})"
        )
