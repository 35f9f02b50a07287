#!/usr/bin/env bash
# Format 2's files with the paper's calibration (128 x 2048) on the GPU machine: SmolLM2-135M at
# 3.25, 2.75, 3.84 and 3 bits with 200 steps of block tuning and 3.25 without, Gemma-3-270M at
# 2.75, 3.25 and 3.84 with 200 steps; the checkpoints come back and are exported and measured here
# (tools.compare --add). The runs of each model start side by side (QT_PARALLEL): their times are
# not records. From the repo root, one device call per line:
#   bench/gpu/quant_time.sh part1                    # carry .device/p1 .device/tok
#   bench/gpu/format2_quality.sh smollm2             # carry .device/p2 .device/data .whl
#   bench/gpu/format2_quality.sh smollm2-low         # (instead) 3 and 2.75 bits only
#   bench/gpu/quant_time.sh store .device/g1         # ... g4: carry .device/gN
#   bench/gpu/format2_quality.sh gemma               # carry .device/g5 .device/gtok .device/data .whl
#   bench/gpu/quant_time.sh wait 540; bench/gpu/quant_time.sh fetch N            # N = 1 ... 5
#   QT_RES=/tmp/res/gemma bench/gpu/quant_time.sh wait 540; ... fetch N          # N = 1 ... 3
set -uo pipefail
export QT_PARALLEL=1
case "${1:-}" in
smollm2)
    bash bench/gpu/quant_time.sh start \
        "keep:--shape smollm2 --bits 3.25 --block-tune-steps 200" \
        "keep:--shape smollm2 --bits 2.75 --block-tune-steps 200" \
        "keep:--shape smollm2 --bits 3.84 --block-tune-steps 200" \
        "keep:--shape smollm2 --bits 3 --block-tune-steps 200" \
        "keep:--shape smollm2 --bits 3.25" ;;
smollm2-low)   # the budgets of issue 15's targets 5 and 3: the 3-bit file first
    bash bench/gpu/quant_time.sh start \
        "keep:--shape smollm2 --bits 3 --block-tune-steps 200" \
        "keep:--shape smollm2 --bits 2.75 --block-tune-steps 200" ;;
gemma)
    bash bench/gpu/gemma3_bos.sh prepare || exit 1
    QT_RES=/tmp/res/gemma bash bench/gpu/quant_time.sh start \
        "keep:--shape gemma3-270m --bits 2.75 --block-tune-steps 200" \
        "keep:--shape gemma3-270m --bits 3.25 --block-tune-steps 200" \
        "keep:--shape gemma3-270m --bits 3.84 --block-tune-steps 200" ;;
*)
    echo "usage: $0 smollm2 | smollm2-low | gemma" >&2; exit 2 ;;
esac
