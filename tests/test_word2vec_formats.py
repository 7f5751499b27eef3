"""word2vec files: the word2vec.c formats interoperate with gensim both ways; the native model file
round-trips without pickle; damaged files raise errors naming the file and where; the CLI."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from genai_fast.cli import main
from genai_fast.word2vec import KeyedVectors, Word2Vec, Word2VecFormatError
from tests.word2vec_data import analogy_file_text, pairs_file_text, planted_corpus

gensim = pytest.importorskip("gensim", reason="gensim 4.4 is the compatibility oracle (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def model() -> Word2Vec:
    corpus = planted_corpus(4000) + [["café", "naïve", "城市"]] * 3
    return Word2Vec(corpus, vector_size=12, window=2, min_count=1, workers=1, epochs=2, seed=5)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_word2vec_format_interoperates_with_gensim(model, tmp_path, binary):
    ours_path, theirs_path = tmp_path / "ours.w2v", tmp_path / "theirs.w2v"
    model.wv.save_word2vec_format(ours_path, binary=binary)
    loaded = gensim.models.KeyedVectors.load_word2vec_format(str(ours_path), binary=binary)
    assert loaded.index_to_key == model.wv.index_to_key
    assert np.array_equal(loaded.vectors, model.wv.vectors)  # text: shortest round-trip float32 repr

    loaded.save_word2vec_format(str(theirs_path), binary=binary)
    back = KeyedVectors.load_word2vec_format(theirs_path, binary=binary)
    assert back.index_to_key == model.wv.index_to_key
    assert np.array_equal(back.vectors, model.wv.vectors)
    assert back.most_similar("city1", topn=3) == model.wv.most_similar("city1", topn=3)


def test_word2vec_format_limit_and_vocab_file(model, tmp_path):
    path, vocab = tmp_path / "v.txt", tmp_path / "vocab.txt"
    model.wv.save_word2vec_format(path, fvocab=vocab)
    kv = KeyedVectors.load_word2vec_format(path, fvocab=vocab, limit=5)
    assert kv.index_to_key == model.wv.index_to_key[:5]
    assert kv.get_vecattr(kv.index_to_key[0], "count") == model.wv.get_vecattr(kv.index_to_key[0], "count")


def test_damaged_word2vec_files_name_file_and_place(model, tmp_path):
    text, binary = tmp_path / "v.txt", tmp_path / "v.bin"
    model.wv.save_word2vec_format(text)
    model.wv.save_word2vec_format(binary, binary=True)

    lines = text.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"".join(lines[:10]))
    with pytest.raises(Word2VecFormatError, match=r"cut\.txt: line 11: unexpected end of file"):
        KeyedVectors.load_word2vec_format(cut)
    half = tmp_path / "half.txt"
    half.write_bytes(b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    with pytest.raises(Word2VecFormatError, match=r"half\.txt: line 6: expected a word and 12 numbers"):
        KeyedVectors.load_word2vec_format(half)
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"".join(lines[:3]) + b"word " + b" ".join([b"x1.0"] * 12) + b"\n")
    with pytest.raises(Word2VecFormatError, match=r"garbage\.txt: line 4: invalid number"):
        KeyedVectors.load_word2vec_format(garbage)
    header = tmp_path / "header.txt"
    header.write_bytes(b"twelve 12\n" + b"".join(lines[1:]))
    with pytest.raises(Word2VecFormatError, match=r"header\.txt: line 1"):
        KeyedVectors.load_word2vec_format(header)

    data = binary.read_bytes()
    short = tmp_path / "short.bin"
    short.write_bytes(data[:-7])
    with pytest.raises(Word2VecFormatError, match=r"short\.bin: byte offset \d+: .*truncated"):
        KeyedVectors.load_word2vec_format(short, binary=True)
    with pytest.raises(FileNotFoundError):
        KeyedVectors.load_word2vec_format(tmp_path / "nope.bin", binary=True)


def test_model_save_load_round_trip_without_pickle(model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        assert all(name.endswith(".npy") for name in z.namelist())
    loaded = Word2Vec.load(path)
    assert loaded.wv.index_to_key == model.wv.index_to_key
    assert np.array_equal(loaded.wv.vectors, model.wv.vectors) and np.array_equal(loaded.syn1neg, model.syn1neg)
    assert (loaded.sg, loaded.window, loaded.vector_size) == (model.sg, model.window, model.vector_size)
    loaded.train(planted_corpus(500), total_examples=500, epochs=1)  # training continues
    kv_path = tmp_path / "kv.npz"
    model.wv.save(kv_path)
    assert np.array_equal(KeyedVectors.load(kv_path).vectors, model.wv.vectors)
    with pytest.raises(ValueError, match="holds a KeyedVectors"):
        Word2Vec.load(kv_path)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"damaged\.npz"):
        Word2Vec.load(damaged)


# ---------------------------------------------------------------- CLI


def test_cli_train_query_eval(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(s) for s in planted_corpus(20000)) + "\n")
    analogies, pairs = tmp_path / "a.txt", tmp_path / "p.tsv"
    analogies.write_text(analogy_file_text())
    pairs.write_text(pairs_file_text())
    out = tmp_path / "model"
    assert main(["word2vec", "train", str(corpus), "--out", str(out), "--sg", "--vector-size", "32", "--window",
                 "3", "--min-count", "1", "--sample", "0", "--epochs", "8", "--workers", "2", "--no-progress"]) == 0
    assert (out / "model.npz").is_file() and (out / "vectors.txt").is_file()
    gensim.models.KeyedVectors.load_word2vec_format(str(out / "vectors.txt"))
    capsys.readouterr()
    assert main(["word2vec", "query", str(out), "city1 - country1 + country2", "--topn", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-1] == "city2"
    assert main(["word2vec", "eval", str(out), "--analogies", str(analogies), "--wordsim", str(pairs), "--simlex",
                 str(pairs)]) == 0
    printed = capsys.readouterr().out
    assert "analogies" in printed and "wordsim" in printed

    assert main(["word2vec", "query", str(out), "atlantis + city1"]) == 2
    assert "atlantis" in capsys.readouterr().err
    assert main(["word2vec", "train", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert main(["word2vec", "train", str(corpus), "--out", str(out), "--window", "0"]) == 2
    assert "window" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["word2vec", "train", str(corpus), "--out", str(out), "--device", "cuda"]) == 2
        assert "device" in capsys.readouterr().err
    assert main(["word2vec", "query", str(tmp_path), "a + b"]) == 2
    assert main(["word2vec", "eval", str(out), "--analogies", str(tmp_path / "nope.txt")]) == 2


def test_cli_trains_hierarchical_softmax(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(s) for s in planted_corpus(20000)) + "\n")
    out = tmp_path / "hs"
    assert main(["word2vec", "train", str(corpus), "--out", str(out), "--sg", "--hs", "--negative", "0",
                 "--vector-size", "32", "--window", "3", "--min-count", "1", "--sample", "0", "--epochs", "8",
                 "--workers", "2", "--no-progress"]) == 0
    model = Word2Vec.load(out / "model.npz")
    assert model.hs == 1 and model.negative == 0 and model.syn1.shape == model.wv.vectors.shape
    capsys.readouterr()
    assert main(["word2vec", "query", str(out), "city1 - country1 + country2", "--topn", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-1] == "city2"
    assert main(["word2vec", "train", str(corpus), "--out", str(out), "--negative", "0"]) == 2
    assert "negative" in capsys.readouterr().err


def test_parse_expression():
    from genai_fast.word2vec.cli import parse_expression

    assert parse_expression("paris - france + england") == (["paris", "england"], ["france"])
    assert parse_expression("king -man +woman") == (["king", "woman"], ["man"])
    assert parse_expression("x-ray") == (["x-ray"], [])
    with pytest.raises(ValueError, match="expression"):
        parse_expression(" + - ")
