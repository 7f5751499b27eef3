"""genai_fast.llm speculative greedy decoding and prefix reuse: DecoderModel.extend against HF's logits,
prompt-lookup drafts, generate(prompt_lookup=k) giving plain greedy decoding's tokens, and load(reuse_prefix=True)
prefilling only what the cache does not hold."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import load  # noqa: E402
from genai_fast.llm.speculate import accept, find_draft, next_draft_size  # noqa: E402
from tests.llm_cases import byte_level_bpe, tiny_qwen3, tiny_variant  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=96)


def _tiny(kind: str = "llama", **extra):
    torch.manual_seed(0)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4,
                                                                    n_positions=96)).eval()
    if kind == "qwen3":
        return tiny_qwen3(24, **COMMON)
    if kind in ("gemma2", "granite", "gemma", "smollm3"):
        return tiny_variant(kind, **COMMON)
    if kind == "gpt_neox":  # parallel residuals, quarter-head rotary
        cfg = {k: v for k, v in COMMON.items() if k != "num_key_value_heads"}
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**cfg, initializer_range=0.2)).eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**COMMON, **extra})).eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen3", "gemma", "granite", "smollm3", "gpt_neox"])
def test_extend_in_chunks_matches_hf_logits(kind):
    """Prefill 10 tokens, then extend by 7 and by 13 (past the decode linear's 16 rows with 17 more): every
    position's logits equal HF's full forward."""
    hf = _tiny(kind)
    model = load(hf, max_seq_len=96).model
    ids = torch.randint(0, 128, (1, 47), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits[0]
    model.allocate_cache(1, 96)
    model.prefill(ids[:, :10])
    got = torch.cat([model.extend(ids[:, 10:17], 10), model.extend(ids[:, 17:30], 17), model.extend(ids[:, 30:], 30)])
    torch.testing.assert_close(got, want[10:], rtol=1e-4, atol=1e-4)


def test_extend_on_soft_capped_layers_matches_hf():
    """Gemma 2 without sliding layers (windows wider than the cache): the soft-capped attention over the cache."""
    torch.manual_seed(0)
    hf = tiny_variant("gemma2", **COMMON)
    hf.config.sliding_window = 1000
    for layer in hf.model.layers:
        layer.self_attn.sliding_window = None
    model = load(hf, max_seq_len=96).model
    assert all(layer.softcap and layer.window is None for layer in model.layers)
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(ids).logits[0]
    model.allocate_cache(1, 96)
    model.prefill(ids[:, :8])
    torch.testing.assert_close(model.extend(ids[:, 8:], 8), want[8:], rtol=1e-4, atol=1e-4)


def test_extend_refuses_what_it_cannot_do():
    model = load(_tiny(), max_seq_len=32).model
    model.allocate_cache(1, 32)
    with pytest.raises(ValueError, match=r"^ids: expected shape \[1, S\]"):
        model.extend(torch.zeros(2, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"KV cache overflow"):
        model.extend(torch.zeros(1, 5, dtype=torch.long), 30)
    cfg = transformers.MistralConfig(**{**COMMON, "num_hidden_layers": 1}, sliding_window=8)
    sliding = load(transformers.MistralForCausalLM(cfg).eval(), max_seq_len=32).model
    sliding.allocate_cache(1, 32)
    with pytest.raises(ValueError, match=r"^extend: this model's sliding-window layers keep ring caches.*"
                                         r"sliding_window_cache='full'"):
        sliding.extend(torch.zeros(1, 2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"^sliding_window_cache: expected one of \('ring', 'full'\)"):
        load(transformers.MistralForCausalLM(cfg).eval(), sliding_window_cache="window")


@pytest.mark.parametrize("kind", ["mistral", "gemma2", "gemma3"])
def test_extend_on_sliding_layers_with_full_caches_matches_hf(kind):
    """sliding_window_cache="full": sliding layers cache every position and the kernels' window bounds their
    attention, so extend runs past the window (6 or 8 positions here) with HF's logits at every position."""
    torch.manual_seed(0)
    if kind == "mistral":
        hf = transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, sliding_window=8)).eval()
    else:
        hf = tiny_variant(kind, **COMMON)
    model = load(hf, max_seq_len=96, sliding_window_cache="full").model
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits[0]
    model.allocate_cache(1, 96)
    assert not any(layer.ring for layer in model.layers) and any(layer.window for layer in model.layers)
    model.prefill(ids[:, :10])
    got = torch.cat([model.extend(ids[:, 10:13], 10), model.extend(ids[:, 13:30], 13), model.extend(ids[:, 30:], 30)])
    torch.testing.assert_close(got, want[10:], rtol=1e-4, atol=1e-4)


