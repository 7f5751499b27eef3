"""Input checks shared by the ops' validation (messages start with the argument's name)."""

from __future__ import annotations

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
