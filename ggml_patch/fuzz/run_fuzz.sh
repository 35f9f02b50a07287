#!/usr/bin/env bash
# Build (cached) and run the MLWQ libFuzzer targets (clang -fsanitize=fuzzer,address,undefined).
#
#   bash ggml_patch/fuzz/run_fuzz.sh SECONDS [all|rows|gguf]   fuzz for SECONDS in all (all: split evenly,
#                                                               rows first, then gguf)
#   bash ggml_patch/fuzz/run_fuzz.sh --coverage                 line/branch coverage of our sources and of
#                                                               gguf.cpp over the stored corpus (no sanitizers)
#   bash ggml_patch/fuzz/run_fuzz.sh --repro FILE               run one input (a crash file) under the sanitizers
#   bash ggml_patch/fuzz/run_fuzz.sh --run rows|gguf PATH...    run inputs (files, or every file of a directory)
#                                                               once each; MLWQ_FUZZ_VERBOSE=1 prints the verdicts
#   bash ggml_patch/fuzz/run_fuzz.sh --seeds                    print the seed corpus directory (made if needed)
#
# Targets (README.md in this directory): fuzz_mlwq_rows (rows into validation, to_float, unpacking and
# vec_dot) and fuzz_mlwq_gguf (bytes as a GGUF file through gguf.cpp, then llama's MLWQ load checks).
# Sources: ggml.c, ggml-quants.c, gguf.cpp, ggml-threading.cpp, ggml.cpp, ggml-mlwq.c and
# ggml-cpu/mlwq-cpu.c of the patched tree that ggml_patch/build.sh made (refused if stale), compiled
# here with clang; nothing else of llama.cpp is built. All compiling and fuzzing runs under nice -n 19.
#
# Cache: $MLWQ_CACHE/mlwq-fuzz (default ~/.cache/mlwq): build-<key>/ (key: tree, harness sources, flags),
# seeds-<key>/ (make_seeds.py output), corpus/<target>/ (grows from run to run, shared by every checkout
# using this cache; MLWQ_FUZZ_FRESH=1 starts an empty one in a temporary directory, as the tests do),
# artifacts/<date>/ (crash inputs of a run).
# Environment: MLWQ_PYTHON (default .venv/bin/python), MLWQ_JOBS (compile jobs, default 2),
# MLWQ_NATIVE=0 (-mavx2 -mfma -mf16c instead of -march=native, as build.sh), MLWQ_LLAMA_TREE (a patched
# vendor/llama.cpp to use instead of the current build's).
#
# Output: one line per target, then a last line a script can read:
#   fuzz: seconds=S executions=N exec_per_s=R corpus=C cov=E crashes=K
# (cov: libFuzzer's covered edges, summed over the targets). Exit 0 with no crash, 1 on a crash (the
# input is kept and its path printed), 2 when something is missing (the message says what to run).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${MLWQ_CACHE:-$HOME/.cache/mlwq}"
PY="${MLWQ_PYTHON:-$ROOT/.venv/bin/python}"
JOBS="${MLWQ_JOBS:-2}"
FUZZ_DIR="$CACHE/mlwq-fuzz"

log() { printf '[mlwq-fuzz] %s\n' "$*" >&2; }
die() { printf '[mlwq-fuzz] error: %s\n' "$*" >&2; exit 2; }

MODE=fuzz
SECONDS_TOTAL=""
WHICH=all
REPRO=""
case "${1:-}" in
    --coverage) MODE=coverage ;;
    --repro)    MODE=repro; REPRO="${2:-}"; [ -f "$REPRO" ] || die "--repro needs an input file" ;;
    --run)      MODE=run; WHICH="${2:-}"; shift 2 || true; RUN_PATHS=("$@")
                case "$WHICH" in rows|gguf) ;; *) die "--run needs rows or gguf, then inputs" ;; esac ;;
    --seeds)    MODE=seeds ;;
    ''|-h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0" >&2; exit 2 ;;
    *)
        SECONDS_TOTAL="$1"
        WHICH="${2:-all}"
        [[ "$SECONDS_TOTAL" =~ ^[0-9]+$ ]] && [ "$SECONDS_TOTAL" -ge 2 ] || die "SECONDS must be an integer >= 2, got '$1'"
        case "$WHICH" in all|rows|gguf) ;; *) die "target must be all, rows or gguf, got '$WHICH'" ;; esac
        ;;
