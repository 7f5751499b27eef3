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


def dtype_code(dtype: torch.dtype) -> int:
    """The code the C++ side uses for `dtype` (fp32 0, fp16 1, bf16 2)."""
    return _DTYPE_CODES[dtype]


def address(tensor: torch.Tensor | None) -> int:
    """Data address of a CPU tensor, 0 for None (the C++ side reads 0 as 'absent')."""
    return 0 if tensor is None else tensor.data_ptr()
