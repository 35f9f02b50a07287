#!/usr/bin/env bash
# Build llama.cpp with the MLWQ types (CPU; CUDA too with MLWQ_CUDA=1) and install the patched
# gguf-py and llama-cpp-python into the project's virtual environment.
#
#   bash ggml_patch/build.sh
#
# 1. downloads the llama-cpp-python 0.3.36 sdist (pip download) into $MLWQ_CACHE/dl and checks its sha256
# 2. extracts it into $MLWQ_CACHE/llama-cpp-<key>, key = hash of the sdist and of our patches and
#    sources: a tree is patched once and reused until our patch changes
# 3. applies ggml_patch/patches/*.patch in order to vendor/llama.cpp and copies ggml_patch/src/
#    into it (ggml_patch/src/X goes to vendor/llama.cpp/X)
# 4. builds the tools and shared libraries (cmake + ninja, Release, shared libs) in build-cpu/
#    (build-cuda/ with MLWQ_CUDA=1), and mlwq-check (our C test driver)
# 5. installs into the venv: the patched gguf-py, and llama-cpp-python from the patched sdist
#    without compiling llama.cpp again (-DLLAMA_BUILD=OFF), with our libraries copied into its
#    llama_cpp/lib directory
# 6. writes $MLWQ_CACHE/llama-cpp-current (the path of the tree) and prints where everything is
#
# Environment: MLWQ_CACHE (default ~/.cache/mlwq), MLWQ_CUDA=1 (add -DGGML_CUDA=ON),
# MLWQ_NATIVE=0 (explicit AVX2/FMA/F16C instead of -march=native), MLWQ_JOBS (default nproc),
# MLWQ_PYTHON (default <repo>/.venv/bin/python), MLWQ_SDIST (a local copy of the sdist to use
# instead of downloading; its sha256 is still checked), MLWQ_NO_PIP=1 (skip step 5).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/sdist.sh"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${MLWQ_CACHE:-$HOME/.cache/mlwq}"
PY="${MLWQ_PYTHON:-$ROOT/.venv/bin/python}"
JOBS="${MLWQ_JOBS:-$(nproc 2>/dev/null || echo 2)}"
CUDA="${MLWQ_CUDA:-0}"
NATIVE="${MLWQ_NATIVE:-1}"

log() { printf '[mlwq-build] %s\n' "$*" >&2; }
die() { printf '[mlwq-build] error: %s\n' "$*" >&2; exit 1; }
t_start=$(date +%s)

for tool in cmake ninja patch sha256sum tar cc; do
    command -v "$tool" >/dev/null || die "'$tool' is required (apt-get install cmake ninja-build patch build-essential)"
done
[ -x "$PY" ] || die "python not found at $PY (set MLWQ_PYTHON, or create the venv with scripts/setup.sh)"

# ---- 1. the sdist ---------------------------------------------------------------------------
SDIST=$(mlwq_sdist "$CACHE" "$PY")
log "sdist $SDIST (sha256 ok)"

