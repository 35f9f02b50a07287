#!/usr/bin/env bash
# Cross-build the patched ggml for AArch64 and check the MLWQ NEON kernels under qemu-aarch64.
#
#   bash ggml_patch/arm_check.sh [--gguf FILE]... [--max-rows N] [--levels "armv8-a armv8.2-a+dotprod"]
#   bash ggml_patch/arm_check.sh --build      # build only; prints "LEVEL BINDIR QEMU_CPU" per level
#   bash ggml_patch/arm_check.sh --tree       # prints the patched vendor/llama.cpp (sources synced), no build
#
# For each ARM level (default: armv8-a, plain NEON as on a Raspberry Pi 4's Cortex-A72; and
# armv8.2-a+dotprod, vdotq_s32 as on a Pi 5's Cortex-A76), ggml is configured as ggml's own CMake
# picks ARM paths when cross-compiling (GGML_NATIVE=OFF, GGML_CPU_ARM_ARCH=LEVEL: -march=LEVEL, so
# __ARM_NEON / __ARM_FEATURE_DOTPROD choose the kernels at compile time), and only ggml-base and
# ggml-cpu are built (static, aarch64-linux-gnu-gcc), plus three check programs linked statically:
#   mlwq-check      ggml_patch/tools/mlwq-check.c (the x86 build's test driver, same source)
#   mlwq-exact      ggml_patch/tools/mlwq-exact.c: every kernel (vec_dot 1x1 and 2x2, ggml_mlwq_gemm
#                   with 1 and 2 threads) gives exactly the int32 sums of the portable C loop, block
#                   by block, and the float64 reference within float rounding
#   mlwq-fuzz-rows  ggml_patch/fuzz/fuzz_mlwq_rows.c + mlwq_fuzz_common.c without libFuzzer: runs the
#                   harness's checks (validators, to_float, unpacking, kernels) on given inputs
# Then, under qemu-aarch64 with a CPU model of that level (cortex-a72 has no dotprod, so a stray
# ARMv8.2 instruction in the armv8-a build dies with SIGILL; cortex-a76 for dotprod):
#   - mlwq-exact path: the build runs the NEON kernel ("neon", "neon-dotprod"), not the scalar loop;
#   - the fuzz seeds' row inputs (ggml_patch/fuzz/make_seeds.py): mlwq-exact seeds, mlwq-fuzz-rows;
#   - every MLWQ tensor of each --gguf FILE (e.g. an mlwq-export output): mlwq-exact rows, 5 columns,
#     the first --max-rows rows of each tensor (default: all);
#   - with clang installed, mlwq-exact-clang (mlwq-cpu.c compiled by clang, which takes the 4x4 tile
#     where GCC takes 4x2) on the seeds and rows too.
# The last line reads: "arm-check: levels=L inputs=I rows=R sums=S mismatches=0 failures=0".
#
# Cache: $MLWQ_CACHE/arm-<key>/ (default ~/.cache/mlwq; key: the sdist and our patches), holding the
# extracted and patched tree (ggml_patch/src synced into it on every run), one build directory per
# level (ninja rebuilds only what changed: a change of mlwq-cpu.c recompiles that file), and the seeds.
# A fresh build of both levels takes about 3 minutes on 2 cores; an unchanged one, seconds.
#
# Needs: gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user (scripts/setup.sh installs them), cmake,
# ninja, the project's venv (MLWQ_PYTHON, default .venv/bin/python; for the seeds and --gguf).
# Environment: MLWQ_CACHE, MLWQ_JOBS (default 2), MLWQ_PYTHON, MLWQ_SDIST (see build.sh).
# Exit: 0 all checks pass, 1 a check failed, 2 something is missing (the message says what).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/sdist.sh"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${MLWQ_CACHE:-$HOME/.cache/mlwq}"
PY="${MLWQ_PYTHON:-$ROOT/.venv/bin/python}"
JOBS="${MLWQ_JOBS:-2}"
CC=aarch64-linux-gnu-gcc
CXX=aarch64-linux-gnu-g++

log() { printf '[arm-check] %s\n' "$*" >&2; }
die() { printf '[arm-check] error: %s\n' "$*" >&2; exit 2; }

