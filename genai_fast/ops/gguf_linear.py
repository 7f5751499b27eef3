"""Linear layer over weights kept in GGUF block formats (Q4_0, Q4_1, Q8_0), expanded to fp32 on the fly.

A GGUF file stores each run of 32 weights of a row as one block: an fp16 scale d, for Q4_1 also an fp16
minimum m, and 32 small integers q; the weight is d * q (Q8_0), d * (q - 8) (Q4_0) or d * q + m (Q4_1),
computed in fp32 as the gguf package and transformers' GGUF loader do. `gguf_linear` computes
F.linear(x, W, bias) for that W without ever storing it: the C++ kernel reads the blocks (5 to 8.5 bits per
weight instead of 32) and expands them in registers to the very same fp32 numbers, so decode-sized inputs
cost a fraction of the memory traffic. The reference expands W with `gguf_dequantize` and calls F.linear.

Layers (DESIGN.md section 3): kernel csrc/cpu/gguf_linear.cpp, launcher genai_fast/backends/cpp/gguf_linear.py;
this module holds the public function, validation, the `genai_fast::gguf_linear` custom op with its fake and
autograd (with respect to x and bias; the blocks are constants), the reference and the backends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genai_fast.backends.dispatch import ANY_DEVICE, Capability, define_op, validate_backend_name
from genai_fast.ops.autocast import autocast_active, autocast_off
from genai_fast.ops.checks import check_tensor_like_x
from genai_fast.ops.eager import can_bypass_custom_op

BLOCK_WEIGHTS = 32  # weights per block in every format here
MAX_KERNEL_ROWS = 16  # csrc/cpu/gguf_linear.h kGgufMaxRows
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class BlockFormat:
    """One GGUF block format: its code for the C++ kernel, bytes per block, where the quants start."""

    code: int
    block_bytes: int
    quants_at: int


BLOCK_FORMATS: dict[str, BlockFormat] = {
    "Q4_0": BlockFormat(code=0, block_bytes=18, quants_at=2),
    "Q4_1": BlockFormat(code=1, block_bytes=20, quants_at=4),
    "Q8_0": BlockFormat(code=2, block_bytes=34, quants_at=2),
}

GGUF_LINEAR = define_op("gguf_linear")


def gguf_linear(x: torch.Tensor, blocks: torch.Tensor, block_type: str, bias: torch.Tensor | None = None, *,
                backend: str | None = None) -> torch.Tensor:
    """x [*, K] @ W^T + bias [N] -> [*, N], where W [N, K] is held by `blocks` in a GGUF block format.

    Args:
        x: [*, K] floating tensor.
        blocks: [N, K / 32 * block_bytes] uint8, each row the GGUF blocks of one row of W (as stored in the
            file for a tensor of GGUF shape [K, N]).
        block_type: "Q4_0", "Q4_1" or "Q8_0".
        bias: [N] of x's dtype, or None.
        backend: force "cpp" or "torch"; None picks the C++ kernel for fp32 CPU inputs of at most 16 rows
            (the product of x's leading dimensions), else torch.

    Equivalent PyTorch::

        y = torch.nn.functional.linear(x, gguf_dequantize(blocks, block_type).to(x.dtype), bias)
    """
    if autocast_active(x):
        # The blocks fix the weights' precision; every backend computes in x's (ops/autocast.py).
        with autocast_off(x):
            return gguf_linear(x, blocks, block_type, bias, backend=backend)
    _validate(x, blocks, block_type, bias, backend)
    if can_bypass_custom_op(x, bias):
        return _run(x, blocks, block_type, bias, backend)
    return torch.ops.genai_fast.gguf_linear(x, blocks, block_type, bias, backend or "")


def gguf_dequantize(blocks: torch.Tensor, block_type: str) -> torch.Tensor:
    """blocks [N, K / 32 * block_bytes] uint8 -> W [N, K] float32, the numbers the gguf package computes.

    Q4 blocks hold weight j of the block in the low nibble of quant byte j and weight j + 16 in its high
    nibble. Every product d * q is exact in fp32 (an 11-bit significand times a 4- or 8-bit integer), and
    Q4_1's + m rounds once, so these are bitwise the numbers numpy and the C++ kernel compute."""
    fmt = _format(block_type)
    if not isinstance(blocks, torch.Tensor):
        raise TypeError(f"blocks: expected a torch.Tensor, got {type(blocks).__name__}")
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] % fmt.block_bytes:
        raise ValueError(f"blocks: expected a 2-D uint8 tensor of whole {block_type} blocks "
                         f"({fmt.block_bytes} bytes each) per row, got {blocks.dtype} {tuple(blocks.shape)}")
    N, n_blocks = blocks.shape[0], blocks.shape[1] // fmt.block_bytes
    K = n_blocks * BLOCK_WEIGHTS  # sizes spelled out, not -1: a reshape cannot infer one when N is 0
    b = blocks.reshape(N, n_blocks, fmt.block_bytes)
    d = b[..., 0:2].contiguous().view(torch.float16).float()  # [N, blocks, 1]
    quants = b[..., fmt.quants_at:]
    if block_type == "Q8_0":
        return (quants.contiguous().view(torch.int8).float() * d).reshape(N, K)
    q = torch.cat([quants & 15, quants >> 4], dim=-1).float()  # weights 0-15, then 16-31
    if block_type == "Q4_0":
        return ((q - 8) * d).reshape(N, K)
    m = b[..., 2:4].contiguous().view(torch.float16).float()
    return (q * d + m).reshape(N, K)


