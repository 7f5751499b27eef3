"""One U-Net step, genai_fast-patched vs diffusers eager, at a size the runner's presets leave out.

    python bench/unet_step.py [--model sd15|mid|tiny] [--device cpu|cuda] [--dtype float32|float16|bfloat16]
                              [--reps 3] [--threads N] [--json PATH]

The U-Nets are bench/unet.py's configurations with random weights (seed 0): `sd15` is SD1.5's
UNet2DConditionModel (64x64 latent, CFG batch 2, 77x768 context). An SD1.5 step takes tens of seconds on a
small CPU, which is why the `genai-fast bench` presets time only the tiny and mid-size U-Nets there. Both
models run under torch.inference_mode(); one warm-up step each, then --reps steps alternating between them
(so load drifts on a shared machine hit both). Reported: the median and best step time of each, their
ratio, and the largest difference between the two outputs relative to the eager output's largest value.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from genai_fast.bench.unet import CONFIGS
from tqdm import tqdm

from genai_fast.integrations.diffusers import patch
from genai_fast.io import atomic_write_text

SHAPES = {"sd15": (64, (77, 768)), "mid": (32, (77, 256)), "tiny": (16, (7, 32))}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_seconds(unet: torch.nn.Module, inputs: tuple, device: torch.device) -> tuple[float, torch.Tensor]:
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
    _sync(device)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="sd15")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.reps < 1:
        parser.error("--reps: expected >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from diffusers import UNet2DConditionModel

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    eager = UNet2DConditionModel(**CONFIGS[args.model]).to(device, dtype).eval().requires_grad_(False)
    patched = copy.deepcopy(eager)
    report = patch(patched)
    latent, context = SHAPES[args.model]
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2, 4, latent, latent, generator=g).to(device, dtype), torch.tensor([500, 500], device=device),
              torch.randn(2, *context, generator=g).to(device, dtype))
    times: dict[str, list[float]] = {"eager": [], "patched": []}
    _, want = _step_seconds(eager, inputs, device)
    _, got = _step_seconds(patched, inputs, device)
    for _ in tqdm(range(args.reps), desc=f"{args.model} steps (eager, patched)"):
        for name, unet in (("eager", eager), ("patched", patched)):
            times[name].append(_step_seconds(unet, inputs, device)[0])
    result = {
        "model": args.model, "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "reps": args.reps, "patch": str(report).splitlines(),
        "eager_s": {"median": statistics.median(times["eager"]), "best": min(times["eager"]), "all": times["eager"]},
        "patched_s": {"median": statistics.median(times["patched"]), "best": min(times["patched"]),
                      "all": times["patched"]},
        "relative_max_difference": float((got.float() - want.float()).abs().max() / want.float().abs().max()),
    }
    result["speedup_median"] = result["eager_s"]["median"] / result["patched_s"]["median"]
    result["speedup_best"] = result["eager_s"]["best"] / result["patched_s"]["best"]
    from genai_fast.bench.env import environment

    result["env"] = environment(device, {})
    print(json.dumps({k: v for k, v in result.items() if k not in ("env", "patch")}, indent=1))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
