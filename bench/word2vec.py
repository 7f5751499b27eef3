"""word2vec benchmarks.

1. Registry entry `sgns_step` (for `genai-fast bench`): the C++ skip-gram step (shared negatives) on a
   fixed batch against the PyTorch reference; the oracle is the reference in float64.
2. Side-by-side script: genai_fast.word2vec vs gensim 4.4 (`corpus_file`) on the same corpus file,
   parameters and thread count; raw words/s (corpus tokens x epochs / training wall time), the ratio,
   analogy accuracy (questions-words), WordSim353 and SimLex-999 correlations (both models scored by
   gensim's evaluator, ours also by our own as a cross-check), and a plot of words/s vs threads.

    python bench/word2vec.py --corpus /tmp/w2v_corpus.txt --sg 1 0 --threads 1 2 --epochs 5 --seeds 1 2 3 \
        --json /tmp/w2v.json --plot /tmp/w2v.png

Build the corpus first with bench/build_word2vec_corpus.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:  # as the installed package (genai-fast bench) or as a script from the checkout
    from genai_fast.bench.registry import BenchEntry, Case, register
except ImportError:  # pragma: no cover
    BenchEntry = None

from genai_fast.ops.word2vec_ops import sgns_step, word2vec_step_reference

# ---------------------------------------------------------------- registry entry: sgns_step


def _step_case(vocab: int, dim: int, batch: int, contexts: int, negative: int) -> Any:
    return Case({"vocab": vocab, "dim": dim, "batch": batch, "contexts": contexts, "negative": negative},
                torch.float32, f"V{vocab} D{dim} B{batch} C{contexts} K{negative}")


def _make_inputs(case: Any, device: torch.device) -> dict[str, Any]:
    p = case.params
    g = torch.Generator().manual_seed(0)
    syn0 = (torch.rand(p["vocab"], p["dim"], generator=g) - 0.5) / p["dim"]
    syn1 = torch.randn(p["vocab"], p["dim"], generator=g) * 0.1
    centers = torch.randint(0, p["vocab"], (p["batch"],), generator=g)
    contexts = torch.randint(0, p["vocab"], (p["batch"], p["contexts"]), generator=g)
    negatives = torch.randint(0, p["vocab"], (p["batch"], p["negative"]), generator=g)
    touched = torch.unique(torch.cat([centers, contexts.flatten(), negatives.flatten()]))
    return {"syn0": syn0, "syn1neg": syn1, "centers": centers, "contexts": contexts, "negatives": negatives,
            "touched": touched}


def _restoring(inputs: dict[str, Any], fn: Any) -> torch.Tensor:
    """Run fn on the tables, then put the touched rows back, so every call sees the same inputs."""
    rows = inputs["touched"]
    saved0, saved1 = inputs["syn0"][rows].clone(), inputs["syn1neg"][rows].clone()
    out = fn(inputs["syn0"], inputs["syn1neg"])
    inputs["syn0"][rows] = saved0
    inputs["syn1neg"][rows] = saved1
    return out


def _run(inputs: dict[str, Any], backend: str | None) -> torch.Tensor:
    return _restoring(inputs, lambda s0, s1: sgns_step(s0, s1, inputs["centers"], inputs["contexts"],
                                                        inputs["negatives"], 0.025, backend=backend))


def _torch_reference(inputs: dict[str, Any]) -> torch.Tensor:
    return _restoring(inputs, lambda s0, s1: word2vec_step_reference(
        s0, s1, inputs["centers"], inputs["contexts"], inputs["negatives"], 0.025, "sg_shared"))


def _oracle(inputs: dict[str, Any]) -> torch.Tensor:
    return word2vec_step_reference(inputs["syn0"].double(), inputs["syn1neg"].double(), inputs["centers"],
                                   inputs["contexts"], inputs["negatives"], 0.025, "sg_shared")


def _flops(case: Any) -> float:
    p = case.params  # per (context, target): dot + input-error axpy + output axpy = 6 D
    return 6.0 * p["batch"] * p["contexts"] * (p["negative"] + 1) * p["dim"]


def _bytes(case: Any) -> float:
    p = case.params  # rows read and written once
    return 8.0 * p["batch"] * (p["contexts"] + p["negative"] + 1) * p["dim"]


if BenchEntry is not None:
    ENTRY = register(BenchEntry(
        op="sgns_step",
        presets={"quick": {"cpu": [_step_case(20000, 100, 64, 10, 5)]},
                 "full": {"cpu": [_step_case(70000, 100, 256, 10, 5), _step_case(70000, 300, 256, 10, 5)]}},
        make_inputs=_make_inputs,
        run=_run,
        references={"torch reference (float32, per row)": _torch_reference},
        oracle=_oracle,
        flops=_flops,
        bytes=_bytes,
        bound="memory",
    ))


# ---------------------------------------------------------------- side-by-side training vs gensim


def gensim_test_file(name: str) -> Path:
    import gensim

    return Path(gensim.__file__).parent / "test" / "test_data" / name


def evaluate_with_gensim(keys: list[str], vectors: Any) -> dict[str, float]:
    """Analogy accuracy, WS353 and SimLex (Spearman) with gensim's evaluator."""
    from gensim.models import KeyedVectors as GensimKV

    kv = GensimKV(vectors.shape[1])
    kv.add_vectors(keys, vectors)
    analogy, _ = kv.evaluate_word_analogies(str(gensim_test_file("questions-words.txt")))
    ws = kv.evaluate_word_pairs(str(gensim_test_file("wordsim353.tsv")))
    simlex = kv.evaluate_word_pairs(str(gensim_test_file("simlex999.txt")))
    return {"analogy": float(analogy), "ws353": float(ws[1][0]), "simlex": float(simlex[1][0])}


