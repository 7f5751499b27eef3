"""The genai-fast command as a user meets it: --debug wherever it is typed, a NaN --budget-s refused before any
benchmark runs, diverged training reported as a user error, an unknown GENAI_FAST_BACKEND flagged by info,
and `word2vec` query/train/eval arguments that used to be guessed at or fail inside scipy."""

from __future__ import annotations

import json

import pytest

from genai_fast.cli import main
from genai_fast.word2vec.cli import parse_expression


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("genai-fast: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


# ---------------------------------------------------------------- the top-level command


@pytest.mark.parametrize("argv", [["info", "--json", "--debug"], ["--debug", "info", "--json"]],
                         ids=["after", "before"])
def test_debug_is_accepted_after_the_subcommand(argv, capsys):
    """The internal-error message says "run with --debug": typed at the end, it must not be a usage error."""
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["ops"]


def test_debug_after_a_double_dash_is_an_argument(capsys):
    assert main(["info", "--", "--debug"]) == 2
    assert "unrecognized arguments: -- --debug" in one_error_line(capsys)


def test_debug_after_the_subcommand_shows_the_traceback(capsys):
    assert main(["bench", "--ops", "no_such_op", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "--ops: unknown op" in err


def test_bench_nan_budget_is_refused_before_benchmarking(monkeypatch, capsys):
    import genai_fast.bench.runner as runner

    monkeypatch.setattr(runner, "run_benchmarks", lambda *a, **k: pytest.fail("benchmarks ran"))
    assert main(["bench", "--device", "cpu", "--ops", "rms_norm", "--budget-s", "nan"]) == 2
    assert "--budget-s: expected a positive number of seconds, got nan" in one_error_line(capsys)


def test_floating_point_error_is_a_user_error(monkeypatch, capsys):
    """Training that diverged (loss NaN) tells the user to lower --lr: one line, exit 2, not "internal error"."""
    import genai_fast.cli as cli

    def diverged(args):
        raise FloatingPointError("training diverged at step 3 (loss nan); lower --lr")

    monkeypatch.setitem(cli.COMMANDS, "info", diverged)
    assert main(["info"]) == 2
    assert one_error_line(capsys) == "genai-fast: error: training diverged at step 3 (loss nan); lower --lr"


def test_info_flags_an_unknown_forced_backend(monkeypatch, capsys):
    from genai_fast.info import info

    monkeypatch.setenv("GENAI_FAST_BACKEND", "bogus")
    data = info()
    assert data["forced_backend"] == "bogus" and "GENAI_FAST_BACKEND" in data["forced_backend_error"]
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "warning: GENAI_FAST_BACKEND" in out and "forces that backend everywhere" not in out
    monkeypatch.setenv("GENAI_FAST_BACKEND", " torch ")  # the ops strip it; info reports what they use
    data = info()
    assert data["forced_backend"] == "torch" and data["forced_backend_error"] is None
    monkeypatch.setenv("GENAI_FAST_BACKEND", "")
    assert info()["forced_backend"] is None


# ---------------------------------------------------------------- word2vec


@pytest.mark.parametrize("expression, message", [
    ("paris - - france", "'-' followed by '-'"),
    ("paris + - france", "'\\+' followed by '-'"),
    ("paris -", "ends with '-'"),
    ("paris +", "ends with '\\+'"),
    ("", "no words"),
    ("  ", "no words"),
])
def test_malformed_expressions_are_errors(expression, message):
    with pytest.raises(ValueError, match="expression: .*" + message):
        parse_expression(expression)


def test_well_formed_expressions_still_parse():
    assert parse_expression("paris - france + england") == (["paris", "england"], ["france"])
    assert parse_expression("- france") == ([], ["france"])
    assert parse_expression("+paris -france") == (["paris"], ["france"])
    assert parse_expression("x-ray - y") == (["x-ray"], ["y"])


@pytest.fixture(scope="module")
def w2v_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w2v_cli")
    words = ["king", "queen", "man", "woman", "paris", "france", "london", "england"]
    lines = [" ".join(words[(i * 3 + j) % len(words)] for j in range(6)) for i in range(200)]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    out = folder / "model"
    assert main(["word2vec", "train", str(folder / "corpus.txt"), "--out", str(out), "--vector-size", "8",
                 "--min-count", "1", "--epochs", "1", "--workers", "1", "--no-progress", "--device", "cpu"]) == 0
    return out


def test_query_unknown_word_and_malformed_expression(w2v_model, capsys):
    assert main(["word2vec", "query", str(w2v_model), "paris - atlantis"]) == 2
    assert "word 'atlantis' is not in the vocabulary" in one_error_line(capsys)
    assert main(["word2vec", "query", str(w2v_model), "paris - - france"]) == 2
    assert "expected a word after each + or -" in one_error_line(capsys)


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_train_workers_below_one_is_refused(w2v_model, tmp_path, capsys, workers):
    corpus = w2v_model.parent / "corpus.txt"
    assert main(["word2vec", "train", str(corpus), "--out", str(tmp_path / "m"), "--workers", workers,
                 "--min-count", "1", "--epochs", "1", "--no-progress"]) == 2
    assert "workers" in one_error_line(capsys)
    assert not (tmp_path / "m").exists()


def test_eval_restrict_vocab_below_one_is_refused(w2v_model, capsys):
    assert main(["word2vec", "eval", str(w2v_model), "--restrict-vocab", "0"]) == 2
    assert "--restrict-vocab: expected >= 1, got 0" in one_error_line(capsys)


def test_eval_pair_file_too_small_names_the_option_and_file(w2v_model, tmp_path, capsys):
    """One in-vocabulary pair: no correlation can be computed (gensim fails inside scipy the same way); the
    message must say which file, not only scipy's "`x` and `y` must have length at least 2"."""
    analogies = tmp_path / "analogies.txt"
    analogies.write_text(": capitals\nparis france london england\n")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("king\tqueen\t8.5\nfoo\tbar\t1.0\n")
    good = tmp_path / "good.tsv"
    good.write_text("king\tqueen\t8.5\nman\twoman\t8.0\nparis\tengland\t2.0\n")
    assert main(["word2vec", "eval", str(w2v_model), "--analogies", str(analogies), "--wordsim", str(good),
                 "--simlex", str(pairs)]) == 2
    assert f"--simlex {pairs}:" in one_error_line(capsys)
    assert main(["word2vec", "eval", str(w2v_model), "--analogies", str(analogies), "--wordsim", str(good),
                 "--simlex", str(good)]) == 0
    assert "simlex" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_bench_output_in_an_unwritable_folder_is_refused_before_benchmarking(monkeypatch, capsys, option):
    # /proc takes no new files, even for root (which ignores permission bits).
    monkeypatch.setattr("genai_fast.bench.runner.run_benchmarks",
                        lambda *a, **k: pytest.fail("benchmarked before checking the output path"))
    assert main(["bench", "--device", "cpu", option, "/proc/genai-fast-out"]) == 2
    err = capsys.readouterr().err
    assert option in err and "cannot write in /proc" in err