esac

# ---- tools ---------------------------------------------------------------------------------
for tool in clang clang++; do
    command -v "$tool" >/dev/null || die "'$tool' is missing: run scripts/setup.sh (it installs clang), or apt-get install clang"
done
[ -x "$PY" ] || die "python not found at $PY (create the venv with scripts/setup.sh, or set MLWQ_PYTHON)"

# ---- the patched tree (the one build.sh made for the current ggml_patch) -------------------------
if [ -n "${MLWQ_LLAMA_TREE:-}" ]; then
    LLAMA="$MLWQ_LLAMA_TREE"
else
    LLAMA=$(cd "$ROOT" && "$PY" -c '
import sys
from exporters import llamacpp
try:
    info = llamacpp.build_info()
except llamacpp.LlamaCppNotBuilt as e:
    sys.exit(str(e))
if not info.get("llama_cpp"):
    sys.exit("MLWQ_LLAMA_BIN names a build without its tree: set MLWQ_LLAMA_TREE to its vendor/llama.cpp")
print(info["llama_cpp"])') || die "no patched llama.cpp tree (see above): run bash ggml_patch/build.sh"
fi
G="$LLAMA/ggml"
[ -f "$G/src/ggml-mlwq.c" ] && [ -f "$G/src/gguf.cpp" ] || die "$LLAMA is not a patched tree: run bash ggml_patch/build.sh"

if [ "${MLWQ_NATIVE:-1}" = "1" ]; then ARCH_FLAGS="-march=native"; else ARCH_FLAGS="-mavx2 -mfma -mf16c"; fi
COMMON_FLAGS="-g -fno-omit-frame-pointer $ARCH_FLAGS -D_GNU_SOURCE -D_XOPEN_SOURCE=600 -DNDEBUG -DGGML_SCHED_MAX_COPIES=4 -Wno-everything"
SAN_FLAGS="-O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined"
COV_FLAGS="-O0 -fprofile-instr-generate -fcoverage-mapping"
LIB_SRCS=(ggml.c ggml-quants.c ggml-mlwq.c gguf.cpp ggml-threading.cpp ggml.cpp ggml-cpu/mlwq-cpu.c)
HARNESS=(mlwq_fuzz_common.c fuzz_mlwq_rows.c fuzz_mlwq_gguf.cpp)

# prune PREFIX KEEP: remove PREFIX-<key> directories beyond the 3 newest (other checkouts sharing
# the cache may use the others), never KEEP nor a build in progress
prune() {
    local d
    ls -dt "$1"-* 2>/dev/null | grep -v '\.part\.[0-9]*$' | tail -n +4 | while read -r d; do
        if [ "$d" != "$2" ]; then rm -rf "$d"; fi
    done || true
    # builds left half-done by a failed or killed run
    find "$(dirname "$1")" -maxdepth 1 -name '*.part.*' -mmin +120 -exec rm -rf {} + 2>/dev/null || true
}

# build_targets KIND FLAGS: both fuzz targets into $FUZZ_DIR/<KIND>-<key>/, cached by the key
build_targets() {
    local kind="$1" flags="$2" key dir
    key=$( {
        echo "$kind $flags $(clang --version | head -1)"
        echo "$LLAMA"; cat "$LLAMA/../../../.patched" 2>/dev/null || true
        for s in "${LIB_SRCS[@]}"; do sha256sum < "$G/src/$s"; done
        sha256sum < "$G/include/ggml-mlwq.h"
        for s in "${HARNESS[@]}" mlwq_fuzz_common.h run_fuzz.sh; do sha256sum < "$HERE/$s"; done
    } | sha256sum | cut -c1-16)
    dir="$FUZZ_DIR/$kind-$key"
    BUILD_DIR="$dir"
    if [ -x "$dir/fuzz_mlwq_rows" ] && [ -x "$dir/fuzz_mlwq_gguf" ]; then
        log "reusing $kind build $dir"
        return 0
    fi
    log "building the fuzz targets ($kind, clang $(clang -dumpversion)) in $dir"
    local part="$dir.part.$$"     # per process: two checkouts sharing the cache may build one key at once
    rm -rf "$part"
    mkdir -p "$part"
    printf '#pragma once\n#define GGML_VERSION "mlwq-fuzz"\n#define GGML_COMMIT "mlwq-fuzz"\n' > "$part/ggml-version.h"
    local inc="-I$part -I$G/include -I$G/src -I$G/src/ggml-cpu"
    local t0; t0=$(date +%s)
    local jobs=()
    for s in "${LIB_SRCS[@]}"; do
        local src="$G/src/$s" obj; obj="$part/$(echo "$s" | tr / _).o"
        case "$s" in
            # gguf.cpp reads a tensor's type id into enum ggml_type before range-checking it:
            # -fsanitize=enum (part of undefined) reports that upstream pattern, so not there
            gguf.cpp) jobs+=("clang++ -std=gnu++17 $COMMON_FLAGS $flags -fno-sanitize=enum -fsanitize=fuzzer-no-link $inc -c $src -o $obj") ;;
            *.cpp) jobs+=("clang++ -std=gnu++17 $COMMON_FLAGS $flags -fsanitize=fuzzer-no-link $inc -c $src -o $obj") ;;
            *)     jobs+=("clang -std=gnu11 $COMMON_FLAGS $flags -fsanitize=fuzzer-no-link $inc -c $src -o $obj") ;;
        esac
    done
    jobs+=("clang -std=gnu11 $COMMON_FLAGS $flags -fsanitize=fuzzer-no-link $inc -c $HERE/mlwq_fuzz_common.c -o $part/common.o")
    jobs+=("clang -std=gnu11 $COMMON_FLAGS $flags -fsanitize=fuzzer $inc -c $HERE/fuzz_mlwq_rows.c -o $part/rows.o")
    jobs+=("clang++ -std=gnu++17 $COMMON_FLAGS $flags -fsanitize=fuzzer $inc -c $HERE/fuzz_mlwq_gguf.cpp -o $part/gguf.o")
    printf '%s\n' "${jobs[@]}" | nice -n 19 xargs -P "$JOBS" -I{} sh -c '{}' \
        || die "compiling the fuzz targets failed (see above)"
    local libs=("$part"/ggml*.o "$part"/gguf.cpp.o "$part/common.o")
    for t in rows gguf; do
        nice -n 19 clang++ $flags -fsanitize=fuzzer "$part/$t.o" "${libs[@]}" -lm -lpthread -o "$part/fuzz_mlwq_$t" \
            || die "linking fuzz_mlwq_$t failed: clang needs libFuzzer (Debian: libclang-rt-dev); run scripts/setup.sh"
    done
    if [ -x "$dir/fuzz_mlwq_rows" ] && [ -x "$dir/fuzz_mlwq_gguf" ]; then
        rm -rf "$part"            # another run finished the same build first
    else
        rm -rf "$dir"
        mv "$part" "$dir"
    fi
    prune "$FUZZ_DIR/$kind" "$dir"
    log "built in $(( $(date +%s) - t0 )) s"
}

