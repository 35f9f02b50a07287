"""Static cost of the MLWQ NEON dot products next to llama.cpp's Q4_0 and Q3_K, by LLVM's machine-code
analyzer (llvm-mca). A PROXY, NOT A TIMING: llvm-mca schedules the instructions of one loop iteration
on a model of the core (dispatch width, pipes, latencies) assuming every load hits L1 and every branch
is predicted; memory bandwidth, caches and the rest of the model are outside it.

    python ggml_patch/tools/arm_mca.py                # prints the tables (markdown)
    python ggml_patch/tools/arm_mca.py --write        # and puts them into docs/results/arm-neon/README.md
                                                      # (between the arm_mca markers)

What is compiled (clang --target=aarch64-linux-gnu -O3 -mcpu=CPU -S, the same flags for all):
  - llama.cpp's own ggml/src/ggml-cpu/arch/arm/quants.c of the patched tree (ggml_patch/arm_check.sh
    --tree): ggml_vec_dot_q4_0_q8_0 (NEON loop: 2 blocks of 32 = 64 weights an iteration) and
    ggml_vec_dot_q3_K_q8_K (one super-block of 256 weights an iteration);
  - ggml_patch/tools/arm_mca_kernels.c: the loop of mlwq_tile_neon (mlwq-cpu.c, included as is) for one
    block width W at a time (1 row x 1 column = vec_dot, 2x2 = vec_dot with nrows = 2; 4x1 and 4x4 = ggml_mlwq_gemm's tiles).
The innermost loop of each function is cut out of the assembly (clang's "Loop Header" comments: the
blocks of the depth-1 loop with the most multiply instructions; the script refuses a loop with a nested loop
or with an unexpected number of multiply instructions, which would mean a different unrolling) and
given to llvm-mca -mcpu=CPU. Reported: Total Cycles / Iterations, scaled to 64 weights (and per row x
column for the tiles).

CPUs: cortex-a72 (Raspberry Pi 4: ARMv8.0, no dotprod, so the plain-NEON paths are compiled),
cortex-a76 (Raspberry Pi 5; dotprod) and neoverse-n1 (the A76's server sibling; dotprod). Note that
LLVM has no Cortex-A72 or Cortex-A76 scheduling model of its own: both are scheduled with its
Cortex-A57 model (3-wide), in LLVM 14 and 19 alike; Neoverse-N1 has its own model from LLVM 16 on
(llvm-mca-19: Debian's llvm-19 package; the script takes the newest llvm-mca-NN it finds, or
LLVM_MCA=...). The compiler is `clang` (CLANG=... to change it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
README = ROOT / "docs" / "results" / "arm-neon" / "README.md"
BEGIN, END = "<!-- arm_mca:begin -->", "<!-- arm_mca:end -->"

CPUS = ["cortex-a72", "cortex-a76", "neoverse-n1"]
WIDTHS = range(1, 9)
TILES = [(1, 1), (2, 2), (4, 1), (4, 4)]
MUL_RE = re.compile(r"^\s*(sdot|smull2?|smlal2?|udot|smmla)\b")


def find_mca() -> str:
    if os.environ.get("LLVM_MCA"):
        return os.environ["LLVM_MCA"]
    for v in range(30, 13, -1):
        if shutil.which(f"llvm-mca-{v}"):
            return f"llvm-mca-{v}"
    if shutil.which("llvm-mca"):
        return "llvm-mca"
    sys.exit("llvm-mca not found: apt-get install llvm-19 (or llvm, with clang)")


def tree() -> Path:
    r = subprocess.run(["bash", str(ROOT / "ggml_patch" / "arm_check.sh"), "--tree"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"arm_check.sh --tree failed:\n{r.stderr}")
    return Path(r.stdout.strip().splitlines()[-1])


def compile_s(clang: str, src: Path, cpu: str, llama: Path, out: Path) -> str:
    inc = [f"-I{llama / 'ggml' / 'include'}", f"-I{llama / 'ggml' / 'src'}", f"-I{llama / 'ggml' / 'src' / 'ggml-cpu'}"]
    cmd = [clang, "--target=aarch64-linux-gnu", "-O3", f"-mcpu={cpu}", "-w", *inc, "-S", str(src), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return out.read_text()


# loops with a nested loop of a known trip count: the nest is cut as one outer iteration
INNER_TRIPS = {"ggml_vec_dot_q3_K_q8_K": 2}     # for (j = 0; j < QK_K/128; ++j), when clang keeps it a loop


def loop_body(asm: str, func: str) -> list[str]:
    """Instructions of one iteration of the depth-1 loop of `func` with the most multiply instructions,
    from clang's loop comments. A nested loop (only where INNER_TRIPS knows its trip count t) is laid
    out as t copies of its header block with its other blocks between them (t - 1 times: the body of a
    rotated loop whose header holds the work, e.g. Q3_K's `if (j == 0)` shift)."""
    lines = asm.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith(f"{func}:")), None)
    if start is None:
        sys.exit(f"{func} not found in the assembly")
    # blocks: [label, depth, top-level header, innermost header, is a header, instructions]
    blocks: list[dict] = []
    cur = {"label": "entry", "comments": "", "body": []}
    for line in lines[start + 1:]:
        if line.startswith(".Lfunc_end"):
            break
        m = re.match(r"^(\.LBB\w+|// %bb\.\d+):?\s*(//.*)?$", line)
        if m:
            blocks.append(cur)
            # ".LBB3_2" is "BB3_2" in the loop comments
            cur = {"label": re.sub(r"^\.L", "", m.group(1)), "comments": m.group(2) or "", "body": []}
            continue
        if re.match(r"^\s+//", line) and not cur["body"]:
            cur["comments"] += " " + line.strip()      # loop comments continue on the next lines
            continue
        t = line.split("//")[0].strip()
        if not t or t.startswith(".") or t.endswith(":"):
            continue
        cur["body"].append(t)
    blocks.append(cur)
    top = None
    for b in blocks:
        c = b["comments"]
        h = re.search(r"Loop Header: Depth=(\d+)", c)
        i = re.search(r"in Loop: Header=(\w+) Depth=(\d+)", c)
        p = re.search(r"Parent Loop (\w+) Depth=1", c)
        b["header"] = bool(h)
        if h and h.group(1) == "1":
            top = b["label"]
            b["depth"], b["top"], b["inner"] = 1, top, top
        elif h:
            b["depth"], b["top"], b["inner"] = int(h.group(1)), (p.group(1) if p else top), b["label"]
        elif i:
            b["depth"], b["inner"] = int(i.group(2)), i.group(1)
            b["top"] = i.group(1) if b["depth"] == 1 else (p.group(1) if p else top)
        else:
            b["depth"], b["top"], b["inner"] = 0, None, None
        if b["depth"] > 2:
            sys.exit(f"{func}: loops nested {b['depth']} deep at {b['label']}")
    nests: dict[str, list[dict]] = {}
    for b in blocks:
        if b["depth"] >= 1:
            nests.setdefault(b["top"], []).append(b)
    if not nests:
        sys.exit(f"{func}: no loop found")
    nest = max(nests.values(), key=lambda bs: (sum(1 for b in bs for s in b["body"] if MUL_RE.match(s)),
                                               sum(len(b["body"]) for b in bs)))
    inner = [b for b in nest if b["depth"] == 2]
    if not inner:
        return [s for b in nest for s in b["body"]]
    if func not in INNER_TRIPS:
        sys.exit(f"{func}: nested loop at {inner[0]['label']} with no known trip count")
    trips = INNER_TRIPS[func]
    head = [s for b in inner if b["header"] for s in b["body"]]
    rest = [s for b in inner if not b["header"] for s in b["body"]]
    unrolled = (head + rest) * (trips - 1) + head
    out, placed = [], False
    for b in nest:
        if b["depth"] == 2:
            if not placed:
                out += unrolled
                placed = True
        else:
            out += b["body"]
    return out


