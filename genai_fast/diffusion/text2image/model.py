"""The text-to-image model: a small pixel-space diffusers UNet2DConditionModel and the CLIP-style text
encoder, their JSON config, and checkpoints (safetensors weights + JSON config, written atomically).

A model folder holds:
    config.json           ModelConfig (data set, sizes, U-Net and text encoder settings, noise schedule)
    model.safetensors     weights to sample with (the EMA weights): "unet.*", "text_encoder.*"
    train_state.safetensors   raw weights, AdamW state, EMA weights and RNG state (for --resume); the
                          step count and loss history are in its metadata
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genai_fast.diffusion.text2image.data import check_dataset, class_index, class_names
from genai_fast.diffusion.text2image.text_encoder import TextEncoder, TextEncoderConfig
from genai_fast.diffusion.text2image.tokenizer import CLIPTokenizer
from genai_fast.io import atomic_write, atomic_write_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"
FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model (stored as config.json)."""

    dataset: str = "fashion-mnist"
    image_size: int = 28  # the data's resolution
    sample_size: int = 32  # the U-Net's resolution (images padded with background)
    holdout: str | None = "ankle boot"  # class left out of training, for the textual inversion demo
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    text: dict[str, int | bool] = field(default_factory=lambda: TextEncoderConfig(final_norm=False).to_dict())
    # DDPM noise schedule the model is trained on; every sampler is built from these keys.
    schedule: dict[str, Any] = field(default_factory=lambda: {
        "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02})
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_dataset(self.dataset)
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        if self.holdout is not None:
            self.holdout = class_names(self.dataset)[class_index(self.dataset, self.holdout)]
        levels = len(self.block_out_channels)
        if self.sample_size < self.image_size or self.sample_size % (2 ** (levels - 1)):
            raise ValueError(f"sample_size: expected >= image_size {self.image_size} and a multiple of "
                             f"{2 ** (levels - 1)} ({levels} U-Net levels), got {self.sample_size}")
        TextEncoderConfig(**self.text)  # validates

    @property
    def holdout_index(self) -> int | None:
        return None if self.holdout is None else class_index(self.dataset, self.holdout)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ValueError(f"config.json: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"config.json: format_version {version!r}, this genai_fast reads {FORMAT_VERSION}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config.json: unknown keys {unknown}")
        for key, value in data.items():
            _check_config_value(key, value)
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:  # e.g. an unknown class name, text encoder sizes
            raise ValueError(f"config.json: {exc}") from None


# JSON shape of each config.json value: a hand-edited or foreign file fails here with the key's name rather
# than deep inside diffusers ("'int' object is not iterable").
_CONFIG_INTS = ("image_size", "sample_size", "layers_per_block", "attention_head_dim", "norm_num_groups")


def _check_config_value(key: str, value: Any) -> None:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if key in _CONFIG_INTS:
        ok, expected = is_int(value) and value > 0, "a positive integer"
    elif key == "dataset":
        ok, expected = isinstance(value, str), "a string"
    elif key == "holdout":
        ok, expected = value is None or isinstance(value, str), "a class name or null"
    elif key == "block_out_channels":
        ok = isinstance(value, list) and bool(value) and all(is_int(x) and x > 0 for x in value)
        expected = "a non-empty list of positive integers"
    elif key in ("down_block_types", "up_block_types"):
        ok = isinstance(value, list) and bool(value) and all(isinstance(x, str) for x in value)
        expected = "a non-empty list of block names"
    elif key in ("text", "schedule"):
        ok, expected = isinstance(value, dict), "a JSON object"
    else:
        return
    if not ok:
        raise ValueError(f"config.json: {key} should be {expected}, got {value!r}")


def build_unet(config: ModelConfig) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=config.sample_size, in_channels=1, out_channels=1,
        block_out_channels=config.block_out_channels, down_block_types=config.down_block_types,
        up_block_types=config.up_block_types, layers_per_block=config.layers_per_block,
        cross_attention_dim=config.text["width"], attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups)


def patch_unet(unet: nn.Module) -> nn.Module:
    """Run the U-Net through genai_fast's kernels (genai_fast.integrations.diffusers.patch)."""
    from genai_fast.integrations.diffusers import patch

    patch(unet)
    return unet


@dataclass
class TextToImage:
    """The parts used together: config, tokenizer, text encoder, U-Net."""

    config: ModelConfig
    tokenizer: CLIPTokenizer
    text_encoder: TextEncoder
    unet: nn.Module

    @classmethod
    def new(cls, config: ModelConfig, seed: int = 0) -> TextToImage:
        text_config = TextEncoderConfig(**config.text)
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's RNG left as it was
            torch.manual_seed(seed)
            return cls(config, CLIPTokenizer(max_length=text_config.max_length), TextEncoder(text_config),
                       build_unet(config))

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """[B, L] int64 token ids."""
        return torch.tensor(self.tokenizer(prompts), dtype=torch.int64)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, L, width] text states for the U-Net's cross-attention."""
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(self.token_ids(prompts).to(device))

    def to(self, device: torch.device | str) -> TextToImage:
        self.text_encoder.to(device)
        self.unet.to(device)
        return self

    def add_token(self, token: str, vectors: torch.Tensor) -> int:
        """Add a placeholder token with its embedding row [width] (or rows [n, width]: the token then stands
        for n consecutive input positions); returns its first id."""
        width = self.text_encoder.config.width
        if vectors.dim() not in (1, 2) or vectors.shape[-1] != width:
            raise ValueError(f"vectors: expected [{width}] or [n, {width}], got {tuple(vectors.shape)}")
        rows = vectors.reshape(-1, width)
        token_id = self.tokenizer.add_token(token, len(rows))
        self.text_encoder.add_embeddings(rows)
        return token_id


# ---------------------------------------------------------------- files


def weights_of(model: TextToImage) -> dict[str, torch.Tensor]:
    """The state of both networks with "unet." / "text_encoder." prefixes (contiguous CPU copies; added
    inversion tokens are not part of a model checkpoint)."""
    out = {}
    for prefix, module in (("unet.", model.unet), ("text_encoder.", model.text_encoder)):
        for key, value in module.state_dict().items():
            if key == "added_embeddings":
                continue
            out[prefix + key] = value.detach().to("cpu", memory_format=torch.contiguous_format).contiguous()
    return out


def load_weights(model: TextToImage, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy prefixed weights into the model; ValueError naming missing/unexpected keys or shape mismatches."""
    for prefix, module in (("unet.", model.unet), ("text_encoder.", model.text_encoder)):
        own = {k: v for k, v in module.state_dict().items() if k != "added_embeddings"}
        given = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
        if missing or unexpected:
            raise ValueError(f"{source}: {prefix[:-1]} weights do not match config.json (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        for key, value in given.items():
            if value.shape != own[key].shape:
                raise ValueError(f"{source}: {prefix}{key} has shape {tuple(value.shape)}, config.json gives "
                                 f"{tuple(own[key].shape)}")
            with torch.no_grad():
                own[key].copy_(value)


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None


def read_config(folder: str | os.PathLike) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a model folder written by `genai-fast diffusion train`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
    try:
        return ModelConfig.from_dict(data)
    except ValueError as exc:  # name the file, not just "config.json"
        raise ValueError(f"{path}: {str(exc).removeprefix('config.json: ')}") from None


def write_config(folder: str | os.PathLike, config: ModelConfig) -> None:
    atomic_write_text(Path(folder) / CONFIG_FILE, config.to_json())


def save_model(folder: str | os.PathLike, model: TextToImage, metadata: dict[str, str] | None = None) -> None:
    """config.json + model.safetensors (the weights of `model` as they are)."""
    write_config(folder, model.config)
    save_safetensors(Path(folder) / WEIGHTS_FILE, weights_of(model), metadata)


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu", patch: bool = True) -> TextToImage:
    """Rebuild the model from a folder written by train (EMA weights), on `device`, U-Net patched by
    genai_fast unless patch=False."""
    config = read_config(folder)
    model = TextToImage.new(config)
    weights, _ = read_safetensors(Path(folder) / WEIGHTS_FILE)
    load_weights(model, weights, str(Path(folder) / WEIGHTS_FILE))
    model.to(device)
    model.text_encoder.eval()
    model.unet.eval()
    if patch:
        patch_unet(model.unet)
    return model
