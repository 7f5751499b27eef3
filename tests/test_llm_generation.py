"""genai_fast.llm: GPT-2 against HF generate, batches equal one-by-one generation, streaming, stats."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import decode_traffic_bytes, load  # noqa: E402
from genai_fast.llm.decode import IncrementalText  # noqa: E402
from tests.llm_cases import byte_level_bpe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _gpt2(**extra):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128, **extra)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(vocab_size: int = 128):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(cfg).eval()


def _hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    """Exactly n tokens, EOS an ordinary token (as the engine with eos_ids cleared): the argmax of HF's logits
    for each prefix. (generate(min_new_tokens=n) would forbid EOS until the n-th token.)"""
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, hf(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids):].tolist()


# ---------------------------------------------------------------- GPT-2


@pytest.mark.parametrize("extra", [{}, {"scale_attn_by_inverse_layer_idx": True}, {"activation_function": "relu"}],
                         ids=["gpt2", "gpt2-scale-by-layer", "gpt2-relu"])
def test_gpt2_greedy_matches_hf(extra):
    hf = _gpt2(**extra)
    engine = load(hf, max_seq_len=128)
    engine.eos_ids = set()  # random weights: run the full 64 tokens
    for prompt in ([1, 5, 9, 33, 70], [7]):
        assert engine.generate(prompt, 64).ids == _hf_greedy(hf, prompt, 64)


def test_gpt2_prefill_logits_match_hf():
    hf = _gpt2()
    engine = load(hf)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    engine.model.allocate_cache(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(engine.model(ids, 0, last_only=False), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_gpt2_weights_are_converted_once():
    hf = _gpt2()
    layer = load(hf).model.layers[0]
    # Conv1D stores [in, out]; the compact layer holds [out, in] for F.linear, and the LM head is the embedding.
    torch.testing.assert_close(layer.wqkv, hf.transformer.h[0].attn.c_attn.weight.t(), rtol=0, atol=0)
    model = load(hf).model
    assert model.lm_head is model.embed


def test_gpt2_checkpoint_directory_roundtrip(tmp_path):
    hf = _gpt2()
    hf.save_pretrained(tmp_path)
    engine = load(tmp_path)
    engine.eos_ids = set()
    assert engine.generate([1, 5, 9], 12).ids == _hf_greedy(hf, [1, 5, 9], 12)


def test_gpt2_context_is_its_position_table():
    with pytest.raises(ValueError, match=r"max_seq_len: expected 1\.\.128"):
        load(_gpt2(), max_seq_len=129)


# ---------------------------------------------------------------- batches

PROMPTS = [[1, 5, 9, 33, 70, 2, 8], [7], [3, 4, 5], [90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100]]


@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_batch_equals_one_by_one(make):
    engine = load(make(), max_seq_len=64)
    engine.eos_ids = set()
    singles = [engine.generate(p, 24).ids for p in PROMPTS]
    batch = engine.generate(PROMPTS, 24)
    assert [r.ids for r in batch] == singles
    assert [r.stats["prompt_tokens"] for r in batch] == [len(p) for p in PROMPTS]


def test_batch_rows_stop_on_their_own():
    hf = _llama()
    engine = load(hf, max_seq_len=64)
    free = engine.generate(PROMPTS[0], 12).ids
    hf.generation_config.eos_token_id = free[4]  # the first prompt stops on its 5th token, others run on
    engine = load(hf, max_seq_len=64)
    singles = [engine.generate(p, 12).ids for p in PROMPTS]
    batch = [r.ids for r in engine.generate(PROMPTS, 12)]
    assert batch == singles and batch[0] == free[:free.index(free[4]) + 1]
    assert any(len(ids) == 12 for ids in batch)


def test_batch_from_a_tensor_and_a_batch_of_one():
    engine = load(_llama(), max_seq_len=32)
    rows = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert [r.ids for r in engine.generate(rows, 5)] == [engine.generate(r.tolist(), 5).ids for r in rows]
    one = engine.generate([[1, 2, 3]], 5)
    assert isinstance(one, list) and one[0].ids == engine.generate([1, 2, 3], 5).ids


def test_batch_sampling_is_reproducible():
    engine = load(_llama(), max_seq_len=64)
    kwargs = dict(temperature=1.2, top_k=40, top_p=0.95)
    a = [r.ids for r in engine.generate(PROMPTS, 16, seed=3, **kwargs)]
    assert a == [r.ids for r in engine.generate(PROMPTS, 16, seed=3, **kwargs)]
    assert a != [r.ids for r in engine.generate(PROMPTS, 16, seed=4, **kwargs)]


def test_batch_never_writes_past_the_cache():
    engine = load(_llama(), max_seq_len=16)
    engine.eos_ids = set()
    # The longest prompt (11 tokens) + 6 new tokens writes positions 0..15: exactly the cache.
    assert [len(r.ids) for r in engine.generate(PROMPTS, 6)] == [6] * len(PROMPTS)
    with pytest.raises(ValueError, match="max_new_tokens: 11 prompt tokens"):
        engine.generate(PROMPTS, 7)


def test_batch_then_single_reuses_the_cache():
    engine = load(_llama(), max_seq_len=32)
    engine.generate(PROMPTS, 4)
    cache = engine.model.layers[0].k_cache
    single = engine.generate([1, 2, 3], 8).ids
    assert engine.model.layers[0].k_cache is cache  # batch 1 runs in the first row of the batch-4 cache
    assert single == load(_llama(), max_seq_len=32).generate([1, 2, 3], 8).ids


# ---------------------------------------------------------------- streaming


class _ByteTokenizer:
    """Token id = one UTF-8 byte: every non-ASCII character spans several tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_text_waits_for_whole_characters():
    text = "naïve café ✓ 🙂 done"
    stream = IncrementalText(_ByteTokenizer())
    pieces = [stream.push([b]) for b in text.encode()]
    pieces.append(stream.finish())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "🙂" in pieces  # printed whole, once its 4th byte arrived


