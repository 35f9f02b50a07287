"""One model, every quantization: size, true bits per weight, perplexity and speed, side by side.

    python -m tools.compare default --out runs/compare/smollm2
    python -m tools.compare gemma3-270m --embedding-type Q5_0
    python -m tools.compare MODEL.gguf --out DIR [--steps ...] [--nsamples N --seqlen L] [--chunks C]

For MODEL (a GGUF file, or a named model: `default` = SmolLM2-135M-Instruct Q4_1, `gemma3-270m` =
Gemma-3-270M Q4_K_M; the source dequantized is the float reference) it builds, under DIR/models/:

  F16          the reference: `llama-quantize --allow-requantize MODEL F16` (always made)
  imatrix      (with step llamacpp) `llama-imatrix` of F16 over the calibration text MLWQ uses (same token count:
               nsamples chunks of seqlen tokens of wiki.valid.tokens)
  llamacpp     `llama-quantize --imatrix` of F16 to Q2_K, Q3_K_S, Q3_K_M, IQ3_XXS, IQ3_S, IQ4_NL, Q4_K_M
  added        (--add) GGUF files made elsewhere, e.g. MLWQ files quantized on a GPU, measured alike
  ours         RTN, GPTQ (64-column groups) and MLWQ at 2.5, 3, 3.59 and 4 average code bits, quantized
               by `mlwq.api.quantize` and written by `mlwq-export`. Uniform RTN/GPTQ cannot average
               2.5 bits: at 2.5 they take BPLL's per-layer widths (whole layers at 2 or 3 bits)
               with MQSA and TQP off, i.e. MLWQ's stage 1 alone.

With --embedding-type T every file but the reference stores token_embd (and a tied output) as T:
llama-quantize --token-embedding-type T, and our exporter's requantization.

then measures each file: size and bits per weight from its bytes (whole file, and the linear
layers with every scale, header and permutation), `llama-perplexity` on wiki.test.raw (the same
context and chunks for all) with the KL divergence of every file's next-token distribution from
the F16 reference's (`--kl-divergence`: mean, 99th percentile, same top token), and one
`llama-bench` run with all files side by side. It writes
DIR/results.json, results.csv, results.md, pareto.png (perplexity against bits per weight) and
allocation.png (MLWQ's per-layer widths and tiers), and with `--ablation` the PyTorch-side
ablation table of the paper (ablation.md).

Resumable: every artefact and every measurement is stored under a name that carries the hash of
its inputs (model bytes, settings, calibration), so a run that stops continues where it stopped;
a quantization interrupted half way resumes from its last finished block. Changing a setting makes
new artefacts beside the old ones.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from exporters import llamacpp
from exporters import mlwq_format as F
from mlwq.assets import CALIBRATION_TEXT, EVAL_TEXT, MODELS, model_key, resolve_model, sha256_of
from mlwq.engine import SENSITIVITY_LABELS, QuantConfig
from mlwq.errors import MLWQError
from mlwq.resume import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
LLAMA_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ3_XXS", "IQ3_S", "IQ4_NL", "Q4_K_M")
OUR_METHODS = ("rtn", "gptq", "mlwq")
OUR_BITS = (2.5, 3.0, 3.59, 4.0)
# what a run does; the F16 reference and the sizes are always there. A step left out makes
# nothing new, but what it made before is measured and reported.
STEPS = ("llamacpp", "ours", "ppl", "bench", "report")
# the paper's ablation (Table 4) on the PyTorch side: tools/bench_pipeline.py configs
ABLATION = (("mlwq3", "MLWQ (BPLL+MQSA+TQP), BPLL with Dist"),
            ("abl_bpll_mqsa", "BPLL+MQSA (no TQP)"),
            ("abl_bpll_tqp", "BPLL+TQP (no MQSA)"),
            ("abl_mqsa_tqp", "MQSA+TQP (no BPLL)"),
            ("abl_kl", "KL instead of Dist in BPLL"),
            ("mlwq3_rel", "MLWQ, BPLL with relative Dist (our default)"))


def log(msg: str) -> None:
    tqdm.write(f"[compare] {msg}")


def key_of(*parts) -> str:
    """12 hex digits of the hash of the inputs that decide an artefact."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


@dataclass
class Entry:
    """One quantized file and what was measured on it."""
    name: str                     # "Q3_K_S", "MLWQ 3", "RTN 2.5"
    family: str                   # reference | llama.cpp | rtn | gptq | mlwq
    target_bits: float | None     # the method's nominal code bits (ours), None for llama.cpp types
    path: Path
    key: str
    how: str                      # command or settings that made it
    sizes: dict = field(default_factory=dict)
    ppl: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)
    allocation: dict = field(default_factory=dict)   # MLWQ: per-layer width and tiers


# ---------------------------------------------------------------- llama.cpp tools

def tool(name: str) -> Path:
    from exporters.llamacpp import LlamaCppNotBuilt, tool_path
    try:
        return tool_path(name)
    except LlamaCppNotBuilt as e:
        raise MLWQError(f"{e} (tools.compare needs llama-quantize, llama-imatrix, llama-perplexity "
                        "and llama-bench from the patched llama.cpp)") from None


