"""genai_fast.integrations.diffusers.patch combined with the diffusers features a user turns on around it.

The reference is the unpatched U-Net: with each feature the patched one must give what it gives (in float32
within the tolerance rule of DESIGN.md, against a float64 oracle), raise where it raises, and leave the
processors the user chose in place, before and after unpatch().
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from genai_fast.integrations.diffusers import GenaiFastAttnProcessor, patch, unpatch
from genai_fast.testing import assert_matches_oracle

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import (  # noqa: E402
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

TINY = {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 32,
        "sample_size": 16, "attention_head_dim": 8, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")}
TOKENS = 64  # the attention blocks run at 8x8 for a 16x16 sample: self-attention over 64 tokens


def _unet(**config: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**{**TINY, **config}).eval()
    with torch.no_grad():  # no trivial terms: random GroupNorm affines, a conv_out that is not near zero
        for module in unet.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    return unet


def _inputs(batch: int = 2, text_batch: int | None = None, tokens: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"sample": torch.randn(batch, 4, 16, 16, generator=g), "timestep": torch.tensor([3, 700][:batch]),
            "encoder_hidden_states": torch.randn(text_batch or batch, tokens, 32, generator=g)}


def _double(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _double(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_double(v) for v in value)
    return value


def _assert_patched_matches(unet: torch.nn.Module, prepare: Any = None, **kwargs: Any) -> torch.nn.Module:
    """The output of unet(**kwargs) patched against unpatched (float64 oracle); prepare(model) runs on each
    model first (a feature to switch on). Returns the patched U-Net."""
    prepare = prepare or (lambda model: None)
    oracle_model = copy.deepcopy(unet).double()
    patched = copy.deepcopy(unet)
    patch(patched)
    for model in (unet, oracle_model, patched):
        prepare(model)
    with torch.no_grad():
        oracle = oracle_model(**_double(kwargs)).sample
        baseline = unet(**kwargs).sample
        out = patched(**kwargs).sample
    assert_matches_oracle(out, oracle, baseline, what="patched U-Net output")
    return patched


def _processor_types(unet: torch.nn.Module) -> set[type]:
    return {type(p) for p in unet.attn_processors.values()}


# ---------------------------------------------------------------- CFG batches that do not match


@pytest.mark.parametrize(("batch", "text_batch", "tokens"), [(1, 2, 5), (1, 2, 4), (2, 1, 4)],
                         ids=["cfg-text-only-odd-tokens", "cfg-text-only-even-tokens", "text-batch-1"])
def test_text_batch_that_does_not_match_the_sample_raises_like_diffusers(batch, text_batch, tokens):
    """A batch of 1 with CFG's doubled text batch: diffusers raises; the direct transformer-block forward
    used to fold the extra text batch into the token axis (or split the sample's) and return a result."""
    unet = _unet()
    inputs = _inputs(batch, text_batch, tokens)
    with torch.no_grad(), pytest.raises(RuntimeError):
        unet(**inputs)
    patch(unet)
    with torch.no_grad(), pytest.raises(RuntimeError):
        unet(**inputs)


# ---------------------------------------------------------------- attention processors chosen by the user


def test_set_default_attn_processor_after_patch_works_as_on_the_unpatched_unet():
    """diffusers' set_default_attn_processor refused processors it does not know (GenaiFastAttnProcessor) with a
    ValueError; after patch() it must switch to diffusers' AttnProcessor as it does unpatched, and unpatch()
    must keep that choice."""
    unet, inputs = _unet(), _inputs()
    patched = _assert_patched_matches(unet, lambda model: None, **inputs)
    patched.set_default_attn_processor()
    assert _processor_types(patched) == {AttnProcessor}
    with torch.no_grad():
        expected = unet(**inputs).sample
        torch.testing.assert_close(patched(**inputs).sample, expected, rtol=1e-5, atol=2e-5)
        unpatch(patched)
        assert _processor_types(patched) == {AttnProcessor}
        torch.testing.assert_close(patched(**inputs).sample, expected, rtol=1e-5, atol=2e-5)
    assert "set_default_attn_processor" not in patched.__dict__


class _CountingProcessor(AttnProcessor2_0):
    """diffusers' AttnProcessor2_0 that counts its calls (a stand-in for a user's own processor)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        return super().__call__(*args, **kwargs)


def test_unpatch_keeps_a_processor_set_after_patch():
    """unpatch() used to put back the processors found at patch time over the ones the user set since."""
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        expected = unet(**inputs).sample
        patch(unet)
        mine = _CountingProcessor()
        unet.set_attn_processor(mine)
        torch.testing.assert_close(unet(**inputs).sample, expected, rtol=1e-5, atol=2e-5)
        assert mine.calls == len(unet.attn_processors)
        unpatch(unet)
        assert all(p is mine for p in unet.attn_processors.values())
        torch.testing.assert_close(unet(**inputs).sample, expected, rtol=1e-5, atol=2e-5)
        assert mine.calls == 2 * len(unet.attn_processors)


def test_fuse_qkv_after_patch_then_unpatch_then_unfuse():
    """fuse_qkv_projections() after patch: fused processors, same output; unpatch() keeps them; the U-Net's
    unfuse_qkv_projections() afterwards gives back diffusers' processors, not patch()'s."""
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        expected = unet(**inputs).sample
        patch(unet)
        unet.fuse_qkv_projections()
        assert _processor_types(unet) == {FusedAttnProcessor2_0}
        torch.testing.assert_close(unet(**inputs).sample, expected, rtol=1e-5, atol=2e-5)
        unpatch(unet)
        assert _processor_types(unet) == {FusedAttnProcessor2_0}
        unet.unfuse_qkv_projections()
        assert _processor_types(unet) == {AttnProcessor2_0}
        torch.testing.assert_close(unet(**inputs).sample, expected, rtol=1e-5, atol=2e-5)


def test_fuse_and_unfuse_qkv_while_patched_and_before_patch():
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        expected = unet(**inputs).sample
        patched = copy.deepcopy(unet)
        patch(patched)
        patched.fuse_qkv_projections()
        patched.unfuse_qkv_projections()
        assert _processor_types(patched) == {GenaiFastAttnProcessor}
        torch.testing.assert_close(patched(**inputs).sample, expected, rtol=1e-5, atol=2e-5)
        fused_first = copy.deepcopy(unet)
        fused_first.fuse_qkv_projections()
        report = patch(fused_first)  # diffusers' fused processor is left alone
        assert report.attention_processors == 0 and report.left["Attention with FusedAttnProcessor2_0"] > 0
        torch.testing.assert_close(fused_first(**inputs).sample, expected, rtol=1e-5, atol=2e-5)
        fused_first.unfuse_qkv_projections()
        torch.testing.assert_close(fused_first(**inputs).sample, expected, rtol=1e-5, atol=2e-5)


def test_set_attn_processor_after_patch_is_followed():
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        expected = unet(**inputs).sample
        patch(unet)
        for processor in (AttnProcessor2_0(), AttnProcessor()):
            unet.set_attn_processor(processor)
            assert _processor_types(unet) == {type(processor)}
            torch.testing.assert_close(unet(**inputs).sample, expected, rtol=1e-5, atol=2e-5)


# ---------------------------------------------------------------- modules replaced after patching (LoRA)


class _Rescaled(torch.nn.Module):
    """A module wrapped the way a LoRA layer wraps it: its output changes, while `weight` and `bias` still name the
    wrapped module's (what a fused forward reading weights off the module would take)."""

    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.inner(x, *args, **kwargs) * self.factor


def _rescale_parts(unet: torch.nn.Module) -> None:
    """Wrap one part of each fused module kind: resnets' conv1, attentions' to_q, feed-forwards' output linear,
    Transformer2D's conv proj_out."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    for module in list(unet.modules()):
        if isinstance(module, ResnetBlock2D):
            module.conv1 = _Rescaled(module.conv1, 1.5)
        elif isinstance(module, BasicTransformerBlock):
            module.attn1.to_q = _Rescaled(module.attn1.to_q, 1.5)
            module.ff.net[2] = _Rescaled(module.ff.net[2], 0.5)
        elif isinstance(module, Transformer2DModel):
            module.proj_out = _Rescaled(module.proj_out, 2.0)


def test_parts_wrapped_after_patching_run_as_wrapped():
    """The fused resnet, transformer-block and Transformer2D-output forwards read conv and linear weights off the
    modules: a part wrapped after patch() (as loading LoRA weights into a pipeline does) was computed from the
    weights it wraps, silently dropping the wrapper. Such parts now run as the modules they are; unpatch() too."""
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        plain = unet(**inputs).sample
    patched = _assert_patched_matches(unet, _rescale_parts, **inputs)
    with torch.no_grad():
        assert (patched(**inputs).sample - plain).abs().max() > 0.1  # the wrappers matter
        want = unet(**inputs).sample
        unpatch(patched)
        torch.testing.assert_close(patched(**inputs).sample, want, rtol=1e-5, atol=2e-5)


def test_parts_wrapped_before_patching_are_left_to_diffusers():
    unet, inputs = _unet(), _inputs()
    _rescale_parts(unet)
    with torch.no_grad():
        want = unet(**inputs).sample
        report = patch(unet)
        torch.testing.assert_close(unet(**inputs).sample, want, rtol=1e-5, atol=2e-5)
    assert report.resnets_fused == 0 and report.transformer_blocks == 0 and report.transformer_outputs == 0


def _add_lora(model: torch.nn.Module) -> None:
    """A peft LoRA adapter on every conv and projection diffusers' LoRA loaders target, with random (non-zero)
    up-projections, the same in every model; in the model's dtype."""
    peft = pytest.importorskip("peft")
    dtype = next(model.parameters()).dtype
    torch.manual_seed(3)
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
        "conv_shortcut", "time_emb_proj", "conv_in", "conv_out"]))
    model.to(dtype)


