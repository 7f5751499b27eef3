"""Prompts -> images with a trained model: the noise schedule from config.json, any genai_fast sampler,
classifier-free guidance against the empty caption, seeded noise; and textual-inversion embedding files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genai_fast.diffusion.samplers import SAMPLER_NAMES, Sampler, make_sampler
from genai_fast.diffusion.sampling import sample
from genai_fast.diffusion.text2image.data import from_model_space
from genai_fast.diffusion.text2image.model import TextToImage, read_safetensors, save_safetensors
from genai_fast.diffusion.text2image.tokenizer import check_new_token

EMBEDDING_KIND = "genai_fast.textual_inversion"


# Pixel space: keep each step's x0 estimate inside the data range [-1, 1]. DDPM and DDIM clip by default
# (clip_sample); DPM-Solver++ needs thresholding switched on (diffusers' advice for pixel-space models):
# without it the x0 = (x - sigma * eps) / alpha of the first, noisiest steps amplifies the model's error
# ~150x (alpha_999 = 0.0064 on the linear schedule) and many samples end as speckle or black.
# (with sample_max_value 1 the dynamic threshold is a plain clip). UniPC and DPM-Solver singlestep, also in data
# prediction, likewise; LCM clips its x0 when asked. Euler, Euler ancestral, Heun, PNDM, LMS and KDPM2 have no
# such option.
PIXEL_SPACE_OPTIONS = {"dpm++": {"thresholding": True, "sample_max_value": 1.0},
                       "dpm++_single": {"thresholding": True, "sample_max_value": 1.0},
                       "unipc": {"thresholding": True, "sample_max_value": 1.0},
                       "lcm": {"clip_sample": True}}


def make_model_sampler(model: TextToImage, name: str) -> Sampler:
    """Sampler `name` over the model's training noise schedule, x0 limited to the pixel range where it can be."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"--sampler: unknown sampler {name!r}; expected one of {', '.join(SAMPLER_NAMES)}")
    return make_sampler(name, **model.config.schedule, **PIXEL_SPACE_OPTIONS.get(name, {}))


def check_steps(steps: int, option: str = "--steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"{option}: expected a positive integer, got {steps!r}")
    return steps


@torch.no_grad()
def generate(model: TextToImage, prompts: Sequence[str], sampler: str = "dpm++", steps: int = 20,
             guidance: float = 3.0, seed: int = 0, batch_size: int = 64, progress: bool = True,
             negative_prompt: str = "") -> np.ndarray:
    """uint8 images [len(prompts), image_size, image_size]; the same seed gives the same images.

    Classifier-free guidance steers away from `negative_prompt` (the empty caption by default, as in
    training's dropped captions; diffusers' `negative_prompt`).

    The initial noise for all prompts is drawn up front from one CPU generator seeded with `seed`, so an
    image depends on its position and the seed, not on batch_size.
    """
    check_steps(steps)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    if not isinstance(negative_prompt, str):
        raise TypeError(f"negative_prompt: expected a string, got {type(negative_prompt).__name__}")
    cfg = model.config
    device = next(model.unet.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), 1, cfg.sample_size, cfg.sample_size, generator=generator)
    sampler_obj = make_model_sampler(model, sampler)
    sampler_obj.set_timesteps(steps)
    negative = model.encode([negative_prompt])  # [1, L, width], once for every chunk
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        cond = model.encode(chunk)
        uncond = negative.expand(len(chunk), -1, -1)
        latents = noise[start:start + len(chunk)].to(device) * sampler_obj.init_noise_sigma
        x = sample(model.unet, sampler_obj, latents, cond, steps, guidance_scale=float(guidance),
                   negative_encoder_hidden_states=uncond, generator=generator, progress=progress)
        out.append(from_model_space(x.clamp(-1, 1), cfg.image_size, cfg.image_size))
    return np.concatenate(out)


def check_prompt_tokens(model: TextToImage, prompt: str) -> None:
    """A "<placeholder>" in a prompt that no loaded embedding defines is an error, not silent BPE text."""
    import re

    for token in re.findall(r"<[^<>\s]+>", prompt):
        if token.lower() not in model.tokenizer.added_tokens and token not in ("<|startoftext|>", "<|endoftext|>"):
            known = ", ".join(model.tokenizer.added_tokens) or "none loaded (use --embeddings)"
            raise ValueError(f"prompt: unknown token {token!r}; known placeholder tokens: {known}")


# ---------------------------------------------------------------- embedding files


def save_embedding(path: str | os.PathLike, token: str, vector: torch.Tensor, meta: dict[str, str]) -> None:
    """One learned token: tensor "embedding" [width] (or [n, width] for a multi-vector token) and metadata
    naming the token."""
    check_new_token(token)
    if vector.dim() not in (1, 2):
        raise ValueError(f"vector: expected [width] or [n, width], got {tuple(vector.shape)}")
    save_safetensors(path, {"embedding": vector.detach().float()}, {"kind": EMBEDDING_KIND, "token": token, **meta})


def read_embedding(path: str | os.PathLike, width: int) -> tuple[str, torch.Tensor]:
    """(token, embedding [width] or [n, width]) from a file written by save_embedding, checked against a text
    encoder of `width` (so a caller can reject a bad file before any sampling)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--embeddings {path}: no such file")
    tensors, meta = read_safetensors(path)
    if meta.get("kind") != EMBEDDING_KIND or "embedding" not in tensors or "token" not in meta:
        raise ValueError(f"--embeddings {path}: not a textual inversion file written by `genai-fast diffusion invert`")
    vector = tensors["embedding"]
    if vector.dim() not in (1, 2) or vector.shape[-1] != width or vector.numel() == 0:
        raise ValueError(f"--embeddings {path}: embedding has shape {tuple(vector.shape)}, this model's text "
                         f"encoder needs ({width},) or (n, {width})")
    if not vector.is_floating_point() or not bool(torch.isfinite(vector).all()):
        # a diverged inversion: its images would be noise cast to uint8, not an error
        raise ValueError(f"--embeddings {path}: the embedding is not finite float values (a diverged inversion?)")
    return meta["token"], vector


def load_embedding(model: TextToImage, path: str | os.PathLike) -> str:
    """Add the token stored in `path` to the model; returns the token."""
    token, vector = read_embedding(path, model.text_encoder.config.width)
    model.add_token(token, vector)
    return token
