"""genai_fast attention inside Hugging Face transformers models (transformers >= 4.48 attention interface).

    from genai_fast.integrations.transformers import patch
    model = patch(AutoModelForCausalLM.from_pretrained(...))   # every attention layer now runs genai_fast

`register()` adds the name "genai_fast" to transformers' `AttentionInterface` and, with it, a mask
function in `AttentionMaskInterface`: transformers builds no mask at all for an attention
implementation it has no mask function for, which would silently drop causal and padding masks. The
mask function is transformers' own SDPA one (boolean masks, or None when `is_causal` suffices), since
`genai_fast.scaled_dot_product_attention` has SDPA's semantics; GQA runs without repeating K/V. Beyond SDPA, the
attention scores' soft cap (`softcap`: Gemma 2, VaultGemma, T5Gemma) and per-head attention sinks (`s_aux`:
GPT-OSS, Granite-SWA), which transformers keeps those models off SDPA for, run in the fused kernels too.

On a CPU, `patch` also routes the model's `nn.Linear` layers through `genai_fast.linear` in inference (fp32): up to
16 rows (decode steps) on the C++ kernel that streams the weights once, GEMM-sized products on oneDNN where a
first-call timing finds it faster than BLAS. Measured on the 2-core VM (session 23): SmolLM2's 576 -> 49152 output
layer at one row 2.8 ms against 6.9 ms, a 4-row 576 -> 1536 projection 49 us against 151 us, an 87-row one 465 us
against 807 us. Layers that need gradients, run on a GPU, or are too small to repay the op's bookkeeping call
F.linear as before; `patch(model, linears=False)` leaves them all alone.

Mixture-of-experts models (Mixtral, Qwen2/3-MoE, OLMoE, Granite-MoE, ...: transformers' experts modules with the
`ExpertsInterface`) also get "genai_fast" as their experts implementation: on a GPU, calls of up to
MAX_KERNEL_EXPERT_PAIRS token-expert pairs (decode steps) run genai_fast.moe_experts' Triton kernels, which read
only the chosen experts' weights and no host value; on a CPU the experts run grouped as transformers' eager loop
does, their products on the same linear as the patched layers (the C++ kernel at decode sizes). Anything else
(training, biases, interleaved or transposed weights, other activations, expert parallelism, long prompts on a GPU)
runs the implementation the model had before. `patch(model, experts=False)` leaves them alone.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genai_fast.backends.dispatch import ENV_BACKEND
from genai_fast.ops.attention import scaled_dot_product_attention
from genai_fast.ops.eager import can_bypass_custom_op
from genai_fast.ops.linear import LINEAR, MAX_KERNEL_ROWS, ONEDNN_MIN_MACS, linear
from genai_fast.ops.moe import glu_for, grouped_experts, resolve_moe_experts

ATTENTION_NAME = "genai_fast"
EXPERTS_NAME = "genai_fast"
# A GPU call with more token-expert pairs (a prompt) keeps the model's implementation: the kernels read each pair's
# expert weights once, where grouped products read each expert's once.
MAX_KERNEL_EXPERT_PAIRS = 256
# transformers' hidden_act names -> genai_fast.moe_experts' activation names
_EXPERT_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                       "gelu_new": "gelu_tanh"}


def genai_fast_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query [B, Hq, Sq, D], key/value [B, Hkv, Sk, D], mask
    None or [B or 1, 1, Sq, Sk] (bool, or additive float) -> (output [B, Sq, Hq, D], no weights)."""
    _refuse_unsupported(kwargs)
    if kwargs.get("output_attentions"):
        # As transformers' SDPA function: no weights are returned, so say so rather than hand back an empty tuple.
        warnings.warn("output_attentions: genai_fast attention returns no attention weights; use "
                      "attn_implementation='eager' to get them", UserWarning, stacklevel=2)
    q_length = query.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # As transformers' SDPA path: causal only for a prefill with no explicit mask (a decode step's single
    # query sees the whole cache; an explicit mask already encodes causality).
    is_causal = bool(q_length > 1 and attention_mask is None and is_causal)
    position_bias = kwargs.get("position_bias")
    if is_causal and key.shape[2] > q_length:
        # Prefill into an empty static cache: top-left causal never reads past q_length, so drop the rest (of
        # the position bias too: its last dimension runs over the keys).
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        if position_bias is not None:
            position_bias = position_bias[..., :q_length]
    if position_bias is not None:
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal, query, key)
        is_causal = False
    out = scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                       is_causal=is_causal, scale=scaling,
                                       enable_gqa=query.shape[1] != key.shape[1],
                                       softcap=float(kwargs.get("softcap") or 0.0), sinks=kwargs.get("s_aux"))
    return out.transpose(1, 2).contiguous(), None


