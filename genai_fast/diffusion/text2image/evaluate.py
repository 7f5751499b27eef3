"""Evaluation: a small CNN classifier trained on the real training images (cached in the model folder,
its accuracy on the real test images reported), then the fraction of generated samples it assigns to
the prompted class, per sampler and step count, for the held-out class's plain prompt, and for learned
placeholder tokens."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genai_fast.diffusion.samplers import SAMPLER_NAMES
from genai_fast.diffusion.text2image.data import (
    CLASS_PHRASES,
    class_names,
    grid,
    load_images,
    prompt_for,
    save_png,
)
from genai_fast.diffusion.text2image.model import TextToImage, read_safetensors, save_safetensors
from genai_fast.diffusion.text2image.pipeline import check_steps, generate, load_embedding, make_model_sampler
from genai_fast.io import atomic_write_text

CLASSIFIER_FILE = "classifier.safetensors"
DEFAULT_RUNS = (("dpm++", 20), ("dpm++", 10), ("ddim", 20), ("euler", 20))


class Classifier(nn.Module):
    """uint8-range images [N, 1, H, W] scaled to [-1, 1] -> logits [N, classes]; H, W multiples of 4."""

    def __init__(self, size: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float().div(127.5).sub(1.0).unsqueeze(1))


def _predict(model: Classifier, images: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i:i + 512].copy())).argmax(1).numpy()
                               for i in range(0, len(images), 512)])


def train_classifier(dataset: str, steps: int = 600, batch_size: int = 128, seed: int = 0,
                     progress: bool = True) -> tuple[Classifier, float]:
    """A classifier over all classes (the held-out one too); returns it and its real test accuracy."""
    check_steps(steps, "classifier steps")
    train, test = load_images(dataset, "train"), load_images(dataset, "test")
    size, classes = train.images.shape[1], len(CLASS_PHRASES[dataset])
    torch.manual_seed(seed)
    model = Classifier(size, classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    images, labels = torch.from_numpy(train.images.copy()), torch.from_numpy(train.labels.copy())
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), disable=not progress, desc="classifier", unit="step"):
        pick = torch.randint(len(images), (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(model(images[pick]), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = float((_predict(model, test.images) == test.labels).mean())
    return model, accuracy


def load_or_train_classifier(folder: str | os.PathLike, dataset: str, size: int, progress: bool = True,
                             steps: int = 600) -> tuple[Classifier, float]:
    """The classifier cached in `folder` (trained for `steps` and saved there the first time)."""
    path = Path(folder) / CLASSIFIER_FILE
    if path.is_file():
        tensors, meta = read_safetensors(path)
        if meta.get("dataset") == dataset:
            model = Classifier(size, len(CLASS_PHRASES[dataset]))
            model.load_state_dict(tensors)
            return model, float(meta["test_accuracy"])
    model, accuracy = train_classifier(dataset, steps=steps, progress=progress)
    save_safetensors(path, model.state_dict(), {"dataset": dataset, "test_accuracy": f"{accuracy:.6f}"})
    return model, accuracy


@dataclass
class EvalOptions:
    samples_per_class: int = 10
    runs: tuple[tuple[str, int], ...] = DEFAULT_RUNS
    guidance: float = 3.0
    seed: int = 0
    classifier_steps: int = 600
    token_samples: int = 40  # one token's score rests on these; 10 would move it in steps of 10 points
    progress: bool = True

    def __post_init__(self) -> None:
        check_steps(self.samples_per_class, "--n")
        check_steps(self.token_samples, "--token-n")
        check_steps(self.classifier_steps, "classifier steps")
        for _, steps in self.runs:
            check_steps(steps, "--runs steps")


def parse_runs(text: str) -> tuple[tuple[str, int], ...]:
    """"dpm++:20,ddim:20" -> (("dpm++", 20), ("ddim", 20))."""
    runs = []
    for item in text.split(","):
        name, sep, steps = item.strip().rpartition(":")
        if not sep or not steps.isdigit():
            raise ValueError(f"--runs: expected SAMPLER:STEPS[,SAMPLER:STEPS...], got {item!r}")
        if name not in SAMPLER_NAMES:
            raise ValueError(f"--runs: unknown sampler {name!r} in {item!r}; expected one of "
                             f"{', '.join(SAMPLER_NAMES)}")
        runs.append((name, check_steps(int(steps), "--runs steps")))
    return tuple(runs)


def evaluate(model: TextToImage, folder: str | os.PathLike, options: EvalOptions | None = None,
             embeddings: tuple[tuple[str, str], ...] = ()) -> dict:
    """Accuracies (see the module docstring); writes eval/grid_*.png and eval/results.json in `folder`.

    embeddings: (file, class name) pairs; each file's token is prompted as "a photo of <token>".
    """
    options = options or EvalOptions()
    cfg = model.config
    for name, _ in options.runs:
        make_model_sampler(model, name)  # unknown sampler names fail before any work
    names = class_names(cfg.dataset)
    classifier, real_accuracy = load_or_train_classifier(folder, cfg.dataset, cfg.image_size, options.progress,
                                                          options.classifier_steps)
    real_per_class = _real_per_class(classifier, cfg.dataset, names)
    trained = [c for c in range(len(names)) if c != cfg.holdout_index]
    n = options.samples_per_class
    out_dir = Path(folder) / "eval"
    out_dir.mkdir(exist_ok=True)
    results: dict = {"classifier_test_accuracy": real_accuracy, "classifier_per_class": real_per_class,
                     "samples_per_class": n,
                     "guidance": options.guidance, "runs": [], "holdout": None, "tokens": []}
    for sampler, steps in options.runs:
        labels = np.repeat(np.arange(len(names)), n)
        images = generate(model, [prompt_for(cfg.dataset, int(c)) for c in labels], sampler, steps,
                          options.guidance, options.seed, progress=options.progress)
        predicted = _predict(classifier, images)
        per_class = {names[c]: float((predicted[labels == c] == c).mean()) for c in range(len(names))}
        mask = np.isin(labels, trained)
        results["runs"].append({"sampler": sampler, "steps": steps,
                                "accuracy": float((predicted[mask] == labels[mask]).mean()),
                                "per_class": per_class})
        if cfg.holdout_index is not None:
            results["holdout"] = {"class": cfg.holdout, "plain_prompt_accuracy": per_class[cfg.holdout]}
        save_png(grid(images, rows=len(names)), out_dir / f"grid_{sampler}_{steps}.png")
    for path, class_name in embeddings:
        token = load_embedding(model, path)
        target = names.index(class_name)
        images = generate(model, [f"a photo of {token}"] * options.token_samples, "dpm++", 20, options.guidance,
                          options.seed, progress=options.progress)
        predicted = _predict(classifier, images)
        results["tokens"].append({"token": token, "file": str(path), "class": class_name, "samples": len(images),
                                  "accuracy": float((predicted == target).mean()),
                                  "real_images_accuracy": real_per_class[class_name], "sampler": "dpm++", "steps": 20,
                                  "classified_as": _shares(predicted, names)})
        save_png(grid(images, rows=-(-len(images) // 10)), out_dir / f"token_{Path(path).stem}.png")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    return results


def _real_per_class(classifier: Classifier, dataset: str, names: Sequence[str]) -> dict[str, float]:
    """{class name: share of its real test images the classifier gets right}: the most a class's samples can
    score (Fashion-MNIST's shirts and pullovers are often taken for t-shirts and coats even when real)."""
    test = load_images(dataset, "test")
    predicted = _predict(classifier, test.images)
    return {name: float((predicted[test.labels == c] == c).mean()) for c, name in enumerate(names)}


def _shares(predicted: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """{class name: share of the samples the classifier put there}, largest first, classes never chosen left out:
    where a token's samples land when they miss (for an unseen class, usually its nearest trained one)."""
    counts = np.bincount(predicted, minlength=len(names))
    order = np.argsort(-counts, kind="stable")
    return {names[c]: float(counts[c] / len(predicted)) for c in order if counts[c]}


def format_results(results: dict) -> str:
    lines = [f"classifier accuracy on the real test images: {results['classifier_test_accuracy']:.3f}",
             f"prompted-class accuracy of generated samples ({results['samples_per_class']} per class, "
             f"guidance {results['guidance']}, held-out class excluded):"]
    lines += [f"  {r['sampler']:>6} {r['steps']:>3} steps: {r['accuracy']:.3f}" for r in results["runs"]]
    if results["holdout"]:
        lines.append(f"  held-out '{results['holdout']['class']}' with its plain prompt (never trained): "
                     f"{results['holdout']['plain_prompt_accuracy']:.3f}")
    for t in results["tokens"]:
        landed = ", ".join(f"{name} {share:.3f}" for name, share in t["classified_as"].items())
        real = t.get("real_images_accuracy")
        ceiling = f"; real test images of the class: {real:.3f}" if real is not None else ""
        lines.append(f"  token {t['token']} -> '{t['class']}': {t['accuracy']:.3f} (classified as: {landed}{ceiling})")
    return "\n".join(lines)
