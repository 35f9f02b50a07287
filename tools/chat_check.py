"""Simple questions through the patched llama-cli, scored: does each file still answer them?

    python -m tools.chat_check --out docs/results/llamacpp/llama-cli/check.md NAME=FILE.gguf [NAME=FILE.gguf ...]

One chat turn per question (the file's chat template), greedy, 80 tokens at most, the same
command for every file. An answer counts as correct when it contains one of the question's
accepted answers (regular expressions, case-insensitive, not inside a longer word or number); the transcripts are written beside the table so a
reader can check the scoring. A question the F16 reference gets wrong measures nothing about a
quantization: the table says which ones the first file (put the reference first) answers.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from exporters import llamacpp

# question, accepted answers: regular expressions, any one (case-insensitive, not inside a longer word or number)
QUESTIONS = [
    ("What is the capital of France?", ["Paris"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("What is the boiling point of water in Celsius?", ["one hundred", r"100(\.0+)?"]),
    ("What color is the sky on a clear day?", ["blue"]),
    ("What is the largest planet in our solar system?", ["Jupiter"]),
    ("Who wrote Romeo and Juliet?", ["Shakespeare"]),
    ("How many days are there in a week?", ["seven", "7"]),
    ("What is the chemical formula of water?", ["H2O", "H₂O"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("Which gas do plants take in from the air for photosynthesis?", ["carbon dioxide", "CO2", "CO₂"]),
    ("What is the freezing point of water in Celsius?", ["zero", r"0(\.0+)?"]),
    ("Give me three tips for staying healthy.", ["exercise", "sleep", "hydrated", "water", "diet"]),
]


def answer(model: Path, question: str, threads: int) -> tuple[str, str]:
    """(command as shown, the model's answer) for one greedy chat turn."""
    cmd = ["llama-cli", "-m", str(model), "-p", question, "-n", "80", "-st", "--simple-io",
           "--temp", "0", "-t", str(threads), "-c", "512"]
    run = subprocess.run([str(llamacpp.tool_path("llama-cli"))] + cmd[1:], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, env=llamacpp.tool_env(), timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"chat_check: error: llama-cli failed on {model} (exit {run.returncode}): "
                         f"{run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ''}")
    # the turn is printed after "> question"; llama-cli ends with a speed line and "Exiting"
    lines, on = [], False
    for line in run.stdout.splitlines():
        if line.startswith("> "):
            on = True
            continue
        if line.startswith("Exiting") or line.startswith("[ Prompt:"):
            on = False
        if on:
            lines.append(line)
    return llamacpp.short_cmd(cmd), "\n".join(lines).strip()


def correct(text: str, accepted: list[str]) -> bool:
    # "0" must not match inside "100" or "-18.0": no letter, digit, '.' or '-' right before or after
    return any(re.search(rf"(?<![\w.\-])(?:{a})(?![\w]|\.\d)", text, re.IGNORECASE) for a in accepted)


def named_file(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.gguf, got {spec!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    return name, Path(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=named_file, metavar="NAME=FILE.gguf",
                   help="the files to ask, the F16 reference first")
    p.add_argument("--out", type=Path, required=True, help="markdown file: score table and transcripts")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    results = {}   # name -> [(question, cmd, answer, ok)]
    for name, path in args.files:
        rows = []
        for q, accepted in QUESTIONS:
            cmd, text = answer(path, q, args.threads)
            rows.append((q, cmd, text, correct(text, accepted)))
            print(f"[{name}] {'ok ' if rows[-1][3] else 'NO '} {q} -> {text[:70]!r}", flush=True)
        results[name] = rows

    ref = args.files[0][0]
    ref_ok = [ok for _, _, _, ok in results[ref]]
    md = ["| file | correct | of those the reference answers |", "|---|---|---|"]
    for name, rows in results.items():
        ok = [r[3] for r in rows]
        both = sum(o and r for o, r in zip(ok, ref_ok))
        md.append(f"| {name} | {sum(ok)} / {len(ok)} | {both} / {sum(ref_ok)} |")
    md += ["", "| question | accepted | " + " | ".join(results) + " |",
           "|---|---|" + "---|" * len(results)]
    for i, (q, accepted) in enumerate(QUESTIONS):
        md.append(f"| {q} | {', '.join(accepted)} | "
                  + " | ".join("yes" if results[n][i][3] else "no" for n in results) + " |")
    for name, rows in results.items():
        md += ["", f"### {name}", ""]
        for q, cmd, text, ok in rows:
            md += ["```", f"$ {cmd}", f"> {q}", text or "(no answer)", "```",
                   f"{'correct' if ok else 'not correct'}", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(args.out)
    print("\n".join(md[:len(results) + 2]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
