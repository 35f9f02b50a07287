"""The quantized checkpoint that `mlwq quantize` writes and the GGUF exporter reads.

DIR/quantized.safetensors holds, per quantized linear layer N (its module name):
    N.qcodes      uint8 [out, in]      codes, permuted column order
    N.perm        int32 [in]           permuted position j holds original column perm[j]
    N.scale       float32 [out, in/64] one per 64-column block (the MLWQ block), on the format's 2^(k/8) grid
    N.zero        uint8 [out, in/64]
    N.group_bits  uint8 [in/64]        width of each block (same for every row)
and DIR/mlwq_checkpoint.json the settings, per-layer widths, tiers and bit counts.
Dequantized weight: W[:, perm[j]] = float32(scale[:, j//64]) * (qcodes[:, j] - zero[:, j//64]).
Groups wider than 64 (GPTQ g128) are stored repeated per 64-column block.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from exporters.mlwq_format import HEADER_BYTES

from .errors import MLWQError
from .gptq import QuantResult
from .grid import GROUP_SIZE
from .model_io import get_module

CHECKPOINT_JSON = "mlwq_checkpoint.json"
CHECKPOINT_TENSORS = "quantized.safetensors"
FORMAT_VERSION = 2          # 2: scales on the GGUF format 2 grid (1 held fp16 scales)


def type_width(group_bits) -> int:
    """Width b of the MLWQb ggml type that holds these 64-column blocks: ceil(mean bits). The one
    rule for the quantizer and the exporter (a torch tensor or a numpy array of block widths)."""
    flat = group_bits.reshape(-1)
    return -(-int(flat.sum()) // int(flat.shape[0]))


def layer_bytes(rows: int, cols: int, width: int) -> int:
    """Bytes of one MLWQ tensor in the GGUF: rows of K 2-byte headers + K*8*width code bytes,
    plus its int32 column permutation (ggml_patch/FORMAT.md)."""
    blocks = cols // GROUP_SIZE
    return rows * blocks * (HEADER_BYTES + 8 * width) + 4 * cols


def to_blocks(res: QuantResult) -> dict[str, torch.Tensor]:
    """Per-64-column-block tensors of one layer (groups of 128 etc. repeated per block)."""
    rep = res.group_size // GROUP_SIZE
    blocks = res.codes.shape[1] // GROUP_SIZE
    return {
        "qcodes": res.codes.contiguous(),
        "perm": res.perm.to(torch.int32).contiguous(),
        "scale": res.scale.repeat_interleave(rep, dim=1)[:, :blocks].contiguous(),
        "zero": res.zero.repeat_interleave(rep, dim=1)[:, :blocks].contiguous(),
        "group_bits": res.group_bits.repeat_interleave(rep)[:blocks].contiguous(),
    }


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file, with its write errors (disk full...) raised as OSError."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as e:  # safetensors reports I/O failures as SafetensorError
        if "I/O error" not in str(e):
            raise
        raise OSError(None, str(e).split("I/O error: ")[-1], str(path)) from None


def save(out_dir: str | os.PathLike, results: dict[str, QuantResult], reports, config, source: str,
         extra: dict | None = None) -> dict:
    """Write the checkpoint atomically: into DIR.part, then renamed to DIR."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors, layers = {}, {}
    total_bytes = total_params = total_code_bits = 0
    by_name = {r.name: r for r in reports}
    for name, res in results.items():
        t = to_blocks(res)
        for key, value in t.items():
            tensors[f"{name}.{key}"] = value
        rows, cols = res.codes.shape
        width = type_width(t["group_bits"])
        nbytes = layer_bytes(rows, cols, width)
        code_bits = int(t["group_bits"].long().sum()) * GROUP_SIZE * rows
        total_bytes += nbytes
        total_params += rows * cols
        total_code_bits += code_bits
        rep = by_name.get(name)
        layers[name] = {
            "shape": [rows, cols], "type_width": width, "bpll_width": rep.width if rep else width,
            "tiers": rep.tiers if rep else [], "bpll_losses": rep.bpll_losses if rep else {},
            "code_bits_per_weight": code_bits / (rows * cols),
            "bits_per_weight": 8 * nbytes / (rows * cols),
        }
    meta = {
        "format": "mlwq-checkpoint", "version": FORMAT_VERSION, "source": str(source),
        "group_size": GROUP_SIZE, "config": asdict(config) if config is not None else {},
        "layers": layers,
        "summary": {"params": total_params, "bytes": total_bytes,
                    "code_bits_per_weight": total_code_bits / max(total_params, 1),
                    "bits_per_weight": 8 * total_bytes / max(total_params, 1)},
        **(extra or {}),
    }
    try:
        save_tensors(tensors, tmp / CHECKPOINT_TENSORS, {"format": "mlwq-checkpoint"})
        (tmp / CHECKPOINT_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    except BaseException:              # disk full, interrupt: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return meta


def load(ckpt_dir: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    ckpt_dir = Path(ckpt_dir)
    meta_path, tensor_path = ckpt_dir / CHECKPOINT_JSON, ckpt_dir / CHECKPOINT_TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise MLWQError(f"{ckpt_dir} is not an mlwq checkpoint (needs {CHECKPOINT_JSON} and {CHECKPOINT_TENSORS})")
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(tensor_path))
    except Exception as e:  # a truncated or corrupt file
        raise MLWQError(f"corrupt checkpoint {ckpt_dir}: {e}") from None
    if meta.get("format") != "mlwq-checkpoint" or meta.get("version") != FORMAT_VERSION:
        raise MLWQError(f"{ckpt_dir}: unsupported checkpoint format/version "
                        f"{meta.get('format')}/{meta.get('version')} (this mlwq reads version {FORMAT_VERSION}; "
                        f"version 1 checkpoints hold fp16 scales: quantize again)")
    return meta, tensors


def dequantize_layer(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    codes = tensors[f"{name}.qcodes"].float()
    perm = tensors[f"{name}.perm"].long()
    scale = tensors[f"{name}.scale"].float().repeat_interleave(GROUP_SIZE, dim=1)
    zero = tensors[f"{name}.zero"].float().repeat_interleave(GROUP_SIZE, dim=1)
    W = torch.empty_like(codes)
    W[:, perm] = scale * (codes - zero)
    return W


def apply_to_model(model, ckpt_dir: str | os.PathLike) -> dict:
    """Fake-quant reconstruction: replace the model's float weights by the dequantized ones."""
    meta, tensors = load(ckpt_dir)
    for name in meta["layers"]:
        layer = get_module(model, name)
        if layer is None:
            raise MLWQError(f"checkpoint layer {name} is not in the model")
        W = dequantize_layer(tensors, name)
        if tuple(W.shape) != tuple(layer.weight.shape):
            raise MLWQError(f"checkpoint layer {name} has shape {tuple(W.shape)}, the model {tuple(layer.weight.shape)}")
        layer.weight.data = W.to(layer.weight.dtype)
    return meta