def mca(tool: str, cpu: str, body: list[str], work: Path) -> float:
    """cycles per loop iteration (Total Cycles / Iterations) at steady state."""
    f = work / "loop.s"
    f.write_text("\n".join(body) + "\n")
    r = subprocess.run([tool, "-mtriple=aarch64-linux-gnu", f"-mcpu={cpu}", "-iterations=400", str(f)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"llvm-mca failed for {cpu}:\n{r.stderr[-3000:]}")
    it = int(re.search(r"^Iterations:\s+(\d+)", r.stdout, re.M).group(1))
    cyc = int(re.search(r"^Total Cycles:\s+(\d+)", r.stdout, re.M).group(1))
    return cyc / it


def check_muls(func: str, body: list[str], weights: int, dotprod: bool) -> None:
    """sdot does 16 products, smull/smlal 8: the count says how many weights one iteration covers."""
    n = sum(1 for s in body if MUL_RE.match(s))
    want = weights // 16 if dotprod else weights // 8
    # Q3_K and MLWQ width 8 add sums of the activations (mlwq: 2 dot products per half, by ones)
    if n < want:
        sys.exit(f"{func}: {n} multiply instructions in the loop, expected >= {want} for {weights} weights "
                 f"(unrolled differently?)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write the tables into {README.relative_to(ROOT)}")
    args = ap.parse_args()
    clang = os.environ.get("CLANG", "clang")
    tool = find_mca()
    llama = tree()
    quants = llama / "ggml" / "src" / "ggml-cpu" / "arch" / "arm" / "quants.c"
    kernels = HERE / "arm_mca_kernels.c"
    # the kernels file includes mlwq-cpu.c: the one of this checkout (arm_check.sh --tree synced it)
    res: dict[tuple[str, str], float] = {}
    loops_len: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory(prefix="arm-mca-") as tmp:
        work = Path(tmp)
        for cpu in CPUS:
            dotprod = cpu != "cortex-a72"
            qa = compile_s(clang, quants, cpu, llama, work / f"quants-{cpu}.s")
            ka = compile_s(clang, kernels, cpu, llama, work / f"kernels-{cpu}.s")
            for name, func, weights in (("Q4_0", "ggml_vec_dot_q4_0_q8_0", 64), ("Q3_K", "ggml_vec_dot_q3_K_q8_K", 256)):
                body = loop_body(qa, func)
                check_muls(func, body, weights, dotprod)
                res[(name, cpu)] = mca(tool, cpu, body, work) * 64 / weights
                loops_len[(name, cpu)] = len(body)
            for w in WIDTHS:
                for nr, nc in TILES:
                    func = f"mca_mlwq_w{w}_{nr}x{nc}"
                    body = loop_body(ka, func)
                    check_muls(func, body, 64 * nr * nc, dotprod)
                    res[(f"w{w}_{nr}x{nc}", cpu)] = mca(tool, cpu, body, work) / (nr * nc)
                    loops_len[(f"w{w}_{nr}x{nc}", cpu)] = len(body)

    clang_v = subprocess.run([clang, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    mca_v = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    mca_v = re.search(r"LLVM version ([\w.]+)", mca_v).group(1) if "LLVM version" in mca_v else mca_v.strip()
    out = []
    host = platform.machine()
    try:
        host = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out.append(f"Made by `python ggml_patch/tools/arm_mca.py --write` on {datetime.date.today().isoformat()} "
               f"(host: {host}, {platform.system()}; the host does not matter: nothing runs on it); compiler: {clang_v} "
               f"(`--target=aarch64-linux-gnu -O3 -mcpu=CPU`); analyzer: {tool} (LLVM {mca_v}). "
               "Estimated cycles (llvm-mca Total Cycles / Iterations of the loop, steady state, L1 hits, "
               "perfect branch prediction): a static-analysis proxy, not a timing.")
    out.append("")
    out.append("**Dot product with q8_1/q8_0/q8_K activations, 1 row x 1 column (vec_dot): estimated cycles per 64 "
               "weights** (MLWQ: one 64-column block of width w; in parentheses: per weight relative to Q3_K)")
    out.append("")
    hdr = "| kernel | " + " | ".join(f"{c}{' (A57 model)' if c in ('cortex-a72', 'cortex-a76') else ''}" for c in CPUS) + " |"
    out.append(hdr)
    out.append("|---|" + "---|" * len(CPUS))
    out.append("| llama.cpp Q4_0 (4.5 bpw) | " + " | ".join(f"{res[('Q4_0', c)]:.1f} ({res[('Q4_0', c)] / res[('Q3_K', c)]:.2f})" for c in CPUS) + " |")
    out.append("| llama.cpp Q3_K (3.44 bpw) | " + " | ".join(f"{res[('Q3_K', c)]:.1f} (1.00)" for c in CPUS) + " |")
    for w in WIDTHS:
        k = f"w{w}_1x1"
        mark = "" if w > 4 or all(res[(k, c)] <= res[("Q3_K", c)] for c in CPUS) else " **over**"
        out.append(f"| MLWQ w={w} | " + " | ".join(f"{res[(k, c)]:.1f} ({res[(k, c)] / res[('Q3_K', c)]:.2f})" for c in CPUS) + f" |{mark}")
    out.append("")
    out.append("**Tiles: estimated cycles per 64 weights per row x column.** ggml_mlwq_gemm (llama.cpp calls it through "
               "llamafile_sgemm, the default on ARM without i8mm/SVE): 4x1 in generation (one activation column), 4x4 for "
               "prompts; vec_dot 2x2 (nrows = 2: mul_mat where llamafile_sgemm is off, as ggml does for i8mm/SVE builds)")
    out.append("")
    out.append("| width | " + " | ".join(f"{c} 4x1 | {c} 4x4 | {c} 2x2" for c in CPUS) + " |")
    out.append("|---|" + "---|---|---|" * len(CPUS))
    for w in WIDTHS:
        out.append(f"| w={w} | " + " | ".join(f"{res[(f'w{w}_4x1', c)]:.1f} | {res[(f'w{w}_4x4', c)]:.1f} | {res[(f'w{w}_2x2', c)]:.1f}"
                                           for c in CPUS) + " |")
    out.append("")
    out.append("Instructions in the analysed loops (per iteration): " + ", ".join(
        f"{k}: {loops_len[(k, 'neoverse-n1')]}" for k in ("Q4_0", "Q3_K", "w2_1x1", "w3_1x1", "w4_1x1")) + " (neoverse-n1 build).")
    text = "\n".join(out)
    print(text)
    if args.write:
        doc = README.read_text()
        if BEGIN not in doc or END not in doc:
            sys.exit(f"{README}: markers {BEGIN} / {END} missing")
        pre, rest = doc.split(BEGIN, 1)
        _, post = rest.split(END, 1)
        README.write_text(f"{pre}{BEGIN}\n{text}\n{END}{post}")
        print(f"\nwritten into {README.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
