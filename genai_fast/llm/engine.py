"""Loading and generation: `load(source)` -> Engine; `Engine.generate(...)` -> GenerationResult (or one per
prompt for a batch); `Engine.stream(...)` -> TextStream of text pieces."""

from __future__ import annotations

import contextlib
import math
import operator
import os
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genai_fast.llm import speculate
from genai_fast.llm.decode import CudaGraphStepper, EagerStepper, IncrementalText, Sampler, SamplingParams
from genai_fast.llm.model import DecoderModel, _check_architecture, from_hf
from genai_fast.ops.checks import is_real_number

DEFAULT_MAX_SEQ_LEN = 2048
# How many decode steps a GPU runs between two reads of the new tokens (the EOS / stop checks): the steps after
# a stop inside a chunk are wasted, each read is one host synchronisation.
GPU_SYNC_EVERY = 16
# Rows per prefill in Engine.loglikelihood: each returns [S, V] logits (SmolLM2, 512 tokens: 100 MB in fp32).
SCORE_BATCH = 8

Prompt = str | Sequence[int] | torch.Tensor


@dataclass
class GenerationResult:
    """ids: the new token ids (EOS included when generation stopped on it); text: their decoding with
    skip_special_tokens=True, as `tokenizer.decode(ids, skip_special_tokens=True)` (an EOS such as <|im_end|> is
    in ids, not in text; None without a tokenizer); stats (see Engine.generate)."""

    ids: list[int]
    text: str | None
    stats: dict[str, float] = field(default_factory=dict)
    logprobs: list[float] | None = None  # with generate(logprobs=True): each new token's log-probability


@dataclass
class Loglikelihood:
    """Engine.loglikelihood's answer for one (context, continuation): logprob, the sum of the continuation tokens'
    log-probabilities given everything before them; greedy, whether greedy decoding from the context would
    produce exactly the continuation; token_logprobs, one per continuation token; tokens, the continuation ids."""

    logprob: float
    greedy: bool
    token_logprobs: list[float]
    tokens: list[int]


def _load_hf(source: str | os.PathLike, dtype: torch.dtype | str | None) -> tuple[Any, Any]:
    """(hf_model, tokenizer or None) from a .gguf file or a checkpoint directory; dtype None reads fp32,
    "auto" the checkpoint's dtype."""
    import transformers

    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source: {path} does not exist")
    kwargs: dict[str, Any] = {}
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"source: {path} is a file but not a .gguf; pass a .gguf file or a checkpoint folder")
        path, kwargs["gguf_file"] = path.parent, path.name
    # Readers of corrupted files raise all sorts of types (safetensors' SafetensorError, struct.error in GGUF,
    # ...): each becomes one ValueError naming the source.
    try:
        config = transformers.AutoConfig.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ValueError(f"source: could not read the model config from {source}: {exc}") from exc
    _check_architecture(config)  # before reading (possibly gigabytes of) weights
    try:
        # config=: reading a GGUF file's metadata again would cost as much as the first time.
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype or torch.float32,
                                                               **kwargs)
    except Exception as exc:
        raise ValueError(f"source: could not load the model from {source}: {exc}") from exc
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return hf, tokenizer


SLIDING_WINDOW_CACHES = ("ring", "full")


def load(source: Any, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
         tokenizer: Any = None, max_seq_len: int | None = None, cuda_graph: bool = True,
         gguf_blocks: bool | None = None, reuse_prefix: bool = False, sliding_window_cache: str = "ring") -> Engine:
    """Load a Llama-family (llama, mistral, qwen2, qwen3, phi3, smollm3, gemma, gemma2, gemma3_text, granite,
    stablelm, olmo2, olmo3, cohere, cohere2; with mixture-of-experts MLPs: mixtral, qwen2_moe, qwen3_moe, olmoe,
    granitemoe, granitemoeshared, gpt_oss, glm4_moe; with DeepSeek's latent attention too: deepseek_v2, deepseek_v3,
    glm4_moe_lite), GPT-2, GPT-NeoX, Phi (1, 1.5, 2) or StarCoder2 model into the compact engine.

    source: a `.gguf` file (through transformers' `gguf_file=`), a local HF checkpoint directory, or an
    already-loaded HF `*ForCausalLM`. dtype: a floating torch.dtype or its name, as from_pretrained takes it;
    None: the loaded weights' dtype (fp32 for files); "auto": the checkpoint's own dtype.
    tokenizer: overrides the one found next to the weights (needed for string prompts with an HF model).
    max_seq_len: the KV cache length S_max per sequence; defaults to min(context, 2048).
    cuda_graph: on a CUDA device, capture the decode step once per batch size and replay it.
    gguf_blocks: for a `.gguf` source, let decode read the file's weight blocks (e.g. Q4_1) instead of the fp32
        weights transformers expanded them to: the same fp32 weights bit for bit at a fraction of the memory
        traffic (genai_fast/llm/gguf_blocks.py). None (default): when the model is fp32 on the CPU and the C++
        kernel is available; True: required (ValueError saying why it cannot); False: fp32 weights.
        `Engine.weight_format` says what decode reads.
    reuse_prefix: a single prompt that starts with the tokens the cache already holds from the previous
        single-prompt call (a chat's earlier turns, an answer continued) prefills only the rest, through
        DecoderModel.extend (stats["reused_tokens"]). Off by default: the reused positions' attention ran in
        the earlier call's kernels, so logits may differ from a fresh prefill in the last bits (and a greedy
        near-tie could then flip). Models whose sliding layers keep rings never reuse (a ring holds only the last
        window).
    sliding_window_cache: "ring" (default): a sliding-window layer (Mistral, Gemma 2 and 3, SmolLM3, some of
        Qwen2's) caches only its window, position p in slot p % window, so its memory stays bounded however long
        the context; "full": it caches every position like a full layer, and the attention kernels' `window`
        bounds what it reads. Speculative decoding and prefix reuse need "full" for models whose window is shorter
        than max_seq_len (a ring cannot take rejected positions back). The tokens are the same either way.
    """
    _check_flag("reuse_prefix", reuse_prefix)
    if sliding_window_cache not in SLIDING_WINDOW_CACHES:
        raise ValueError(f"sliding_window_cache: expected one of {SLIDING_WINDOW_CACHES}, got {sliding_window_cache!r}")
    dtype = _resolve_dtype(dtype)
    if isinstance(source, torch.nn.Module):
        hf = source
        if tokenizer is None and getattr(hf, "name_or_path", None) and Path(hf.name_or_path).is_dir():
            tokenizer = _try_tokenizer(hf.name_or_path)
    else:
        hf, found = _load_hf(source, dtype)
        tokenizer = tokenizer or found
    model = from_hf(hf, dtype=None if dtype == "auto" else dtype, device=device).eval()
    model.ring_caches = sliding_window_cache == "ring"
    limit = model.cfg.max_position_embeddings
    max_seq_len = min(limit, DEFAULT_MAX_SEQ_LEN) if max_seq_len is None else max_seq_len
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or not 0 < max_seq_len <= limit:
        raise ValueError(f"max_seq_len: expected 1..{limit} (the model's context), got {max_seq_len!r}")
    weight_format = _use_gguf_blocks(model, source, gguf_blocks)
    engine = Engine(model, tokenizer, max_seq_len, _eos_ids(hf, tokenizer), cuda_graph=cuda_graph)
    engine.weight_format = weight_format
    engine.reuse_prefix = reuse_prefix
    return engine


