"""Speed ratio of two GGUF files on a shared, noisy machine: many short paired llama-bench runs.

    python -m tools.bench_ratio A.gguf B.gguf [--rounds 12] [--threads 2] [--n 64] [--p 0] [--out DIR]

One llama-bench invocation times both files back to back (-r 3); a round's ratio A/B therefore
shares the machine's state of that moment, and the order alternates between rounds (A first, then
B first) so that a drift in time favours neither. Prints and writes (DIR/ratio.json, ratio.md)
every round's tokens/s and the median ratio with its quartiles: on this 2-core VM, whose
neighbours' load comes and goes, a single llama-bench figure varies by 10-20 % between runs, the
median of paired ratios far less. `--p N` times prompt processing of N tokens instead of generation.

Two builds or settings instead of two files: `--a-bin DIR` / `--b-bin DIR` (llama-bench of another
build, with its libraries) and `--a-args` / `--b-args` (more llama-bench arguments, e.g. "--repack 0");
A and B may then be the same file, and each round runs one llama-bench per side, in alternating order:

    python -m tools.bench_ratio M.gguf M.gguf --a-args="--repack 1" --b-args="--repack 0"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from exporters import llamacpp
from mlwq.resume import atomic_write_text


def llama_bench(bin_dir: Path | None) -> tuple[Path, dict[str, str]]:
    """llama-bench of bin_dir (default: our build) and the environment that gives it that build's libraries."""
    if not bin_dir:
        return llamacpp.tool_path("llama-bench"), llamacpp.tool_env()
    libs = os.pathsep.join(filter(None, [str(bin_dir), os.environ.get("LD_LIBRARY_PATH")]))
    return bin_dir / "llama-bench", dict(os.environ, LD_LIBRARY_PATH=libs)


def bench(files: list[Path], bin_dir: Path | None, extra: list[str], threads: int, n: int, p: int) -> dict[Path, float]:
    """llama-bench (-r 3) of the files, back to back, from bin_dir (default: our build): tokens/s by file."""
    exe, env = llama_bench(bin_dir)
    cmd = [str(exe)] + [a for f in files for a in ("-m", str(f))] + ["-t", str(threads), "-r", "3", "-o", "json"] + extra
    cmd += ["-p", str(p), "-n", "0"] if p else ["-p", "0", "-n", str(n)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"bench_ratio: error: {' '.join(cmd)} exited with {r.returncode}: {r.stderr[-1500:]}")
    return {Path(row["model_filename"]).resolve(): float(row["avg_ts"]) for row in json.loads(r.stdout)}


def one_round(a: Path, b: Path, first_a: bool, threads: int, n: int, p: int, sides: dict | None = None) -> dict[str, float]:
    if sides is None:   # one llama-bench for both files
        files = [a, b] if first_a else [b, a]
        by_file = bench(files, None, [], threads, n, p)
        return {"a": by_file[a.resolve()], "b": by_file[b.resolve()]}
    got = {}
    for key in ("a", "b") if first_a else ("b", "a"):
        f = a if key == "a" else b
        got[key] = bench([f], sides[key]["bin"], sides[key]["args"], threads, n, p)[f.resolve()]
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_ratio", description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="first GGUF file (the numerator of the ratio)")
    ap.add_argument("b", type=Path, help="second GGUF file (the denominator)")
    ap.add_argument("--rounds", type=int, default=12, help="paired llama-bench runs (default 12)")
    ap.add_argument("--threads", type=int, default=2, help="llama-bench -t (default 2)")
    ap.add_argument("--n", type=int, default=64, help="tokens generated per repetition (default 64)")
    ap.add_argument("--p", type=int, default=0, help="time prompt processing of this many tokens instead")
    ap.add_argument("--out", type=Path, help="directory for ratio.json and ratio.md")
    for side in ("a", "b"):
        ap.add_argument(f"--{side}-bin", type=Path, help=f"llama-bench of this build directory for {side.upper()}")
        ap.add_argument(f"--{side}-args", default="", help=f"more llama-bench arguments for {side.upper()} (e.g. \"--repack 0\")")
    args = ap.parse_args(argv)
    sides = None
    if args.a_bin or args.b_bin or args.a_args or args.b_args:
        sides = {s: {"bin": getattr(args, f"{s}_bin"), "args": shlex.split(getattr(args, f"{s}_args"))} for s in ("a", "b")}
        for s in ("a", "b"):
            if sides[s]["bin"] and not (sides[s]["bin"] / "llama-bench").is_file():
                raise SystemExit(f"no llama-bench in {sides[s]['bin']}")
    elif args.a.resolve() == args.b.resolve():
        raise SystemExit("A and B are the same file: give --a-args/--b-args or --a-bin/--b-bin to compare settings or builds")
    for f in (args.a, args.b):
        if not f.is_file():
            raise SystemExit(f"no such file: {f}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")

    test = f"pp{args.p}" if args.p else f"tg{args.n}"
    rounds = []
    for i in range(args.rounds):
        r = one_round(args.a, args.b, i % 2 == 0, args.threads, args.n, args.p, sides)
        r["ratio"] = r["a"] / r["b"]
        rounds.append(r)
        print(f"round {i + 1:2d}/{args.rounds}: {args.a.name} {r['a']:8.2f}  {args.b.name} {r['b']:8.2f}  "
              f"ratio {r['ratio']:.3f}", flush=True)
    ratios = sorted(r["ratio"] for r in rounds)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    result = {
        "a": str(args.a), "b": str(args.b), "test": test,
        **({"a_side": {k: str(v) if isinstance(v, Path) else v for k, v in sides["a"].items()},
            "b_side": {k: str(v) if isinstance(v, Path) else v for k, v in sides["b"].items()}} if sides else {}), "threads": args.threads, "rounds": rounds,
        "median_ratio": statistics.median(ratios), "q1": q[0], "q3": q[2],
        "median_a": statistics.median(r["a"] for r in rounds), "median_b": statistics.median(r["b"] for r in rounds),
        "command": " ".join([Path(sys.executable).name, "-m", "tools.bench_ratio"] + (argv if argv is not None else sys.argv[1:])),
    }
    summary = (f"{test}, {args.threads} threads, {args.rounds} paired rounds: {args.a.name} / {args.b.name} = "
               f"median {result['median_ratio']:.3f} (quartiles {result['q1']:.3f} - {result['q3']:.3f}); "
               f"median t/s {result['median_a']:.1f} / {result['median_b']:.1f}")
    print(summary)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "ratio.json", json.dumps(result, indent=1) + "\n")
        lines = [f"`{result['command']}`", "", summary, "", f"| round | {args.a.name} (t/s) | {args.b.name} (t/s) | ratio |",
                 "|---|---|---|---|"]
        lines += [f"| {i + 1} | {r['a']:.2f} | {r['b']:.2f} | {r['ratio']:.3f} |" for i, r in enumerate(rounds)]
        atomic_write_text(args.out / "ratio.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
