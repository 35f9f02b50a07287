#!/usr/bin/env bash
# MLWQ CUDA checks on a GPU machine (the session's `device` tool), run from the repo root:
#
#   bash bench/gpu/device_cuda_checks.sh build          # patched llama.cpp + test-mlwq-cuda (sm_90)
#   bash bench/gpu/device_cuda_checks.sh test           # op tests, CPU-vs-CUDA KLD of a whole model
#   bash bench/gpu/device_cuda_checks.sh ops            # the op tests alone (test-mlwq-cuda)
#   bash bench/gpu/device_cuda_checks.sh sanitize       # compute-sanitizer of the op tests (SANITIZE_TOOLS, SANITIZE_LIBS)
#   bash bench/gpu/device_cuda_checks.sh benchops       # mat-vec speed, MLWQ3 vs Q3_K/Q4_0/Q8_0
#   bash bench/gpu/device_cuda_checks.sh bench          # copy bandwidth, llama-bench MLWQ3 vs Q3_K_S (1B shape)
#   bash bench/gpu/device_cuda_checks.sh smollm2        # llama-bench of SmolLM2-shaped files (+ $MLWQ_REAL)
#   bash bench/gpu/device_cuda_checks.sh bench8b        # llama-bench MLWQ3 vs Q3_K_S, Llama-3-8B shape (~25 GB of disk)
#   bash bench/gpu/device_cuda_checks.sh ncu            # per-kernel GPU time and DRAM bytes of generation
#                                                       # (after smollm2; NCU_FILES="a.gguf b.gguf" for others;
#                                                       # NCU_SKIP, NCU_COUNT: launches skipped, profiled;
#                                                       # NCU_LIBS="committed A": with each library, lib-A from stage libs)
#   bash bench/gpu/device_cuda_checks.sh ncudetail      # (after bench) why the mat-vec kernels of the
#                                                       # 1B shape stop where they do: ncu's stall, occupancy
#                                                       # and memory sections (under ncu's replays the weights sit in L2)
#   MLWQ_LIBS="base load16 ctas75+ylate" bash bench/gpu/device_cuda_checks.sh libs libops libab
#                                                       # (after build and the shapes' files) one library per
#                                                       # variant (bench/gpu/variants/NAME.sed or .patch, or
#                                                       # .device/variants/NAME/; A+B: both), the op tests with
#                                                       # each, then tg128 of every library and of Q3_K_S, rotated
#   MLWQ_REAL=x.gguf bash bench/gpu/device_cuda_checks.sh order # the slow llama-bench configuration:
#                                                       # graphs off, fewer models before, GPU clocks
#   bash bench/gpu/device_cuda_checks.sh balanced       # (after smollm2, bench, bench8b) tg128 MLWQ3/Q3_K_S, one process per
#                                                       # file in ABBA order: the position-balanced ratio
#   bash bench/gpu/device_cuda_checks.sh all            # all of them, most important first, within MLWQ_DEV_LIMIT s
#   bash bench/gpu/device_cuda_checks.sh detach build test bench8b ...
#                                                       # the stages named, one after another, in a detached job
#                                                       # (for calls of 10 minutes): logs in $MLWQ_RES (/tmp/mlwq-res)
#   bash bench/gpu/device_cuda_checks.sh wait 540       # waits for it that long at most; its logs to $OUT
#   MLWQ_AFTER=/tmp/res/qt/finished bash bench/gpu/device_cuda_checks.sh detach build after smollm2 ...
#                                                       # builds beside quant_time.sh's job, benches after it
#
# Needs, carried in .cache/cuda_src/ (ignored by git): llama.cpp.tar.xz (the pristine vendored
# llama.cpp of llama-cpp-python 0.3.36, without models/docs/tests and other backends: the machine
# has no internet), smollm2_tokenizer.json.gz (tokenizer KV of SmolLM2), wiki.test.head.raw (the
# first 120 kB of wikitext-2 test), made by bench/gpu/prepare_cuda_src.sh. Builds under
# build/cuda-dev/ (ignored) for sm_90 (H100/H200); MLWQ_CUDA_ARCH=89 (say) builds for another GPU.
# Logs go to $OUT. How each figure of docs/BENCHMARKS.md is reproduced: bench/gpu/README.md.
set -x
set -o pipefail
OUT=${OUT:-/tmp/mlwq-out}
mkdir -p "$OUT"
ROOT=$(pwd)
W=$ROOT/build/cuda-dev
SRC=$W/llama.cpp
B=$W/build-cuda
BIN=$B/bin
C=$ROOT/.cache/cuda_src
GGUFPY=$SRC/gguf-py
export PYTHONUNBUFFERED=1
source bench/gpu/patched_tree.sh

