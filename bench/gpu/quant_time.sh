#!/usr/bin/env bash
# tools.bench_quant_time on the GPU machine (device tool): the runs one after another in one
# detached job (timings are never taken beside another run), so they may outlast one device call.
# From the repo root:
#   bench/gpu/quant_time.sh part1            # carry .device/p1 .device/tok
#   bench/gpu/quant_time.sh store .device/g1 # one call per Gemma part (model_halves.sh)
#   bench/gpu/quant_time.sh start RUN...     # carry .device/p2 .device/data .whl
#   bench/gpu/quant_time.sh wait 540         # waits, then copies the log and the json to $OUT
#   bench/gpu/quant_time.sh fetch 2          # run 2's packed checkpoint to $OUT (one call each)
# QT_RES=DIR keeps a second job's runs apart from the first; QT_PARALLEL=1 starts the runs side by
# side (for files, not timings: runs sharing the GPU and the CPU time each other's waits).
# RUN is a bench_quant_time command line, e.g. "--shape llama-1b". A RUN starting with "keep:" also
# keeps its checkpoint and packs it for the trip back (zstd or xz, pieces of 15 MiB, at most 4); one
# starting with "at:DIR " runs the code of another tree (the baseline of an A/B on the same card:
# `mkdir -p .device/old && git archive REV mlwq tools exporters | tar x -C .device/old`, carried).
# The model halves, WikiText-2 and the gguf wheel: model_halves.sh; .device/tok the Llama-3.2
# tokenizer (mlwq.assets.llama3_tokenizer_dir).
set -uo pipefail
RES=${QT_RES:-/tmp/res/qt}
source bench/gpu/model_halves.sh
mode=$1; shift
case "$mode" in
part1)
    store_parts .device/p1 && store_llama3_tokenizer && echo "first half and tokenizer stored" ;;
store)
    store_parts "$@" && ls -la "$CACHE" ;;
start)
    assemble_model && assemble_gemma || exit 1
    mkdir -p "$RES"
    nvidia-smi --query-gpu=name,memory.total --format=csv
    : > "$RES/runs.sh"
    if command -v zstd > /dev/null; then PACK="zstd -T8 -15 -q"; EXT=tar.zst; else PACK="xz -T8 -6"; EXT=tar.xz; fi
    i=0
    for run in "$@"; do
        i=$((i + 1))
        tree=$PWD
        if [ "${run#at:}" != "$run" ]; then
            run=${run#at:}; tree=$(realpath "${run%% *}"); run=${run#* }
        fi
        args=${run#keep:}
        keep=""
        [ "$run" != "$args" ] && keep="--keep $RES/ckpt_$i"
        line="cd $tree && PYTHONPATH=/tmp/site:$tree python3 -m tools.bench_quant_time $args $keep --out $RES/quant-time-$i.json"
        [ -n "$keep" ] && line="$line && tar cf - -C $RES ckpt_$i | $PACK | split -b 15M - $RES/ckpt_$i.$EXT."
        if [ -n "${QT_PARALLEL:-}" ]; then
            echo "( echo '== run $i: $args ($tree)' > $RES/log_$i.txt; { $line; } >> $RES/log_$i.txt 2>&1 ) &" >> "$RES/runs.sh"
        else
            echo "echo '== run $i: $args ($tree)' >> $RES/log.txt; ( $line; ) >> $RES/log.txt 2>&1" >> "$RES/runs.sh"
        fi
    done
    [ -n "${QT_PARALLEL:-}" ] && echo "wait; cat $RES/log_*.txt > $RES/log.txt" >> "$RES/runs.sh"
    echo "python3 -c \"import glob, json; json.dump([e for f in sorted(glob.glob('$RES/quant-time-*.json')) for e in json.load(open(f))], open('$RES/quant-time.json', 'w'), indent=1)\"" >> "$RES/runs.sh"
    echo "echo done > $RES/finished" >> "$RES/runs.sh"
    setsid nohup bash "$RES/runs.sh" > /dev/null 2>&1 < /dev/null &
    echo "started $# runs" ;;
wait)
    limit=${1:-540}; t=0
    while [ "$t" -lt "$limit" ] && [ ! -f "$RES/finished" ]; do sleep 10; t=$((t + 10)); done
    echo "waited ${t}s; finished: $([ -f "$RES/finished" ] && echo yes || echo no)"
    if [ ! -f "$RES/finished" ] && ls "$RES"/log_*.txt > /dev/null 2>&1; then    # side-by-side runs still going
        cat "$RES"/log_*.txt > "$RES/log.txt"
    fi
    tr '\r' '\n' < "$RES/log.txt" | grep -v -E "it/s\]|s/it\]|/s\]$" | tail -n 60
    cp "$RES/log.txt" "$OUT/qt_log.txt"
    [ -f "$RES/quant-time.json" ] && cp "$RES/quant-time.json" "$OUT/"
    ls -la "$RES" ;;
fetch)
    # at most 64 MiB come back per call: one checkpoint's pieces (4 x 15 MiB at most)
    for f in "$RES"/ckpt_"$1".tar.*.*; do [ -f "$f" ] && cp "$f" "$OUT/"; done
    ls -la "$OUT" ;;
*)
    echo "usage: $0 part1 | store DIR... | start RUN... | wait SECONDS | fetch N" >&2; exit 2 ;;
esac
