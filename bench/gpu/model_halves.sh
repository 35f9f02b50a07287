# Sourced by gpu_pipeline_bench.sh and quant_time.sh (from the repo root): the default model's GGUF
# travels to the GPU machine in two halves over consecutive calls (`split -b 48M` of
# $MLWQ_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf into .device/p1/model.part.aa and
# .device/p2/model.part.ab), WikiText-2 in .device/data/wikitext-2, the gguf wheel in .whl.
CACHE=/tmp/mlwqcache
SRC_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
export MLWQ_CACHE=$CACHE MLWQ_DATA_DIR=$PWD/.device/data PYTHONUNBUFFERED=1

store_first_half() {
    mkdir -p "$CACHE" && cp .device/p1/model.part.aa "$CACHE/"
}

# the second half joined to the first, checked by sha256; the gguf wheel installed in /tmp/site
assemble_model() {
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
    cat "$CACHE/model.part.aa" .device/p2/model.part.ab > "$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" || return 1
    echo "$SRC_SHA  $CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || return 1
}