# ---- 2. the patched tree, keyed by the hash of the sdist + our patches and sources ---------
shopt -s nullglob
PATCHES=("$HERE"/patches/*.patch)
shopt -u nullglob
KEY=$("$PY" "$ROOT/exporters/llamacpp.py" key) || die "cannot compute the build key"
TREE_ROOT="$CACHE/llama-cpp-$KEY"
TREE="$TREE_ROOT/llama_cpp_python-$SDIST_VERSION"
LLAMA="$TREE/vendor/llama.cpp"

if [ -f "$TREE_ROOT/.patched" ]; then
    log "reusing patched tree $TREE_ROOT"
else
    log "extracting and patching into $TREE_ROOT"
    rm -rf "$TREE_ROOT.part"
    mkdir -p "$TREE_ROOT.part"
    tar -xzf "$SDIST" -C "$TREE_ROOT.part"
    PTREE="$TREE_ROOT.part/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp"
    [ -d "$PTREE/ggml" ] || die "unexpected sdist layout: no vendor/llama.cpp/ggml"
    for p in "${PATCHES[@]}"; do
        log "applying $(basename "$p")"
        patch -p1 --batch --forward --no-backup-if-mismatch -d "$PTREE" < "$p" >&2 \
            || die "patch $(basename "$p") does not apply to llama-cpp-python $SDIST_VERSION"
    done
    if [ -d "$HERE/src" ]; then
        (cd "$HERE/src" && find . -type f | LC_ALL=C sort) | while read -r f; do
            f="${f#./}"
            mkdir -p "$(dirname "$PTREE/$f")"
            cp "$HERE/src/$f" "$PTREE/$f"
        done
        log "copied $(cd "$HERE/src" && find . -type f | wc -l) source files from ggml_patch/src"
    fi
    echo "$KEY" > "$TREE_ROOT.part/.patched"
    rm -rf "$TREE_ROOT"
    mv "$TREE_ROOT.part" "$TREE_ROOT"
fi

# ---- 3. build ---------------------------------------------------------------------------------
FLAVOUR=cpu
CMAKE_EXTRA=()
if [ "$CUDA" = "1" ]; then
    FLAVOUR=cuda
    CMAKE_EXTRA+=(-DGGML_CUDA=ON)
fi
if [ "$NATIVE" = "1" ]; then
    CMAKE_EXTRA+=(-DGGML_NATIVE=ON)
    # -march=native turns on AMX where cpuid reports it; some virtual machines report it and fault on
    # the first tile instruction (llama.cpp's Q4_0/Q8_0 products die with SIGILL): probe, and build
    # without AMX when it does not run
    if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
        probe="$(mktemp)"
        if cc -O1 -mamx-tile "$HERE/tools/amx-probe.c" -o "$probe" 2>/dev/null && ( "$probe" ) 2>/dev/null; then
            log "AMX runs on this CPU"
        else
            log "cpuid reports AMX but its instructions fault here: building without AMX"
            NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
            CMAKE_EXTRA+=("-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX")
        fi
        rm -f "$probe"
    fi
else
    CMAKE_EXTRA+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
fi
BUILD="$LLAMA/build-$FLAVOUR"
TARGETS=(llama llama-cli llama-completion llama-perplexity llama-bench llama-quantize llama-imatrix)

if command -v ccache >/dev/null; then
    # compiler cache shared by all patched trees: paths relative to the tree, so a new tree key
    # (a change of our patch) recompiles only the files whose preprocessed source changed
    export CCACHE_BASEDIR="$TREE_ROOT" CCACHE_NOHASHDIR=true
    CMAKE_EXTRA+=(-DGGML_CCACHE=ON)
    log "using ccache ($(ccache --version | head -1))"
else
    CMAKE_EXTRA+=(-DGGML_CCACHE=OFF)
fi
log "configuring ($FLAVOUR) in $BUILD"
cmake -S "$LLAMA" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
    "${CMAKE_EXTRA[@]}" >"$BUILD.configure.log" 2>&1 \
    || { tail -40 "$BUILD.configure.log" >&2; die "cmake configure failed (log: $BUILD.configure.log)"; }
log "building ${TARGETS[*]} with $JOBS jobs"
t_build=$(date +%s)
ninja -C "$BUILD" -j "$JOBS" "${TARGETS[@]}" >&2 || die "build failed"
BIN="$BUILD/bin"

log "building mlwq-check"
cc -O2 -std=c11 -Wall -Wextra -I "$LLAMA/ggml/include" -I "$LLAMA/ggml/src/ggml-cpu" \
    "$HERE/tools/mlwq-check.c" -L "$BIN" -lggml-base -lggml-cpu -lggml -lm \
    -Wl,-rpath,"$BIN" -o "$BIN/mlwq-check" || die "mlwq-check failed to build"
log "build took $(( $(date +%s) - t_build )) s"

# ---- 4. python packages --------------------------------------------------------------------
if [ "${MLWQ_NO_PIP:-0}" != "1" ]; then
    log "installing the patched gguf-py into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install --quiet --no-deps --force-reinstall "$LLAMA/gguf-py" >&2 || die "pip install gguf-py failed"
    log "installing llama-cpp-python $SDIST_VERSION from the patched sdist (LLAMA_BUILD=OFF: no second llama.cpp build)"
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$PY" -m pip install --quiet --no-deps --force-reinstall "$TREE" >&2 \
        || die "pip install llama-cpp-python failed"
    # its runtime dependencies, without touching what is already installed (torch, numpy)
    # shellcheck disable=SC2086  (a list of requirements)
    "$PY" -m pip install --quiet -c "$ROOT/constraints.txt" $LLAMA_CPP_PYTHON_DEPS >&2 \
        || die "pip install of llama-cpp-python's dependencies failed"
    PKG=$("$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("llama_cpp"); print(os.path.dirname(s.origin))')
    mkdir -p "$PKG/lib"
    rm -f "$PKG"/lib/lib*.so*
    for so in "$BIN"/lib*.so*; do
        cp -a "$so" "$PKG/lib/"      # keeps the soname symlinks (libllama.so -> libllama.so.0 -> ...)
    done
    env -u LLAMA_CPP_LIB_PATH "$PY" - <<EOF >&2 || die "llama_cpp does not load our library"
import llama_cpp, ctypes
lib = llama_cpp.llama_cpp._lib
print("[mlwq-build] llama_cpp", llama_cpp.__version__, "loads", lib._name)
assert "$PKG" in lib._name, lib._name
EOF
fi

echo "$TREE_ROOT" > "$CACHE/llama-cpp-current.part" && mv "$CACHE/llama-cpp-current.part" "$CACHE/llama-cpp-current"
cat > "$TREE_ROOT/mlwq-build.json.part" <<EOF
{"key": "$KEY", "flavour": "$FLAVOUR", "llama_cpp": "$LLAMA", "build": "$BUILD", "bin": "$BIN"}
EOF
mv "$TREE_ROOT/mlwq-build.json.part" "$TREE_ROOT/mlwq-build.json"

log "done in $(( $(date +%s) - t_start )) s"
echo "llama.cpp tree : $LLAMA"
echo "binaries       : $BIN  (llama-cli llama-completion llama-perplexity llama-bench llama-quantize llama-imatrix mlwq-check)"
echo "libraries      : $BIN/libllama.so $BIN/libggml*.so"
[ "${MLWQ_NO_PIP:-0}" != "1" ] && echo "python         : $PY (gguf + llama_cpp with these libraries in $PKG/lib)"
exit 0
