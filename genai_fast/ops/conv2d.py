"""conv2d with a fused epilogue: public function, custom op, reference and implementations.

    out = (act(conv2d(x, weight) + bias) + residual) * output_scale,   act in (None, "silu")

is what a diffusers ResnetBlock2D computes around its convolutions: conv1 plus the time embedding (a
per-sample bias [N, C_out]), conv2 plus the shortcut (residual) divided by output_scale_factor.

Implementations, in priority order (DESIGN.md section 3; `backend=` forces one by name):

- "triton": implicit-GEMM convolution (kernels/conv2d.py) with bias, SiLU, residual and scale in its
  epilogue: one kernel, the conv output never round-trips through memory before the epilogue.
- "torch+triton": torch's convolution (cuDNN on a GPU), then one Triton epilogue pass in place.
- "cpp": 3x3 stride-1 padding-1 convolutions of channels_last fp32 CPU tensors by Winograd's F(2x2, 3x3)
  (csrc/cpu/winograd.cpp): 2.25x fewer multiplies, the 16 products as one BLAS batched GEMM, the epilogue
  in the output transform. Chosen automatically from WINOGRAD_MIN_MACS multiply-adds and
  WINOGRAD_MIN_TILES output tiles, where it beats oneDNN's direct convolution.
- "torch+inplace": torch's convolution (with a [C_out] bias inside it), then the epilogue as in-place
  torch ops on the conv output. Runs on every device; the CPU fast path.
- "torch": the reference (`conv2d_reference`), out of place; always runs.

On a GPU "triton" and "torch+triton" can both run; which is faster depends on the shape, so the first
call at each shape times both and caches the winner (see `_choose`).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genai_fast.backends import memory
from genai_fast.backends.availability import triton_interpreter_enabled
from genai_fast.backends.dispatch import (
    ANY_DEVICE,
    ENV_BACKEND,
    BackendNotSupportedError,
    Capability,
    Implementation,
    define_op,
    validate_backend_name,
)
from genai_fast.ops.autocast import LOWER_PRECISION, autocast_active, autocast_dtype, autocast_off, cast_inputs
from genai_fast.ops.checks import check_tensor_like_x, is_real_number
from genai_fast.ops.conv2d_small import direct_conv
from genai_fast.ops.eager import can_bypass_custom_op
from genai_fast.ops.plans import PlanTable, signatures_allowed, tensor_signature
from genai_fast.ops.timing import median_ms

ACTIVATIONS = (None, "silu")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("channels_last", "contiguous")
# The GPU implementations raced once per shape: the two cuDNN-based ones. The implicit-GEMM kernel ("triton")
# is not raced: on an H200 it ran SD1.5's 320-channel 64x64 convs at 0.51-0.65x of cuDNN, and racing it costs an
# autotuned compile (five tile configs) per shape on the first call, which kept the first text-to-image training
# step from finishing in 50 s (bench/results/nvidia-h200-20261128.md). backend="triton" still forces it.
RACED = ("torch+triton", "torch+inplace")

CONV2D = define_op("conv2d")

Pair = int | Sequence[int]


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    groups: int = 1,
    *,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    output_scale: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor:
    """2-D convolution of x [N, C_in, H, W] with weight [C_out, C_in // groups, kh, kw], then the epilogue
    `(act(conv + bias) + residual) * output_scale`, fused.

    Args:
        x: [N, C_in, H, W] float32, float16 or bfloat16 (float64 runs on the reference); channels_last
            (NHWC) is the layout the Triton kernel reads best, any strides are accepted.
        weight: [C_out, C_in // groups, kh, kw], x's dtype and device (channels_last weights, as
            `module.to(memory_format=torch.channels_last)` makes them, load best).
        bias: None, [C_out] (the conv's bias), or [N, C_out] (a per-sample bias such as a U-Net's time
            embedding); x's dtype.
        stride, padding, dilation: an int or a pair (h, w) of ints (>= 1, >= 0, >= 1); padding may also be
            "valid" (0) or "same" (stride 1; output H and W those of x), as in torch.nn.functional.conv2d.
        groups: a positive divisor of C_in and C_out.
        activation: None or "silu", applied after the bias and before the residual.
        residual: None or [N, C_out, H_out, W_out] in x's dtype, added after the activation.
        output_scale: the final multiplier (a ResnetBlock2D passes 1 / output_scale_factor).
        backend: force "triton", "torch+triton", "cpp" (Winograd, CPU), "torch+inplace" or "torch"; None picks
            the fastest.

    Returns:
        [N, C_out, H_out, W_out] in x's dtype, channels_last when x or weight is (as torch's conv).
        H_out = (H + 2 * pad_h - dil_h * (kh - 1) - 1) // stride_h + 1, and likewise W_out.

    Gradients flow to x, weight, bias and residual.

    Equivalent PyTorch::

        y = torch.nn.functional.conv2d(x, weight, None, stride, padding, dilation, groups)
        y = y + (bias[None, :, None, None] if bias.dim() == 1 else bias[:, :, None, None])
        y = torch.nn.functional.silu(y) if activation == "silu" else y
        y = (y + residual) * output_scale
    """
    if autocast_active(x):
        return _conv2d_in_autocast(x, weight, bias, stride, padding, dilation, groups, activation, residual,
                                   output_scale, backend)
    stride2, dilation2 = _pair("stride", stride), _pair("dilation", dilation)
    if isinstance(padding, str):
        x, padding = _string_padding(x, weight, padding, stride2, dilation2)
    padding2 = _pair("padding", padding)
    plan = _call_plan(x, weight, bias, residual, stride2, padding2, dilation2, groups, activation, output_scale,
                      backend)
    if plan.impl is not None:
        return plan.impl.run(x, weight, bias, residual, stride2, padding2, dilation2, groups, activation,
                             plan.output_scale)
    act = activation or "none"
    if plan.bypass:
        return _run(x, weight, bias, residual, stride2, padding2, dilation2, groups, act, plan.output_scale, backend)
    return torch.ops.genai_fast.conv2d(x, weight, bias, residual, stride2, padding2, dilation2, groups, act,
                                       plan.output_scale, backend or "")


def _conv2d_in_autocast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Pair,
                        padding: Pair | str, dilation: Pair, groups: int, activation: str | None,
                        residual: torch.Tensor | None, output_scale: float, backend: str | None) -> torch.Tensor:
    """conv2d inside an autocast region (ops/autocast.py): x, weight and bias cast as F.conv2d's are. A residual
    of another dtype is added after the fused part, in the promoted dtype, as `conv(x) + residual` would be."""
    x, weight, bias = cast_inputs(autocast_dtype(LOWER_PRECISION, x.device.type), x, weight, bias)
    with autocast_off(x):
        if not isinstance(residual, torch.Tensor) or residual.dtype == x.dtype:
            return conv2d(x, weight, bias, stride, padding, dilation, groups, activation=activation,
                          residual=residual, output_scale=output_scale, backend=backend)
        _check_output_scale(output_scale)
        y = conv2d(x, weight, bias, stride, padding, dilation, groups, activation=activation, backend=backend)
        if residual.shape != y.shape or residual.device != y.device:
            raise ValueError(f"residual: expected the output's shape {tuple(y.shape)} on {y.device}, got shape "
                             f"{tuple(residual.shape)} on {residual.device}")
        return (y + residual) * float(output_scale)


def conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    groups: int = 1,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    output_scale: float = 1.0,
) -> torch.Tensor:
    """Plain PyTorch conv then the epilogue, out of place, each step rounded to x's dtype: the oracle
    (call it on float64 CPU inputs) and the always-available fallback. Differentiable."""
    y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    if bias is not None:
        y = y + _bias_view(bias)
    if activation == "silu":
        y = F.silu(y)
    if residual is not None:
        y = y + residual
    if output_scale != 1.0:
        y = y * output_scale
    return _in_format(y, output_memory_format(x, weight))


def output_shape(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int]) -> tuple[int, int, int, int]:
    """[N, C_out, H_out, W_out] of the convolution."""
    return _output_sizes(x.shape, weight.shape, stride, padding, dilation)


def _output_sizes(x_shape, w_shape, stride, padding, dilation) -> tuple[int, int, int, int]:
    h = (x_shape[2] + 2 * padding[0] - dilation[0] * (w_shape[2] - 1) - 1) // stride[0] + 1
    w = (x_shape[3] + 2 * padding[1] - dilation[1] * (w_shape[3] - 1) - 1) // stride[1] + 1
    return (x_shape[0], w_shape[0], h, w)


def output_memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """channels_last when x or weight is stored channels_last (torch's rule for cuDNN and oneDNN convolutions;
    every implementation returns this layout, as the fake does)."""
    if _stored_channels_last(x) or _stored_channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


def _stored_channels_last(t: torch.Tensor) -> bool:
    """True when 4-D t is dense channels_last and not also plain contiguous (ops.layout.is_channels_last,
    without the permuted view: this runs on every call)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _bias_view(bias: torch.Tensor) -> torch.Tensor:
    """[C] -> [1, C, 1, 1]; [N, C] -> [N, C, 1, 1]."""
    return bias.reshape(1 if bias.dim() == 1 else bias.shape[0], -1, 1, 1)


