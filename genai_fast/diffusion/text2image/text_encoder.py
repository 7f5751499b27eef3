"""A small CLIP-style text encoder: token + position embeddings, pre-LayerNorm causal transformer blocks
whose attention is genai_fast.scaled_dot_product_attention, and optionally CLIP's final LayerNorm. The
U-Net attends to every position's output (as Stable Diffusion does with CLIP's last hidden state).

New models leave the final LayerNorm out (`final_norm=False`): it gives every output row one norm, and a
held-out class needs rows larger than that (README, "Text to image"). Without it the residual stream is the
output, so a learned token's own rows can grow as far as the U-Net needs.

Tokens added for textual inversion live in their own parameter `added_embeddings` [n_added, width], so
training one new token can leave every other weight frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genai_fast.ops.attention import scaled_dot_product_attention


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 49408  # CLIP's BPE vocabulary
    max_length: int = 16
    width: int = 128
    layers: int = 2
    heads: int = 4
    final_norm: bool = True  # CLIP's; config files from before the option had it, so it stays the default here

    def __post_init__(self) -> None:
        for key in ("vocab_size", "max_length", "width", "layers", "heads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"text encoder {key}: expected a positive int, got {value!r}")
        if not isinstance(self.final_norm, bool):
            raise ValueError(f"text encoder final_norm: expected true or false, got {self.final_norm!r}")
        if self.width % self.heads:
            raise ValueError(f"text encoder width {self.width} is not a multiple of heads {self.heads}")

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, W] -> [B, L, W]."""
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attn = scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, L, W/H]
        x = x + self.proj(attn.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token ids [B, L] -> hidden states [B, L, width]."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.added_embeddings = nn.Parameter(torch.zeros(0, config.width))
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.width))
        self.blocks = nn.ModuleList(_Block(config.width, config.heads) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(config.width) if config.final_norm else nn.Identity()
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size + self.added_embeddings.shape[0]

    def add_embeddings(self, vectors: torch.Tensor) -> None:
        """Append rows [n, width] for newly added tokens (their ids follow the existing ones)."""
        if vectors.dim() != 2 or vectors.shape[1] != self.config.width:
            raise ValueError(f"embeddings: expected [n, {self.config.width}], got {tuple(vectors.shape)}")
        rows = torch.cat([self.added_embeddings.detach(), vectors.to(self.added_embeddings)])
        self.added_embeddings = nn.Parameter(rows, requires_grad=self.added_embeddings.requires_grad)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape[1] > self.config.max_length:
            raise ValueError(f"ids: expected [B, L] with L <= {self.config.max_length}, got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"ids: expected token ids in [0, {self.vocab_size}), got [{int(ids.min())}, "
                             f"{int(ids.max())}] (an unknown added token?)")
        table = self.token_embedding.weight
        if self.added_embeddings.shape[0]:
            table = torch.cat([table, self.added_embeddings])
        x = F.embedding(ids, table) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)
