#!/usr/bin/env bash
# transformers 5.17 (the GPU machine's) converts Gemma-3's GGUF tokenizer to one token per
# character; the tokenizer converted here by transformers 5.25 replaces it in the model cache.
# Carry .device/gtok: tokenizer_config.json and tokenizer.json.xz (`xz -c tokenizer.json`) of
# ~/.cache/mlwq/models/gemma-3-270m-*-transformers5.25.0/.
set -uo pipefail
source bench/gpu/model_halves.sh          # CACHE, MLWQ_CACHE
# a fresh machine converts the GGUF first (its tokenizer check off: the tokenizer is replaced below)
ls -d "$CACHE"/models/gemma-3-270m-q4_k_m-* > /dev/null 2>&1 || PYTHONPATH=/tmp/site:$PWD python3 -c "
import mlwq.model_io as m
m._check_tokenizer = lambda tokenizer, source: None
m.load_model('$CACHE/gemma-3-270m-q4_k_m.gguf')" || exit 1
d=$(ls -d "$CACHE"/models/gemma-3-270m-q4_k_m-*) || exit 1
PYTHONPATH=/tmp/site:$PWD python3 -c "
from transformers import AutoTokenizer
print('machine tokenizer:', AutoTokenizer.from_pretrained('$d')('Hello world').input_ids)"
xz -dc .device/gtok/tokenizer.json.xz > "$d/tokenizer.json" && cp .device/gtok/tokenizer_config.json "$d/" || exit 1
PYTHONPATH=/tmp/site:$PWD python3 -c "
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained('$d'); ids = t('Hello world').input_ids
print('Gemma tokenizer:', ids); assert len(ids) <= 4, 'still one token per character'"
