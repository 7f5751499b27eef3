"""The C++ CPU kernels (csrc/cpu/, forced with backend="cpp" or called through their launchers) against the
numerics policy of DESIGN.md section 4, on what the per-op tests leave out: thread counts (1, 2 and 3 threads on
sizes large enough for each kernel to wake them), results bit for bit where a kernel promises it, zero-variance
groups, special values (inf, denormals), views with NaN in the gaps (row gaps, channel gaps of channels_last
tensors), edge sizes around the kernels' vector widths, tiles and tasks, and out buffers pre-filled with NaN."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

import genai_fast
from genai_fast.backends import memory
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.cpp.attention import attention_bwd, attention_fwd, decode_attention_fwd
from genai_fast.backends.cpp.geglu import geglu_fwd
from genai_fast.backends.cpp.gguf_linear import gguf_dequantize_cpp, gguf_linear_fwd
from genai_fast.backends.cpp.guided_update import guided_update_fwd
from genai_fast.backends.cpp.linear import skinny_linear_fwd
from genai_fast.backends.cpp.rms_norm import rms_norm_fwd
from genai_fast.ops.gguf_linear import BLOCK_FORMATS
from genai_fast.testing import assert_matches_oracle

_REASONS = backend_unavailable_reasons("cpp")
pytestmark = pytest.mark.skipif(bool(_REASONS), reason="; ".join(_REASONS) or "cpp available")

THREADS = (1, 2, 3)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count (the launchers without a num_threads argument use it) set to `count`."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def nan_padded(shape: tuple[int, ...], extra_last: int = 5, extra_rows: int = 2) -> torch.Tensor:
    """randn of `shape` as a view into a NaN-filled buffer with `extra_last` more columns and `extra_rows` more
    rows: a kernel reading past a row or past the last one turns its output into NaN."""
    *lead, rows, cols = shape
    buffer = torch.full((*lead, rows + extra_rows, cols + extra_last), float("nan"))
    view = buffer[..., :rows, :cols]
    view.copy_(torch.randn(shape))
    return view


def channel_gap_view(shape: tuple[int, int, int, int], extra_channels: int = 7) -> torch.Tensor:
    """randn [N, C, H, W] as a channels_last view of a NaN-filled channels_last buffer with more channels: the
    pixels' channel rows have NaN gaps between them."""
    N, C, H, W = shape
    buffer = torch.full((N, C + extra_channels, H, W), float("nan")).contiguous(memory_format=torch.channels_last)
    view = buffer[:, :C]
    view.copy_(torch.randn(shape))
    return view


def agree_across_threads(run: Callable[[int], torch.Tensor], bitwise: bool, oracle: torch.Tensor,
                         baseline: torch.Tensor, what: str) -> None:
    """run(threads) for 1, 2 and 3 threads, each under NaN poisoning: every result within the tolerance rule,
    and equal bit for bit to the one-thread result where the kernel promises it."""
    results = []
    for threads in THREADS:
        with memory.poison_outputs():
            results.append(run(threads))
    for threads, out in zip(THREADS, results, strict=True):
        assert_matches_oracle(out, oracle, baseline, what=f"{what} on {threads} threads")
        if bitwise:
            assert torch.equal(out, results[0]), f"{what}: {threads} threads differ from one thread"


# ---- GroupNorm: zero-variance groups (the statistics must recover the exact mean)


