"""The patched llama.cpp that ggml_patch/build.sh built: where its tools and libraries are, how to
run them (progress, logs, one-line errors), and what their output and our GGUF files measure.

build.sh writes $MLWQ_CACHE/llama-cpp-current (default ~/.cache/mlwq) naming the patched tree, and
in that tree mlwq-build.json with the bin directory. The tree is keyed by a hash of
ggml_patch/patches and ggml_patch/src; this module computes the same hash, so a build made from
another version of our patch is refused with the instruction to rebuild instead of being used.
MLWQ_LLAMA_BIN=/path/to/bin skips all this and uses that directory (development builds).
`python exporters/llamacpp.py key` prints the key; build.sh uses it, so the hash has one home.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BUILD_CMD = "bash ggml_patch/build.sh"
PATCH_DIR = Path(__file__).resolve().parent.parent / "ggml_patch"
ROOT = PATCH_DIR.parent


def sdist_sha256(patch_dir: Path = PATCH_DIR) -> str:
    """The pinned sha256 of llama-cpp-python's sdist; its one home is ggml_patch/sdist.sh."""
    m = re.search(r"^SDIST_SHA256=([0-9a-f]{64})$", (patch_dir / "sdist.sh").read_text(), re.M)
    if not m:
        raise RuntimeError(f"no SDIST_SHA256= line in {patch_dir / 'sdist.sh'}")
    return m.group(1)


class LlamaCppNotBuilt(RuntimeError):
    """The patched llama.cpp is missing or stale: the message says how to build it."""


def cache_dir() -> Path:
    return Path(os.environ.get("MLWQ_CACHE", Path.home() / ".cache" / "mlwq")).expanduser()


def patch_key(patch_dir: Path = PATCH_DIR) -> str:
    """The tree key of build.sh: sha256 over the sdist hash and our patches and sources (first 16 hex)."""
    h = hashlib.sha256()
    h.update(f"{sdist_sha256(patch_dir)}\n".encode())
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


# ---------------------------------------------------------------- running the tools

class LlamaCppToolFailed(RuntimeError):
    """A llama.cpp tool exited with an error: the message has its last lines and the log's path."""


@dataclass
class ToolRun:
    cmd: list[str]
    stdout: str
    stderr: str
    seconds: float
    other_cpu_s: float          # core-seconds other processes used while the tool ran (timing hygiene)

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


# per-chunk lines of the tools, for a progress bar: (step, running PPL or None)
_PROGRESS = {
    "llama-perplexity": [re.compile(rb"\[(\d+)\]([0-9.]+),"),                      # [12]21.53,
                         re.compile(rb"^\s*(\d+)\s+([0-9.]+) \xc2\xb1", re.M)],     # --kl-divergence rows
    "llama-imatrix": [re.compile(rb"\[(\d+)\]([0-9.]+),")],
    "llama-quantize": [re.compile(rb"\[\s*(\d+)/\s*\d+\]()")],
}


def short_cmd(cmd: list) -> str:
    """The command as it would be typed with the patched bin directory on PATH, paths in the repo
    relative to its root."""
    def arg(c: str) -> str:
        if os.path.isabs(c) and os.path.exists(c):
            try:
                return str(Path(c).resolve().relative_to(ROOT))
            except ValueError:
                return c
        return c
    cmd = [str(c) for c in cmd]
    return shlex.join([Path(cmd[0]).name] + [arg(c) for c in cmd[1:]])


def _cpu_busy_ticks() -> int:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(f) - f[3] - f[4]                       # idle and iowait are not busy


def run_tool(cmd: list, log_path: Path | None = None, desc: str | None = None, total: int | None = None,
             show: bool = True) -> ToolRun:
    """Run a llama.cpp tool with its libraries on the path. With `show`, a progress bar counts the
    steps it prints (chunks of llama-perplexity/llama-imatrix with the running PPL, tensors of
    llama-quantize; `total` steps if known). Its stdout and stderr go to log_path, with the command
    and time; a failure raises LlamaCppToolFailed with the output's last lines."""
    from tqdm import tqdm

    cmd = [str(c) for c in cmd]
    name = Path(cmd[0]).name
    patterns = _PROGRESS.get(name, [])
    bar = tqdm(total=total, desc=desc or name, unit="step", leave=False, disable=not (show and patterns))
    out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    seen = [0]
    lock = threading.Lock()

    def pump(stream, chunks: list[bytes]) -> None:
        for data in iter(lambda: stream.read1(4096), b""):
            chunks.append(data)
            recent = b"".join(chunks[-2:])
            hits = [m for p in patterns for m in p.findall(recent)]
            if hits:
                step, ppl = max(hits, key=lambda h: int(h[0]))
                with lock:
                    if int(step) > seen[0]:
                        bar.update(int(step) - seen[0])
                        seen[0] = int(step)
                        if ppl:
                            bar.set_postfix_str(f"PPL {float(ppl):.3f}", refresh=False)

    busy0, own0, t0 = _cpu_busy_ticks(), os.times(), time.time()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tool_env()) as proc:
        readers = [threading.Thread(target=pump, args=(proc.stdout, out["stdout"])),
                   threading.Thread(target=pump, args=(proc.stderr, out["stderr"]))]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        rc = proc.wait()
    bar.close()
    busy1, own1 = _cpu_busy_ticks(), os.times()
    mine = (own1.children_user - own0.children_user) + (own1.children_system - own0.children_system)
    run = ToolRun(cmd, b"".join(out["stdout"]).decode("utf-8", "replace"),
                  b"".join(out["stderr"]).decode("utf-8", "replace"), time.time() - t0,
                  max(0.0, (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - mine))
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"$ {shlex.join(cmd)}\n# {run.seconds:.1f} s, exit {rc}\n"
                            f"--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}")
    if rc != 0:
        tail = "\n".join(run.text.splitlines()[-15:])
        where = f", log {log_path}" if log_path is not None else ""
        raise LlamaCppToolFailed(f"{name} failed (exit {rc}{where}):\n{tail}")
    return run


