"""MQSA: multi-level quantization by salience of input channels (paper eq. 5).

delta_k = sum_i w_ik^2 / ([H^-1]_kk)^2 ranks the input channels of a layer. The columns are
permuted by descending salience and cut into tiers of whole 64-column blocks: the top blocks
get more bits than the layer's BPLL width b, the bottom blocks fewer, the rest b. Tiers are
given as offsets from b (default -1, 0, +1, i.e. (2, 3, 4) for a 3-bit layer); the blocks with
more bits are paid for by blocks with fewer, so the layer's average stays at (or just below) b.
A layer with a higher width protects more channels (PROTECT_FRACTION).
"""

from __future__ import annotations

import math

import torch

from .errors import MLWQError
from .gptq import QuantPlan, damped_cholesky_inverse
from .grid import GROUP_SIZE, MAX_BITS

DEFAULT_TIER_OFFSETS = (-1, 0, 1)


def protect_fraction(width: int) -> float:
    """Share of a layer's blocks above its width: 1/16 at 2 bits, 1/8 at 3, 3/16 at 4."""
    return 0.0625 * max(width - 1, 1)


def salience(W: torch.Tensor, H: torch.Tensor, percdamp: float = 0.01, cache: dict | None = None) -> torch.Tensor:
    """delta_k of every input channel k (eq. 5), W [rows, cols], H [cols, cols]. cache: a dict kept
    by the caller while its Hessians live, so that layers sharing one H (q/k/v) invert it once."""
    diag = None if cache is None else cache.get(id(H))
    if diag is None:
        diag = torch.diag(damped_cholesky_inverse(H.float(), percdamp))
        if cache is not None:
            cache[id(H)] = diag
    return W.float().pow(2).sum(dim=0) / diag.pow(2)


def tier_block_counts(n_blocks: int, width: int, offsets=DEFAULT_TIER_OFFSETS,
                      fraction: float | None = None) -> list[tuple[int, int]]:
    """[(bits, blocks)] from the widest tier to the narrowest, summing to n_blocks.

    The blocks above the width are spread over the positive offsets; each is paid for by the
    mirrored negative offset (or the nearest negative one, rounding up), so the total is never
    above n_blocks * width. Without a 0 offset every block must be in an outer tier.
    """
    offsets = sorted(set(int(o) for o in offsets), reverse=True)
    if not 2 <= len(offsets) <= 5:
        raise MLWQError(f"MQSA needs 2 to 5 tiers, got {len(offsets)}")
    bits_of = {o: width + o for o in offsets}
    if min(bits_of.values()) < 1 or max(bits_of.values()) > MAX_BITS:
        raise MLWQError(f"tiers {sorted(bits_of.values())} for a {width}-bit layer leave the 1..{MAX_BITS} bit range")
    pos = sorted(o for o in offsets if o > 0)
    neg = sorted((o for o in offsets if o < 0), reverse=True)      # -1 before -2
    if pos and not neg:
        raise MLWQError("tiers above the layer width need a tier below it to pay for them")
    frac = protect_fraction(width) if fraction is None else fraction
    if not pos:
        target_hi = 0
    elif 0 not in offsets:
        target_hi = n_blocks // 2
    else:
        target_hi = round(frac * n_blocks)
    for h in range(min(target_hi, n_blocks), -1, -1):
        counts = {o: 0 for o in offsets}
        for i in range(h):
            counts[pos[i % len(pos)]] += 1
        for o in pos:                                    # pay the extra bits with fewer bits
            pay = -o if -o in counts else neg[0]
            counts[pay] += math.ceil(counts[o] * o / -pay)
        left = n_blocks - sum(counts.values())
        if left < 0:
            continue
        counts[0 if 0 in counts else neg[0]] += left
        return [(bits_of[o], counts[o]) for o in offsets]
    raise MLWQError(f"no tier split of {n_blocks} blocks fits tiers {sorted(bits_of.values())}")


def plan_tiers(delta: torch.Tensor, width: int, offsets=DEFAULT_TIER_OFFSETS,
               fraction: float | None = None, **plan_kw) -> QuantPlan:
    """Permutation (by descending salience delta) and per-block widths of one layer."""
    cols = delta.numel()
    if cols % GROUP_SIZE:
        raise MLWQError(f"MQSA needs input widths that are multiples of {GROUP_SIZE}, got {cols}")
    perm = torch.argsort(delta.cpu(), descending=True, stable=True)
    counts = tier_block_counts(cols // GROUP_SIZE, width, offsets, fraction)
    group_bits = torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in counts])
    return QuantPlan(perm=perm, group_bits=group_bits, group_size=GROUP_SIZE, **plan_kw)
