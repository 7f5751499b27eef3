"""Public ops: one module per op (public function, custom op, reference, backend registrations)."""

from genai_fast.ops.attention import (
    attention_with_kvcache,
    attention_with_kvcache_reference,
    scaled_dot_product_attention,
    scaled_dot_product_attention_reference,
)
from genai_fast.ops.group_norm import group_norm, group_norm_reference

__all__ = [
    "attention_with_kvcache",
    "attention_with_kvcache_reference",
    "group_norm",
    "group_norm_reference",
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_reference",
]
