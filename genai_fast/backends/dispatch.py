"""The dispatcher: every op has a priority list of backend implementations; the first that can run wins.

Each implementation declares what it supports (`Capability`) and may add op-specific checks. Asking an
implementation `not_supported_reasons(inputs)` returns a list of human-readable reasons (empty means it
can run). The torch reference is registered last for every op and always runs, so automatic dispatch
never fails. `backend="name"` (or the environment variable GENAI_FAST_BACKEND) forces one backend and
raises with the reasons when it cannot run.

An op may also register implementations under names of their own that combine backends (conv2d's
"torch+triton": torch's convolution, then a Triton epilogue kernel). Such an implementation declares the
backend whose optional piece it `requires` (its availability and the Triton-on-CPU rule follow that
backend); it is forced by its own name through that op's `backend=` argument. An op whose runnable
implementations should be raced rather than taken in priority order sets `Op.choose`.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from genai_fast.backends import availability

BACKEND_NAMES = ("triton", "cuda", "cpp", "torch")
ENV_BACKEND = "GENAI_FAST_BACKEND"


class BackendNotSupportedError(RuntimeError):
    """A forced backend cannot run these inputs; the message lists every reason."""


ANY_DEVICE = ("any",)  # Capability.devices of a torch reference: whatever device type torch runs the ops on


@dataclass(frozen=True)
class Capability:
    """What a backend implementation of an op can run.

    devices: device types ("cpu", "cuda"), or ANY_DEVICE; dtypes: accepted input dtypes; layouts: memory layouts it
    reads natively (others are made contiguous first, so this is informative); min_compute_capability:
    lowest CUDA compute capability; features: op-specific abilities, named for `genai-fast info`.
    """

    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    layouts: tuple[str, ...] = ("contiguous",)
    min_compute_capability: tuple[int, int] | None = None
    features: tuple[str, ...] = ()

    def reasons(self, device: torch.device, dtype: torch.dtype) -> list[str]:
        reasons = []
        if device.type not in self.devices and self.devices != ANY_DEVICE:
            reasons.append(f"device {device.type} is not supported (supports {', '.join(self.devices)})")
        if dtype not in self.dtypes:
            names = ", ".join(_dtype_name(d) for d in self.dtypes)
            reasons.append(f"dtype {_dtype_name(dtype)} is not supported (supports {names})")
        if device.type == "cuda" and self.min_compute_capability and torch.cuda.is_available():
            cc = availability.compute_capability(device)
            if cc < self.min_compute_capability:
                need = ".".join(map(str, self.min_compute_capability))
                reasons.append(f"compute capability {cc[0]}.{cc[1]} is below the required {need}")
        return reasons

    def describe(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "dtypes": [_dtype_name(d) for d in self.dtypes],
            "layouts": list(self.layouts),
            "min_compute_capability": (
                ".".join(map(str, self.min_compute_capability)) if self.min_compute_capability else None
            ),
            "features": list(self.features),
        }


@dataclass
class Implementation:
    """One backend's implementation of one op.

    backend: the implementation's name (one of BACKEND_NAMES, or an op-specific name such as
    "torch+triton"); requires: the backend in BACKEND_NAMES whose optional piece it needs (its own name
    when that is a backend). run: the launcher, called with the op's arguments. check: op-specific
    reasons beyond device and dtype (shapes, head dims, argument values), given the same inputs dict.
    """

    op: str
    backend: str
    capability: Capability
    run: Callable[..., Any]
    check: Callable[[dict[str, Any]], list[str]] | None = None
    requires: str = ""

    def __post_init__(self) -> None:
        if not self.requires:
            self.requires = self.backend

    def unavailable_reasons(self) -> list[str]:
        """Why the optional piece this implementation needs is missing in this process (empty: present)."""
        return availability.backend_unavailable_reasons(self.requires)

    def not_supported_reasons(self, inputs: dict[str, Any], *, forced: bool = False) -> list[str]:
        """Why this implementation cannot run `inputs` (empty list: it can).

        inputs holds at least "device" and "dtype"; ops add what their `check` reads.
        """
        reasons = self.unavailable_reasons()
        if reasons:
            return reasons
        device, dtype = inputs["device"], inputs["dtype"]
        if self.requires == "triton" and device.type == "cpu":
            reasons += _triton_cpu_reasons(forced)
        reasons += self.capability.reasons(device, dtype)
        if self.check is not None:
            reasons += self.check(inputs)
        return reasons


def _triton_cpu_reasons(forced: bool) -> list[str]:
    # The interpreter runs Triton kernels on CPU tensors, but it is for tests: only a forced backend
    # uses it, so automatic dispatch on a CPU never picks a kernel that is 1000x slower than torch.
    if not availability.triton_interpreter_enabled():
        return ["CPU tensors need TRITON_INTERPRET=1 (set before triton is imported)"]
    if not forced:
        return ["the Triton interpreter is used only when backend='triton' is forced"]
    return []


# Orders the backend records of every op and thread (itertools.count's next() is atomic under the GIL).
_RECORD_ORDER = itertools.count()
_THREAD_KIND = threading.local()


def _on_foreign_thread() -> bool:
    """Whether this thread was started outside Python's threading module (autograd's device threads, which run a
    GPU backward while the thread that called backward() waits); found once per thread."""
    try:
        return _THREAD_KIND.foreign
    except AttributeError:
        _THREAD_KIND.foreign = isinstance(threading.current_thread(), threading._DummyThread)
        return _THREAD_KIND.foreign


class _BackendRecord:
    """The backend an op's latest call ran, per thread: the patched diffusers U-Net reads it right after its own
    call to decide what to replay, and a process-wide value let a call in another thread in between make it replay
    an implementation chosen for other inputs (which then raised, or computed something else). A call made on a
    foreign thread (a GPU backward) counts for every thread, as it runs for a caller that is waiting on it."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._foreign: tuple[int, str | None] = (-1, None)

    def get(self) -> str | None:
        own = getattr(self._local, "entry", (-1, None))
        return max(own, self._foreign, key=lambda entry: entry[0])[1]

    def set(self, backend: str | None) -> None:
        entry = (next(_RECORD_ORDER), backend)
        self._local.entry = entry
        if _on_foreign_thread():
            self._foreign = entry


