"""genai_fast.llm and the transformers patch against HF transformers: argument forms, stops, context
limits and attention kwargs that used to go wrong. Tiny random-weight models built in memory; HF's generate
and sdpa attention are the reference."""

from __future__ import annotations

import string

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import load  # noqa: E402
from tests.llm_cases import hf_greedy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _llama(vocab_size: int = 128, **extra):
    torch.manual_seed(0)
    sizes = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**sizes, **extra})).eval()


def _gpt2(**extra):
    torch.manual_seed(0)
    sizes = dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=96, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**sizes, **extra})).eval()


@pytest.fixture(scope="module")
def ascii_bpe():
    """A BPE tokenizer over ASCII letters trained here (no download): every token decodes to whole characters,
    so stop strings compare cleanly with HF's."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=120, initial_alphabet=list(string.ascii_letters + string.digits + " .,!?"),
                                  special_tokens=["<eos>", "<unk>"], show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog, hello world! abc def"] * 8, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


def test_swish_is_silu_as_in_transformers():
    """transformers maps hidden_act "swish" to SiLU; the engine takes it and gives HF's greedy tokens."""
    hf = _llama(hidden_act="swish")
    engine = load(hf)
    engine.eos_ids = set()
    hf.generation_config.eos_token_id = None
    assert engine.generate([5, 9, 2], 12).ids == hf_greedy(hf, [5, 9, 2], 12)


# ---------------------------------------------------------------- generate


def test_a_stop_string_longer_than_sixteen_tokens_stops_as_hf(ascii_bpe):
    hf = _llama(vocab_size=len(ascii_bpe), max_position_embeddings=256)
    hf.generation_config.eos_token_id = hf.config.eos_token_id = None
    engine = load(hf, tokenizer=ascii_bpe)
    engine.eos_ids = set()
    ids = engine.encode("hello", chat=False)
    free = engine.generate(ids, 60)
    stop = ascii_bpe.decode(free.ids[4:28])  # 24 tokens: past the 16-token tail the check used to decode
    assert len(ascii_bpe(stop)["input_ids"]) > 16
    want = hf_greedy(hf, ids, 60, stop_strings=[stop], tokenizer=ascii_bpe)
    assert len(want) < 60  # HF does stop on it
    got = engine.generate(ids, 60, stop=stop)
    assert got.ids == want and got.text.endswith(stop)
    stream = engine.stream(ids, 60, stop=stop)
    assert "".join(stream) == got.text and stream.result.ids == want


def test_a_prompt_that_fills_the_context_still_gets_one_token():
    # HF scores the token after a full-context prompt; nothing is cached past the prompt for it.
    hf = _gpt2(n_positions=16)
    prompt = list(range(1, 17))
    assert load(hf).generate(prompt, 1).ids == hf_greedy(hf, prompt, 1)
    with pytest.raises(ValueError, match=r"prompt_or_ids: 16 tokens fill the context of 16 positions"):
        load(hf).generate(prompt, 2)


def test_a_list_of_scalar_tensors_is_one_prompt():
    # list(tensor) gives 0-d tensors: the ids of one prompt, not a batch of one-token prompts.
    engine = load(_llama())
    ids = torch.tensor([1, 5, 9, 33])
    got = engine.generate(list(ids), 8)
    assert not isinstance(got, list)
    assert got.ids == engine.generate(ids.tolist(), 8).ids


@pytest.mark.parametrize("prompt,message", [
    ([1.7, 2.2], r"prompt_or_ids: expected token ids .* 1\.7"),
    (torch.tensor([1.0, 2.0]), r"prompt_or_ids: token ids must be integers, got a torch\.float32 tensor"),
    ([[[1, 2]]], r"prompt_or_ids\[0\]: expected token ids .* \[1, 2\]"),
    (5, r"prompt_or_ids: expected a string, token ids"),
], ids=["float-list", "float-tensor", "nested", "int"])
def test_ids_that_are_not_integers_are_refused(prompt, message):
    # HF's embedding refuses float ids; truncating them to ints would generate from another prompt.
    with pytest.raises(ValueError, match=message):
        load(_llama()).generate(prompt, 4)


def test_stream_names_a_batch(ascii_bpe):
    engine = load(_llama(vocab_size=len(ascii_bpe)), tokenizer=ascii_bpe)
    with pytest.raises(ValueError, match=r"prompt_or_ids: stream takes one prompt, got a batch of 2"):
        engine.stream(["hello", "abc"], 4)


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": None}, "temperature: expected a number >= 0"),
    ({"top_p": "0.5"}, r"top_p: expected a value in \(0, 1\]"),
], ids=["temperature-None", "top_p-str"])
def test_non_numeric_sampling_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load(_llama()).generate([1, 2], 4, **kwargs)


