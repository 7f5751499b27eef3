"""Loader for the CUDA kernels in csrc/cuda/*.cu: NVRTC compilation through CuPy, cached, and launches
on PyTorch tensors on the current torch CUDA stream.

The sources are found as package data (`genai_fast/_cuda_src/<source>` in an installed wheel; setup.py
maps csrc/cuda to `genai_fast._cuda_src`) or, in a source or editable checkout, as
`<repo>/csrc/cuda/<source>`. Compiled modules are cached per (source, device, options) in this process;
CuPy also caches the binaries on disk (~/.cupy/kernel_cache, or $CUPY_CACHE_DIR).

CuPy compiles for the current device's architecture itself (it adds `-arch=sm_XY` for the device that
is current while compiling), so `load_kernel` makes the tensor's device current rather than passing an
architecture flag of its own.

Two ways to launch: `launch(raw_kernel, ...)` goes through CuPy's RawKernel call (arguments as
numpy scalars of the kernel's C types: ptr, i64, i32, f32, f64 below); `load_launcher(...)` returns a
`Launcher` that packs plain Python ints and floats by a signature string into a reused buffer and
calls cuLaunchKernel directly, which costs less host time per launch than the RawKernel call (this
matters on a GPU, where a small op's kernels run for less time than the Python that launches them).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
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


_STREAMS: dict[tuple[int, int], Any] = {}


def _current_stream_pointer(index: int) -> int:
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # skips building a torch.cuda.Stream
    return raw(index) if raw is not None else torch.cuda.current_stream(index).cuda_stream


def cupy_stream(index: int, pointer: int) -> Any:
    """A cupy stream object for the CUDA stream `pointer` of device `index`, made once per stream."""
    stream = _STREAMS.get((index, pointer))
    if stream is None:
        cp = cupy()
        with warnings.catch_warnings():
            # CuPy 14 deprecates ExternalStream in favour of Stream.from_external, which needs an
            # object with __cuda_stream__; the raw pointer form works in CuPy 12 to 14.
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                stream = cp.cuda.ExternalStream(pointer, device_id=index)
            except TypeError:  # CuPy < 12: no device_id
                stream = cp.cuda.ExternalStream(pointer)
        _STREAMS[(index, pointer)] = stream
    return stream


@contextlib.contextmanager
def torch_stream(device: torch.device | int | None = None) -> Iterator[Any]:
    """Within this block `device` is CuPy's current device; yields torch's current stream of `device`
    as a cupy stream object, to pass as `stream=` to kernel calls (so they order with torch's work)."""
    index = device_index(device)
    stream = cupy_stream(index, _current_stream_pointer(index))
    with current_device(index):
        yield stream


def launch(kernel: Any, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any], *,
           device: torch.device | int | None = None, shared_mem: int = 0) -> None:
    """Launch `kernel` on torch's current stream of `device`, with `device` current for CuPy.

    args must already have the kernel's C types (ptr, i64, i32, f32, f64 above): CuPy passes a Python
    int as a 64-bit integer and a Python float as a double, whatever the kernel declares.
    """
    if any(g < 1 for g in grid) or any(b < 1 for b in block):
        raise ValueError(f"launch: grid {grid} and block {block} must be positive")
    with torch_stream(device) as stream:
        kernel(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem, stream=stream)


# ---------------------------------------------------------------- direct driver launches

# One 8-byte slot per kernel parameter: cuLaunchKernel reads each parameter through its own pointer, so
# a 4-byte int or float only needs its first 4 bytes (little-endian) filled.
_SLOT_FORMATS = {"p": "Q", "q": "q", "i": "i4x", "f": "f4x", "d": "d"}


class Launcher:
    """A kernel of one module on one device, launched with cuLaunchKernel on torch's current stream.

    signature: one letter per kernel parameter, in order: p pointer (an int address, 0 for null),
    q long long, i int, f float, d double. Calls take plain Python ints and floats; the caller makes
    device `index` current (see current_device) and passes the raw stream (torch_stream_pointer).
    """

    def __init__(self, raw_kernel: Any, index: int, signature: str) -> None:
        if any(c not in _SLOT_FORMATS for c in signature):
            raise ValueError(f"signature: expected letters from {''.join(_SLOT_FORMATS)}, got {signature!r}")
        cp = cupy()
        self.raw_kernel = raw_kernel
        self.index = index
        self.signature = signature
        with cp.cuda.Device(index):
            self.function = raw_kernel.kernel.ptr  # the CUfunction of this device's module
        self._struct = struct.Struct("<" + "".join(_SLOT_FORMATS[c] for c in signature))
        self._launch = cp.cuda.driver.launchKernel
        self._local = threading.local()
        self._occupancy: dict[tuple[int, int], int] = {}

    def blocks_per_sm(self, block_size: int, shared_mem: int = 0) -> int:
        """Blocks of `block_size` threads resident per SM (the occupancy calculator; 0 if unknown)."""
        key = (block_size, shared_mem)
        cache = self._occupancy
        if key not in cache:
            try:
                with current_device(self.index):
                    cache[key] = int(cupy().cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                        self.function, block_size, shared_mem))
            except Exception:  # an older CuPy without the call: the caller keeps its default
                cache[key] = 0
        return cache[key]

    def _buffers(self) -> tuple[Any, int]:
        local = self._local
        if not hasattr(local, "values"):
            n = len(self.signature)
            local.values = (ctypes.c_uint64 * max(n, 1))()
            base = ctypes.addressof(local.values)
            local.pointers = (ctypes.c_void_p * max(n, 1))(*[base + 8 * i for i in range(n)])
            local.pointers_address = ctypes.addressof(local.pointers)
        return local.values, local.pointers_address

    def __call__(self, grid: tuple[int, int, int], block: tuple[int, int, int], args: Sequence[Any],
                 stream: int, shared_mem: int = 0) -> None:
        """Launch on the CUDA stream `stream` (a raw pointer, e.g. torch_stream_pointer(index))."""
        values, pointers = self._buffers()
        self._struct.pack_into(values, 0, *args)
        # The driver copies the parameters during the call, so the buffers can be reused at once.
        self._launch(self.function, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared_mem,
                     stream, pointers, 0)


_LAUNCHERS: dict[tuple[str, str, int, str, tuple[str, ...]], Launcher] = {}


def load_launcher(source: str, name: str, signature: str, device: torch.device | int | None = None,
                  options: Sequence[str] = DEFAULT_OPTIONS) -> Launcher:
    """A `Launcher` for kernel `name` of csrc/cuda/<source> on `device` (compiled on first use)."""
    index = device_index(device)
    opts = tuple(options)
    key = (source, name, index, signature, opts)
    launcher = _LAUNCHERS.get(key)
    if launcher is None:
        launcher = Launcher(load_kernel(source, name, index, opts), index, signature)
        _LAUNCHERS[key] = launcher
    return launcher


def torch_stream_pointer(index: int) -> int:
    """Raw pointer of torch's current CUDA stream on device `index`."""
    return _current_stream_pointer(index)


@contextlib.contextmanager
def current_device(index: int) -> Iterator[None]:
    """Make CUDA device `index` current for the block (a no-op when it already is)."""
    cp = cupy()
    previous = cp.cuda.runtime.getDevice()
    if previous == index:
        yield
        return
    cp.cuda.runtime.setDevice(index)
    try:
        yield
    finally:
        cp.cuda.runtime.setDevice(previous)


@functools.cache
def multiprocessor_count(index: int) -> int:
    """Number of SMs of CUDA device `index`."""
    return torch.cuda.get_device_properties(index).multi_processor_count
