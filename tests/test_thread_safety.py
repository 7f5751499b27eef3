"""Public ops and the patched diffusers U-Net called from several Python threads at once (as in a threaded
inference server): each thread gets what it would get alone.

Every interleaving that matters is forced with events or joins, never left to the scheduler, so these tests
assert on results and exceptions only.
"""

from __future__ import annotations

import copy
import ctypes
import sys
import threading
from collections.abc import Callable

import pytest
import torch

import genai_fast
from genai_fast.backends.dispatch import OPS

THREADS = 4
ITERATIONS = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def _run_in_threads(work: Callable[[int], None], count: int = THREADS) -> None:
    """work(index) on `count` threads at once; re-raises the first exception a thread raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def guarded(index: int) -> None:
        try:
            start.wait()
            work(index)
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]


def _op_calls() -> list[Callable[[], torch.Tensor]]:
    """One call of each public op (automatic dispatch), each on inputs of its own."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    q, k, v = randn(2, 4, 9, 16), randn(2, 2, 11, 16), randn(2, 2, 11, 16)
    q_new, k_cache, v_cache, k_new = randn(2, 4, 1, 16), randn(2, 2, 12, 16), randn(2, 2, 12, 16), randn(2, 2, 1, 16)
    lengths = torch.tensor([3, 7], dtype=torch.int32)
    x_conv = randn(1, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    w_conv, b_conv = randn(8, 8, 3, 3), randn(8)
    x_norm, gamma, beta = randn(2, 16, 5, 5), randn(16), randn(16)
    x_lin, w_lin, b_lin = randn(3, 32), randn(24, 32), randn(24)
    x_rms, w_rms, x_glu = randn(5, 32), randn(32), randn(4, 64)
    x_step, out_step = randn(2, 4, 6, 6), randn(4, 4, 6, 6)

    def kvcache() -> torch.Tensor:
        k_copy, v_copy = k_cache.clone(), v_cache.clone()  # written in place by the call
        out = genai_fast.attention_with_kvcache(q_new, k_copy, v_copy, lengths, k_new, k_new)
        return torch.cat([out.flatten(), k_copy.flatten(), v_copy.flatten()])

    return [
        lambda: genai_fast.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        kvcache,
        lambda: genai_fast.conv2d(x_conv, w_conv, b_conv, 1, 1, residual=x_conv, output_scale=0.5),
        lambda: genai_fast.group_norm(x_norm, 4, gamma, beta, activation="silu"),
        lambda: genai_fast.linear(x_lin, w_lin, b_lin),
        lambda: genai_fast.rms_norm(x_rms, w_rms),
        lambda: genai_fast.geglu(x_glu, "tanh"),
        lambda: genai_fast.guided_update(x_step, out_step, (1.1, -0.3, 0.5, 0.4, 0.2, 0.0, 0.0), 7.5)[0],
    ]


def test_ops_from_several_threads_give_the_single_threaded_results():
    calls = _op_calls()
    expected = [call() for call in calls]
    mismatches = []

    def work(index: int) -> None:
        for iteration in range(ITERATIONS):
            for offset in range(len(calls)):  # each thread in its own order, so different ops overlap
                which = (offset + index + iteration) % len(calls)
                if not torch.equal(calls[which](), expected[which]):
                    mismatches.append(which)

    _run_in_threads(work)
    assert not mismatches


def test_last_backend_is_the_backend_of_this_threads_own_call():
    """A call made in another thread between this thread's call and its read of last_backend does not change
    what this thread reads (it used to: the value was one for the whole process)."""
    x, weight = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    op = OPS["conv2d"]
    genai_fast.conv2d(x, weight, padding=1, backend="torch+inplace")
    other = threading.Thread(target=lambda: genai_fast.conv2d(x, weight, padding=1, backend="torch"))
    other.start()
    other.join()
    assert op.last_backend == "torch+inplace"
    seen_by_other = []
    reader = threading.Thread(target=lambda: seen_by_other.append(op.last_backend))
    reader.start()
    reader.join()
    assert seen_by_other == [None]  # a thread that called nothing has no backend of its own


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="starts a thread with pthread_create")
def test_a_call_on_a_thread_python_did_not_start_counts_for_every_thread():
    """autograd runs a GPU backward on threads of its own while the thread that called backward() waits: the
    backend that backward ran is what the caller reads afterwards."""
    op = OPS["conv2d"]
    op.last_backend = "torch"  # this thread's own, older record
    libc = ctypes.CDLL(None)
    start_routine = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)

    @start_routine
    def record(_arg):
        op.last_backend = "torch+inplace"
        return None

    handle = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(handle), None, record, None) == 0
    assert libc.pthread_join(handle, None) == 0
    assert op.last_backend == "torch+inplace"
    op.last_backend = "torch"  # a newer call of this thread's own wins again
    assert op.last_backend == "torch"


