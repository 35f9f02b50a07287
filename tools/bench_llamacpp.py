"""llama.cpp on the CPU: an MLWQ GGUF next to llama.cpp's own types (issue 3).

    python -m tools.bench_llamacpp --mlwq runs/llamacpp/smollm2-mlwq3.gguf --out docs/results/llamacpp

Steps (`--steps`, default all, in this order; each merges its figures into OUT/results.json):

  baselines  patched llama-quantize: reference Q4_1 -> F16 (--allow-requantize), F16 -> Q3_K_S and
             F16 -> Q4_K_M, under runs/llamacpp/ (files already there are reused)
  sizes      file size, true bits per weight of the whole file and of the linear layers, and the
             ggml types the linear layers got (gguf-py)
  bench      ONE llama-bench run with all four models side by side (pp and tg tokens/s)
  ppl        llama-perplexity (llama.cpp's protocol: 512-token chunks, second half scored)
  gptq       the GPTQ protocol (2048-token windows, every position scored) over PyTorch
             (`mlwq eval`) and over llama-cpp-python logits of the GGUFs, on the same tokens
  tokens     does llama.cpp's tokenizer give the same ids as the HF tokenizer the harness uses?
  table      OUT/results.md from OUT/results.json

Every figure in the JSON comes with the command that produced it and the load average before it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from exporters import llamacpp
from exporters.llamacpp import gguf_sizes, short_cmd
from mlwq.assets import sha256_of
from mlwq.sizing import LINEAR
from tools.machine import load_now, machine, wait_quiet

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("baselines", "sizes", "bench", "ppl", "gptq", "tokens", "table")
BASELINES = ("F16", "Q3_K_S", "Q4_K_M")


def log(msg: str) -> None:
    print(f"[bench_llamacpp] {msg}", flush=True)


def rel(p: Path | str) -> str:
    p = Path(p).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def tool(name: str) -> Path:
    return llamacpp.tool_path(name)


def run_tool(cmd: list, log_path: Path | None = None) -> llamacpp.ToolRun:
    log(f"$ {short_cmd(cmd)}")
    return llamacpp.run_tool(cmd, log_path)


# ---------------------------------------------------------------- baselines

def make_baselines(ref: Path, work: Path, logs: Path, res: dict) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    out = {q: work / f"smollm2-{q.lower()}.gguf" for q in BASELINES}
    steps = [("F16", ref, ["--allow-requantize"]), ("Q3_K_S", out["F16"], []), ("Q4_K_M", out["F16"], [])]
    info = res.setdefault("baselines", {})
    for q, src, extra in steps:
        cmd = [tool("llama-quantize"), *extra, src, out[q], q, "2"]
        if out[q].exists():
            log(f"{rel(out[q])} exists, reused")
            info.setdefault(q, {}).update(command=short_cmd(cmd), reused=True)
            continue
        entry = info[q] = {"command": short_cmd(cmd)}
        t0 = time.time()
        proc = run_tool(cmd, logs / f"quantize-{q.lower()}.log")
        lines = proc.text.splitlines()
        entry.update(reused=False, seconds=round(time.time() - t0, 1), sha256=sha256_of(out[q]),
                     fallback_tensors=sum("falling back to" in ln for ln in lines),
                     fallback_example=next((ln.strip() for ln in lines if "falling back to" in ln), None),
                     fallback_summary=[ln.strip() for ln in lines if "required fallback" in ln])
    return out


# ---------------------------------------------------------------- sizes

# ---------------------------------------------------------------- llama-bench

def bench(models: dict[str, Path], out: Path, res: dict, threads: int, pp: int, tg: int, reps: int) -> None:
    cmd = [tool("llama-bench")]
    for p in models.values():
        cmd += ["-m", p]
    cmd += ["-t", threads, "-p", pp, "-n", tg, "-r", reps, "-o", "json"]
    wait_quiet()
    load_before = load_now()
    t0 = time.time()
    proc = run_tool(cmd, out / "llama-bench.log")
    seconds = time.time() - t0
    log(f"llama-bench: {seconds:.0f} s; other processes used {proc.other_cpu_s:.1f} core-seconds meanwhile")
    raw = json.loads(proc.stdout)
    (out / "llama-bench.json").write_text(json.dumps(raw, indent=1))
    by_file = {str(Path(p).resolve()): name for name, p in models.items()}
    rows: dict[str, dict] = {}
    for rec in raw:
        name = by_file[str(Path(rec["model_filename"]).resolve())]
        kind = "pp" if rec["n_prompt"] > 0 else "tg"
        rows.setdefault(name, {})[kind] = {"n": rec["n_prompt"] or rec["n_gen"], "avg_ts": rec["avg_ts"],
                                           "stddev_ts": rec["stddev_ts"], "samples_ts": rec.get("samples_ts")}
        rows[name]["model_type"] = rec.get("model_type")
    cpu_info = raw[0].get("cpu_info") if raw else None
    ratios = {}
    for a in ("MLWQ",):
        for b in ("Q3_K_S", "Q4_K_M", "F16"):
            if a in rows and b in rows:
                for k in ("pp", "tg"):
                    ratios[f"{a}/{b} {k}"] = rows[a][k]["avg_ts"] / rows[b][k]["avg_ts"]
    res["bench"] = {"command": short_cmd(cmd), "threads": threads, "pp": pp, "tg": tg, "repetitions": reps,
                    "load_before": load_before, "seconds": round(seconds, 1),
                    "other_cpu_s_during": round(proc.other_cpu_s, 1),
                    "cpu_info": cpu_info, "build_commit": raw[0].get("build_commit") if raw else None,
                    "rows": rows, "ratios": ratios}
    for name, r in rows.items():
        log(f"{name:7s} pp{pp} {r['pp']['avg_ts']:8.1f} ± {r['pp']['stddev_ts']:.1f}   "
            f"tg{tg} {r['tg']['avg_ts']:7.1f} ± {r['tg']['stddev_ts']:.1f} t/s")


# ---------------------------------------------------------------- llama-perplexity

def perplexity(models: dict[str, Path], out: Path, res: dict, text: Path, ctx: int, chunks: int,
               threads: int) -> None:
    info = res.setdefault("ppl", {})
    for name, path in models.items():
        cmd = [tool("llama-perplexity"), "-m", path, "-f", text, "-c", ctx, "--chunks", chunks, "-t", threads]
        load_before = load_now()
        t0 = time.time()
        slug = re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")
        proc = run_tool(cmd, out / f"perplexity-{slug}.log")
        found = llamacpp.parse_ppl(proc.text)
        info[name] = {"command": short_cmd(cmd), **found,
                      "ctx": ctx, "chunks": chunks, "seconds": round(time.time() - t0, 1),
                      "load_before": load_before, "other_cpu_s_during": round(proc.other_cpu_s, 1)}
        log(f"{name}: llama-perplexity PPL = {found['ppl']} +/- {found['pm']}")


# ---------------------------------------------------------------- GPTQ protocol on both sides

def gptq_torch(model: str, checkpoint: str | None, windows: int, seqlen: int) -> tuple[float, str, float]:
    cmd = [str(ROOT / ".venv/bin/mlwq"), "eval", model, "--eval-windows", str(windows),
           "--seqlen", str(seqlen), "--device", "cpu"]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    log(f"$ {shlex.join(['mlwq'] + cmd[1:])}")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"mlwq eval failed:\n{proc.stderr[-2000:]}")
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout)
    return float(m.group(1)), shlex.join(["mlwq"] + cmd[1:]), time.time() - t0


def gptq_llamacpp(path: Path, ids, windows: int, seqlen: int, threads: int) -> tuple[float, list[float]]:
    """Mean NLL over every position of the first `windows` windows, from llama-cpp-python logits."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=seqlen, logits_all=True, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    nll_sum, count, per_window = 0.0, 0, []
    for i in range(windows):
        window = [int(t) for t in ids[i * seqlen:(i + 1) * seqlen]]
        llm.reset()
        llm.eval(window)
        scores = llm.scores[:seqlen - 1]             # logits at positions 0..seqlen-2
        target = np.asarray(window[1:])
        w_sum = 0.0
        for a in range(0, seqlen - 1, 256):
            x = scores[a:a + 256].astype(np.float64)
            m = x.max(axis=1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))
            w_sum += float((lse - x[np.arange(len(x)), target[a:a + 256]]).sum())
        per_window.append(w_sum / (seqlen - 1))
        nll_sum += w_sum
        count += seqlen - 1
    del llm
    return math.exp(nll_sum / count), per_window


