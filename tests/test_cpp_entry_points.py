"""Bad input to the C++ extension genai_fast._C and its launchers (genai_fast/backends/cpp) gets a clear Python
exception, never a crash, a hang or a silently wrong result. The public ops check their inputs first; these tests
call the extension and the launchers directly, as resolve_linear / resolve_gguf_linear / resolve_rms_norm callers
and the ops' fast paths do. Calls that used to kill the process run in a subprocess, so that a regression fails
one test instead of the whole run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from genai_fast.backends.availability import cpp_module

C = cpp_module()[0]
pytestmark = pytest.mark.skipif(C is None, reason="the C++ extension genai_fast._C is not built")

OVERFLOW = "sizes too large (an element count overflows int64)"


def run_isolated(code: str) -> subprocess.CompletedProcess:
    """Run `code` (genai_fast._C imported as C) in a fresh interpreter; a crash shows as a negative return code."""
    prelude = "import numpy as np, torch\nimport genai_fast._C as C\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def assert_raises_isolated(code: str, error: str, message: str) -> None:
    """`code` must raise `error` whose text holds `message`, and the process must survive it."""
    wrapped = f"try:\n{textwrap.indent(textwrap.dedent(code), '    ')}\nexcept {error} as e:\n    print('RAISED', e)\n"
    result = run_isolated(wrapped)
    assert result.returncode == 0, f"the call crashed or raised another error (return code {result.returncode}): " \
                                   f"{result.stderr[-2000:]}"
    assert "RAISED" in result.stdout and message in result.stdout, result.stdout + result.stderr[-2000:]


# ---- sizes whose products wrap around int64: the wrapped count equalled a small element count passed with them,
# the checks passed, and the kernel indexed far past the buffers (a segfault)

OVERFLOW_CASES = {
    # rows * D = 2^64 wraps to the 0 elements passed.
    "rms_norm": ("x", """
        x = torch.ones(16)
        C.rms_norm_forward(x.data_ptr(), 0, 2**32, 0, 0, x.data_ptr(), 0, 2**32, 2**32, 1e-6, 1)"""),
    "geglu": ("x", """
        x = torch.ones(16)
        C.geglu_forward(x.data_ptr(), 0, 2**33, x.data_ptr(), 0, 2**32, 2**32, False, 1)"""),
    # N * K = 2^64 wraps to the 0 weight elements passed.
    "skinny_linear": ("weight", """
        x = torch.ones(16)
        C.skinny_linear_forward(x.data_ptr(), 2**62, 2**62, x.data_ptr(), 0, 0, 0, x.data_ptr(), 4, 1, 2**62, 4, 1)"""),
    # N * (K / 32) * 34 bytes wraps to a small block count.
    "gguf_dequantize": ("blocks", """
        b, N, K = torch.zeros(64, dtype=torch.uint8), 2**5 * 17, 2**59
        C.gguf_dequantize(b.data_ptr(), N * (K // 32) * 34 % 2**64, 2, b.data_ptr(), N * K % 2**64, N, K, 1)"""),
    # B * Hq * Sq * Dv wraps to 0; zero strides keep q, k, v within their 64 elements.
    "attention_forward": ("out", """
        q = torch.ones(64)
        C.attention_forward(q.data_ptr(), 64, [0, 0, 0], q.data_ptr(), 64, [0, 0, 0], q.data_ptr(), 64, [0, 0, 0],
                            q.data_ptr(), 0, 0, 0, 2**62, 1, 1, 1, 1, 1, 4, 1.0, False, 1)"""),
    # (Sq - 1) * stride = 7 * (2^64 + 5) / 7 wraps the mask's span to 5 elements.
    "attention_mask": ("mask", """
        q, m = torch.ones(1, 1, 8, 16), torch.zeros(64)
        C.attention_forward(q.data_ptr(), 128, [128, 128, 16], q.data_ptr(), 128, [128, 128, 16], q.data_ptr(), 128,
                            [128, 128, 16], q.data_ptr(), 128, 0, 0, 1, 1, 1, 8, 8, 16, 16, 1.0, False, 1, -1,
                            m.data_ptr(), 1, [0, 0, (2**64 + 5) // 7, 1], 64)"""),
    "winograd_input_transform": ("winograd: N, H, W, C, C_out", """
        x = torch.ones(64)
        C.winograd_input_transform(x.data_ptr(), 0, x.data_ptr(), 0, 2**32, 2**16, 2**16, 1, 1)"""),
    # vocab_size * dim = 2^64 wraps to the 0 table elements passed.
    "word2vec_step": ("syn0 (vocab_size*dim)", """
        t, ids, loss = np.zeros(64, np.float32), np.zeros(1, np.int32), np.zeros(1)
        C.word2vec_step(t.ctypes.data, 0, t.ctypes.data, 0, 2**4, 2**60, ids.ctypes.data, 1, ids.ctypes.data, 1,
                        ids.ctypes.data, 1, 1, 1, 1, loss.ctypes.data, 1, 0.025, 1, True)"""),
}


@pytest.mark.parametrize("case", sorted(OVERFLOW_CASES))
def test_sizes_that_overflow_int64_raise(case):
    name, code = OVERFLOW_CASES[case]
    assert_raises_isolated(code, "ValueError", f"{name}: {OVERFLOW}")


# ---- group_norm's weight and bias: the extension got no element count for them and read past a short one


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_group_norm_short_weight_or_bias_raises(which):
    from genai_fast.backends.cpp.group_norm import group_norm_fwd

    x = torch.randn(1, 64, 4, 4)
    params = {"weight": torch.ones(64), "bias": torch.zeros(64)}
    params[which] = params[which][:1]
    with pytest.raises(ValueError, match=f"{which}: expected C=64 elements, got 1"):
        group_norm_fwd(x, 8, params["weight"], params["bias"], 1e-5, "none")


def test_group_norm_launcher_matches_torch():
    from genai_fast.backends.cpp.group_norm import group_norm_fwd

    x, w, b = torch.randn(2, 64, 5, 3), torch.randn(64), torch.randn(64)
    expected = torch.nn.functional.group_norm(x.double(), 8, w.double(), b.double(), 1e-5)
    torch.testing.assert_close(group_norm_fwd(x, 8, w, b, 1e-5, "none").double(), expected, atol=1e-5, rtol=1e-5)


def test_group_norm_launcher_rejects_unsupported_dtype():
    from genai_fast.backends.cpp.group_norm import group_norm_fwd

    with pytest.raises(TypeError, match=r"x: expected a float32, float16 or bfloat16 tensor, got torch\.float64"):
        group_norm_fwd(torch.randn(1, 4, 2, 2, dtype=torch.float64), 2, None, None, 1e-5, "none")


# ---- num_threads: only checked to be >= 1; libgomp asked for tens of thousands of threads crashed the process


def test_huge_num_threads_runs_like_one_thread():
    result = run_isolated("""
        N, K = 200_000, 32
        blocks = torch.randint(0, 256, (N, 18), dtype=torch.uint8)
        blocks[:, 1] = 0x3c  # fp16 scales of 1.0 and up (no inf or NaN weights)
        one, many = torch.empty(N * K), torch.empty(N * K)
        C.gguf_dequantize(blocks.data_ptr(), blocks.numel(), 0, one.data_ptr(), one.numel(), N, K, 1)
        C.gguf_dequantize(blocks.data_ptr(), blocks.numel(), 0, many.data_ptr(), many.numel(), N, K, 2**31 - 1)
        print('SAME', torch.equal(one, many))
    """)
    assert result.returncode == 0, f"crashed (return code {result.returncode}): {result.stderr[-2000:]}"
    assert "SAME True" in result.stdout, result.stdout + result.stderr[-2000:]


# ---- launchers: the extension reads bare addresses, so dtype, device and layout are checked before it is called


def test_launchers_reject_a_narrower_dtype_that_would_be_read_past_its_end():
    # fp16 rows read as fp32 run past the buffer: this segfaulted.
    assert_raises_isolated("""
        from genai_fast.backends.cpp.linear import skinny_linear_fwd
        skinny_linear_fwd(torch.randn(16, 1 << 20).half(), torch.randn(1, 1 << 20), None)
    """, "TypeError", "x: expected a torch.float32 CPU tensor, got torch.float16")


DTYPE_CASES = {
    # fp16 read as fp32 ran past the input, and the fp16 output was written as fp32 (a heap corruption abort).
    "rms_norm": "from genai_fast.backends.cpp.rms_norm import rms_norm_fwd as f; f(h, None, 1e-6)",
    "geglu": "from genai_fast.backends.cpp.geglu import geglu_fwd as f; f(h, 'none')",
    "gguf_linear": "from genai_fast.backends.cpp.gguf_linear import gguf_linear_fwd as f; "
                   "f(h[:, :32], torch.zeros(1, 34, dtype=torch.uint8), 2, None)",
    "guided_update": "from genai_fast.backends.cpp.guided_update import guided_update_fwd as f; "
                     "f(h, h, None, None, h, None, False, 1.0, (1, 0, 0, 0, 1, 0, 0), float('inf'))",
    "winograd": "from genai_fast.backends.cpp.winograd import winograd_conv3x3 as f; "
                "f(torch.randn(1, 4, 4, 4).half(), torch.randn(4, 4, 3, 3), None, None, None, 1.0)",
    # float64 read as float32: wrong numbers (decode and the backward also wrote past the output).
    "attention": "from genai_fast.backends.cpp.attention import attention_fwd as f; f(q, q, q, 0.25, False)",
    "decode": "from genai_fast.backends.cpp.attention import decode_attention_fwd as f; f(q, q, q, [4], 0.25, True)",
    "attention_bwd": "from genai_fast.backends.cpp.attention import attention_bwd as f; "
                     "f(q, q, q, q, q, q[..., 0], 0.25, False)",
}


@pytest.mark.parametrize("case", sorted(DTYPE_CASES))
def test_launchers_reject_other_dtypes(case):
    setup = "h = torch.randn(2, 64, dtype=torch.float16)\nq = torch.randn(1, 1, 4, 16, dtype=torch.float64)\n"
    assert_raises_isolated(setup + DTYPE_CASES[case], "TypeError", "expected a torch.float32 CPU tensor")


def test_linear_launchers_reject_strided_weights_and_biases():
    # A transposed weight or a strided bias has the right element count: it was read as if contiguous.
    from genai_fast.backends.cpp.gguf_linear import gguf_linear_fwd
    from genai_fast.backends.cpp.linear import skinny_linear_fwd
    from genai_fast.backends.cpp.rms_norm import rms_norm_fwd

    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="weight: expected a contiguous tensor"):
        skinny_linear_fwd(x, torch.randn(64, 32).t(), None)
    with pytest.raises(ValueError, match="bias: expected a contiguous tensor"):
        skinny_linear_fwd(x, torch.randn(4, 64), torch.randn(8)[::2])
    with pytest.raises(ValueError, match="blocks: expected a contiguous tensor"):
        gguf_linear_fwd(x[:, :32], torch.zeros(8, 68, dtype=torch.uint8)[:, 34:], 2, None)
    with pytest.raises(TypeError, match=r"blocks: expected a torch\.uint8 CPU tensor"):
        gguf_linear_fwd(x[:, :32], torch.zeros(8, 34, dtype=torch.int32), 2, None)
    with pytest.raises(ValueError, match="weight: expected a contiguous tensor"):
        rms_norm_fwd(x, torch.randn(128)[::2], 1e-6)


