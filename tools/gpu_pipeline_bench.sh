#!/usr/bin/env bash
# tools.bench_pipeline on the GPU machine (device tool), several configs in parallel processes
# on the one GPU, detached so that a run may outlast one device call:
#   tools/gpu_pipeline_bench.sh start "ref,rtn3" "mlwq3" ...   # returns at once
#   tools/gpu_pipeline_bench.sh wait 540                        # waits, then packs results to $OUT
# Expects the gguf wheel in .whl/, the default model at $MLWQ_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
# and WikiText-2 under $MLWQ_DATA_DIR.
set -uo pipefail
RES=/tmp/res/pipeline
mode=$1; shift
case "$mode" in
start)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    mkdir -p "$RES"
    nvidia-smi --query-gpu=name,memory.total --format=csv
    for group in "$@"; do
        log="$RES/log_${group//,/_}.txt"
        PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD setsid nohup bash -c \
            "python3 -m tools.bench_pipeline --configs '$group' --out '$RES' > '$log' 2>&1; echo \$? > '$log.rc'" \
            > /dev/null 2>&1 < /dev/null &
    done
    echo "started $# groups" ;;
wait)
    limit=${1:-540}; t=0
    while [ "$t" -lt "$limit" ]; do
        running=$(pgrep -fc "tools.bench_pipeline --configs" || true)
        [ "$running" = "0" ] && break
        sleep 10; t=$((t + 10))
    done
    echo "waited ${t}s; still running: $(pgrep -fc 'tools.bench_pipeline --configs' || true)"
    for f in "$RES"/log_*.txt; do echo "== $f"; tail -c 600 "$f" | tr '\r' '\n' | tail -n 4; done
    PYTHONPATH=/tmp/site:$PWD python3 -m tools.bench_pipeline --table --out "$RES" | tee "$OUT/table.md"
    tar czf "$OUT/pipeline.tgz" --exclude='ckpt_*' -C /tmp/res pipeline ;;
*)
    echo "usage: $0 start GROUP... | wait SECONDS" >&2; exit 2 ;;
esac
