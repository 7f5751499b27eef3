"""Whether each backend's optional piece (Triton, CuPy, the compiled _C) is present, and why not.

Nothing here raises: a missing piece makes its backend unavailable with a reason. Results are cached
because dispatch asks on every call.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType

import torch

_INTERPRETER: bool | None = None  # TRITON_INTERPRET, kept once triton is imported


def triton_interpreter_enabled() -> bool:
    """TRITON_INTERPRET=1. The variable has to be set before triton is imported (a kernel is made interpreted
    or compiled when its module defines it), so once triton is in sys.modules the answer is read once and
    kept: every dispatch asks, and an environment lookup costs about a microsecond."""
    global _INTERPRETER
    if _INTERPRETER is not None:
        return _INTERPRETER
    enabled = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if "triton" in sys.modules:
        _INTERPRETER = enabled
    return enabled


@functools.cache
def triton_module() -> tuple[ModuleType | None, str]:
    """(triton, "") when importable, else (None, why)."""
    try:
        return importlib.import_module("triton"), ""
    except Exception as exc:  # ImportError, or a broken install raising anything
        return None, f"triton is not importable ({type(exc).__name__}: {exc})"


@functools.cache
def cupy_module() -> tuple[ModuleType | None, str]:
    """(cupy, "") when importable and it sees a GPU, else (None, why)."""
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:
        return None, f"cupy is not importable ({type(exc).__name__}: {exc})"
    return cupy, ""


@functools.cache
def cpp_module() -> tuple[ModuleType | None, str]:
    """(genai_fast._C, "") when the extension was built, else (None, why)."""
    try:
        return importlib.import_module("genai_fast._C"), ""
    except Exception as exc:
        return None, f"the C++ extension genai_fast._C is not built ({type(exc).__name__}: {exc})"


def backend_unavailable_reasons(backend: str) -> list[str]:
    """Reasons the backend cannot run anything in this process (empty list: it is available)."""
    if backend == "torch":
        return []
    if backend == "cpp":
        module, why = cpp_module()
        return [] if module is not None else [why]
    if backend == "triton":
        module, why = triton_module()
        if module is None:
            return [why]
        if not torch.cuda.is_available() and not triton_interpreter_enabled():
            return ["no CUDA GPU (and TRITON_INTERPRET=1 is not set)"]
        return []
    if backend == "cuda":
        if not torch.cuda.is_available():
            return ["no CUDA GPU"]
        module, why = cupy_module()
        return [] if module is not None else [why]
    return [f"unknown backend {backend!r}"]


def versions() -> dict[str, str | None]:
    """Versions of the pieces the backends use (None where absent)."""
    triton, _ = triton_module()
    cupy, _ = cupy_module() if torch.cuda.is_available() else (None, "")
    cpp, _ = cpp_module()
    return {
        "torch": torch.__version__,
        "triton": getattr(triton, "__version__", None),
        "cupy": getattr(cupy, "__version__", None),
        "cuda": torch.version.cuda,
        "cpp_extension": getattr(cpp, "__version__", None),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


@functools.cache
def compute_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) of a CUDA device, cached (the query costs microseconds on every dispatch)."""
    return torch.cuda.get_device_capability(device)


@functools.cache
def multiprocessor_count(device: torch.device) -> int:
    """Number of SMs of a CUDA device, cached."""
    return torch.cuda.get_device_properties(device).multi_processor_count
