"""Block-by-block sequential quantization (GPTQ's driver, with the MLWQ stages inside).

Block i sees the outputs of blocks 0..i-1 *after* they were quantized. Only the block being
quantized and the calibration activations live on the device. Per block:
  1. one pass of the calibration windows with hooks on its linear layers accumulates each
     layer's Hessian H = 2 X X^T (GPTQ.add_batch) and keeps a seeded sample of input rows;
  2. each layer's width: from the model-wide allocation made before the loop
     (mlwq/sensitivity.py, the default) or by BPLL under the block's own budget;
  3. MQSA orders the input channels by salience and cuts them into tiers;
  4. GPTQ quantizes each layer on that plan, fitting every group's scale and zero with TQP
     (and the importance-weighted search), and the fake-quantized weights replace the float ones;
     layers of one input width share one column loop (gptq.quantize_layers);
  5. optionally, block-output reconstruction tunes the block's rounding and scales
     (mlwq/blockrec.py) against the float block's outputs on the float model's stream;
  6. a second pass computes the block's outputs, the next block's inputs.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from . import blockrec, bpll, grid, mqsa
from .errors import MLWQError
from .gptq import (GPTQ, QuantPlan, QuantResult, loop_batches, quantize_layers, quantize_without_compensation,
                   uniform_plan)
from .grid import GROUP_SIZE
from .model_io import arch_of, blocks_of, get_module

METHODS = ("rtn", "gptq", "mlwq")
SENSITIVITY_LABELS = ("text", "sampled")


@dataclass
class QuantConfig:
    method: str = "mlwq"
    bits: float = 3.0                       # target average code width of the linear layers
    group_size: int | None = None           # rtn/gptq only (mlwq uses 64-column tier blocks)
    act_order: bool = False                 # gptq only
    candidates: tuple[int, ...] = (2, 3, 4)  # BPLL's widths
    tiers: tuple[int, ...] = mqsa.DEFAULT_TIER_OFFSETS  # MQSA tier offsets from the layer width
    protect_fraction: float | None = None   # None: mqsa.protect_fraction(width)
    bpll: bool = True
    mqsa: bool = True
    tqp: bool = True
    tqp_steps: int = 50                     # Adam steps of TQP per group
    weighted: bool = True                   # importance-weighted search of each group's scale/zero
    block_tune_steps: int = 0               # block-output reconstruction (mlwq/blockrec.py); 0 = off
    block_tune_lr: float = 0.005            # signed-gradient step, decayed linearly to 0
    block_tune_batch: int = 4               # calibration windows per step
    bpll_loss: str = "dist-rel"             # see docs/DESIGN.md: eq. 3 relative to the output scale
    bpll_scope: str = "model"               # block: a budget per block (eq. 3-4); model: one budget,
                                            # Fisher-weighted output error (mlwq/sensitivity.py)
    sensitivity_windows: int = 16           # calibration windows of the model-scope float pass
    sensitivity_labels: str = "sampled"     # the pass's next tokens: drawn from the float model (the
                                            # Fisher of the KLD to it) or the text's (empirical Fisher)
    compensate: bool = True                 # GPTQ error compensation inside the tiers (mlwq)
    percdamp: float = 0.01
    bpll_tokens: int = 4096                 # input rows per layer kept for BPLL's losses
    rotation: str | None = None             # residual-stream rotation folded into the weights (rotation.py)
    seed: int = 0
    file_format: int = grid.DEFAULT_FORMAT  # the MLWQ file format whose block header the grid fits (grid.py)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise MLWQError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.bpll_scope not in ("block", "model"):
            raise MLWQError(f"unknown BPLL scope {self.bpll_scope!r}; choose block or model")
        if self.sensitivity_windows < 1:
            raise MLWQError(f"--sensitivity-windows {self.sensitivity_windows}: the sensitivity pass needs "
                            "at least one window")
        if self.sensitivity_labels not in SENSITIVITY_LABELS:
            raise MLWQError(f"unknown sensitivity labels {self.sensitivity_labels!r}; "
                            f"choose one of {', '.join(SENSITIVITY_LABELS)}")
        if self.bpll_loss not in bpll.LOSSES:
            raise MLWQError(f"unknown BPLL loss {self.bpll_loss!r}; choose one of {', '.join(bpll.LOSSES)}")
        uses_bpll = self.method == "mlwq" and self.bpll
        if not uses_bpll and float(self.bits) != int(self.bits):
            raise MLWQError(f"{self.bits} bits needs BPLL to mix layer widths; "
                            "give a whole number of bits for rtn, gptq or MLWQ without BPLL")
        lo, hi = (min(self.candidates), max(self.candidates)) if uses_bpll else (1, 8)
        if not lo <= self.bits <= hi:
            raise MLWQError(f"bit budget {self.bits} is impossible: it must lie in [{lo}, {hi}]"
                            + (f" (BPLL candidates {list(self.candidates)})" if uses_bpll else ""))
        if self.method == "mlwq" and self.mqsa:
            for b in (self.candidates if uses_bpll else (int(self.bits),)):
                mqsa.tier_block_counts(1, b, self.tiers, 0.0)    # widths stay in 1..8
        if self.rotation not in (None, "hadamard", "orthogonal"):
            raise MLWQError(f"unknown rotation {self.rotation!r}; choose hadamard or orthogonal")
        if self.file_format not in grid.FORMAT_GRID:
            raise MLWQError(f"unknown MLWQ file format {self.file_format}; choose one of {sorted(grid.FORMAT_GRID)}")
        gs = self.effective_group_size()
        if gs % GROUP_SIZE:
            raise MLWQError(f"group size {gs} must be a multiple of {GROUP_SIZE}")

    def identity(self) -> dict:
        """The fields that name this configuration in stored results: asdict without the optional
        switches that are off, so results stored before a switch existed keep their names (those
        made before sampled sensitivity labels used the text's)."""
        d = dataclasses.asdict(self)
        if d["rotation"] is None:
            del d["rotation"]
        if d["sensitivity_labels"] == "text":
            del d["sensitivity_labels"]
        if d["file_format"] == 2:
            del d["file_format"]
        return d

    def effective_group_size(self) -> int:
        if self.method == "mlwq":
            return GROUP_SIZE
        return self.group_size or (128 if self.method == "gptq" else GROUP_SIZE)


@dataclass
class LayerReport:
    name: str
    width: int                               # BPLL width (layer average code bits, integer)
    tiers: list[tuple[int, int]]             # [(bits, columns)]
    bpll_losses: dict[int, float] = field(default_factory=dict)
    gptq_loss: float = 0.0


class StageTimes:
    """Seconds spent per stage, for the progress line and the summary (never in the checkpoint).
    A stage timed inside another one is not counted in the outer one."""

    def __init__(self, device: torch.device):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = device.type == "cuda"
        self._inner = [0.0]                  # per open stage: seconds of the stages inside it

    @contextmanager
    def __call__(self, stage: str):
        if self.cuda:                        # GPU work is asynchronous: time it when it is done
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            spent = time.perf_counter() - t0
            self.seconds[stage] += spent - self._inner.pop()
            self._inner[-1] += spent


class SharedInputs:
    """Layers run one after another on the same tensor (q/k/v, gate/up) share one Hessian."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.last = (None, None)             # (input tensor, first layer that read it)

    def first_reader(self, x: torch.Tensor, name: str) -> str:
        first = self.last[1] if x is self.last[0] else name
        self.last = (x, first)
        return first


def _capture_block_inputs(model, calib: torch.Tensor, device):
    """Run the model up to block 0; (block 0's inputs, each block's keyword arguments).

    Blocks may get different arguments (Gemma-3 and Qwen2 alternate sliding-window and full
    attention masks and rope tables): the first window runs through stand-ins for every block
    that note their arguments and pass the hidden states on; the masks and rope tables do not
    depend on the hidden states."""
    spec = arch_of(model)
    blocks = blocks_of(model)
    n = len(blocks)
    inps: list[torch.Tensor] = []
    kwargs_of: list[dict | None] = [None] * n

    class Stop(Exception):
        pass

    class Recorder(torch.nn.Module):
        def __init__(self, block, i):
            super().__init__()
            self.block, self.i = block, i

        def forward(self, hidden, *args, **kwargs):
            if self.i == 0:
                inps.append(hidden)
            if kwargs_of[self.i] is None:
                kwargs_of[self.i] = kwargs
            if kwargs_of[-1] is not None:      # every block's arguments seen
                raise Stop
            return hidden                   # decoder blocks return their hidden states

    moved = [m for m in (get_module(model, p) for p in spec.pre_blocks) if m is not None]
    for m in moved:
        m.to(device)
    for i in range(n):
        blocks[i] = Recorder(blocks[i], i)
    try:
        for i in range(calib.shape[0]):
            try:
                model(calib[i:i + 1].to(device))
            except Stop:
                pass
    finally:
        for i in range(n):
            blocks[i] = blocks[i].block
        for m in moved:
            m.cpu()
    return torch.cat(inps), [kw or {} for kw in kwargs_of]


def _block_forward(block, inps, kwargs, weights: dict[str, torch.Tensor] | None = None, windows: int = 1):
    """The block's outputs, `windows` calibration windows per call; weights (parameter name ->
    tensor) replace its own."""
    outs = torch.empty_like(inps)
    for j in range(0, inps.shape[0], windows):
        x = inps[j:j + windows]
        out = block(x, **kwargs) if weights is None else functional_call(block, weights, (x,), kwargs)
        outs[j:j + windows] = out[0] if isinstance(out, (tuple, list)) else out
    return outs


def forward_windows(device: torch.device) -> int:
    """Calibration windows per block call: on a CPU 4 (bigger GEMMs; the same floats as one at a
    time, checked on SmolLM2), on a GPU 1."""
    return 4 if device.type == "cpu" else 1


def layer_plan(cfg: QuantConfig, H: torch.Tensor, delta: torch.Tensor | None, width: int, *,
               proxy: bool = False) -> QuantPlan:
    """The quantization plan of one layer at one width (proxy: BPLL's cheap RTN version).

    H is the layer's Hessian [cols, cols]; delta its MQSA salience (None when MQSA is off)."""
    cols = H.shape[0]
    tqp = cfg.tqp and cfg.method == "mlwq" and not proxy
    compensate = (cfg.method == "gptq" or (cfg.method == "mlwq" and cfg.compensate)) and not proxy
    weighted = cfg.weighted and cfg.method == "mlwq" and not proxy
    if delta is not None:
        return mqsa.plan_tiers(delta, width, cfg.tiers, cfg.protect_fraction,
                               tqp=tqp, tqp_steps=cfg.tqp_steps, compensate=compensate, weighted=weighted)
    perm = None
    if cfg.act_order and cfg.method == "gptq":
        perm = torch.argsort(torch.diag(H).cpu(), descending=True, stable=True)
    return uniform_plan(cols, width, cfg.effective_group_size(), perm, tqp=tqp, tqp_steps=cfg.tqp_steps,
                        compensate=compensate, weighted=weighted)


@torch.no_grad()
def quantize_model(model, calib: torch.Tensor, cfg: QuantConfig, device: str | torch.device = "cpu",
                   progress: bool = True, done_blocks: int = 0, rng_state: torch.Tensor | None = None,
                   on_block_done=None, float_weights: dict[str, torch.Tensor] | None = None,
                   model_widths: tuple[dict[str, int], dict[str, dict[int, float]]] | None = None,
                   times: StageTimes | None = None) -> tuple[dict[str, QuantResult], list[LayerReport]]:
    """Quantize every block's linear layers in place (fake-quant) and return the packed results.

    Resuming: the first `done_blocks` blocks already hold their quantized weights (the caller
    restored them); they are only run forward to rebuild the next block's inputs, and the
    sampling generator restarts from `rng_state`, so the result is the uninterrupted run's.
    on_block_done(i, results_of_block, reports_of_block, rng_state) is called after each block.
    float_weights (name -> float weight) of the resumed blocks' layers rebuild the float stream
    that block tuning needs. model_widths: (widths, losses) of the model-scope BPLL, by full name.
    times collects the seconds per stage (block inputs, hessians, salience, bpll, tqp, gptq,
    block tuning, block outputs).
    """
    cfg.validate()
    grid.use_format(cfg.file_format)
    device = torch.device(device)
    times = times or StageTimes(device)
    spec = arch_of(model)
    blocks = blocks_of(model)
    for b in blocks:
        for name in spec.linears:
            if get_module(b, name) is None:
                raise MLWQError(f"block has no layer {name!r}: the architecture table does not match the model")
    gen = torch.Generator().manual_seed(cfg.seed)
    if rng_state is not None:
        gen.set_state(rng_state)
    with times("block inputs"):
        inps, kwargs_of = _capture_block_inputs(model, calib, device)
    tune = cfg.block_tune_steps > 0 and cfg.method != "rtn"
    fp_inps = inps.clone() if tune else None      # the float model's stream: the tuning's targets
    results: dict[str, QuantResult] = {}
    reports: list[LayerReport] = []
    win = forward_windows(device)
    bar = tqdm(range(len(blocks)), desc=f"{cfg.method} {cfg.bits:g}-bit", unit="block", disable=not progress)
    for i in bar:
        block = blocks[i].to(device)
        kwargs = kwargs_of[i]
        if i < done_blocks:                      # resumed: already quantized, only its outputs
            with times("block outputs"):
                if tune:
                    fp_inps = _block_forward(block, fp_inps, kwargs,
                                             _float_weights_of(block, float_weights, spec, i), windows=win)
                inps = _block_forward(block, inps, kwargs, windows=win)
            blocks[i] = block.cpu()
            continue
        with times("block outputs"):
            targets = _block_forward(block, fp_inps, kwargs, windows=win) if tune else None
        layers = {name: get_module(block, name) for name in spec.linears}
        gptq = {name: GPTQ(layer) for name, layer in layers.items()}
        samples: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        per_window = max(1, cfg.bpll_tokens // inps.shape[0])
        block_bpll = model_widths is None and cfg.method == "mlwq" and cfg.bpll   # needs input samples
        fed_by: dict[str, str] = {}          # layer -> the first layer that read the same tensor
        shared = SharedInputs()

        def hook(name):
            def fn(_, inp, __):
                first = shared.first_reader(inp[0], name)
                if first != name:
                    fed_by[name] = first
                x = inp[0].detach().reshape(-1, inps.shape[1], inp[0].shape[-1])   # OPT's come flattened
                if first == name:
                    gptq[name].add_windows(x)            # window by window: the same sums as one per call
                for rows in x.unbind(0) if block_bpll else ():
                    pick = torch.randperm(rows.shape[0], generator=gen)[:per_window].to(rows.device)
                    samples[name].append(rows[pick].float())
            return fn

        handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
        with times("hessians"):      # block BPLL's samples are drawn window by window, layer by layer
            _block_forward(block, inps, kwargs, windows=1 if block_bpll else win)
        for h in handles:
            h.remove()
        shared.reset()
        for name, first in fed_by.items():
            gptq[name].H = gptq[first].H

        use_mqsa = cfg.method == "mlwq" and cfg.mqsa
        with times("salience"):
            inverted: dict = {}
            delta = {name: mqsa.salience(layer.weight, gptq[name].H, cfg.percdamp, inverted) if use_mqsa else None
                     for name, layer in layers.items()}
        if model_widths is not None:
            widths = {name: LayerReport(name, model_widths[0][f"{spec.blocks}.{i}.{name}"], [],
                                        model_widths[1][f"{spec.blocks}.{i}.{name}"]) for name in layers}
        else:
            with times("bpll"):
                widths = _choose_widths(cfg, layers, gptq, delta, samples)
        block_results: dict[str, QuantResult] = {}
        jobs = {name: (gptq[name], layer_plan(cfg, gptq[name].H, delta[name], widths[name].width)) for name in layers}
        for names in loop_batches(jobs, pad_rows=device.type == "cuda"):
            with times("gptq"):
                batch = quantize_layers([jobs[name] for name in names], percdamp=cfg.percdamp, times=times)
            for name, res in zip(names, batch):
                block_results[name] = res
                layers[name].weight.data = res.weight.to(layers[name].weight.dtype)
                gptq[name].free()
        del jobs, gptq, samples
        if tune:
            with times("block tuning"):
                block_results, loss_before, loss_after = blockrec.tune_block(
                    block, block_results, inps, targets, kwargs, cfg.block_tune_steps, cfg.block_tune_lr,
                    cfg.block_tune_batch, gen)
            for name, layer in layers.items():
                layer.weight.data = block_results[name].weight.to(layer.weight.dtype)
            bar.set_description(f"{cfg.method} {cfg.bits:g}-bit (block loss {loss_before:.3g} -> {loss_after:.3g})")
        for name in layers:
            full = f"{spec.blocks}.{i}.{name}"
            res = block_results[name]
            results[full] = _to_cpu(res)
            rep = widths[name]
            rep.name, rep.gptq_loss = full, res.loss
            rep.tiers = _tier_columns(res)
            reports.append(rep)
        del block_results
        with times("block outputs"):
            inps = _block_forward(block, inps, kwargs, windows=win)
        fp_inps = targets
        blocks[i] = block.cpu()
        if on_block_done is not None:
            prefix = f"{spec.blocks}.{i}."
            on_block_done(i, {k: v for k, v in results.items() if k.startswith(prefix)},
                          [r for r in reports if r.name.startswith(prefix)], gen.get_state())
        bar.set_postfix(widths="/".join(str(widths[n].width) for n in spec.linears),
                        seconds=" ".join(f"{k} {v:.0f}" for k, v in times.seconds.items() if v >= 1))
    return results, reports


def _float_weights_of(block, float_weights, spec, i) -> dict[str, torch.Tensor]:
    """The float weights of a resumed block's linear layers (their quantized ones are in the model)."""
    if not float_weights:
        raise MLWQError("resuming with block tuning needs the float weights of the finished blocks")
    dev = next(block.parameters()).device
    return {f"{name}.weight": float_weights[f"{spec.blocks}.{i}.{name}"].to(dev) for name in spec.linears}


def _choose_widths(cfg, layers, gptq, delta, samples) -> dict[str, LayerReport]:
    if not (cfg.method == "mlwq" and cfg.bpll):
        return {name: LayerReport(name, int(cfg.bits), []) for name in layers}
    loss_fn = bpll.LOSSES[cfg.bpll_loss]
    losses: dict[str, dict[int, float]] = {}
    for name, layer in layers.items():
        X = torch.cat(samples[name])
        W = layer.weight.float()
        y_float = X @ W.t()
        losses[name] = {}
        for b in cfg.candidates:
            plan = layer_plan(cfg, gptq[name].H, delta[name], b, proxy=True)
            Wq = quantize_without_compensation(W, plan).weight
            losses[name][b] = loss_fn(y_float, X @ Wq.t())
    numels = {name: layer.weight.numel() for name, layer in layers.items()}
    chosen = bpll.allocate_widths(losses, numels, cfg.bits)
    return {name: LayerReport(name, chosen[name], [], losses[name]) for name in layers}


def _tier_columns(res: QuantResult) -> list[tuple[int, int]]:
    cols = res.codes.shape[1]
    per_col = res.group_bits.long().repeat_interleave(res.group_size)[:cols]
    values, counts = torch.unique(per_col, return_counts=True)
    return sorted(((int(v), int(c)) for v, c in zip(values, counts)), reverse=True)


def _to_cpu(res: QuantResult) -> QuantResult:
    # the dequantized weight already lives in the model; keeping a copy would double memory
    return QuantResult(weight=None, codes=res.codes.cpu(), scale=res.scale.cpu(),
                       zero=res.zero.cpu(), perm=res.perm.cpu(), group_bits=res.group_bits.cpu(),
                       group_size=res.group_size, loss=res.loss, continuous=None)
