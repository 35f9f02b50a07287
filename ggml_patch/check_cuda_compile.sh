#!/usr/bin/env bash
# Compile check of the MLWQ CUDA code without a GPU and without building all of ggml-cuda.
#
#   bash ggml_patch/check_cuda_compile.sh
#
# Takes llama.cpp's ggml/ from the pristine llama-cpp-python 0.3.36 sdist, applies the ggml/ part
# of ggml_patch/patches/*.patch, copies ggml_patch/src/ (as build.sh does) and compiles with nvcc:
#   - each of our ggml_patch/src/ggml/src/ggml-cuda/mlwq*.cu for sm_90 and sm_87 (machine code for
#     both); a warning in one of our mlwq*.cu/mlwq*.cuh fails the check
#   - the ggml-cuda files that 0002-cuda.patch touches (convert.cu, getrows.cu, mmvq.cu,
#     ggml-cuda.cu) for sm_90: the patch changes their host code only, and one architecture is
#     enough to catch a registration that no longer compiles
#   - ggml_patch/tests/test-mlwq-cuda.cpp, syntax only (it is built and run on a GPU machine)
# Objects are thrown away; nothing is linked or run.
#
# Environment: LLAMA_SRC (a pristine llama.cpp tree to use instead of the sdist), MLWQ_CACHE
# (default ~/.cache/mlwq; the sdist is looked for in $MLWQ_CACHE/dl as build.sh leaves it),
# MLWQ_SDIST (a local copy of the sdist), NVCC (default nvcc), MLWQ_JOBS (default 2).
# MLWQ_REGISTERS=1: also print ptxas's registers and spills per kernel of our mlwq*.cu (sm_90);
# MLWQ_SASS=1: also the number of SASS instructions per kernel of our mlwq*.cu (sm_90; needs
# cuobjdump: $CUOBJDUMP, else on PATH, e.g. from PyPI's nvidia-cuda-cuobjdump wheel);
# MLWQ_CU_SOURCE=path: compile a variant (a branch's, or a sed-edited one): path is a directory
# whose mlwq*.cu and mlwq*.cuh replace ours (and add to them), or one such file that replaces ours
# of the same name.
# A CUDA toolkit without cuBLAS headers gets ggml_patch/cuda_stub/ (declarations only).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/sdist.sh"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${MLWQ_CACHE:-$HOME/.cache/mlwq}"
NVCC="${NVCC:-nvcc}"
JOBS="${MLWQ_JOBS:-2}"
PY="${MLWQ_PYTHON:-python3}"

