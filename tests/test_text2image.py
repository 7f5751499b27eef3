"""Text-to-image end to end on CPU with a tiny model on scikit-learn's digits (no apt, no downloads):
tokenizer ids, text encoder causality, data readers, training reduces the loss, resumable checkpoints,
seeded sampling, textual inversion touching only the new embedding, and clear errors for bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")
from PIL import Image

from genai_fast.cli import main
from genai_fast.diffusion import SAMPLER_NAMES
from genai_fast.diffusion.text2image import data
from genai_fast.diffusion.text2image.captions import (
    ATTRIBUTE_WORDS,
    Captions,
    attribute_words,
    image_attributes,
    measurements,
    phrase_with,
)
from genai_fast.diffusion.text2image.invert import InvertOptions, invert, invert_folder
from genai_fast.diffusion.text2image.model import (
    ModelConfig,
    TextToImage,
    load_model,
    load_weights,
    read_safetensors,
    weights_of,
)
from genai_fast.diffusion.text2image.pipeline import (
    check_prompt_tokens,
    generate,
    load_embedding,
    make_model_sampler,
    save_embedding,
)
from genai_fast.diffusion.text2image.text_encoder import TextEncoder, TextEncoderConfig
from genai_fast.diffusion.text2image.tokenizer import CLIPTokenizer
from genai_fast.diffusion.text2image.train import Trainer, noisy
from tests.text2image_cases import TINY, needs_vocab, tiny_options

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 4 steps (its folder)."""
    folder = tmp_path_factory.mktemp("t2i") / "model"
    Trainer(folder, ModelConfig(**TINY), tiny_options()).run()
    return folder


# ---------------------------------------------------------------- tokenizer and text encoder


@needs_vocab
def test_tokenizer_matches_clip_ids_and_round_trips():
    tok = CLIPTokenizer(max_length=12)
    # CLIP's published ids: <|startoftext|> a photo of a ... <|endoftext|>
    ids = tok("a photo of a sneaker")[0]
    assert ids[:5] == [49406, 320, 1125, 539, 320] and ids[6:] == [49407] * 6
    assert tok.decode(ids) == "a photo of a sneaker"
    assert tok.encode_text("  A   Photo ") == tok.encode_text("a photo")  # lower-cased, white space normalised
    assert tok.decode(tok.encode_text("ankle-boots, 42!")) == "ankle - boots , 4 2 !"
    new = tok.add_token("<my-thing>")
    assert new == 49408 and tok.encode_text("a photo of <my-thing>") == [320, 1125, 539, 49408]
    # a multi-vector token stands for consecutive ids and is written once when decoded
    assert tok.add_token("<pair>", vectors=3) == 49409 and tok.vocab_size == 49412
    assert tok.encode_text("<pair> of <my-thing>") == [49409, 49410, 49411, 539, 49408]
    assert tok.decode(tok.encode_text("a <pair> of <my-thing>")) == "a <pair> of <my-thing>"


@needs_vocab
def test_tokenizer_bad_input(tmp_path):
    tok = CLIPTokenizer(max_length=5)
    with pytest.raises(ValueError, match=r"text: .* at most 3 fit"):
        tok("a photo of a sneaker")
    with pytest.raises(ValueError, match="token: expected a placeholder"):
        tok.add_token("thing")
    for vectors in (0, 4, True):  # max_length 5 leaves 3 positions between start and end
        with pytest.raises(ValueError, match=r"vectors: expected an int in \[1, 3\]"):
            tok.add_token("<many>", vectors=vectors)
    with pytest.raises(TypeError, match="text: expected a str"):
        tok.encode_text(3)
    with pytest.raises(FileNotFoundError, match="vocab_path"):
        CLIPTokenizer(tmp_path / "missing.txt.gz")
    with pytest.raises(ValueError, match="max_length"):
        CLIPTokenizer(max_length=2)