def test_peft_lora_added_after_patching_matches_unpatched():
    """What pipe.load_lora_weights() does to a patched U-Net: peft wraps the convs and projections. The patched
    U-Net used to give the base model's output, every adapter silently dropped."""
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        plain = unet(**inputs).sample
    patched = _assert_patched_matches(unet, _add_lora, **inputs)
    with torch.no_grad():
        assert (patched(**inputs).sample - plain).abs().max() > 0.1
        patched.disable_adapters()
        torch.testing.assert_close(patched(**inputs).sample, plain, rtol=1e-5, atol=2e-5)


def _sequential_offload(model: torch.nn.Module) -> None:
    """accelerate's sequential CPU offload (diffusers' enable_sequential_cpu_offload): the weights wait on the meta
    device, and each module's hooked forward loads its own before running."""
    accelerate = pytest.importorskip("accelerate")
    accelerate.cpu_offload(model, execution_device=torch.device("cpu"))


def test_sequential_offload_after_patching_matches_unpatched():
    """The fused forwards read the weights of modules whose forward accelerate hooks to load them: after patch()
    the U-Net raised ("Tensor on device meta"). Hooked parts now run through their hooks."""
    _assert_patched_matches(_unet(), _sequential_offload, **_inputs())


# ---------------------------------------------------------------- call arguments


