"""Linear layer (y = x W^T + b) with a C++ kernel for decode-sized inputs on the CPU.

At decode time a transformer's linear layers see a handful of rows, and a general GEMM spends its time
packing the weights rather than streaming them (csrc/cpu/linear.cpp says more). This op keeps
torch.nn.functional.linear's contract and routes inputs of at most 16 rows to that kernel; everything
else runs F.linear (BLAS on the CPU, cuBLAS on a GPU), which is also the reference.

Layers (DESIGN.md section 3): kernel csrc/cpu/linear.cpp, launcher genai_fast/backends/cpp/linear.py;
this module holds the public function, validation, the `genai_fast::linear` custom op with its fake and
autograd, the reference and the backends' capability declarations in priority order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from genai_fast.backends.dispatch import ANY_DEVICE, Capability, define_op, validate_backend_name
from genai_fast.ops.autocast import LOWER_PRECISION, autocast_active, autocast_dtype, autocast_off, cast_inputs
from genai_fast.ops.checks import check_tensor_like_x
from genai_fast.ops.eager import can_bypass_custom_op
from genai_fast.ops.plans import EagerPlans
from genai_fast.ops.timing import median_ms

MAX_KERNEL_ROWS = 16  # csrc/cpu/linear.h kSkinnyMaxRows
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

LINEAR = define_op("linear")
_PLANS = EagerPlans(LINEAR)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           backend: str | None = None) -> torch.Tensor:
    """x [*, K] @ weight [N, K]^T + bias [N] -> [*, N], like torch.nn.functional.linear.

    Args:
        x: [*, K] floating tensor; weight: [N, K] and bias: [N] (or None) of x's dtype and device.
        backend: force "cpp", "torch+onednn" or "torch"; None picks the C++ kernel for fp32 CPU inputs of at most
            16 rows (the product of x's leading dimensions) with a contiguous weight; for more rows on a CPU,
            oneDNN where a first-call timing found it faster than BLAS (see ONEDNN_MIN_MACS); else torch.

    Equivalent PyTorch::

        y = torch.nn.functional.linear(x, weight, bias)
    """
    if autocast_active(x):
        x, weight, bias = cast_inputs(autocast_dtype(LOWER_PRECISION, x.device.type), x, weight, bias)
        with autocast_off(x):
            return linear(x, weight, bias, backend=backend)
    signature = _PLANS.signature((x, weight, bias), (), backend)
    impl = _PLANS.replay(signature)
    if impl is not None:  # this signature passed the checks before
        return impl.run(x, weight, bias)
    _validate(x, weight, bias, backend)
    if can_bypass_custom_op(x, weight, bias):
        return _run(x, weight, bias, backend, signature)
    return torch.ops.genai_fast.linear(x, weight, bias, backend or "")


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: the fallback and, on float64 inputs, the test oracle."""
    return F.linear(x, weight, bias)


def resolve_linear(rows: int, weight: torch.Tensor, backend: str | None = None
                   ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The implementation genai_fast.linear picks for x of `rows` rows against contiguous weights of
    `weight`'s dtype and device, as a plain function with F.linear's (x, weight, bias) signature.

    For loops that call many linear layers per step (LLM decode: about 200 per token): the dispatcher's
    checks would cost more than a small layer. The caller promises the inputs it passes are like the ones
    described (rows, dtype, device, contiguous weights and biases); no validation happens per call."""
    x = weight.new_empty((rows, weight.shape[-1]))
    w = weight if weight.is_contiguous() else weight.contiguous()
    inputs = {"device": weight.device, "dtype": weight.dtype, "x": x, "weight": w, "bias": None}
    impl = LINEAR.select(inputs, backend)
    if impl.backend != "cpp":
        return impl.run
    from genai_fast.backends.cpp.linear import skinny_linear_fwd

    return _OwnThreads(skinny_linear_fwd, torch.get_num_threads())


class _OwnThreads:
    """The C++ kernel bound to a thread count fixed now: it runs on its own pool, so a caller may drop
    torch's intra-op threads to 1 around it (see DecoderModel.decode) without slowing it."""

    own_threads = True

    def __init__(self, fn: Callable[..., torch.Tensor], num_threads: int) -> None:
        self.fn, self.num_threads = fn, num_threads

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.fn(x, weight, bias, self.num_threads)


def _validate(x: Any, weight: Any, bias: Any, backend: Any) -> None:
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension [*, K], got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D [N, K] tensor, got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight: expected K={x.shape[-1]} columns to match x's last dimension, "
                         f"got shape {tuple(weight.shape)}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias: expected shape ({weight.shape[0]},) to match weight's rows, "
                             f"got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor_like_x(name, t, x.dtype, x.device)
    validate_backend_name(backend, LINEAR.extra_names())


# ---------------------------------------------------------------- custom op, fake, autograd


@torch.library.custom_op("genai_fast::linear", mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    return _run(x, weight, bias, backend or None)


def _run(x, weight, bias, backend, signature=None):
    """Dispatch and launch: the body of the custom op, also called directly in plain eager mode (which keeps the
    choice for the call's signature)."""
    inputs = {"device": x.device, "dtype": x.dtype, "x": x, "weight": weight, "bias": bias}
    return _PLANS.record(signature, LINEAR.select(inputs, backend)).run(x, weight, bias)


@_linear_op.register_fake
def _linear_fake(x, weight, bias, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, bias, _backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    rows = math.prod(x.shape[:-1])  # spelled out: reshape(-1, 0) cannot infer it when N or K is 0
    grad_rows = grad.reshape(rows, grad.shape[-1])
    grad_x = grad @ weight
    grad_w = grad_rows.t() @ x.reshape(rows, x.shape[-1])
    grad_b = grad_rows.sum(0) if ctx.has_bias else None
    return grad_x, grad_w, grad_b, None


_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- backends, in priority order


def _cpp_reasons(inputs: dict[str, Any]) -> list[str]:
    x, weight, bias = inputs["x"], inputs["weight"], inputs["bias"]
    reasons = []
    rows = math.prod(x.shape[:-1])  # not numel / K: K may be 0
    if not 1 <= rows <= MAX_KERNEL_ROWS:
        reasons.append(f"{rows} rows: the kernel takes 1 to {MAX_KERNEL_ROWS} (BLAS GEMM reuses weights beyond)")
    if x.shape[-1] == 0:
        reasons.append("K = 0")
    if weight.shape[0] == 0:
        reasons.append("N = 0 (no output features)")
    if not weight.is_contiguous():
        reasons.append("weight is not contiguous")
    if bias is not None and not bias.is_contiguous():
        reasons.append("bias is not contiguous")
    return reasons


@LINEAR.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,), features=("decode rows (<= 16)", "one pass over the weights",
                                                                     "threads, GIL released")),
    check=_cpp_reasons,
)
def _linear_cpp(x, weight, bias):
    from genai_fast.backends.cpp.linear import skinny_linear_fwd

    return skinny_linear_fwd(x, weight, bias)


def _onednn_reasons(inputs: dict[str, Any]) -> list[str]:
    x = inputs["x"]
    if x.numel() == 0 or inputs["weight"].numel() == 0:
        return ["an empty dimension"]
    return []


@LINEAR.register(
    "torch+onednn",
    Capability(devices=("cpu",), dtypes=(torch.float32,), layouts=("any (rows made contiguous)",),
               features=("oneDNN's convolution as a GEMM: the rows as a 1x1 conv's pixels",
                         "chosen per shape by timing it against BLAS on the first call")),
    check=_onednn_reasons,
    requires="torch",
)
def _linear_onednn(x, weight, bias):
    """x @ weight^T + bias through oneDNN: x's rows are the pixels of a channels_last 1x1 convolution (a view,
    no copy), so oneDNN's GEMM kernels run them. On session 22's VM (AMD family 26) they ran 460-490 GFLOP/s
    where torch's BLAS GEMM (MKL) ran 190-220 (2.2x at 1024x320 @ 1280x320^T), but lost at small products."""
    K, N = x.shape[-1], weight.shape[0]
    rows = x.reshape(-1, K)
    if rows.stride(-1) != 1 or rows.stride(0) != K:
        rows = rows.contiguous()
    M = rows.shape[0]
    pixels = rows.reshape(1, M, 1, K).permute(0, 3, 1, 2)  # [1, K, M, 1], channels_last
    y = F.conv2d(pixels, weight.reshape(N, K, 1, 1), bias)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], N)


