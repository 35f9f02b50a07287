"""mlwq-export: turn an mlwq checkpoint into a file that an inference engine runs.

    mlwq-export CHECKPOINT_DIR --to gguf [--out FILE.gguf] [--source SOURCE.gguf]
    mlwq-export MODEL --to gguf --out FILE.gguf [--method mlwq --bits 3 ...]

CHECKPOINT_DIR is a directory written by `mlwq quantize`; any other MODEL (GGUF file, HF
directory or hub id, 'default') is quantized first (into FILE.checkpoint/), then exported. The GGUF runs in the llama.cpp built by
`bash ggml_patch/build.sh` (llama-completion, llama-perplexity, llama-cpp-python). The last line
printed is the figures of the written file (bytes, bits per weight), for scripts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlwq.errors import run_cli

from .gguf_export import CHECKPOINT_JSON, EMBEDDING_TYPES, ExportError, export_gguf


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlwq-export", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="checkpoint directory written by `mlwq quantize`, or a model to quantize first "
                                 "(GGUF file, HF directory or hub id, or a named model: "
                                 "'default' = SmolLM2-135M-Instruct, 'gemma3-270m')")
    p.add_argument("--to", choices=["gguf"], default="gguf", help="output format (default: gguf)")
    p.add_argument("--out", help="output file (default: MODEL/model-mlwq.gguf)")
    p.add_argument("--source", help="GGUF to take the metadata, tokenizer and unquantized tensors from "
                                    "(default: the checkpoint's 'source')")
    p.add_argument("--embedding-type", choices=EMBEDDING_TYPES, default=None,
                   help="requantize token_embd (and a tied output) to this type; default: keep the source's "
                        "(Q8_0 for SmolLM2 and Gemma-3); K-quants need rows that are a multiple of 256")
    p.add_argument("--format", type=int, choices=(2, 3), default=None,
                   help="MLWQ file format (ggml_patch/FORMAT.md): 3 = one-byte block headers under a scale per "
                        "row, 2 = two-byte headers; default: the one the checkpoint was quantized for (3 for "
                        "new checkpoints). Format 2 holds any checkpoint, format 3 only one quantized for it")
    p.add_argument("--method", choices=["rtn", "gptq", "mlwq"], default="mlwq",
                   help="whole-chain mode: quantization method")
    p.add_argument("--bits", type=float, default=3.0, help="whole-chain mode: average code bits")
    p.add_argument("--nsamples", type=int, default=128, help="whole-chain mode: calibration windows")
    p.add_argument("--seqlen", type=int, default=2048, help="whole-chain mode: tokens per window")
    p.add_argument("--tqp-steps", type=int, default=50, help="whole-chain mode: TQP Adam steps per group")
    p.add_argument("--seed", type=int, default=0, help="whole-chain mode: calibration seed")
    p.add_argument("--max-blocks", type=int, default=None, help="whole-chain mode: keep the first N blocks")
    p.add_argument("--resume", action="store_true",
                   help="whole-chain mode: continue an interrupted quantization from its last finished block")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def quantize_then_export(args) -> Path:
    """Whole chain: MODEL is a GGUF file, HF directory, hub id or 'default'; quantize it with
    `mlwq quantize`'s engine into OUT.checkpoint/ and return that directory for the export."""
    from mlwq import api
    from mlwq.assets import resolve_model
    from mlwq.engine import QuantConfig
    from mlwq.errors import MLWQError

    source = resolve_model(args.model)
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise ExportError(f"{source} is not an mlwq checkpoint (no {CHECKPOINT_JSON}) nor a Hugging Face "
                          "model directory (no config.json)")
    if not args.out:
        raise ExportError("give --out FILE.gguf when MODEL is not a checkpoint directory")
    ckpt = Path(args.out).with_suffix(".checkpoint")
    cfg = QuantConfig(method=args.method, bits=args.bits, tqp_steps=args.tqp_steps, seed=args.seed,
                      **({} if args.format is None else {"file_format": args.format}))
    try:
        api.quantize(source, ckpt, cfg, nsamples=args.nsamples, seqlen=args.seqlen,
                     max_blocks=args.max_blocks, resume=args.resume)
    except MLWQError as e:
        raise ExportError(str(e)) from None
    if args.source is None and source.endswith(".gguf"):
        args.source = source
    return ckpt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def export() -> int:
        ckpt = Path(args.model)
        if not (ckpt / CHECKPOINT_JSON).is_file():
            ckpt = quantize_then_export(args)
        out = Path(args.out) if args.out else ckpt / "model-mlwq.gguf"
        print(f"mlwq-export: {ckpt} -> {out} ({args.to})", file=sys.stderr)
        report = export_gguf(ckpt, out, source=args.source, log=lambda m: print(f"mlwq-export: {m}", file=sys.stderr),
                             embedding_type=args.embedding_type, file_format=args.format)
        for name, layer in report.layers.items():
            print(f"  {name:28s} {layer['type']}  {layer['bits_per_weight']:.4f} bpw "
                  f"(codes {layer['code_bits_per_weight']:.4f})", file=sys.stderr)
        print(f"file={report.path} bytes={report.file_bytes} mlwq_layers={len(report.layers)} "
              f"mlwq_bpw={report.bpw_mlwq:.4f} mlwq_code_bpw={report.code_bpw_mlwq:.4f} file_bpw={report.bpw_file:.4f}")
        return 0

    # a failed write leaves nothing under the final name
    return run_cli("mlwq-export", export, debug=args.debug, errors=(ExportError,), unwritable=args.out or "",
                   interrupted="nothing was written under the final name "
                               "(rerun with --resume to continue the quantization)")


if __name__ == "__main__":
    sys.exit(main())
