"""genai_fast.integrations.diffusers: patched tiny diffusers U-Nets against the unpatched models.

Outputs and gradients follow the tolerance rule of DESIGN.md: the oracle is the unpatched model in
float64, and the patched fp32 model may be off by at most twice the unpatched fp32 model's error plus
the fp32 rounding floor.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from genai_fast.backends.dispatch import OPS
from genai_fast.diffusion import make_sampler, sample
from genai_fast.integrations.diffusers import GenaiFastAttnProcessor, PatchReport, is_patched, patch, unpatch
from genai_fast.testing import assert_matches_oracle

diffusers = pytest.importorskip("diffusers")

# Configs as diffusers' own tests build them (the Stable Diffusion pipeline tests' tiny U-Net, the
# UNet2DModel model tests), plus variants that exercise what the patch must leave alone or half-fuse.
COND_BASE = {
    "block_out_channels": (32, 64), "layers_per_block": 2, "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32, "norm_num_groups": 8,
    "attention_head_dim": 8,
}
COND_CONFIGS = {
    "sd-tiny": {},
    "scale-shift": {"resnet_time_scale_shift": "scale_shift", "layers_per_block": 1},
    "mish": {"act_fn": "mish", "layers_per_block": 1},
    "linear-proj-upcast": {"use_linear_projection": True, "upcast_attention": True, "layers_per_block": 1},
    "simple-cross-added-kv": {"down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                              "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                              "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "layers_per_block": 1,
                              "cross_attention_norm": "group_norm"},
}
UNET2D_CONFIGS = {
    "unet2d-tiny": {"block_out_channels": (32, 64), "norm_num_groups": 8, "layers_per_block": 2,
                    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
                    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 8,
                    "in_channels": 3, "out_channels": 3, "sample_size": 8},
    "unet2d-scale-shift-fourier": {"block_out_channels": (32, 32), "norm_num_groups": 8, "layers_per_block": 1,
                                   "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
                                   "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 8,
                                   "in_channels": 3, "out_channels": 3, "sample_size": 8,
                                   "resnet_time_scale_shift": "scale_shift", "time_embedding_type": "fourier"},
}


def _cond_unet(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**{**COND_BASE, **COND_CONFIGS[variant]}).eval()
    _randomize(unet)
    # Not 1 and not a power of two, so conv2's epilogue scale is really exercised.
    unet.down_blocks[0].resnets[0].output_scale_factor = 1.7
    return unet


def _unet2d(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**UNET2D_CONFIGS[variant]).eval()
    _randomize(unet)
    return unet


def _randomize(unet: torch.nn.Module) -> None:
    """GroupNorm affine parameters and zero-initialised convs made random, so that no term is trivial."""
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)


def _cond_inputs(batch: int = 2, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"sample": torch.randn(batch, 4, 8, 8, generator=g, dtype=dtype),
            "timestep": torch.tensor([3, 700][:batch]),
            "encoder_hidden_states": torch.randn(batch, 5, 32, generator=g, dtype=dtype)}


def _unet2d_inputs(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"sample": torch.randn(2, 3, 8, 8, generator=g, dtype=dtype), "timestep": torch.tensor([3, 700])}


def _model(kind: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    if kind in COND_CONFIGS:
        return _cond_unet(kind), _cond_inputs()
    return _unet2d(kind), _unet2d_inputs()


def _double(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


def _run(unet: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return unet(**inputs).sample


ALL_KINDS = [*COND_CONFIGS, *UNET2D_CONFIGS]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_patched_output_matches_unpatched(kind):
    unet, inputs = _model(kind)
    oracle_model = copy.deepcopy(unet).double()
    with torch.no_grad():
        oracle = _run(oracle_model, _double(inputs))
        baseline = _run(unet, inputs)
        report = patch(unet)
        out = _run(unet, inputs)
    assert isinstance(report, PatchReport) and report.patched > 0
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches_oracle(out, oracle, baseline, what=f"{kind} patched U-Net output")


def _plans(unet: torch.nn.Module) -> int:
    from genai_fast.integrations.diffusers import _PLANS

    return sum(len(_PLANS.get(module, {})) for module in unet.modules())


def test_inference_replays_each_signature_and_gives_the_same_output(monkeypatch):
    """The first call of a signature records one plan per conv and GroupNorm; later calls replay them and give
    the output of the full path bit for bit; a new signature, or a new GENAI_FAST_BACKEND, records new plans."""
    unet, inputs = _model("sd-tiny")
    patch(unet)
    with torch.no_grad():
        first = _run(unet, inputs)
        recorded = _plans(unet)
        assert recorded > 0
        again = _run(unet, inputs)
        assert _plans(unet) == recorded and torch.equal(again, first)
        _run(unet, _cond_inputs(batch=1))  # another batch size: other shapes
        assert _plans(unet) == 2 * recorded
        monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
        forced = _run(unet, inputs)
        assert _plans(unet) == 3 * recorded
        assert OPS["group_norm"].last_backend == "torch" and OPS["conv2d"].last_backend == "torch"
        torch.testing.assert_close(forced, first, rtol=1e-4, atol=1e-4)


def test_calls_that_record_gradients_are_never_replayed():
    unet, inputs = _model("sd-tiny")
    patch(unet)
    _run(unet, inputs).sum().backward()
    assert _plans(unet) == 0


def test_report_counts_what_was_fused_and_left():
    unet = _cond_unet("sd-tiny")
    sd = patch(unet)
    # 2 down x 2 + mid 2 + 2 up x 3 resnets; 2 down + 1 mid + 3 up transformers, 2 attentions each.
    assert (sd.resnets_fused, sd.resnets_partly_fused, sd.attention_processors) == (12, 0, 12)
    assert sd.transformer_outputs == 6 and sd.output_norm_silu_fused and not sd.left
    assert sd.geglus == 6  # one feed-forward per transformer block
    assert sd.transformer_blocks == 6 and "transformer blocks on a direct forward: 6" in str(sd)
    # Every other conv once: conv_in, conv_out, each transformer's proj_in, shortcuts, samplers' convs.
    convs = sum(type(m) is torch.nn.Conv2d for m in unet.modules())
    assert sd.convs == convs - 2 * sd.resnets_fused - sd.transformer_outputs and sd.convs >= 2 + 6
    called_by_fused_forwards = sum(type(m) is torch.nn.Conv2d and "forward" not in m.__dict__ for m in unet.modules())
    assert called_by_fused_forwards == 2 * sd.resnets_fused + sd.transformer_outputs
    assert "resnet blocks fully fused: 12" in str(sd)
    # layers_per_block 1: 2 down + 2 mid + 2 up x 2 resnets.
    shift = patch(_cond_unet("scale-shift"))
    assert (shift.resnets_fused, shift.resnets_partly_fused) == (0, 8)
    mish = patch(_cond_unet("mish"))
    assert mish.resnets_fused == 0 and mish.left["ResnetBlock2D: activation Mish (only SiLU is fused)"] == 8
    assert not mish.output_norm_silu_fused and mish.group_norms > 0  # GroupNorms still run genai_fast
    added_kv = patch(_cond_unet("simple-cross-added-kv"))
    assert sum(n for reason, n in added_kv.left.items() if "AttnAddedKVProcessor" in reason) > 0
    assert added_kv.resnets_fused > 0  # the up/down-sampling resnets are fused


def _processors(unet: torch.nn.Module) -> dict[str, object]:
    return {name: m.processor for name, m in unet.named_modules() if hasattr(m, "set_processor")}


def _layout_snapshot(unet: torch.nn.Module) -> dict[str, tuple]:
    tensors = dict(unet.named_parameters())
    tensors.update(unet.named_buffers())
    return {name: (t.shape, t.stride(), t.data_ptr() != 0) for name, t in tensors.items()}


@pytest.mark.parametrize("kind", ["sd-tiny", "unet2d-tiny"])
def test_unpatch_restores_modules_processors_and_memory_format(kind):
    unet, inputs = _model(kind)
    layouts = _layout_snapshot(unet)
    processors = _processors(unet)
    params = {name: p for name, p in unet.named_parameters()}
    keys = list(unet.state_dict())
    with torch.no_grad():
        before = _run(unet, inputs)
        patch(unet)
        assert is_patched(unet) and patch(unet) is patch(unet)  # patching twice changes nothing
        assert all(isinstance(p, GenaiFastAttnProcessor) for p in _processors(unet).values())
        assert list(unet.state_dict()) == keys  # checkpoints are interchangeable
        twin = copy.deepcopy(unet)  # e.g. an EMA copy: patched too, bound to its own modules
        assert is_patched(twin) and torch.equal(_run(twin, inputs), _run(unet, inputs))
        unpatch(twin)
        assert is_patched(unet)
        unpatch(unet)
        after = _run(unet, inputs)
    assert not is_patched(unet)
    assert _layout_snapshot(unet) == layouts
    assert processors and all(_processors(unet)[name] is proc for name, proc in processors.items())
    assert all(p is params[name] for name, p in unet.named_parameters())  # same Parameter objects
    assert not any("forward" in m.__dict__ or "_get_output_for_continuous_inputs" in m.__dict__
                   for m in unet.modules())
    assert torch.equal(before, after)


def _nhwc(t: object) -> bool:
    return (isinstance(t, torch.Tensor) and t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


class _CountLayoutCopies(TorchDispatchMode):
    """Counts copies of channels_last [N, C, H, W] activations into another layout (`.contiguous()`)."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.clone.default, torch.ops.aten._to_copy.default) and _nhwc(args[0]):
            self.copies += int(not _nhwc(out))
        return out