def test_incremental_text_flushes_an_unfinished_character():
    stream = IncrementalText(_ByteTokenizer())
    assert stream.push(list(b"ok ")) == "ok "
    assert stream.push([0xE2, 0x9C]) == ""  # two of the three bytes of a check mark
    assert stream.finish() == "\ufffd"  # what decode() of all the ids gives


@pytest.fixture(scope="module")
def byte_bpe():
    return byte_level_bpe()


def test_stream_pieces_join_to_the_text(byte_bpe):
    # Random weights over a byte-level vocabulary: the tokens split characters and form invalid UTF-8.
    engine = load(_llama(vocab_size=len(byte_bpe)), tokenizer=byte_bpe, max_seq_len=128)
    engine.eos_ids = set()
    for prompt in ("héllo", "café ✓"):
        stream = engine.stream(prompt, 48)
        pieces = list(stream)
        full = engine.generate(prompt, 48)
        assert stream.result.ids == full.ids
        assert "".join(pieces) == stream.result.text == full.text
        assert len(pieces) > 1


def test_stream_checks_arguments_when_called(byte_bpe):
    engine = load(_llama(vocab_size=len(byte_bpe)), tokenizer=byte_bpe, max_seq_len=32)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.stream("café", 0)  # not only once iterated


def test_stream_needs_a_tokenizer():
    with pytest.raises(ValueError, match="stream: needs a tokenizer"):
        load(_llama()).stream([1, 2], 4)


def test_cli_stream(byte_bpe, tmp_path, capsys):
    from genai_fast.cli import main

    hf = _llama(vocab_size=len(byte_bpe))
    hf.save_pretrained(tmp_path)
    byte_bpe.save_pretrained(tmp_path)
    engine = load(tmp_path)
    expected = engine.generate("café", 20, chat=False).text
    assert main(["generate", "café", "--model", str(tmp_path), "--max-new-tokens", "20", "--stream", "--no-chat"]) == 0
    out = capsys.readouterr()
    assert out.out == expected + "\n"
    assert "tokens/s" in out.err


def test_cli_prompt_lookup_prints_the_greedy_text_and_its_passes(byte_bpe, tmp_path, capsys):
    from genai_fast.cli import main

    hf = _llama(vocab_size=len(byte_bpe))
    hf.save_pretrained(tmp_path)
    byte_bpe.save_pretrained(tmp_path)
    expected = load(tmp_path).generate("café café café", 20, chat=False).text
    argv = ["generate", "café café café", "--model", str(tmp_path), "--max-new-tokens", "20", "--no-chat"]
    assert main([*argv, "--prompt-lookup", "4"]) == 0
    out = capsys.readouterr()
    assert out.out == expected + "\n"
    assert "passes" in out.err and "draft tokens kept" in out.err
    assert main([*argv, "--draft-model", str(tmp_path), "--num-draft-tokens", "3", "--stream"]) == 0
    out = capsys.readouterr()
    assert out.out == expected + "\n" and "draft tokens kept" in out.err
    assert main([*argv, "--draft-model", str(tmp_path), "--prompt-lookup", "2"]) == 2
    assert "--draft-model: does not go with --prompt-lookup" in capsys.readouterr().err
    penalised = load(tmp_path).generate("café café café", 20, chat=False, repetition_penalty=1.5).text
    assert main([*argv, "--prompt-lookup", "4", "--repetition-penalty", "1.5"]) == 0
    assert capsys.readouterr().out == penalised + "\n"


