#!/usr/bin/env bash
# The CPU of the lent GPU machine (16 cores with AVX-512 VNNI) as an AVX-512 test and benchmark
# machine for the CPU kernels: the development VMs vary (some have AVX2 only). Run from the repo root.
#
#   bash bench/gpu/device_cpu.sh store             # carried parts (.device/m1 m2 q1 q2 q3) to /tmp/mlwq-cpu
#   bash bench/gpu/device_cpu.sh detach build      # builds below, in a job that outlives the call
#   bash bench/gpu/device_cpu.sh wait 300          # waits for that job; its log to $OUT
#   bash bench/gpu/device_cpu.sh fuzz              # the fuzz seeds (.device/seeds) through mlwq-fuzz-rows
#   bash bench/gpu/device_cpu.sh check             # fuzz + llama-perplexity: repacked, rows, ub 512 and 1
#   bash bench/gpu/device_cpu.sh afterbuild        # waits for device_cuda_checks.sh's detached build
#   bash bench/gpu/device_cpu.sh parts             # waits until a later call has stored the last parts
#   bash bench/gpu/device_cpu.sh bench             # MLWQ / Q3_K_S (tg64, pp128; 2 threads and 1) and
#                                                  # repacked / rows, as bench/cpu_speed.sh: tools.bench_ratio
#                                                  # (MLWQ_BENCH="tg pp ..." picks some: names in stage_bench)
#
# build: the patched tree (patched_tree.sh) built CPU only, -j16: native (-march=native: AVX-512
# VNNI), a static native ggml with mlwq-fuzz-rows (the rows fuzz target under
# ggml_patch/tools/mlwq-fuzz-run.c's main, no libFuzzer) and, with MLWQ_AVX2_BUILD=1, an AVX2 build
# (bench/avx2_build.sh's flags: GGML_AVX512=OFF), which bench then times too.
#
# Files: the two GGUFs travel in parts (the device tool carries 64 MiB a call), joined and checked
# against MLWQ_SHA / Q3KS_SHA: `split -b` of the MLWQ file into .device/m1/mlwqpart.aa and
# .device/m2/mlwqpart.ab, of the Q3_K_S file into .device/q1 .device/q2 .device/q3 (q3kpart.*).
# The rows fuzz seeds (`bash ggml_patch/fuzz/run_fuzz.sh --seeds`, its rows/ folder) in .device/seeds.
set -o pipefail
OUT=${OUT:-/tmp/mlwq-out}
mkdir -p "$OUT"
W=$PWD/build/cpu-dev
SRC=$W/llama.cpp
D=/tmp/mlwq-cpu
export PYTHONUNBUFFERED=1
source bench/gpu/patched_tree.sh

cpu_info() {
    lscpu | grep -E "^Model name|^CPU\(s\)|^CPU family|^Model:|^Thread"
    { grep -o -E 'avx512[a-z_]*|amx[a-z_0-9]*|avx_vnni' /proc/cpuinfo || echo 'no avx512'; } | sort -u | tr '\n' ' '
    echo
}

# cmake + ninja of llama-bench and llama-perplexity into $1 with the cmake flags after it
build_one() {
    local b=$1; shift
    cmake -S "$SRC" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF "$@" > "$b.cmake.log" 2>&1 || { tail -30 "$b.cmake.log"; return 1; }
    ninja -C "$b" -j16 llama-bench llama-perplexity > "$b.ninja.log" 2>&1 || { grep -B2 -A12 error "$b.ninja.log" | head -60; return 1; }
}

stage_build() {
    cpu_info
    local t=$(date +%s)
    patched_tree "$W" || return 1
    build_one "$W/native" -DGGML_NATIVE=ON || return 1
    if [ "${MLWQ_AVX2_BUILD:-0}" = 1 ]; then
        build_one "$W/avx2" -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF || return 1
    fi
    build_static || echo "mlwq-fuzz-rows: build failed (the check stage needs it, the benchmarks do not)"
    echo "builds took $(( $(date +%s) - t )) s"
}

