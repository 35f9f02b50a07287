"""GPTQ (Frantar et al.) with per-group bit widths and a column order: the one quantization
loop that RTN, GPTQ and MLWQ share.

Shaped like the reference gptq.py: collect statistics (`add_batch`), compute (`quantize`),
release (`free`). A QuantPlan says in which order the columns are quantized (`perm`), the width
of every group of `group_size` consecutive permuted columns (`group_bits`), how each group's
scale and zero are fitted (min/max or TQP) and whether GPTQ's error compensation runs. TQP's
clipping strengths are learned for all groups at once before the loop; each group's scale and
zero are fitted when the loop reaches the group, on the weights already updated by the
compensation of the columns before it (GPTQ's dynamic groups). quantize_layers runs the loop of
several layers of one input width at once (their rows stacked), with the results of one at a time.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from .errors import MLWQError
from .grid import GROUP_SIZE, clamp_codes_, fit_scale_zero, quantize_codes
from .tqp import learn_clipping, weighted_search

BLOCKSIZE = 128     # columns updated together (lazy batch updates, as gptq.py's default blocksize)


@dataclass
class QuantPlan:
    perm: torch.Tensor          # [cols] long: permuted position j holds original column perm[j]
    group_bits: torch.Tensor    # [ceil(cols / group_size)] long: width of each permuted group
    group_size: int = GROUP_SIZE
    tqp: bool = False           # learn clipping per group (TQP) instead of plain min/max
    tqp_steps: int = 50
    compensate: bool = True     # GPTQ error compensation; False gives RTN on the same grid
    weighted: bool = False      # refine each group's scale and zero on GPTQ's importance-weighted error


@dataclass
class QuantResult:
    weight: torch.Tensor | None # [rows, cols] float32 dequantized weight, original column order
    codes: torch.Tensor         # [rows, cols] uint8 codes, permuted column order
    scale: torch.Tensor         # [rows, n_groups] float32, values of the format's scale grid
    zero: torch.Tensor          # [rows, n_groups] uint8
    perm: torch.Tensor          # [cols] int32
    group_bits: torch.Tensor    # [n_groups] uint8
    group_size: int
    loss: float                 # GPTQ's weighted error sum (0 without compensation)
    continuous: torch.Tensor | None = None  # [rows, cols] the weights just before rounding, permuted order

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight in the original column order, from the codes (FORMAT.md formula)."""
        cols = self.codes.shape[1]
        d = self.scale.float().repeat_interleave(self.group_size, dim=1)[:, :cols]
        z = self.zero.float().repeat_interleave(self.group_size, dim=1)[:, :cols]
        weight = torch.empty(self.codes.shape, dtype=torch.float32)
        weight[:, self.perm.long()] = d * (self.codes.float() - z)
        return weight


def uniform_plan(cols: int, bits: int, group_size: int = GROUP_SIZE, perm: torch.Tensor | None = None,
                 **kw) -> QuantPlan:
    n_groups = math.ceil(cols / group_size)
    return QuantPlan(perm=torch.arange(cols) if perm is None else perm,
                     group_bits=torch.full((n_groups,), bits, dtype=torch.long), group_size=group_size, **kw)


GRAM_STRIP_ROWS = 192      # H's rows per GEMM of add_gram_ on a CPU: skips most of the lower triangle