# ---- seeds ---------------------------------------------------------------------------------
make_seeds() {
    local key
    key=$( {
        cat "$LLAMA/../../../.patched" 2>/dev/null || true
        for f in "$HERE/make_seeds.py" "$ROOT/exporters/mlwq_format.py" "$ROOT/exporters/gguf_export.py"; do sha256sum < "$f"; done
    } | sha256sum | cut -c1-16)
    SEEDS="$FUZZ_DIR/seeds-$key"
    if [ -d "$SEEDS/gguf" ] && [ -d "$SEEDS/rows" ]; then
        return 0
    fi
    local part="$SEEDS.part.$$"
    rm -rf "$part"
    (cd "$ROOT" && nice -n 19 "$PY" "$HERE/make_seeds.py" "$part") >&2 || die "make_seeds.py failed (see above)"
    if [ -d "$SEEDS/gguf" ] && [ -d "$SEEDS/rows" ]; then
        rm -rf "$part"
    else
        rm -rf "$SEEDS"
        mv "$part" "$SEEDS"
    fi
    prune "$FUZZ_DIR/seeds" "$SEEDS"
}

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
if command -v llvm-symbolizer >/dev/null; then
    export ASAN_SYMBOLIZER_PATH="$(command -v llvm-symbolizer)"
elif [ -x /usr/lib/llvm-14/bin/llvm-symbolizer ]; then
    export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer
fi

# ---- repro -----------------------------------------------------------------------------------
if [ "$MODE" = repro ]; then
    build_targets san "$SAN_FLAGS"
    t=rows
    [ "$(head -c 4 "$REPRO")" = "GGUF" ] && t=gguf
    log "running $REPRO through fuzz_mlwq_$t"
    exec "$BUILD_DIR/fuzz_mlwq_$t" "$REPRO"