# a static native ggml in $W/static and mlwq-fuzz-rows against it
build_static() {
    local s=$W/static
    cmake -S "$SRC" -B "$s" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_COMMON=OFF -DGGML_CCACHE=OFF > "$s.cmake.log" 2>&1 || { tail -30 "$s.cmake.log"; return 1; }
    ninja -C "$s" -j16 ggml-base ggml-cpu > "$s.ninja.log" 2>&1 || { tail -40 "$s.ninja.log"; return 1; }
    build_fuzz_rows "$s"
}

# the fuzz seeds' rows through the harness's checks on this CPU's kernels (the repacked rows against
# the float64 reference, prompts against generation bit for bit, ...)
stage_fuzz() {
    cpu_info
    [ -x "$W/static/mlwq-fuzz-rows" ] || { patched_tree "$W" && build_static; } || return 1
    "$W/static/mlwq-fuzz-rows" "$D/rows" 2>&1 | tail -3
}

# mlwq-fuzz-rows in $1 (a static native ggml build)
build_fuzz_rows() {
    local s=$1 G=$SRC/ggml
    local flags="-O2 -march=native -Wall -Wextra -Wno-unused-function -Wno-unused-parameter -I$G/include -I$G/src -I$G/src/ggml-cpu -Iggml_patch/fuzz"
    gcc $flags -std=gnu11 -c ggml_patch/fuzz/fuzz_mlwq_rows.c -o "$s/rows.o" \
        && gcc $flags -std=gnu11 -c ggml_patch/fuzz/mlwq_fuzz_common.c -o "$s/common.o" \
        && gcc $flags -std=gnu11 -c ggml_patch/tools/mlwq-fuzz-run.c -o "$s/run.o" \
        && g++ -O2 "$s/rows.o" "$s/common.o" "$s/run.o" $(find "$s" -name libggml-cpu.a) $(find "$s" -name libggml-base.a) \
               -lm -lpthread -o "$s/mlwq-fuzz-rows"
}

# waits until the command succeeds, checking every 5 s, for at most $1 seconds; t: seconds waited
wait_for() {
    local max=$1; shift
    t=0
    while ! "$@" 2>/dev/null && [ "$t" -lt "$max" ]; do sleep 5; t=$((t + 5)); done
}

stage_store() {
    mkdir -p "$D"
    for d in .device/m1 .device/m2 .device/q1 .device/q2 .device/q3 .device/seeds; do
        [ -d "$d" ] && cp -r "$d"/. "$D/" && echo "stored $d"
    done
    ls -la "$D"
}

# the two GGUFs from their stored parts, checked by sha256
join_files() {
    [ -f "$D/mlwq.gguf" ] || { cat "$D"/mlwqpart.* > "$D/mlwq.gguf.tmp" && echo "$MLWQ_SHA  $D/mlwq.gguf.tmp" | sha256sum -c \
        && mv "$D/mlwq.gguf.tmp" "$D/mlwq.gguf"; } || return 1
    [ -f "$D/q3ks.gguf" ] || { cat "$D"/q3kpart.* > "$D/q3ks.gguf.tmp" && echo "$Q3KS_SHA  $D/q3ks.gguf.tmp" | sha256sum -c \
        && mv "$D/q3ks.gguf.tmp" "$D/q3ks.gguf"; } || return 1
}

