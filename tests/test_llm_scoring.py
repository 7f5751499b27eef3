"""genai_fast.llm log-probabilities: generate(logprobs=True) and Engine.loglikelihood against HF's logits."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import Loglikelihood, load  # noqa: E402
from tests.llm_cases import tiny_variant  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   initializer_range=0.2)
    return transformers.LlamaForCausalLM(cfg).eval()


def _hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1]: HF's log-probability of each token after the first, given the ones before it."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 1.3, "top_k": 20, "seed": 3}, {"repetition_penalty": 1.5}],
                         ids=["greedy", "sampled", "penalised"])
def test_generate_logprobs_are_the_models_for_the_chosen_tokens(kwargs):
    """Each new token's logprob is the model's (raw logits: the penalty, temperature and filters choose the token,
    they do not change its score), for every sequence of a ragged batch."""
    hf = _llama()
    engine = load(hf, max_seq_len=64)
    engine.eos_ids = set()
    prompts = [[1, 5, 9, 33, 70], [7, 8]]
    for prompt, result in zip(prompts, engine.generate(prompts, 12, logprobs=True, **kwargs), strict=True):
        assert len(result.logprobs) == len(result.ids) == 12
        want = _hf_logprobs(hf, prompt + result.ids)[len(prompt) - 1:]
        torch.testing.assert_close(torch.tensor(result.logprobs), want, rtol=1e-5, atol=1e-5)
    assert engine.generate(prompts[0], 4).logprobs is None  # only when asked


def test_logprobs_stop_with_the_sequence_and_come_with_a_stream():
    engine = load(_llama(), max_seq_len=64)
    full = engine.generate([1, 5, 9], 10, logprobs=True)
    stopped = engine.generate([1, 5, 9], 10, logprobs=True, stop=[full.ids[3]])
    assert stopped.ids == full.ids[:4] and stopped.logprobs == pytest.approx(full.logprobs[:4], abs=1e-6)
    with pytest.raises(TypeError, match=r"^logprobs: expected True or False"):
        engine.generate([1, 5, 9], 4, logprobs="yes")


def test_loglikelihood_of_token_ids_matches_hf():
    hf = _llama()
    engine = load(hf, max_seq_len=64)
    context, continuation = [1, 5, 9, 33], [70, 2, 8]
    got = engine.loglikelihood(context, continuation)
    want = _hf_logprobs(hf, context + continuation)[len(context) - 1:]
    assert isinstance(got, Loglikelihood) and got.tokens == continuation
    torch.testing.assert_close(torch.tensor(got.token_logprobs), want, rtol=1e-5, atol=1e-5)
    assert got.logprob == pytest.approx(float(want.sum()), abs=1e-4)
    assert got.greedy is False


def test_loglikelihood_greedy_flag_and_batches():
    """The greedy continuation is greedy; a batch of pairs with different lengths (right-padded together, more
    than one prefill batch) scores each pair as alone."""
    from genai_fast.llm import engine as engine_module

    hf = _llama()
    engine = load(hf, max_seq_len=64)
    engine.eos_ids = set()
    greedy_tokens = engine.generate([3, 4, 5], 5).ids
    assert engine.loglikelihood([3, 4, 5], greedy_tokens).greedy is True
    pairs = [([3, 4, 5], greedy_tokens), ([9], [1, 2]), ([1, 2, 3, 4, 5, 6, 7], [8]), ([60, 61], [62, 63, 64])]
    alone = [engine.loglikelihood(c, t) for c, t in pairs]
    engine_module.SCORE_BATCH, old = 3, engine_module.SCORE_BATCH  # two prefills: rows 0-2, then row 3
    try:
        batch = engine.loglikelihood(pairs)
    finally:
        engine_module.SCORE_BATCH = old
    assert [r.greedy for r in batch] == [r.greedy for r in alone] == [True, False, False, False]
    for got, want in zip(batch, alone, strict=True):
        assert got.tokens == want.tokens
        assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)


def test_loglikelihood_of_strings_splits_as_the_harness(tmp_path):
    """Strings: the context's trailing space moves to the continuation and the continuation's tokens are what the
    whole text's encoding has after the context's (so a space merged into a word token is scored with it)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(["the capital of england is london"] * 20,
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"], show_progress=False))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    hf = _llama()
    engine = load(hf, tokenizer=tokenizer, max_seq_len=64)
    got = engine.loglikelihood("the capital of england is ", "london")
    whole = tokenizer("the capital of england is london")["input_ids"]
    context = tokenizer("the capital of england is")["input_ids"]
    assert got.tokens == whole[len(context):] and got.tokens
    want = _hf_logprobs(hf, whole)[len(context) - 1:]
    assert got.logprob == pytest.approx(float(want.sum()), abs=1e-4)


def test_loglikelihood_on_sliding_and_softcapped_layers():
    """Gemma 2 (sliding rings, soft-capped attention): all-position logits past the window equal HF's."""
    hf = tiny_variant("gemma2", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    engine = load(hf, max_seq_len=64)
    ids = torch.randint(0, 128, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    got = engine.loglikelihood(ids[:4], ids[4:])
    want = _hf_logprobs(hf, ids)[3:]
    torch.testing.assert_close(torch.tensor(got.token_logprobs), want, rtol=1e-4, atol=1e-4)
    assert math.isclose(got.logprob, float(want.sum()), abs_tol=1e-3)


@pytest.mark.parametrize("args, message", [
    (([], [1]), r"^context: expected at least one token"),
    (([1], []), r"^continuation: expected at least one token"),
    (([1] * 60, [2] * 5), r"^context: context \+ continuation is 65 tokens, more than max_seq_len 64"),
    (([1], [500]), r"^context: token id 500 is outside the vocabulary 0\.\.127"),
    (([[1], [2], [3]],), r"^context\[0\]: expected a \(context, continuation\) pair"),
    (([],), r"^context: expected \(context, continuation\) pairs, got an empty list"),
], ids=["empty-context", "empty-continuation", "too-long", "bad-id", "not-pairs", "no-pairs"])
def test_loglikelihood_bad_input_is_named(args, message):
    engine = load(_llama(), max_seq_len=64)
    with pytest.raises(ValueError, match=message):
        engine.loglikelihood(*args)
