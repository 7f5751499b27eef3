"""Loading and generation: `load(source)` -> Engine; `Engine.generate(...)` -> GenerationResult."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genai_fast.llm.model import LlamaModel, _check_architecture, from_hf

DEFAULT_MAX_SEQ_LEN = 2048


@dataclass
class GenerationResult:
    """ids: the new token ids (EOS included when generation stopped on it); text: their decoding (None without
    a tokenizer); stats: prefill_ms, decode_ms, new_tokens, tokens_per_s (decode steps only), prompt_tokens."""

    ids: list[int]
    text: str | None
    stats: dict[str, float] = field(default_factory=dict)


def _find_gguf(directory: Path) -> str | None:
    found = sorted(p.name for p in directory.iterdir() if p.suffix == ".gguf")
    return found[0] if found else None


def _load_hf(source: str | os.PathLike, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """(hf_model, tokenizer or None) from a .gguf file or a checkpoint directory."""
    import transformers

    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source: {path} does not exist")
    kwargs: dict[str, Any] = {}
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"source: {path} is a file but not a .gguf; pass a .gguf file or a checkpoint folder")
        path, kwargs["gguf_file"] = path.parent, path.name
    config = transformers.AutoConfig.from_pretrained(path, **kwargs)
    _check_architecture(config)  # before reading (possibly gigabytes of) weights
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise ValueError(f"source: could not load the model from {source}: {exc}") from exc
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError):
        tokenizer = None
    return hf, tokenizer


def load(source: Any, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
         tokenizer: Any = None, max_seq_len: int | None = None) -> Engine:
    """Load a Llama-family model (llama, mistral, qwen2) into the compact engine.

    source: a `.gguf` file (through transformers' `gguf_file=`), a local HF checkpoint directory, or an
    already-loaded HF `*ForCausalLM`. dtype: defaults to the loaded weights' dtype (fp32 for files).
    tokenizer: overrides the one found next to the weights (needed for string prompts with an HF model).
    max_seq_len: the KV cache length S_max; defaults to min(max_position_embeddings, 2048).
    """
    if isinstance(source, torch.nn.Module):
        hf = source
        if tokenizer is None and getattr(hf, "name_or_path", None) and Path(hf.name_or_path).is_dir():
            tokenizer = _try_tokenizer(hf.name_or_path)
    else:
        hf, found = _load_hf(source, dtype)
        tokenizer = tokenizer or found
    model = from_hf(hf, dtype=dtype, device=device).eval()
    limit = model.cfg.max_position_embeddings
    max_seq_len = max_seq_len or min(limit, DEFAULT_MAX_SEQ_LEN)
    if not 0 < max_seq_len <= limit:
        raise ValueError(f"max_seq_len: expected 1..{limit} (the model's context), got {max_seq_len}")
    return Engine(model, tokenizer, max_seq_len, _eos_ids(hf, tokenizer))


def _try_tokenizer(path: str) -> Any:
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
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


class Engine:
    """A loaded model, its tokenizer and a static KV cache of `max_seq_len` positions (batch 1)."""

    def __init__(self, model: LlamaModel, tokenizer: Any, max_seq_len: int, eos_ids: set[int]) -> None:
        self.model, self.tokenizer, self.max_seq_len, self.eos_ids = model, tokenizer, max_seq_len, eos_ids
        self.device = model.embed.device

    def encode(self, prompt: str | Sequence[int] | torch.Tensor, chat: bool | None = None) -> list[int]:
        """Prompt -> token ids. Rule: a string is wrapped in the tokenizer's chat template (one user turn plus
        the assistant generation prompt) when the tokenizer has one and `chat` is not False; `chat=False`
        tokenizes the string as is. Token ids are used as given."""
        if isinstance(prompt, torch.Tensor) and prompt.dim() > 1 and prompt.shape[0] != 1:
            raise ValueError(f"prompt_or_ids: one sequence only (batch 1), got a tensor of shape {tuple(prompt.shape)}")
        if not isinstance(prompt, str):
            ids = prompt.flatten().tolist() if isinstance(prompt, torch.Tensor) else [int(i) for i in prompt]
            if not ids:
                raise ValueError("prompt_or_ids: empty")
            return ids
        if self.tokenizer is None:
            raise ValueError("prompt_or_ids: a string prompt needs a tokenizer; pass token ids or load(tokenizer=)")
        if chat is not False and getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True, return_dict=False)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        else:
            ids = self.tokenizer(prompt)["input_ids"]
        if not ids:
            raise ValueError("prompt_or_ids: the prompt encodes to no tokens")
        return list(ids)

    def generate(self, prompt_or_ids: str | Sequence[int] | torch.Tensor, max_new_tokens: int,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, stop: Sequence[str | int] | str | int | None = None,
                 chat: bool | None = None) -> GenerationResult:
        """Generate up to max_new_tokens tokens after the prompt (batch 1).

        temperature 0 is greedy (argmax, as HF's do_sample=False); otherwise sample from softmax(logits / T)
        restricted by top_k and top_p (nucleus), with a torch.Generator seeded by `seed` (reproducible).
        Generation stops after an EOS token (kept in `.ids`) or after a `stop` token id / string (a stop
        string is checked against the decoded text; the token completing it is kept).
        """
        ids = self.encode(prompt_or_ids, chat)
        _validate(max_new_tokens, temperature, top_k, top_p, len(ids), self.max_seq_len)
        stop_ids, stop_strings = _split_stop(stop)
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed if seed is not None else torch.seed())
        self.model.allocate_cache(1, self.max_seq_len)
        t0 = time.perf_counter()
        logits = self.model(torch.tensor([ids], device=self.device), 0)
        token = _pick(logits, temperature, top_k, top_p, gen)
        prefill_ms = (time.perf_counter() - t0) * 1e3
        new: list[int] = []
        t1 = time.perf_counter()
        while True:
            new.append(token)
            if self._should_stop(new, stop_ids, stop_strings) or len(new) == max_new_tokens:
                break
            logits = self.model(torch.tensor([[token]], device=self.device), len(ids) + len(new) - 1)
            token = _pick(logits, temperature, top_k, top_p, gen)
        decode_s = time.perf_counter() - t1
        stats = {"prompt_tokens": len(ids), "new_tokens": len(new), "prefill_ms": prefill_ms,
                 "decode_ms": decode_s * 1e3,
                 "tokens_per_s": (len(new) - 1) / decode_s if len(new) > 1 and decode_s > 0 else float("nan")}
        text = self.tokenizer.decode(new, skip_special_tokens=True) if self.tokenizer is not None else None
        return GenerationResult(new, text, stats)

    def _should_stop(self, new: list[int], stop_ids: set[int], stop_strings: list[str]) -> bool:
        if new[-1] in self.eos_ids or new[-1] in stop_ids:
            return True
        if stop_strings and self.tokenizer is not None:
            # Decode only a short tail: a stop string can span a few tokens but not many.
            tail = self.tokenizer.decode(new[-16:], skip_special_tokens=True)
            return any(s in tail for s in stop_strings)
        return False


def _validate(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
              prompt_len: int, max_seq_len: int) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k: expected a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a value in (0, 1], got {top_p!r}")
    if prompt_len >= max_seq_len:
        raise ValueError(f"prompt_or_ids: {prompt_len} tokens do not fit the context of {max_seq_len} positions "
                         "(at least one more is needed to generate)")
    # The last new token is never fed back, so prompt + max_new_tokens - 1 cache positions are written.
    if prompt_len + max_new_tokens - 1 > max_seq_len:
        raise ValueError(f"max_new_tokens: {prompt_len} prompt tokens + {max_new_tokens} new tokens exceed the "
                         f"KV cache of {max_seq_len} positions; lower it or load(max_seq_len=...)")


def _split_stop(stop: Sequence[str | int] | str | int | None) -> tuple[set[int], list[str]]:
    if stop is None:
        return set(), []
    items = [stop] if isinstance(stop, (str, int)) else list(stop)
    bad = [s for s in items if not isinstance(s, (str, int)) or s == ""]
    if bad:
        raise ValueError(f"stop: expected token ids or non-empty strings, got {bad[0]!r}")
    return {s for s in items if isinstance(s, int)}, [s for s in items if isinstance(s, str)]


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
          gen: torch.Generator | None) -> int:
    """logits: [1, V] -> the next token id."""
    if temperature == 0:
        return int(logits[0].argmax())
    scores = logits[0].float() / temperature
    if top_k is not None and top_k < scores.numel():
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_scores, order = scores.sort(descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (the top token always stays).
        drop = (cum - sorted_scores.softmax(-1)) >= top_p
        scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=gen))