def test_text_encoder_is_causal_and_checks_ids():
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(vocab_size=50, max_length=6, width=16, layers=2, heads=2)).eval()
    ids = torch.randint(0, 50, (2, 6))
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 50
    a, b = enc(ids), enc(changed)
    assert a.shape == (2, 6, 16) and torch.isfinite(a).all()
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-6)  # earlier positions cannot see later ones
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 50\)"):
        enc(torch.tensor([[1, 50]]))


def test_text_encoder_final_norm_option():
    """final_norm=False (new models' default) leaves the residual stream as the output, so a token scaled up
    gives larger rows; with CLIP's final LayerNorm every row keeps one norm. Configs from before the option
    (no key) still mean the LayerNorm."""
    small = dict(vocab_size=50, max_length=6, width=16, layers=1, heads=2)
    assert TextEncoderConfig(**small).final_norm and ModelConfig().text["final_norm"] is False
    assert isinstance(TextEncoder(TextEncoderConfig(**small)).final_norm, torch.nn.LayerNorm)
    ids = torch.tensor([[1, 2, 50, 3]])
    for final_norm in (True, False):
        torch.manual_seed(0)
        enc = TextEncoder(TextEncoderConfig(**small, final_norm=final_norm)).eval()
        norms = []
        for scale in (1.0, 1000.0):
            enc.added_embeddings = torch.nn.Parameter(enc.token_embedding.weight[7:8].detach() * scale)
            norms.append(enc(ids)[0, 2].norm().item())
        if final_norm:
            assert norms[1] == pytest.approx(norms[0], rel=0.05), norms
        else:
            assert norms[1] > 10 * norms[0], norms
    with pytest.raises(ValueError, match="final_norm: expected true or false"):
        TextEncoderConfig(**small, final_norm=0)


@needs_vocab
def test_weights_from_the_other_final_norm_setting_are_refused():
    with_norm = TextToImage.new(ModelConfig(**{**TINY, "text": {**TINY["text"], "final_norm": True}}))
    with pytest.raises(ValueError, match=r"text_encoder weights do not match config\.json"):
        load_weights(TextToImage.new(ModelConfig(**TINY)), weights_of(with_norm), "model.safetensors")


# ---------------------------------------------------------------- data


def test_idx_reader_plain_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape) + images.tobytes()
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    with gzip.open(tmp_path / "b-idx3-ubyte.gz", "wb") as f:
        f.write(raw)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a-idx3-ubyte"), images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "b-idx3-ubyte.gz"), images)
    (tmp_path / "bad").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="expected 24 bytes"):
        data.read_idx(tmp_path / "bad")


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()


