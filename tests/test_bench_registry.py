"""The benchmark layer's arithmetic and bookkeeping: every entry's FLOP and byte formulas recomputed by hand for one
case, the JSON schema of DESIGN.md section 5, the timers' statistics, and the runner's handling of input sets,
failing cases and unwritable output paths. Nothing here times anything for real."""

from __future__ import annotations

import math

import pytest
import torch
from genai_fast.bench import runner, timing
from genai_fast.bench.registry import BenchEntry, Case, load_entries
from genai_fast.bench.timing import Timing

from genai_fast.cli import main

REGISTRY = load_entries()
PEAKS = {"copy_gbps": 10.0, "matmul_tflops": 0.1, "matmul_dtype": "float32"}


def _case(op: str, label: str, preset: str = "quick", device: str = "cpu") -> Case:
    matches = [c for c in REGISTRY[op].cases(preset, device) if c.label == label]
    assert matches, f"{op}: no {preset} {device} case {label!r}"
    return matches[0]


# ---------------------------------------------------------------- FLOPs and bytes, by hand


def test_attention_forward_and_backward_flops_follow_the_convention():
    fwd, bwd = REGISTRY["scaled_dot_product_attention"], REGISTRY["scaled_dot_product_attention_backward"]
    full = 4 * 1 * 8 * 512 * 512 * 64  # 4 B H Sq Sk D
    assert fwd.flops(_case(fwd.op, "B1 H8 S512 D64")) == full
    assert fwd.flops(_case(fwd.op, "B1 H8 S512 D64 causal")) == full / 2
    assert fwd.flops(_case(fwd.op, "B2 H8 Sq64 Sk7 D8")) == 4 * 2 * 8 * 64 * 7 * 8
    assert bwd.flops(_case(bwd.op, "B1 H8 S512 D64 causal", "full")) == 2.5 * full / 2
    # q, k, v read and the output written once, fp32
    assert fwd.bytes(_case(fwd.op, "B2 H8 Sq64 Sk7 D8")) == 4 * 2 * 8 * 8 * (64 + 7 + 7 + 64)


def test_decode_attention_bytes_read_the_kv_heads_once():
    entry = REGISTRY["attention_with_kvcache"]
    case = _case(entry.op, "B16 Hq32 Hkv8 L4096 D128", "full", "cuda")
    kv = 2 * 16 * 8 * 4096 * 128  # K and V over the 8 KV heads, not the 32 query heads
    q_and_out = 2 * 16 * 32 * 128
    assert entry.bytes(case) == 2 * (kv + q_and_out)  # bf16
    assert entry.flops(case) == 4 * 16 * 32 * 4096 * 128


def test_conv2d_flops_and_bytes_count_every_operand_once():
    entry = REGISTRY["conv2d"]
    case = _case(entry.op, "2x1280x16x16->1280 k3 temb", "full", "cuda")
    assert entry.flops(case) == 2 * 2 * 16 * 16 * 1280 * 1280 * 3 * 3
    x, weight, out = 2 * 1280 * 16 * 16, 1280 * 1280 * 9, 2 * 1280 * 16 * 16
    per_sample_bias = 2 * 1280  # conv1's bias plus the time embedding, one [N, C_out] bias
    assert entry.bytes(case) == 2 * (x + weight + per_sample_bias + out)
    case = _case(entry.op, "1x64x32x32->64 k3 bias+res")
    residual = out = 64 * 32 * 32
    assert entry.bytes(case) == 4 * (64 * 32 * 32 + 64 * 64 * 9 + 64 + residual + out)


def test_group_norm_bytes_include_its_weight_and_bias():
    entry = REGISTRY["group_norm"]
    case = _case(entry.op, "2x320x64x64 g32 contiguous", "quick", "cuda")
    elements = 2 * 320 * 64 * 64
    assert entry.bytes(case) == 2 * (2 * elements + 2 * 320)  # fp16: x read, y written, weight and bias read


def test_decode_gemv_bytes_include_the_residual_sum_it_writes():
    entry = REGISTRY["decode_gemv"]
    norm = _case(entry.op, "smollm2 gate/up norm_linear 1x576 -> 3072", "quick", "cuda")
    # weight, h, delta, norm weight read; h + delta and the output written (bf16)
    assert entry.bytes(norm) == 2 * (3072 * 576 + 3 * 576 + 576 + 3072)
    swiglu = _case(entry.op, "smollm2 down swiglu_linear 1x1536 -> 576", "quick", "cuda")
    assert entry.bytes(swiglu) == 2 * (576 * 1536 + 2 * 1536 + 576)
    assert entry.flops(swiglu) == 2 * 1536 * 576