# ---------------------------------------------------------------- what the tools print

_PPL_RE = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_KLD_RE = {
    "ppl": re.compile(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)\s*±\s*([0-9.]+)"),
    "kld": re.compile(r"Mean\s+KLD:\s*([0-9.]+)\s*±\s*([0-9.]+)"),
    "p99": re.compile(r"99\.0%\s+KLD:\s*([0-9.]+)"),
    "same": re.compile(r"Same top p:\s*([0-9.]+)\s*±\s*([0-9.]+)"),
}


def parse_ppl(text: str) -> dict:
    """{"ppl", "pm"} of llama-perplexity's final estimate."""
    m = _PPL_RE.search(text)
    if not m:
        raise LlamaCppToolFailed("llama-perplexity printed no final estimate ('Final estimate: PPL = ...')")
    return {"ppl": float(m.group(1)), "pm": float(m.group(2))}


def parse_kld(text: str) -> dict:
    """The statistics of `llama-perplexity --kl-divergence`'s summary."""
    found = {k: r.search(text) for k, r in _KLD_RE.items()}
    missing = [k for k, m in found.items() if not m]
    if missing:
        raise LlamaCppToolFailed(f"llama-perplexity --kl-divergence printed no {', '.join(missing)} statistics")
    return {"ppl": float(found["ppl"].group(1)), "pm": float(found["ppl"].group(2)),
            "kld_mean": float(found["kld"].group(1)), "kld_pm": float(found["kld"].group(2)),
            "kld_p99": float(found["p99"].group(1)), "same_top_pct": float(found["same"].group(1))}


# ---------------------------------------------------------------- what a GGUF file holds

def gguf_sizes(path: Path) -> dict:
    """Size and true bits per weight of a GGUF from its bytes: the whole file (metadata included)
    and the linear layers (every scale, header and MLWQ side tensor counted: the permutation, and
    format 3's row scales and widths), with their types."""
    import gguf
    from mlwq.sizing import LINEAR, is_linear_weight

    from . import mlwq_format as F
    side = tuple(f".{sfx}" for sfx in (F.PERM_SUFFIX, F.SCALE_SUFFIX, F.BITS_SUFFIX))

    path = Path(path)
    r = gguf.GGUFReader(str(path))
    n_weights = tensor_bytes = lin_bytes = lin_weights = perm_bytes = 0
    types: dict[str, collections.Counter] = {k: collections.Counter() for k in LINEAR}
    all_types: collections.Counter = collections.Counter()
    embd = None
    for t in r.tensors:
        tensor_bytes += int(t.n_bytes)
        if t.name.endswith(side):
            perm_bytes += int(t.n_bytes)
            if t.name.split(".")[2] in LINEAR:
                lin_bytes += int(t.n_bytes)
            continue
        n_weights += int(t.n_elements)
        all_types[t.tensor_type.name] += int(t.n_elements)
        if is_linear_weight(t.name):
            lin_bytes += int(t.n_bytes)
            lin_weights += int(t.n_elements)
            types[t.name.split(".")[2]][t.tensor_type.name] += 1
        elif t.name == "token_embd.weight":
            embd = t.tensor_type.name
    size = path.stat().st_size
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return {
        "file": shown, "file_bytes": size, "tensor_bytes": tensor_bytes, "metadata_bytes": size - tensor_bytes,
        "n_weights": n_weights, "bpw_file": 8 * size / n_weights,
        "linear_weights": lin_weights, "linear_bytes": lin_bytes, "perm_bytes": perm_bytes,   # all MLWQ side tensors
        "bpw_linear": 8 * lin_bytes / lin_weights if lin_weights else float("nan"),
        "linear_types": {k: dict(v) for k, v in types.items()},
        "weights_by_type": dict(all_types), "token_embd_type": embd,
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["key"]:
        print(patch_key())
    else:
        sys.exit("usage: python exporters/llamacpp.py key   (the build key of ggml_patch, for build.sh)")
