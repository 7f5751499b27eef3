"""Benchmark entry: the guided DPM-Solver++ 2M update of one sampling step (guidance combine, x0, the
second-order update) in one genai_fast.guided_update pass, against the same step as diffusers runs it:
the pipeline's combine, then DPMSolverMultistepScheduler's convert_model_output and second-order update,
op by op (eager), written out here with its formulas."""

from __future__ import annotations

import math

import torch
from genai_fast.bench.registry import BenchEntry, Case, Inputs, register

import genai_fast

GUIDANCE = 7.5
# One mid-schedule step of SD's 20-step DPM-Solver++ (sigma_s, sigma_t, previous sigma): the values only
# set the coefficients.
SIGMAS = (2.0, 1.6, 2.5)


def _case(batch: int, size: int, dtype: torch.dtype) -> Case:
    return Case({"shape": (batch, 4, size, size)}, dtype, f"{batch}x4x{size}x{size} cfg")


# SD1.5 latents (64x64) at batch 1 and 4, SDXL's (128x128); on the CPU also the tiny U-Net's 16x16.
PRESETS = {
    "quick": {"cpu": [_case(1, 16, torch.float32), _case(1, 64, torch.float32)], "cuda": [_case(1, 64, torch.float16)]},
    "full": {
        "cpu": [_case(1, 16, torch.float32), _case(1, 64, torch.float32), _case(4, 128, torch.float32)],
        "cuda": [_case(1, 64, torch.float16), _case(4, 64, torch.float16), _case(4, 128, torch.float16),
                 _case(4, 128, torch.float32)],
    },
}


def _alpha_sigma(sigma: float) -> tuple[float, float]:
    alpha = 1 / math.sqrt(sigma**2 + 1)
    return alpha, sigma * alpha


def _coefficients() -> dict[str, float]:
    """DPM-Solver++ 2M (midpoint) at SIGMAS, as diffusers computes them."""
    s, t, previous = SIGMAS
    alpha_s, sigma_s = _alpha_sigma(s)
    alpha_t, sigma_t = _alpha_sigma(t)
    alpha_p, sigma_p = _alpha_sigma(previous)
    lam = lambda a, b: math.log(a) - math.log(b)
    h = lam(alpha_t, sigma_t) - lam(alpha_s, sigma_s)
    r0 = (lam(alpha_s, sigma_s) - lam(alpha_p, sigma_p)) / h
    return {"alpha_s": alpha_s, "sigma_s": sigma_s, "ratio": sigma_t / sigma_s,
            "d0": alpha_t * (math.exp(-h) - 1.0), "r0": r0}


def make_inputs(case: Case, device: torch.device) -> Inputs:
    shape = case.params["shape"]
    g = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(s, generator=g).to(device=device, dtype=case.dtype)
    c = _coefficients()
    coefficients = genai_fast.UpdateCoefficients(1 / c["alpha_s"], -c["sigma_s"] / c["alpha_s"], x=c["ratio"],
                                                 x0=-c["d0"], m=0.0, x0_change=-0.5 * c["d0"] / c["r0"])
    return {"x": make(*shape), "model_output": make(2 * shape[0], *shape[1:]), "previous_x0": make(*shape),
            "coefficients": coefficients, "c": c}


def run(inputs: Inputs, backend: str) -> torch.Tensor:
    return genai_fast.guided_update(inputs["x"], inputs["model_output"], inputs["coefficients"], GUIDANCE,
                                    inputs["previous_x0"], out_dtype=inputs["x"].dtype, backend=backend)[0]


def diffusers_eager(inputs: Inputs) -> torch.Tensor:
    """The pipeline's combine, then diffusers' DPM-Solver++ 2M midpoint update, with 0-d tensor
    coefficients as the scheduler holds them."""
    x, c = inputs["x"], {k: torch.tensor(v, device=inputs["x"].device) for k, v in inputs["c"].items()}
    uncond, cond = inputs["model_output"].chunk(2)
    m = uncond + GUIDANCE * (cond - uncond)
    x0 = (x - c["sigma_s"] * m) / c["alpha_s"]  # convert_model_output
    d1 = (1.0 / c["r0"]) * (x0 - inputs["previous_x0"])
    return (c["ratio"] * x - c["d0"] * x0 - 0.5 * c["d0"] * d1).to(x.dtype)


def oracle(inputs: Inputs) -> torch.Tensor:
    wide = {k: inputs[k].double().cpu() for k in ("x", "model_output", "previous_x0")}
    return genai_fast.guided_update_reference(wide["x"], wide["model_output"], inputs["coefficients"], GUIDANCE,
                                              wide["previous_x0"])[0]


def flops(case: Case) -> float:
    return 12.0 * math.prod(case.params["shape"])  # combine 3, x0 2, update 7


def bytes_moved(case: Case) -> float:
    element = torch.empty((), dtype=case.dtype).element_size()
    return 5.0 * math.prod(case.params["shape"]) * element  # read both halves, x and the previous x0; write out


ENTRY = register(BenchEntry(
    op="guided_update",
    presets=PRESETS,
    make_inputs=make_inputs,
    run=run,
    references={"diffusers: CFG combine + DPMSolverMultistepScheduler 2M update (eager)": diffusers_eager},
    oracle=oracle,
    flops=flops,
    bytes=bytes_moved,
    bound="memory",
))