def run_tool(cmd: list, log_path: Path, desc: str, total: int | None = None) -> str:
    """A llama.cpp tool with a progress bar and its log (exporters.llamacpp.run_tool); returns stdout + stderr."""
    try:
        return llamacpp.run_tool(cmd, log_path, desc, total).text
    except llamacpp.LlamaCppToolFailed as e:
        raise MLWQError(str(e)) from None


def parse_kld(text: str) -> dict:
    try:
        return llamacpp.parse_kld(text)
    except llamacpp.LlamaCppToolFailed as e:
        raise MLWQError(str(e)) from None


def parse_ppl(text: str, path: Path) -> dict:
    try:
        return llamacpp.parse_ppl(text)
    except llamacpp.LlamaCppToolFailed as e:
        raise MLWQError(f"{e} for {path}") from None


# ---------------------------------------------------------------- artefacts

class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.models = self.out / "models"
        self.logs = self.out / "logs"
        self.measure = self.out / "measure"
        for d in (self.models, self.logs, self.measure):
            d.mkdir(parents=True, exist_ok=True)
        src = Path(resolve_model(args.model))
        if not src.is_file():
            raise MLWQError(f"model {args.model} not found")
        if src.suffix != ".gguf":
            raise MLWQError(f"{src} is not a GGUF file: convert a Hugging Face model first with llama.cpp's "
                            "convert_hf_to_gguf.py (vendor/llama.cpp in the tree ggml_patch/build.sh builds)")
        for f in (args.calib, args.eval_text):
            if not Path(f).is_file():
                raise MLWQError(f"text file {f} not found")
        self.src_sha = sha256_of(src)
        if args.max_blocks:
            from exporters.gguf_export import write_reduced_gguf
            reduced = self.models / f"source-{args.max_blocks}blocks-{self.src_sha[:12]}.gguf"
            if not reduced.exists():
                write_reduced_gguf(src, reduced, args.max_blocks)
            src = reduced
        self.source = src
        self.calib_sha = sha256_of(Path(args.calib))
        self.stem = re.sub(r"\.gguf$", "", src.name)
        self.threads = args.threads
        self.entries: list[Entry] = []

    def path(self, name: str, key: str) -> Path:
        return self.models / f"{re.sub(r'[^A-Za-z0-9_.]+', '-', name)}-{key}.gguf"

    # reference -------------------------------------------------------------------------------
    def reference(self) -> Entry:
        key = key_of("F16", self.src_sha, self.args.max_blocks)
        out = self.path("F16", key)
        cmd = [tool("llama-quantize"), "--allow-requantize", self.source, out, "F16", self.threads]
        if not out.exists():
            log(f"reference: {llamacpp.short_cmd(cmd)}")
            self._quantize(cmd, out, "F16")
        return Entry("F16", "reference", 16.0, out, key, llamacpp.short_cmd(cmd))

    def _quantize(self, cmd: list, out: Path, name: str) -> None:
        self._write_via_tool(cmd, out, out.with_name(out.name + ".part"), self.logs / f"quantize-{out.stem}.log",
                             f"llama-quantize {name}")

    @staticmethod
    def _write_via_tool(cmd: list, out: Path, tmp: Path, log_path: Path, desc: str, total: int | None = None) -> None:
        """Run a tool that writes `out` (named in cmd) into tmp instead, then rename: no half-written
        file ever stands under the final name."""
        cmd = [tmp if c == out else c for c in cmd]
        try:
            run_tool(cmd, log_path, desc, total)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)

    # imatrix ---------------------------------------------------------------------------------
    def imatrix(self, ref: Entry, make: bool = True) -> Path | None:
        """The importance matrix (None when it is not on disk and make is False)."""
        a = self.args
        key = key_of("imatrix", ref.key, self.calib_sha, a.nsamples, a.seqlen)
        out = self.models / f"imatrix-{key}.gguf"
        if not out.exists():
            if not make:
                return None
            cmd = [tool("llama-imatrix"), "-m", ref.path, "-f", a.calib, "-o", out, "-c", a.seqlen,
                   "--chunks", a.nsamples, "-t", self.threads, "--no-ppl"]
            log(f"imatrix: {llamacpp.short_cmd(cmd)}")
            self._write_via_tool(cmd, out, out.with_name(f"imatrix-{key}.part.gguf"),
                                 self.logs / f"imatrix-{key}.log", "llama-imatrix", total=a.nsamples)
        return out

    # llama.cpp types --------------------------------------------------------------------------
    def llamacpp(self, ref: Entry, imatrix: Path | None, make: bool = True) -> list[Entry]:
        entries = []
        im_key = key_of(sha256_of(imatrix)) if imatrix else "none"
        for t in self.args.types:
            emb = self.args.embedding_type
            key = key_of(t, ref.key, im_key, *([emb] if emb else []))
            out = self.path(t, key)
            cmd = [tool("llama-quantize")] + (["--imatrix", imatrix] if imatrix else []) \
                + (["--token-embedding-type", emb] if emb else []) + [ref.path, out, t, self.threads]
            if not out.exists():
                if not make:
                    continue
                log(f"{t}: {llamacpp.short_cmd(cmd)}")
                self._quantize(cmd, out, t)
            entries.append(Entry(t, "llama.cpp", None, out, key, llamacpp.short_cmd(cmd)))
        return entries

    # ours -------------------------------------------------------------------------------------
    def our_config(self, method: str, bits: float, tune: int = 0) -> QuantConfig:
        steps, windows = self.args.tqp_steps, self.args.sensitivity_windows
        if bits == int(bits):
            if method == "rtn":
                return QuantConfig(method="rtn", bits=bits, group_size=64)
            if method == "gptq":
                return QuantConfig(method="gptq", bits=bits, group_size=64)
        if method == "mlwq":
            return QuantConfig(method="mlwq", bits=bits, tqp_steps=steps, block_tune_steps=tune,
                               sensitivity_windows=windows, sensitivity_labels=self.args.sensitivity_labels)
        # fractional budget for the uniform methods: BPLL's layer widths, nothing else of MLWQ
        return QuantConfig(method="mlwq", bits=bits, mqsa=False, tqp=False, weighted=False,
                           compensate=(method == "gptq"), tqp_steps=steps, sensitivity_windows=windows,
                           sensitivity_labels=self.args.sensitivity_labels)

    def ours(self, make: bool = True) -> list[Entry]:
        from exporters.gguf_export import export_gguf
        from mlwq import api

        a = self.args
        entries = []
        # block tuning applies to MLWQ only; "MLWQ 3 bt50" is MLWQ 3 with 50 steps of it
        todo = [(m, b, t) for m in a.methods for b in a.bits for t in (a.block_tune_steps if m == "mlwq" else [0])]
        for i, (method, bits, tune) in enumerate(todo, 1):
            cfg = self.our_config(method, bits, tune)
            name = (f"{method.upper()} {bits:g}" + (f" bt{tune}" if tune else "")
                    + (" text-labels" if cfg.sensitivity_labels == "text" else ""))
            key = key_of(name, self.src_sha, a.max_blocks, cfg.identity(), self.calib_sha, a.nsamples, a.seqlen,
                         *([a.embedding_type] if a.embedding_type else []),
                         *([f"format{F.FORMAT_VERSION}"] if F.FORMAT_VERSION > 1 else []))
            out = self.path(name, key)
            meta_path = out.with_suffix(".json")
            how = (f"mlwq quantize {self.stem} --method {cfg.method} --bits {bits:g}"
                   + (f" --block-tune-steps {tune}" if tune else "") + " ... "
                   f"(QuantConfig {json.dumps(asdict(cfg), sort_keys=True)}, calibration {a.nsamples} x {a.seqlen})")
            if not (out.exists() and meta_path.exists()):
                if not make:
                    continue
                ckpt = self.out / "checkpoints" / out.stem
                log(f"({i}/{len(todo)}) {name}: quantizing into {ckpt}")
                res = api.quantize(str(self.source), ckpt, cfg, nsamples=a.nsamples, seqlen=a.seqlen,
                                   calib_path=a.calib, device=a.device, resume=True)
                meta = res.meta
                report = export_gguf(ckpt, out, source=self.source, log=log, embedding_type=a.embedding_type)
                layers = {k: {kk: v[kk] for kk in ("bpll_width", "tiers", "shape")} for k, v in meta["layers"].items()}
                write_json(meta_path, {"config": asdict(cfg), "summary": meta["summary"], "layers": layers,
                                       "quantize_seconds": res.seconds, "device": a.device,
                                       "export": {"file_bytes": report.file_bytes, "bpw_mlwq": report.bpw_mlwq}})
                if not a.keep_checkpoints:
                    shutil.rmtree(ckpt)
            meta = json.loads(meta_path.read_text())
            e = Entry(name, method, bits, out, key, how)
            e.allocation = meta["layers"]
            e.sizes["quantize_seconds"] = meta.get("quantize_seconds")
            entries.append(e)
        return entries

    def added(self) -> list[Entry]:
        """Files made elsewhere (--add NAME=PATH): MLWQ files are family mlwq, others 'added'."""
        entries = []
        for name, path in self.args.add:
            if not path.is_file():
                raise MLWQError(f"--add {name}={path}: file not found")
            e = Entry(name, "added", None, path, sha256_of(path)[:12], f"added: {path}")
            self.sizes(e)                              # stored: the report reads the same measurement
            if any(t.startswith("MLWQ") for r in e.sizes["linear_types"].values() for t in r):
                e.family = "mlwq"
            entries.append(e)
        return entries

    # measurements ----------------------------------------------------------------------------
    def sizes(self, e: Entry) -> None:
        res_path = self.measure / f"sizes-{e.path.stem}.json"     # the file's name carries its key
        if not res_path.exists():
            write_json(res_path, llamacpp.gguf_sizes(e.path))
        e.sizes.update(json.loads(res_path.read_text()))

    def kld_base(self, ref: Entry, make: bool = True) -> Path | None:
        """The F16 reference's log-probabilities on the evaluation chunks (llama-perplexity
        --kl-divergence-base), made once; the reference's perplexity comes from the same run."""
        a = self.args
        key = key_of("kld-base", ref.key, sha256_of(Path(a.eval_text)), a.ctx, a.chunks)
        out = self.measure / f"kld-base-{key}.bin"
        res_path = self.measure / f"ppl-{ref.path.stem}-{key}.json"
        if not (out.exists() and res_path.exists()):
            if not make:
                return None
            cmd = [tool("llama-perplexity"), "-m", ref.path, "-f", a.eval_text, "-c", a.ctx, "-t", self.threads,
                   "--kl-divergence-base", out] + (["--chunks", a.chunks] if a.chunks else [])
            t0 = time.time()
            log_path = self.logs / f"kld-base-{key}.log"
            self._write_via_tool(cmd, out, out.with_name(out.name + ".part"), log_path,
                                 "llama-perplexity F16 (KLD base)", total=a.chunks or None)
            write_json(res_path, {**parse_ppl(log_path.read_text(), ref.path), "ctx": a.ctx, "chunks": a.chunks,
                                  "command": llamacpp.short_cmd(cmd), "seconds": round(time.time() - t0, 1)})
        ref.ppl = json.loads(res_path.read_text())
        return out

    def ppl(self, e: Entry, base: Path | None, make: bool = True) -> None:
        """Perplexity, and with the reference's log-probabilities (base) the KL divergence statistics
        that llama.cpp's quant authors report: mean, 99th percentile, same top token."""
        a = self.args
        if e.family == "reference" and base is not None:
            return                                     # measured by kld_base
        key = key_of("ppl", e.key, sha256_of(Path(a.eval_text)), a.ctx, a.chunks, "kld" if base else "")
        res_path = self.measure / f"ppl-{e.path.stem}-{key}.json"
        if not res_path.exists():
            if not make:
                return
            cmd = [tool("llama-perplexity"), "-m", e.path, "-c", a.ctx, "-t", self.threads]
            cmd += ["--kl-divergence-base", base, "--kl-divergence"] if base else ["-f", a.eval_text]
            if a.chunks:
                cmd += ["--chunks", a.chunks]
            t0 = time.time()
            text = run_tool(cmd, self.logs / f"ppl-{e.path.stem}.log", f"llama-perplexity {e.name}",
                            total=a.chunks or None)
            res = parse_kld(text) if base else parse_ppl(text, e.path)
            write_json(res_path, {**res, "ctx": a.ctx, "chunks": a.chunks, "command": llamacpp.short_cmd(cmd),
                                  "seconds": round(time.time() - t0, 1), "llama_bin": str(Path(cmd[0]).parent)})
        e.ppl = json.loads(res_path.read_text())
        kld = f"  KLD {e.ppl['kld_mean']:.4f}" if "kld_mean" in e.ppl else ""
        log(f"{e.name:8s} PPL {e.ppl['ppl']:.3f} ± {e.ppl['pm']:.3f}{kld}")

    def bench(self, entries: list[Entry], make: bool = True) -> dict | None:
        """ONE llama-bench invocation with every file, so the figures share the machine's state."""
        from tools.machine import busy_share, load_now, wait_quiet
        a = self.args
        key = key_of("bench", [e.key for e in entries], a.pp, a.tg, a.reps, self.threads)
        res_path = self.measure / f"bench-{key}.json"
        if not res_path.exists():
            if not make:
                return None
            cmd = [tool("llama-bench")]
            for e in entries:
                cmd += ["-m", e.path]
            cmd += ["-t", self.threads, "-p", a.pp, "-n", a.tg, "-r", a.reps, "-o", "json"]
            wait_quiet(max_wait=a.quiet_wait)
            load_before = load_now()
            log(f"llama-bench ({len(entries)} files, one run): {llamacpp.short_cmd(cmd)}")
            try:
                raw = json.loads(llamacpp.run_tool(cmd, self.logs / f"bench-{key}.log").stdout)
            except llamacpp.LlamaCppToolFailed as e:
                raise MLWQError(str(e)) from None
            write_json(res_path, {"command": llamacpp.short_cmd(cmd), "load_before": load_before,
                                  "busy_after": round(busy_share(), 3), "raw": raw})
        data = json.loads(res_path.read_text())
        by_file = {str(e.path.resolve()): e for e in entries}
        for rec in data["raw"]:
            e = by_file[str(Path(rec["model_filename"]).resolve())]
            kind = "pp" if rec["n_prompt"] > 0 else "tg"
            e.bench[kind] = {"avg_ts": rec["avg_ts"], "stddev_ts": rec["stddev_ts"]}
        data.pop("raw")
        return data