LEVELS="armv8-a armv8.2-a+dotprod"
GGUFS=()
MAX_ROWS=0
BUILD_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --gguf)     [ -f "${2:-}" ] || die "--gguf needs a file"; GGUFS+=("$2"); shift 2 ;;
        --max-rows) MAX_ROWS="${2:-}"; [[ "$MAX_ROWS" =~ ^[0-9]+$ ]] || die "--max-rows needs a number"; shift 2 ;;
        --levels)   LEVELS="${2:-}"; shift 2 ;;
        --build)    BUILD_ONLY=1; shift ;;
        --tree)     BUILD_ONLY=2; shift ;;
        -h|--help)  awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0" >&2; exit 2 ;;
        *)          die "unknown argument '$1' (see --help)" ;;
    esac
done

qemu_cpu() {
    case "$1" in
        armv8-a)              echo cortex-a72 ;;
        armv8.2-a+dotprod)    echo cortex-a76 ;;
        *)                    echo max ;;
    esac
}

# ---- tools ---------------------------------------------------------------------------------------
TOOLS=("$CC" "$CXX" qemu-aarch64 cmake ninja patch tar)
[ "$BUILD_ONLY" = 2 ] && TOOLS=(patch tar)
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || die "'$tool' is missing: run scripts/setup.sh, or apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user cmake ninja-build"
done
[ -x "$PY" ] || die "python not found at $PY (create the venv with scripts/setup.sh, or set MLWQ_PYTHON)"

