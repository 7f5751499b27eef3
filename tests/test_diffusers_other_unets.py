"""genai_fast.integrations.diffusers.patch on U-Net configs outside the Stable
Diffusion family. Skip*Block2D (score-SDE / NCSN++ U-Nets) build their ResnetBlock2Ds with
output_scale_factor=np.sqrt(2.0), a NumPy scalar, which the fused resnet forward used to hand on to
genai_fast.conv2d as its epilogue scale, failing every forward."""

import copy

import pytest
import torch

from genai_fast.integrations.diffusers import patch, unpatch
from genai_fast.testing import assert_matches_oracle

diffusers = pytest.importorskip("diffusers")

# A tiny score-SDE style UNet2DModel: skip blocks, Fourier time embedding, sqrt(2) output scales.
SKIP_UNET = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": (32, 32),
             "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
             "time_embedding_type": "fourier", "down_block_types": ("SkipDownBlock2D", "AttnSkipDownBlock2D"),
             "up_block_types": ("AttnSkipUpBlock2D", "SkipUpBlock2D")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _skip_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**SKIP_UNET).eval()
    with torch.no_grad():  # random GroupNorm affines, so that no term is trivial
        for module in unet.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    return unet


def test_skip_block_unet_patched_output_matches_unpatched():
    unet = _skip_unet()
    assert any(type(m.output_scale_factor).__module__ == "numpy" for m in unet.modules()
               if type(m).__name__ == "ResnetBlock2D")
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    timestep = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        oracle = copy.deepcopy(unet).double()(sample.double(), timestep.double()).sample
        baseline = unet(sample, timestep).sample
        report = patch(unet)
        out = unet(sample, timestep).sample
    assert report.resnets_fused > 0
    assert_matches_oracle(out, oracle, baseline, what="skip-block U-Net patched output")
    unpatch(unet)
    with torch.no_grad():
        assert torch.equal(unet(sample, timestep).sample, baseline)


def test_skip_block_unet_gradients_match_unpatched():
    unet = _skip_unet()
    patched = copy.deepcopy(unet)
    patch(patched)
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    timestep = torch.tensor([0.2, 0.7])
    grads = []
    for model in (unet, patched):
        x = sample.clone().requires_grad_(True)
        model(x, timestep).sample.square().mean().backward()
        grads.append(x.grad)
    scale = float(grads[0].abs().max())
    assert float((grads[1] - grads[0]).abs().max()) <= 1e-4 * scale