fi

if [ "$MODE" = run ]; then
    build_targets san "$SAN_FLAGS"
    files=()
    for p in "${RUN_PATHS[@]}"; do
        if [ -d "$p" ]; then
            while IFS= read -r f; do files+=("$f"); done < <(find "$p" -maxdepth 1 -type f | LC_ALL=C sort)
        else
            files+=("$p")
        fi
    done
    [ "${#files[@]}" -gt 0 ] || die "--run: no input files"
    exec nice -n 19 "$BUILD_DIR/fuzz_mlwq_$WHICH" -close_fd_mask=2 "${files[@]}"
fi

mkdir -p "$FUZZ_DIR"
make_seeds
if [ "$MODE" = seeds ]; then
    echo "$SEEDS"
    exit 0
fi

# ---- coverage --------------------------------------------------------------------------------
if [ "$MODE" = coverage ]; then
    build_targets cov "$COV_FLAGS"
    LLVM_BIN=""
    for d in "$(dirname "$(readlink -f "$(command -v clang)")")" /usr/lib/llvm-"$(clang -dumpversion | cut -d. -f1)"/bin; do
        [ -x "$d/llvm-cov" ] && [ -x "$d/llvm-profdata" ] && { LLVM_BIN="$d"; break; }
    done
    [ -n "$LLVM_BIN" ] || die "llvm-cov/llvm-profdata not found (they come with clang's llvm package)"
    work=$(mktemp -d)
    for t in rows gguf; do
        mkdir -p "$FUZZ_DIR/corpus/$t"
        LLVM_PROFILE_FILE="$work/$t.profraw" nice -n 19 "$BUILD_DIR/fuzz_mlwq_$t" -runs=0 -close_fd_mask=2 \
            "$FUZZ_DIR/corpus/$t" "$SEEDS/$t" > "$work/$t.log" 2>&1 || { tail -20 "$work/$t.log" >&2; die "coverage run of $t failed"; }
        "$LLVM_BIN/llvm-profdata" merge -sparse "$work/$t.profraw" -o "$work/$t.profdata"
    done
    echo "corpus: rows $(ls "$FUZZ_DIR/corpus/rows" | wc -l) + $(ls "$SEEDS/rows" | wc -l) seeds, gguf $(ls "$FUZZ_DIR/corpus/gguf" | wc -l) + $(ls "$SEEDS/gguf" | wc -l) seeds"
    "$LLVM_BIN/llvm-profdata" merge -sparse "$work/rows.profdata" "$work/gguf.profdata" -o "$work/all.profdata"
    "$LLVM_BIN/llvm-cov" report "$BUILD_DIR/fuzz_mlwq_gguf" -object "$BUILD_DIR/fuzz_mlwq_rows" \
        -instr-profile="$work/all.profdata" \
        "$G/src/ggml-mlwq.c" "$G/src/ggml-cpu/mlwq-cpu.c" "$G/src/gguf.cpp" "$HERE/fuzz_mlwq_gguf.cpp"
    echo "gguf.cpp, the reading functions:"
    "$LLVM_BIN/llvm-cov" report "$BUILD_DIR/fuzz_mlwq_gguf" -object "$BUILD_DIR/fuzz_mlwq_rows" \
        -instr-profile="$work/all.profdata" -show-functions "$G/src/gguf.cpp" 2>/dev/null \
        | grep -E "^Name|gguf_init_from_reader|gguf_init_from_file_ptr" || true
    # the MLWQ case of ggml_validate_row_data (the rest of that function is other types)
    "$LLVM_BIN/llvm-cov" show "$BUILD_DIR/fuzz_mlwq_gguf" -object "$BUILD_DIR/fuzz_mlwq_rows" \
        -instr-profile="$work/all.profdata" "$G/src/ggml-quants.c" 2>/dev/null \
        | awk -F'|' '/case GGML_TYPE_MLWQ2:/ {on = 1} on && $2 ~ /[0-9]/ {n++; if ($2 + 0 > 0 || $2 ~ /[kM]/) c++}
                     on && /} break;/ {on = 0} END {printf "ggml_validate_row_data, MLWQ case: %d of %d lines covered\n", c, n}'
    echo "uncovered lines of ggml-mlwq.c and mlwq-cpu.c:"
    "$LLVM_BIN/llvm-cov" show "$BUILD_DIR/fuzz_mlwq_gguf" -object "$BUILD_DIR/fuzz_mlwq_rows" \
        -instr-profile="$work/all.profdata" "$G/src/ggml-mlwq.c" "$G/src/ggml-cpu/mlwq-cpu.c" \
        | grep -E '^ +[0-9]+\| +0\|' | head -40 || true
    rm -rf "$work"
    exit 0
