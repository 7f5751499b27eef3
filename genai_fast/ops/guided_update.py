"""The sampler update of a diffusion step with classifier-free guidance, fused into one pass.

A diffusers sampling loop with guidance combines the U-Net's two halves, m = uncond + g (cond - uncond),
then lets the scheduler turn m and the latents x into the next latents: a dozen elementwise ops per
step, each a pass over the latents (and a kernel launch on a GPU). Each of DDPM, DDIM, Euler and
DPM-Solver++ updates the latents affinely in x, m, the predicted clean sample x0 (clipped or not), the
previous step's x0 and fresh noise, so one pass with per-step coefficients does it all:

    m   = uncond + guidance * (cond - uncond)        (m = model_output when guidance_scale is None)
    x0  = clamp(x0_from_x * x + x0_from_m * m, -clip, clip)
    out = x * c.x + x0 * c.x0 + m * c.m + (x0 - previous_x0) * c.x0_change + noise * c.noise

genai_fast.diffusion's samplers derive the coefficients per step (`Sampler.guided_step`).

Layers (DESIGN.md section 3): kernels kernels/guided_update.py (Triton) and csrc/cpu/guided_update.cpp
(C++), launchers next to them and in genai_fast/backends/cpp/guided_update.py; this module holds the
public function, validation, the `genai_fast::guided_update` custom op with its fake and autograd, the
reference and the backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from genai_fast.backends import memory
from genai_fast.backends.dispatch import ANY_DEVICE, Capability, define_op, validate_backend_name
from genai_fast.ops.autocast import autocast_active, autocast_off
from genai_fast.ops.checks import is_real_number, reference_input
from genai_fast.ops.eager import can_bypass_custom_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

GUIDED_UPDATE = define_op("guided_update")


class UpdateCoefficients(NamedTuple):
    """One step's coefficients (see the module docstring). A term whose coefficient is 0 is left out, so
    an infinite or NaN value in it does not turn the result into NaN through 0 * inf."""

    x0_from_x: float
    x0_from_m: float
    x: float
    x0: float
    m: float
    x0_change: float = 0.0
    noise: float = 0.0


def guided_update(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: UpdateCoefficients | Sequence[float],
    guidance_scale: float | None = None,
    previous_x0: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    clip: float | None = None,
    *,
    return_x0: bool = False,
    out_dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The next latents from the latents and the model's output, guidance and update in one pass.

    Args:
        x: [B, ...] latents (float16, bfloat16, float32 or float64).
        model_output: [2B, ...] with the unconditional half first when guidance_scale is given (the
            output of one U-Net call on the doubled batch), else [B, ...]; x's device.
        coefficients: UpdateCoefficients or 7 finite numbers in its order.
        guidance_scale: g of m = uncond + g (cond - uncond); None: m = model_output.
        previous_x0: [B, ...] the previous step's x0; needed when coefficients.x0_change != 0.
        noise: [B, ...] standard normal noise; needed when coefficients.noise != 0.
        clip: x0 is clamped to [-clip, clip]; None (or inf) for no clamp.
        return_x0: also return x0 (a multistep sampler keeps it for the next step).
        out_dtype: dtype of the results; default the promotion of x's and model_output's dtypes.
        backend: force "triton", "cpp" or "torch"; None picks the fastest that can run.

    Returns:
        (out, x0): [B, ...] in out_dtype, in model_output's memory format (channels_last when a U-Net
        returned it so); x0 is None unless return_x0. The arithmetic is fp32 (fp64 when x or
        model_output is float64).

    Equivalent PyTorch::

        uncond, cond = model_output.float().chunk(2)
        m = uncond + guidance_scale * (cond - uncond)
        x0 = (x0_from_x * x + x0_from_m * m).clamp(-clip, clip)
        out = c.x * x + c.x0 * x0 + c.m * m + c.x0_change * (x0 - previous_x0) + c.noise * noise
    """
    if autocast_active(x):
        with autocast_off(x):  # elementwise, in fp32 or fp64 whatever autocast says (ops/autocast.py)
            return guided_update(x, model_output, coefficients, guidance_scale, previous_x0, noise, clip,
                                 return_x0=return_x0, out_dtype=out_dtype, backend=backend)
    coefs = _validate(x, model_output, coefficients, guidance_scale, previous_x0, noise, clip, return_x0,
                      out_dtype, backend)
    guided = guidance_scale is not None
    guidance = float(guidance_scale) if guided else 1.0
    bound = math.inf if clip is None else float(clip)
    dtype = out_dtype or torch.promote_types(x.dtype, model_output.dtype)
    args = (x, model_output, previous_x0, noise, coefs, guided, guidance, bound, return_x0, dtype)
    if can_bypass_custom_op(x, model_output, previous_x0, noise):
        out, x0 = _run(*args, backend)
    else:
        out, x0 = torch.ops.genai_fast.guided_update(*args, backend or "")
    return out, (x0 if return_x0 else None)


