#!/usr/bin/env bash
# Issue-4 figures with the REAL exported SmolLM2-135M on the GPU machine (the session's device tool),
# from the repo root. The device tool carries at most 64 MiB a call and the 98 MB source GGUF does
# not fit, so it travels in two halves (.device/p1/model.part.aa, .device/p2/model.part.ab: `split
# -b 48M` of $MLWQ_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf) over consecutive calls while the machine
# stays warm:
#
#   1. start     (carry .device/p1, .cache/cuda_src)  first half; CUDA build in the background
#   2. quantize  (carry .device/p2, .device/data, .whl) the source GGUF; `mlwq-export default --to gguf`
#                                                     (MLWQ 3-bit, 128 x 2048 calibration) on the GPU,
#                                                     in the background, timed alone on the GPU
#   3. wait                                           until the build and the export are done (<= 560 s)
#   4. run                                            waits for both; llama.cpp baselines from the same
#                                                     source (F16, imatrix, Q3_K_S, IQ3_XXS, Q4_K_M);
#                                                     CPU-vs-CUDA perplexity of the MLWQ file; ONE
#                                                     llama-bench run of all five files (-ngl 99)
#   5. bench1b                                        device_cuda_checks.sh bench (copy bandwidth,
#                                                     Llama-3.2-1B-shaped random Q3_K_S vs MLWQ3)
#
# After a kernel change, with an MLWQ file exported here (no GPU export): start2, stash (twice),
# recheck, baselines; see those modes below.
#
# .device/data/wikitext-2/ holds wiki.test.raw (perplexity) and wiki.valid.tokens (the importance
# matrix of the baselines), copied from ../shared/data. Logs and tables go to $OUT. Builds with device_cuda_checks.sh (build/cuda-dev/, sm_90).
set -uo pipefail
OUT=${OUT:-/tmp/mlwq-out}
mkdir -p "$OUT"
ROOT=$(pwd)
W=/tmp/mlwq-real
BIN=$ROOT/build/cuda-dev/build-cuda/bin
GGUFPY=$ROOT/build/cuda-dev/llama.cpp/gguf-py
CACHE=/tmp/mlwqcache
SRC_GGUF=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
SRC_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DATA=$ROOT/.device/data/wikitext-2
export PYTHONUNBUFFERED=1
mkdir -p "$W" "$CACHE"

wait_for() {   # wait_for FILE SECONDS: until FILE exists
    local t=0
    while [ ! -e "$1" ] && [ "$t" -lt "$2" ]; do sleep 5; t=$((t + 5)); done
    [ -e "$1" ]
}

# llama.cpp's files from the same source: F16, an importance matrix on wiki.valid, Q3_K_S, IQ3_XXS,
# Q4_K_M; then the bytes of weights a generated token reads, per file
make_baselines() {
    cd "$W" || return 1
    Q="$BIN/llama-quantize"
    [ -f f16.gguf ] || "$Q" --allow-requantize "$SRC_GGUF" f16.gguf F16 16 > "$OUT/quantize-f16.log" 2>&1 || return 1
    [ -f imatrix.gguf ] || "$BIN/llama-imatrix" -m f16.gguf -f "$DATA/wiki.valid.tokens" -c 512 --chunks 32 -ngl 99 \
        --no-ppl -o imatrix.gguf > "$OUT/imatrix.log" 2>&1 || { tail "$OUT/imatrix.log"; return 1; }
    for t in Q3_K_S IQ3_XXS Q4_K_M; do
        [ -f "$t.gguf" ] || "$Q" --imatrix imatrix.gguf f16.gguf "$t.gguf" "$t" 16 > "$OUT/quantize-$t.log" 2>&1 \
            || { tail "$OUT/quantize-$t.log"; return 1; }
    done
    ls -la *.gguf | tee "$OUT/files.txt"
    PYTHONPATH=$GGUFPY python3 - <<'EOF' | tee -a "$OUT/files.txt"
# bytes a generated token reads: every 2-D weight of the blocks (MLWQ: with its permutation) and the
# output projection (token_embd, tied); token_embd's get_rows reads one row and is left out
import glob, gguf
for f in sorted(glob.glob("*.gguf")):
    if f.startswith("imatrix"):
        continue
    r = gguf.GGUFReader(f)
    names = {t.name for t in r.tensors}
    out_name = "output.weight" if "output.weight" in names else "token_embd.weight"
    b = sum(int(t.n_bytes) for t in r.tensors if (t.name.startswith("blk.") and len(t.shape) >= 2)
            or t.name.endswith(".mlwq_perm") or t.name == out_name)
    print(f"{f}: {b} bytes of weights read per token ({b / 1e6:.2f} MB)")
EOF
}

