"""Call plans: what a public op's checks and dispatcher decided for one call signature, replayed by later calls.

Checking a call's arguments and walking the dispatcher costs several microseconds of Python per call, as much as a
small CPU kernel or a GPU launch. An op whose decision depends only on what a signature holds (every tensor's
type, shape, dtype, device and requires_grad, strides where they matter, each scalar argument with its type, grad
mode, GENAI_FAST_BACKEND) checks a signature once and replays the plan afterwards. Signatures are only built in
plain eager mode: torch.compile tracing and dispatch modes take the checked path every time.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


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
