"""genai_fast: fast, reference-checked kernels for generative AI behind one PyTorch API.

Every public op dispatches to the fastest backend that can run its inputs (Triton, CUDA, C++, and the
PyTorch reference last); `backend=` forces one, GENAI_FAST_BACKEND=torch forces the reference.
"""

from genai_fast.backends.dispatch import BACKEND_NAMES, BackendNotSupportedError
from genai_fast.info import info
from genai_fast.ops import (
    UpdateCoefficients,
    attention_with_kvcache,
    attention_with_kvcache_reference,
    conv2d,
    conv2d_reference,
    geglu,
    geglu_reference,
    gguf_dequantize,
    gguf_linear,
    gguf_linear_reference,
    group_norm,
    group_norm_reference,
    guided_update,
    guided_update_reference,
    linear,
    linear_reference,
    moe_experts,
    moe_experts_reference,
    rms_norm,
    rms_norm_reference,
    scaled_dot_product_attention,
    scaled_dot_product_attention_reference,
)

__version__ = "0.1.0"

__all__ = [
    "BACKEND_NAMES",
    "BackendNotSupportedError",
    "UpdateCoefficients",
    "__version__",
    "attention_with_kvcache",
    "attention_with_kvcache_reference",
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
    "info",
    "linear",
    "linear_reference",
    "moe_experts",
    "moe_experts_reference",
    "rms_norm",
    "rms_norm_reference",
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_reference",
]
