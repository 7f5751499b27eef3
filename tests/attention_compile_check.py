"""Compile every attention kernel variant for sm_80 and sm_90 without a GPU (run with TRITON_INTERPRET=0).

    TRITON_INTERPRET=0 python -m tests.attention_compile_check [--dtypes bf16 fp16 fp32]

Uses the launchers' own tile configs, so a config whose shared memory does not fit the card, or a kernel
that only the interpreter accepts, fails here instead of on a lent GPU. Prints one JSON line per kernel
({kernel, arch, dtype, variant, shared, limit}) and exits 1 if any does not compile or does not fit.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

import torch
import triton
from genai_fast.kernels import attention as A
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SHARED_LIMIT = {80: 166912, 90: 232448}  # bytes of shared memory per block (A100, H100)
POINTERS = {"M": "*u8", "LSE": "*fp32", "SINKS": "*fp32",
            "DELTA": "*fp32", "PO": "*fp32", "PLSE": "*fp32", "LENS": "*i32"}
TENSORS = ("Q", "K", "V", "OUT", "DO", "DK", "DV_OUT", "DQ")
FLOATS = ("qk_scale", "sm_scale", "cap_in", "cap_out")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in TENSORS:
            sig[name] = f"*{dtype}"
        else:
            sig[name] = POINTERS.get(name, "fp32" if name in FLOATS else "i32")
    return sig


def _variants(dtype: torch.dtype):
    """(kernel, constexprs, launch options, label) for the configs the launchers pick on a GPU."""
    cuda = torch.device("cuda")
    ieee = dtype == torch.float32
    size = torch.empty((), dtype=dtype).element_size()
    plain, capped = dict(SOFTCAP=False, WINDOWED=False), dict(SOFTCAP=True, WINDOWED=True)
    fwd_plain, fwd_capped = dict(plain, HAS_SINKS=False), dict(capped, HAS_SINKS=True)
    for block_d in (64, 128, 256):
        for causal, kind, cap in ((True, A.MASK_NONE, fwd_plain), (False, A.MASK_NONE, fwd_plain),
                                  (False, A.MASK_BOOL, fwd_plain), (True, A.MASK_ADD, fwd_plain),
                                  (True, A.MASK_NONE, fwd_capped)):
            cfg = A._fwd_config(cuda, 4096, 4096, block_d, causal, size)
            tiles = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
            launch = {k: v for k, v in cfg.items() if not k.startswith("BLOCK")}
            const = dict(IS_CAUSAL=causal, MASK_KIND=kind, IEEE=ieee, EVEN_D=True, BLOCK_D=block_d,
                         BLOCK_DV=block_d, **cap, **tiles)
            yield A._attn_fwd_kernel, const, launch, f"fwd D{block_d} causal={causal} mask={kind} {cap}"
        cfg = A._bwd_config(cuda, 4096, 4096, block_d)
        tiles = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
        launch = {k: v for k, v in cfg.items() if not k.startswith("BLOCK")}
        for cap in (plain, capped):
            const = dict(IS_CAUSAL=True, MASK_KIND=A.MASK_BOOL, IEEE=ieee, BLOCK_D=block_d, BLOCK_DV=block_d,
                         **cap, **tiles)
            yield A._attn_bwd_dkdv_kernel, const, launch, f"bwd dkdv D{block_d} {cap}"
            yield A._attn_bwd_dq_kernel, const, launch, f"bwd dq D{block_d} {cap}"
        block_n, launch = A._decode_config(cuda, 4096, block_d, size)
        for cap in (plain, capped):
            const = dict(IS_CAUSAL=True, IEEE=ieee, BLOCK_M=64, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_d,
                         **cap)
            yield A._decode_split_kernel, const, launch, f"decode D{block_d} {cap}"
    yield A._attn_bwd_preprocess_kernel, dict(BLOCK_M=64, BLOCK_DV=256), {}, "bwd preprocess"
    for sinks in (False, True):
        yield A._decode_combine_kernel, dict(BLOCK_R=64, BLOCK_DV=256, HAS_SINKS=sinks), {}, f"decode combine {sinks=}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["bf16"], choices=sorted(DTYPES))
    parser.add_argument("--archs", nargs="+", type=int, default=[90, 80], choices=sorted(SHARED_LIMIT))
    args = parser.parse_args()
    failed = False
    for arch in args.archs:
        for name in args.dtypes:
            for fn, const, launch, label in _variants(DTYPES[name]):
                record = {"kernel": fn.fn.__name__, "arch": f"sm_{arch}", "dtype": name, "variant": label,
                          "limit": SHARED_LIMIT[arch]}
                try:
                    src = ASTSource(fn=fn, signature=_signature(fn, name, const), constexprs=const)
                    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=launch)
                    record["shared"] = compiled.metadata.shared
                    failed |= record["shared"] > SHARED_LIMIT[arch]
                except Exception as exc:  # report every failing variant, not just the first
                    record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    failed = True
                print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