def test_patched_forward_has_no_layout_round_trips():
    unet, inputs = _cond_unet("sd-tiny"), _cond_inputs()
    with torch.no_grad():
        with _CountLayoutCopies() as unpatched:
            _run(unet, inputs)
        patch(unet)
        with _CountLayoutCopies() as patched:
            _run(unet, inputs)
    assert unpatched.copies > 0  # diffusers' Transformer2DModel copies back to NCHW
    assert patched.copies == 0


@pytest.mark.parametrize("kind", ["linear-proj-upcast", "scale-shift", "unet2d-scale-shift-fourier"])
def test_gradients_match_unpatched(kind):
    """d(loss)/d(encoder_hidden_states) (textual inversion) and d(loss)/d(parameters) (training)."""
    unet, inputs = _model(kind)
    unet.train()
    weights = torch.randn(inputs["sample"].shape, generator=torch.Generator().manual_seed(3))

    def grads(model, model_inputs):
        model_inputs = {k: v.clone().requires_grad_(v.is_floating_point() and k != "sample")
                        for k, v in model_inputs.items()}
        model.zero_grad(set_to_none=True)
        (_run(model, model_inputs) * weights.to(model_inputs["sample"].dtype)).sum().backward()
        found = {f"param {name}": p.grad for name, p in model.named_parameters() if p.grad is not None}
        if "encoder_hidden_states" in model_inputs:
            found["encoder_hidden_states"] = model_inputs["encoder_hidden_states"].grad
        return found

    oracle = grads(copy.deepcopy(unet).double(), _double(inputs))
    baseline = grads(unet, inputs)
    patch(unet)
    got = grads(unet, inputs)
    assert set(got) == set(oracle) and len(got) > 10
    if kind in COND_CONFIGS:
        assert got["encoder_hidden_states"].abs().sum() > 0
    for name in oracle:
        assert_matches_oracle(got[name], oracle[name], baseline[name], what=f"{kind} gradient of {name}")


