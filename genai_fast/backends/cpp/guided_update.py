"""Launcher for the C++ guided sampler update (csrc/cpu/guided_update.cpp)."""

from __future__ import annotations

import torch

from genai_fast.backends.cpp import address, extension, require_cpu


def guided_update_fwd(x: torch.Tensor, model_output: torch.Tensor, previous_x0: torch.Tensor | None,
                      noise: torch.Tensor | None, out: torch.Tensor, x0_out: torch.Tensor | None, guided: bool,
                      guidance: float, coefficients: tuple[float, ...], clip: float,
                      num_threads: int | None = None) -> None:
    """Fill out (and x0_out) from dense fp32 CPU tensors of one memory layout: x, previous_x0, noise, out,
    x0_out of n elements, model_output of 2n (guided) or n."""
    _require_one_layout(x, model_output=model_output, previous_x0=previous_x0, noise=noise, out=out, x0_out=x0_out)

    def numel(t: torch.Tensor | None) -> int:
        return 0 if t is None else t.numel()

    extension().guided_update_forward(
        address(x), x.numel(), address(model_output), model_output.numel(), address(previous_x0), numel(previous_x0),
        address(noise), numel(noise), address(out), out.numel(), address(x0_out), numel(x0_out), x.numel(), guided,
        guidance, list(coefficients), clip, num_threads or torch.get_num_threads())


def _require_one_layout(x: torch.Tensor, **others: torch.Tensor | None) -> None:
    """The kernel walks every buffer as one flat array: each must be fp32 on the CPU and laid out as x is, x
    contiguous or channels_last (else elements of different positions meet, silently)."""
    require_cpu("x", x)
    layout = torch.contiguous_format if x.is_contiguous() or x.dim() != 4 else torch.channels_last
    if not x.is_contiguous(memory_format=layout):
        raise ValueError(f"x: expected a contiguous or channels_last tensor, got strides {tuple(x.stride())}")
    for name, t in others.items():
        if t is None:
            continue
        require_cpu(name, t)
        if t.dim() != x.dim() or not t.is_contiguous(memory_format=layout):
            raise ValueError(f"{name}: expected the memory layout of x ({layout}), got shape {tuple(t.shape)} and "
                             f"strides {tuple(t.stride())}")
