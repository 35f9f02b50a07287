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
        from .assets import DATA_HINT, WIKITEXT
        hint = f". {DATA_HINT}" if path.name in WIKITEXT else ""
        raise MLWQError(f"evaluation file not found: {path}{hint}")
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


@torch.no_grad()
def reference_logprobs(model, ids: torch.Tensor, seqlen: int, max_windows: int,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """[windows, seqlen, vocab] log-probabilities of the float model, to compare against, kept in
    float16 on `device` (halves the memory; the rounding is unbiased and far below the KLDs measured)."""
    n = min(ids.numel() // seqlen, max_windows)
    if n < 1:
        raise MLWQError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    model.to(device)
    out = []
    for i in tqdm(range(n), desc="reference log-probs", unit="window"):
        window = ids[i * seqlen:(i + 1) * seqlen].unsqueeze(0).to(device)
        out.append(torch.log_softmax(model(window).logits[0].float(), dim=-1).half())
    return torch.stack(out)


@torch.no_grad()
def quality(model, ids: torch.Tensor, ref_logprobs: torch.Tensor, device: str | torch.device = "cpu",
            progress: bool = True) -> dict:
    """Perplexity and KL divergence from the reference on ref_logprobs' windows (llama-perplexity's
    KLD statistics: mean, 99th percentile, same top token), every position scored."""
    n, seqlen, _ = ref_logprobs.shape
    model.to(device)
    nll_sum, kld, same = 0.0, [], 0
    for i in tqdm(range(n), desc="quality", unit="window", disable=not progress):
        window = ids[i * seqlen:(i + 1) * seqlen].unsqueeze(0).to(device)
        logp = torch.log_softmax(model(window).logits[0].float(), dim=-1)
        nll_sum += float(-logp[:-1].gather(1, window[0, 1:].unsqueeze(1)).sum())
        ref = ref_logprobs[i].to(logp.device).float()
        kld.append((ref.exp() * (ref - logp)).sum(-1))
        same += int((ref.argmax(-1) == logp.argmax(-1)).sum())
    kld = torch.cat(kld).cpu()
    return {"ppl": math.exp(nll_sum / (n * (seqlen - 1))), "kld_mean": float(kld.mean()),
            "kld_p99": float(torch.quantile(kld, 0.99)), "same_top_pct": 100.0 * same / kld.numel(),
            "eval_tokens": int(kld.numel())}
