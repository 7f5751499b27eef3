"""Synthetic corpora for the word2vec tests: structure is planted so a test can assert real learning."""

from __future__ import annotations

import random

N_PAIRS = 12
CITY_CONTEXT = ["town", "streets", "mayor", "downtown", "tram"]
COUNTRY_CONTEXT = ["nation", "government", "flag", "border", "president"]


def planted_corpus(n_sentences: int = 30000, seed: int = 0) -> list[list[str]]:
    """Sentences about city{i} / country{i}: each pair shares its own context words p{i}a..c, cities
    share town-like words, countries share nation-like words. So city{a} - country{a} + country{b}
    should be city{b}."""
    rnd = random.Random(seed)
    filler = [f"f{i}" for i in range(50)]
    sentences = []
    for _ in range(n_sentences):
        i = rnd.randrange(N_PAIRS)
        own = [f"p{i}a", f"p{i}b", f"p{i}c"]
        word, ctx = (f"city{i}", CITY_CONTEXT) if rnd.random() < 0.5 else (f"country{i}", COUNTRY_CONTEXT)
        s = [rnd.choice(own), rnd.choice(ctx), word, rnd.choice(ctx), rnd.choice(own), rnd.choice(filler)]
        rnd.shuffle(s)
        sentences.append(s)
    return sentences


def analogy_file_text() -> str:
    lines = [": capital-world"]
    for a in range(N_PAIRS):
        for b in range(N_PAIRS):
            if a != b:
                lines.append(f"country{a} city{a} country{b} city{b}")
    lines.append(": unknown-words")
    lines.append("country0 city0 atlantis nowhere")
    return "\n".join(lines) + "\n"


def pairs_file_text() -> str:
    rows = ["# word1\tword2\tscore"]
    for i in range(N_PAIRS):
        rows.append(f"city{i}\tcountry{i}\t9.0")
        rows.append(f"city{i}\tcountry{(i + 1) % N_PAIRS}\t2.0")
        rows.append(f"city{i}\tf{i}\t0.5")
    rows.append("city0\tatlantis\t5.0")
    return "\n".join(rows) + "\n"