def _resolve_dtype(dtype: Any) -> torch.dtype | str | None:
    """load's dtype as from_pretrained takes it: a floating torch.dtype, its name ("bfloat16", "torch.float16"),
    "auto" (the checkpoint's own dtype) or None."""
    if dtype is None or dtype == "auto":
        return dtype
    found = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch.dtype (e.g. torch.bfloat16), its name or 'auto', "
                         f"got {dtype!r}")
    return found


def _use_gguf_blocks(model: DecoderModel, source: Any, wanted: bool | None) -> str:
    """Attach the GGUF file's blocks to `model` when asked (see load's gguf_blocks); -> Engine.weight_format."""
    from genai_fast.llm.gguf_blocks import attach_gguf_blocks
    from genai_fast.ops.gguf_linear import resolve_gguf_linear

    fp32 = f"{model.dtype} weights".replace("torch.", "")
    if wanted is False:
        return fp32
    why_not = None
    if isinstance(source, torch.nn.Module) or Path(source).suffix != ".gguf":
        why_not = "the source is not a .gguf file"
    elif model.dtype != torch.float32 or model.device.type != "cpu":
        why_not = f"the model is {model.dtype} on {model.device}; the blocks hold fp32 weights for the CPU kernel"
    elif resolve_gguf_linear(1, model.device) is None:
        why_not = "the C++ gguf_linear kernel is unavailable (see genai-fast info)"
    if why_not is not None:
        if wanted:
            raise ValueError(f"gguf_blocks: cannot decode from GGUF blocks: {why_not}")
        return fp32
    report = attach_gguf_blocks(model, Path(source).expanduser())
    if wanted and not report.attached:
        raise ValueError(f"gguf_blocks: no weight matched the file's blocks: {'; '.join(report.kept_fp32[:3])}")
    return report.summary()


def _try_tokenizer(path: str) -> Any:
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        return None


def _eos_ids(hf: Any, tokenizer: Any) -> set[int]:
    """EOS ids as HF generate uses them: the generation config's, else the model config's, else the tokenizer's."""
    for cfg in (getattr(hf, "generation_config", None), hf.config):
        eos = getattr(cfg, "eos_token_id", None)
        if eos is not None:
            return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return {int(tokenizer.eos_token_id)}
    return set()


class TextStream:
    """Iterate for the text pieces of one generation as they are produced; `.result` (a GenerationResult) is
    set once the iteration ends. The pieces join to `.result.text`."""

    def __init__(self, chunks: Generator[list[list[int]], None, list[GenerationResult]], tokenizer: Any) -> None:
        self._chunks, self._tokenizer = chunks, tokenizer
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        text = IncrementalText(self._tokenizer)
        while True:
            try:
                gained = next(self._chunks)
            except StopIteration as done:
                self.result = done.value[0]
                break
            piece = text.push(gained[0])
            if piece:
                yield piece
        rest = text.finish()
        if rest:
            yield rest


