"""Model-wide bit allocation (BPLL with one budget for the whole model): every linear layer's
predicted loss increase at each candidate width, from one float pass with gradients, then one
knapsack over all layers (bpll.allocate_widths).

For a layer with weight W, input second moments H = mean_t x_t x_t^T and squared gradients of
the model's loss with respect to its outputs F_c = mean_t (dL/dy_tc)^2, quantizing W to W_hat
raises the loss by about
    0.5 * sum_c F_c * (dW H dW^T)_cc,      dW = W - W_hat
(second-order Taylor with a Fisher for the Hessian, channels taken as independent; the
Fisher-weighted output error of HAWQ-style mixed precision). L is the loss of next tokens drawn
from the float model itself (default): F then estimates the Fisher, the Hessian of the KL
divergence from the float model, which is what the files are judged by; with the text's next
tokens it is the empirical Fisher (`sensitivity_labels="text"`). W_hat is BPLL's proxy at each
width: the layer's MQSA tiers with min/max parameters, no compensation. Unlike the per-block
losses of eq. 3, these are in one unit (nats of the model's loss) for every layer of every block,
so bits can move between blocks.

Memory: on a CPU one pass collects H and F together. On a GPU, where a 3B model must fit a
24 GB card, the pass with gradients recomputes each block's activations in the backward pass
(torch.utils.checkpoint) and collects only F; the H then come from a float forward pass block by
block, one block's at a time, each block's losses computed before the next. Both give the same
H and F.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from . import bpll, mqsa
from .engine import SharedInputs, _block_forward, _capture_block_inputs, layer_plan
from .gptq import add_gram_, mirror_upper_, quantize_without_compensation
from .model_io import arch_of, blocks_of, get_module


def _add_hessian(H: dict, shared: SharedInputs, name: str, x: torch.Tensor, seqlen: int, device) -> None:
    """H[name] += x^T x window by window (x [windows, seqlen, cols], or flattened as OPT's are)."""
    first = shared.first_reader(x, name)
    if first == name:
        if name not in H:
            H[name] = torch.zeros(x.shape[-1], x.shape[-1], device=device)
        for w in x.detach().float().reshape(-1, seqlen, x.shape[-1]).unbind(0):   # the same sums
            add_gram_(H[name], w, fused=True)    # however many per call; mirrored once all are in
    else:
        H[name] = H[first]


def _draw(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row of logits [n, vocab] from its softmax, by inverting the cumulative
    distribution (on a CPU much faster than torch.multinomial at these vocabularies)."""
    cdf = torch.softmax(logits, -1).cumsum_(-1)
    u = torch.rand(cdf.shape[0], 1, generator=gen, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u)[:, 0].clamp_(max=cdf.shape[1] - 1)


class _Recomputed(torch.nn.Module):
    """A block whose activations are recomputed in the backward pass instead of kept."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def layer_statistics(model, calib: torch.Tensor, device, windows: int, progress: bool = True,
                     hessians: bool = True, recompute: bool = False, labels: str = "text", seed: int = 0):
    """({layer: H [cols, cols]} or None, {layer: F [rows]}) over the first `windows` calibration windows.

    Only the activations carry gradients (none for the weights). recompute: keep only each
    block's inputs for the backward pass (needs hessians=False: a recomputed block runs its
    hooks twice). labels: "text", the loss of the calibration text's next tokens (F is the
    empirical Fisher); "sampled", of next tokens drawn from the float model's own distribution
    (seeded; F estimates the Fisher, the Hessian of the KL divergence from the float model)."""
    spec = arch_of(model)
    blocks = blocks_of(model)
    layers = {f"{spec.blocks}.{i}.{n}": get_module(b, n) for i, b in enumerate(blocks) for n in spec.linears}
    H: dict[str, torch.Tensor] = {}
    F = {k: torch.zeros(m.out_features, device=device) for k, m in layers.items()}
    shared = SharedInputs()
    seen: set[str] = set()                 # layers whose output gradient is hooked in this window
    tokens = 0

    def hook(name):
        def on_grad(g):
            F[name].add_(g.detach().reshape(-1, g.shape[-1]).float().pow(2).sum(0))

        def fn(_, inp, out):
            if name in seen:               # the recomputation in the backward pass
                return
            seen.add(name)
            if hessians:
                _add_hessian(H, shared, name, inp[0], calib.shape[1], device)
            out.register_hook(on_grad)
        return fn

    def needs_grad(_, __, out):            # gradients start at the embeddings' output
        return out.requires_grad_()

    # windows per call: on a CPU 2 (bigger GEMMs; the pass's logits grow with it)
    per_call = 2 if torch.device(device).type == "cpu" else 1
    gen = torch.Generator(device=device).manual_seed(seed)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    handles = [m.register_forward_hook(hook(k)) for k, m in layers.items()]
    handles.append(model.get_input_embeddings().register_forward_hook(needs_grad))
    if recompute:
        for i in range(len(blocks)):
            blocks[i] = _Recomputed(blocks[i])
    try:
        n = min(windows, calib.shape[0])
        bar = tqdm(total=n, desc="sensitivity (float pass with gradients)", unit="window", disable=not progress)
        for j in range(0, n, per_call):
            ids = calib[j:min(j + per_call, n)].to(device)
            seen.clear()
            shared.reset()
            with torch.enable_grad():
                if labels == "text":
                    # dL/dy of the mean loss; scaled by the token count so F is a per-token mean square
                    (model(ids, labels=ids).loss * ids[:, 1:].numel()).backward()
                else:
                    logits = model(ids).logits[:, :-1].float().flatten(0, 1)
                    drawn = _draw(logits.detach(), gen)
                    torch.nn.functional.cross_entropy(logits, drawn, reduction="sum").backward()
            tokens += ids.numel()
            bar.update(ids.shape[0])
        bar.close()
    finally:
        if recompute:
            for i in range(len(blocks)):
                blocks[i] = blocks[i].block
        for h in handles:
            h.remove()
        for p in trainable:
            p.requires_grad_(True)
    for t in {id(t): t for t in H.values()}.values():
        mirror_upper_(t)
    for t in {id(t): t for t in (*H.values(), *F.values())}.values():
        t.div_(tokens)                     # in place: shared H stay one tensor
    return (H if hessians else None), F


def block_hessians(model, calib: torch.Tensor, device, windows: int):
    """Yield each block's {layer: H} in turn from a float forward pass block by block (the same H
    as layer_statistics collects; only one block's H in memory)."""
    spec = arch_of(model)
    ids = calib[:min(windows, calib.shape[0])]
    with torch.no_grad():
        inps, kwargs_of = _capture_block_inputs(model, ids, device)
    tokens = ids.numel()
    for i, block in enumerate(blocks_of(model)):
        block.to(device)
        H: dict[str, torch.Tensor] = {}
        shared = SharedInputs()

        def hook(name):
            return lambda _, inp, __: _add_hessian(H, shared, f"{spec.blocks}.{i}.{name}", inp[0],
                                                    ids.shape[1], device)

        handles = [get_module(block, n).register_forward_hook(hook(n)) for n in spec.linears]
        try:
            with torch.no_grad():
                inps = _block_forward(block, inps, kwargs_of[i])     # window by window, as the full model ran them
        finally:
            for h in handles:
                h.remove()
        for t in {id(t): t for t in H.values()}.values():
            mirror_upper_(t)
            t.div_(tokens)
        yield H


@torch.no_grad()
def predicted_losses(model, stats: dict, cfg) -> dict[str, dict[int, float]]:
    """{layer: {width: predicted loss increase}} for cfg.candidates; stats {layer: (H, F)}."""
    out = {}
    inverted: dict = {}                     # layers reading one input share its H (and its inverse)
    for name, (H, F) in stats.items():
        W = model.get_submodule(name).weight.detach().float().to(H.device)
        delta = mqsa.salience(W, H, cfg.percdamp, inverted) if cfg.mqsa else None
        out[name] = {}
        for b in cfg.candidates:
            dW = W - quantize_without_compensation(W, layer_plan(cfg, H, delta, b, proxy=True)).weight
            out[name][b] = 0.5 * float((F * ((dW @ H) * dW).sum(1)).sum())
    return out


def allocate(model, calib: torch.Tensor, cfg, device, progress: bool = True):
    """(widths {layer: bits}, predicted losses) for the whole model under cfg.bits."""
    low_memory = torch.device(device).type == "cuda"
    try:
        H, F = layer_statistics(model, calib, device, cfg.sensitivity_windows, progress,
                                hessians=not low_memory, recompute=low_memory,
                                labels=cfg.sensitivity_labels, seed=cfg.seed)
        if H is not None:
            losses = predicted_losses(model, {k: (H[k], F[k]) for k in F}, cfg)
        else:
            losses = {}
            for block_H in block_hessians(model, calib, device, cfg.sensitivity_windows):
                losses.update(predicted_losses(model, {k: (h, F[k]) for k, h in block_H.items()}, cfg))
    finally:
        model.cpu()
    numels = {name: model.get_submodule(name).weight.numel() for name in losses}
    return bpll.allocate_widths(losses, numels, cfg.bits), losses
