"""The bit budget that makes an exported GGUF a given size (`mlwq quantize --target-mb`).

mlwq-export keeps every tensor of the source GGUF that is not a quantized linear layer byte for
byte, and writes each linear layer as an MLWQ tensor (ggml_patch/FORMAT.md). Format 3: per row
K = cols/64 one-byte block headers and a scale byte, per column a 2-byte permutation entry, per
block column a width byte, in three side tensors; format 2: per row K headers of 2 bytes, per
column a 4-byte permutation entry, in one side tensor. So (format 3)
    file = (source bytes - source linear bytes) + sum_l (rows_l * (K_l + 1) + 2 * cols_l + K_l) + B * N / 8
with N the linear weights and B their average code bits, which fixes B for a target size.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import MLWQError
from exporters.mlwq_format import HEADER_BYTES, V3_HEADER_BYTES

from .grid import GROUP_SIZE

LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
TENSOR_INFO_BYTES = 96        # a permutation tensor's name, dims, type and offset, with alignment


def is_linear_weight(name: str) -> bool:
    """A GGUF tensor name of a block's linear weight (blk.3.ffn_down.weight)."""
    parts = name.split(".")
    return name.startswith("blk.") and len(parts) == 4 and parts[2] in LINEAR and parts[3] == "weight"


def metadata_bytes(rows: int, cols: int, file_format: int = 3) -> int:
    """Bytes besides the codes of one linear layer's MLWQ tensors, tensor infos included."""
    K = cols // GROUP_SIZE
    if file_format == 2:
        return rows * K * HEADER_BYTES + 4 * cols + TENSOR_INFO_BYTES
    return rows * (K * V3_HEADER_BYTES + 1) + 2 * cols + K + 3 * TENSOR_INFO_BYTES


def budget_for_size(source: str | Path, target_bytes: int, lo: float = 2.0, hi: float = 4.0,
                    file_format: int = 3) -> float:
    """Average code bits (2 decimals, rounded down) that keep the exported file within target_bytes."""
    import gguf

    source = Path(source)
    if source.suffix != ".gguf" or not source.is_file():
        raise MLWQError(f"--target-mb needs a GGUF source (the exporter keeps its other tensors); got {source}")
    reader = gguf.GGUFReader(str(source))
    fixed = source.stat().st_size
    weights = 0
    for t in reader.tensors:
        if is_linear_weight(t.name):
            cols, rows = int(t.shape[0]), int(t.shape[1])
            fixed += metadata_bytes(rows, cols, file_format) - int(t.n_bytes)
            weights += rows * cols
    if not weights:
        raise MLWQError(f"{source} has no linear layers that mlwq quantizes")
    bits = math.floor(100 * 8 * (target_bytes - fixed) / weights) / 100
    mb = lambda b: (fixed + b * weights / 8) / 1e6
    if not lo <= bits:
        raise MLWQError(f"{target_bytes / 1e6:.2f} MB is below the smallest file MLWQ makes of this model "
                        f"({mb(lo):.2f} MB at {lo:g} bits); the largest is {mb(hi):.2f} MB at {hi:g} bits")
    return min(bits, hi)