def test_moe_bytes_are_the_chosen_experts_and_its_references_agree():
    from genai_fast.bench import moe as moe_bench

    entry = REGISTRY["moe_experts"]
    case = _case(entry.op, "qwen3-30b-a3b 1x2048 E128 k8 I768", "quick", "cuda")
    assert entry.bytes(case) == 2 * (8 * 3 * 2048 * 768 + 2 * 2048)  # k experts' gate, up, down; token; output
    assert entry.flops(case) == 2 * 8 * 3 * 2048 * 768
    # Both references compute the op on a small input (the bench checks every backend against the oracle).
    g = torch.Generator().manual_seed(0)
    weights, ids = torch.randn(1, 6, generator=g).softmax(-1).topk(2, dim=-1)
    inputs = {"x": torch.randn(1, 16, generator=g), "gate_up": torch.randn(6, 24, 16, generator=g) / 4,
              "down": torch.randn(6, 16, 12, generator=g) / 4, "ids": ids, "weights": weights, "activation": "silu",
              "biases": (None, None)}
    gpt_oss = {**inputs, "activation": "gpt_oss", "biases": (torch.randn(6, 24, generator=g),
                                                             torch.randn(6, 16, generator=g))}
    for case_inputs in (inputs, gpt_oss):
        want = entry.oracle(case_inputs)
        for reference in (moe_bench.transformers_loop, moe_bench.gathered_bmm, lambda i: entry.run(i, "torch")):
            torch.testing.assert_close(reference(case_inputs).double(), want, rtol=1e-5, atol=1e-6)
    oss = _case(entry.op, "gpt-oss-20b 1x2880 E32 k4 I2880", "full", "cuda")
    assert entry.bytes(oss) == 2 * (4 * 3 * 2880 * 2880 + 4 * (2 * 2880 + 2880) + 2 * 2880)


def test_elementwise_entries_bytes_are_one_read_and_one_write():
    rms = REGISTRY["rms_norm"]
    assert rms.bytes(_case("rms_norm", "4096x4096", "full", "cuda")) == 2 * (2 * 4096 * 4096 + 4096)
    geglu = REGISTRY["geglu"]  # both halves read, one half written
    assert geglu.bytes(_case("geglu", "2x64x512")) == 4 * (2 * 64 * 512 + 2 * 64 * 256)
    guided = REGISTRY["guided_update"]  # the 2B model output, x and the previous x0 read, out written
    assert guided.bytes(_case("guided_update", "1x4x64x64 cfg")) == 4 * (2 + 1 + 1 + 1) * 4 * 64 * 64


def test_linear_and_gguf_bytes_count_the_weights_as_stored():
    linear = REGISTRY["linear"]
    case = _case("linear", "8x576 @ 3072x576^T gate/up")
    assert linear.flops(case) == 2 * 8 * 576 * 3072
    assert linear.bytes(case) == 4 * (3072 * 576 + 8 * 576 + 8 * 3072)
    gguf = REGISTRY["gguf_linear"]
    q8 = _case("gguf_linear", "1x576 @ Q8_0 49152x576^T lm head")
    assert gguf.bytes(q8) == 49152 * 576 // 32 * 34 + 4 * (576 + 49152)  # Q8_0: 34 bytes per 32 weights
    q4 = _case("gguf_linear", "1x1536 @ Q4_1 576x1536^T down")
    assert gguf.bytes(q4) == 576 * 1536 // 32 * 20 + 4 * (1536 + 576)  # Q4_1: 20 bytes per 32 weights


def test_word2vec_step_bytes_are_the_rows_read_and_written():
    sgns = REGISTRY["sgns_step"]
    case = _case("sgns_step", "V20000 D100 B64 C10 K5")
    assert sgns.bytes(case) == 2 * 4 * 64 * (10 + 5 + 1) * 100  # contexts, the positive and K negatives
    assert sgns.flops(case) == 6 * 64 * 10 * (5 + 1) * 100


