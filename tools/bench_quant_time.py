"""How long quantization takes, by stage, and its peak GPU memory.

    python -m tools.bench_quant_time --shape smollm2 [--device cuda] [--eval-windows 40]
    python -m tools.bench_quant_time --shape gemma3-270m --device cuda --block-tune-steps 200
    python -m tools.bench_quant_time --shape llama-1b --device cuda
    python -m tools.bench_quant_time --shape llama-8b --device cuda --max-blocks 4   # an estimate

`smollm2` and `gemma3-270m` are the real named models (mlwq.assets.MODELS); the llama-* shapes are random-weight Llama-3.2-1B/3B and
Llama-3-8B-shaped models (seeded, initializer_range 0.02) with the Llama-3.2 tokenizer
(mlwq.assets.llama3_tokenizer_dir, or --tokenizer DIR): their times and memory are those of the
real models, their perplexities mean nothing. --max-blocks N quantizes the first N blocks and
extrapolates the whole model from the per-block time (marked `estimate`). Each run adds (or
replaces) one entry of --out (docs/results/quant-time.json): shape, method, calibration, seconds
per stage, per block and in all, peak GPU memory, device, versions, date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from mlwq.engine import SENSITIVITY_LABELS
from mlwq.resume import atomic_write_text

SHAPES = {   # hidden, FFN, blocks, heads, KV heads, head dim, tied embeddings
    "llama-1b": (2048, 8192, 16, 32, 8, 64, True),
    "llama-3b": (3072, 8192, 28, 24, 8, 128, True),
    "llama-8b": (4096, 14336, 32, 32, 8, 128, False),
}
REAL_MODELS = {"smollm2": "smollm2-135m", "gemma3-270m": "gemma3-270m"}   # --shape -> mlwq.assets.MODELS
PER_BLOCK_STAGES = ("hessians", "salience", "bpll", "tqp", "gptq", "block tuning", "block outputs")


def random_llama(shape: str, tokenizer_dir: str | None, device: str, seed: int = 0):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mlwq.assets import llama3_tokenizer_dir

    hidden, ffn, blocks, heads, kv, head_dim, tied = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir or str(llama3_tokenizer_dir()))
    config = LlamaConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=blocks,
                         num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                         max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=tied,
                         bos_token_id=128000, eos_token_id=128001, initializer_range=0.02)
    torch.manual_seed(seed)
    with torch.device(device):                 # initialising 3B-8B weights on the CPU takes minutes
        model = LlamaForCausalLM(config)
    model = model.to("cpu").eval()
    model.config.use_cache = False
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return model, tok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--shape", choices=[*REAL_MODELS, *SHAPES], default="smollm2")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--bits", type=float, default=3.0)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--tqp-steps", type=int, default=None, help="default: QuantConfig's")
    p.add_argument("--block-tune-steps", type=int, default=0)
    p.add_argument("--sensitivity-windows", type=int, default=None, help="default: QuantConfig's")
    p.add_argument("--sensitivity-labels", choices=SENSITIVITY_LABELS, default=None, help="default: QuantConfig's")
    p.add_argument("--max-blocks", type=int, default=None, help="quantize the first N blocks, extrapolate the rest")
    p.add_argument("--tokenizer", default=None, help="Llama-3 tokenizer directory for the llama-* shapes")
    p.add_argument("--eval-windows", type=int, default=None, help="real models: also the WikiText-2 perplexity (2048-token windows)")
    p.add_argument("--keep", default=None, help="write the checkpoint here (default: a temporary directory)")
    p.add_argument("--out", default="docs/results/quant-time.json")
    args = p.parse_args(argv)

    from mlwq import api
    from mlwq.assets import named_model_path
    from mlwq.engine import QuantConfig
    from mlwq.model_io import load_model

    device = args.device or api.default_device()
    cuda = device.startswith("cuda")
    cfg = QuantConfig(method="mlwq", bits=args.bits, block_tune_steps=args.block_tune_steps)
    if args.tqp_steps is not None:
        cfg.tqp_steps = args.tqp_steps
    if args.sensitivity_windows is not None:
        cfg.sensitivity_windows = args.sensitivity_windows
    if args.sensitivity_labels is not None:
        cfg.sensitivity_labels = args.sensitivity_labels
    t_load = time.time()
    if args.shape in REAL_MODELS:
        source = str(named_model_path(REAL_MODELS[args.shape]))
        model, tok = load_model(source)
    else:
        model, tok = random_llama(args.shape, args.tokenizer, device)
        source = f"random {args.shape}"
    t_load = time.time() - t_load
    n_blocks = model.config.num_hidden_layers
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out_dir = args.keep or tempfile.mkdtemp(prefix="mlwq-qt-")
    t0 = time.time()
    res = api.quantize(source, out_dir, cfg, nsamples=args.nsamples, seqlen=args.seqlen, device=device,
                       max_blocks=args.max_blocks, model_and_tokenizer=(model, tok))
    total = time.time() - t0
    ran = args.max_blocks or n_blocks
    stages = {k: round(v, 2) for k, v in res.stage_seconds.items()}
    per_block = sum(v for k, v in res.stage_seconds.items() if k in PER_BLOCK_STAGES) / ran
    entry = {
        "shape": args.shape, "source": source, "blocks": n_blocks, "blocks_run": ran,
        "linear_params": res.meta["summary"]["params"] * n_blocks // ran,
        "method": f"mlwq {args.bits:g}-bit", "tqp_steps": cfg.tqp_steps, "block_tune_steps": cfg.block_tune_steps,
        "sensitivity_windows": cfg.sensitivity_windows, "sensitivity_labels": cfg.sensitivity_labels,
        "calibration": f"{args.nsamples} x {args.seqlen}",
        "seconds_total": round(total, 1),
        "seconds_per_block": round(per_block, 2),
        "seconds_by_stage": stages,
        "seconds_model_load": round(t_load, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2 ** 30, 2) if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else f"{_cpu_name()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "date": dt.date.today().isoformat(),
        "bits_per_weight": res.meta["summary"]["bits_per_weight"],
    }
    if args.max_blocks and args.max_blocks < n_blocks:
        # the model-wide stages (inputs, sensitivity) ran on the truncated model: scale them too
        entry["estimate"] = True
        entry["seconds_total_estimated"] = round(total * n_blocks / ran, 1)
    if args.eval_windows:
        entry["eval"] = f"WikiText-2 test, {args.eval_windows} x 2048 tokens, PyTorch"
        entry["perplexity"] = round(api.evaluate(res.model, res.tokenizer, max_windows=args.eval_windows,
                                                 device=device), 4)
    print(json.dumps(entry, indent=1))
    _record(Path(args.out), entry)
    return 0


def _cpu_name() -> str:
    """The CPU's model name and whether it has AVX-512 (Linux), else the platform's word for it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name"))
        return f"{name} ({'AVX-512' if ' avx512f' in info else 'no AVX-512'})"
    except (OSError, StopIteration):
        return f"CPU {platform.processor() or platform.machine()}"


def _record(path: Path, entry: dict) -> None:
    """Add the entry to the JSON list at path, replacing one of the same shape and settings."""
    key = ("shape", "method", "calibration", "tqp_steps", "block_tune_steps", "sensitivity_windows",
           "sensitivity_labels", "blocks_run", "device")
    before = {"sensitivity_labels": "text"}          # entries recorded before the key existed
    runs = json.loads(path.read_text()) if path.exists() else []
    runs = [r for r in runs if any(r.get(k, before.get(k)) != entry[k] for k in key)] + [entry]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