def gptq(ref: Path, mlwq: Path, checkpoint: str, res: dict, windows: int, seqlen: int, threads: int,
         extra: dict[str, Path]) -> None:
    from exporters.llamacpp import check_python_bindings
    from mlwq.evaluate import eval_tokens
    from mlwq.assets import EVAL_TEXT, default_model_path
    from transformers import AutoTokenizer

    lib = check_python_bindings()
    torch_model = "default" if ref == Path(default_model_path()).resolve() else str(ref)
    tokenizer = AutoTokenizer.from_pretrained(str(ref.parent), gguf_file=ref.name)
    ids = eval_tokens(tokenizer, EVAL_TEXT)
    info = res.setdefault("gptq", {})
    info.update(windows=windows, seqlen=seqlen, tokens_scored=windows * (seqlen - 1), eval_tokens=int(ids.numel()),
                text=rel(EVAL_TEXT), llama_cpp_lib=str(lib), tokenizer="HF tokenizer of the reference GGUF "
                "(the same ids fed to both sides; no BOS)")
    rows = info.setdefault("rows", {})
    pairs = [("reference (Q4_1 source)", ref, None), ("MLWQ", mlwq, checkpoint)]
    for name, path, ckpt in pairs:
        load_before = load_now()
        ppl_t, cmd_t, sec_t = gptq_torch(torch_model, ckpt, windows, seqlen)
        log(f"{name}: PyTorch GPTQ-protocol PPL = {ppl_t:.4f} ({sec_t:.0f} s)")
        t0 = time.time()
        ppl_l, per = gptq_llamacpp(path, ids, windows, seqlen, threads)
        sec_l = time.time() - t0
        log(f"{name}: llama.cpp GPTQ-protocol PPL = {ppl_l:.4f} ({sec_l:.0f} s)")
        rows[name] = {"gguf": rel(path), "torch_ppl": ppl_t, "torch_command": cmd_t, "torch_seconds": round(sec_t, 1),
                      "llamacpp_ppl": ppl_l, "llamacpp_seconds": round(sec_l, 1), "llamacpp_nll_per_window": per,
                      "load_before": load_before}
    for name, path in extra.items():
        t0 = time.time()
        ppl_l, per = gptq_llamacpp(path, ids, windows, seqlen, threads)
        log(f"{name}: llama.cpp GPTQ-protocol PPL = {ppl_l:.4f}")
        rows[name] = {"gguf": rel(path), "llamacpp_ppl": ppl_l, "llamacpp_seconds": round(time.time() - t0, 1),
                      "llamacpp_nll_per_window": per}


