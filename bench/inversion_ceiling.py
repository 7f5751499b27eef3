"""Textual inversion diagnosis: how much of a held-out class can a frozen model draw from one learned token,
and how much from text states optimised without the text encoder in the way?

    python bench/inversion_ceiling.py MODEL_DIR IMAGES_DIR --class "ankle boot" [--steps 300]
        [--context-steps N] [--context-start PROMPT] [--rows FIRST:LAST] [--encoder-norm] [--samples 40]
        [--guidance 3 5] [--json PATH]

Both sides are scored by the model folder's eval classifier (`genai-fast diffusion eval` trains and caches
it) on DPM-Solver++ 20-step samples from the same seeded noise:

- token: `genai_fast.diffusion.text2image.invert` (one new embedding row, everything else frozen);
- free context: the whole [max_length, width] cross-attention input, started from the text states of
  --context-start and optimised directly with the same loss. Not textual inversion: a probe of what the
  frozen U-Net draws under any text, which says whether the token or the U-Net is the limit. --rows frees
  only rows FIRST..LAST (inclusive; the others keep --context-start's states), to see which rows matter;
- free context at the encoder's norm: the same states with every row rescaled to the norm of the text
  encoder's output rows. A final LayerNorm gives every encoder row (nearly) one norm, so a token can only
  ever produce states of that norm; this side says how much of the free context's result survives that.
  With --encoder-norm the free rows are held at that norm while they are optimised (directions only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from genai_fast.diffusion.samplers import make_sampler
from genai_fast.diffusion.sampling import sample
from genai_fast.diffusion.text2image.data import (
    class_index,
    class_names,
    from_model_space,
    load_image_folder,
    to_model_space,
)
from genai_fast.diffusion.text2image.evaluate import _predict, load_or_train_classifier
from genai_fast.diffusion.text2image.invert import InvertOptions, invert
from genai_fast.diffusion.text2image.model import TextToImage, load_model
from genai_fast.diffusion.text2image.pipeline import make_model_sampler
from genai_fast.diffusion.text2image.train import denoising_loss
from genai_fast.io import atomic_write_text


def at_row_norm(context: torch.Tensor, norm: float) -> torch.Tensor:
    """`context` [..., L, width] with every row rescaled to Euclidean norm `norm` (directions kept)."""
    return context * (norm / context.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def optimise_context(model: TextToImage, images: np.ndarray, steps: int, start: str = "a photo of", lr: float = 1e-2,
                     batch_size: int = 16, seed: int = 0, rows: tuple[int, int] | None = None,
                     row_norm: float | None = None) -> torch.Tensor:
    """Text states [1, L, width] that minimise the denoising loss on `images`, U-Net frozen; with
    rows=(first, last) only those rows (inclusive) change, the rest stay at `start`'s states; with
    row_norm the free rows are held at that Euclidean norm throughout (only their directions are learned)."""
    model.unet.requires_grad_(False)
    x_all = to_model_space(images, model.config.sample_size)
    fixed = model.encode([start]).detach()
    free_rows = torch.zeros(1, fixed.shape[1], 1)
    free_rows[:, slice(rows[0], rows[1] + 1) if rows else slice(None)] = 1
    context = fixed.clone().requires_grad_(True)

    def mixed() -> torch.Tensor:  # the free rows from `context`, the others from `fixed`
        free = context if row_norm is None else at_row_norm(context, row_norm)
        return fixed + free_rows * (free - fixed)

    optimizer = torch.optim.Adam([context], lr=lr)
    alphas_cumprod = make_sampler("ddpm", **model.config.schedule).alphas_cumprod
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="free context", unit="step"):
        x0 = x_all[torch.randint(len(x_all), (batch_size,), generator=g)]
        t = torch.randint(len(alphas_cumprod), (batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = denoising_loss(model.unet, x0, noise, t, alphas_cumprod, mixed().expand(batch_size, -1, -1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mixed().detach()


def row_range(text: str) -> tuple[int, int]:
    """"4:15" -> (4, 15)."""
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST (two row numbers), got {text!r}") from None
    if not 0 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 0 <= FIRST <= LAST, got {text!r}")
    return first, last


@torch.no_grad()
def draw(model: TextToImage, context: torch.Tensor, n: int, guidance: float, seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W] from text states [1, L, width], guided against the empty caption (as `generate`)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, model.config.sample_size, model.config.sample_size, generator=generator)
    sampler = make_model_sampler(model, "dpm++")
    sampler.set_timesteps(20)
    x = sample(model.unet, sampler, noise * sampler.init_noise_sigma, context.expand(n, -1, -1), 20,
               guidance_scale=guidance, negative_encoder_hidden_states=model.encode([""] * n),
               generator=generator, progress=False)
    size = model.config.image_size
    return from_model_space(x.clamp(-1, 1), size, size)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("--class", dest="class_name", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--context-steps", type=int, default=None, help="free-context steps (default: --steps)")
    parser.add_argument("--context-start", default="a photo of", help="prompt whose text states start the free context")
    parser.add_argument("--rows", type=row_range, default=None, help="free only rows FIRST:LAST (inclusive)")
    parser.add_argument("--encoder-norm", action="store_true",
                        help="hold the free rows at the text encoder's row norm while optimising them")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, 5.0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model = load_model(args.model)
    if args.rows and args.rows[1] >= model.config.text["max_length"]:
        parser.error(f"--rows: the text states have rows 0..{model.config.text['max_length'] - 1}")
    target = class_index(model.config.dataset, args.class_name)
    classifier, _ = load_or_train_classifier(args.model, model.config.dataset, model.config.image_size)
    size = model.config.image_size
    images = load_image_folder(args.images, size, size, 3, 10)
    results: dict = {"model": args.model, "class": args.class_name, "images": len(images), "steps": args.steps,
                     "context_steps": args.context_steps or args.steps, "context_start": args.context_start,
                     "rows": list(args.rows) if args.rows else "all", "samples": args.samples, "sides": {}}
    start = time.perf_counter()
    invert(model, images, "<x>", InvertOptions(steps=args.steps))
    token_context = model.encode(["a photo of <x>"])
    token_seconds = time.perf_counter() - start
    encoder_norm = float(model.encode([args.context_start]).norm(dim=-1).mean())
    results["encoder_row_norm"] = round(encoder_norm, 3)
    results["encoder_norm_held"] = args.encoder_norm
    start = time.perf_counter()
    free_context = optimise_context(model, images, args.context_steps or args.steps, args.context_start,
                                    rows=args.rows, row_norm=encoder_norm if args.encoder_norm else None)
    free_seconds = time.perf_counter() - start
    results["free_context_row_norms"] = [round(float(n), 2) for n in free_context[0].norm(dim=-1)]
    classes = len(class_names(model.config.dataset))
    for side, context, seconds in (("token", token_context, token_seconds),
                                   ("free context", free_context, free_seconds),
                                   ("free context at the encoder's norm", at_row_norm(free_context, encoder_norm),
                                    free_seconds)):
        entry = {"seconds": round(seconds, 1)}
        for guidance in args.guidance:
            predicted = _predict(classifier, draw(model, context, args.samples, guidance))
            entry[f"guidance {guidance:g}"] = {"accuracy": float((predicted == target).mean()),
                                               "predicted": np.bincount(predicted, minlength=classes).tolist()}
        results["sides"][side] = entry
        print(side, json.dumps(entry))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
