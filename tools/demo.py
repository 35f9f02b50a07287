"""The main job on a named model (default: SmolLM2-135M-Instruct), end to end:

  1. quantize the model (its dequantized GGUF is the reference) with MLWQ at 3 bits;
  2. export the checkpoint to a GGUF with the MLWQ tensor types;
  3. run llama-perplexity (the patched llama.cpp) on wiki.test.raw for the reference GGUF and
     for the MLWQ GGUF, and print both with sizes and true bits per weight.

    python -m tools.demo [--model default|gemma3-270m] [--bits 3] [--chunks 40|all] [--out runs/demo]
Perplexity is measured on the first 40 chunks of 512 tokens by default (20,480 tokens, as in
`tools.compare`); `--chunks all` scores the whole text. A progress bar shows the chunks done and
the running perplexity.
On a CPU-only machine the calibration is reduced (32 x 512 tokens, 20 TQP steps) so that the
whole job takes minutes; on a GPU it uses the paper's 128 x 2048.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlwq import api
from mlwq.assets import EVAL_TEXT, MODEL_ALIASES, MODELS, model_key, named_model_path
from mlwq.engine import QuantConfig


def llama_perplexity(model: Path, text: Path, chunks: int | None, threads: int, log_path: Path) -> float:
    from exporters import llamacpp

    cmd = [llamacpp.tool_path("llama-perplexity"), "-m", model, "-f", text, "-t", threads, "-c", 512]
    cmd += ["--chunks", chunks] if chunks else []
    print(f"$ {llamacpp.short_cmd(cmd)}", flush=True)
    try:
        run = llamacpp.run_tool(cmd, log_path, desc=f"llama-perplexity {model.name}", total=chunks)
        return llamacpp.parse_ppl(run.text)["ppl"]
    except llamacpp.LlamaCppToolFailed as e:
        raise SystemExit(f"demo: error: {e}") from None


def chunks_arg(value: str) -> int:
    if value == "all":
        return 0
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of chunks or 'all', got {value!r}")
    return int(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", choices=[*MODEL_ALIASES, *MODELS],
                   help="named model: " + ", ".join(f"{n} = {m.description}" for n, m in MODELS.items()))
    p.add_argument("--bits", type=float, default=3.0, help="MLWQ average code bits")
    p.add_argument("--out", default=None,
                   help="working directory for the checkpoint and GGUF (default runs/demo, runs/demo-MODEL)")
    p.add_argument("--chunks", type=chunks_arg, default=40,
                   help="llama-perplexity chunks of 512 tokens, or 'all' for the whole text (default 40)")
    p.add_argument("--nsamples", type=int, default=None)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--tqp-steps", type=int, default=None)
    p.add_argument("--sensitivity-windows", type=int, default=QuantConfig.sensitivity_windows,
                   help="calibration windows of BPLL's sensitivity pass (default %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args(argv)

    from exporters.gguf_export import export_gguf
    from exporters.llamacpp import gguf_sizes

    gpu = api.default_device() == "cuda"
    nsamples = args.nsamples or (128 if gpu else 32)
    seqlen = args.seqlen or (2048 if gpu else 512)
    steps = args.tqp_steps or (50 if gpu else 20)
    windows = args.sensitivity_windows
    out = Path(args.out or ("runs/demo" if model_key(args.model) == "smollm2-135m"
                            else f"runs/demo-{args.model}"))
    source = named_model_path(args.model)
    name = MODELS[model_key(args.model)].description.split(" (")[0]
    print(f"[demo] quantizing {source.name} with MLWQ {args.bits:g} bits, calibration {nsamples} x {seqlen} "
          f"tokens of wiki.valid.tokens, TQP {steps} steps, sensitivity {windows} windows, on "
          f"{api.default_device()}", flush=True)
    api.quantize(str(source), out / "checkpoint",
                 QuantConfig(method="mlwq", bits=args.bits, tqp_steps=steps, sensitivity_windows=windows),
                 nsamples=nsamples, seqlen=seqlen)
    gguf_path = out / f"{source.stem.split('.')[0]}-mlwq{args.bits:g}.gguf"
    report = export_gguf(out / "checkpoint", gguf_path, log=lambda m: print(f"[export] {m}", flush=True))
    ref_ppl = llama_perplexity(source, EVAL_TEXT, args.chunks, args.threads, out / "perplexity-reference.log")
    q_ppl = llama_perplexity(gguf_path, EVAL_TEXT, args.chunks, args.threads, out / "perplexity-mlwq.log")
    ref_size = source.stat().st_size
    n_params = gguf_sizes(source)["n_weights"]
    scored = f"first {args.chunks} chunks" if args.chunks else "all chunks"
    print(f"\nllama-perplexity on wiki.test.raw ({scored} of 512 tokens, llama.cpp's protocol)")
    print(f"{'model':<44} {'file MiB':>9} {'bits/w (file)':>14} {'PPL':>9}")
    print(f"{'reference: ' + name + ' (source GGUF)':<44} {ref_size / 2**20:>9.1f} "
          f"{8 * ref_size / n_params:>14.3f} {ref_ppl:>9.3f}")
    print(f"{'MLWQ ' + format(args.bits, 'g') + ' bits (embeddings ' + report.embedding_type + ')':<44} "
          f"{report.file_bytes / 2**20:>9.1f} {report.bpw_file:>14.3f} {q_ppl:>9.3f}")
    print(f"MLWQ linear layers: {report.bpw_mlwq:.3f} true bits per weight ({report.code_bpw_mlwq:.3f} code bits)")
    print(f"Final estimate: PPL = {q_ppl:.4f} (reference {ref_ppl:.4f}, x{q_ppl / ref_ppl:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
