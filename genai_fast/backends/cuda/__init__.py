"""Loader for the CUDA kernels in csrc/cuda/*.cu: NVRTC compilation through CuPy, cached, and launches
on PyTorch tensors on the current torch CUDA stream.

The sources are found as package data (`genai_fast/_cuda_src/<source>` in an installed wheel; setup.py
maps csrc/cuda to `genai_fast._cuda_src`) or, in a source or editable checkout, as
`<repo>/csrc/cuda/<source>`. Compiled modules are cached per (source, device, options) in this process;
CuPy also caches the binaries on disk (~/.cupy/kernel_cache, or $CUPY_CACHE_DIR).

CuPy compiles for the current device's architecture itself (it adds `-arch=sm_XY` for the device that
is current while compiling), so `load_kernel` makes the tensor's device current rather than passing an
architecture flag of its own.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

import genai_fast
from genai_fast.backends.availability import cupy_module

# CuPy adds `--std=c++14` only when no `-std=` option is given; the sources compile as C++14 too.
DEFAULT_OPTIONS: tuple[str, ...] = ("-std=c++17",)

_MODULES: dict[tuple[str, int, tuple[str, ...]], Any] = {}
_KERNELS: dict[tuple[str, str, int, tuple[str, ...]], Any] = {}
_LOCK = threading.Lock()


def cupy() -> ModuleType:
    """The cupy module; raises RuntimeError with the reason when it cannot be imported."""
    module, why = cupy_module()
    if module is None:
        raise RuntimeError(f"the CUDA backend needs CuPy (pip install cupy-cuda12x or cupy-cuda13x): {why}")
    return module


def source_dirs() -> list[Path]:
    """Where .cu sources are looked for, in order: the installed package data, then the checkout."""
    package = Path(genai_fast.__file__).resolve().parent
    return [package / "_cuda_src", package.parent / "csrc" / "cuda"]


def source_path(source: str) -> Path:
    """Path of csrc/cuda/<source> (installed or in the checkout); FileNotFoundError names both places."""
    if "/" in source or "\\" in source or source in ("", ".", ".."):
        raise ValueError(f"source: expected a file name like 'group_norm.cu', got {source!r}")
    candidates = [d / source for d in source_dirs()]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"CUDA source {source!r} not found; looked in " + ", ".join(str(p) for p in candidates)
    )


cuda_source_path = source_path  # the name .ci/run and other callers use


@functools.cache
def read_source(source: str) -> str:
    """Text of csrc/cuda/<source> (read once per process)."""
    return source_path(source).read_text(encoding="utf-8")


def device_index(device: torch.device | int | None = None) -> int:
    """CUDA device index of `device` (a torch device, an index, or None for torch's current device)."""
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    if device.type != "cuda":
        raise ValueError(f"expected a CUDA device, got {device}")
    return device.index if device.index is not None else torch.cuda.current_device()


def load_module(source: str, device: torch.device | int | None = None,
                options: Sequence[str] = DEFAULT_OPTIONS) -> Any:
    """The cupy.RawModule of csrc/cuda/<source> for `device`, compiled by NVRTC on first use."""
    cp = cupy()
    index = device_index(device)
    opts = tuple(options)
    key = (source, index, opts)
    module = _MODULES.get(key)
    if module is None:
        with _LOCK:
            module = _MODULES.get(key)
            if module is None:
                module = cp.RawModule(code=read_source(source), options=opts, backend="nvrtc")
                with cp.cuda.Device(index):
                    module.compile()  # compile now, for this device, so errors surface here
                _MODULES[key] = module
    return module


def load_kernel(source: str, name: str, device: torch.device | int | None = None,
                options: Sequence[str] = DEFAULT_OPTIONS) -> Any:
    """The `extern "C"` kernel `name` of csrc/cuda/<source> as a cupy.RawKernel, compiled for `device`."""
    index = device_index(device)
    opts = tuple(options)
    key = (source, name, index, opts)
    kernel = _KERNELS.get(key)
    if kernel is None:
        cp = cupy()
        module = load_module(source, index, opts)
        with cp.cuda.Device(index):
            kernel = module.get_function(name)
        _KERNELS[key] = kernel
    return kernel


# ---------------------------------------------------------------- kernel arguments


def ptr(tensor: torch.Tensor | None) -> np.uint64:
    """A tensor's device address as a 64-bit kernel argument (0 for None: 'absent')."""
    return np.uint64(0 if tensor is None else tensor.data_ptr())


def i64(value: int) -> np.int64:
    """A `long long` kernel argument."""
    return np.int64(value)


def i32(value: int) -> np.int32:
    """An `int` kernel argument."""
    return np.int32(value)


def f32(value: float) -> np.float32:
    """A `float` kernel argument."""
    return np.float32(value)


def f64(value: float) -> np.float64:
    """A `double` kernel argument."""
    return np.float64(value)


def launch(kernel: Any, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any], *,
           device: torch.device | int | None = None, shared_mem: int = 0) -> None:
    """Launch `kernel` on torch's current stream of `device`, with `device` current for CuPy.

    args must already have the kernel's C types (ptr, i64, i32, f32, f64 above): CuPy passes a Python
    int as a 64-bit integer and a Python float as a double, whatever the kernel declares.
    """
    cp = cupy()
    index = device_index(device)
    if any(g < 1 for g in grid) or any(b < 1 for b in block):
        raise ValueError(f"launch: grid {grid} and block {block} must be positive")
    with cp.cuda.Device(index):
        stream = cp.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream)
        kernel(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem, stream=stream)


@functools.cache
def multiprocessor_count(index: int) -> int:
    """Number of SMs of CUDA device `index`."""
    return torch.cuda.get_device_properties(index).multi_processor_count