# ONE llama-bench run of the baselines and the MLWQ file $1 (-ngl 99), as json and a table
bench_all() {
    timeout 200 "$BIN/llama-bench" -m f16.gguf -m Q4_K_M.gguf -m Q3_K_S.gguf -m IQ3_XXS.gguf -m "$1" \
        -ngl 99 -p 512 -n 128 -r 5 -o json > "$OUT/llama-bench-smollm2.json" 2> "$OUT/llama-bench-smollm2.err"
    python3 - "$OUT/llama-bench-smollm2.json" <<'EOF' | tee "$OUT/llama-bench-smollm2.md"
import json, sys
rows = json.load(open(sys.argv[1]))
print(f"{rows[0]['gpu_info']} | build {rows[0]['build_commit']} | {rows[0]['n_gpu_layers']} layers on the GPU")
print("| file | test | t/s | ± |\n|---|---|---|---|")
for r in rows:
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"| {r['model_filename']} | {test} | {r['avg_ts']:.1f} | {r['stddev_ts']:.1f} |")
EOF
}

# The five files of bench_all in five llama-bench runs, the order rotated by one each time, so that
# each file runs once in each place (in a -p 512 run the 4th and 5th model generate 6-11 % slower,
# whatever the type: docs/results/gpu-speed/README.md, sixth session); then tg128 per place, the mean, and the
# ratio to Q3_K_S. $1: the MLWQ file.
bench_rotated() {
    local files=(f16.gguf Q4_K_M.gguf Q3_K_S.gguf IQ3_XXS.gguf "$1") r k
    for r in 0 1 2 3 4; do
        local args=()
        for k in 0 1 2 3 4; do args+=(-m "${files[$(( (k + r) % 5 ))]}"); done
        echo "== rotation $r: ${args[*]}" | tee -a "$OUT/rotation.md"
        timeout 120 "$BIN/llama-bench" "${args[@]}" -ngl 99 -p 512 -n 128 -r 5 -o json > "$OUT/rotation-$r.json" 2> /dev/null
    done
    python3 - "$OUT" <<'EOF' | tee -a "$OUT/rotation.md"
import json, sys
tg, pp = {}, {}
for r in range(5):
    runs = json.load(open(f"{sys.argv[1]}/rotation-{r}.json"))
    for place, x in enumerate(x for x in runs if x["n_gen"]):
        tg.setdefault(x["model_filename"].split("/")[-1], {})[place + 1] = x["avg_ts"]
    for x in runs:
        if x["n_prompt"]:
            pp.setdefault(x["model_filename"].split("/")[-1], []).append(x["avg_ts"])
q3 = sum(tg["Q3_K_S.gguf"].values()) / 5
print("| file | pp512 t/s (mean of 5) | tg128 in place 1 | 2 | 3 | 4 | 5 | tg128 mean | / Q3_K_S |")
print("|---|---|---|---|---|---|---|---|---|")
for f, by in tg.items():
    m = sum(by.values()) / len(by)
    print(f"| {f} | {sum(pp[f]) / len(pp[f]):.0f} | " + " | ".join(f"{by[p]:.1f}" for p in sorted(by))
          + f" | {m:.1f} | {m / q3:.3f} |")
EOF
}

