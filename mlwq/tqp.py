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

from .grid import fit_scale_zero, quantize_codes, dequantize, maxq

TQP_STEPS = 50
TQP_LR = 0.1
TQP_INIT_LOGIT = 4.0


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


def _clipped_dequant(w, qmax, gamma, beta):
    """Differentiable min/max-with-clipping fake quantization (no fp16 rounding of d)."""
    wmax = w.amax(dim=-1).clamp(min=0) * gamma
    wmin = w.amin(dim=-1).clamp(max=0) * beta
    d = ((wmax - wmin) / qmax).clamp(min=1e-8)
    zero = torch.clamp(_round_ste(-wmin / d), min=0)
    zero = torch.minimum(zero, qmax)
    q = torch.clamp(_round_ste(w / d.unsqueeze(-1)) + zero.unsqueeze(-1), min=0)
    q = torch.minimum(q, qmax.unsqueeze(-1))
    return d.unsqueeze(-1) * (q - zero.unsqueeze(-1))


def learn_clipping(w: torch.Tensor, bits: torch.Tensor, steps: int = TQP_STEPS, lr: float = TQP_LR):
    """Learn (gamma, beta) for groups w [G, rows, cols] with widths bits [G] (one per group).

    Returns gamma, beta of shape [G, rows]: the learned values where they beat plain min/max,
    exactly 1.0 elsewhere.
    """
    w = w.detach().float()
    bits = bits.to(w.device).float().view(-1, 1)
    qmax = maxq(bits, w[..., 0])
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
            err = (_clipped_dequant(w, qmax, gamma, beta) - w).pow(2).sum(dim=-1)   # eq. 7
            err.sum().backward()
            opt.step()
    gamma, beta = torch.sigmoid(logit_g).detach(), torch.sigmoid(logit_b).detach()
    err = _group_error(w, bits, gamma, beta)                 # exact error, fp16 scale included
    better = err < best_err
    return torch.where(better, gamma, best_g), torch.where(better, beta, best_b)


def _group_error(w, bits, gamma, beta):
    d, zero = fit_scale_zero(w, bits, gamma, beta)
    return (dequantize(quantize_codes(w, d, zero, bits), d, zero) - w).pow(2).sum(dim=-1)


CLIP_GRID = torch.linspace(1.0, 0.6, 9)   # shrink factors of each end tried by the weighted search
LS_ROUNDS = 2                               # least-squares refinements of the scale after the grid


def weighted_search(w: torch.Tensor, bits, importance: torch.Tensor, d0: torch.Tensor, z0: torch.Tensor):
    """Scale and zero of each row of one group w [rows, n] that minimise the importance-weighted
    error sum_k h_k (w_k - w_hat_k)^2 (llama.cpp's imatrix idea, make_qkx3_quants' search).

    Candidates: the start (d0, z0), every pair of clipping factors of CLIP_GRID for the two ends,
    then LS_ROUNDS weighted least-squares refits of d for the best codes with zero and zero +- 1.
    Returns (d, zero) on the format's grid (fp16 d, integer zero); never worse than the start.
    """
    w = w.float()
    h = importance.float().to(w.device).clamp(min=0).expand_as(w)
    qmax = float(2 ** int(bits) - 1)

    def err_of(d, z):                       # d, z [..., rows] -> weighted error [..., rows]
        q = torch.clamp(torch.round(w / d.unsqueeze(-1)) + z.unsqueeze(-1), 0, qmax)
        return (h * (d.unsqueeze(-1) * (q - z.unsqueeze(-1)) - w).pow(2)).sum(-1), q

    grid = CLIP_GRID.to(w.device)
    gam, bet = grid.repeat_interleave(grid.numel()), grid.repeat(grid.numel())
    d_c, z_c = fit_scale_zero(w.unsqueeze(0).expand(gam.numel(), *w.shape), bits,
                              gam.view(-1, 1), bet.view(-1, 1))            # [C, rows]
    d_c = torch.cat([d0.view(1, -1).float(), d_c])
    z_c = torch.cat([z0.view(1, -1).float(), z_c])
    e_c, _ = err_of(d_c, z_c)
    pick = e_c.argmin(0, keepdim=True)                                     # the start wins ties
    d, z = d_c.gather(0, pick)[0], z_c.gather(0, pick)[0]
    best, q = err_of(d, z)
    for _ in range(LS_ROUNDS):
        for dz in (0.0, -1.0, 1.0):
            zt = torch.clamp(z + dz, 0, qmax)
            c = q - zt.unsqueeze(-1)
            den = (h * c * c).sum(-1)
            dt = torch.where(den > 0, (h * w * c).sum(-1) / den.clamp(min=1e-30), d)
            dt = dt.to(torch.float16).to(torch.float32)
            dt = torch.where(torch.isfinite(dt) & (dt > 0), dt, d)
            et, qt = err_of(dt, zt)
            better = et < best
            d, z, best = torch.where(better, dt, d), torch.where(better, zt, z), torch.where(better, et, best)
            q = torch.where(better.unsqueeze(-1), qt, q)
    return d, z
