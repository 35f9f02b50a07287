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

from . import grid
from .grid import dequantize, fit_scale_zero, maxq, quantize_codes, scale_zero_of_range

TQP_STEPS = 50
TQP_LR = 0.1
TQP_INIT_LOGIT = 4.0


class _FakeQuantError(torch.autograd.Function):
    """err[..., row] = sum_k (d (q_k - z) - w_k)^2 with q = clamp(round(w / d) + z, 0, qmax), and its
    gradient with respect to d and z under the straight-through estimator for round(), written
    out: one pass over the weights each way instead of autograd's dozen temporaries.

    The clamp's gradient follows autograd's conventions (clamp at 0 passes where x >= 0; the
    upper bound, a minimum(), passes half on ties), so it is eq. 7's gradient to rounding."""

    @staticmethod
    def forward(ctx, w, d, z, qmax):
        d_, z_, qmax_ = d.unsqueeze(-1), z.unsqueeze(-1), qmax.unsqueeze(-1)
        t = w / d_
        c = torch.round(t).add_(z_)
        ge0 = c >= 0
        c.clamp_(min=0)
        pass_ = torch.where(c < qmax_, 1.0, torch.where(c == qmax_, 0.5, 0.0)).mul_(ge0)
        qz = torch.minimum(c, qmax_, out=c).sub_(z_)                # q - z
        e = torch.mul(d_, qz).sub_(w)
        ctx.save_for_backward(t, qz, e, pass_, d_)
        return e.pow(2).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        # in place on the saved tensors (no double backward): the same floats, fewer temporaries
        t, qz, e, pass_, d_ = ctx.saved_tensors
        g2e = e.mul_(2 * grad.unsqueeze(-1))
        tmp = pass_ * t
        grad_d = torch.sub(qz, tmp, out=tmp).mul_(g2e).sum(-1)      # d/dd [d (q - z)], q through w/d
        grad_z = g2e.mul_(d_).mul_(pass_.sub_(1)).sum(-1)
        return None, grad_d, grad_z, None


def _clipped_error(w, wmax, wmin, qmax, gamma, beta):
    """Eq. 7 for clipping strengths gamma, beta (no rounding of d to the grid); wmax, wmin: each row's
    range clamped to contain 0 (constant over the steps)."""
    wmax = wmax * gamma
    wmin = wmin * beta
    d = ((wmax - wmin) / qmax).clamp(min=1e-8)
    x = -wmin / d
    zero = torch.minimum((torch.round(x) - x).detach().add(x).clamp(min=0), qmax)   # round, straight through
    return _FakeQuantError.apply(w, d, zero, qmax)


CHUNK_ELEMENTS = 1 << 24    # weights optimised together: bounds the memory of a wide layer
CPU_CHUNK_ELEMENTS = 1 << 20    # on a CPU: the step's temporaries stay in cache