# ---------------------------------------------------------------- report

def pareto(entries: list[Entry]) -> set[str]:
    """Names of the entries no other entry beats on both linear bits per weight and perplexity."""
    pts = [(e.name, e.sizes["bpw_linear"], e.ppl["ppl"]) for e in entries if e.ppl and e.family != "reference"]
    front = set()
    for n, b, p in pts:
        if not any((b2 <= b and p2 <= p) and (b2 < b or p2 < p) for _, b2, p2 in pts):
            front.add(n)
    return front


def verdict(entries: list[Entry], lo: float = 3.0, hi: float = 4.5) -> list[str]:
    """The issue's question in words: in [lo, hi] bits, is each MLWQ file better than every llama.cpp
    type with equal or fewer bits?"""
    lines = []
    for e in (x for x in entries if x.family == "mlwq" and x.ppl):
        b = e.sizes["bpw_linear"]
        where = "" if lo <= b <= hi else f" [outside {lo}-{hi} bits/w]"
        beaten_by = [x for x in entries if x.family == "llama.cpp" and x.ppl
                     and x.sizes["bpw_linear"] <= b and x.ppl["ppl"] < e.ppl["ppl"]]
        fewer = [x for x in entries if x.family == "llama.cpp" and x.ppl and x.sizes["bpw_linear"] <= b]
        more = sorted((x for x in entries if x.family == "llama.cpp" and x.ppl and x.sizes["bpw_linear"] > b),
                      key=lambda x: x.sizes["bpw_linear"])
        kld = f", KLD {e.ppl['kld_mean']:.4f}" if "kld_mean" in e.ppl else ""
        head = f"- {e.name} ({b:.3f} bits/w, PPL {e.ppl['ppl']:.2f}{kld}){where}"
        if beaten_by:
            lines.append(f"{head} is NOT on the Pareto front: "
                         + ", ".join(f"{x.name} has {x.sizes['bpw_linear']:.3f} bits/w and PPL {x.ppl['ppl']:.2f}"
                                     for x in beaten_by) + ".")
        elif fewer:
            lines.append(f"{head}: lower perplexity than every llama.cpp type with equal or fewer bits per weight ("
                         + ", ".join(x.name for x in fewer) + ").")
        elif more:
            m = more[0]
            lines.append(f"{head}: no llama.cpp file of this model has this few bits per weight, so nothing beats "
                         f"it on both axes; the smallest, {m.name}, has {m.sizes['bpw_linear']:.3f} bits/w and PPL "
                         f"{m.ppl['ppl']:.2f} ({m.ppl['ppl'] / e.ppl['ppl']:.2f}x this perplexity"
                         + (f", KLD {m.ppl['kld_mean']:.4f}" if "kld_mean" in m.ppl else "") + ").")
        else:
            lines.append(f"{head}: no llama.cpp file to compare with.")
    return lines


