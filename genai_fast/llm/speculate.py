"""Drafts for speculative greedy decoding: prompt lookup, or a smaller draft model.

Text that repeats what came before (summaries, code edits, quoted passages, structured output) lets the
sequence itself propose the next few tokens: find an earlier occurrence of the last few tokens and take what
followed it. The model then checks a whole draft in one forward pass over the cache (DecoderModel.extend);
on a memory-bound decode step that costs about as much as one token, and every draft token that equals the
greedy choice is a step saved. The tokens produced are greedy decoding's, whatever the drafts were.
A small model of the same tokenizer (HF's assistant model) drafts for any text, at the cost of running it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

MAX_NGRAM = 3  # the longest tail matched; shorter ones are tried when it has no earlier occurrence


def find_draft(tokens: Sequence[int], max_tokens: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to max_tokens tokens that followed the most recent earlier occurrence of the longest tail of `tokens`
    (max_ngram tokens down to 1) that occurs earlier; [] when none does."""
    n_tokens = len(tokens)
    for n in range(min(max_ngram, n_tokens - 1), 0, -1):
        tail = list(tokens[n_tokens - n:])
        for start in range(n_tokens - n - 1, -1, -1):  # most recent first: nearer text is likelier to repeat
            if list(tokens[start:start + n]) == tail:
                return list(tokens[start + n:start + n + max_tokens])
    return []


def accept(draft: Sequence[int], predictions: Sequence[int]) -> list[int]:
    """The tokens greedy decoding produces from one verification: predictions[i] is the argmax after the fed
    token i (the last new token, then the draft's). Draft tokens are kept while each equals the prediction
    before it; then the first prediction that differs (or the one after the whole draft) is added."""
    kept = []
    for token, predicted in zip(draft, predictions, strict=False):
        if token != predicted:
            break
        kept.append(token)
    return [*kept, predictions[len(kept)]]


def next_draft_size(size: int, drafted: int, kept: int, limit: int) -> int:
    """The next draft's length: two more after a fully kept draft (up to `limit`), one more than the kept
    tokens after a rejection. Checking a draft costs a little per token (on a CPU each row of the projections
    is arithmetic on top of the weights' one read), so runs of rejections keep drafts short; a draft of 0 (no
    earlier occurrence) leaves the length as it was."""
    if drafted == 0:
        return size
    return min(limit, size + 2) if kept == drafted else max(1, kept + 1)


class LookupDrafter:
    """Drafts from the text itself (find_draft); nothing to keep in step with."""

    def propose(self, tokens: Sequence[int], size: int) -> list[int]:
        """tokens: the sequence so far (its last token not yet fed to the target) -> up to `size` draft tokens."""
        return find_draft(tokens, size)

    def kept(self, length: int, count: int) -> None:
        """After a verification: `count` of the draft proposed after `length` tokens were kept."""


class ModelDrafter:
    """Drafts from a smaller model's greedy decoding (HF's assistant model), on that model's own cache, which
    holds a prefix of the sequence: each proposal first feeds the tokens it lacks, then decodes the draft."""

    def __init__(self, model: Any) -> None:
        self.model = model  # a DecoderModel, its cache allocated for row 0
        self.cached = 0  # leading tokens of the sequence whose K/V the draft model's cache holds

    def propose(self, tokens: Sequence[int], size: int) -> list[int]:
        model, device = self.model, self.model.device
        new = torch.tensor([list(tokens[self.cached:])], device=device)
        logits = model.prefill(new) if self.cached == 0 else model.extend(new, self.cached)[-1:]
        self.cached = len(tokens)
        draft = [int(logits.argmax(-1)[0])]
        while len(draft) < size:  # one greedy step per further token, each fed at its position
            position = torch.tensor([self.cached], dtype=torch.int32, device=device)
            host = [self.cached] if device.type == "cpu" else None
            logits = model.decode(torch.tensor([[draft[-1]]], device=device), position, host)
            self.cached += 1
            draft.append(int(logits.argmax(-1)[0]))
        return draft

    def kept(self, length: int, count: int) -> None:
        # The cache holds the sequence, then the draft's tokens but its last; those past the kept ones are stale.
        self.cached = min(self.cached, length + count)
