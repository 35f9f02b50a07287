"""Finished blocks of a `mlwq quantize` run, kept in OUT.progress/ beside the output so that an
interrupted run (Ctrl-C, SIGKILL, power) continues with `--resume` from the last finished block.

Each block is written atomically (temporary name, then rename) with the generator state that
the next block starts from, so a resumed run produces the uninterrupted run's bytes. The
progress folder records the settings it was made with; a resume with other settings is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import save_tensors
from .engine import LayerReport
from .errors import MLWQError
from .gptq import QuantResult

_FIELDS = ("codes", "scale", "zero", "perm", "group_bits")


class Progress:
    def __init__(self, out_dir: str | os.PathLike, fingerprint: dict):
        out_dir = Path(out_dir)
        self.dir = out_dir.with_name(out_dir.name + ".progress")
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

    def start(self, resume: bool):
        """(done_blocks, results, reports, rng_state) to continue from; a fresh start clears."""
        meta_path = self.dir / "progress.json"
        if resume and meta_path.is_file():
            saved = json.loads(meta_path.read_text())
            if saved != self.fingerprint:
                raise MLWQError(f"{self.dir} was made with other settings; rerun without --resume to start over")
            return self._load()
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        atomic_write_text(meta_path, json.dumps(self.fingerprint, sort_keys=True))
        return 0, {}, [], None

    def save_block(self, i: int, results: dict[str, QuantResult], reports: list[LayerReport], rng_state) -> None:
        tensors = {f"{name}.{f}": getattr(res, f).contiguous() for name, res in results.items() for f in _FIELDS}
        tensors["rng_state"] = rng_state
        extra = {name: {"group_size": res.group_size, "loss": res.loss} for name, res in results.items()}
        info = {"layers": extra, "reports": [vars(r) for r in reports]}
        tmp = self.dir / f"block_{i:04d}.safetensors.tmp"
        save_tensors(tensors, tmp, {"info": json.dumps(info)})
        os.replace(tmp, self.dir / f"block_{i:04d}.safetensors")

    def _load(self):
        results, reports, rng_state, i = {}, [], None, 0
        while (path := self.dir / f"block_{i:04d}.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                info = json.loads(f.metadata()["info"])
            tensors = load_file(str(path))
            for name, extra in info["layers"].items():
                results[name] = QuantResult(weight=None, **{f: tensors[f"{name}.{f}"] for f in _FIELDS}, **extra)
            for r in info["reports"]:
                r["tiers"] = [tuple(t) for t in r["tiers"]]
                r["bpll_losses"] = {int(k): v for k, v in r["bpll_losses"].items()}
                reports.append(LayerReport(**r))
            rng_state = tensors["rng_state"]
            i += 1
        return i, results, reports, rng_state

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
