"""Diffusion samplers that match diffusers' schedulers step for step: DDPM, DDIM, Euler, Euler ancestral,
DPM-Solver++ 2M (and its SDE form), PNDM, UniPC, LCM, Heun, LMS, KDPM2 ("DPM2"), KDPM2 ancestral ("DPM2 a") and
DPM-Solver singlestep; and the flow-matching Euler and Heun of SD3, Flux and their kin (FLOW_SAMPLER_NAMES: no betas,
sigma from 1 to 0, a velocity-predicting model).

Design: `set_timesteps` does the schedule arithmetic on the host once, in float32 with the same operations
diffusers applies per step, and stores one row of coefficients per step. `step` then indexes its row (a view: no
host sync) and runs a handful of elementwise ops on the latents. Which steps draw noise, and which DPM-Solver steps
fall back to first order, is decided by the schedule alone, so no step ever branches on a tensor value. The
multistep samplers whose coefficients depend on the calls made so far (PNDM, UniPC, Heun, DPM-Solver singlestep)
compute them per step from the float32 schedule on the host: 0-d CPU tensors, which act as scalars on any device, so
a GPU loop still never waits for the device. (KDPM2 plans both rows a call can need, first or second of its level.)

The updates are affine in the model output (all but dynamic thresholding and DDPM's learned variance), so
with classifier-free guidance `guided_step` runs the guidance combination and the update as one pass
(genai_fast.guided_update) from per-step coefficients derived from the same rows (`_fused`).

The samplers keep a step counter, as diffusers' schedulers do: call `scale_model_input` / `step` once per
entry of `timesteps`, in order (from `set_begin_index(i)` on, for img2img). The `t` argument is checked against
the counter's timestep when it is a Python number or a CPU tensor; a GPU tensor is not read back (that would
synchronise).

A sampler also stands in for a diffusers scheduler in a diffusers pipeline (`pipe.scheduler = sampler`): it has
the attributes and call conventions the pipelines use (`order`, `config` with attribute access, `len()`,
`num_inference_steps`, `set_begin_index`, `step(..., return_dict=...)`, DDIM's `eta` and
`use_clipped_model_output` step arguments); see Sampler.step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from genai_fast.ops.checks import is_real_number
from genai_fast.ops.guided_update import UpdateCoefficients, guided_update

Generator = torch.Generator | list[torch.Generator] | None

# diffusers class names -> sampler names (from_config on a scheduler object or a saved config).
CLASS_NAMES = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "PNDMScheduler": "pndm",
    "UniPCMultistepScheduler": "unipc",
    "LCMScheduler": "lcm",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpm++",
    "LMSDiscreteScheduler": "lms",
    "KDPM2DiscreteScheduler": "kdpm2",
    "KDPM2AncestralDiscreteScheduler": "kdpm2_a",
    "DPMSolverSinglestepScheduler": "dpm++_single",
    "FlowMatchEulerDiscreteScheduler": "flow_euler",
    "FlowMatchHeunDiscreteScheduler": "flow_heun",
}


# ---------------------------------------------------------------- config options


@dataclass(frozen=True)
class Option:
    """One config key: its default and what it accepts.

    kind: "int", "float", "bool", "choice", "betas", "indices" (a list of step indices) or "inert" (accepted, no
    effect on sampling).
    choices: the values diffusers knows; implemented: the subset this package runs (others raise
    NotImplementedError naming the key). minimum: lower bound for numbers (inclusive).
    """

    default: Any
    kind: str
    choices: tuple = ()
    implemented: tuple | None = None
    minimum: float | None = None
    optional: bool = False


def _common(spacing: str, schedules: tuple, predictions: tuple) -> dict[str, Option]:
    return {
        "num_train_timesteps": Option(1000, "int", minimum=1),
        "beta_start": Option(0.0001, "float", minimum=0.0),
        "beta_end": Option(0.02, "float", minimum=0.0),
        "beta_schedule": Option("linear", "choice", ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid",
                                                     "laplace"), implemented=schedules),
        "trained_betas": Option(None, "betas"),
        "prediction_type": Option("epsilon", "choice", ("epsilon", "v_prediction", "sample", "original_sample",
                                                        "flow_prediction"), implemented=predictions),
        "timestep_spacing": Option(spacing, "choice", ("linspace", "leading", "trailing")),
        "steps_offset": Option(0, "int", minimum=0),
        "rescale_betas_zero_snr": Option(False, "bool"),
    }


_THRESHOLDING = {
    "thresholding": Option(False, "bool"),
    "dynamic_thresholding_ratio": Option(0.995, "float", minimum=0.0),
    "sample_max_value": Option(1.0, "float", minimum=0.0),
}
_CLIPPING = {"clip_sample": Option(True, "bool"), "clip_sample_range": Option(1.0, "float", minimum=0.0)}
_BASIC_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_LEVEL_SPACINGS = {
    "use_karras_sigmas": Option(False, "bool"),
    "use_exponential_sigmas": Option(False, "bool"),
    "use_beta_sigmas": Option(False, "choice", (False, True), implemented=(False,)),  # needs scipy
}
_SIGMA_SPACINGS = {**_LEVEL_SPACINGS, "final_sigmas_type": Option("zero", "choice", ("zero", "sigma_min"))}
# Only read by use_flow_sigmas / set_timesteps(mu=...), neither of which is supported here.
_FLOW_SHIFT = {
    "flow_shift": Option(1.0, "inert"),
    "use_dynamic_shifting": Option(False, "inert"),
    "time_shift_type": Option("exponential", "inert"),
}


def _without(options: dict[str, Option], *keys: str) -> dict[str, Option]:
    return {k: v for k, v in options.items() if k not in keys}


def _kdpm2_options() -> dict[str, Option]:
    """KDPM2DiscreteScheduler's and KDPM2AncestralDiscreteScheduler's keys (their step refuses "sample")."""
    return {
        **_without(_common("linspace", _BASIC_SCHEDULES, ("epsilon", "v_prediction")), "rescale_betas_zero_snr"),
        "beta_start": Option(0.00085, "float", minimum=0.0),  # the KDPM2 schedulers' own defaults
        "beta_end": Option(0.012, "float", minimum=0.0),
        **_LEVEL_SPACINGS,
    }


OPTIONS: dict[str, dict[str, Option]] = {
    "ddpm": {
        **_common("leading", ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"),
                  ("epsilon", "v_prediction", "sample")),
        **_CLIPPING,
        **_THRESHOLDING,
        "variance_type": Option("fixed_small", "choice", ("fixed_small", "fixed_small_log", "fixed_large",
                                                          "fixed_large_log", "learned", "learned_range"),
                                implemented=("fixed_small", "fixed_small_log", "fixed_large", "learned",
                                             "learned_range")),
    },
    "ddim": {
        **_common("leading", _BASIC_SCHEDULES, ("epsilon", "v_prediction", "sample")),
        **_CLIPPING,
        **_THRESHOLDING,
        "set_alpha_to_one": Option(True, "bool"),
        # Step arguments in diffusers (DDIMScheduler.step(eta=..., use_clipped_model_output=...)).
        "eta": Option(0.0, "float", minimum=0.0),
        "use_clipped_model_output": Option(False, "bool"),
    },
    "euler": {
        **_common("linspace", _BASIC_SCHEDULES, ("epsilon", "v_prediction", "sample", "original_sample")),
        **_SIGMA_SPACINGS,
        "interpolation_type": Option("linear", "choice", ("linear", "log_linear")),
        "sigma_min": Option(None, "float", minimum=0.0, optional=True),
        "sigma_max": Option(None, "float", minimum=0.0, optional=True),
        "timestep_type": Option("discrete", "choice", ("discrete", "continuous")),
    },
    "euler_a": _common("linspace", _BASIC_SCHEDULES, ("epsilon", "v_prediction")),
    "dpm++": {
        **_common("linspace", _BASIC_SCHEDULES, ("epsilon", "v_prediction", "sample")),
        **_SIGMA_SPACINGS,
        **_THRESHOLDING,
        "solver_order": Option(2, "choice", (1, 2, 3), implemented=(1, 2)),
        "algorithm_type": Option("dpmsolver++", "choice", ("dpmsolver++", "sde-dpmsolver++", "dpmsolver",
                                                           "sde-dpmsolver", "deis"),
                                 implemented=("dpmsolver++", "sde-dpmsolver++", "deis")),
        "solver_type": Option("midpoint", "choice", ("midpoint", "heun", "logrho", "bh1", "bh2")),
        "lower_order_final": Option(True, "bool"),
        "euler_at_final": Option(False, "bool"),
        "use_lu_lambdas": Option(False, "bool"),
        "use_flow_sigmas": Option(False, "choice", (False, True), implemented=(False,)),
        "lambda_min_clipped": Option(-math.inf, "float"),
        "variance_type": Option(None, "choice", (None, "learned", "learned_range"), implemented=(None,)),
        **_FLOW_SHIFT,
    },
    "pndm": {  # diffusers' PNDMScheduler takes no rescale_betas_zero_snr
        **{k: v for k, v in _common("leading", _BASIC_SCHEDULES, ("epsilon", "v_prediction")).items()
           if k != "rescale_betas_zero_snr"},
        "skip_prk_steps": Option(False, "bool"),
        "set_alpha_to_one": Option(False, "bool"),
    },
    "unipc": {
        **_common("linspace", _BASIC_SCHEDULES, ("epsilon", "v_prediction", "sample")),
        **_SIGMA_SPACINGS,
        **_THRESHOLDING,
        "sigma_min": Option(None, "float", minimum=0.0, optional=True),
        "sigma_max": Option(None, "float", minimum=0.0, optional=True),
        "solver_order": Option(2, "int", minimum=1),
        "predict_x0": Option(True, "choice", (True, False), implemented=(True,)),
        "solver_type": Option("bh2", "choice", ("bh1", "bh2")),
        "lower_order_final": Option(True, "bool"),
        "disable_corrector": Option([], "indices"),
        "solver_p": Option(None, "choice", (None,)),  # another scheduler as the predictor: not supported
        "use_flow_sigmas": Option(False, "choice", (False, True), implemented=(False,)),
        **_FLOW_SHIFT,
        "shift_terminal": Option(None, "inert"),
    },
    "lcm": {
        **_common("leading", _BASIC_SCHEDULES, ("epsilon", "v_prediction", "sample")),
        # LCMScheduler's own defaults (Stable Diffusion's betas); its set_timesteps reads neither
        # timestep_spacing nor steps_offset.
        "beta_start": Option(0.00085, "float", minimum=0.0),
        "beta_end": Option(0.012, "float", minimum=0.0),
        "beta_schedule": Option("scaled_linear", "choice", ("linear", "scaled_linear", "squaredcos_cap_v2",
                                                            "sigmoid", "laplace"), implemented=_BASIC_SCHEDULES),
        "clip_sample": Option(False, "bool"),
        "clip_sample_range": Option(1.0, "float", minimum=0.0),
        **_THRESHOLDING,
        "set_alpha_to_one": Option(True, "bool"),
        "original_inference_steps": Option(50, "int", minimum=1),
        "timestep_scaling": Option(10.0, "float", minimum=0.0),
    },
    "heun": {  # diffusers' HeunDiscreteScheduler takes no rescale_betas_zero_snr
        **_without(_common("linspace", _BASIC_SCHEDULES, ("epsilon", "v_prediction", "sample")),
                   "rescale_betas_zero_snr"),
        "beta_start": Option(0.00085, "float", minimum=0.0),  # HeunDiscreteScheduler's own defaults
        "beta_end": Option(0.012, "float", minimum=0.0),
        **_LEVEL_SPACINGS,
        "clip_sample": Option(False, "bool"),
        "clip_sample_range": Option(1.0, "float", minimum=0.0),
    },
    "lms": {  # diffusers' LMSDiscreteScheduler takes no rescale_betas_zero_snr
        **_without(_common("linspace", _BASIC_SCHEDULES, ("epsilon", "v_prediction", "sample")),
                   "rescale_betas_zero_snr"),
        **_LEVEL_SPACINGS,
        # A step argument in diffusers (LMSDiscreteScheduler.step(order=4)): how many derivatives a step combines.
        "order": Option(4, "int", minimum=1),
    },
    "kdpm2": _kdpm2_options(),
    "kdpm2_a": _kdpm2_options(),
    "dpm++_single": {  # DPMSolverSinglestepScheduler spaces its timesteps linearly: no timestep_spacing key
        **_without(_common("linspace", _BASIC_SCHEDULES, ("epsilon", "v_prediction", "sample")),
                   "timestep_spacing", "steps_offset", "rescale_betas_zero_snr"),
        **_SIGMA_SPACINGS,
        **_THRESHOLDING,
        "solver_order": Option(2, "choice", (1, 2, 3)),
        # diffusers runs "deis" as "dpmsolver++" (it rewrites the key), as its multistep scheduler does.
        "algorithm_type": Option("dpmsolver++", "choice", ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "deis")),
        "solver_type": Option("midpoint", "choice", ("midpoint", "heun", "logrho", "bh1", "bh2")),
        "lower_order_final": Option(False, "bool"),
        "use_flow_sigmas": Option(False, "choice", (False, True), implemented=(False,)),
        "lambda_min_clipped": Option(-math.inf, "float"),
        "variance_type": Option(None, "choice", (None, "learned", "learned_range"), implemented=(None,)),
        **_FLOW_SHIFT,
    },
    # The flow-matching samplers: no betas, sigma runs from 1 to 0 and the model predicts the velocity.
    "flow_euler": {
        "num_train_timesteps": Option(1000, "int", minimum=1),
        "shift": Option(1.0, "float", minimum=0.0),
        "use_dynamic_shifting": Option(False, "bool"),
        # Read by the pipelines (the mu they pass to set_timesteps), not by the scheduler.
        "base_shift": Option(0.5, "float", optional=True),
        "max_shift": Option(1.15, "float", optional=True),
        "base_image_seq_len": Option(256, "int", minimum=1),
        "max_image_seq_len": Option(4096, "int", minimum=1),
        "invert_sigmas": Option(False, "bool"),
        "shift_terminal": Option(None, "float", minimum=0.0, optional=True),
        **_LEVEL_SPACINGS,
        "time_shift_type": Option("exponential", "choice", ("exponential", "linear")),
        "stochastic_sampling": Option(False, "bool"),
    },
    "flow_heun": {
        "num_train_timesteps": Option(1000, "int", minimum=1),
        "shift": Option(1.0, "float", minimum=0.0),
    },
}
FLOW_SAMPLER_NAMES = ("flow_euler", "flow_heun")
# The samplers over a beta schedule (noise, v or x0 prediction); the flow-matching ones are FLOW_SAMPLER_NAMES.
SAMPLER_NAMES = tuple(name for name in OPTIONS if name not in FLOW_SAMPLER_NAMES)


def _check_number(key: str, value: Any, opt: Option) -> Any:
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{key}: expected an int, got {type(value).__name__}")
        value = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{key}: expected a number, got {type(value).__name__}")
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{key}: expected a number, got nan")
    if opt.minimum is not None and value < opt.minimum:
        raise ValueError(f"{key}: expected a value >= {opt.minimum}, got {value}")
    return value


def _float_sequence(key: str, value: Any) -> np.ndarray:
    """A non-empty 1-D sequence of numbers (list, array or tensor) as float64, or a clear error naming `key`."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{key}: expected a sequence of numbers, got {type(value).__name__}") from err
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{key}: expected a non-empty 1-D sequence, got shape {array.shape}")
    return array


def _check_betas(key: str, value: Any) -> np.ndarray | None:
    if value is None:
        return None
    betas = _float_sequence(key, value)
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError(f"{key}: every beta must lie in (0, 1)")
    return np.asarray(value)


def _check_option(name: str, key: str, value: Any, opt: Option) -> Any:
    if opt.kind == "inert" or (opt.optional and value is None):
        return value
    if opt.kind == "betas":
        return _check_betas(key, value)
    if opt.kind == "indices":
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in value):
            raise TypeError(f"{key}: expected a list of step indices (ints >= 0), got {value!r}")
        return [int(v) for v in value]
    if opt.kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{key}: expected a bool, got {type(value).__name__}")
        return bool(value)
    if opt.kind in ("int", "float"):
        return _check_number(key, value, opt)
    if value not in opt.choices:
        raise ValueError(f"{key}: expected one of {', '.join(map(repr, opt.choices))}, got {value!r}")
    if opt.implemented is not None and value not in opt.implemented:
        raise NotImplementedError(f"{key}={value!r} is not implemented for the {name!r} sampler "
                                  f"(implemented: {', '.join(map(repr, opt.implemented))})")
    return value


