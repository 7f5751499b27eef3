"""GroupNorm with an optional fused SiLU: public function, custom op, reference and backends.

Layers (DESIGN.md section 3): the kernels live in kernels/group_norm.py (Triton),
csrc/cuda/group_norm.cu (CUDA) and csrc/cpu/group_norm.cpp (C++); their launchers in
kernels/group_norm.py and genai_fast/backends/{cuda,cpp}/group_norm.py; this module holds the public
function, validation, the `genai_fast::group_norm` custom op with its fake and autograd, the reference,
and each backend's capability declaration in priority order.
"""

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F

from genai_fast.backends.dispatch import ANY_DEVICE, Capability, define_op, validate_backend_name
from genai_fast.ops.autocast import FLOAT32_ON_CUDA, autocast_active, autocast_dtype, autocast_off, cast_inputs
from genai_fast.ops.checks import is_real_number
from genai_fast.ops.eager import can_bypass_custom_op
from genai_fast.ops.plans import EagerPlans

ACTIVATIONS = (None, "silu")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last")

GROUP_NORM = define_op("group_norm")
_PLANS = EagerPlans(GROUP_NORM)


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    activation: str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Group normalisation of x [N, C, *] over groups of C // num_groups channels, then `activation`.

    Args:
        x: [N, C, *] floating tensor (fp32, fp16, bf16; fp64 runs on the reference), contiguous or
            channels_last (other strides are copied first). The output has x's shape, dtype and layout.
        num_groups: G, a divisor of C.
        weight, bias: optional [C] per-channel affine parameters (any floating dtype, x's device).
        eps: added to the variance.
        activation: None or "silu" (fused: no extra pass over memory).
        backend: force "triton", "cuda", "cpp" or "torch"; None picks the fastest that can run.

    Statistics (mean, variance by two passes or Chan's merge) are computed in fp32.

    Equivalent PyTorch::

        y = torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)
        y = torch.nn.functional.silu(y) if activation == "silu" else y
    """
    if autocast_active(x):
        x, weight, bias = cast_inputs(autocast_dtype(FLOAT32_ON_CUDA, x.device.type), x, weight, bias)
        with autocast_off(x):
            return group_norm(x, num_groups, weight, bias, eps, activation=activation, backend=backend)
    signature = _PLANS.signature((x, weight, bias), (num_groups, eps, activation), backend)
    impl = _PLANS.replay(signature)
    if impl is not None:  # this signature passed the checks before
        return impl.run(x, int(num_groups), weight, bias, float(eps), activation)
    _validate(x, num_groups, weight, bias, eps, activation, backend)
    num_groups, eps = int(num_groups), float(eps)  # NumPy scalars pass the checks; the kernels take Python's
    if can_bypass_custom_op(x, weight, bias):
        return _run(x, num_groups, weight, bias, eps, activation, backend, signature)
    return torch.ops.genai_fast.group_norm(x, num_groups, weight, bias, eps, activation or "none", backend or "")


def group_norm_reference(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    activation: str | None = None,
) -> torch.Tensor:
    """Plain PyTorch GroupNorm(+SiLU): the CPU fallback and the test oracle (call it on float64 inputs).

    Computes in float64 for float64 inputs and float32 otherwise; returns x's dtype and layout.
    """
    N, C = x.shape[0], x.shape[1]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    groups = x.to(compute).reshape(N, num_groups, -1)
    mean = groups.mean(dim=-1, keepdim=True)
    var = (groups - mean).square().mean(dim=-1, keepdim=True)  # two-pass, never E[x^2] - E[x]^2
    y = ((groups - mean) * torch.rsqrt(var + eps)).reshape(N, C, -1)
    if weight is not None:
        y = y * weight.to(compute).reshape(1, C, 1)
    if bias is not None:
        y = y + bias.to(compute).reshape(1, C, 1)
    if activation == "silu":
        y = F.silu(y)
    out = torch.empty_like(x)
    out.copy_(y.reshape(x.shape))
    return out


def group_norm_backward_reference(
    grad: torch.Tensor,
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dx, dweight, dbias) of group_norm_reference; dweight/dbias [C] as if weight=1, bias=0
    when those are None (the caller drops them)."""
    N, C = x.shape[0], x.shape[1]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    groups = x.to(compute).reshape(N, num_groups, -1)
    mean = groups.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt((groups - mean).square().mean(dim=-1, keepdim=True) + eps)
    xhat = ((groups - mean) * rstd).reshape(N, C, -1)
    w = weight.to(compute).reshape(1, C, 1) if weight is not None else torch.ones((), dtype=compute)
    g = grad.to(compute).reshape(N, C, -1)
    if activation == "silu":
        y = xhat * w + (bias.to(compute).reshape(1, C, 1) if bias is not None else 0.0)
        s = torch.sigmoid(y)
        g = g * s * (1 + y * (1 - s))
    dbias = g.sum(dim=(0, 2))
    dweight = (g * xhat).sum(dim=(0, 2))
    gxhat = (g * w).reshape(N, num_groups, -1)
    xhat = xhat.reshape(N, num_groups, -1)
    dx = rstd * (gxhat - gxhat.mean(dim=-1, keepdim=True) - xhat * (gxhat * xhat).mean(dim=-1, keepdim=True))
    dx_out = torch.empty_like(x)
    dx_out.copy_(dx.reshape(x.shape))
    param_dtype = weight.dtype if weight is not None else x.dtype
    return dx_out, dweight.to(param_dtype), dbias.to(bias.dtype if bias is not None else param_dtype)


# ---------------------------------------------------------------- validation


def _validate(x: Any, num_groups: Any, weight: Any, bias: Any, eps: Any, activation: Any, backend: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x: expected at least 2 dimensions [N, C, *], got shape {tuple(x.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups: expected an int, got {type(num_groups).__name__}")
    channels = x.shape[1]
    if num_groups <= 0 or channels % num_groups != 0:
        raise ValueError(f"num_groups: expected a positive divisor of the channel count C={channels}, "
                         f"got {num_groups}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is None:
            continue
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(param).__name__}")
        if not param.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {param.dtype}")
        if tuple(param.shape) != (channels,):
            raise ValueError(f"{name}: expected shape ({channels},) to match C, got {tuple(param.shape)}")
        if param.device != x.device:
            raise ValueError(f"{name}: expected a tensor on x's device {x.device}, got {param.device}")
    if not is_real_number(eps) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    validate_backend_name(backend)


# ---------------------------------------------------------------- custom op, fake, autograd


def _dispatch_inputs(x: torch.Tensor) -> dict[str, Any]:
    """What the backends' capability checks read."""
    return {"device": x.device, "dtype": x.dtype, "x": x}


@torch.library.custom_op("genai_fast::group_norm", mutates_args=())
def _group_norm_op(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str,
    backend: str,
) -> torch.Tensor:
    return _run(x, num_groups, weight, bias, eps, None if activation == "none" else activation, backend or None)


def _run(x, num_groups, weight, bias, eps, activation, backend, signature=None):
    """Dispatch and launch: the body of the custom op, also called directly in plain eager mode (which keeps the
    choice for the call's signature)."""
    if x.numel() == 0:
        return torch.empty_like(x)
    impl = _PLANS.record(signature, GROUP_NORM.select(_dispatch_inputs(x), backend))
    return impl.run(x, num_groups, weight, bias, eps, activation)


@_group_norm_op.register_fake
def _group_norm_fake(x, num_groups, weight, bias, eps, activation, backend):
    return torch.empty_like(x)


@torch.library.custom_op("genai_fast::group_norm_backward", mutates_args=())
def _group_norm_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    act = None if activation == "none" else activation
    if x.dtype == torch.float32 and (weight is None or weight.dtype == torch.float32) and (
            bias is None or bias.dtype == torch.float32):
        return _group_norm_backward_native(grad, x, num_groups, weight, bias, eps, act)
    return group_norm_backward_reference(grad, x, num_groups, weight, bias, eps, act)


def _group_norm_backward_native(grad: torch.Tensor, x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                                bias: torch.Tensor | None, eps: float, activation: str | None
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fp32 backward through ATen's own GroupNorm kernels (a few fused passes, any layout), instead of
    the reference's dozen elementwise passes; the SiLU factor is applied to the incoming gradient first.

    ATen's statistics are fp32 two-pass/Welford, the same numerics policy as the reference."""
    N, C = x.shape[0], x.shape[1]
    hxw = x.numel() // max(N * C, 1)
    ones = x.new_ones((C,)) if weight is None else None
    w = weight if weight is not None else ones
    layout = _native_memory_format(x)
    xc = x.contiguous(memory_format=layout)
    y, mean, rstd = torch.native_group_norm(xc, w, bias, N, C, hxw, num_groups, eps)
    if activation == "silu":
        s = torch.sigmoid(y)
        grad = grad * s * (1 + y * (1 - s))
    grad = grad.contiguous(memory_format=layout)
    dx, dweight, dbias = torch.ops.aten.native_group_norm_backward(grad, xc, mean, rstd, w, N, C, hxw, num_groups,
                                                                   [True, True, True])
    if dx.stride() != x.stride():  # the op promises empty_like(x)'s layout (its fake)
        dx = torch.empty_like(x).copy_(dx)
    return dx, dweight, dbias


def _native_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout ATen's GroupNorm kernels accept for x: its CPU kernels read contiguous or channels_last, its
    CUDA kernels contiguous only (they raise "Expected X.is_contiguous(memory_format)" on anything else)."""
    if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@_group_norm_backward_op.register_fake
def _group_norm_backward_fake(grad, x, num_groups, weight, bias, eps, activation):
    param_dtype = weight.dtype if weight is not None else x.dtype
    bias_dtype = bias.dtype if bias is not None else param_dtype
    channels = x.shape[1]
    return (torch.empty_like(x), x.new_empty((channels,), dtype=param_dtype),
            x.new_empty((channels,), dtype=bias_dtype))


def _setup_context(ctx, inputs, output):
    x, num_groups, weight, bias, eps, activation, _backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.num_groups, ctx.eps, ctx.activation = num_groups, eps, activation


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    if torch.is_grad_enabled():
        # backward(create_graph=True) (grad mode is on here only then): the reference's torch ops keep the
        # gradients differentiable, where the backward custom op has no derivative of its own.
        activation = None if ctx.activation == "none" else ctx.activation
        dx, dweight, dbias = group_norm_backward_reference(grad, x, ctx.num_groups, weight, bias, ctx.eps,
                                                           activation)
    else:
        dx, dweight, dbias = torch.ops.genai_fast.group_norm_backward(
            grad, x, ctx.num_groups, weight, bias, ctx.eps, ctx.activation)
    return (dx, None, dweight if weight is not None else None, dbias if bias is not None else None,
            None, None, None)


_group_norm_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- backends, in priority order

# CUDA before Triton: on an H200 (fp16, 2x320x64x64) the CUDA kernel took 19-24 us (2.6-3.1x eager), the Triton
# kernels 121-127 us (three launches, each mostly Triton's host overhead; bench/results/nvidia-h200-20261128.md).
@GROUP_NORM.register(
    "cuda",
    Capability(devices=("cuda",), dtypes=KERNEL_DTYPES, layouts=LAYOUTS, min_compute_capability=(8, 0),
               features=("split reduction across blocks", "fused silu", "NVRTC via CuPy")),
)
def _group_norm_cuda(x, num_groups, weight, bias, eps, activation):
    from genai_fast.backends.cuda.group_norm import group_norm_fwd

    return group_norm_fwd(x, num_groups, weight, bias, eps, activation)


@GROUP_NORM.register(
    "triton",
    Capability(devices=("cuda", "cpu"), dtypes=KERNEL_DTYPES, layouts=LAYOUTS,
               features=("split reduction across programs", "fused silu")),
)
def _group_norm_triton(x, num_groups, weight, bias, eps, activation):
    from genai_fast.kernels.group_norm import group_norm_fwd

    return group_norm_fwd(x, num_groups, weight, bias, eps, activation)


@GROUP_NORM.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=KERNEL_DTYPES, layouts=LAYOUTS,
               features=("threads, GIL released", "fused silu")),
)
def _group_norm_cpp(x, num_groups, weight, bias, eps, activation):
    from genai_fast.backends.cpp.group_norm import group_norm_fwd

    return group_norm_fwd(x, num_groups, weight, bias, eps, activation)


@GROUP_NORM.register(
    "torch",
    Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",)),
)
def _group_norm_torch(x, num_groups, weight, bias, eps, activation):
    return group_norm_reference(x, num_groups, weight, bias, eps, activation)
