"""Load time of a GGUF through llama.cpp: wall time of short llama-bench processes, two sides alternating.

    python -m tools.bench_load A.gguf [B.gguf] [--a-bin DIR] [--b-bin DIR] [--a-args ARGS] [--b-args ARGS]
                               [--rounds 8] [--out DIR]

Each process is `llama-bench -m FILE -p 0 -n 1 -r 1 -t 1`: starting, loading the model (reading it,
and for MLWQ on x86 CPUs repacking its weights into 8-row groups), one warm-up and one token. The
token costs milliseconds, so the difference of two sides' times is the difference of their loads:
A with --repack 1 against --repack 0 gives what repacking costs at load, two builds (--a-bin,
--b-bin) what a change to it gives. Sides alternate (A first, then B first) so that a drift in the
machine's load favours neither; the file is read once before the first round so that every round
finds it in the page cache. Prints and writes (DIR/load.json, load.md) every round's seconds, the
medians and their ratio and difference.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mlwq.resume import atomic_write_text
from tools.bench_ratio import llama_bench


def load_seconds(f: Path, bin_dir: Path | None, extra: list[str]) -> float:
    """Wall time of one llama-bench process that loads f and generates one token."""
    exe, env = llama_bench(bin_dir)
    cmd = [str(exe), "-m", str(f), "-p", "0", "-n", "1", "-r", "1", "-t", "1", "-o", "json"] + extra
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench_load: error: {' '.join(cmd)} exited with {r.returncode}: {r.stderr[-1500:]}")
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="GGUF of side A")
    ap.add_argument("b", type=Path, nargs="?", help="GGUF of side B (default: A's)")
    ap.add_argument("--a-bin", type=Path, help="directory of side A's llama-bench (default: our build)")
    ap.add_argument("--b-bin", type=Path, help="directory of side B's llama-bench (default: our build)")
    ap.add_argument("--a-args", default="", help='more llama-bench arguments for A, e.g. "--repack 0"')
    ap.add_argument("--b-args", default="", help="more llama-bench arguments for B")
    ap.add_argument("--rounds", type=int, default=8, help="processes per side (default 8)")
    ap.add_argument("--out", type=Path, help="write load.json and load.md there")
    args = ap.parse_args(argv)
    b_file = args.b or args.a
    for f in (args.a, b_file):
        if not f.is_file():
            ap.error(f"{f}: no such file")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    sides = {"a": (args.a, args.a_bin, shlex.split(args.a_args)), "b": (b_file, args.b_bin, shlex.split(args.b_args))}
    for f in {args.a, b_file}:
        f.read_bytes()     # into the page cache: every round reads it from memory
    runs: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(args.rounds):
        for key in ("a", "b") if i % 2 == 0 else ("b", "a"):
            runs[key].append(load_seconds(*sides[key]))
        print(f"round {i + 1}/{args.rounds}: A {runs['a'][-1]:.3f} s, B {runs['b'][-1]:.3f} s", file=sys.stderr, flush=True)
    ma, mb = statistics.median(runs["a"]), statistics.median(runs["b"])
    res = {
        "a": {"file": str(args.a), "bin": str(args.a_bin or "our build"), "args": args.a_args, "seconds": runs["a"], "median": ma},
        "b": {"file": str(b_file), "bin": str(args.b_bin or "our build"), "args": args.b_args, "seconds": runs["b"], "median": mb},
        "ratio_a_over_b": ma/mb, "a_minus_b_seconds": ma - mb,
        "command": "python -m tools.bench_load " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
    }
    md = (f"| side | file | llama-bench | args | median s (min-max, {args.rounds} processes) |\n|---|---|---|---|---|\n"
          + "".join(f"| {k.upper()} | {Path(res[k]['file']).name} | {res[k]['bin']} | {res[k]['args'] or '-'} | "
                    f"{res[k]['median']:.3f} ({min(runs[k]):.3f}-{max(runs[k]):.3f}) |\n" for k in ("a", "b"))
          + f"\nA / B = {res['ratio_a_over_b']:.3f}, A - B = {res['a_minus_b_seconds']:+.3f} s\n")
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "load.json", json.dumps(res, indent=1) + "\n")
        atomic_write_text(args.out / "load.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