def resolve_config(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `config` for sampler `name` and fill in diffusers' defaults; returns the full config."""
    options = OPTIONS[name]
    resolved = {key: opt.default for key, opt in options.items()}
    for key, value in config.items():
        if key not in options:
            raise TypeError(f"{key}: not a config key of the {name!r} sampler; known keys: {', '.join(options)}")
        resolved[key] = _check_option(name, key, value, options[key])
    _check_consistency(name, resolved)
    return resolved


def _check_consistency(name: str, cfg: dict[str, Any]) -> None:
    if name in FLOW_SAMPLER_NAMES:
        _check_flow(cfg)
    betas = cfg.get("trained_betas")
    if betas is not None and len(betas) != cfg["num_train_timesteps"]:
        raise ValueError(f"trained_betas: expected num_train_timesteps={cfg['num_train_timesteps']} values, "
                         f"got {len(betas)}")
    if sum(bool(cfg.get(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas")) > 1:
        raise ValueError("use_karras_sigmas: at most one of use_karras_sigmas, use_exponential_sigmas and "
                         "use_lu_lambdas may be set")
    if name == "dpm++_single":
        _check_singlestep(cfg)


def _check_flow(cfg: dict[str, Any]) -> None:
    if cfg["shift"] <= 0:  # sigma' = shift sigma / (1 + (shift - 1) sigma): all zero for shift 0
        raise ValueError(f"shift: expected a value > 0, got {cfg['shift']}")
    terminal = cfg.get("shift_terminal")
    if terminal is not None and terminal >= 1:  # the stretch divides by 1 - shift_terminal
        raise ValueError(f"shift_terminal: expected a value in [0, 1), got {terminal}")


def _check_singlestep(cfg: dict[str, Any]) -> None:
    algorithm = cfg["algorithm_type"]
    if algorithm in ("dpmsolver", "deis") and cfg["final_sigmas_type"] == "zero":
        # As diffusers, which refuses the pair in its constructor (dpmsolver's last update would be 0 * inf).
        raise ValueError(f"final_sigmas_type: 'zero' is not supported with algorithm_type={algorithm!r} of the "
                         f"'dpm++_single' sampler; use 'sigma_min'")
    if algorithm == "dpmsolver" and cfg["thresholding"]:
        raise NotImplementedError("thresholding=True is not implemented for algorithm_type='dpmsolver' of the "
                                  "'dpm++_single' sampler (diffusers' DPMSolverSinglestepScheduler fails on it)")


class SamplerConfig(dict):
    """A sampler's resolved config: a read-only dict whose keys also read as attributes
    (`config.num_train_timesteps`), like diffusers' FrozenDict. Being a dict, diffusers'
    `SomeScheduler.from_config(sampler.config)` takes it as it takes a scheduler's config."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"{key!r} is not a sampler config key") from None

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config is read-only: build a new sampler (make_sampler / from_config) or call the "
                        "sampler's register_to_config(**changes)")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple:  # copy / pickle rebuild from a plain dict (item assignment is blocked)
        return (SamplerConfig, (dict(self),))


# ---------------------------------------------------------------- noise schedule (host, float32)


def _alpha_bar_betas(n: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> torch.Tensor:
    """Betas that make prod(1 - beta) follow alpha_bar(t) on t in [0, 1] (cosine/laplace schedules)."""
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(t: float) -> float:
    log_snr = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def make_betas(cfg: Mapping[str, Any]) -> torch.Tensor:
    """[num_train_timesteps] float32 betas for a resolved config (same values as diffusers)."""
    n, start, end = cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"]
    if cfg["trained_betas"] is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    elif cfg["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    elif cfg["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    elif cfg["beta_schedule"] == "squaredcos_cap_v2":
        betas = _alpha_bar_betas(n, _cosine_alpha_bar)
    elif cfg["beta_schedule"] == "laplace":
        betas = _alpha_bar_betas(n, _laplace_alpha_bar)
    else:  # sigmoid
        betas = torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start
    return _zero_terminal_snr(betas) if cfg.get("rescale_betas_zero_snr", False) else betas


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step is pure noise (arXiv 2305.08891, algorithm 1)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_alphas_cumprod(cfg: Mapping[str, Any], pin_last: bool) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), float32. pin_last: the sigma-based samplers replace an
    exactly-zero terminal alpha_bar with 2**-24 so that sigma stays finite (as diffusers does)."""
    alphas_cumprod = torch.cumprod(1.0 - make_betas(cfg), dim=0)
    if pin_last and cfg.get("rescale_betas_zero_snr", False):
        alphas_cumprod[-1] = 2**-24
    return alphas_cumprod


def spaced_timesteps(cfg: Mapping[str, Any], num_steps: int, last: int | None = None, extra: int = 0,
                     round_linspace: bool = True) -> np.ndarray:
    """Descending training timesteps for `num_steps` inference steps under cfg["timestep_spacing"].

    last: the largest usable timestep + 1 (DPM-Solver clips it by lambda); extra: 1 for DPM-Solver, which
    spaces num_steps + 1 points and drops the final one; round_linspace: False keeps fractional linspace
    timesteps (Euler). Returns float64 values (callers cast).
    """
    total = cfg["num_train_timesteps"]
    last = total if last is None else last
    spacing, n = cfg["timestep_spacing"], num_steps + extra
    if spacing == "linspace":
        steps = np.linspace(0, last - 1, n)
        steps = (steps.round() if round_linspace else steps)[::-1]
    elif spacing == "leading":
        steps = (np.arange(0, n) * (last // n)).round()[::-1] + cfg["steps_offset"]
    else:  # trailing
        steps = np.round(np.arange(last, 0, -total / num_steps)) - 1
        # For some step counts (61, 103, ... of 1000) float error in arange adds a final step at -1:
        # diffusers keeps it and indexes alphas_cumprod[-1]; drop it.
        steps = steps[steps >= 0]
    steps = np.ascontiguousarray(steps[:num_steps])
    if steps.size and steps.max() > total - 1:
        raise ValueError(f"steps_offset: timestep {int(steps.max())} would exceed num_train_timesteps - 1 = "
                         f"{total - 1} with {num_steps} steps and steps_offset={cfg['steps_offset']}")
    return steps


def sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """Fractional training timestep whose sigma is `sigma` (linear interpolation in log sigma), in the precision of
    the interpolation weight: float64 for a float64 sigma, float32 for a float32 sigma and float32 log_sigmas (as
    diffusers' KDPM2 computes its interpolated timesteps, with float32 torch tensors)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    below = np.cumsum(log_sigma - log_sigmas[:, None] >= 0, axis=0).argmax(axis=0)
    low = below.clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return ((1 - w) * low.astype(w.dtype) + w * (low + 1).astype(w.dtype)).reshape(np.shape(sigma))


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) noise levels: uniform in sigma**(1/rho) from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, num_steps)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_steps: int) -> np.ndarray:
    """Noise levels uniform in log sigma from sigma_max down to sigma_min."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps))


def lu_sigmas(log_sigmas: np.ndarray, num_steps: int) -> np.ndarray:
    """Lu et al.'s schedule: noise levels uniform in log sigma between the ends of `log_sigmas`."""
    top, bottom = log_sigmas[0].item(), log_sigmas[-1].item()
    return np.exp(top + np.linspace(0, 1, num_steps) * (bottom - top))


def lms_coefficients(sigmas: Sequence[float] | torch.Tensor, i: int, order: int) -> np.ndarray:
    """[order] float64 weights of the linear multistep step from sigmas[i] to sigmas[i + 1]; weight j multiplies the
    derivative taken at sigmas[i - j] (0 <= j < order <= i + 1).

    Weight j is the integral over [sigmas[i], sigmas[i + 1]] of the Lagrange basis polynomial that is 1 at sigmas[i - j]
    and 0 at the other order - 1 levels. That polynomial has degree order - 1, so Gauss-Legendre quadrature with
    ceil(order / 2) nodes integrates it exactly (diffusers calls scipy's adaptive quad for the same integral)."""
    if not 1 <= order <= i + 1:
        raise ValueError(f"order: expected 1 <= order <= i + 1 = {i + 1} (the levels so far), got {order}")
    levels = np.array([float(sigmas[i - j]) for j in range(order)])
    lo, hi = float(sigmas[i]), float(sigmas[i + 1])
    nodes, node_weights = np.polynomial.legendre.leggauss((order + 1) // 2)
    tau = (lo + hi) / 2 + (hi - lo) / 2 * nodes
    out = np.empty(order)
    for j in range(order):
        others = np.delete(levels, j)
        basis = np.prod((tau[:, None] - others) / (levels[j] - others), axis=1)
        out[j] = (hi - lo) / 2 * float(node_weights @ basis)
    return out


def _final_sigma(cfg: Mapping[str, Any], alphas_cumprod: torch.Tensor) -> float:
    if cfg["final_sigmas_type"] == "zero":
        return 0.0
    return float(((1 - alphas_cumprod[0]) / alphas_cumprod[0]) ** 0.5)


# ---------------------------------------------------------------- shared step pieces


def draw_noise(shape: torch.Size, like: torch.Tensor, generator: Generator, dtype: torch.dtype | None = None
               ) -> torch.Tensor:
    """Standard normal noise of `shape` on like.device, drawn exactly as diffusers' randn_tensor does:
    a CPU generator draws on the CPU then copies; a list of generators draws one batch item each."""
    dtype = like.dtype if dtype is None else dtype
    device, draw_on = like.device, like.device
    gens = generator if isinstance(generator, list) else [generator] if generator is not None else []
    if gens and gens[0].device.type != device.type:
        if gens[0].device.type != "cpu":
            raise ValueError(f"generator: a {gens[0].device.type} generator cannot draw noise for {device} tensors")
        draw_on = torch.device("cpu")
    if len(gens) > 1:
        parts = [torch.randn((1, *shape[1:]), generator=g, device=draw_on, dtype=dtype) for g in gens]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(shape, generator=gens[0] if gens else None, device=draw_on, dtype=dtype).to(device)


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding: per sample, clamp x0 to +-s and divide by s, where s is the `ratio`
    quantile of |x0| clamped to [1, max_value]. x0: [B, ...]; returns x0's shape and dtype."""
    flat = x0.reshape(x0.shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs fp32, and CPU clamp has no half kernel
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)


def _check_tensor(name: str, value: Any) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {value.dtype}")


# ---------------------------------------------------------------- sampler base


@dataclass
class Plan:
    """Everything set_timesteps computes. timesteps: [N]; coef: [N, K] float32 rows of per-step
    coefficients (column meaning is per sampler); sigmas: [N + 1] float32 CPU (sigma samplers) or None;
    noise: per step, whether the step draws noise; order: per step, the solver order (DPM-Solver);
    host_timesteps: the timesteps as Python floats (to check a `t` argument without a device read);
    host_coef: coef's rows as Python floats (the fused update's coefficients, without a device read)."""

    timesteps: torch.Tensor
    coef: torch.Tensor
    sigmas: torch.Tensor | None
    noise: tuple[bool, ...]
    order: tuple[int, ...]
    host_timesteps: tuple[float, ...] = ()
    host_coef: tuple[tuple[float, ...], ...] = ()
    # The num_steps set_timesteps was given, where it differs from the model calls in `noise` (PNDM, Heun).
    inference_steps: int | None = None


@dataclass
class FusedUpdate:
    """How a step runs as one genai_fast.guided_update pass: its coefficients, the x0 clamp (None: none),
    whether the result takes the model output's dtype (as diffusers casts it) and, for a multistep
    sampler, the previous x0 it reads and whether it keeps this step's x0."""

    coefficients: UpdateCoefficients
    clip: float | None = None
    model_dtype: bool = False
    previous_x0: torch.Tensor | None = None
    keep_x0: bool = False


class StepOutput(NamedTuple):
    """step(..., return_dict=True): the next latents as `.prev_sample` (or `[0]`), as diffusers' SchedulerOutput."""

    prev_sample: torch.Tensor


class StepResult(torch.Tensor):
    """step()'s default result: the next latents, a tensor that also answers `.prev_sample` (the same data as a
    plain tensor), so that diffusers pipelines which read `scheduler.step(...).prev_sample` run unchanged while
    `x = sampler.step(...)` keeps giving a tensor. Operations on it return plain tensors (its torch function
    handling is disabled, as nn.Parameter's), and it pickles and deep-copies as a plain tensor."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def prev_sample(self) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)

    def __reduce_ex__(self, protocol: Any) -> Any:  # torch.load(weights_only=True) knows only plain tensors
        return self.prev_sample.__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict) -> torch.Tensor:
        return self.prev_sample.__deepcopy__(memo)


def _check_return_dict(return_dict: Any) -> None:
    if return_dict is not None and not isinstance(return_dict, (bool, np.bool_)):
        raise TypeError(f"return_dict: expected a bool or None, got {type(return_dict).__name__}")


def _step_result(prev_sample: torch.Tensor, return_dict: bool | None) -> Any:
    if return_dict is None:
        return prev_sample.as_subclass(StepResult)
    return StepOutput(prev_sample) if return_dict else (prev_sample,)


def _same_value(a: Any, b: Any) -> bool:
    """Config values equal (trained_betas arrays compare by identity: no elementwise truth value)."""
    return a is b or (not isinstance(a, np.ndarray) and not isinstance(b, np.ndarray) and a == b)


class Sampler:
    """Base class: config handling, the step counter and the public sampling API.

    Also usable as a diffusers pipeline's scheduler (`pipe.scheduler = sampler`): `order`, `len()`,
    `num_inference_steps`, `begin_index` / `set_begin_index`, `config` (attribute access, and a dict that
    diffusers' `from_config` takes), `register_to_config`, and `step(..., return_dict=...)`."""

    name = ""
    sigma_based = False  # Euler and DPM-Solver zero-pin a rescaled terminal alpha_bar
    order = 1  # model evaluations per step (diffusers pipelines read scheduler.order)

    def __init__(self, **config: Any) -> None:
        self._configure(config)

    def _configure(self, config: Mapping[str, Any]) -> None:
        """Validate `config`, build the noise schedule, drop any plan (set_timesteps comes next).

        The config records which keys held defaults under `_use_default_values`, as diffusers' configs do,
        so that diffusers' `OtherScheduler.from_config(sampler.config)` (and ours) applies its own defaults
        there, as it does for a diffusers scheduler's config."""
        resolved = resolve_config(self.name, config)
        defaulted = [key for key in resolved if key not in config]
        self.config: SamplerConfig = SamplerConfig({**resolved, "_use_default_values": defaulted})
        self.num_train_timesteps: int = self.config["num_train_timesteps"]
        self._init_schedule()
        self._plan: Plan | None = None
        self._index = 0
        self._begin: int | None = None

    def _init_schedule(self) -> None:
        """The training noise schedule of the config (the flow-matching samplers have their own)."""
        self.alphas_cumprod = make_alphas_cumprod(self.config, pin_last=self.sigma_based)  # [T] float32, CPU

    def __repr__(self) -> str:
        changed = [f", {k}={self.config[k]!r}" for k, opt in OPTIONS[self.name].items()
                   if not _same_value(self.config[k], opt.default)]
        return f"make_sampler({self.name!r}{''.join(changed)})"

    def __len__(self) -> int:
        """num_train_timesteps, as len() of a diffusers scheduler."""
        return self.num_train_timesteps

    # -- config changes (diffusers' ConfigMixin conventions)

    def register_to_config(self, **changes: Any) -> None:
        """Change config keys, as ConfigMixin.register_to_config: the sampler is rebuilt from the updated config
        (checked as make_sampler's; unlike diffusers, the betas follow a changed beta key too), and
        set_timesteps must be called again."""
        self._reconfigure({**self.config, **changes}, changed=changes.keys())

    @property
    def _internal_dict(self) -> SamplerConfig:
        """diffusers' name for the config. Stable Diffusion pipelines replace it while they are constructed, to
        update an outdated config (steps_offset=1, clip_sample=False): that rebuilds the sampler as
        register_to_config does, so the sampler runs with the updated values as a diffusers scheduler would."""
        return self.config

    @_internal_dict.setter
    def _internal_dict(self, config: Mapping[str, Any]) -> None:
        changed = [k for k, v in config.items() if k in self.config and not _same_value(v, self.config[k])]
        self._reconfigure(config, changed=changed)

    def _reconfigure(self, config: Mapping[str, Any], changed: Any) -> None:
        """_configure from a full config: keys that held defaults and were not changed stay defaulted."""
        defaulted = set(self.config["_use_default_values"]) - set(changed)
        self._configure({k: v for k, v in config.items() if not k.startswith("_") and k not in defaulted})

    # -- schedule

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """Plan `num_steps` inference steps (1 <= num_steps <= num_train_timesteps) and reset the counter.

        The timesteps and coefficient rows live on `device` (default CPU; CPU coefficients also work
        with CUDA latents, as 0-d CPU tensors are passed to kernels by value)."""
        self._install(self._make_plan(self._check_num_steps(num_steps)), device)

    def _check_num_steps(self, num_steps: Any, name: str = "num_steps", bounded: bool = True) -> int:
        """num_steps as an int; at most num_train_timesteps where bounded (the flow samplers' continuous
        schedules are not)."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(num_steps).__name__}")
        if not bounded and num_steps < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {num_steps}")
        if bounded and not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"{name}: expected 1 <= {name} <= num_train_timesteps="
                             f"{self.num_train_timesteps}, got {num_steps}")
        return int(num_steps)

    def _install(self, plan: Plan, device: torch.device | str | None) -> None:
        """Make `plan` current (its tables on `device`) and reset the step counter."""
        plan.host_timesteps = tuple(float(v) for v in plan.timesteps.double())
        plan.host_coef = tuple(tuple(row) for row in plan.coef.double().tolist())
        plan.timesteps = plan.timesteps.to(device)
        plan.coef = plan.coef.to(device)
        self._plan, self._index, self._begin = plan, 0, None
        self._reset_history()

    def _make_plan(self, num_steps: int) -> Plan:
        raise NotImplementedError

    def _reset_history(self) -> None:
        pass

    def _require_plan(self) -> Plan:
        if self._plan is None:
            raise RuntimeError(f"{self.name}: call set_timesteps(num_steps) before sampling")
        return self._plan

    @property
    def timesteps(self) -> torch.Tensor:
        """[num_steps] timesteps the model is evaluated at, in order (int64; float32 for Euler)."""
        return self._require_plan().timesteps

    @property
    def num_steps(self) -> int:
        return len(self._require_plan().noise)

    @property
    def num_inference_steps(self) -> int | None:
        """The num_steps given to set_timesteps (PNDM and Heun plan more model calls); None before it (diffusers'
        attribute)."""
        if self._plan is None:
            return None
        return self._plan.inference_steps or len(self._plan.noise)

    @property
    def step_index(self) -> int:
        """The index in `timesteps` of the next step (steps run since set_timesteps, plus the begin index)."""
        return self._index

    @property
    def begin_index(self) -> int | None:
        """The index set_begin_index started at since set_timesteps, else None (as diffusers)."""
        return self._begin

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at `timesteps[begin_index]` instead of the first (img2img with strength < 1 skips the
        first steps; diffusers pipelines call it after set_timesteps). As in diffusers, a multistep sampler's
        first step from there is first order, and add_noise noises to the noise level of the current step."""
        plan = self._require_plan()
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)):
            raise TypeError(f"begin_index: expected an int, got {type(begin_index).__name__}")
        if not 0 <= begin_index <= len(plan.noise):
            raise ValueError(f"begin_index: expected 0 <= begin_index <= {len(plan.noise)} (the planned steps), "
                             f"got {begin_index}")
        self._index = self._begin = int(begin_index)
        self._reset_history()

    @property
    def init_noise_sigma(self) -> float:
        """Scale of the initial noise: latents = randn(...) * init_noise_sigma (call set_timesteps first
        where the schedule changes it, as diffusers pipelines do)."""
        return 1.0

    def scale_model_input(self, x: torch.Tensor, t: Any = None) -> torch.Tensor:
        """The model input for the current step: x [B, C, ...] scaled as the sampler requires."""
        return x

    # -- the forward process

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The forward process, as diffusers' add_noise: `original` [B, ...] noised to `timesteps` (one per batch
        item, [B], or one for all) with `noise` of original's shape -> [B, ...] in original's dtype.

        DDPM and DDIM: sqrt(a_t) original + sqrt(1 - a_t) noise, a_t = alpha_bar at the training timestep t
        (integers in [0, num_train_timesteps)). For training, and for img2img's first latents."""
        t = self._check_add_noise(original, noise, timesteps)
        alpha_bar = self.alphas_cumprod.to(device=original.device, dtype=original.dtype)[t.to(original.device)]
        return _per_item(alpha_bar**0.5, original) * original + _per_item((1 - alpha_bar) ** 0.5, original) * noise

    def _check_add_noise(self, original: Any, noise: Any, timesteps: Any) -> torch.Tensor:
        """timesteps as a 1-D CPU tensor after checking the three arguments (ValueError / TypeError naming one)."""
        t = _check_noise_args(original, noise, timesteps)
        if not self.sigma_based or self._plan is None:
            if t.is_floating_point() and not bool((t == t.round()).all()):
                raise ValueError(f"timesteps: expected integer training timesteps, got {t.tolist()}")
            t = t.long()
            if bool(((t < 0) | (t >= self.num_train_timesteps)).any()):
                raise ValueError(f"timesteps: expected values in [0, {self.num_train_timesteps}), got {t.tolist()}")
        return t

    # -- stepping

    def step(self, model_output: torch.Tensor, t: Any, x: torch.Tensor, generator: Generator = None, *,
             return_dict: bool | None = None) -> Any:
        """One denoising step: the model's output at the current timestep and the latents x [B, C, ...]
        -> the latents for the next timestep, x's shape (model_output's dtype where diffusers casts).

        generator: torch.Generator (or a list, one per batch item) for the stochastic samplers.
        return_dict: as diffusers' scheduler.step's, for pipelines: True returns a StepOutput (`.prev_sample`),
        False the tuple (prev_sample,). None, the default, returns the latents as a tensor (a StepResult, which
        also answers `.prev_sample`, as pipelines that leave diffusers' default return_dict=True read it)."""
        _check_return_dict(return_dict)
        return _step_result(self._advance(model_output, t, x, generator), return_dict)

    def _advance(self, model_output: Any, t: Any, x: Any, generator: Generator, **options: Any) -> torch.Tensor:
        """Check the arguments, run step `step_index` (options: per-step arguments of a sampler's _step)."""
        _check_tensor("model_output", model_output)
        plan = self._current(x, t)
        out = self._step(self._index, plan, model_output, x, generator, **options)
        self._index += 1
        return out

    def guided_step(self, model_output: torch.Tensor, t: Any, x: torch.Tensor, guidance_scale: float,
                    generator: Generator = None) -> torch.Tensor:
        """step() on the classifier-free guidance combination uncond + g (cond - uncond) of a doubled-batch
        model output [2B, ...] (the unconditional half first), x [B, ...] -> the next latents.

        Where the sampler's update is affine in the model output (every configuration but dynamic
        thresholding and DDPM's learned variance), the combination and the update run as one pass
        (genai_fast.guided_update, fp32 arithmetic); otherwise as the combination, then step(). Noise
        is drawn as step() draws it, so a generator gives the same sequence either way."""
        _check_tensor("model_output", model_output)
        guidance = check_guidance(guidance_scale)
        plan = self._current(x, t)
        if model_output.dim() != x.dim() or model_output.shape[0] != 2 * x.shape[0]:
            raise ValueError(f"model_output: expected the doubled batch [2B, ...] = [{2 * x.shape[0]}, ...] for x "
                             f"of shape {tuple(x.shape)} (unconditional half first), got {tuple(model_output.shape)}")
        fused = self._fused(self._index, plan)
        if fused is None or not all(map(math.isfinite, fused.coefficients)):
            # Also a degenerate step (an epsilon model at a zero-SNR timestep, see _x0_weights): step()
            # reproduces diffusers there (x0 = +-inf, finite again once clipped), a fused pass cannot.
            uncond, cond = model_output.chunk(2)
            return self._advance(uncond + guidance * (cond - uncond), t, x, generator)
        noise = (draw_noise(x.shape, model_output, generator, self._noise_dtype(model_output))
                 if plan.noise[self._index] else None)
        out, x0 = guided_update(x, model_output, fused.coefficients, guidance, fused.previous_x0, noise, fused.clip,
                                return_x0=fused.keep_x0, out_dtype=model_output.dtype if fused.model_dtype else None)
        if fused.keep_x0:
            self._keep_x0(x0)
        self._index += 1
        return out

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        """Step i as one guided_update pass, or None where the update is not affine in the model output."""
        return None

    def _noise_dtype(self, model_output: torch.Tensor) -> torch.dtype:
        """The dtype diffusers draws a step's noise in (randn_tensor's dtype argument)."""
        return model_output.dtype

    def _keep_x0(self, x0: torch.Tensor) -> None:
        pass

    def _alpha_cumprod_before(self, prev: Any) -> torch.Tensor:
        """alpha_bar at timestep `prev`; before the first training timestep (prev < 0), 1 with set_alpha_to_one,
        else alpha_bar_0 (diffusers' final_alpha_cumprod of DDIM, PNDM and LCM)."""
        if prev >= 0:
            return self.alphas_cumprod[prev]
        return torch.tensor(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def _x0_weights(self, sqrt_a: float, sqrt_b: float) -> tuple[float, float]:
        """(x0_from_x, x0_from_m): _to_x0 of the configured prediction type as x0 = p x + q m."""
        prediction = self.config["prediction_type"]
        if prediction == "epsilon":
            if sqrt_a == 0.0:  # alpha_bar = 0 (rescale_betas_zero_snr): no finite weights
                return math.nan, math.nan
            return 1.0 / sqrt_a, -sqrt_b / sqrt_a
        if prediction == "v_prediction":
            return sqrt_a, -sqrt_b
        return 0.0, 1.0

    def _clip(self) -> float | None:
        """The x0 clamp bound where clipping is configured (thresholding is not affine: not fused)."""
        cfg = self.config
        return float(cfg["clip_sample_range"]) if cfg.get("clip_sample") else None

    def _current(self, x: Any, t: Any) -> Plan:
        """Checks before a step (all on host-side attributes: nothing waits for the device)."""
        plan = self._require_plan()
        _check_tensor("x", x)
        if self._index >= len(plan.noise):
            raise RuntimeError(f"{self.name}: all {len(plan.noise)} steps have run; call set_timesteps again")
        if plan.coef.device.type != "cpu" and plan.coef.device != x.device:
            plan.coef = plan.coef.to(x.device)  # CPU rows need no move: 0-d CPU tensors act as scalars
        self._check_t(plan, t)
        return plan

    def _check_t(self, plan: Plan, t: Any) -> None:
        """Catch a wrong timestep where that costs nothing: Python numbers and CPU tensors (a device
        tensor is not read back, the step counter decides)."""
        if isinstance(t, torch.Tensor):
            if t.device.type != "cpu" or t.numel() == 0:
                return
            ok = bool((t.double() == plan.host_timesteps[self._index]).all())
        elif isinstance(t, (int, float, np.number)) and not isinstance(t, bool):
            ok = float(t) == plan.host_timesteps[self._index]
        else:
            return
        if not ok:
            raise ValueError(f"t: expected the current timestep {plan.host_timesteps[self._index]:g} (step "
                             f"{self._index} of {len(plan.noise)}; steps run in `timesteps` order), got {t}")

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        raise NotImplementedError

    def _x0_limit(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding, else clipping, of the predicted clean sample (where configured)."""
        cfg = self.config
        if cfg.get("thresholding"):
            return dynamic_threshold(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
        if cfg.get("clip_sample"):
            return x0.clamp(-cfg["clip_sample_range"], cfg["clip_sample_range"])
        return x0


def _check_noise_args(original: Any, noise: Any, timesteps: Any, names: tuple[str, str] = ("original", "timesteps")
                      ) -> torch.Tensor:
    """The timesteps of add_noise / scale_noise as a 1-D CPU tensor, after checking the three arguments
    (ValueError / TypeError naming one; names: how the sample and the timesteps are called)."""
    sample, steps = names
    _check_tensor(sample, original)
    _check_tensor("noise", noise)
    if noise.shape != original.shape:
        raise ValueError(f"noise: expected {sample}'s shape {tuple(original.shape)}, got {tuple(noise.shape)}")
    t = torch.as_tensor(timesteps).detach().cpu().reshape(-1)
    if t.numel() not in (1, original.shape[0] if original.dim() else 1):
        raise ValueError(f"{steps}: expected one timestep or one per batch item ({original.shape[0]}), got "
                         f"{t.numel()}")
    return t


def timestep_indices(planned: Sequence[float], t: torch.Tensor) -> list[int]:
    """Where each timestep of t [B] sits in `planned`, by diffusers' index_for_timestep rule: a timestep planned
    twice (Heun's inner levels) takes its second place. ValueError for a timestep not planned."""
    picks = []
    for value in t.double().tolist():
        where = [i for i, step in enumerate(planned) if step == value]
        if not where:
            shown = list(planned) if len(planned) <= 50 else f"[{planned[0]:g}, ..., {planned[-1]:g}] ({len(planned)})"
            raise ValueError(f"timesteps: {value:g} is not one of the planned timesteps {shown}")
        picks.append(where[1] if len(where) > 1 else where[0])
    return picks


def _per_item(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] or [1] per-item factors shaped to broadcast over like [B, ...]."""
    return values.reshape(-1, *([1] * max(like.dim() - 1, 0)))


def check_guidance(guidance_scale: Any) -> float:
    """guidance_scale as a float; TypeError / ValueError naming it unless it is a finite number >= 0."""
    # NumPy scalars count too (a scale taken from np.linspace), as everywhere a config takes a number.
    if not is_real_number(guidance_scale):
        raise TypeError(f"guidance_scale: expected a number, got {type(guidance_scale).__name__}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale: expected a finite number >= 0, got {guidance_scale}")
    return float(guidance_scale)


def _check_model_output(model_output: torch.Tensor, x: torch.Tensor, channel_factor: int = 1) -> None:
    """model_output must have x's shape, with channel_factor x the channels (2 for learned variance)."""
    want = (x.shape[0], x.shape[1] * channel_factor, *x.shape[2:]) if x.dim() >= 2 else tuple(x.shape)
    if tuple(model_output.shape) != want:
        raise ValueError(f"model_output: expected shape {want} (from x's shape {tuple(x.shape)}), "
                         f"got {tuple(model_output.shape)}")


def _stack(rows: Sequence[Sequence[torch.Tensor | float]]) -> torch.Tensor:
    """[N, K] float32 table from per-step rows of 0-d float32 tensors (values kept bit for bit)."""
    return torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in row]) for row in rows])


# ---------------------------------------------------------------- DDPM


class DDPMSampler(Sampler):
    """Ancestral sampling of Ho et al. (2020), as diffusers' DDPMScheduler.

    Columns of coef: sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t), x0 weight, x weight, noise std,
    log variance (min, max) for "learned_range"."""

    name = "ddpm"

    def _make_plan(self, num_steps: int) -> Plan:
        steps = spaced_timesteps(self.config, num_steps).astype(np.int64)
        prev = np.append(steps[1:], -1)
        rows = [self._coefficients(int(t), int(p)) for t, p in zip(steps, prev, strict=True)]
        # diffusers adds noise whenever t > 0 (also on a trailing schedule's last step, with std ~1e-10).
        noise = tuple(bool(t > 0) for t in steps)
        return Plan(torch.from_numpy(steps.copy()), _stack(rows), None, noise, ())

    def _coefficients(self, t: int, prev: int) -> list[torch.Tensor]:
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
        beta_prod, beta_prod_prev = 1 - a_t, 1 - a_prev
        alpha_step = a_t / a_prev
        beta_step = 1 - alpha_step
        c_x0 = (a_prev**0.5 * beta_step) / beta_prod
        c_x = alpha_step**0.5 * beta_prod_prev / beta_prod
        variance = torch.clamp((1 - a_prev) / (1 - a_t) * beta_step, min=1e-20)
        kind = self.config["variance_type"]
        if kind == "fixed_small_log":
            std = torch.exp(0.5 * torch.log(variance))
        elif kind == "fixed_large":
            std = beta_step**0.5
        else:
            std = variance**0.5
        return [a_t**0.5, beta_prod**0.5, c_x0, c_x, std, torch.log(variance), torch.log(beta_step)]

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        kind = self.config["variance_type"]
        learned = kind in ("learned", "learned_range")
        _check_model_output(model_output, x, channel_factor=2 if learned else 1)
        predicted_var = None
        if learned:  # the model predicts [epsilon-or-x0-or-v, variance] along channels
            model_output, predicted_var = torch.split(model_output, x.shape[1], dim=1)
        sqrt_a, sqrt_b, c_x0, c_x, std, log_min, log_max = plan.coef[i].unbind()
        x0 = _to_x0(self.config["prediction_type"], model_output, x, sqrt_a, sqrt_b)
        x_prev = c_x0 * self._x0_limit(x0) + c_x * x
        if not plan.noise[i]:
            return x_prev
        noise = draw_noise(model_output.shape, model_output, generator)
        if predicted_var is None:
            return x_prev + std * noise
        if kind == "learned":
            return x_prev + predicted_var**0.5 * noise
        frac = (predicted_var + 1) / 2
        return x_prev + torch.exp(0.5 * (frac * log_max + (1 - frac) * log_min)) * noise

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        if self.config["variance_type"] in ("learned", "learned_range") or self.config["thresholding"]:
            return None
        sqrt_a, sqrt_b, c_x0, c_x, std, _, _ = plan.host_coef[i]
        coefficients = UpdateCoefficients(*self._x0_weights(sqrt_a, sqrt_b), x=c_x, x0=c_x0, m=0.0,
                                          noise=std if plan.noise[i] else 0.0)
        return FusedUpdate(coefficients, self._clip())


def _to_x0(prediction: str, out: torch.Tensor, x: torch.Tensor, sqrt_a: torch.Tensor, sqrt_b: torch.Tensor
           ) -> torch.Tensor:
    """Predicted clean sample from the model output (variance-preserving parametrisation)."""
    if prediction == "epsilon":
        return (x - sqrt_b * out) / sqrt_a
    if prediction == "v_prediction":
        return sqrt_a * x - sqrt_b * out
    return out  # "sample"


# ---------------------------------------------------------------- DDIM


class DDIMSampler(Sampler):
    """Denoising diffusion implicit models (Song et al. 2021), as diffusers' DDIMScheduler; eta > 0 adds
    the stochastic part (eta = 1 is DDPM-like).

    Columns of coef: sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t), sqrt(alpha_bar_prev), direction weight,
    noise std."""

    name = "ddim"

    def _make_plan(self, num_steps: int) -> Plan:
        steps = spaced_timesteps(self.config, num_steps).astype(np.int64)
        # diffusers steps to t - T // N, not to the next planned timestep (they differ for linspace).
        stride = self.num_train_timesteps // num_steps
        rows = [self._coefficients(int(t), int(t) - stride, self.config["eta"]) for t in steps]
        noise = (self.config["eta"] > 0,) * len(steps)
        return Plan(torch.from_numpy(steps.copy()), _stack(rows), None, noise, ())

    def _coefficients(self, t: int, prev: int, eta: float) -> list[torch.Tensor]:
        a_t, a_prev = self.alphas_cumprod[t], self._alpha_cumprod_before(prev)
        beta_prod, beta_prod_prev = 1 - a_t, 1 - a_prev
        variance = (beta_prod_prev / beta_prod) * (1 - a_t / a_prev)
        std = eta * variance**0.5
        # With eta = 1 where alpha_bar_t is 0 or nearly (zero terminal SNR, the cosine schedule's last
        # timestep) std**2 equals 1 - a_prev up to rounding; diffusers' sqrt of the rounded, sometimes
        # negative, difference turns the whole sample into NaN.
        direction = torch.clamp(1 - a_prev - std**2, min=0.0) ** 0.5
        return [a_t**0.5, beta_prod**0.5, a_prev**0.5, direction, std]

    def step(self, model_output: torch.Tensor, t: Any, x: torch.Tensor, generator: Generator = None, *,
             eta: float | None = None, use_clipped_model_output: bool | None = None,
             return_dict: bool | None = None) -> Any:
        """Sampler.step, plus the step arguments of diffusers' DDIMScheduler.step, which DDIMPipeline and the
        Stable Diffusion pipelines pass: `eta` and `use_clipped_model_output` replace the config's values for
        this step (None keeps the config's). As with diffusers, a pipeline's own `eta` argument (default 0.0)
        thus decides, whatever eta the sampler was made with."""
        options = {}
        if eta is not None:
            options["eta"] = _check_option(self.name, "eta", eta, OPTIONS[self.name]["eta"])
        if use_clipped_model_output is not None:
            key = "use_clipped_model_output"
            options["clipped"] = _check_option(self.name, key, use_clipped_model_output, OPTIONS[self.name][key])
        _check_return_dict(return_dict)
        return _step_result(self._advance(model_output, t, x, generator, **options), return_dict)

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator,
              eta: float | None = None, clipped: bool | None = None) -> torch.Tensor:
        _check_model_output(model_output, x)
        coef, noise = plan.coef[i], plan.noise[i]
        if eta is not None and eta != self.config["eta"]:  # this step's row for another eta (host arithmetic)
            t = int(plan.host_timesteps[i])
            coef = _stack([self._coefficients(t, t - self.num_train_timesteps // len(plan.noise), eta)])[0]
            noise = eta > 0
        sqrt_a, sqrt_b, sqrt_a_prev, direction, std = coef.unbind()
        prediction = self.config["prediction_type"]
        x0 = _to_x0(prediction, model_output, x, sqrt_a, sqrt_b)
        if prediction == "epsilon":
            eps = model_output
        elif prediction == "v_prediction":
            eps = sqrt_a * model_output + sqrt_b * x
        else:
            eps = (x - sqrt_a * x0) / sqrt_b
        x0 = self._x0_limit(x0)
        if self.config["use_clipped_model_output"] if clipped is None else clipped:
            eps = (x - sqrt_a * x0) / sqrt_b
        x_prev = sqrt_a_prev * x0 + direction * eps
        if noise:
            x_prev = x_prev + std * draw_noise(model_output.shape, model_output, generator)
        return x_prev

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        if self.config["thresholding"]:
            return None
        sqrt_a, sqrt_b, sqrt_a_prev, direction, std = plan.host_coef[i]
        prediction = self.config["prediction_type"]
        # x_prev = sqrt_a_prev x0 + direction eps, with eps written in x, m and the (clamped) x0:
        if self.config["use_clipped_model_output"]:  # eps = (x - sqrt_a x0) / sqrt_b
            c_x, c_x0, c_m = direction / sqrt_b, sqrt_a_prev - direction * sqrt_a / sqrt_b, 0.0
        elif prediction == "epsilon":  # eps = m
            c_x, c_x0, c_m = 0.0, sqrt_a_prev, direction
        elif prediction == "v_prediction":  # eps = sqrt_a m + sqrt_b x
            c_x, c_x0, c_m = direction * sqrt_b, sqrt_a_prev, direction * sqrt_a
        else:  # "sample": eps = (x - sqrt_a m) / sqrt_b, from the unclamped x0 = m
            c_x, c_x0, c_m = direction / sqrt_b, sqrt_a_prev, -direction * sqrt_a / sqrt_b
        coefficients = UpdateCoefficients(*self._x0_weights(sqrt_a, sqrt_b), x=c_x, x0=c_x0, m=c_m,
                                          noise=std if plan.noise[i] else 0.0)
        return FusedUpdate(coefficients, self._clip())


# ---------------------------------------------------------------- sigma-parametrised samplers


class _SigmaSampler(Sampler):
    """Shared schedule code for Euler and DPM-Solver++, which walk sigma = sqrt((1 - a) / a)."""

    sigma_based = True

    def _train_sigmas(self) -> np.ndarray:
        """[T] float32 sigmas of the training timesteps, ascending with t."""
        return (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The forward process, as diffusers' add_noise, at the noise level sigma of each timestep: after
        set_timesteps, the planned sigma of that timestep (which must be one of `timesteps`; a timestep planned
        twice takes its second step, as diffusers) or, after set_begin_index, of the current step; before it,
        sqrt((1 - a_t) / a_t) of the training timestep.
        Euler: original + sigma noise; DPM-Solver++: (original + sigma noise) / sqrt(sigma^2 + 1)."""
        t = self._check_add_noise(original, noise, timesteps)
        sigma = self._sigmas_at(t).to(device=original.device, dtype=original.dtype)
        return self._noised(original, noise, _per_item(sigma, original))

    def _sigmas_at(self, t: torch.Tensor) -> torch.Tensor:
        """float32 sigmas of timesteps t [B]: the plan's (diffusers' index_for_timestep rule) or the training ones.
        Before set_timesteps diffusers' DPM-Solver pairs its descending timesteps with ascending sigmas; the
        training sigma of t is used here for both samplers (Euler's diffusers value). After set_begin_index, every
        item takes the sigma of the current step, whatever t holds (diffusers' rule, for img2img's first latents)."""
        if self._plan is not None and self._begin is not None:
            return self._plan.sigmas[[self._index] * t.numel()]
        if self._plan is None:
            return torch.from_numpy(self._train_sigmas())[t]
        return self._plan.sigmas[timestep_indices(self._plan.host_timesteps, t)]

    def _noised(self, original: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _respace(self, sigmas: np.ndarray, num_steps: int) -> np.ndarray | None:
        """Karras / exponential noise levels between the ends of `sigmas` (descending), or None."""
        lo = self.config.get("sigma_min")
        hi = self.config.get("sigma_max")
        lo = float(sigmas[-1]) if lo is None else lo
        hi = float(sigmas[0]) if hi is None else hi
        if self.config["use_karras_sigmas"]:
            return karras_sigmas(lo, hi, num_steps)
        if self.config["use_exponential_sigmas"]:
            return exponential_sigmas(lo, hi, num_steps)
        return None

    def _finish_sigmas(self, sigmas: np.ndarray) -> torch.Tensor:
        last = _final_sigma(self.config, self.alphas_cumprod)
        return torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))


class EulerSampler(_SigmaSampler):
    """Euler's method on the probability-flow ODE in sigma (Karras et al. 2022), as diffusers'
    EulerDiscreteScheduler (without churn).

    Columns of coef: input scale sqrt(sigma^2 + 1), sigma, sigma_next - sigma, v-prediction weights."""

    name = "euler"

    def _make_plan(self, num_steps: int) -> Plan:
        steps = spaced_timesteps(self.config, num_steps, round_linspace=False).astype(np.float32)
        train = self._train_sigmas()
        log_train = np.log(train)
        if self.config["interpolation_type"] == "linear":
            sigmas = np.interp(steps, np.arange(0, len(train)), train)
        else:  # log_linear: num_steps + 1 levels, as diffusers
            sigmas = torch.linspace(np.log(train[-1]), np.log(train[0]), num_steps + 1).exp().numpy()
        respaced = self._respace(sigmas, num_steps)
        if respaced is not None:
            sigmas = respaced
            steps = np.array([sigma_to_t(s, log_train) for s in sigmas])
        sigmas = self._finish_sigmas(sigmas)
        timesteps = torch.from_numpy(steps.astype(np.float32))
        if self.config["timestep_type"] == "continuous" and self.config["prediction_type"] == "v_prediction":
            timesteps = torch.stack([0.25 * s.log() for s in sigmas[:-1]])
        rows = [self._coefficients(sigmas[i], sigmas[i + 1]) for i in range(num_steps)]
        return Plan(timesteps, _stack(rows), sigmas, (False,) * num_steps, ())

    def _noised(self, original: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return original + noise * sigma

    def _levels(self, num_steps: int, round_karras: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, sigmas) of num_steps noise levels, as Heun, LMS and KDPM2 space them: the training sigmas
        interpolated at the spaced timesteps (float32 timesteps), or Karras / exponential levels between their ends
        with the matching fractional timesteps (float64; rounded for Karras with round_karras, as KDPM2's)."""
        steps = spaced_timesteps(self.config, num_steps, round_linspace=False).astype(np.float32)
        train = self._train_sigmas()
        sigmas = np.interp(steps, np.arange(0, len(train)), train)
        respaced = self._respace(sigmas, num_steps)
        if respaced is None:
            return steps, sigmas
        steps = np.array([sigma_to_t(s, np.log(train)) for s in respaced])
        if round_karras and self.config["use_karras_sigmas"]:
            steps = steps.round()
        return steps, respaced

    @staticmethod
    def _coefficients(sigma: torch.Tensor, sigma_next: torch.Tensor) -> list[torch.Tensor]:
        sigma_hat = sigma * (0.0 + 1)  # no churn: gamma = 0
        return [(sigma**2 + 1) ** 0.5, sigma_hat, sigma_next - sigma_hat, -sigma / (sigma**2 + 1) ** 0.5,
                sigma**2 + 1]

    @property
    def init_noise_sigma(self) -> float:
        sigmas = self._plan.sigmas if self._plan is not None else torch.from_numpy(self._train_sigmas())
        top = sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(top)
        return float((top**2 + 1) ** 0.5)

    def scale_model_input(self, x: torch.Tensor, t: Any = None) -> torch.Tensor:
        return x / self._current(x, t).coef[self._index, 0]

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        _, sigma_hat, dt, v_eps, v_x = plan.coef[i].unbind()
        x = x.to(torch.float32)  # diffusers steps in fp32 and casts back to the model's dtype
        x0 = _sigma_x0(self.config["prediction_type"], model_output, x, sigma_hat, v_eps, v_x)
        derivative = (x - x0) / sigma_hat
        return (x + derivative * dt).to(model_output.dtype)

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        _, sigma_hat, dt, v_eps, v_x = plan.host_coef[i]
        prediction = self.config["prediction_type"]
        if prediction == "epsilon":  # the derivative (x - x0) / sigma is the model output itself
            coefficients = UpdateCoefficients(0.0, 0.0, x=1.0, x0=0.0, m=dt)
        else:  # x + (x - x0) dt / sigma, x0 = m v_eps + x / v_x (v) or m (sample)
            weights = (1.0 / v_x, v_eps) if prediction == "v_prediction" else (0.0, 1.0)
            coefficients = UpdateCoefficients(*weights, x=1.0 + dt / sigma_hat, x0=-dt / sigma_hat, m=0.0)
        return FusedUpdate(coefficients, model_dtype=True)


def _sigma_x0(prediction: str, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, v_eps: torch.Tensor,
              v_x: torch.Tensor) -> torch.Tensor:
    """Predicted clean sample in the sigma parametrisation (x = x0 + sigma noise, the model sees x / sqrt(sigma^2 + 1)).
    v_eps, v_x: -sigma / sqrt(sigma^2 + 1) and sigma^2 + 1, the v-prediction weights (diffusers' float32 values)."""
    if prediction == "epsilon":
        return x - sigma * out
    if prediction == "v_prediction":
        return out * v_eps + x / v_x
    return out  # "sample"


def _input_weights(sigma: torch.Tensor) -> list[torch.Tensor]:
    """The columns a step at noise level sigma reads: the model-input scale sqrt(sigma^2 + 1), sigma, and the
    v-prediction weights of _sigma_x0, as diffusers computes them (float32)."""
    return [(sigma**2 + 1) ** 0.5, sigma, -sigma / (sigma**2 + 1) ** 0.5, sigma**2 + 1]


class EulerAncestralSampler(EulerSampler):
    """Euler's step down to sigma_down, then fresh noise of std sigma_up (sigma_down^2 + sigma_up^2 = sigma_next^2):
    diffusers' EulerAncestralDiscreteScheduler (A1111's "Euler a"). Noise is drawn at every step, the last one
    (sigma_up 0) included, as diffusers draws it.

    Columns of coef: input scale sqrt(sigma^2 + 1), sigma, sigma_down - sigma, v-prediction weights, sigma_up."""

    name = "euler_a"

    def _make_plan(self, num_steps: int) -> Plan:
        steps = spaced_timesteps(self.config, num_steps, round_linspace=False).astype(np.float32)
        train = self._train_sigmas()
        sigmas = np.interp(steps, np.arange(0, len(train)), train)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        rows = [self._coefficients(sigmas[i], sigmas[i + 1]) for i in range(num_steps)]
        return Plan(torch.from_numpy(steps), _stack(rows), sigmas, (True,) * num_steps, ())

    @staticmethod
    def _coefficients(sigma: torch.Tensor, sigma_next: torch.Tensor) -> list[torch.Tensor]:
        # diffusers' float32 arithmetic on the same float32 sigmas, so the rows are its values bit for bit.
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        return [(sigma**2 + 1) ** 0.5, sigma, sigma_down - sigma, -sigma / (sigma**2 + 1) ** 0.5, sigma**2 + 1,
                sigma_up]

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        _, sigma, dt, v_eps, v_x, sigma_up = plan.coef[i].unbind()
        x = x.to(torch.float32)  # diffusers steps in fp32 and casts back to the model's dtype
        epsilon = self.config["prediction_type"] == "epsilon"
        x0 = x - sigma * model_output if epsilon else model_output * v_eps + x / v_x
        x = x + (x - x0) / sigma * dt
        noise = draw_noise(model_output.shape, model_output, generator)
        return (x + noise * sigma_up).to(model_output.dtype)

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        _, sigma, dt, v_eps, v_x, sigma_up = plan.host_coef[i]
        if self.config["prediction_type"] == "epsilon":  # (x - x0) / sigma is the model output
            coefficients = UpdateCoefficients(0.0, 0.0, x=1.0, x0=0.0, m=dt, noise=sigma_up)
        else:
            coefficients = UpdateCoefficients(1.0 / v_x, v_eps, x=1.0 + dt / sigma, x0=-dt / sigma, m=0.0,
                                              noise=sigma_up)
        return FusedUpdate(coefficients, model_dtype=True)


class DPMSolverPPSampler(_SigmaSampler):
    """DPM-Solver++ (Lu et al. 2022), multistep, order 2 (or 1), in data prediction, as diffusers'
    DPMSolverMultistepScheduler with algorithm_type="dpmsolver++", or its stochastic form "sde-dpmsolver++"
    (A1111's "DPM++ 2M SDE"), which draws float32 noise at every step as diffusers does.

    Columns of coef: alpha_s, sigma_s (to convert the model output into x0 at the current level), the weight of x,
    minus the weight of x0, minus the second-order D1 weight, 1 / r0, the noise std (SDE; else 0)."""

    name = "dpm++"
    _rounds_cosine_karras = False  # diffusers' DPM-Solver keeps fractional Karras timesteps on the cosine schedule

    def _reset_history(self) -> None:
        self._prev_x0: torch.Tensor | None = None

    def _noised(self, original: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        alpha_t = 1 / (sigma**2 + 1) ** 0.5  # the variance-preserving pair (alpha_t, sigma_t) of this sigma
        return alpha_t * original + (sigma * alpha_t) * noise

    def _make_plan(self, num_steps: int) -> Plan:
        steps, sigmas = self._schedule(num_steps)
        n = len(steps)
        _check_distinct_levels(sigmas, n, self.config, "DPM-Solver++")  # the multistep update divides by the gap
        final_first_order = self.config["euler_at_final"] or self.config["final_sigmas_type"] == "zero" or (
            self.config["lower_order_final"] and n < 15)
        order = tuple(1 if self.config["solver_order"] == 1 or i == 0 or (i == n - 1 and final_first_order)
                      else 2 for i in range(n))
        rows = [self._coefficients(sigmas, i, order[i]) for i in range(n)]
        return Plan(torch.from_numpy(steps).to(torch.int64), _stack(rows), sigmas, (self._sde(),) * n, order)

    def _sde(self) -> bool:
        return self.config["algorithm_type"] == "sde-dpmsolver++"

    def _noise_dtype(self, model_output: torch.Tensor) -> torch.dtype:
        return torch.float32  # diffusers draws the SDE's noise in float32 whatever the model's dtype

    def _schedule(self, num_steps: int) -> tuple[np.ndarray, torch.Tensor]:
        alpha, sigma = torch.sqrt(self.alphas_cumprod), torch.sqrt(1 - self.alphas_cumprod)
        lambdas = torch.log(alpha) - torch.log(sigma)
        clipped = int(torch.searchsorted(torch.flip(lambdas, [0]), self.config.get("lambda_min_clipped", -math.inf)))
        # DPMSolverSinglestepScheduler has no timestep_spacing key: it spaces as "linspace" does.
        spacing = self.config.get("timestep_spacing", "linspace")
        steps = spaced_timesteps({**self.config, "timestep_spacing": spacing}, num_steps,
                                 last=self.num_train_timesteps - clipped, extra=1 if spacing != "trailing" else 0)
        steps = steps.astype(np.int64)
        train = self._train_sigmas()
        log_train = np.log(train)
        if self.config.get("use_lu_lambdas"):
            respaced = lu_sigmas(np.flip(log_train).copy(), num_steps)
        else:
            respaced = self._respace(np.flip(train).copy(), num_steps)
        if respaced is None:
            return steps, self._finish_sigmas(np.interp(steps, np.arange(0, len(train)), train))
        steps = np.array([sigma_to_t(s, log_train) for s in respaced])
        rounded = self.config["use_karras_sigmas"] or self.config.get("use_lu_lambdas")
        if rounded and (self.config["beta_schedule"] != "squaredcos_cap_v2" or self._rounds_cosine_karras):
            steps = steps.round()
        return steps.astype(np.int64), self._finish_sigmas(respaced)

    @staticmethod
    def _alpha_sigma(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = 1 / ((s**2 + 1) ** 0.5)
        return alpha, s * alpha

    def _lambda(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, sigma, log-SNR lambda) of the variance-preserving pair at noise level sigma."""
        alpha, sigma = self._alpha_sigma(sigma)
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def _coefficients(self, sigmas: torch.Tensor, i: int, order: int) -> list[torch.Tensor]:
        alpha_t, sigma_t = self._alpha_sigma(sigmas[i + 1])
        alpha_s0, sigma_s0 = self._alpha_sigma(sigmas[i])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = lambda_t - lambda_s0
        # diffusers' expressions, so that the rows are its float32 values bit for bit (signs folded: the update
        # subtracts the x0 and D1 terms, and negating is exact).
        if self._sde():
            first = [alpha_s0, sigma_s0, sigma_t / sigma_s0 * torch.exp(-h), -(alpha_t * (1 - torch.exp(-2.0 * h)))]
            std = sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h))
        else:
            first = [alpha_s0, sigma_s0, sigma_t / sigma_s0, alpha_t * (torch.exp(-h) - 1.0)]
            std = torch.tensor(0.0)
        if order == 1:
            return [*first, torch.tensor(0.0), torch.tensor(0.0), std]
        alpha_s1, sigma_s1 = self._alpha_sigma(sigmas[i - 1])
        r0 = (lambda_s0 - (torch.log(alpha_s1) - torch.log(sigma_s1))) / h
        heun = self.config["solver_type"] == "heun"  # else midpoint (diffusers maps logrho / bh1 / bh2 to it)
        if self._sde():
            d1 = (-(alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) if heun
                  else -(0.5 * (alpha_t * (1 - torch.exp(-2.0 * h)))))
        elif heun:
            d1 = -(alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0))
        else:
            d1 = 0.5 * (alpha_t * (torch.exp(-h) - 1.0))
        return [*first, d1, 1.0 / r0, std]

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        alpha_s, sigma_s, c_x, c_d0, c_d1, inv_r0, std = plan.coef[i].unbind()
        x0 = self._x0_limit(_to_x0(self.config["prediction_type"], model_output, x, alpha_s, sigma_s))
        order = self._order(i, plan)
        prev_x0, self._prev_x0 = self._prev_x0, x0
        x = x.to(torch.float32)  # diffusers updates in fp32 and casts back to the model's dtype
        noise = draw_noise(model_output.shape, model_output, generator, torch.float32) if plan.noise[i] else None
        x_next = c_x * x - c_d0 * x0
        if order == 2:  # D1 = (x0 - previous x0) / r0, the multistep correction
            x_next = x_next - c_d1 * (inv_r0 * (x0 - prev_x0))
        if noise is not None:
            x_next = x_next + std * noise
        return x_next.to(model_output.dtype)

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        if self.config["thresholding"]:
            return None
        alpha_s, sigma_s, c_x, c_d0, c_d1, inv_r0, std = plan.host_coef[i]
        change = -c_d1 * inv_r0 if self._order(i, plan) == 2 else 0.0
        coefficients = UpdateCoefficients(*self._x0_weights(alpha_s, sigma_s), x=c_x, x0=-c_d0, m=0.0,
                                          x0_change=change, noise=std)
        return FusedUpdate(coefficients, self._clip(), model_dtype=True,
                           previous_x0=self._prev_x0 if change else None, keep_x0=True)

    def _keep_x0(self, x0: torch.Tensor) -> None:
        self._prev_x0 = x0

    def _order(self, i: int, plan: Plan) -> int:
        """The solver order of step i: the plan's, but first order without an earlier x0 (the first step from
        a begin index; diffusers counts the steps it has taken since set_timesteps the same way)."""
        return plan.order[i] if self._prev_x0 is not None else 1


def _check_distinct_levels(sigmas: torch.Tensor, n: int, cfg: Mapping[str, Any], solver: str) -> None:
    """ValueError where two of the n planned noise levels are equal (too many steps for the spacing)."""
    if bool((sigmas[1:n] == sigmas[: n - 1]).any()):
        raise ValueError(f"num_steps: {n} steps repeat a noise level under timestep_spacing="
                         f"{cfg.get('timestep_spacing', 'linspace')!r}, which {solver} cannot step across "
                         f"(diffusers returns NaN); use fewer steps")


# ---------------------------------------------------------------- UniPC


class UniPCSampler(DPMSolverPPSampler):
    """UniPC (Zhao et al. 2023) as diffusers' UniPCMultistepScheduler in its default data-prediction form
    (predict_x0=True): each step first corrects the latents it was given with the new model output (UniC; not
    after the first step nor after the steps in disable_corrector), then predicts the next latents (UniP) from
    up to solver_order earlier outputs, with the B(h) of solver_type bh1 or bh2. The schedule is DPM-Solver's.
    The per-step coefficients (including the small linear solves of orders >= 2) are computed from the float32
    sigmas with diffusers' own operations, so that a CPU loop is its loop bit for bit; the arithmetic on the
    latents runs in the model's dtype, as diffusers'."""

    name = "unipc"
    _rounds_cosine_karras = True

    def _reset_history(self) -> None:
        self._outputs: list[torch.Tensor] = []  # converted model outputs (x0), the latest last
        self._last_x: torch.Tensor | None = None
        self._order_used = 0  # the order of the last prediction, which the next correction reuses

    def _make_plan(self, num_steps: int) -> Plan:
        steps, sigmas = self._schedule(num_steps)
        n = len(steps)
        _check_distinct_levels(sigmas, n, self.config, "UniPC")
        alpha_sigma = [self._alpha_sigma(sigmas[i]) for i in range(n)]
        coef = _stack([[alpha, sigma] for alpha, sigma in alpha_sigma])
        return Plan(torch.from_numpy(steps).to(torch.int64), coef, sigmas, (False,) * n, ())

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        return None  # a correction and a prediction: not one affine pass

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        alpha, sigma = plan.coef[i].unbind()
        x0 = self._x0_limit(_to_x0(self.config["prediction_type"], model_output, x, alpha, sigma))
        if self._outputs and self._last_x is not None and (i - 1) not in self.config["disable_corrector"]:
            x = self._correct(i, plan.sigmas, x0, x)
        self._outputs = [*self._outputs, x0][-self.config["solver_order"]:]
        order = self.config["solver_order"]
        if self.config["lower_order_final"]:
            order = min(order, len(plan.noise) - i)
        order = min(order, len(self._outputs))  # warm-up: the outputs seen since set_timesteps or the begin index
        self._order_used, self._last_x = order, x
        return self._predict(i, plan.sigmas, x, order)

    def _b_terms(self, h: torch.Tensor, order: int, rks: list[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h_phi_1, B(h), R, b) of diffusers' UniP / UniC for the ratios rks (without the final 1)."""
        rks_t = torch.stack([*rks, torch.ones(())])
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        b_h = hh if self.config["solver_type"] == "bh1" else torch.expm1(hh)
        rows, b = [], []
        for k in range(1, order + 1):
            rows.append(torch.pow(rks_t, k - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return h_phi_1, b_h, torch.stack(rows), torch.stack(b)

    def _differences(self, sigmas: torch.Tensor, at: int, lambda_s0: torch.Tensor, h: torch.Tensor, order: int,
                     m0: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The ratios r_k and the divided differences (m_k - m0) / r_k of the order - 1 outputs before m0, whose
        noise levels are sigmas[at - 1], sigmas[at - 2], ..."""
        rks, d1s = [], []
        for k in range(1, order):
            lambda_k = self._lambda(sigmas[at - k])[2]
            rk = (lambda_k - lambda_s0) / h
            rks.append(rk)
            d1s.append((self._outputs[-(k + 1)] - m0) / rk)
        return rks, d1s

    def _predict(self, i: int, sigmas: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: x at sigmas[i] -> x at sigmas[i + 1]."""
        m0 = self._outputs[-1]
        alpha_t, sigma_t, lambda_t = self._lambda(sigmas[i + 1])
        _, sigma_s0, lambda_s0 = self._lambda(sigmas[i])
        h = lambda_t - lambda_s0
        rks, d1s = self._differences(sigmas, i, lambda_s0, h, order, m0)
        h_phi_1, b_h, rows, b = self._b_terms(h, order, rks)
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if d1s:
            rhos = (torch.ones(1, dtype=x.dtype) * 0.5 if order == 2
                    else torch.linalg.solve(rows[:-1, :-1], b[:-1]).to(x.dtype))
            x_t = x_t - alpha_t * b_h * _weighted_sum(rhos, d1s)
        return x_t.to(x.dtype)

    def _correct(self, i: int, sigmas: torch.Tensor, model_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """UniC: the prediction x_t at sigmas[i], made from the latents at sigmas[i - 1] with order
        self._order_used, corrected with the model output at sigmas[i]."""
        order, x, m0 = self._order_used, self._last_x, self._outputs[-1]
        alpha_t, sigma_t, lambda_t = self._lambda(sigmas[i])
        _, sigma_s0, lambda_s0 = self._lambda(sigmas[i - 1])
        h = lambda_t - lambda_s0
        rks, d1s = self._differences(sigmas, i - 1, lambda_s0, h, order, m0)
        h_phi_1, b_h, rows, b = self._b_terms(h, order, rks)
        rhos = torch.ones(1, dtype=x.dtype) * 0.5 if order == 1 else torch.linalg.solve(rows, b).to(x.dtype)
        corr = _weighted_sum(rhos[:-1], d1s) if d1s else 0
        x_corrected = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        x_corrected = x_corrected - alpha_t * b_h * (corr + rhos[-1] * (model_t - m0))
        return x_corrected.to(x.dtype)


def _weighted_sum(weights: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
    """sum_k weights[k] terms[k]: diffusers' einsum("k,bkc...->bc...") with the weights as 0-d CPU tensors, which
    act as scalars on any device (no host-to-device copy); the same bits for one term, as at order 2."""
    total = weights[0] * terms[0]
    for w, term in zip(weights[1:], terms[1:], strict=True):
        total = total + w * term
    return total


# ---------------------------------------------------------------- Heun


class HeunSampler(EulerSampler):
    """Heun's method (Karras et al. 2022, algorithm 1 without churn) as diffusers' HeunDiscreteScheduler: each
    noise level but the last takes two model calls, an Euler step to the next level, then a correction with the
    mean of the two derivatives; the last step is Euler's. `timesteps` lists every call (the inner levels twice),
    `order` is 2 as diffusers pipelines read it, and the arithmetic runs in the model's dtype, as diffusers'.

    Columns of coef: the input scale sqrt(sigma^2 + 1) of each call's level."""

    name = "heun"
    order = 2

    def _reset_history(self) -> None:
        # The Euler step awaiting its correction: its derivative, dt and starting latents.
        self._first: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _make_plan(self, num_steps: int) -> Plan:
        steps, sigmas = self._levels(num_steps)
        levels = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        sigmas = torch.cat([levels[:1], levels[1:-1].repeat_interleave(2), levels[-1:]])
        timesteps = torch.from_numpy(steps)
        timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)]).to(torch.float32)
        n = len(timesteps)
        coef = _stack([[(sigmas[i] ** 2 + 1) ** 0.5] for i in range(n)])
        return Plan(timesteps, coef, sigmas, (False,) * n, (), inference_steps=num_steps)

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        return None  # the correction reads the first call's derivative: not one affine pass

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        first = self._first is None
        sigma, sigma_next = (plan.sigmas[i], plan.sigmas[i + 1]) if first else (plan.sigmas[i - 1], plan.sigmas[i])
        at = sigma if first else sigma_next  # the level this model output was computed at
        prediction = self.config["prediction_type"]
        if prediction == "epsilon":
            x0 = x - at * model_output
        elif prediction == "v_prediction":
            x0 = model_output * (-at / (at**2 + 1) ** 0.5) + (x / (at**2 + 1))
        else:
            x0 = model_output
        x0 = self._x0_limit(x0)  # clip_sample
        if first:  # Euler to the next level; kept for the correction
            derivative, dt = (x - x0) / sigma, sigma_next - sigma
            self._first = (derivative, dt, x)
            return x + derivative * dt
        previous, dt, start = self._first  # the correction: from the same start with the mean derivative
        self._first = None
        return start + (previous + (x - x0) / sigma_next) / 2 * dt


# ---------------------------------------------------------------- LMS


class LMSSampler(EulerSampler):
    """Linear multistep on the probability-flow ODE in sigma (Karras et al. 2022), as diffusers' LMSDiscreteScheduler:
    each step combines the derivatives (x - x0) / sigma of up to `order` model calls (diffusers' step argument, 4 by
    default; fewer on the first steps), each weighted by the integral of its Lagrange basis polynomial in sigma over
    the step (lms_coefficients: exact quadrature here, no scipy). The arithmetic runs in the model's dtype, as
    diffusers'. step(..., order=k) takes diffusers' step argument for one step.

    Departure: diffusers evaluates the integrand with float32 sigma tensors, so its weights carry float32 rounding
    (~1e-7 relative) that these exact ones do not: results agree to float32 precision (a few units in the last place
    of fp16 / bf16 latents) rather than bit for bit.

    Columns of coef: _input_weights of the step's sigma, then the weights of the configured order (zero padded)."""

    name = "lms"

    def _reset_history(self) -> None:
        self._derivatives: list[torch.Tensor] = []  # the latest last

    def _make_plan(self, num_steps: int) -> Plan:
        steps, sigmas = self._levels(num_steps)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        rows = [[*_input_weights(sigmas[i]), *self._weights(sigmas, i, self.config["order"])]
                for i in range(num_steps)]
        timesteps = torch.from_numpy(steps.astype(np.float32))
        return Plan(timesteps, _stack(rows), sigmas, (False,) * num_steps, ())

    @staticmethod
    def _weights(sigmas: torch.Tensor, i: int, order: int) -> list[float]:
        """Step i's LMS weights for `order` (diffusers uses min(i + 1, order) of them), zero padded to `order`."""
        used = lms_coefficients(sigmas.double(), i, min(i + 1, order)).tolist()
        return used + [0.0] * (order - len(used))

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        return None  # earlier steps' derivatives: not one guided_update pass

    def step(self, model_output: torch.Tensor, t: Any, x: torch.Tensor, generator: Generator = None, *,
             order: int | None = None, return_dict: bool | None = None) -> Any:
        """Sampler.step, plus diffusers' LMSDiscreteScheduler.step argument `order` (None: the config's): the number
        of derivatives this step keeps and combines."""
        options = {}
        if order is not None:
            options["order"] = _check_option(self.name, "order", order, OPTIONS[self.name]["order"])
        _check_return_dict(return_dict)
        return _step_result(self._advance(model_output, t, x, generator, **options), return_dict)

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator,
              order: int | None = None) -> torch.Tensor:
        _check_model_output(model_output, x)
        _, sigma, v_eps, v_x = plan.coef[i, :4].unbind()
        x0 = _sigma_x0(self.config["prediction_type"], model_output, x, sigma, v_eps, v_x)
        self._derivatives.append((x - x0) / sigma)
        order = self.config["order"] if order is None else order
        if len(self._derivatives) > order:  # one out per step, as diffusers (order may change between steps)
            self._derivatives.pop(0)
        if order == self.config["order"]:
            weights = plan.coef[i, 4:4 + min(i + 1, order)]
        else:  # another order for this step: its weights on the host (0-d CPU tensors work on any device)
            weights = torch.tensor(self._weights(plan.sigmas, i, order)[:min(i + 1, order)], dtype=torch.float32)
        # The latest derivative takes weight 0, the one before weight 1, ...; diffusers sums them in that order.
        total = weights[0] * self._derivatives[-1]
        for w, derivative in zip(weights[1:], reversed(self._derivatives[:-1]), strict=False):
            total = total + w * derivative
        return x + total


# ---------------------------------------------------------------- KDPM2


def _interleave(values: torch.Tensor) -> torch.Tensor:
    """[N + 1] per-level values -> [2N + 2] per model call, diffusers' KDPM2 layout: the first, then each later one
    twice, then the last again."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class KDPM2Sampler(EulerSampler):
    """DPM-Solver-2 in sigma as Katherine Crowson's k-diffusion runs it (A1111's "DPM2"), as diffusers'
    KDPM2DiscreteScheduler: from each noise level, an Euler step to the level midway in log sigma towards the next
    one, then a second model call there whose derivative takes the whole step. The last level takes only the first
    call, whose midpoint is sigma 0. `timesteps` lists every call (2 num_steps - 1, the midpoints' fractional
    timesteps in between), `order` is 2 as diffusers pipelines read it, and the arithmetic runs in the model's dtype,
    as diffusers'. As with diffusers, a Karras or exponential schedule gives float64 timesteps.

    Columns of coef, per call: the first call's _input_weights and dt, then the second call's _input_weights, dt and
    (ancestral) noise std; a call is the second when a first call awaits its completion, as diffusers decides (so
    call 0's second row, which wraps around as diffusers' indexing does, is never read). The plan's sigmas are
    diffusers' per-call table (_interleave), which add_noise reads."""

    name = "kdpm2"
    order = 2
    _ancestral = False

    def _reset_history(self) -> None:
        self._start: torch.Tensor | None = None  # the latents the first call of a level started from

    def _make_plan(self, num_steps: int) -> Plan:
        steps, sigmas = self._levels(num_steps, round_karras=True)
        levels = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        tables = {"sigma": levels, **self._level_tables(levels)}
        # diffusers finds the midpoints' timesteps with float32 tensors: a float32 sigma keeps sigma_to_t in float32.
        log_train = np.log(self._train_sigmas())
        mid_steps = np.array([sigma_to_t(s, log_train) for s in tables["mid"].numpy()])
        steps = torch.from_numpy(steps)
        timesteps = self._call_timesteps(steps, torch.from_numpy(mid_steps).to(steps.dtype))
        per_call = {key: _interleave(values) for key, values in tables.items()}
        n = len(timesteps)
        rows = [self._first_call(per_call, k) + self._second_call(per_call, k) for k in range(n)]
        noise = tuple(self._ancestral and k % 2 == 1 for k in range(n))
        return Plan(timesteps, _stack(rows), per_call["sigma"], noise, (), inference_steps=num_steps)

    @staticmethod
    def _level_tables(levels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The midpoint sigma of each level [N + 1] (float32, diffusers' operations): sqrt(sigma * previous sigma)."""
        return {"mid": levels.log().lerp(levels.roll(1).log(), 0.5).exp()}

    @staticmethod
    def _call_timesteps(steps: torch.Tensor, mid_steps: torch.Tensor) -> torch.Tensor:
        """[2N - 1]: the first level's timestep, then each later level's midpoint and the level itself."""
        return torch.cat([steps[:1], torch.stack((mid_steps[1:-1], steps[1:]), dim=-1).flatten()])

    @staticmethod
    def _first_call(per_call: dict[str, torch.Tensor], k: int) -> list[torch.Tensor]:
        """Call k as a first call: from its level to the midpoint towards the next one."""
        sigma = per_call["sigma"][k]
        return [*_input_weights(sigma), per_call["mid"][k + 1] - sigma]

    @staticmethod
    def _second_call(per_call: dict[str, torch.Tensor], k: int) -> list[torch.Tensor]:
        """Call k as a second call, at the midpoint: the whole step from the previous level."""
        sigma, mid = per_call["sigma"], per_call["mid"][k]
        return [*_input_weights(mid), sigma[k] - sigma[k - 1], torch.tensor(0.0)]

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        return None  # the second call restarts from the first call's latents: not one affine pass

    def scale_model_input(self, x: torch.Tensor, t: Any = None) -> torch.Tensor:
        return x / self._current(x, t).coef[self._index, 0 if self._start is None else 5]

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        first = self._start is None
        _, sigma, v_eps, v_x, dt, *std = (plan.coef[i, :5] if first else plan.coef[i, 5:]).unbind()
        x0 = _sigma_x0(self.config["prediction_type"], model_output, x, sigma, v_eps, v_x)
        derivative = (x - x0) / sigma
        if first:
            self._start = x
            return x + derivative * dt
        start, self._start = self._start, None
        out = start + derivative * dt
        if self._ancestral:
            out = out + draw_noise(model_output.shape, model_output, generator) * std[0]
        return out


class KDPM2AncestralSampler(KDPM2Sampler):
    """KDPM2's two calls per level with ancestral noise (A1111's "DPM2 a"), as diffusers'
    KDPM2AncestralDiscreteScheduler: the step from each level goes to sigma_down (sigma_down^2 + sigma_up^2 =
    next sigma^2) through the midpoint towards it, and the second call adds fresh noise of std sigma_up, drawn from
    the generator as diffusers draws it. The last level takes only its first call, an Euler step to sigma 0."""

    name = "kdpm2_a"
    _ancestral = True

    @staticmethod
    def _level_tables(levels: torch.Tensor) -> dict[str, torch.Tensor]:
        """sigma_up, sigma_down and the midpoint sqrt(sigma * sigma_down) of each level [N + 1] (float32, diffusers'
        operations; the last two midpoints are 0).

        Departure: where sigma is so large that sigma_up^2 rounds to the next sigma^2 or above (the first level of the
        cosine schedule, sigma ~2e4), diffusers' sigma_down is 0 or the root of a negative number, its midpoint is NaN,
        and so are that timestep and all the latents from there; here sigma_down takes its exact value next^2 / sigma
        (sigma_down^2 = next^2 - sigma_up^2 = next^4 / sigma^2) there."""
        following = levels.roll(-1)
        following[-1] = 0.0
        up = (following**2 * (levels**2 - following**2) / levels**2) ** 0.5
        radicand = following**2 - up**2
        down = torch.where(radicand > 0, radicand**0.5, following**2 / levels)
        down[-1] = 0.0
        mid = levels.log().lerp(down.log(), 0.5).exp()
        mid[-2:] = 0.0
        return {"mid": mid, "up": up, "down": down}

    @staticmethod
    def _call_timesteps(steps: torch.Tensor, mid_steps: torch.Tensor) -> torch.Tensor:
        """[2N - 1]: the first level's timestep, then each level's midpoint and the next level."""
        return torch.cat([steps[:1], torch.stack((mid_steps[:-2], steps[1:]), dim=-1).flatten()])

    @staticmethod
    def _first_call(per_call: dict[str, torch.Tensor], k: int) -> list[torch.Tensor]:
        sigma = per_call["sigma"][k]
        return [*_input_weights(sigma), per_call["mid"][k] - sigma]

    @staticmethod
    def _second_call(per_call: dict[str, torch.Tensor], k: int) -> list[torch.Tensor]:
        sigma = per_call["sigma"][k - 1]
        return [*_input_weights(per_call["mid"][k - 1]), per_call["down"][k - 1] - sigma, per_call["up"][k - 1]]


# ---------------------------------------------------------------- DPM-Solver singlestep


def singlestep_orders(num_steps: int, solver_order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """The solver order of each step of DPM-Solver singlestep, as diffusers' get_order_list: the cycle 1, 2, ...,
    solver_order (a cycle's steps all update from the latents at its first step), with a first-order last step where
    the last sigma is 0, or where the steps end with a full cycle and lower_order_final holds. As in diffusers,
    lower_order_final counts as set when the step count is not a multiple of solver_order or the last sigma is 0."""
    orders = [i % solver_order + 1 for i in range(num_steps)]
    lower = lower_order_final or num_steps % solver_order != 0 or final_zero
    if final_zero or (lower and num_steps % solver_order == 0):
        orders[-1] = 1
    return orders


class DPMSolverSinglestepSampler(DPMSolverPPSampler):
    """DPM-Solver (Lu et al. 2022) singlestep, as diffusers' DPMSolverSinglestepScheduler: the steps run in cycles
    of solver_order (1-3, lower at the end, see singlestep_orders); step j of a cycle updates from the latents at
    the cycle's start to the next level with an order-j formula on the model outputs seen in the cycle, so its
    intermediate latents only feed the model. algorithm_type "dpmsolver++" (data prediction; "deis" runs as it, as
    in diffusers), "dpmsolver" (noise prediction; needs final_sigmas_type="sigma_min", as in diffusers) or
    "sde-dpmsolver++" (fresh noise at every step, drawn from the generator in the model's dtype, as diffusers
    draws it); solver_type "midpoint" or "heun" ("logrho", "bh1", "bh2" run as midpoint, as in diffusers). The
    timesteps are spaced as DPM-Solver++'s "linspace" (diffusers' singlestep scheduler has no timestep_spacing).
    The update coefficients are computed per step from the float32 sigmas on the host with diffusers' operations,
    and the arithmetic on the latents runs in the model's dtype, as diffusers'.

    Departure: with lower_order_final=False and a step count that is not a multiple of solver_order, diffusers
    rewrites its config to lower_order_final=True, which then also applies to later set_timesteps calls; here it
    applies to that plan only and the config stays as given.

    Columns of coef: alpha_s, sigma_s of each step's level (to convert the model output)."""

    name = "dpm++_single"
    _rounds_cosine_karras = True

    def _reset_history(self) -> None:
        self._outputs: list[torch.Tensor] = []  # converted model outputs of the cycle so far, the latest last
        self._cycle_start: torch.Tensor | None = None  # the latents the cycle's updates start from

    def _noise_dtype(self, model_output: torch.Tensor) -> torch.dtype:
        return model_output.dtype

    def _make_plan(self, num_steps: int) -> Plan:
        steps, sigmas = self._schedule(num_steps)
        n = len(steps)
        if self.config["solver_order"] > 1:  # a higher-order update divides by the gaps between levels
            _check_distinct_levels(sigmas, n, self.config, "DPM-Solver")
        cfg = self.config
        orders = singlestep_orders(n, cfg["solver_order"], cfg["lower_order_final"], cfg["final_sigmas_type"] == "zero")
        coef = _stack([list(self._alpha_sigma(sigmas[i])) for i in range(n)])
        return Plan(torch.from_numpy(steps).to(torch.int64), coef, sigmas, (self._sde(),) * n, tuple(orders))

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        return None  # updates from the cycle's first latents: not one affine pass

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        alpha, sigma = plan.coef[i].unbind()
        self._outputs = [*self._outputs, self._convert(model_output, x, alpha, sigma)][-self.config["solver_order"]:]
        noise = draw_noise(model_output.shape, model_output, generator) if plan.noise[i] else None
        # Lower where fewer outputs were seen (the first steps from a begin index), as diffusers.
        order = min(plan.order[i], len(self._outputs))
        if order == 1:
            self._cycle_start = x
        weight, weights, std, ratios = self._update_weights(plan.sigmas, i, order)
        out = weight * self._cycle_start
        for w, term in zip(weights, self._terms(order, ratios), strict=True):
            out = out + w * term
        return out if noise is None else out + std * noise

    def _convert(self, model_output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
                 ) -> torch.Tensor:
        """The model output as the algorithm's variable: x0 (dpmsolver++, thresholded where configured) or the
        noise (dpmsolver)."""
        prediction = self.config["prediction_type"]
        if self.config["algorithm_type"] != "dpmsolver":
            return self._x0_limit(_to_x0(prediction, model_output, x, alpha, sigma))
        if prediction == "epsilon":
            return model_output
        if prediction == "v_prediction":
            return alpha * model_output + sigma * x
        return (x - alpha * model_output) / sigma

    def _terms(self, order: int, ratios: list[torch.Tensor]) -> list[torch.Tensor]:
        """D0 and the divided differences of the cycle's outputs m (diffusers' D0, D1 or D1_1, D2)."""
        m = self._outputs
        if order == 1:
            return [m[-1]]
        if order == 2:
            return [m[-2], (1.0 / ratios[0]) * (m[-1] - m[-2])]
        r0, r1 = ratios
        d1_1 = (1.0 / r0) * (m[-1] - m[-3])
        if self.config["solver_type"] != "heun":
            return [m[-3], d1_1]
        d1_0 = (1.0 / r1) * (m[-2] - m[-3])
        return [m[-3], (r0 * d1_0 - r1 * d1_1) / (r0 - r1), 2.0 * (d1_1 - d1_0) / (r0 - r1)]

    def _update_weights(self, sigmas: torch.Tensor, i: int, order: int
                        ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """(weight of the cycle's first latents, weights of _terms, noise std, ratios r_k) of an order-`order` update
        to sigmas[i + 1] from sigmas[i - order + 1]: diffusers' float32 expressions, signs folded into the weights
        (negating is exact)."""
        alpha_t, sigma_t, lambda_t = self._lambda(sigmas[i + 1])
        levels = [self._lambda(sigmas[i - j]) for j in range(order)]  # the current level first
        alpha_b, sigma_b, lambda_b = levels[-1]
        h = lambda_t - lambda_b
        ratios = [(levels[j][2] - lambda_b) / h for j in range(order - 1)]
        kind = self.config["algorithm_type"]
        std = torch.tensor(0.0)
        if kind == "dpmsolver":
            e = torch.exp(h) - 1.0
            weight, first, half = alpha_t / alpha_b, -(sigma_t * e), -(0.5 * (sigma_t * e))
            slope, curve = -(sigma_t * (e / h - 1.0)), -(sigma_t * ((e - h) / h**2 - 0.5))
        elif kind == "sde-dpmsolver++":
            f = 1 - torch.exp(-2.0 * h)
            weight, first, half = sigma_t / sigma_b * torch.exp(-h), alpha_t * f, 0.5 * (alpha_t * f)
            slope, curve = alpha_t * (f / (-2.0 * h) + 1.0), alpha_t * ((f + (-2.0 * h)) / (-2.0 * h) ** 2 - 0.5)
            std = sigma_t * torch.sqrt(f)
        else:  # dpmsolver++ (and deis)
            e = torch.exp(-h) - 1.0
            weight, first, half = sigma_t / sigma_b, -(alpha_t * e), -(0.5 * (alpha_t * e))
            slope, curve = alpha_t * (e / h + 1.0), -(alpha_t * ((e + h) / h**2 - 0.5))
        if order == 1:
            return weight, [first], std, ratios
        heun = self.config["solver_type"] == "heun"
        if order == 2:
            return weight, [first, slope if heun else half], std, ratios
        return weight, [first, slope, curve] if heun else [first, slope], std, ratios


# ---------------------------------------------------------------- LCM


class LCMStepOutput(NamedTuple):
    """The LCM sampler's step(..., return_dict=True), as diffusers' LCMSchedulerOutput."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor


class LCMSampler(Sampler):
    """Latent consistency models' multistep sampling (Luo et al. 2023) as diffusers' LCMScheduler, for LCM and
    LCM-LoRA models: each step maps the latents to the consistency model's clean estimate (`denoised`, from the
    model's x0 with the boundary-condition scalings c_skip, c_out of the timestep), then noises it to the next
    timestep with fresh noise (none after the last step, whose result is the estimate itself). The timesteps are
    evenly spaced picks of the original_inference_steps-step distillation schedule."""

    name = "lcm"

    def _configure(self, config: Mapping[str, Any]) -> None:
        super()._configure(config)
        if self.config["original_inference_steps"] > self.num_train_timesteps:
            raise ValueError(f"original_inference_steps: expected at most num_train_timesteps="
                             f"{self.num_train_timesteps}, got {self.config['original_inference_steps']}")
        self.denoised: torch.Tensor | None = None  # the last step's clean estimate (diffusers' `denoised`)
        # set_timesteps' original_inference_steps and strength for the next plan
        self._schedule_args = (self.config["original_inference_steps"], 1.0)

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None,
                      original_inference_steps: int | None = None, strength: float = 1.0) -> None:
        """Sampler.set_timesteps, with LCMScheduler's extra arguments (LatentConsistencyModelPipeline passes them):
        original_inference_steps overrides the config's for this plan; strength < 1 (img2img) picks the steps from
        the first strength part of the distillation schedule, from its least noisy end."""
        if original_inference_steps is not None and (
                isinstance(original_inference_steps, bool) or not isinstance(original_inference_steps, int)
                or not 1 <= original_inference_steps <= self.num_train_timesteps):
            raise ValueError(f"original_inference_steps: expected an int in [1, {self.num_train_timesteps}], got "
                             f"{original_inference_steps!r}")
        if not is_real_number(strength) or not 0 < strength <= 1:
            raise ValueError(f"strength: expected a number in (0, 1], got {strength!r}")
        self._schedule_args = (original_inference_steps or self.config["original_inference_steps"], float(strength))
        super().set_timesteps(num_steps, device)

    def _make_plan(self, num_steps: int) -> Plan:
        original, strength = self._schedule_args
        usable = int(original * strength)
        if num_steps > min(original, usable):
            raise ValueError(f"num_steps: expected at most original_inference_steps={original} x strength={strength} "
                             f"= {usable} (the steps are picked from that schedule), got {num_steps}")
        k = self.num_train_timesteps // original
        origin = (np.arange(1, usable + 1) * k - 1)[::-1]
        picks = np.floor(np.linspace(0, len(origin), num=num_steps, endpoint=False)).astype(np.int64)
        steps = torch.from_numpy(origin[picks].copy())
        rows = [self._coefficients(steps, i) for i in range(num_steps)]
        return Plan(steps, _stack(rows), None, (True,) * (num_steps - 1) + (False,), ())

    def _coefficients(self, steps: torch.Tensor, i: int) -> list[torch.Tensor]:
        """sqrt(a_t), sqrt(1 - a_t), c_skip, c_out, sqrt(a_prev), sqrt(1 - a_prev): diffusers' float32 values."""
        t = steps[i]
        prev = steps[i + 1] if i + 1 < len(steps) else t
        a_t, a_prev = self.alphas_cumprod[t], self._alpha_cumprod_before(prev)
        scaled = t * self.config["timestep_scaling"]
        c_skip = 0.5**2 / (scaled**2 + 0.5**2)
        c_out = scaled / (scaled**2 + 0.5**2) ** 0.5
        return [a_t.sqrt(), (1 - a_t).sqrt(), c_skip, c_out, a_prev.sqrt(), (1 - a_prev).sqrt()]

    def step(self, model_output: torch.Tensor, t: Any, x: torch.Tensor, generator: Generator = None, *,
             return_dict: bool | None = None) -> Any:
        """Sampler.step; with return_dict the clean estimate comes too, as diffusers' LCMScheduler returns it:
        (prev_sample, denoised) for False, an LCMStepOutput for True. It is also `self.denoised`."""
        _check_return_dict(return_dict)
        out = self._advance(model_output, t, x, generator)
        if return_dict is None:
            return out.as_subclass(StepResult)
        return LCMStepOutput(out, self.denoised) if return_dict else (out, self.denoised)

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        sqrt_a, sqrt_b, c_skip, c_out, sqrt_a_prev, sqrt_b_prev = plan.coef[i].unbind()
        x0 = self._x0_limit(_to_x0(self.config["prediction_type"], model_output, x, sqrt_a, sqrt_b))
        self.denoised = c_out * x0 + c_skip * x
        if not plan.noise[i]:
            return self.denoised
        noise = draw_noise(model_output.shape, model_output, generator, self.denoised.dtype)
        return sqrt_a_prev * self.denoised + sqrt_b_prev * noise


# ---------------------------------------------------------------- PNDM


class PNDMSampler(Sampler):
    """Pseudo numerical methods (Liu et al. 2022) as diffusers' PNDMScheduler, the default of Stable Diffusion 1.x
    pipelines: three pseudo Runge-Kutta steps of four model calls each, then linear multistep (PLMS) with up to
    four earlier outputs; or, with skip_prk_steps=True (Stable Diffusion's configs), PLMS from the start, which
    repeats the second timestep (num_steps + 1 model calls). As diffusers, a step reads its timestep and the count
    of calls since set_timesteps (or set_begin_index) to know which combination of model outputs to take; the
    arithmetic runs in the model's dtype, op for op."""

    name = "pndm"

    def _reset_history(self) -> None:
        self._calls = 0
        self._outputs: list[torch.Tensor] = []  # diffusers' ets: earlier model outputs
        self._start: torch.Tensor | None = None  # diffusers' cur_sample
        self._rk_sum: Any = 0  # diffusers' cur_model_output: the Runge-Kutta weighted sum so far

    def _make_plan(self, num_steps: int) -> Plan:
        ascending = spaced_timesteps(self.config, num_steps)[::-1].astype(np.int64)
        if self.config["skip_prk_steps"]:
            self._rk_timesteps = np.array([], dtype=np.int64)
            calls = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        else:
            if num_steps < 4:
                raise ValueError(f"num_steps: PNDM's Runge-Kutta start needs at least 4 steps, got {num_steps} "
                                 f"(or set skip_prk_steps=True)")
            half = self.num_train_timesteps // num_steps // 2
            rk = ascending[-4:].repeat(2) + np.tile(np.array([0, half]), 4)
            self._rk_timesteps = rk[:-1].repeat(2)[1:-1][::-1].copy()
            calls = np.concatenate([self._rk_timesteps, ascending[:-3][::-1]])
        n = len(calls)
        return Plan(torch.from_numpy(calls.astype(np.int64).copy()), torch.zeros(n, 0), None, (False,) * n, (),
                    inference_steps=num_steps)

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        t = int(plan.host_timesteps[i])
        if self._calls < len(self._rk_timesteps):
            out = self._runge_kutta_step(t, model_output, x)
        else:
            out = self._multistep(t, model_output, x)
        self._calls += 1
        return out

    def _runge_kutta_step(self, t: int, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c = self._calls
        prev = t - (0 if c % 2 else self.num_train_timesteps // self.num_inference_steps // 2)
        t = int(self._rk_timesteps[c // 4 * 4])
        if c % 4 == 0:
            self._rk_sum = self._rk_sum + 1 / 6 * m
            self._outputs.append(m)
            self._start = x
        elif c % 4 in (1, 2):
            self._rk_sum = self._rk_sum + 1 / 3 * m
        else:
            m = self._rk_sum + 1 / 6 * m
            self._rk_sum = 0
        return self._transfer(self._start if self._start is not None else x, t, prev, m)

    def _multistep(self, t: int, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gap = self.num_train_timesteps // self.num_inference_steps
        prev = t - gap
        if self._calls != 1:
            self._outputs = [*self._outputs[-3:], m]
        else:  # the repeated timestep: redo the first step with the mean of the two outputs
            prev, t = t, t + gap
        e = self._outputs
        if len(e) == 1 and self._calls == 0:
            self._start = x
        elif len(e) == 1 and self._calls == 1:
            m = (m + e[-1]) / 2
            x, self._start = self._start, None
        elif len(e) == 2:
            m = (3 * e[-1] - e[-2]) / 2
        elif len(e) == 3:
            m = (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12
        else:
            m = (1 / 24) * (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4])
        return self._transfer(x, t, prev, m)

    def _transfer(self, x: torch.Tensor, t: int, prev: int, m: torch.Tensor) -> torch.Tensor:
        """x at timestep t -> x at prev, the model output m being the combined epsilon (or v): formula (9) of the
        paper in diffusers' operation order."""
        a_t, a_prev = self.alphas_cumprod[t], self._alpha_cumprod_before(prev)
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if self.config["prediction_type"] == "v_prediction":
            m = (a_t**0.5) * m + (b_t**0.5) * x
        sample_coeff = (a_prev / a_t) ** 0.5
        denom = a_t * b_prev ** (0.5) + (a_t * b_t * a_prev) ** (0.5)
        return sample_coeff * x - (a_prev - a_t) * m / denom


# ---------------------------------------------------------------- flow matching


def flow_shift(sigmas: Any, shift: float) -> Any:
    """SD3's shift of flow-matching noise levels towards noise: shift sigma / (1 + (shift - 1) sigma), elementwise in
    sigmas' own dtype (a float32 tensor or a NumPy array, as diffusers applies it to either)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_time_shift(sigmas: np.ndarray, mu: float, kind: str) -> np.ndarray:
    """The resolution-dependent shift of Flux and SD3.5 (use_dynamic_shifting): e^mu / (e^mu + 1/sigma - 1)
    ("exponential") or mu / (mu + 1/sigma - 1) ("linear"), in sigmas' dtype (a sigma of 0 stays 0)."""
    with np.errstate(divide="ignore"):  # 1 / 0 = inf, and the level is 0 again, as in diffusers
        odds = 1 / sigmas - 1
    scale = math.exp(mu) if kind == "exponential" else mu
    return scale / (scale + odds)


def stretch_to_terminal(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    """Stretch 1 - sigma so that the last level is `terminal` (LTX-Video's shift_terminal); sigmas [N], N >= 1."""
    one_minus = 1 - sigmas
    if one_minus[-1] == 0:  # diffusers divides by it: every level turns NaN
        raise ValueError(f"shift_terminal: the last planned sigma is 1 (num_inference_steps={len(sigmas)}), which "
                         f"cannot be stretched to {terminal}; plan more steps")
    scale = one_minus[-1] / (1 - terminal)
    return 1 - (one_minus / scale)


def _check_levels(name: str, values: Any) -> np.ndarray:
    """A custom sigmas / timesteps list as diffusers reads it (np.array(values).astype(np.float32)), after checking
    it is a non-empty 1-D sequence of finite numbers."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    checked = _float_sequence(name, values)
    if not np.isfinite(checked).all():
        raise ValueError(f"{name}: expected finite values, got {values!r}")
    return np.array(values).astype(np.float32)


def _check_step_timestep(t: Any) -> None:
    """diffusers' flow schedulers refuse integer timesteps (an enumerate() index passed by mistake)."""
    integral = isinstance(t, (int, np.integer)) or (isinstance(t, torch.Tensor) and not t.is_floating_point())
    if integral and not isinstance(t, (bool, np.bool_)):
        raise ValueError(f"t: an integer timestep ({t!r}) is not accepted by the flow-matching samplers (an index from "
                         f"enumerate()?); pass one of `timesteps`, float32 values")


class _FlowSampler(Sampler):
    """Shared code of the flow-matching (rectified flow) samplers of SD3, Flux, AuraFlow, Sana, Lumina...: the latents
    are x = (1 - sigma) x0 + sigma noise with sigma from 1 (pure noise) down to 0, and the model predicts the velocity
    v = noise - x0 = dx/dsigma. There are no betas: the training levels are sigma = t / num_train_timesteps for
    t = num_train_timesteps ... 1, shifted (flow_shift), and the timesteps the model sees are sigma
    num_train_timesteps (float32). init_noise_sigma is 1 and scale_model_input the identity."""

    def _init_schedule(self) -> None:
        """The training levels [T] (float32, descending), as diffusers' flow schedulers build them."""
        total = self.num_train_timesteps
        levels = torch.from_numpy(np.linspace(1, total, total, dtype=np.float32)[::-1].copy()) / total
        if not self.config.get("use_dynamic_shifting"):  # the dynamic shift needs mu: set_timesteps applies it
            levels = flow_shift(levels, self.config["shift"])
        self._train_sigmas = levels
        self._train_timesteps = tuple(float(v) for v in (levels * total).double())
        self._shift = self.config["shift"]

    @property
    def shift(self) -> float:
        """The shift set_timesteps applies (the config's, or set_shift's)."""
        return self._shift

    @property
    def sigmas(self) -> torch.Tensor:
        """The planned noise levels [num_calls + 1] (the last 0, or 1 with invert_sigmas), float32 CPU; before
        set_timesteps, the training levels [num_train_timesteps] (as diffusers' attribute)."""
        return self._plan.sigmas if self._plan is not None else self._train_sigmas

    def _linspace_levels(self, num_steps: int) -> np.ndarray:
        """[num_steps] float64 levels evenly spaced between the ends of the training levels (diffusers' default)."""
        total = self.num_train_timesteps
        top, bottom = self._train_sigmas[0].item() * total, self._train_sigmas[-1].item() * total
        return np.linspace(top, bottom, num_steps) / total

    # -- the forward process

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> torch.Tensor:
        """The flow forward process, as diffusers' scale_noise (img2img's first latents): sample [B, ...] noised to the
        level sigma of `timestep` (one, or one per batch item) with noise of sample's shape:
        sigma noise + (1 - sigma) sample -> [B, ...] in sample's dtype.

        sigma: of the planned timestep equal to `timestep` (the second of two equal ones, as diffusers); after
        set_begin_index, of the current step whatever `timestep` holds; before set_timesteps, of the training
        timestep equal to it."""
        t = _check_noise_args(sample, noise, timestep, names=("sample", "timestep"))
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)  # diffusers mixes in sample's dtype
        sigma = _per_item(sigmas[self._noise_indices(t)], sample)
        return sigma * noise + (1.0 - sigma) * sample

    def _noise_indices(self, t: torch.Tensor) -> list[int]:
        if self._plan is None:
            return timestep_indices(self._train_timesteps, t)
        if self._begin is not None:
            return [self._index] * t.numel()
        return timestep_indices(self._plan.host_timesteps, t)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """scale_noise(original, timesteps, noise), in add_noise's argument order (diffusers' flow schedulers have
        only scale_noise)."""
        return self.scale_noise(original, timesteps, noise)

    # -- stepping

    def step(self, model_output: torch.Tensor, t: Any, x: torch.Tensor, generator: Generator = None, *,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
             per_token_timesteps: torch.Tensor | None = None, return_dict: bool | None = None) -> Any:
        """Sampler.step with the velocity `model_output` [B, ...] at the current timestep; the arithmetic runs in
        float32 and the result takes model_output's dtype, as diffusers'. t must not be an integer (as diffusers).

        diffusers' step arguments: s_churn, s_tmin, s_tmax, s_noise (FlowMatchEulerDiscreteScheduler ignores them;
        its Heun counterpart's churn, s_churn > 0, is not implemented) and per_token_timesteps (not implemented)."""
        _check_step_timestep(t)
        if per_token_timesteps is not None:
            raise NotImplementedError(f"per_token_timesteps is not implemented for the {self.name!r} sampler")
        self._check_churn(s_churn)
        _check_return_dict(return_dict)
        return _step_result(self._advance(model_output, t, x, generator), return_dict)

    def _check_churn(self, s_churn: Any) -> None:
        pass


class FlowEulerSampler(_FlowSampler):
    """Euler's method on the flow ODE, as diffusers' FlowMatchEulerDiscreteScheduler (SD3, Flux, AuraFlow, Sana...):
    x + (sigma_next - sigma) v. With stochastic_sampling, each step instead predicts x0 = x - sigma v and noises it
    afresh to the next level: (1 - sigma_next) x0 + sigma_next noise (float32 noise at every step, as diffusers draws
    it). Both are affine in the model output, so guided_step fuses them.

    set_timesteps takes diffusers' arguments: a step count, or custom `sigmas` and/or `timesteps`, and `mu` for
    use_dynamic_shifting. The levels are shifted (shift, or the dynamic shift of mu and time_shift_type), stretched to
    shift_terminal, respaced (Karras / exponential), then inverted (invert_sigmas), with diffusers' arithmetic: float64
    for its linspace levels, float32 for custom ones, the result float32.

    Columns of coef: sigma, sigma_next, sigma_next - sigma, 1 - sigma_next."""

    name = "flow_euler"

    def set_shift(self, shift: float) -> None:
        """The shift of later set_timesteps calls (not the config's), as diffusers' set_shift."""
        if not is_real_number(shift) or not math.isfinite(shift) or shift <= 0:
            raise ValueError(f"shift: expected a finite number > 0, got {shift!r}")
        self._shift = shift

    def set_timesteps(self, num_inference_steps: int | None = None, device: torch.device | str | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None,
                      timesteps: Sequence[float] | None = None) -> None:
        """Plan num_inference_steps steps (any count >= 1), or the custom levels `sigmas` [N] (before shifting, as
        diffusers' pipelines pass them; Flux's default is linspace(1, 1/N, N)) and/or model `timesteps` [N] (kept as
        given; without sigmas, their levels are timesteps / num_train_timesteps, shifted). mu: the dynamic shift's
        parameter, required with use_dynamic_shifting (ignored without, as diffusers). Resets the step counter."""
        n, custom_sigmas, custom_timesteps = self._check_schedule(num_inference_steps, sigmas, timesteps)
        if self.config["use_dynamic_shifting"]:
            if mu is None:
                raise ValueError("mu: required with use_dynamic_shifting=True (pipelines derive it from the image "
                                 "size: calculate_shift)")
            if not is_real_number(mu) or not math.isfinite(mu):
                raise ValueError(f"mu: expected a finite number, got {mu!r}")
        levels = self._levels(n, custom_sigmas, mu, custom_timesteps)
        self._install(self._plan_levels(torch.from_numpy(levels).to(torch.float32), custom_timesteps), device)

    def _check_schedule(self, num_steps: Any, sigmas: Any, timesteps: Any
                        ) -> tuple[int, np.ndarray | None, np.ndarray | None]:
        """(step count, custom sigmas, custom timesteps) after diffusers' checks of set_timesteps' arguments."""
        sigmas = None if sigmas is None else _check_levels("sigmas", sigmas)
        timesteps = None if timesteps is None else _check_levels("timesteps", timesteps)
        given = [len(v) for v in (sigmas, timesteps) if v is not None]
        if len(given) == 2 and given[0] != given[1]:
            raise ValueError(f"sigmas: expected timesteps' length {given[1]}, got {given[0]}")
        if num_steps is None:
            if not given:
                raise ValueError("num_inference_steps: pass a step count, sigmas or timesteps")
            return given[0], sigmas, timesteps
        num_steps = self._check_num_steps(num_steps, "num_inference_steps", bounded=False)
        if given and given[0] != num_steps:
            raise ValueError(f"num_inference_steps: expected the length of sigmas / timesteps ({given[0]}), got "
                             f"{num_steps}")
        return num_steps, sigmas, timesteps

    def _levels(self, n: int, sigmas: np.ndarray | None, mu: float | None, timesteps: np.ndarray | None
                ) -> np.ndarray:
        """The [n] planned levels before inversion: diffusers' operations in diffusers' order and dtypes."""
        cfg = self.config
        if sigmas is None:
            sigmas = self._linspace_levels(n) if timesteps is None else timesteps / self.num_train_timesteps
        if cfg["use_dynamic_shifting"]:
            sigmas = flow_time_shift(sigmas, mu, cfg["time_shift_type"])
        else:
            sigmas = flow_shift(sigmas, self._shift)
        if cfg["shift_terminal"]:
            sigmas = stretch_to_terminal(sigmas, cfg["shift_terminal"])
        if cfg["use_karras_sigmas"]:
            return karras_sigmas(sigmas[-1].item(), sigmas[0].item(), n)
        if cfg["use_exponential_sigmas"]:
            return exponential_sigmas(sigmas[-1].item(), sigmas[0].item(), n)
        return sigmas

    def _plan_levels(self, sigmas: torch.Tensor, custom_timesteps: np.ndarray | None) -> Plan:
        total, n = self.num_train_timesteps, len(sigmas)
        if self.config["invert_sigmas"]:  # the timesteps follow the inverted levels, custom or not (as diffusers)
            sigmas = 1.0 - sigmas
            timesteps, last = sigmas * total, torch.ones(1)
        else:
            timesteps = sigmas * total if custom_timesteps is None else torch.from_numpy(custom_timesteps)
            last = torch.zeros(1)
        sigmas = torch.cat([sigmas, last])
        rows = [[sigmas[i], sigmas[i + 1], sigmas[i + 1] - sigmas[i], 1.0 - sigmas[i + 1]] for i in range(n)]
        return Plan(timesteps, _stack(rows), sigmas, (self.config["stochastic_sampling"],) * n, ())

    def _noise_dtype(self, model_output: torch.Tensor) -> torch.dtype:
        return torch.float32  # diffusers draws in the latents' dtype, which its step has made float32

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        sigma, sigma_next, dt, keep = plan.coef[i].unbind()
        x = x.to(torch.float32)
        if not plan.noise[i]:
            return (x + dt * model_output).to(model_output.dtype)
        x0 = x - sigma * model_output
        noise = draw_noise(x.shape, x, generator, torch.float32)
        return (keep * x0 + sigma_next * noise).to(model_output.dtype)

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        sigma, sigma_next, dt, keep = plan.host_coef[i]
        if plan.noise[i]:  # x0 = x - sigma v, renoised to sigma_next
            coefficients = UpdateCoefficients(1.0, -sigma, x=0.0, x0=keep, m=0.0, noise=sigma_next)
        else:
            coefficients = UpdateCoefficients(0.0, 0.0, x=1.0, x0=0.0, m=dt)
        return FusedUpdate(coefficients, model_dtype=True)


class FlowHeunSampler(_FlowSampler):
    """Heun's method on the flow ODE, as diffusers' FlowMatchHeunDiscreteScheduler: each level but the last takes two
    model calls, an Euler step to the next level, then a correction from the same start with the mean of the two
    velocities; the last is Euler's. `timesteps` lists every call (the inner levels twice) and `order` is 2, as
    diffusers pipelines read it. The levels are the shifted linspace ones (diffusers' scheduler takes no other
    options); the arithmetic runs in float32 and the result takes the model output's dtype, as diffusers'.

    The plan's sigmas are diffusers' per-call table (the inner levels twice, then 0)."""

    name = "flow_heun"
    order = 2

    def _reset_history(self) -> None:
        # The Euler step awaiting its correction: its velocity, dt and starting latents (float32).
        self._first: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Plan num_inference_steps levels (any count >= 1; 2 num_inference_steps - 1 model calls) and reset the
        counter."""
        self._install(self._make_plan(self._check_num_steps(num_inference_steps, "num_inference_steps", False)),
                      device)

    def _make_plan(self, num_steps: int) -> Plan:
        levels = torch.from_numpy(flow_shift(self._linspace_levels(num_steps), self.config["shift"]))
        levels = levels.to(torch.float32)
        timesteps = levels * self.num_train_timesteps
        timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        sigmas = torch.cat([levels[:1], levels[1:].repeat_interleave(2), torch.zeros(1)])  # inner levels twice
        n = len(timesteps)
        return Plan(timesteps, torch.zeros(n, 0), sigmas, (False,) * n, (), inference_steps=num_steps)

    def _check_churn(self, s_churn: Any) -> None:
        if s_churn != 0:
            raise NotImplementedError(f"s_churn={s_churn!r} is not implemented for the 'flow_heun' sampler (only 0, "
                                      f"diffusers' default)")

    def _fused(self, i: int, plan: Plan) -> FusedUpdate | None:
        return None  # the correction reads the first call's velocity: not one affine pass

    def _step(self, i: int, plan: Plan, model_output: torch.Tensor, x: torch.Tensor, generator: Generator
              ) -> torch.Tensor:
        _check_model_output(model_output, x)
        x = x.to(torch.float32)
        if self._first is None:  # Euler to the next level (no churn: sigma_hat = sigma); kept for the correction
            sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
            velocity = (x - (x - model_output * sigma)) / sigma  # diffusers' (x - x0) / sigma, rounding included
            dt = sigma_next - sigma
            self._first = (velocity, dt, x)
            return (x + velocity * dt).to(model_output.dtype)
        sigma = plan.sigmas[i]  # the level this call was made at: the first call's target
        previous, dt, start = self._first
        self._first = None
        velocity = 0.5 * (previous + (x - (x - model_output * sigma)) / sigma)
        return (start + velocity * dt).to(model_output.dtype)

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> torch.Tensor:
        """As diffusers' FlowMatchHeunDiscreteScheduler.scale_noise: sigma noise + (1 - sigma) sample at one level
        for the whole batch (timestep: one value, or the same value per item), sigma a float32 scalar. Where no step
        has run since set_timesteps and no begin index is set, the timestep's place in `timesteps` also becomes the
        next step, as diffusers' step index does."""
        t = _check_noise_args(sample, noise, timestep, names=("sample", "timestep"))
        if not bool((t == t[0]).all()):
            raise ValueError(f"timestep: the 'flow_heun' sampler noises a batch to one level, got {t.tolist()}")
        if self._plan is None:
            sigma = self._train_sigmas[timestep_indices(self._train_timesteps, t[:1])[0]]
        else:
            if self._begin is None and self._index == 0:
                self._index = timestep_indices(self._plan.host_timesteps, t[:1])[0]
            sigma = self._plan.sigmas[self._index]
        return sigma * noise + (1.0 - sigma) * sample


# ---------------------------------------------------------------- construction

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "euler": EulerSampler,
    "euler_a": EulerAncestralSampler,
    "dpm++": DPMSolverPPSampler,
    "pndm": PNDMSampler,
    "unipc": UniPCSampler,
    "lcm": LCMSampler,
    "heun": HeunSampler,
    "lms": LMSSampler,
    "kdpm2": KDPM2Sampler,
    "kdpm2_a": KDPM2AncestralSampler,
    "dpm++_single": DPMSolverSinglestepSampler,
    "flow_euler": FlowEulerSampler,
    "flow_heun": FlowHeunSampler,
}


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    if name not in SAMPLERS:
        raise ValueError(f"name: unknown sampler {name!r}; known samplers: {', '.join(map(repr, SAMPLERS))}")
    return name


def make_sampler(name: str, **config: Any) -> Sampler:
    """A sampler by name ("ddpm", "ddim", "euler", "euler_a", "dpm++", "pndm", "unipc", "lcm", "heun", "lms",
    "kdpm2", "kdpm2_a", "dpm++_single", and the flow-matching "flow_euler", "flow_heun") with diffusers' scheduler
    config keys.

    Defaults are those of the matching diffusers scheduler (DDPMScheduler, DDIMScheduler,
    EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler with dpmsolver++
    order 2, PNDMScheduler, UniPCMultistepScheduler, LCMScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler,
    KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler, DPMSolverSinglestepScheduler,
    FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler). DDIM also takes
    `eta` and `use_clipped_model_output`, LMS `order` (step arguments in diffusers). Unknown keys raise TypeError,
    bad values ValueError, known but unimplemented values NotImplementedError, each naming the key.
    """
    return SAMPLERS[_check_name(name)](**config)


def from_config(config: Mapping[str, Any] | Any, name: str | None = None) -> Sampler:
    """A sampler from a diffusers scheduler's `.config` (or the scheduler itself, or a saved
    scheduler_config.json dict, or a sampler, or a sampler's config with `name`).

    name: the sampler to build; None takes it from the scheduler's class (or `_class_name`, or the sampler). As with
    diffusers' `from_config`, keys the target does not use (another scheduler's options, bookkeeping
    such as `_diffusers_version`) are ignored, and so are keys listed in `_use_default_values` (they
    held the source class's defaults, so the target's own defaults apply).
    """
    if not isinstance(config, Mapping):
        if not isinstance(getattr(config, "config", None), Mapping):
            raise TypeError(f"config: expected a mapping or a diffusers scheduler, got {type(config).__name__}")
        if name is None:
            name = config.name if isinstance(config, Sampler) else CLASS_NAMES.get(type(config).__name__)
        config = config.config
    if name is None:
        name = CLASS_NAMES.get(config.get("_class_name", ""))
        if name is None:
            raise ValueError(f"name: cannot tell the sampler from config (_class_name="
                             f"{config.get('_class_name')!r}); pass one of {', '.join(map(repr, SAMPLERS))}")
    name = _check_name(name)
    # diffusers records which keys held their class's defaults; those do not carry over to another class
    # (Stable Diffusion's PNDM config leaves timestep_spacing at PNDM's "leading": Euler keeps "linspace").
    # Only the carried keys count as given: the new sampler's config lists the others as defaulted, as diffusers'.
    defaulted = set(config.get("_use_default_values", ()))
    kept = {k: v for k, v in config.items() if k in OPTIONS[name] and k not in defaulted}
    return SAMPLERS[name](**kept)
