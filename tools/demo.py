"""The main job on the default model, end to end:

  1. quantize SmolLM2-135M-Instruct (dequantized Q4_1 reference) with MLWQ at 3 bits;
  2. export the checkpoint to a GGUF with the MLWQ tensor types;
  3. run llama-perplexity (the patched llama.cpp) on wiki.test.raw for the reference GGUF and
     for the MLWQ GGUF, and print both with sizes and true bits per weight.

    python -m tools.demo [--bits 3] [--chunks N] [--out runs/demo]
On a CPU-only machine the calibration is reduced (32 x 512 tokens, 20 TQP steps) so that the
whole job takes minutes; on a GPU it uses the paper's 128 x 2048.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from mlwq import api
from mlwq.assets import EVAL_TEXT, default_model_path
from mlwq.engine import QuantConfig


def llama_perplexity(model: Path, text: Path, chunks: int | None, threads: int) -> float:
    from exporters.llamacpp import tool_env, tool_path

    cmd = [str(tool_path("llama-perplexity")), "-m", str(model), "-f", str(text), "-t", str(threads), "-c", "512"]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=tool_env())
    match = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not match:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit(f"llama-perplexity failed on {model} (exit {proc.returncode}):\n{tail}")
    return float(match.group(1))


def gguf_param_count(path: Path) -> int:
    from gguf import GGUFReader

    return int(sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=float, default=3.0, help="MLWQ average code bits")
    p.add_argument("--out", default="runs/demo", help="working directory for the checkpoint and GGUF")
    p.add_argument("--chunks", type=int, default=None, help="llama-perplexity chunks (default: the whole text)")
    p.add_argument("--nsamples", type=int, default=None)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--tqp-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args(argv)

    from exporters.gguf_export import export_gguf

    gpu = api.default_device() == "cuda"
    nsamples = args.nsamples or (128 if gpu else 32)
    seqlen = args.seqlen or (2048 if gpu else 512)
    steps = args.tqp_steps or (50 if gpu else 20)
    out = Path(args.out)
    source = default_model_path()
    print(f"[demo] quantizing {source.name} with MLWQ {args.bits:g} bits, calibration {nsamples} x {seqlen} "
          f"tokens of wiki.valid.tokens, TQP {steps} steps, on {api.default_device()}", flush=True)
    meta = api.quantize(str(source), out / "checkpoint", QuantConfig(method="mlwq", bits=args.bits, tqp_steps=steps),
                        nsamples=nsamples, seqlen=seqlen)
    meta.pop("_model"), meta.pop("_tokenizer")
    gguf_path = out / f"SmolLM2-135M-Instruct-mlwq{args.bits:g}.gguf"
    report = export_gguf(out / "checkpoint", gguf_path, log=lambda m: print(f"[export] {m}", flush=True))
    ref_ppl = llama_perplexity(source, EVAL_TEXT, args.chunks, args.threads)
    q_ppl = llama_perplexity(gguf_path, EVAL_TEXT, args.chunks, args.threads)
    ref_size = source.stat().st_size
    n_params = gguf_param_count(source)
    print("\nllama-perplexity on wiki.test.raw (512-token chunks, llama.cpp's protocol)")
    print(f"{'model':<44} {'file MiB':>9} {'bits/w (file)':>14} {'PPL':>9}")
    print(f"{'reference: SmolLM2-135M-Instruct Q4_1':<44} {ref_size / 2**20:>9.1f} "
          f"{8 * ref_size / n_params:>14.3f} {ref_ppl:>9.3f}")
    print(f"{'MLWQ ' + format(args.bits, 'g') + ' bits (linear layers MLWQ, embeddings Q4_1)':<44} "
          f"{report.file_bytes / 2**20:>9.1f} {report.bpw_file:>14.3f} {q_ppl:>9.3f}")
    print(f"MLWQ linear layers: {report.bpw_mlwq:.3f} true bits per weight ({report.code_bpw_mlwq:.3f} code bits)")
    print(f"Final estimate: PPL = {q_ppl:.4f} (reference {ref_ppl:.4f}, x{q_ppl / ref_ppl:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
