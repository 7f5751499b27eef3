"""Robustness of the text-to-image package and `genai-fast diffusion` as a user meets it: Ctrl-C during training
leaves a resumable checkpoint of the step it stopped at, output paths are checked before any work, damaged or
foreign files (config.json, train_state, embeddings, IDX downloads) fail with one clear line, diverged training
or inversion is reported instead of saved, and CLIP's special tokens cannot be taken as placeholders."""

from __future__ import annotations

import gzip
import os
import re
import signal

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")
from PIL import Image
from safetensors.torch import load_file, save_file

from genai_fast.cli import main
from genai_fast.diffusion.text2image import data
from genai_fast.diffusion.text2image.evaluate import parse_runs
from genai_fast.diffusion.text2image.invert import InvertOptions, invert
from genai_fast.diffusion.text2image.model import ModelConfig, load_model, read_config
from genai_fast.diffusion.text2image.pipeline import load_embedding, save_embedding
from genai_fast.diffusion.text2image.tokenizer import check_new_token
from genai_fast.diffusion.text2image.train import Trainer, TrainingInterrupted, TrainOptions
from tests import text2image_cases
from tests.text2image_cases import TINY, needs_vocab


def tiny_options(**kw) -> TrainOptions:
    """The shared tiny options with no periodic checkpoint within a short run: a checkpoint here is one the
    code under test wrote."""
    return text2image_cases.tiny_options(**{"checkpoint_every": 100, **kw})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2i_robust") / "model"
    Trainer(folder, ModelConfig(**TINY), tiny_options(steps=2)).run()
    return folder


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    err = [line for line in lines if line.strip() and "%|" not in line]  # progress bar lines aside
    assert len(err) == 1 and err[0].startswith("genai-fast: error:"), err
    return err[0]


# ---------------------------------------------------------------- Ctrl-C during training


@needs_vocab
def test_ctrl_c_saves_the_step_it_stopped_at_and_resumes_exactly(tmp_path, monkeypatch):
    """SIGINT in the middle of a step: the step finishes, a checkpoint of it is written (none was due: the
    periodic one is every 100 steps), and resuming gives the weights of an uninterrupted run."""
    Trainer(tmp_path / "straight", ModelConfig(**TINY), tiny_options()).run()

    step = Trainer.train_step

    def interrupted_step(self):
        if self.step == 1:  # the signal lands while step 2 is running
            os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 2"):
        Trainer(tmp_path / "cut", ModelConfig(**TINY), tiny_options()).run()
    monkeypatch.setattr(Trainer, "train_step", step)
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.endswith(".tmp")]
    state = Trainer(tmp_path / "cut", ModelConfig(**TINY), tiny_options(), resume=True)
    assert state.step == 2
    state.run()
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "cut" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


