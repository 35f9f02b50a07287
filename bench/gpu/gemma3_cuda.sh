#!/usr/bin/env bash
# Gemma-3-270M in the CUDA build (GPU machine, repo root): build the patched llama.cpp with CUDA
# (device_cuda_checks.sh build), export a Gemma checkpoint quantized there by quant_time.sh with
# the build tree's patched gguf-py, then llama-perplexity (all layers on the GPU, and the CPU for
# the same file) and one completion. Carry .cache/cuda_src and .device/data.
#   bash bench/gpu/gemma3_cuda.sh CHECKPOINT_DIR [CHUNKS]
set -uo pipefail
CKPT=${1:?checkpoint directory}; CHUNKS=${2:-40}
OUT=${OUT:-/tmp/mlwq-out}; export OUT
BIN=build/cuda-dev/build-cuda/bin
SRC_GGUF=/tmp/mlwqcache/gemma-3-270m-q4_k_m.gguf
T0=$(date +%s)
bash bench/gpu/device_cuda_checks.sh build > "$OUT/gemma3-build.log" 2>&1 || { tail -30 "$OUT/gemma3-build.log"; exit 1; }
grep "ninja took" "$OUT/gemma3-build.log"
PYTHONPATH=build/cuda-dev/llama.cpp/gguf-py:/tmp/site:$PWD python3 -m exporters.cli "$CKPT" --to gguf \
    --out /tmp/gemma3-mlwq.gguf --source "$SRC_GGUF" 2>&1 | tail -1 || exit 1
for ngl in 99 0; do
    "$BIN"/llama-perplexity -m /tmp/gemma3-mlwq.gguf -f .device/data/wikitext-2/wiki.test.raw -c 512 \
        --chunks "$CHUNKS" -ngl $ngl -t 16 > "$OUT/gemma3-ppl-ngl$ngl.log" 2>&1
    echo "ngl $ngl: $(grep -E 'Final estimate' "$OUT/gemma3-ppl-ngl$ngl.log")"
done
grep -E "offloaded|CUDA0 model buffer" "$OUT/gemma3-ppl-ngl99.log" | head -3
"$BIN"/llama-completion -m /tmp/gemma3-mlwq.gguf -p "The capital of France is" -n 24 --temp 0 -no-cnv -ngl 99 \
    2> "$OUT/gemma3-completion.err" | tee "$OUT/gemma3-completion.txt"
echo; echo "gemma3_cuda: $(( $(date +%s) - T0 )) s"
