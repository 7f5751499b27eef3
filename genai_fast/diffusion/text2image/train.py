"""Training: epsilon-prediction DDPM objective on captioned images, through the genai_fast-patched U-Net.

Each step draws a batch of training images (the held-out class excluded), a caption per image from the
class templates with some of the image's attribute words (captions.py; 10% empty, for classifier-free
guidance), a timestep and noise; the U-Net predicts the noise and both networks are updated by AdamW
(linear warm-up, cosine decay). An EMA of the weights is what gets sampled. Checkpoints are atomic and
resumable (same result as an uninterrupted run: the data order comes from one generator whose state is saved).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from genai_fast.diffusion.samplers import make_sampler
from genai_fast.diffusion.text2image.captions import Captions, image_attributes
from genai_fast.diffusion.text2image.data import (
    CLASS_PHRASES,
    grid,
    load_images,
    prompt_for,
    save_png,
    to_model_space,
)
from genai_fast.diffusion.text2image.model import (
    CONFIG_FILE,
    TRAIN_STATE_FILE,
    ModelConfig,
    TextToImage,
    patch_unet,
    read_config,
    read_safetensors,
    save_model,
    save_safetensors,
)
from genai_fast.diffusion.text2image.pipeline import check_steps, generate


@dataclass
class TrainOptions:
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    attribute_rate: float = 0.5  # chance of each of an image's attribute words in its caption (captions.py)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    sample_every: int = 200  # 0: only at the end
    samples_per_class: int = 4
    device: str = "cpu"
    patch: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check_steps(self.steps)
        for key in ("batch_size", "checkpoint_every"):
            check_steps(getattr(self, key), f"--{key.replace('_', '-')}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout: expected 0 <= p < 1, got {self.caption_dropout}")
        if not 0 <= self.attribute_rate <= 1:
            raise ValueError(f"--attribute-rate: expected 0 <= p <= 1, got {self.attribute_rate}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: expected 0 <= decay < 1, got {self.ema_decay}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr: expected a positive finite learning rate, got {self.lr}")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at a step boundary, after a checkpoint of that step was saved."""

    def __init__(self, step: int, folder: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved in {folder}")
        self.step = step
        self.folder = folder


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[dict[str, bool]]:
    """While active, a first Ctrl-C (SIGINT) only sets state["requested"], so the loop can finish its step and
    save it (a KeyboardInterrupt in the middle of a step leaves weights, optimizer, EMA and step count out of
    step with each other); a second Ctrl-C raises at once."""
    state = {"requested": False}
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield state  # signals cannot be caught here, or the caller chose to ignore Ctrl-C (nohup, `cmd &`)
        return

    def handler(signum: int, frame: object) -> None:
        if state["requested"]:
            raise KeyboardInterrupt
        state["requested"] = True
        print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TrainResult:
    step: int
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last entry)


def _trainable(model: TextToImage) -> list[tuple[str, torch.nn.Parameter]]:
    params = [("unet." + k, p) for k, p in model.unet.named_parameters()]
    params += [("text_encoder." + k, p) for k, p in model.text_encoder.named_parameters() if k != "added_embeddings"]
    return params