def test_fashion_mnist_files_found_in_the_cache(tmp_path, monkeypatch):
    """The reader finds the (gzipped) IDX files anywhere under the cache folder, as the package lays them out."""
    monkeypatch.setenv("GENAI_FAST_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="genai-fast diffusion prepare"):
        data.load_images("fashion-mnist", "test")
    folder = tmp_path / "fashion-mnist" / "usr" / "share"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 3)):
        images_name, labels_name = data.FASHION_FILES[split]
        with gzip.open(folder / (images_name + ".gz"), "wb") as f:
            f.write(_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        (folder / labels_name).write_bytes(_idx(np.arange(n, dtype=np.uint8)))
    assert data.fashion_mnist_available()
    test = data.load_images("fashion-mnist", "test")
    assert test.images.shape == (3, 28, 28) and test.labels.tolist() == [0, 1, 2]


def test_model_space_round_trip_and_class_names():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = data.to_model_space(images, 32)
    assert x.shape == (3, 1, 32, 32) and x[:, :, :2].eq(-1).all() and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(data.from_model_space(x, 28, 28), images)
    assert data.class_index("fashion-mnist", "an ankle boot") == 9
    assert data.caption("fashion-mnist", 7) == "a photo of a sneaker"
    with pytest.raises(ValueError, match=r"unknown class 'sock'.*ankle boot"):
        data.class_index("fashion-mnist", "sock")
    with pytest.raises(ValueError, match="data: unknown dataset"):
        data.load_images("cifar")


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_image_folder(tmp_path / "nope", 8, 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is empty"):
        data.load_image_folder(empty, 8, 8)
    text = tmp_path / "text"
    text.mkdir()
    (text / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image file"):
        data.load_image_folder(text, 8, 8)
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(big / "0.png")
    with pytest.raises(ValueError, match=r"12x10, the model's images are 8x8 \(resolution mismatch"):
        data.load_image_folder(big, 8, 8)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(good / f"{i}.png")  # RGB becomes gray
    assert data.load_image_folder(good, 8, 8).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="holds 2 images, expected 3 to 10"):
        data.load_image_folder(good, 8, 8, 3, 10)


# ---------------------------------------------------------------- training and checkpoints


def _fixed_batch_loss(trainer: Trainer) -> float:
    """The loss on one fixed batch (same images, captions, timesteps and noise every call)."""
    g = torch.Generator().manual_seed(123)
    index = torch.randint(len(trainer.images), (64,), generator=g)
    x0 = data.to_model_space(trainer.images[index], trainer.model.config.sample_size)
    ids = trainer.captions.draw(index, 0.0, g)
    t = torch.randint(1000, (64,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        pred = trainer.model.unet(noisy(x0, noise, t, trainer.alphas_cumprod), t,
                                  encoder_hidden_states=trainer.model.text_encoder(ids)).sample
    return float(torch.nn.functional.mse_loss(pred, noise))


def _box(height: int, width: int, level: int, size: int = 16, holes: bool = False) -> np.ndarray:
    """A size x size image with a height x width box of ink `level` (every other pixel blank with holes)."""
    image = np.zeros((size, size), np.uint8)
    image[1:1 + height, 2:2 + width] = level
    if holes:
        image[1:1 + height:2, 2:2 + width:2] = 0
    return image


def test_measurements_of_known_boxes():
    images = np.stack([_box(10, 4, 200), _box(3, 12, 100, holes=True), np.zeros((16, 16), np.uint8)])
    m = measurements(images)
    np.testing.assert_allclose(m[0], [10, 4, 200, 1.0])
    np.testing.assert_allclose(m[1][:3], [3, 12, 100])
    assert m[1][3] == pytest.approx(1 - (2 * 6) / 36)  # rows 0 and 2 lose every other pixel
    np.testing.assert_allclose(m[2], [0, 0, 0, 0])  # a blank image: no box, no ink, no error


def test_attributes_compare_images_with_their_own_class():
    # class 0: heights 2, 4, 6; class 1: heights 9, 11, 13 (all taller than class 0): each class gets its own
    # short and tall image; widths, tones and fills are equal within a class, so those get no word
    images = np.stack([_box(h, 5, 120) for h in (2, 4, 6, 9, 11, 13)])
    labels = np.array([0, 0, 0, 1, 1, 1])
    attrs = image_attributes(images, labels)
    assert attrs.dtype == np.int8 and attrs.shape == (6, len(ATTRIBUTE_WORDS))
    assert attrs[:, 0].tolist() == [-1, 0, 1, -1, 0, 1]
    assert not attrs[:, 1:].any()
    assert attribute_words([1, -1, 0, 1], [3, 2, 1, 0]) == ["solid", "narrow", "tall"]  # in the drawn order


def test_phrase_with_puts_words_after_the_article():
    assert phrase_with("a sneaker", []) == "a sneaker"
    assert phrase_with("an ankle boot", ["tall", "dark"]) == "a tall dark ankle boot"
    assert phrase_with("a pair of trousers", ["wide"]) == "a wide pair of trousers"


@needs_vocab
@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_captions_name_the_drawn_attributes(rate):
    model = TextToImage.new(ModelConfig(**TINY))
    images = np.stack([_box(h, w, 60 + 40 * (i % 5)) for i, (h, w) in enumerate(
        [(h, w) for h in (3, 6, 9, 12) for w in (4, 8, 12)])])
    labels = torch.tensor([0, 1] * 6)
    attrs = image_attributes(images, labels.numpy())
    captions = Captions(model, labels, attrs, rate)
    g = torch.Generator().manual_seed(0)
    index = torch.arange(12).repeat(8)
    ids = captions.draw(index, 0.0, g)
    plain = set(map(tuple, captions.class_ids.flatten(0, 1).tolist()))  # the attribute-free captions
    named = 0
    for row, i in zip(ids.tolist(), index.tolist(), strict=True):
        text = model.tokenizer.decode(row)
        words = [w for w in text.split() if any(w in pair for pair in ATTRIBUTE_WORDS)]
        allowed = {ATTRIBUTE_WORDS[k][int(v > 0)] for k, v in enumerate(attrs[i]) if v}
        assert set(words) <= allowed and len(words) == len(set(words)), (text, allowed)
        if rate == 1.0:
            assert set(words) == allowed, (text, allowed)
        named += bool(words)
        assert (tuple(row) in plain) == (not words)
    assert (named == 0) == (rate == 0.0)
    dropped = captions.draw(index, 1.0, g)
    assert (dropped == captions.empty).all()


@needs_vocab
def test_captions_leave_out_words_that_do_not_fit():
    model = TextToImage.new(ModelConfig(**TINY))  # 16 positions: start, 14 tokens, end
    captions = Captions(model, torch.tensor([0]), None, 0.0)
    words = [pair[1] for pair in ATTRIBUTE_WORDS] * 3  # 12 words: too many for any template
    text = captions.text(7, 4, words)
    assert len(model.tokenizer.encode_text(text)) <= 14 and len(text.split(" ")) < 4 + 1 + 12 + 3
    assert text.startswith("a small photo of a tall wide") and text.endswith("handwritten digit seven")
    assert captions.text(7, 4, ["tall"]) == "a small photo of a tall handwritten digit seven"


@needs_vocab
def test_training_steps_reduce_the_loss(tmp_path):
    trainer = Trainer(tmp_path / "m", ModelConfig(**TINY), tiny_options(steps=12))
    assert trainer.model.config.holdout_index == 9 and not (trainer.labels == 9).any()  # held out
    before = _fixed_batch_loss(trainer)
    losses = [trainer.train_step() for _ in range(12)]
    after = _fixed_batch_loss(trainer)
    assert all(np.isfinite(losses))
    assert after < 0.8 * before, (before, after)


@needs_vocab
def test_checkpoint_round_trip_and_resume_is_exact(tmp_path, trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["dataset"] == "digits" and config["holdout"] == "handwritten digit nine"
    model = load_model(trained, patch=False)
    weights, meta = read_safetensors(trained / "model.safetensors")
    assert meta["step"] == "4"
    for key, value in weights_of(model).items():
        assert torch.equal(value, weights[key]), key
    state, _ = read_safetensors(trained / "train_state.safetensors")
    for key, value in weights.items():  # model.safetensors holds the EMA weights
        assert torch.equal(value, state["ema." + key]), key

    # 2 steps, stop, resume to 4 == 4 steps in one go (the fixture), bit for bit
    Trainer(tmp_path / "r", ModelConfig(**TINY), tiny_options(steps=2)).run()
    resumed = Trainer(tmp_path / "r", ModelConfig(), tiny_options(steps=4), resume=True)  # config from the folder
    assert resumed.step == 2
    resumed.run()
    again, _ = read_safetensors(tmp_path / "r" / "train_state.safetensors")
    for key, value in state.items():
        assert torch.equal(value, again[key]), key
    with pytest.raises(ValueError, match="already holds a model; pass --resume"):
        Trainer(tmp_path / "r", ModelConfig(**TINY), tiny_options())


# ---------------------------------------------------------------- sampling


@needs_vocab
def test_sampling_is_reproducible_with_a_seed(trained):
    model = load_model(trained)
    prompts = ["a photo of a handwritten digit three"] * 3
    a = generate(model, prompts, "dpm++", 3, 3.0, seed=5, progress=False)
    b = generate(model, prompts, "dpm++", 3, 3.0, seed=5, batch_size=2, progress=False)
    c = generate(model, prompts, "dpm++", 3, 3.0, seed=6, progress=False)
    assert a.shape == (3, 8, 8) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = generate(model, prompts[:1], "ddpm", 3, 1.0, seed=5, progress=False)  # stochastic sampler, seeded
    np.testing.assert_array_equal(d, generate(model, prompts[:1], "ddpm", 3, 1.0, seed=5, progress=False))


@needs_vocab
def test_negative_prompt_is_what_guidance_steers_from(trained):
    model = load_model(trained)
    prompts = ["a photo of a handwritten digit three"] * 2
    plain = generate(model, prompts, "ddim", 3, 3.0, seed=1, progress=False)
    np.testing.assert_array_equal(plain, generate(model, prompts, "ddim", 3, 3.0, seed=1, progress=False,
                                                  negative_prompt=""))
    away = generate(model, prompts, "ddim", 3, 3.0, seed=1, progress=False,
                    negative_prompt="a photo of a handwritten digit eight")
    assert not np.array_equal(plain, away)
    # guidance 1 is the conditional prediction alone: the negative prompt drops out
    np.testing.assert_array_equal(
        generate(model, prompts, "ddim", 3, 1.0, seed=1, progress=False),
        generate(model, prompts, "ddim", 3, 1.0, seed=1, progress=False, negative_prompt="a photo of a dog"))
    with pytest.raises(TypeError, match="negative_prompt: expected a string"):
        generate(model, prompts, steps=2, negative_prompt=None, progress=False)


@needs_vocab
def test_sampling_bad_input(trained):
    model = load_model(trained)
    with pytest.raises(ValueError, match="--steps: expected a positive integer, got 0"):
        generate(model, ["a photo of a handwritten digit three"], steps=0)
    assert make_model_sampler(model, "dpm++").config["thresholding"]  # x0 clipped to the pixel range
    assert make_model_sampler(model, "unipc").config["thresholding"]
    assert make_model_sampler(model, "dpm++_single").config["thresholding"]
    assert make_model_sampler(model, "ddim").config["clip_sample"]
    assert make_model_sampler(model, "lcm").config["clip_sample"]
    for name in SAMPLER_NAMES:  # every sampler runs on the model's schedule (parity is tests/test_samplers.py's)
        images = generate(model, ["a photo of a sneaker"], name, 4, 2.0, progress=False)
        assert images.shape[0] == 1 and images.dtype == np.uint8 and images.std() > 0
    with pytest.raises(ValueError, match="--sampler: unknown sampler 'plms'"):
        generate(model, ["x"], sampler="plms")
    with pytest.raises(ValueError, match="unknown token '<nope>'"):
        check_prompt_tokens(model, "a photo of <nope>")


# ---------------------------------------------------------------- textual inversion


@needs_vocab
@pytest.mark.parametrize("num_vectors", [1, 2])
def test_inversion_changes_only_the_new_embedding(trained, tmp_path, num_vectors):
    model = load_model(trained)
    before = {k: v.clone() for k, v in weights_of(model).items()}
    images = data.load_images("digits", "test")
    nines = images.images[images.labels == 9][:4]
    start = model.text_encoder.token_embedding.weight[model.tokenizer.encode_text("object")].mean(0).clone()
    options = InvertOptions(steps=3, batch_size=8, lr=1e-2, num_vectors=num_vectors, progress=False)
    vector, losses = invert(model, nines, "<nine>", options)
    assert len(losses) == 3 and all(np.isfinite(losses))
    for key, value in weights_of(model).items():
        assert torch.equal(value, before[key]), f"{key} changed"
    width = model.text_encoder.config.width
    assert vector.shape == ((width,) if num_vectors == 1 else (num_vectors, width))
    rows = vector.reshape(num_vectors, width)
    assert ((rows - start).abs().amax(1) > 1e-3).all()  # every new row moved
    assert num_vectors == 1 or not torch.equal(rows[0], rows[1])
    path = tmp_path / "nine.safetensors"
    save_embedding(path, "<nine>", vector, {})
    fresh = load_model(trained)
    assert load_embedding(fresh, path) == "<nine>"
    assert torch.equal(fresh.text_encoder.added_embeddings, rows)
    assert len(fresh.tokenizer.encode_text("a photo of <nine>")) == 3 + num_vectors
    check_prompt_tokens(fresh, "a photo of <nine>")
    out = generate(fresh, ["a photo of <nine>"], steps=2, progress=False)
    assert out.shape == (1, 8, 8)


@needs_vocab
def test_inversion_bad_input(trained, tmp_path):
    model = load_model(trained)
    with pytest.raises(ValueError, match="--steps: expected a positive integer"):
        InvertOptions(steps=0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="resolution mismatch"):
        invert_folder(model, folder, "<x>", tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="token: expected a placeholder"):
        invert_folder(model, folder, "x", tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"--num-vectors: expected at most \d+ .* got 99"):
        invert(model, np.zeros((3, 8, 8), np.uint8), "<y>", InvertOptions(num_vectors=99, progress=False))
    with pytest.raises(ValueError, match="--num-vectors: expected a positive integer"):
        InvertOptions(num_vectors=0)
    wrong = tmp_path / "wide.safetensors"
    save_embedding(wrong, "<wide>", torch.zeros(7), {})
    with pytest.raises(ValueError, match=r"embedding has shape \(7,\), this model's text encoder needs \(16,\)"):
        load_embedding(model, wrong)


# ---------------------------------------------------------------- evaluation


def _real_images_for(prompts, shift: int = 0) -> np.ndarray:
    """Real digits test images of each prompt's class (its label + shift, mod 10): a stand-in generator whose
    right answer is known. "<nine>" prompts count as nines."""
    test = data.load_images("digits", "test")
    names = data.class_names("digits")
    out = []
    for i, prompt in enumerate(prompts):
        label = 9 if "<nine>" in prompt else next(c for c, n in enumerate(names) if prompt.endswith(n))
        pool = test.images[test.labels == (label + shift) % 10]
        out.append(pool[i % len(pool)])
    return np.stack(out)


@needs_vocab
@pytest.mark.parametrize("shift", [0, 3])
def test_eval_scores_what_the_classifier_sees(trained, tmp_path, monkeypatch, shift):
    """With real images of the prompted class in place of samples, eval reports about the classifier's own
    accuracy; with images of another class, about zero: the bookkeeping from prompts to scores is right."""
    import shutil

    from genai_fast.diffusion.text2image import evaluate as ev

    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    model = load_model(folder)
    emb = tmp_path / "nine.safetensors"
    save_embedding(emb, "<nine>", torch.zeros(16), {})
    monkeypatch.setattr(ev, "generate", lambda model, prompts, *a, **k: _real_images_for(prompts, shift))
    options = ev.EvalOptions(samples_per_class=6, runs=(("dpm++", 2), ("ddim", 3)), classifier_steps=300,
                             token_samples=8,
                             progress=False)
    results = ev.evaluate(model, folder, options, ((str(emb), "handwritten digit nine"),))
    real = results["classifier_test_accuracy"]
    assert real > 0.8  # digits are easy: the eval classifier must be a useful judge
    assert [(r["sampler"], r["steps"]) for r in results["runs"]] == [("dpm++", 2), ("ddim", 3)]
    token = results["tokens"][0]
    if shift == 0:
        assert all(r["accuracy"] >= real - 0.2 for r in results["runs"]), results
        assert results["holdout"]["plain_prompt_accuracy"] >= 0.5 and token["accuracy"] >= 0.5
    else:
        assert all(r["accuracy"] <= 0.25 for r in results["runs"]), results
        assert token["accuracy"] <= 0.35
    assert token["samples"] == 8
    shares = token["classified_as"]
    assert sum(shares.values()) == pytest.approx(1.0) and list(shares.values()) == sorted(shares.values())[::-1]
    assert shares.get("handwritten digit nine", 0.0) == pytest.approx(token["accuracy"])
    assert "classified as: " in ev.format_results(results)
    assert set(results["runs"][0]["per_class"]) == set(data.class_names("digits"))
    # per-class accuracy on the real test images: weighted by class size it is the overall accuracy
    per_class, labels = results["classifier_per_class"], data.load_images("digits", "test").labels
    counts = np.bincount(labels, minlength=10)
    assert sum(per_class[n] * counts[c] for c, n in enumerate(data.class_names("digits"))) / counts.sum() == \
        pytest.approx(real, abs=1e-6)
    assert token["real_images_accuracy"] == per_class["handwritten digit nine"]
    assert "real test images of the class: " in ev.format_results(results)
    saved = json.loads((folder / "eval" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert {p.name for p in (folder / "eval").iterdir()} >= {"grid_dpm++_2.png", "grid_ddim_3.png", "token_nine.png"}
    # the classifier is cached in the folder and reused as it is
    _, accuracy = ev.load_or_train_classifier(folder, "digits", 8, progress=False, steps=1)
    assert accuracy == pytest.approx(real, abs=1e-6)


@needs_vocab
def test_eval_runs_the_real_pipeline(trained, tmp_path):
    import shutil

    from genai_fast.diffusion.text2image.evaluate import EvalOptions, evaluate, format_results

    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    options = EvalOptions(samples_per_class=2, runs=(("dpm++", 2),), classifier_steps=50, progress=False)
    results = evaluate(load_model(folder), folder, options)
    assert 0.0 <= results["runs"][0]["accuracy"] <= 1.0
    assert "dpm++   2 steps" in format_results(results)
    with pytest.raises(ValueError, match="--sampler: unknown sampler 'plms'"):
        evaluate(load_model(folder), folder, EvalOptions(runs=(("plms", 2),), progress=False))
    with pytest.raises(ValueError, match="classifier steps: expected a positive integer"):
        EvalOptions(classifier_steps=0)


def _load_bench(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_vocab
def test_inversion_ceiling_bench_fits_a_free_context(trained, tmp_path):
    """bench/inversion_ceiling.py: the free context lowers the loss it optimises; the script runs end to end."""
    import shutil

    ceiling = _load_bench("inversion_ceiling")
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    model = load_model(folder)
    images = data.load_images("digits", "test").images[:8]
    start = model.encode(["a photo of"]).detach()

    def loss_of(context: torch.Tensor) -> float:
        g = torch.Generator().manual_seed(3)
        x0 = data.to_model_space(images, 8).repeat(8, 1, 1, 1)
        t = torch.randint(1000, (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        alphas = make_model_sampler(model, "ddpm").alphas_cumprod
        with torch.no_grad():
            pred = model.unet(noisy(x0, noise, t, alphas), t, encoder_hidden_states=context.expand(len(x0), -1, -1))
        return float(torch.nn.functional.mse_loss(pred.sample, noise))

    fitted = ceiling.optimise_context(model, images, steps=30, lr=3e-2, batch_size=32)
    assert fitted.shape == start.shape and loss_of(fitted) < loss_of(start)
    some_rows = ceiling.optimise_context(model, images, steps=30, lr=3e-2, batch_size=32, rows=(1, 2))
    kept = [0, *range(3, start.shape[1])]
    assert torch.equal(some_rows[:, kept], start[:, kept])
    assert not torch.equal(some_rows[:, 1:3], start[:, 1:3]) and loss_of(some_rows) < loss_of(start)
    held = ceiling.optimise_context(model, images, steps=5, lr=3e-2, batch_size=8, rows=(1, 2), row_norm=1.5)
    assert torch.allclose(held[0, 1:3].norm(dim=-1), torch.full((2,), 1.5))
    assert torch.equal(held[:, kept], start[:, kept])
    for i, image in enumerate(images[:4]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    out = tmp_path / "ceiling.json"
    results = ceiling.main([str(folder), str(tmp_path), "--class", "three", "--steps", "2", "--samples", "3",
                            "--guidance", "3", "--encoder-norm", "--json", str(out)])
    assert json.loads(out.read_text()) == results
    assert set(results["sides"]) == {"token", "free context", "free context at the encoder's norm"}
    rescaled = ceiling.at_row_norm(fitted, 2.5)
    assert torch.allclose(rescaled.norm(dim=-1), torch.full(rescaled.shape[:-1], 2.5))
    assert torch.allclose(rescaled / rescaled.norm(dim=-1, keepdim=True), fitted / fitted.norm(dim=-1, keepdim=True))
    for bad in ("5:2", "x", "0:99"):
        with pytest.raises(SystemExit):
            ceiling.main([str(folder), str(tmp_path), "--class", "three", "--rows", bad])
    for side in ("token", "free context"):
        entry = results["sides"][side]["guidance 3"]
        assert 0 <= entry["accuracy"] <= 1 and sum(entry["predicted"]) == 3


# ---------------------------------------------------------------- CLI


@needs_vocab
def test_cli_sample_writes_a_grid_and_a_folder(trained, tmp_path, capsys):
    args = ["diffusion", "sample", str(trained), "a photo of a handwritten digit one", "--steps", "2", "--n", "4"]
    assert main([*args, "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 16
    assert main([*args, "--out", str(tmp_path / "each")]) == 0
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["000.png", "001.png", "002.png", "003.png"]


@pytest.mark.parametrize("argv, message", [
    (["diffusion", "sample", "{m}", "a photo", "--steps", "0", "--out", "{t}/g.png"], "--steps: expected a positive"),
    (["diffusion", "sample", "{t}/none", "a photo", "--out", "{t}/g.png"], "model folder .* does not exist"),
    (["diffusion", "sample", "{m}", "a photo of <x>", "--out", "{t}/g.png"], "unknown token '<x>'"),
    (["diffusion", "sample", "{m}", "a photo", "--negative-prompt", "<y>", "--out", "{t}/g.png"],
     "unknown token '<y>'"),
    (["diffusion", "invert", "{m}", "{t}", "--token", "<x>", "--out", "{t}/e.safetensors"], "folder .* is empty"),
    (["diffusion", "invert", "{m}", "{t}", "--token", "<x>", "--num-vectors", "0", "--out", "{t}/e.safetensors"],
     "--num-vectors: expected a positive integer"),
    (["diffusion", "train", "--data", "digits", "--holdout", "ten", "--out", "{t}/m"], "unknown class 'ten'"),
    (["diffusion", "train", "--data", "digits", "--steps", "-1", "--out", "{t}/m"], "--steps: expected a positive"),
    (["diffusion", "eval", "{m}", "--runs", "dpm++", "--n", "1"], "--runs: expected SAMPLER:STEPS"),
    (["diffusion", "train", "--data", "digits", "--attribute-rate", "1.5", "--out", "{t}/m"],
     "--attribute-rate: expected 0 <= p <= 1"),
], ids=["steps-zero", "missing-model", "unknown-token", "unknown-negative-token", "empty-images", "zero-vectors",
        "unknown-class", "negative-steps", "bad-runs", "attribute-rate"])
@needs_vocab
def test_cli_user_errors_are_one_line(trained, tmp_path, capsys, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(m=trained, t=empty) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genai-fast: error:"), err
    import re

    assert re.search(message, err[0]), err[0]