# ---------------------------------------------------------------- the patched diffusers U-Net


def _tiny_unet() -> torch.nn.Module:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval()


def _unet_inputs(batch: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    return {"sample": torch.randn(batch, 4, 8, 8, generator=gen), "timestep": torch.tensor([3, 700, 40][:batch]),
            "encoder_hidden_states": torch.randn(batch, 5, 32, generator=gen)}


def _recorded_backends(unet: torch.nn.Module) -> list[str]:
    from genai_fast.integrations.diffusers import _PLANS

    return [impl.backend for module in unet.modules() for impl in _PLANS.get(module, {}).values()]


def test_patched_unet_replays_its_own_choices_when_other_threads_call_the_ops_meanwhile(monkeypatch):
    """Each conv and GroupNorm records, after its first call, the implementation the op chose for it, and replays
    it on later calls. A call of the same op in another thread right after (here: with backend="torch" forced)
    made it record and replay that thread's implementation instead: an implementation picked for other inputs,
    which raised for some (the Winograd kernel forced for a 3x3 conv, replayed on a 1x1 one)."""
    from genai_fast.integrations.diffusers import patch

    pristine = _tiny_unet()
    inputs = _unet_inputs(2)
    alone = copy.deepcopy(pristine)
    patch(alone)
    with torch.no_grad():
        alone(**inputs)
        expected = alone(**inputs).sample  # replayed

    x = torch.randn(1, 8, 6, 6)
    intruders = {"conv2d": lambda run: run(x, torch.randn(8, 8, 3, 3), padding=1, backend="torch"),
                 "group_norm": lambda run: run(x, 4, backend="torch")}
    for name, intrude in intruders.items():
        real = getattr(genai_fast, name)

        def interrupted(*args, real=real, intrude=intrude, **kwargs):
            out = real(*args, **kwargs)
            other = threading.Thread(target=intrude, args=(real,))
            other.start()
            other.join()
            return out

        monkeypatch.setattr(genai_fast, name, interrupted)
    unet = copy.deepcopy(pristine)
    patch(unet)
    with torch.no_grad():
        unet(**inputs)  # first calls, each followed by another thread's call
        monkeypatch.undo()
        got = unet(**inputs).sample
    assert _recorded_backends(unet) == _recorded_backends(alone)
    assert torch.equal(got, expected)


def test_one_patched_unet_shared_by_several_threads_gives_the_single_threaded_outputs():
    from genai_fast.integrations.diffusers import patch

    unet = _tiny_unet()
    patch(unet)
    cases = [_unet_inputs(batch) for batch in (1, 2, 3)]
    with torch.no_grad():
        expected = [unet(**case).sample for case in cases]
    mismatches = []

    def work(index: int) -> None:
        with torch.no_grad():
            for iteration in range(2):
                which = (index + iteration) % len(cases)
                if not torch.equal(unet(**cases[which]).sample, expected[which]):
                    mismatches.append(which)

    _run_in_threads(work, count=3)
    assert not mismatches


# ---------------------------------------------------------------- one LLM engine, several threads


def _tiny_engine():
    transformers = pytest.importorskip("transformers")
    from genai_fast.llm import load

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    engine = load(transformers.LlamaForCausalLM(config).eval(), max_seq_len=64)
    engine.eos_ids = set()
    return engine


def test_one_engine_shared_by_several_threads_gives_each_its_own_tokens():
    """The engine's KV cache serves one generation at a time: other threads wait instead of overwriting it
    (before, 23 of 24 shared generations came out wrong, without an error)."""
    engine = _tiny_engine()
    prompts = [[1 + i, 7, 3 * i + 2, 11] for i in range(THREADS)]
    expected = [engine.generate(p, 12).ids for p in prompts]
    got: dict[tuple[int, int], list[int]] = {}

    def work(i: int) -> None:
        for repeat in range(3):
            got[i, repeat] = engine.generate(prompts[i], 12).ids

    _run_in_threads(work)
    assert all(got[i, repeat] == expected[i] for i in range(THREADS) for repeat in range(3))


def test_a_generation_inside_an_unfinished_stream_of_the_same_thread_is_refused():
    """Waiting would never end (the stream's thread is the waiter), so it raises; once the stream is finished or
    dropped the engine takes the next generation, and the stream's tokens were not disturbed."""
    engine = _tiny_engine()
    engine.tokenizer = _DigitTokenizer()
    expected = engine.generate([5, 6, 7], 10).ids
    stream = engine.stream([5, 6, 7], 10)
    pieces = iter(stream)
    next(pieces)
    with pytest.raises(RuntimeError, match="already generating in this thread"):
        engine.generate([1, 2], 4)
    list(pieces)
    assert stream.result.ids == expected
    assert engine.generate([5, 6, 7], 10).ids == expected


class _DigitTokenizer:
    """Each id decodes to its own digits and a space: enough for stream() to produce text."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"{i} " for i in ids)
