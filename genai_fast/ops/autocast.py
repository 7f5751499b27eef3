"""torch.autocast for the public ops: each op casts its inputs as autocast casts those of the torch op it stands
for, then runs with autocast off.

Inside an autocast region, torch casts the inputs of some ops before they run: conv2d, linear and
scaled_dot_product_attention to the region's lower-precision dtype on every device ("lower_precision_fp"),
group_norm to float32 under CUDA autocast (CPU autocast leaves it alone, its kernels take a low-precision x with
float32 parameters). A drop-in replacement has to do the same, or a model that runs under autocast (diffusers'
training scripts do, through accelerate) meets a bf16 activation next to an fp32 weight and fails, or computes
in another precision than the model it replaces.

The cast happens in the public function, before validation and before autograd sees the op, as torch's
autocast does (casts are differentiable: gradients reach fp32 parameters in fp32). The op then runs with autocast
disabled, so the torch functions some backends call inside do not cast a second time: every backend computes in
the precision of the inputs it was given, and the dispatcher's choice never changes the output's dtype. Ops that
torch's autocast leaves alone (rms_norm, geglu, guided_update, the KV-cache attention, whose cache fixes the
precision) still run with autocast off for that reason.

Only floating-point tensors other than float64 are cast, as autocast does.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

LOWER_PRECISION = "lower_precision_fp"  # conv2d, linear, scaled_dot_product_attention
FLOAT32_ON_CUDA = "fp32_on_cuda"  # group_norm: in CUDA autocast's float32 list, absent from CPU autocast's lists
UNCHANGED = "unchanged"  # not in autocast's lists: inputs keep their dtypes

# Device types whose autocast the ops follow: those the backends run on.
_DEVICE_TYPES = ("cpu", "cuda")


def autocast_active(tensor: torch.Tensor) -> bool:
    """True inside an autocast region enabled for tensor's device type (False for a non-tensor: the op's own
    checks name it)."""
    if not torch._C._is_any_autocast_enabled() or not isinstance(tensor, torch.Tensor):
        return False
    device_type = tensor.device.type
    return device_type in _DEVICE_TYPES and torch.is_autocast_enabled(device_type)


def autocast_dtype(policy: str, device_type: str) -> torch.dtype | None:
    """The dtype an op of this policy casts its inputs to inside an autocast region enabled for device_type, or
    None when its inputs keep their dtypes."""
    if policy == LOWER_PRECISION:
        return torch.get_autocast_dtype(device_type)
    if policy == FLOAT32_ON_CUDA and device_type == "cuda":
        return torch.float32
    return None


def cast_inputs(dtype: torch.dtype | None, *tensors: Any) -> tuple[Any, ...]:
    """tensors, each floating-point one other than float64 cast to dtype (None: all unchanged; anything that is
    not a tensor is passed on for the op's checks to name)."""
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if _eligible(t, dtype) else t for t in tensors)


def autocast_off(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Disables autocast for tensor's device type inside the block."""
    return torch.autocast(tensor.device.type, enabled=False)


def _eligible(tensor: torch.Tensor | None, dtype: torch.dtype) -> bool:
    return (isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dtype != torch.float64
            and tensor.dtype != dtype)
