"""Mixture-of-experts MLP: each token's output is the weighted sum of the gated MLPs of the k experts its router
chose, as in Mixtral, Qwen2-MoE, Qwen3-MoE (transformers' `*Experts` modules) and GPT-OSS (biases and its clamped
GLU).

The router (a linear layer, a softmax and a top-k) stays with the model: architectures differ there (renormalised
or not, a shared expert beside the routed ones). This op takes its result, the expert ids and their weights, and
runs the experts over stacked weights laid out as transformers stores them: gate_up [E, 2I, H] (the gate rows,
then the up rows) and down [E, H, I].

Layers (DESIGN.md section 3): kernels/moe.py (Triton: the experts read through the ids on the device, no host
synchronisation, so a CUDA graph can capture an LLM decode step); this module holds the public function, its
validation, the `genai_fast::moe_experts` custom op with fake and autograd, the reference and the backends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from genai_fast.backends.dispatch import ANY_DEVICE, Capability, define_op, validate_backend_name
from genai_fast.ops.checks import reference_input
from genai_fast.ops.eager import can_bypass_custom_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
GLU_NAMES = (*ACTIVATIONS, "gpt_oss")  # "gpt_oss": GPT-OSS's clamped GLU instead of act(gate) * up
MAX_KERNEL_PAIRS = 65535  # the Triton launch's grid dimension 1: tokens x k of one call
LinearFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]  # F.linear's signature

MOE_EXPERTS = define_op("moe_experts")


def moe_experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_ids: torch.Tensor,
                topk_weights: torch.Tensor, activation: str = "silu", *, gate_up_bias: torch.Tensor | None = None,
                down_bias: torch.Tensor | None = None, alpha: float = 1.702, limit: float = 7.0,
                backend: str | None = None) -> torch.Tensor:
    """x [*, H] -> [*, H]: sum over j of topk_weights[..., j] * expert_{topk_ids[..., j]}(x).

    Args:
        x: [*, H] floating tensor, the tokens (rows) entering the MoE layer.
        gate_up: [E, 2I, H] in x's dtype: each expert's gate projection rows, then its up projection rows.
        down: [E, H, I] in x's dtype: each expert's down projection.
        topk_ids: [*, k] integer tensor, each in [0, E): the experts each token goes to (distinct per token, as a
            top-k makes them; repeats are allowed and add up).
        topk_weights: [*, k] floating tensor: their weights (any float dtype; the product is computed in the
            promoted dtype, then rounded to x's, as transformers does).
        activation: the gate's activation: "silu" (SwiGLU), "gelu" (erf) or "gelu_tanh"; or "gpt_oss", GPT-OSS's
            clamped GLU in place of act(gate) * up: (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g) with
            g = clamp(gate, max=limit).
        gate_up_bias, down_bias: [E, 2I] and [E, H] in x's dtype, the experts' projection biases (GPT-OSS), both or
            neither.
        alpha, limit: the "gpt_oss" activation's constants (GPT-OSS's swiglu_alpha and swiglu_limit).
        backend: force "triton" or "torch"; None picks the fastest that can run.

    Equivalent PyTorch (transformers' MixtralExperts.forward)::

        out = torch.zeros_like(x)
        for each expert e and every (token t, choice j) with topk_ids[t, j] == e:
            gate, up = F.linear(x[t], gate_up[e]).chunk(2, -1)
            out[t] += (F.linear(act(gate) * up, down[e]) * topk_weights[t, j]).to(x.dtype)
    """
    _validate(x, gate_up, down, topk_ids, topk_weights, activation, backend)
    _validate_extras(x, gate_up, gate_up_bias, down_bias, alpha, limit)
    alpha, limit = float(alpha), float(limit)
    if can_bypass_custom_op(x, gate_up, down, topk_weights, gate_up_bias, down_bias):
        return _run(x, gate_up, down, topk_ids, topk_weights, activation, backend, gate_up_bias, down_bias, alpha,
                    limit)
    return torch.ops.genai_fast.moe_experts(x, gate_up, down, topk_ids, topk_weights, activation, backend or "",
                                            gate_up_bias, down_bias, alpha, limit)


def moe_experts_reference(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_ids: torch.Tensor,
                          topk_weights: torch.Tensor, activation: str = "silu",
                          gate_up_bias: torch.Tensor | None = None, down_bias: torch.Tensor | None = None,
                          alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """Plain PyTorch, transformers' order of operations: the CPU fallback and, on float64 inputs, the oracle."""
    biases = None if gate_up_bias is None else (gate_up_bias, down_bias)
    return grouped_experts(x, gate_up, down, topk_ids, topk_weights, glu_for(activation, alpha, limit),
                           biases=biases)


def glu_for(activation: str, alpha: float = 1.702, limit: float = 7.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The middle of the experts' MLP for an activation name: the gate/up product [..., 2I] -> [..., I]."""
    if activation != "gpt_oss":
        return gated(ACTIVATIONS[activation])

    def clamped_glu(h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        gate = gate.clamp(max=limit)
        return (up.clamp(-limit, limit) + 1) * (gate * torch.sigmoid(gate * alpha))

    return clamped_glu


Activation = Callable[[torch.Tensor], torch.Tensor]
Biases = tuple[torch.Tensor, torch.Tensor]  # (gate_up bias [E, 2I], down bias [E, H])


def gated(act: Activation) -> Activation:
    """The gated MLP's middle: the gate/up product [..., 2I] -> act(gate) * up [..., I]."""
    def glu(h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        return act(gate) * up

    return glu


def _expert_mlp(rows: torch.Tensor, expert: int, gate_up: torch.Tensor, down: torch.Tensor, glu: Activation,
                linear: LinearFn, biases: Biases | None) -> torch.Tensor:
    """One expert over its rows [n, H] -> [n, H]: glu(rows @ gate_up[e]^T + b) @ down[e]^T + b."""
    b_in, b_out = (None, None) if biases is None else (biases[0][expert], biases[1][expert])
    return linear(glu(linear(rows, gate_up[expert], b_in)), down[expert], b_out)


def grouped_experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_ids: torch.Tensor,
                    topk_weights: torch.Tensor, glu: Activation, linear: LinearFn = F.linear,
                    biases: Biases | None = None) -> torch.Tensor:
    """The reference's loop with its projections on `linear` (the LLM engine passes its decode-step kernel):
    token-choice pairs grouped by expert, each expert's rows through one pair of products, its outputs scaled by
    their weights and added to their tokens in expert order (so each token's sum runs in ascending expert id, as
    transformers'). Reads the expert counts on the host. glu: the gate/up product [n, 2I] -> [n, I] (glu_for's);
    biases: the experts' projection biases (GPT-OSS), or None."""
    H, top_k = x.shape[-1], topk_ids.shape[-1]
    rows = x.reshape(-1, H)
    if rows.shape[0] == 1:
        out = _one_token(rows, gate_up, down, topk_ids.reshape(-1), topk_weights.reshape(-1), glu, linear, biases)
        return out.view(x.shape)
    out = torch.zeros_like(rows)
    flat_ids = topk_ids.reshape(-1)
    flat_weights = topk_weights.reshape(-1)
    # Pairs (token * k + choice) grouped by expert, then by choice, then token: the rows of transformers' per-expert
    # products in its order (a GEMM's rows are not always bitwise independent of their neighbours).
    choice_major = topk_ids.reshape(-1, top_k).t().reshape(-1)
    order = torch.argsort(choice_major, stable=True)
    order = (order % rows.shape[0]) * top_k + order // rows.shape[0]
    counts = torch.bincount(flat_ids, minlength=gate_up.shape[0]).tolist()
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start:start + count]
        start += count
        tokens = pairs // top_k
        y = _expert_mlp(rows[tokens], expert, gate_up, down, glu, linear, biases) * flat_weights[pairs, None]
        out.index_add_(0, tokens, y.to(out.dtype))
    return out.reshape(x.shape)


def gathered_experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_ids: torch.Tensor,
                     topk_weights: torch.Tensor, glu: Activation, biases: Biases | None = None) -> torch.Tensor:
    """x [R, H] -> [R, H] without reading a host value (a CUDA graph can capture it): every token-choice pair's
    expert weights gathered by id ([R k, 2I, H] and [R k, H, I] copies), batched products, the k outputs of each
    token weighted and summed (in choice order, not expert order: within the tolerance rule of the reference). For
    decode steps where the Triton kernels do not apply (GPT-OSS's experts, no Triton, the reference forced)."""
    top_k = topk_ids.shape[-1]
    flat = topk_ids.reshape(-1)
    rows = x.repeat_interleave(top_k, dim=0)[:, :, None]  # [R k, H, 1]
    h = torch.bmm(gate_up[flat], rows)[..., 0]
    if biases is not None:
        h = h + biases[0][flat]
    y = torch.bmm(down[flat], glu(h)[:, :, None])[..., 0]
    if biases is not None:
        y = y + biases[1][flat]
    y = (y * topk_weights.reshape(-1, 1)).to(x.dtype)
    return y.view(x.shape[0], top_k, -1).sum(dim=1)


def _one_token(row: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, ids: torch.Tensor,
               weights: torch.Tensor, glu: Activation, linear: LinearFn, biases: Biases | None) -> torch.Tensor:
    """grouped_experts for one token (an LLM's batch-1 decode step): its experts in ascending id, each output added
    as the loop's index_add would add it (the first to zeros: itself), without the grouping's index tensors."""
    out = None
    for expert, choice in sorted((e, j) for j, e in enumerate(ids.tolist())):
        y = (_expert_mlp(row, expert, gate_up, down, glu, linear, biases) * weights[choice:choice + 1]).to(row.dtype)
        out = y if out is None else out + y
    return out if out is not None else torch.zeros_like(row)


def _validate(x: Any, gate_up: Any, down: Any, topk_ids: Any, topk_weights: Any, activation: Any,
              backend: Any) -> None:
    for name, t in (("x", x), ("gate_up", gate_up), ("down", down), ("topk_ids", topk_ids),
                    ("topk_weights", topk_weights)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x: expected a tensor [*, H], got a 0-d tensor")
    H = x.shape[-1]
    if gate_up.dim() != 3 or gate_up.shape[2] != H or gate_up.shape[1] % 2:
        raise ValueError(f"gate_up: expected [E, 2I, {H}] (an even middle dimension), got {tuple(gate_up.shape)}")
    E, inter = gate_up.shape[0], gate_up.shape[1] // 2
    if down.dim() != 3 or tuple(down.shape) != (E, H, inter):
        raise ValueError(f"down: expected [{E}, {H}, {inter}] to match gate_up, got {tuple(down.shape)}")
    for name, t in (("gate_up", gate_up), ("down", down)):
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name}: expected x's dtype {x.dtype} and device {x.device}, got {t.dtype} on "
                             f"{t.device}")
    _validate_routing(x, topk_ids, topk_weights, E)
    if activation not in GLU_NAMES:
        raise ValueError(f"activation: expected one of {', '.join(map(repr, GLU_NAMES))}, got {activation!r}")
    validate_backend_name(backend)