def linear_types(sizes: dict) -> str:
    """ggml types of the linear layers by tensor count, e.g. "Q4_0 180, Q3_K 30" (shows fallbacks)."""
    count: dict[str, int] = {}
    for per_role in sizes["linear_types"].values():
        for t, n in per_role.items():
            count[t] = count.get(t, 0) + n
    return ", ".join(f"{t} {n}" for t, n in sorted(count.items(), key=lambda kv: -kv[1]))


def table_rows(entries: list[Entry], front: set[str]) -> list[dict]:
    ref = next((e.ppl["ppl"] for e in entries if e.family == "reference" and e.ppl), None)
    # whole-file bits over the model's weights (the reference's): a file that adds a tensor, as a
    # rotated tied model's own head, is charged its bytes and not credited its elements
    weights = next((e.sizes["n_weights"] for e in entries if e.family == "reference"), None)
    rows = []
    for e in sorted(entries, key=lambda x: (x.family != "reference", x.sizes.get("bpw_linear", 99))):
        s = e.sizes
        bpw_file = 8 * s["file_bytes"] / weights if weights else s["bpw_file"]
        rows.append({
            "name": e.name, "family": e.family, "target_bits": e.target_bits,
            "file_mb": round(s["file_bytes"] / 1e6, 3), "bpw_file": round(bpw_file, 4),
            "bpw_linear": round(s["bpw_linear"], 4), "token_embd": s["token_embd_type"],
            "linear_types": linear_types(s),
            "ppl": e.ppl.get("ppl"), "ppl_pm": e.ppl.get("pm"),
            "ppl_vs_f16": round(e.ppl["ppl"] / ref, 4) if ref and e.ppl else None,
            "kld_mean": e.ppl.get("kld_mean", 0.0 if e.family == "reference" and e.ppl else None),
            "kld_p99": e.ppl.get("kld_p99"), "same_top_pct": e.ppl.get("same_top_pct"),
            "pp_ts": round(e.bench["pp"]["avg_ts"], 2) if "pp" in e.bench else None,
            "tg_ts": round(e.bench["tg"]["avg_ts"], 2) if "tg" in e.bench else None,
            "pareto": e.name in front, "file": str(e.path), "key": e.key, "made_by": e.how,
        })
    return rows