def test_a_window_as_long_as_the_cache_needs_no_ring():
    """Mistral's window of 8 over a cache of 8 positions: nothing wraps, so extend runs with the default rings."""
    cfg = transformers.MistralConfig(**{**COMMON, "num_hidden_layers": 1}, sliding_window=8)
    engine = load(transformers.MistralForCausalLM(cfg).eval(), max_seq_len=8)
    assert not engine.model.uses_rings(8)
    engine.eos_ids = set()
    assert engine.generate([1, 2, 1, 2], 4, prompt_lookup=2).ids == engine.generate([1, 2, 1, 2], 4).ids


def test_find_draft_takes_what_followed_the_latest_earlier_tail():
    tokens = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 6, 7]
    assert find_draft(tokens, 3) == [2, 3, 6]  # tail [6, 7]: latest earlier match at 6
    assert find_draft(tokens, 1) == [2]
    assert find_draft([1, 2, 3], 4) == []  # no earlier occurrence of any tail
    assert find_draft([4, 1, 2, 9, 1, 2, 3, 1, 2], 2, max_ngram=2) == [3, 1]
    assert find_draft([7], 4) == []


def test_accept_keeps_the_agreeing_prefix_and_the_next_choice():
    assert accept([4, 5, 6], [4, 5, 6, 7]) == [4, 5, 6, 7]  # all kept, plus the choice after the draft
    assert accept([4, 5, 6], [4, 9, 6, 7]) == [4, 9]  # second draft token rejected: the model's choice instead
    assert accept([4, 5], [8, 5, 1]) == [8]
    assert accept([], [3]) == [3]


def test_next_draft_size_grows_on_success_and_shrinks_on_rejection():
    assert next_draft_size(4, 4, 4, 10) == 6
    assert next_draft_size(9, 9, 9, 10) == 10
    assert next_draft_size(6, 6, 2, 10) == 3
    assert next_draft_size(6, 6, 0, 10) == 1
    assert next_draft_size(6, 0, 0, 10) == 6  # no draft: no evidence


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen3", "granite"])
def test_prompt_lookup_gives_greedy_tokens(kind):
    """The same tokens as plain greedy decoding (and HF's), with drafts actually kept: the prompts repeat
    themselves and these tiny models fall into loops."""
    hf = _tiny(kind)
    engine = load(hf, max_seq_len=96)
    engine.eos_ids = set()
    kept = 0
    for prompt in ([1, 5, 9, 33, 70, 1, 5, 9, 33, 70, 1, 5], [7, 8, 7, 8, 7]):
        plain = engine.generate(prompt, 40)
        fast = engine.generate(prompt, 40, prompt_lookup=6)
        assert fast.ids == plain.ids
        assert fast.stats["decode_steps"] + fast.stats["accepted_tokens"] == 39  # one pass per token otherwise
        kept += fast.stats["accepted_tokens"]
    assert kept > 0