def _lr_factor(step: int, options: TrainOptions) -> float:
    if step < options.warmup:
        return (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, options.steps - options.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise, a_t = alpha_bar[t]; all [B, 1, S, S], t [B]."""
    a = alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def denoising_loss(unet: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   alphas_cumprod: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The epsilon objective: MSE between the U-Net's noise prediction on x_t and `noise`.
    x0, noise [B, 1, S, S] on the U-Net's device; t [B]; context [B, L, width] text states."""
    pred = unet(noisy(x0, noise, t, alphas_cumprod), t.to(x0.device), encoder_hidden_states=context).sample
    return torch.nn.functional.mse_loss(pred.float(), noise)


class Trainer:
    """One training run in `out_dir` (new or resumed)."""

    def __init__(self, out_dir: str | Path, config: ModelConfig, options: TrainOptions, resume: bool = False) -> None:
        self.out = Path(out_dir)
        self.options = options
        if resume:
            config = read_config(self.out)  # the folder's model, whatever the command line said
            if not (self.out / TRAIN_STATE_FILE).is_file():
                raise FileNotFoundError(f"--resume: {self.out / TRAIN_STATE_FILE} does not exist")
        elif (self.out / CONFIG_FILE).exists():
            raise ValueError(f"--out {self.out}: already holds a model; pass --resume to continue it or "
                                  f"choose a new folder")
        self.model = TextToImage.new(config, seed=options.seed)
        self.model.to(options.device)
        if options.patch:
            patch_unet(self.model.unet)
        data = load_images(config.dataset, "train")
        if data.images.shape[1:] != (config.image_size, config.image_size):
            raise ValueError(f"data: {config.dataset} images are {data.images.shape[1:]}, config image_size "
                             f"{config.image_size}")
        keep = data.labels != config.holdout_index if config.holdout is not None else np.ones(len(data.labels), bool)
        self.images = torch.from_numpy(data.images[keep].copy())
        self.labels = torch.from_numpy(data.labels[keep].copy())
        attributes = image_attributes(self.images.numpy(), self.labels.numpy()) if options.attribute_rate else None
        self.captions = Captions(self.model, self.labels, attributes, options.attribute_rate)
        self.alphas_cumprod = make_sampler("ddpm", **config.schedule).alphas_cumprod
        self.params = _trainable(self.model)
        self.optimizer = torch.optim.AdamW([p for _, p in self.params], lr=options.lr,
                                           weight_decay=options.weight_decay)
        self.ema = {k: p.detach().clone() for k, p in self.params}
        self.generator = torch.Generator().manual_seed(options.seed)
        self.step = 0
        self.seconds = 0.0
        self.losses: list[tuple[int, float]] = []
        if resume:
            self._load_state()
        self.out.mkdir(parents=True, exist_ok=True)

    # -- one step

    def train_step(self) -> float:
        opts, device = self.options, self.options.device
        g = self.generator
        index = torch.randint(len(self.images), (opts.batch_size,), generator=g)
        x0 = to_model_space(self.images[index], self.model.config.sample_size).to(device)
        ids = self.captions.draw(index, opts.caption_dropout, g).to(device)
        t = torch.randint(len(self.alphas_cumprod), (opts.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g).to(device)
        for group in self.optimizer.param_groups:
            group["lr"] = opts.lr * _lr_factor(self.step, opts)
        loss = denoising_loss(self.model.unet, x0, noise, t, self.alphas_cumprod, self.model.text_encoder(ids))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.params], opts.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.options.ema_decay, (1 + self.step) / (10 + self.step))  # short warm-up of the average
        ema = list(self.ema.values())
        torch._foreach_lerp_(ema, [p.detach() for _, p in self.params], 1 - decay)

    # -- the loop

    def run(self) -> TrainResult:
        opts = self.options
        total = opts.steps
        if self.step >= total:
            return TrainResult(self.step, self.seconds, self.losses)
        start = time.perf_counter() - self.seconds
        # the bar is closed before any error or interrupt message, so that message gets its own line
        with tqdm(total=total, initial=self.step, disable=not opts.progress, desc="training", unit="step") as bar, \
                _deferred_interrupt() as interrupt:
            self._loop(bar, interrupt, start)
        self.write_samples()
        self.seconds = time.perf_counter() - start
        self.save()
        return TrainResult(self.step, self.seconds, self.losses)

    def _loop(self, bar: tqdm, interrupt: dict[str, bool], start: float) -> None:
        opts, total = self.options, self.options.steps
        running, count = 0.0, 0  # float64 running total of the loss
        while self.step < total:
            loss = self.train_step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged at step {self.step} (loss {loss}); lower --lr")
            running, count = running + loss, count + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            last = self.step == total
            if self.step % 50 == 0 or last:
                self.losses.append((self.step, running / count))
                running, count = 0.0, 0
            if opts.sample_every and (self.step % opts.sample_every == 0) and not last and not interrupt["requested"]:
                self.write_samples()
            if self.step % opts.checkpoint_every == 0 or last or interrupt["requested"]:
                self.seconds = time.perf_counter() - start
                self.save()
            if interrupt["requested"] and not last:
                raise TrainingInterrupted(self.step, self.out)

    # -- samples and checkpoints

    def _swap_ema(self) -> None:
        with torch.no_grad():
            for name, p in self.params:
                current = p.data
                p.data = self.ema[name]
                self.ema[name] = current

    def write_samples(self) -> Path:
        """A grid (one row per class, the held-out one included) from the EMA weights."""
        cfg = self.model.config
        n = self.options.samples_per_class
        prompts = [prompt_for(cfg.dataset, c) for c in range(len(CLASS_PHRASES[cfg.dataset])) for _ in range(n)]
        self._swap_ema()
        try:
            images = generate(self.model, prompts, "dpm++", 20, 3.0, seed=0, progress=False)
        finally:
            self._swap_ema()
        (self.out / "samples").mkdir(exist_ok=True)
        path = self.out / "samples" / f"step_{self.step:06d}.png"
        save_png(grid(images, rows=len(CLASS_PHRASES[cfg.dataset])), path)
        return path

    def save(self) -> None:
        """train_state.safetensors (resumable state), then model.safetensors (EMA weights) + config.json."""
        tensors = {"raw." + k: p.detach() for k, p in self.params}
        tensors.update({"ema." + k: v for k, v in self.ema.items()})
        for i, (_, p) in enumerate(self.params):
            state = self.optimizer.state.get(p, {})
            for key, value in state.items():
                tensors[f"optim.{i}.{key}"] = torch.as_tensor(value)
        tensors["rng"] = self.generator.get_state()
        meta = {"step": str(self.step), "seconds": f"{self.seconds:.3f}", "losses": json.dumps(self.losses),
                "options": json.dumps(self.options.__dict__)}
        save_safetensors(self.out / TRAIN_STATE_FILE, tensors, meta)
        self._swap_ema()
        try:
            save_model(self.out, self.model, {"step": str(self.step)})
        finally:
            self._swap_ema()

    def _load_state(self) -> None:
        tensors, meta = read_safetensors(self.out / TRAIN_STATE_FILE)
        absent = [key for key in ("rng",) if key not in tensors] + [key for key in ("step",) if key not in meta]
        if absent:
            raise ValueError(f"{self.out / TRAIN_STATE_FILE}: not a training state written by this genai_fast "
                             f"(no {', '.join(absent)})")
        names = [k for k, _ in self.params]
        missing = [k for k in names if "raw." + k not in tensors or "ema." + k not in tensors]
        if missing:
            raise ValueError(f"{self.out / TRAIN_STATE_FILE}: does not match config.json (missing {missing[:3]})")
        with torch.no_grad():
            for name, p in self.params:
                p.copy_(tensors["raw." + name])
                self.ema[name].copy_(tensors["ema." + name])
        state = self.optimizer.state_dict()
        for i in range(len(self.params)):
            entry = {key.split(".", 2)[2]: value for key, value in tensors.items()
                     if key.startswith(f"optim.{i}.")}
            if entry:
                state["state"][i] = entry
        self.optimizer.load_state_dict(state)
        self.generator.set_state(tensors["rng"])
        self.step = int(meta["step"])
        self.seconds = float(meta.get("seconds", 0.0))
        self.losses = [tuple(x) for x in json.loads(meta.get("losses", "[]"))]


def train(out_dir: str | Path, config: ModelConfig | None = None, options: TrainOptions | None = None,
          resume: bool = False) -> TrainResult:
    """Train (or with resume=True continue) a model in `out_dir` for options.steps steps in total."""
    trainer = Trainer(out_dir, config or ModelConfig(), options or TrainOptions(), resume=resume)
    return trainer.run()
