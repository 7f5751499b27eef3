"""CLIP's byte-level BPE tokenizer over the vocabulary file shipped in the open-clip-torch wheel.

The algorithm (written here from CLIP's description, not copied): lower-case and clean the text, split it
into words with CLIP's regular expression, map each word's UTF-8 bytes to printable characters, mark the
word's last character with "</w>", then merge adjacent pairs greedily by merge rank until no ranked pair
is left. Token ids: 256 byte characters, the same 256 with "</w>", one id per merge (48,894), then
<|startoftext|> and <|endoftext|> (49,408 in all). Differences from open_clip: no ftfy text repair
(html entities and white space are still normalised), which changes nothing for plain ASCII captions.

Added tokens (textual inversion, e.g. "<my-thing>") are matched as whole strings before the BPE split and
get ids from 49,408 on.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

VOCAB_PACKAGE = "open_clip"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file
START, END = "<|startoftext|>", "<|endoftext|>"
# CLIP's word split: contractions, runs of letters, single digits, runs of other non-space characters.
WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def default_vocab_path() -> Path:
    """The vocabulary inside the installed open-clip-torch package (found, never imported)."""
    spec = importlib.util.find_spec(VOCAB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the CLIP BPE vocabulary is missing: pip install --no-deps open-clip-torch "
                                "(it ships open_clip/bpe_simple_vocab_16e6.txt.gz)")
    path = Path(spec.submodule_search_locations[0]) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"open-clip-torch is installed but {path} is missing; reinstall it")
    return path


@functools.cache
def _byte_characters() -> tuple[str, ...]:
    """One printable unicode character per byte value: printable Latin-1 bytes stand for themselves,
    the others (controls, space) are moved to code points from 256 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(keep)
    table, extra = [], 0
    for byte in range(256):
        if byte in kept:
            table.append(chr(byte))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return tuple(table)


_PRINTABLE_RANK = {c: i for i, c in enumerate(c for c in _byte_characters() if ord(c) < 256)}


