"""Decode over a GGUF file's weight blocks (genai_fast/llm/gguf_blocks.py) on a tiny random Llama whose weights
are exactly what its blocks hold: the right matrices attach (rows matched in any order, mixed block types and
changed weights refused with the reason), and generation gives HF's greedy tokens with fewer bytes per step."""

import pytest
import torch

from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.ops.gguf_linear import gguf_dequantize
from tests.test_gguf_linear import random_blocks, write_gguf

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="writing the test's GGUF file needs the gguf package")
pytestmark = pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")),
                                reason="; ".join(backend_unavailable_reasons("cpp")) or "cpp available")

# Block type of each weight; layer 1's v rows are Q4_0 while its q/k rows are Q4_1, so its fused qkv
# matrix cannot be one block tensor and must stay fp32.
TYPES = {"q_proj": "Q4_1", "k_proj": "Q4_1", "v_proj": "Q4_1", "o_proj": "Q4_0", "gate_proj": "Q4_1",
         "up_proj": "Q4_1", "down_proj": "Q8_0", "embed_tokens": "Q8_0"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(hf model, path of a GGUF file holding its weights as blocks, rows stored in a shuffled order)."""
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    tensors = {}
    for i, (name, p) in enumerate(hf.named_parameters()):
        if p.dim() != 2:
            continue
        kind = next(t for key, t in TYPES.items() if key in name)
        kind = "Q4_0" if name == "model.layers.1.self_attn.v_proj.weight" else kind
        blocks = random_blocks(p.shape[0], p.shape[1], kind, seed=i)
        with torch.no_grad():
            p.copy_(gguf_dequantize(blocks, kind))
        order = torch.randperm(p.shape[0])  # GGUF files order rows their own way (Llama's q/k for rope)
        tensors[f"file.{name}"] = (blocks[order].contiguous(), kind)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(path, tensors)
    return hf, path


def _hf_greedy(hf, ids, n):
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_attach_matches_rows_and_refuses_what_it_cannot_reproduce(tiny):
    from genai_fast.llm.gguf_blocks import attach_gguf_blocks
    from genai_fast.llm.model import from_hf

    hf, path = tiny
    model = from_hf(hf)
    report = attach_gguf_blocks(model, path)
    assert report.attached == {"Q4_1": 3, "Q4_0": 2, "Q8_0": 3}
    assert report.kept_fp32 == ["layers.1.wqkv: rows come from blocks of different types ['Q4_0', 'Q4_1']"]
    for weight in (model.layers[0].wqkv, model.layers[1].mlp_out, model.lm_head):
        found = model.gguf_blocks[id(weight)]
        assert torch.equal(gguf_dequantize(found.blocks, found.block_type), weight)  # bitwise, rows reordered
    assert "8 matrices" in report.summary() and "1 kept fp32" in report.summary()

    changed = from_hf(hf)  # one weight one ulp away: in the hashed head of its row, and past it
    with torch.no_grad():
        for w, column in ((changed.layers[0].wo, 5), (changed.layers[0].mlp_out, 100)):
            w[3, column] = torch.nextafter(w[3, column], torch.tensor(1.0))
    kept = attach_gguf_blocks(changed, path).kept_fp32
    assert "layers.0.wo: some rows are not in the file's blocks (values differ, e.g. another dtype)" in kept
    assert "layers.0.mlp_out: the matched blocks do not reproduce the weights bit for bit" in kept
    assert id(changed.layers[0].mlp_out) not in changed.gguf_blocks


def test_generation_on_blocks_gives_hf_tokens(tiny):
    from genai_fast.llm import load
    from genai_fast.llm.gguf_blocks import attach_gguf_blocks

    hf, path = tiny
    engine = load(hf, max_seq_len=64)
    before = engine.model.step_bytes(1)
    attach_gguf_blocks(engine.model, path)
    assert engine.model.step_bytes(1) < before / 2  # 4-8.5 bits per weight instead of 32
    assert engine.model.decode_rms_norm() is not None  # the decode norms run genai_fast.rms_norm's kernel too
    assert engine.model.decode_attend() is not None  # and attention the C++ decode kernel
    prompts = [[1, 5, 9, 33], [2, 70, 11, 4, 8, 21, 60]]
    singles = [engine.generate(ids, 20).ids for ids in prompts]
    assert singles == [_hf_greedy(hf, ids, 20) for ids in prompts]
    assert [r.ids for r in engine.generate(prompts, 20)] == singles  # a ragged batch of 2 rows


def test_load_refuses_blocks_it_cannot_use(tiny):
    from genai_fast.llm import load

    hf, _ = tiny
    with pytest.raises(ValueError, match=r"gguf_blocks: cannot decode from GGUF blocks: the source is not a \.gguf"):
        load(hf, gguf_blocks=True)
    assert load(hf).weight_format == "float32 weights"
