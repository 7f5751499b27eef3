"""Textual inversion: learn one new token embedding from a few images, every other weight frozen.

The gradient reaches the new embedding row through the U-Net's cross-attention (the genai_fast-patched
U-Net, whose attention has a backward) and the text encoder; AdamW updates that row only. With
num_vectors > 1 the token stands for that many consecutive input positions, each its own learned row
(the multi-vector variant of diffusers' textual inversion script).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from genai_fast.diffusion.samplers import make_sampler
from genai_fast.diffusion.text2image.data import TEMPLATES, load_image_folder, to_model_space
from genai_fast.diffusion.text2image.model import TextToImage
from genai_fast.diffusion.text2image.pipeline import check_steps, save_embedding
from genai_fast.diffusion.text2image.tokenizer import check_new_token
from genai_fast.diffusion.text2image.train import denoising_loss

MIN_IMAGES, MAX_IMAGES = 3, 10


@dataclass
class InvertOptions:
    steps: int = 900  # with lr 3e-2: one vector 15-17.5% on the held-out class where 300 at 5e-3 gave 7.5%
    batch_size: int = 16
    lr: float = 3e-2
    init_word: str = "object"
    num_vectors: int = 1
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_steps(self.steps)
        check_steps(self.batch_size, "--batch-size")
        check_steps(self.num_vectors, "--num-vectors")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr: expected a positive finite learning rate, got {self.lr}")


def initial_vector(model: TextToImage, word: str) -> torch.Tensor:
    """Mean embedding of the BPE tokens of `word` [width] (a sensible starting point)."""
    ids = model.tokenizer.encode_text(word)
    if not ids:
        raise ValueError(f"--init-word: {word!r} has no tokens")
    return model.text_encoder.token_embedding.weight.detach()[ids].mean(0)


def max_vectors(model: TextToImage) -> int:
    """How many vectors a token can have so that every caption template still fits the text encoder."""
    longest = max(len(model.tokenizer.encode_text(t.format(""))) for t in TEMPLATES)
    return model.tokenizer.max_length - 2 - longest


def invert(model: TextToImage, images: np.ndarray, token: str, options: InvertOptions | None = None
           ) -> tuple[torch.Tensor, list[float]]:
    """Learn `token` from uint8 images [N, H, W]; returns (embedding [width], or [num_vectors, width] when
    num_vectors > 1; loss per step).

    The token is added to `model` (tokenizer and text encoder), so the model samples with it afterwards.
    """
    options = options or InvertOptions()
    check_new_token(token)
    if token.lower() in model.tokenizer.added_tokens:
        raise ValueError(f"--token: {token!r} is already defined in this model")
    cfg = model.config
    device = next(model.unet.parameters()).device
    for module in (model.unet, model.text_encoder):
        module.requires_grad_(False)
    room = max_vectors(model)
    if options.num_vectors > room:
        raise ValueError(f"--num-vectors: expected at most {room} (what the longest caption template leaves of "
                         f"the text encoder's {cfg.text['max_length']} positions), got {options.num_vectors}")
    model.add_token(token, initial_vector(model, options.init_word).expand(options.num_vectors, -1))
    model.text_encoder.added_embeddings.requires_grad_(True)
    row = model.text_encoder.added_embeddings.shape[0] - options.num_vectors
    optimizer = torch.optim.AdamW([model.text_encoder.added_embeddings], lr=options.lr, weight_decay=0.0)
    x_all = to_model_space(images, cfg.sample_size)
    ids_all = model.token_ids([t.format(token) for t in TEMPLATES]).to(device)
    alphas_cumprod = make_sampler("ddpm", **cfg.schedule).alphas_cumprod
    g = torch.Generator().manual_seed(options.seed)
    losses = []
    for _ in tqdm(range(options.steps), disable=not options.progress, desc=f"inverting {token}", unit="step"):
        pick = torch.randint(len(x_all), (options.batch_size,), generator=g)
        x0 = x_all[pick].to(device)
        ids = ids_all[torch.randint(len(TEMPLATES), (options.batch_size,), generator=g)]
        t = torch.randint(len(alphas_cumprod), (options.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g).to(device)
        loss = denoising_loss(model.unet, x0, noise, t, alphas_cumprod, model.text_encoder(ids))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad = model.text_encoder.added_embeddings.grad
        grad[:row].zero_()  # earlier added tokens (if any) stay as they are
        optimizer.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):  # a NaN embedding would be saved and sample as noise
            raise FloatingPointError(f"textual inversion diverged at step {len(losses)} (loss {losses[-1]}); "
                                     f"lower --lr")
    model.text_encoder.added_embeddings.requires_grad_(False)
    learned = model.text_encoder.added_embeddings.detach()[row:].clone()
    return (learned[0] if options.num_vectors == 1 else learned), losses


def invert_folder(model: TextToImage, folder: str | os.PathLike, token: str, out: str | os.PathLike,
                  options: InvertOptions | None = None) -> list[float]:
    """Read 3-10 images from `folder`, learn `token`, write its embedding to `out` (safetensors)."""
    options = options or InvertOptions()
    check_new_token(token)
    size = model.config.image_size
    images = load_image_folder(folder, size, size, MIN_IMAGES, MAX_IMAGES)
    vector, losses = invert(model, images, token, options)
    save_embedding(out, token, vector, {"init_word": options.init_word, "steps": str(options.steps),
                                        "images": str(len(images)), "width": str(vector.shape[-1]),
                                        "num_vectors": str(options.num_vectors)})
    return losses