def _strip_edges(cols: int) -> list[int]:
    k = max(1, round(cols / GRAM_STRIP_ROWS))
    return [cols * i // k for i in range(k + 1)]


def add_gram_(H: torch.Tensor, x: torch.Tensor, fused: bool) -> None:
    """H += x^T x for x [tokens, cols] (fused: one addmm_, else a product then an add). On a CPU
    only H's upper triangle, in row strips: a third fewer flops, each element the same sum as
    the whole product's (checked with this torch's CPU GEMM); mirror_upper_ completes H."""
    if H.device.type != "cpu":
        H.addmm_(x.t(), x) if fused else H.add_(x.t() @ x)
        return
    e = _strip_edges(H.shape[0])
    for a in range(len(e) - 1):
        lo, hi = e[a], e[a + 1]
        if fused:
            H[lo:hi, lo:].addmm_(x[:, lo:hi].t(), x[:, lo:])
        else:
            H[lo:hi, lo:] += x[:, lo:hi].t() @ x[:, lo:]


def mirror_upper_(H: torch.Tensor) -> None:
    """H's lower triangle from its upper one, after add_gram_ (nothing to do off a CPU)."""
    if H.device.type != "cpu":
        return
    e = _strip_edges(H.shape[0])
    for a in range(1, len(e) - 1):
        H[e[a]:e[a + 1], :e[a]] = H[:e[a], e[a]:e[a + 1]].t()


def damped_cholesky_inverse(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H^-1 of the damped Hessian through Cholesky; more damping if H is not positive definite."""
    eye = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
    damp = percdamp * torch.mean(torch.diag(H)).clamp(min=1e-8)
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(L)
        damp *= 10
    raise MLWQError("the Hessian is not positive definite even with heavy damping; "
                    "use more calibration samples")


class GPTQ:
    def __init__(self, layer: torch.nn.Linear):
        self.layer = layer
        self.rows, self.cols = layer.weight.shape
        self.H = torch.zeros((self.cols, self.cols), device=layer.weight.device, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        """H = 2/n sum x x^T over every token seen so far (running average, as in gptq.py)."""
        self.add_windows(inp.reshape(1, -1, inp.shape[-1]))

    def add_windows(self, windows: torch.Tensor) -> None:
        """add_batch of each window of [windows, tokens, cols] in turn."""
        for x in windows:
            x = x.float()
            t = x.shape[0]
            self.H *= self.nsamples / (self.nsamples + t)
            self.nsamples += t
            add_gram_(self.H, math.sqrt(2 / self.nsamples) * x, fused=False)
        mirror_upper_(self.H)

    def quantize(self, plan: QuantPlan, percdamp: float = 0.01, times=None) -> QuantResult:
        """The layer's codes and parameters on `plan`; times(stage) may time TQP apart."""
        return quantize_layers([(self, plan)], percdamp, times)[0]

    def free(self) -> None:
        self.H = None


def same_loop(a: QuantPlan, b: QuantPlan) -> bool:
    """Whether two layers' plans can share one column loop (quantize_layers)."""
    return (a.compensate and b.compensate and a.perm.numel() == b.perm.numel() and a.group_size == b.group_size
            and (a.tqp, a.tqp_steps, a.weighted) == (b.tqp, b.tqp_steps, b.weighted))


def quantize_layers(jobs: list[tuple[GPTQ, QuantPlan]], percdamp: float = 0.01, times=None) -> list[QuantResult]:
    """Quantize layers of one input width in one column loop: their rows stacked [layer, row, col],
    narrower layers padded with zero rows. Each layer keeps its own plan (column order, widths,
    Hessian); the results are those of quantizing each alone, operation for operation, for a
    fraction of the loop's kernel launches (the loop is dispatch-bound at these sizes)."""
    gptq0, plan0 = jobs[0]
    if not all(same_loop(plan0, plan) for _, plan in jobs):
        if len(jobs) == 1 and not plan0.compensate:
            return [quantize_without_compensation(gptq0.layer.weight, plan0)]
        raise MLWQError("layers quantized in one loop need compensated plans of one shape and kind")
    cols, gs = gptq0.cols, plan0.group_size
    dev = gptq0.H.device
    n_layers, rows = len(jobs), max(g.rows for g, _ in jobs)
    n_groups = math.ceil(cols / gs)
    blocksize = max(BLOCKSIZE // gs, 1) * gs       # every group lies inside one block
    W = torch.zeros((n_layers, rows, cols), device=dev)
    Hinv = torch.empty((n_layers, cols, cols), device=dev)
    for k, (g, plan) in enumerate(jobs):
        _check_plan(plan, g.cols)
        perm = plan.perm.to(dev)
        H = g.H[perm][:, perm].clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[k, :g.rows] = g.layer.weight.detach().float()[:, perm]
        W[k, :g.rows, dead] = 0
        Hinv[k] = torch.linalg.cholesky(damped_cholesky_inverse(H, percdamp), upper=True)
    gbits = torch.stack([plan.group_bits for _, plan in jobs])             # [layers, groups], host
    gbits_dev = gbits.to(dev)
    qmax_of = 2.0 ** gbits_dev.float() - 1

    # TQP's clipping for every group at once, on the weights before compensation; each
    # group's scale and zero are then fitted on its compensated weights when the loop gets there
    gamma = beta = None
    if plan0.tqp:
        with times("tqp") if times else contextlib.nullcontext():
            groups = W.view(n_layers, rows, n_groups, gs).transpose(1, 2).reshape(n_layers * n_groups, rows, gs)
            gamma, beta = (p.view(n_layers, n_groups, rows)
                           for p in learn_clipping(groups, gbits_dev.view(-1), plan0.tqp_steps))
    D = torch.zeros((n_layers, rows, n_groups), device=dev)
    Z = torch.zeros_like(D)
    loss = [torch.zeros((), device=dev, dtype=torch.float64) for _ in jobs]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, :, i1:i2].transpose(1, 2).contiguous()              # [layers, n, rows]: columns contiguous
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[:, i1:i2, i1:i2]
        hdiag = Hinv1.diagonal(dim1=1, dim2=2).unsqueeze(2)             # [layers, n, 1]
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:
                g = col // gs
                wg = W1[:, i:i + gs].transpose(1, 2).contiguous()       # [layers, rows, n]
                if bool((gbits[:, g] == gbits[0, g]).all()):      # host values: numbers, no device sync
                    bits = int(gbits[0, g])
                    qmax = float(2 ** bits - 1)
                else:
                    bits, qmax = gbits_dev[:, g:g + 1], qmax_of[:, g:g + 1]
                d, z = fit_scale_zero(wg, bits, None if gamma is None else gamma[:, g],
                                      None if beta is None else beta[:, g])
                if plan0.weighted:      # a column's error costs err^2 / Hinv_ii^2 in GPTQ's loss
                    d, z = weighted_search(wg, bits, hdiag[:, i:i + gs].pow(-2).transpose(1, 2), d, z)
                D[:, :, g], Z[:, :, g] = d, z
            w = W1[:, i]
            # err = (w - d (q - z)) / Hinv_ii, q = clamp(round(w / d) + z, 0, qmax), written in place
            e = clamp_codes_(torch.round(w / d).add_(z), qmax).sub_(z).mul_(d).neg_().add_(w)
            err = torch.div(e, hdiag[:, i], out=Err1[:, i])
            # product, then difference: a fused baddbmm_ rounds once on some CPUs (MKL, AVX-512)
            W1[:, i + 1:].sub_(Hinv1[:, i, i + 1:].unsqueeze(2) * err.unsqueeze(1))
        W[:, :, i1:i2] = W1.transpose(1, 2)     # each column as it was rounded: the continuous weights
        for k, (g, _) in enumerate(jobs):
            e = Err1[k, :, :g.rows].t().contiguous()
            loss[k] += (e.pow(2) * hdiag[k].t().pow(2)).sum(dtype=torch.float64) / 2
            W[k, :g.rows, i2:] -= e @ Hinv[k, i1:i2, i2:]

    results = []
    for k, (g, plan) in enumerate(jobs):
        C, d, z = W[k, :g.rows].clone(), D[k, :g.rows].clone(), Z[k, :g.rows].clone()
        # the codes, from each column's weights at its turn (the loop's q, recomputed at once)
        Q = torch.round(C / d.repeat_interleave(gs, dim=1)[:, :cols]).add_(z.repeat_interleave(gs, dim=1)[:, :cols])
        clamp_codes_(Q, qmax_of[k].repeat_interleave(gs)[:cols])
        results.append(_result(Q, d, z, plan, float(loss[k]), C))
    return results


def loop_batches(jobs: dict[str, tuple[GPTQ, QuantPlan]], pad_rows: bool) -> list[list[str]]:
    """Names of the layers to quantize together (quantize_layers): plans that can share a loop and,
    unless pad_rows, the same number of rows. On a GPU the loop is launch-bound and padded rows
    cost nothing; on a CPU they cost their arithmetic."""
    batches: list[list[str]] = []
    for name, (g, plan) in jobs.items():
        for batch in batches:
            g0, plan0 = jobs[batch[0]]
            if same_loop(plan0, plan) and (pad_rows or g0.rows == g.rows):
                batch.append(name)
                break
        else:
            batches.append([name])
    return batches


def _check_plan(plan: QuantPlan, cols: int) -> None:
    if plan.group_size % GROUP_SIZE:
        raise MLWQError(f"group size {plan.group_size} must be a multiple of {GROUP_SIZE} (the MLWQ block)")
    if cols % GROUP_SIZE:
        raise MLWQError(f"input width {cols} is not a multiple of {GROUP_SIZE}")
    if plan.group_bits.numel() != math.ceil(cols / plan.group_size) or plan.perm.numel() != cols:
        raise MLWQError("quantization plan does not match the layer's shape")


def quantize_without_compensation(weight: torch.Tensor, plan: QuantPlan) -> QuantResult:
    """RTN on the plan's grid (min/max or TQP clipping), vectorized over groups."""
    W = weight.detach().float()
    rows, cols = W.shape
    _check_plan(plan, cols)
    gs = plan.group_size
    gbits = plan.group_bits.to(W.device)
    Wp = W[:, plan.perm.to(W.device)]
    n_full = cols // gs
    D = torch.zeros((rows, gbits.numel()), device=W.device)
    Z = torch.zeros_like(D)
    Q = torch.zeros_like(Wp)
    spans = [(0, n_full, gs)] + ([(n_full, n_full + 1, cols - n_full * gs)] if cols % gs else [])
    for g0, g1, width in spans:
        groups = Wp[:, g0 * gs: g0 * gs + (g1 - g0) * width].reshape(rows, g1 - g0, width).transpose(0, 1)
        bits = gbits[g0:g1].view(-1, 1)
        gamma = beta = None
        if plan.tqp:
            gamma, beta = learn_clipping(groups, gbits[g0:g1], plan.tqp_steps)
        d, z = fit_scale_zero(groups, bits, gamma, beta)          # [G, rows]
        q = quantize_codes(groups, d, z, bits)                    # [G, rows, width]
        D[:, g0:g1], Z[:, g0:g1] = d.t(), z.t()
        Q[:, g0 * gs: g0 * gs + (g1 - g0) * width] = q.transpose(0, 1).reshape(rows, -1)
    return _result(Q, D, Z, plan, 0.0, Wp)


def _result(Q, D, Z, plan: QuantPlan, loss: float, continuous: torch.Tensor) -> QuantResult:
    gs, cols = plan.group_size, Q.shape[1]
    Dc = D.repeat_interleave(gs, dim=1)[:, :cols]
    Zc = Z.repeat_interleave(gs, dim=1)[:, :cols]
    weight = torch.empty_like(Q)
    weight[:, plan.perm.to(Q.device)] = Dc * (Q - Zc)
    return QuantResult(weight=weight, codes=Q.to(torch.uint8), scale=D.float(),
                       zero=Z.to(torch.uint8), perm=plan.perm.to(torch.int32).cpu(),
                       group_bits=plan.group_bits.to(torch.uint8).cpu(), group_size=gs, loss=loss,
                       continuous=continuous)