def test_training_step_through_patched_unet_updates_parameters():
    unet, inputs = _cond_unet("sd-tiny"), _cond_inputs()
    unet.train()
    patch(unet)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    target = torch.randn_like(inputs["sample"])
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(_run(unet, inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_cfg_sampling_runs_on_patched_unet_and_matches_unpatched():
    unet, inputs = _cond_unet("sd-tiny"), _cond_inputs(batch=1)
    cond, uncond = inputs["encoder_hidden_states"], torch.zeros_like(inputs["encoder_hidden_states"])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))

    def run(model):
        sampler = make_sampler("ddim")
        return sample(model, sampler, latents * sampler.init_noise_sigma, cond, 4, guidance_scale=3.0,
                      negative_encoder_hidden_states=uncond, progress=False)

    with torch.no_grad():
        expected = run(unet)
        patch(unet)
        got = run(unet)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [torch.nn.Linear(2, 2), "unet", None], ids=["linear", "str", "none"])
def test_patch_rejects_what_is_not_a_unet(bad):
    with pytest.raises(TypeError, match="unet: expected a diffusers UNet2DConditionModel or UNet2DModel"):
        patch(bad)
    with pytest.raises(TypeError, match="unet:"):
        unpatch(bad)


def test_unpatch_of_an_unpatched_unet_says_so():
    with pytest.raises(ValueError, match="unet: not patched"):
        unpatch(_unet2d("unet2d-tiny"))


def test_encoder_attention_mask_reaches_genai_fast_attention():
    """diffusers turns encoder_attention_mask [B, L] into an additive bias per head; masked tokens must
    not matter, and the patched output must still match."""
    unet, inputs = _cond_unet("linear-proj-upcast"), _cond_inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    masked = {**inputs, "encoder_attention_mask": mask}
    scrambled = {**masked, "encoder_hidden_states": torch.where(mask[:, :, None], inputs["encoder_hidden_states"],
                                                                 torch.randn_like(inputs["encoder_hidden_states"]))}
    oracle_model = copy.deepcopy(unet).double()
    with torch.no_grad():
        oracle = _run(oracle_model, _double(masked))
        baseline = _run(unet, masked)
        patch(unet)
        out = _run(unet, masked)
        out_scrambled = _run(unet, scrambled)
    assert_matches_oracle(out, oracle, baseline, what="patched U-Net with encoder_attention_mask")
    torch.testing.assert_close(out_scrambled, out, rtol=1e-5, atol=1e-5)


