"""Launcher for the C++ Winograd F(2x2, 3x3) convolution (csrc/cpu/winograd.cpp): input and weight
transforms in C++, the 16 products as one torch.bmm (BLAS), the output transform with the conv epilogue
in C++.

The transformed input V [16, P, C] and the products M [16, P, C_out] are each 4x the size of the
activation they come from. Allocating them per call costs more than the convolution at SD sizes (tens of
MB are fresh pages for the allocator's mmap each time), so each Python thread keeps its largest V, U and M
buffers for reuse, as oneDNN and cuDNN keep their workspaces. `release_workspace()` frees this thread's.
"""

from __future__ import annotations

import threading

import torch

from genai_fast.backends import memory
from genai_fast.backends.cpp import address, extension, require_cpu

_WORKSPACE = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 CPU tensor of `shape` from this thread's buffer `name` (grown when too small)."""
    numel = 1
    for size in shape:
        numel *= size
    buffer = getattr(_WORKSPACE, name, None)
    if buffer is None or buffer.numel() < numel:
        # A normal tensor even when first made under torch.inference_mode(): an inference tensor could not be
        # written (out=) by a later call outside it.
        with torch.inference_mode(False):
            buffer = torch.empty(numel)
        setattr(_WORKSPACE, name, buffer)
    return buffer[:numel].view(shape)


def release_workspace() -> None:
    """Free this thread's Winograd buffers (they are reallocated on the next call)."""
    for name in ("V", "U", "M"):
        if hasattr(_WORKSPACE, name):
            delattr(_WORKSPACE, name)


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                     activation: str | None, output_scale: float) -> torch.Tensor:
    """x [N, C, H, W] fp32 CPU, dense channels_last; weight [C_out, C, 3, 3] fp32 (any strides); stride 1,
    padding 1 -> channels_last [N, C_out, H, W] = (act(conv + bias) + residual) * output_scale."""
    _check_inputs(x, weight, bias, residual)
    ext, threads = extension(), torch.get_num_threads()
    N, C, H, W = x.shape
    C_out = weight.shape[0]
    P = N * ((H + 1) // 2) * ((W + 1) // 2)
    V = _scratch("V", (16, P, C))
    ext.winograd_input_transform(address(x), x.numel(), address(V), V.numel(), N, H, W, C, threads)
    U = _scratch("U", (16, C_out, C))
    extent = sum((size - 1) * stride for size, stride in zip(weight.shape, weight.stride(), strict=True)) + 1
    ext.winograd_weight_transform(address(weight), extent, list(weight.stride()), address(U), U.numel(), C, C_out,
                                  threads)
    M = torch.bmm(V, U.transpose(1, 2), out=_scratch("M", (16, P, C_out)))
    out = memory.empty((N, C_out, H, W), dtype=torch.float32, device=x.device, memory_format=torch.channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    ext.winograd_output_transform(address(M), M.numel(), address(bias), 0 if bias is None else bias.numel(),
                                  bias is not None and bias.dim() == 2, address(residual),
                                  0 if residual is None else residual.numel(), address(out), out.numel(), N, H, W,
                                  C_out, activation == "silu", float(output_scale), threads)
    return out


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  residual: torch.Tensor | None) -> None:
    """What the transforms assume of their bare addresses (any other dtype, layout or shape would be read as
    if it were this one): fp32 CPU tensors, x dense channels_last [N, C, H, W], weight [C_out, C, 3, 3],
    bias contiguous [C_out] or [N, C_out], residual [N, C_out, H, W]."""
    require_cpu("x", x)
    require_cpu("weight", weight)
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"x: expected a dense channels_last [N, C, H, W] tensor, got shape {tuple(x.shape)} and "
                         f"strides {tuple(x.stride())}")
    N, C, H, W = x.shape
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (C, 3, 3):
        raise ValueError(f"weight: expected shape [C_out, {C}, 3, 3], got {tuple(weight.shape)}")
    C_out = weight.shape[0]
    if bias is not None:
        require_cpu("bias", bias, contiguous=True)
        if tuple(bias.shape) not in ((C_out,), (N, C_out)):
            raise ValueError(f"bias: expected shape [{C_out}] or [{N}, {C_out}], got {tuple(bias.shape)}")
    if residual is not None:
        require_cpu("residual", residual)
        if tuple(residual.shape) != (N, C_out, H, W):
            raise ValueError(f"residual: expected shape {[N, C_out, H, W]}, got {tuple(residual.shape)}")
