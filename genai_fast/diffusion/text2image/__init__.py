"""Text-to-image end to end on Fashion-MNIST (or scikit-learn's digits): CLIP BPE tokenizer, a small
CLIP-style text encoder, a pixel-space diffusers U-Net run through genai_fast's kernels, training,
sampling, textual inversion and classifier-based evaluation. CLI: `genai-fast diffusion ...`.

    from genai_fast.diffusion.text2image import load_model, generate
    model = load_model("runs/fm")
    images = generate(model, ["a photo of a sneaker"] * 4, sampler="dpm++", steps=20, guidance=3.0, seed=0)
"""

from genai_fast.diffusion.text2image.model import ModelConfig, TextToImage, load_model
from genai_fast.diffusion.text2image.pipeline import generate, load_embedding
from genai_fast.diffusion.text2image.tokenizer import CLIPTokenizer

__all__ = ["CLIPTokenizer", "ModelConfig", "TextToImage", "generate", "load_embedding", "load_model"]
