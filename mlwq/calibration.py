"""Calibration data: N random windows of L tokens from a text file, seeded."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .errors import MLWQError


def load_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        from .assets import DATA_HINT, WIKITEXT
        hint = f". {DATA_HINT}" if path.name in WIKITEXT else ""
        raise MLWQError(f"calibration file not found: {path}{hint}")
    # utf-8-sig: wiki.valid.tokens starts with a byte-order mark
    return path.read_text(encoding="utf-8-sig")


def calibration_windows(tokenizer, path: str | Path, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """[nsamples, seqlen] token ids: windows starting at random offsets of the tokenized text."""
    if nsamples < 1 or seqlen < 1:
        raise MLWQError("calibration needs at least one window of at least one token")
    ids = tokenizer(load_text(path), return_tensors="pt").input_ids[0]
    if ids.numel() < seqlen + 1:
        raise MLWQError(f"{path} has {ids.numel()} tokens, fewer than one window of {seqlen}")
    if ids.numel() < nsamples * seqlen:    # windows start at random offsets: they may overlap anyway
        warnings.warn(f"{path} has {ids.numel()} distinct tokens, fewer than the {nsamples} x {seqlen} = "
                      f"{nsamples * seqlen} asked for: the calibration windows overlap", stacklevel=2)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