def evaluate_ours(wv: Any) -> dict[str, float]:
    analogy, _ = wv.evaluate_word_analogies(gensim_test_file("questions-words.txt"))
    ws = wv.evaluate_word_pairs(gensim_test_file("wordsim353.tsv"))
    simlex = wv.evaluate_word_pairs(gensim_test_file("simlex999.txt"))
    return {"analogy": float(analogy), "ws353": float(ws[1][0]), "simlex": float(simlex[1][0])}


def train_one(library: str, corpus: str, params: dict[str, Any], threads: int, seed: int,
              epochs: int) -> dict[str, Any]:
    if library == "gensim":
        from gensim.models import Word2Vec
    else:
        from genai_fast.word2vec import Word2Vec
    model = Word2Vec(**params, workers=threads, seed=seed, epochs=epochs)
    model.build_vocab(corpus_file=corpus)
    start = time.perf_counter()
    model.train(corpus_file=corpus, total_words=model.corpus_total_words, epochs=epochs)
    seconds = time.perf_counter() - start
    row = {"library": library, "threads": threads, "seed": seed, "epochs": epochs, "seconds": seconds,
           "corpus_words": model.corpus_total_words, "vocab": len(model.wv),
           "raw_words_per_s": model.corpus_total_words * epochs / seconds}
    row.update(evaluate_with_gensim(list(model.wv.index_to_key), model.wv.vectors))
    if library == "genai_fast":
        row["own_eval"] = evaluate_ours(model.wv)
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["sg"], r["threads"]) for r in rows})
    for sg, threads in keys:
        group = {lib: [r for r in rows if r["sg"] == sg and r["threads"] == threads and r["library"] == lib]
                 for lib in ("genai_fast", "gensim")}
        if not all(group.values()):
            continue
        s = {"sg": sg, "threads": threads}
        for lib, rs in group.items():
            for metric in ("raw_words_per_s", "analogy", "ws353", "simlex"):
                s[f"{lib}_{metric}"] = statistics.mean(r[metric] for r in rs)
        s["speedup"] = s["genai_fast_raw_words_per_s"] / s["gensim_raw_words_per_s"]
        s["analogy_delta_points"] = 100 * (s["genai_fast_analogy"] - s["gensim_analogy"])
        s["ws353_delta"] = s["genai_fast_ws353"] - s["gensim_ws353"]
        out.append(s)
    return out


