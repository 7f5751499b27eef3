"""Sparse mixture-of-experts MLPs for the compact decoder: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE,
GPT-OSS, GLM-4.5 and DeepSeek-V2/V3.

A MoE layer replaces the dense MLP: a router (a linear layer over the hidden state, a softmax and a top-k) sends
each token to k of E experts, each a gated MLP, and the layer's output is the routing-weighted sum of those k
experts' outputs (Qwen2-MoE adds a shared expert gated by a sigmoid). The architectures differ only in the
router's details, which `SparseMoe` takes as flags read from the config:

  * Mixtral: softmax in fp32, top-k, always renormalised, the weights kept in fp32 (the products with the
    experts' outputs promote to fp32, then round);
  * Qwen2-MoE, Qwen3-MoE and OLMoE: renormalised when norm_topk_prob, the weights rounded to the model's dtype;
    Qwen2-MoE's shared expert; some layers dense (mlp_only_layers, decoder_sparse_step);
  * Granite-MoE: the top-k of the fp32 logits first, then a softmax over those k, rounded to the model's dtype;
    Granite-MoE-Shared's shared MLP added ungated;
  * GPT-OSS: a router with a bias, the softmax over the top-k logits; experts with biases whose gate and up
    columns interleave in a transposed layout (converted at load time to the stacked [E, 2I, H] one) and a clamped
    GLU, (clamp(up) + 1) * g * sigmoid(alpha * g) with g = clamp(gate, max=limit);
  * DeepSeek-V2, DeepSeek-V3, GLM-4.5 (and the checkpoints that reuse their code, as Kimi K2): `DeepSeekRouting`,
    scores from fp32 logits (a softmax, or sigmoids with a correction bias that steers the choice only), experts
    chosen within the best groups, fp32 weights times routed_scaling_factor; shared experts added ungated.

The experts run through genai_fast.ops.moe: on a CPU (and for GPU prefill) its grouped loop, each expert's rows
in one pair of products on the step's linear (the C++ kernel at decode sizes); on a GPU at decode sizes the Triton
kernels, which read the expert ids on the device, so the step needs no host synchronisation and a CUDA graph
captures it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from genai_fast.backends.dispatch import ENV_BACKEND
from genai_fast.ops.moe import (
    ACTIVATIONS,
    MAX_KERNEL_PAIRS,
    gathered_experts,
    glu_for,
    grouped_experts,
    resolve_moe_experts,
)

MOE_ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "granitemoeshared", "gpt_oss",
                     "glm4_moe", "dots1", "deepseek_v2", "deepseek_v3", "glm4_moe_lite")
LinearFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# The model's activation names (genai_fast.llm.model.ACTIVATIONS) as genai_fast.ops.moe names them.
_OP_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


@dataclass(frozen=True)
class DeepSeekRouting:
    """DeepSeek's router (V2, V3; GLM-4.5 copies V3's), on fp32 logits of an fp32 router weight.

    sigmoid: V3's scores, sigmoid(logits), whose choice adds the correction bias (the weights do not); else V2's
    softmax. Experts are chosen only inside the topk_group best of n_group equal groups: a group scores its best
    expert (V2, group_limited; without it V2 chooses over all) or the sum of its two best (V3, always). The weights
    are the chosen experts' scores, divided by their sum plus 1e-20 when renormalise (V3's norm_topk_prob), times
    scale (routed_scaling_factor), kept in fp32."""

    sigmoid: bool
    n_group: int
    topk_group: int
    group_limited: bool
    renormalise: bool
    scale: float

    def route(self, logits: torch.Tensor, top_k: int, correction_bias: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 logits [R, E] -> (expert ids [R, k], fp32 weights [R, k]), in HF's arithmetic."""
        if self.sigmoid:
            scores = logits.sigmoid()
            choice = scores if correction_bias is None else scores + correction_bias
            best_two = self._groups(choice).topk(2, dim=-1)[0].sum(dim=-1)
            choice = choice.masked_fill(~self._group_mask(best_two, choice.shape[-1]), float("-inf"))
            ids = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]
            weights = scores.gather(1, ids)
            if self.renormalise:
                weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        else:
            scores = logits.softmax(dim=-1, dtype=torch.float32)
            if self.group_limited:
                best = self._groups(scores).max(dim=-1).values
                scores = scores.masked_fill(~self._group_mask(best, scores.shape[-1]), 0.0)
            weights, ids = torch.topk(scores, k=top_k, dim=-1, sorted=False)
        return ids, weights * self.scale

    def _groups(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.view(-1, self.n_group, scores.shape[-1] // self.n_group)

    def _group_mask(self, group_scores: torch.Tensor, num_experts: int) -> torch.Tensor:
        """[R, E] True for the experts of each row's topk_group best groups."""
        chosen = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        mask = torch.zeros_like(group_scores).scatter_(1, chosen, 1)
        return mask.unsqueeze(-1).expand(-1, self.n_group, num_experts // self.n_group).reshape(-1, num_experts).bool()


def _param(t: torch.Tensor, dtype: torch.dtype) -> nn.Parameter:
    # A contiguous copy: `.to(dtype)` of a same-dtype tensor would share storage with the HF model.
    return nn.Parameter(t.detach().to(dtype).clone(memory_format=torch.contiguous_format), requires_grad=False)


class SparseMoe(nn.Module):
    """A routed MoE MLP. router [E, H]; gate_up [E, 2I, H] (gate rows, then up rows); down [E, H, I]; top_k experts
    per token; renormalise: divide the k probabilities by their sum; fp32_weights: keep the routing weights in
    fp32 (Mixtral) rather than the model's dtype; activation: the gate's ("silu", "gelu", "gelu_pytorch_tanh",
    "gelu_new"). shared: a shared expert every token goes through, (gate_up [2Is, H], down [H, Is], gate [1, H] or
    None): Qwen2-MoE's, scaled by sigmoid(x @ gate^T), or Granite-MoE-Shared's, ungated; None: none.
    softmax_after_topk: Granite-MoE's and GPT-OSS's router, the softmax over the k largest logits (renormalise,
    fp32_weights unused). router_bias [E]: the router's bias (GPT-OSS), or None. biases: the experts' (gate_up bias
    [E, 2I], down bias [E, H]) or None. clamped_glu: GPT-OSS's (alpha, limit), its GLU in place of act(gate) * up;
    None: the activation's gated MLP. deepseek: DeepSeek's router (the router weight kept in fp32; renormalise,
    fp32_weights and softmax_after_topk unused) with its correction_bias [E] (V3's e_score_correction_bias) or
    None."""

    def __init__(self, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, top_k: int,
                 renormalise: bool, fp32_weights: bool, activation: str,
                 shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
                 softmax_after_topk: bool = False, router_bias: torch.Tensor | None = None,
                 biases: tuple[torch.Tensor, torch.Tensor] | None = None,
                 clamped_glu: tuple[float, float] | None = None, deepseek: DeepSeekRouting | None = None,
                 correction_bias: torch.Tensor | None = None) -> None:
        super().__init__()
        dtype = gate_up.dtype
        if activation not in _OP_ACTIVATIONS:
            raise ValueError(f"unsupported MoE activation {activation!r}: supported are "
                             f"{', '.join(_OP_ACTIVATIONS)}")
        if not 1 <= top_k <= router.shape[0]:
            raise ValueError(f"unsupported MoE config: num_experts_per_tok={top_k} with {router.shape[0]} experts")
        self.router = _param(router, torch.float32 if deepseek is not None else dtype)
        self.deepseek = deepseek
        self.correction_bias = None if correction_bias is None else _param(correction_bias, torch.float32)
        if deepseek is not None and router.shape[0] % deepseek.n_group:
            raise ValueError(f"unsupported MoE config: {router.shape[0]} experts in n_group={deepseek.n_group} groups")
        self.gate_up, self.down = _param(gate_up, dtype), _param(down, dtype)
        self.top_k, self.renormalise, self.fp32_weights = top_k, renormalise, fp32_weights
        self.softmax_after_topk = softmax_after_topk
        self.router_bias = None if router_bias is None else _param(router_bias, dtype)
        # Attributes, not a tuple, so that they are registered parameters (moved by .to(device)).
        self.gate_up_bias = self.down_bias = None
        if biases is not None:
            self.gate_up_bias, self.down_bias = _param(biases[0], dtype), _param(biases[1], dtype)
        self.clamped_glu = clamped_glu
        self.act = ACTIVATIONS[_OP_ACTIVATIONS[activation]]
        self.activation = _OP_ACTIVATIONS[activation] if clamped_glu is None else "gpt_oss"  # the op's name
        self.glu = glu_for(self.activation, *(clamped_glu or ()))
        self.shared_gate_up = self.shared_down = self.shared_gate = None
        if shared is not None:
            self.shared_gate_up, self.shared_down = _param(shared[0], dtype), _param(shared[1], dtype)
            self.shared_gate = None if shared[2] is None else _param(shared[2], dtype)
        self._kernels: dict[tuple, Callable[..., torch.Tensor] | None] = {}

    @property
    def biases(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.gate_up_bias is None else (self.gate_up_bias, self.down_bias)

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    def forward(self, x: torch.Tensor, linear: LinearFn = F.linear) -> torch.Tensor:
        """x [..., H] -> [..., H]. `linear` runs the expert and shared-expert projections (the router's stays on
        F.linear: a near-tie between two experts' probabilities must break as transformers' does)."""
        rows = x.reshape(-1, x.shape[-1])
        ids, weights = self.route(rows)
        kernel = self._decode_kernel(rows) if x.dim() == 2 else None
        if kernel is not None:  # GPU decode: ids stay on the device
            out = kernel(rows, self.gate_up, self.down, ids, weights, self.activation, self.gate_up_bias,
                         self.down_bias, *(self.clamped_glu or ()))
        elif x.dim() == 2 and self._device_side(rows):  # GPU decode without Triton (or forced off)
            out = gathered_experts(rows, self.gate_up, self.down, ids, weights, self.glu, self.biases)
        else:
            out = grouped_experts(rows, self.gate_up, self.down, ids, weights, self.glu, linear, self.biases)
        if self.shared_gate_up is not None:
            gate, up = linear(rows, self.shared_gate_up, None).chunk(2, dim=-1)
            shared = linear(self.act(gate) * up, self.shared_down, None)
            if self.shared_gate is not None:
                shared = torch.sigmoid(linear(rows, self.shared_gate, None)) * shared
            out = out + shared
        return out.reshape(x.shape)

    def route(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [R, H] -> (expert ids [R, k], their weights [R, k]), as the architecture's router computes them."""
        if self.deepseek is not None:
            return self.deepseek.route(F.linear(rows.float(), self.router), self.top_k, self.correction_bias)
        logits = F.linear(rows, self.router, self.router_bias)
        if self.softmax_after_topk:
            top, ids = logits.float().topk(self.top_k, dim=-1)
            return ids, torch.softmax(top, dim=-1).to(rows.dtype)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return ids, weights if self.fp32_weights else weights.to(logits.dtype)

    @staticmethod
    def _device_side(rows: torch.Tensor) -> bool:
        """Whether a decode step over these rows must not read a host value (on a GPU: a CUDA graph captures it)."""
        return rows.is_cuda

    def _decode_kernel(self, rows: torch.Tensor) -> Callable[..., torch.Tensor] | None:
        """The Triton experts for a decode-sized call on a GPU (see genai_fast.ops.moe.resolve_moe_experts)."""
        if rows.device.type != "cuda" or rows.shape[0] * self.top_k > MAX_KERNEL_PAIRS:
            return None
        key = (rows.device, rows.dtype, os.environ.get(ENV_BACKEND, "").strip())
        if key not in self._kernels:
            self._kernels[key] = None if key[2] == "torch" else resolve_moe_experts(rows.device, rows.dtype)
        return self._kernels[key]

    def unread_bytes(self, batch: int) -> int:
        """Bytes of expert weights a decode step of `batch` tokens certainly does not read: the experts beyond the
        batch * k that its tokens can choose (at batch 1 exact; larger batches may share experts)."""
        idle = max(0, self.num_experts - batch * self.top_k)
        per_expert = (self.gate_up[0].numel() + self.down[0].numel()) * self.gate_up.element_size()
        return idle * per_expert


def is_moe_block(mlp: nn.Module) -> bool:
    """Whether an HF layer's MLP is a routed MoE block (transformers' *SparseMoeBlock, GraniteMoeMoE: a router and
    experts)."""
    return hasattr(mlp, "experts") and (hasattr(mlp, "gate") or hasattr(mlp, "router"))


def from_hf_block(block: nn.Module, config: object, activation: str, dtype: torch.dtype,
                  shared_mlp: nn.Module | None = None) -> SparseMoe:
    """A SparseMoe from transformers' Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE sparse block or Granite-MoE's block
    (shared_mlp: Granite-MoE-Shared's layer's shared MLP, or None)."""
    experts = block.experts
    router = block.gate if hasattr(block, "gate") else block.router
    if hasattr(experts, "gate_up_proj_bias"):
        return _from_gpt_oss(router, experts, int(config.num_experts_per_tok))
    if not hasattr(experts, "gate_up_proj") or not hasattr(experts, "down_proj"):
        raise ValueError(f"unsupported MoE block {type(block).__name__}: expected experts with stacked gate_up_proj "
                         "and down_proj weights (transformers >= 5)")
    mixtral = config.model_type == "mixtral"
    shared = None
    if getattr(block, "shared_expert", None) is not None:
        s = block.shared_expert
        shared = (torch.cat([s.gate_proj.weight, s.up_proj.weight]), s.down_proj.weight,
                  block.shared_expert_gate.weight)
    elif getattr(block, "shared_experts", None) is not None:  # DeepSeek, GLM-4.5: added ungated
        s = block.shared_experts
        shared = (torch.cat([s.gate_proj.weight, s.up_proj.weight]), s.down_proj.weight, None)
    elif shared_mlp is not None:
        shared = (shared_mlp.input_linear.weight, shared_mlp.output_linear.weight, None)
    deepseek = _deepseek_routing(router, config)
    return SparseMoe(router.weight, experts.gate_up_proj, experts.down_proj, int(config.num_experts_per_tok),
                     renormalise=mixtral or bool(getattr(config, "norm_topk_prob", False)),
                     fp32_weights=mixtral or deepseek is not None, activation=activation, shared=shared,
                     softmax_after_topk=config.model_type in ("granitemoe", "granitemoeshared"), deepseek=deepseek,
                     correction_bias=getattr(router, "e_score_correction_bias", None))


def _deepseek_routing(router: nn.Module, config: object) -> DeepSeekRouting | None:
    """The DeepSeekRouting of a DeepSeek-V2 router (a topk_method), a V3 or GLM-4.5 one (an e_score_correction_bias),
    or None for the other routers."""
    if hasattr(router, "e_score_correction_bias"):
        return DeepSeekRouting(sigmoid=True, n_group=int(config.n_group), topk_group=int(config.topk_group),
                               group_limited=True, renormalise=bool(config.norm_topk_prob),
                               scale=float(config.routed_scaling_factor))
    if hasattr(router, "topk_method"):
        if router.topk_method not in ("greedy", "group_limited_greedy"):
            raise ValueError(f"unsupported DeepSeek-V2 topk_method {router.topk_method!r}: supported are greedy, "
                             "group_limited_greedy")
        return DeepSeekRouting(sigmoid=False, n_group=int(config.n_group or 1), topk_group=int(config.topk_group or 1),
                               group_limited=router.topk_method == "group_limited_greedy", renormalise=False,
                               scale=float(config.routed_scaling_factor))
    return None


def _from_gpt_oss(router: nn.Module, experts: nn.Module, top_k: int) -> SparseMoe:
    """GPT-OSS's experts in the stacked layout: gate_up_proj [E, H, 2I] with gate and up columns interleaved (gate
    0, up 0, gate 1, ...) becomes [E, 2I, H] (the gate rows, then the up rows), down_proj [E, I, H] becomes
    [E, H, I]; the biases follow."""
    w, b = experts.gate_up_proj.detach(), experts.gate_up_proj_bias.detach()
    gate_up = torch.cat([w[:, :, 0::2], w[:, :, 1::2]], dim=2).transpose(1, 2)
    gate_up_bias = torch.cat([b[:, 0::2], b[:, 1::2]], dim=1)
    down = experts.down_proj.detach().transpose(1, 2)
    return SparseMoe(router.weight, gate_up, down, top_k, renormalise=False, fp32_weights=False, activation="silu",
                     softmax_after_topk=True, router_bias=router.bias,
                     biases=(gate_up_bias, experts.down_proj_bias.detach()),
                     clamped_glu=(float(experts.alpha), float(experts.limit)))
