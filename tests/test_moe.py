"""genai_fast.moe_experts: the Triton kernels (interpreter on CPU, the GPU in tests/test_gpu_moe.py) and the torch
backend against the float64 reference (tolerance rule, NaN poisoning, edge shapes), the reference against a dense
per-token loop and against transformers' experts module, dispatch, bad input, autograd, opcheck and
torch.compile."""

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS, BackendNotSupportedError
from genai_fast.ops.moe import MAX_KERNEL_PAIRS, resolve_moe_experts
from genai_fast.testing import assert_matches_oracle

ACTS = ["silu", "gelu", "gelu_tanh"]
# (rows, H, I, E, k): a decode step, a batch, prime sizes off every tile, one expert of one, k = E.
SHAPES = {"decode-1x48-i40-e8k2": (1, 48, 40, 8, 2), "batch-5x64-i96-e6k3": (5, 64, 96, 6, 3),
          "prime-3x53-i37-e5k2": (3, 53, 37, 5, 2), "single-1x1-i1-e1k1": (1, 1, 1, 1, 1),
          "all-experts-4x16-i8-e3k3": (4, 16, 8, 3, 3)}


def _require(backend):
    reasons = backend_unavailable_reasons(backend)
    if reasons:
        pytest.skip("; ".join(reasons))


def _inputs(rows, H, inter, E, k, dtype=torch.float32, seed=0):
    """Random tokens, experts and a top-k routing of random router logits (distinct ids per token)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, H, generator=g).to(dtype)
    gate_up = (torch.randn(E, 2 * inter, H, generator=g) / H ** 0.5).to(dtype)
    down = (torch.randn(E, H, inter, generator=g) / inter ** 0.5).to(dtype)
    weights, ids = torch.randn(rows, E, generator=g).softmax(-1).topk(k, dim=-1)
    return x, gate_up, down, ids, weights


def _dense(x, gate_up, down, ids, weights, act):
    """Each token, each choice: the expert's gated MLP in float64, one at a time."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    for r in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[r, j])
            gate, up = (gate_up[e].double() @ x[r].double()).chunk(2)
            out[r] += float(weights[r, j]) * (down[e].double() @ (genai_fast.ops.moe.ACTIVATIONS[act](gate) * up))
    return out


def _check(backend, args, act, what, device="cpu", biases=None, limit=7.0):
    x, gate_up, down, ids, weights = args
    moved = [t.to(device) for t in args]
    extras = {} if biases is None else {"gate_up_bias": biases[0], "down_bias": biases[1]}
    with memory.poison_outputs():
        out = genai_fast.moe_experts(*moved, act, backend=backend, limit=limit,
                                     **{k: v.to(device) for k, v in extras.items()})
    assert OPS["moe_experts"].last_backend == backend
    assert out.shape == x.shape and out.dtype == x.dtype
    b64 = (None, None) if biases is None else (biases[0].double(), biases[1].double())
    oracle = genai_fast.moe_experts_reference(x.double(), gate_up.double(), down.double(), ids, weights.double(), act,
                                              *b64, limit=limit)
    baseline = genai_fast.moe_experts_reference(x, gate_up, down, ids, weights, act, *(biases or (None, None)),
                                                limit=limit)
    assert_matches_oracle(out.cpu(), oracle, baseline, what=what)
    return out


def _biases(E, H, inter, dtype=torch.float32):
    g = torch.Generator().manual_seed(9)
    return (torch.randn(E, 2 * inter, generator=g) * 0.5).to(dtype), (torch.randn(E, H, generator=g) * 0.5).to(dtype)