def _validate_extras(x: torch.Tensor, gate_up: torch.Tensor, gate_up_bias: Any, down_bias: Any, alpha: Any,
                     limit: Any) -> None:
    if (gate_up_bias is None) != (down_bias is None):
        raise ValueError("gate_up_bias: expected both biases or neither (gate_up_bias with down_bias)")
    E, two_inter, H = gate_up.shape
    for name, t, shape in (("gate_up_bias", gate_up_bias, (E, two_inter)), ("down_bias", down_bias, (E, H))):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape or t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name}: expected [{', '.join(map(str, shape))}] in x's dtype {x.dtype} on {x.device}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    for name, value in (("alpha", alpha), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{name}: expected a number, got {value!r}")
    if limit <= 0:
        raise ValueError(f"limit: expected > 0, got {limit!r}")


def _validate_routing(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts: int) -> None:
    if topk_ids.dtype.is_floating_point or topk_ids.dtype.is_complex or topk_ids.dtype == torch.bool:
        raise TypeError(f"topk_ids: expected an integer tensor, got {topk_ids.dtype}")
    if topk_ids.dim() < 1 or tuple(topk_ids.shape[:-1]) != tuple(x.shape[:-1]):
        raise ValueError(f"topk_ids: expected [*x.shape[:-1], k] = [{', '.join(map(str, x.shape[:-1]))}, k], got "
                         f"{tuple(topk_ids.shape)}")
    if not topk_weights.dtype.is_floating_point or tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(f"topk_weights: expected a floating tensor of topk_ids' shape {tuple(topk_ids.shape)}, "
                         f"got {topk_weights.dtype} {tuple(topk_weights.shape)}")
    for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if t.device != x.device:
            raise ValueError(f"{name}: expected x's device {x.device}, got {t.device}")


