"""Replayed dispatch choices (genai_fast/ops/plans.py EagerPlans) of rms_norm, geglu, group_norm and linear: a call
whose signature passed the checks before skips them, so every input the checks or the dispatcher read must be in the
signature. Each test compares a replayed call with what a fresh, checked call decides."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import genai_fast
from genai_fast.backends.availability import backend_unavailable_reasons
from genai_fast.backends.dispatch import OPS
from genai_fast.ops.plans import EagerPlans

pytestmark = pytest.mark.skipif(bool(backend_unavailable_reasons("cpp")),
                                reason="; ".join(backend_unavailable_reasons("cpp")) or "cpp built")

# op name -> (module, a call of the public function on fresh inputs of one signature, torch's result for it)
MODULES = {name: importlib.import_module(f"genai_fast.ops.{name}") for name in ("rms_norm", "geglu", "group_norm",
                                                                                  "linear")}


def _inputs(name: str, weight_stride: int = 1) -> tuple:
    if name == "rms_norm":
        return torch.randn(3, 64), torch.randn(64 * weight_stride)[::weight_stride]
    if name == "geglu":
        return (torch.randn(2, 5, 128),)
    if name == "group_norm":
        return torch.randn(2, 16, 4, 4), torch.randn(16 * weight_stride)[::weight_stride], torch.randn(16)
    return torch.randn(4, 32), torch.randn(48, 32 * weight_stride)[:, ::weight_stride], torch.randn(48)


def _call(name: str, args: tuple, **kwargs) -> torch.Tensor:
    if name == "rms_norm":
        return genai_fast.rms_norm(args[0], args[1], 1e-6, **kwargs)
    if name == "geglu":
        return genai_fast.geglu(args[0], **kwargs)
    if name == "group_norm":
        return genai_fast.group_norm(args[0], 4, args[1], args[2], activation="silu", **kwargs)
    return genai_fast.linear(*args, **kwargs)


def _torch(name: str, args: tuple) -> torch.Tensor:
    if name == "rms_norm":
        return F.rms_norm(args[0], (args[0].shape[-1],), args[1], 1e-6)
    if name == "geglu":
        hidden, gate = args[0].chunk(2, -1)
        return hidden * F.gelu(gate)
    if name == "group_norm":
        return F.silu(F.group_norm(args[0], 4, args[1], args[2]))
    return F.linear(*args)


@pytest.fixture
def fresh_plans(monkeypatch):
    """Each op with an empty plan table, restored afterwards; geglu's CPU race decided for its kernel (its outcome on
    these tiny rows depends on the host)."""
    for name, module in MODULES.items():
        monkeypatch.setattr(module, "_PLANS", EagerPlans(OPS[name]))
    monkeypatch.setattr(MODULES["geglu"], "_RACES", {})
    monkeypatch.setattr(MODULES["geglu"], "_time_both", lambda *bucket: {"cpp": 1.0, "torch": 2.0})
    return {name: module._PLANS for name, module in MODULES.items()}


@pytest.mark.parametrize("name", list(MODULES))
def test_replayed_call_runs_the_checked_choice(name, fresh_plans):
    args = _inputs(name)
    first = _call(name, args)
    chosen = OPS[name].last_backend
    assert len(fresh_plans[name]) == 1 and chosen != "torch"
    OPS[name].last_backend = None
    again = _call(name, args)
    assert OPS[name].last_backend == chosen  # the replay records the backend it ran
    assert len(fresh_plans[name]) == 1
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(again, _torch(name, args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["rms_norm", "group_norm", "linear"])
def test_strides_are_part_of_the_signature(name, fresh_plans):
    """rms_norm's and linear's C++ kernels refuse a strided weight (group_norm's copy it): a replayed plan for the
    contiguous weight must not be taken for a strided one of the same shape."""
    _call(name, _inputs(name))
    contiguous_choice = OPS[name].last_backend
    strided = _inputs(name, weight_stride=2)
    got = _call(name, strided)
    got_backend = OPS[name].last_backend
    fresh_plans[name].clear()
    _call(name, strided)
    assert got_backend == OPS[name].last_backend  # what a checked call decides
    if name != "group_norm":
        assert got_backend != contiguous_choice
    torch.testing.assert_close(got, _torch(name, strided), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MODULES))
def test_environment_backend_overrides_a_plan(name, fresh_plans, monkeypatch):
    args = _inputs(name)
    _call(name, args)
    assert OPS[name].last_backend != "torch"
    monkeypatch.setenv("GENAI_FAST_BACKEND", "torch")
    _call(name, args)
    assert OPS[name].last_backend == "torch"
    monkeypatch.delenv("GENAI_FAST_BACKEND")
    _call(name, args)
    assert OPS[name].last_backend != "torch"


@pytest.mark.parametrize("name", list(MODULES))
def test_gradients_flow_after_an_inference_plan(name, fresh_plans):
    """A plan is made only for calls that skip the custom op; the same shapes requiring grad take the op and its
    autograd."""
    args = _inputs(name)
    with torch.no_grad():
        _call(name, args)
    leaf = args[0].clone().requires_grad_()
    out = _call(name, (leaf, *args[1:]))
    assert out.requires_grad
    (grad,) = torch.autograd.grad(out.square().sum(), leaf)
    ref_leaf = args[0].clone().requires_grad_()
    (want,) = torch.autograd.grad(_torch(name, (ref_leaf, *args[1:])).square().sum(), ref_leaf)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-4)


def test_dispatch_modes_see_the_custom_op_after_a_plan(fresh_plans):
    """Under a dispatch mode (here the FLOP counter) the checked path runs: linear counts as torch's does."""
    x, w, b = _inputs("linear")
    genai_fast.linear(x, w, b)
    assert len(fresh_plans["linear"]) == 1
    with FlopCounterMode(display=False) as counter:
        genai_fast.linear(x, w, b)
    assert counter.get_total_flops() == 2 * x.shape[0] * x.shape[1] * w.shape[0]


@pytest.mark.parametrize("bad, error", [(-1.0, ValueError), (float("nan"), ValueError), ("1e-6", ValueError)])
def test_bad_scalars_are_still_checked(bad, error, fresh_plans):
    """A scalar is in the signature with its value and type: a bad one never meets a plan made for a good one."""
    x, w = _inputs("rms_norm")
    genai_fast.rms_norm(x, w, 1e-6)
    with pytest.raises(error, match="eps"):
        genai_fast.rms_norm(x, w, bad)
    x = _inputs("group_norm")[0]
    genai_fast.group_norm(x, 4)
    with pytest.raises(TypeError, match="num_groups"):
        genai_fast.group_norm(x, 4.0)  # equal to 4 and hashed alike: only its type tells them apart
    with pytest.raises(ValueError, match="num_groups"):
        genai_fast.group_norm(x, 5)


def test_tensor_subclass_and_non_tensors_take_the_checked_path(fresh_plans):
    x, w = _inputs("rms_norm")
    genai_fast.rms_norm(x, w)
    with pytest.raises(TypeError, match="weight"):
        genai_fast.rms_norm(x, w.tolist())
    with pytest.raises(TypeError, match="x"):
        genai_fast.geglu(x.tolist())


def test_plan_table_is_bounded(monkeypatch):
    module = MODULES["rms_norm"]
    monkeypatch.setattr(module, "_PLANS", EagerPlans(OPS["rms_norm"], max_plans=3))
    for width in range(1, 10):
        genai_fast.rms_norm(torch.randn(2, width))
        assert len(module._PLANS) <= 3
