"""Drafts and their verification for speculative decoding: prompt lookup, or a smaller draft model.

Text that repeats what came before (summaries, code edits, quoted passages, structured output) lets the
sequence itself propose the next few tokens: find an earlier occurrence of the last few tokens and take what
followed it. The model then checks a whole draft in one forward pass over the cache (DecoderModel.extend);
on a memory-bound decode step that costs about as much as one token, and every draft token kept is a step
saved. Greedy decoding keeps the draft tokens that equal its choices, so its tokens are plain greedy decoding's
whatever the drafts were; sampling keeps them by speculative sampling (accept_sampled), so its tokens follow
the plain sampling distribution. A small model of the same tokenizer (HF's assistant model) drafts for any
text, at the cost of running it.
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


def accept_sampled(target: torch.Tensor, draft: Sequence[int], proposal: torch.Tensor | None,
                   generator: torch.Generator | None) -> list[int]:
    """Speculative sampling: the tokens one verification gives when tokens are drawn at random, distributed
    exactly as drawing each from `target` in turn. target: [len(draft) + 1, V], the distributions after the fed
    last token and after each draft token; proposal: [len(draft), V], those the draft tokens were drawn from
    (None: each draft token proposed with certainty, as prompt lookup does). Draft token i is kept with
    probability min(1, target[i, d] / proposal[i, d]); at the first rejection a token is drawn from what target
    has beyond proposal (normalised max(0, target - proposal)) and the pass ends; after a fully kept draft one
    more token is drawn from the last row."""
    if proposal is not None and proposal.shape[-1] < target.shape[-1]:  # a draft model with a smaller vocabulary
        proposal = torch.nn.functional.pad(proposal, (0, target.shape[-1] - proposal.shape[-1]))
    chances = torch.rand(len(draft), generator=generator, device=target.device).tolist()
    for i, token in enumerate(draft):
        p = float(target[i, token])
        q = 1.0 if proposal is None else float(proposal[i, token])
        if chances[i] * q < p:  # kept with probability min(1, p / q)
            continue
        residual = target[i].clone()
        if proposal is None:
            residual[token] = 0.0
        else:
            residual = (residual - proposal[i]).clamp(min=0.0)
        if float(residual.sum()) <= 0.0:  # rounding left nothing (p == q): target itself is what remains
            residual = target[i]
        drawn = torch.multinomial(residual / residual.sum(), 1, generator=generator)
        return [*draft[:i], int(drawn)]
    return [*draft, int(torch.multinomial(target[len(draft)], 1, generator=generator))]


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

    def propose(self, tokens: Sequence[int], size: int) -> tuple[list[int], torch.Tensor | None]:
        """tokens: the sequence so far (its last token not yet fed to the target) -> (up to `size` draft tokens,
        the distributions they were drawn from [len, V], or None when each was certain)."""
        return find_draft(tokens, size), None

    def kept(self, length: int, count: int) -> None:
        """After a verification: `count` of the draft proposed after `length` tokens were kept."""


class ModelDrafter:
    """Drafts from a smaller model (HF's assistant model), on that model's own cache, which holds a prefix of the
    sequence: each proposal first feeds the tokens it lacks, then decodes the draft, greedily or, given a
    sampler (decode.Sampler), drawing each token from its distribution."""

    def __init__(self, model: Any, sampler: Any = None) -> None:
        self.model, self.sampler = model, sampler  # a DecoderModel, its cache allocated for row 0
        self.cached = 0  # leading tokens of the sequence whose K/V the draft model's cache holds

    def propose(self, tokens: Sequence[int], size: int) -> tuple[list[int], torch.Tensor | None]:
        model, device = self.model, self.model.device
        new = torch.tensor([list(tokens[self.cached:])], device=device)
        logits = model.prefill(new) if self.cached == 0 else model.extend(new, self.cached)[-1:]
        self.cached = len(tokens)
        draft, rows = [], []
        while True:
            token, row = self._choose(logits)
            draft.append(token)
            rows.append(row)
            if len(draft) == size:
                break
            position = torch.tensor([self.cached], dtype=torch.int32, device=device)  # feed it at its position
            host = [self.cached] if device.type == "cpu" else None
            logits = model.decode(torch.tensor([[token]], device=device), position, host)
            self.cached += 1
        return draft, None if self.sampler is None else torch.cat(rows)

    def _choose(self, logits: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """logits [1, V] -> (the draft token, the distribution it was drawn from [1, V] or None when greedy)."""
        if self.sampler is None:
            return int(logits.argmax(-1)[0]), None
        probs = self.sampler.probabilities(logits)
        return int(torch.multinomial(probs, 1, generator=self.sampler.generator)[0, 0]), probs

    def kept(self, length: int, count: int) -> None:
        # The cache holds the sequence, then the draft's tokens but its last; those past the kept ones are stale.
        self.cached = min(self.cached, length + count)
