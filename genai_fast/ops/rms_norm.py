"""RMSNorm over the last dimension, as Llama-family models apply it: a Triton kernel on a GPU, a C++ kernel for
fp32 CPU inputs.

out = weight * (x * rsqrt(mean(x^2, -1) + eps)), statistics in fp32 (HF's LlamaRMSNorm: the input is cast
to fp32, normalised, cast back, then scaled). torch's own rms_norm is a composite of about eight ops on a
CPU, which at decode sizes (a few rows of a few hundred values) costs tens of microseconds per call; the
LLM engine runs this op in its decode step instead.

Layers (DESIGN.md section 3): kernels kernels/rms_norm.py (Triton, with its launcher) and csrc/cpu/rms_norm.cpp
(launcher genai_fast/backends/cpp/rms_norm.py); this module holds the public function, validation, the
`genai_fast::rms_norm` custom op with its fake and autograd, the reference and the backends.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

from genai_fast.backends.dispatch import ANY_DEVICE, Capability, define_op, validate_backend_name
from genai_fast.ops.autocast import autocast_active, autocast_off
from genai_fast.ops.checks import check_tensor_like_x, reference_input
from genai_fast.ops.eager import can_bypass_custom_op
from genai_fast.ops.plans import EagerPlans

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

RMS_NORM = define_op("rms_norm")
_PLANS = EagerPlans(RMS_NORM)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *,
             backend: str | None = None) -> torch.Tensor:
    """RMSNorm of x [*, D] over D, scaled by weight [D] -> [*, D] in x's dtype.

    Args:
        x: [*, D] floating tensor.
        weight: [D] of x's dtype and device, or None (no scale).
        eps: added to the mean square, >= 0.
        backend: force "triton", "cpp" or "torch"; None picks the Triton kernel for CUDA inputs (fp32, fp16,
            bf16; rows of at most 16384), the C++ kernel for fp32 CPU inputs, else torch.

    Equivalent PyTorch (HF's LlamaRMSNorm)::

        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        out = weight * h.to(x.dtype)
    """
    if autocast_active(x):
        with autocast_off(x):  # HF's formula is the same under autocast (ops/autocast.py)
            return rms_norm(x, weight, eps, backend=backend)
    signature = _PLANS.signature((x, weight), (eps,), backend)
    impl = _PLANS.replay(signature)
    if impl is not None:  # this signature passed the checks before
        return impl.run(x, weight, float(eps))
    _validate(x, weight, eps, backend)
    if can_bypass_custom_op(x, weight):
        return _run(x, weight, float(eps), backend, signature)
    return torch.ops.genai_fast.rms_norm(x, weight, float(eps), backend or "")


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Plain PyTorch (HF's formula; float64 stays float64): the fallback and, on float64 inputs, the oracle."""
    h = x if x.dtype == torch.float64 else x.float()
    h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return h if weight is None else weight * h


def resolve_rms_norm(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     backend: str | None = None
                     ) -> Callable[[torch.Tensor, torch.Tensor | None, float], torch.Tensor] | None:
    """The kernel rms_norm would run for `dtype` rows on `device`, with rms_norm's (x, weight, eps) signature
    and no validation per call; None when that is torch's reference. For the LLM decode loop, which passes
    x of `dtype` with unit stride in D and a contiguous weight: the C++ kernel on one thread (decode rows are
    too few to share) on a CPU, the Triton kernel (one launch instead of torch's eight) on a GPU."""
    x = torch.empty((1, 8), device=device, dtype=dtype)
    inputs = {"device": x.device, "dtype": x.dtype, "x": x, "weight": None}
    chosen = RMS_NORM.select(inputs, backend).backend
    if chosen == "cpp":
        from genai_fast.backends.cpp.rms_norm import rms_norm_fwd as cpp_rms_norm

        return lambda x, weight, eps: cpp_rms_norm(x, weight, eps, 1)
    if chosen == "triton" and x.device.type == "cuda":
        from genai_fast.kernels.rms_norm import rms_norm_fwd as triton_rms_norm

        return triton_rms_norm
    return None


def _validate(x: Any, weight: Any, eps: Any, backend: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected a tensor [*, D] with D >= 1, got shape {tuple(x.shape)}")
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight: expected a torch.Tensor or None, got {type(weight).__name__}")
        if tuple(weight.shape) != (x.shape[-1],):
            raise ValueError(f"weight: expected shape ({x.shape[-1]},) to match x's last dimension, "
                             f"got {tuple(weight.shape)}")
        check_tensor_like_x("weight", weight, x.dtype, x.device)
    if not isinstance(eps, numbers.Real) or not eps >= 0:  # NumPy scalars too (and bools, as torch)
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    validate_backend_name(backend)


# ---------------------------------------------------------------- custom op, fake, autograd


@torch.library.custom_op("genai_fast::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor | None, eps: float, backend: str) -> torch.Tensor:
    return _run(x, weight, eps, backend or None)


def _run(x, weight, eps, backend, signature=None):
    """Dispatch and launch: the body of the custom op, also called directly in plain eager mode (which keeps the
    choice for the call's signature)."""
    inputs = {"device": x.device, "dtype": x.dtype, "x": x, "weight": weight}
    return _PLANS.record(signature, RMS_NORM.select(inputs, backend)).run(x, weight, eps)


@_rms_norm_op.register_fake
def _rms_norm_fake(x, weight, eps, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, weight, eps, _backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _backward(ctx, grad):
    # The reference's gradient, by autograd through it (a small op: clarity over a hand-written formula).
    # Grad mode is on here only under backward(create_graph=True): then the gradients stay differentiable.
    x, weight = ctx.saved_tensors
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xs = reference_input(x, create_graph)
        ws = reference_input(weight, create_graph) if weight is not None and weight.requires_grad else weight
        out = rms_norm_reference(xs, ws, ctx.eps)
        wanted = [xs] + ([ws] if ws is not None and ws.requires_grad else [])
        grads = torch.autograd.grad(out, wanted, grad, create_graph=create_graph)
    grad_w = grads[1] if len(grads) > 1 else None
    return grads[0], grad_w, None, None


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- backends, in priority order


def _triton_reasons(inputs: dict[str, Any]) -> list[str]:
    from genai_fast.kernels.rms_norm import MAX_D

    D = inputs["x"].shape[-1]
    return [f"rows of {D} values exceed the kernel's {MAX_D}"] if D > MAX_D else []


@RMS_NORM.register(
    "triton",
    Capability(devices=("cuda", "cpu"), dtypes=(torch.float32, torch.float16, torch.bfloat16),
               layouts=("any",), features=("one launch", "row in registers", "HF's two roundings")),
    check=_triton_reasons,
)
def _rms_norm_triton(x, weight, eps):
    from genai_fast.kernels.rms_norm import rms_norm_fwd

    return rms_norm_fwd(x, weight, eps)


def _cpp_reasons(inputs: dict[str, Any]) -> list[str]:
    x, weight = inputs["x"], inputs["weight"]
    reasons = []
    if x.numel() == 0:
        reasons.append("empty input")
    if weight is not None and not weight.is_contiguous():
        reasons.append("weight is not contiguous")
    return reasons


@RMS_NORM.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,), features=("one pass per row", "GIL released")),
    check=_cpp_reasons,
)
def _rms_norm_cpp(x, weight, eps):
    from genai_fast.backends.cpp.rms_norm import rms_norm_fwd

    return rms_norm_fwd(x, weight, eps)


@RMS_NORM.register(
    "torch",
    Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",)),
)
def _rms_norm_torch(x, weight, eps):
    return rms_norm_reference(x, weight, eps)
