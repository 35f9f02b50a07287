"""TQP: tier-wise quantization parameters learned by gradient descent (paper eq. 6-7).

Each quantization group (one output row x GROUP_SIZE columns of one tier) gets clipping
strengths gamma (upper end, on the scale) and beta (lower end, on the zero point), in (0, 1]
through a sigmoid, learned with Adam on the l2 error of the dequantized weights; rounding
passes gradients straight through. The groups of a tier share its bit width; all tiers are
optimized in one batch. The paper gives no learning rate, step count or initial values; ours
(lr 0.1, 50 Adam steps, init sigmoid(4) ~ 0.982) were chosen on SmolLM2-135M, see docs/DESIGN.md.

Guarantee: per group we keep whichever of (learned, plain min/max) has the lower l2 error, so
TQP never increases the error over min/max.
"""

from __future__ import annotations

import torch

from .grid import fit_scale_zero, quantize_codes, dequantize, _maxq

TQP_STEPS = 50
TQP_LR = 0.1
TQP_INIT_LOGIT = 4.0


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


def _clipped_dequant(w, maxq, gamma, beta):
    """Differentiable min/max-with-clipping fake quantization (no fp16 rounding of d)."""
    wmax = w.amax(dim=-1).clamp(min=0) * gamma
    wmin = w.amin(dim=-1).clamp(max=0) * beta
    d = ((wmax - wmin) / maxq).clamp(min=1e-8)
    zero = torch.clamp(_round_ste(-wmin / d), min=0)
    zero = torch.minimum(zero, maxq)
    q = torch.clamp(_round_ste(w / d.unsqueeze(-1)) + zero.unsqueeze(-1), min=0)
    q = torch.minimum(q, maxq.unsqueeze(-1))
    return d.unsqueeze(-1) * (q - zero.unsqueeze(-1))


def learn_clipping(w: torch.Tensor, bits: torch.Tensor, steps: int = TQP_STEPS, lr: float = TQP_LR):
    """Learn (gamma, beta) for groups w [G, rows, cols] with widths bits [G] (one per group).

    Returns gamma, beta of shape [G, rows]: the learned values where they beat plain min/max,
    exactly 1.0 elsewhere.
    """
    w = w.detach().float()
    bits = bits.to(w.device).float().view(-1, 1)
    maxq = _maxq(bits, w[..., 0])
    logit_g = torch.full(w.shape[:-1], TQP_INIT_LOGIT, device=w.device, requires_grad=True)
    logit_b = torch.full(w.shape[:-1], TQP_INIT_LOGIT, device=w.device, requires_grad=True)
    opt = torch.optim.Adam([logit_g, logit_b], lr=lr)
    best_err = _group_error(w, bits, None, None)          # plain min/max is the fallback
    best_g = torch.ones_like(best_err)
    best_b = torch.ones_like(best_err)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            gamma, beta = torch.sigmoid(logit_g), torch.sigmoid(logit_b)
            err = (_clipped_dequant(w, maxq, gamma, beta) - w).pow(2).sum(dim=-1)   # eq. 7
            err.sum().backward()
            opt.step()
    gamma, beta = torch.sigmoid(logit_g).detach(), torch.sigmoid(logit_b).detach()
    err = _group_error(w, bits, gamma, beta)                 # exact error, fp16 scale included
    better = err < best_err
    return torch.where(better, gamma, best_g), torch.where(better, beta, best_b)


def _group_error(w, bits, gamma, beta):
    d, zero = fit_scale_zero(w, bits, gamma, beta)
    return (dequantize(quantize_codes(w, d, zero, bits), d, zero) - w).pow(2).sum(dim=-1)