def test_patched_geglu_runs_genai_fast_and_defers_extra_arguments_to_diffusers():
    """The feed-forward's GEGLU goes through genai_fast.geglu; a call with diffusers' deprecated extra
    arguments takes diffusers' own forward (which warns about them) and gives the same values."""
    from diffusers.models.activations import GEGLU

    from genai_fast.backends.dispatch import OPS

    unet = _cond_unet("sd-tiny")
    patch(unet)
    geglu = next(m for m in unet.modules() if isinstance(m, GEGLU))
    x = torch.randn(2, 5, geglu.proj.in_features)
    with torch.no_grad():
        OPS["geglu"].last_backend = None
        fused = geglu(x)
        assert OPS["geglu"].last_backend is not None
        with pytest.warns(FutureWarning):
            deferred = geglu(x, 1.0)
    torch.testing.assert_close(fused, deferred, rtol=2e-6, atol=2e-6)
    unpatch(unet)
    assert "forward" not in geglu.__dict__


def _block_and_inputs() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from diffusers.models.attention import BasicTransformerBlock

    unet = _cond_unet("sd-tiny")
    patch(unet)
    block = next(m for m in unet.modules() if type(m) is BasicTransformerBlock)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 6, block.norm1.normalized_shape[0], generator=g)
    context = torch.randn(2, 5, block.attn2.to_k.in_features, generator=g)
    return block, hidden, context


def test_direct_transformer_block_matches_diffusers_forward():
    """The direct BasicTransformerBlock forward against diffusers' own forward of the same block (which runs
    the genai_fast processor): the same ops in the same order, so the same values, under autograd too."""
    block, hidden, context = _block_and_inputs()
    assert "forward" in block.__dict__
    diffusers_forward = type(block).forward
    with torch.no_grad():
        torch.testing.assert_close(block(hidden, encoder_hidden_states=context),
                                   diffusers_forward(block, hidden, encoder_hidden_states=context),
                                   rtol=1e-6, atol=1e-6)
    ctx = context.clone().requires_grad_(True)
    block(hidden, encoder_hidden_states=ctx).square().sum().backward()
    direct_grad, ctx.grad = ctx.grad, None
    diffusers_forward(block, hidden, encoder_hidden_states=ctx).square().sum().backward()
    torch.testing.assert_close(direct_grad, ctx.grad, rtol=1e-5, atol=1e-6)