def test_linear_gemm_cases_are_measured_against_the_matmul_rate():
    linear = REGISTRY["linear"]
    assert linear.bound_of(_case("linear", "87x576 @ 3072x576^T prefill gate/up")) == "compute"
    assert linear.bound_of(_case("linear", "1024x320 @ 1280x320^T SD projection", "full")) == "compute"
    assert linear.bound_of(_case("linear", "1x576 @ 49152x576^T lm head")) == "memory"


def test_every_case_has_positive_work_and_a_known_bound():
    for entry in REGISTRY.values():
        if entry.op == "unet":
            continue  # its FLOPs and bytes are counted when its inputs are built (bench/unet.py)
        for preset in ("quick", "full"):
            for device in ("cpu", "cuda"):
                for case in entry.cases(preset, device):
                    assert entry.flops(case) > 0 and entry.bytes(case) > 0, (entry.op, case.label)
                    assert entry.bound_of(case) in ("memory", "compute")


def test_a_bound_that_is_neither_ceiling_is_refused():
    entry = _fake_entry(bound=lambda case: "latency")
    with pytest.raises(ValueError, match="bound"):
        entry.bound_of(Case({}, torch.float32, "x"))


# ---------------------------------------------------------------- rows and the JSON schema

ROW_KEYS = {"op", "backend", "reference", "shape", "dtype", "median_ms", "p20_ms", "p80_ms", "tflops", "gbps",
            "pct_of_peak", "speedup_vs_reference", "max_err"}
ENV_KEYS = {"gpu", "driver", "cuda", "torch", "triton", "cupy", "python", "cpu", "threads", "git_sha", "date", "peaks"}


def test_row_has_the_design_keys_and_its_rates_follow_from_the_median():
    entry, case = REGISTRY["linear"], _case("linear", "87x576 @ 3072x576^T prefill gate/up")
    row = runner._row(entry, case, "cpp", "torch", Timing(2.0, 1.5, 2.5), Timing(3.0, 2.0, 4.0), 1e-6, 2e-6,
                      "cpp", PEAKS)
    assert ROW_KEYS <= row.keys()
    assert row["tflops"] == pytest.approx(entry.flops(case) / 2e-3 / 1e12)
    assert row["gbps"] == pytest.approx(entry.bytes(case) / 2e-3 / 1e9)
    assert row["bound"] == "compute"
    assert row["pct_of_peak"] == pytest.approx(100 * row["tflops"] / PEAKS["matmul_tflops"])
    assert row["speedup_vs_reference"] == pytest.approx(1.5)


def test_environment_has_the_design_keys():
    assert ENV_KEYS <= runner.environment(torch.device("cpu"), PEAKS).keys()


# ---------------------------------------------------------------- timers


def test_summary_median_and_percentiles_index_the_sorted_samples():
    got = timing._summary([float(v) for v in (9, 1, 5, 3, 7, 2, 8, 4, 6, 10, 11)])
    assert (got.median_ms, got.p20_ms, got.p80_ms) == (6.0, 3.0, 9.0)


def test_cpu_warm_up_calls_are_not_timed(monkeypatch):
    calls, samples = [], []
    clock = {"t": 0.0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["t"])
    summary = timing._summary
    monkeypatch.setattr(timing, "_summary", lambda values: samples.extend(values) or summary(values))

    def fn():
        calls.append(None)
        clock["t"] += 2.0 if len(calls) == 1 else 0.001  # the first call (a warm-up: compiling, allocating) is slow

    got = timing.time_cpu(fn, min_time_s=0.005, min_reps=10, warmup=3)
    assert len(calls) == 1 + 10  # warm-up stops after min_time_s (after one call here); then the samples
    assert samples == pytest.approx([1.0] * 10) and got.median_ms == pytest.approx(1.0)


def test_rotating_uses_every_input_set_in_turn():
    used = []
    call = timing.rotating([lambda i=i: used.append(i) for i in range(3)])
    for _ in range(6):
        call()
    assert sorted(used) == [0, 0, 1, 1, 2, 2]


# ---------------------------------------------------------------- the runner


def _fake_entry(op: str = "rms_norm", make_inputs=None, bytes_moved=None, bound="memory") -> BenchEntry:
    """An entry over genai_fast.rms_norm (a real dispatched op, so that the runner finds its backends)."""
    rms = REGISTRY["rms_norm"]
    return BenchEntry(op=op, presets={"quick": {"cpu": [Case({"rows": 2, "D": 8}, torch.float32, "2x8")]}},
                      make_inputs=make_inputs or rms.make_inputs, run=rms.run,
                      references={"torch F.rms_norm": rms.references["torch F.rms_norm"]}, oracle=rms.oracle,
                      flops=rms.flops, bytes=bytes_moved or rms.bytes, bound=bound)