def test_geglu_launcher_rejects_an_odd_last_dimension():
    from genai_fast.backends.cpp.geglu import geglu_fwd

    with pytest.raises(ValueError, match="x: expected an even last dimension"):
        geglu_fwd(torch.randn(4, 65), "none")


def test_guided_update_launcher_rejects_mixed_layouts():
    from genai_fast.backends.cpp.guided_update import guided_update_fwd

    x, out = torch.randn(8, 8), torch.empty(8, 8)
    with pytest.raises(ValueError, match="model_output: expected the memory layout of x"):
        guided_update_fwd(x, torch.randn(8, 8).t(), None, None, out, None, False, 1.0, (0, 0, 0, 0, 1, 0, 0),
                          float("inf"))


def test_winograd_launcher_checks_layout_and_shapes():
    from genai_fast.backends.cpp.winograd import winograd_conv3x3

    x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match="x: expected a dense channels_last"):
        winograd_conv3x3(x.contiguous(), w, None, None, None, 1.0)
    with pytest.raises(ValueError, match=r"weight: expected shape \[C_out, 4, 3, 3\]"):
        winograd_conv3x3(x, torch.randn(4, 4, 5, 5), None, None, None, 1.0)
    with pytest.raises(ValueError, match="bias: expected a contiguous tensor"):
        winograd_conv3x3(x, w, torch.randn(8)[::2], None, None, 1.0)
    with pytest.raises(ValueError, match="residual: expected shape"):
        winograd_conv3x3(x, w, None, torch.randn(1, 4, 3, 12), None, 1.0)
    expected = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    torch.testing.assert_close(winograd_conv3x3(x, w, None, None, None, 1.0).double(), expected, atol=1e-4,
                               rtol=1e-4)


