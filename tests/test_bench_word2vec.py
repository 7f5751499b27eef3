"""bench/word2vec.py's side-by-side script where gensim is missing (a lent GPU machine): --eval-dir supplies
the evaluation files, and genai_fast's own evaluator scores the vectors."""

import json
import random
import shutil
import sys
from pathlib import Path

import pytest

gensim = pytest.importorskip("gensim")
from genai_fast.bench import word2vec as bench  # noqa: E402

EVAL_DATA = Path(gensim.__file__).parent / "test" / "test_data"


def _corpus(path: Path) -> Path:
    """Sentences over words of the three evaluation files, so that some of each fall inside the vocabulary."""
    analogy = (EVAL_DATA / "questions-words.txt").read_text().splitlines()[1:400]
    pairs = [line for name in ("wordsim353.tsv", "simlex999.txt")
             for line in (EVAL_DATA / name).read_text().splitlines()[1:60]]
    words = sorted({w for line in analogy if not line.startswith(":") for w in line.lower().split()}
                   | {w for line in pairs for w in line.lower().split("\t")[:2]})
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(3000)) + "\n")
    return path


def test_without_gensim_the_eval_dir_and_our_evaluator_score_the_run(tmp_path, monkeypatch):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    for name in bench.EVAL_FILES:
        shutil.copy(EVAL_DATA / name, eval_dir / name)
    monkeypatch.setitem(sys.modules, "gensim", None)  # import gensim now raises ImportError
    out = tmp_path / "run.json"
    assert bench.main(["--corpus", str(_corpus(tmp_path / "c.txt")), "--eval-dir", str(eval_dir), "--sg", "1",
                       "--threads", "1", "--epochs", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["library"] == "genai_fast" and row["evaluator"] == "genai_fast"
    assert 0.0 <= row["analogy"] <= 1.0 and -1.0 <= row["ws353"] <= 1.0 and row["raw_words_per_s"] > 0


def test_eval_dir_without_the_files_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--synthetic-zipf", "2000", "--eval-dir", str(tmp_path)])
