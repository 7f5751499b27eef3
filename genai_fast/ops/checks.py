"""Input checks shared by the ops' validation (messages start with the argument's name)."""

from __future__ import annotations

import numbers
from typing import Any

import torch


def check_tensor_like_x(name: str, t: Any, dtype: torch.dtype, device: torch.device) -> torch.Size:
    """t's shape, after checking that t is a tensor with x's dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected x's dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on x's device {device}, got {t.device}")
    return t.shape


def is_real_number(value: Any) -> bool:
    """True for a real scalar as torch's functional API takes one: a Python or NumPy int or float, not a bool
    (NumPy's float32 is not a Python float, yet model configs and schedulers hand it over)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def reference_input(t: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """t as an input for differentiating an op's torch reference inside its backward.

    Under backward(create_graph=True) the gradients must themselves be differentiable functions of the op's
    inputs: a view of t keeps the path to t (a distinct node, so an input passed twice gets each use's own
    gradient). Otherwise a detached leaf: the reference's graph stays local to this backward."""
    if create_graph and t.requires_grad:
        return t.view_as(t)
    return t.detach().requires_grad_(t.is_floating_point())
