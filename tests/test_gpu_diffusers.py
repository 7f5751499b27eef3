"""genai_fast.integrations.diffusers on a GPU: a patched fp16 UNet2DConditionModel (and UNet2DModel)
against the unpatched one, with the float64 CPU model as the oracle (DESIGN.md tolerance rule), and the
gradient with respect to encoder_hidden_states (textual inversion) in fp16."""

from __future__ import annotations

import copy

import pytest
import torch

from genai_fast.backends.dispatch import OPS
from genai_fast.integrations.diffusers import patch
from genai_fast.testing import assert_matches_oracle

pytestmark = pytest.mark.gpu
diffusers = pytest.importorskip("diffusers")

# SD-like widths (multiples of 16, as the Triton kernels tile them) at a small latent.
COND = {"block_out_channels": (64, 128), "layers_per_block": 1, "sample_size": 16, "in_channels": 4,
        "out_channels": 4, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 64, "norm_num_groups": 32,
        "attention_head_dim": 8}
UNET2D = {"block_out_channels": (64, 128), "layers_per_block": 1, "sample_size": 16, "in_channels": 3,
          "out_channels": 3, "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
          "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 32, "attention_head_dim": 16}


def _models(kind: str):
    torch.manual_seed(0)
    if kind == "cond":
        unet = diffusers.UNet2DConditionModel(**COND).eval()
        inputs = {"sample": torch.randn(2, 4, 16, 16), "timestep": torch.tensor([10, 800]),
                  "encoder_hidden_states": torch.randn(2, 77, 64)}
    else:
        unet = diffusers.UNet2DModel(**UNET2D).eval()
        inputs = {"sample": torch.randn(2, 3, 16, 16), "timestep": torch.tensor([10, 800])}
    return unet, inputs


def _on(inputs, device, dtype):
    return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}


@pytest.mark.parametrize("kind", ["cond", "unet2d"])
def test_patched_fp16_unet_matches_unpatched(kind):
    unet, inputs = _models(kind)
    with torch.no_grad():
        oracle = copy.deepcopy(unet).double()(**_on(inputs, "cpu", torch.float64)).sample
        half = unet.to("cuda", torch.float16)
        baseline = half(**_on(inputs, "cuda", torch.float16)).sample
        patch(half)
        out = half(**_on(inputs, "cuda", torch.float16)).sample
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches_oracle(out, oracle, baseline, what=f"patched fp16 {kind} U-Net on CUDA")
    assert OPS["group_norm"].last_backend in ("triton", "cuda")


def test_encoder_hidden_states_gradient_fp16():
    unet, inputs = _models("cond")
    weights = torch.randn(inputs["sample"].shape)

    def grad(model, device, dtype):
        x = _on(inputs, device, dtype)
        x["encoder_hidden_states"].requires_grad_(True)
        (model(**x).sample * weights.to(device, dtype)).sum().backward()
        return x["encoder_hidden_states"].grad

    oracle = grad(copy.deepcopy(unet).double(), "cpu", torch.float64)
    half = unet.to("cuda", torch.float16)
    baseline = grad(half, "cuda", torch.float16)
    patch(half)
    got = grad(half, "cuda", torch.float16)
    assert torch.isfinite(got).all()
    assert_matches_oracle(got, oracle, baseline, what="d out / d encoder_hidden_states, fp16 CUDA")


def test_graphed_call_replays_clones_and_falls_back():
    from genai_fast.diffusion import GraphedCall

    w = torch.randn(64, device="cuda")
    graphed = GraphedCall(lambda x: torch.sin(x) * w + 1)
    first_in, second_in = torch.randn(8, 64, device="cuda"), torch.randn(8, 64, device="cuda")
    first = graphed(first_in)
    second = graphed(second_in)
    torch.testing.assert_close(first, torch.sin(first_in) * w + 1)  # a clone: the second replay left it alone
    torch.testing.assert_close(second, torch.sin(second_in) * w + 1)
    assert graphed.replays == 2
    other = torch.randn(3, 64, device="cuda")
    torch.testing.assert_close(graphed(other), torch.sin(other) * w + 1)  # other shape: eager
    assert graphed.replays == 2


def _patched_fp16_sampling_inputs(seed: int):
    """The patched fp16 conditional U-Net on CUDA, initial latents [2, 4, 16, 16] and cond/uncond contexts."""
    unet, _ = _models("cond")
    unet = unet.to("cuda", torch.float16)
    patch(unet)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 16, generator=g).to("cuda", torch.float16)
    cond, uncond = (torch.randn(2, 77, 64, generator=g).to("cuda", torch.float16) for _ in range(2))
    return unet, latents, cond, uncond


