#!/usr/bin/env bash
# Gemma-3-270M with the paper's calibration (BOS-headed windows) and 200 steps of block tuning at
# 3, 2.5 and 3.59 bits on the GPU machine, then the Llama-3.2-1B shape's time with block tuning;
# the checkpoints kept for the trip back, the first one run through the CUDA build. From the repo
# root, one device call per line:
#   bench/gpu/quant_time.sh store .device/g1        # ... g4: carry .device/gN
#   bench/gpu/gemma3_bos.sh start                    # carry .device/g5 .device/gtok .cache/cuda_src .device/data .whl .device/tok
#   bench/gpu/gemma3_bos.sh cuda                     # waits for run 1 and the build: gemma3_cuda.sh
#   bench/gpu/quant_time.sh wait 540; bench/gpu/quant_time.sh fetch N   # N = 1, 2, 3
# or, for the demo's CPU-sized calibration (32 x 512, TQP 20) with 50 steps of block tuning at 3
# and 2.5 bits (the CPU takes hours for it):
#   bench/gpu/gemma3_bos.sh cpucal                   # carry .device/g5 .device/gtok .device/data .whl
set -uo pipefail
RES=/tmp/res/qt
source bench/gpu/model_halves.sh
case "${1:-}" in
prepare)   # the last part stored, the GGUF joined, the machine's char-level tokenizer replaced
    store_parts .device/g5 && assemble_model && assemble_gemma > /dev/null || exit 1
    bash bench/gpu/gemma3_tokenizer.sh ;;
cpucal)
    bash "$0" prepare || exit 1
    bash bench/gpu/quant_time.sh start \
        "keep:--shape gemma3-270m --bits 3 --nsamples 32 --seqlen 512 --tqp-steps 20 --block-tune-steps 50" \
        "keep:--shape gemma3-270m --bits 2.5 --nsamples 32 --seqlen 512 --tqp-steps 20 --block-tune-steps 50" ;;
start)
    bash "$0" prepare || exit 1
    store_llama3_tokenizer || exit 1
    bash bench/gpu/quant_time.sh start "keep:--shape gemma3-270m --bits 3 --block-tune-steps 200" \
        "keep:--shape gemma3-270m --bits 2.5 --block-tune-steps 200" \
        "keep:--shape gemma3-270m --bits 3.59 --block-tune-steps 200" \
        "--shape llama-1b --block-tune-steps 200 --max-blocks 4" || exit 1
    # the CUDA build beside the runs (its CPU work slows their launches: these runs' times are not records)
    setsid nohup bash -c 'bash bench/gpu/device_cuda_checks.sh build > /tmp/build.log 2>&1; touch /tmp/build.done' \
        > /dev/null 2>&1 < /dev/null &
    echo "build started" ;;
cuda)
    t=0
    until grep -q "== run 2" "$RES/log.txt" 2>/dev/null && [ -f /tmp/build.done ]; do
        sleep 5; t=$((t + 5)); [ "$t" -gt 480 ] && { echo "run 1 or the build not done after ${t}s"; tail -5 /tmp/build.log; exit 1; }
    done
    echo "run 1 and the build done after ${t}s of waiting"; grep "ninja took" /tmp/build.log
    bash bench/gpu/gemma3_cuda.sh "$RES/ckpt_1" 40 ;;
*)
    echo "usage: $0 start | cpucal | cuda" >&2; exit 2 ;;
esac
