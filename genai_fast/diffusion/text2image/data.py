"""Images and captions: Fashion-MNIST (Debian package dataset-fashion-mnist, IDX files read directly), with
scikit-learn's bundled digits as a fallback, plus folders of user images for textual inversion.

Images are returned as uint8 arrays [N, H, W] (0 = black background) and int64 labels [N]; `to_model_space`
maps them to the model's float range [-1, 1], padded with the background value to the model's size.
Nothing is downloaded at import: `prepare_fashion_mnist()` (the `genai-fast diffusion prepare` command)
runs `apt-get download` + `dpkg-deb -x` into a cache folder once.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# Caption phrases (article included so templates read naturally: "a photo of an ankle boot").
CLASS_PHRASES = {
    "fashion-mnist": ("a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt",
                      "a sneaker", "a bag", "an ankle boot"),
    "digits": tuple(f"a handwritten digit {w}" for w in
                    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")),
}
TEMPLATES = ("a photo of {}", "a picture of {}", "an image of {}", "{}", "a small photo of {}")
DATASETS = tuple(CLASS_PHRASES)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm")


def class_names(dataset: str) -> tuple[str, ...]:
    """Class names without the article: "sneaker", "ankle boot", "handwritten digit seven"."""
    return tuple(p.split(" ", 1)[1] for p in CLASS_PHRASES[check_dataset(dataset)])


def check_dataset(dataset: str) -> str:
    if dataset not in CLASS_PHRASES:
        raise ValueError(f"data: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return dataset


def class_index(dataset: str, name: str) -> int:
    """Index of a class given by name ("ankle boot", "an ankle boot") or number; ValueError listing the classes."""
    names = class_names(dataset)
    key = str(name).strip().lower()
    for article in ("a ", "an "):
        if key.startswith(article) and key[len(article):] in names:
            key = key[len(article):]
    if key in names:
        return names.index(key)
    if key.isdigit() and int(key) < len(names):
        return int(key)
    endings = [i for i, n in enumerate(names) if n.endswith(" " + key)]  # "nine" for "handwritten digit nine"
    if len(endings) == 1:
        return endings[0]
    raise ValueError(f"class: unknown class {name!r} for {dataset}; expected one of {', '.join(names)}")


def caption(dataset: str, label: int, template: int = 0) -> str:
    """Caption of a class: template 0 is "a photo of {phrase}" (the prompt used for evaluation)."""
    return TEMPLATES[template].format(CLASS_PHRASES[dataset][label])


def prompt_for(dataset: str, label: int) -> str:
    return caption(dataset, label, 0)


# ---------------------------------------------------------------- Fashion-MNIST


def cache_dir() -> Path:
    root = os.environ.get("GENAI_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "genai_fast")
    return Path(root) / "fashion-mnist"


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in sorted(root.rglob(stem + "*")):
        if candidate.is_file() and candidate.name in (stem, stem + ".gz"):
            return candidate
    return None


def fashion_mnist_available(root: Path | None = None) -> bool:
    root = root or cache_dir()
    return root.is_dir() and all(_find_idx(root, s) for pair in FASHION_FILES.values() for s in pair)


def _fashion_mnist_readable(root: Path) -> bool:
    """Whether every IDX file in the cache reads in full (a damaged one is fetched again by prepare)."""
    try:
        for pair in FASHION_FILES.values():
            for stem in pair:
                read_idx(_find_idx(root, stem))
    except ValueError:
        return False
    return True


def prepare_fashion_mnist(root: Path | None = None) -> Path:
    """Fetch the Debian package's IDX files into `root` (default ~/.cache/genai_fast/fashion-mnist) once."""
    root = root or cache_dir()
    if fashion_mnist_available(root) and _fashion_mnist_readable(root):
        return root
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} not found: Fashion-MNIST comes from the Debian package "
                                    f"{FASHION_PACKAGE}; use --data digits instead")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        got = subprocess.run(["apt-get", "download", FASHION_PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if got.returncode != 0 or not debs:
            raise FileNotFoundError(f"apt-get download {FASHION_PACKAGE} failed ({got.stderr.strip()[-200:]}); "
                                    f"run apt-get update first, or use --data digits")
        extracted = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(extracted)], check=True)
        for pair in FASHION_FILES.values():
            for stem in pair:
                found = _find_idx(extracted, stem)
                if found is None:
                    raise FileNotFoundError(f"{FASHION_PACKAGE}: {stem} not found in the package")
                os.replace(found, root / found.name)  # same file system: an atomic move
    return root


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (optionally gzipped): magic 0x0000 <dtype 0x08 = uint8> <ndim>, big-endian int32 sizes."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a truncated or damaged download
        raise ValueError(f"{path}: damaged gzip file ({exc}); delete it and run `genai-fast diffusion prepare` "
                         f"again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} bytes of data for shape {shape}, "
                         f"got {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


@dataclass
class ImageSet:
    images: np.ndarray  # [N, H, W] uint8, 0 = background
    labels: np.ndarray  # [N] int64
    dataset: str


def load_images(dataset: str, split: str = "train") -> ImageSet:
    """The images of `dataset` ("fashion-mnist": 60k train / 10k test; "digits": 1797 8x8 images, 80/20 split)."""
    check_dataset(dataset)
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if dataset == "digits":
        return _load_digits(split)
    root = cache_dir()
    if not fashion_mnist_available(root):
        raise FileNotFoundError(f"Fashion-MNIST is not prepared in {root}: run `genai-fast diffusion prepare` "
                                f"(apt-get download {FASHION_PACKAGE}) or use --data digits")
    images_file, labels_file = (_find_idx(root, s) for s in FASHION_FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"{root}: IDX image/label shapes {images.shape} / {labels.shape} do not match")
    return ImageSet(np.ascontiguousarray(images), labels.astype(np.int64), dataset)


def _load_digits(split: str) -> ImageSet:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("--data digits needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))  # fixed split
    cut = int(0.8 * len(images))
    chosen = order[:cut] if split == "train" else order[cut:]
    return ImageSet(images[chosen], labels[chosen], "digits")


def to_model_space(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, size, size] in [-1, 1], centred, padded with -1 (background)."""
    x = torch.tensor(np.asarray(images)).float().div(127.5).sub(1.0).unsqueeze(1)
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"images: {h}x{w} does not fit the model's {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top), value=-1.0)


def from_model_space(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """float [N, 1, S, S] in [-1, 1] -> uint8 [N, height, width] (the padding cropped off)."""
    size_h, size_w = x.shape[-2:]
    top, left = (size_h - height) // 2, (size_w - width) // 2
    crop = x[:, 0, top:top + height, left:left + width]
    return crop.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------- image folders and files


def load_image_folder(folder: str | os.PathLike, height: int, width: int, min_count: int = 1,
                      max_count: int | None = None) -> np.ndarray:
    """The images in `folder` as grayscale uint8 [N, height, width]; clear errors for a missing or empty
    folder, files that are not images, or images of another resolution."""
    from PIL import Image, UnidentifiedImageError

    path = Path(folder)
    if not path.exists():
        raise FileNotFoundError(f"images: folder {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"images: {path} is not a folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"images: folder {path} is empty; expected {min_count} or more images")
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                gray = np.asarray(img.convert("L"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"images: {file} is not an image file readable by Pillow ({exc})") from None
        if gray.shape != (height, width):
            raise ValueError(f"images: {file} is {gray.shape[1]}x{gray.shape[0]}, the model's images are "
                             f"{width}x{height} (resolution mismatch)")
        images.append(gray)
    if len(images) < min_count or (max_count is not None and len(images) > max_count):
        bound = f"{min_count} to {max_count}" if max_count is not None else f"at least {min_count}"
        raise ValueError(f"images: folder {path} holds {len(images)} images, expected {bound}")
    return np.stack(images)


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 [H, W] (gray) or [H, W, 3] image as PNG, atomically."""
    from PIL import Image

    from genai_fast.io import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def grid(images: np.ndarray, rows: int, pad: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 [N, H, W] -> one uint8 image with `rows` rows (filled row by row), upscaled by `scale`."""
    n, h, w = images.shape
    cols = -(-n // rows)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 96, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[i]
    return np.kron(out, np.ones((scale, scale), dtype=np.uint8)) if scale > 1 else out
