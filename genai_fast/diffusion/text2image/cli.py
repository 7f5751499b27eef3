"""`genai-fast diffusion {prepare,images,train,sample,invert,eval}`: text-to-image on your own machine.

    genai-fast diffusion prepare                       # Fashion-MNIST from the Debian package, once
    genai-fast diffusion train --out runs/fm           # [--data fashion-mnist|digits] [--steps N] [--resume]
    genai-fast diffusion sample runs/fm "a photo of a sneaker" --sampler dpm++ --steps 20 --guidance 3 \
        --n 16 --seed 0 --out grid.png                 # --out a folder (no .png) writes one PNG per image
    genai-fast diffusion images --class "ankle boot" --n 8 --out boots/   # real images of a class
    genai-fast diffusion invert runs/fm boots/ --token "<my-thing>" --out thing.safetensors
    genai-fast diffusion sample runs/fm "a photo of <my-thing>" --embeddings thing.safetensors --out t.png
    genai-fast diffusion eval runs/fm [--n 10] [--embeddings thing.safetensors --token-class "ankle boot"]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from genai_fast.diffusion.samplers import SAMPLER_NAMES

DEFAULT_HOLDOUT = {"fashion-mnist": "ankle boot", "digits": "nine"}
# `sample --out` names ending in these would otherwise become folders of PNGs
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def add_parser(sub: Any) -> None:
    """Register `diffusion` on the main parser's subparsers object."""
    diffusion = sub.add_parser("diffusion", help="text-to-image: train, sample, textual inversion, evaluate")
    cmds = diffusion.add_subparsers(dest="diffusion_command", required=True, parser_class=type(diffusion))

    cmds.add_parser("prepare", help="fetch Fashion-MNIST (apt-get download dataset-fashion-mnist) into the cache")

    images = cmds.add_parser("images", help="write real images of one class as PNGs (e.g. for invert)")
    images.add_argument("--data", default="fashion-mnist", help="fashion-mnist (default) or digits")
    images.add_argument("--class", dest="class_name", required=True, help='e.g. "ankle boot"')
    images.add_argument("--n", type=int, default=8)
    images.add_argument("--split", default="test", choices=("train", "test"))
    images.add_argument("--out", required=True, help="a folder (created)")

    train = cmds.add_parser("train", help="train the text encoder and U-Net")
    train.add_argument("--data", default="fashion-mnist", help="fashion-mnist (default) or digits")
    train.add_argument("--steps", type=int, default=800, help="total optimizer steps (default 800)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--holdout", default=None,
                       help='class left out of training (default: "ankle boot", or "nine" for digits; "none" for none)')
    train.add_argument("--attribute-rate", type=float, default=0.5,
                       help="chance that a caption names each of its image's attributes, e.g. 'a photo of a tall "
                            "dark sneaker' (default 0.5; 0: class names only)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--sample-every", type=int, default=200, help="steps between sample grids (0: at the end)")
    train.add_argument("--checkpoint-every", type=int, default=250)
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    train.add_argument("--no-patch", action="store_true", help="run diffusers' own U-Net forward (for comparison)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--out", required=True, help="model folder")

    samp = cmds.add_parser("sample", help="generate images for a prompt")
    samp.add_argument("model", help="model folder written by train")
    samp.add_argument("prompt")
    samp.add_argument("--sampler", default="dpm++", choices=SAMPLER_NAMES)
    samp.add_argument("--steps", type=int, default=20)
    samp.add_argument("--guidance", type=float, default=3.0)
    samp.add_argument("--negative-prompt", default="", help="what guidance steers away from (default: empty)")
    samp.add_argument("--n", type=int, default=16)
    samp.add_argument("--seed", type=int, default=0)
    samp.add_argument("--embeddings", action="append", default=[], help="textual inversion file (repeatable)")
    samp.add_argument("--device", default=None)
    samp.add_argument("--out", required=True, help="a .png grid, or a folder for one PNG per image")

    inv = cmds.add_parser("invert", help="learn a new token from 3-10 images (textual inversion)")
    inv.add_argument("model")
    inv.add_argument("images", help="folder of 3-10 images at the model's resolution")
    inv.add_argument("--token", required=True, help='placeholder, e.g. "<my-thing>"')
    inv.add_argument("--steps", type=int, default=900)
    inv.add_argument("--batch-size", type=int, default=16)
    inv.add_argument("--lr", type=float, default=3e-2)
    inv.add_argument("--init-word", default="object")
    inv.add_argument("--num-vectors", type=int, default=1,
                     help="input positions the token stands for, each a learned vector (default 1; on the "
                          "held-out class 10 is what reaches 50%%, README)")
    inv.add_argument("--seed", type=int, default=0)
    inv.add_argument("--device", default=None)
    inv.add_argument("--out", required=True, help="EMB.safetensors")

    ev = cmds.add_parser("eval", help="classifier accuracy of generated samples per sampler and step count")
    ev.add_argument("model")
    ev.add_argument("--n", type=int, default=10, help="samples per class (default 10)")
    ev.add_argument("--runs", default="dpm++:20,dpm++:10,ddim:20,euler:20", help="SAMPLER:STEPS,...")
    ev.add_argument("--guidance", type=float, default=3.0)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--embeddings", action="append", default=[], help="textual inversion file (repeatable)")
    ev.add_argument("--token-class", default=None, help="class the tokens depict (default: the held-out class)")
    ev.add_argument("--token-n", type=int, default=40, help="samples per learned token (default 40)")
    ev.add_argument("--device", default=None)


