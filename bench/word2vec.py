"""word2vec benchmarks.

1. Registry entries `sgns_step` and `hs_step` (for `genai-fast bench`): the C++ skip-gram steps (shared
   negatives; hierarchical softmax over a Zipf vocabulary's Huffman paths, the window's contexts batched)
   on a fixed batch against the PyTorch reference; the oracle is the reference in float64.
2. Registry entry `word2vec_train_chunk` (GPU presets only, `genai-fast bench --device cuda`): the GPU
   trainers (triton, cuda) on one SYNTHETIC Zipf chunk (skip-gram, d100, window 5, negative 5, sample
   1e-3, 100k vocabulary) against the C++ trainer on all CPU cores on CPU copies of the same tables.
   Training races (Hogwild) and the backends draw different random numbers, so `max_err` of this entry
   is a statistic, not a rounding error: |mean loss per kept word - the oracle's| where the oracle is the
   C++ trainer with one thread. Raw words/s = the case's token count / median_ms.
3. Side-by-side script: genai_fast.word2vec vs gensim 4.4 (`corpus_file`) on the same corpus file,
   parameters and thread count; raw words/s (corpus tokens x epochs / training wall time), the ratio,
   analogy accuracy (questions-words), WordSim353 and SimLex-999 correlations (both models scored by
   gensim's evaluator, ours also by our own as a cross-check), and a plot of words/s vs threads.

    python bench/word2vec.py --corpus /tmp/w2v_corpus.txt --sg 1 0 --threads 1 2 --epochs 5 --seeds 1 2 3 \
        --json /tmp/w2v.json --plot /tmp/w2v.png

   Build the corpus first with bench/build_word2vec_corpus.py. On a GPU, `--device cuda` trains
   genai_fast on the GPU and gensim on all CPU cores (--gensim-threads); where the real corpus is not
   available (the GPU machine has no network), `--synthetic-zipf TOKENS` writes a synthetic Zipf corpus
   and measures speed only (its words are not English: no analogy or similarity scores):

    python bench/word2vec.py --device cuda --synthetic-zipf 5000000 --sg 1 0 --epochs 3 --json /tmp/w2v_gpu.json

   `--hs` compares hierarchical softmax instead (hs=1, negative=0 in both libraries; CPU only).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # as the installed package (genai-fast bench) or as a script from the checkout
    from genai_fast.bench.env import cpu_description
    from genai_fast.bench.registry import BenchEntry, Case, register
except ImportError:  # pragma: no cover
    BenchEntry = None

    def cpu_description() -> str:
        return platform.processor() or platform.machine()

from genai_fast.ops.word2vec_ops import (
    HsTree,
    hs_step,
    hs_step_reference,
    sgns_step,
    word2vec_step_reference,
    word2vec_train_chunk,
)

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


# ---------------------------------------------------------------- registry entry: hs_step


def _hs_case(vocab: int, dim: int, batch: int, contexts: int) -> Any:
    return Case({"vocab": vocab, "dim": dim, "batch": batch, "contexts": contexts}, torch.float32,
                f"V{vocab} D{dim} B{batch} C{contexts} (Zipf tree)")


@functools.lru_cache(maxsize=4)
def _zipf_tree(vocab: int) -> Any:
    """The Huffman tree of a Zipf vocabulary (count of rank r = 1e7 / r)."""
    from genai_fast.word2vec.huffman import huffman_tree

    return huffman_tree((1e7 / np.arange(1, vocab + 1)).astype(np.int64))


def _mean_path(vocab: int) -> float:
    """Mean path length of a Zipf-drawn centre (about 10 nodes for 20k words, 11 for 70k)."""
    weights = 1.0 / np.arange(1, vocab + 1)
    return float((weights * _zipf_tree(vocab).lengths).sum() / weights.sum())


def _hs_inputs(case: Any, device: torch.device) -> dict[str, Any]:
    p = case.params
    g = torch.Generator().manual_seed(0)
    ranks = torch.arange(1, p["vocab"] + 1, dtype=torch.float64)
    tree = _zipf_tree(p["vocab"])
    syn0 = (torch.rand(p["vocab"], p["dim"], generator=g) - 0.5) / p["dim"]
    syn1 = torch.randn(p["vocab"], p["dim"], generator=g) * 0.1
    # Centres drawn by frequency (Zipf), as a corpus presents them.
    centers = torch.multinomial(1.0 / ranks, p["batch"], replacement=True, generator=g)
    contexts = torch.randint(0, p["vocab"], (p["batch"], p["contexts"]), generator=g)
    path_nodes = torch.from_numpy(tree.points[centers.numpy()]).long().flatten()
    return {"syn0": syn0, "syn1": syn1, "centers": centers, "contexts": contexts,
            "points": torch.from_numpy(tree.points), "codes": torch.from_numpy(tree.codes),
            "lengths": torch.from_numpy(tree.lengths), "touched0": torch.unique(contexts.flatten()),
            "touched1": torch.unique(path_nodes)}


def _hs_restoring(inputs: dict[str, Any], fn: Any) -> torch.Tensor:
    """Run fn(syn0, tree), then put the touched rows back, so every call sees the same inputs."""
    r0, r1 = inputs["touched0"], inputs["touched1"]
    saved0, saved1 = inputs["syn0"][r0].clone(), inputs["syn1"][r1].clone()
    out = fn(inputs["syn0"], HsTree(inputs["syn1"], inputs["points"], inputs["codes"], inputs["lengths"]))
    inputs["syn0"][r0] = saved0
    inputs["syn1"][r1] = saved1
    return out


def _hs_run(inputs: dict[str, Any], backend: str | None) -> torch.Tensor:
    return _hs_restoring(inputs, lambda s0, tree: hs_step(s0, inputs["centers"], inputs["contexts"], tree, 0.025,
                                                          backend=backend))


def _hs_torch_reference(inputs: dict[str, Any]) -> torch.Tensor:
    return _hs_restoring(inputs, lambda s0, tree: hs_step_reference(s0, inputs["centers"], inputs["contexts"],
                                                                    tree, 0.025, "sg_shared"))


def _hs_oracle(inputs: dict[str, Any]) -> torch.Tensor:
    tree = HsTree(inputs["syn1"].double(), inputs["points"], inputs["codes"], inputs["lengths"])
    return hs_step_reference(inputs["syn0"].double(), inputs["centers"], inputs["contexts"], tree, 0.025,
                             "sg_shared")


def _hs_flops(case: Any) -> float:
    p = case.params  # per (context, path node): dot + input error + node update = 6 D
    return 6.0 * p["batch"] * p["contexts"] * _mean_path(p["vocab"]) * p["dim"]


def _hs_bytes(case: Any) -> float:
    p = case.params  # context rows and path rows read and written once
    return 8.0 * p["batch"] * (p["contexts"] + _mean_path(p["vocab"])) * p["dim"]


if BenchEntry is not None:
    HS_ENTRY = register(BenchEntry(
        op="hs_step",
        presets={"quick": {"cpu": [_hs_case(20000, 100, 64, 10)]},
                 "full": {"cpu": [_hs_case(70000, 100, 256, 10), _hs_case(70000, 300, 256, 10)]}},
        make_inputs=_hs_inputs,
        run=_hs_run,
        references={"torch reference (float32, per row)": _hs_torch_reference},
        oracle=_hs_oracle,
        flops=_hs_flops,
        bytes=_hs_bytes,
        bound="memory",
    ))


# ---------------------------------------------------------------- registry entry: word2vec_train_chunk (GPU)

SYNTHETIC_LABEL = "synthetic Zipf corpus (speed only)"


def zipf_token_ids(num_tokens: int, vocab: int, seed: int = 0, exponent: float = 1.0) -> np.ndarray:
    """SYNTHETIC token ids [num_tokens] int32 with Zipf-distributed frequencies (rank r ~ 1 / r^exponent),
    ranks in descending frequency, like a sorted vocabulary. For speed measurements only."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(num_tokens)), vocab - 1).astype(np.int32)


