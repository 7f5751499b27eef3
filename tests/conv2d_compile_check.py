"""Compile the conv2d Triton kernels for sm_80 and sm_90 without a GPU (run with TRITON_INTERPRET=0).

    TRITON_INTERPRET=0 python -m tests.conv2d_compile_check [--dtypes fp16 bf16 fp32] [--archs 90 80] [--max-configs N]

Every GPU autotuning config of the implicit-GEMM kernel (with the full epilogue), generic and specialised as
for an NHWC layer with channel counts divisible by 16 (unit channel strides: vector loads, cp.async
pipelining), and the epilogue kernel. Prints one JSON line per variant ({kernel, arch, dtype, config, shared,
shared_nhwc, limit}); exits 1 when a variant does
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


# What the launcher's specialisation gives an SD-shaped NHWC layer at run time: unit channel strides
# become constants, pointers, channel counts and the other strides are multiples of 16.
NHWC_UNIT_STRIDES = {"sxc": 1, "swi": 1, "soc": 1, "src": 1}
DIVISIBLE_BY_16 = ("x_ptr", "w_ptr", "bias_ptr", "res_ptr", "out_ptr", "C_in_g", "C_out_g", "sxn", "sxh", "sxw",
                   "swo", "sbn", "srn", "srs", "son", "sos")


def _jit(kernel):
    """The JITFunction under autotune/heuristics wrappers."""
    while not isinstance(kernel, triton.runtime.JITFunction):
        kernel = kernel.fn
    return kernel


def _compile(fn, dtype: str, const: dict, options: dict, arch: int, nhwc: bool = False) -> int:
    attrs = None
    if nhwc:
        const = {**const, **NHWC_UNIT_STRIDES}
        attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in DIVISIBLE_BY_16}
    src = ASTSource(fn=fn, signature=_signature(fn, dtype, const), constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options).metadata.shared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--archs", nargs="+", type=int, default=[90, 80], choices=sorted(SHARED_LIMIT))
    parser.add_argument("--max-configs", type=int, default=None, help="compile only the first N configs")
    args = parser.parse_args()
    failed = False
    epilogue = dict(HAS_BIAS=True, PER_SAMPLE_BIAS=False, HAS_RESIDUAL=True, SILU=True)
    for arch in args.archs:
        for dtype in args.dtypes:
            fitting = 0
            precision = "tf32" if dtype == "fp32" else "ieee"
            for config in K._configs()[: args.max_configs]:
                const = dict(epilogue, INPUT_PRECISION=precision, EVEN_K=True, **config.kwargs)
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                record = {"kernel": "_conv2d_fwd_kernel", "arch": f"sm_{arch}", "dtype": dtype,
                          "config": str(config), "limit": SHARED_LIMIT[arch]}
                try:
                    record["shared"] = _compile(_jit(K._conv2d_fwd_kernel), dtype, const, options, arch)
                    record["shared_nhwc"] = _compile(_jit(K._conv2d_fwd_kernel), dtype, const, options, arch,
                                                      nhwc=True)
                    fitting += max(record["shared"], record["shared_nhwc"]) <= SHARED_LIMIT[arch]
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