def test_prompt_lookup_batches_stops_logprobs_and_streams():
    engine = load(_tiny(), max_seq_len=96)
    engine.eos_ids = set()
    prompts = [[1, 5, 9, 1, 5, 9, 1], [7, 8, 7, 8]]
    plain = engine.generate(prompts, 30, logprobs=True)
    fast = engine.generate(prompts, 30, logprobs=True, prompt_lookup=5)
    for a, b in zip(plain, fast, strict=True):
        assert a.ids == b.ids
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    stop = plain[0].ids[12]
    stopped = engine.generate(prompts[0], 30, stop=[stop], prompt_lookup=5)
    assert stopped.ids == plain[0].ids[:plain[0].ids.index(stop) + 1]
    assert engine.generate(prompts[0], 3, prompt_lookup=5).ids == plain[0].ids[:3]  # max_new_tokens cuts a draft


def test_prompt_lookup_stream_joins_to_the_plain_text():
    tokenizer = byte_level_bpe()
    engine = load(_tiny("llama", vocab_size=len(tokenizer)), tokenizer=tokenizer, max_seq_len=96)
    engine.eos_ids = set()
    stream = engine.stream("héllo wörld héllo wörld", 24, chat=False, prompt_lookup=4)
    assert "".join(stream) == engine.generate("héllo wörld héllo wörld", 24, chat=False).text
    assert stream.result.ids == engine.generate("héllo wörld héllo wörld", 24, chat=False).ids


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt_lookup": -1}, r"^prompt_lookup: expected a number of draft tokens >= 0"),
    ({"prompt_lookup": 2.5}, r"^prompt_lookup: expected a number of draft tokens >= 0"),
], ids=["negative", "float"])
def test_prompt_lookup_bad_arguments(kwargs, message):
    engine = load(_tiny(), max_seq_len=32)
    with pytest.raises(ValueError, match=message):
        engine.generate([1, 2, 3], 4, **{"prompt_lookup": 4, **kwargs})


def test_prompt_lookup_refuses_sliding_models():
    cfg = transformers.MistralConfig(**{**COMMON, "num_hidden_layers": 1}, sliding_window=8)
    engine = load(transformers.MistralForCausalLM(cfg).eval(), max_seq_len=32)
    with pytest.raises(ValueError, match=r"^prompt_lookup: this model has sliding-window layers.*"
                                         r"sliding_window_cache='full'"):
        engine.generate([1, 2, 3], 4, prompt_lookup=4)


@pytest.mark.parametrize("kind", ["mistral", "gemma2"])
def test_sliding_models_with_full_caches_speculate_and_reuse(kind):
    """With sliding_window_cache="full" a sliding model drafts from its prompt and reuses a chat's prefix, with the
    tokens of plain greedy decoding over rings (and HF's)."""
    torch.manual_seed(0)
    if kind == "mistral":
        hf = transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, sliding_window=8)).eval()
    else:
        hf = tiny_variant(kind, **COMMON)
    rings = load(hf, max_seq_len=96)
    full = load(hf, max_seq_len=96, sliding_window_cache="full", reuse_prefix=True)
    rings.eos_ids = full.eos_ids = set()
    prompt = [1, 5, 9, 33, 70, 1, 5, 9, 33, 70, 1, 5]
    want = rings.generate(prompt, 40)
    with torch.no_grad():
        hf_ids = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert want.ids == hf_ids
    assert full.generate(prompt, 40).ids == want.ids
    fast = full.generate(prompt, 40, prompt_lookup=6)
    assert fast.ids == want.ids and fast.stats["accepted_tokens"] > 0
    turn = [*prompt, *want.ids[:20], 44, 45]
    again = full.generate(turn, 12)
    assert again.stats["reused_tokens"] > 0 and again.ids == rings.generate(turn, 12).ids


# ---------------------------------------------------------------- prefix reuse (load(reuse_prefix=True))