def guided_update_reference(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: Sequence[float],
    guidance_scale: float | None = None,
    previous_x0: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    clip: float | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch, term by term in fp32 (fp64 for float64 inputs): the CPU fallback and, on float64
    inputs, the oracle. Returns (out, x0) contiguous; differentiable."""
    a, b, c_x, c_x0, c_m, c_change, c_noise = (float(v) for v in coefficients)
    compute = torch.float64 if torch.float64 in (x.dtype, model_output.dtype) else torch.float32
    dtype = out_dtype or torch.promote_types(x.dtype, model_output.dtype)
    xc, m = x.to(compute), model_output.to(compute)
    if guidance_scale is not None:
        uncond, cond = m.chunk(2)
        m = uncond + float(guidance_scale) * (cond - uncond)
    x0 = a * xc + b * m
    if clip is not None and math.isfinite(clip):
        x0 = x0.clamp(-clip, clip)
    out = torch.zeros_like(xc)
    for coef, term in ((c_x, lambda: xc), (c_x0, lambda: x0), (c_m, lambda: m),
                       (c_change, lambda: x0 - previous_x0.to(compute)), (c_noise, lambda: noise.to(compute))):
        if coef != 0.0:
            out = out + coef * term()
    return out.to(dtype), x0.to(dtype)


# ---------------------------------------------------------------- validation


def _check_tensor(name: str, t: Any, device: torch.device, shape: tuple[int, ...] | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected dtype float32, float16, bfloat16 or float64, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on x's device {device}, got {t.device}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")


def _real(name: str, value: Any) -> float:
    if not is_real_number(value) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _validate(x, model_output, coefficients, guidance_scale, previous_x0, noise, clip, return_x0, out_dtype,
              backend) -> tuple[float, ...]:
    """Raise TypeError/ValueError naming the first bad argument; returns the coefficients as floats."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    _check_tensor("x", x, x.device, None)
    if x.dim() < 1:
        raise ValueError("x: expected a tensor [B, ...] with a batch dimension, got a 0-d tensor")
    shape = tuple(x.shape)
    guided = guidance_scale is not None
    if guided:
        _real("guidance_scale", guidance_scale)
    _check_tensor("model_output", model_output, x.device,
                  (2 * shape[0], *shape[1:]) if guided else shape)
    if isinstance(coefficients, (str, bytes)) or not isinstance(coefficients, Sequence) or len(coefficients) != 7:
        raise ValueError(f"coefficients: expected UpdateCoefficients or 7 numbers, got {coefficients!r}")
    coefs = UpdateCoefficients(*(_real(f"coefficients.{name}", v)
                                 for name, v in zip(UpdateCoefficients._fields, coefficients, strict=True)))
    for name, t, coef in (("previous_x0", previous_x0, coefs.x0_change), ("noise", noise, coefs.noise)):
        if t is None and coef != 0.0:
            raise ValueError(f"{name}: required when coefficients.{'x0_change' if name == 'previous_x0' else name} "
                             f"is non-zero ({coef})")
        if t is not None:
            _check_tensor(name, t, x.device, shape)
    if clip is not None and (not is_real_number(clip) or not clip >= 0):
        raise ValueError(f"clip: expected a number >= 0 (or None for no clamp), got {clip!r}")
    if not isinstance(return_x0, bool):
        raise TypeError(f"return_x0: expected a bool, got {type(return_x0).__name__}")
    if out_dtype is not None and out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"out_dtype: expected float32, float16, bfloat16, float64 or None, got {out_dtype!r}")
    validate_backend_name(backend)
    return tuple(coefs)


# ---------------------------------------------------------------- custom op, fake, autograd


def memory_format_of(model_output: torch.Tensor) -> torch.memory_format:
    """The layout every tensor is brought to and the results take: channels_last when model_output is
    stored so (what a channels_last U-Net returns), else contiguous."""
    if (model_output.dim() == 4 and model_output.is_contiguous(memory_format=torch.channels_last)
            and not model_output.is_contiguous()):
        return torch.channels_last
    return torch.contiguous_format


def _run(x, model_output, previous_x0, noise, coefficients, guided, guidance, clip, return_x0, out_dtype, backend):
    """Dispatch and launch: the body of the custom op, also called directly in plain eager mode."""
    if x.numel() == 0:
        return _outputs(x, model_output, return_x0, out_dtype)
    dtypes = {t.dtype for t in (x, model_output, previous_x0, noise) if t is not None} | {out_dtype}
    inputs = {"device": x.device, "dtype": x.dtype, "dtypes": dtypes}
    impl = GUIDED_UPDATE.select(inputs, backend or None)
    return impl.run(x, model_output, previous_x0, noise, tuple(coefficients), guided, guidance, clip, return_x0,
                    out_dtype)