case "${1:-}" in
start)
    cp .device/p1/model.part.aa "$W/" || exit 1
    setsid nohup bash -c "bash bench/gpu/device_cuda_checks.sh build > '$W/build.log' 2>&1; echo \$? > '$W/build.rc'" \
        > /dev/null 2>&1 < /dev/null &
    echo "build started"; nvidia-smi --query-gpu=name,memory.total --format=csv ;;
quantize)
    cat "$W/model.part.aa" .device/p2/model.part.ab > "$SRC_GGUF.part" && mv "$SRC_GGUF.part" "$SRC_GGUF"
    echo "$SRC_SHA  $SRC_GGUF" | sha256sum -c - || exit 1
    # the exporter needs the patched gguf-py (MLWQ types): the build stage copies it into the tree first
    for _ in $(seq 60); do grep -q MLWQ3 "$GGUFPY/gguf/constants.py" 2>/dev/null && break; sleep 2; done
    grep -q MLWQ3 "$GGUFPY/gguf/constants.py" || { echo "patched gguf-py not there"; tail -20 "$W/build.log"; exit 1; }
    # transformers reads gguf's version from its installed metadata ("Invalid version: 'N/A'" from a
    # bare PYTHONPATH): install the carried gguf wheel (.whl/) and put the patched package in its place
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gguf-*.whl || exit 1
    rm -rf /tmp/site/gguf && cp -r "$GGUFPY/gguf" /tmp/site/gguf
    setsid nohup bash -c "cd '$ROOT' && PYTHONPATH='/tmp/site:$ROOT' MLWQ_CACHE='$CACHE' MLWQ_DATA_DIR='$ROOT/.device/data' \
        /usr/bin/time -v python3 -m exporters.cli default --to gguf --out '$W/smollm2-mlwq3.gguf' --bits 3 \
        > '$W/export.log' 2>&1; echo \$? > '$W/export.rc'" > /dev/null 2>&1 < /dev/null &
    echo "export started" ;;
wait)
    wait_for "$W/build.rc" 560; wait_for "$W/export.rc" $(( 560 - SECONDS ))
    echo "build rc $(cat "$W/build.rc" 2>/dev/null), export rc $(cat "$W/export.rc" 2>/dev/null) after $SECONDS s"
    grep "ninja took" "$W/build.log"; tr '\r' '\n' < "$W/export.log" | tail -5 ;;
run)
    wait_for "$W/build.rc" 400 && [ "$(cat "$W/build.rc")" = 0 ] || { echo "build failed or not done"; tail -30 "$W/build.log"; exit 1; }
    grep "ninja took" "$W/build.log"
    wait_for "$W/export.rc" 400 && [ "$(cat "$W/export.rc")" = 0 ] || { echo "export failed or not done"; tail -c 3000 "$W/export.log"; exit 1; }
    tr '\r' '\n' < "$W/export.log" | grep -vE "^\s*$|it/s\]$|block/s" | tail -25 | tee "$OUT/export.log"
    make_baselines || exit 1
    P="$BIN/llama-perplexity -m smollm2-mlwq3.gguf -f $DATA/wiki.test.raw -c 512"
    CUDA_VISIBLE_DEVICES= timeout 300 $P --chunks 100 -t 16 -ngl 0 --kl-divergence-base cpu100.kld > "$OUT/ppl-cpu.log" 2>&1
    grep -E "Final estimate" "$OUT/ppl-cpu.log"
    timeout 120 $P --chunks 100 -ngl 99 --kl-divergence-base cpu100.kld --kl-divergence > "$OUT/ppl-cuda-ub512.log" 2>&1
    timeout 200 $P --chunks 100 -ngl 99 -ub 1 --kl-divergence-base cpu100.kld --kl-divergence > "$OUT/ppl-cuda-ub1.log" 2>&1
    for f in ub512 ub1; do
        echo "== CUDA $f vs CPU (100 chunks)"
        grep -E "offloaded|Mean PPL|Mean    KLD|Same top|RMS Δp" "$OUT/ppl-cuda-$f.log"
    done
    bench_all smollm2-mlwq3.gguf ;;
bench1b)
    bash bench/gpu/device_cuda_checks.sh bench ;;