def _zero_variance_input(value: float) -> torch.Tensor:
    """[2, 16, 9, 11] with 4 groups of 4 channels: one group holding `value` everywhere, the others random."""
    x = torch.randn(2, 16, 9, 11)
    x[1, 4:8] = value
    return x


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("value", [0.1, 3.7, 100.3, -1000.1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_group_norm_zero_variance_groups(layout, value, activation):
    """A group of one repeated value has that value as mean and variance 0, so its output is act(bias) whatever
    the mean. The kernel's statistics in fp32 lanes missed the mean by ulps (channels_last: several, from long
    fp32 sums per channel), which rsqrt(eps) (316 here) amplified to several times the error of torch's own
    fp32 GroupNorm; corrected two-pass statistics keep it within the rule."""
    x = _zero_variance_input(value)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16), torch.randn(16)
    with memory.poison_outputs():
        out = genai_fast.group_norm(x, 4, weight, bias, eps=1e-5, activation=activation, backend="cpp")
    oracle = F.group_norm(x.double(), 4, weight.double(), bias.double(), 1e-5)
    baseline = F.group_norm(x, 4, weight, bias, 1e-5)  # torch's fused fp32 GroupNorm: the same computation
    if activation == "silu":
        oracle, baseline = F.silu(oracle), F.silu(baseline)
    assert_matches_oracle(out, oracle, baseline, what=f"group_norm[cpp] {layout} group of {value}")


# ---- thread counts: 1, 2 and 3 threads on sizes past each kernel's threshold for waking threads


def _gguf_blocks(N: int, K: int, block_type: str) -> torch.Tensor:
    """Random [N, K / 32 * block bytes] blocks with finite fp16 scales (and Q4_1 minimums) of either sign."""
    fmt = BLOCK_FORMATS[block_type]
    raw = torch.randint(0, 256, (N, K // 32, fmt.block_bytes), dtype=torch.uint8)
    raw[..., 0:2] = (torch.randn(N, K // 32, 1) * 0.02).half().view(torch.uint8)
    if block_type == "Q4_1":
        raw[..., 2:4] = (torch.randn(N, K // 32, 1) * 0.05 - 0.1).half().view(torch.uint8)
    return raw.reshape(N, -1)


def _rms_norm_case():
    x, w = nan_padded((200, 1000)), torch.randn(1000)  # 200 x 1000 values: 3 workers at 64K each
    return (lambda t: rms_norm_fwd(x, w, 1e-6, num_threads=t), True,
            genai_fast.rms_norm_reference(x.double(), w.double(), 1e-6), genai_fast.rms_norm_reference(x, w, 1e-6))


def _geglu_case():
    x = nan_padded((64, 800)) * 3  # 64 x 400 outputs: 3 workers at 8K each, tasks of 10 rows
    return (lambda t: geglu_fwd(x, "tanh", num_threads=t), True, genai_fast.geglu_reference(x.double(), "tanh"),
            genai_fast.geglu_reference(x, "tanh"))


def _linear_case():
    x, w, b = nan_padded((9, 577)), torch.randn(400, 577), torch.randn(400)  # 9 rows: passes of 8 and 1
    return (lambda t: skinny_linear_fwd(x, w, b, num_threads=t), True, F.linear(x.double(), w.double(), b.double()),
            F.linear(x, w, b))


def _gguf_linear_case():
    blocks, x = _gguf_blocks(311, 1024, "Q4_1"), nan_padded((5, 1024))  # 199 KB of blocks: 3 workers
    code = BLOCK_FORMATS["Q4_1"].code
    w = gguf_dequantize_cpp(blocks, code, 1024)
    return (lambda t: gguf_linear_fwd(x, blocks, code, None, num_threads=t), True, F.linear(x.double(), w.double()),
            F.linear(x, w))


def _group_norm_case(layout: str):
    def case():
        x = torch.randn(2, 32, 64, 97) * 2 + 0.5  # 397K values: 3 workers at 64K each
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(32), torch.randn(32)

        def run(t):
            with torch_threads(t):
                return genai_fast.group_norm(x, 8, w, b, activation="silu", backend="cpp")

        # Chunks and (n, group) tasks do not depend on the thread count, and partials merge in a fixed order.
        return (run, True, F.silu(F.group_norm(x.double(), 8, w.double(), b.double())),
                F.silu(F.group_norm(x, 8, w, b)))
    return case


def _guided_update_case():
    shape, coefficients = (1, 4, 224, 220), (14.7, -14.6, 0.93, 0.41, 0.2, -0.37, 0.05)  # 197K: 3 workers
    x, previous, noise = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    model_output = torch.randn(2, *shape[1:])

    def run(t):
        out, x0 = torch.full(shape, float("nan")), torch.full(shape, float("nan"))  # out buffers poisoned
        guided_update_fwd(x, model_output, previous, noise, out, x0, True, 7.5, coefficients, 1.0, num_threads=t)
        return torch.cat([out, x0])

    wide = [t.double() for t in (x, model_output, previous, noise)]
    oracle = genai_fast.guided_update_reference(*wide[:2], coefficients, 7.5, *wide[2:], 1.0)
    baseline = genai_fast.guided_update_reference(x, model_output, coefficients, 7.5, previous, noise, 1.0)
    return run, True, torch.cat(oracle), torch.cat(baseline)


def _winograd_case():
    x = torch.randn(2, 17, 33, 31).contiguous(memory_format=torch.channels_last)  # 544 tiles of 17 channels
    w, b = torch.randn(19, 17, 3, 3) * 0.2, torch.randn(19)

    def run(t):
        with torch_threads(t):
            return genai_fast.conv2d(x, w, b, padding=1, activation="silu", backend="cpp")

    # The 16 products are torch.bmm's (its own summation per thread count): the rule only.
    return (run, False, F.silu(F.conv2d(x.double(), w.double(), b.double(), padding=1)),
            F.silu(F.conv2d(x, w, b, padding=1)))


def _attention_case(streamed: bool):
    def case():
        q, k, v = nan_padded((1, 2, 129, 17)), nan_padded((1, 1, 257, 17)), nan_padded((1, 1, 257, 15))
        leaves = [t.double() for t in (q, k, v)]
        oracle = genai_fast.scaled_dot_product_attention_reference(*leaves, is_causal=True, scale=0.3,
                                                                    enable_gqa=True)
        baseline = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), is_causal=True,
                                                  scale=0.3, enable_gqa=True)
        return (lambda t: attention_fwd(q, k, v, 0.3, True, num_threads=t, streamed=streamed)[0], False, oracle,
                baseline)
    return case


def _decode_case():
    # One sequence and K/V head, 1500 positions: split into chunks whose count follows the thread count.
    lengths, S_max = [1500, 3], 1504
    k_cache, v_cache = (torch.full((2, 1, S_max, 128), float("nan")) for _ in range(2))
    for b, n in enumerate(lengths):
        k_cache[b, :, :n], v_cache[b, :, :n] = torch.randn(1, n, 128), torch.randn(1, n, 128)
    q, seqlens = torch.randn(2, 5, 1, 128), torch.tensor(lengths, dtype=torch.int32)
    oracle = genai_fast.attention_with_kvcache_reference(q.double(), k_cache.double(), v_cache.double(), seqlens)
    baseline = genai_fast.attention_with_kvcache_reference(q, k_cache.clone(), v_cache.clone(), seqlens)
    return (lambda t: decode_attention_fwd(q, k_cache, v_cache, lengths, 128 ** -0.5, False, num_threads=t),
            False, oracle, baseline)


def _attention_backward_case():
    # One (sequence, K/V head) pair over 3 key blocks: shares of blocks per thread, their dQ partials summed.
    q, k, v = torch.randn(1, 2, 33, 17), torch.randn(1, 1, 130, 17), torch.randn(1, 1, 130, 15)
    grad = torch.randn(1, 2, 33, 15)
    out, lse = attention_fwd(q, k, v, 0.3, True)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = genai_fast.scaled_dot_product_attention_reference(*leaves, is_causal=True, scale=0.3, enable_gqa=True)
    oracle = torch.autograd.grad(ref, leaves, grad.double())
    base_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    base = F.scaled_dot_product_attention(*base_leaves, is_causal=True, scale=0.3, enable_gqa=True)
    baseline = torch.autograd.grad(base, base_leaves, grad)
    flat = (lambda ts: torch.cat([t.reshape(-1) for t in ts]))
    return (lambda t: flat(attention_bwd(grad, q, k, v, out, lse, 0.3, True, num_threads=t)), False, flat(oracle),
            flat(baseline))


THREAD_CASES = {
    "rms_norm": _rms_norm_case, "geglu": _geglu_case, "linear": _linear_case, "gguf_linear": _gguf_linear_case,
    "group_norm-contiguous": _group_norm_case("contiguous"),
    "group_norm-channels_last": _group_norm_case("channels_last"), "guided_update": _guided_update_case,
    "winograd": _winograd_case, "attention-short": _attention_case(False), "attention-streamed": _attention_case(True),
    "attention_with_kvcache": _decode_case, "attention-backward": _attention_backward_case,
}


@pytest.mark.parametrize("kernel", THREAD_CASES.keys())
def test_results_agree_across_thread_counts(kernel):
    """1, 2 and 3 threads: each within the tolerance rule (NaN-poisoned outputs, NaN past rows where the launcher
    reads rows in place), and bit for bit where the kernel splits work without splitting a sum."""
    run, bitwise, oracle, baseline = THREAD_CASES[kernel]()
    agree_across_threads(run, bitwise, oracle, baseline, kernel)


# ---- edge sizes around vector widths (16), register blocks, tasks and chunks; rows read in place between NaN


@pytest.mark.parametrize("shape", [(8, 15, 47), (9, 16, 48), (16, 17, 49), (4, 31, 97), (1, 1, 1), (5, 33, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_linear_edge_sizes(shape):
    """Rows 8 / 9 / 16 (one or two passes), K around 16 (the scalar tail), N around the 48-row tasks and the
    4- and 3-row blocks."""
    M, K, N = shape
    x, w, b = nan_padded((M, K)), torch.randn(N, K), torch.randn(N)
    with memory.poison_outputs():
        out = genai_fast.linear(x, w, b, backend="cpp")
    assert_matches_oracle(out, F.linear(x.double(), w.double(), b.double()), F.linear(x, w, b), what=f"linear {shape}")


@pytest.mark.parametrize("block_type", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("shape", [(1, 32, 47), (5, 96, 49), (8, 64, 3), (9, 32, 97), (16, 32, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gguf_linear_edge_sizes(shape, block_type):
    """Rows 1 to 16 (passes of 8, blocks of 4 or 2 weight rows and single rows), N around the 48-row tasks."""
    M, K, N = shape
    blocks, code = _gguf_blocks(N, K, block_type), BLOCK_FORMATS[block_type].code
    w, x = gguf_dequantize_cpp(blocks, code, K), nan_padded((M, K))
    with memory.poison_outputs():
        out = genai_fast.gguf_linear(x, blocks, block_type, backend="cpp")
    assert_matches_oracle(out, F.linear(x.double(), w.double()), F.linear(x, w), what=f"gguf_linear {shape}")


@pytest.mark.parametrize("shape", [(17, 15), (16, 16), (33, 17), (1, 31), (48, 33)],
                         ids=lambda s: "x".join(map(str, s)))
def test_rms_norm_edge_sizes(shape):
    """D around 16 (the scalar tail of the squares), rows around the 16-row tasks."""
    x, w = nan_padded(shape) * 3, torch.randn(shape[1])
    with memory.poison_outputs():
        out = genai_fast.rms_norm(x, w, 1e-6, backend="cpp")
    assert_matches_oracle(out, genai_fast.rms_norm_reference(x.double(), w.double(), 1e-6),
                          genai_fast.rms_norm_reference(x, w, 1e-6), what=f"rms_norm {shape}")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(3, 15), (2, 16), (5, 17), (3, 4097)], ids=lambda s: "x".join(map(str, s)))
def test_geglu_edge_sizes(shape, approximate):
    """H around 16 (one zero-padded tail vector) and past 4096 (one row per task)."""
    R, H = shape
    x = nan_padded((R, 2 * H)) * 4
    with memory.poison_outputs():
        out = genai_fast.geglu(x, approximate, backend="cpp")
    assert_matches_oracle(out, genai_fast.geglu_reference(x.double(), approximate),
                          genai_fast.geglu_reference(x, approximate), what=f"geglu {shape} {approximate}")


# (shape, groups, layout): channels_last chunks hold 32768 // C rows (C=17: 1927, C=16: 2048), so S just at and
# past a chunk, C off the 16-channel vectors; channels-first blocks of Cg * S around the 64-value loop.
GROUP_NORM_EDGES = {
    "cl-c17-s1927-g17": ((1, 17, 41, 47), 17, "channels_last"),
    "cl-c17-s1928-g1": ((2, 17, 1, 1928), 1, "channels_last"),
    "cl-c16-s2049-g4": ((1, 16, 1, 2049), 4, "channels_last"),
    "cl-c1-s5": ((3, 1, 1, 5), 1, "channels_last"),
    "cf-block63": ((2, 3, 3, 7), 1, "contiguous"),
    "cf-block65": ((1, 5, 13, 1), 5, "contiguous"),
    "cf-two-values": ((1, 2, 1, 1), 1, "contiguous"),
}


@pytest.mark.parametrize("case", GROUP_NORM_EDGES.keys())
def test_group_norm_edge_sizes(case):
    shape, groups, layout = GROUP_NORM_EDGES[case]
    x = torch.randn(shape) * 2 + 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(shape[1]), torch.randn(shape[1])
    with memory.poison_outputs():
        out = genai_fast.group_norm(x, groups, w, b, backend="cpp")
    assert_matches_oracle(out, F.group_norm(x.double(), groups, w.double(), b.double()),
                          F.group_norm(x, groups, w, b), what=f"group_norm {case}")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (1, 15, 2, 1, 17), (3, 16, 1, 5, 16), (1, 17, 3, 2, 15)],
                         ids=lambda s: "n{}-c{}-h{}-w{}-to{}".format(*s))
def test_winograd_edge_sizes(shape):
    """One pixel, H or W of 1 and 2 (padding and the dropped outputs of a half tile), channels around 16."""
    N, C, H, W, C_out = shape
    x = torch.randn(N, C, H, W).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C_out, C, 3, 3) * 0.3, torch.randn(N, C_out)  # a per-sample bias
    with memory.poison_outputs():
        out = genai_fast.conv2d(x, w, b, padding=1, backend="cpp")
    bias = b[:, :, None, None]
    assert_matches_oracle(out, F.conv2d(x.double(), w.double(), padding=1) + bias.double(),
                          F.conv2d(x, w, padding=1) + bias, what=f"winograd {shape}")


# ---- channel gaps: channels_last views whose pixels' channels sit between NaN


def test_group_norm_channel_gap_view():
    x, w, b = channel_gap_view((2, 24, 9, 11)), torch.randn(24), torch.randn(24)
    with memory.poison_outputs():
        out = genai_fast.group_norm(x, 4, w, b, activation="silu", backend="cpp")
    assert_matches_oracle(out, F.silu(F.group_norm(x.double(), 4, w.double(), b.double())),
                          F.silu(F.group_norm(x, 4, w, b)), what="group_norm channel gaps")


def test_winograd_residual_with_channel_gaps():
    x = torch.randn(2, 12, 7, 9).contiguous(memory_format=torch.channels_last)
    w, residual = torch.randn(20, 12, 3, 3) * 0.3, channel_gap_view((2, 20, 7, 9))
    with memory.poison_outputs():
        out = genai_fast.conv2d(x, w, None, padding=1, residual=residual, output_scale=0.5, backend="cpp")
    want = (F.conv2d(x.double(), w.double(), padding=1) + residual.double()) * 0.5
    assert_matches_oracle(out, want, (F.conv2d(x, w, padding=1) + residual) * 0.5, what="winograd residual gaps")


def test_guided_update_channel_gap_views():
    coefficients = (14.7, -14.6, 0.93, 0.41, 0.2, -0.37, 0.05)
    x, model_output = channel_gap_view((2, 4, 5, 9)), channel_gap_view((4, 4, 5, 9))
    previous, noise = channel_gap_view((2, 4, 5, 9)), channel_gap_view((2, 4, 5, 9))
    with memory.poison_outputs():
        out, x0 = genai_fast.guided_update(x, model_output, coefficients, 5.0, previous, noise, 2.0, return_x0=True,
                                           backend="cpp")
    wide = [t.double() for t in (x, model_output, previous, noise)]
    want, want_x0 = genai_fast.guided_update_reference(*wide[:2], coefficients, 5.0, *wide[2:], 2.0)
    base, base_x0 = genai_fast.guided_update_reference(x, model_output, coefficients, 5.0, previous, noise, 2.0)
    assert_matches_oracle(out, want, base, what="guided_update channel gaps: out")
    assert_matches_oracle(x0, want_x0, base_x0, what="guided_update channel gaps: x0")


def test_guided_update_fills_out_buffers_past_a_chunk():
    """The launcher writes into the caller's out and x0_out: NaN-filled first, every element must be written
    (16384-value chunks, a 7-value tail vector)."""
    n = 16384 + 23
    x, model_output = torch.randn(1, n), torch.randn(1, n)
    out, x0 = torch.full((1, n), float("nan")), torch.full((1, n), float("nan"))
    coefficients = (1.5, -0.5, 0.9, 0.1, 0.2, 0.0, 0.0)
    guided_update_fwd(x, model_output, None, None, out, x0, False, 1.0, coefficients, float("inf"), num_threads=2)
    want, want_x0 = genai_fast.guided_update_reference(x.double(), model_output.double(), coefficients)
    base, base_x0 = genai_fast.guided_update_reference(x, model_output, coefficients)
    assert_matches_oracle(out, want, base, what="guided_update out buffer")
    assert_matches_oracle(x0, want_x0, base_x0, what="guided_update x0 buffer")


# ---- special values: infinities, denormals, zero rows


def test_rms_norm_special_rows_as_torch():
    """An infinite value makes its row NaN (inf * rsqrt(inf) = inf * 0), as the reference's; denormal rows,
    rows whose squares overflow fp32 and zero rows give what torch's fp32 formula gives."""
    rows = torch.tensor([[float("inf"), 1.0, 2.0], [1e-40, 2e-40, -1e-40], [0.0, 0.0, 0.0], [3e38, 3e38, 1.0],
                         [5.0, 5.0, 5.0], [-float("inf"), 0.0, 1.0]])
    x = torch.cat([rows, torch.randn(6, 14)], dim=1)  # 17 values: a vector and a scalar tail
    x[:, 15] = x[:, 0]  # the special values in the tail too
    out = genai_fast.rms_norm(x, None, 1e-6, backend="cpp")
    torch.testing.assert_close(out, genai_fast.rms_norm_reference(x, None, 1e-6), equal_nan=True, rtol=2e-6,
                               atol=1e-44)


def test_linear_non_finite_inputs_as_torch():
    """Infinities and NaN in x reach the outputs as in F.linear (a zero weight times inf is NaN)."""
    x, w = torch.randn(3, 40), torch.randn(7, 40)
    x[1, 5], x[2, 33], w[2, 5] = float("inf"), float("nan"), 0.0
    out, want = genai_fast.linear(x, w, backend="cpp"), F.linear(x, w)
    assert torch.equal(out.isnan(), want.isnan()) and torch.equal(out.isinf(), want.isinf())
    assert torch.equal(out[out.isinf()], want[want.isinf()])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_group_norm_inf_and_denormals(layout):
    """An infinite value makes exactly its group NaN, as torch's; a denormal group stays within the rule."""
    x = torch.randn(2, 8, 5, 3)
    x[0, 1, 2, 2] = float("inf")
    x[1, 4:] = torch.randn(4, 5, 3) * 1e-39
    xs = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    w, b = torch.randn(8), torch.randn(8)
    with memory.poison_outputs():
        out = genai_fast.group_norm(xs, 2, w, b, backend="cpp")
    want = F.group_norm(x, 2, w, b)
    assert torch.equal(out.isnan(), want.isnan()) and out[0, :4].isnan().all()
    assert_matches_oracle(out[1], F.group_norm(x.double(), 2, w.double(), b.double())[1], want[1],
                          what=f"group_norm {layout} denormal group")


def test_geglu_denormal_values():
    x = torch.randn(4, 2 * 21) * 1e-39
    with memory.poison_outputs():
        out = genai_fast.geglu(x, "none", backend="cpp")
    assert_matches_oracle(out, genai_fast.geglu_reference(x.double()), genai_fast.geglu_reference(x),
                          what="geglu denormals")


# ---- word2vec steps: dims around the 16- and 4-float loops, 5 contexts (groups of 4), rows never referenced NaN


@pytest.mark.parametrize("mode", ["sg_shared", "sg_pair", "cbow"])
@pytest.mark.parametrize("dim", [15, 16, 20])
def test_word2vec_step_edge_dims(mode, dim):
    from genai_fast.ops.word2vec_ops import cbow_step, sgns_step, word2vec_step_reference

    vocab, batch, contexts, negative = 30, 6, 5, 4
    syn0, syn1 = torch.randn(vocab, dim) * 0.3, torch.randn(vocab, dim) * 0.3
    syn0[vocab - 1], syn1[vocab - 1] = float("nan"), float("nan")  # no id refers to the last row
    centers = torch.randint(0, vocab - 1, (batch,))
    ctx = torch.randint(0, vocab - 1, (batch, contexts))
    ctx[0, 3:] = -1
    negs = torch.randint(0, vocab - 1, (batch, contexts, negative) if mode == "sg_pair" else (batch, negative))
    ref0, ref1 = syn0.double(), syn1.double()
    word2vec_step_reference(ref0, ref1, centers, ctx, negs, 0.05, mode, True)
    base0, base1 = syn0.clone(), syn1.clone()
    word2vec_step_reference(base0, base1, centers, ctx, negs, 0.05, mode, True)
    out0, out1 = syn0.clone(), syn1.clone()
    if mode == "cbow":
        cbow_step(out0, out1, centers, ctx, negs, 0.05, cbow_mean=True, backend="cpp")
    else:
        sgns_step(out0, out1, centers, ctx, negs, 0.05, shared_negatives=mode == "sg_shared", backend="cpp")
    assert out0[-1].isnan().all() and out1[-1].isnan().all()
    assert_matches_oracle(out0[:-1], ref0[:-1], base0[:-1], what=f"{mode} d{dim} syn0")
    assert_matches_oracle(out1[:-1], ref1[:-1], base1[:-1], what=f"{mode} d{dim} syn1neg")
