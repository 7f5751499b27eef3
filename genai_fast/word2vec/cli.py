"""`genai-fast word2vec` subcommands: train, query, eval.

    genai-fast word2vec train CORPUS --out DIR [--sg] [--vector-size 100] [--window 5] [--epochs 5] ...
    genai-fast word2vec query DIR "paris - france + england" [--topn 10]
    genai-fast word2vec eval DIR [--analogies PATH] [--wordsim PATH] [--simlex PATH]

DIR holds model.npz (the full model, no pickle) and vectors.txt (word2vec text format, readable by
gensim). Files are written atomically; Ctrl-C during training writes nothing and exits 130.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

MODEL_FILE = "model.npz"
VECTORS_FILE = "vectors.txt"


def add_parser(sub: Any) -> None:
    """Register `word2vec` and its subcommands on the main parser's subparsers object."""
    w2v = sub.add_parser("word2vec", help="train, query and evaluate word2vec models (gensim-compatible)")
    cmds = w2v.add_subparsers(dest="w2v_command", required=True, parser_class=type(w2v))

    train = cmds.add_parser("train", help="train on a LineSentence corpus file (one sentence per line)")
    train.add_argument("corpus", help="UTF-8 text, tokens separated by whitespace, one sentence per line")
    train.add_argument("--out", required=True, help="output folder (created if missing)")
    train.add_argument("--sg", action="store_true", help="skip-gram (default: CBOW)")
    train.add_argument("--vector-size", type=int, default=100)
    train.add_argument("--window", type=int, default=5)
    train.add_argument("--negative", type=int, default=5, help="noise words per positive pair (0 needs --hs)")
    train.add_argument("--hs", action="store_true",
                       help="hierarchical softmax (alone with --negative 0, else beside negative sampling)")
    train.add_argument("--min-count", type=int, default=5)
    train.add_argument("--sample", type=float, default=1e-3)
    train.add_argument("--alpha", type=float, default=0.025)
    train.add_argument("--min-alpha", type=float, default=0.0001)
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to train (auto: a CUDA GPU when present and --workers is not 1)")
    train.add_argument("--max-final-vocab", type=int, default=None)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--binary", action="store_true", help="also write vectors.bin (word2vec binary format)")

    query = cmds.add_parser("query", help='nearest words of an expression such as "paris - france + england"')
    query.add_argument("model", help="folder written by `word2vec train` (or a model.npz file)")
    query.add_argument("expression", help="words joined by + and -, e.g. 'king - man + woman'")
    query.add_argument("--topn", type=int, default=10)

    ev = cmds.add_parser("eval", help="analogy accuracy, WordSim353 and SimLex-999 correlations")
    ev.add_argument("model", help="folder written by `word2vec train` (or a model.npz file)")
    ev.add_argument("--analogies", help="analogy file (default: gensim's questions-words.txt)")
    ev.add_argument("--wordsim", help="word-pair file (default: gensim's wordsim353.tsv)")
    ev.add_argument("--simlex", help="word-pair file (default: gensim's simlex999.txt)")
    ev.add_argument("--restrict-vocab", type=int, default=300000)


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "query": _query, "eval": _eval}[args.w2v_command](args)


def _model_path(location: str) -> Path:
    path = Path(location)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model: {location} has no {MODEL_FILE} (train one with `genai-fast word2vec train`)")
    return path


def _train(args: argparse.Namespace) -> int:
    import os

    from genai_fast.word2vec import Word2Vec

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder")
    if args.workers is not None and args.workers < 1:  # 0 would otherwise quietly mean "all cores"
        raise ValueError(f"--workers: expected >= 1 (or leave it out for all cores), got {args.workers}")
    from genai_fast.word2vec.corpus import check_corpus_file

    check_corpus_file(args.corpus)
    model = Word2Vec(
        vector_size=args.vector_size, window=args.window, negative=args.negative, min_count=args.min_count,
        sample=args.sample, alpha=args.alpha, min_alpha=args.min_alpha, epochs=args.epochs, hs=int(args.hs),
        workers=args.workers or os.cpu_count() or 1, seed=args.seed, sg=int(args.sg),
        max_final_vocab=args.max_final_vocab, compute_loss=True, progress=not args.no_progress,
        device=args.device,
    )
    model.build_vocab(corpus_file=args.corpus)
    print(f"vocabulary: {len(model.wv):,} words from {model.corpus_total_words:,} tokens in "
          f"{model.corpus_count:,} lines", file=sys.stderr)
    try:
        model.train(corpus_file=args.corpus, total_words=model.corpus_total_words, epochs=model.epochs)
    except KeyboardInterrupt:
        print(f"genai-fast: interrupted during training; nothing written to {out}", file=sys.stderr)
        return 130
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    model.wv.save_word2vec_format(out / VECTORS_FILE)
    if args.binary:
        model.wv.save_word2vec_format(out / "vectors.bin", binary=True)
    words = model.corpus_total_words * model.epochs
    print(f"trained {words:,} words in {model.total_train_time:.1f} s ({words / model.total_train_time:,.0f} "
          f"words/s); loss per epoch: {', '.join(f'{x:.4g}' for x in model.epoch_losses)}")
    print(f"wrote {out / MODEL_FILE} and {out / VECTORS_FILE}")
    return 0


