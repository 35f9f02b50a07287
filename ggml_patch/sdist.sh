# The llama.cpp we patch: the one vendored in llama-cpp-python's sdist, pinned by version and sha256
# (the one home of the hash: exporters/llamacpp.py reads it from here). Sourced by build.sh and
# check_cuda_compile.sh, which define log and die.

SDIST_VERSION=0.3.36
SDIST_NAME="llama_cpp_python-${SDIST_VERSION}.tar.gz"
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# its runtime requirements (installed beside the build, versions from constraints.txt)
LLAMA_CPP_PYTHON_DEPS="typing-extensions>=4.5.0 numpy>=1.20.0 diskcache>=5.6.1 jinja2>=2.11.3"

_mlwq_sdist_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SDIST_SHA256" ]; }

# mlwq_sdist CACHE PYTHON: print the path of the checked sdist, CACHE/dl/$SDIST_NAME, after copying
# $MLWQ_SDIST there or downloading it with pip when it is missing or wrong; never uses a file whose
# sha256 differs. Call it as SDIST=$(mlwq_sdist ...) under `set -e`: a failure stops the caller.
mlwq_sdist() {
    local sdist="$1/dl/$SDIST_NAME"
    mkdir -p "$1/dl"
    if ! _mlwq_sdist_ok "$sdist"; then
        rm -f "$sdist"
        if [ -n "${MLWQ_SDIST:-}" ]; then
            log "using local sdist $MLWQ_SDIST"
            cp "$MLWQ_SDIST" "$sdist.part" && mv "$sdist.part" "$sdist"
        else
            log "downloading llama-cpp-python==$SDIST_VERSION (sdist) with pip"
            "$2" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$SDIST_VERSION" -d "$1/dl" >&2 \
                || die "pip download failed (offline? set MLWQ_SDIST to a local copy of $SDIST_NAME)"
        fi
        _mlwq_sdist_ok "$sdist" || die "sha256 of $sdist is not $SDIST_SHA256: refusing to use it"
    fi
    echo "$sdist"
}
