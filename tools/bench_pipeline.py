"""PyTorch-side quality table: reference, RTN, GPTQ, MLWQ and MLWQ's ablations.

    python -m tools.bench_pipeline --configs ref,rtn3,gptq3,mlwq3 --out results/
    python -m tools.bench_pipeline --configs mlwq3 --set percdamp=0.001 --tag damp --out results/
Each config writes results/<name>.json: perplexity with the GPTQ protocol on wiki.test.raw
(windows of --eval-seqlen tokens, every position scored), the mean KL divergence of the
quantized model's next-token distribution from the float reference's on the same positions,
its 99th percentile and the share of positions whose top token agrees, true bits per weight of
the linear layers from the MLWQ format, and the quantization time. `--set` overrides QuantConfig
fields of every config (an ablation switch without a new entry); `--tag` names the result.
`--table` gathers every JSON of a directory into a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from mlwq import api
from mlwq.assets import CALIBRATION_TEXT, EVAL_TEXT, default_model_path
from mlwq.engine import QuantConfig
from mlwq.evaluate import eval_tokens, quality, reference_logprobs
from mlwq.model_io import load_model

# the paper's MLWQ as first built: a bit budget per block (eq. 3-4), TQP on the plain l2 error
PAPER = dict(bpll_scope="block", weighted=False)
CONFIGS: dict[str, tuple[str, QuantConfig | None]] = {
    "ref": ("reference (dequantized Q4_1)", None),
    "rtn3": ("RTN 3-bit g64", QuantConfig(method="rtn", bits=3)),
    "gptq3": ("GPTQ 3-bit g128", QuantConfig(method="gptq", bits=3, group_size=128)),
    "gptq3_g64": ("GPTQ 3-bit g64", QuantConfig(method="gptq", bits=3, group_size=64)),
    "mlwq3": ("MLWQ 3.0 (BPLL+MQSA+TQP, GPTQ compensation), BPLL with Dist (eq. 3)",
              QuantConfig(method="mlwq", **PAPER, bits=3, bpll_loss="dist")),
    "mlwq3_nocomp": ("MLWQ 3.0 without GPTQ compensation", QuantConfig(method="mlwq", **PAPER, bits=3, compensate=False, bpll_loss="dist")),
    "abl_bpll_mqsa": ("ablation BPLL+MQSA (no TQP)", QuantConfig(method="mlwq", **PAPER, bits=3, tqp=False, bpll_loss="dist")),
    "abl_bpll_tqp": ("ablation BPLL+TQP (no MQSA)", QuantConfig(method="mlwq", **PAPER, bits=3, mqsa=False, bpll_loss="dist")),
    "abl_mqsa_tqp": ("ablation MQSA+TQP (no BPLL)", QuantConfig(method="mlwq", **PAPER, bits=3, bpll=False)),
    "abl_kl": ("ablation KL loss instead of Dist in BPLL", QuantConfig(method="mlwq", **PAPER, bits=3, bpll_loss="kl")),
    "mlwq3_rel": ("MLWQ 3.0, BPLL with relative Dist", QuantConfig(method="mlwq", **PAPER, bits=3, bpll_loss="dist-rel")),
    "mlwq3_p25": ("MLWQ 3.0 no BPLL, 25% protected", QuantConfig(method="mlwq", **PAPER, bits=3, bpll=False,
                                                                    protect_fraction=0.25)),
    "mlwq3_p06": ("MLWQ 3.0 no BPLL, 6.25% protected", QuantConfig(method="mlwq", **PAPER, bits=3, bpll=False,
                                                                      protect_fraction=0.0625)),
    "mlwq3_5t": ("MLWQ 3.0 no BPLL, 5 tiers (1..5)", QuantConfig(method="mlwq", **PAPER, bits=3, bpll=False,
                                                                    tiers=(-2, -1, 0, 1, 2), protect_fraction=0.25)),
    "mlwq2.5_rel": ("MLWQ 2.5, BPLL with relative Dist", QuantConfig(method="mlwq", **PAPER, bits=2.5, bpll_loss="dist-rel")),
    "mlwq2.5_kl": ("MLWQ 2.5, BPLL with KL", QuantConfig(method="mlwq", **PAPER, bits=2.5, bpll_loss="kl")),
    "mlwq2.5": ("MLWQ 2.5 (BPLL+MQSA+TQP), BPLL with Dist", QuantConfig(method="mlwq", **PAPER, bits=2.5, bpll_loss="dist")),
    "mlwq3_default": ("MLWQ 3.0, defaults (model-scope BPLL, weighted parameters)", QuantConfig(method="mlwq", bits=3)),
    "mlwq3.59_default": ("MLWQ 3.59, defaults", QuantConfig(method="mlwq", bits=3.59)),
    "mlwq2.5_default": ("MLWQ 2.5, defaults", QuantConfig(method="mlwq", bits=2.5)),
    "mlwq3.25_default": ("MLWQ 3.25, defaults", QuantConfig(method="mlwq", bits=3.25)),
    "mlwq3.25_nomqsa": ("MLWQ 3.25, defaults without MQSA", QuantConfig(method="mlwq", bits=3.25, mqsa=False)),
    "rtn4": ("RTN 4-bit g64", QuantConfig(method="rtn", bits=4)),
    "gptq4": ("GPTQ 4-bit g128", QuantConfig(method="gptq", bits=4, group_size=128)),
    "mlwq4": ("MLWQ 4.0 (BPLL+MQSA+TQP), BPLL with Dist", QuantConfig(method="mlwq", **PAPER, bits=4, bpll_loss="dist")),
}


def cpu_name() -> str:
    """The processor's model name (platform.processor() is empty on Linux)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def parse_overrides(items: list[str]) -> dict:
    """QuantConfig field overrides from `--set name=value` (value read as JSON, else as text)."""
    fields = {f.name: f for f in dataclasses.fields(QuantConfig)}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[name] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def run(names, model_path, out_dir: Path, nsamples, seqlen, eval_windows, device, calib,
        overrides: dict | None = None, tag: str = "", eval_seqlen: int = 2048):
    out_dir.mkdir(parents=True, exist_ok=True)
    base, tokenizer = load_model(model_path)
    ids = eval_tokens(tokenizer, EVAL_TEXT)
    windows = min(eval_windows or ids.numel() // eval_seqlen, ids.numel() // eval_seqlen)
    ref_logprobs = reference_logprobs(base, ids, eval_seqlen, windows, device)
    for name in names:
        label, cfg = CONFIGS[name]
        if cfg is not None and overrides:
            cfg = dataclasses.replace(cfg, **overrides)
            label += " [" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + "]"
        result = f"{name}-{tag}" if tag and cfg is not None else name
        model = copy.deepcopy(base)
        row = {"name": result, "config_name": name, "label": label, "model": str(model_path), "device": device,
               "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name(),
               "nsamples": nsamples, "seqlen": seqlen, "calibration": str(calib),
               "date": time.strftime("%Y-%m-%d"), "rotation": cfg.rotation if cfg is not None else None}
        if cfg is not None:
            row["config"] = dataclasses.asdict(cfg)
            res = api.quantize(str(model_path), out_dir / f"ckpt_{result}", cfg, nsamples=nsamples, seqlen=seqlen,
                               calib_path=calib, device=device, model_and_tokenizer=(model, tokenizer))
            row.update(res.meta["summary"], quantize_seconds=res.seconds,
                       widths={k: v["bpll_width"] for k, v in res.meta["layers"].items()})
        q = quality(model, ids, ref_logprobs, device)
        row.update(q, perplexity=q["ppl"], eval_seqlen=eval_seqlen, eval_windows=windows)
        (out_dir / f"{result}.json").write_text(json.dumps(row, indent=1))
        print(f"{result}: PPL {q['ppl']:.3f}  KLD {q['kld_mean']:.4f}  same top {q['same_top_pct']:.1f} %  "
              f"bpw {row.get('bits_per_weight', 'float')}", flush=True)
        del model


def table(out_dir: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    order = {n: i for i, n in enumerate(CONFIGS)}
    rows.sort(key=lambda r: (order.get(r.get("config_name", r["name"]), 99), r["name"]))
    ref = next((r["perplexity"] for r in rows if r["name"] == "ref"), None)
    lines = ["| config | code bits/w | true bits/w (linear) | PPL | × reference | mean KLD | KLD p99 "
             "| same top % | quantize time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['perplexity'] / ref:.3f}" if ref else "-"
        kld = (f"{r['kld_mean']:.4f} | {r['kld_p99']:.3f} | {r['same_top_pct']:.1f}" if "kld_mean" in r
               else "- | - | -")
        lines.append(f"| {r['label']} | {r.get('code_bits_per_weight', 16):.3f} | {r.get('bits_per_weight', 16):.3f} "
                     f"| {r['perplexity']:.3f} | {ratio} | {kld} | {r.get('quantize_seconds', 0):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="ref,rtn3,gptq3,mlwq3", help=f"comma list of: {', '.join(CONFIGS)}")
    p.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--out", default="runs/bench_pipeline", help="directory for the JSON results")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--eval-windows", type=int, default=None, help="evaluation windows (default: the whole text)")
    p.add_argument("--eval-seqlen", type=int, default=2048, help="tokens per evaluation window")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a QuantConfig field of every config (repeatable), e.g. percdamp=0.001")
    p.add_argument("--tag", default="", help="suffix of the result names (with --set)")
    p.add_argument("--calib", default=str(CALIBRATION_TEXT))
    p.add_argument("--device", default=api.default_device())
    p.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.table:
        print(table(out))
        return 0
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"unknown configs: {unknown}; known: {list(CONFIGS)}", file=sys.stderr)
        return 2
    run(names, args.model or default_model_path(), out, args.nsamples, args.seqlen, args.eval_windows,
        args.device, args.calib, parse_overrides(args.set), args.tag, args.eval_seqlen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
