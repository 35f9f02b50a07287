"""BPLL: bit-width pre-allocation from layer loss (paper eq. 3-4).

For every linear layer of a block and every candidate width, the layer is quantized with a
cheap proxy (min/max on the layer's MQSA tiers, no compensation) and its outputs on
calibration inputs are compared with the float outputs by the channel-wise distribution loss
    Dist = mean_c(|mu_f - mu_q| + |var_f - var_q|)          (eq. 3)
(or, for the ablation, a KL divergence of the channel softmax). The widths minimising the
summed loss with sum_l(bits_l * numel_l) <= target * sum_l(numel_l) are found exactly by a
knapsack over integer costs, which gives the same optimum as the paper's enumeration.
"""

from __future__ import annotations

import math
from functools import reduce

import torch

from .errors import MLWQError


def dist_loss(y_float: torch.Tensor, y_quant: torch.Tensor) -> float:
    """Eq. 3 over outputs [tokens, channels]."""
    y_float, y_quant = y_float.float(), y_quant.float()
    mu_f, mu_q = y_float.mean(0), y_quant.mean(0)
    var_f, var_q = y_float.var(0, unbiased=False), y_quant.var(0, unbiased=False)
    return float(((mu_f - mu_q).abs() + (var_f - var_q).abs()).mean())


def relative_dist_loss(y_float: torch.Tensor, y_quant: torch.Tensor) -> float:
    """Eq. 3 divided by the same statistic of the float outputs, mean_c(|mu_f| + var_f): the
    plain loss grows with a layer's output scale, so layers with large activations would win
    every extra bit; this makes the layers of a block comparable."""
    y_float = y_float.float()
    scale = float((y_float.mean(0).abs() + y_float.var(0, unbiased=False)).mean())
    return dist_loss(y_float, y_quant) / max(scale, 1e-12)


def kl_loss(y_float: torch.Tensor, y_quant: torch.Tensor) -> float:
    """KL(softmax(y_f) || softmax(y_q)) over the channels of each token, averaged (ablation)."""
    logp_f = torch.log_softmax(y_float.float(), dim=-1)
    logp_q = torch.log_softmax(y_quant.float(), dim=-1)
    return float((logp_f.exp() * (logp_f - logp_q)).sum(-1).mean())


LOSSES = {"dist": dist_loss, "dist-rel": relative_dist_loss, "kl": kl_loss}


def allocate_widths(losses: dict[str, dict[int, float]], numels: dict[str, int],
                    target_bits: float) -> dict[str, int]:
    """Exact minimum of sum_l loss[l][b_l] subject to sum_l b_l * numel_l <= target * sum numel.

    A 0/1 knapsack with one choice per layer over integer costs b * numel / gcd(numels).
    Ties go to the lower total bits, then to the earlier choice, so the result is deterministic.
    """
    names = list(losses)
    if not names:
        return {}
    g = reduce(math.gcd, (numels[n] for n in names))
    budget = math.floor(target_bits * sum(numels[n] for n in names) / g + 1e-9)
    cheapest = sum(min(losses[n]) * numels[n] // g for n in names)
    if cheapest > budget:
        widest = max(max(losses[n]) for n in names)
        raise MLWQError(f"bit budget {target_bits} is below the narrowest candidate width "
                        f"{min(min(losses[n]) for n in names)} (candidates up to {widest})")
    # states: cost -> (loss, choices)
    states: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for n in names:
        nxt: dict[int, tuple[float, tuple[int, ...]]] = {}
        for cost, (loss, choice) in states.items():
            for b in sorted(losses[n]):
                c = cost + b * numels[n] // g
                if c > budget:
                    continue
                cand = (loss + losses[n][b], choice + (b,))
                if c not in nxt or cand[0] < nxt[c][0]:
                    nxt[c] = cand
        states = nxt
    best_cost = min(states, key=lambda c: (states[c][0], c))
    return dict(zip(names, states[best_cost][1]))
