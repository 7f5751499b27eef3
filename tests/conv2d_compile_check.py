"""Compile the conv2d Triton kernels for sm_80 and sm_90 without a GPU (run with TRITON_INTERPRET=0).

    TRITON_INTERPRET=0 python -m tests.conv2d_compile_check [--dtypes fp16 bf16 fp32] [--archs 90 80] [--max-configs N]

Every GPU autotuning config of the implicit-GEMM kernel (with the full epilogue) and the epilogue kernel.
Prints one JSON line per variant ({kernel, arch, dtype, config, shared, limit}); exits 1 when a variant does
not compile, or when no config of a dtype fits the card's shared memory (the autotuner skips a config
that does not fit, so some may exceed it as long as one fits).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

import triton
from genai_fast.kernels import conv2d as K
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SHARED_LIMIT = {80: 166912, 90: 232448}  # bytes of shared memory per block (A100, H100)
TENSORS = ("x_ptr", "w_ptr", "bias_ptr", "res_ptr", "out_ptr", "y_ptr")
DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}


def _signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in TENSORS:
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "fp32" if name == "output_scale" else "i32"
    return sig


def _compile(fn, dtype: str, const: dict, options: dict, arch: int) -> int:
    src = ASTSource(fn=fn, signature=_signature(fn, dtype, const), constexprs=const)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options).metadata.shared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--archs", nargs="+", type=int, default=[90, 80], choices=sorted(SHARED_LIMIT))
    parser.add_argument("--max-configs", type=int, default=None, help="compile only the first N configs")
    args = parser.parse_args()
    failed = False
    epilogue = dict(HAS_BIAS=True, HAS_RESIDUAL=True, SILU=True)
    for arch in args.archs:
        for dtype in args.dtypes:
            fitting = 0
            precision = "tf32" if dtype == "fp32" else "ieee"
            for config in K._configs()[: args.max_configs]:
                const = dict(epilogue, INPUT_PRECISION=precision, **config.kwargs)
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                record = {"kernel": "_conv2d_fwd_kernel", "arch": f"sm_{arch}", "dtype": dtype,
                          "config": str(config), "limit": SHARED_LIMIT[arch]}
                try:
                    record["shared"] = _compile(K._conv2d_fwd_kernel.fn, dtype, const, options, arch)
                    fitting += record["shared"] <= SHARED_LIMIT[arch]
                except Exception as exc:  # report every failing variant, not just the first
                    record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    failed = True
                print(json.dumps(record), flush=True)
            failed |= fitting == 0
            const = dict(epilogue, BLOCK_S=32, BLOCK_C=128)
            record = {"kernel": "_conv2d_epilogue_kernel", "arch": f"sm_{arch}", "dtype": dtype,
                      "limit": SHARED_LIMIT[arch]}
            try:
                record["shared"] = _compile(K._conv2d_epilogue_kernel, dtype, const, {}, arch)
            except Exception as exc:
                record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                failed = True
            print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