def plot(summary: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for sg in sorted({s["sg"] for s in summary}):
        pts = sorted((s["threads"], s) for s in summary if s["sg"] == sg)
        name = "skip-gram" if sg else "CBOW"
        for lib, style in (("genai_fast", "-o"), ("gensim", "--s")):
            ax.plot([t for t, _ in pts], [s[f"{lib}_raw_words_per_s"] / 1e6 for _, s in pts], style,
                    label=f"{lib} {name}")
    ax.set_xlabel("threads")
    ax.set_ylabel("raw words/s (millions)")
    ax.set_xticks(sorted({s["threads"] for s in summary}))
    ax.legend()
    ax.set_title("word2vec training speed, same corpus and parameters")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def environment() -> dict[str, Any]:
    import gensim

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        sha = ""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python":
            platform.python_version(), "gensim": gensim.__version__, "torch": torch.__version__, "git": sha,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="genai_fast word2vec vs gensim 4.4 on the same corpus file")
    parser.add_argument("--corpus", help="corpus file (LineSentence text)")
    parser.add_argument("--from-json", nargs="+", metavar="JSON",
                        help="no training: merge the rows of earlier --json files (e.g. a 1-thread and a "
                             "2-thread run) into one summary, JSON and plot")
    parser.add_argument("--sg", type=int, nargs="+", default=[1, 0], help="1 skip-gram, 0 CBOW")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--libraries", nargs="+", default=["genai_fast", "gensim"])
    parser.add_argument("--json", help="write the rows and summary as JSON")
    parser.add_argument("--plot", help="write a PNG of words/s vs threads")
    args = parser.parse_args(argv)
    if args.from_json:
        runs = [json.loads(Path(p).read_text()) for p in args.from_json]
        rows = [r for run in runs for r in run["rows"]]
        return _report(rows, {**runs[0], "merged_from": args.from_json}, args)
    if not args.corpus or not Path(args.corpus).is_file():
        parser.error(f"--corpus {args.corpus}: no such file (build it with bench/build_word2vec_corpus.py)")
    params = {"vector_size": 100, "window": 5, "negative": 5, "sample": 1e-3, "min_count": 5}
    rows = []
    for sg in args.sg:
        for threads in args.threads:
            for seed in args.seeds:
                for library in args.libraries:
                    row = train_one(library, args.corpus, {**params, "sg": sg}, threads, seed, args.epochs)
                    row["sg"] = sg
                    rows.append(row)
                    print(f"{library:<10} sg={sg} threads={threads} seed={seed}: "
                          f"{row['raw_words_per_s'] / 1e6:6.3f}M raw words/s ({row['seconds']:.1f} s), analogy "
                          f"{100 * row['analogy']:.2f}%, WS353 {row['ws353']:.3f}, SimLex {row['simlex']:.3f}"
                          + (f" [own eval: {100 * row['own_eval']['analogy']:.2f}%, "
                             f"{row['own_eval']['ws353']:.3f}, {row['own_eval']['simlex']:.3f}]"
                             if "own_eval" in row else ""), flush=True)
    result = {"env": environment(), "params": params, "epochs": args.epochs, "corpus": args.corpus}
    return _report(rows, result, args)


def _report(rows: list[dict[str, Any]], result: dict[str, Any], args: argparse.Namespace) -> int:
    summary = summarize(rows)
    for s in summary:
        print(f"{'skip-gram' if s['sg'] else 'CBOW':<9} {s['threads']} threads: {s['speedup']:.2f}x gensim "
              f"({s['genai_fast_raw_words_per_s'] / 1e6:.3f}M vs {s['gensim_raw_words_per_s'] / 1e6:.3f}M words/s); "
              f"analogy {s['analogy_delta_points']:+.2f} points, WS353 {s['ws353_delta']:+.3f}")
    result = {**result, "rows": rows, "summary": summary}
    if args.json:
        from genai_fast.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    if args.plot and summary:
        plot(summary, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
