"""Model-wide bit allocation (BPLL with one budget for the whole model): every linear layer's
predicted loss increase at each candidate width, from one float pass with gradients, then one
knapsack over all layers (bpll.allocate_widths).

For a layer with weight W, input second moments H = mean_t x_t x_t^T and squared gradients of
the model's loss with respect to its outputs F_c = mean_t (dL/dy_tc)^2, quantizing W to W_hat
raises the loss by about
    0.5 * sum_c F_c * (dW H dW^T)_cc,      dW = W - W_hat
(second-order Taylor with the empirical Fisher for the Hessian, channels taken as independent;
the Fisher-weighted output error of HAWQ-style mixed precision). W_hat is BPLL's proxy at each
width: the layer's MQSA tiers with min/max parameters, no compensation. Unlike the per-block
losses of eq. 3, these are in one unit (nats of the model's loss) for every layer of every block,
so bits can move between blocks.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import bpll, mqsa
from .engine import layer_plan
from .gptq import quantize_without_compensation
from .model_io import arch_of, blocks_of, get_module


def layer_statistics(model, calib: torch.Tensor, device, windows: int, progress: bool = True):
    """{full layer name: (H [cols, cols], F [rows])} over the first `windows` calibration windows."""
    spec = arch_of(model)
    layers = {f"{spec.blocks}.{i}.{n}": get_module(b, n) for i, b in enumerate(blocks_of(model))
              for n in spec.linears}
    H = {k: torch.zeros(m.in_features, m.in_features, device=device) for k, m in layers.items()}
    F = {k: torch.zeros(m.out_features, device=device) for k, m in layers.items()}
    tokens = 0

    def hook(name):
        def on_grad(g):
            F[name].add_(g.detach().reshape(-1, g.shape[-1]).float().pow(2).sum(0))

        def fn(_, inp, out):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
            H[name].addmm_(x.t(), x)
            out.register_hook(on_grad)
        return fn

    model.to(device)
    handles = [m.register_forward_hook(hook(k)) for k, m in layers.items()]
    try:
        n = min(windows, calib.shape[0])
        for j in tqdm(range(n), desc="sensitivity (float pass with gradients)", unit="window", disable=not progress):
            ids = calib[j:j + 1].to(device)
            with torch.enable_grad():
                loss = model(ids, labels=ids).loss
                # dL/dy of the mean loss; scaled by the token count so F is a per-token mean square
                (loss * (ids.shape[1] - 1)).backward()
            model.zero_grad(set_to_none=True)
            tokens += ids.shape[1]
    finally:
        for h in handles:
            h.remove()
        model.cpu()
    return {k: (H[k] / tokens, F[k] / tokens) for k in layers}


def predicted_losses(model, stats: dict, cfg) -> dict[str, dict[int, float]]:
    """{layer: {width: predicted loss increase}} for cfg.candidates."""
    out = {}
    for name, (H, F) in stats.items():
        W = model.get_submodule(name).weight.detach().float().to(H.device)
        delta = mqsa.salience(W, H, cfg.percdamp) if cfg.mqsa else None
        out[name] = {}
        for b in cfg.candidates:
            dW = W - quantize_without_compensation(W, layer_plan(cfg, H, delta, b, proxy=True)).weight
            out[name][b] = 0.5 * float((F * ((dW @ H) * dW).sum(1)).sum())
    return out


def allocate(model, calib: torch.Tensor, cfg, device, progress: bool = True):
    """(widths {layer: bits}, predicted losses) for the whole model under cfg.bits."""
    stats = layer_statistics(model, calib, device, cfg.sensitivity_windows, progress)
    losses = predicted_losses(model, stats, cfg)
    numels = {name: model.get_submodule(name).weight.numel() for name in losses}
    return bpll.allocate_widths(losses, numels, cfg.bits), losses