@needs_vocab
def test_cli_ctrl_c_exits_130_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from genai_fast.diffusion.text2image import train as train_module

    def stop(out_dir, config, options, resume=False):
        raise TrainingInterrupted(7, out_dir)

    monkeypatch.setattr(train_module, "train", stop)
    out = tmp_path / "m"
    assert main(["diffusion", "train", "--data", "digits", "--steps", "9", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 7" in err and "--resume" in err


# ---------------------------------------------------------------- output paths, checked before any work


@needs_vocab
@pytest.mark.parametrize("argv, message", [
    (["diffusion", "sample", "{m}", "a photo", "--out", "{f}"], "--out .*exists and is not a folder"),
    (["diffusion", "sample", "{m}", "a photo", "--out", "{t}/grid.jpg"], "--out .*name it .png"),
    (["diffusion", "sample", "{m}", "a photo", "--out", "{t}"], None),  # a folder: fine, checked below
    (["diffusion", "images", "--data", "digits", "--class", "nine", "--out", "{f}"], "exists and is not a folder"),
    (["diffusion", "train", "--data", "digits", "--steps", "2", "--out", "{f}"], "exists and is not a folder"),
    (["diffusion", "invert", "{m}", "{t}", "--token", "<x>", "--out", "{t}"], "--out .*is a folder"),
    (["diffusion", "invert", "{m}", "{t}", "--token", "<x>", "--out", "{t}/no/e.safetensors"], "does not exist"),
    (["diffusion", "sample", "{t}/none", "a photo", "--guidance", "nan", "--out", "{t}/g.png"], "--guidance"),
    (["diffusion", "eval", "{t}/none", "--guidance", "-1"], "--guidance: expected a finite number >= 0"),
    (["diffusion", "eval", "{m}", "--runs", "plms:20"], "--runs: unknown sampler 'plms'"),
], ids=["sample-file", "sample-jpg", "sample-folder", "images-file", "train-file", "invert-folder",
        "invert-missing-folder", "sample-guidance-nan", "eval-guidance", "eval-runs-sampler"])
def test_cli_bad_paths_fail_before_loading_or_training(trained, tmp_path, monkeypatch, capsys, argv, message):
    import genai_fast.diffusion.text2image.model as model_module

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv = [a.format(m=trained, t=tmp_path, f=a_file) for a in argv]
    if message is None:
        assert main([*argv, "--n", "1", "--steps", "1"]) == 0
        assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == ["000.png"]
        return

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(model_module, "load_model", no_loading)
    monkeypatch.setattr(model_module.TextToImage, "new", no_loading)
    assert main(argv) == 2
    assert re.search(message, one_error_line(capsys))
    assert a_file.read_text() == "x"


@needs_vocab
def test_cli_eval_checks_embeddings_before_evaluating(trained, tmp_path, monkeypatch, capsys):
    from genai_fast.diffusion.text2image import evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "evaluate",
                        lambda *a, **k: pytest.fail("evaluate ran before the embeddings were checked"))
    good = tmp_path / "good.safetensors"
    save_embedding(good, "<g>", torch.zeros(16), {})
    wide = tmp_path / "wide.safetensors"
    save_embedding(wide, "<w>", torch.zeros(7), {})
    base = ["diffusion", "eval", str(trained), "--n", "1", "--runs", "dpm++:1"]
    cases = [([str(tmp_path / "none.safetensors")], "no such file"),
             ([str(wide)], r"shape \(7,\)"),
             ([str(good), str(good)], "token '<g>' is also in")]
    for files, message in cases:
        assert main([*base, *(x for f in files for x in ("--embeddings", f))]) == 2
        assert re.search(message, one_error_line(capsys))


# ---------------------------------------------------------------- damaged or foreign files


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"format_version": 1, "block_out_channels": 5}', "block_out_channels should be a non-empty list"),
    ('{"format_version": 1, "text": [1]}', "text should be a JSON object"),
    ('{"format_version": 1, "image_size": "8"}', "image_size should be a positive integer"),
    ('{"format_version": 1, "text": {"width": 16, "depth": 3}}', "unexpected keyword argument 'depth'"),
], ids=["list", "int-channels", "text-list", "str-size", "unknown-text-key"])
def test_damaged_config_names_the_file_and_key(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json")) + ": .*" + message):
        read_config(tmp_path)


@needs_vocab
def test_train_state_without_rng_is_refused_clearly(trained, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    state = load_file(folder / "train_state.safetensors")
    del state["rng"]
    save_file(state, folder / "train_state.safetensors", metadata={"step": "2"})
    with pytest.raises(ValueError, match=r"not a training state written by this genai_fast \(no rng\)"):
        Trainer(folder, ModelConfig(**TINY), tiny_options(), resume=True)


@needs_vocab
@pytest.mark.parametrize("vector", [torch.full((16,), float("nan")), torch.zeros(16, dtype=torch.int64)],
                         ids=["nan", "int"])
def test_embedding_that_is_not_finite_floats_is_refused(trained, tmp_path, vector):
    path = tmp_path / "e.safetensors"
    save_file({"embedding": vector}, path, metadata={"kind": "genai_fast.textual_inversion", "token": "<e>"})
    with pytest.raises(ValueError, match="not finite float values"):
        load_embedding(load_model(trained), path)


@needs_vocab
def test_diverged_inversion_raises_instead_of_returning_nan(trained):
    model = load_model(trained)
    images = np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(FloatingPointError, match=r"textual inversion diverged .* lower --lr"):
        invert(model, images, "<d>", InvertOptions(steps=4, batch_size=2, lr=1e30, progress=False))


@needs_vocab
def test_cli_diverged_training_is_a_one_line_user_error(tmp_path, capsys):
    argv = ["diffusion", "train", "--data", "digits", "--steps", "3", "--batch-size", "2", "--sample-every", "0",
            "--lr", "1e30", "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    assert "training diverged" in one_error_line(capsys)


@pytest.mark.parametrize("lr", [float("inf"), float("nan")])
def test_infinite_learning_rate_is_refused(lr):
    with pytest.raises(ValueError, match="--lr: expected a positive"):
        TrainOptions(lr=lr)
    with pytest.raises(ValueError, match="--lr: expected a positive"):
        InvertOptions(lr=lr)


def test_clip_special_tokens_are_not_placeholders():
    for token in ("<|endoftext|>", "<|startoftext|>", "<|EndOfText|>"):
        with pytest.raises(ValueError, match="special tokens"):
            check_new_token(token)
    check_new_token("<my-thing>")


def test_parse_runs_names_runs_for_an_unknown_sampler():
    assert parse_runs("dpm++:2,ddim:3") == (("dpm++", 2), ("ddim", 3))
    with pytest.raises(ValueError, match="--runs: unknown sampler 'plms'"):
        parse_runs("dpm++:2,plms:3")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_damaged_gzip_idx_is_a_value_error(tmp_path, damage):
    path = tmp_path / "images-idx3-ubyte.gz"
    packed = gzip.compress(_idx_bytes(np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256))
    path.write_bytes(packed[: len(packed) // 2] if damage == "truncated" else b"not gzip at all")
    with pytest.raises(ValueError, match="damaged gzip file"):
        data.read_idx(path)


def test_prepare_fetches_again_when_the_cache_is_damaged(tmp_path, monkeypatch):
    """A cache whose files are all present but one is damaged is not 'ready': prepare fetches again (here
    apt-get is missing, so it says so instead of reporting the damaged cache as ready)."""
    for pair in data.FASHION_FILES.values():
        for stem in pair:
            shape = (2, 28, 28) if "images" in stem else (2,)
            (tmp_path / (stem + ".gz")).write_bytes(gzip.compress(_idx_bytes(np.zeros(shape, np.uint8))))
    assert data.prepare_fashion_mnist(tmp_path) == tmp_path  # intact: nothing to do
    broken = tmp_path / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:20])
    monkeypatch.setattr(data.shutil, "which", lambda tool: None)
    with pytest.raises(FileNotFoundError, match="apt-get not found"):
        data.prepare_fashion_mnist(tmp_path)


@needs_vocab
def test_cli_images_of_a_digit_class(tmp_path, capsys):
    out = tmp_path / "nines"
    assert main(["diffusion", "images", "--data", "digits", "--class", "nine", "--n", "3", "--out", str(out)]) == 0
    files = sorted(out.iterdir())
    assert [p.name for p in files] == ["000.png", "001.png", "002.png"]
    assert Image.open(files[0]).size == (8, 8)
    assert "wrote 3 images" in capsys.readouterr().out