def test_a_later_turn_reuses_the_cached_prefix_and_gives_the_same_tokens():
    """A chat's next turn (the previous prompt, its answer and more) prefills only the new tokens; tokens and
    logprobs equal a fresh engine's."""
    hf = _tiny()
    engine, fresh = load(hf, max_seq_len=96, reuse_prefix=True), load(hf, max_seq_len=96)
    engine.eos_ids = fresh.eos_ids = set()
    first = engine.generate([1, 5, 9, 33, 70], 12)
    assert first.stats["reused_tokens"] == 0
    turn = [1, 5, 9, 33, 70, *first.ids, 44, 45, 46]
    second = engine.generate(turn, 16, logprobs=True)
    want = fresh.generate(turn, 16, logprobs=True)
    assert second.stats["reused_tokens"] == 5 + 12 - 1  # all fed tokens: the last new one never was
    assert second.ids == want.ids and second.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    again = engine.generate(turn, 16, prompt_lookup=4)  # the same prompt: all but its last token reused
    assert again.stats["reused_tokens"] == len(turn) - 1 and again.ids == want.ids


def test_prefix_reuse_stops_where_the_cache_row_was_rewritten():
    hf = _tiny()
    engine = load(hf, max_seq_len=96, reuse_prefix=True)
    prompt = [1, 5, 9, 33, 70, 2, 3]
    engine.generate(prompt, 4)
    assert engine.generate([*prompt, 4], 4).stats["reused_tokens"] == 7
    engine.generate([prompt, [8, 9]], 4)  # a batch rewrites row 0
    assert engine.generate([*prompt, 4], 4).stats["reused_tokens"] == 0
    engine.loglikelihood(prompt, [4])  # so does scoring
    assert engine.generate([*prompt, 4], 4).stats["reused_tokens"] == 0
    assert engine.generate([60, 61, 62], 4).stats["reused_tokens"] == 0  # nothing in common
    engine.model.allocate_cache(3, 96)  # a new (larger) cache allocation holds nothing
    assert engine.generate([60, 61, 62, 63], 4).stats["reused_tokens"] == 0
    plain = load(hf, max_seq_len=96)
    plain.generate(prompt, 4)
    assert plain.generate([*prompt, 4], 4).stats["reused_tokens"] == 0  # off by default
    with pytest.raises(TypeError, match=r"^reuse_prefix: expected True or False"):
        load(hf, reuse_prefix="yes")


def test_sliding_models_never_reuse_a_prefix():
    cfg = transformers.MistralConfig(**{**COMMON, "num_hidden_layers": 1}, sliding_window=8)
    hf = transformers.MistralForCausalLM(cfg).eval()
    engine, fresh = load(hf, max_seq_len=64, reuse_prefix=True), load(hf, max_seq_len=64)
    engine.eos_ids = fresh.eos_ids = set()
    first = engine.generate([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 6)
    turn = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, *first.ids, 11]
    second = engine.generate(turn, 6)
    assert second.stats["reused_tokens"] == 0 and second.ids == fresh.generate(turn, 6).ids


# ---------------------------------------------------------------- draft models (generate(draft_model=...))


def test_a_draft_model_gives_the_targets_greedy_tokens():
    """A draft that agrees (the same weights) keeps nearly every token; one that does not (another random model,
    another architecture) keeps few: both give the target's greedy tokens, in stops and batches too."""
    target = load(_tiny(), max_seq_len=96)
    target.eos_ids = set()
    same = load(_tiny(), max_seq_len=96)
    other = load(_tiny("gpt2"), max_seq_len=96)
    prompts = [[1, 5, 9, 33, 70], [7, 8]]
    plain = target.generate(prompts, 30)
    for draft, agrees in ((same, True), (other, False)):
        fast = target.generate(prompts, 30, draft_model=draft, num_draft_tokens=4)
        assert [r.ids for r in fast] == [r.ids for r in plain]
        kept = sum(r.stats["accepted_tokens"] for r in fast) / sum(r.stats["draft_tokens"] for r in fast)
        assert kept > 0.9 if agrees else kept < 0.5
    stop = plain[0].ids[10]
    stopped = target.generate(prompts[0], 30, stop=[stop], draft_model=same)
    assert stopped.ids == plain[0].ids[:plain[0].ids.index(stop) + 1]
    assert target.generate(prompts[0], 30, draft_model=same, logprobs=True).logprobs == pytest.approx(
        target.generate(prompts[0], 30, logprobs=True).logprobs, abs=1e-4)


