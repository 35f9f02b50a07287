"""WikiText-2 perplexity the way GPTQ measures it: the whole test text tokenized at once,
cut into non-overlapping windows of `seqlen` tokens, every position scored, mean NLL.

(llama-perplexity scores differently: 512-token chunks, BOS first, only the second half of
each chunk. Never put the two in one column.)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import MLWQError


def eval_tokens(tokenizer, path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise MLWQError(f"evaluation file not found: {path}")
    return tokenizer(path.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seqlen: int = 2048, max_windows: int | None = None,
               device: str | torch.device = "cpu", progress: bool = True) -> float:
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise MLWQError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    model.to(device)
    nll_sum, count = 0.0, 0
    for i in tqdm(range(n), desc="perplexity", unit="window", disable=not progress):
        window = ids[i * seqlen:(i + 1) * seqlen].unsqueeze(0).to(device)
        logits = model(window).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum")
        nll_sum += float(loss)
        count += seqlen - 1
    return math.exp(nll_sum / count)