log() { printf '[mlwq-cuda-check] %s\n' "$*" >&2; }
die() { printf '[mlwq-cuda-check] error: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)

command -v "$NVCC" >/dev/null || die "nvcc not found (set NVCC)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mlwq-cuda-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
T="$WORK/llama.cpp"
mkdir -p "$T"

# ---- pristine ggml/ -------------------------------------------------------------------------
if [ -n "${LLAMA_SRC:-}" ]; then
    [ -d "$LLAMA_SRC/ggml/src/ggml-cuda" ] || die "LLAMA_SRC=$LLAMA_SRC has no ggml/src/ggml-cuda"
    cp -a "$LLAMA_SRC/ggml" "$T/"
    log "ggml/ from $LLAMA_SRC"
else
    SDIST=$(mlwq_sdist "$CACHE" "$PY")
    tar -xzf "$SDIST" -C "$WORK" --wildcards "llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp/ggml/*"
    mv "$WORK/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp/ggml" "$T/"
    log "ggml/ from $SDIST"
fi

# ---- the ggml/ part of our patches, then our sources ---------------------------------------
shopt -s nullglob
for p in "$HERE"/patches/*.patch; do
    # keep only the file sections under ggml/ (the rest patches llama, tools and gguf-py)
    "$PY" - "$p" > "$WORK/ggml-only.patch" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
parts = re.split(r"(?m)^(?=diff --git |--- a/)", text)
out = []
for part in parts:
    m = re.search(r"(?m)^--- a/(\S+)", part)
    if m and m.group(1).startswith("ggml/"):
        out.append(part)
sys.stdout.write("".join(out))
EOF
    if [ -s "$WORK/ggml-only.patch" ]; then
        patch -p1 --batch --forward --no-backup-if-mismatch -d "$T" < "$WORK/ggml-only.patch" >/dev/null \
            || die "$(basename "$p") (its ggml/ part) does not apply"
        log "applied the ggml/ part of $(basename "$p")"
    fi
done
shopt -u nullglob
(cd "$HERE/src" && find . -type f | LC_ALL=C sort) | while read -r f; do
    f="${f#./}"
    case "$f" in ggml/*) ;; *) continue ;; esac
    mkdir -p "$(dirname "$T/$f")"
    cp "$HERE/src/$f" "$T/$f"
done
CU="$T/ggml/src/ggml-cuda"
if [ -n "${MLWQ_CU_SOURCE:-}" ]; then
    if [ -d "$MLWQ_CU_SOURCE" ]; then
        shopt -s nullglob
        variant=("$MLWQ_CU_SOURCE"/mlwq*.cu "$MLWQ_CU_SOURCE"/mlwq*.cuh)
        shopt -u nullglob
    else
        variant=("$MLWQ_CU_SOURCE")
    fi
    [ "${#variant[@]}" -gt 0 ] || die "MLWQ_CU_SOURCE=$MLWQ_CU_SOURCE has no mlwq*.cu or mlwq*.cuh"
    for f in "${variant[@]}"; do
        case "$(basename "$f")" in mlwq*.cu|mlwq*.cuh) ;; *) die "MLWQ_CU_SOURCE: $f is not an mlwq*.cu or mlwq*.cuh" ;; esac
        cp "$f" "$CU/" || die "MLWQ_CU_SOURCE: cannot copy $f"
        log "$(basename "$f") from $f"
    done
fi

# ---- compile -------------------------------------------------------------------------------
INC=(-I"$T/ggml/include" -I"$T/ggml/src" -I"$T/ggml/src/ggml-cuda")
if ! echo '#include <cublas_v2.h>' | "$NVCC" -x cu -E - -o /dev/null >/dev/null 2>&1; then
    INC+=(-I"$HERE/cuda_stub")
    log "this CUDA toolkit has no cublas_v2.h: using ggml_patch/cuda_stub (compile only)"
fi
# the flags ggml's CMake passes to nvcc that matter for these files
NVFLAGS=(-std=c++17 -O3 -use_fast_math -extended-lambda -DGGML_USE_CUDA -DGGML_CUDA_USE_GRAPHS
         -DGGML_SCHED_MAX_COPIES=4 -DNDEBUG "${INC[@]}")

compile() { # name, then nvcc arguments
    local name=$1; shift
    local s=$(date +%s)
    if "$NVCC" "${NVFLAGS[@]}" "$@" -o "$WORK/$name.o" > "$WORK/$name.log" 2>&1; then
        # upstream headers have warnings of their own: only ours fail the check
        if grep -E '(^|[/ ])mlwq[-a-z0-9_]*\.cuh?[:(][0-9]+.*warning' "$WORK/$name.log" >/dev/null; then
            echo "FAIL $name (warnings in our mlwq*.cu/mlwq*.cuh)" > "$WORK/$name.status"
        else
            echo "ok   $name ($(( $(date +%s) - s )) s)" > "$WORK/$name.status"
        fi
    else
        echo "FAIL $name" > "$WORK/$name.status"
    fi
}

PTXAS_V=""
[ "${MLWQ_REGISTERS:-0}" = 1 ] && PTXAS_V="-Xptxas -v"
shopt -s nullglob
OURS=("$CU"/mlwq*.cu)
shopt -u nullglob
[ "${#OURS[@]}" -gt 0 ] || die "no mlwq*.cu in $CU"
JOBS_LIST=(
    "mmvq.cu|-gencode=arch=compute_90,code=sm_90 -c $CU/mmvq.cu"
)
for f in "${OURS[@]}"; do
    JOBS_LIST+=("$(basename "$f")|-gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_87,code=sm_87 -Xcompiler=-Wall,-Wextra $PTXAS_V -c $f")
done
JOBS_LIST+=(
    "getrows.cu|-gencode=arch=compute_90,code=sm_90 -c $CU/getrows.cu"
    "convert.cu|-gencode=arch=compute_90,code=sm_90 -c $CU/convert.cu"
    "ggml-cuda.cu|-gencode=arch=compute_90,code=sm_90 -c $CU/ggml-cuda.cu"
)
log "compiling ${#JOBS_LIST[@]} CUDA files with $JOBS jobs"
running=0
for job in "${JOBS_LIST[@]}"; do
    name="${job%%|*}"
    # shellcheck disable=SC2086
    compile "$name" ${job#*|} &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

s=$(date +%s)
if c++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror -I"$T/ggml/include" "$HERE/tests/test-mlwq-cuda.cpp" > "$WORK/test.log" 2>&1; then
    echo "ok   tests/test-mlwq-cuda.cpp syntax ($(( $(date +%s) - s )) s)" > "$WORK/test.status"
else
    echo "FAIL tests/test-mlwq-cuda.cpp syntax" > "$WORK/test.status"
fi

fail=0
for st in "$WORK"/*.status; do
    line=$(cat "$st")
    log "$line"
    case "$line" in
        FAIL*) fail=1; cat "$WORK/$(basename "$st" .status).log" >&2 ;;
    esac
done
if [ -n "$PTXAS_V" ]; then
    # ptxas -v: "Compiling entry function 'NAME' for 'sm_90'", then the spills, then "Used N registers"
    for f in "${OURS[@]}"; do
        "$PY" - "$WORK/$(basename "$f").log" <<'EOF'
import os, re, subprocess, sys
src = os.path.basename(sys.argv[1])[:-len(".log")]
cur = None
for line in open(sys.argv[1]):
    m = re.search(r"Compiling entry function '(\S+)' for 'sm_90'", line)
    if m:
        cur, spill = m.group(1), ""
        continue
    if cur and "spill" in line:
        spill = re.sub(r".*: *", "", line.strip())
    m = re.search(r"Used (\d+) registers", line)
    if cur and m:
        name = subprocess.run(["c++filt", cur], capture_output=True, text=True).stdout.strip()
        print(f"[mlwq-cuda-check] sm_90 {m.group(1):>3} registers ({spill})  {src}: {name.split('(')[0]}")
        cur = None
EOF
    done
fi
if [ "${MLWQ_SASS:-0}" = 1 ] && [ "$fail" = 0 ]; then
    CUOBJDUMP="${CUOBJDUMP:-cuobjdump}"
    command -v "$CUOBJDUMP" >/dev/null || die "MLWQ_SASS=1: cuobjdump not found (set CUOBJDUMP)"
    for f in "${OURS[@]}"; do
        "$CUOBJDUMP" -sass -arch sm_90 "$WORK/$(basename "$f").o" > "$WORK/$(basename "$f").sass" \
            || die "cuobjdump failed on $(basename "$f")"
        "$PY" - "$WORK/$(basename "$f").sass" "$(basename "$f")" <<'EOF'
import re, subprocess, sys
# a kernel's instructions: one "/*offset*/ OPCODE ...;" per line after its "Function : NAME" line
for part in re.split(r"\n\s*Function : ", open(sys.argv[1]).read())[1:]:
    mangled = part.split("\n", 1)[0].strip()
    count = len(re.findall(r"/\*[0-9a-f]{4,}\*/\s+[^;]*;", part))
    name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    print(f"[mlwq-cuda-check] sm_90 {count:>5} SASS instructions  {sys.argv[2]}: {name.split('(')[0]}")
EOF
    done
fi
log "done in $(( $(date +%s) - t0 )) s"
[ "$fail" = 0 ] || die "compile check failed"
echo "MLWQ CUDA compile check: OK ($(( $(date +%s) - t0 )) s)"
