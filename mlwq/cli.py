"""`mlwq`: quantize a causal LM with RTN, GPTQ or MLWQ, and evaluate perplexity."""

from __future__ import annotations

import argparse
import json
import sys

from .assets import CALIBRATION_TEXT, EVAL_TEXT, MODEL_HELP, resolve_model
from .engine import METHODS, SENSITIVITY_LABELS, QuantConfig
from .errors import MLWQError, run_cli

DEFAULTS = QuantConfig()     # the defaults of every option that sets a QuantConfig field


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlwq", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a model and save an mlwq checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Quantize MODEL block by block on calibration text and write a checkpoint "
                                   "(codes, per-block scales/zeros, tier of every input channel, per-layer widths) "
                                   "that `mlwq-export` turns into a GGUF.")
    q.add_argument("model", help=MODEL_HELP)
    q.add_argument("--method", choices=METHODS, default=DEFAULTS.method)
    q.add_argument("--bits", type=float, default=DEFAULTS.bits,
                   help="average code bits of the linear layers (fractional only with MLWQ's BPLL)")
    q.add_argument("--target-mb", type=float, default=None,
                   help="instead of --bits: the budget whose exported GGUF is at most this many MB (1e6 bytes); "
                        "needs a GGUF source")
    q.add_argument("--out", required=True, help="checkpoint directory to write (atomically)")
    q.add_argument("--group-size", type=int, default=DEFAULTS.group_size,
                   help="rtn/gptq group size (multiple of 64; default 64 for rtn, 128 for gptq)")
    q.add_argument("--act-order", action="store_true", help="gptq: quantize columns by descending Hessian diagonal")
    q.add_argument("--candidates", type=_int_list, default=DEFAULTS.candidates, help="BPLL candidate widths")
    q.add_argument("--tiers", type=_int_list, default=DEFAULTS.tiers,
                   help="MQSA tiers as offsets from each layer's BPLL width: -1,0,1 gives (2,3,4) bits "
                        "for a 3-bit layer; 2 to 5 tiers")
    q.add_argument("--protect-fraction", type=float, default=DEFAULTS.protect_fraction,
                   help="share of a layer's columns in the upper tiers (default: 1/16 per bit above 1)")
    q.add_argument("--no-bpll", action="store_true", help="ablation: every layer at --bits")
    q.add_argument("--no-mqsa", action="store_true", help="ablation: one tier per layer")
    q.add_argument("--no-tqp", action="store_true", help="ablation: plain min/max scales and zeros")
    q.add_argument("--bpll-loss", choices=("dist", "dist-rel", "kl"), default=DEFAULTS.bpll_loss,
                   help="BPLL layer loss: channel-wise distribution loss (eq. 3), the same relative to the "
                        "float outputs' scale, or KL (ablation)")
    q.add_argument("--bpll-scope", choices=("model", "block"), default=DEFAULTS.bpll_scope,
                   help="model: one bit budget for the whole model, each layer's width from its predicted loss "
                        "increase (Fisher-weighted output error, one float pass with gradients); block: a budget "
                        "per block from eq. 3 (the paper's BPLL)")
    q.add_argument("--sensitivity-windows", type=int, default=DEFAULTS.sensitivity_windows,
                   help="calibration windows of the model-scope float pass")
    q.add_argument("--sensitivity-labels", choices=SENSITIVITY_LABELS, default=DEFAULTS.sensitivity_labels,
                   help="next tokens of the model-scope pass: drawn from the float model (sampled: the "
                        "Fisher of the KL divergence to it) or the calibration text's (empirical Fisher)")
    q.add_argument("--no-weighted", action="store_true",
                   help="ablation: fit each group's scale and zero on the plain l2 error only (TQP), not on "
                        "GPTQ's importance-weighted error")
    q.add_argument("--block-tune-steps", type=int, default=DEFAULTS.block_tune_steps,
                   help="block-output reconstruction: signed-gradient steps per block on the rounding and the "
                        "scales (AutoRound-style; 0 = off; 200 on a GPU)")
    q.add_argument("--rotate", choices=("hadamard", "orthogonal"), default=None,
                   help="rotate the residual stream first (QuaRot's R1, folded into the weights; Llama "
                        "architectures; the file gets its own output tensor). Best without MQSA (--no-mqsa)")
    q.add_argument("--no-compensation", action="store_true",
                   help="mlwq: no GPTQ error compensation inside the tiers (RTN on the MLWQ grid)")
    q.add_argument("--tqp-steps", type=int, default=DEFAULTS.tqp_steps, help="Adam steps of TQP per group")
    q.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    q.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window")
    q.add_argument("--calib", default=str(CALIBRATION_TEXT), help="calibration text file")
    q.add_argument("--seed", type=int, default=DEFAULTS.seed)
    q.add_argument("--format", type=int, choices=(2, 3), default=DEFAULTS.file_format,
                   help="MLWQ file format whose block headers the scales and zero points fit (default "
                        f"{DEFAULTS.file_format}: half-octave scales under a per-row scale, zero points <= 15, "
                        "0.16 bits/w of metadata on SmolLM2; 2: 2-byte headers, 0.30 bits/w)")
    q.add_argument("--percdamp", type=float, default=DEFAULTS.percdamp, help="Hessian damping, fraction of mean diagonal")
    q.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    q.add_argument("--max-blocks", type=int, default=None, help="keep only the first N blocks (reduced model)")
    q.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last finished block (kept in OUT.progress/)")
    q.add_argument("--eval", action="store_true", help="also measure WikiText-2 perplexity of the result")
    q.add_argument("--eval-windows", type=int, default=None, help="limit perplexity to N windows")
    q.add_argument("--json", default=None, help="write the summary to this JSON file")

    e = sub.add_parser("eval", help="WikiText-2 perplexity (GPTQ protocol) of a model or checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("model", help=MODEL_HELP)
    e.add_argument("--checkpoint", default=None, help="mlwq checkpoint to apply (fake-quant) before evaluating")
    e.add_argument("--seqlen", type=int, default=2048)
    e.add_argument("--eval-windows", type=int, default=None, help="limit to the first N windows")
    e.add_argument("--text", default=str(EVAL_TEXT), help="evaluation text (wiki.test.raw)")
    e.add_argument("--device", default=None)
    e.add_argument("--max-blocks", type=int, default=None)
    return p


def cmd_quantize(args) -> int:
    from . import api, sizing

    if args.target_mb is not None and args.rotate:
        raise MLWQError("--target-mb does not count the output tensor that --rotate adds; give --bits")
    if args.target_mb is not None:
        args.bits = sizing.budget_for_size(resolve_model(args.model), int(args.target_mb * 1e6), file_format=args.format)
        print(f"[mlwq] --target-mb {args.target_mb:g}: average code bits {args.bits:.2f}", file=sys.stderr)
    cfg = QuantConfig(method=args.method, bits=args.bits, group_size=args.group_size, act_order=args.act_order,
                      candidates=args.candidates, tiers=args.tiers, protect_fraction=args.protect_fraction,
                      bpll=not args.no_bpll, mqsa=not args.no_mqsa, tqp=not args.no_tqp,
                      bpll_loss=args.bpll_loss, compensate=not args.no_compensation, tqp_steps=args.tqp_steps,
                      percdamp=args.percdamp, seed=args.seed, bpll_scope=args.bpll_scope,
                      sensitivity_windows=args.sensitivity_windows, sensitivity_labels=args.sensitivity_labels,
                      weighted=not args.no_weighted,
                      block_tune_steps=args.block_tune_steps, rotation=args.rotate, file_format=args.format)
    cfg.validate()
    source = resolve_model(args.model)
    res = api.quantize(source, args.out, cfg, nsamples=args.nsamples, seqlen=args.seqlen, calib_path=args.calib,
                       device=args.device, max_blocks=args.max_blocks, resume=args.resume)
    ppl = None
    if args.eval:
        ppl = api.evaluate(res.model, res.tokenizer, max_windows=args.eval_windows, device=args.device)
    print_summary(res, ppl)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": res.meta["summary"], "perplexity": ppl, "config": res.meta["config"],
                       "quantize_seconds": res.seconds, "stage_seconds": res.stage_seconds}, f, indent=1)
    return 0


