#!/usr/bin/env bash
# MLWQ / llama.cpp speed ratios on this CPU, the four figures of docs/results/speed.json: prompt
# processing (pp128, 6 paired rounds) and generation (tg64, 8 rounds), 2 threads, with the native
# build (AVX-512 where the CPU has it) and with an AVX2-only build of the same tree.
#
#   bash bench/cpu_speed.sh A.gguf B.gguf OUTDIR
#
# OUTDIR/{pp,tg,avx2-pp,avx2-tg}/ratio.{json,md} (python -m tools.bench_ratio, A / B). Binaries:
# NATIVE_BIN (default: the current `bash ggml_patch/build.sh` build), AVX2_BIN (default
# /tmp/build-avx2-<tree>/bin, built or brought up to date by bench/avx2_build.sh). Point them at other builds (e.g.
# of an earlier commit) to time those: each tool runs with LD_LIBRARY_PATH on its own directory.
set -euo pipefail
[ $# -eq 3 ] || { sed -n 2,12p "$0"; exit 2; }
A=$1; B=$2; OUT=$3
cd "$(dirname "$0")/.."
PY=.venv/bin/python
NATIVE_BIN=${NATIVE_BIN:-$($PY -c 'from exporters.llamacpp import bin_dir; print(bin_dir())')}
if [ -z "${AVX2_BIN:-}" ]; then
    # one AVX2 build per patched tree (the build dir is tied to its sources); ninja makes it current
    TREE=$(cat "${MLWQ_CACHE:-$HOME/.cache/mlwq}/llama-cpp-current")
    AVX2_BIN=/tmp/build-avx2-$(basename "$TREE")/bin
    bash bench/avx2_build.sh "$(dirname "$AVX2_BIN")" >&2
fi
ratio() {   # BIN NAME ARGS...
    local bin=$1 name=$2; shift 2
    LD_LIBRARY_PATH=$bin MLWQ_LLAMA_BIN=$bin $PY -m tools.bench_ratio "$A" "$B" "$@" --out "$OUT/$name"
}
ratio "$NATIVE_BIN" pp      --rounds 6 --p 128
ratio "$AVX2_BIN"   avx2-pp --rounds 6 --p 128
ratio "$NATIVE_BIN" tg      --rounds 8
ratio "$AVX2_BIN"   avx2-tg --rounds 8
lscpu | grep -E "^Model name|^CPU\(s\)|^CPU family|^Model:" > "$OUT/machine.txt"
{ grep -o 'avx512[a-z_]*' /proc/cpuinfo || echo 'no avx512'; } | sort -u | tr '\n' ' ' >> "$OUT/machine.txt"
echo >> "$OUT/machine.txt"
