"""When a public op may skip its torch.library custom op and call the dispatcher directly.

A Python custom op costs tens of microseconds per call (the dispatcher, autograd wrapping), which on a
GPU is longer than a small kernel. In plain eager inference nothing needs that machinery, so ops call
their implementation directly. The custom op still runs whenever something could observe it:
torch.compile tracing, autograd (a tensor that requires grad), tensor subclasses (FakeTensor, ...),
and TorchDispatchModes (profilers, FLOP counters). Inside an autocast region the public op must cast first.
"""

from __future__ import annotations

import torch

from genai_fast.ops.autocast import autocast_active

# nn.Parameter is a Tensor subclass without dispatch overrides (its __torch_function__ is disabled), so a
# module's weights behave like plain tensors here.
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def is_plain_eager(*tensors: torch.Tensor | None) -> bool:
    """True outside torch.compile tracing and dispatch modes, with plain tensors only: nothing but autograd
    could observe which PyTorch ops an op runs."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    return all(t is None or type(t) in _PLAIN_TENSOR_TYPES or _acts_plain(t) for t in tensors)


def _acts_plain(t: object) -> bool:
    """A tensor subclass that overrides neither torch function nor dispatch handling (as nn.Parameter, or the
    samplers' StepResult): torch treats it exactly as a plain tensor."""
    cls = type(t)
    return (isinstance(t, torch.Tensor) and cls.__torch_function__ is torch._C._disabled_torch_function_impl
            and cls.__torch_dispatch__ is torch.Tensor.__torch_dispatch__)


def can_bypass_custom_op(*tensors: torch.Tensor | None) -> bool:
    """True when calling the implementation directly is indistinguishable from the custom op."""
    if not is_plain_eager(*tensors):
        return False
    # The process-wide check first: outside autocast (the usual call) it spares the per-tensor walk.
    if torch._C._is_any_autocast_enabled() and any(autocast_active(t) for t in tensors):
        return False  # the public op casts the inputs first (ops/autocast.py); replayed plans would not
    if torch.is_grad_enabled():
        return not any(t is not None and t.requires_grad for t in tensors)
    return True