def _outputs(x, model_output, return_x0, out_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty results: out [B, ...] in model_output's layout, x0 alike or [0] when not asked for."""
    fmt = memory_format_of(model_output)
    out = memory.empty(tuple(x.shape), dtype=out_dtype, device=x.device, memory_format=fmt)
    x0 = (memory.empty(tuple(x.shape), dtype=out_dtype, device=x.device, memory_format=fmt) if return_x0
          else x.new_empty((0,), dtype=out_dtype))
    return out, x0


@torch.library.custom_op("genai_fast::guided_update", mutates_args=())
def _guided_update_op(x: torch.Tensor, model_output: torch.Tensor, previous_x0: torch.Tensor | None,
                      noise: torch.Tensor | None, coefficients: list[float], guided: bool, guidance: float,
                      clip: float, return_x0: bool, out_dtype: torch.dtype, backend: str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(x, model_output, previous_x0, noise, coefficients, guided, guidance, clip, return_x0, out_dtype,
                backend)


@_guided_update_op.register_fake
def _guided_update_fake(x, model_output, previous_x0, noise, coefficients, guided, guidance, clip, return_x0,
                        out_dtype, backend):
    fmt = memory_format_of(model_output)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device, memory_format=fmt)
    x0 = (torch.empty(x.shape, dtype=out_dtype, device=x.device, memory_format=fmt) if return_x0
          else x.new_empty((0,), dtype=out_dtype))
    return out, x0


def _setup_context(ctx, inputs, output):
    x, model_output, previous_x0, noise, coefficients, guided, guidance, clip, return_x0, out_dtype, _ = inputs
    ctx.save_for_backward(x, model_output, previous_x0, noise)
    ctx.config = (coefficients, guidance if guided else None, clip, out_dtype)
    ctx.return_x0 = return_x0


def _backward(ctx, grad_out, grad_x0):
    # Autograd through the reference (an elementwise op: clarity over hand-written formulas). Grad mode is on
    # here only under backward(create_graph=True): then the gradients stay differentiable.
    saved = ctx.saved_tensors
    coefficients, guidance, clip, out_dtype = ctx.config
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = [None if t is None else reference_input(t, create_graph) for t in saved]
        out, x0 = guided_update_reference(leaves[0], leaves[1], coefficients, guidance, leaves[2], leaves[3], clip,
                                          out_dtype)
        outputs, grads = [out], [grad_out]
        if ctx.return_x0 and grad_x0 is not None:
            outputs.append(x0)
            grads.append(grad_x0)
        wanted = [t for t in leaves if t is not None]
        found = torch.autograd.grad(outputs, wanted, grads, allow_unused=True, create_graph=create_graph)
    by_leaf = iter(found)
    grads_in = [None if t is None else next(by_leaf) for t in leaves]
    return (*grads_in, None, None, None, None, None, None, None)


_guided_update_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- backends, in priority order


def _dense(t: torch.Tensor | None, fmt: torch.memory_format) -> torch.Tensor | None:
    """t in layout fmt (a no-op when it already is), so that every tensor's flat order agrees."""
    return None if t is None else t.contiguous(memory_format=fmt)


def _launch(fwd, x, model_output, previous_x0, noise, coefficients, guided, guidance, clip, return_x0, out_dtype):
    fmt = memory_format_of(model_output)
    out, x0 = _outputs(x, model_output, return_x0, out_dtype)
    fwd(_dense(x, fmt), _dense(model_output, fmt), _dense(previous_x0, fmt), _dense(noise, fmt), out,
        x0 if return_x0 else None, guided, guidance, coefficients, clip)
    return out, x0


def _triton_reasons(inputs: dict[str, Any]) -> list[str]:
    if torch.float64 in inputs["dtypes"]:
        return ["float64 tensors run on the reference"]
    return []


@GUIDED_UPDATE.register(
    "triton",
    Capability(devices=("cuda", "cpu"), dtypes=KERNEL_DTYPES, layouts=("contiguous", "channels_last"),
               features=("one pass: guidance, x0, clamp, update", "fp32 arithmetic, any mix of half and fp32")),
    check=_triton_reasons,
)
def _guided_update_triton(*args):
    from genai_fast.kernels.guided_update import guided_update_fwd

    return _launch(guided_update_fwd, *args)


def _cpp_reasons(inputs: dict[str, Any]) -> list[str]:
    if inputs["dtypes"] != {torch.float32}:
        return ["every tensor and out_dtype must be float32"]
    return []


@GUIDED_UPDATE.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,), layouts=("contiguous", "channels_last"),
               features=("one pass: guidance, x0, clamp, update", "16-wide vectors")),
    check=_cpp_reasons,
)
def _guided_update_cpp(*args):
    from genai_fast.backends.cpp.guided_update import guided_update_fwd

    return _launch(guided_update_fwd, *args)


@GUIDED_UPDATE.register(
    "torch",
    Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",)),
)
def _guided_update_torch(x, model_output, previous_x0, noise, coefficients, guided, guidance, clip, return_x0,
                         out_dtype):
    out, x0 = guided_update_reference(x, model_output, coefficients, guidance if guided else None, previous_x0,
                                      noise, clip, out_dtype)
    fmt = memory_format_of(model_output)
    out = out.contiguous(memory_format=fmt)
    return out, (x0.contiguous(memory_format=fmt) if return_x0 else x0.new_empty((0,)))