stage_check() {
    cpu_info
    stage_fuzz || return 1
    join_files || return 1
    local P="$W/native/bin/llama-perplexity -m $D/mlwq.gguf -f .cache/cuda_src/wiki.test.head.raw -c 512 --chunks 4 -t 16"
    # prompts (panels, ub 512) as the base; token by token (generation kernels) must give the same
    # logits: KLD 0 with the repacked rows; the rows' own kernels (--no-repack) for comparison
    $P --kl-divergence-base "$D/base.kld" > "$OUT/ppl-ub512.log" 2>&1 || { tail -20 "$OUT/ppl-ub512.log"; return 1; }
    grep -E "CPU_REPACK|Final estimate" "$OUT/ppl-ub512.log"
    for v in "repack:" "rows:--no-repack"; do
        $P ${v#*:} -ub 1 -b 512 --kl-divergence-base "$D/base.kld" --kl-divergence > "$OUT/kld-ub1-${v%%:*}.log" 2>&1
        echo "== token by token (${v%%:*}) vs prompt batches (repacked)"
        grep -E "CPU_REPACK|Mean PPL|Mean    KLD|Maximum KLD|Same top" "$OUT/kld-ub1-${v%%:*}.log"
    done
    $P --no-repack > "$OUT/ppl-rows-ub512.log" 2>&1
    grep -E "CPU_REPACK|Final estimate" "$OUT/ppl-rows-ub512.log"
}

stage_bench() {
    join_files || return 1
    cpu_info | tee "$OUT/machine.txt"
    ratio() {   # BIN NAME ARGS...: python -m tools.bench_ratio of the MLWQ file against Q3_K_S (or as ARGS say)
        local bin=$1 name=$2; shift 2
        LD_LIBRARY_PATH=$bin MLWQ_LLAMA_BIN=$bin python3 -m tools.bench_ratio "$@" --out "$OUT/speed/$name" | tail -2
    }
    local M=$D/mlwq.gguf Q=$D/q3ks.gguf N=$W/native/bin A=$W/avx2/bin r
    for r in ${MLWQ_BENCH:-tg pp repack-tg repack-pp tg-1thread pp-1thread avx2-tg avx2-pp}; do
        case $r in
            tg)         ratio "$N" $r "$M" "$Q" --rounds 8 ;;
            pp)         ratio "$N" $r "$M" "$Q" --rounds 6 --p 128 ;;
            repack-tg)  ratio "$N" $r "$M" "$M" --a-args="--repack 1" --b-args="--repack 0" --rounds 8 ;;
            repack-pp)  ratio "$N" $r "$M" "$M" --a-args="--repack 1" --b-args="--repack 0" --rounds 6 --p 128 ;;
            tg-1thread) ratio "$N" $r "$M" "$Q" --threads 1 --rounds 6 ;;
            pp-1thread) ratio "$N" $r "$M" "$Q" --threads 1 --rounds 6 --p 128 ;;
            avx2-tg)    [ -x "$A/llama-bench" ] && ratio "$A" $r "$M" "$Q" --rounds 8 ;;
            avx2-pp)    [ -x "$A/llama-bench" ] && ratio "$A" $r "$M" "$Q" --rounds 6 --p 128 ;;
            avx2-tg-1thread) [ -x "$A/llama-bench" ] && ratio "$A" $r "$M" "$Q" --threads 1 --rounds 6 ;;
            avx2-pp-1thread) [ -x "$A/llama-bench" ] && ratio "$A" $r "$M" "$Q" --threads 1 --rounds 6 --p 128 ;;
        esac
    done
    (cd "$OUT" && tar czf speed.tgz speed)
}

case "${1:-}" in
    build) stage_build ;;
    store) stage_store ;;
    check) stage_check ;;
    fuzz)  stage_fuzz ;;
    bench) stage_bench ;;
    afterbuild) # waits (15 min at most) for the end of device_cuda_checks.sh's detached build stage,
           # so that no CPU timing overlaps that compile
           wait_for 900 grep -q "=== stage build rc=" "${MLWQ_RES:-/tmp/mlwq-res}/run.log"
           echo "waited ${t}s for the CUDA build" ;;
    parts) # waits (10 min at most) until the last parts of both files are stored (later calls carry them)
           wait_for 600 test -f "$D/mlwqpart.ab" -a -f "$D/q3kpart.ac"
           echo "waited ${t}s for the parts" ;;
    detach) shift
            mkdir -p "$D" && rm -f "$D/finished"
            OUT=$D/res setsid nohup bash -c 'mkdir -p "$OUT"; for s in "$@"; do echo "=== stage $s start $(date +%T)"; bash "$0" "$s"; rc=$?
                echo "=== stage $s rc=$rc end $(date +%T)"; [ "$s" = build ] && [ $rc != 0 ] && break; done
                echo done > /tmp/mlwq-cpu/finished' "$0" "$@" >> "$D/run.log" 2>&1 < /dev/null &
            echo "started: $*" ;;
    wait)  wait_for "${2:-300}" test -f "$D/finished"
           echo "waited ${t}s; finished: $([ -f "$D/finished" ] && echo yes || echo no)"
           tail -n 40 "$D/run.log"; cp "$D/run.log" "$OUT/" ;;
    *)     sed -n 2,20p "$0"; exit 2 ;;
esac
