#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: the virtual environment (.venv) with torch
# pinned to 2.13.0 and every other package at the version of constraints.txt, this package and
# its test tools, the default model and WikiText-2 (when no local copy is found), and the
# patched llama.cpp build (cached by patch hash, see ggml_patch/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
fi
# torch first and exactly: any later requirement is satisfied by it and pulls nothing newer.
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
    || .venv/bin/pip install -q torch==2.13.0
# every other package at the exact version of constraints.txt (scripts/refresh-constraints.sh re-makes it)
.venv/bin/pip install -q -c constraints.txt -e ".[dev]"
.venv/bin/python -m mlwq.assets fetch
# clang with libFuzzer, for the fuzz harness (ggml_patch/fuzz/run_fuzz.sh); only when missing
if ! command -v clang >/dev/null; then
    echo "[setup] installing clang (ggml_patch/fuzz)"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update && $SUDO apt-get install -y clang
    # libFuzzer's runtime: recommended by clang on Debian, a separate package when recommends are off
    echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' \
        | clang -x c -fsanitize=fuzzer - -o /dev/null 2>/dev/null || $SUDO apt-get install -y libclang-rt-dev
fi
# AArch64 cross compilers and qemu-user, for the ARM NEON checks (ggml_patch/arm_check.sh,
# tests/test_arm.py); only when missing
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null \
        || ! command -v qemu-aarch64 >/dev/null; then
    echo "[setup] installing gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user (ggml_patch/arm_check.sh)"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update && $SUDO apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
fi
if [ "${MLWQ_SKIP_LLAMA_BUILD:-0}" != "1" ]; then
    bash ggml_patch/build.sh
fi
.venv/bin/pip check
echo "[setup] done"
