#!/usr/bin/env bash
# tools.bench_pipeline on the GPU machine (device tool), several runs in parallel processes on the
# one GPU, detached so that they may outlast one device call. From the repo root:
#   bench/gpu/gpu_pipeline_bench.sh part1                      # carry .device/p1: first half of the model
#   bench/gpu/gpu_pipeline_bench.sh start "ARGS" "ARGS" ...     # carry .device/p2 .device/data .whl
#   bench/gpu/gpu_pipeline_bench.sh wait 540                    # waits, then packs results to $OUT
# Each ARGS is one bench_pipeline command line (e.g. "--configs mlwq3_rel --set weighted=true --tag w"),
# followed by $BENCH_ARGS (common settings: calibration, evaluation windows). The device tool carries
# at most 64 MiB a call and the 98 MB source GGUF does not fit, so it travels in two halves
# (`split -b 48M` of $MLWQ_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf into .device/p1/model.part.aa and
# .device/p2/model.part.ab) over consecutive calls while the machine stays warm. .device/data/wikitext-2
# holds wiki.test.raw and wiki.valid.tokens (copies of ../shared/data), .whl the gguf wheel.
set -uo pipefail
RES=/tmp/res/pipeline
source bench/gpu/model_halves.sh
mode=$1; shift
case "$mode" in
part1)
    store_parts .device/p1 && echo "first half stored" ;;
start)
    assemble_model || exit 1
    mkdir -p "$RES"
    nvidia-smi --query-gpu=name,memory.total --format=csv
    i=0
    for args in "$@"; do
        i=$((i + 1))
        log="$RES/log_$i.txt"
        echo "$args ${BENCH_ARGS:-}" > "$log.args"
        PYTHONPATH=/tmp/site:$PWD setsid nohup bash -c \
            "python3 -m tools.bench_pipeline $args ${BENCH_ARGS:-} --out '$RES' > '$log' 2>&1; echo \$? > '$log.rc'" \
            > /dev/null 2>&1 < /dev/null &
    done
    echo "started $# runs" ;;
wait)
    limit=${1:-540}; t=0
    while [ "$t" -lt "$limit" ]; do
        running=$(pgrep -fc "python3 -m tools.bench_pipeline" || true)
        [ "$running" = "0" ] && break
        sleep 10; t=$((t + 10))
    done
    echo "waited ${t}s; still running: $(pgrep -fc 'python3 -m tools.bench_pipeline' || true)"
    for f in "$RES"/log_*.txt; do echo "== $f: $(cat "$f.args")"; tail -c 600 "$f" | tr '\r' '\n' | tail -n 4; done
    PYTHONPATH=/tmp/site:$PWD python3 -m tools.bench_pipeline --table --out "$RES" | tee "$OUT/table.md"
    tar czf "$OUT/pipeline.tgz" --exclude='ckpt_*' -C /tmp/res pipeline ;;
*)
    echo "usage: $0 part1 | start ARGS... | wait SECONDS" >&2; exit 2 ;;
esac