def _in_format(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    return t if t.is_contiguous(memory_format=memory_format) else t.contiguous(memory_format=memory_format)


# ---------------------------------------------------------------- validation


def _pair(name: str, value: Any) -> list[int]:
    """An int, a pair of ints or a one-int sequence (as F.conv2d takes them; NumPy ints too) as [h, w];
    TypeError naming the argument otherwise."""
    if type(value) is int:  # the common cases first: this runs on every call
        return [value, value]
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return list(value)  # an nn.Conv2d's own attributes
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) == 1:
        items *= 2
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return [int(items[0]), int(items[1])]


def _string_padding(x: Any, weight: Any, padding: str, stride: list[int], dilation: list[int]) -> tuple[Any, Any]:
    """(x, padding) for F.conv2d's padding strings. "valid": no padding. "same" (stride 1 only): H_out = H and
    W_out = W, a total of dil * (k - 1) per dimension; where that is odd torch puts the extra zero row/column
    at the bottom/right, which x then gets here and the conv pads the rest evenly."""
    if padding == "valid":
        return x, 0
    if padding != "same":
        raise ValueError(f"padding: expected an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    if stride != [1, 1]:
        raise ValueError(f"padding: 'same' is not supported for strided convolutions (as in torch), got stride "
                         f"{stride}")
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and isinstance(weight, torch.Tensor) and weight.dim() == 4
            and min(dilation) >= 1):
        return x, 0  # _validate names the bad argument
    totals = [dilation[0] * (weight.shape[2] - 1), dilation[1] * (weight.shape[3] - 1)]
    if totals[0] % 2 or totals[1] % 2:
        x = F.pad(x, (0, totals[1] % 2, 0, totals[0] % 2))
    return x, [totals[0] // 2, totals[1] // 2]


def _validate(x: Any, weight: Any, bias: Any, residual: Any, stride: list[int], padding: list[int],
              dilation: list[int], groups: Any, activation: Any, output_scale: Any, backend: Any) -> None:
    """Raise TypeError/ValueError naming the first bad argument. Attributes are read once: on a GPU this
    check's Python time is comparable to a small convolution's."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    dtype, device, x_shape = x.dtype, x.device, x.shape
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: expected dtype float32, float16, bfloat16 or float64, got {dtype}")
    if len(x_shape) != 4:
        raise ValueError(f"x: expected 4 dimensions [N, C_in, H, W], got shape {tuple(x_shape)}")
    w_shape = check_tensor_like_x("weight", weight, dtype, device)
    _validate_conv(x_shape, w_shape, stride, padding, dilation, groups)
    if x_shape[0] and not (x_shape[2] and x_shape[3]):
        # torch refuses these too; with padding the output is not empty, and it would be left unwritten
        raise ValueError(f"x: expected non-zero H and W (an empty input is allowed only in a batch of 0), got "
                         f"shape {tuple(x_shape)}")
    out_shape = _output_sizes(x_shape, w_shape, stride, padding, dilation)
    if out_shape[2] < 1 or out_shape[3] < 1:
        raise ValueError(f"x: spatial size {tuple(x_shape[2:])} is smaller than the dilated kernel "
                         f"{tuple(w_shape[2:])} with padding {padding}")
    if bias is not None:
        b_shape = check_tensor_like_x("bias", bias, dtype, device)
        if b_shape != (w_shape[0],) and b_shape != (x_shape[0], w_shape[0]):
            raise ValueError(f"bias: expected shape ({w_shape[0]},) or ({x_shape[0]}, {w_shape[0]}) [N, C_out], "
                             f"got {tuple(b_shape)}")
    if residual is not None and check_tensor_like_x("residual", residual, dtype, device) != out_shape:
        raise ValueError(f"residual: expected the output's shape {out_shape}, got {tuple(residual.shape)}")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    _check_output_scale(output_scale)
    if backend is not None:
        validate_backend_name(backend, CONV2D.extra_names())


def _check_output_scale(output_scale: Any) -> None:
    # Any real number, not only float: diffusers' skip blocks pass NumPy scalars (np.sqrt(2.0)).
    if not is_real_number(output_scale) or not math.isfinite(output_scale):
        raise ValueError(f"output_scale: expected a finite number, got {output_scale!r}")


def _validate_conv(x_shape: torch.Size, w_shape: torch.Size, stride: list[int], padding: list[int],
                   dilation: list[int], groups: Any) -> None:
    if len(w_shape) != 4:
        raise ValueError(f"weight: expected 4 dimensions [C_out, C_in // groups, kh, kw], got {tuple(w_shape)}")
    if type(groups) is not int:
        raise TypeError(f"groups: expected an int, got {type(groups).__name__}")
    c_in, c_out = x_shape[1], w_shape[0]
    if groups < 1 or c_in % groups or c_out % groups:
        raise ValueError(f"groups: expected a positive divisor of C_in={c_in} and C_out={c_out}, got {groups}")
    if w_shape[1] * groups != c_in or min(w_shape) < 1:
        raise ValueError(f"weight: expected shape [C_out, C_in // groups = {c_in // groups}, kh, kw] for x with "
                         f"C_in={c_in} and groups={groups}, got {tuple(w_shape)}")
    if stride[0] < 1 or stride[1] < 1:
        raise ValueError(f"stride: expected values >= 1, got {stride}")
    if padding[0] < 0 or padding[1] < 0:
        raise ValueError(f"padding: expected values >= 0, got {padding}")
    if dilation[0] < 1 or dilation[1] < 1:
        raise ValueError(f"dilation: expected values >= 1, got {dilation}")


# ---------------------------------------------------------------- call plans


@dataclass(frozen=True)
class _CallPlan:
    """What the checks and the dispatcher decided for one call signature of conv2d."""

    output_scale: float
    bypass: bool  # plain eager without autograd recording: the custom op is skipped
    impl: Implementation | None  # the implementation to run directly (None: an empty input, or the custom op)


# Checking a call and walking the dispatcher cost ~12 us of Python on a CPU (a small convolution takes tens of
# microseconds, a GPU launch a few); a signature costs ~2-3 us (genai_fast/ops/plans.py).
_PLANS = PlanTable()


def _call_plan(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale,
               backend) -> _CallPlan:
    """The plan of this call (stride, padding and dilation already checked pairs): replayed when a call with the
    same signature passed the checks before, else checked and decided now (raising on bad input)."""
    signature = _signature(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale,
                           backend)
    plan = _PLANS.get(signature)
    if plan is None:
        _validate(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale, backend)
        scale = float(output_scale)
        bypass = can_bypass_custom_op(x, weight, bias, residual)
        impl = None
        if bypass and x.numel() > 0:
            args = (x, weight, bias, residual, stride, padding, dilation, groups, activation, scale)
            impl = CONV2D.select(_dispatch_inputs(*args), backend or None)
        plan = _CallPlan(scale, bypass, impl)
        _PLANS.put(signature, plan)
    elif plan.impl is not None:
        CONV2D.last_backend = plan.impl.backend
    return plan


def _signature(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale,
               backend) -> tuple | None:
    """Everything the checks and the dispatcher read from a call (strides too: they pick layouts and GEMM paths),
    or None where the checked path must run every time: torch.compile tracing, dispatch modes, CUDA graph
    capture (the GPU's per-shape timing cannot run then), arguments that are not tensors.

    Scalars enter with their types: True == 1, but the checks accept only ints for groups.
    """
    if not signatures_allowed():
        return None
    try:
        tensors = tuple(tensor_signature(t, strides=True) for t in (x, weight, bias, residual))
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return None
    except (AttributeError, TypeError):
        return None
    return (tensors, *stride, *padding, *dilation, type(groups), groups, activation, type(output_scale),
            output_scale, backend, torch.is_grad_enabled(), os.environ.get(ENV_BACKEND), triton_interpreter_enabled())


# ---------------------------------------------------------------- custom op, fake, autograd


def _dispatch_inputs(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale):
    """What the implementations' checks and the GPU race read: the call's own arguments."""
    return {"device": x.device, "dtype": x.dtype,
            "args": (x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale)}


def _run(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale, backend):
    """Dispatch and launch: the body of the custom op, also called directly in plain eager mode."""
    args = (x, weight, bias, residual, list(stride), list(padding), list(dilation), groups,
            None if activation == "none" else activation, output_scale)
    if x.numel() == 0:
        return torch.empty(output_shape(x, weight, stride, padding, dilation), dtype=x.dtype, device=x.device)
    impl = CONV2D.select(_dispatch_inputs(*args), backend or None)
    return impl.run(*args)


@torch.library.custom_op("genai_fast::conv2d", mutates_args=())
def _conv2d_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str,
    output_scale: float,
    backend: str,
) -> torch.Tensor:
    return _run(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale, backend)


@_conv2d_op.register_fake
def _conv2d_fake(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale, backend):
    shape = output_shape(x, weight, stride, padding, dilation)
    if x.numel() == 0:
        return x.new_empty(shape)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x, weight))


def _setup_context(ctx, inputs, output):
    x, weight, bias, _residual, stride, padding, dilation, groups, activation, output_scale, _backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.conv = (stride, padding, dilation, groups)
    ctx.activation, ctx.output_scale = activation, output_scale


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    g = grad * ctx.output_scale if ctx.output_scale != 1.0 else grad
    d_residual = g if ctx.needs_input_grad[3] else None
    if ctx.activation == "silu":
        # d silu(z) / dz = s * (1 + z * (1 - s)), s = sigmoid(z): the pre-activation z is recomputed
        # (one more convolution) rather than saved, so inference through the custom op stores nothing.
        # The derivative is evaluated in fp32 for fp16/bf16 (as torch's own silu_backward does).
        z = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        if bias is not None:
            z = z + _bias_view(bias)
        compute = torch.float64 if z.dtype == torch.float64 else torch.float32
        z = z.to(compute)
        s = torch.sigmoid(z)
        g = (g.to(compute) * s * (1 + z * (1 - s))).to(grad.dtype)
    d_bias = None
    if bias is not None and ctx.needs_input_grad[2]:
        d_bias = g.sum(dim=(0, 2, 3)) if bias.dim() == 1 else g.sum(dim=(2, 3))
    d_x = d_weight = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        d_x, d_weight, _ = torch.ops.aten.convolution_backward(
            g, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
    return d_x, d_weight, d_bias, d_residual, None, None, None, None, None, None, None


_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- implementations, in priority order


@CONV2D.register(
    "triton",
    Capability(devices=("cuda", "cpu"), dtypes=KERNEL_DTYPES, layouts=LAYOUTS,
               features=("implicit GEMM, fp32 accumulation", "fused bias (per channel or per sample), silu, "
                         "residual, scale", "autotuned tiles", "CUDA: when forced (backend='triton')")),
)
def _conv2d_triton(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale):
    from genai_fast.kernels.conv2d import conv2d_fwd

    out = torch.empty(output_shape(x, weight, stride, padding, dilation), dtype=x.dtype, device=x.device,
                      memory_format=output_memory_format(x, weight))
    if memory.poisoning():
        out.fill_(float("nan"))  # unwritten elements show up in tests
    return conv2d_fwd(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale, out)


@CONV2D.register(
    "torch+triton",
    Capability(devices=("cuda", "cpu"), dtypes=KERNEL_DTYPES, layouts=LAYOUTS,
               features=("torch conv (cuDNN on CUDA)", "one Triton epilogue pass in place",
                         "CUDA: raced against torch+inplace per shape")),
    requires="triton",
)
def _conv2d_torch_triton(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale):
    from genai_fast.kernels.conv2d import conv2d_epilogue_

    y = _in_format(F.conv2d(x, weight, None, stride, padding, dilation, groups), output_memory_format(x, weight))
    if bias is None and residual is None and activation is None and output_scale == 1.0:
        return y
    return conv2d_epilogue_(y, bias, residual, activation, output_scale)


# Where Winograd beats oneDNN's direct convolution on a CPU (measured on the 2-core AVX-512 VM, best of
# alternating rounds): SD1.5's 3x3 convs 1.19-1.65x (320 ch at 64x64 1.43x, 1280 ch at 16x16 1.65x), a
# mid-size U-Net's 1.11-1.14x; below about 2^28 multiply-adds, or with few 2x2 output tiles (2x640x8x8:
# 32 tiles, 0.83x), the transforms and the extra calls cost more than the multiplies they save.
WINOGRAD_MIN_MACS = 1 << 28
WINOGRAD_MIN_TILES = 64


def _winograd_reasons(x, weight, stride, padding, dilation, groups) -> list[str]:
    """Why the Winograd implementation cannot run these arguments (empty: it can)."""
    reasons = []
    if tuple(weight.shape[2:]) != (3, 3) or stride != [1, 1] or padding != [1, 1] or dilation != [1, 1]:
        reasons.append("Winograd F(2x2, 3x3) takes 3x3 kernels at stride 1, padding 1, dilation 1")
    if groups != 1:
        reasons.append("grouped convolutions are not supported")
    if not x.is_contiguous(memory_format=torch.channels_last):
        reasons.append("x must be dense channels_last")
    return reasons


def _winograd_pays(args: tuple) -> bool:
    """The automatic choice: Winograd where it runs and beats oneDNN (WINOGRAD_MIN_MACS, WINOGRAD_MIN_TILES)."""
    x, weight, _bias, _residual, stride, padding, dilation, groups = args[:8]
    N, C, H, W = x.shape
    tiles = N * ((H + 1) // 2) * ((W + 1) // 2)
    if tiles < WINOGRAD_MIN_TILES or 9 * N * H * W * C * weight.shape[0] < WINOGRAD_MIN_MACS:
        return False  # the size test first: it is the cheap one, and small convs (most calls) stop here
    return not _winograd_reasons(x, weight, stride, padding, dilation, groups)


@CONV2D.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,), layouts=("channels_last",),
               features=("3x3, stride 1, padding 1, ungrouped: Winograd F(2x2, 3x3), 2.25x fewer multiplies",
                         "the 16 products as one BLAS batched GEMM", "epilogue fused in the output transform",
                         "chosen automatically for large convs (2^28 multiply-adds, 64 tiles)")),
)
def _conv2d_cpp(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale):
    from genai_fast.backends.cpp.winograd import winograd_conv3x3

    reasons = _winograd_reasons(x, weight, stride, padding, dilation, groups)
    if reasons:
        raise BackendNotSupportedError("conv2d: backend 'cpp' cannot run these inputs: " + "; ".join(reasons))
    return winograd_conv3x3(x, weight, None if bias is None else bias.contiguous(), residual, activation,
                            output_scale)


@CONV2D.register(
    "torch+inplace",
    Capability(devices=("cpu", "cuda"), dtypes=SUPPORTED_DTYPES, layouts=("any",),
               features=("torch conv with its [C_out] bias", "epilogue in place (add_, silu_, mul_)",
                         "CPU: 1x1 convs of channels_last x as one GEMM",
                         "CPU: small wide images timed channels_last / NCHW / im2col (ops/conv2d_small.py)",
                         "CUDA: raced against torch+triton per shape")),
    requires="torch",
)
def _conv2d_torch_inplace(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale):
    per_channel = bias is not None and bias.dim() == 1
    if _is_pointwise_gemm(x, weight, stride, padding, dilation, groups):
        y = _pointwise_conv_as_gemm(x, weight, bias if per_channel else None)
    else:
        y = direct_conv(x, weight, bias if per_channel else None, stride, padding, dilation, groups)
        y = _in_format(y, output_memory_format(x, weight))
    if bias is not None and not per_channel:
        y.add_(_bias_view(bias))
    if activation == "silu":
        F.silu(y, inplace=True)
    if residual is not None:
        y.add_(residual)
    if output_scale != 1.0:
        y.mul_(output_scale)
    return y


# 1x1 convs of channels_last CPU tensors as one GEMM over the pixels, or through oneDNN. Small ones always as a GEMM
# (oneDNN spends ~15-30 us of setup on each: 2.1x at 2x64x8x8 on session 22's VM, 3.8x on session 21's), large ones
# always on oneDNN (at SD's 1x320x64x64: 10% faster on session 21's VM, 2.3x on session 22's). In between the two
# hosts disagree (session 21's: GEMM 1.1-1.8x up to 2x384x16x16->256; session 22's: oneDNN 1.25-1.9x from 8M
# multiply-adds), so fp32 convs there are timed both ways once per shape bucket (pixels rounded up to a power of
# two) on synthetic inputs, and the GEMM is kept only when its median is under POINTWISE_RACE_MARGIN of oneDNN's.
POINTWISE_ALWAYS_GEMM_MACS = 1 << 22
POINTWISE_GEMM_MAX_MACS = 1 << 26
POINTWISE_RACE_MARGIN = 0.95
POINTWISE_RACE_REPEATS = 3
_POINTWISE_RACES: dict[tuple[Any, ...], dict[str, float]] = {}


def _is_pointwise_gemm(x, weight, stride, padding, dilation, groups) -> bool:
    """Whether a 1x1, stride-1, unpadded, ungrouped conv of a dense channels_last CPU x runs as one GEMM over the
    pixels (see POINTWISE_ALWAYS_GEMM_MACS)."""
    if not (x.device.type == "cpu" and weight.shape[2] == 1 and weight.shape[3] == 1 and groups == 1
            and stride == [1, 1] and padding == [0, 0] and x.is_contiguous(memory_format=torch.channels_last)):
        return False
    macs = x.numel() * weight.shape[0]
    if macs <= POINTWISE_ALWAYS_GEMM_MACS:
        return True
    if macs > POINTWISE_GEMM_MAX_MACS:
        return False
    if x.dtype != torch.float32 or torch.compiler.is_compiling():
        return True  # untimed: the rule measured before timing was added
    pixels = x.numel() // x.shape[1]
    bucket = (1 << (pixels - 1).bit_length(), x.shape[1], weight.shape[0], torch.get_num_threads())
    if bucket not in _POINTWISE_RACES:
        _POINTWISE_RACES[bucket] = _time_pointwise(*bucket[:3])
    timings = _POINTWISE_RACES[bucket]
    return timings["gemm"] < POINTWISE_RACE_MARGIN * timings["onednn"]


def _time_pointwise(pixels: int, c_in: int, c_out: int) -> dict[str, float]:
    """Median ms of a 1x1 conv over `pixels` channels_last pixels as one GEMM and through oneDNN (synthetic
    inputs, with a bias)."""
    x = torch.randn(1, c_in, pixels, 1).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c_out, c_in, 1, 1), torch.randn(c_out)
    return median_ms({"gemm": lambda: _pointwise_conv_as_gemm(x, weight, bias),
                      "onednn": lambda: F.conv2d(x, weight, bias)}, POINTWISE_RACE_REPEATS)


def _pointwise_conv_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [N, C_in, H, W] channels_last, weight [C_out, C_in, 1, 1] -> channels_last [N, C_out, H, W]:
    the pixels [N*H*W, C_in] (a view of NHWC memory) times weight^T, plus bias, in one addmm."""
    N, C_in, H, W = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(N * H * W, C_in)
    w = weight.reshape(weight.shape[0], C_in).t()
    y = torch.mm(pixels, w) if bias is None else torch.addmm(bias, pixels, w)
    return y.view(N, H, W, -1).permute(0, 3, 1, 2)


@CONV2D.register(
    "torch",
    Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",)),
)
def _conv2d_torch(x, weight, bias, residual, stride, padding, dilation, groups, activation, output_scale):
    return conv2d_reference(x, weight, bias, stride, padding, dilation, groups, activation, residual, output_scale)


# ---------------------------------------------------------------- GPU choice between implicit GEMM and cuDNN


_CHOICES: dict[tuple[Any, ...], str] = {}
RACE_REPEATS = 5


def _choice_key(args: tuple) -> tuple[Any, ...]:
    """Everything that changes which implementation is faster: shapes, layouts, dtype, conv parameters and
    which epilogue parts are present."""
    x, weight, bias, residual, stride, padding, dilation, groups, activation, _output_scale = args
    return (x.device, x.dtype, tuple(x.shape), tuple(x.stride()), tuple(weight.shape), tuple(weight.stride()),
            tuple(stride), tuple(padding), tuple(dilation), groups, None if bias is None else bias.dim(),
            residual is not None, activation)


def _time_ms(impl: Implementation, args: tuple) -> float:
    """Median GPU time of `impl` on args over RACE_REPEATS runs after one warm-up (which compiles and
    autotunes the Triton kernel)."""
    impl.run(*args)
    times = []
    for _ in range(RACE_REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        impl.run(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _choose(inputs: dict[str, Any], runnable: list[Implementation]) -> Implementation:
    """The dispatcher's choice among the runnable implementations.

    When both cuDNN-based implementations can run (a CUDA tensor; RACED), the first call at each shape key
    times both on the call's own inputs and remembers the faster: cuDNN with a Triton epilogue pass
    ("torch+triton") or with torch's in-place ops ("torch+inplace"; on an H200 the Triton launch cost more than
    the passes it saved at some shapes). While a CUDA graph is being captured nothing can be timed: an uncached
    shape then takes cuDNN + the Triton epilogue, without caching. On a CPU, Winograd ("cpp") runs only where
    it pays (`_winograd_pays`). Otherwise the first runnable implementation that is not the implicit GEMM wins
    (the implicit GEMM runs when forced or when nothing else can).
    """
    if inputs["device"].type != "cuda":
        if runnable[0].backend == "cpp" and not (_winograd_pays(inputs["args"])
                                                 and _winograd_wins(runnable[0], runnable[1], inputs["args"])):
            return runnable[1]  # the reference always runs, so something follows
        return runnable[0]
    racers = [impl for impl in runnable if impl.backend in RACED]
    if len(racers) < 2:
        return next((impl for impl in runnable if impl.backend != "triton"), runnable[0])
    by_name = {impl.backend: impl for impl in racers}
    key = _choice_key(inputs["args"])
    name = _CHOICES.get(key)
    if name is None:
        if torch.cuda.is_current_stream_capturing():
            return by_name["torch+triton"]
        timings = {impl.backend: _time_ms(impl, inputs["args"]) for impl in racers}
        name = _CHOICES[key] = min(timings, key=timings.get)
        _TIMINGS[key] = timings
    return by_name[name]


_TIMINGS: dict[tuple[Any, ...], dict[str, float]] = {}

# Winograd's 16 products run as one BLAS batched GEMM, so its speed follows the host's BLAS: on session 21's VM it
# beat oneDNN's direct convolution by 1.21-1.26x at SD's sizes; on session 22's, whose BLAS runs at half oneDNN's
# rate, it lost (0.74-0.76x). Where the size rule allows it, the first call at each shape key times both on the
# call's own inputs (one warm-up, three alternating runs each), and Winograd is kept only when its median is under
# WINOGRAD_RACE_MARGIN of the direct convolution's.
WINOGRAD_RACE_MARGIN = 0.95
WINOGRAD_RACE_REPEATS = 3


def _winograd_wins(winograd: Implementation, direct: Implementation, args: tuple) -> bool:
    key = (*_choice_key(args), torch.get_num_threads())
    name = _CHOICES.get(key)
    if name is None:
        timings = _time_cpu_ms((winograd, direct), args)
        faster = timings[winograd.backend] < WINOGRAD_RACE_MARGIN * timings[direct.backend]
        name = _CHOICES[key] = winograd.backend if faster else direct.backend
        _TIMINGS[key] = timings
    return name == winograd.backend


def _time_cpu_ms(impls: tuple[Implementation, ...], args: tuple) -> dict[str, float]:
    """Median ms of each implementation on args (CPU), alternating, after one warm-up each."""
    return median_ms({impl.backend: (lambda impl=impl: impl.run(*args)) for impl in impls}, WINOGRAD_RACE_REPEATS)


def measured_choices() -> list[dict[str, Any]]:
    """The timing results so far (GPU: the two cuDNN paths; CPU: Winograd against the direct convolution): for
    each shape key, each implementation's median ms and the winner."""
    # A snapshot: another thread's first call of a new shape may add a record meanwhile.
    return [{"key": repr(key), "ms": timings, "chosen": _CHOICES[key]} for key, timings in list(_TIMINGS.items())]


CONV2D.choose = _choose
