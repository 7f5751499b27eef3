"""genai_fast's ops and patches inside torch.autocast regions behave as the torch ops they replace.

torch's autocast casts conv2d's, linear's and SDPA's inputs to the region's lower precision (and GroupNorm's to
float32 under CUDA autocast); a model run under autocast hands a bf16 activation to a layer with fp32 weights.
Each public op casts as torch does (genai_fast/ops/autocast.py): same output dtype as torch's op, values within
the tolerance rule against the float64 reference, gradients back to fp32 parameters in fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.ops.autocast import FLOAT32_ON_CUDA, LOWER_PRECISION, UNCHANGED, autocast_dtype
from genai_fast.testing import assert_matches_oracle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOW = [torch.bfloat16, torch.float16]


def _randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _double(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.double() for t in tensors]


def _check(out: torch.Tensor, torch_out: torch.Tensor, oracle: torch.Tensor, what: str) -> None:
    """Same dtype as torch's op under the same autocast region, and within the tolerance rule."""
    assert out.dtype == torch_out.dtype, f"{what}: dtype {out.dtype}, torch's op under autocast gives {torch_out.dtype}"
    assert_matches_oracle(out, oracle, torch_out, what=what)


# ---------------------------------------------------------------- the lower-precision ops


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mask", [None, "additive", "bool"])
def test_attention_casts_like_torch_sdpa(dtype, mask):
    q, k, v = _randn(2, 3, 9, 16, seed=1), _randn(2, 3, 11, 16, seed=2), _randn(2, 3, 11, 16, seed=3)
    attn_mask = {None: None, "additive": _randn(9, 11, seed=4), "bool": _randn(9, 11, seed=4) > -1.0}[mask]
    # The inputs as autocast casts them (the mask too when it is a float): the oracle computes from those.
    cast = [t.to(dtype) if t is not None and t.is_floating_point() else t for t in (q, k, v, attn_mask)]
    oracle = genai_fast.scaled_dot_product_attention_reference(*_double(*cast[:3]), cast[3] if mask == "bool"
                                                               else _double(cast[3])[0])
    with torch.autocast("cpu", dtype=dtype):
        out = genai_fast.scaled_dot_product_attention(q, k, v, attn_mask)
        torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask)
    _check(out, torch_out, oracle, f"attention under {dtype} autocast, mask {mask}")


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("residual_dtype", ["low", torch.float32])
def test_conv2d_casts_like_torch_conv(dtype, residual_dtype):
    # What a U-Net under autocast passes: a low-precision activation, fp32 module weights, and a residual that
    # is usually low precision too (the block's input came from a conv) but may be fp32.
    x = _randn(2, 8, 7, 7, dtype=dtype, seed=1)
    weight, bias = _randn(16, 8, 3, 3, seed=2) * 0.2, _randn(16, seed=3)
    residual = _randn(2, 16, 7, 7, dtype=dtype if residual_dtype == "low" else residual_dtype, seed=4)
    xc, wc, bc = x.to(dtype), weight.to(dtype), bias.to(dtype)
    oracle = (F.silu(F.conv2d(*_double(xc, wc, bc), padding=1)) + residual.double()) * 0.5
    with torch.autocast("cpu", dtype=dtype):
        out = genai_fast.conv2d(x, weight, bias, padding=1, activation="silu", residual=residual, output_scale=0.5)
        torch_out = (F.silu(F.conv2d(x, weight, bias, padding=1)) + residual) * 0.5
    _check(out, torch_out, oracle, f"conv2d under {dtype} autocast, residual {residual.dtype}")


@pytest.mark.parametrize("dtype", LOW)
def test_linear_casts_like_torch_linear(dtype):
    x, weight, bias = _randn(5, 24, seed=1), _randn(40, 24, seed=2), _randn(40, seed=3)
    oracle = F.linear(*_double(x.to(dtype), weight.to(dtype), bias.to(dtype)))
    with torch.autocast("cpu", dtype=dtype):
        out = genai_fast.linear(x, weight, bias)
        torch_out = F.linear(x, weight, bias)
    _check(out, torch_out, oracle, f"linear under {dtype} autocast")


