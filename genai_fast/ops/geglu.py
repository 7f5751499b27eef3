"""GEGLU, the gated GELU of diffusers' transformer feed-forward: value * GELU(gate) over the two halves of
the projection's output, in one pass.

diffusers' GEGLU runs `hidden, gate = proj(x).chunk(2, -1); hidden * F.gelu(gate)`: two passes over a
strided half (and on a CPU, torch's GELU leaves its vectorised loop on the strided gate). The kernels
here read both halves of a row once and write the product once.

Layers (DESIGN.md section 3): kernels kernels/geglu.py (Triton) and csrc/cpu/geglu.cpp (C++), launchers
next to them and in genai_fast/backends/cpp/geglu.py; this module holds the public function, validation,
the `genai_fast::geglu` custom op with its fake and autograd, the reference and the backends.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genai_fast.backends.dispatch import ANY_DEVICE, Capability, define_op, validate_backend_name
from genai_fast.ops.autocast import autocast_active, autocast_off
from genai_fast.ops.checks import reference_input
from genai_fast.ops.eager import can_bypass_custom_op
from genai_fast.ops.plans import EagerPlans
from genai_fast.ops.timing import median_ms

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
APPROXIMATIONS = ("none", "tanh")

GEGLU = define_op("geglu")
_PLANS = EagerPlans(GEGLU)


def geglu(x: torch.Tensor, approximate: str = "none", *, backend: str | None = None) -> torch.Tensor:
    """x [*, 2H] -> [*, H]: the first half times GELU of the second, in x's dtype.

    Args:
        x: [*, 2H] floating tensor (the output of the GEGLU projection).
        approximate: GELU's form, as in torch.nn.functional.gelu: "none" (erf) or "tanh".
        backend: force "triton", "cpp" or "torch"; None picks the fastest that can run.

    Equivalent PyTorch (diffusers' GEGLU after its projection)::

        hidden, gate = x.chunk(2, dim=-1)
        out = hidden * F.gelu(gate, approximate=approximate)
    """
    if autocast_active(x):
        with autocast_off(x):  # computed in x's precision, as under autocast (ops/autocast.py)
            return geglu(x, approximate, backend=backend)
    signature = _PLANS.signature((x,), (approximate,), backend)
    impl = _PLANS.replay(signature)
    if impl is not None:  # this signature passed the checks before
        return impl.run(x, approximate)
    _validate(x, approximate, backend)
    if can_bypass_custom_op(x):
        return _run(x, approximate, backend, signature)
    return torch.ops.genai_fast.geglu(x, approximate, backend or "")


def geglu_reference(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Plain PyTorch, diffusers' formula: the CPU fallback and, on float64 inputs, the oracle."""
    hidden, gate = x.chunk(2, dim=-1)
    return hidden * F.gelu(gate, approximate=approximate)


def _validate(x: Any, approximate: Any, backend: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0 or x.shape[-1] % 2:
        raise ValueError(f"x: expected a tensor [*, 2H] with an even, non-zero last dimension, got shape "
                         f"{tuple(x.shape)}")
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    validate_backend_name(backend)


# ---------------------------------------------------------------- custom op, fake, autograd


@torch.library.custom_op("genai_fast::geglu", mutates_args=())
def _geglu_op(x: torch.Tensor, approximate: str, backend: str) -> torch.Tensor:
    return _run(x, approximate, backend or None)


def _run(x, approximate, backend, signature=None):
    """Dispatch and launch: the body of the custom op, also called directly in plain eager mode (which keeps the
    choice for the call's signature)."""
    if x.numel() == 0:
        return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))
    inputs = {"device": x.device, "dtype": x.dtype, "x": x, "approximate": approximate}
    return _PLANS.record(signature, GEGLU.select(inputs, backend)).run(x, approximate)


@_geglu_op.register_fake
def _geglu_fake(x, approximate, backend):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def _setup_context(ctx, inputs, output):
    x, approximate, _backend = inputs
    ctx.save_for_backward(x)
    ctx.approximate = approximate


def _backward(ctx, grad):
    # The reference's gradient, by autograd through it (an elementwise op: clarity over a hand-written
    # formula). Grad mode is on here only under backward(create_graph=True): then grad_x stays differentiable.
    (x,) = ctx.saved_tensors
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xs = reference_input(x, create_graph)
        (grad_x,) = torch.autograd.grad(geglu_reference(xs, ctx.approximate), (xs,), grad, create_graph=create_graph)
    return grad_x, None, None


_geglu_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- backends, in priority order


@GEGLU.register(
    "triton",
    Capability(devices=("cuda", "cpu"), dtypes=KERNEL_DTYPES, layouts=("rows with unit stride (else copied)",),
               features=("one pass over both halves", "fp32 GELU")),
)
def _geglu_triton(x, approximate):
    from genai_fast.kernels.geglu import geglu_fwd

    return geglu_fwd(x, approximate)


@GEGLU.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,), layouts=("rows with unit stride (else copied)",),
               features=("one pass over both halves", "vector erf", "threads, GIL released")),
)
def _geglu_cpp(x, approximate):
    from genai_fast.backends.cpp.geglu import geglu_fwd

    return geglu_fwd(x, approximate)


@GEGLU.register(
    "torch",
    Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",)),
)
def _geglu_torch(x, approximate):
    return geglu_reference(x, approximate)


# On a CPU the C++ kernel (exact erf, one pass) is not faster everywhere. On session 27's VM torch's two ops won by
# 10-15% on small rows (their vectorised erf is cheaper), then fell off at about 3e5 outputs, where the C++ kernel ran
# 7x faster (2x256x1280), and 1.5-1.7x at Stable Diffusion's sizes. Where the crossover lies depends on the host, so
# automatic dispatch times both once per shape bucket (rows rounded up to a power of two) on synthetic inputs and
# keeps torch only where it is clearly faster (RACE_MARGIN).
RACE_MARGIN = 0.9
RACE_MIN_OUTPUTS = 1 << 16  # outputs per timed sample: tiny calls are timed in batches
_RACES: dict[tuple[Any, ...], dict[str, float]] = {}


def _choose(inputs: dict[str, Any], runnable: list) -> Any:
    """The first runnable implementation, except that a CPU call takes torch where timing found it faster."""
    first = runnable[0]
    x = inputs.get("x")
    if first.backend != "cpp" or x is None or torch.compiler.is_compiling():
        return first
    fallback = next(impl for impl in runnable if impl.backend == "torch")
    H = x.shape[-1] // 2
    rows = max(1, x.numel() // max(2 * H, 1))
    bucket = (1 << (rows - 1).bit_length(), H, inputs["approximate"], torch.get_num_threads())
    if bucket not in _RACES:
        _RACES[bucket] = _time_both(*bucket[:3])
    timings = _RACES[bucket]
    return fallback if timings["torch"] < RACE_MARGIN * timings["cpp"] else first


def _time_both(rows: int, H: int, approximate: str) -> dict[str, float]:
    """Median ms of the C++ kernel and torch's two ops on a synthetic [rows, 2H] input (several calls per sample
    for small inputs, so that a sample is long enough to time)."""
    x = torch.randn(rows, 2 * H)
    calls = max(1, RACE_MIN_OUTPUTS // (rows * H))

    def repeated(fn: Any) -> Any:
        return lambda: [fn() for _ in range(calls)]

    return median_ms({"cpp": repeated(lambda: _geglu_cpp(x, approximate)),
                      "torch": repeated(lambda: geglu_reference(x, approximate))}, 5)


GEGLU.choose = _choose
