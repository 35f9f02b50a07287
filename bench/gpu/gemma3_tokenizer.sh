#!/usr/bin/env bash
# transformers 5.17 (the GPU machine's) converts Gemma-3's GGUF tokenizer to one token per
# character; the tokenizer converted here by transformers 5.25 replaces it in the model cache.
# Carry .device/gtok (tokenizer.json and tokenizer_config.json of ~/.cache/mlwq/models/gemma-3-270m-*).
set -uo pipefail
d=$(ls -d /tmp/mlwqcache/models/gemma-3-270m-q4_k_m-*) || exit 1
cp .device/gtok/tokenizer.json .device/gtok/tokenizer_config.json "$d/" || exit 1
PYTHONPATH=/tmp/site:$PWD python3 -c "
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained('$d'); ids = t('Hello world').input_ids
print('Gemma tokenizer:', ids); assert len(ids) <= 4, 'still one token per character'"