def test_cli_max_seq_len_sizes_the_cache(byte_bpe, tmp_path, capsys):
    from genai_fast.cli import main

    _llama(vocab_size=len(byte_bpe)).save_pretrained(tmp_path)
    byte_bpe.save_pretrained(tmp_path)
    argv = ["generate", "café", "--model", str(tmp_path), "--max-new-tokens", "20", "--no-chat"]
    assert main([*argv, "--max-seq-len", "0"]) == 2
    assert "--max-seq-len: expected a positive integer, got 0" in capsys.readouterr().err
    assert main([*argv, "--max-seq-len", "12"]) == 2  # the prompt's tokens + 20 new ones need more than 12
    assert "exceed the KV cache of 12 positions" in capsys.readouterr().err
    assert main([*argv, "--max-seq-len", "40"]) == 0


# ---------------------------------------------------------------- stats


def test_stats_fields():
    engine = load(_llama(), max_seq_len=64)
    engine.eos_ids = set()
    s = engine.generate([1, 2, 3], 10).stats
    assert s["new_tokens"] == 10 and s["prompt_tokens"] == 3 and s["decode_steps"] == 9 and s["batch"] == 1
    assert s["prefill_ms"] > 0 and s["decode_ms"] > 0 and s["tokens_per_s"] > 0 and s["decode_gb_per_s"] > 0
    assert s["tokens_per_s"] == pytest.approx(9 / (s["decode_ms"] / 1e3))
    b = engine.generate(PROMPTS, 5)
    assert b[0].stats["tokens_per_s"] == pytest.approx(len(PROMPTS) * 4 / (b[0].stats["decode_ms"] / 1e3))


def test_decode_traffic_formula():
    hf = _llama()  # untied: the embedding is read one row per sequence, the LM head whole
    model = load(hf).model
    itemsize, hidden = 4, 64
    weights = sum(p.numel() for p in hf.parameters()) * itemsize
    embed = hf.model.embed_tokens.weight.numel() * itemsize
    assert model.step_bytes(2) == weights - embed + 2 * hidden * itemsize
    kv = 2 * 2 * 2 * 16 * itemsize  # K and V, 2 layers, 2 KV heads, head dim 16
    assert model.kv_bytes_per_position() == kv
    lengths, steps = [3, 7], 4
    # Brute force: at step j each sequence reads its len + j positions and writes one.
    expected = sum(model.step_bytes(2) + kv * sum(n + j + 1 for n in lengths) for j in range(1, steps + 1))
    assert decode_traffic_bytes(model, lengths, steps) == expected


def test_decode_traffic_counts_a_tied_head_once():
    hf = _gpt2()
    model = load(hf).model
    weights = sum(p.numel() for p in hf.parameters()) * 4  # HF lists the tied wte once too
    wpe = hf.transformer.wpe.weight.numel() * 4
    assert model.step_bytes(1) == weights - wpe + 2 * 64 * 4


@pytest.mark.parametrize("shared", [True, False], ids=["openmp-kernels", "own-pool-kernels"])
def test_two_thread_decode_on_the_cpp_linears_matches_hf_and_restores_threads(shared, monkeypatch):
    """With several threads and C++ linears on a pool of their own (an extension built without OpenMP), the
    decode step drops torch's threads to one and must give them back, even when a step raises; on torch's own
    OpenMP threads it leaves the process-wide setting alone. Tokens equal HF's either way."""
    from genai_fast.backends.availability import backend_unavailable_reasons
    from genai_fast.llm import model as llm_model

    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    monkeypatch.setattr(llm_model, "_kernels_share_torch_threads", lambda: shared)
    hf = _llama()
    engine = load(hf, max_seq_len=64)
    engine.eos_ids = set()
    torch.set_num_threads(2)
    try:
        assert getattr(engine.model.decode_linear(1), "own_threads", False)
        ids = [5, 17, 42, 9]
        assert engine.generate(ids, 12).ids == _hf_greedy(hf, ids, 12)
        assert torch.get_num_threads() == 2
        inside = []

        def fail(*args):
            inside.append(torch.get_num_threads())
            raise RuntimeError("step failed")

        engine.model.layers[0].step = fail
        with pytest.raises(RuntimeError, match="step failed"):
            engine.model.decode(torch.tensor([[1]]), torch.tensor([3], dtype=torch.int32), [3])
        assert inside == [2 if shared else 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
