"""Launchers for the C++ CPU kernels in genai_fast._C (built from csrc/cpu/ by setup.py)."""

from __future__ import annotations

from types import ModuleType

import torch

from genai_fast.backends.availability import cpp_module

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def extension() -> ModuleType:
    """The compiled module; raises RuntimeError with the reason when it was not built."""
    module, why = cpp_module()
    if module is None:
        raise RuntimeError(why)
    return module


def dtype_code(dtype: torch.dtype, name: str = "x") -> int:
    """The code the C++ side uses for `dtype` (fp32 0, fp16 1, bf16 2); TypeError naming `name` for any other."""
    if dtype not in _DTYPE_CODES:
        raise TypeError(f"{name}: expected a float32, float16 or bfloat16 tensor, got {dtype}")
    return _DTYPE_CODES[dtype]


def require_cpu(name: str, tensor: torch.Tensor, dtype: torch.dtype = torch.float32, contiguous: bool = False
                ) -> None:
    """Raise TypeError unless `tensor` is a CPU tensor of `dtype`, and ValueError when `contiguous` is asked
    and it is not. The kernels get bare addresses and read them as `dtype` values in row-major order: another
    dtype or layout reads the wrong numbers (and a narrower dtype reads past the buffer)."""
    if tensor.dtype is not dtype or not tensor.is_cpu:
        raise TypeError(f"{name}: expected a {dtype} CPU tensor, got {tensor.dtype} on {tensor.device}")
    if contiguous and not tensor.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {tuple(tensor.stride())}")


def address(tensor: torch.Tensor | None) -> int:
    """Data address of a CPU tensor, 0 for None (the C++ side reads 0 as 'absent')."""
    return 0 if tensor is None else tensor.data_ptr()


def as_rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """x [*, K] -> (rows [M, K] with unit stride along K, M, the row stride to pass, K for a single row): a view
    whenever the leading dimensions fold into rows at least K apart, else a copy (expanded rows, stride 0, are
    copied too). The row kernels (linear, gguf_linear, rms_norm) take it."""
    K = x.shape[-1]
    rows = x if x.dim() == 2 else x.reshape(-1, K)
    M = rows.shape[0]
    if rows.stride(1) != 1 or (M > 1 and rows.stride(0) < K):
        rows = rows.contiguous()
    return rows, M, rows.stride(0) if M > 1 else K
