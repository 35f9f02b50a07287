import torch

from mlwq.gptq import GPTQ, quantize_without_compensation, uniform_plan
from mlwq.grid import fit_scale_zero, quantize_codes, dequantize
from mlwq.tqp import learn_clipping


def _l2(w, bits, gamma=None, beta=None):
    d, z = fit_scale_zero(w, bits, gamma, beta)
    return (dequantize(quantize_codes(w, d, z, bits), d, z) - w).pow(2).sum(-1)


def test_tqp_never_increases_l2_error_over_min_max():
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(6, 48, 64, generator=g) * 0.02
        w[:, :, 5] *= 8                      # outliers: where clipping helps
        w[1] = w[1].abs()                    # one-sided groups
        w[2, 3] = 0                          # an all-zero row
        bits = torch.tensor([1, 2, 3, 4, 5, 8])
        gamma, beta = learn_clipping(w, bits, steps=20)
        before = _l2(w, bits.view(-1, 1).float())
        after = _l2(w, bits.view(-1, 1).float(), gamma, beta)
        assert torch.all(after <= before)
        assert after.sum() < 0.97 * before.sum()   # and it does learn something


def test_gptq_compensation_beats_rtn_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(256, 64, bias=False)
    X = torch.randn(2048, 256, generator=g) @ torch.randn(256, 256, generator=g) * 0.1
    gptq = GPTQ(layer)
    gptq.add_batch(X)
    rtn = gptq.quantize(uniform_plan(256, 3, compensate=False))
    comp = gptq.quantize(uniform_plan(256, 3, compensate=True))
    err = lambda r: float((X @ (r.weight - layer.weight.detach()).t()).pow(2).mean())
    assert err(comp) < 0.8 * err(rtn)


def test_codes_and_weights_agree_with_the_format_formula():
    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(192, 40, bias=False)
    perm = torch.randperm(192, generator=g)
    plan = uniform_plan(192, 3, perm=perm)
    plan.group_bits = torch.tensor([4, 3, 2])
    for res in (quantize_without_compensation(layer.weight, plan), ):
        assert res.codes.dtype == torch.uint8 and res.scale.dtype == torch.float16
        maxq = (2 ** plan.group_bits.repeat_interleave(64)) - 1
        assert torch.all(res.codes.long() <= maxq)
        W = torch.empty(40, 192)
        W[:, perm] = res.scale.float().repeat_interleave(64, 1) * (res.codes.float() - res.zero.float().repeat_interleave(64, 1))
        assert torch.equal(W, res.weight)


def test_weighted_search_never_worse_than_its_start_and_stays_on_the_grid():
    from mlwq.tqp import weighted_search
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(96, 64, generator=g) * 0.02
        w[:, 7] *= 6
        w[3] = 0                                           # an all-zero row
        h = torch.rand(64, generator=g) ** 4 * 10 + 1e-3   # skewed importance, as H's diagonal is
        for bits in (2, 3, 4):
            d0, z0 = fit_scale_zero(w, bits)
            d, z = weighted_search(w, bits, h, d0, z0)
            werr = lambda d, z: (h * (dequantize(quantize_codes(w, d, z, bits), d, z) - w).pow(2)).sum(-1)
            assert torch.all(werr(d, z) <= werr(d0, z0))
            assert werr(d, z).sum() < 0.9 * werr(d0, z0).sum()
            assert torch.equal(d, d.half().float()) and torch.all(d > 0)
            assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 2 ** bits - 1


def test_weighted_gptq_lowers_its_own_loss():
    g = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(256, 64, bias=False)
    X = torch.randn(2048, 256, generator=g) @ torch.randn(256, 256, generator=g) * 0.1
    X[:, :8] *= 20                                         # a few strong input channels
    gptq = GPTQ(layer)
    gptq.add_batch(X)
    plain = gptq.quantize(uniform_plan(256, 3))
    weighted = gptq.quantize(uniform_plan(256, 3, weighted=True))
    err = lambda r: float((X @ (r.weight - layer.weight.detach()).t()).pow(2).mean())
    assert err(weighted) < err(plain)