# Arguments some models pass to the attention function that change what it computes; SDPA semantics cannot honour
# them, and ignoring them would silently give other outputs.
_UNSUPPORTED_ARGUMENTS = {
    "sinks": ("attention sinks", "'eager'"),  # Inkling2: per-token sinks
    # DeepSeek-V3.2-style sparse attention: the model folds the indexer's top-k selection into the mask only for
    # "eager" and "sdpa", and otherwise passes it here for a sparse kernel to apply.
    "indices": ("sparse (top-k indexed) attention", "'sdpa' or 'eager'"),
    "block_indices": ("block-sparse attention", "'sdpa' or 'eager'"),
}


def _refuse_unsupported(kwargs: dict[str, Any]) -> None:
    for name, (feature, instead) in _UNSUPPORTED_ARGUMENTS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"{name}: genai_fast attention has no {feature}; use attn_implementation={instead}")


def register() -> None:
    """Register "genai_fast" with transformers' attention and attention-mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, genai_fast_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:  # a transformers without the experts interface: MoE layers stay as they are
        return
    ALL_EXPERTS_FUNCTIONS.register(EXPERTS_NAME, genai_fast_experts_forward)


def patch(model: torch.nn.Module, *, linears: bool = True, experts: bool = True) -> torch.nn.Module:
    """Switch every attention layer of a transformers model (and its sub-models) to genai_fast and, with
    `linears`, its plain `nn.Linear` layers to `genai_fast.linear` on a CPU, with `experts` its mixture-of-experts
    layers to genai_fast's experts implementation (see the module docstring); returns it.

    Raises ValueError naming `model` when the model does not use transformers' attention interface (its
    attention implementation cannot be changed, so patching would silently do nothing), or when it or one of
    its sub-models cannot run on SDPA (see _sdpa_refusers).
    """
    register()
    if not hasattr(model, "set_attn_implementation"):
        raise ValueError(f"model: expected a transformers PreTrainedModel, got {type(model).__name__}")
    if not model._can_set_attn_implementation():
        raise ValueError(f"model: {type(model).__name__} does not use transformers' AttentionInterface, so its "
                         "attention cannot be replaced")
    refusers = _sdpa_refusers(model)
    if refusers:
        raise ValueError(f"model: {', '.join(refusers)} cannot run on SDPA (transformers refuses "
                         "attn_implementation='sdpa' there), and genai_fast attention computes SDPA; keep 'eager'")
    model.set_attn_implementation(ATTENTION_NAME)
    if experts:
        _patch_experts(model)
    if linears:
        for module in model.modules():
            if type(module) is nn.Linear:  # exactly: subclasses (quantised, LoRA) keep their own forward
                module.__class__ = PatchedLinear
    return model


def unpatch(model: torch.nn.Module, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """Restore a standard attention implementation ("sdpa" by default) and plain `nn.Linear` layers; returns the
    model."""
    model.set_attn_implementation(attn_implementation)
    previous = getattr(model, "_genai_fast_previous_experts", None)
    if previous is not None:
        model.set_experts_implementation(previous)
        del model._genai_fast_previous_experts
    for module in model.modules():
        if type(module) is PatchedLinear:
            module.__class__ = nn.Linear
    return model


# Model families whose only reason to declare `_supports_sdpa = False` is what genai_fast attention adds to SDPA:
# the attention scores' soft cap ("sdpa does not support softcapping" in their modeling files) or per-head sinks
# passed as `s_aux` (an extra softmax-denominator logit: GPT-OSS's, and Granite-SWA's as a scaling by
# sigmoid(lse - sink), the same thing).
SDPA_PLUS_REFUSERS = ("Gemma2PreTrainedModel", "VaultGemmaPreTrainedModel", "T5GemmaPreTrainedModel",
                      "GptOssPreTrainedModel", "GraniteSWAPreTrainedModel")


def _sdpa_refusers(model: torch.nn.Module) -> list[str]:
    """Class names of the (sub-)models that declare `_supports_sdpa = False`: their attention needs what SDPA
    lacks (GPT-OSS's sinks) or builds eager's float mask inline (Gemma 4's audio tower), so that switching them
    to genai_fast would fail obscurely or compute something else. Those that refuse SDPA only for a soft cap or
    sinks (SDPA_PLUS_REFUSERS) are not listed."""
    from transformers import PreTrainedModel

    names = {type(m).__name__ for m in model.modules()
             if isinstance(m, PreTrainedModel) and getattr(m, "_supports_sdpa", True) is False
             and not any(base.__name__ in SDPA_PLUS_REFUSERS for base in type(m).__mro__)}
    return sorted(names)


class PatchedLinear(nn.Linear):
    """An `nn.Linear` (same parameters, state dict and repr) whose CPU inference products run genai_fast.linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return inference_linear(x, self.weight, self.bias)


def inference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear, run by genai_fast.linear where that pays: CPU inference, decode-sized or GEMM-sized products."""
    if x.device.type != "cpu" or x.dim() == 0 or not can_bypass_custom_op(x, weight, bias):
        return F.linear(x, weight, bias)
    forced = os.environ.get(ENV_BACKEND)
    if forced and all(impl.backend != forced for impl in LINEAR.implementations):
        return F.linear(x, weight, bias)  # a backend forced for the attention (triton) that linear lacks
    rows = x.numel() // max(x.shape[-1], 1)
    if rows > MAX_KERNEL_ROWS and rows * x.shape[-1] * weight.shape[0] < ONEDNN_MIN_MACS:
        return F.linear(x, weight, bias)  # BLAS either way: skip the op's checks
    return linear(x, weight, bias)


# ---------------------------------------------------------------- mixture-of-experts layers


def _patch_experts(model: torch.nn.Module) -> None:
    """Make "genai_fast" the experts implementation of a model whose experts modules take one (remembering the
    one it had, for unpatch and for the calls genai_fast_experts_forward hands back)."""
    if not hasattr(model, "set_experts_implementation") or not _has_interface_experts(model):
        return
    previous = model.config._experts_implementation
    if previous == EXPERTS_NAME:
        return
    model.set_experts_implementation(EXPERTS_NAME)
    model._genai_fast_previous_experts = previous
    for module in model.modules():
        if hasattr(module, "_is_expert_parallel"):
            module._genai_fast_fallback = previous


def _has_interface_experts(model: torch.nn.Module) -> bool:
    """Whether some module is an experts module of transformers' ExpertsInterface (decorated with
    use_experts_implementation, which gives it `_is_expert_parallel`)."""
    return any(hasattr(m, "_is_expert_parallel") and hasattr(m, "gate_up_proj") for m in model.modules())


def genai_fast_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                               top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' experts forward (hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k] -> [T, H])
    on genai_fast where it applies (see the module docstring), else on the model's previous implementation."""
    activation = _EXPERT_ACTIVATIONS.get(getattr(self.config, "hidden_act", None))
    plain = (activation is not None and self.has_gate and self.is_concatenated and not self.is_transposed
             and not self.has_bias and not getattr(self, "has_post_expert_norm", False)
             and not self._is_expert_parallel and hasattr(self, "down_proj")
             and can_bypass_custom_op(hidden_states, self.gate_up_proj, self.down_proj, top_k_weights))
    if plain and hidden_states.device.type == "cpu":
        return grouped_experts(hidden_states, self.gate_up_proj, self.down_proj, top_k_index, top_k_weights,
                               glu_for(activation), inference_linear)
    if plain and hidden_states.is_cuda and top_k_index.numel() <= MAX_KERNEL_EXPERT_PAIRS:
        kernel = resolve_moe_experts(hidden_states.device, hidden_states.dtype)
        if kernel is not None and os.environ.get(ENV_BACKEND, "").strip() != "torch":
            return kernel(hidden_states, self.gate_up_proj, self.down_proj, top_k_index, top_k_weights, activation)
    return _fallback_experts(self)(self, hidden_states, top_k_index, top_k_weights)


def _fallback_experts(module: nn.Module) -> Any:
    """The experts forward the model had before patching (eager: the class's own)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    eager = type(module).forward.__wrapped__  # the undecorated forward (functools.wraps keeps it)
    previous = getattr(module, "_genai_fast_fallback", "eager")
    return eager if previous in ("eager", EXPERTS_NAME) else ALL_EXPERTS_FUNCTIONS.get(previous, eager)