def same_tokens(ref: Path, res: dict) -> None:
    """Tokenize wiki.test.raw as the GPTQ harness does (Python text mode, so \\r\\n -> \\n) with the HF
    tokenizer and with llama.cpp's, no BOS, and compare the ids; llama-perplexity reads the raw bytes."""
    from llama_cpp import Llama
    from mlwq.assets import EVAL_TEXT
    from mlwq.evaluate import eval_tokens
    from transformers import AutoTokenizer

    hf = eval_tokens(AutoTokenizer.from_pretrained(str(ref.parent), gguf_file=ref.name), EVAL_TEXT).tolist()
    llm = Llama(model_path=str(ref), vocab_only=True, verbose=False)
    text = Path(EVAL_TEXT).read_text(encoding="utf-8")
    lc = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    first = next((i for i, (a, b) in enumerate(zip(hf, lc)) if a != b), None)
    diff = sum(a != b for a, b in zip(hf, lc))
    raw = Path(EVAL_TEXT).read_bytes()
    res["tokens"] = {"hf": len(hf), "llamacpp_same_text": len(lc), "identical": hf == lc,
                     "first_difference": first, "positions_differing": diff,
                     "raw_bytes": len(raw), "raw_cr_bytes": raw.count(b"\r"),
                     "llamacpp_raw_bytes": len(llm.tokenize(raw, add_bos=False, special=False))}
    log(f"tokens: {res['tokens']}")