def _check_expert_ids(topk_ids: torch.Tensor, experts: int) -> None:
    """The ids' values, checked where the op runs (inside the custom op under torch.compile, where they are known)
    before any kernel indexes the weights with them: a read of host values, a synchronisation on a GPU (the LLM
    engine's decode step calls the resolved kernels instead, with ids its own top-k made)."""
    if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= experts):
        raise ValueError(f"topk_ids: expected expert ids in [0, {experts}), got values in "
                         f"[{int(topk_ids.min())}, {int(topk_ids.max())}]")


# ---------------------------------------------------------------- custom op, fake, autograd


@torch.library.custom_op("genai_fast::moe_experts", mutates_args=())
def _moe_experts_op(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_ids: torch.Tensor,
                    topk_weights: torch.Tensor, activation: str, backend: str, gate_up_bias: torch.Tensor | None = None,
                    down_bias: torch.Tensor | None = None, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    return _run(x, gate_up, down, topk_ids, topk_weights, activation, backend or None, gate_up_bias, down_bias, alpha,
                limit)


def _run(x, gate_up, down, topk_ids, topk_weights, activation, backend, gate_up_bias=None, down_bias=None,
         alpha=1.702, limit=7.0):
    """Dispatch and launch: the body of the custom op, also called directly in plain eager mode."""
    if x.numel() == 0:
        return x.new_empty(x.shape)
    _check_expert_ids(topk_ids, gate_up.shape[0])
    inputs = {"device": x.device, "dtype": x.dtype, "x": x, "topk_ids": topk_ids}
    impl = MOE_EXPERTS.select(inputs, backend)
    return impl.run(x, gate_up, down, topk_ids, topk_weights, activation, gate_up_bias, down_bias, alpha, limit)


@_moe_experts_op.register_fake
def _moe_experts_fake(x, gate_up, down, topk_ids, topk_weights, activation, backend, gate_up_bias=None,
                      down_bias=None, alpha=1.702, limit=7.0):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, gate_up, down, topk_ids, topk_weights, activation, _backend, gate_up_bias, down_bias, alpha, limit = inputs
    ctx.save_for_backward(x, gate_up, down, topk_ids, topk_weights, gate_up_bias, down_bias)
    ctx.activation, ctx.alpha, ctx.limit = activation, alpha, limit


def _backward(ctx, grad):
    # The reference's gradients by autograd through it: training a MoE layer is not this op's purpose (the kernels
    # are for inference), but gradients must be right wherever the op sits in a graph.
    x, gate_up, down, topk_ids, topk_weights, gate_up_bias, down_bias = ctx.saved_tensors
    create_graph = torch.is_grad_enabled()
    tensors = [x, gate_up, down, topk_weights] + ([] if gate_up_bias is None else [gate_up_bias, down_bias])
    with torch.enable_grad():
        leaves = [reference_input(t, create_graph) for t in tensors]
        biases = leaves[4:] or [None, None]
        out = moe_experts_reference(leaves[0], leaves[1], leaves[2], topk_ids, leaves[3], ctx.activation, *biases,
                                    ctx.alpha, ctx.limit)
        grads = torch.autograd.grad(out, leaves, grad, create_graph=create_graph, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves, strict=True)]
    g_biases = grads[4:] or [None, None]
    return grads[0], grads[1], grads[2], None, grads[3], None, None, g_biases[0], g_biases[1], None, None