def gguf_linear_reference(x: torch.Tensor, blocks: torch.Tensor, block_type: str,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: expand W, then F.linear. The fallback and, on float64 x, the test oracle."""
    return F.linear(x, gguf_dequantize(blocks, block_type).to(x.dtype), bias)


def resolve_gguf_linear(rows: int, device: torch.device | str = "cpu", backend: str | None = None
                        ) -> Callable[[torch.Tensor, torch.Tensor, str, torch.Tensor | None], torch.Tensor] | None:
    """The C++ kernel bound to torch's current thread count, with gguf_linear's (x, blocks, block_type, bias)
    signature, when it serves fp32 inputs of `rows` rows on `device`; None when it does not (the reference
    would expand the whole matrix on every call, so a caller then keeps its fp32 weights instead).

    For decode loops: no validation happens per call; the caller passes contiguous blocks and bias and
    x of `rows` rows."""
    x = torch.empty((rows, BLOCK_WEIGHTS), device=device)
    blocks = torch.empty((1, BLOCK_FORMATS["Q8_0"].block_bytes), dtype=torch.uint8, device=device)
    inputs = {"device": x.device, "dtype": x.dtype, "x": x, "blocks": blocks, "bias": None}
    if GGUF_LINEAR.select(inputs, backend).backend != "cpp":
        return None
    from genai_fast.backends.cpp.gguf_linear import gguf_linear_fwd

    threads = torch.get_num_threads()

    def run(x: torch.Tensor, blocks: torch.Tensor, block_type: str, bias: torch.Tensor | None) -> torch.Tensor:
        return gguf_linear_fwd(x, blocks, BLOCK_FORMATS[block_type].code, bias, threads)

    run.own_threads = True  # type: ignore[attr-defined]  # runs on the C++ pool (see DecoderModel.decode)
    return run


def _format(block_type: Any) -> BlockFormat:
    if block_type not in BLOCK_FORMATS:
        raise ValueError(f"block_type: expected one of {', '.join(BLOCK_FORMATS)}, got {block_type!r}")
    return BLOCK_FORMATS[block_type]


def _validate(x: Any, blocks: Any, block_type: Any, bias: Any, backend: Any) -> None:
    for name, t in (("x", x), ("blocks", blocks)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension [*, K], got a 0-d tensor")
    fmt = _format(block_type)
    if blocks.dtype != torch.uint8 or blocks.dim() != 2:
        raise ValueError(f"blocks: expected a 2-D uint8 tensor [N, K / 32 * {fmt.block_bytes}], "
                         f"got {blocks.dtype} of shape {tuple(blocks.shape)}")
    if blocks.shape[1] % fmt.block_bytes or blocks.shape[1] // fmt.block_bytes * BLOCK_WEIGHTS != x.shape[-1]:
        raise ValueError(f"blocks: expected {x.shape[-1] // BLOCK_WEIGHTS} {block_type} blocks of {fmt.block_bytes} "
                         f"bytes per row for K={x.shape[-1]} (K a multiple of 32), got {blocks.shape[1]} bytes")
    if blocks.device != x.device:
        raise ValueError(f"blocks: expected a tensor on x's device {x.device}, got {blocks.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (blocks.shape[0],):
            raise ValueError(f"bias: expected shape ({blocks.shape[0]},) to match the weight's rows, "
                             f"got {tuple(bias.shape)}")
        check_tensor_like_x("bias", bias, x.dtype, x.device)
    validate_backend_name(backend)


# ---------------------------------------------------------------- custom op, fake, autograd


@torch.library.custom_op("genai_fast::gguf_linear", mutates_args=())
def _gguf_linear_op(x: torch.Tensor, blocks: torch.Tensor, block_type: str, bias: torch.Tensor | None,
                    backend: str) -> torch.Tensor:
    return _run(x, blocks, block_type, bias, backend or None)


def _run(x, blocks, block_type, bias, backend):
    """Dispatch and launch: the body of the custom op, also called directly in plain eager mode."""
    inputs = {"device": x.device, "dtype": x.dtype, "x": x, "blocks": blocks, "bias": bias}
    return GGUF_LINEAR.select(inputs, backend).run(x, blocks, block_type, bias)


@_gguf_linear_op.register_fake
def _gguf_linear_fake(x, blocks, block_type, bias, backend):
    return x.new_empty((*x.shape[:-1], blocks.shape[0]))


def _setup_context(ctx, inputs, output):
    x, blocks, block_type, bias, _backend = inputs
    ctx.save_for_backward(blocks)
    ctx.block_type, ctx.x_dtype, ctx.has_bias = block_type, x.dtype, bias is not None


def _backward(ctx, grad):
    (blocks,) = ctx.saved_tensors
    grad_x = grad @ gguf_dequantize(blocks, ctx.block_type).to(ctx.x_dtype)
    grad_b = grad.reshape(math.prod(grad.shape[:-1]), grad.shape[-1]).sum(0) if ctx.has_bias else None  # N may be 0
    return grad_x, None, None, grad_b, None


_gguf_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- backends, in priority order


def _cpp_reasons(inputs: dict[str, Any]) -> list[str]:
    x, blocks, bias = inputs["x"], inputs["blocks"], inputs["bias"]
    reasons = []
    rows = math.prod(x.shape[:-1])  # not numel / K: K may be 0
    if not 1 <= rows <= MAX_KERNEL_ROWS:
        reasons.append(f"{rows} rows: the kernel takes 1 to {MAX_KERNEL_ROWS} (expanding W once and a GEMM "
                       "serve more)")
    if x.shape[-1] == 0 or blocks.shape[0] == 0:
        reasons.append("an empty weight (K = 0 or N = 0)")
    if not blocks.is_contiguous():
        reasons.append("blocks are not contiguous")
    if bias is not None and not bias.is_contiguous():
        reasons.append("bias is not contiguous")
    return reasons


@GGUF_LINEAR.register(
    "cpp",
    Capability(devices=("cpu",), dtypes=(torch.float32,),
               features=("Q4_0, Q4_1, Q8_0 blocks", "decode rows (<= 16)", "threads, GIL released")),
    check=_cpp_reasons,
)
def _gguf_linear_cpp(x, blocks, block_type, bias):
    from genai_fast.backends.cpp.gguf_linear import gguf_linear_fwd

    return gguf_linear_fwd(x, blocks, BLOCK_FORMATS[block_type].code, bias)


@GGUF_LINEAR.register(
    "torch",
    Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",)),
)
def _gguf_linear_torch(x, blocks, block_type, bias):
    return gguf_linear_reference(x, blocks, block_type, bias)
