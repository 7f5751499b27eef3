"""A compact Llama-family decoder built from a Hugging Face model's weights.

Weights are converted once at load time: q/k/v projections fused into one matrix per layer, gate/up into
another, so a decode step runs two matmuls fewer per projection group. The KV cache is preallocated as
[B, H_kv, S_max, D] per layer; prefill attends through `genai_fast.scaled_dot_product_attention` and each
decode step through `genai_fast.attention_with_kvcache`, which appends the new K/V in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genai_fast.ops.attention import attention_with_kvcache, scaled_dot_product_attention

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
# Rope variants whose frequencies depend on the sequence length at run time; a static table cannot match them.
_DYNAMIC_ROPE = ("dynamic", "longrope")


@dataclass(frozen=True)
class LlamaConfig:
    """The few hyperparameters the compact module needs."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back before the weight, exactly as HF's LlamaRMSNorm."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., hidden] -> [..., hidden]."""
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, S, D]; cos, sin: [S, D] -> [B, H, S, D] (HF's rotate-half convention)."""
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    """GQA attention with a fused QKV projection and a static KV cache."""

    def __init__(self, cfg: LlamaConfig, wqkv: torch.Tensor, bqkv: torch.Tensor | None, wo: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.wqkv = nn.Parameter(wqkv, requires_grad=False)
        self.bqkv = None if bqkv is None else nn.Parameter(bqkv, requires_grad=False)
        self.wo = nn.Parameter(wo, requires_grad=False)
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: int,
                seqlens: torch.Tensor) -> torch.Tensor:
        """x: [B, S, hidden] at positions pos .. pos+S-1; cos/sin: [S, D] -> [B, S, hidden]."""
        cfg, (B, S, _) = self.cfg, x.shape
        qkv = nn.functional.linear(x, self.wqkv, self.bqkv)
        nq, nkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        q = qkv[..., :nq].view(B, S, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = qkv[..., nq:nq + nkv].view(B, S, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = qkv[..., nq + nkv:].view(B, S, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if pos == 0:
            # Prefill: the cache is empty, so attend over the fresh K/V directly and store them for decode.
            self.k_cache[:, :, :S] = k
            self.v_cache[:, :, :S] = v
            out = scaled_dot_product_attention(q, k, v, is_causal=S > 1, enable_gqa=cfg.num_heads != cfg.num_kv_heads)
        else:
            out = attention_with_kvcache(q, self.k_cache, self.v_cache, seqlens, k.contiguous(), v.contiguous())
        return nn.functional.linear(out.transpose(1, 2).reshape(B, S, nq), self.wo)


class MLP(nn.Module):
    """SwiGLU with gate and up fused into one [2 * intermediate, hidden] matrix."""

    def __init__(self, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> None:
        super().__init__()
        self.w_gate_up = nn.Parameter(w_gate_up, requires_grad=False)
        self.w_down = nn.Parameter(w_down, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, S, hidden] -> [B, S, hidden]."""
        gate, up = nn.functional.linear(x, self.w_gate_up).chunk(2, dim=-1)
        return nn.functional.linear(nn.functional.silu(gate) * up, self.w_down)


class Block(nn.Module):
    """Pre-norm decoder layer."""

    def __init__(self, attn: Attention, mlp: MLP, norm1: RMSNorm, norm2: RMSNorm) -> None:
        super().__init__()
        self.attn, self.mlp, self.norm1, self.norm2 = attn, mlp, norm1, norm2

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: int,
                seqlens: torch.Tensor) -> torch.Tensor:
        """x: [B, S, hidden] -> [B, S, hidden]."""
        x = x + self.attn(self.norm1(x), cos, sin, pos, seqlens)
        return x + self.mlp(self.norm2(x))


class LlamaModel(nn.Module):
    """The whole decoder: embeddings, blocks, final norm, LM head, rope tables and the static KV cache."""

    def __init__(self, cfg: LlamaConfig, embed: torch.Tensor, blocks: list[Block], norm: RMSNorm,
                 lm_head: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Parameter(embed, requires_grad=False)
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        # Tied embeddings share storage with the LM head (no copy).
        self.lm_head = self.embed if cfg.tie_word_embeddings else nn.Parameter(lm_head, requires_grad=False)
        self.register_buffer("inv_freq", inv_freq.to(torch.float32), persistent=False)
        self.attention_scaling = attention_scaling
        self.cache_batch = 0
        self.cache_len = 0

    def allocate_cache(self, batch: int, max_len: int) -> None:
        """(Re)allocate every layer's K/V cache as [batch, H_kv, max_len, D]; reuses it when big enough."""
        if batch == self.cache_batch and max_len <= self.cache_len:
            return
        cfg, dtype, device = self.cfg, self.embed.dtype, self.embed.device
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        for block in self.blocks:
            block.attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            block.attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.cache_batch, self.cache_len = batch, max_len

    def rope(self, pos: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [length, D] for positions pos .. pos+length-1, computed in fp32 as HF does."""
        positions = torch.arange(pos, pos + length, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = self.embed.dtype
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, pos: int, last_only: bool = True) -> torch.Tensor:
        """ids: [B, S] at positions pos .. pos+S-1 -> logits [B, V] (last position) or [B, S, V].

        pos == 0 starts a new sequence (prefill); pos > 0 appends to the cache (decode)."""
        B, S = ids.shape
        if B != self.cache_batch or pos + S > self.cache_len:
            raise ValueError(f"KV cache overflow: positions {pos}..{pos + S - 1} for batch {B} do not fit the "
                             f"allocated cache of {self.cache_len} positions for batch {self.cache_batch}")
        cos, sin = self.rope(pos, S)
        seqlens = torch.full((B,), pos, dtype=torch.int32, device=ids.device)
        x = nn.functional.embedding(ids, self.embed)
        for block in self.blocks:
            x = block(x, cos, sin, pos, seqlens)
        x = self.norm(x[:, -1:] if last_only else x)
        logits = nn.functional.linear(x, self.lm_head)
        return logits[:, -1] if last_only else logits


def _check_architecture(config: object) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {model_type!r}: genai_fast.llm supports "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported activation {config.hidden_act!r}: genai_fast.llm supports silu (SwiGLU)")


def _config_from_hf(config: object) -> LlamaConfig:
    heads = config.num_attention_heads
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
        num_heads=heads, num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        rms_norm_eps=config.rms_norm_eps, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False)))


def _rope_from_hf(hf_model: nn.Module) -> tuple[torch.Tensor, float]:
    """Take the inverse frequencies HF itself computed (rope_theta and any static scaling already applied)."""
    rotary = hf_model.model.rotary_emb
    if getattr(rotary, "rope_type", "default") in _DYNAMIC_ROPE:
        raise ValueError(f"unsupported rope type {rotary.rope_type!r}: its frequencies change with the length")
    return rotary.inv_freq.detach().clone(), float(getattr(rotary, "attention_scaling", 1.0))


def _convert_layer(layer: nn.Module, cfg: LlamaConfig, dtype: torch.dtype) -> Block:
    a, m = layer.self_attn, layer.mlp
    wqkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).to(dtype)
    bqkv = None
    if cfg.qkv_bias and a.q_proj.bias is not None:
        bqkv = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).to(dtype)
    attn = Attention(cfg, wqkv.contiguous(), bqkv, a.o_proj.weight.detach().to(dtype).clone())
    mlp = MLP(torch.cat([m.gate_proj.weight, m.up_proj.weight]).to(dtype).contiguous(),
              m.down_proj.weight.detach().to(dtype).clone())
    return Block(attn, mlp, RMSNorm(layer.input_layernorm.weight.to(dtype), cfg.rms_norm_eps),
                 RMSNorm(layer.post_attention_layernorm.weight.to(dtype), cfg.rms_norm_eps))


@torch.no_grad()
def from_hf(hf_model: nn.Module, dtype: torch.dtype | None = None, device: torch.device | str | None = None
            ) -> LlamaModel:
    """Convert a loaded HF *ForCausalLM of a supported architecture into a LlamaModel (weights copied/fused)."""
    _check_architecture(hf_model.config)
    cfg = _config_from_hf(hf_model.config)
    dtype = dtype or hf_model.model.embed_tokens.weight.dtype
    inv_freq, scaling = _rope_from_hf(hf_model)
    blocks = [_convert_layer(layer, cfg, dtype) for layer in hf_model.model.layers]
    model = LlamaModel(cfg, hf_model.model.embed_tokens.weight.detach().to(dtype).clone(), blocks,
                       RMSNorm(hf_model.model.norm.weight.to(dtype), cfg.rms_norm_eps),
                       hf_model.lm_head.weight.detach().to(dtype).clone(), inv_freq, scaling)
    return model.to(device) if device is not None else model