@functools.cache
def _load_merges(path: str) -> tuple[tuple[str, str], ...]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:NUM_MERGES + 1]  # line 0 is a version header
    merges = tuple(tuple(line.split()) for line in lines)
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: not a CLIP BPE merges file (expected {NUM_MERGES} pairs)")
    return merges


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Text -> CLIP token ids, padded to `max_length` with <|endoftext|> (as open_clip does with 0 ids,
    we pad with the end token so the causal encoder's padded positions carry no new information)."""

    def __init__(self, vocab_path: str | os.PathLike | None = None, max_length: int = 16) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length: expected an int >= 3 (start, one token, end), got {max_length!r}")
        try:
            import regex
        except ImportError as exc:  # a dependency of transformers/diffusers, normally present
            raise ImportError("the CLIP tokenizer needs the 'regex' package: pip install regex") from exc
        self._pattern = regex.compile(WORD_PATTERN, regex.IGNORECASE)
        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        if not path.is_file():
            raise FileNotFoundError(f"vocab_path: {path} does not exist")
        merges = _load_merges(str(path))
        chars = _byte_characters()
        # Vocabulary order: the printable bytes first, then the moved ones (CLIP's ids depend on it).
        ordered = sorted(chars, key=lambda c: (ord(c) >= 256, _PRINTABLE_RANK.get(c, ord(c))))
        vocab = [*ordered, *(c + "</w>" for c in ordered), *("".join(m) for m in merges), START, END]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: list[str] = vocab
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.max_length = max_length
        self.start_id, self.end_id = self.encoder[START], self.encoder[END]
        self.base_vocab_size = len(vocab)
        # placeholder token (lower-cased, in the order added) -> its ids: one per learned vector, consecutive
        # after the base vocabulary
        self._added_ids: dict[str, range] = {}
        self._byte_char = chars
        self._char_byte = {c: b for b, c in enumerate(chars)}
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def added_tokens(self) -> list[str]:
        """The placeholder tokens, lower-cased, in the order added."""
        return list(self._added_ids)

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + sum(len(ids) for ids in self._added_ids.values())

    def add_token(self, token: str, vectors: int = 1) -> int:
        """Register a new whole-string token (e.g. "<my-thing>") that stands for `vectors` consecutive ids
        (multi-vector textual inversion, as diffusers' num_vectors); returns its first id."""
        check_new_token(token)
        if isinstance(vectors, bool) or not isinstance(vectors, int) or not 1 <= vectors <= self.max_length - 2:
            raise ValueError(f"vectors: expected an int in [1, {self.max_length - 2}], got {vectors!r}")
        if token.lower() in self._added_ids:
            raise ValueError(f"token: {token!r} is already added")
        first = self.vocab_size
        self._added_ids[token.lower()] = range(first, first + vectors)
        return first

    def _bpe(self, word: str) -> tuple[int, ...]:
        """One word (already byte-mapped) -> ids, merging the lowest-ranked adjacent pair first."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            rank, first = min((self.ranks.get(pair, NUM_MERGES), i)
                              for i, pair in enumerate(itertools.pairwise(parts)))
            if rank == NUM_MERGES:
                break
            best = (parts[first], parts[first + 1])
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = tuple(self.encoder[p] for p in parts)
        self._cache[word] = ids
        return ids

    def _split_added(self, text: str) -> Iterable[tuple[bool, str]]:
        """(is_added_token, piece) in order."""
        if not self.added_tokens:
            yield False, text
            return
        import regex

        pattern = "(" + "|".join(regex.escape(t) for t in sorted(self.added_tokens, key=len, reverse=True)) + ")"
        for i, piece in enumerate(regex.split(pattern, text)):
            if piece:
                yield i % 2 == 1, piece

    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text` without start/end tokens or padding."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        ids: list[int] = []
        for is_added, piece in self._split_added(_clean(text)):
            if is_added:
                ids.extend(self._added_ids[piece])
                continue
            for word in self._pattern.findall(piece):
                mapped = "".join(self._byte_char[b] for b in word.encode("utf-8"))
                ids.extend(self._bpe(mapped))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> list[list[int]]:
        """[start, ids..., end, end...] of length max_length per text; ValueError when one is too long."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for text in batch:
            ids = self.encode_text(text)
            if len(ids) + 2 > self.max_length:
                raise ValueError(f"text: {text!r} has {len(ids)} tokens; at most {self.max_length - 2} fit "
                                 f"(max_length {self.max_length})")
            out.append([self.start_id, *ids, self.end_id] + [self.end_id] * (self.max_length - len(ids) - 2))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (start/end tokens dropped, word ends become spaces)."""
        pieces = []
        for i in ids:
            if i in (self.start_id, self.end_id):
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids: {i} is outside the vocabulary (size {self.vocab_size})")
            if i < self.base_vocab_size:
                pieces.append(self.decoder[i])
            else:  # a placeholder is written once, at its first id
                pieces += [t + "</w>" for t, ids in self._added_ids.items() if ids.start == i]
        raw = "".join(pieces)
        text = bytearray()
        for ch in raw.replace("</w>", " "):
            text.extend(self._char_byte[ch].to_bytes(1, "little") if ch in self._char_byte else ch.encode())
        return text.decode("utf-8", errors="replace").strip()


def check_new_token(token: str) -> None:
    """A placeholder token must look like "<name>" (so it cannot collide with ordinary words)."""
    if not isinstance(token, str):
        raise TypeError(f"token: expected a str like '<my-thing>', got {type(token).__name__}")
    if len(token) < 3 or not (token.startswith("<") and token.endswith(">")) or any(c.isspace() for c in token):
        raise ValueError(f"token: expected a placeholder like '<my-thing>' (angle brackets, no spaces), got {token!r}")
    if token.lower() in (START, END):  # CLIP's own markers: an added token would shadow them in prompts
        raise ValueError(f"token: {token!r} is one of CLIP's special tokens; choose another name")