def learn_clipping(w: torch.Tensor, bits: torch.Tensor, steps: int = TQP_STEPS, lr: float = TQP_LR):
    """Learn (gamma, beta) for groups w [G, rows, cols] with widths bits [G] (one per group).

    Returns gamma, beta of shape [G, rows]: the learned values where they beat plain min/max,
    exactly 1.0 elsewhere. Every group's error depends on its own parameters only and Adam is
    elementwise, so the groups are optimised in chunks with the same result as all at once.
    """
    chunk = CHUNK_ELEMENTS if w.is_cuda else min(CHUNK_ELEMENTS, CPU_CHUNK_ELEMENTS)
    per_chunk = max(1, chunk // max(1, w[0].numel()))
    if w.shape[0] > per_chunk:
        parts = [_learn_clipping(w[g:g + per_chunk], bits[g:g + per_chunk], steps, lr)
                 for g in range(0, w.shape[0], per_chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _learn_clipping(w, bits, steps, lr)


def _learn_clipping(w, bits, steps, lr):
    w = w.detach().float()
    bits = bits.to(w.device).float().view(-1, 1)
    qmax = maxq(bits, w[..., 0])
    logit_g = torch.full(w.shape[:-1], TQP_INIT_LOGIT, device=w.device, requires_grad=True)
    logit_b = torch.full(w.shape[:-1], TQP_INIT_LOGIT, device=w.device, requires_grad=True)
    opt = torch.optim.Adam([logit_g, logit_b], lr=lr)
    best_err = _group_error(w, bits, None, None)          # plain min/max is the fallback
    best_g = torch.ones_like(best_err)
    best_b = torch.ones_like(best_err)
    wmax, wmin = w.amax(dim=-1).clamp(min=0), w.amin(dim=-1).clamp(max=0)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            gamma, beta = torch.sigmoid(logit_g), torch.sigmoid(logit_b)
            err = _clipped_error(w, wmax, wmin, qmax, gamma, beta)   # eq. 7
            err.sum().backward()
            opt.step()
    gamma, beta = torch.sigmoid(logit_g).detach(), torch.sigmoid(logit_b).detach()
    err = _group_error(w, bits, gamma, beta)                 # exact error, coded scale included
    better = err < best_err
    return torch.where(better, gamma, best_g), torch.where(better, beta, best_b)


def _group_error(w, bits, gamma, beta):
    d, zero = fit_scale_zero(w, bits, gamma, beta)
    return (dequantize(quantize_codes(w, d, zero, bits), d, zero) - w).pow(2).sum(dim=-1)


CLIP_GRID = torch.linspace(1.0, 0.6, 9)   # shrink factors of each end tried by the weighted search
LS_ROUNDS = 2                               # least-squares refinements of the scale after the grid
ZERO_MOVES = (0.0, -1.0, 1.0)               # zero-point moves each refinement tries


def weighted_search(w: torch.Tensor, bits, importance: torch.Tensor, d0: torch.Tensor, z0: torch.Tensor):
    """Scale and zero of each row of one group w [..., rows, n] that minimise the importance-weighted
    error sum_k h_k (w_k - w_hat_k)^2 (llama.cpp's imatrix idea, make_qkx3_quants' search).

    bits: an int, or a tensor [..., 1] of widths for the groups of several layers at once; importance
    broadcasts to w. Candidates: the start (d0, z0), every pair of clipping factors of CLIP_GRID for
    the two ends, then LS_ROUNDS weighted least-squares refits of d for the best codes with zero and
    zero +- 1. Returns (d, zero) on the format's grid (coded d, integer zero); never worse than the start.
    """
    w = w.float()
    h = importance.float().to(w.device).clamp(min=0).expand_as(w)
    if torch.is_tensor(bits) and bits.dim() > 0:      # widths of a batch of layers, on the device
        qmax = 2.0 ** bits.float() - 1                   # [..., 1]
        zmax, qmax_w = qmax.clamp(max=grid.ZERO_MAX), qmax.unsqueeze(-1)
    else:                                   # one width: numbers (no device sync in the GPTQ loop)
        qmax_w = float(2 ** int(bits) - 1)
        zmax = grid.max_zero(bits)

    def err_of(d, z):                       # d, z [..., rows] -> weighted error [..., rows]
        q = grid.clamp_codes_(torch.round(w / d.unsqueeze(-1)).add_(z.unsqueeze(-1)), qmax_w)
        return (h * (d.unsqueeze(-1) * (q - z.unsqueeze(-1)) - w).pow(2)).sum(-1), q

    clips = CLIP_GRID.to(w.device).view(-1, *([1] * (w.dim() - 1)))    # [C, 1, ...]
    gam, bet = clips.repeat_interleave(CLIP_GRID.numel(), dim=0), clips.repeat(CLIP_GRID.numel(), *([1] * (w.dim() - 1)))
    d_c, z_c = scale_zero_of_range(w.amax(dim=-1), w.amin(dim=-1), bits, gam, bet)   # [C, ..., rows]
    d_c = torch.cat([d0.unsqueeze(0).float(), d_c])
    z_c = torch.cat([z0.unsqueeze(0).float(), z_c])
    e_c = _weighted_errors(w, h, d_c, z_c, qmax_w)
    pick = e_c.argmin(0, keepdim=True)                                     # the start wins ties
    d, z = d_c.gather(0, pick)[0], z_c.gather(0, pick)[0]
    best, q = err_of(d, z)
    for _ in range(LS_ROUNDS):
        for dz in ZERO_MOVES:
            zt = grid.clamp_codes_(z + dz, zmax)
            c = q - zt.unsqueeze(-1)
            den = (h * c * c).sum(-1)
            dt = torch.where(den > 0, (h * w * c).sum(-1) / den.clamp(min=1e-30), d)
            dt = grid.round_scale(dt)
            dt = torch.where(torch.isfinite(dt) & (dt > 0), dt, d)
            et, qt = err_of(dt, zt)
            better = et < best
            d, z, best = torch.where(better, dt, d), torch.where(better, zt, z), torch.where(better, et, best)
            q = torch.where(better.unsqueeze(-1), qt, q)
    return d, z


def _weighted_errors(w, h, d, z, qmax):
    """err_of's error for many candidates d, z [C, ..., rows], in place and, on a CPU, a few candidates
    at a time so that the temporaries stay in cache (the same floats, a third of the time)."""
    out = torch.empty(d.shape, device=w.device)
    chunk = d.shape[0] if w.is_cuda else max(1, (1 << 16) // w.numel())
    for c0 in range(0, d.shape[0], chunk):
        dc, zc = d[c0:c0 + chunk].unsqueeze(-1), z[c0:c0 + chunk].unsqueeze(-1)
        t = w / dc
        grid.clamp_codes_(t.round_().add_(zc), qmax).sub_(zc).mul_(dc).sub_(w).pow_(2).mul_(h)
        out[c0:c0 + chunk] = t.sum(-1)
    return out
