"""The public ops other than attention against torch, as a PyTorch user calls them: second derivatives,
empty dimensions, F.conv2d's padding strings and scalar argument forms, NumPy scalars for the scalar arguments."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genai_fast as gf
from genai_fast import BackendNotSupportedError
from genai_fast.ops.gguf_linear import BLOCK_FORMATS

F64 = torch.float64


def _geglu_torch(x: torch.Tensor) -> torch.Tensor:
    hidden, gate = x.chunk(2, dim=-1)
    return hidden * F.gelu(gate)


# ---------------------------------------------------------------- second derivatives (backward(create_graph=True))

# (name, our call, torch's equivalent, input shapes): each a function of float64 tensors that all require grad.
DOUBLE_BACKWARD_CASES = [
    ("rms_norm", lambda x, w: gf.rms_norm(x, w, 1e-6), lambda x, w: F.rms_norm(x, (8,), w, 1e-6), [(3, 8), (8,)]),
    ("rms_norm_no_weight", lambda x: gf.rms_norm(x), lambda x: F.rms_norm(x, (8,), None, 1e-6), [(3, 8)]),
    ("geglu", lambda x: gf.geglu(x), _geglu_torch, [(3, 8)]),
    ("group_norm", lambda x, w, b: gf.group_norm(x, 3, w, b), lambda x, w, b: F.group_norm(x, 3, w, b),
     [(2, 6, 3, 3), (6,), (6,)]),
    ("group_norm_silu", lambda x, w, b: gf.group_norm(x, 3, w, b, activation="silu"),
     lambda x, w, b: F.silu(F.group_norm(x, 3, w, b)), [(2, 6, 3, 3), (6,), (6,)]),
    ("group_norm_no_affine", lambda x: gf.group_norm(x, 2, activation="silu"),
     lambda x: F.silu(F.group_norm(x, 2)), [(2, 4, 5)]),
]
DOUBLE_BACKWARD_IDS = [case[0] for case in DOUBLE_BACKWARD_CASES]


@pytest.mark.parametrize("name, ours, reference, shapes", DOUBLE_BACKWARD_CASES, ids=DOUBLE_BACKWARD_IDS)
def test_second_derivatives_match_torch(name, ours, reference, shapes):
    """A gradient penalty (the norm of a gradient, differentiated again) through the op equals torch's: the
    first backward under create_graph=True returns differentiable gradients, not constants (which silently
    dropped every second-order term) and not an error."""
    inputs = [torch.randn(shape, dtype=F64) for shape in shapes]
    weights = None

    def penalty_grads(fn):
        nonlocal weights
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        if weights is None:
            weights = torch.randn_like(out)
        grads = torch.autograd.grad((out * weights).sum(), leaves, create_graph=True)
        penalty = sum((g * g).sum() for g in grads)
        return torch.autograd.grad(penalty, leaves, allow_unused=True, materialize_grads=True)

    for got, want in zip(penalty_grads(ours), penalty_grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, ours, reference, shapes", DOUBLE_BACKWARD_CASES, ids=DOUBLE_BACKWARD_IDS)
def test_gradgradcheck(name, ours, reference, shapes):
    inputs = tuple(torch.randn(shape, dtype=F64, requires_grad=True) for shape in shapes)
    assert torch.autograd.gradgradcheck(ours, inputs)


def test_guided_update_second_derivatives():
    coefficients = gf.UpdateCoefficients(0.3, 0.5, 0.9, 0.1, 0.2, 0.4, 0.7)
    x, m, previous, noise = (torch.randn(shape, dtype=F64, requires_grad=True)
                             for shape in ((2, 3, 2), (4, 3, 2), (2, 3, 2), (2, 3, 2)))

    def cubed(x, m, previous, noise):
        out, _ = gf.guided_update(x, m, coefficients, 7.5, previous, noise, return_x0=True)
        return out ** 3

    assert torch.autograd.gradgradcheck(cubed, (x, m, previous, noise))


def test_guided_update_second_derivatives_with_an_input_passed_twice():
    """x also passed as previous_x0: each use keeps its own gradient under create_graph=True."""
    coefficients = gf.UpdateCoefficients(0.3, 0.5, 0.9, 0.1, 0.2, 0.4, 0.0)
    x0, m0 = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)

    def hessian_terms(fn):
        x, m = x0.clone().requires_grad_(), m0.clone().requires_grad_()
        out = fn(x, m, coefficients, None, x)[0]
        grads = torch.autograd.grad((out ** 3).sum(), (x, m), create_graph=True)
        return grads, torch.autograd.grad(sum((g * g).sum() for g in grads), (x, m))

    got, want = hessian_terms(gf.guided_update), hessian_terms(gf.guided_update_reference)
    for a, b in zip([*got[0], *got[1]], [*want[0], *want[1]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- empty dimensions


@pytest.mark.parametrize("x_shape, w_shape", [((1, 32), (0, 32)), ((4, 32), (0, 32)), ((40, 32), (0, 32)),
                                              ((32,), (0, 32)), ((4, 0), (8, 0)), ((2, 3, 0), (5, 0))])
def test_linear_empty_features_like_torch(x_shape, w_shape):
    """N = 0 crashed the automatic choice (the C++ kernel); N = 0 or K = 0 crashed the backward."""
    ours = [torch.randn(x_shape), torch.randn(w_shape), torch.randn(w_shape[0])]
    theirs = [t.clone() for t in ours]
    for t in ours + theirs:
        t.requires_grad_()
    out, want = gf.linear(*ours), F.linear(*theirs)
    assert out.shape == want.shape
    (out * 2).sum().backward()
    (want * 2).sum().backward()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    with torch.no_grad():
        assert gf.linear(*ours).shape == want.shape


def test_linear_forced_cpp_names_the_empty_dimension():
    with pytest.raises(BackendNotSupportedError, match="N = 0"):
        gf.linear(torch.randn(4, 32), torch.randn(0, 32), backend="cpp")
    with pytest.raises(BackendNotSupportedError, match="K = 0") as info:
        gf.linear(torch.randn(4, 0), torch.randn(8, 0), backend="cpp")
    assert "0 rows" not in str(info.value)  # 4 rows: the row count is not numel // K


def _gguf_blocks(block_type: str, n: int, k: int) -> torch.Tensor:
    fmt = BLOCK_FORMATS[block_type]
    blocks = torch.randint(0, 256, (n, k // 32, fmt.block_bytes), dtype=torch.uint8)
    blocks[..., 0:2] = (torch.rand(n, k // 32) * 0.01 + 0.001).half().view(torch.uint8).reshape(n, k // 32, 2)
    if block_type == "Q4_1":
        blocks[..., 2:4] = (torch.randn(n, k // 32) * 0.01).half().view(torch.uint8).reshape(n, k // 32, 2)
    return blocks.reshape(n, -1)


@pytest.mark.parametrize("block_type", sorted(BLOCK_FORMATS))
def test_gguf_dequantize_zero_rows(block_type):
    blocks = _gguf_blocks(block_type, 3, 64)[:0]
    w = gf.gguf_dequantize(blocks, block_type)
    assert w.shape == (0, 64) and w.dtype == torch.float32


@pytest.mark.parametrize("backend", [None, "torch"])
@pytest.mark.parametrize("rows", [3, 20])
@pytest.mark.parametrize("block_type", sorted(BLOCK_FORMATS))
def test_gguf_linear_zero_out_features_like_torch(block_type, rows, backend):
    blocks = _gguf_blocks(block_type, 2, 64)[:0]
    x, bias = torch.randn(rows, 64), torch.randn(0)
    out = gf.gguf_linear(x, blocks, block_type, bias, backend=backend)
    assert out.shape == F.linear(x, torch.empty(0, 64), bias).shape == (rows, 0)


def test_gguf_forced_cpp_names_the_empty_weight_and_counts_rows():
    with pytest.raises(BackendNotSupportedError, match="empty weight") as info:
        gf.gguf_linear(torch.randn(4, 0), torch.empty(8, 0, dtype=torch.uint8), "Q8_0", backend="cpp")
    assert "0 rows" not in str(info.value)
    with pytest.raises(BackendNotSupportedError, match="empty weight"):
        gf.gguf_linear(torch.randn(4, 64), _gguf_blocks("Q8_0", 1, 64)[:0], "Q8_0", backend="cpp")


def test_gguf_dequantize_rejects_a_non_tensor_with_type_error():
    with pytest.raises(TypeError, match=r"blocks: expected a torch\.Tensor"):
        gf.gguf_dequantize(_gguf_blocks("Q8_0", 2, 64).numpy(), "Q8_0")


@pytest.mark.parametrize("shape", [(2, 4, 0, 6), (2, 4, 6, 0)])
def test_conv2d_empty_spatial_size_in_a_batch_raises_like_torch(shape):
    """With padding the output would not be empty; it was returned unwritten (torch refuses the input)."""
    x, w = torch.randn(shape), torch.randn(6, 4, 1, 1)
    with pytest.raises(RuntimeError):
        F.conv2d(x, w, None, 1, 2)
    with pytest.raises(ValueError, match="x: expected non-zero H and W"):
        gf.conv2d(x, w, None, 1, 2)


def test_conv2d_empty_spatial_size_in_an_empty_batch_like_torch():
    x, w = torch.randn(0, 4, 0, 6), torch.randn(6, 4, 1, 1)
    assert gf.conv2d(x, w, None, 1, 2).shape == F.conv2d(x, w, None, 1, 2).shape


# ---------------------------------------------------------------- conv2d: F.conv2d's argument forms


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dilation", [1, 2, (1, 3)])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 2), (4, 3), (1, 2)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_padding_strings_like_torch(padding, kernel, dilation, channels_last):
    x, w, b = torch.randn(2, 4, 9, 8), torch.randn(6, 4, *kernel), torch.randn(6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = F.conv2d(x, w, b, 1, padding, dilation)
    got = gf.conv2d(x, w, b, 1, padding, dilation)
    assert got.shape == want.shape and got.stride() == want.stride()
    torch.testing.assert_close(got, want)


def test_conv2d_same_padding_epilogue_and_gradients():
    x = torch.randn(2, 4, 5, 6, dtype=F64, requires_grad=True)
    w = torch.randn(6, 4, 2, 3, dtype=F64, requires_grad=True)  # even kh: the extra row goes at the bottom
    bias, residual = torch.randn(2, 6, dtype=F64), torch.randn(2, 6, 5, 6, dtype=F64)
    got = gf.conv2d(x, w, bias, padding="same", activation="silu", residual=residual, output_scale=0.5)
    want = (F.silu(F.conv2d(x, w, None, 1, "same") + bias[:, :, None, None]) + residual) * 0.5
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, w), g), torch.autograd.grad(want, (x, w), g), strict=True):
        torch.testing.assert_close(a, b)


def test_conv2d_bad_padding_strings():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match="padding: 'same' is not supported for strided"):
        gf.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding: expected an int, a pair of ints, 'same' or 'valid'"):
        gf.conv2d(x, w, padding="full")


def test_conv2d_one_element_sequences_and_numpy_ints_like_torch():
    x, w = torch.randn(2, 4, 9, 8), torch.randn(6, 4, 3, 3)
    for args in (((2,), [1], (2,)), (np.int64(2), np.int32(1), np.int64(1)), ([1, np.int64(2)], (0, 1), 1)):
        torch.testing.assert_close(gf.conv2d(x, w, None, *args), F.conv2d(x, w, None, *args))
    with pytest.raises(TypeError, match="stride: expected an int or a pair of ints"):
        gf.conv2d(x, w, stride=(1, 2, 3))
    with pytest.raises(TypeError, match="dilation: expected an int or a pair of ints"):
        gf.conv2d(x, w, dilation=True)


# ---------------------------------------------------------------- NumPy scalars for scalar arguments


@pytest.mark.parametrize("requires_grad", [False, True])
def test_group_norm_numpy_scalars(requires_grad):
    x = torch.randn(2, 8, 3, 3, requires_grad=requires_grad)
    w, b = torch.randn(8), torch.randn(8)
    got = gf.group_norm(x, np.int64(4), w, b, np.float32(1e-3), activation="silu")
    torch.testing.assert_close(got, F.silu(F.group_norm(x, 4, w, b, float(np.float32(1e-3)))))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_rms_norm_numpy_eps(requires_grad):
    x, w = torch.randn(3, 16, requires_grad=requires_grad), torch.randn(16)
    torch.testing.assert_close(gf.rms_norm(x, w, np.float32(1e-2)), gf.rms_norm(x, w, float(np.float32(1e-2))))
    with pytest.raises(ValueError, match="eps: expected a number >= 0"):
        gf.rms_norm(x, w, np.float32(-1.0))


def test_guided_update_numpy_scalars():
    x, m = torch.randn(2, 3, 4), torch.randn(4, 3, 4)
    coefficients = [np.float32(0.9), -0.3, 0.8, 0.2, 0.1, 0.0, 0.0]
    got, _ = gf.guided_update(x, m, coefficients, np.float32(7.5), clip=np.float32(1.0))
    want, _ = gf.guided_update_reference(x, m, [float(c) for c in coefficients], 7.5, clip=1.0)
    torch.testing.assert_close(got, want)