@pytest.mark.parametrize("dtype", LOW)
def test_group_norm_keeps_cpu_autocast_semantics(dtype):
    """CPU autocast leaves GroupNorm alone: a low-precision x with fp32 affine parameters gives x's dtype."""
    x, weight, bias = _randn(2, 16, 5, 5, dtype=dtype, seed=1), _randn(16, seed=2), _randn(16, seed=3)
    oracle = F.silu(F.group_norm(x.double(), 4, weight.double(), bias.double()))
    with torch.autocast("cpu", dtype=dtype):
        out = genai_fast.group_norm(x, 4, weight, bias, activation="silu")
        torch_out = F.silu(F.group_norm(x, 4, weight, bias))
    _check(out, torch_out, oracle, f"group_norm+silu under {dtype} autocast")


@pytest.mark.parametrize("op", ["conv2d", "linear", "attention"])
def test_float64_inputs_are_not_cast(op):
    """autocast leaves float64 alone, and so do the ops: a float64 call stays the float64 oracle."""
    a, b = _randn(2, 4, 6, 4, seed=1).double(), _randn(4, 4, 3, 3, seed=2).double()
    calls = {"conv2d": (lambda: genai_fast.conv2d(a, b), lambda: F.conv2d(a, b)),
             "linear": (lambda: genai_fast.linear(a, b[:, :, 0, 0]), lambda: F.linear(a, b[:, :, 0, 0])),
             "attention": (lambda: genai_fast.scaled_dot_product_attention(a, a, a),
                           lambda: F.scaled_dot_product_attention(a, a, a))}
    ours, theirs = calls[op]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = ours(), theirs()
    assert out.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- ops autocast leaves alone