def zipf_sentence_offsets(num_tokens: int, seed: int = 0, lo: int = 5, hi: int = 35) -> np.ndarray:
    """Sentence offsets [S + 1] int64 with lengths uniform in [lo, hi] (mean 20 tokens)."""
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(lo, hi + 1, num_tokens // lo + 1)
    ends = np.cumsum(lengths)
    ends = ends[ends < num_tokens]
    return np.concatenate([[0], ends, [num_tokens]]).astype(np.int64)


@functools.lru_cache(maxsize=4)
def _zipf_chunk(num_tokens: int, vocab: int) -> dict[str, np.ndarray]:
    """The synthetic chunk, its subsampling (sample=1e-3) and noise tables (gensim's formulas)."""
    from genai_fast.word2vec.model import alias_table

    tokens = zipf_token_ids(num_tokens, vocab)
    counts = np.maximum(np.bincount(tokens, minlength=vocab), 1).astype(np.float64)
    threshold = 1e-3 * counts.sum()
    keep = np.minimum((np.sqrt(counts / threshold) + 1.0) * (threshold / counts), 1.0).astype(np.float32)
    prob, alias = alias_table(counts ** 0.75)
    return {"tokens": tokens, "offsets": zipf_sentence_offsets(num_tokens), "keep": keep, "prob": prob,
            "alias": alias, "expected_kept": np.float64(keep[tokens].sum())}


def _chunk_case(tokens: int, vocab: int, dim: int, mode: str) -> Any:
    return Case({"tokens": tokens, "vocab": vocab, "dim": dim, "mode": mode, "window": 5, "negative": 5},
                torch.float32, f"{mode} {tokens / 1e6:g}M raw tokens V{vocab // 1000}k D{dim} w5 n5 [synthetic]")


def _chunk_inputs(case: Any, device: torch.device) -> dict[str, Any]:
    p = case.params
    data = _zipf_chunk(p["tokens"], p["vocab"])
    rng = np.random.default_rng(0)
    syn0 = ((rng.random((p["vocab"], p["dim"]), dtype=np.float32) - 0.5) / p["dim"]).astype(np.float32)
    syn1 = (rng.standard_normal((p["vocab"], p["dim"]), dtype=np.float32) * 0.05).astype(np.float32)
    tables = {"syn0": torch.from_numpy(syn0).to(device), "syn1neg": torch.from_numpy(syn1).to(device)}
    inputs = {**data, **tables, "pristine": {k: v.clone() for k, v in tables.items()},
              "cpu_pristine": (syn0, syn1), "cpu": (syn0.copy(), syn1.copy()), "params": p}
    for name in ("keep", "prob", "alias"):
        inputs[f"{name}_dev"] = torch.from_numpy(data[name]).to(device)
    return inputs


def _mean_loss(raw_eff_loss: tuple[int, int, float]) -> torch.Tensor:
    _, effective, loss = raw_eff_loss
    return torch.tensor([loss / max(effective, 1)], dtype=torch.float64)


def _train_chunk(inputs: dict[str, Any], backend: str | None) -> torch.Tensor:
    """Train the chunk from the pristine tables (restored first: a device-to-device copy)."""
    p = inputs["params"]
    for name in ("syn0", "syn1neg"):
        inputs[name].copy_(inputs["pristine"][name])
    return _mean_loss(word2vec_train_chunk(
        inputs["syn0"], inputs["syn1neg"], inputs["tokens"], inputs["offsets"], inputs["keep_dev"],
        inputs["prob_dev"], inputs["alias_dev"], 0.025, 0.0001, mode=p["mode"], window=p["window"],
        negative=p["negative"], compute_loss=True, seed=1, backend=backend))


def _cpu_train(inputs: dict[str, Any], workers: int) -> torch.Tensor:
    p = inputs["params"]
    syn0, syn1 = inputs["cpu"]
    syn0[...] = inputs["cpu_pristine"][0]
    syn1[...] = inputs["cpu_pristine"][1]
    return _mean_loss(word2vec_train_chunk(
        syn0, syn1, inputs["tokens"], inputs["offsets"], inputs["keep"], inputs["prob"], inputs["alias"], 0.025,
        0.0001, mode=p["mode"], window=p["window"], negative=p["negative"], compute_loss=True, seed=1,
        workers=workers, backend="cpp"))


def _chunk_flops(case: Any) -> float:
    p = case.params  # per kept centre: about window + 1 contexts (shrinking windows) x (K + 1) targets x 6 D
    kept = float(_zipf_chunk(p["tokens"], p["vocab"])["expected_kept"])
    return 6.0 * kept * (p["window"] + 1) * (p["negative"] + 1) * p["dim"]


def _chunk_bytes(case: Any) -> float:
    p = case.params  # the two tables read and written once (they mostly stay in L2 on an H100)
    return 4.0 * p["vocab"] * p["dim"] * 4


if BenchEntry is not None:
    register(BenchEntry(
        op="word2vec_train_chunk",
        presets={"quick": {"cuda": [_chunk_case(1 << 20, 100_000, 100, "sg_shared")]},
                 "full": {"cuda": [_chunk_case(2 << 20, 100_000, 100, "sg_shared"),
                                   _chunk_case(2 << 20, 100_000, 100, "cbow")]}},
        make_inputs=_chunk_inputs,
        run=_train_chunk,
        references={f"genai_fast cpp trainer, {os.cpu_count()} CPU threads (same chunk)":
                    lambda inputs: _cpu_train(inputs, os.cpu_count() or 1)},
        oracle=lambda inputs: _cpu_train(inputs, 1),
        flops=_chunk_flops,
        bytes=_chunk_bytes,
        bound="memory",
    ))


# ---------------------------------------------------------------- side-by-side training vs gensim


EVAL_FILES = ("questions-words.txt", "wordsim353.tsv", "simlex999.txt")
_eval_dir: Path | None = None  # --eval-dir: where the evaluation files are, when gensim is not installed


def gensim_test_file(name: str) -> Path:
    """An evaluation file: from --eval-dir when given, else from the installed gensim's test data."""
    if _eval_dir is not None:
        return _eval_dir / name
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


def _init_cuda() -> float:
    """Create the process's CUDA context before the timer starts, as any GPU program does once; returns the
    seconds it took (reported as cuda_init_s, outside raw_words_per_s). The trainer's kernels still
    load, or compile, inside the timed training."""
    import torch

    start = time.perf_counter()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    return time.perf_counter() - start


def train_one(library: str, corpus: str, params: dict[str, Any], threads: int, seed: int,
              epochs: int, device: str = "cpu", evaluate: bool = True) -> dict[str, Any]:
    """Build the vocabulary, train (timed) and evaluate one model. device: genai_fast's (gensim: CPU)."""
    if library == "gensim":
        from gensim.models import Word2Vec

        extra: dict[str, Any] = {}
    else:
        from genai_fast.word2vec import Word2Vec

        extra = {"device": device}
    model = Word2Vec(**params, workers=threads, seed=seed, epochs=epochs, **extra)
    model.build_vocab(corpus_file=corpus)
    cuda_init_s = _init_cuda() if library == "genai_fast" and device == "cuda" else 0.0
    start = time.perf_counter()
    model.train(corpus_file=corpus, total_words=model.corpus_total_words, epochs=epochs)
    seconds = time.perf_counter() - start
    row = {"library": library, "device": device if library == "genai_fast" else "cpu", "threads": threads,
           "seed": seed, "epochs": epochs, "seconds": seconds, "cuda_init_s": cuda_init_s,
           "corpus_words": model.corpus_total_words,
           "vocab": len(model.wv), "raw_words_per_s": model.corpus_total_words * epochs / seconds}
    if evaluate and _gensim_version() is None:  # a machine without gensim (a lent GPU): our evaluator only
        row.update(evaluate_ours(model.wv), evaluator="genai_fast")
    elif evaluate:
        row.update(evaluate_with_gensim(list(model.wv.index_to_key), model.wv.vectors))
        if library == "genai_fast":
            row["own_eval"] = evaluate_ours(model.wv)
    return row


def write_synthetic_zipf_corpus(path: str, num_tokens: int, vocab: int = 100_000, seed: int = 0) -> str:
    """Write a SYNTHETIC corpus (Zipf word frequencies, words named w<rank>, 5-35 words a line) atomically.
    It measures speed on a machine without the real corpus; its vectors mean nothing."""
    from genai_fast.io import atomic_write

    ids = zipf_token_ids(num_tokens, vocab, seed)
    offsets = zipf_sentence_offsets(num_tokens, seed)
    names = np.array([f"w{i}" for i in range(vocab)], dtype=object)
    lines = (" ".join(names[ids[a:b]]) for a, b in itertools.pairwise(offsets.tolist()))

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                f.write("\n")

    atomic_write(path, write)
    return path


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """genai_fast vs gensim per (sg, threads): mean words/s, the speed ratio, and quality deltas where
    the rows were evaluated (not on a synthetic corpus)."""
    out = []
    keys = sorted({(r["sg"], r["threads"]) for r in rows})
    for sg, threads in keys:
        group = {lib: [r for r in rows if r["sg"] == sg and r["threads"] == threads and r["library"] == lib]
                 for lib in ("genai_fast", "gensim")}
        if not all(group.values()):
            continue
        s = {"sg": sg, "threads": threads, "genai_fast_device": group["genai_fast"][0].get("device", "cpu")}
        evaluated = all("analogy" in r for rs in group.values() for r in rs)
        metrics = ("raw_words_per_s", "analogy", "ws353", "simlex") if evaluated else ("raw_words_per_s",)
        for lib, rs in group.items():
            for metric in metrics:
                s[f"{lib}_{metric}"] = statistics.mean(r[metric] for r in rs)
        s["speedup"] = s["genai_fast_raw_words_per_s"] / s["gensim_raw_words_per_s"]
        if evaluated:
            s["analogy_delta_points"] = 100 * (s["genai_fast_analogy"] - s["gensim_analogy"])
            s["ws353_delta"] = s["genai_fast_ws353"] - s["gensim_ws353"]
        out.append(s)
    return out


def plot(summary: list[dict[str, Any]], path: str, hs: bool = False) -> None:
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
    ax.set_title("word2vec training speed, same corpus and parameters" + (" (hs=1)" if hs else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _gensim_version() -> str | None:
    try:
        import gensim
    except ImportError:
        return None
    return gensim.__version__


def environment() -> dict[str, Any]:

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        sha = ""
    return {"cpu": cpu_description(), "cores": os.cpu_count(), "python":
            platform.python_version(), "gensim": _gensim_version(), "torch": torch.__version__, "git": sha,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _describe(row: dict[str, Any]) -> str:
    where = "GPU" if row.get("device") == "cuda" else f"threads={row['threads']}"
    text = (f"{row['library']:<10} sg={row['sg']} {where} seed={row['seed']}: "
            f"{row['raw_words_per_s'] / 1e6:6.3f}M raw words/s ({row['seconds']:.1f} s)")
    if row.get("cuda_init_s"):
        text += f" [+{row['cuda_init_s']:.2f} s of CUDA context creation before the timer]"
    if "analogy" in row:
        text += f", analogy {100 * row['analogy']:.2f}%, WS353 {row['ws353']:.3f}, SimLex {row['simlex']:.3f}"
    else:
        text += f" [{SYNTHETIC_LABEL}]"
    if "own_eval" in row:
        own = row["own_eval"]
        text += f" [own eval: {100 * own['analogy']:.2f}%, {own['ws353']:.3f}, {own['simlex']:.3f}]"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="genai_fast word2vec vs gensim 4.4 on the same corpus file")
    parser.add_argument("--corpus", help="corpus file (LineSentence text); with --synthetic-zipf: where to write it")
    parser.add_argument("--synthetic-zipf", type=int, metavar="TOKENS",
                        help="write a SYNTHETIC Zipf corpus of this many tokens (100k words) and measure speed "
                             "only (no quality scores: its words are not English)")
    parser.add_argument("--from-json", nargs="+", metavar="JSON",
                        help="no training: merge the rows of earlier --json files (e.g. a 1-thread and a "
                             "2-thread run) into one summary, JSON and plot")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="genai_fast's device; with cuda, gensim runs on --gensim-threads CPU threads")
    parser.add_argument("--gensim-threads", type=int, default=os.cpu_count() or 1,
                        help="with --device cuda: gensim's worker threads (default: every core)")
    parser.add_argument("--sg", type=int, nargs="+", default=[1, 0], help="1 skip-gram, 0 CBOW")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--libraries", nargs="+", default=["genai_fast", "gensim"])
    parser.add_argument("--hs", action="store_true",
                        help="hierarchical softmax instead of negative sampling (hs=1, negative=0) in both")
    parser.add_argument("--eval-dir", type=Path,
                        help=f"folder with {', '.join(EVAL_FILES)} (default: the installed gensim's test data; "
                             f"without gensim, genai_fast's own evaluator scores them)")
    parser.add_argument("--json", help="write the rows and summary as JSON")
    parser.add_argument("--plot", help="write a PNG of words/s vs threads")
    args = parser.parse_args(argv)
    global _eval_dir
    _eval_dir = args.eval_dir
    if _eval_dir is not None and not all((_eval_dir / name).is_file() for name in EVAL_FILES):
        parser.error(f"--eval-dir {_eval_dir}: expected {', '.join(EVAL_FILES)} there")
    if args.from_json:
        runs = [json.loads(Path(p).read_text()) for p in args.from_json]
        rows = [r for run in runs for r in run["rows"]]
        return _report(rows, {**runs[0], "merged_from": args.from_json}, args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    synthetic = args.synthetic_zipf is not None
    if synthetic:
        if args.synthetic_zipf < 1000:
            parser.error(f"--synthetic-zipf: expected at least 1000 tokens, got {args.synthetic_zipf}")
        corpus = args.corpus or str(Path(tempfile.gettempdir()) / f"w2v_synthetic_zipf_{args.synthetic_zipf}.txt")
        write_synthetic_zipf_corpus(corpus, args.synthetic_zipf)
        print(f"wrote the {SYNTHETIC_LABEL} of {args.synthetic_zipf} tokens to {corpus}", flush=True)
    else:
        corpus = args.corpus
        if not corpus or not Path(corpus).is_file():
            parser.error(f"--corpus {corpus}: no such file (build it with bench/build_word2vec_corpus.py, or "
                         "give --synthetic-zipf TOKENS for a speed-only run)")
    libraries = [lib for lib in args.libraries if lib != "gensim" or _gensim_version() is not None]
    if libraries != args.libraries:
        print("gensim is not installed: timing genai_fast only", flush=True)
    thread_counts = [args.gensim_threads] if args.device == "cuda" else args.threads
    params = {"vector_size": 100, "window": 5, "negative": 5, "sample": 1e-3, "min_count": 5}
    if args.hs:
        params.update(hs=1, negative=0)
    rows = []
    for sg in args.sg:
        for threads in thread_counts:
            for seed in args.seeds:
                for library in libraries:
                    row = train_one(library, corpus, {**params, "sg": sg}, threads, seed, args.epochs,
                                    device=args.device, evaluate=not synthetic)
                    row["sg"] = sg
                    rows.append(row)
                    print(_describe(row), flush=True)
    result = {"env": environment(), "params": params, "epochs": args.epochs, "corpus": corpus,
              "device": args.device, "corpus_kind": SYNTHETIC_LABEL if synthetic else "file"}
    return _report(rows, result, args)


def _report(rows: list[dict[str, Any]], result: dict[str, Any], args: argparse.Namespace) -> int:
    summary = summarize(rows)
    for s in summary:
        who = "GPU" if s.get("genai_fast_device") == "cuda" else f"{s['threads']} threads"
        line = (f"{'skip-gram' if s['sg'] else 'CBOW':<9} {who} vs gensim {s['threads']} threads: "
                f"{s['speedup']:.2f}x ({s['genai_fast_raw_words_per_s'] / 1e6:.3f}M vs "
                f"{s['gensim_raw_words_per_s'] / 1e6:.3f}M raw words/s)")
        if "analogy_delta_points" in s:
            line += f"; analogy {s['analogy_delta_points']:+.2f} points, WS353 {s['ws353_delta']:+.3f}"
        print(line)
    result = {**result, "rows": rows, "summary": summary}
    if args.json:
        from genai_fast.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    if args.plot and summary:
        plot(summary, args.plot, hs=bool(result.get("params", {}).get("hs")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
