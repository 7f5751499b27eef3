"""Call plans: what a public op's checks and dispatcher decided for one call signature, replayed by later calls.

Checking a call's arguments and walking the dispatcher costs several microseconds of Python per call, as much as a
small CPU kernel or a GPU launch. An op whose decision depends only on what a signature holds (every tensor's
type, shape, dtype, device and requires_grad, strides where they matter, each scalar argument with its type, grad
mode, GENAI_FAST_BACKEND) checks a signature once and replays the plan afterwards. Signatures are only built in
plain eager mode: torch.compile tracing and dispatch modes take the checked path every time.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from genai_fast.backends.availability import triton_interpreter_enabled
from genai_fast.backends.dispatch import ENV_BACKEND


class PlanTable:
    """Plans by call signature, cleared when `max_plans` are held (a long-running process that sees ever new
    shapes keeps a bounded table)."""

    def __init__(self, max_plans: int = 1024) -> None:
        self.max_plans = max_plans
        self._plans: dict[tuple[Any, ...], Any] = {}

    def get(self, signature: tuple[Any, ...] | None) -> Any:
        """The plan recorded for `signature`, or None (also for None and for unhashable arguments, which the
        checks then reject)."""
        if signature is None:
            return None
        try:
            return self._plans.get(signature)
        except TypeError:
            return None

    def put(self, signature: tuple[Any, ...] | None, plan: Any) -> None:
        if signature is None:
            return
        if len(self._plans) >= self.max_plans:
            self._plans.clear()
        with contextlib.suppress(TypeError):  # unhashable: never replayed
            self._plans[signature] = plan

    def clear(self) -> None:
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


def signatures_allowed() -> bool:
    """False while torch.compile traces or a dispatch mode (profiler, FLOP counter, FakeTensor mode) is active:
    those must see every call's custom op and checks."""
    return not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0


def tensor_signature(t: torch.Tensor | None, strides: bool = False) -> tuple[Any, ...] | None:
    """What the checks read from a tensor argument (with its strides when the dispatch reads them); raises
    AttributeError for something that is not a tensor."""
    if t is None:
        return None
    if strides:
        return (type(t), t.shape, t.stride(), t.dtype, t.device, t.requires_grad)
    return (type(t), t.shape, t.dtype, t.device, t.requires_grad)


class EagerPlans:
    """The implementation an op's dispatcher chose for call signatures that passed the op's checks and skipped its
    custom op (plain eager, nothing requiring grad): later calls with the signature run it straight away.

    For the ops whose choice reads nothing but the signature (every tensor's type, shape, strides, dtype, device
    and requires_grad; the scalar arguments with their types; `backend`; grad mode; GENAI_FAST_BACKEND; the
    Triton interpreter; torch's thread count). Replaying spares the checks, the dispatcher's walk and the bypass
    test: about 5 us of Python on a small call, as long as the kernel itself on a CPU row or a GPU launch.
    """

    def __init__(self, op: Any, max_plans: int = 1024) -> None:
        self.op = op
        self._table = PlanTable(max_plans)

    def signature(self, tensors: tuple[torch.Tensor | None, ...], scalars: tuple[Any, ...],
                  backend: str | None) -> tuple[Any, ...] | None:
        """The call's signature, or None where the checked path must run (tracing, dispatch modes, an argument
        that should be a tensor and is not)."""
        if not signatures_allowed():
            return None
        try:
            described = tuple(tensor_signature(t, strides=True) for t in tensors)
        except AttributeError:
            return None
        return (described, tuple((type(s), s) for s in scalars), backend, torch.is_grad_enabled(),
                os.environ.get(ENV_BACKEND), triton_interpreter_enabled(), torch.get_num_threads())

    def replay(self, signature: tuple[Any, ...] | None) -> Any:
        """The implementation recorded for `signature` (now the op's last_backend), or None."""
        impl = self._table.get(signature)
        if impl is not None:
            self.op.last_backend = impl.backend
        return impl

    def record(self, signature: tuple[Any, ...] | None, impl: Any) -> Any:
        """Keep `impl` for `signature` (nothing for None) and return it."""
        self._table.put(signature, impl)
        return impl

    def clear(self) -> None:
        self._table.clear()

    def __len__(self) -> int:
        return len(self._table)