def test_kvcache_attention_and_gguf_linear_ignore_autocast():
    """Ops outside autocast's lists compute in their inputs' precision whichever backend runs: the KV cache's
    dtype and the GGUF blocks fix it (their torch references would otherwise be cast inside the region)."""
    q, cache_k, cache_v = _randn(1, 4, 1, 8, seed=1), _randn(1, 2, 12, 8, seed=2), _randn(1, 2, 12, 8, seed=3)
    lengths = torch.tensor([9])
    x = _randn(3, 64, seed=4)
    # Q8_0 blocks of 34 bytes: an fp16 scale, then 32 int8 quants.
    blocks = torch.randint(-20, 20, (8, 2, 34), dtype=torch.int8, generator=torch.Generator().manual_seed(5))
    blocks = blocks.view(torch.uint8)
    blocks[..., :2] = torch.full((8, 2, 1), 0.01, dtype=torch.float16).view(torch.uint8)
    blocks = blocks.reshape(8, 68)
    expected_attention = genai_fast.attention_with_kvcache(q, cache_k, cache_v, lengths, backend="torch")
    expected_linear = genai_fast.gguf_linear(x, blocks, "Q8_0", backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for backend in ("torch", "cpp"):
            attention = genai_fast.attention_with_kvcache(q, cache_k, cache_v, lengths, backend=backend)
            linear = genai_fast.gguf_linear(x, blocks, "Q8_0", backend=backend)
            assert attention.dtype == linear.dtype == torch.float32, backend
            torch.testing.assert_close(attention, expected_attention, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(linear, expected_linear, rtol=1e-5, atol=1e-5)


def test_policies_follow_torch_lists():
    """conv2d, linear and SDPA take the region's dtype on every device; GroupNorm float32 on CUDA only (CUDA
    autocast's fp32 list; CPU autocast has it in none)."""
    with torch.autocast("cpu", dtype=torch.float16):
        assert autocast_dtype(LOWER_PRECISION, "cpu") == torch.float16
    assert autocast_dtype(FLOAT32_ON_CUDA, "cuda") == torch.float32
    assert autocast_dtype(FLOAT32_ON_CUDA, "cpu") is None
    assert autocast_dtype(UNCHANGED, "cuda") is None


# ---------------------------------------------------------------- gradients and torch.compile


def test_gradients_reach_fp32_parameters_as_under_torch_autocast():
    x = _randn(2, 8, 6, 6, seed=1).requires_grad_()
    weight = (_randn(8, 8, 3, 3, seed=2) * 0.2).requires_grad_()
    gn_weight, gn_bias = _randn(8, seed=3).requires_grad_(), _randn(8, seed=4).requires_grad_()

    def loss(conv, norm):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = conv(x, weight)
            return norm(h, gn_weight, gn_bias).float().square().sum()

    ours = torch.autograd.grad(loss(lambda a, w: genai_fast.conv2d(a, w, padding=1),
                                    lambda h, w, b: genai_fast.group_norm(h, 2, w, b, activation="silu")),
                               (x, weight, gn_weight, gn_bias))
    theirs = torch.autograd.grad(loss(lambda a, w: F.conv2d(a, w, padding=1),
                                      lambda h, w, b: F.silu(F.group_norm(h, 2, w, b))),
                                 (x, weight, gn_weight, gn_bias))
    for name, got, expected in zip(("x", "weight", "gn weight", "gn bias"), ours, theirs, strict=True):
        assert got.dtype == expected.dtype == torch.float32, name
        # Both are bf16 computations of the same graph: they agree to a few bf16 roundings of the gradient.
        scale = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= 0.05 * scale, name


def test_compiled_function_follows_autocast():
    x, weight = _randn(2, 8, 6, 6, dtype=torch.bfloat16, seed=1), _randn(8, 8, 3, 3, seed=2) * 0.2
    q = _randn(2, 2, 5, 8, seed=3)

    def step(x, weight, q):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = genai_fast.conv2d(x, weight, padding=1)
            return h, genai_fast.scaled_dot_product_attention(q, q, q)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    for got, expected in zip(compiled(x, weight, q), step(x, weight, q), strict=True):
        assert got.dtype == expected.dtype == torch.bfloat16
        # Traced calls may take another backend than eager ones (each computes from the same bf16 inputs).
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- patched models


diffusers = pytest.importorskip("diffusers")


def _tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval()
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    return unet


def _unet_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"sample": torch.randn(2, 4, 8, 8, generator=g), "timestep": torch.tensor([3, 700]),
            "encoder_hidden_states": torch.randn(2, 5, 32, generator=g)}


@pytest.mark.parametrize("dtype", LOW)
def test_patched_unet_under_autocast_matches_unpatched(dtype):
    """A patched U-Net under autocast (as diffusers' training scripts run it through accelerate) gives what the
    unpatched one gives under the same region: same dtype, within the tolerance rule of the fp64 model."""
    from genai_fast.integrations.diffusers import patch

    unet, inputs = _tiny_unet(), _unet_inputs()
    with torch.no_grad():
        oracle = copy.deepcopy(unet).double()(**{k: v.double() if v.is_floating_point() else v
                                                 for k, v in inputs.items()}).sample
        with torch.autocast("cpu", dtype=dtype):
            baseline = unet(**inputs).sample
            patch(unet)
            out = unet(**inputs).sample
            again = unet(**inputs).sample  # the second call replays the first one's plans
    assert out.dtype == baseline.dtype
    assert_matches_oracle(out, oracle, baseline, what=f"patched U-Net under {dtype} autocast")
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_patched_unet_under_autocast_gives_encoder_gradients():
    """Textual inversion under mixed precision: the gradient with respect to the text embeddings flows through the
    patched U-Net and matches the unpatched one's."""
    from genai_fast.integrations.diffusers import patch

    unet, inputs = _tiny_unet(), _unet_inputs()
    twin = copy.deepcopy(unet)
    patch(twin)
    grads = []
    for model in (unet, twin):
        states = inputs["encoder_hidden_states"].clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(inputs["sample"], inputs["timestep"], states).sample
        (grad,) = torch.autograd.grad(out.float().square().mean(), states)
        grads.append(grad)
    expected, got = grads
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - expected).norm() <= 0.05 * expected.norm()