def test_attention_launchers_check_k_and_v_shapes():
    # k with another head dim, or v with more positions, fit their extents: they were read at q's sizes.
    from genai_fast.backends.cpp.attention import attention_fwd, decode_attention_fwd

    q, k = torch.randn(1, 2, 8, 64), torch.randn(1, 2, 8, 64)
    with pytest.raises(ValueError, match=r"k: expected shape \[1, Hkv, S, 64\]"):
        attention_fwd(q, torch.randn(1, 2, 8, 128), k, 0.125, False)
    with pytest.raises(ValueError, match=r"v: expected shape \[1, 2, 8, Dv\]"):
        attention_fwd(q, k, torch.randn(1, 2, 9, 64), 0.125, False)
    with pytest.raises(ValueError, match=r"v_cache: expected shape \[1, 2, 8, Dv\]"):
        decode_attention_fwd(q[:, :, :1], k, torch.randn(1, 1, 8, 64), [8], 0.125, True)


# ---- word2vec launchers


def test_word2vec_step_rejects_ids_that_wrap_around_int32():
    # 2^32 + 1 cast to int32 is id 1: the update went to another word, silently.
    from genai_fast.backends.cpp.word2vec import word2vec_step

    syn0, syn1neg = torch.zeros(4, 8), torch.zeros(4, 8)
    ids = {"centers": torch.tensor([1]), "contexts": torch.tensor([[2]]), "negatives": torch.tensor([[0]])}
    for name in ids:
        bad = dict(ids, **{name: ids[name] + 2**32})
        with pytest.raises(ValueError, match=f"{name}: expected ids that fit in int32"):
            word2vec_step(syn0, syn1neg, bad["centers"], bad["contexts"], bad["negatives"], 0.025, "sg_shared", True)


