"""Block-output reconstruction: after GPTQ has quantized a block's linear layers, their rounding
and scales are tuned by signed gradient descent on the block's output error (AutoRound,
Cheng et al. 2023), starting from GPTQ's result.

Per layer: a rounding offset V in [-0.5, 0.5] per weight and a scale factor s per row and
64-column group in [1 - SCALE_RANGE, 1 + SCALE_RANGE]. The codes are
    q = clamp(round(c / d + V) + zero, 0, maxq),   d = grid(d_gptq * s)
where c holds GPTQ's compensated weights just before rounding, so V = 0, s = 1 gives GPTQ's codes
exactly. The forward pass is the format's dequantization, d * (q - zero); rounding and
the scale grid pass gradients straight through, so the tuned weights are the exported ones bit for
bit. The loss is the mean squared error of the block's output, computed on the inputs that the
already quantized blocks produce, against the float block's output on the float model's inputs.
The tuned layers are kept only if the loss over all calibration windows went down.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.func import functional_call

from . import grid
from .gptq import QuantResult

SCALE_RANGE = 0.2


def _round_ste(x):
    return (torch.round(x) - x).detach() + x


class _Tunable:
    """One layer's GPTQ result with its trainable rounding offsets and scale factors."""

    def __init__(self, name: str, res: QuantResult, device):
        gs = res.group_size
        self.name, self.res, self.gs = name, res, gs
        self.c = res.continuous.to(device).float()                          # [rows, cols], permuted
        self.d = res.scale.to(device).float()                               # [rows, G]
        self.z = res.zero.to(device).float()
        self.maxq = (2.0 ** res.group_bits.to(device).float() - 1)          # [G]
        self.inv = torch.argsort(res.perm.to(device).long())
        self.V = torch.zeros_like(self.c, requires_grad=True)
        self.s = torch.ones_like(self.d, requires_grad=True)

    def dequantized(self, hard: bool = False):
        """(weight in the original column order, codes, coded scale); hard: no gradient tricks."""
        d = self.d * self.s
        dq = grid.round_scale(d)
        d = dq if hard else d + (dq - d).detach()
        cols = self.c.shape[1]
        dc = d.repeat_interleave(self.gs, dim=1)[:, :cols]
        zc = self.z.repeat_interleave(self.gs, dim=1)[:, :cols]
        mc = self.maxq.repeat_interleave(self.gs)[:cols]
        x = self.c / dc + self.V
        q = (torch.round(x) if hard else _round_ste(x)) + zc
        q = torch.minimum(q.clamp(min=0), mc)
        return (dc * (q - zc))[:, self.inv], q, dq

    def result(self) -> QuantResult:
        with torch.no_grad():
            weight, q, dq = self.dequantized(hard=True)
        return dataclasses.replace(self.res, weight=weight, codes=q.to(torch.uint8).cpu(),
                                   scale=dq.float().cpu())


def _block_loss(block, weights, inps, targets, kwargs, idx) -> torch.Tensor:
    total = 0.0
    for j in idx:
        out = functional_call(block, weights, (inps[j:j + 1],), kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        total = total + (out - targets[j:j + 1]).float().pow(2).mean()
    return total / len(idx)


def tune_block(block, results: dict[str, QuantResult], inps: torch.Tensor, targets: torch.Tensor,
               kwargs: dict, steps: int, lr: float, batch: int, gen: torch.Generator):
    """Tune the quantized layers of one block (results: module name inside the block -> GPTQ
    result with `continuous`). Returns (results to keep, loss before, loss after)."""
    device = inps.device
    layers = [_Tunable(name, res, device) for name, res in results.items()]
    params = [p for t in layers for p in (t.V, t.s)]
    every = range(inps.shape[0])

    def weights(hard=False):
        return {f"{t.name}.weight": t.dequantized(hard)[0] for t in layers}

    with torch.no_grad():
        before = float(_block_loss(block, weights(hard=True), inps, targets, kwargs, every))
    with torch.enable_grad():
        for step in range(steps):
            idx = torch.randperm(inps.shape[0], generator=gen)[:batch].tolist()
            loss = _block_loss(block, weights(), inps, targets, kwargs, idx)
            grads = torch.autograd.grad(loss, params)
            rate = lr * (1 - step / steps)                      # linear decay, as AutoRound
            with torch.no_grad():
                for t, gv, gs_ in zip(layers, grads[0::2], grads[1::2]):
                    t.V.sub_(rate * gv.sign()).clamp_(-0.5, 0.5)
                    t.s.sub_(rate * gs_.sign()).clamp_(1 - SCALE_RANGE, 1 + SCALE_RANGE)
    with torch.no_grad():
        after = float(_block_loss(block, weights(hard=True), inps, targets, kwargs, every))
    if after >= before:
        return results, before, before
    return {t.name: t.result() for t in layers}, before, after
