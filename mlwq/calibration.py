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
    """[nsamples, seqlen] token ids: windows starting at random offsets of the tokenized text.

    A tokenizer that starts every text with BOS (Gemma's) gets BOS at the head of every window,
    as llama.cpp feeds it (llama-perplexity and llama-imatrix chunks begin with BOS): such models
    keep outsized activations on that first token, which the Hessians must see."""
    if nsamples < 1 or seqlen < 1:
        raise MLWQError("calibration needs at least one window of at least one token")
    ids = tokenizer(load_text(path), return_tensors="pt").input_ids[0]
    total = ids.numel()
    bos = tokenizer.bos_token_id
    with_bos = bos is not None and ids.numel() > 0 and int(ids[0]) == bos
    body = seqlen - 1 if with_bos else seqlen
    if with_bos:
        ids = ids[1:]
    if ids.numel() < body + 1:
        raise MLWQError(f"{path} has {ids.numel()} tokens, fewer than one window of {seqlen}")
    if ids.numel() < nsamples * body:    # windows start at random offsets: they may overlap anyway
        asked = f"{nsamples} x {seqlen - 1} after BOS" if with_bos else f"{nsamples} x {seqlen}"
        warnings.warn(f"{path} has {total} distinct tokens, fewer than the {asked} = {nsamples * body} "
                      "asked for: the calibration windows overlap", stacklevel=2)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - body, (nsamples,), generator=gen)
    head = [torch.tensor([bos])] if with_bos else []
    return torch.stack([torch.cat(head + [ids[s:s + body]]) for s in starts.tolist()])