def test_word2vec_step_rejects_tables_it_cannot_update_in_place():
    from genai_fast.backends.cpp.word2vec import word2vec_step

    ids = (torch.tensor([1]), torch.tensor([[2]]), torch.tensor([[0]]))
    with pytest.raises(TypeError, match=r"syn0: expected a torch\.float32 CPU tensor"):
        word2vec_step(torch.zeros(4, 8, dtype=torch.float64), torch.zeros(4, 8), *ids, 0.025, "sg_shared", True)
    with pytest.raises(ValueError, match="syn0: expected a contiguous tensor"):
        word2vec_step(torch.zeros(8, 4).t(), torch.zeros(4, 8), *ids, 0.025, "sg_shared", True)


def test_word2vec_train_rejects_a_float64_keep_prob():
    # Read as float32, the keep probabilities were garbage: every token was dropped, silently.
    from genai_fast.backends.cpp.word2vec import word2vec_train

    V, d = 4, 8
    syn0, syn1neg = np.zeros((V, d), np.float32), np.zeros((V, d), np.float32)
    tokens, offsets = np.zeros(10, np.int32), np.array([0, 10], np.int64)
    with pytest.raises(ValueError, match="keep_prob: expected a C-contiguous float32 array, got float64"):
        word2vec_train(syn0, syn1neg, tokens, offsets, np.ones(V), np.ones(V, np.float32),
                       np.arange(V, dtype=np.int32), 0.025, 0.0001, "sg_shared", 2, 1, True, True, False, 1, 1)


# ---- indices past 2^31 elements: every offset in the kernels is int64; this confirms one end to end


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


@pytest.mark.slow
def test_gguf_linear_reads_weights_past_2_31_elements():
    need = 4 << 30  # 2.3 GB of Q8_0 blocks plus working memory
    try:
        if _available_bytes() < need:
            pytest.skip("needs about 4 GB of free memory")
    except (OSError, KeyError):
        pytest.skip("cannot read /proc/meminfo")
    from genai_fast.backends.cpp.gguf_linear import gguf_linear_fwd

    K, N = 1 << 16, (1 << 15) + 32  # N * K = 2^31 + 2^21: the last 32 rows start past element 2^31
    nb = K // 32
    blocks = torch.zeros((N, nb * 34), dtype=torch.uint8)  # zero scales: rows before the last 32 give 0
    quants = torch.randint(-127, 128, (32, nb, 32), dtype=torch.int8)
    tail = blocks[-32:].view(32, nb, 34)
    tail[:, :, :2] = torch.full((32, nb, 1), 0.5, dtype=torch.float16).view(torch.uint8)
    tail[:, :, 2:] = quants.view(torch.uint8)
    x = torch.randn(2, K)
    out = gguf_linear_fwd(x, blocks, 2, None, 2)
    expected = x.double() @ (quants.double().reshape(32, K) * 0.5).t()
    torch.testing.assert_close(out[:, -32:].double(), expected, atol=0.1, rtol=1e-5)
    assert not out[:, :-32].any()