_moe_experts_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- backends, in priority order


def _triton_check(inputs: dict[str, Any]) -> list[str]:
    ids, x = inputs["topk_ids"], inputs["x"]
    pairs = ids.numel()
    if pairs > MAX_KERNEL_PAIRS:
        return [f"{pairs} token-expert pairs exceed the kernel's {MAX_KERNEL_PAIRS} per launch"]
    return [] if x.shape[-1] else ["H is 0"]


@MOE_EXPERTS.register(
    "triton",
    Capability(devices=("cuda", "cpu"), dtypes=KERNEL_DTYPES, layouts=("weights with unit stride along H and I",),
               features=("expert ids read on the device (no host sync; CUDA-graph safe)",
                         "only the chosen experts' weights read", "weighted sum of the k experts in one kernel",
                         "expert biases and GPT-OSS's clamped GLU")),
    _triton_check,
)
def _moe_experts_triton(x, gate_up, down, topk_ids, topk_weights, activation, gate_up_bias=None, down_bias=None,
                        alpha=1.702, limit=7.0):
    from genai_fast.kernels.moe import moe_experts_fwd

    H, top_k = x.shape[-1], topk_ids.shape[-1]
    rows = x.reshape(-1, H)
    out = moe_experts_fwd(rows, _unit_stride(gate_up), _unit_stride(down), topk_ids.reshape(-1, top_k),
                          topk_weights.reshape(-1, top_k), activation, gate_up_bias, down_bias, alpha, limit)
    return out.reshape(x.shape)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@MOE_EXPERTS.register(
    "torch",
    Capability(devices=ANY_DEVICE, dtypes=SUPPORTED_DTYPES, layouts=("any",), features=("reference",)),
)
def _moe_experts_torch(x, gate_up, down, topk_ids, topk_weights, activation, gate_up_bias=None, down_bias=None,
                       alpha=1.702, limit=7.0):
    return moe_experts_reference(x, gate_up, down, topk_ids, topk_weights, activation, gate_up_bias, down_bias, alpha,
                                 limit)


def resolve_moe_experts(device: torch.device, dtype: torch.dtype) -> Callable[..., torch.Tensor] | None:
    """The Triton experts for an LLM decode step on a CUDA device (rows x k <= MAX_KERNEL_PAIRS, ids from the
    model's own top-k): (x [R, H], gate_up, down, ids [R, k], weights [R, k], activation, gate_up_bias=None,
    down_bias=None, alpha=1.702, limit=7.0) -> [R, H], without the op's checks (its ids check reads the device);
    None where the kernel cannot run."""
    x = torch.empty((1, 1), dtype=dtype, device="meta")
    inputs = {"device": torch.device(device), "dtype": dtype, "x": x, "topk_ids": torch.empty((1, 1))}
    impl = next(i for i in MOE_EXPERTS.implementations if i.backend == "triton")
    if torch.device(device).type != "cuda" or impl.not_supported_reasons(inputs):
        return None
    from genai_fast.kernels.moe import moe_experts_fwd

    return moe_experts_fwd