def test_direct_transformer_block_defers_to_diffusers(monkeypatch):
    """Masks, extra attention arguments, feed-forward chunking, a processor swapped after patching and active
    dropout in training each take diffusers' own forward; a plain call does not."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.attention_processor import AttnProcessor2_0

    block, hidden, context = _block_and_inputs()
    calls = []
    original = BasicTransformerBlock.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BasicTransformerBlock, "forward", counted)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        block(hidden, encoder_hidden_states=context)
        assert not calls
        block(hidden, encoder_hidden_states=context, encoder_attention_mask=mask)
        block(hidden, encoder_hidden_states=context, cross_attention_kwargs={"unused": 1})
        assert len(calls) == 2
        block.set_chunk_feed_forward(2, 1)
        block(hidden, encoder_hidden_states=context)
        block.set_chunk_feed_forward(None, 0)
        assert len(calls) == 3
        processor = block.attn1.processor
        block.attn1.set_processor(AttnProcessor2_0())
        block(hidden, encoder_hidden_states=context)
        block.attn1.set_processor(processor)
        assert len(calls) == 4
        block.train()
        block(hidden, encoder_hidden_states=context)  # the tiny config's dropouts are 0: still direct
        assert len(calls) == 4
        block.attn1.to_out[1].p = 0.1
        block(hidden, encoder_hidden_states=context)
        assert len(calls) == 5


# ---------------------------------------------------------------- cuda_graph=True (the eager paths on a CPU)


def test_graphed_forward_runs_eagerly_off_the_gpu_and_unpatches():
    """patch(unet, cuda_graph=True) on a CPU: every call takes the patched forward eagerly (no graph is made),
    return_dict is honoured both ways, and unpatch brings back the class's forward."""
    unet, inputs = _model(next(iter(COND_CONFIGS)))
    plain = copy.deepcopy(unet)
    patch(plain)
    report = patch(unet, cuda_graph=True)
    assert report.graphed_forward and "forward replayed from CUDA graphs: True" in str(report)
    with torch.no_grad():
        expected = plain(**inputs).sample
        got = unet(**inputs)
        as_tuple = unet(inputs["sample"], 3, inputs["encoder_hidden_states"], return_dict=False)
        tuple_expected = plain(inputs["sample"], 3, inputs["encoder_hidden_states"], return_dict=False)
    assert type(got).__name__ == "UNet2DConditionOutput"
    torch.testing.assert_close(got.sample, expected, rtol=0, atol=0)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], tuple_expected[0], rtol=0, atol=0)
    assert unet._genai_fast_patch_state.graphed.graphs == {}
    twin = copy.deepcopy(unet)  # e.g. an EMA copy: it must run its own weights
    with torch.no_grad():
        twin.conv_out.bias.add_(1.0)
        torch.testing.assert_close(twin(**inputs).sample, expected + 1.0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(unet(**inputs).sample, expected, rtol=0, atol=0)
    unpatch(unet)
    assert "forward" not in unet.__dict__
    with pytest.raises(TypeError, match=r"^cuda_graph: expected a bool"):
        patch(unet, cuda_graph="yes")


def test_graphed_forward_call_signatures():
    """What keys a graph: tensor shapes and other arguments' values; a number timestep is an input (each step's
    t must not make a new graph); dicts and tuples of tensors are inputs; rebuild puts new tensors in place."""
    from genai_fast.integrations.diffusers_graph import _Unsupported, flatten_call

    def call(t, extra=None, scale=1.0):
        return {"sample": torch.randn(2, 4, 8, 8), "timestep": t, "added_cond_kwargs": extra,
                "cross_attention_kwargs": {"scale": scale}}

    key1, tensors1, rebuild = flatten_call(call(3, {"text_embeds": torch.randn(2, 6)}), torch.device("cpu"))
    key2, tensors2, _ = flatten_call(call(900, {"text_embeds": torch.randn(2, 6)}), torch.device("cpu"))
    assert key1 == key2 and len(tensors1) == 3 and tensors1[1].item() == 3 and tensors2[1].item() == 900
    assert flatten_call(call(3, scale=0.5), torch.device("cpu"))[0] != flatten_call(call(3), torch.device("cpu"))[0]
    assert flatten_call(call(3.0), torch.device("cpu"))[0] != key1  # a float t and an int t: other dtypes
    fresh = tuple(torch.full_like(t, 7.0) for t in tensors1)
    args = rebuild(fresh)
    assert args["sample"] is fresh[0] and args["timestep"] is fresh[1]
    assert args["added_cond_kwargs"]["text_embeds"] is fresh[2] and args["cross_attention_kwargs"] == {"scale": 1.0}
    with pytest.raises(_Unsupported):
        flatten_call({"sample": torch.randn(1), "timestep": 1, "cross_attention_kwargs": {"fn": print}},
                     torch.device("cpu"))


def test_graphed_forward_drops_graphs_of_a_changed_model():
    """A graph replays the modules and weight storage it captured: after peft wraps a projection (LoRA loaded into
    the pipeline), a weight is replaced or the U-Net moves to another dtype, the graphs captured before are dropped
    (replaying them would skip the adapter, or read freed storage). Calls alone, and changes elsewhere that register
    nothing, keep them."""
    unet, _inputs = _model(next(iter(COND_CONFIGS)))
    patch(unet, cuda_graph=True)
    graphed = unet._genai_fast_patch_state.graphed
    for change in (lambda: None, lambda: unet.conv_out.bias.data.add_(1.0)):  # in place: same storage
        graphed.graphs["captured"] = "graph"
        change()
        graphed.drop_stale_graphs()
        assert graphed.graphs == {"captured": "graph"}
    attn = next(m for m in unet.modules() if type(m).__name__ == "Attention")
    for change in (lambda: setattr(attn, "to_q", torch.nn.Sequential(attn.to_q)),  # a module wrapped
                   lambda: setattr(unet.conv_out, "bias", torch.nn.Parameter(unet.conv_out.bias + 1)),
                   lambda: unet.to(torch.float64)):
        graphed.graphs["captured"] = "graph"
        change()
        graphed.drop_stale_graphs()
        assert graphed.graphs == {}
        graphed.graphs["captured"] = "graph"
        graphed.drop_stale_graphs()  # once only: nothing changed since
        assert graphed.graphs == {"captured": "graph"}
