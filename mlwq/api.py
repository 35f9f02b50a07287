"""The whole chain as functions: load, calibrate, quantize, save, evaluate.

`mlwq quantize` and `mlwq-export` (whole-chain mode) both call quantize() here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint, grid, rotation, sensitivity
from .assets import CALIBRATION_TEXT, EVAL_TEXT
from .calibration import calibration_windows
from .engine import QuantConfig, StageTimes, quantize_model
from .evaluate import eval_tokens, perplexity
from .model_io import load_model
from .resume import Progress


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class QuantizeResult:
    """What quantize() returns."""
    meta: dict                  # the checkpoint's metadata, as written to its mlwq_checkpoint.json
    model: torch.nn.Module      # the fake-quantized model (the checkpoint's weights, in place), for evaluation
    tokenizer: object
    seconds: float              # quantization time; not in `meta`, which is byte-identical from run to run
    device: str                 # where it ran
    stage_seconds: dict = None  # seconds per stage, loading the model included


def quantize(source: str, out_dir: str | Path, cfg: QuantConfig, *, nsamples: int = 128, seqlen: int = 2048,
             calib_path: str | Path = CALIBRATION_TEXT, device: str | None = None,
             max_blocks: int | None = None, progress: bool = True, model_and_tokenizer=None,
             resume: bool = False) -> QuantizeResult:
    """Quantize `source` and write the checkpoint to out_dir; returns its metadata and the quantized model.

    max_blocks keeps only the first blocks of the model (reduced copies for tests). Finished
    blocks are kept in OUT.progress/ until the checkpoint is written; resume=True continues
    from them (mlwq/resume.py).
    """
    cfg.validate()
    grid.use_format(cfg.file_format)            # the sensitivity pass quantizes too
    device = device or default_device()
    times = StageTimes(torch.device(device))
    torch.manual_seed(cfg.seed)
    with times("load model"):
        model, tokenizer = model_and_tokenizer or load_model(source)
    if max_blocks is not None:
        model = truncate_blocks(model, max_blocks)
    if cfg.rotation:                                 # same function, flatter weights (rotation.py)
        rotation.rotate_residual(model, cfg.rotation, seed=cfg.seed)
    calib = calibration_windows(tokenizer, calib_path, nsamples, seqlen, cfg.seed)
    store = Progress(out_dir, {"source": str(source), "config": cfg.identity(), "nsamples": nsamples,
                               "seqlen": seqlen, "calibration": str(calib_path), "max_blocks": max_blocks})
    done, results_before, reports_before, rng_state = store.start(resume)
    t0 = time.time()
    model_widths = None
    if cfg.method == "mlwq" and cfg.bpll and cfg.bpll_scope == "model":   # on the float model, resumed or not
        with times("sensitivity"):
            model_widths = sensitivity.allocate(model, calib, cfg, device, progress)
    float_weights = {}                               # block tuning rebuilds the float stream from them
    for name, res in results_before.items():        # restore the finished blocks' weights
        layer = model.get_submodule(name)
        if cfg.block_tune_steps > 0:
            float_weights[name] = layer.weight.detach().clone()
        layer.weight.data = res.dequantized_weight().to(layer.weight.dtype)
    results, reports = quantize_model(model, calib, cfg, device=device, progress=progress, done_blocks=done,
                                      rng_state=rng_state, float_weights=float_weights, model_widths=model_widths,
                                      on_block_done=lambda i, r, rep, g: store.save_block(i, r, rep, g),
                                      times=times)
    results = {**results_before, **results}
    reports = reports_before + reports
    seconds = time.time() - t0
    meta = checkpoint.save(out_dir, results, reports, cfg, source, extra={
        "calibration": {"file": str(calib_path), "nsamples": nsamples, "seqlen": seqlen, "seed": cfg.seed},
        "max_blocks": max_blocks})
    store.clear()
    return QuantizeResult(meta=meta, model=model, tokenizer=tokenizer, seconds=seconds, device=str(device),
                          stage_seconds=dict(times.seconds))


def truncate_blocks(model, n_blocks: int):
    """The same model with only its first n_blocks decoder blocks (a reduced real model)."""
    from .model_io import arch_of, get_module

    spec = arch_of(model)
    parent_path, attr = spec.blocks.rsplit(".", 1)
    parent = get_module(model, parent_path)
    setattr(parent, attr, torch.nn.ModuleList(list(getattr(parent, attr))[:n_blocks]))
    model.config.num_hidden_layers = n_blocks
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n_blocks]
    return model


def evaluate(model, tokenizer, *, seqlen: int = 2048, max_windows: int | None = None,
             eval_path: str | Path = EVAL_TEXT, device: str | None = None, progress: bool = True) -> float:
    ids = eval_tokens(tokenizer, eval_path)
    return perplexity(model, ids, seqlen, max_windows, device or default_device(), progress)
