"""Views of [N, C, *] tensors as [N, C, S] in one of the two memory layouts the kernels read.

channels-first: contiguous, element (n, c, s) at (n * C + c) * S + s.
channels-last:  channels innermost (torch.channels_last and its 3-D/5-D analogues), at (n * S + s) * C + c.
Any other strides are copied to contiguous first; the output is then given x's own layout back, so
every backend returns what `torch.empty_like(x)` would (the fake implementation's promise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def slice_reach(shape: Sequence[int], strides: Sequence[int]) -> int:
    """How far apart, in elements, two entries of the last two dimensions (rows, columns) lie at most: the largest
    index-times-stride product there. Kernels that index inside such a slice with 32-bit products need it below
    2^31 (the Triton attention kernels)."""
    reach = 0
    for n, step in zip(shape[-2:], strides[-2:], strict=True):  # a plain loop: torch.compile traces it
        reach = max(reach, (n - 1) * abs(step))
    return reach


def is_channels_last(x: torch.Tensor) -> bool:
    """True when x [N, C, *] stores channels innermost with no gaps (and is not plain contiguous)."""
    if x.dim() < 3 or x.is_contiguous():
        return False
    if x.dim() == 4:  # torch's own check (one C++ call) for the common case
        return x.is_contiguous(memory_format=torch.channels_last)
    return x.permute(0, *range(2, x.dim()), 1).is_contiguous()


@dataclass
class NCSView:
    """x as [N, C, S]: the dense tensor the kernel reads, its sizes and its layout."""

    original: torch.Tensor
    tensor: torch.Tensor
    N: int
    C: int
    S: int
    channels_last: bool

    def restore(self, out: torch.Tensor) -> torch.Tensor:
        """The kernel's output (laid out like `tensor`) in the original input's layout."""
        if self.tensor is self.original:
            return out
        result = torch.empty_like(self.original)
        result.copy_(out)  # every element is overwritten: no poisoning needed
        return result


def as_ncs(x: torch.Tensor) -> NCSView:
    """x [N, C, *] as an NCSView; copies to contiguous only for layouts the kernels do not read."""
    N, C = x.shape[0], x.shape[1]
    S = math.prod(x.shape[2:])
    if x.is_contiguous():
        return NCSView(x, x, N, C, S, channels_last=False)
    if is_channels_last(x):
        return NCSView(x, x, N, C, S, channels_last=True)
    return NCSView(x, x.contiguous(), N, C, S, channels_last=False)


def layout_name(x: torch.Tensor) -> str:
    """'contiguous', 'channels_last' or 'strided' (for benchmark rows and error messages)."""
    if x.is_contiguous():
        return "contiguous"
    return "channels_last" if is_channels_last(x) else "strided"
