#!/usr/bin/env bash
# One chat turn per question through the patched llama-cli, greedy, for each GGUF given:
#   tools/chat_transcripts.sh OUT.md MODEL.gguf [MODEL.gguf ...]
# writes the commands and the answers to OUT.md (the same questions for every file).
set -euo pipefail
out=$1; shift
BIN="$(.venv/bin/python -c 'from exporters.llamacpp import bin_dir; print(bin_dir())')"
QUESTIONS=("What is the capital of France?" "Give me three tips for staying healthy."
           "How many legs does a spider have?" "What is the boiling point of water in Celsius?")
: > "$out"
for model in "$@"; do
    for q in "${QUESTIONS[@]}"; do
        cmd=(llama-cli -m "$model" -p "$q" -n 80 -st --simple-io --temp 0 -t 2 -c 512)
        { echo '```'; echo "\$ $(printf "%q " "${cmd[@]}")"; "$BIN/${cmd[0]}" "${cmd[@]:1}" 2>/dev/null < /dev/null | awk '/^> /{on=1} /^Exiting/{on=0} on'; echo '```'; echo; } >> "$out"
    done
done
echo "wrote $out"