# runs a command with stage libs' lib-NAME ahead of the build's libraries (the binaries' RUNPATH
# names bin/, so LD_LIBRARY_PATH wins); NAME committed: the build's own
with_lib() {
    local name=$1; shift
    if [ "$name" = committed ]; then "$@"; else LD_LIBRARY_PATH="$W/lib-$name" "$@"; fi
}

stage_build() {
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv
    nproc
    patched_tree "$W" || return 1
    cmake -S "$SRC" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${MLWQ_CUDA_ARCH:-90}" \
        -DGGML_CUDA_FA_ALL_QUANTS=OFF > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; return 1; }
    local t=$(date +%s)
    ninja -C "$B" -j16 llama-bench llama-perplexity llama-completion llama-quantize llama-imatrix > "$OUT/ninja.log" 2>&1 \
        || { grep -B2 -A12 "error" "$OUT/ninja.log" | head -80; return 1; }
    echo "ninja took $(( $(date +%s) - t )) s"
    g++ -O2 -std=c++17 -I"$SRC/ggml/include" ggml_patch/tests/test-mlwq-cuda.cpp -L"$BIN" \
        -lggml -lggml-base -lggml-cpu -lggml-cuda -Wl,-rpath,"$BIN" -o "$BIN/test-mlwq-cuda" || return 1
    ls -la "$BIN" | head -40
}

stage_test() {
    timeout 120 "$BIN/test-mlwq-cuda" 2>&1 | tee "$OUT/test-mlwq-cuda.log" | grep -v "^  \[ ok \]"
    # whole model, CPU vs CUDA, same file: SmolLM2-135M shape (K = 9 blocks: odd, 4-byte aligned rows)
    PYTHONPATH=$GGUFPY python3 bench/gpu/make_synthetic_gguf.py mlwq --shape smollm2-135m \
        --tokenizer "$C/smollm2_tokenizer.json.gz" --bits 3 -o "$W/smol-mlwq3.gguf" || return 1
    local P="$BIN/llama-perplexity -m $W/smol-mlwq3.gguf -f $C/wiki.test.head.raw -c 512 --chunks 4 -t 16"
    # CPU reference with no CUDA device at all (with -ngl 0 alone, big batches would still be
    # offloaded to the GPU by the scheduler)
    CUDA_VISIBLE_DEVICES= timeout 180 $P -ngl 0 --kl-divergence-base "$W/smol.kld" > "$OUT/ppl-cpu.log" 2>&1
    grep -E "Final estimate|MLWQ" "$OUT/ppl-cpu.log"
    for ub in 512 1 4; do
        timeout 120 $P -ngl 99 -ub $ub --kl-divergence-base "$W/smol.kld" --kl-divergence > "$OUT/ppl-cuda-ub$ub.log" 2>&1
        echo "== CUDA, ubatch $ub vs CPU"
        grep -E "offloaded|CUDA0 model buffer|CPU_Mapped model buffer|CPU model buffer|Mean PPL|Mean    KLD|Maximum KLD|Same top|RMS Δp|Mean PPL\(Q\)|Mean PPL\(base\)" "$OUT/ppl-cuda-ub$ub.log"
    done
}

stage_benchops() {
    timeout 240 "$BIN/test-mlwq-cuda" --bench 2>&1 | tee "$OUT/bench-ops.log"
}

# compute-sanitizer over the op tests: each tool of $SANITIZE_TOOLS (default memcheck; racecheck
# for the shared-memory kernels) with each library of $SANITIZE_LIBS (default committed; others
# from stage libs). Logs: $OUT/sanitizer-TOOL.log for the committed library, -TOOL-LIB.log for others.
stage_sanitize() {
    local lib tool log
    for lib in ${SANITIZE_LIBS:-committed}; do
        for tool in ${SANITIZE_TOOLS:-memcheck}; do
            log="$OUT/sanitizer-$tool$([ "$lib" = committed ] || echo "-$lib").log"
            with_lib "$lib" timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 "$BIN/test-mlwq-cuda" > "$log" 2>&1
            echo "compute-sanitizer $tool, $lib library: rc=$?"
            grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed|Invalid" "$log" | head -20
        done
    done
}