def parse_expression(expression: str) -> tuple[list[str], list[str]]:
    """'paris - france + england' -> (["paris", "england"], ["france"]); ValueError when it has no word, or an
    operator without a word after it ("paris - - france", "paris +": a typo, not a query to guess at).

    A lone + or - (or one stuck to the front of a word) gives the sign of the next word; the default is +.
    """
    positive: list[str] = []
    negative: list[str] = []
    sign = None
    for token in re.findall(r"[+-]|[^\s+-][^\s+]*", expression):
        if token in ("+", "-"):
            if sign is not None:
                raise ValueError(f"expression: {sign!r} followed by {token!r} in {expression!r}; expected a word "
                                 f"after each + or -")
            sign = token
            continue
        (negative if sign == "-" else positive).append(token)
        sign = None
    if not positive and not negative:
        raise ValueError(f"expression: no words in {expression!r}")
    if sign is not None:
        raise ValueError(f"expression: {expression!r} ends with {sign!r}; expected a word after it")
    return positive, negative


def _query(args: argparse.Namespace) -> int:
    from genai_fast.word2vec import Word2Vec

    if args.topn < 1:
        raise ValueError(f"--topn: expected >= 1, got {args.topn}")
    model = Word2Vec.load(_model_path(args.model))
    positive, negative = parse_expression(args.expression)
    for word in positive + negative:
        if word not in model.wv:
            raise ValueError(f"expression: word {word!r} is not in the vocabulary")
    for word, score in model.wv.most_similar(positive=positive, negative=negative, topn=args.topn):
        print(f"{score:8.4f}  {word}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from genai_fast.word2vec import Word2Vec

    if args.restrict_vocab < 1:
        raise ValueError(f"--restrict-vocab: expected >= 1, got {args.restrict_vocab}")
    model = Word2Vec.load(_model_path(args.model))
    files = {"analogies": args.analogies, "wordsim": args.wordsim, "simlex": args.simlex}
    defaults = {"analogies": "questions-words.txt", "wordsim": "wordsim353.tsv", "simlex": "simlex999.txt"}
    for key, value in files.items():
        if value is None:
            files[key] = str(_gensim_test_data(defaults[key], f"--{key}"))
        elif not Path(value).is_file():
            raise FileNotFoundError(f"--{key} {value}: no such file")
    score, sections = model.wv.evaluate_word_analogies(files["analogies"], restrict_vocab=args.restrict_vocab)
    total = sections[-1]
    answered = len(total["correct"]) + len(total["incorrect"])
    print(f"analogies   {100 * score:6.2f}%  ({len(total['correct'])}/{answered} answered; "
          f"{model.wv.analogy_oov_ratio:.1f}% of questions out of vocabulary)")
    for name in ("wordsim", "simlex"):
        pearson, spearman, oov = _word_pairs(model.wv, name, files[name], args.restrict_vocab)
        print(f"{name:<10}  spearman {spearman[0]:.4f}  pearson {pearson[0]:.4f}  ({oov:.1f}% pairs out of "
              f"vocabulary)")
    return 0


def _word_pairs(wv: Any, name: str, path: str, restrict_vocab: int) -> tuple[Any, Any, float]:
    """evaluate_word_pairs on one file; its errors name the option and the file (with fewer than two pairs in
    the vocabulary the correlation fails inside scipy with a message that names neither)."""
    try:
        return wv.evaluate_word_pairs(path, restrict_vocab=restrict_vocab)
    except ValueError as exc:
        if path in str(exc):
            raise
        raise ValueError(f"--{name} {path}: {exc} (too few of its word pairs in the model's vocabulary?)") from None


def _gensim_test_data(name: str, option: str) -> Path:
    try:
        import gensim
    except ImportError:
        raise FileNotFoundError(f"{option}: gensim is not installed, so its test data is absent; give a path") \
            from None
    path = Path(gensim.__file__).parent / "test" / "test_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{option}: {path} is missing; give a path")
    return path
