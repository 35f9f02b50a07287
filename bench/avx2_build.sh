#!/usr/bin/env bash
# A second CPU build of the patched llama.cpp tree without AVX-512 (the kernels of AVX2-only
# CPUs), for timing that path on an AVX-512 machine:
#
#   bash bench/avx2_build.sh [BUILD_DIR]        # default /tmp/build-avx2; then
#   MLWQ_LLAMA_BIN=/tmp/build-avx2/bin python -m tools.bench_ratio A.gguf B.gguf
#
# Needs the tree of `bash ggml_patch/build.sh` (~/.cache/mlwq/llama-cpp-current). Builds
# llama-bench only.
set -euo pipefail
OUT=${1:-/tmp/build-avx2}
TREE="$(cat "${MLWQ_CACHE:-$HOME/.cache/mlwq}/llama-cpp-current")/llama_cpp_python-0.3.36/vendor/llama.cpp"
# a build directory configured from another tree (an earlier patch set) cannot be reconfigured
if [ -f "$OUT/CMakeCache.txt" ] && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$TREE" "$OUT/CMakeCache.txt"; then
    rm -rf "$OUT"
fi
cmake -S "$TREE" -B "$OUT" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=OFF -DGGML_CCACHE=OFF
ninja -C "$OUT" -j "${MLWQ_JOBS:-2}" llama-bench
