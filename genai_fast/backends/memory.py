"""Output and workspace allocation for the launchers, with NaN poisoning for tests.

When poisoning is on (the `poison_outputs()` context, or GENAI_FAST_POISON=1 in the environment when
genai_fast is imported), every buffer a launcher allocates is filled with NaN first, so an element a kernel
forgot to write shows up as NaN instead of whatever the allocator's memory held.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

# Read once: an environment lookup costs half a microsecond, and every launcher allocation asks.
_POISON_FROM_ENV = os.environ.get("GENAI_FAST_POISON") == "1"
_poison_depth = 0


def poisoning() -> bool:
    return _poison_depth > 0 or _POISON_FROM_ENV


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    """Within this block, launcher allocations are NaN-filled (floating dtypes) before kernels run."""
    global _poison_depth
    _poison_depth += 1
    try:
        yield
    finally:
        _poison_depth -= 1


def _poison(t: torch.Tensor) -> torch.Tensor:
    if poisoning() and t.is_floating_point():
        t.fill_(float("nan"))
    return t


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """torch.empty_like(t) (same layout), NaN-filled when poisoning."""
    return _poison(torch.empty_like(t))


def new_empty(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """t.new_empty(shape) (t's dtype and device), NaN-filled when poisoning; a microsecond cheaper than
    empty() for the launchers of small decode-time calls."""
    return _poison(t.new_empty(shape))


def empty(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device,
          memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """torch.empty(shape), NaN-filled when poisoning."""
    return _poison(torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format))
