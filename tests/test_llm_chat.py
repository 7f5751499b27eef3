"""`genai-fast chat` (genai_fast/llm/chat.py): turns from stdin, answers streamed, the history's cached tokens
reused, /clear, overflow of the cache, bad arguments."""

from __future__ import annotations

import io
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.cli import main  # noqa: E402
from genai_fast.llm import load  # noqa: E402
from tests.llm_cases import byte_level_bpe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<eos>{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


@pytest.fixture
def chat_model(tmp_path):
    """A tiny random Llama and a byte-level BPE tokenizer with a chat template, saved as a checkpoint folder."""
    tokenizer = byte_level_bpe()
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, initializer_range=0.2)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def _chat(monkeypatch, capsys, folder, lines: str, *extra: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code = main(["chat", "--model", str(folder), "--max-new-tokens", "12", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_turns_stream_answers_and_reuse_the_history(chat_model, monkeypatch, capsys):
    code, out, err = _chat(monkeypatch, capsys, chat_model, "héllo\nwörld?\n/clear\nhéllo\n/exit\nignored\n",
                           "--system", "be brief")
    assert code == 0
    answers = out.split("\n")[:3]
    engine = load(chat_model)
    system = {"role": "system", "content": "be brief"}
    first = engine.generate([system, {"role": "user", "content": "héllo"}], 12).text
    second = engine.generate([system, {"role": "user", "content": "héllo"}, {"role": "assistant", "content": first},
                              {"role": "user", "content": "wörld?"}], 12).text
    assert answers == [first, second, first]  # /clear: the third turn starts over; /exit stops before "ignored"
    reused = [int(n) for n in re.findall(r"\((\d+) reused\)", err)]
    assert len(reused) == 3 and reused[1] > 0  # the second turn prefilled only what it added
    assert "new conversation" in err


def test_a_conversation_that_outgrows_the_cache_drops_its_oldest_exchange(chat_model, monkeypatch, capsys):
    code, out, err = _chat(monkeypatch, capsys, chat_model, "héllo wörld " * 3 + "\n" + "café ✓\n" * 6,
                           "--max-seq-len", "96")
    assert code == 0 and len(out.strip("\n").split("\n")) == 7
    assert "dropped its oldest exchange" in err


@pytest.mark.parametrize("argv, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--prompt-lookup", "-3"], "--prompt-lookup"),
    (["--max-seq-len", "0"], "--max-seq-len"),
])
def test_bad_arguments_are_named(chat_model, argv, message, monkeypatch, capsys):
    code, _, err = _chat(monkeypatch, capsys, chat_model, "hi\n", *argv)
    assert code == 2 and message in err


def test_a_model_without_a_chat_template_is_refused(tmp_path, monkeypatch, capsys):
    tokenizer = byte_level_bpe()
    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    code, _, err = _chat(monkeypatch, capsys, tmp_path, "hi\n")
    assert code == 2 and "chat needs a tokenizer with a chat template" in err
