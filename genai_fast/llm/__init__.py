"""genai_fast.llm: a lean generator for Llama-family models on genai_fast's fused attention.

    engine = genai_fast.llm.load("SmolLM2-135M-Instruct.Q4_1.gguf")
    out = engine.generate("What is the capital of England?", max_new_tokens=32)
    out.ids, out.text, out.stats
"""

from genai_fast.llm.engine import Engine, GenerationResult, load
from genai_fast.llm.model import SUPPORTED_ARCHITECTURES, LlamaModel, from_hf

__all__ = ["SUPPORTED_ARCHITECTURES", "Engine", "GenerationResult", "LlamaModel", "from_hf", "load"]
