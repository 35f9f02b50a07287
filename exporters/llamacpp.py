"""Where the patched llama.cpp that ggml_patch/build.sh built lives: its tools and libraries.

build.sh writes $MLWQ_CACHE/llama-cpp-current (default ~/.cache/mlwq) naming the patched tree, and
in that tree mlwq-build.json with the bin directory. The tree is keyed by a hash of
ggml_patch/patches and ggml_patch/src; this module computes the same hash, so a build made from
another version of our patch is refused with the instruction to rebuild instead of being used.
MLWQ_LLAMA_BIN=/path/to/bin skips all this and uses that directory (development builds).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
BUILD_CMD = "bash ggml_patch/build.sh"
PATCH_DIR = Path(__file__).resolve().parent.parent / "ggml_patch"


class LlamaCppNotBuilt(RuntimeError):
    """The patched llama.cpp is missing or stale: the message says how to build it."""


def cache_dir() -> Path:
    return Path(os.environ.get("MLWQ_CACHE", Path.home() / ".cache" / "mlwq")).expanduser()


def patch_key(patch_dir: Path = PATCH_DIR) -> str:
    """The tree key of build.sh: sha256 over the sdist hash and our patches and sources (first 16 hex)."""
    h = hashlib.sha256()
    h.update(f"{SDIST_SHA256}\n".encode())
    for p in sorted((patch_dir / "patches").glob("*.patch")):
        h.update(f"patch {p.name}\n".encode())
        h.update(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  -\n".encode())
    src = patch_dir / "src"
    if src.is_dir():
        files = sorted((("./" + f.relative_to(src).as_posix()).encode() for f in src.rglob("*") if f.is_file()))
        for rel in files:
            h.update(b"src " + rel + b"\n")
            h.update(f"{hashlib.sha256((src / rel.decode()[2:]).read_bytes()).hexdigest()}  -\n".encode())
    return h.hexdigest()[:16]


def build_info() -> dict:
    """{"key", "flavour", "llama_cpp", "build", "bin"} of the current build, checked against our patch."""
    override = os.environ.get("MLWQ_LLAMA_BIN")
    if override:
        b = Path(override)
        if not (b / "libllama.so").exists():
            raise LlamaCppNotBuilt(f"MLWQ_LLAMA_BIN={override} has no libllama.so")
        return {"key": None, "flavour": "custom", "llama_cpp": None, "build": str(b.parent), "bin": str(b)}
    current = cache_dir() / "llama-cpp-current"
    if not current.is_file():
        raise LlamaCppNotBuilt(f"the patched llama.cpp is not built (no {current}): run `{BUILD_CMD}`")
    tree = Path(current.read_text().strip())
    info_path = tree / "mlwq-build.json"
    if not info_path.is_file():
        raise LlamaCppNotBuilt(f"the patched llama.cpp build in {tree} is incomplete: run `{BUILD_CMD}`")
    info = json.loads(info_path.read_text())
    want = patch_key()
    if info.get("key") != want:
        raise LlamaCppNotBuilt(f"the built llama.cpp ({tree}) is from another version of ggml_patch "
                               f"(key {info.get('key')}, the sources give {want}): run `{BUILD_CMD}`")
    return info


def bin_dir() -> Path:
    return Path(build_info()["bin"])


def lib_dir() -> Path:
    """Directory of libllama.so and libggml*.so (what LLAMA_CPP_LIB_PATH would point at)."""
    d = bin_dir()
    if not (d / "libllama.so").exists():
        raise LlamaCppNotBuilt(f"{d} has no libllama.so: run `{BUILD_CMD}`")
    return d


def tool_path(name: str) -> Path:
    """Path of a built tool (llama-cli, llama-completion, llama-perplexity, llama-bench, llama-quantize,
    llama-imatrix, mlwq-check)."""
    p = bin_dir() / name
    if not p.is_file() or not os.access(p, os.X_OK):
        raise LlamaCppNotBuilt(f"{name} is not built in {p.parent}: run `{BUILD_CMD}`")
    return p


def tool_env() -> dict:
    """Environment for running the tools (their libraries first on the search path)."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib_dir()), env.get("LD_LIBRARY_PATH")]))
    return env


def check_python_bindings() -> Path:
    """Path of the libllama that `import llama_cpp` loads; refuses one that is not ours."""
    import llama_cpp

    loaded = Path(llama_cpp.llama_cpp._lib._name).resolve()
    ours = (lib_dir() / "libllama.so").resolve()
    if loaded.read_bytes() != ours.read_bytes():
        raise LlamaCppNotBuilt(f"llama_cpp loads {loaded}, not the patched {ours}: run `{BUILD_CMD}`")
    return loaded