# ---------------------------------------------------------------- table

def fmt_types(types: dict) -> str:
    out = []
    for role in LINEAR:
        c = types.get(role, {})
        out.append(f"{role.replace('attn_', '').replace('ffn_', '')}: " + "+".join(
            f"{t}" if len(c) == 1 else f"{t}×{n}" for t, n in sorted(c.items())))
    return ", ".join(out)


def table(res: dict) -> str:
    lines = []
    sizes = res.get("sizes", {})
    order = ["reference (Q4_1 source)", "F16", "Q3_K_S", "Q4_K_M", "MLWQ"]
    if sizes:
        lines += ["### Files (true bits per weight, counted from the bytes)", "",
                  "| model | file (MB) | bits/w whole file | bits/w linear layers | token_embd | types of the linear layers |",
                  "|---|---|---|---|---|---|"]
        for n in order:
            s = sizes.get(n)
            if s:
                lines.append(f"| {n} | {s['file_bytes'] / 1e6:.2f} | {s['bpw_file']:.3f} | {s['bpw_linear']:.3f} "
                             f"| {s['token_embd_type']} | {fmt_types(s['linear_types'])} |")
        lines.append("")
    b = res.get("bench")
    if b:
        lines += [f"### Speed: one `llama-bench` run, {b['threads']} threads, {b['repetitions']} repetitions "
                  f"(load average before: {b['load_before']}; other processes used "
                  f"{b.get('other_cpu_s_during', float('nan')):.1f} core-seconds during its {b['seconds']:.0f} s)", "",
                  f"| model | bits/w linear | pp{b['pp']} (t/s) | tg{b['tg']} (t/s) | pp vs MLWQ | tg vs MLWQ |",
                  "|---|---|---|---|---|---|"]
        m = b["rows"].get("MLWQ")
        for n in order:
            r = b["rows"].get(n)
            if not r:
                continue
            bpw = sizes.get(n, {}).get("bpw_linear", float("nan"))
            rp = f"{m['pp']['avg_ts'] / r['pp']['avg_ts']:.3f}" if m else "-"
            rt = f"{m['tg']['avg_ts'] / r['tg']['avg_ts']:.3f}" if m else "-"
            lines.append(f"| {n} | {bpw:.3f} | {r['pp']['avg_ts']:.1f} ± {r['pp']['stddev_ts']:.1f} "
                         f"| {r['tg']['avg_ts']:.1f} ± {r['tg']['stddev_ts']:.1f} | {rp} | {rt} |")
        lines += ["", "(\"vs MLWQ\" = MLWQ's tokens/s divided by this row's.)", ""]
    p = res.get("ppl")
    if p:
        any_p = next(iter(p.values()))
        lines += [f"### Perplexity, llama.cpp's protocol (`llama-perplexity`, {any_p['ctx']}-token chunks, "
                  f"first {any_p['chunks']} chunks, second half of each scored)", "",
                  "| model | bits/w linear | PPL | ± |", "|---|---|---|---|"]
        for n in order:
            if n in p:
                bpw = sizes.get(n, {}).get("bpw_linear", float("nan"))
                lines.append(f"| {n} | {bpw:.3f} | {p[n]['ppl']:.4f} | {p[n]['pm']:.4f} |")
        lines.append("")
    g = res.get("gptq")
    if g:
        lines += [f"### Perplexity, GPTQ protocol on both runtimes (first {g['windows']} windows of {g['seqlen']} "
                  f"tokens, {g['tokens_scored']} positions scored)", "",
                  "| model | PyTorch (fake-quant / float) | llama.cpp (llama-cpp-python logits) | llama.cpp / PyTorch |",
                  "|---|---|---|---|"]
        for n in order:
            r = g["rows"].get(n)
            if not r:
                continue
            t = r.get("torch_ppl")
            ts = f"{t:.4f}" if t else "-"
            ratio = f"{r['llamacpp_ppl'] / t:.4f}" if t else "-"
            lines.append(f"| {n} | {ts} | {r['llamacpp_ppl']:.4f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mlwq", required=True, help="the exported MLWQ GGUF")
    p.add_argument("--checkpoint", default="runs/cpu_mlwq3", help="the MLWQ checkpoint it was exported from")
    p.add_argument("--ref", default=None, help="reference GGUF (default: the SmolLM2-135M Q4_1 of mlwq)")
    p.add_argument("--work", default="runs/llamacpp", help="where the baseline GGUFs are written")
    p.add_argument("--out", default="docs/results/llamacpp")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma list of: {', '.join(STEPS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pp", type=int, default=128)
    p.add_argument("--tg", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=40)
    p.add_argument("--ppl-models", default="reference (Q4_1 source),MLWQ,F16,Q3_K_S,Q4_K_M",
                   help="models for llama-perplexity, in this order")
    p.add_argument("--windows", type=int, default=8, help="GPTQ-protocol windows")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--gptq-extra", default="", help="baselines also run through the llama.cpp GPTQ harness")
    args = p.parse_args(argv)

    from mlwq.assets import EVAL_TEXT, default_model_path

    os.chdir(ROOT)
    steps = [s for s in args.steps.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        print(f"unknown steps {bad}; known: {STEPS}", file=sys.stderr)
        return 2
    ref = Path(args.ref or default_model_path()).resolve()
    mlwq = Path(args.mlwq).resolve()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    res.setdefault("machine", {}).update(machine())
    res["inputs"] = {"reference": str(ref), "mlwq": rel(mlwq), "checkpoint": args.checkpoint}

    def save():
        res_path.write_text(json.dumps(res, indent=1))

    base = {q: work / f"smollm2-{q.lower()}.gguf" for q in BASELINES}
    if "baselines" in steps:
        base = make_baselines(ref, work, out, res)
        save()
    four = {"F16": base["F16"], "Q3_K_S": base["Q3_K_S"], "Q4_K_M": base["Q4_K_M"], "MLWQ": mlwq}
    everything = {"reference (Q4_1 source)": ref, **four}
    if "sizes" in steps:
        res["sizes"] = {n: gguf_sizes(p_) for n, p_ in everything.items()}
        for n, s in res["sizes"].items():
            log(f"{n}: {s['file_bytes'] / 1e6:.2f} MB, {s['bpw_file']:.3f} bits/w file, "
                f"{s['bpw_linear']:.3f} bits/w linear; {fmt_types(s['linear_types'])}")
        save()
    if "bench" in steps:
        bench(four, out, res, args.threads, args.pp, args.tg, args.reps)
        save()
    if "ppl" in steps:
        names = [n for n in args.ppl_models.split(",") if n]
        perplexity({n: everything[n] for n in names}, out, res, EVAL_TEXT, args.ctx, args.chunks, args.threads)
        save()
    if "gptq" in steps:
        extra = {n: everything[n] for n in args.gptq_extra.split(",") if n}
        gptq(ref, mlwq, args.checkpoint, res, args.windows, args.seqlen, args.threads, extra)
        save()
    if "tokens" in steps:
        same_tokens(ref, res)
        save()
    md = table(res)
    (out / "results.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
