# Sourced by device_cuda_checks.sh and device_cpu.sh (from the repository root): the patched
# llama.cpp tree the GPU machine builds, as ggml_patch/build.sh makes it here.
#
#   patched_tree DIR    # DIR/llama.cpp = pristine (.cache/cuda_src/llama.cpp.tar.xz) + patches + ggml_patch/src
#
# Files that did not change keep their mtime, so that ninja rebuilds only what a change touches.
patched_tree() {
    local W=$1 SRC=$1/llama.cpp
    rm -rf "$W/new" && mkdir -p "$W/new"
    tar xJf .cache/cuda_src/llama.cpp.tar.xz -C "$W/new" || return 1
    for p in ggml_patch/patches/*.patch; do
        patch -p1 --batch --forward -d "$W/new/llama.cpp" < "$p" > /dev/null || { echo "patch $p failed"; return 1; }
    done
    (cd ggml_patch/src && find . -type f) | while read -r f; do
        f=${f#./}
        mkdir -p "$(dirname "$W/new/llama.cpp/$f")" && cp "ggml_patch/src/$f" "$W/new/llama.cpp/$f"
    done
    mkdir -p "$SRC"
    (cd "$W/new/llama.cpp" && find . -type f) | while read -r f; do
        cmp -s "$W/new/llama.cpp/$f" "$SRC/$f" || { mkdir -p "$(dirname "$SRC/$f")"; cp "$W/new/llama.cpp/$f" "$SRC/$f"; }
    done
    rm -rf "$W/new"
}