def test_stop_accepts_integer_like_ids():
    engine = load(_llama())
    free = engine.generate([1, 2, 3], 10).ids
    want = free[:free.index(free[3]) + 1]
    assert engine.generate([1, 2, 3], 10, stop=torch.tensor(free[3])).ids == want
    assert engine.generate([1, 2, 3], 10, stop=[torch.tensor(free[3])]).ids == want


# ---------------------------------------------------------------- load


def test_dtype_by_name_as_from_pretrained():
    hf = _llama()
    assert load(hf, dtype="bfloat16").model.dtype == torch.bfloat16
    assert load(hf, dtype="torch.float16").model.dtype == torch.float16
    assert load(hf.to(torch.bfloat16), dtype="auto").model.dtype == torch.bfloat16


def test_dtype_auto_keeps_the_checkpoint_dtype(tmp_path):
    hf = _llama().to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    engine = load(tmp_path, dtype="auto")
    assert engine.model.dtype == torch.bfloat16
    assert engine.generate([1, 5, 9], 12).ids == hf_greedy(hf, [1, 5, 9], 12)


@pytest.mark.parametrize("dtype", ["int8", "nonsense", torch.int64, 3])
def test_bad_dtype_is_named(dtype):
    with pytest.raises(ValueError, match=r"dtype: expected a floating torch\.dtype"):
        load(_llama(), dtype=dtype)


@pytest.mark.parametrize("max_seq_len", [0, 2.5, -1])
def test_bad_max_seq_len_is_named(max_seq_len):
    with pytest.raises(ValueError, match=r"max_seq_len: expected 1\.\.96"):
        load(_llama(), max_seq_len=max_seq_len)


# ---------------------------------------------------------------- CLI


def test_cli_top_k_is_checked_before_loading(capsys):
    from genai_fast.cli import main

    assert main(["generate", "hi", "--model", "/nonexistent/model.gguf", "--top-k", "0"]) == 2
    assert "--top-k: expected a positive integer, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------- integrations.transformers


def _tiny_sink_model(family: str):
    torch.manual_seed(0)
    if family == "gpt_oss":
        cfg = transformers.GptOssConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=2,
                                        num_experts_per_tok=1, max_position_embeddings=32, sliding_window=4)
        model = transformers.GptOssForCausalLM(cfg)
    else:
        cfg = transformers.GraniteSWAConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                            sliding_window=4)
        model = transformers.GraniteSWAForCausalLM(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
                module.sinks.normal_(0.0, 2.0)  # sinks that matter (Granite-SWA initialises them at zero)
    return model.eval()


@pytest.mark.parametrize("family", ["gpt_oss", "granite_swa"])
def test_attention_sinks_run_in_the_kernels_and_match_eager(family):
    """GPT-OSS and Granite-SWA pass per-head sinks as s_aux (transformers keeps them off SDPA for it): patched,
    their logits over a padded batch past the sliding window equal eager's, greedy generation gives eager's tokens,
    and the sinks get eager's gradients. Without the sinks the logits would move."""
    from genai_fast.integrations.transformers import patch

    model = _tiny_sink_model(family)
    ids = torch.randint(3, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    sinks = [m.sinks for m in model.modules() if isinstance(getattr(m, "sinks", None), torch.nn.Parameter)]

    def run():
        logits = model(input_ids=ids, attention_mask=mask).logits
        grads = torch.autograd.grad(logits[mask.bool()].square().sum(), sinks)
        with torch.no_grad():
            tokens = model.generate(ids[:1], max_new_tokens=8, do_sample=False)
        return logits.detach(), grads, tokens

    model.set_attn_implementation("eager")
    want, want_grads, want_tokens = run()
    patch(model)
    assert model.config._attn_implementation == "genai_fast"
    got, got_grads, got_tokens = run()
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], rtol=1e-4, atol=1e-4)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert torch.equal(got_tokens, want_tokens)
    with torch.no_grad():
        for parameter in sinks:
            parameter.fill_(-float("inf"))  # no sinks: another model
        assert (model(input_ids=ids, attention_mask=mask).logits[valid] - want[valid]).abs().max() > 0.01


def test_position_bias_prefill_into_a_static_cache_matches_sdpa():
    # A causal prefill with no mask into a longer (static) cache: K/V are cut to the queries, and so must be
    # the position bias, as transformers' sdpa function does.
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from genai_fast.integrations.transformers import genai_fast_attention_forward

    torch.manual_seed(0)
    q = torch.randn(1, 4, 5, 16)
    k, v = torch.randn(2, 1, 4, 9, 16).unbind(0)
    bias = torch.randn(1, 4, 5, 9)
    module = torch.nn.Module()
    want = sdpa_attention_forward(module, q, k, v, None, is_causal=True, position_bias=bias)[0]
    got = genai_fast_attention_forward(module, q, k, v, None, is_causal=True, position_bias=bias)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
