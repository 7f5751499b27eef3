"""Launcher for the C++ guided sampler update (csrc/cpu/guided_update.cpp)."""

from __future__ import annotations

import torch

from genai_fast.backends.cpp import address, extension


def guided_update_fwd(x: torch.Tensor, model_output: torch.Tensor, previous_x0: torch.Tensor | None,
                      noise: torch.Tensor | None, out: torch.Tensor, x0_out: torch.Tensor | None, guided: bool,
                      guidance: float, coefficients: tuple[float, ...], clip: float,
                      num_threads: int | None = None) -> None:
    """Fill out (and x0_out) from dense fp32 CPU tensors of one memory layout: x, previous_x0, noise, out,
    x0_out of n elements, model_output of 2n (guided) or n."""

    def numel(t: torch.Tensor | None) -> int:
        return 0 if t is None else t.numel()

    extension().guided_update_forward(
        address(x), x.numel(), address(model_output), model_output.numel(), address(previous_x0), numel(previous_x0),
        address(noise), numel(noise), address(out), out.numel(), address(x0_out), numel(x0_out), x.numel(), guided,
        guidance, list(coefficients), clip, num_threads or torch.get_num_threads())