def print_summary(res, ppl: float | None) -> None:
    """The per-layer table and the totals of an api.quantize() result."""
    meta = res.meta
    print(f"\n{'layer':<40} {'bpll':>4} {'type':>5} {'tiers (bits:columns)':<28} {'bits/w':>7}")
    for name, info in meta["layers"].items():
        tiers = " ".join(f"{b}:{n}" for b, n in info["tiers"])
        print(f"{name:<40} {info['bpll_width']:>4} {'mlwq' + str(info['type_width']):>5} {tiers:<28} "
              f"{info['bits_per_weight']:>7.3f}")
    s = meta["summary"]
    print(f"\nlinear layers: {s['params']:,} weights, {s['bytes']:,} bytes")
    print(f"code bits per weight: {s['code_bits_per_weight']:.4f}")
    print(f"true bits per weight (codes + block headers + permutations): {s['bits_per_weight']:.4f}")
    print(f"quantization time: {res.seconds:.1f} s on {res.device}")
    if res.stage_seconds:
        print("by stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.stage_seconds.items()))
    if ppl is not None:
        print(f"Final estimate: PPL = {ppl:.4f}")


def cmd_eval(args) -> int:
    from . import api, checkpoint
    from .model_io import load_model

    model, tokenizer = load_model(resolve_model(args.model))
    if args.max_blocks is not None:
        model = api.truncate_blocks(model, args.max_blocks)
    if args.checkpoint:
        checkpoint.apply_to_model(model, args.checkpoint)
    ppl = api.evaluate(model, tokenizer, seqlen=args.seqlen, max_windows=args.eval_windows,
                       eval_path=args.text, device=args.device)
    print(f"Final estimate: PPL = {ppl:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # a failed write leaves the .part folder, never the final name
    return run_cli("mlwq", lambda: {"quantize": cmd_quantize, "eval": cmd_eval}[args.command](args),
                   debug=args.debug, errors=(MLWQError,),
                   interrupted="no checkpoint was written under the final name "
                               "(rerun with --resume to continue from the last finished block)")


if __name__ == "__main__":
    sys.exit(main())