def test_draft_model_arguments_are_checked():
    target = load(_tiny(), max_seq_len=96)
    small = load(_tiny(), max_seq_len=96)
    cases = [
        (dict(draft_model="small"), TypeError, r"^draft_model: expected a genai_fast.llm Engine"),
        (dict(draft_model=target), ValueError, r"^draft_model: expected another engine"),
        (dict(draft_model=small, prompt_lookup=3), ValueError, r"^draft_model: pass either"),
        (dict(draft_model=small, num_draft_tokens=0), ValueError, r"^num_draft_tokens: expected at least 1"),
        (dict(draft_model=small, num_draft_tokens=-2), ValueError, r"^num_draft_tokens: expected a number"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            target.generate([1, 2, 3], 4, **kwargs)
    bigger = load(transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**COMMON, "vocab_size": 200})).eval())
    with pytest.raises(ValueError, match=r"^draft_model: its vocabulary of 200 tokens is larger"):
        target.generate([1, 2, 3], 4, draft_model=bigger)
    short = load(_tiny(), max_seq_len=16)
    with pytest.raises(ValueError, match=r"^draft_model: its cache of 16 positions is too short"):
        target.generate([1, 2, 3], 20, draft_model=short)


# ---------------------------------------------------------------- speculative sampling (temperature > 0)


@pytest.mark.parametrize("with_proposal", [False, True], ids=["certain-draft", "draft-distribution"])
def test_accept_sampled_keeps_the_target_distribution(with_proposal):
    """Over many draws, the first token follows target[0] (the draft token drawn from the proposal, or a fixed
    one proposed with certainty), and the second follows target[1] whenever the draft token was kept (the
    standard speculative sampling guarantee)."""
    from genai_fast.llm.speculate import accept_sampled

    target = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.4, 0.4]])
    proposal = torch.tensor([[0.1, 0.8, 0.1, 0.0]]) if with_proposal else None
    generator = torch.Generator().manual_seed(0)
    firsts, seconds = torch.zeros(4), torch.zeros(4)
    for _ in range(8000):
        token = 1 if proposal is None else int(torch.multinomial(proposal[0], 1, generator=generator))
        out = accept_sampled(target, [token], proposal, generator)
        firsts[out[0]] += 1
        if len(out) == 2:
            seconds[out[1]] += 1
    torch.testing.assert_close(firsts / firsts.sum(), target[0], atol=0.02, rtol=0)
    torch.testing.assert_close(seconds / seconds.sum(), target[1], atol=0.03, rtol=0)


def test_accept_sampled_pads_a_smaller_draft_vocabulary():
    from genai_fast.llm.speculate import accept_sampled

    target = torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    out = accept_sampled(target, [1], torch.tensor([[0.0, 1.0, 0.0]]), torch.Generator().manual_seed(0))
    assert out == [3]  # the draft token has target probability 0: rejected, the rest of target drawn