def test_masks_and_cross_attention_scale():
    """attention_mask over the 64 self-attention tokens, a boolean encoder_attention_mask, and the LoRA scale
    in cross_attention_kwargs (diffusers takes it out before the blocks)."""
    inputs = _inputs()
    attention_mask = torch.ones(2, TOKENS, dtype=torch.bool)
    attention_mask[0, 40:] = False
    attention_mask[1, 10:30] = False
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    _assert_patched_matches(_unet(), **inputs, attention_mask=attention_mask, encoder_attention_mask=text_mask,
                            cross_attention_kwargs={"scale": 0.5})


def test_controlnet_residuals_and_return_dict_false():
    unet, inputs = _unet(), _inputs()
    g = torch.Generator().manual_seed(2)
    down = tuple(torch.randn(2, c, s, s, generator=g) for c, s in ((32, 16), (32, 16), (32, 8), (64, 8)))
    mid = torch.randn(2, 64, 8, 8, generator=g)
    controlled = {**inputs, "down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    patched = _assert_patched_matches(unet, **controlled)
    with torch.no_grad():
        as_tuple = patched(**controlled, return_dict=False)
        expected = unet(**controlled, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], expected[0], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(("config", "extra"), [
    ({"class_embed_type": "timestep"}, lambda: {"class_labels": torch.tensor([5, 9])}),
    ({"num_class_embeds": 10, "class_embeddings_concat": True}, lambda: {"class_labels": torch.tensor([5, 9])}),
    ({"time_cond_proj_dim": 16}, lambda: {"timestep_cond": torch.randn(2, 16)}),
    ({"addition_embed_type": "text", "addition_embed_type_num_heads": 4}, dict),
    ({"addition_embed_type": "text_time", "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80},
     lambda: {"added_cond_kwargs": {"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)}}),
], ids=["class-timestep", "class-concat", "timestep-cond", "addition-text", "addition-text-time"])
def test_conditioning_configs(config, extra):
    _assert_patched_matches(_unet(**config), **_inputs(), **extra())


# ---------------------------------------------------------------- U-Net switches


def test_freeu_and_forward_chunking():
    def switch_on(model: torch.nn.Module) -> None:
        model.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        for block in model.modules():
            if hasattr(block, "set_chunk_feed_forward"):  # what enable_forward_chunking does
                block.set_chunk_feed_forward(2, 1)

    _assert_patched_matches(_unet(), switch_on, **_inputs())


def test_gradient_checkpointing_gradients_match_unpatched():
    unet, inputs = _unet(), _inputs()
    unet.train()
    patched = copy.deepcopy(unet)
    patch(patched)
    weights = torch.randn(inputs["sample"].shape, generator=torch.Generator().manual_seed(3))

    def grads(model: torch.nn.Module, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model.enable_gradient_checkpointing()
        text = model_inputs["encoder_hidden_states"].clone().requires_grad_(True)
        out = model(model_inputs["sample"], model_inputs["timestep"], text).sample
        (out * weights.to(out.dtype)).sum().backward()
        found = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        found["encoder_hidden_states"] = text.grad
        return found

    oracle = grads(copy.deepcopy(unet).double(), _double(inputs))
    baseline = grads(unet, inputs)
    got = grads(patched, inputs)
    assert set(got) == set(oracle) and len(got) > 100
    for name in oracle:
        assert_matches_oracle(got[name], oracle[name], baseline[name], what=f"gradient of {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
def test_dtype_move_after_patch(dtype):
    """unet.to(dtype) after a patched float32 call (its recorded plans are for float32)."""
    unet, inputs = _unet(), _inputs()
    patched = copy.deepcopy(unet)
    patch(patched)
    with torch.no_grad():
        patched(**inputs)
        oracle = copy.deepcopy(unet).double()(**_double(inputs)).sample
        moved = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        baseline = unet.to(dtype)(**moved).sample
        out = patched.to(dtype)(**moved).sample
    assert out.dtype == dtype
    assert_matches_oracle(out, oracle, baseline, what=f"patched U-Net moved to {dtype}")


def test_contiguous_format_after_patch_then_unpatch():
    unet, inputs = _unet(), _inputs()
    with torch.no_grad():
        expected = unet(**inputs).sample
        patch(unet)
        unet.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(unet(**inputs).sample, expected, rtol=1e-5, atol=2e-5)
        unpatch(unet)
        assert all(p.is_contiguous() for p in unet.parameters())
        torch.testing.assert_close(unet(**inputs).sample, expected, rtol=0, atol=0)


def test_torch_compile_of_a_patched_unet_matches_eager():
    """Dynamo traces the patched forwards (the eager backend keeps the test quick; inductor was checked by hand)."""
    unet, inputs = _unet(), _inputs()
    patch(unet)
    compiled = torch.compile(unet, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).sample, unet(**inputs).sample, rtol=1e-6, atol=1e-6)