# ---- the patched tree ----------------------------------------------------------------------------
shopt -s nullglob
PATCHES=("$HERE"/patches/*.patch)
shopt -u nullglob
PKEY=$( { echo "$SDIST_SHA256"; for p in "${PATCHES[@]}"; do echo "$(basename "$p")"; sha256sum < "$p"; done; } \
        | sha256sum | cut -c1-16)
DIR="$CACHE/arm-$PKEY"
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9     # one run at a time per tree (checkouts sharing the cache sync their sources into it)

TREE="$DIR/tree"
LLAMA="$TREE/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp"
if [ ! -f "$TREE/.patched" ]; then
    SDIST=$(mlwq_sdist "$CACHE" "$PY")
    log "extracting and patching llama.cpp into $TREE"
    rm -rf "$TREE"
    mkdir -p "$TREE"
    tar -xzf "$SDIST" -C "$TREE" "llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp"
    for p in "${PATCHES[@]}"; do
        patch -p1 --batch --forward --no-backup-if-mismatch -d "$LLAMA" < "$p" >&2 \
            || die "patch $(basename "$p") does not apply"
    done
    touch "$TREE/.patched"
    # older trees of this cache (other patches): keep the 2 newest
    ls -dt "$CACHE"/arm-* 2>/dev/null | tail -n +3 | while read -r d; do [ "$d" != "$DIR" ] && rm -rf "$d"; done || true
fi
# our sources, as build.sh copies them (ggml/src/ggml-cuda/ is not built here); only changed files are
# rewritten, so ninja recompiles only those
(cd "$HERE/src" && find . -type f | LC_ALL=C sort) | while read -r f; do
    f="${f#./}"
    case "$f" in ggml/src/ggml-cuda/*) continue ;; esac
    mkdir -p "$(dirname "$LLAMA/$f")"
    cmp -s "$HERE/src/$f" "$LLAMA/$f" || cp "$HERE/src/$f" "$LLAMA/$f"
done

if [ "$BUILD_ONLY" = 2 ]; then
    echo "$LLAMA"
    exit 0
fi

# ---- build one level -----------------------------------------------------------------------------
G="$LLAMA/ggml"
build_level() {
    local level="$1" b="$DIR/build-${1//+/_}" t0
    t0=$(date +%s)
    # the top-level CMakeLists (the vendored ggml/ alone lacks ggml.pc.in), nothing of llama built
    local conf=(-S "$LLAMA" -B "$b" -G Ninja
        -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64
        -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX"
        -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
        -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH="$level" -DGGML_OPENMP=OFF -DGGML_LLAMAFILE=ON
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
        -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
        -DGGML_CCACHE=OFF)
    if [ ! -f "$b/build.ninja" ] || [ "$(cat "$b/.mlwq-conf" 2>/dev/null)" != "${conf[*]}" ]; then
        log "configuring ggml for $level in $b"
        rm -rf "$b"
        cmake "${conf[@]}" >"$b.configure.log" 2>&1 \
            || { tail -30 "$b.configure.log" >&2; die "cmake configure failed for $level (log: $b.configure.log)"; }
        echo "${conf[*]}" > "$b/.mlwq-conf"
    fi
    ninja -C "$b" -j "$JOBS" ggml-base ggml-cpu >"$b.build.log" 2>&1 \
        || { tail -40 "$b.build.log" >&2; die "cross-build of ggml-base/ggml-cpu failed for $level (log: $b.build.log)"; }
    local libs inc flags
    libs="$(find "$b" -name libggml-cpu.a | head -1) $(find "$b" -name libggml-base.a | head -1)"
    inc="-I$G/include -I$G/src -I$G/src/ggml-cpu -I$HERE/fuzz"
    flags="-O2 -march=$level -static -Wall -Wextra -Wno-unused-function -Wno-unused-parameter -Werror=implicit-function-declaration"
    mkdir -p "$b/bin"
    local need=0 f
    for f in "$HERE/tools/mlwq-check.c" "$HERE/tools/mlwq-exact.c" "$HERE/tools/mlwq-fuzz-run.c" "$HERE/tools/mlwq-tool-files.h" "$HERE/tools/mlwq-tool-types.h" \
             "$HERE/fuzz/fuzz_mlwq_rows.c" "$HERE/fuzz/mlwq_fuzz_common.c" "$HERE/fuzz/mlwq_fuzz_common.h" $libs; do
        for exe in mlwq-check mlwq-exact mlwq-fuzz-rows; do
            [ "$b/bin/$exe" -nt "$f" ] || need=1
        done
    done
    [ -f "$b/bin/mlwq-exact.o" ] || need=1
    if [ "$need" = 1 ]; then
        # C sources compiled as C (gcc), linked with g++ (ggml-base has C++ objects)
        $CC $flags $inc -std=gnu11 -c "$HERE/tools/mlwq-check.c" -o "$b/bin/mlwq-check.o"
        $CXX $flags "$b/bin/mlwq-check.o" $libs -lm -o "$b/bin/mlwq-check"
        $CC $flags $inc -std=gnu11 -c "$HERE/tools/mlwq-exact.c" -o "$b/bin/mlwq-exact.o"
        $CXX $flags "$b/bin/mlwq-exact.o" $libs -lm -o "$b/bin/mlwq-exact"
        for f in fuzz/fuzz_mlwq_rows.c fuzz/mlwq_fuzz_common.c tools/mlwq-fuzz-run.c; do
            $CC $flags $inc -std=gnu11 -D_GNU_SOURCE -c "$HERE/$f" -o "$b/bin/$(basename "$f" .c).o"
        done
        $CXX $flags "$b/bin/fuzz_mlwq_rows.o" "$b/bin/mlwq_fuzz_common.o" "$b/bin/mlwq-fuzz-run.o" $libs -lm \
            -o "$b/bin/mlwq-fuzz-rows"
    fi
    # the kernel as clang compiles it (Android NDK, Apple; and arm_mca.py analyses clang's code, which
    # takes the 4x4 tile where GCC takes 4x2): mlwq-cpu.c by clang, linked ahead of the library's copy
    rm -f "$b/bin/mlwq-exact-clang"
    if command -v clang >/dev/null; then
        clang --target=aarch64-linux-gnu -O3 -DNDEBUG -march="$level" -std=gnu11 -w $inc \
            -c "$G/src/ggml-cpu/mlwq-cpu.c" -o "$b/bin/mlwq-cpu-clang.o" \
            && $CXX $flags "$b/bin/mlwq-exact.o" "$b/bin/mlwq-cpu-clang.o" $libs -lm -o "$b/bin/mlwq-exact-clang" \
            || die "the clang build of mlwq-cpu.c for $level failed"
    fi
    log "$level: ggml-base + ggml-cpu + check programs ready in $(( $(date +%s) - t0 )) s ($b/bin)"
    BIN="$b/bin"
}

# ---- seeds ----------------------------------------------------------------------------------------
make_seeds() {
    local key
    key=$(cat "$HERE/fuzz/make_seeds.py" "$ROOT/exporters/mlwq_format.py" "$ROOT/exporters/gguf_export.py" | sha256sum | cut -c1-16)
    SEEDS="$DIR/seeds-$key"
    if [ ! -d "$SEEDS/rows" ]; then
        log "making the fuzz seeds (ggml_patch/fuzz/make_seeds.py)"
        rm -rf "$SEEDS.part" && mkdir -p "$SEEDS.part"
        (cd "$ROOT" && "$PY" "$HERE/fuzz/make_seeds.py" "$SEEDS.part") >&2 || die "make_seeds.py failed (see above)"
        mv "$SEEDS.part" "$SEEDS"
    fi
}

# ---- real rows: every MLWQ tensor of the given GGUF files -----------------------------------------
extract_rows() {    # prints "TYPE NE0 NROWS FILE" per tensor
    local out="$DIR/rows.$$"
    rm -rf "$out" && mkdir -p "$out"
    (cd "$ROOT" && "$PY" - "$out" "$MAX_ROWS" "${GGUFS[@]}" <<'EOF'
import sys
from pathlib import Path
import numpy as np
import gguf
from exporters import mlwq_format as F
out, max_rows, files = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
for i, path in enumerate(files):
    for t in gguf.GGUFReader(path).tensors:
        b = F.width_of_type_id(int(t.tensor_type))
        if b is None:
            continue
        ne0, rows = int(t.shape[0]), int(t.shape[1])
        data = np.asarray(t.data).reshape(rows, -1)
        if max_rows:
            data = data[:max_rows]
        f = out / f"{i}-{t.name}.bin"
        f.write_bytes(data.tobytes())
        print(f"mlwq{b} {ne0} {data.shape[0]} {f}")
EOF
    ) || die "reading the MLWQ tensors of ${GGUFS[*]} failed"
}

# ---- run --------------------------------------------------------------------------------------------
declare -A BINS
for level in $LEVELS; do
    build_level "$level"
    BINS[$level]="$BIN"
done
if [ "$BUILD_ONLY" = 1 ]; then
    for level in $LEVELS; do echo "$level ${BINS[$level]} $(qemu_cpu "$level")"; done
    exit 0
fi
make_seeds
ROWS_LIST=""
if [ ${#GGUFS[@]} -gt 0 ]; then
    ROWS_LIST=$(extract_rows)
fi

failures=0; inputs=0; rows=0; sums=0; mism=0
tally() {   # the summary line of mlwq-exact
    local line="$1"
    [[ "$line" =~ inputs=([0-9]+)\ rows=([0-9]+)\ blocks=[0-9]+\ sums=([0-9]+)\ mismatches=([0-9]+) ]] || return 0
    inputs=$(( inputs + BASH_REMATCH[1] )); rows=$(( rows + BASH_REMATCH[2] ))
    sums=$(( sums + BASH_REMATCH[3] )); mism=$(( mism + BASH_REMATCH[4] ))
}
run_q() {   # run_q LEVEL WHAT CMD...: one program under qemu, its last line reported
    local level="$1" what="$2" out rc=0
    shift 2
    out=$(qemu-aarch64 -cpu "$(qemu_cpu "$level")" "$@" 2>&1) || rc=$?
    tally "$(tail -1 <<<"$out")"
    if [ "$rc" != 0 ]; then
        failures=$(( failures + 1 ))
        printf '%s\n' "$out" | tail -25 >&2
        echo "FAIL $level $what (exit $rc)"
    else
        echo "ok   $level $what: $(tail -1 <<<"$out")"
    fi
}
for level in $LEVELS; do
    B="${BINS[$level]}"
    want=neon; case "$level" in *dotprod*) want=neon-dotprod ;; esac
    got=$(qemu-aarch64 -cpu "$(qemu_cpu "$level")" "$B/mlwq-exact" path 2>&1) || true
    if [ "$got" = "$want" ]; then
        echo "ok   $level kernel: $got"
    else
        failures=$(( failures + 1 )); echo "FAIL $level kernel: '$got', expected '$want'"
    fi
    EXES=(mlwq-exact)
    [ -x "$B/mlwq-exact-clang" ] && EXES+=(mlwq-exact-clang)
    for exe in "${EXES[@]}"; do
        cc=gcc; [ "$exe" = mlwq-exact-clang ] && cc=clang
        run_q "$level" "[$cc] fuzz seeds, exact sums (mlwq-exact seeds)" "$B/$exe" seeds "$SEEDS/rows"
        while read -r type ne0 nrows file; do
            [ -n "$type" ] || continue
            run_q "$level" "[$cc] $(basename "$file" .bin) ($type, $nrows x $ne0)" "$B/$exe" rows "$type" "$ne0" "$nrows" "$file" 5 1
        done <<<"$ROWS_LIST"
    done
    run_q "$level" "[gcc] fuzz seeds, harness checks (mlwq-fuzz-rows)" "$B/mlwq-fuzz-rows" "$SEEDS/rows"
done
[ -n "$ROWS_LIST" ] && rm -rf "$DIR/rows.$$"
echo "arm-check: levels=$(wc -w <<<"$LEVELS") inputs=$inputs rows=$rows sums=$sums mismatches=$mism failures=$failures"
[ "$failures" = 0 ] && [ "$mism" = 0 ]
