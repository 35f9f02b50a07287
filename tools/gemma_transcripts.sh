#!/usr/bin/env bash
# Gemma-3-270M files through the patched llama-cli (chat) and llama-completion (plain text), greedy:
#   tools/gemma_transcripts.sh OUT.md MODEL.gguf [MODEL.gguf ...]
# Gemma-3-270M is a base model and its GGUF has no chat template: llama-cli falls back to ChatML,
# which the model never learned, so its chat turns show that the file loads and generates; the
# completions show what it knows.
set -euo pipefail
out=$1; shift
BIN="$(.venv/bin/python -c 'from exporters.llamacpp import bin_dir; print(bin_dir())')"
: > "$out"
for model in "$@"; do
    echo "### $(basename "$model")" >> "$out"
    cmd=(llama-cli -m "$model" -p "What is the capital of France?" -n 24 -st --simple-io --temp 0 -t 2 -c 512)
    { echo '```'; echo "\$ $(printf "%q " "${cmd[@]}")"; "$BIN/${cmd[0]}" "${cmd[@]:1}" 2>/dev/null < /dev/null | awk '/^> /{on=1} /^Exiting/{on=0} on'; echo '```'; } >> "$out"
    for p in "The capital of France is" "Water boils at a temperature of" "The three primary colors are"; do
        cmd=(llama-completion -m "$model" -p "$p" -n 24 --temp 0 -no-cnv -t 2 -c 512)
        { echo '```'; echo "\$ $(printf "%q " "${cmd[@]}")"; "$BIN/${cmd[0]}" "${cmd[@]:1}" 2>/dev/null < /dev/null; echo; echo '```'; } >> "$out"
    done
    echo >> "$out"
done
echo "wrote $out"
