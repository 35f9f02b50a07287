import torch

from mlwq.gptq import GPTQ, quantize_without_compensation, uniform_plan
from mlwq import grid
from mlwq.grid import fit_scale_zero, quantize_codes, dequantize
from mlwq.tqp import learn_clipping


def _l2(w, bits, gamma=None, beta=None):
    d, z = fit_scale_zero(w, bits, gamma, beta)
    return (dequantize(quantize_codes(w, d, z, bits), d, z) - w).pow(2).sum(-1)


def _correlated(cols: int, rows: int, n: int, seed: int):
    """A layer and n correlated inputs (as a real layer's are), seeded."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.1
    return torch.nn.Linear(cols, rows, bias=False), X


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
    layer, X = _correlated(256, 64, 2048, seed=0)
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
        assert res.codes.dtype == torch.uint8 and res.scale.dtype == torch.float32
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
            assert torch.equal(d, grid.round_scale(d)) and torch.all(d > 0)
            assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 2 ** bits - 1


def test_weighted_gptq_lowers_its_own_loss():
    layer, X = _correlated(256, 64, 2048, seed=2)
    X[:, :8] *= 20                                         # a few strong input channels
    gptq = GPTQ(layer)
    gptq.add_batch(X)
    plain = gptq.quantize(uniform_plan(256, 3))
    weighted = gptq.quantize(uniform_plan(256, 3, weighted=True))
    err = lambda r: float((X @ (r.weight - layer.weight.detach()).t()).pow(2).mean())
    assert err(weighted) < err(plain)


def _reference_gptq(gptq, plan, percdamp=0.01):
    """The column loop as first written (one host sync per column, TQP per group on the
    compensated weights): the rewrite must give the same bytes wherever TQP is off."""
    import math
    from mlwq.gptq import _result, damped_cholesky_inverse
    from mlwq.tqp import weighted_search
    gs = plan.group_size
    blocksize = max(128 // gs, 1) * gs
    W = gptq.layer.weight.detach().float().clone()[:, plan.perm]
    gbits = plan.group_bits
    col_bits = gbits.repeat_interleave(gs)[: gptq.cols].float()
    H = gptq.H[plan.perm][:, plan.perm].clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = torch.linalg.cholesky(damped_cholesky_inverse(H, percdamp), upper=True)
    Q, C = torch.zeros_like(W), torch.zeros_like(W)
    D = torch.zeros((gptq.rows, math.ceil(gptq.cols / gs)))
    Z = torch.zeros_like(D)
    for i1 in range(0, gptq.cols, blocksize):
        i2 = min(i1 + blocksize, gptq.cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:
                g = col // gs
                wg = W1[:, i:i + gs]
                D[:, g], Z[:, g] = fit_scale_zero(wg, gbits[g])
                if plan.weighted:
                    imp = Hinv1[i:i + gs, i:i + gs].diagonal().pow(-2)
                    D[:, g], Z[:, g] = weighted_search(wg, gbits[g], imp, D[:, g], Z[:, g])
                d, z = D[:, g:g + 1], Z[:, g:g + 1]
            w = W1[:, i:i + 1]
            q = quantize_codes(w, d.squeeze(1), z.squeeze(1), col_bits[col])
            Q[:, col:col + 1], C[:, col:col + 1] = q, w
            err = (w - dequantize(q, d.squeeze(1), z.squeeze(1))) / Hinv1[i, i]
            W1[:, i:] -= err @ Hinv1[i:i + 1, i:]
            Err1[:, i:i + 1] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return _result(Q, D, Z, plan, 0.0, C)


def test_column_loop_gives_the_bytes_of_the_reference_loop():
    from mlwq.mqsa import plan_tiers, salience
    layer, X = _correlated(320, 48, 1024, seed=3)
    gptq = GPTQ(layer)
    gptq.add_batch(X)
    delta = salience(layer.weight, gptq.H)
    for weighted in (False, True):
        for plan in (uniform_plan(320, 3, 128, weighted=weighted),        # GPTQ g128, partial last group
                     plan_tiers(delta, 3, weighted=weighted)):             # MQSA tiers 4/3/2
            new, ref = gptq.quantize(plan), _reference_gptq(gptq, plan)
            for field in ("codes", "scale", "zero", "weight", "continuous"):
                assert torch.equal(getattr(new, field), getattr(ref, field)), (weighted, field)
            assert new.loss > 0


def test_tqp_in_chunks_equals_all_groups_at_once(monkeypatch):
    import mlwq.tqp as tqp
    g = torch.Generator().manual_seed(4)
    w = torch.randn(7, 40, 64, generator=g) * 0.02
    w[:, :, 3] *= 6
    bits = torch.tensor([2, 3, 4, 3, 2, 4, 3])
    whole = learn_clipping(w, bits, steps=10)
    monkeypatch.setattr(tqp, "CHUNK_ELEMENTS", 2 * 40 * 64)             # 2 groups per chunk
    parts = learn_clipping(w, bits, steps=10)
    assert torch.equal(whole[0], parts[0]) and torch.equal(whole[1], parts[1])


def test_tqp_error_and_gradient_match_autograd_of_eq7():
    """The hand-written backward of TQP's error equals autograd's through the plain formula."""
    from mlwq.tqp import _clipped_error

    def ste(x):
        return (torch.round(x) - x).detach() + x

    def eq7_autograd(w, qmax, gamma, beta):
        wmax = w.amax(dim=-1).clamp(min=0) * gamma
        wmin = w.amin(dim=-1).clamp(max=0) * beta
        d = ((wmax - wmin) / qmax).clamp(min=1e-8)
        zero = torch.minimum(torch.clamp(ste(-wmin / d), min=0), qmax)
        q = torch.minimum(torch.clamp(ste(w / d.unsqueeze(-1)) + zero.unsqueeze(-1), min=0), qmax.unsqueeze(-1))
        return (d.unsqueeze(-1) * (q - zero.unsqueeze(-1)) - w).pow(2).sum(-1)

    g = torch.Generator().manual_seed(5)
    w = torch.randn(5, 96, 64, generator=g) * 0.02
    w[:, :, 3] *= 8
    w[1] = w[1].abs()
    w[2, 3] = 0
    qmax = (2.0 ** torch.tensor([1, 2, 3, 4, 8]).view(-1, 1) - 1).expand(5, 96)
    logits = torch.randn(2, 5, 96, generator=g) + 2
    lg, lb = logits[0].clone().requires_grad_(), logits[1].clone().requires_grad_()
    ref = eq7_autograd(w, qmax, torch.sigmoid(lg), torch.sigmoid(lb))
    ref_grads = torch.autograd.grad(ref.sum(), [lg, lb])
    got = _clipped_error(w, w.amax(-1).clamp(min=0), w.amin(-1).clamp(max=0), qmax, torch.sigmoid(lg), torch.sigmoid(lb))
    got_grads = torch.autograd.grad(got.sum(), [lg, lb])
    assert torch.equal(ref, got)
    for a, b in zip(ref_grads, got_grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_every_scale_is_on_the_format_grid():
    """grid.round_scale is the one place a scale is rounded to what the file stores: min/max, TQP
    and the weighted search all give scales that the GGUF header codes exactly."""
    from exporters import mlwq_format as F

    layer, X = _correlated(192, 48, 1024, seed=3)
    gptq = GPTQ(layer)
    gptq.add_batch(X)
    plan = uniform_plan(192, 3)
    plan.tqp, plan.tqp_steps, plan.weighted = True, 10, True
    res = gptq.quantize(plan)
    assert res.scale.dtype == torch.float32
    F.scale_codes(res.scale.numpy())           # raises on any scale off the grid


def test_layers_in_one_loop_give_the_bytes_of_one_at_a_time():
    """quantize_layers stacks layers of one input width (rows padded) in one column loop; each
    keeps its plan, and the results are those of quantizing it alone: widths equal across the
    layers in some groups and not in others, TQP and the weighted search on, a dead input column."""
    from mlwq.gptq import quantize_layers
    from mlwq.mqsa import plan_tiers, salience
    jobs = []
    for k, (rows, width) in enumerate([(48, 3), (80, 2), (16, 4), (48, 3)]):
        layer, X = _correlated(320, rows, 1024, seed=10 + k)
        if k == 1:
            X[:, 7] = 0
        gptq = GPTQ(layer)
        gptq.add_batch(X)
        plan = plan_tiers(salience(layer.weight, gptq.H), width, tqp=True, tqp_steps=5, weighted=True)
        jobs.append((gptq, plan))
    for batch in (jobs, [jobs[0], jobs[3]]):            # widths differ per group; equal in every group
        together = quantize_layers(batch)
        for (gptq, plan), res in zip(batch, together):
            alone = gptq.quantize(plan)
            for field in ("codes", "scale", "zero", "weight", "continuous"):
                assert torch.equal(getattr(res, field), getattr(alone, field)), field
            assert res.loss == alone.loss > 0
        assert not torch.equal(together[0].codes, together[-1].codes)     # the layers stayed apart


def test_hessian_from_window_batches_is_the_running_average_and_symmetric():
    # 1536 columns: add_gram_ computes H's upper triangle in strips on a CPU and mirrors it
    layer, X = _correlated(1536, 8, 4 * 96, seed=3)
    windows = X.view(4, 96, 1536)
    one_call, per_window = GPTQ(layer), GPTQ(layer)
    one_call.add_windows(windows)
    for w in windows:
        per_window.add_batch(w)
    assert torch.equal(one_call.H, per_window.H)
    assert torch.equal(one_call.H, one_call.H.t())
    expected = 2 / X.shape[0] * X.t() @ X
    assert (one_call.H - expected).abs().max() <= 1e-5 * expected.abs().max()