@dataclass
class Op:
    """An op's registered implementations, in priority order, and the dispatcher over them.

    `last_backend` is the backend of the latest call made from the current thread (see _BackendRecord)."""

    name: str
    implementations: list[Implementation] = field(default_factory=list)
    # Optional: choose(inputs, runnable) -> the implementation to run, given every implementation that can
    # run `inputs` (in priority order). None: the first one wins. Automatic mode only; forcing bypasses it.
    choose: Callable[[dict[str, Any], list[Implementation]], Implementation] | None = None
    # Automatic choices keyed by (device, dtype) for ops whose backends check nothing else: dispatch
    # runs on every call, and on a GPU its Python time is comparable to a small kernel's run time.
    _auto_cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)
    _extra_names: tuple[str, ...] | None = field(default=None, repr=False)
    # Whether automatic choices may be cached by (device, dtype): no implementation checks anything else.
    _cacheable: bool = field(default=True, repr=False)
    _backend_record: _BackendRecord = field(default_factory=_BackendRecord, repr=False, compare=False)

    @property
    def last_backend(self) -> str | None:
        return self._backend_record.get()

    @last_backend.setter
    def last_backend(self, backend: str | None) -> None:
        self._backend_record.set(backend)

    def register(
        self,
        backend: str,
        capability: Capability,
        check: Callable[[dict[str, Any]], list[str]] | None = None,
        *,
        requires: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register `fn` as this op's `backend` implementation (priority = order of calls).

        requires: for an implementation with a name of its own (not in BACKEND_NAMES), the backend whose
        optional piece it needs.
        """
        if requires is None and backend not in BACKEND_NAMES:
            raise ValueError(f"backend: expected one of {BACKEND_NAMES}, got {backend!r}")
        if requires is not None and (requires not in BACKEND_NAMES or backend in BACKEND_NAMES):
            raise ValueError(f"requires: expected one of {BACKEND_NAMES} for an implementation named other "
                             f"than a backend, got requires={requires!r} for {backend!r}")

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.implementations.append(Implementation(self.name, backend, capability, fn, check, requires or ""))
            self._cacheable = self._cacheable and check is None
            self._auto_cache.clear()
            self._extra_names = None
            return fn

        return decorator

    def extra_names(self) -> tuple[str, ...]:
        """Names of this op's implementations that are not backend names (forcible through `backend=`)."""
        if self._extra_names is None:
            self._extra_names = tuple(impl.backend for impl in self.implementations
                                      if impl.backend not in BACKEND_NAMES)
        return self._extra_names

    def _runnable(self, inputs: dict[str, Any], cacheable: bool) -> list[Implementation]:
        """Every implementation that can run `inputs` in automatic mode, in priority order (for `choose`)."""
        key = ("runnable", inputs["device"], inputs["dtype"], availability.triton_interpreter_enabled())
        if cacheable and key in self._auto_cache:
            return self._auto_cache[key]
        runnable = [impl for impl in self.implementations if not impl.not_supported_reasons(inputs)]
        if cacheable:
            self._auto_cache[key] = runnable
        return runnable

    def get(self, backend: str) -> Implementation:
        for impl in self.implementations:
            if impl.backend == backend:
                return impl
        raise BackendNotSupportedError(f"{self.name}: no {backend!r} implementation is registered")

    def plan(self, inputs: dict[str, Any]) -> list[tuple[str, list[str]]]:
        """Each backend in priority order with the reasons it cannot run `inputs` (automatic mode)."""
        return [(impl.backend, impl.not_supported_reasons(inputs)) for impl in self.implementations]

    def select(self, inputs: dict[str, Any], backend: str | None = None) -> Implementation:
        """The implementation that runs `inputs`: the forced one, else `choose` over the runnable ones
        when the op sets it, else the first with no reasons."""
        forced = resolve_backend_name(backend, self.extra_names())
        if forced is not None:
            impl = self.get(forced)
            reasons = impl.not_supported_reasons(inputs, forced=True)
            if reasons:
                raise BackendNotSupportedError(
                    f"{self.name}: backend {forced!r} cannot run these inputs: " + "; ".join(reasons)
                )
            self.last_backend = impl.backend
            return impl
        cacheable = self._cacheable
        if self.choose is not None:
            runnable = self._runnable(inputs, cacheable)
            if runnable:
                impl = self.choose(inputs, runnable)
                self.last_backend = impl.backend
                return impl
        key = (inputs["device"], inputs["dtype"], availability.triton_interpreter_enabled())
        if cacheable and key in self._auto_cache:
            impl = self._auto_cache[key]
            self.last_backend = impl.backend
            return impl
        for impl in self.implementations:
            if not impl.not_supported_reasons(inputs):
                if cacheable:
                    self._auto_cache[key] = impl
                self.last_backend = impl.backend
                return impl
        # The torch reference never declines supported inputs; reaching here is a registration bug.
        raise BackendNotSupportedError(f"{self.name}: no backend can run these inputs: {self.plan(inputs)}")


OPS: dict[str, Op] = {}


def define_op(name: str) -> Op:
    """Create (once) and return the dispatcher of op `name`."""
    if name not in OPS:
        OPS[name] = Op(name)
    return OPS[name]


def validate_backend_name(backend: str | None, extra_names: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming `backend` when it is not a known backend name (or one of the op's
    `extra_names`) or None."""
    if backend is not None and backend not in BACKEND_NAMES and backend not in extra_names:
        names = ", ".join(BACKEND_NAMES + tuple(extra_names))
        raise ValueError(f"backend: expected one of {names} or None, got {backend!r}")


def resolve_backend_name(backend: str | None, extra_names: tuple[str, ...] = ()) -> str | None:
    """The backend to force: the argument, else GENAI_FAST_BACKEND, else None (automatic).

    extra_names: the op's own implementation names, accepted as the argument (the environment variable
    names backends only, since it applies to every op)."""
    validate_backend_name(backend, extra_names)
    if backend is not None:
        return backend
    env = os.environ.get(ENV_BACKEND, "").strip()
    if not env:
        return None
    if env not in BACKEND_NAMES:
        raise ValueError(f"{ENV_BACKEND}: expected one of {', '.join(BACKEND_NAMES)}, got {env!r}")
    return env


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