def _device(requested: str | None) -> str:
    import torch

    if requested not in (None, "cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def _positive(value: int, option: str) -> None:
    if value <= 0:
        raise ValueError(f"{option}: expected a positive integer, got {value}")


def _guidance(value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"--guidance: expected a finite number >= 0, got {value}")


# The checks below run before any model is loaded or trained, so a wrong --out fails at once rather than
# after minutes of work (or as a raw OS error).

def _folder_out(path: str, option: str = "--out") -> Path:
    """An output folder (created later, with its parents): it must not be an existing file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{option} {out}: exists and is not a folder")
    return out


def _file_out(path: str, option: str = "--out") -> Path:
    """An output file: its folder must exist and the path must not be a folder."""
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"{option} {out}: is a folder, expected a file name")
    if not out.resolve().parent.is_dir():
        raise FileNotFoundError(f"{option} {out}: the folder {out.resolve().parent} does not exist")
    return out


def run(args: argparse.Namespace) -> int:
    return {"prepare": _prepare, "images": _images, "train": _train, "sample": _sample, "invert": _invert,
            "eval": _eval}[args.diffusion_command](args)


def _prepare(args: argparse.Namespace) -> int:
    from genai_fast.diffusion.text2image.data import prepare_fashion_mnist

    print(f"Fashion-MNIST ready in {prepare_fashion_mnist()}")
    return 0


def _images(args: argparse.Namespace) -> int:
    from genai_fast.diffusion.text2image.data import class_index, load_images, save_png

    _positive(args.n, "--n")
    out = _folder_out(args.out)
    index = class_index(args.data, args.class_name)
    data = load_images(args.data, args.split)
    chosen = data.images[data.labels == index][: args.n]
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(chosen):
        save_png(image, out / f"{i:03d}.png")
    print(f"wrote {len(chosen)} images of '{args.class_name}' to {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from genai_fast.diffusion.text2image.model import ModelConfig
    from genai_fast.diffusion.text2image.train import TrainingInterrupted, TrainOptions, train

    _folder_out(args.out)
    size = 8 if args.data == "digits" else 28
    holdout = args.holdout or DEFAULT_HOLDOUT[args.data] if args.data in DEFAULT_HOLDOUT else args.holdout
    holdout = None if holdout is not None and holdout.lower() == "none" else holdout
    config = ModelConfig(dataset=args.data, image_size=size, sample_size=8 if size == 8 else 32, holdout=holdout)
    options = TrainOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           attribute_rate=args.attribute_rate, sample_every=args.sample_every,
                           checkpoint_every=args.checkpoint_every,
                           device=_device(args.device), patch=not args.no_patch)
    if args.sample_every < 0:
        raise ValueError(f"--sample-every: expected >= 0, got {args.sample_every}")
    if not args.resume:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        result = train(args.out, config, options, resume=args.resume)
    except TrainingInterrupted as stop:
        print(f"genai-fast: {stop}; continue with: genai-fast diffusion train --out {args.out} --resume "
              f"--steps {args.steps}", file=sys.stderr)
        return 130
    last = result.losses[-1][1] if result.losses else float("nan")
    print(f"trained {result.step} steps in {result.seconds / 60:.1f} min (final loss {last:.4f}); model in {args.out}")
    return 0


def _load(args: argparse.Namespace) -> Any:
    from genai_fast.diffusion.text2image.model import load_model
    from genai_fast.diffusion.text2image.pipeline import load_embedding

    model = load_model(args.model, _device(args.device))
    for path in getattr(args, "embeddings", []):
        load_embedding(model, path)
    return model


def _sample(args: argparse.Namespace) -> int:
    from genai_fast.diffusion.text2image.data import grid, save_png
    from genai_fast.diffusion.text2image.pipeline import check_prompt_tokens, generate

    _positive(args.steps, "--steps")
    _positive(args.n, "--n")
    _guidance(args.guidance)
    out = Path(args.out)
    as_grid = out.suffix.lower() == ".png"
    if out.suffix.lower() in OTHER_IMAGE_SUFFIXES:
        raise ValueError(f"--out {out}: grids are written as PNG; name it .png, or give a folder for one PNG "
                         f"per image")
    if as_grid:
        _file_out(args.out)
    else:
        _folder_out(args.out)
    model = _load(args)
    check_prompt_tokens(model, args.prompt)
    check_prompt_tokens(model, args.negative_prompt)
    start = time.perf_counter()
    images = generate(model, [args.prompt] * args.n, args.sampler, args.steps, args.guidance, args.seed,
                      negative_prompt=args.negative_prompt)
    if as_grid:
        save_png(grid(images, rows=max(1, int(args.n ** 0.5))), out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            save_png(image, out / f"{i:03d}.png")
    print(f"wrote {args.n} images to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _invert(args: argparse.Namespace) -> int:
    from genai_fast.diffusion.text2image.invert import InvertOptions, invert_folder
    from genai_fast.diffusion.text2image.tokenizer import check_new_token

    check_new_token(args.token)
    options = InvertOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, init_word=args.init_word,
                            num_vectors=args.num_vectors, seed=args.seed)
    if not Path(args.images).is_dir():
        raise NotADirectoryError(f"images: {args.images} is not a folder")
    _file_out(args.out)
    model = _load(args)
    losses = invert_folder(model, args.images, args.token, args.out, options)
    print(f"learned {args.token} in {len(losses)} steps (loss {sum(losses[:20]) / min(20, len(losses)):.4f} -> "
          f"{sum(losses[-20:]) / min(20, len(losses)):.4f}); wrote {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from genai_fast.diffusion.text2image.data import class_index, class_names
    from genai_fast.diffusion.text2image.evaluate import EvalOptions, evaluate, format_results, parse_runs
    from genai_fast.diffusion.text2image.model import load_model

    _guidance(args.guidance)
    options = EvalOptions(samples_per_class=args.n, runs=parse_runs(args.runs), guidance=args.guidance,
                          seed=args.seed, token_samples=args.token_n)
    model = load_model(args.model, _device(args.device))
    target = args.token_class or model.config.holdout
    if args.embeddings and target is None:
        raise ValueError("--token-class: the model has no held-out class; name the class the tokens depict")
    _check_embeddings(args.embeddings, model.text_encoder.config.width)
    pairs = ()
    if args.embeddings:
        name = class_names(model.config.dataset)[class_index(model.config.dataset, target)]
        pairs = tuple((path, name) for path in args.embeddings)
    results = evaluate(model, args.model, options, pairs)
    print(format_results(results))
    print(f"grids and results.json in {Path(args.model) / 'eval'}", file=sys.stderr)
    return 0


def _check_embeddings(paths: list[str], width: int) -> None:
    """Every --embeddings file readable, fitting the model and naming its own token, before eval's long work
    (evaluate loads them only after sampling every class)."""
    from genai_fast.diffusion.text2image.pipeline import read_embedding

    seen: dict[str, str] = {}
    for path in paths:
        token, _ = read_embedding(path, width)
        if token.lower() in seen:
            raise ValueError(f"--embeddings {path}: token {token!r} is also in {seen[token.lower()]}")
        seen[token.lower()] = path