fi

# ---- fuzz ------------------------------------------------------------------------------------
build_targets san "$SAN_FLAGS"
if [ "$WHICH" = all ]; then TARGETS=(rows gguf); else TARGETS=("$WHICH"); fi
PER=$(( SECONDS_TOTAL / ${#TARGETS[@]} ))
[ "$PER" -ge 1 ] || PER=1
ART="$FUZZ_DIR/artifacts/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$ART"
if [ "${MLWQ_FUZZ_FRESH:-0}" = "1" ]; then CORPUS_ROOT=$(mktemp -d); else CORPUS_ROOT="$FUZZ_DIR/corpus"; fi

TOT_EXEC=0; TOT_CORP=0; TOT_COV=0; TOT_CRASH=0; MAX_RATE_NOTE=""
for t in "${TARGETS[@]}"; do
    corpus="$CORPUS_ROOT/$t"
    mkdir -p "$corpus" "$ART/$t"
    logf="$ART/$t.log"
    log "fuzzing $t for $PER s (corpus $corpus, $(ls "$corpus" | wc -l) inputs; seeds $SEEDS/$t)"
    set +e
    nice -n 19 "$BUILD_DIR/fuzz_mlwq_$t" -max_total_time="$PER" -print_final_stats=1 -close_fd_mask=2 \
        -timeout=10 -rss_limit_mb=2048 -max_len=16384 -use_value_profile=1 -dict="$HERE/mlwq.dict" \
        -artifact_prefix="$ART/$t/" "$corpus" "$SEEDS/$t" > "$logf" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -1 || true)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logf" | tail -1 || true)
    cov=$( (grep -o 'cov: [0-9]*' "$logf" || true) | tail -1 | cut -d' ' -f2)
    ncorp=$(ls "$corpus" | wc -l)
    crashes=$(find "$ART/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
    execs=${execs:-0}; rate=${rate:-0}; cov=${cov:-0}
    echo "fuzz[$t]: seconds=$PER executions=$execs exec_per_s=$rate corpus=$ncorp cov=$cov crashes=$crashes rc=$rc log=$logf"
    if [ "$crashes" -ne 0 ]; then
        grep -E "MLWQ FUZZ CHECK FAILED|ERROR: (Address|Undefined|libFuzzer)|runtime error|SUMMARY" "$logf" | head -8 >&2 || true
        for f in "$ART/$t"/*; do
            [ -f "$f" ] && log "crash input kept: $f (reproduce: bash ggml_patch/fuzz/run_fuzz.sh --repro $f)"
        done
        [ -n "$(ls -A "$ART/$t")" ] || tail -30 "$logf" >&2
    fi
    TOT_EXEC=$(( TOT_EXEC + execs )); TOT_CORP=$(( TOT_CORP + ncorp )); TOT_COV=$(( TOT_COV + cov ))
    TOT_CRASH=$(( TOT_CRASH + crashes ))
done
[ "${MLWQ_FUZZ_FRESH:-0}" = "1" ] && rm -rf "$CORPUS_ROOT"
[ "$TOT_CRASH" -eq 0 ] && find "$ART" -mindepth 1 -type d -empty -delete
# logs of the 5 newest runs are kept; a run directory holding a crash input is kept until removed by hand
ls -dt "$FUZZ_DIR"/artifacts/*/ 2>/dev/null | tail -n +6 | while read -r d; do
    if [ -z "$(find "$d" -mindepth 2 -type f 2>/dev/null | head -1)" ]; then rm -rf "$d"; fi
done || true
RATE=$(( TOT_EXEC / (PER * ${#TARGETS[@]}) ))
echo "fuzz: seconds=$(( PER * ${#TARGETS[@]} )) executions=$TOT_EXEC exec_per_s=$RATE corpus=$TOT_CORP cov=$TOT_COV crashes=$TOT_CRASH"
[ "$TOT_CRASH" -eq 0 ] || exit 1
exit 0