transformers = pytest.importorskip("transformers")


def test_patched_llama_under_autocast_matches_unpatched():
    from genai_fast.integrations.transformers import patch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: the mask must reach the patched attention, cast as torch casts it
    with torch.no_grad():
        oracle = copy.deepcopy(model).double()(ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            baseline = model(ids, attention_mask=mask).logits
            patch(model)
            out = model(ids, attention_mask=mask).logits
    assert out.dtype == baseline.dtype
    valid = mask.bool()
    assert_matches_oracle(out[valid], oracle[valid], baseline[valid], what="patched Llama under bf16 autocast")


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_cuda_autocast_casts_group_norm_to_float32_and_conv_to_half():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: CUDA autocast's lists apply to CUDA tensors only")
    x = _randn(2, 32, 16, 16, dtype=torch.float16, seed=1).cuda()
    weight, bias = _randn(32, seed=2).cuda(), _randn(32, seed=3).cuda()
    conv_weight = (_randn(32, 32, 3, 3, seed=4) * 0.1).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        normed, torch_normed = genai_fast.group_norm(x, 8, weight, bias), F.group_norm(x, 8, weight, bias)
        conv, torch_conv = genai_fast.conv2d(normed, conv_weight, padding=1), F.conv2d(torch_normed, conv_weight,
                                                                                        padding=1)
    assert normed.dtype == torch_normed.dtype == torch.float32
    assert conv.dtype == torch_conv.dtype == torch.float16
    torch.testing.assert_close(normed, torch_normed, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv, torch_conv, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_patched_unet_under_cuda_autocast_matches_unpatched():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from genai_fast.integrations.diffusers import patch

    unet, inputs = _tiny_unet().cuda(), {k: v.cuda() for k, v in _unet_inputs().items()}
    with torch.no_grad():
        oracle = copy.deepcopy(unet).double()(**{k: v.double() if v.is_floating_point() else v
                                                 for k, v in inputs.items()}).sample
        with torch.autocast("cuda", dtype=torch.float16):
            baseline = unet(**inputs).sample
            patch(unet)
            out = unet(**inputs).sample
    assert out.dtype == baseline.dtype
    assert_matches_oracle(out, oracle, baseline, what="patched U-Net under CUDA fp16 autocast")


@pytest.mark.gpu
def test_graphed_unet_runs_eagerly_under_cuda_autocast():
    """A graph captured outside autocast must not replay inside a region (its work is fp32): patch(cuda_graph=True)
    runs the autocast call eagerly, in the region's dtype, and keeps replaying its graph outside."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: CUDA graphs")
    from genai_fast.integrations.diffusers import patch

    unet, inputs = _tiny_unet().cuda(), {k: v.cuda() for k, v in _unet_inputs().items()}
    eager = copy.deepcopy(unet)
    patch(eager)
    patch(unet, cuda_graph=True)
    with torch.no_grad():
        first = unet(**inputs).sample  # captured (fp32)
        with torch.autocast("cuda", dtype=torch.float16):
            mixed, expected = unet(**inputs).sample, eager(**inputs).sample
        again = unet(**inputs).sample
    assert first.dtype == again.dtype == torch.float32
    assert mixed.dtype == expected.dtype == torch.float16
    torch.testing.assert_close(mixed, expected, rtol=2e-3, atol=2e-3)  # both eager; timed choices may differ
    torch.testing.assert_close(again, first, rtol=0, atol=0)
