#!/usr/bin/env bash
# Fill .cache/cuda_src/ (ignored by git), which device_cuda_checks.sh reads on the GPU machine
# (no internet there): the pristine llama.cpp of llama-cpp-python 0.3.36 without models, docs,
# tests and the backends we do not build (~4.5 MB), SmolLM2's tokenizer KV, and a slice of
# wikitext-2 test. Carry it with the device tool: carry=[".cache/cuda_src"].
#
#   bash bench/gpu/prepare_cuda_src.sh /path/to/vendor/llama.cpp [smollm2.gguf] [wiki.test.raw]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LLAMA=${1:?pristine vendor/llama.cpp directory}
GGUF=${2:-$HOME/.cache/mlwq/SmolLM2-135M-Instruct.Q4_1.gguf}
WIKI=${3:-$ROOT/../shared/data/wikitext-2/wiki.test.raw}
OUTD="$ROOT/.cache/cuda_src"
mkdir -p "$OUTD"
ex=()
for d in .git models docs media benches examples pocs tests tools/ui ggml/src/ggml-sycl ggml/src/ggml-vulkan \
         ggml/src/ggml-opencl ggml/src/ggml-hexagon ggml/src/ggml-metal ggml/src/ggml-cann ggml/src/ggml-webgpu \
         ggml/src/ggml-openvino ggml/src/ggml-et ggml/src/ggml-virtgpu; do
    ex+=(--exclude="llama.cpp/$d")
done
tar "${ex[@]}" -cJf "$OUTD/llama.cpp.tar.xz" -C "$(dirname "$LLAMA")" "$(basename "$LLAMA")"
"$ROOT/.venv/bin/python" - "$GGUF" "$OUTD/smollm2_tokenizer.json.gz" <<'EOF'
import gzip, json, sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
kv = {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.") and k != "tokenizer.chat_template"}
with gzip.open(sys.argv[2], "wt") as f:
    json.dump(kv, f)
EOF
head -c 120000 "$WIKI" > "$OUTD/wiki.test.head.raw"
ls -la "$OUTD"