def test_speculative_sampling_follows_plain_sampling():
    """Top-3 sampling at temperature 1 with prompt-lookup drafts and with a draft model: the first two new
    tokens' joint distribution over many seeded runs matches plain sampling's; one seed gives one result; top_k=1
    collapses to greedy decoding's tokens."""
    engine = load(_tiny(), max_seq_len=32)
    engine.eos_ids = set()
    draft = load(_tiny("gpt2"), max_seq_len=32)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    kinds = {"plain": {}, "lookup": {"prompt_lookup": 4}, "draft": {"draft_model": draft, "num_draft_tokens": 3}}
    counts = {}
    for name, kwargs in kinds.items():
        pairs = [tuple(engine.generate(prompt, 3, temperature=1.0, top_k=3, seed=s, **kwargs).ids[:2])
                 for s in range(1500)]
        counts[name] = {pair: pairs.count(pair) / len(pairs) for pair in set(pairs)}
        again = engine.generate(prompt, 6, temperature=1.0, top_k=3, seed=7, **kwargs).ids
        assert again == engine.generate(prompt, 6, temperature=1.0, top_k=3, seed=7, **kwargs).ids
        assert engine.generate(prompt, 8, temperature=0.9, top_k=1, seed=1, **kwargs).ids == \
            engine.generate(prompt, 8).ids
    for name in ("lookup", "draft"):
        support = set(counts[name]) | set(counts["plain"])
        distance = sum(abs(counts[name].get(k, 0) - counts["plain"].get(k, 0)) for k in support) / 2
        assert distance < 0.1, (name, distance)  # 1500 runs: noise ~0.04; keeping every draft token gives 0.88


# ---------------------------------------------------------------- repetition penalty


def test_speculation_with_a_repetition_penalty_gives_its_greedy_tokens():
    """Each checked position is penalised over the tokens before it, drafts included: prompt-lookup and draft-model
    decoding give plain greedy decoding's tokens under the penalty (which changes them here)."""
    engine = load(_tiny(), max_seq_len=96)
    draft = load(_tiny("gpt2"), max_seq_len=96)
    engine.eos_ids = set()
    prompt = [1, 5, 9, 33, 70, 1, 5, 9, 33, 70, 1, 5]
    for penalty in (1.3, 0.7):  # below 1 favours repeats: drafts get kept
        plain = engine.generate(prompt, 30, repetition_penalty=penalty)
        assert plain.ids != engine.generate(prompt, 30).ids
        lookup = engine.generate(prompt, 30, repetition_penalty=penalty, prompt_lookup=5)
        assert lookup.ids == plain.ids
        drafted = engine.generate(prompt, 30, repetition_penalty=penalty, draft_model=draft, num_draft_tokens=4)
        assert drafted.ids == plain.ids
    assert lookup.stats["accepted_tokens"] > 0


def test_speculative_sampling_applies_the_penalty_at_each_position():
    """Sampled speculation draws from the penalised distributions: with top_k=1 it collapses to greedy decoding
    under the penalty, drafts kept (a penalty below 1 favours the prompt's repeats)."""
    engine = load(_tiny(), max_seq_len=96)
    draft = load(_tiny("gpt2"), max_seq_len=96)
    engine.eos_ids = set()
    prompt = [1, 5, 9, 33, 70, 1, 5, 9, 33, 70, 1, 5]
    want = engine.generate(prompt, 30, repetition_penalty=0.7).ids
    kept = []
    for kwargs in ({"prompt_lookup": 5}, {"draft_model": draft, "num_draft_tokens": 4}):
        got = engine.generate(prompt, 30, temperature=0.8, top_k=1, seed=3, repetition_penalty=0.7, **kwargs)
        assert got.ids == want, kwargs
        kept.append(got.stats["accepted_tokens"])
    assert kept[0] > 0  # prompt-lookup drafts were kept (the random draft model's rarely are)


def test_penalise_drafted_counts_the_draft_tokens_before_each_position():
    from genai_fast.llm.decode import Sampler, SamplingParams

    sampler = Sampler(SamplingParams(repetition_penalty=2.0), None)
    logits = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    got = sampler.penalise_drafted(logits, [1, 2], [5, 7, 5])
    for row, seen in enumerate(({1, 2}, {1, 2, 5}, {1, 2, 5, 7}, {1, 2, 5, 7})):
        want = logits[row].clone()
        for t in seen:
            want[t] = want[t] * 2.0 if want[t] < 0 else want[t] / 2.0
        torch.testing.assert_close(got[row], want)
    assert Sampler(SamplingParams(), None).penalise_drafted(logits, [1], [2]) is logits