stage_bench() {
    python3 - <<'EOF' 2>&1 | tee "$OUT/bandwidth.log"
import torch, time
x = torch.empty(2 * 1024**3 // 4, dtype=torch.float32, device="cuda")
y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.perf_counter(); n = 20
for _ in range(n): y.copy_(x)
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n
print(f"device-to-device copy: {2 * x.numel() * 4 / dt / 1e9:.0f} GB/s (read + write, 2 GiB buffers)")
s = torch.empty(4 * 1024**3 // 4, dtype=torch.float32, device="cuda").uniform_()
for _ in range(3): s.sum()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(n): s.sum()
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n
print(f"read-only reduction: {s.numel() * 4 / dt / 1e9:.0f} GB/s (4 GiB)")
EOF
    # Llama-3.2-1B shape: F16 random -> llama-quantize Q3_K_S; MLWQ3 with the same token_embd bytes
    [ -f "$W/l1b-f16.gguf" ] || PYTHONPATH=$GGUFPY python3 bench/gpu/make_synthetic_gguf.py f16 \
        --shape llama-3.2-1b --tokenizer "$C/smollm2_tokenizer.json.gz" -o "$W/l1b-f16.gguf"
    [ -f "$W/l1b-q3ks.gguf" ] || "$BIN/llama-quantize" "$W/l1b-f16.gguf" "$W/l1b-q3ks.gguf" Q3_K_S 16 > "$OUT/quantize.log" 2>&1
    tail -3 "$OUT/quantize.log"
    [ -f "$W/l1b-mlwq3.gguf" ] || PYTHONPATH=$GGUFPY python3 bench/gpu/make_synthetic_gguf.py mlwq \
        --shape llama-3.2-1b --tokenizer "$C/smollm2_tokenizer.json.gz" --bits 3 --like "$W/l1b-q3ks.gguf" -o "$W/l1b-mlwq3.gguf"
    ls -la "$W"/*.gguf
    sync
    timeout 240 "$BIN/llama-bench" -m "$W/l1b-q3ks.gguf" -m "$W/l1b-mlwq3.gguf" -ngl 99 -p 512 -n 128 -r 5 -o md 2>&1 \
        | tee "$OUT/llama-bench.md"
}

# Llama-3-8B shape (make_synthetic_gguf.py's llama-3-8b: tied output), random weights: F16 (--pool:
# windows of one random pool, seconds instead of minutes) -> llama-quantize Q3_K_S; MLWQ3 with the
# Q3_K_S file's other tensors (Q6_K token_embd = output); llama-bench as in stage_bench, Q3_K_S
# first, 3 runs. Disk: F16 15 GB (removed once quantized, unless MLWQ_KEEP_F16=1), 3.4 + 3.2 GB.
stage_bench8b() {
    df -h "$W" | tail -1
    local t=$(date +%s)
    if [ ! -f "$W/l8b-q3ks.gguf" ]; then
        [ -f "$W/l8b-f16.gguf" ] || PYTHONPATH=$GGUFPY python3 bench/gpu/make_synthetic_gguf.py f16 --pool \
            --shape llama-3-8b --tokenizer "$C/smollm2_tokenizer.json.gz" -o "$W/l8b-f16.gguf" || return 1
        echo "f16 file: $(( $(date +%s) - t )) s"
        "$BIN/llama-quantize" "$W/l8b-f16.gguf" "$W/l8b-q3ks.gguf" Q3_K_S 16 > "$OUT/quantize-8b.log" 2>&1 \
            || { tail -20 "$OUT/quantize-8b.log"; return 1; }
        tail -3 "$OUT/quantize-8b.log"
        echo "f16 file + Q3_K_S: $(( $(date +%s) - t )) s"
        [ -n "${MLWQ_KEEP_F16:-}" ] || rm -f "$W/l8b-f16.gguf"
    fi
    [ -f "$W/l8b-mlwq3.gguf" ] || PYTHONPATH=$GGUFPY python3 bench/gpu/make_synthetic_gguf.py mlwq \
        --shape llama-3-8b --tokenizer "$C/smollm2_tokenizer.json.gz" --bits 3 --like "$W/l8b-q3ks.gguf" \
        -o "$W/l8b-mlwq3.gguf" || return 1
    echo "all files: $(( $(date +%s) - t )) s"
    ls -la "$W"/l8b-*.gguf
    df -h "$W" | tail -1
    sync
    timeout 300 "$BIN/llama-bench" -m "$W/l8b-q3ks.gguf" -m "$W/l8b-mlwq3.gguf" -ngl 99 -p 512 -n 128 -r 3 -o md 2>&1 \
        | tee "$OUT/llama-bench-8b.md"
}

# SmolLM2-135M shape, random weights: F16 -> Q3_K_S, Q4_K_M (llama-quantize picks their types from
# the shapes, so their speed is that of the real model's files); MLWQ3 with Q3_K_S's other tensors;
# $MLWQ_REAL (optional): a real exported MLWQ file benched in the same llama-bench run
stage_smollm2() {
    local S="$W/smollm2-synth"
    mkdir -p "$S"
    [ -f "$S/f16.gguf" ] || PYTHONPATH=$GGUFPY python3 bench/gpu/make_synthetic_gguf.py f16 \
        --shape smollm2-135m --tokenizer "$C/smollm2_tokenizer.json.gz" -o "$S/f16.gguf"
    for t in Q3_K_S Q4_K_M; do
        [ -f "$S/$t.gguf" ] || "$BIN/llama-quantize" "$S/f16.gguf" "$S/$t.gguf" "$t" 16 > "$OUT/quantize-$t.log" 2>&1
    done
    [ -f "$S/mlwq3.gguf" ] || PYTHONPATH=$GGUFPY python3 bench/gpu/make_synthetic_gguf.py mlwq \
        --shape smollm2-135m --tokenizer "$C/smollm2_tokenizer.json.gz" --bits 3 --like "$S/Q3_K_S.gguf" -o "$S/mlwq3.gguf"
    local real=()
    [ -n "${MLWQ_REAL:-}" ] && real=(-m "$MLWQ_REAL")
    sync    # the files just written: their writeback must not overlap the timing
    timeout 240 "$BIN/llama-bench" -m "$S/f16.gguf" -m "$S/Q4_K_M.gguf" -m "$S/Q3_K_S.gguf" -m "$S/mlwq3.gguf" "${real[@]}" \
        -ngl 99 -p 512 -n 128 -r 5 -o md 2>&1 | grep -E "^\|" | tee "$OUT/llama-bench-smollm2.md"
}

# GPU time and DRAM bytes read of each kernel of generated tokens (ncu; kernels run isolated, caches
# not flushed: a weight bigger than L2's share comes from DRAM), summed per kernel name, with the
# kernel's own bandwidth (bytes read / its time). Files: $NCU_FILES, else the synthetic SmolLM2
# Q3_K_S and MLWQ3 files of stage_smollm2. NCU_SKIP/NCU_COUNT (3000/900): with -p 0 the launches
# are the warm-up token's and then the 16 generated tokens'; flash_attn_ext_vec runs once per layer
# and token, so its launch count / n_layer is the number of tokens profiled. The last lines add up the mat-vec
# kernels of the weights: MLWQ's (mlwq_mul_mat_vec_q<...>) and llama.cpp's Q3_K one (mul_mat_vec_q<11, ...>).
stage_ncu() {
    local S="$W/smollm2-synth" lib f
    local files=(${NCU_FILES:-$S/Q3_K_S.gguf $S/mlwq3.gguf})
    for lib in ${NCU_LIBS:-committed}; do
    for f in "${files[@]}"; do
        local n=$(basename "$f" .gguf)
        [ "$lib" != committed ] && [[ "$n" != *mlwq* ]] && continue     # a library variant changes only MLWQ's kernels
        with_lib "$lib" timeout 300 ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum --cache-control none --clock-control none \
            --graph-profiling node --launch-skip "${NCU_SKIP:-3000}" --launch-count "${NCU_COUNT:-900}" --csv \
            "$BIN/llama-bench" -m "$f" -ngl 99 -p 0 -n 16 -r 1 > "$OUT/ncu-$lib-$n.csv" 2> "$OUT/ncu-$lib-$n.err"
        echo "== $lib library: $f"
        python3 - "$OUT/ncu-$lib-$n.csv" <<'PY'
import collections, csv, re, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr, rows = rows[0], rows[1:]
ii, ki, mi = hdr.index("ID"), hdr.index("Kernel Name"), hdr.index("Metric Name")
vi, ui = hdr.index("Metric Value"), hdr.index("Metric Unit")
scale = {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}
per = collections.defaultdict(dict)          # launch id -> metric -> value (ns, bytes)
names = {}
for r in rows:
    try:
        per[r[ii]][r[mi]] = float(r[vi].replace(",", "")) * scale.get(r[ui], 1)
    except ValueError:
        continue
    names[r[ii]] = re.sub(r"\(.*", "", r[ki])[:70]
tot, byt, cnt = collections.defaultdict(float), collections.defaultdict(float), collections.Counter()
for i, m in per.items():
    tot[names[i]] += m.get("gpu__time_duration.sum", 0)
    byt[names[i]] += m.get("dram__bytes_read.sum", 0)
    cnt[names[i]] += 1
print(f"kernels {sum(cnt.values())}, total {sum(tot.values())/1e3:.1f} us, DRAM read {sum(byt.values())/1e6:.1f} MB")
print(f"  {'us':>9} {'launches':>8} {'ns each':>9} {'MB read':>9} {'GB/s':>6}  kernel")
for k, v in sorted(tot.items(), key=lambda x: -x[1])[:16]:
    print(f"  {v/1e3:9.1f} {cnt[k]:8d} {v/cnt[k]:9.0f} {byt[k]/1e6:9.1f} {byt[k]/v if v else 0:6.0f}  {k}")
for g, pat in (("MLWQ mat-vec", r"mlwq_mul_mat_vec"), ("Q3_K mat-vec", r"\bmul_mat_vec_q<11,")):
    ks = [k for k in tot if re.search(pat, k)]
    t, b = sum(tot[k] for k in ks), sum(byt[k] for k in ks)
    if ks:
        print(f"{g} ({len(ks)} names, {sum(cnt[k] for k in ks)} launches): {t/1e3:.1f} us, "
              f"{b/1e6:.1f} MB read, {b/t:.0f} GB/s")
PY
    done
    done
}

# Does MLWQ's generation speed depend on what else ran in the same llama-bench process? The lines
# of the fifth GPU session's order tests (after smollm2; $MLWQ_REAL required), one invocation each.
# Why a mat-vec kernel reaches only a part of the bandwidth: ncu's speed-of-light, occupancy, warp
# stall and memory sections for a few launches of the MLWQ mat-vec kernels (the fused gate/up one
# and the plain one) and of Q3_K's, in generation of the 1B-shape files of stage_bench (after it).
# Files: $NCU_FILES; libraries: $NCU_LIBS (as stage ncu); kernels: $NCU_KERNEL (a regex, default
# mul_mat_vec_q), launches $NCU_DETAIL_SKIP skipped, $NCU_DETAIL_COUNT profiled (200, 6). The text
# reports go to $OUT/ncu-detail-<file>.txt (committed library) or ncu-detail-<lib>-<file>.txt.
stage_ncudetail() {
    local files=(${NCU_FILES:-$W/l1b-mlwq3.gguf $W/l1b-q3ks.gguf}) lib f
    for lib in ${NCU_LIBS:-committed}; do
    for f in "${files[@]}"; do
        local n=$(basename "$f" .gguf)
        [ "$lib" != committed ] && { [[ "$n" == *mlwq* ]] || continue; n="$lib-$n"; }
        with_lib "$lib" timeout 240 ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
            --section MemoryWorkloadAnalysis --section SchedulerStats --cache-control none --clock-control none \
            --graph-profiling node -k "regex:${NCU_KERNEL:-mul_mat_vec_q}" --launch-skip "${NCU_DETAIL_SKIP:-200}" \
            --launch-count "${NCU_DETAIL_COUNT:-6}" \
            "$BIN/llama-bench" -m "$f" -ngl 99 -p 0 -n 16 -r 1 > "$OUT/ncu-detail-$n.txt" 2> "$OUT/ncu-detail-$n.err"
        echo "== $lib library: $f"
        grep -E "mul_mat_vec_q|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Stall|Issued Ipc|Compute \(SM\)" \
            "$OUT/ncu-detail-$n.txt" | head -60
    done
    done
}

# The one slow llama-bench configuration of the fifth session (SmolLM2 MLWQ3 after F16, Q4_K_M and
# Q3_K_S, all with -p 512, in one invocation): the same five files again, then with CUDA graphs off,
# then with fewer models before MLWQ, and MLWQ both first and last. Files: $ORDER_DIR/{f16,Q4_K_M,
# Q3_K_S}.gguf (default: stage_smollm2's synthetic ones) and $MLWQ_REAL. The GPU's clocks, power and
# throttle reasons are sampled every 250 ms meanwhile (clocks.csv), each line's start time in order.md.
stage_order() {
    local S="${ORDER_DIR:-$W/smollm2-synth}" R="${MLWQ_REAL:?set MLWQ_REAL}"
    local F="-m $S/f16.gguf" Q4="-m $S/Q4_K_M.gguf" Q3="-m $S/Q3_K_S.gguf"
    local runs=("$F $Q4 $Q3 -m $R -p 512"
                "GRAPHS_OFF $F $Q4 $Q3 -m $R -p 512"
                "$Q4 $Q3 -m $R -p 512"
                "$Q3 -m $R -p 512"
                "-m $R $F $Q4 $Q3 -m $R -p 512"
                "$F $Q4 $Q3 -m $R -p 0")
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv -lms 250 > "$OUT/clocks.csv" 2>&1 &
    local smi=$!
    for r in "${runs[@]}"; do
        local env=()
        case "$r" in GRAPHS_OFF*) env=(env GGML_CUDA_DISABLE_GRAPHS=1); r=${r#GRAPHS_OFF } ;; esac
        echo "== $(date +%T.%N | cut -c1-12) ${env[*]} $r" | tee -a "$OUT/order.md"
        # shellcheck disable=SC2086
        timeout 120 "${env[@]}" "$BIN/llama-bench" $r -n 128 -ngl 99 -r 5 -o md 2>&1 | grep -E "^\| llama" | tee -a "$OUT/order.md"
    done
    kill "$smi"
}

# Position-balanced generation ratio (issue 16's "position-balanced llama-bench"): one llama-bench
# process per file, in the order Q3_K_S, MLWQ3, MLWQ3, Q3_K_S, twice, so each file runs first in its
# process and the two share every place in time; tg128, 5 repetitions each. Files: the SmolLM2 shape
# of stage_smollm2 (after it) and the 1B shape of stage_bench when present.
stage_balanced() {
    local pairs=("$W/smollm2-synth/Q3_K_S.gguf $W/smollm2-synth/mlwq3.gguf")
    [ -f "$W/l1b-mlwq3.gguf" ] && pairs+=("$W/l1b-q3ks.gguf $W/l1b-mlwq3.gguf")
    [ -f "$W/l8b-mlwq3.gguf" ] && pairs+=("$W/l8b-q3ks.gguf $W/l8b-mlwq3.gguf")
    for pair in "${pairs[@]}"; do
        set -- $pair
        local q=$1 m=$2
        echo "== balanced: $q vs $m" | tee -a "$OUT/balanced.md"
        for f in "$q" "$m" "$m" "$q" "$q" "$m" "$m" "$q"; do
            timeout 120 "$BIN/llama-bench" -m "$f" -ngl 99 -p 0 -n 128 -r 5 -o csv 2>/dev/null \
                | tail -1 | awk -F, -v f="$(basename "$f")" '{gsub(/"/, ""); print f, $(NF-1)}' | tee -a "$OUT/balanced.md"
        done
    done
    python3 - "$OUT/balanced.md" <<'PY'
import collections, sys
blocks, cur = [], None
for line in open(sys.argv[1]):
    if line.startswith("=="):
        cur = collections.defaultdict(list); blocks.append((line.strip(), cur))
    elif cur is not None and len(line.split()) == 2:
        name, ts = line.split(); cur[name].append(float(ts))
for title, runs in blocks:
    (a, ra), (b, rb) = list(runs.items())[:2]
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    print(f"{title}: {a} {ma:.2f} t/s ({len(ra)} runs), {b} {mb:.2f} t/s ({len(rb)} runs), ratio {b}/{a} = {mb / ma:.3f}")
PY
}

# Libraries of several variants of our CUDA sources from one build: for each name in $MLWQ_LIBS,
# bench/gpu/variants/NAME.sed (a sed script over the tree's mlwq*.cu/mlwq*.cuh), NAME.patch (a
# patch of the tree, -p1) or a directory .device/variants/NAME/ (files that replace them: another
# commit's sources) is applied, or several in turn for A+B; libggml-cuda is rebuilt and copied to
# $W/lib-NAME; then the committed sources are restored and rebuilt.
stage_libs() {
    local cu="$SRC/ggml/src/ggml-cuda" orig="$W/mlwq-orig" v f p
    rm -rf "$orig" && mkdir -p "$orig" && cp "$cu"/mlwq*.cu "$cu"/mlwq*.cuh "$orig/"
    restore() { for f in "$orig"/*; do cmp -s "$f" "$cu/${f##*/}" || cp "$f" "$cu/"; done; }
    for v in ${MLWQ_LIBS:?set MLWQ_LIBS}; do
        for p in ${v//+/ }; do     # a+b: b applied over a
            if [ -d ".device/variants/$p" ]; then
                cp ".device/variants/$p"/mlwq* "$cu/"
            elif [ -f "bench/gpu/variants/$p.sed" ]; then
                for f in "$cu"/mlwq*.cu "$cu"/mlwq*.cuh; do sed -f "bench/gpu/variants/$p.sed" "$f" > "$W/variant.tmp"
                    cmp -s "$W/variant.tmp" "$f" || cp "$W/variant.tmp" "$f"; done
            elif [ -f "bench/gpu/variants/$p.patch" ]; then
                patch -s -p1 --fuzz=0 -d "$SRC" < "bench/gpu/variants/$p.patch" || { restore; return 1; }
            else
                echo "no variant $p"; restore; return 1
            fi
        done
        (cd "$cu" && for f in "$orig"/*; do diff -u "$f" "${f##*/}"; done) > "$OUT/lib-$v.diff"
        local t=$(date +%s)
        ninja -C "$B" ggml-cuda > "$OUT/ninja-$v.log" 2>&1 || { grep -A12 error "$OUT/ninja-$v.log" | head -40; restore; return 1; }
        rm -rf "$W/lib-$v" && mkdir -p "$W/lib-$v" && cp -a "$BIN"/libggml-cuda.so* "$W/lib-$v/"
        echo "lib-$v: $(wc -l < "$OUT/lib-$v.diff") diff lines, built in $(( $(date +%s) - t )) s"
        restore
    done
    ninja -C "$B" ggml-cuda > "$OUT/ninja-restore.log" 2>&1
}

# tg128 of the MLWQ3 file of each shape with the committed library and each of $MLWQ_LIBS, and of
# Q3_K_S (committed library), one llama-bench process each, the order rotated round by round
# ($MLWQ_AB_ROUNDS, default 3): mean t/s per library, its ratio to Q3_K_S and to the first library
stage_libab() {
    local shapes=() sh libs=(committed ${MLWQ_LIBS:?set MLWQ_LIBS}) R=${MLWQ_AB_ROUNDS:-3}
    [ -f "$W/l8b-mlwq3.gguf" ] && shapes+=("8b:$W/l8b-q3ks.gguf:$W/l8b-mlwq3.gguf")
    [ -f "$W/l1b-mlwq3.gguf" ] && shapes+=("1b:$W/l1b-q3ks.gguf:$W/l1b-mlwq3.gguf")
    [ -f "$W/smollm2-synth/mlwq3.gguf" ] && shapes+=("smollm2:$W/smollm2-synth/Q3_K_S.gguf:$W/smollm2-synth/mlwq3.gguf")
    for sh in "${shapes[@]}"; do
        IFS=: read -r name q m <<< "$sh"
        local runs=(Q3_K_S "${libs[@]}") n=$(( ${#libs[@]} + 1 )) r i
        for r in $(seq 0 $(( R - 1 ))); do
            for i in $(seq 0 $(( n - 1 ))); do
                local k=${runs[$(( (i + r) % n ))]} f=$m
                local lib=$k
                [ "$k" = Q3_K_S ] && f=$q && lib=committed     # Q3_K_S runs with the build's library
                with_lib "$lib" timeout 120 "$BIN/llama-bench" -m "$f" -ngl 99 -p 0 -n 128 -r 5 -o csv 2>/dev/null \
                    | tail -1 | awk -F, -v s="$name" -v k="$k" '{gsub(/"/, ""); print s, k, $(NF-1)}' | tee -a "$OUT/libab.txt"
            done
        done
    done
    python3 - "$OUT/libab.txt" <<'PY' | tee "$OUT/libab.md"
import collections, sys
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3:
        runs[p[0]][p[1]].append(float(p[2]))
for shape, libs in runs.items():
    mean = {k: sum(v) / len(v) for k, v in libs.items()}
    first = [k for k in mean if k not in ("Q3_K_S", "committed")]
    base = mean[first[0]] if first else None
    print(f"| {shape} | library | tg128 t/s (runs) | / Q3_K_S | / {first[0] if first else '-'} |")
    print("|---|---|---|---|---|")
    for k, v in mean.items():
        q = v / mean["Q3_K_S"] if "Q3_K_S" in mean else float("nan")
        b = v / base if base else float("nan")
        print(f"| {shape} | {k} | {v:.2f} ({len(libs[k])}; {min(libs[k]):.2f}-{max(libs[k]):.2f}) | {q:.3f} | {b:.3f} |")
PY
}

case "${1:-all}" in
    build) stage_build ;;
    test)  stage_test ;;
    ops)   timeout 120 "$BIN/test-mlwq-cuda" 2>&1 | tee "$OUT/test-mlwq-cuda.log" | grep -v "^  \[ ok \]" ;;
    libops) # the op tests with each library of stage libs ($MLWQ_LIBS)
           for v in ${MLWQ_LIBS:?set MLWQ_LIBS}; do echo "== lib-$v"
               with_lib "$v" timeout 120 "$BIN/test-mlwq-cuda" 2>&1 | tee "$OUT/test-mlwq-cuda-$v.log" | grep -v "^  \[ ok \]"
           done ;;
    bench) stage_bench ;;
    sanitize) stage_sanitize ;;
    benchops) stage_benchops ;;
    smollm2) stage_smollm2 ;;
    ncu)   stage_ncu ;;
    ncudetail) stage_ncudetail ;;
    libs)  stage_libs ;;
    libab) stage_libab ;;
    order) stage_order ;;
    balanced) stage_balanced ;;
    all)   # most important first; each later stage only if the call has time left (10 min limit)
           T0=$(date +%s)
           left() { [ $(( $(date +%s) - T0 )) -lt "$1" ]; }
           stage_build > "$OUT/build-stage.log" 2>&1 || { tail -40 "$OUT/build-stage.log"; exit 1; }
           grep -E "ninja took" "$OUT/build-stage.log"
           LIM=${MLWQ_DEV_LIMIT:-540}   # seconds this call may take
           left $(( LIM - 150 )) && stage_test
           left $(( LIM - 170 )) && stage_bench
           left $(( LIM - 100 )) && stage_benchops
           left $(( LIM - 90 )) && stage_sanitize
           echo "all: $(( $(date +%s) - T0 )) s"
           # at most 8 files come back from the device tool: one archive of every log, plus the key ones
           (cd "$OUT" && tar czf /tmp/mlwq-logs.tar.gz --exclude='*.tar.gz' . && mkdir -p /tmp/keep \
               && for f in test-mlwq-cuda.log llama-bench.md bench-ops.log bandwidth.log; do \
                    [ -f "$f" ] && cp "$f" /tmp/keep/; done \
               && rm -f ./* && cp /tmp/keep/* . 2>/dev/null; mv /tmp/mlwq-logs.tar.gz .) ;;
    bench8b) stage_bench8b ;;
    after) # waits (40 min at most) until the file $MLWQ_AFTER exists: another detached job's end
           # (bench/gpu/quant_time.sh's finished), so that no timing overlaps its GPU work
           t=0
           while [ -n "${MLWQ_AFTER:-}" ] && [ ! -f "$MLWQ_AFTER" ] && [ "$t" -lt 2400 ]; do sleep 5; t=$((t + 5)); done
           echo "waited ${t}s for ${MLWQ_AFTER:-nothing}" ;;
    detach) # the stages named, one after another, in a job that outlives this call (the lent machine's
            # calls last 10 minutes; the build tree and the job stay while the machine is held). Their
            # output: $RES/run.log; their files: $RES (the stages' $OUT). A failed build stops the job.
            shift
            RES=${MLWQ_RES:-/tmp/mlwq-res}
            mkdir -p "$RES" && rm -f "$RES/finished"
            OUT=$RES setsid nohup bash -c 'for s in "$@"; do echo "=== stage $s start $(date +%T)"; bash "$0" "$s"; rc=$?
                echo "=== stage $s rc=$rc end $(date +%T)"; [ "$s" = build ] && [ $rc != 0 ] && break; done
                echo done > "$OUT/finished"' "$0" "$@" >> "$RES/run.log" 2>&1 < /dev/null &
            echo "started: $*" ;;
    wait)  # waits for detach's job ($2 seconds at most), then its stage lines, the end of its output,
           # run.log and an archive of $RES in $OUT (2 files: the device tool returns at most 8)
           set +x
           RES=${MLWQ_RES:-/tmp/mlwq-res}
           limit=${2:-540}; t=0
           while [ "$t" -lt "$limit" ] && [ ! -f "$RES/finished" ]; do sleep 5; t=$((t + 5)); done
           echo "waited ${t}s; finished: $([ -f "$RES/finished" ] && echo yes || echo no)"
           grep -E "^=== stage" "$RES/run.log"
           grep -v -E "^\+" "$RES/run.log" | tail -n 60
           cp "$RES/run.log" "$OUT/run.log"
           (cd "$RES" && tar czf "$OUT/res.tgz" --exclude=run.log .)
           ls -la "$RES" ;;
    *)     echo "usage: $0 build|test|bench|benchops|sanitize|smollm2|bench8b|ncu|ncudetail|variant|order|balanced|all|after|detach STAGE...|wait S"; exit 2 ;;
esac