def test_sample_with_cuda_graph_matches_eager_sampling():
    """A patched fp16 U-Net, DPM-Solver++ (it keeps earlier outputs: the replay's output must be a copy)
    with guidance: the graph-replayed loop gives the eager loop's latents."""
    from genai_fast.diffusion import make_sampler, sample

    unet, latents, cond, uncond = _patched_fp16_sampling_inputs(seed=3)
    runs = []
    for graph in (False, True):
        with torch.no_grad():
            runs.append(sample(unet, make_sampler("dpm++"), latents, cond, 8, guidance_scale=3.0,
                               negative_encoder_hidden_states=uncond, progress=False, cuda_graph=graph))
    assert torch.isfinite(runs[1]).all()
    torch.testing.assert_close(runs[1], runs[0], rtol=2e-3, atol=2e-3)


def test_sample_captures_by_default_and_falls_back_when_the_capture_is_refused(monkeypatch):
    """cuda_graph="auto" (the default) replays a graph for CUDA latents under no_grad; a U-Net that reads a
    value back to the host (which a capture cannot hold) gets a warning and the eager loop's result."""
    import genai_fast.diffusion.sampling as sampling
    from genai_fast.diffusion import GraphedCall, make_sampler, sample

    made = []

    class Recording(GraphedCall):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(sampling, "GraphedCall", Recording)
    unet, latents, cond, uncond = _patched_fp16_sampling_inputs(seed=4)
    kwargs = dict(guidance_scale=3.0, negative_encoder_hidden_states=uncond, progress=False)
    with torch.no_grad():
        eager = sample(unet, make_sampler("dpm++"), latents, cond, 8, cuda_graph=False, **kwargs)
        auto = sample(unet, make_sampler("dpm++"), latents, cond, 8, **kwargs)
    # Every call replays, the first right after its capture.
    assert len(made) == 1 and made[0].failure is None and made[0].replays == 8
    torch.testing.assert_close(auto, eager, rtol=2e-3, atol=2e-3)

    def syncing_unet(x, t, encoder_hidden_states):
        scale = 1.0 + 0.0 * float(x.float().abs().max())  # a host read: refused while capturing
        return unet(x * scale, t, encoder_hidden_states=encoder_hidden_states)

    with torch.no_grad(), pytest.warns(RuntimeWarning, match="capture was refused"):
        fallback = sample(syncing_unet, make_sampler("dpm++"), latents, cond, 8, **kwargs)
    assert made[-1].failure is not None and made[-1].replays == 0
    torch.testing.assert_close(fallback, eager, rtol=2e-3, atol=2e-3)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # the failed capture's stream is gone
    torch.cuda.synchronize()  # and the device is usable


def test_patched_unet_with_cuda_graph_replays_pipeline_calls():
    """patch(unet, cuda_graph=True) on fp16 CUDA, called as a pipeline calls it (a CUDA 0-dim t per step,
    return_dict=False; then a Python-int t with return_dict=True): the eager patched U-Net's outputs, one graph
    per call signature, replayed at every later step."""
    unet, _ = _models("cond")
    unet = unet.to("cuda", torch.float16)
    eager = copy.deepcopy(unet)
    patch(eager)
    report = patch(unet, cuda_graph=True)
    assert report.graphed_forward
    g = torch.Generator().manual_seed(5)
    context = torch.randn(2, 77, 64, generator=g).to("cuda", torch.float16)
    timesteps = torch.tensor([999, 800, 600, 400, 200, 1], device="cuda")
    with torch.no_grad():
        for t in timesteps:
            x = torch.randn(2, 4, 16, 16, generator=g).to("cuda", torch.float16)
            got = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
            want = eager(x, t, encoder_hidden_states=context, return_dict=False)[0]
            torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
        graphs = unet._genai_fast_patch_state.graphed.graphs
        assert len(graphs) == 1 and next(iter(graphs.values())).replays == len(timesteps)
        for t in (999, 10):
            got = unet(x, t, encoder_hidden_states=context)
            torch.testing.assert_close(got.sample, eager(x, t, encoder_hidden_states=context).sample,
                                       rtol=2e-3, atol=2e-3)
        assert len(graphs) == 2
    x.requires_grad_(True)
    out = unet(x, timesteps[0], encoder_hidden_states=context).sample  # gradients recorded: eager
    out.float().sum().backward()
    assert x.grad is not None and len(graphs) == 2