def markdown(rows: list[dict], run: Run, bench_info: dict | None, verdict_lines: list[str]) -> str:
    a = run.args
    tg_ref = next((r["tg_ts"] for r in rows if r["name"] == "Q3_K_S"), None)
    lines = [f"# {run.stem}: quantizations compared", "",
             f"Perplexity: `llama-perplexity -c {a.ctx}" + (f" --chunks {a.chunks}" if a.chunks else "")
             + f"` on {Path(a.eval_text).name}. Calibration (imatrix and ours): {a.nsamples} x {a.seqlen} tokens of "
             f"{Path(a.calib).name}. Bits per weight from the bytes of each file (linear = attention and MLP "
             "weights with all their scales, headers and permutations; file = all bytes over the model's "
             "weights, those of the F16 reference). Files added with --add were quantized elsewhere: "
             "their names say how.", ""]
    if bench_info:
        lines += [f"Speed: `{bench_info['command']}` (one run, all files; load before: {bench_info['load_before']}).", ""]
    lines += ["| model | family | linear layers (tensors per ggml type) | file (MB) | bits/w linear | bits/w file | PPL "
              "| × F16 | mean KLD | KLD p99 | same top % | pp t/s | tg t/s | tg ÷ Q3_K_S | Pareto |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ppl = f"{r['ppl']:.3f} ± {r['ppl_pm']:.3f}" if r["ppl"] else "-"
        rel_tg = f"{r['tg_ts'] / tg_ref:.2f}" if r["tg_ts"] and tg_ref else "-"
        kld = (f"{r['kld_mean']:.4f} | {r['kld_p99']:.3f} | {r['same_top_pct']:.2f}" if r.get("kld_p99") is not None
               else "- | - | -")
        lines.append(f"| {r['name']} | {r['family']} | {r['linear_types']} | {r['file_mb']:.2f} | {r['bpw_linear']:.3f} | {r['bpw_file']:.3f} "
                     f"| {ppl} | {r['ppl_vs_f16'] or '-'} | {kld} | {r['pp_ts'] or '-'} | {r['tg_ts'] or '-'} | {rel_tg} "
                     f"| {'yes' if r['pareto'] else ''} |")
    lines += ["", "## MLWQ against llama.cpp's types at 3-4.5 bits per weight", ""] + verdict_lines
    return "\n".join(lines) + "\n"


def plot_pareto(rows: list[dict], front: set[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"llama.cpp": ("tab:blue", "o"), "rtn": ("tab:gray", "v"), "gptq": ("tab:orange", "s"),
             "mlwq": ("tab:red", "D")}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:                     # F16 sits at 16 bits: a line keeps the axis on the quantized range
        if r["family"] == "reference" and r["ppl"]:
            ax.axhline(r["ppl"], color="black", linestyle="--", linewidth=1, label=f"{r['name']} reference")
    for fam, (color, marker) in style.items():
        pts = [r for r in rows if r["family"] == fam and r["ppl"]]
        if not pts:
            continue
        pts.sort(key=lambda r: r["bpw_linear"])
        ax.plot([r["bpw_linear"] for r in pts], [r["ppl"] for r in pts], marker=marker, color=color,
                linestyle="-" if fam in ("rtn", "gptq", "mlwq") else "none", label=fam, markersize=7)
        for r in pts:
            ax.annotate(r["name"], (r["bpw_linear"], r["ppl"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    fr = sorted((r for r in rows if r["name"] in front), key=lambda r: r["bpw_linear"])
    ax.step([r["bpw_linear"] for r in fr], [r["ppl"] for r in fr], where="post", color="green", alpha=0.4,
            linewidth=3, label="Pareto front")
    ax.set_xlabel("true bits per weight of the linear layers (from the file's bytes)")
    ax.set_ylabel("perplexity (llama-perplexity, wiki.test.raw), log scale")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, res: dict, run) -> None:
    """results.json, results.csv, results.md and pareto.png of a results set (rows marked "pareto")."""
    rows = res["rows"]
    write_json(out / "results.json", res)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "results.md").write_text(markdown(rows, run, res["bench"], res["verdict"]))
    if any(r["ppl"] for r in rows):
        front = {r["name"] for r in rows if r["pareto"]}
        plot_pareto(rows, front, out / "pareto.png", f"{run.stem}: perplexity vs bits per weight")


ROLE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def plot_allocation(entries: list[Entry], path: Path) -> None:
    """Per MLWQ file: BPLL width of every layer across the blocks (heat map), and the share of
    columns in each tier width per block (stacked bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ml = [e for e in entries if e.family == "mlwq" and e.allocation]
    if not ml:
        return
    fig, axes = plt.subplots(len(ml), 2, figsize=(13, 2.8 * len(ml)), squeeze=False)
    for row, e in zip(axes, ml):
        layers = e.allocation
        blocks = sorted({int(m.group(1)) for k in layers if (m := re.search(r"\.(\d+)\.", k))})
        roles = [r for r in ROLE_ORDER if any(k.endswith(r) for k in layers)] or sorted({k.rsplit(".", 1)[-1] for k in layers})
        grid = np.full((len(roles), len(blocks)), np.nan)
        tier_cols: dict[int, np.ndarray] = {}
        for k, v in layers.items():
            m = re.search(r"\.(\d+)\.", k)
            if not m:
                continue
            bi = blocks.index(int(m.group(1)))
            role = k.rsplit(".", 1)[-1]
            if role in roles:
                grid[roles.index(role), bi] = v["bpll_width"]
            rows_, _ = v["shape"]
            for bits, cols in v["tiers"]:
                tier_cols.setdefault(int(bits), np.zeros(len(blocks)))[bi] += cols * rows_
        im = row[0].imshow(grid, aspect="auto", cmap=plt.get_cmap("viridis", 5), vmin=0.5, vmax=5.5)
        row[0].set_yticks(range(len(roles)), roles, fontsize=7)
        row[0].set_xticks(range(len(blocks)), blocks, fontsize=6)
        row[0].set_title(f"{e.name}: BPLL width per layer", fontsize=9)
        fig.colorbar(im, ax=row[0], label="bits")
        total = sum(tier_cols.values())
        bottom = np.zeros(len(blocks))
        for bits in sorted(tier_cols):
            share = tier_cols[bits] / np.maximum(total, 1)
            row[1].bar(blocks, share, bottom=bottom, label=f"{bits}-bit", width=0.85)
            bottom += share
        row[1].set_ylim(0, 1)
        row[1].set_title(f"{e.name}: share of weights per tier width, per block", fontsize=9)
        row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        row[1].set_xlabel("block")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ablation(args, out: Path) -> str:
    """The paper's ablation on the PyTorch side (GPTQ-protocol perplexity), one JSON per config from
    tools/bench_pipeline.py; configs whose JSON is already in the directory are not run again."""
    from tools import bench_pipeline

    dirs = [Path(x) for x in args.ablation_dir.split(",")] if args.ablation_dir else [out / "ablation"]
    names = ["ref"] + [n for n, _ in ABLATION]

    def found(n):
        return next((d / f"{n}.json" for d in dirs if (d / f"{n}.json").exists()), None)
    todo = [n for n in names if found(n) is None]
    if todo and args.ablation_dir:
        raise MLWQError(f"{args.ablation_dir} lacks the results of {', '.join(todo)} "
                        "(leave out --ablation-dir to run them)")
    if todo:
        log(f"ablation: running {', '.join(todo)} (PyTorch, GPTQ protocol) into {dirs[0]}")
        bench_pipeline.run(todo, resolve_model(args.model), dirs[0],
                           args.nsamples, args.seqlen, args.ablation_windows, args.device, args.calib)
    rows = {n: json.loads(found(n).read_text()) for n in names}
    d = ", ".join(str(x) for x in dirs)
    ref = rows["ref"]["perplexity"]
    first = rows[ABLATION[0][0]]
    lines = [f"# Ablation (PyTorch, GPTQ-protocol perplexity on wiki.test.raw; {first['nsamples']} x "
             f"{first['seqlen']} calibration tokens on {first['device']} ({first.get('gpu', '')}), {first['date']})", "",
             f"Reference (float): {ref:.3f}. Results: {d}.", "",
             "| configuration | BPLL | MQSA | TQP | bits/w linear | PPL | × reference |", "|---|---|---|---|---|---|---|"]
    for n, label in ABLATION:
        r = rows[n]
        on = {"BPLL": "abl_mqsa_tqp" != n, "MQSA": n != "abl_bpll_tqp", "TQP": n != "abl_bpll_mqsa"}
        bpll = "KL" if n == "abl_kl" else ("rel. Dist" if n == "mlwq3_rel" else ("Dist" if on["BPLL"] else "-"))
        lines.append(f"| {label} | {bpll} | {'yes' if on['MQSA'] else '-'} | {'yes' if on['TQP'] else '-'} "
                     f"| {r['bits_per_weight']:.3f} | {r['perplexity']:.3f} | {r['perplexity'] / ref:.3f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="GGUF file of the model, or a named model: "
                                 + ", ".join(f"{n} ({m.description})" for n, m in MODELS.items())
                                 + "; default = smollm2-135m")
    p.add_argument("--embedding-type", default=None,
                   help="token_embd type of every file but the reference (e.g. Q8_0, Q5_0, Q4_0; default: what "
                        "llama-quantize picks, and the source's for ours)")
    p.add_argument("--add", action="append", default=[], metavar="NAME=PATH",
                   help="also measure this GGUF under NAME (repeatable), e.g. an MLWQ file quantized on a GPU")
    p.add_argument("--out", default=None, help="working and result directory (default runs/compare/<model>)")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma list of {', '.join(STEPS)} (default all; measurements reuse stored results)")
    p.add_argument("--types", default=",".join(LLAMA_TYPES), help="llama-quantize types (default %(default)s)")
    p.add_argument("--methods", default=",".join(OUR_METHODS), help="our methods (default %(default)s)")
    p.add_argument("--bits", default=",".join(f"{b:g}" for b in OUR_BITS), help="our average code bits")
    p.add_argument("--no-imatrix", action="store_true", help="llama.cpp types without an importance matrix")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default 128 on a GPU, 32 on a CPU)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default 2048 on a GPU, 512 on a CPU)")
    p.add_argument("--tqp-steps", type=int, default=None, help="TQP Adam steps (default 50 on a GPU, 20 on a CPU)")
    p.add_argument("--sensitivity-windows", type=int, default=QuantConfig.sensitivity_windows,
                   help="calibration windows of BPLL's sensitivity pass (default %(default)s)")
    p.add_argument("--sensitivity-labels", choices=SENSITIVITY_LABELS, default=QuantConfig.sensitivity_labels,
                   help="next tokens of BPLL's sensitivity pass: drawn from the float model (default), or "
                        "the calibration text's (files named '... text-labels')")
    p.add_argument("--block-tune-steps", default="0",
                   help="MLWQ files with block-output reconstruction of these step counts, comma list "
                        "(default 0 = off; e.g. 0,50 makes both, named 'MLWQ 3' and 'MLWQ 3 bt50')")
    p.add_argument("--calib", default=str(CALIBRATION_TEXT), help="calibration text (default wiki.valid.tokens)")
    p.add_argument("--eval-text", default=str(EVAL_TEXT), help="perplexity text (default wiki.test.raw)")
    p.add_argument("--ctx", type=int, default=512, help="llama-perplexity context (default 512)")
    p.add_argument("--chunks", type=int, default=40, help="llama-perplexity chunks, 0 = the whole text (default 40)")
    p.add_argument("--no-kld", action="store_true",
                   help="perplexity only, no KL divergence to the F16 reference (which needs its log-probabilities "
                        "on disk: about 1 GB for 40 chunks of a 49k vocabulary)")
    p.add_argument("--pp", type=int, default=128, help="llama-bench prompt tokens")
    p.add_argument("--tg", type=int, default=64, help="llama-bench generated tokens")
    p.add_argument("--reps", type=int, default=3, help="llama-bench repetitions")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--quiet-wait", type=float, default=600,
                   help="before llama-bench, wait up to this many seconds for other work to stop (default 600)")
    p.add_argument("--device", default=None, help="device for our quantization (default cuda if present)")
    p.add_argument("--max-blocks", type=int, default=None, help="work on the model's first N blocks (tests)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep our PyTorch checkpoints after export")
    p.add_argument("--ablation", action="store_true", help="also the PyTorch-side ablation table (ablation.md)")
    p.add_argument("--ablation-dir", default=None,
                   help="render the ablation from tools/bench_pipeline.py JSONs already in these directories "
                        "(comma list)")
    p.add_argument("--ablation-windows", type=int, default=None, help="GPTQ-protocol windows for the ablation")
    a = p.parse_args(argv)
    from mlwq.api import default_device
    a.device = a.device or default_device()
    gpu = a.device.startswith("cuda")
    a.nsamples = a.nsamples or (128 if gpu else 32)
    a.seqlen = a.seqlen or (2048 if gpu else 512)
    a.tqp_steps = a.tqp_steps or (50 if gpu else 20)
    a.steps = [s for s in a.steps.split(",") if s]
    a.types = [t for t in a.types.split(",") if t]
    a.methods = [m for m in a.methods.split(",") if m]
    a.bits = [float(b) for b in a.bits.split(",") if b]
    a.block_tune_steps = [int(t) for t in a.block_tune_steps.split(",") if t]
    if any("=" not in x for x in a.add):
        p.error("--add takes NAME=PATH")
    a.add = [(x.split("=", 1)[0], Path(x.split("=", 1)[1])) for x in a.add]
    bad = [s for s in a.steps if s not in STEPS] + [m for m in a.methods if m not in OUR_METHODS]
    if bad:
        p.error(f"unknown steps or methods: {bad}")
    if a.out is None:
        name = model_key(a.model) or Path(a.model).stem
        a.out = str(ROOT / "runs" / "compare" / name)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return compare(args)
    except MLWQError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def compare(args) -> int:
    run = Run(args)
    steps = set(args.steps)
    log(f"model {run.source} -> {run.out} (device {args.device}, calibration {args.nsamples} x {args.seqlen}, "
        f"{args.threads} threads)")
    # a step left out makes nothing, but the files it made before are measured and reported
    ref = run.reference()
    make_llama = "llamacpp" in steps
    im = None if args.no_imatrix or not args.types else run.imatrix(ref, make=make_llama)
    entries = [ref] + run.llamacpp(ref, im, make=make_llama)
    entries += run.ours(make="ours" in steps) + run.added()
    for e in tqdm(entries, desc="sizes", leave=False):
        run.sizes(e)
    base = None if args.no_kld else run.kld_base(ref, make="ppl" in steps)
    for e in tqdm(entries, desc="perplexity (files)", unit="file", disable="ppl" not in steps):
        run.ppl(e, base, make="ppl" in steps)
    bench_info = run.bench(entries, make="bench" in steps)
    if "report" not in steps:
        return 0
    front = pareto(entries)
    rows = table_rows(entries, front)
    out = run.out
    write_results(out, {"model": str(run.source), "model_sha256": run.src_sha, "args": vars(args),
                        "bench": bench_info, "rows": rows, "verdict": verdict(entries)}, run)
    plot_allocation(entries, out / "allocation.png")
    if args.ablation or args.ablation_dir:
        (out / "ablation.md").write_text(ablation(args, out))
    log(f"wrote {out}/results.md, results.csv, results.json, pareto.png, allocation.png")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
