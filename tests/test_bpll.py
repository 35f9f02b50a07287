import itertools
import random

import pytest
import torch

from mlwq.bpll import allocate_widths, dist_loss, kl_loss
from mlwq.errors import MLWQError


def test_dist_loss_matches_equation_3():
    torch.manual_seed(0)
    yf, yq = torch.randn(100, 7), torch.randn(100, 7) * 1.3 + 0.2
    expected = sum(abs(yf[:, c].mean() - yq[:, c].mean()) + abs(yf[:, c].var(unbiased=False) - yq[:, c].var(unbiased=False))
                   for c in range(7)) / 7
    assert dist_loss(yf, yq) == pytest.approx(float(expected), rel=1e-5)
    assert dist_loss(yf, yf) == 0.0


def test_kl_loss_is_zero_only_for_equal_outputs():
    torch.manual_seed(0)
    y = torch.randn(50, 9)
    assert kl_loss(y, y) == pytest.approx(0.0, abs=1e-6)
    assert kl_loss(y, y + 0.5 * torch.randn_like(y)) > 1e-3


def test_allocation_equals_brute_force_enumeration():
    rng = random.Random(1)
    sizes = [576 * 576, 192 * 576, 1536 * 576, 576 * 1536]
    for _ in range(300):
        n = rng.randint(1, 7)
        names = [f"layer{i}" for i in range(n)]
        numels = {k: rng.choice(sizes) for k in names}
        cands = rng.choice([(2, 3), (2, 3, 4), (1, 2, 3, 4)])
        losses = {k: {b: rng.random() * 2.0 ** (-b) for b in cands} for k in names}
        target = rng.choice([2, 2.5, 2.99, 3, 3.3, 4]) if max(cands) >= 4 else rng.choice([2, 2.5, 2.99, 3])
        got = allocate_widths(losses, numels, target)
        budget = target * sum(numels.values())
        feasible = [c for c in itertools.product(cands, repeat=n)
                    if sum(b * numels[k] for k, b in zip(names, c)) <= budget + 1e-6]
        best = min(sum(losses[k][b] for k, b in zip(names, c)) for c in feasible)
        assert sum(b * numels[k] for k, b in got.items()) <= budget + 1e-6
        assert sum(losses[k][got[k]] for k in names) == pytest.approx(best, abs=1e-12)


def test_impossible_budget_is_refused():
    with pytest.raises(MLWQError, match="budget"):
        allocate_widths({"a": {2: 1.0, 3: 0.5}}, {"a": 64}, 1.5)
