"""Public ops: one module per op (public function, custom op, reference, backend registrations)."""

from genai_fast.ops import flops as _flops  # noqa: F401  (registers FlopCounterMode formulas)
from genai_fast.ops.attention import (
    attention_with_kvcache,
    attention_with_kvcache_reference,
    scaled_dot_product_attention,
    scaled_dot_product_attention_reference,
)
from genai_fast.ops.conv2d import conv2d, conv2d_reference
from genai_fast.ops.geglu import geglu, geglu_reference
from genai_fast.ops.gguf_linear import gguf_dequantize, gguf_linear, gguf_linear_reference
from genai_fast.ops.group_norm import group_norm, group_norm_reference
from genai_fast.ops.guided_update import UpdateCoefficients, guided_update, guided_update_reference
from genai_fast.ops.linear import linear, linear_reference
from genai_fast.ops.moe import moe_experts, moe_experts_reference
from genai_fast.ops.rms_norm import rms_norm, rms_norm_reference
from genai_fast.ops.word2vec_ops import cbow_step, sgns_step, word2vec_step_reference

__all__ = [
    "UpdateCoefficients",
    "attention_with_kvcache",
    "attention_with_kvcache_reference",
    "cbow_step",
    "conv2d",
    "conv2d_reference",
    "geglu",
    "geglu_reference",
    "gguf_dequantize",
    "gguf_linear",
    "gguf_linear_reference",
    "group_norm",
    "group_norm_reference",
    "guided_update",
    "guided_update_reference",
    "linear",
    "linear_reference",
    "moe_experts",
    "moe_experts_reference",
    "rms_norm",
    "rms_norm_reference",
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_reference",
    "sgns_step",
    "word2vec_step_reference",
]
