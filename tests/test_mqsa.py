import numpy as np
import pytest
import torch

from mlwq.errors import MLWQError
from mlwq.grid import GROUP_SIZE
from mlwq.mqsa import plan_tiers, salience, tier_block_counts


def _hessian(cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * cols, cols, generator=g) @ torch.randn(cols, cols, generator=g)
    return 2 * X.t() @ X / X.shape[0]


def test_salience_equals_brute_force_formula():
    torch.manual_seed(0)
    W, H = torch.randn(24, 16), _hessian(16)
    Hd = H.double().numpy()
    Hd = Hd + 0.01 * np.mean(np.diag(Hd)) * np.eye(16)
    Hinv = np.linalg.inv(Hd)
    Wn = W.double().numpy()
    expected = [sum(Wn[i, k] ** 2 for i in range(24)) / Hinv[k, k] ** 2 for k in range(16)]
    assert np.allclose(salience(W, H).numpy(), expected, rtol=1e-3)


@pytest.mark.parametrize("offsets", [(-1, 1), (-1, 0, 1), (-2, -1, 1, 2), (-2, -1, 0, 1, 2), (-1, 0), (-2, 0, 1)])
@pytest.mark.parametrize("blocks", [1, 2, 9, 24])
@pytest.mark.parametrize("width", [2, 3, 4])
def test_tier_counts_fill_the_layer_within_its_width(offsets, blocks, width):
    if width + min(offsets) < 1:
        with pytest.raises(MLWQError):
            tier_block_counts(blocks, width, offsets)
        return
    counts = tier_block_counts(blocks, width, offsets)
    assert sum(n for _, n in counts) == blocks
    assert sum(b * n for b, n in counts) <= blocks * width          # the row fits type MLWQ<width>
    assert [b for b, _ in counts] == sorted((b for b, _ in counts), reverse=True)
    assert {b for b, _ in counts} == {width + o for o in offsets}


def test_higher_width_protects_more_channels():
    hi = {w: dict(tier_block_counts(24, w))[w + 1] for w in (2, 3, 4)}
    assert hi[2] < hi[3] < hi[4]


def test_tiers_above_need_a_tier_below():
    with pytest.raises(MLWQError, match="below"):
        tier_block_counts(9, 3, (0, 1))


def test_plan_puts_most_salient_channels_in_the_top_tier():
    torch.manual_seed(0)
    cols = 4 * GROUP_SIZE
    W, H = torch.randn(32, cols), _hessian(cols)
    plan = plan_tiers(salience(W, H), width=3, fraction=0.25)
    assert sorted(plan.perm.tolist()) == list(range(cols))
    delta = salience(W, H)
    top = set(plan.perm[:GROUP_SIZE].tolist())
    assert top == set(torch.topk(delta, GROUP_SIZE).indices.tolist())
    assert plan.group_bits.tolist() == [4, 3, 3, 2]