@LINEAR.register(
    "torch",
    Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",)),
)
def _linear_torch(x, weight, bias):
    return linear_reference(x, weight, bias)


# Which GEMM is faster on a CPU depends on the host: on session 22's VM oneDNN ran 1.5-2.2x MKL's from about 16M
# multiply-adds (LLM prefill, SD-sized projections) and 0.6-0.9x below 4M; on session 21's host oneDNN's 1x1
# convolutions lost to MKL's GEMM up to about 50M (conv2d's POINTWISE_GEMM_MAX_MACS). So from ONEDNN_MIN_MACS
# automatic dispatch times both once per shape bucket (rows rounded up to a power of two, so prompts of new
# lengths reuse a decision) on synthetic inputs, and keeps oneDNN only when its median is under
# ONEDNN_RACE_MARGIN of BLAS's.
ONEDNN_MIN_MACS = 1 << 22
ONEDNN_RACE_MARGIN = 0.95
ONEDNN_RACE_REPEATS = 3
_RACES: dict[tuple[Any, ...], dict[str, float]] = {}


def _choose(inputs: dict[str, Any], runnable: list) -> Any:
    """The first runnable implementation, except that oneDNN runs only where timing found it faster."""
    first = runnable[0]
    if first.backend != "torch+onednn":
        return first
    fallback = next(impl for impl in runnable if impl.backend == "torch")
    x, weight = inputs["x"], inputs["weight"]
    K, N = x.shape[-1], weight.shape[0]
    M = x.numel() // max(K, 1)
    if M <= MAX_KERNEL_ROWS or M * K * N < ONEDNN_MIN_MACS or torch.compiler.is_compiling():
        return fallback  # decode-sized rows (without the C++ kernel) and small products: BLAS, untimed
    bucket = (1 << (M - 1).bit_length(), K, N, inputs["bias"] is not None, torch.get_num_threads())
    if bucket not in _RACES:
        _RACES[bucket] = _time_both(*bucket[:4])
    timings = _RACES[bucket]
    return first if timings["torch+onednn"] < ONEDNN_RACE_MARGIN * timings["torch"] else fallback


def _time_both(M: int, K: int, N: int, has_bias: bool) -> dict[str, float]:
    """Median ms of BLAS (F.linear) and oneDNN at [M, K] @ [N, K]^T on synthetic inputs."""
    x, weight = torch.randn(M, K), torch.randn(N, K)
    bias = torch.randn(N) if has_bias else None
    return median_ms({"torch": lambda: F.linear(x, weight, bias),
                      "torch+onednn": lambda: _linear_onednn(x, weight, bias)}, ONEDNN_RACE_REPEATS)


LINEAR.choose = _choose