def _no_timing(monkeypatch):
    monkeypatch.setattr(runner, "time_together", lambda fns, device, quick: {k: Timing(1.0, 1.0, 1.0) for k in fns})
    monkeypatch.setattr(runner, "measure_peaks", lambda device, quick: PEAKS)


def test_input_sets_are_counted_from_bytes_known_once_inputs_exist(monkeypatch):
    """Like the U-Net entry, which counts its weights' bytes when it builds them: asked before, it would say 0
    bytes and get 8 input sets (8 SD-sized U-Nets on a GPU) where its 80 MB need one."""
    _no_timing(monkeypatch)
    monkeypatch.setattr(runner, "last_level_cache_bytes", lambda: 32 << 20)
    known: dict[str, float] = {}
    made = []

    def make_inputs(case, device):
        made.append(case.label)
        known[case.label] = 80e6
        return REGISTRY["rms_norm"].make_inputs(case, device)

    entry = _fake_entry(make_inputs=make_inputs, bytes_moved=lambda case: known.get(case.label, 0.0))
    rows, _ = runner.bench_case(entry, entry.cases("quick", "cpu")[0], torch.device("cpu"), True, PEAKS)
    assert len(made) == 1 and rows and all(row["input_sets"] == 1 for row in rows)


def test_a_failing_case_is_skipped_with_its_error_and_the_run_goes_on(monkeypatch):
    _no_timing(monkeypatch)

    def out_of_memory(case, device):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    failing, fine = _fake_entry(make_inputs=out_of_memory), _fake_entry()
    monkeypatch.setattr(runner, "select_entries", lambda ops: [failing, fine])
    checkpoints = []
    result = runner.run_benchmarks(torch.device("cpu"), "quick", progress=False, checkpoint=checkpoints.append)
    assert result["complete"] and result["rows"], "the second entry's case was not measured"
    assert any("OutOfMemoryError" in s["reason"] for s in result["skipped"])
    assert all(not c["complete"] for c in checkpoints) and checkpoints[-1]["skipped"]


def test_json_path_is_tried_before_anything_is_measured(monkeypatch, capsys):
    monkeypatch.setattr(runner, "measure_peaks", lambda *a: pytest.fail("peaks measured before the JSON path failed"))
    # The CLI refuses the folder first; the runner itself writes its first checkpoint before measuring.
    assert main(["bench", "--device", "cpu", "--ops", "rms_norm", "--no-progress", "--json", "/proc/out.json"]) == 2
    assert "/proc/out.json: cannot write" in capsys.readouterr().err
    with pytest.raises(OSError, match=r"cannot write the benchmark JSON to /proc/out\.json"):
        runner.run_benchmarks(torch.device("cpu"), "quick", ["rms_norm"], progress=False,
                              checkpoint=lambda partial: runner.write_json(partial, "/proc/out.json"))


def test_write_json_names_the_path_it_could_not_write():
    with pytest.raises(FileNotFoundError, match=r"/proc/out\.json: No such file"):
        runner.write_json({"rows": []}, "/proc/out.json")


def test_an_op_named_twice_is_measured_once():
    assert [e.op for e in runner.select_entries(["rms_norm", "geglu", "rms_norm"])] == ["rms_norm", "geglu"]


def test_rotation_count_stays_within_one_and_eight(monkeypatch):
    monkeypatch.setattr(runner, "last_level_cache_bytes", lambda: 32 << 20)
    case = Case({}, torch.float32, "x")
    for bytes_moved, sets in ((0.0, 8), (1.0, 8), (64 << 20, 1), (math.inf, 1)):
        assert runner._rotation_count(_fake_entry(bytes_moved=lambda c, b=bytes_moved: b), case,
                                      torch.device("cpu")) == sets


def test_an_op_without_cases_on_this_device_is_listed_as_skipped(monkeypatch):
    _no_timing(monkeypatch)
    monkeypatch.setattr(runner, "environment", lambda device, peaks: {"peaks": peaks})
    result = runner.run_benchmarks(torch.device("cpu"), "quick", ["decode_gemv"], progress=False)
    assert not result["rows"]
    assert result["skipped"] == [{"op": "decode_gemv", "shape": "-", "backend": "all",
                                  "reason": "no quick cases for cpu"}]