# A kernel change checked on an exported file made here (runs/llamacpp/smollm2-mlwq3.gguf, `split -b
# 40M` into .device/m1 and .device/m2): start2 (carry .device/m1) builds, recheck (carry .device/m2)
# (carry .device/m2 and .device/data) reruns the op tests, the CPU-vs-CUDA perplexity of that file,
# and the mat-vec timings.
start2)
    cp .device/m1/* "$W/" || exit 1
    setsid nohup bash -c "bash bench/gpu/device_cuda_checks.sh build > '$W/build.log' 2>&1; echo \$? > '$W/build.rc'" \
        > /dev/null 2>&1 < /dev/null &
    echo "build started" ;;
recheck)
    cat "$W"/mlwqpart.aa .device/m2/mlwqpart.ab > "$W/mlwq-cpu-calib.gguf"
    sha256sum "$W/mlwq-cpu-calib.gguf"
    wait_for "$W/build.rc" 420 && [ "$(cat "$W/build.rc")" = 0 ] || { echo "build failed or not done"; tail -30 "$W/build.log"; exit 1; }
    grep "ninja took" "$W/build.log"
    timeout 120 "$BIN/test-mlwq-cuda" > "$OUT/test-mlwq-cuda.log" 2>&1; echo "test-mlwq-cuda rc=$?"
    grep -v "^  \[ ok \]" "$OUT/test-mlwq-cuda.log" | tail -8
    P="$BIN/llama-perplexity -m $W/mlwq-cpu-calib.gguf -f $DATA/wiki.test.raw -c 512 --chunks ${CHUNKS:-60}"
    CUDA_VISIBLE_DEVICES= timeout 200 $P -t 16 -ngl 0 --kl-divergence-base "$W/cpu.kld" > "$OUT/ppl-cpu.log" 2>&1
    grep -E "Final estimate" "$OUT/ppl-cpu.log"
    for ub in 512 1; do
        timeout 150 $P -ngl 99 -ub $ub --kl-divergence-base "$W/cpu.kld" --kl-divergence > "$OUT/ppl-cuda-ub$ub.log" 2>&1
        echo "== CUDA ub$ub vs CPU"
        grep -E "Mean PPL|Mean    KLD|Same top|RMS Δp" "$OUT/ppl-cuda-ub$ub.log"
    done
    # the mat-vec timings, if the call has time left (SKIP_BENCHOPS=1: never)
    [ -z "${SKIP_BENCHOPS:-}" ] && [ "$SECONDS" -lt 420 ] && timeout 150 "$BIN/test-mlwq-cuda" --bench > "$OUT/bench-ops.log" 2>&1 \
        && tr '\r' '\n' < "$OUT/bench-ops.log" | sed 's/ggml_backend_cuda_graph_compute: CUDA graph warmup complete//' \
        | grep -E "us .*GB/s|batch|shape"
    true ;;
# The speed table on a kernel change, with the file checked by recheck and the baselines made here
# from the source: stash (carry .device/p1, then again with .device/p2) leaves each half of the
# source GGUF on the machine; baselines joins them, makes llama.cpp's files, benches all of them.
stash)
    cp .device/p*/model.part.* "$W/" && ls -la "$W" ;;
baselines)
    cat "$W/model.part.aa" "$W/model.part.ab" > "$SRC_GGUF.part" && mv "$SRC_GGUF.part" "$SRC_GGUF"
    echo "$SRC_SHA  $SRC_GGUF" | sha256sum -c - || exit 1
    wait_for "$W/build.rc" 420 && [ "$(cat "$W/build.rc")" = 0 ] || { echo "build failed or not done"; exit 1; }
    make_baselines || exit 1
    bench_all mlwq-cpu-calib.gguf ;;
rotation)   # after baselines
    cd "$W" || exit 1
    bench_rotated mlwq-cpu-calib.gguf ;;
*)
    echo "usage: $0 start|quantize|wait|run|bench1b|start2|recheck|stash|baselines|rotation"; exit 2 ;;
esac
