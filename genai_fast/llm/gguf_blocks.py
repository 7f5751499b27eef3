"""Decode over a GGUF model's own weight blocks: the same fp32 weights, a fraction of the bytes.

transformers loads a GGUF file by expanding every block to fp32 (SmolLM2-135M: 96 MB of Q4_1/Q8_0 blocks
become 540 MB), and a batch-1 decode step is bound by reading those bytes. The C++ kernel behind
`genai_fast.gguf_linear` reads the blocks instead and expands them in registers to bitwise the same fp32
numbers, so decode computes what it computed before (only the summation order of each dot product
differs, as between any two GEMMs) at a sixth of the traffic.

`attach_gguf_blocks` finds, for each linear weight of the compact model, the file's blocks that hold it.
It does not rely on tensor names or on how transformers reorders rows (it permutes Llama's q/k rows for
its rotary layout): rows are matched by the values they expand to, and a matrix is only attached when
expanding the gathered blocks reproduces it bit for bit. Prefill keeps using the fp32 weights (BLAS's GEMM
reuses each weight across the prompt's tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genai_fast.llm.gguf_file import GgufTensor, read_block_tensors
from genai_fast.ops.gguf_linear import BLOCK_FORMATS, gguf_dequantize


@dataclass(frozen=True)
class GgufWeight:
    """One weight matrix as GGUF blocks: blocks [N, K / 32 * block bytes] uint8 in block_type."""

    blocks: torch.Tensor
    block_type: str

    @property
    def nbytes(self) -> int:
        return self.blocks.numel()


@dataclass
class GgufBlocksReport:
    """What attach_gguf_blocks did: matrices attached per block type, bytes, and why others stayed fp32."""

    attached: dict[str, int] = field(default_factory=dict)
    block_bytes: int = 0
    fp32_bytes: int = 0
    kept_fp32: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.attached:
            return "fp32 weights (no matrix matched the GGUF file's blocks)"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.attached.items()))
        text = (f"decode reads GGUF blocks for {sum(self.attached.values())} matrices ({kinds}): "
                f"{self.block_bytes / 1e6:.0f} MB instead of {self.fp32_bytes / 1e6:.0f} MB of fp32")
        return text + (f"; {len(self.kept_fp32)} kept fp32" if self.kept_fp32 else "")


HASHED_WEIGHTS = 64  # a row's first two blocks identify it; gather() verifies every weight afterwards


def _row_keys(rows: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """rows [R, >= 64] fp32 -> [R] int64 hashes of the bit patterns of their first 64 weights."""
    bits = rows[:, :HASHED_WEIGHTS].contiguous().view(torch.int32).to(torch.int64)
    return (bits * coefficients).sum(1)  # wraps modulo 2^64, which is all a hash needs


class _BlockSource:
    """The file's block tensors of one row length K: their rows, expanded once and hashed, by block type."""

    def __init__(self, tensors: list[GgufTensor], K: int) -> None:
        generator = torch.Generator().manual_seed(K)
        self.coefficients = torch.randint(1, 2**62, (HASHED_WEIGHTS,), generator=generator, dtype=torch.int64) | 1
        self.rows: dict[str, torch.Tensor] = {}  # block type -> every row of that type [R, row bytes] (a copy)
        self.index: dict[int, list[tuple[str, int]]] = {}  # hash of a row's head -> [(block type, row)]
        for block_type in sorted({t.block_type for t in tensors}):
            rows = torch.from_numpy(np.concatenate([t.data for t in tensors if t.block_type == block_type]))
            self.rows[block_type] = rows
            head = rows[:, :HASHED_WEIGHTS // 32 * BLOCK_FORMATS[block_type].block_bytes]
            for row, key in enumerate(_row_keys(gguf_dequantize(head, block_type), self.coefficients).tolist()):
                self.index.setdefault(key, []).append((block_type, row))

    def gather(self, weight: torch.Tensor) -> GgufWeight | str:
        """The blocks holding weight [N, K] exactly, or the reason there are none."""
        candidates = [self.index.get(key) for key in _row_keys(weight, self.coefficients).tolist()]
        if any(c is None for c in candidates):
            return "some rows are not in the file's blocks (values differ, e.g. another dtype)"
        kinds = {kind for c in candidates for kind, _ in c}
        if len(kinds) != 1:
            return f"rows come from blocks of different types {sorted(kinds)}"
        block_type = kinds.pop()
        source, bits = self.rows[block_type], weight.detach().contiguous().view(torch.int32)
        blocks = source.index_select(0, torch.tensor([c[0][1] for c in candidates]))
        exact = (gguf_dequantize(blocks, block_type).view(torch.int32) == bits).all(1)
        # Rows whose heads are alike (e.g. embeddings of unused tokens): try their other candidates.
        for n in (~exact).nonzero()[:, 0].tolist():
            for _, row in candidates[n][1:]:
                if torch.equal(gguf_dequantize(source[row:row + 1], block_type).view(torch.int32)[0], bits[n]):
                    blocks[n], exact[n] = source[row], True
                    break
        if not exact.all():
            return "the matched blocks do not reproduce the weights bit for bit"
        return GgufWeight(blocks, block_type)


def linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The compact model's linear weight matrices by name: per layer qkv, output, MLP in and out (a MoE layer's
    experts are not matrices F.linear takes); the LM head."""
    weights = {f"layers.{i}.{name}": getattr(layer, name) for i, layer in enumerate(model.layers)
               for name in ("wqkv", "wo", "mlp_in", "mlp_out") if getattr(layer, name) is not None}
    return {**weights, "lm_head": model.lm_head}


def attach_gguf_blocks(model: torch.nn.Module, path: str | Path) -> GgufBlocksReport:
    """Give `model` (a DecoderModel loaded from the GGUF file at `path`, fp32 on the CPU) the file's blocks of
    each of its linear weights that they reproduce exactly; -> what was attached and what was not."""
    report = GgufBlocksReport()
    model._decode_linears.clear()  # resolved before the blocks existed
    by_k: dict[int, list[GgufTensor]] = {}
    for tensor in read_block_tensors(path):
        if tensor.shape[0] < HASHED_WEIGHTS:
            continue  # too short to identify its rows; such layers stay fp32
        by_k.setdefault(tensor.shape[0], []).append(tensor)
    sources = {K: _BlockSource(tensors, K) for K, tensors in by_k.items()}
    for name, weight in linear_weights(model).items():
        report.fp32_bytes += weight.numel() * weight.element_size()
        source = sources.get(weight.shape[1])
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            found: GgufWeight | str = f"weights are {weight.dtype} on {weight.device}, not fp32 on the CPU"
        else:
            found = "no block tensor of this row length" if source is None else source.gather(weight)
        if isinstance(found, str):
            report.kept_fp32.append(f"{name}: {found}")
            report.block_bytes += weight.numel() * weight.element_size()
            continue
        model.gguf_blocks[id(weight)] = found
        report.attached[found.block_type] = report.attached.get(found.block_type, 0) + 1
        report.block_bytes += found.nbytes
    return report
