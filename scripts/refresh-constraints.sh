#!/usr/bin/env bash
# Re-make constraints.txt: the exact versions scripts/setup.sh installs. Resolves this package's
# requirements afresh in a throw-away venv (torch pinned to 2.13.0 first, as setup.sh does) and
# writes what pip chose. Review the diff, run `make test`, commit both together.
#   bash scripts/refresh-constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install -q torch==2.13.0
"$TMP/venv/bin/pip" install -q ".[dev]"
# the runtime dependencies of llama-cpp-python, which ggml_patch/build.sh installs beside our build
"$TMP/venv/bin/pip" install -q $(sed -n 's/^LLAMA_CPP_PYTHON_DEPS=//p' ggml_patch/sdist.sh | tr -d '"')
"$TMP/venv/bin/pip" check
{
    echo "# Exact versions of every package scripts/setup.sh installs (pip -c): the byte-identical"
    echo "# promise holds for one set of versions. Made by scripts/refresh-constraints.sh on $(date -u +%Y-%m-%d)"
    echo "# with $("$PY" --version); torch is the CPU wheel (torch==2.13.0 matches 2.13.0+cpu)."
    "$TMP/venv/bin/pip" freeze --exclude mlwq | sed -e 's/^torch==\([0-9.]*\)+.*/torch==\1/' | LC_ALL=C sort -f
} > constraints.txt.part
mv constraints.txt.part constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