@pytest.mark.parametrize("act", ACTS)
def test_reference_is_the_dense_sum(act):
    args = _inputs(*SHAPES["batch-5x64-i96-e6k3"], dtype=torch.float64)
    torch.testing.assert_close(genai_fast.moe_experts_reference(*args, act), _dense(*args, act), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("case", SHAPES.keys())
def test_triton_matches_reference(case):
    _require("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for act in ACTS:
        _check("triton", _inputs(*SHAPES[case]), act, f"moe_experts[triton] {case} {act}", device)


@pytest.mark.parametrize("case", ["decode-1x48-i40-e8k2", "prime-3x53-i37-e5k2", "single-1x1-i1-e1k1"])
def test_triton_gpt_oss_experts_with_biases(case):
    """GPT-OSS's experts: biases on both projections and the clamped GLU (limit 0.8, so that the clamps bite on
    these values), and biases with a plain SwiGLU."""
    _require("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, H, inter, E, k = SHAPES[case]
    args = _inputs(rows, H, inter, E, k)
    biases = _biases(E, H, inter)
    _check("triton", args, "gpt_oss", f"moe_experts[triton] {case} gpt_oss", device, biases, limit=0.8)
    _check("triton", args, "silu", f"moe_experts[triton] {case} silu + biases", device, biases)


def test_gpt_oss_glu_is_transformers_formula():
    """The "gpt_oss" activation against transformers' GptOssExperts on its own layout (interleaved, transposed)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    config = transformers.GptOssConfig(hidden_size=16, intermediate_size=12, num_local_experts=3, swiglu_limit=0.9)
    module = GptOssExperts(config)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    x, _, _, ids, weights = _inputs(4, 16, 12, 3, 2)
    w, b = module.gate_up_proj.detach(), module.gate_up_proj_bias.detach()
    gate_up = torch.cat([w[:, :, 0::2], w[:, :, 1::2]], dim=2).transpose(1, 2).contiguous()
    gate_up_bias = torch.cat([b[:, 0::2], b[:, 1::2]], dim=1)
    down = module.down_proj.detach().transpose(1, 2).contiguous()
    with torch.no_grad():
        want = module(x, ids, weights)
        got = genai_fast.moe_experts(x, gate_up, down, ids, weights, "gpt_oss", gate_up_bias=gate_up_bias,
                                     down_bias=module.down_proj_bias.detach(), alpha=config.swiglu_alpha,
                                     limit=config.swiglu_limit)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_triton_half_precision_and_fp32_weights():
    """fp16 experts with Mixtral's fp32 routing weights and with weights in the model's dtype."""
    _require("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, gate_up, down, ids, weights = _inputs(3, 40, 24, 4, 2, torch.float16)
    _check("triton", (x, gate_up, down, ids, weights), "silu", "fp16, fp32 weights", device)
    _check("triton", (x, gate_up, down, ids, weights.half()), "silu", "fp16, fp16 weights", device)


def test_triton_reads_strided_tokens_and_int32_ids():
    """Token rows at a padded stride with NaN between them (an out-of-row read shows), transposed-then-copied
    weights, int32 ids, leading batch dimensions."""
    _require("triton")
    x, gate_up, down, ids, weights = _inputs(6, 24, 16, 5, 2)
    padded = torch.full((6, 31), float("nan"))
    padded[:, :24] = x
    _check("triton", (padded[:, :24], gate_up, down, ids.int(), weights), "silu", "strided rows, int32 ids")
    _check("triton", (x.view(2, 3, 24), gate_up, down, ids.view(2, 3, 2), weights.view(2, 3, 2)), "gelu",
           "leading dims")
    _check("triton", (x, gate_up.transpose(1, 2).contiguous().transpose(1, 2), down, ids, weights), "silu",
           "column-major gate_up")


def test_repeated_experts_add_up():
    """A token sent twice to one expert gets both shares, in every backend."""
    x, gate_up, down, _, _ = _inputs(2, 16, 8, 3, 2)
    ids = torch.tensor([[1, 1], [0, 2]])
    weights = torch.tensor([[0.25, 0.5], [0.6, 0.4]])
    want = _dense(x, gate_up, down, ids, weights, "silu")
    torch.testing.assert_close(genai_fast.moe_experts(x, gate_up, down, ids, weights, backend="torch").double(), want,
                               rtol=1e-5, atol=1e-6)
    if not backend_unavailable_reasons("triton"):
        torch.testing.assert_close(genai_fast.moe_experts(x, gate_up, down, ids, weights, backend="triton").double(),
                                   want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 7], ids=["one-token", "seven-tokens"])
def test_matches_transformers_mixtral_experts(rows):
    """Bitwise: the reference runs transformers' products on the same rows in the same order (one token: its own
    path without the grouping's index tensors)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    config = transformers.MixtralConfig(hidden_size=32, intermediate_size=24, num_local_experts=4)
    module = MixtralExperts(config)
    torch.nn.init.normal_(module.gate_up_proj, std=0.2)
    torch.nn.init.normal_(module.down_proj, std=0.2)
    x, _, _, ids, weights = _inputs(rows, 32, 24, 4, 2)
    with torch.no_grad():
        want = module(x, ids, weights)
        got = genai_fast.moe_experts(x, module.gate_up_proj, module.down_proj, ids, weights, backend="torch")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dispatch_takes_the_reference_on_a_cpu():
    args = _inputs(2, 16, 8, 3, 2)
    genai_fast.moe_experts(*args)
    assert OPS["moe_experts"].last_backend == "torch"  # the interpreter only runs when forced
    assert resolve_moe_experts(torch.device("cpu"), torch.float32) is None
    empty = genai_fast.moe_experts(torch.randn(0, 16), *args[1:3], torch.zeros(0, 2, dtype=torch.long),
                                   torch.zeros(0, 2))
    assert empty.shape == (0, 16)


def test_forced_triton_names_what_it_cannot_run():
    _require("triton")
    x, gate_up, down, _, _ = _inputs(1, 8, 4, 2, 1)
    with pytest.raises(BackendNotSupportedError, match="float64"):
        genai_fast.moe_experts(x.double(), gate_up.double(), down.double(), torch.zeros(1, 1, dtype=torch.long),
                               torch.ones(1, 1, dtype=torch.float64), backend="triton")
    rows = MAX_KERNEL_PAIRS + 1
    with pytest.raises(BackendNotSupportedError, match="token-expert pairs"):
        genai_fast.moe_experts(torch.zeros(rows, 8), gate_up, down, torch.zeros(rows, 1, dtype=torch.long),
                               torch.ones(rows, 1), backend="triton")


def _bad_cases():
    x, gate_up, down, ids, weights = _inputs(3, 8, 4, 2, 1)
    return [
        ("x", ([1.0], gate_up, down, ids, weights), TypeError),
        ("x", (x.int(), gate_up, down, ids, weights), TypeError),
        ("gate_up", (x, gate_up[:, :3], down, ids, weights), ValueError),
        ("gate_up", (x, gate_up[..., :5], down, ids, weights), ValueError),
        ("down", (x, gate_up, down[:, :, :3], ids, weights), ValueError),
        ("down", (x, gate_up, down.double(), ids, weights), ValueError),
        ("topk_ids", (x, gate_up, down, ids.float(), weights), TypeError),
        ("topk_ids", (x, gate_up, down, ids[:2], weights), ValueError),
        ("topk_ids", (x, gate_up, down, ids + 2, weights), ValueError),
        ("topk_ids", (x, gate_up, down, ids - 1, weights), ValueError),
        ("topk_weights", (x, gate_up, down, ids, weights[:, :0]), ValueError),
        ("topk_weights", (x, gate_up, down, ids, weights.long()), ValueError),
    ]


@pytest.mark.parametrize("kwargs,name", [
    ({"gate_up_bias": torch.zeros(2, 8)}, "gate_up_bias"),
    ({"gate_up_bias": torch.zeros(2, 7), "down_bias": torch.zeros(2, 8)}, "gate_up_bias"),
    ({"gate_up_bias": torch.zeros(2, 8), "down_bias": torch.zeros(2, 8, dtype=torch.float64)}, "down_bias"),
    ({"limit": 0.0}, "limit"),
    ({"alpha": "1.7"}, "alpha"),
    ({"limit": float("nan")}, "limit"),
], ids=["one-bias", "gate-up-shape", "down-dtype", "limit-zero", "alpha-str", "limit-nan"])
def test_bad_biases_and_constants_name_the_argument(kwargs, name):
    args = _inputs(3, 8, 4, 2, 1)
    with pytest.raises((ValueError, TypeError), match=f"^{name}:"):
        genai_fast.moe_experts(*args, "gpt_oss", **kwargs)


@pytest.mark.parametrize("name,args,error", _bad_cases(), ids=[f"{c[0]}-{i}" for i, c in enumerate(_bad_cases())])
def test_bad_input_names_the_argument(name, args, error):
    with pytest.raises(error, match=f"^{name}:"):
        genai_fast.moe_experts(*args)


def test_bad_activation_and_backend():
    args = _inputs(1, 8, 4, 2, 1)
    with pytest.raises(ValueError, match=r"^activation:"):
        genai_fast.moe_experts(*args, "relu")
    with pytest.raises(ValueError, match=r"^backend:"):
        genai_fast.moe_experts(*args, backend="cudnn")


def test_gradients_match_the_reference():
    x, gate_up, down, ids, weights = (t.double() if t.is_floating_point() else t for t in _inputs(3, 6, 4, 3, 2))
    leaves = [t.clone().requires_grad_() for t in (x, gate_up, down, weights)]

    def op(x, gate_up, down, weights):
        return torch.ops.genai_fast.moe_experts(x, gate_up, down, ids, weights, "silu", "")

    assert torch.autograd.gradcheck(op, leaves)
    biases = [t.double().requires_grad_() for t in _biases(3, 6, 4)]

    def op_with_biases(x, gate_up, down, weights, gate_up_bias, down_bias):
        return torch.ops.genai_fast.moe_experts(x, gate_up, down, ids, weights, "gpt_oss", "", gate_up_bias,
                                                down_bias, 1.702, 0.7)

    assert torch.autograd.gradcheck(op_with_biases, [*leaves, *biases])
    # And the public function takes the custom op (and its autograd) when an input requires grad.
    out = genai_fast.moe_experts(leaves[0], *leaves[1:3], ids, leaves[3])
    out.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)


def test_opcheck_and_compile():
    args = _inputs(3, 16, 8, 4, 2)
    torch.library.opcheck(torch.ops.genai_fast.moe_experts, (*args, "silu", ""))
    torch.library.opcheck(torch.ops.genai_fast.moe_experts, (*args, "gpt_oss", "", *_biases(4, 16, 8), 1.702, 7.0))

    def layer(x, gate_up, down, router):
        weights, ids = F.linear(x, router).softmax(-1).topk(2, dim=-1)
        return genai_fast.moe_experts(x, gate_up, down, ids, weights)

    router = torch.randn(4, 16)
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(*args[:3], router), layer(*args[:3], router))


def test_gathered_experts_equal_the_grouped_loop_with_biases_and_a_custom_glu():
    """The device-side path (no host read: the GPU decode step where the kernels do not apply) against the
    reference's grouped loop, with GPT-OSS-style biases and a clamped GLU and with the plain SwiGLU."""
    from genai_fast.ops.moe import gated, gathered_experts, grouped_experts

    x, gate_up, down, ids, weights = (t.double() if t.is_floating_point() else t for t in _inputs(5, 24, 16, 6, 3))
    biases = (torch.randn(6, 32, dtype=torch.float64), torch.randn(6, 24, dtype=torch.float64))

    def clamped(h):
        gate, up = h.chunk(2, dim=-1)
        gate = gate.clamp(max=0.5)
        return (up.clamp(-0.5, 0.5) + 1) * gate * torch.sigmoid(1.702 * gate)

    for glu, b in ((gated(F.silu), None), (clamped, biases)):
        want = grouped_experts(x, gate_up, down, ids, weights, glu, biases=b)
        torch.testing.assert_close(gathered_experts(x, gate_up, down, ids, weights, glu, b), want)
    assert not torch.allclose(grouped_experts(x, gate_up, down, ids, weights, clamped, biases=biases),
                              grouped_experts(x, gate_up, down, ids, weights, gated(F.silu)))