class _OneGeneration:
    """The engine's KV cache and CUDA graphs serve one generation at a time: a generation in another thread waits
    for the running one, and one started in the thread that already runs one (while a stream is unfinished)
    raises instead of overwriting its cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self._owner == threading.get_ident():
            raise RuntimeError("this engine is already generating in this thread (an unfinished stream?): iterate "
                               "it to the end or drop it first, or load a second engine")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None


class Engine:
    """A loaded model, its tokenizer and a static KV cache of `max_seq_len` positions per sequence."""

    def __init__(self, model: DecoderModel, tokenizer: Any, max_seq_len: int, eos_ids: set[int],
                 cuda_graph: bool = True) -> None:
        self.model, self.tokenizer, self.max_seq_len, self.eos_ids = model, tokenizer, max_seq_len, eos_ids
        self.device = model.device
        self.cuda_graph = cuda_graph
        self.sync_every = GPU_SYNC_EVERY if self.device.type == "cuda" else 1
        self._graphs: dict[int, CudaGraphStepper] = {}
        self._in_use = _OneGeneration()
        self.weight_format = f"{model.dtype} weights".replace("torch.", "")  # load() says more for GGUF blocks
        self.reuse_prefix = False  # see load()
        # The tokens whose K/V cache row 0 holds at positions 0 .. len - 1 (after a single-prompt generation),
        # with the cache allocation they live in; None when unknown.
        self._cached_row: tuple[list[int], int] | None = None

    def encode(self, prompt: Prompt | Sequence[Mapping[str, Any]], chat: bool | None = None) -> list[int]:
        """Prompt -> token ids. Rule: a string is wrapped in the tokenizer's chat template (one user turn plus
        the assistant generation prompt) when the tokenizer has one and `chat` is not False; `chat=False`
        tokenizes the string as is. A list of chat messages ({"role": ..., "content": ...} dicts: system, user,
        assistant turns) always goes through the template, as HF's text-generation pipeline does: with the
        generation prompt, or, when the last message is the assistant's, continuing that message. Token ids are
        used as given."""
        if isinstance(prompt, torch.Tensor) and prompt.dim() > 1 and prompt.shape[0] != 1:
            raise ValueError(f"prompt_or_ids: one sequence expected here, got a tensor of shape {tuple(prompt.shape)}")
        if _is_chat(prompt):
            return self._encode_chat(list(prompt), chat)
        if not isinstance(prompt, str):
            ids = _token_ids(prompt)
            if not ids:
                raise ValueError("prompt_or_ids: empty")
            return ids
        if self.tokenizer is None:
            raise ValueError("prompt_or_ids: a string prompt needs a tokenizer; pass token ids or load(tokenizer=)")
        if chat is not False and getattr(self.tokenizer, "chat_template", None):
            return self._encode_chat([{"role": "user", "content": prompt}], chat)
        ids = self.tokenizer(prompt)["input_ids"]
        if not ids:
            raise ValueError("prompt_or_ids: the prompt encodes to no tokens")
        return list(ids)

    def _encode_chat(self, messages: list[Mapping[str, Any]], chat: bool | None) -> list[int]:
        if chat is False:
            raise ValueError("prompt_or_ids: chat messages need the chat template; chat=False tokenizes strings only")
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("prompt_or_ids: chat messages need a tokenizer with a chat template; pass a string with "
                             "chat=False or token ids")
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"prompt_or_ids: message {i} has no 'role' string: {dict(message)!r}")
        # As HF's pipeline: a conversation ending on the assistant's turn is continued, not answered.
        continue_last = messages[-1]["role"] == "assistant"
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=not continue_last,
                                                 continue_final_message=continue_last, tokenize=True,
                                                 return_dict=False)
        ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
        if not ids:
            raise ValueError("prompt_or_ids: the prompt encodes to no tokens")
        return list(ids)

    def generate(self, prompt_or_ids: Prompt | Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: Sequence[str | int] | str | int | None = None, chat: bool | None = None, *,
                 min_p: float | None = None, repetition_penalty: float | None = None, logprobs: bool = False,
                 prompt_lookup: int = 0, draft_model: Engine | None = None, num_draft_tokens: int = 5
                 ) -> GenerationResult | list[GenerationResult]:
        """Generate up to max_new_tokens tokens after a prompt, or after each prompt of a batch.

        prompt_or_ids: a string, a list of chat messages ({"role", "content"} dicts, see `encode`), a list of
        token ids or a [S] / [1, S] tensor -> one GenerationResult; a list of those (any lengths) or a [B, S]
        tensor with B > 1 -> a list of GenerationResults, one per prompt. A batch
        decodes every sequence at its own length; with greedy decoding each result equals that prompt's own
        generation.

        temperature 0 is greedy (argmax, as HF's do_sample=False); otherwise sample from softmax(logits / T)
        restricted by top_k, top_p (nucleus) and min_p (tokens at least min_p times as probable as the top one),
        with a torch.Generator seeded by `seed` (reproducible). repetition_penalty (> 0; HF's, applied first,
        greedy too): the logit of every token already in the sequence, prompt included, is divided by it when
        positive and multiplied by it when negative.
        A sequence stops after an EOS token (kept in `.ids`) or after a `stop` token id / string. A stop string
        stops where HF's stop_strings do: on the token its text ends in (that token is kept: the text includes
        the stop string, unless it is a special token's, and whatever else that token adds); its start may lie
        in the prompt's text, and special tokens count as their text ("<|im_start|>").

        stats: prompt_tokens, new_tokens (this sequence); batch, prefill_ms (the whole batch, up to the first
        tokens), decode_ms, decode_steps, tokens_per_s (new tokens of all sequences after their first / decode
        time), decode_gb_per_s (see `decode_traffic_bytes`).
        logprobs: also return each new token's log-probability under the model (`.logprobs`: the log-softmax of
        the raw logits at the chosen token, before the penalty, temperature and filters; recorded on the device,
        read once at the end).

        prompt_lookup: speculative decoding with drafts of up to this many tokens taken from the text itself
        (see genai_fast.llm.speculate; HF's prompt_lookup_num_tokens): fewer forward passes when the output
        repeats its context. Greedy: the same tokens as plain decoding; sampled (temperature > 0): speculative
        sampling, which draws from the same distribution (not the same draws for a seed). A repetition penalty
        applies at each checked position over the tokens before it, drafts included. Sliding layers need full
        caches (load(sliding_window_cache="full")); a batch runs its prompts one after another. stats gain
        draft_tokens and accepted_tokens; decode_steps counts the verification passes.
        draft_model: speculative decoding with drafts of up to num_draft_tokens tokens (adapted per pass) from
        this smaller engine (HF's assistant_model), greedy or sampled with the same settings: same tokenizer,
        same device, a vocabulary no larger, no sliding layers; its cache is used and overwritten. Same rules as
        prompt_lookup.
        """
        prompts, batched = self._as_batch(prompt_or_ids, chat)
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
        _check_flag("logprobs", logprobs)
        drafting = self._drafting(params, prompt_lookup, draft_model, num_draft_tokens)
        if drafting is not None:
            chunks = [self._run(prompts[i:i + 1], max_new_tokens, params, seed, stop, 1, logprobs, drafting)
                      for i in range(len(prompts))]
        else:
            chunks = [self._run(prompts, max_new_tokens, params, seed, stop, self.sync_every, logprobs)]
        results = [result for run in chunks for result in _drain(run)]
        return results if batched else results[0]

    def _drafting(self, params: SamplingParams, prompt_lookup: Any, draft_model: Any, num_draft_tokens: Any
                  ) -> tuple[Engine | None, int] | None:
        """(draft engine or None for prompt lookup, draft size) when speculative decoding is asked for, checked;
        None for plain decoding."""
        _check_count("prompt_lookup", prompt_lookup)
        if draft_model is None and not prompt_lookup:
            return None
        name = "prompt_lookup" if draft_model is None else "draft_model"
        if draft_model is not None and prompt_lookup:
            raise ValueError("draft_model: pass either a draft model or prompt_lookup, not both")
        if draft_model is not None:
            self._check_draft_model(draft_model)
        for engine, who in ((self, "this model"), (draft_model, "the draft model")):
            if engine is not None and engine.model.uses_rings(engine.max_seq_len):
                raise ValueError(f"{name}: {who} has sliding-window layers, whose ring caches cannot take back "
                                 "rejected draft tokens; load it with sliding_window_cache='full'")
        if draft_model is None:
            return None, prompt_lookup
        _check_count("num_draft_tokens", num_draft_tokens)
        if num_draft_tokens == 0:
            raise ValueError("num_draft_tokens: expected at least 1 with a draft_model")
        return draft_model, num_draft_tokens

    def _check_draft_model(self, draft: Any) -> None:
        if not isinstance(draft, Engine):
            raise TypeError(f"draft_model: expected a genai_fast.llm Engine (from load()), got {type(draft).__name__}")
        if draft is self:
            raise ValueError("draft_model: expected another engine (this one's cache holds the sequence)")
        if draft.device != self.device:
            raise ValueError(f"draft_model: expected an engine on {self.device}, got {draft.device}")
        if draft.model.cfg.vocab_size > self.model.cfg.vocab_size:
            raise ValueError(f"draft_model: its vocabulary of {draft.model.cfg.vocab_size} tokens is larger than "
                             f"this model's {self.model.cfg.vocab_size}: not the same tokenizer")

    def stream(self, prompt_or_ids: Prompt, max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: Sequence[str | int] | str | int | None = None, chat: bool | None = None, *,
               min_p: float | None = None, repetition_penalty: float | None = None, logprobs: bool = False,
               prompt_lookup: int = 0, draft_model: Engine | None = None, num_draft_tokens: int = 5) -> TextStream:
        """generate() for one prompt, as an iterable of text pieces (printable as they come: a character split
        across tokens waits for its last token). The GenerationResult is `.result` after the iteration."""
        if self.tokenizer is None:
            raise ValueError("stream: needs a tokenizer to produce text; load(tokenizer=...) or use generate()")
        prompts, batched = self._as_batch(prompt_or_ids, chat)
        if batched:
            raise ValueError(f"prompt_or_ids: stream takes one prompt, got a batch of {len(prompts)}; "
                             "use generate() for a batch")
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
        _check_flag("logprobs", logprobs)
        drafting = self._drafting(params, prompt_lookup, draft_model, num_draft_tokens)
        chunks = self._run(prompts, max_new_tokens, params, seed, stop, sync_every=1, logprobs=logprobs,
                           drafting=drafting)
        return TextStream(chunks, self.tokenizer)

    def loglikelihood(self, context: Prompt | Sequence[tuple[Prompt, Prompt]], continuation: Prompt | None = None
                      ) -> Loglikelihood | list[Loglikelihood]:
        """How likely the model finds `continuation` after `context` (lm-evaluation-harness's loglikelihood
        request): one forward pass over context + continuation, no chat template. Pass a context and a
        continuation (strings, token id lists or 1-D tensors) -> one Loglikelihood, or a list of (context,
        continuation) pairs as `context` -> a list, scored in batches of right-padded rows.

        Strings are split as the harness splits them: trailing whitespace of the context moves to the
        continuation, context + continuation is encoded whole and the continuation is what follows the
        context's own encoding. The context needs at least one token (the first continuation token is predicted
        from it) and the continuation at least one; the pair must fit max_seq_len."""
        pairs, batched = (list(context), True) if continuation is None else ([(context, continuation)], False)
        if not pairs:
            raise ValueError("context: expected (context, continuation) pairs, got an empty list")
        encoded = [self._encode_pair(pair, i if batched else None) for i, pair in enumerate(pairs)]
        results: list[Loglikelihood] = []
        with self._in_use.hold():
            for start in range(0, len(encoded), SCORE_BATCH):
                results += self._score_rows(encoded[start:start + SCORE_BATCH])
        return results if batched else results[0]

    def _encode_pair(self, pair: Any, index: int | None) -> tuple[list[int], list[int]]:
        """(context, continuation) -> their token ids, checked (see loglikelihood)."""
        where = "" if index is None else f"[{index}]"
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"context{where}: expected a (context, continuation) pair, got {pair!r}")
        context, continuation = pair
        if isinstance(context, str) and isinstance(continuation, str):
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = self._encode_side(context + continuation, "continuation", where)
            ctx = self._encode_side(context, "context", where) if context else []
            ctx_ids, cont_ids = whole[:len(ctx)], whole[len(ctx):]
        else:
            ctx_ids = self._encode_side(context, "context", where)
            cont_ids = self._encode_side(continuation, "continuation", where)
        if not ctx_ids or not cont_ids:
            name = "context" if not ctx_ids else "continuation"
            raise ValueError(f"{name}{where}: expected at least one token, got none")
        total, vocab = len(ctx_ids) + len(cont_ids), self.model.cfg.vocab_size
        if total > self.max_seq_len:
            raise ValueError(f"context{where}: context + continuation is {total} tokens, more than max_seq_len "
                             f"{self.max_seq_len}")
        bad = [t for t in ctx_ids + cont_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"context{where}: token id {bad[0]} is outside the vocabulary 0..{vocab - 1}")
        return ctx_ids, cont_ids

    def _encode_side(self, value: Any, name: str, where: str) -> list[int]:
        """encode(value, chat=False) with an empty side as no tokens and errors named after the side."""
        if (isinstance(value, torch.Tensor) and value.numel() == 0) or (isinstance(value, (str, list, tuple))
                                                                        and not value):
            return []
        try:
            return self.encode(value, chat=False)
        except ValueError as exc:
            raise ValueError(f"{name}{where}: {str(exc).removeprefix('prompt_or_ids: ')}") from exc

    def _score_rows(self, rows: list[tuple[list[int], list[int]]]) -> list[Loglikelihood]:
        """One right-padded prefill with every position's logits -> each row's Loglikelihood."""
        self._cached_row = None  # the prefill below rewrites row 0
        self.model.allocate_cache(len(rows), self.max_seq_len)
        padded = _right_padded([ctx + cont for ctx, cont in rows], self.device)
        logits = self.model.prefill(padded, all_logits=True)  # causal: padding changes no row
        results = []
        for b, (ctx, cont) in enumerate(rows):
            predicting = logits[b, len(ctx) - 1:len(ctx) + len(cont) - 1].float()  # the logits before each token
            target = torch.tensor(cont, device=predicting.device)
            chosen = torch.log_softmax(predicting, dim=-1).gather(1, target[:, None])[:, 0].tolist()
            greedy = bool((predicting.argmax(-1) == target).all())
            results.append(Loglikelihood(math.fsum(chosen), greedy, chosen, list(cont)))
        return results

    def _as_batch(self, prompt_or_ids: Any, chat: bool | None) -> tuple[list[list[int]], bool]:
        if isinstance(prompt_or_ids, torch.Tensor) and prompt_or_ids.dim() == 2 and prompt_or_ids.shape[0] > 1:
            return [row.tolist() for row in prompt_or_ids], True
        # A 0-d tensor is one token id (list(tensor) gives those), not a prompt.
        is_batch = (isinstance(prompt_or_ids, (list, tuple)) and len(prompt_or_ids) > 0
                    and all(isinstance(p, (str, list, tuple)) or (isinstance(p, torch.Tensor) and p.dim() > 0)
                            for p in prompt_or_ids))
        if not is_batch:
            return [self.encode(prompt_or_ids, chat)], False
        prompts = []
        for i, prompt in enumerate(prompt_or_ids):
            try:
                prompts.append(self.encode(prompt, chat))
            except ValueError as exc:
                raise ValueError(f"prompt_or_ids[{i}]: {str(exc).removeprefix('prompt_or_ids: ')}") from exc
        return prompts, True

    def _stepper(self, batch: int) -> EagerStepper:
        if not (self.cuda_graph and self.device.type == "cuda"):
            return EagerStepper(self.model, batch)
        graph = self._graphs.get(batch)
        if graph is None or graph.cache_version != self.model.cache_version:
            self._cached_row = None  # the capture writes position 0 of every row
            graph = self._graphs[batch] = CudaGraphStepper(self.model, batch)
        return graph

    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, int]:
        """Logits [B, V] after each prompt, with the prompts' K/V in the cache; and how many leading tokens were
        reused from the cache instead of computed (see load's reuse_prefix)."""
        reused = self._reusable(prompts[0]) if len(prompts) == 1 else 0
        self._cached_row = None  # row 0 is being rewritten; the caller records it again when it is whole
        if reused:
            suffix = torch.tensor([prompts[0][reused:]], device=self.device)
            return self.model.extend(suffix, reused)[-1:], reused
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        return self.model.prefill(_right_padded(prompts, self.device), lengths - 1), 0

    def _reusable(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` cache row 0 holds (at most all but the last, whose logits are
        needed), when reuse_prefix is on and the row's record is current."""
        if not self.reuse_prefix or self._cached_row is None:
            return 0
        tokens, version = self._cached_row
        if version != self.model.cache_version or any(layer.ring for layer in self.model.layers):
            return 0
        common = 0
        for a, b in zip(tokens, prompt, strict=False):
            if a != b:
                break
            common += 1
        return min(common, len(prompt) - 1)

    def _remember_row(self, prompts: list[list[int]], rows: list[list[int]]) -> None:
        """After a single-prompt generation: the cache's row 0 holds every token fed (all but the last new one)."""
        if len(prompts) == 1 and rows[0]:
            self._cached_row = (prompts[0] + rows[0][:-1], self.model.cache_version)

    def _run(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams, seed: int | None, stop: Any,
             sync_every: int, logprobs: bool = False, drafting: tuple[Engine | None, int] | None = None
             ) -> Generator[list[list[int]], None, list[GenerationResult]]:
        """Validate now (not at the first step of the generator), then -> the decode loop (see _decode)."""
        vocab = self.model.cfg.vocab_size
        for i, ids in enumerate(prompts):
            name = "prompt_or_ids" if len(prompts) == 1 else f"prompt_or_ids[{i}]"
            _validate(max_new_tokens, params, len(ids), self.max_seq_len, name)
            # Checked here: an embedding lookup out of range is an opaque error on a CPU, a device assert on a GPU.
            if min(ids) < 0 or max(ids) >= vocab:
                bad = next(t for t in ids if not 0 <= t < vocab)
                raise ValueError(f"{name}: token id {bad} is outside the vocabulary 0..{vocab - 1}")
        stop_ids, stop_strings = _split_stop(stop)
        if drafting is not None:
            draft, size = drafting
            if draft is not None and len(prompts[0]) + max_new_tokens + size > draft.max_seq_len:
                raise ValueError(f"draft_model: its cache of {draft.max_seq_len} positions is too short for "
                                 f"{len(prompts[0])} prompt tokens + {max_new_tokens} new + {size} drafted; "
                                 "load it with a larger max_seq_len")
        sample = Sampler(params, self._generator(params.temperature, seed), keep_logprobs=logprobs and not drafting)
        if drafting is not None:
            return self._decode_speculative(prompts[0], max_new_tokens, stop_ids, stop_strings, logprobs, sample,
                                            draft, size)
        return self._decode(prompts, max_new_tokens, sample, stop_ids, stop_strings, sync_every)

    def _decode_speculative(self, prompt: list[int], max_new_tokens: int, stop_ids: set[int],
                            stop_strings: list[str], logprobs: bool, sample: Sampler, draft: Engine | None,
                            draft_size: int) -> Generator[list[list[int]], None, list[GenerationResult]]:
        """Speculative decoding of one prompt (see generate's prompt_lookup and draft_model): each pass feeds the
        last new token and a draft through DecoderModel.extend, keeps the draft tokens the model agrees with
        (greedy) or accepts (speculative sampling) and one more token of its own. Yields what the sequence
        gained per pass, as _decode does."""
        with self._in_use.hold(), (draft._in_use.hold() if draft is not None else contextlib.nullcontext()):
            if draft is not None:
                draft.model.allocate_cache(1, draft.max_seq_len)
                draft._cached_row = None  # its row 0 now holds this sequence
            sampled = sample if sample.params.temperature > 0 else None
            drafter = speculate.LookupDrafter() if draft is None else speculate.ModelDrafter(draft.model, sampled)
            return (yield from self._speculate(prompt, max_new_tokens, stop_ids, stop_strings, logprobs, sample,
                                               drafter, draft_size))

    def _speculate(self, prompt: list[int], max_new_tokens: int, stop_ids: set[int], stop_strings: list[str],
                   logprobs: bool, sample: Sampler, drafter: Any, draft_size: int
                   ) -> Generator[list[list[int]], None, list[GenerationResult]]:
        """_decode_speculative's loop, with the engines held."""
        rows, done, counts = [[]], [False], {"passes": 0, "drafted": 0, "accepted": 0}
        self.model.allocate_cache(1, self.max_seq_len)
        t0 = time.perf_counter()
        sample.start([prompt], self.model.cfg.vocab_size, self.device)  # the first token's repetition penalty
        logits, reused = self._prefill([prompt])
        gained = [int(sample(logits)[0])]
        scores = [_chosen_logprob(logits[0], gained[0])] if logprobs else []
        prefill_ms, t1 = (time.perf_counter() - t0) * 1e3, time.perf_counter()
        cached, size, kept_scores = len(prompt), draft_size, []
        while True:
            before = len(rows[0])
            yield self._accept([prompt], rows, done, [gained], max_new_tokens, stop_ids, stop_strings)
            kept_scores += scores[:len(rows[0]) - before]
            if done[0]:
                break
            room = min(size, max_new_tokens - len(rows[0]) - 1, self.max_seq_len - cached - 1)
            draft, proposal = drafter.propose(prompt + rows[0], room) if room > 0 else ([], None)
            logits = self._verify(rows[0][-1], draft, cached)
            chosen = sample.penalise_drafted(logits, prompt + rows[0], draft)
            if sample.params.temperature == 0:
                gained = speculate.accept(draft, chosen.argmax(-1).tolist())
            else:
                gained = speculate.accept_sampled(sample.probabilities(chosen), draft, proposal, sample.generator)
            drafter.kept(len(prompt) + len(rows[0]), len(gained) - 1)
            if logprobs:
                scores = [_chosen_logprob(row, token) for row, token in zip(logits, gained, strict=False)]
            cached += len(gained)  # the fed last token and each kept draft token are now cached
            size = speculate.next_draft_size(size, len(draft), len(gained) - 1, draft_size)
            counts["passes"] += 1
            counts["drafted"] += len(draft)
            counts["accepted"] += len(gained) - 1
        self._sync()
        self._remember_row([prompt], rows)
        result = self._results(rows, [len(prompt)], prefill_ms, time.perf_counter() - t1, counts["passes"])[0]
        result.stats.update(draft_tokens=counts["drafted"], accepted_tokens=counts["accepted"],
                            decode_gb_per_s=float("nan"), reused_tokens=reused)
        if logprobs:
            result.logprobs = kept_scores
        return [result]

    def _verify(self, last: int, draft: list[int], cached: int) -> torch.Tensor:
        """The model's logits [1 + len(draft), V] after the last new token and after each draft token, fed at
        positions cached, cached + 1, ... (their K/V written there)."""
        fed = torch.tensor([[last, *draft]], device=self.device)
        if draft:
            return self.model.extend(fed, cached)
        # Nothing to check: the plain decode step, whose kernels are resolved for one token.
        position = torch.tensor([cached], dtype=torch.int32, device=self.device)
        return self.model.decode(fed, position, [cached] if self.device.type == "cpu" else None)

    def _decode(self, prompts: list[list[int]], max_new_tokens: int, sample: Sampler, stop_ids: set[int],
                stop_strings: list[str], sync_every: int) -> Generator[list[list[int]], None, list[GenerationResult]]:
        """Yields, after each read of the new tokens, what each sequence gained since the last one (cut at its
        stop); returns the results. The device runs `sync_every` steps between two reads."""
        with self._in_use.hold():
            return (yield from self._decode_held(prompts, max_new_tokens, sample, stop_ids, stop_strings, sync_every))

    def _decode_held(self, prompts: list[list[int]], max_new_tokens: int, sample: Sampler, stop_ids: set[int],
                     stop_strings: list[str], sync_every: int
                     ) -> Generator[list[list[int]], None, list[GenerationResult]]:
        B, lengths = len(prompts), [len(p) for p in prompts]
        self.model.allocate_cache(B, self.max_seq_len)
        stepper = self._stepper(B)  # before the prefill: capturing a graph writes cache position 0
        t0 = time.perf_counter()
        sample.start(prompts, self.model.cfg.vocab_size, self.device)
        logits, reused = self._prefill(prompts)
        tokens = torch.empty(B, max_new_tokens, dtype=torch.long, device=self.device)
        tokens[:, 0] = sample(logits)
        stepper.start(tokens[:, 0], lengths)
        self._sync()
        prefill_ms = (time.perf_counter() - t0) * 1e3
        rows: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        t1 = time.perf_counter()
        read, step = 0, 1
        while True:
            if step - read >= sync_every or step == max_new_tokens:
                new = tokens[:, read:step].tolist()
                yield self._accept(prompts, rows, done, new, max_new_tokens, stop_ids, stop_strings)
                read = step
                if all(done):
                    break
            tokens[:, step] = nxt = sample(stepper.step())
            stepper.advance(nxt)
            step += 1
        self._sync()
        decode_s = time.perf_counter() - t1
        self._remember_row(prompts, rows)
        results = self._results(rows, lengths, prefill_ms, decode_s, step - 1)
        for result in results:
            result.stats["reused_tokens"] = reused
        if sample.keep_logprobs:
            for result, chosen in zip(results, sample.chosen_logprobs(), strict=True):
                result.logprobs = chosen[:len(result.ids)]
        return results

    def _generator(self, temperature: float, seed: int | None) -> torch.Generator | None:
        if temperature == 0:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        return gen

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _accept(self, prompts: list[list[int]], rows: list[list[int]], done: list[bool], new: list[list[int]],
                max_new_tokens: int, stop_ids: set[int], stop_strings: list[str]) -> list[list[int]]:
        """Append each unfinished sequence's new tokens up to its stop; -> what each one gained."""
        gained: list[list[int]] = [[] for _ in rows]
        for b, row in enumerate(rows):
            for token in new[b] if not done[b] else ():
                row.append(token)
                gained[b].append(token)
                if self._should_stop(prompts[b], row, stop_ids, stop_strings) or len(row) == max_new_tokens:
                    done[b] = True
                    break
        return gained

    def _should_stop(self, prompt: list[int], new: list[int], stop_ids: set[int], stop_strings: list[str]) -> bool:
        if new[-1] in self.eos_ids or new[-1] in stop_ids:
            return True
        if stop_strings and self.tokenizer is not None:
            return _ends_on_stop_string(self.tokenizer, prompt, new, stop_strings)
        return False

    def _results(self, rows: list[list[int]], lengths: list[int], prefill_ms: float, decode_s: float,
                 steps: int) -> list[GenerationResult]:
        useful = sum(max(len(r) - 1, 0) for r in rows)
        traffic = decode_traffic_bytes(self.model, lengths, steps)
        shared = {"batch": len(rows), "prefill_ms": prefill_ms, "decode_ms": decode_s * 1e3, "decode_steps": steps,
                  "tokens_per_s": useful / decode_s if steps and decode_s > 0 else float("nan"),
                  "decode_gb_per_s": traffic / decode_s / 1e9 if steps and decode_s > 0 else float("nan")}
        results = []
        for row, length in zip(rows, lengths, strict=True):
            text = self.tokenizer.decode(row, skip_special_tokens=True) if self.tokenizer is not None else None
            results.append(GenerationResult(row, text, {"prompt_tokens": length, "new_tokens": len(row), **shared}))
        return results


def _right_padded(seqs: list[list[int]], device: torch.device) -> torch.Tensor:
    """Token id lists -> [B, longest] int64 on `device`, each row padded on the right with 0."""
    padded = torch.zeros(len(seqs), max(len(seq) for seq in seqs), dtype=torch.long)
    for b, seq in enumerate(seqs):
        padded[b, :len(seq)] = torch.tensor(seq)
    return padded.to(device)


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a number of draft tokens >= 0, got {value!r}")


def _chosen_logprob(logits: torch.Tensor, token: Any) -> float:
    """logits [V] -> the log-probability of `token` under them (fp32 log-softmax, as Sampler records it)."""
    return float(torch.log_softmax(logits.float(), dim=-1)[int(token)])


def _drain(chunks: Generator[list[list[int]], None, list[GenerationResult]]) -> list[GenerationResult]:
    """Run a decode loop (see Engine._decode) to its end -> its results."""
    while True:
        try:
            next(chunks)
        except StopIteration as done:
            return done.value


def decode_traffic_bytes(model: DecoderModel, lengths: Sequence[int], steps: int) -> int:
    """Bytes moved by `steps` decode steps of sequences whose prompts had `lengths` tokens.

    Formula: per step, every weight once (model.step_bytes: all layers, final norm, LM head, the embedding rows
    looked up), plus for each sequence the K/V of every cached position it attends to (its length after the
    append) read and the new position's K/V written. At step j (1-based) sequence b attends to len_b + j
    positions in a full layer (at most the window in a sliding one: model.kv_bytes_read), so without sliding
    layers the K/V part is kv * (steps * sum(len_b) + B * steps * (steps + 1) / 2 + B * steps), with kv =
    model.kv_bytes_per_position(). Activations are left out (kilobytes per step)."""
    B, kv = len(lengths), model.kv_bytes_per_position()
    read = sum(model.kv_bytes_read(n, steps) for n in lengths)
    return steps * model.step_bytes(B) + read + kv * B * steps


def _validate(max_new_tokens: int, params: SamplingParams, prompt_len: int, max_seq_len: int,
              prompt_name: str = "prompt_or_ids") -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    _validate_sampling(params)
    if prompt_len > max_seq_len:
        raise ValueError(f"{prompt_name}: {prompt_len} tokens do not fit the context of {max_seq_len} positions")
    # The last new token is never fed back, so prompt + max_new_tokens - 1 cache positions are written: a prompt
    # filling the context still gets its one next token, as with HF.
    if prompt_len == max_seq_len and max_new_tokens > 1:
        raise ValueError(f"{prompt_name}: {prompt_len} tokens fill the context of {max_seq_len} positions; only "
                         f"max_new_tokens=1 fits, got {max_new_tokens}")
    if prompt_len + max_new_tokens - 1 > max_seq_len:
        raise ValueError(f"max_new_tokens: {prompt_len} prompt tokens + {max_new_tokens} new tokens exceed the "
                         f"KV cache of {max_seq_len} positions; lower it or load(max_seq_len=...)")


def _validate_sampling(p: SamplingParams) -> None:
    if not is_real_number(p.temperature) or not p.temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0, got {p.temperature!r}")
    if p.top_k is not None and (isinstance(p.top_k, bool) or not isinstance(p.top_k, int) or p.top_k <= 0):
        raise ValueError(f"top_k: expected a positive integer or None, got {p.top_k!r}")
    if p.top_p is not None and (not is_real_number(p.top_p) or not 0 < p.top_p <= 1):
        raise ValueError(f"top_p: expected a value in (0, 1], got {p.top_p!r}")
    if p.min_p is not None and (not is_real_number(p.min_p) or not 0 <= p.min_p <= 1):
        raise ValueError(f"min_p: expected a value in [0, 1] or None, got {p.min_p!r}")
    if p.repetition_penalty is not None and (not is_real_number(p.repetition_penalty)
                                             or not 0 < p.repetition_penalty < math.inf):
        raise ValueError(f"repetition_penalty: expected a finite number > 0 or None, got {p.repetition_penalty!r}")


def _is_chat(prompt: Any) -> bool:
    """A list of chat messages: a non-empty list or tuple of mappings (dicts with "role" and "content")."""
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(isinstance(m, Mapping) for m in prompt)


def _token_ids(prompt: Any) -> list[int]:
    """A prompt given as ids (a sequence of integers or an integer tensor) -> list of ints. Floats are refused,
    not truncated: HF's embedding refuses them too."""
    if isinstance(prompt, torch.Tensor):
        if prompt.is_floating_point() or prompt.is_complex():
            raise ValueError(f"prompt_or_ids: token ids must be integers, got a {prompt.dtype} tensor")
        return prompt.flatten().tolist()
    try:
        items = list(prompt)
    except TypeError:
        raise ValueError(f"prompt_or_ids: expected a string, token ids or a tensor of token ids, got {prompt!r}"
                         ) from None
    ids = []
    for item in items:
        try:
            ids.append(operator.index(item))  # ints, NumPy integers, 0-d integer tensors
        except TypeError:
            raise ValueError(f"prompt_or_ids: expected token ids (integers), got the element {item!r}") from None
    return ids


def _ends_on_stop_string(tokenizer: Any, prompt: list[int], new: list[int], stop_strings: list[str]) -> bool:
    """Whether a stop string ends within the newest token, as HF's StopStringCriteria decides: the text before
    it may come from the prompt (a prompt ending in "\n" and a new "\n" make "\n\n"), and special tokens count
    as their text ("<|im_start|>" stops on that token). Only a tail is decoded: a stop string spans at most one
    token per UTF-8 byte, plus one token that may start mid-character and one of context (a decode may drop a
    leading space)."""
    window = max(16, max(len(s.encode()) for s in stop_strings) + 2)
    tail = (prompt[-window:] + new[-window:])[-window:]
    text = tokenizer.decode(tail, skip_special_tokens=False)
    # Where the newest token's text starts: where the decode without it stops agreeing (a character completed by
    # the newest token counts as its text).
    before = tokenizer.decode(tail[:-1], skip_special_tokens=False)
    start = _common_prefix_length(before, text)
    return any(text.find(s, max(0, start - len(s) + 1)) >= 0 for s in stop_strings)


def _common_prefix_length(a: str, b: str) -> int:
    shorter = min(len(a), len(b))
    return next((i for i in range(shorter) if a[i] != b[i]), shorter)


def _split_stop(stop: Sequence[str | int] | str | int | None) -> tuple[set[int], list[str]]:
    if stop is None:
        return set(), []
    many = isinstance(stop, (list, tuple, set, frozenset)) or (isinstance(stop, torch.Tensor) and stop.dim() > 0)
    ids, strings = set(), []
    for item in list(stop) if many else [stop]:
        if isinstance(item, str) and item:
            strings.append(item)
            continue
        try:
            ids.add(operator.index(item))  # ints, NumPy integers, 0-d integer tensors
        except TypeError:
            raise ValueError(f"stop: expected token ids or non-empty strings, got {item!r}") from None
    return ids, strings
