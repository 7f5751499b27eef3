"""The pieces of the decode loop: on-device token choice, decode steppers (eager, CUDA graph) and incremental
detokenisation for streaming."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from genai_fast.llm.model import DecoderModel


@dataclass(frozen=True)
class SamplingParams:
    """How generate() picks each token, with HF generate's meanings (validated by the engine)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None


class Sampler:
    """logits [B, V] -> next tokens [B] (int64, on the logits' device), without a host synchronisation.

    The order of HF generate's logits processors: the repetition penalty on every token the sequence holds (prompt
    and generated: a positive logit divided by it, a negative one multiplied), then temperature 0 is greedy
    (argmax, as do_sample=False); otherwise sample from softmax(logits / T) restricted to the top_k largest, to
    the nucleus of mass top_p and to the tokens of probability at least min_p times the top one's, with
    `generator` (reproducible). Call start() with the prompts first.

    keep_logprobs: also record, on the device, the model's log-probability of each chosen token: the log-softmax
    of the raw logits (before the penalty, temperature and filters), as HF's compute_transition_scores over
    output_logits and vLLM's default logprobs; read them with chosen_logprobs()."""

    def __init__(self, params: SamplingParams, generator: torch.Generator | None, keep_logprobs: bool = False
                 ) -> None:
        self.params, self.generator = params, generator
        self.seen: torch.Tensor | None = None  # [B, V] bool: tokens each sequence holds (repetition penalty only)
        self.keep_logprobs = keep_logprobs
        self._logprobs: list[torch.Tensor] = []  # one [B] fp32 tensor per call

    def start(self, prompts: Sequence[Sequence[int]], vocab_size: int, device: torch.device) -> None:
        """Record the prompts' tokens (for the repetition penalty)."""
        if self.params.repetition_penalty is None or self.params.repetition_penalty == 1:
            return
        self.seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool)
        for b, ids in enumerate(prompts):
            self.seen[b, list(ids)] = True
        self.seen = self.seen.to(device)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        scores = logits
        if self.seen is not None:
            scores = scores.float()
            penalised = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
            scores = torch.where(self.seen, penalised, scores)
        token = scores.argmax(-1) if p.temperature == 0 else self._draw(scores)
        if self.seen is not None:
            self.seen.scatter_(1, token[:, None], True)
        if self.keep_logprobs:
            self._logprobs.append(torch.log_softmax(logits.float(), dim=-1).gather(1, token[:, None])[:, 0])
        return token

    def penalise_drafted(self, logits: torch.Tensor, held: Sequence[int], draft: Sequence[int]) -> torch.Tensor:
        """Speculative verification's logits [1 + len(draft), V] (after the sequence `held`, then after each draft
        token) with the repetition penalty each position would get in plain decoding: over `held` and the draft
        tokens before it (as HF's assisted generation runs its processors on each candidate position); the logits
        themselves without a penalty."""
        p = self.params
        if p.repetition_penalty is None or p.repetition_penalty == 1:
            return logits
        seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        seen[:, torch.tensor(list(held), dtype=torch.long, device=logits.device)] = True
        for j, token in enumerate(draft):  # row j + 1 follows draft[j]
            seen[j + 1:, token] = True
        scores = logits.float()
        penalised = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
        return torch.where(seen, penalised, scores)

    def chosen_logprobs(self) -> list[list[float]]:
        """[B][calls]: the recorded log-probabilities of the chosen tokens, per sequence (one host read)."""
        if not self._logprobs:
            return []
        return torch.stack(self._logprobs, dim=1).tolist()

    def _draw(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(self.probabilities(scores), 1, generator=self.generator)[:, 0]

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [R, V] (logits, after any penalty) -> the distribution the tokens are drawn from [R, V] fp32:
        softmax(scores / T) restricted by top_k, top_p and min_p, renormalised (temperature > 0)."""
        p = self.params
        scores = scores.float() / p.temperature
        if p.top_k is not None and p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p is not None and p.top_p < 1:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            probs = sorted_scores.softmax(-1)
            # Drop a token when the tokens before it already reach top_p (the top token always stays).
            drop = (probs.cumsum(-1) - probs) >= p.top_p
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        if p.min_p is not None:
            probs = scores.softmax(-1)  # the top token's probability is the maximum: it always stays
            scores = scores.masked_fill(probs < p.min_p * probs.amax(-1, keepdim=True), float("-inf"))
        return scores.softmax(-1)


class EagerStepper:
    """Decode state on the device (token [B, 1], seqlens [B] int32) and one eager model call per step.

    On a CPU the lengths are mirrored on the host (free there): the model checks them against the cache and
    runs ragged batches one sequence at a time in attention (see model._decode_attention)."""

    def __init__(self, model: DecoderModel, batch: int) -> None:
        self.model, self.batch = model, batch
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=model.device)
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=model.device)
        self.host_lengths: list[int] | None = None

    def start(self, first: torch.Tensor, lengths: Sequence[int]) -> None:
        """first: [B] tokens chosen after prefill; lengths: the prompt lengths (the cache lengths)."""
        self.token.copy_(first.view(-1, 1))
        self.seqlens.copy_(torch.tensor(list(lengths), dtype=torch.int32))
        self.host_lengths = list(lengths) if self.model.device.type == "cpu" else None

    def step(self) -> torch.Tensor:
        """Feed the current tokens; -> logits [B, V] for the next ones."""
        return self.model.decode(self.token, self.seqlens, self.host_lengths)

    def advance(self, nxt: torch.Tensor) -> None:
        """nxt: [B] the tokens chosen from the last step's logits."""
        self.token.copy_(nxt.view(-1, 1))
        self.seqlens.add_(1)
        if self.host_lengths is not None:
            self.host_lengths = [n + 1 for n in self.host_lengths]


class CudaGraphStepper(EagerStepper):
    """The decode step captured once as a CUDA graph over static token/seqlens tensors and the model's cache.

    Capture runs the step on the current (empty) cache contents at position 0 of every row: the warm-up writes
    there, and the prefill that follows overwrites it. The graph stays valid while the cache it read is the
    model's (model.cache_version)."""

    def __init__(self, model: DecoderModel, batch: int) -> None:
        super().__init__(model, batch)
        self.cache_version = model.cache_version
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compiles the Triton kernels and sets up cuBLAS outside the capture
                model.decode(self.token, self.seqlens)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model.decode(self.token, self.seqlens)

    def step(self) -> torch.Tensor:
        self.graph.replay()
        return self.logits


class IncrementalText:
    """Token ids in, printable text pieces out; the pieces join to tokenizer.decode(all ids).

    Each push decodes a short window: the tokens already printed since the previous piece (context, so that
    tokenizers which drop a leading space at the start of a decode print it) plus the new ones, and prints what
    the new ones add. A piece that ends in U+FFFD (a multi-byte character split across tokens) waits for the
    token that completes it.

    Pieces are cut by length, never held for good: a byte-fallback decoder (Llama/Mistral SentencePiece) turns
    a byte it printed as a character into U+FFFD when the bytes after it make an invalid sequence, so the text
    of earlier tokens can change. The join then has that character where the full decode has U+FFFD (same
    length, everything after it printed), rather than the stream stalling on a window that never agrees with
    what it printed."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # first id of the decode window
        self.read = 0  # ids whose text is printed
        self.printed = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, ids: Sequence[int]) -> str:
        """Add token ids; -> the text they complete ("" while it is not printable yet)."""
        self.ids.extend(ids)
        before = self._decode(self.ids[self.start:self.read])
        now = self._decode(self.ids[self.start:])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        piece = now[len(before):]
        self.start, self.read = self.read, len(self.ids)
        self.printed += piece
        return piece

    def finish(self) -> str:
        """The rest of the text (what was held back, e.g. a character the generation left incomplete)."""
        rest = self._decode(self.ids)[len(self.printed):]
        self.printed += rest
        return rest
