"""A compact decoder built from a Hugging Face model's weights.

Two families share one module:
  * llama, mistral, qwen2, qwen3, phi3: RMSNorm, rotary embeddings, GQA, SwiGLU MLP (qwen3: also an RMSNorm of
    each query and key head before the rotation; phi3: its checkpoints hold q/k/v and gate/up fused already);
  * gpt2: LayerNorm, learned positions, a GELU MLP, biases everywhere, tied LM head.
StableLM is a Llama-family model with LayerNorms and rotary embeddings on part of each head. gpt_neox (Pythia):
LayerNorms, rotary embeddings on a quarter of each head, GPT-2's GELU MLP with biases and, in most checkpoints,
parallel residuals (attention and MLP both read the layer's input). Phi (1, 1.5, 2) is the same with one LayerNorm
feeding both sublayers and a biased LM head; StarCoder2 a Mistral with LayerNorms, biases and a GELU MLP. OLMo 2 and 3
normalise each sublayer's output instead of its input; Cohere's models (Command R, R7B) rotate interleaved pairs,
which the conversion regroups into the halves the rope here rotates.
Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE and GPT-OSS are Llama-family layers whose MLP is a routed
mixture of experts (moe.py); GPT-OSS's attention also has per-head sinks, computed inside the attention kernels.

Weights are converted once at load time: q/k/v projections fused into one matrix per layer and gate/up into
another (GPT-2's c_attn is fused already; its Conv1D weights, stored [in, out], are transposed to the
[out, in] layout of F.linear). The KV cache is preallocated as [B, H_kv, S_max, D] per layer. Prefill attends
through `genai_fast.scaled_dot_product_attention`; each decode step through `genai_fast.attention_with_kvcache`,
which appends the new K/V in place at each sequence's own length (`cache_seqlens`).

Batches of prompts with different lengths: prefill runs on prompts right-padded to the longest; causal
attention keeps the padding out of every real position, and the padding's K/V land in cache slots that each
sequence's first decode steps overwrite before anything reads them. Decode then runs with per-sequence
lengths, so no step pays for padding.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from genai_fast.backends.dispatch import ENV_BACKEND
from genai_fast.llm.mla import MlaProjection, is_mla
from genai_fast.llm.moe import MOE_ARCHITECTURES, SparseMoe, from_hf_block, is_moe_block
from genai_fast.ops.attention import attention_with_kvcache, resolve_decode_attention, scaled_dot_product_attention
from genai_fast.ops.gguf_linear import resolve_gguf_linear
from genai_fast.ops.linear import linear as genai_fast_linear
from genai_fast.ops.linear import resolve_linear
from genai_fast.ops.rms_norm import resolve_rms_norm

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma", "gemma2", "gemma3_text", "granite",
                "stablelm", "olmo2", "olmo3", "exaone4", "cohere", "cohere2", "ministral", "seed_oss", "helium",
                "ernie4_5", "glm", "glm4", "arcee", "nemotron", *MOE_ARCHITECTURES)
GEMMA_NORMS = ("gemma", "gemma2", "gemma3_text")  # RMSNorms scaling by (1 + w) in fp32
SANDWICH_NORMS = ("gemma2", "gemma3_text")  # a norm before and after each sublayer
POST_NORMS_ONLY = ("olmo2", "olmo3", "exaone4")  # a norm after each sublayer, none before
FP32_WEIGHT_NORMS = ("gpt_oss", "olmo2", "olmo3", "helium")  # RMSNorms multiplying by their weight in fp32, then cast
COHERE = ("cohere", "cohere2")  # parallel residual, mean-subtracting norms, logit scale
INTERLEAVED_ROPE = (*COHERE, "glm", "glm4", "helium", "ernie4_5")  # rotary pairs (2i, 2i + 1), not (i, i + R/2)
LOCAL_ROPE = ("gemma3_text", "olmo3")  # rope tables of their own on the sliding layers
GRANITE_MULTIPLIERS = ("granite", "granitemoe", "granitemoeshared")  # embedding, residual, attention, logits
PLAIN_MLPS = ("arcee", "nemotron")  # Llama layers whose MLP is act(x W_up) W_down, no gate
SUPPORTED_ARCHITECTURES = (*LLAMA_FAMILY, "gpt2", "gpt_neox", "phi", "starcoder2")
# extend() runs the decode step's linear (weights streamed once, GGUF blocks) up to this many rows.
MAX_DECODE_ROWS = 16
# Rope variants whose frequencies depend on the sequence length at run time; a static table cannot match them.
_DYNAMIC_ROPE = ("dynamic", "longrope")
LinearFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]  # F.linear's signature
RmsNormFn = Callable[[torch.Tensor, "torch.Tensor | None", float], torch.Tensor]  # genai_fast.rms_norm's
# (h, delta or None, weight, eps) -> (h + delta, RMSNorm of it): kernels/rms_norm.py's add_rms_norm_fwd
AddNormFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
AttendFn = Callable[..., torch.Tensor]  # (q, k_cache, v_cache, lengths: list, scale, softcap=0.0, window=0) -> out
# kernels/rope_append.py's rope_append_fwd: (qkv, Hq, Hkv, k_cache, v_cache, seqlens, cos, sin) -> q
AppendFn = Callable[..., torch.Tensor]
GluFn = Callable[[torch.Tensor], torch.Tensor]  # kernels/swiglu.py's swiglu_fwd: [R, 2H] -> silu(gate) * up


class DecodeGemv(NamedTuple):
    """kernels/decode_gemv.py's batch-1 projections with the step's small ops folded in.
    norm_linear(h, delta or None, norm_weight, eps, weight, bias) -> (h + delta, rms_norm(h + delta) @ weight^T + b);
    swiglu_linear(gate_up, weight, bias) -> (silu(gate) * up) @ weight^T + b."""

    norm_linear: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    swiglu_linear: Callable[..., torch.Tensor]


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # Written out as transformers' NewGELUActivation so GPT-2 logits match it bit for bit.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_new": _gelu_new,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),  # transformers' ReLUSquaredActivation (Arcee, Nemotron)
}


@dataclass(frozen=True)
class ModelConfig:
    """The few hyperparameters the compact module needs. family: "llama" (the Llama family: gated MLP, act(gate) * up),
    "gpt2" or "gpt_neox" (a plain act(x W1) W2 MLP, as GPT-2's, with rotary embeddings). embed_scale multiplies the
    token embeddings (Gemma: sqrt(hidden) rounded to the model's dtype; Granite: embedding_multiplier),
    residual_scale each layer's attention and MLP outputs before their residual adds (Granite's
    residual_multiplier), and the logits are divided by logits_divisor (Granite's logits_scaling): 1.0 leaves each
    out of the arithmetic. logits_softcap: Gemma's final_logit_softcapping, cap * tanh(logits / cap) (0: none).
    logits_multiplier: Cohere's logit_scale, multiplying the LM head's output (1.0: none). v_head_dim: the value
    heads' size where it is not head_dim (0: head_dim)."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float
    max_position_embeddings: int
    activation: str
    embed_scale: float = 1.0
    residual_scale: float = 1.0
    logits_divisor: float = 1.0
    logits_softcap: float = 0.0
    logits_multiplier: float = 1.0
    v_head_dim: int = 0

    @property
    def value_dim(self) -> int:
        """Each value head's size: head_dim, or v_head_dim where it differs (DeepSeek's MLA: keys of 192, values of
        128)."""
        return self.v_head_dim or self.head_dim


class Norm(nn.Module):
    """RMSNorm (no bias) as HF's LlamaRMSNorm: in fp32, cast back before the weight; or LayerNorm (bias).

    weight_in_fp32: Gemma's order instead, the normalised fp32 row times an fp32 weight, then one cast (the
    weight is kept in fp32; in an fp32 model the two orders are the same arithmetic, so this is only set for
    half-precision Gemma models, whose norms then run this forward rather than the RMSNorm kernels).

    A LayerNorm weight of shape [H, D] normalises each head of x [..., H * D] over its D values with that head's
    own weight (and bias), in fp32 with one cast at the end (StableLM's and Cohere's per-head q/k norms)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
                 weight_in_fp32: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.eps = eps
        self.weight_in_fp32 = weight_in_fp32
        if weight_in_fp32 and (bias is not None or weight.dtype != torch.float32):
            raise ValueError("weight: weight_in_fp32 takes an fp32 RMSNorm weight without bias")

    @property
    def plain_rms(self) -> bool:
        """Whether the RMSNorm kernels (genai_fast.rms_norm, the decode step's fused norms) compute this norm."""
        return self.bias is None and not self.weight_in_fp32 and self.weight.dim() == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., hidden] -> [..., hidden]."""
        if self.weight.dim() == 2:
            h = F.layer_norm(x.unflatten(-1, self.weight.shape).float(), self.weight.shape[-1:], eps=self.eps)
            h = h * self.weight.float() + (0.0 if self.bias is None else self.bias.float())
            return h.flatten(-2).to(x.dtype)
        if self.bias is not None:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        if self.weight_in_fp32:
            h = x.to(torch.float32)
            return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)
        if x.dtype == torch.float32:
            # torch's fused kernel: one op instead of eight, and bitwise equal to HF's formula below in fp32
            # (tests/test_llm.py::test_rms_norm_is_bitwise_hf).
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def step(self, x: torch.Tensor, rms_norm: RmsNormFn | None) -> torch.Tensor:
        """Decode: x [B, hidden] -> [B, hidden]; an RMSNorm runs `rms_norm` when given (the kernel resolved for
        the model's device and dtype: torch's composite costs tens of microseconds per call on a CPU at these
        sizes, and eight kernels on a GPU), else forward()."""
        if rms_norm is not None and self.plain_rms:
            return rms_norm(x, self.weight, self.eps)
        return self.forward(x)


class NoNorm(nn.Module):
    """The identity where a layer has no norm before a sublayer (OLMo 2 and 3 normalise sublayer outputs instead).
    Not an RMSNorm, so the decode step's fused-norm paths, which assume one, stay off for such a model."""

    plain_rms = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def step(self, x: torch.Tensor, rms_norm: RmsNormFn | None) -> torch.Tensor:
        return x


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x: [B, H, S, D]; cos, sin_signed: broadcastable to it ([S, R] or [B, 1, 1, R], R <= D) -> [B, H, S, D].

    HF's rotate-half rope, x * cos + cat(-x2, x1) * sin, computed as x * cos + cat(x2, x1) * cat(-sin1, sin2):
    (-a) * b == a * (-b) exactly, so the result is bitwise HF's with one flip instead of slice/neg/cat. Tables
    narrower than the head (partial rotary: Phi-4-mini, StableLM) rotate its first R dims and pass the rest, as
    HF does."""
    rotated = cos.shape[-1]
    if rotated < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :rotated], cos, sin_signed), x[..., rotated:]], dim=-1)
    swapped = x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2).flatten(-2)
    return x * cos + swapped * sin_signed


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    # A copy: `.to(dtype)` of a same-dtype tensor would otherwise share storage with the HF model.
    return None if t is None else nn.Parameter(t.detach().clone(memory_format=torch.contiguous_format),
                                               requires_grad=False)


class Layer(nn.Module):
    """One pre-norm decoder layer: fused-QKV attention over its slice of the KV cache, then the MLP.

    mlp_in is [2 * intermediate, hidden] (gate rows, then up rows) for SwiGLU, [intermediate, hidden] for GPT-2.
    scale: the attention scale, None for 1/sqrt(head_dim). q_norm, k_norm: Qwen3's RMSNorms over head_dim of each
    query and key head, applied before the rotation (None: no such norms). use_rope False: a layer without rotary
    embeddings in a rotary model (SmolLM3's NoPE layers). window: sliding-window attention over the last `window`
    positions (the token's own included), as HF's sliding layers (Mistral, Qwen2, SmolLM3, Gemma 3), None: full
    attention. Such a layer's cache is a ring of `window` slots (position p in slot p % window; `ring` True) when
    the window is shorter than the cache and the model keeps rings (DecoderModel.ring_caches), else a plain cache
    whose attention the kernels' `window` bounds.
    post_norm1, post_norm2: Gemma 2's and 3's norms of the attention and MLP outputs before their residual adds
    (None: none). local_rope: the layer rotates with the model's local rope tables (Gemma 3's sliding layers).
    softcap: Gemma 2's attn_logit_softcapping, cap * tanh(score / cap) before the mask and softmax, computed inside
    the fused attention kernels (their `softcap`); 0: none. moe: a routed mixture of experts in place of the dense
    MLP (mlp_in and mlp_out None; Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE). clip_qkv: OLMoE's clamp of
    the projected (and normalised) queries, keys and values to [-clip_qkv, clip_qkv]; None: none. sinks: GPT-OSS's
    per-head attention sinks [Hq] (one more logit in each row's softmax, inside the attention kernels); None: none.
    parallel: a parallel residual, both sublayers reading the layer's input: GPT-NeoX's and Phi's
    (mlp(norm2(x)) + attn(norm1(x))) + x, or with residual_first Cohere's and StableLM's (x + attn) + mlp, HF's
    orders of the sums (LayerNorm models only: the fused decode paths, for RMSNorm models, never see it). When norm2
    is norm1 (Phi, Cohere, StableLM: one norm feeds both), it runs once. mla: DeepSeek's multi-head latent
    attention projections (MlaProjection) in place of wqkv/bqkv (None), giving the same fused q/k/v layout."""

    def __init__(self, cfg: ModelConfig, norm1: Norm, norm2: Norm, wqkv: torch.Tensor, bqkv: torch.Tensor | None,
                 wo: torch.Tensor, bo: torch.Tensor | None, mlp_in: torch.Tensor | None, b_in: torch.Tensor | None,
                 mlp_out: torch.Tensor | None, b_out: torch.Tensor | None, scale: float | None,
                 q_norm: Norm | None = None, k_norm: Norm | None = None, use_rope: bool = True,
                 window: int | None = None, post_norm1: Norm | None = None, post_norm2: Norm | None = None,
                 local_rope: bool = False, softcap: float = 0.0, moe: SparseMoe | None = None,
                 clip_qkv: float | None = None, sinks: torch.Tensor | None = None, parallel: bool = False,
                 residual_first: bool = False, mla: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg, self.norm1, self.norm2, self.scale = cfg, norm1, norm2, scale
        self.use_rope, self.window, self.local_rope, self.softcap = use_rope, window, local_rope, softcap
        self.ring = False  # set by DecoderModel.allocate_cache
        self.post_norm1, self.post_norm2 = post_norm1, post_norm2
        self.q_norm, self.k_norm = q_norm, k_norm
        self.wqkv, self.bqkv, self.wo, self.bo = _param(wqkv), _param(bqkv), _param(wo), _param(bo)
        self.mlp_in, self.b_in, self.mlp_out, self.b_out = _param(mlp_in), _param(b_in), _param(mlp_out), _param(b_out)
        self.moe, self.clip_qkv, self.parallel, self.residual_first = moe, clip_qkv, parallel, residual_first
        self.sinks = _param(sinks)
        if (moe is None) == (mlp_in is None or mlp_out is None):
            raise ValueError("mlp_in, mlp_out: expected both with no moe, or neither with one")
        self.swiglu = cfg.family == "llama"
        self.act = ACTIVATIONS[cfg.activation]
        self.nq, self.nkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.n_out = cfg.num_heads * cfg.value_dim  # the attention output's width, o_proj's input
        self.mla = mla
        if (mla is None) == (wqkv is None):
            raise ValueError("wqkv: expected a fused q/k/v weight without mla, or none with it")
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                linear: LinearFn = F.linear, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Prefill: x: [B, S, hidden] at positions 0 .. S-1 -> [B, S, hidden]; `linear` runs the projections.
        lengths: [B] each row's prompt length (right padding after it; None: all S)."""
        if self.parallel:
            h = self.norm1(x)
            attended = self.attention(h, rope, linear, lengths)
            return self.parallel_sum(x, attended, self.mlp(h if self.norm2 is self.norm1 else self.norm2(x), linear))
        x = x + self.residual(self.attention(self.norm1(x), rope, linear, lengths), self.post_norm1)
        return x + self.residual(self.mlp(self.norm2(x), linear), self.post_norm2)

    def step(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, at: StepPositions,
             linear: LinearFn = F.linear, rms_norm: RmsNormFn | None = None,
             swiglu: GluFn | None = None) -> torch.Tensor:
        """Decode: x: [B, hidden], one token per sequence at positions at.seqlens -> [B, hidden]. The same
        arithmetic as forward() with S == 1, fewer views; `linear` runs the projections, `rms_norm` the norms
        and `swiglu` the MLP's silu(gate) * up (see DecoderModel.decode_linear, decode_rms_norm, decode_swiglu)."""
        # Norm.step, not __call__: the per-token path skips nn.Module's hook handling (about 60 calls a token).
        if self.parallel:
            h = self.norm1.step(x, rms_norm)
            attended = self.attention_step(h, rope, at, linear)
            h = h if self.norm2 is self.norm1 else self.norm2.step(x, rms_norm)
            return self.parallel_sum(x, attended, self.mlp(h, linear, swiglu))
        x = x + self.residual(self.attention_step(self.norm1.step(x, rms_norm), rope, at, linear), self.post_norm1,
                              rms_norm)
        return x + self.residual(self.mlp(self.norm2.step(x, rms_norm), linear, swiglu), self.post_norm2, rms_norm)

    def step_fused(self, h: torch.Tensor, pending: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor] | None,
                   at: StepPositions, linear: LinearFn, add_rms_norm: AddNormFn, swiglu: GluFn | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode with each residual add folded into the norm after it (RMSNorm layers on a GPU): h [B, hidden] is
        the residual stream still missing `pending` (the previous layer's MLP output; None for the first layer).
        Returns (h, this layer's MLP output), for the next layer or the final norm to add. Same arithmetic as
        step()."""
        h, x = add_rms_norm(h, pending, self.norm1.weight, self.norm1.eps)
        h, x = add_rms_norm(h, self.residual(self.attention_step(x, rope, at, linear), self.post_norm1),
                            self.norm2.weight, self.norm2.eps)
        return h, self.residual(self.mlp(x, linear, swiglu), self.post_norm2)

    def step_gemv(self, h: torch.Tensor, pending: torch.Tensor | None, at: StepPositions, linear: LinearFn,
                  gemv: DecodeGemv) -> tuple[torch.Tensor, torch.Tensor]:
        """step_fused() with each RMSNorm folded into the projection after it and the SwiGLU into the down
        projection (kernels/decode_gemv.py; GPU, batch 1, RMSNorm/SwiGLU layers): h [1, hidden] is the residual
        stream still missing `pending`. Returns (h, this layer's MLP output). Same roundings as step()."""
        h, qkv = gemv.norm_linear(h, pending, self.norm1.weight, self.norm1.eps, self.wqkv, self.bqkv)
        h, gate_up = gemv.norm_linear(h, self.residual(self.attend_qkv(qkv, None, at, linear), self.post_norm1),
                                      self.norm2.weight, self.norm2.eps, self.mlp_in, self.b_in)
        return h, self.residual(gemv.swiglu_linear(gate_up, self.mlp_out, self.b_out), self.post_norm2)

    def parallel_sum(self, x: torch.Tensor, attended: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        """A parallel layer's output in HF's order of the sums (floating-point addition is not associative)."""
        return (x + attended) + mlp_out if self.residual_first else (mlp_out + attended) + x

    def residual(self, out: torch.Tensor, post_norm: Norm | None, rms_norm: RmsNormFn | None = None
                 ) -> torch.Tensor:
        """A sublayer's output as its residual add takes it: through its post-norm (Gemma 2 and 3), times
        residual_scale (Granite), as HF computes them."""
        if post_norm is not None:
            out = post_norm.step(out, rms_norm)
        scale = self.cfg.residual_scale
        return out if scale == 1.0 else out * scale

    def extend(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, start: int,
               linear: LinearFn = F.linear, rms_norm: RmsNormFn | None = None, attend: AttendFn | None = None
               ) -> torch.Tensor:
        """Several new tokens of one sequence after `start` cached positions: x [S, hidden] at positions
        start .. start+S-1 -> [S, hidden] (2-D, as the decode step's linear takes rows); their K/V are written at
        those positions (full layers only).
        rope: tables of rows start .. start+S-1 ([S, D] each). Same arithmetic as forward() over the whole
        sequence, with the attention over the cache (aligned bottom-right, as the prompt's own causal mask).
        linear, rms_norm, attend: the decode step's resolved kernels (see DecoderModel.extend)."""
        normed = self.norm1.step(x, rms_norm)
        h = self.extend_attention(normed, rope, start, linear, attend)
        if self.parallel:
            normed = normed if self.norm2 is self.norm1 else self.norm2.step(x, rms_norm)
            return self.parallel_sum(x, h, self.mlp(normed, linear))
        x = x + self.residual(h, self.post_norm1, rms_norm)
        return x + self.residual(self.mlp(self.norm2.step(x, rms_norm), linear), self.post_norm2, rms_norm)

    def extend_attention(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, start: int,
                         linear: LinearFn = F.linear, attend: AttendFn | None = None) -> torch.Tensor:
        """extend()'s attention: x [S, hidden] -> [S, hidden]."""
        cfg, S = self.cfg, x.shape[0]
        qkv = self.norm_heads(self.project(x, linear))
        qk = qkv[:, :self.nq + self.nkv].view(S, cfg.num_heads + cfg.num_kv_heads, cfg.head_dim).transpose(0, 1)[None]
        if rope is not None and self.use_rope:
            qk = apply_rope(qk, *rope)
        q, k = qk[:, :cfg.num_heads], qk[:, cfg.num_heads:]
        v = qkv[:, self.nq + self.nkv:].view(S, cfg.num_kv_heads, cfg.value_dim).transpose(0, 1)[None]
        if attend is not None:  # CPU: slice copies, then the C++ kernel without the op's per-call checks
            self.k_cache[:1, :, start:start + S] = k
            self.v_cache[:1, :, start:start + S] = v
            out = attend(q, self.k_cache[:1], self.v_cache[:1], [start + S],
                         1.0 / math.sqrt(cfg.head_dim) if self.scale is None else self.scale, self.softcap,
                         self.window or 0, self.sinks)
        else:
            seen = torch.tensor([start], dtype=torch.int32)
            out = attention_with_kvcache(q, self.k_cache[:1], self.v_cache[:1], seen, k, v, scale=self.scale,
                                         softcap=self.softcap, window=self.window, sinks=self.sinks)
        return linear(out[0].transpose(0, 1).reshape(S, self.n_out), self.wo, self.bo)

    def attention_step(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, at: StepPositions,
                       linear: LinearFn = F.linear) -> torch.Tensor:
        """x: [B, hidden] -> [B, hidden]; appends each sequence's K/V at its length."""
        return self.attend_qkv(self.project(x, linear), rope, at, linear)

    def project(self, x: torch.Tensor, linear: LinearFn) -> torch.Tensor:
        """x [..., hidden] -> the fused projection [..., (Hq + Hkv) D + Hkv Dv]: queries, keys, values (before the
        q/k norms and the rotation)."""
        return linear(x, self.wqkv, self.bqkv) if self.mla is None else self.mla(x, linear)

    def attend_qkv(self, qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, at: StepPositions,
                   linear: LinearFn = F.linear) -> torch.Tensor:
        """qkv: the fused projection's [B, (Hq + 2 Hkv) D] -> [B, hidden]; appends each sequence's K/V at its
        length, attends, projects."""
        cfg, B = self.cfg, qkv.shape[0]
        qkv = self.norm_heads(qkv)
        if at.append is not None:  # GPU: one kernel rotates q and k and appends k and v, then attend
            # A NoPE layer "rotates" by the identity tables (cos 1, sin 0): x * 1 + y * 0 is x exactly.
            tables = at.rope_tables if self.use_rope else at.identity_tables
            q = at.append(qkv, cfg.num_heads, cfg.num_kv_heads, self.k_cache, self.v_cache, at.seqlens, *tables)
            out = attention_with_kvcache(q, self.k_cache[:B], self.v_cache[:B], at.after, scale=self.scale,
                                         softcap=self.softcap, window=self.window, sinks=self.sinks)
            return linear(out.reshape(B, self.n_out), self.wo, self.bo)
        qk = qkv[:, :self.nq + self.nkv].view(B, cfg.num_heads + cfg.num_kv_heads, 1, cfg.head_dim)
        if rope is not None and self.use_rope:
            qk = apply_rope(qk, *rope)  # q and k heads in one pass (elementwise, so equal to two)
        v = qkv[:, self.nq + self.nkv:].view(B, cfg.num_kv_heads, 1, cfg.value_dim)
        out = _decode_attention(qk[:, :cfg.num_heads], qk[:, cfg.num_heads:], v, self.k_cache[:B],
                                self.v_cache[:B], at, self.scale, ring=self.ring, softcap=self.softcap,
                                window=None if self.ring else self.window, sinks=self.sinks)
        return linear(out.reshape(B, self.n_out), self.wo, self.bo)

    def norm_heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """The fused projection's [..., (Hq + 2 Hkv) D] with each query and key head RMS-normalised (Qwen3's q_norm
        and k_norm, as HF applies them before the rotation; OLMoE's norms span all heads), then clamped to
        [-clip_qkv, clip_qkv] where the model clips (OLMoE's clip_qkv); qkv itself when it does neither."""
        if self.q_norm is not None and self.k_norm is not None:
            D, qk = self.cfg.head_dim, self.nq + self.nkv
            q, k = qkv[..., :self.nq], qkv[..., self.nq:qk]
            if self.q_norm.weight.numel() == D:  # one norm per head (Qwen3, Gemma 3)
                q = self.q_norm(q.unflatten(-1, (-1, D))).flatten(-2)
                k = self.k_norm(k.unflatten(-1, (-1, D))).flatten(-2)
            else:  # over all heads at once (OLMoE)
                q, k = self.q_norm(q), self.k_norm(k)
            qkv = torch.cat([q, k, qkv[..., qk:]], dim=-1)
        return qkv if self.clip_qkv is None else qkv.clamp(-self.clip_qkv, self.clip_qkv)

    def mlp(self, x: torch.Tensor, linear: LinearFn = F.linear, swiglu: GluFn | None = None) -> torch.Tensor:
        """x: [..., hidden] -> [..., hidden]; swiglu: a kernel for silu(gate) * up on [rows, 2 * intermediate]."""
        if self.moe is not None:
            return self.moe(x, linear)
        h = linear(x, self.mlp_in, self.b_in)
        if swiglu is not None and self.swiglu and h.dim() == 2:
            h = swiglu(h)
        elif self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return linear(h, self.mlp_out, self.b_out)

    def attention(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                  linear: LinearFn = F.linear, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Prefill: x: [B, S, hidden] -> [B, S, hidden]; stores K/V of positions 0 .. S-1 (see store_prompt)."""
        cfg, (B, S, _) = self.cfg, x.shape
        qkv = self.norm_heads(self.project(x, linear))
        heads = cfg.num_heads + cfg.num_kv_heads
        qk = qkv[..., :self.nq + self.nkv].view(B, S, heads, cfg.head_dim).transpose(1, 2)
        if rope is not None and self.use_rope:
            qk = apply_rope(qk, *rope)
        q, k = qk[:, :cfg.num_heads], qk[:, cfg.num_heads:]
        v = qkv[..., self.nq + self.nkv:].view(B, S, cfg.num_kv_heads, cfg.value_dim).transpose(1, 2)
        # The cache is empty: attend over the fresh K/V directly and store them for decode.
        self.store_prompt(k, v, lengths)
        # A sliding layer's queries see their last `window` positions: the kernels skip the key blocks before.
        window = self.window if self.window is not None and S > self.window else None
        out = scaled_dot_product_attention(q, k, v, is_causal=S > 1, scale=self.scale,
                                           enable_gqa=cfg.num_heads != cfg.num_kv_heads, softcap=self.softcap,
                                           window=window, sinks=self.sinks)
        return linear(out.transpose(1, 2).reshape(B, S, self.n_out), self.wo, self.bo)

    def store_prompt(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None) -> None:
        """k, v: [B, Hkv, S, D] of positions 0 .. S-1 into cache rows 0 .. B-1. When they outrun a sliding
        layer's ring, each slot takes its row's latest position before the row's length (lengths [B]; None: S),
        so right padding never displaces a prompt position the row's next tokens still attend to."""
        B, S, size = k.shape[0], k.shape[2], self.k_cache.shape[2]
        if S <= size:
            self.k_cache[:B, :, :S] = k
            self.v_cache[:B, :, :S] = v
            return
        last = (torch.full((B,), S, device=k.device) if lengths is None else lengths.to(k.device)) - 1
        slots = torch.arange(size, device=k.device)
        positions = (last[:, None] - (last[:, None] - slots[None, :]) % size).clamp(min=0)  # [B, size]
        index = positions[:, None, :, None]
        self.k_cache[:B] = k.gather(2, index.expand(B, k.shape[1], size, k.shape[3]))
        self.v_cache[:B] = v.gather(2, index.expand(B, v.shape[1], size, v.shape[3]))


@dataclass
class StepPositions:
    """Where one decode step writes. seqlens: [B] int32 on the device, each cache length before the step.
    host: the same values on the host when known (CPU), else None; after: seqlens + 1 (with host or append);
    attend: the resolved C++ decode attention (see DecoderModel.decode_attend), or None; append: the resolved
    rope-and-append kernel (see DecoderModel.decode_append), or None."""

    seqlens: torch.Tensor
    host: list[int] | None = None
    after: torch.Tensor | None = None
    attend: AttendFn | None = None  # with host: attention_with_kvcache's C++ kernel, resolved once
    append: AppendFn | None = None  # GPU: rotate q/k and append k/v in one kernel (then attend over `after`)
    rope_tables: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # for `append`: cos, signed sin
    identity_tables: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # NoPE layers': 1, 0


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, at: StepPositions, scale: float | None, ring: bool = False,
                      softcap: float = 0.0, window: int | None = None, sinks: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """attention_with_kvcache for one new token per sequence; q: [B, Hq, 1, D] -> [B, Hq, 1, D].

    ring: the caches are a sliding layer's ring (position p in slot p % size): the new k/v go to their slot and
    the token attends to the min(p + 1, size) filled slots (attention does not depend on the order of its keys;
    the rotation was applied before caching). A full layer's positions stay below its size, so this equals the
    plain append there. softcap: the scores' soft cap (Gemma 2); window: a sliding layer's window over a plain
    cache (a ring holds only the window anyway); sinks: the heads' sink logits (GPT-OSS); all computed by the
    kernels.

    Without host positions (GPU, CUDA graphs): one call that appends k/v at seqlens and attends; the Triton
    kernel takes ragged lengths. With host positions (CPU), k/v are written with plain slice copies and the
    op attends over `after` positions: its own append (index tensors and a scatter per cache) costs more than
    the attention of one token. Either way each sequence's result is computed on its own (the C++ kernel by
    rows, the torch backend per sequence), so a batch stays bitwise equal to one-by-one generation."""
    size = k_cache.shape[2]
    if at.host is None and not ring:
        return attention_with_kvcache(q, k_cache, v_cache, at.seqlens, k, v, scale=scale, softcap=softcap,
                                      window=window, sinks=sinks)
    if at.host is None:  # device-side slots and lengths: no host sync, so a CUDA graph can capture it
        rows, slots = torch.arange(q.shape[0], device=q.device), (at.seqlens % size).long()
        k_cache[rows, :, slots] = k[:, :, 0]
        v_cache[rows, :, slots] = v[:, :, 0]
        filled = (at.seqlens + 1).clamp(max=size)
    else:
        for b, n in enumerate(at.host):
            k_cache[b, :, n % size] = k[b, :, 0]
            v_cache[b, :, n % size] = v[b, :, 0]
        if at.attend is not None:
            return at.attend(q, k_cache, v_cache, [min(n + 1, size) for n in at.host],
                             1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, softcap,  # the op's default
                             window or 0, sinks)
        filled = (torch.tensor([min(n + 1, size) for n in at.host], dtype=torch.int32, device=q.device)
                  if ring else at.after)
    return attention_with_kvcache(q, k_cache, v_cache, filled, scale=scale, softcap=softcap, window=window,
                                  sinks=sinks)


def resolve_rope_append(device: torch.device, dtype: torch.dtype, head_dim: int) -> AppendFn | None:
    """The fused rope-and-append launcher where it can run the decode step: CUDA, Triton available, fp32, fp16
    or bf16, an even head_dim up to its limit, and the reference not forced."""
    launcher = _resolve_gpu_kernel(device, dtype, "rope_append")
    if launcher is None:  # checked first: the kernel module imports Triton, which a CPU install may lack
        return None
    from genai_fast.kernels.rope_append import MAX_HEAD_DIM

    return launcher if head_dim % 2 == 0 and head_dim <= MAX_HEAD_DIM else None


def _resolve_gpu_kernel(device: torch.device, dtype: torch.dtype, name: str, function: str | None = None
                        ) -> Callable[..., Any] | None:
    """kernels/<name>.py's `function` (default <name>_fwd) for a decode step on a CUDA device with Triton, in fp32,
    fp16 or bf16, unless GENAI_FAST_BACKEND=torch forces the reference; None otherwise."""
    from genai_fast.backends.availability import backend_unavailable_reasons

    if torch.device(device).type != "cuda" or os.environ.get(ENV_BACKEND, "").strip() == "torch":
        return None
    if backend_unavailable_reasons("triton") or dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    return getattr(importlib.import_module(f"genai_fast.kernels.{name}"), function or f"{name}_fwd")


class DecoderModel(nn.Module):
    """The whole decoder: embeddings, layers, final norm, LM head, rope tables and the static KV cache.

    local_rope: (inverse frequencies, attention scaling) of the local rope tables that layers with local_rope
    rotate with (Gemma 3's sliding layers), or None. ring_caches: sliding layers keep rings of their window
    (memory bounded by the window: Gemma 3's 512 of a 32k context) rather than caches of the whole length, which
    `extend` (speculative decoding, prefix reuse) needs: a ring cannot take a run of positions back.
    lm_head_bias: the LM head's bias [V] (Phi), or None."""

    def __init__(self, cfg: ModelConfig, embed: torch.Tensor, pos_embed: torch.Tensor | None, layers: list[Layer],
                 norm: Norm, lm_head: torch.Tensor | None, inv_freq: torch.Tensor | None,
                 attention_scaling: float = 1.0, local_rope: tuple[torch.Tensor, float] | None = None,
                 lm_head_bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = _param(embed)
        self.pos_embed = _param(pos_embed)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        # Tied embeddings share storage with the LM head (lm_head None: no copy).
        self.lm_head = self.embed if lm_head is None else _param(lm_head)
        self.lm_head_bias = _param(lm_head_bias)  # Phi's LM head has a bias
        self.register_buffer("inv_freq", None if inv_freq is None else inv_freq.to(torch.float32), persistent=False)
        self.attention_scaling = attention_scaling
        self.register_buffer("local_inv_freq", None if local_rope is None else local_rope[0].to(torch.float32),
                             persistent=False)
        self.local_attention_scaling = 1.0 if local_rope is None else local_rope[1]
        self.local_tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self.cache_batch = 0
        self.cache_len = 0
        self.cos_table: torch.Tensor | None = None
        self.sin_signed_table: torch.Tensor | None = None
        self.identity_tables: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # NoPE layers' (1, 0)
        self.cache_version = 0  # bumped on reallocation: CUDA graphs captured on the old cache are stale
        self._decode_linears: dict[tuple[int, str | None, int], LinearFn] = {}
        self._decode_kernels: dict[tuple, RmsNormFn | AttendFn | None] = {}
        # id(weight) -> GgufWeight (genai_fast.llm.gguf_blocks): weights whose GGUF blocks decode reads instead.
        self.gguf_blocks: dict[int, object] = {}
        self.fused_projections = True  # decode_gemv's kernels where they apply (False: cuBLAS for every projection)
        self.ring_caches = True

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def allocate_cache(self, batch: int, max_len: int) -> None:
        """Make every layer's K/V cache at least [batch, H_kv, max_len, D]; a big enough one is kept (a smaller
        batch uses its first rows). Also builds the rope tables for positions 0 .. max_len-1."""
        if batch <= self.cache_batch and max_len <= self.cache_len:
            return
        batch, max_len = max(batch, self.cache_batch), max(max_len, self.cache_len)
        cfg = self.cfg
        for layer in self.layers:
            # A sliding layer keeps a ring of its window's positions (Gemma 3: 512 of a 32k context) unless asked not
            # to; a window as long as the cache needs no ring.
            size = min(max_len, layer.window) if layer.window and self.ring_caches else max_len
            layer.ring = size < max_len
            shape = (batch, cfg.num_kv_heads, size, cfg.head_dim)
            layer.k_cache = layer.v_cache = None  # free the old cache before allocating the new one
            layer.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            layer.v_cache = torch.zeros((*shape[:3], cfg.value_dim), dtype=self.dtype, device=self.device)
        self.cache_batch, self.cache_len = batch, max_len
        self.cache_version += 1
        if self.inv_freq is not None:
            self.cos_table, self.sin_signed_table = self._rope_tables(max_len, self.inv_freq, self.attention_scaling)
            if self.local_inv_freq is not None:
                self.local_tables = self._rope_tables(max_len, self.local_inv_freq, self.local_attention_scaling)
            if not all(layer.use_rope for layer in self.layers):
                self.identity_tables = (torch.ones_like(self.cos_table), torch.zeros_like(self.sin_signed_table))

    def _rope_tables(self, length: int, inv_freq: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin_signed: [length, D] for positions 0 .. length-1, computed in fp32 as HF does (each entry one
        product, so a table equals HF's per-step values bitwise), then cast to the model's dtype. sin_signed
        has its first half negated (see apply_rope). Built once: decode steps only look rows up."""
        positions = torch.arange(length, device=inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * scaling).to(self.dtype)
        sin = (emb.sin() * scaling).to(self.dtype)
        half = sin.shape[-1] // 2
        return cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def _check_fits(self, batch: int, last_position: int) -> None:
        if batch > self.cache_batch or last_position >= self.cache_len:
            raise ValueError(f"KV cache overflow: position {last_position} for batch {batch} does not fit the "
                             f"allocated cache of {self.cache_len} positions for batch {self.cache_batch}")

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, last: torch.Tensor | None = None, all_logits: bool = False) -> torch.Tensor:
        """ids: [B, S] at positions 0 .. S-1 (right-padded) -> logits [B, V] at positions `last` ([B] long;
        default S-1), or [B, S, V] with all_logits. Fills cache positions 0 .. S-1 of rows 0 .. B-1."""
        B, S = ids.shape
        self._check_fits(B, S - 1)
        x = self.embed_tokens(ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:S]
        rope = None if self.cos_table is None else (self.cos_table[:S], self.sin_signed_table[:S])
        local = None if self.local_tables is None else (self.local_tables[0][:S], self.local_tables[1][:S])
        linear = self.prefill_linear()
        lengths = None if last is None else last + 1
        for layer in self.layers:
            x = layer(x, local if layer.local_rope else rope, linear, lengths)
        if all_logits:
            return self.scale_logits(linear(self.norm(x), self.lm_head, self.lm_head_bias))
        x = x[:, -1] if last is None else x[torch.arange(B, device=x.device), last]
        # The last positions' logits are decode-sized: the decode step's linear (C++ kernel, GGUF blocks).
        return self.scale_logits(self.decode_linear(B)(self.norm(x), self.lm_head, self.lm_head_bias))

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [...] -> [..., hidden]: the embedding rows, times embed_scale where the model has one."""
        x = F.embedding(ids, self.embed)
        return x if self.cfg.embed_scale == 1.0 else x * self.cfg.embed_scale

    def scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The LM head's output divided by logits_divisor (Granite's logits_scaling), times logits_multiplier
        (Cohere's logit_scale) and soft-capped
        (Gemma's final_logit_softcapping) where the model has them, in HF's order."""
        if self.cfg.logits_divisor != 1.0:
            logits = logits / self.cfg.logits_divisor
        if self.cfg.logits_multiplier != 1.0:
            logits = logits * self.cfg.logits_multiplier
        if self.cfg.logits_softcap:
            logits = torch.tanh(logits / self.cfg.logits_softcap) * self.cfg.logits_softcap
        return logits

    @torch.inference_mode()
    def extend(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """ids: [1, S] new tokens of cache row 0 at positions start .. start+S-1 (positions 0 .. start-1 already
        cached) -> logits [S, V], each the next-token logits after that position. For reusing a cached prefix and
        verifying speculated tokens; a model whose sliding layers keep rings (ring_caches) is refused: a ring cannot
        take a run of positions back."""
        if any(layer.ring for layer in self.layers):
            raise ValueError("extend: this model's sliding-window layers keep ring caches, which cannot take "
                             "positions back; load it with sliding_window_cache='full', or prefill instead")
        S = ids.shape[1]
        if ids.dim() != 2 or ids.shape[0] != 1 or S == 0:
            raise ValueError(f"ids: expected shape [1, S] with S >= 1, got {tuple(ids.shape)}")
        self._check_fits(1, start + S - 1)
        x = self.embed_tokens(ids[0])
        if self.pos_embed is not None:
            x = x + self.pos_embed[start:start + S]
        rope = None if self.cos_table is None else (self.cos_table[start:start + S],
                                                    self.sin_signed_table[start:start + S])
        local = None if self.local_tables is None else tuple(t[start:start + S] for t in self.local_tables)
        linear = self.decode_linear(S) if S <= MAX_DECODE_ROWS else self.prefill_linear()
        rms_norm, attend = self.decode_rms_norm(), self.decode_attend()
        for layer in self.layers:
            x = layer.extend(x, local if layer.local_rope else rope, start, linear, rms_norm, attend)
        return self.scale_logits(linear(self.norm.step(x, rms_norm), self.lm_head, self.lm_head_bias))

    def uses_rings(self, max_len: int) -> bool:
        """Whether a cache of max_len positions makes some sliding layer's cache a ring (see ring_caches)."""
        return self.ring_caches and any(layer.window is not None and layer.window < max_len for layer in self.layers)

    def prefill_linear(self) -> LinearFn:
        """genai_fast.linear on a CPU, where GEMM-sized prefill projections may run faster on oneDNN than on BLAS
        (timed per shape on the first call; 1.8x at an 87-token prompt's gate/up projection on session 22's VM);
        F.linear on a GPU, where the op would only add its checks to cuBLAS."""
        return genai_fast_linear if self.device.type == "cpu" else F.linear

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, seqlens: torch.Tensor, host_lengths: list[int] | None = None
               ) -> torch.Tensor:
        """tokens: [B, 1] at positions seqlens ([B] int32, each sequence's cache length) -> logits [B, V].

        Appends each token's K/V at its sequence's position; the caller advances seqlens. host_lengths: the
        values of seqlens when known on the host (CPU): checked against the cache, and used for ragged batches.
        Runs no host synchronisation without host_lengths, so a CUDA graph can capture it."""
        B = tokens.shape[0]
        if host_lengths is not None:
            self._check_fits(B, max(host_lengths))
        x = self.embed_tokens(tokens.view(B))
        if self.pos_embed is not None:
            x = x + self.pos_embed.index_select(0, seqlens)
        rope = local = None
        append = self.decode_append() if host_lengths is None else None
        if append is not None:
            at = StepPositions(seqlens, after=seqlens + 1, append=append,
                               rope_tables=(self.cos_table, self.sin_signed_table),
                               identity_tables=self.identity_tables)
        else:
            if self.cos_table is not None:
                rope = (self.cos_table.index_select(0, seqlens)[:, None, None],
                        self.sin_signed_table.index_select(0, seqlens)[:, None, None])
            if self.local_tables is not None:
                local = tuple(table.index_select(0, seqlens)[:, None, None] for table in self.local_tables)
            at = StepPositions(seqlens)
            if host_lengths is not None:
                at = StepPositions(seqlens, host_lengths, seqlens + 1, self.decode_attend())
        linear = self.decode_linear(B)
        # With a C++ pool of its own (an extension built without OpenMP), torch's OpenMP threads spinning between
        # this step's small ops took the cores from it (0.5x HF instead of 1.2x at two threads): torch then runs
        # them on one thread. The default build runs the kernels on torch's OpenMP threads, where that neither
        # helps nor hurts (session 25, SmolLM2 batch 1, 2 threads: 130-151 tokens/s either way), and it is not
        # done: set_num_threads is process-wide, and a server thread whose first torch call fell inside the step
        # kept one thread for good.
        threads = torch.get_num_threads()
        solo = threads > 1 and getattr(linear, "own_threads", False) and not _kernels_share_torch_threads()
        if solo:
            torch.set_num_threads(1)
        rms_norm = self.decode_rms_norm()
        swiglu = self.decode_swiglu()
        add_norm = self.decode_add_rms_norm()
        gemv = self.decode_gemv(B) if add_norm is not None and rope is None else None
        try:
            if gemv is not None:
                pending = None
                for layer in self.layers:
                    x, pending = layer.step_gemv(x, pending, at, linear, gemv)
                return self.scale_logits(gemv.norm_linear(x, pending, self.norm.weight, self.norm.eps, self.lm_head,
                                                          self.lm_head_bias)[1])
            if add_norm is not None:
                pending = None
                for layer in self.layers:
                    x, pending = layer.step_fused(x, pending, local if layer.local_rope else rope, at, linear,
                                                  add_norm, swiglu)
                return self.scale_logits(linear(add_norm(x, pending, self.norm.weight, self.norm.eps)[1],
                                                self.lm_head, self.lm_head_bias))
            for layer in self.layers:
                x = layer.step(x, local if layer.local_rope else rope, at, linear, rms_norm, swiglu)
            return self.scale_logits(linear(self.norm.step(x, rms_norm), self.lm_head, self.lm_head_bias))
        finally:
            if solo:
                torch.set_num_threads(threads)

    def decode_linear(self, batch: int) -> LinearFn:
        """What genai_fast.linear runs for a decode step's [batch, K] inputs (on a CPU with the C++ extension:
        its one-pass kernel, which at 1-16 rows beats BLAS's GEMM), resolved once per batch size and backend
        setting: the dispatcher's per-call checks would cost more than a small layer. Weights with GGUF blocks
        attached (see gguf_blocks.py) run genai_fast.gguf_linear's kernel on the blocks instead."""
        key = (batch, os.environ.get(ENV_BACKEND), torch.get_num_threads())
        if key not in self._decode_linears:
            linear = resolve_linear(batch, self.lm_head)
            block_linear = resolve_gguf_linear(batch, self.device) if self.gguf_blocks else None
            if block_linear is not None:
                linear = _BlockDecodeLinear(linear, block_linear, self.gguf_blocks)
            self._decode_linears[key] = linear
        return self._decode_linears[key]

    def decode_rms_norm(self) -> RmsNormFn | None:
        """genai_fast.rms_norm's kernel for the decode step's norms (fp32 on a CPU with the extension: C++; on a
        GPU: Triton), resolved once per backend setting; None: the norms run their torch forward."""
        key = ("rms_norm", os.environ.get(ENV_BACKEND))
        if key not in self._decode_kernels:
            self._decode_kernels[key] = resolve_rms_norm(self.device, self.dtype)
        return self._decode_kernels[key]

    def decode_add_rms_norm(self) -> AddNormFn | None:
        """On a GPU with Triton, for models whose norms are all RMSNorms: kernels/rms_norm.py's add_rms_norm_fwd,
        which folds each residual add into the norm after it (two kernels fewer per layer, same roundings).
        None elsewhere, or with GENAI_FAST_BACKEND=torch. Resolved once per setting."""
        key = ("add_rms_norm", os.environ.get(ENV_BACKEND))
        if key not in self._decode_kernels:
            usable = all(n.plain_rms for n in self._norms())
            self._decode_kernels[key] = (_resolve_gpu_kernel(self.device, self.dtype, "rms_norm", "add_rms_norm_fwd")
                                         if usable else None)
        return self._decode_kernels[key]

    def _norms(self) -> list[Norm]:
        """The residual stream's norms (the per-head ones are not fused into the step's adds or projections)."""
        return [self.norm, *(n for layer in self.layers
                             for n in (layer.norm1, layer.norm2, layer.post_norm1, layer.post_norm2) if n is not None)]

    def decode_gemv(self, batch: int) -> DecodeGemv | None:
        """On a GPU with Triton, at batch 1, for models whose norms are all RMSNorms and whose MLPs are dense SwiGLU:
        kernels/decode_gemv.py's projections with the norms and the SwiGLU folded in (three kernels fewer per
        layer). At larger batches each program would read its weight rows once per sequence, so cuBLAS's GEMM
        keeps those. None also with GENAI_FAST_BACKEND=torch or `fused_projections` False (the benchmark's
        comparison). Resolved once per setting."""
        key = ("gemv", os.environ.get(ENV_BACKEND), self.fused_projections)
        if key not in self._decode_kernels:
            cfg = self.cfg
            usable = (self.fused_projections and cfg.family == "llama" and cfg.activation == "silu"
                      and all(n.plain_rms for n in self._norms())
                      and not any(layer.moe or layer.mla for layer in self.layers))
            gemv = None
            if usable and (norm_linear := _resolve_gpu_kernel(self.device, self.dtype, "decode_gemv",
                                                              "norm_linear_fwd")) is not None:
                gemv = DecodeGemv(norm_linear,
                                  _resolve_gpu_kernel(self.device, self.dtype, "decode_gemv", "swiglu_linear_fwd"))
            self._decode_kernels[key] = gemv
        return self._decode_kernels[key] if batch == 1 else None

    def decode_append(self) -> AppendFn | None:
        """On a GPU with Triton: kernels/rope_append.py's launcher, which rotates the new token's q and k and
        appends its k and v in one kernel (about a dozen torch kernels otherwise, each a few microseconds of a
        CUDA graph's step). None elsewhere, with GENAI_FAST_BACKEND=torch, or for a model with sliding or local-rope
        layers or partial rotary embeddings (the kernel rotates whole heads). Resolved once per setting."""
        key = ("append", os.environ.get(ENV_BACKEND), self.cache_version)  # a grown cache may have made rings
        if key not in self._decode_kernels:
            # The kernel appends at each sequence's position with the global tables: ring slots and local tables
            # take the unfused step.
            sliding = any(layer.ring or layer.local_rope for layer in self.layers)
            partial = self.inv_freq is not None and 2 * self.inv_freq.numel() < self.cfg.head_dim
            self._decode_kernels[key] = (None if sliding or partial else
                                         resolve_rope_append(self.device, self.dtype, self.cfg.head_dim))
        return self._decode_kernels[key]

    def decode_swiglu(self) -> GluFn | None:
        """On a GPU with Triton, for silu MLPs: kernels/swiglu.py's launcher (one kernel for silu(gate) * up
        instead of two, with torch's roundings). None elsewhere, or with GENAI_FAST_BACKEND=torch."""
        key = ("swiglu", os.environ.get(ENV_BACKEND))
        if key not in self._decode_kernels:
            usable = self.cfg.family == "llama" and self.cfg.activation == "silu"
            self._decode_kernels[key] = _resolve_gpu_kernel(self.device, self.dtype, "swiglu") if usable else None
        return self._decode_kernels[key]

    def decode_attend(self) -> AttendFn | None:
        """attention_with_kvcache's C++ kernel for CPU decode steps (lengths known on the host), resolved once per
        backend setting and thread count; None: the step calls the op."""
        key = ("attend", os.environ.get(ENV_BACKEND), torch.get_num_threads())
        if key not in self._decode_kernels:
            cfg = self.cfg
            self._decode_kernels[key] = resolve_decode_attention(self.device, self.dtype, cfg.head_dim,
                                                                 cfg.value_dim)
        return self._decode_kernels[key]

    def forward(self, ids: torch.Tensor, pos: int = 0, last_only: bool = True) -> torch.Tensor:
        """ids: [B, S] at positions pos .. pos+S-1 (the same for every row) -> logits [B, V] or [B, S, V].

        pos == 0 starts new sequences (prefill); pos > 0 appends one token per row (decode)."""
        if pos == 0:
            return self.prefill(ids, all_logits=not last_only)
        if ids.shape[1] != 1:
            raise ValueError(f"ids: decode takes one token per sequence, got shape {tuple(ids.shape)}")
        seqlens = torch.full((ids.shape[0],), pos, dtype=torch.int32, device=ids.device)
        logits = self.decode(ids, seqlens, [pos] * ids.shape[0])
        return logits if last_only else logits[:, None]

    def step_bytes(self, batch: int) -> int:
        """Bytes one decode step reads besides the KV cache: every weight matrix and vector once (a tied LM head
        once; GGUF blocks instead of the fp32 weights they hold when decode reads them), plus one embedding row
        (and one position row) per sequence. A MoE layer's experts count only as many as the batch's tokens can
        choose (exact at batch 1: its k experts; an upper bound above, where tokens may share experts)."""
        weights = sum(p.numel() * p.element_size() for p in self.parameters())  # parameters() dedups tied ones
        embed_rows = (1 + (self.pos_embed is not None)) * batch * self.cfg.hidden_size * self.embed.element_size()
        unused = self.embed.numel() * self.embed.element_size() if self.lm_head is not self.embed else 0
        unused += self.pos_embed.numel() * self.pos_embed.element_size() if self.pos_embed is not None else 0
        unused += sum(layer.moe.unread_bytes(batch) for layer in self.layers if layer.moe is not None)
        if isinstance(self.decode_linear(batch), _BlockDecodeLinear):
            for p in {id(p): p for p in self.parameters()}.values():
                if id(p) in self.gguf_blocks:
                    unused += p.numel() * p.element_size() - self.gguf_blocks[id(p)].nbytes
        return weights - unused + embed_rows

    def kv_bytes_per_position(self) -> int:
        """Bytes of K and V over all layers for one cached position of one sequence."""
        cfg = self.cfg
        return cfg.num_layers * cfg.num_kv_heads * (cfg.head_dim + cfg.value_dim) * self.embed.element_size()

    def kv_bytes_read(self, length: int, steps: int) -> int:
        """Bytes of K and V that `steps` decode steps of one sequence read after a `length`-token prompt: at step j
        (1-based) a full layer attends to length + j positions, a sliding layer to at most its window."""
        per_layer = self.kv_bytes_per_position() // self.cfg.num_layers
        total = 0
        for layer in self.layers:
            full = steps * length + steps * (steps + 1) // 2
            if layer.window is None or length + steps <= layer.window:
                total += per_layer * full
                continue
            below = max(0, min(steps, layer.window - length))  # steps whose length + j stays within the window
            total += per_layer * (below * length + below * (below + 1) // 2 + (steps - below) * layer.window)
        return total


LlamaModel = DecoderModel  # the name of the Llama-only first version


class _BlockDecodeLinear:
    """F.linear's (x, weight, bias) for a decode step over a model with GGUF blocks: a weight with blocks runs
    gguf_linear's kernel on them, any other `fp32_linear`."""

    def __init__(self, fp32_linear: LinearFn, block_linear: Callable[..., torch.Tensor],
                 blocks: dict[int, object]) -> None:
        self.fp32_linear, self.block_linear, self.blocks = fp32_linear, block_linear, blocks
        # Both run on the C++ pool, so DecoderModel.decode may drop torch to one thread around the step.
        self.own_threads = getattr(fp32_linear, "own_threads", False)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        found = self.blocks.get(id(weight))
        if found is None:
            return self.fp32_linear(x, weight, bias)
        return self.block_linear(x, found.blocks, found.block_type, bias)


# ---------------------------------------------------------------- conversion from transformers


def _check_architecture(config: object) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {model_type!r}: genai_fast.llm supports "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    if model_type == "gpt2":
        act = getattr(config, "activation_function", "gelu_new")
        if act not in ACTIVATIONS or act == "silu":
            raise ValueError(f"unsupported GPT-2 activation {act!r}: genai_fast.llm supports "
                             f"{', '.join(a for a in ACTIVATIONS if a != 'silu')}")
        if getattr(config, "add_cross_attention", False):
            raise ValueError("unsupported GPT-2 variant: add_cross_attention=True (decoder-only models only)")
    elif model_type in ("gpt_neox", "phi", "starcoder2"):
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported {model_type} activation {config.hidden_act!r}: genai_fast.llm supports "
                             f"{', '.join(ACTIVATIONS)}")
    elif _gated_activation(config) not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {_gated_activation(config)!r}: genai_fast.llm supports "
                         f"{', '.join(ACTIVATIONS)} in gated MLPs (act(gate) * up)")
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError(f"unsupported {model_type} variant: use_bidirectional_attention=True (an encoder, not a "
                         "generator)")


def _gated_activation(config: object) -> str:
    """The activation of a Llama-family MLP's gate (Gemma 3 names it hidden_activation; transformers maps
    "swish" to SiLU too)."""
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")
    return "silu" if act == "swish" else act


def _kernels_share_torch_threads() -> bool:
    """Whether the C++ kernels run on torch's OpenMP threads (the extension built with OpenMP)."""
    try:
        return bool(importlib.import_module("genai_fast._C").built_with_openmp)
    except ImportError:
        return False


def context_limit(config: object) -> int:
    """The longest sequence the compact module runs: the position limit (sliding layers keep rings of their
    window, so a window does not bound it)."""
    return int(getattr(config, "max_position_embeddings", None) or config.n_positions)


def _layer_window(attn: nn.Module, config: object) -> int | None:
    """A Llama-family layer's sliding window: HF's attention modules hold theirs (Qwen2, SmolLM3, Gemma 3: None on
    full layers); Mistral's, Mixtral's and StarCoder2's read the config's. None: full attention."""
    if config.model_type == "exaone4":  # every layer holds the config's window; only the sliding ones use it
        return int(config.sliding_window) if attn.is_sliding else None
    window = getattr(attn, "sliding_window", None) if hasattr(attn, "sliding_window") else (
        getattr(config, "sliding_window", None) if config.model_type in ("mistral", "mixtral", "starcoder2") else None)
    return int(window) if window else None


def _llama_config(config: object, dtype: torch.dtype) -> ModelConfig:
    """A Llama-family model's ModelConfig; family "llama" (gated MLPs) or "plain" (Arcee's act(x W_up) W_down)."""
    heads = config.num_attention_heads
    dims = {"num_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads}
    if getattr(config, "kv_lora_rank", None):  # MLA: every head's keys [rope | nope] and values cached expanded
        dims = {"num_kv_heads": heads, "head_dim": config.qk_nope_head_dim + config.qk_rope_head_dim,
                "v_head_dim": config.v_head_dim}
    return ModelConfig(
        family="plain" if config.model_type in PLAIN_MLPS else "llama", vocab_size=config.vocab_size,
        hidden_size=config.hidden_size, num_layers=config.num_hidden_layers, num_heads=heads, **dims,
        norm_eps=getattr(config, "rms_norm_eps", None) or getattr(config, "layer_norm_eps", None) or config.norm_eps,
        max_position_embeddings=context_limit(config), activation=_gated_activation(config),
        **_multipliers(config, dtype))


def _multipliers(config: object, dtype: torch.dtype) -> dict[str, float]:
    """embed_scale, residual_scale, logits_divisor, logits_softcap and logits_multiplier of ModelConfig for a
    Llama-family config."""
    if config.model_type in GEMMA_NORMS:
        # HF multiplies by sqrt(hidden) held as a tensor of the model's dtype (55.5 rather than 55.43 in bf16).
        return {"embed_scale": float(torch.tensor(config.hidden_size ** 0.5).to(dtype)),
                "logits_softcap": float(getattr(config, "final_logit_softcapping", None) or 0.0)}
    if config.model_type in GRANITE_MULTIPLIERS:
        return {"embed_scale": float(config.embedding_multiplier),
                "residual_scale": float(config.residual_multiplier),
                "logits_divisor": float(config.logits_scaling)}
    if config.model_type in COHERE:
        return {"logits_multiplier": float(config.logit_scale)}
    return {}


def _rope_from_hf(hf_model: nn.Module, head_dim: int, layer_type: str | None = None
                  ) -> tuple[torch.Tensor, float]:
    """Take the inverse frequencies HF itself computed (rope_theta and any static scaling already applied; fewer
    than head_dim / 2 under a partial_rotary_factor); layer_type: the tables of that kind of layer, where HF keeps
    one per kind (Gemma 3)."""
    rotary = hf_model.base_model.rotary_emb
    prefix = "" if layer_type is None else f"{layer_type}_"
    rope_type = getattr(rotary, "rope_type", "default")
    rope_type = rope_type.get(layer_type, "default") if isinstance(rope_type, dict) else rope_type
    if rope_type in _DYNAMIC_ROPE:
        raise ValueError(f"unsupported rope type {rope_type!r}: its frequencies change with the length")
    inv_freq = getattr(rotary, f"{prefix}inv_freq")
    if 2 * inv_freq.numel() > head_dim:
        raise ValueError(f"unsupported checkpoint: rotary embeddings on {2 * inv_freq.numel()} dims of heads of "
                         f"{head_dim}")
    return inv_freq.detach().clone(), float(getattr(rotary, f"{prefix}attention_scaling", 1.0))


def _fused_projections(a: nn.Module, m: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                           torch.Tensor | None]:
    """(q/k/v weight, its bias or None, gate/up weight) of a layer, fused as the compact module keeps them (Phi-3's
    checkpoints hold them fused already, in the same row order); the gate/up weight is None for a MoE block, the
    q/k/v ones for MLA attention (MlaProjection's)."""
    if is_mla(a):
        wqkv = bqkv = None
    elif hasattr(a, "qkv_proj"):
        wqkv, bqkv = a.qkv_proj.weight, a.qkv_proj.bias
    else:
        wqkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        bqkv = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
    if is_moe_block(m):
        return wqkv, bqkv, None
    if not hasattr(m, "gate_proj") and not hasattr(m, "gate_up_proj"):  # Arcee: no gate
        return wqkv, bqkv, m.up_proj.weight
    gate_up = m.gate_up_proj if hasattr(m, "gate_up_proj") else None
    w_gate_up = gate_up.weight if gate_up is not None else torch.cat([m.gate_proj.weight, m.up_proj.weight])
    return wqkv, bqkv, w_gate_up


def _mlp_biases(m: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(gate/up bias, down bias) of a dense gated MLP (mlp_bias=True, ERNIE's use_bias), or (None, None)."""
    if getattr(m, "gate_up_proj", None) is not None:
        b_in = m.gate_up_proj.bias
    elif not hasattr(m, "gate_proj"):  # Arcee
        b_in = m.up_proj.bias
    else:
        b_in = None if m.gate_proj.bias is None else torch.cat([m.gate_proj.bias, m.up_proj.bias])
    b_out = m.down_proj.bias
    return None if b_in is None else b_in.to(dtype), None if b_out is None else b_out.to(dtype)


def _llama_layer(layer: nn.Module, index: int, cfg: ModelConfig, config: object, dtype: torch.dtype,
                 rotary_dims: int) -> Layer:
    """One Llama-family layer; rotary_dims: how many of each head's dims the model's rope rotates."""
    a = layer.self_attn
    m = layer.block_sparse_moe if hasattr(layer, "block_sparse_moe") else layer.mlp  # Granite-MoE's name
    wqkv, bqkv, w_gate_up = _fused_projections(a, m)
    moe = (from_hf_block(m, config, _gated_activation(config), dtype, getattr(layer, "shared_mlp", None))
           if w_gate_up is None else None)
    wqkv = None if wqkv is None else wqkv.to(dtype)
    w_gate_up, w_down = (None, None) if moe is not None else (w_gate_up.to(dtype), m.down_proj.weight.to(dtype))
    b_in, b_out = (None, None) if moe is not None else _mlp_biases(m, dtype)
    bqkv = None if bqkv is None else bqkv.to(dtype)
    bo = None if a.o_proj.bias is None else a.o_proj.bias.to(dtype)
    head_norms = [_head_norm(getattr(a, name, None), config, dtype)
                  for name in (("q_layernorm", "k_layernorm") if hasattr(a, "q_layernorm") else ("q_norm", "k_norm"))]
    use_rope = _layer_uses_rope(config, index)
    window = _layer_window(a, config)
    local_rope = _has_local_rope(config) and config.layer_types[index] == "sliding_attention"
    if config.model_type in INTERLEAVED_ROPE:
        wqkv, bqkv, head_norms = _halves_from_pairs(wqkv, bqkv, head_norms, cfg, rotary_dims)
    if config.model_type in POST_NORMS_ONLY:  # OLMo 2 and 3, EXAONE 4: norms of the sublayer outputs only
        return Layer(cfg, NoNorm(), NoNorm(), wqkv, bqkv, a.o_proj.weight.to(dtype), bo, w_gate_up, b_in, w_down, b_out,
                     None, *head_norms, use_rope=use_rope, window=window, local_rope=local_rope,
                     post_norm1=_residual_norm(layer.post_attention_layernorm, config, dtype),
                     post_norm2=_residual_norm(layer.post_feedforward_layernorm, config, dtype))
    if config.model_type == "glm4":  # GLM-4-0414: norms around each sublayer, named its own way
        return Layer(cfg, _residual_norm(layer.input_layernorm, config, dtype),
                     _residual_norm(layer.post_attention_layernorm, config, dtype), wqkv, bqkv,
                     a.o_proj.weight.to(dtype), bo, w_gate_up, b_in, w_down, b_out, None, *head_norms, window=window,
                     post_norm1=_residual_norm(layer.post_self_attn_layernorm, config, dtype),
                     post_norm2=_residual_norm(layer.post_mlp_layernorm, config, dtype))
    if config.model_type in SANDWICH_NORMS:  # Gemma 2 and 3: norms around each sublayer
        return Layer(cfg, _residual_norm(layer.input_layernorm, config, dtype),
                     _residual_norm(layer.pre_feedforward_layernorm, config, dtype),
                     wqkv, bqkv, a.o_proj.weight.to(dtype), bo, w_gate_up, b_in, w_down, b_out,
                     float(config.query_pre_attn_scalar) ** -0.5, *head_norms, window=window,
                     post_norm1=_residual_norm(layer.post_attention_layernorm, config, dtype),
                     post_norm2=_residual_norm(layer.post_feedforward_layernorm, config, dtype),
                     local_rope=local_rope,
                     softcap=float(getattr(config, "attn_logit_softcapping", None) or 0.0))
    # Granite's attention_multiplier replaces 1/sqrt(head_dim); MLA's scale is 1/sqrt(its key size) times YaRN's
    # mscale squared, as HF's attention module holds it.
    scale = float(config.attention_multiplier) if config.model_type in GRANITE_MULTIPLIERS else None
    mla = None
    if is_mla(a):
        mla = MlaProjection.from_hf(a, config, dtype, lambda norm: _residual_norm(norm, config, dtype),
                                    interleaved=config.model_type == "deepseek_v2" or bool(config.rope_interleave))
        scale = float(a.scaling)
    # Cohere's and parallel StableLM's layers feed both sublayers from input_layernorm (no second norm).
    norm1 = _residual_norm(layer.input_layernorm, config, dtype)
    second = getattr(layer, "post_attention_layernorm", None)
    parallel = second is None
    return Layer(cfg, norm1, norm1 if parallel else _residual_norm(second, config, dtype),
                 wqkv, bqkv, a.o_proj.weight.to(dtype), bo, w_gate_up, b_in, w_down, b_out, scale, *head_norms,
                 use_rope=use_rope, window=window, moe=moe, clip_qkv=getattr(config, "clip_qkv", None),
                 sinks=None if getattr(a, "sinks", None) is None else a.sinks.to(dtype), parallel=parallel,
                 residual_first=parallel, mla=mla)


def _has_local_rope(config: object) -> bool:
    """Whether the model's sliding layers rotate with rope tables of their own (Gemma 3, OLMo 3), the full layers with
    the global ones: both kinds of layer must be there (HF builds a table per kind present)."""
    return config.model_type in LOCAL_ROPE and {"sliding_attention", "full_attention"} <= set(config.layer_types)


def _layer_uses_rope(config: object, index: int) -> bool:
    """Whether a Llama-family layer rotates its queries and keys: SmolLM3's no_rope_layers holds 0 for its NoPE
    layers; Command R7B (cohere2) and EXAONE 4 (where it has sliding layers) rotate only on their sliding layers."""
    if config.model_type == "smollm3":
        return bool(config.no_rope_layers[index])
    if config.model_type == "cohere2" or (config.model_type == "exaone4" and config.sliding_window):
        return config.layer_types[index] == "sliding_attention"
    return True


def _halves_from_pairs(wqkv: torch.Tensor, bqkv: torch.Tensor | None, head_norms: list[Norm | None],
                       cfg: ModelConfig, rotary_dims: int
                       ) -> tuple[torch.Tensor, torch.Tensor | None, list[Norm | None]]:
    """Cohere, GLM, Helium and ERNIE rotate interleaved pairs (dims 2i, 2i + 1 of a head by frequency i, over its
    first rotary_dims); the compact module's rope rotates halves (i, i + R/2). Reordering those dims of each query and
    key head evens first, odds after (in the projection rows, and in the per-head norm weights, which see each dim
    with its own weight) turns one into the other: every rotated pair gets the same products and sums, and q.k is a
    sum over the same pairs. The unrotated dims and V are untouched."""
    D, R = cfg.head_dim, rotary_dims
    order = torch.cat([torch.arange(0, R, 2), torch.arange(1, R, 2), torch.arange(R, D)])
    qk_rows = (cfg.num_heads + cfg.num_kv_heads) * D
    rows = torch.cat([(torch.arange(qk_rows).view(-1, D)[:, order]).flatten(), torch.arange(qk_rows, wqkv.shape[0])])
    norms = [None if n is None else Norm(n.weight[..., order], None if n.bias is None else n.bias[..., order], n.eps)
             for n in head_norms]
    return wqkv[rows], None if bqkv is None else bqkv[rows], norms


def _residual_norm(norm: nn.Module, config: object, dtype: torch.dtype) -> Norm:
    """A residual-stream norm of HF's model: an RMSNorm, or a LayerNorm (StableLM, Cohere's without bias). Gemma's
    RMSNorm scales by (1 + weight) in fp32 before its one cast: in an fp32 model that is the Llama norm with weight
    1 + w, otherwise Norm's weight_in_fp32 order. GPT-OSS's and OLMo's multiply by their weight in fp32 before the
    cast too."""
    if isinstance(norm, nn.LayerNorm):
        bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
        # Nemotron's LayerNorm1P scales by 1 + weight, the sum taken in the weight's own dtype
        weight = norm.weight + 1.0 if config.model_type == "nemotron" else norm.weight
        return Norm(weight.to(dtype), bias.to(dtype), float(norm.eps))
    if config.model_type in COHERE:  # a LayerNorm without bias, computed in fp32 (F.layer_norm's accumulation)
        return Norm(norm.weight.to(dtype), torch.zeros_like(norm.weight, dtype=dtype), float(norm.variance_epsilon))
    eps = float(config.rms_norm_eps)
    if config.model_type in FP32_WEIGHT_NORMS:  # (weight * normalised fp32 row), then one cast
        weight = norm.weight.to(dtype).float()
        return Norm(weight, None, eps) if dtype == torch.float32 else Norm(weight, None, eps, weight_in_fp32=True)
    if config.model_type not in GEMMA_NORMS:
        return Norm(norm.weight.to(dtype), None, eps)
    weight = 1.0 + norm.weight.to(dtype).float()
    return Norm(weight, None, eps) if dtype == torch.float32 else Norm(weight, None, eps, weight_in_fp32=True)


def _head_norm(norm: nn.Module | None, config: object, dtype: torch.dtype) -> Norm | None:
    """A q or k norm of HF's attention module, or None when it has none: an RMSNorm of each head (Qwen3, Gemma 3) or
    of all heads at once (OLMoE, OLMo 2 and 3), or LayerNorms with a weight per head (StableLM's qk_layernorm,
    a list of them; Cohere's use_qk_norm, one [H, D] weight)."""
    if norm is None:
        return None
    if hasattr(norm, "norms"):  # StableLmLayerNormPerHead
        weight = torch.stack([n.weight for n in norm.norms]).to(dtype)
        bias = None if norm.norms[0].bias is None else torch.stack([n.bias for n in norm.norms]).to(dtype)
        return Norm(weight, bias, float(norm.norms[0].eps))
    if config.model_type in COHERE:
        return Norm(norm.weight.to(dtype), None, float(norm.variance_epsilon))
    if config.model_type in GEMMA_NORMS or config.model_type in FP32_WEIGHT_NORMS:
        return _residual_norm(norm, config, dtype)
    return Norm(norm.weight.to(dtype), None, float(norm.variance_epsilon))


def _from_llama(hf_model: nn.Module, dtype: torch.dtype) -> DecoderModel:
    config = hf_model.config
    cfg = _llama_config(config, dtype)
    local = None
    if _has_local_rope(config):  # one rope table per kind of layer
        inv_freq, scaling = _rope_from_hf(hf_model, cfg.head_dim, "full_attention")
        local = _rope_from_hf(hf_model, cfg.head_dim, "sliding_attention")
    elif config.model_type in LOCAL_ROPE:  # one kind of layer only: HF keeps that kind's table
        inv_freq, scaling = _rope_from_hf(hf_model, cfg.head_dim, config.layer_types[0])
    else:
        inv_freq, scaling = _rope_from_hf(hf_model, cfg.head_dim)
    layers = [_llama_layer(layer, i, cfg, config, dtype, 2 * inv_freq.numel())
              for i, layer in enumerate(hf_model.model.layers)]
    embed = hf_model.model.embed_tokens.weight
    tied = hf_model.lm_head.weight.data_ptr() == embed.data_ptr()
    return DecoderModel(cfg, embed.to(dtype), None, layers, _residual_norm(hf_model.model.norm, config, dtype),
                        None if tied else hf_model.lm_head.weight.to(dtype), inv_freq, scaling, local)


def _gpt2_config(config: object) -> ModelConfig:
    heads = config.n_head
    return ModelConfig(
        family="gpt2", vocab_size=config.vocab_size, hidden_size=config.n_embd, num_layers=config.n_layer,
        num_heads=heads, num_kv_heads=heads, head_dim=config.n_embd // heads, norm_eps=config.layer_norm_epsilon,
        max_position_embeddings=config.n_positions, activation=getattr(config, "activation_function", "gelu_new"))


def _gpt2_scale(config: object, index: int, head_dim: int) -> float | None:
    """HF's GPT2Attention scaling; None when it is the default 1/sqrt(head_dim)."""
    by_layer = bool(getattr(config, "scale_attn_by_inverse_layer_idx", False))
    if getattr(config, "scale_attn_weights", True) and not by_layer:
        return None
    scale = head_dim ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
    return scale / float(index + 1) if by_layer else scale


def _gpt2_layer(block: nn.Module, index: int, cfg: ModelConfig, config: object, dtype: torch.dtype) -> Layer:
    def w(conv: nn.Module) -> torch.Tensor:  # Conv1D keeps [in, out]; F.linear wants [out, in]
        return conv.weight.t().to(dtype)

    a, m = block.attn, block.mlp
    return Layer(cfg, Norm(block.ln_1.weight.to(dtype), block.ln_1.bias.to(dtype), cfg.norm_eps),
                 Norm(block.ln_2.weight.to(dtype), block.ln_2.bias.to(dtype), cfg.norm_eps),
                 w(a.c_attn), a.c_attn.bias.to(dtype), w(a.c_proj), a.c_proj.bias.to(dtype),
                 w(m.c_fc), m.c_fc.bias.to(dtype), w(m.c_proj), m.c_proj.bias.to(dtype),
                 _gpt2_scale(config, index, cfg.head_dim))


def _from_gpt2(hf_model: nn.Module, dtype: torch.dtype) -> DecoderModel:
    config, t = hf_model.config, hf_model.transformer
    cfg = _gpt2_config(config)
    layers = [_gpt2_layer(block, i, cfg, config, dtype) for i, block in enumerate(t.h)]
    tied = hf_model.lm_head.weight.data_ptr() == t.wte.weight.data_ptr()
    return DecoderModel(cfg, t.wte.weight.to(dtype), t.wpe.weight.to(dtype), layers,
                        Norm(t.ln_f.weight.to(dtype), t.ln_f.bias.to(dtype), cfg.norm_eps),
                        None if tied else hf_model.lm_head.weight.to(dtype), None)


def _neox_layer(block: nn.Module, cfg: ModelConfig, config: object, dtype: torch.dtype) -> Layer:
    """A GPT-NeoX layer. Its query_key_value rows hold each head's q, k and v in turn ([H, 3, D, hidden]): regrouped
    to the compact module's [3, H, D, hidden] (all queries, then all keys, then all values)."""
    a, m = block.attention, block.mlp
    heads, D = cfg.num_heads, cfg.head_dim

    def regroup(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(heads, 3, D, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    qkv = a.query_key_value
    return Layer(cfg, _residual_norm(block.input_layernorm, config, dtype),
                 _residual_norm(block.post_attention_layernorm, config, dtype),
                 regroup(qkv.weight).to(dtype), None if qkv.bias is None else regroup(qkv.bias).to(dtype),
                 a.dense.weight.to(dtype), None if a.dense.bias is None else a.dense.bias.to(dtype),
                 m.dense_h_to_4h.weight.to(dtype), m.dense_h_to_4h.bias.to(dtype), m.dense_4h_to_h.weight.to(dtype),
                 m.dense_4h_to_h.bias.to(dtype), None, parallel=bool(config.use_parallel_residual))


def _from_neox(hf_model: nn.Module, dtype: torch.dtype) -> DecoderModel:
    config, base = hf_model.config, hf_model.gpt_neox
    heads = config.num_attention_heads
    cfg = ModelConfig(family="gpt_neox", vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                      num_layers=config.num_hidden_layers, num_heads=heads, num_kv_heads=heads,
                      head_dim=config.hidden_size // heads, norm_eps=config.layer_norm_eps,
                      max_position_embeddings=context_limit(config), activation=config.hidden_act)
    inv_freq, scaling = _rope_from_hf(hf_model, cfg.head_dim)
    layers = [_neox_layer(block, cfg, config, dtype) for block in base.layers]
    tied = hf_model.lm_head.weight.data_ptr() == base.embed_in.weight.data_ptr()
    return DecoderModel(cfg, base.embed_in.weight.to(dtype), None, layers,
                        _residual_norm(base.final_layer_norm, config, dtype),
                        None if tied else hf_model.lm_head.weight.to(dtype), inv_freq, scaling)


def _plain_mlp_config(config: object, family: str) -> ModelConfig:
    """ModelConfig of a rotary model with an act(x W1) W2 MLP (Phi, StarCoder2)."""
    heads = config.num_attention_heads
    return ModelConfig(family=family, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                       num_layers=config.num_hidden_layers, num_heads=heads,
                       num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                       head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                       norm_eps=getattr(config, "layer_norm_eps", None) or config.norm_epsilon,
                       max_position_embeddings=context_limit(config), activation=config.hidden_act)


def _qkv(a: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused q/k/v weight of separate q_proj, k_proj and v_proj, and their fused bias (None without)."""
    weight = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).to(dtype)
    bias = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).to(dtype)
    return weight, bias


def _maybe(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _phi_layer(layer: nn.Module, cfg: ModelConfig, config: object, dtype: torch.dtype) -> Layer:
    """A Phi (1, 1.5, 2) layer: one LayerNorm feeding attention and MLP in parallel, biases everywhere, rotary
    embeddings on the first partial_rotary_factor of each head, optional LayerNorms of each q and k head."""
    a, m = layer.self_attn, layer.mlp
    norm = _residual_norm(layer.input_layernorm, config, dtype)
    head_norms = [None, None]
    if a.qk_layernorm:  # one LayerNorm over head_dim shared by all heads
        head_norms = [Norm(n.weight.to(dtype), n.bias.to(dtype), float(n.eps)) for n in (a.q_layernorm, a.k_layernorm)]
    return Layer(cfg, norm, norm, *_qkv(a, dtype), a.dense.weight.to(dtype), _maybe(a.dense.bias, dtype),
                 m.fc1.weight.to(dtype), _maybe(m.fc1.bias, dtype), m.fc2.weight.to(dtype), _maybe(m.fc2.bias, dtype),
                 None, *head_norms, parallel=True)


def _starcoder2_layer(layer: nn.Module, cfg: ModelConfig, config: object, dtype: torch.dtype) -> Layer:
    """A StarCoder2 layer: Mistral's attention (sliding window from the config) with biases, LayerNorms, and a
    c_fc / c_proj MLP with biases."""
    a, m = layer.self_attn, layer.mlp
    return Layer(cfg, _residual_norm(layer.input_layernorm, config, dtype),
                 _residual_norm(layer.post_attention_layernorm, config, dtype), *_qkv(a, dtype),
                 a.o_proj.weight.to(dtype), _maybe(a.o_proj.bias, dtype), m.c_fc.weight.to(dtype),
                 _maybe(m.c_fc.bias, dtype), m.c_proj.weight.to(dtype), _maybe(m.c_proj.bias, dtype), None,
                 window=_layer_window(a, config))


def _from_rotary_plain(hf_model: nn.Module, dtype: torch.dtype) -> DecoderModel:
    """Phi and StarCoder2: rotary models with LayerNorms and plain MLPs under transformers' model.layers layout."""
    config, base = hf_model.config, hf_model.model
    phi = config.model_type == "phi"
    cfg = _plain_mlp_config(config, config.model_type)
    inv_freq, scaling = _rope_from_hf(hf_model, cfg.head_dim)
    convert = _phi_layer if phi else _starcoder2_layer
    layers = [convert(layer, cfg, config, dtype) for layer in base.layers]
    embed, head = base.embed_tokens.weight, hf_model.lm_head
    tied = head.weight.data_ptr() == embed.data_ptr()
    return DecoderModel(cfg, embed.to(dtype), None, layers,
                        _residual_norm(base.final_layernorm if phi else base.norm, config, dtype),
                        None if tied else head.weight.to(dtype), inv_freq, scaling,
                        lm_head_bias=_maybe(head.bias, dtype))


@torch.no_grad()
def from_hf(hf_model: nn.Module, dtype: torch.dtype | None = None, device: torch.device | str | None = None
            ) -> DecoderModel:
    """Convert a loaded HF *ForCausalLM of a supported architecture into a DecoderModel (weights copied/fused)."""
    _check_architecture(hf_model.config)
    dtype = dtype or hf_model.get_input_embeddings().weight.dtype
    convert = {"gpt2": _from_gpt2, "gpt_neox": _from_neox, "phi": _from_rotary_plain,
               "starcoder2": _from_rotary_plain}.get(hf_model.config.model_type, _from_llama)
    model = convert(hf_model, dtype)
    return model.to(device) if device is not None else model
