"""genai_fast.llm: a lean generator for Llama-family and GPT-2 models on genai_fast's fused attention.

    engine = genai_fast.llm.load("SmolLM2-135M-Instruct.Q4_1.gguf")
    out = engine.generate("What is the capital of England?", max_new_tokens=32)
    out.ids, out.text, out.stats
    outs = engine.generate(["Hi!", "Name three rivers."], max_new_tokens=32)  # a batch: one result per prompt
    for piece in engine.stream("Tell me a joke.", max_new_tokens=64):
        print(piece, end="", flush=True)
"""

from genai_fast.llm.engine import Engine, GenerationResult, Loglikelihood, TextStream, decode_traffic_bytes, load
from genai_fast.llm.model import SUPPORTED_ARCHITECTURES, DecoderModel, LlamaModel, from_hf

__all__ = ["SUPPORTED_ARCHITECTURES", "DecoderModel", "Engine", "GenerationResult", "LlamaModel", "Loglikelihood",
           "TextStream", "decode_traffic_bytes", "from_hf", "load"]
