"""The Huffman tree over a vocabulary that hierarchical softmax (hs=1) walks.

Each word is a leaf; each of the V - 1 inner nodes owns one output vector (a row of `syn1`). Predicting
a word means making the binary choice at every inner node on the path from the root to its leaf, so a
frequent word (a short path) costs few dot products.

The tree is built as gensim builds it: repeatedly merge the two least frequent nodes (the first popped
is the left child, code 0) with a binary heap that compares counts only, so ties fall where the heap's
sift order puts them. A vocabulary therefore gets the same codes and points here as in gensim, and
trained `syn1` rows mean the same thing in both.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HuffmanTree:
    """Padded path tables of a V-word vocabulary (row w describes word w).

    points: [V, L] int32 inner-node ids (rows of syn1, 0..V-2) from the root down to the word's parent,
        padded with 0 beyond the word's path length.
    codes: [V, L] uint8 branch taken at each of those nodes (0 left, 1 right), padded with 0.
    lengths: [V] int32 path length of each word (0 only for a one-word vocabulary).
    """

    points: np.ndarray
    codes: np.ndarray
    lengths: np.ndarray

    @property
    def depth(self) -> int:
        """L: the longest path."""
        return int(self.points.shape[1])

    def path(self, word: int) -> tuple[np.ndarray, np.ndarray]:
        """(points, codes) of one word, unpadded."""
        n = int(self.lengths[word])
        return self.points[word, :n], self.codes[word, :n]


def huffman_tree(counts: np.ndarray) -> HuffmanTree:
    """Build the tree of words with the given frequencies ([V] non-negative ints, V >= 1)."""
    counts = np.asarray(counts)
    vocab = int(counts.shape[0]) if counts.ndim == 1 else 0
    if vocab < 1:
        raise ValueError(f"counts: expected a non-empty 1-D array of word counts, got shape {counts.shape}")
    parent, branch = _merge(counts)
    depth = _depths(parent, vocab)
    return _paths(parent, branch, depth, vocab)


class _HeapNode:
    """A heap entry ordered by count alone (not by node id): gensim's tie order, see the module doc."""

    __slots__ = ("count", "node")

    def __init__(self, count: int, node: int) -> None:
        self.count, self.node = count, node

    def __lt__(self, other: _HeapNode) -> bool:
        return self.count < other.count


def _merge(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Huffman merges. Node ids: words 0..V-1, inner node n (the n-th merge) is V + n.
    Returns parent [2V-1] (-1 for the root) and branch [2V-1] (the code of the edge to the parent)."""
    vocab = len(counts)
    heap = [_HeapNode(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = np.full(2 * vocab - 1, -1, dtype=np.int64)
    branch = np.zeros(2 * vocab - 1, dtype=np.uint8)
    for n in range(vocab - 1):
        left, right = heapq.heappop(heap), heapq.heappop(heap)
        parent[left.node] = parent[right.node] = vocab + n
        branch[right.node] = 1
        heapq.heappush(heap, _HeapNode(left.count + right.count, vocab + n))
    return parent, branch


def _depths(parent: np.ndarray, vocab: int) -> np.ndarray:
    """Distance of every node from the root. A parent is always merged after its children, so walking the
    nodes from the last merge down sets each parent's depth before its children's."""
    depth = np.zeros(len(parent), dtype=np.int64)
    for node in range(len(parent) - 2, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return depth


def _paths(parent: np.ndarray, branch: np.ndarray, depth: np.ndarray, vocab: int) -> HuffmanTree:
    lengths = depth[:vocab]
    longest = int(lengths.max())
    points = np.zeros((vocab, longest), dtype=np.int32)
    codes = np.zeros((vocab, longest), dtype=np.uint8)
    words = np.arange(vocab)
    node = words.copy()
    # Climb from every leaf at once; step s fills position (length - 1 - s) of each path still climbing.
    for step in range(longest):
        active = lengths > step
        rows, here = words[active], node[active]
        position = lengths[active] - 1 - step
        points[rows, position] = parent[here] - vocab
        codes[rows, position] = branch[here]
        node[active] = parent[here]
    return HuffmanTree(points, codes, lengths.astype(np.int32))
