"""Loading models and walking their layers.

A model comes from a Hugging Face model id or directory (transformers' from_pretrained), or
from a GGUF file (dequantized to float by transformers + gguf). ARCHITECTURES is the layer
walker's and the GGUF exporter's table: where the decoder blocks are, which modules run before
them, the linear layers of a block in execution order, and their llama.cpp architecture and
GGUF tensor names. A new family is one entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MLWQError


@dataclass(frozen=True)
class ArchSpec:
    blocks: str                 # attribute path of the ModuleList of decoder blocks
    pre_blocks: tuple[str, ...] # modules that must sit on the device to compute block 0's input
    linears: tuple[str, ...]    # linear layers of one block, in execution order
    gguf_arch: str | None = None                 # llama.cpp's architecture for this family; None: none
    gguf_tensors: tuple[tuple[str, str], ...] = ()  # (linear, GGUF tensor base name in blk.N.)
    rope_permuted: bool = False                  # llama.cpp's converter permutes q/k rows (rope layout)


_LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_LLAMA_GGUF = tuple(zip(_LLAMA_LINEARS, ("attn_q", "attn_k", "attn_v", "attn_output",
                                         "ffn_gate", "ffn_up", "ffn_down")))
_PHI_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense",
                "mlp.fc1", "mlp.fc2")

# One entry per family: the layer walker's paths and the GGUF names the exporter writes. Mistral
# files are llama files to llama.cpp; OPT has no llama.cpp architecture.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("model.layers", ("model.embed_tokens", "model.rotary_emb"), _LLAMA_LINEARS,
                      "llama", _LLAMA_GGUF, rope_permuted=True),
    "mistral": ArchSpec("model.layers", ("model.embed_tokens", "model.rotary_emb"), _LLAMA_LINEARS,
                        "llama", _LLAMA_GGUF, rope_permuted=True),
    "qwen2": ArchSpec("model.layers", ("model.embed_tokens", "model.rotary_emb"), _LLAMA_LINEARS,
                      "qwen2", _LLAMA_GGUF),
    # Gemma-3 text: q/k norms and norms after attention and FFN live outside the linear layers;
    # llama.cpp's converter leaves q/k rows in order (NEOX rope).
    "gemma3_text": ArchSpec("model.layers", ("model.embed_tokens", "model.rotary_emb"), _LLAMA_LINEARS,
                            "gemma3", _LLAMA_GGUF),
    "opt": ArchSpec("model.decoder.layers",
                    ("model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.project_in"),
                    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "fc1", "fc2")),
    "phi": ArchSpec("model.layers", ("model.embed_tokens", "model.rotary_emb"), _PHI_LINEARS,
                    "phi2", tuple(zip(_PHI_LINEARS, ("attn_q", "attn_k", "attn_v", "attn_output",
                                                     "ffn_up", "ffn_down")))),
}


def spec_of_gguf_arch(gguf_arch: str) -> ArchSpec:
    """The entry whose GGUF files have general.architecture == gguf_arch."""
    for spec in ARCHITECTURES.values():
        if spec.gguf_arch == gguf_arch and spec.gguf_tensors:
            return spec
    known = sorted({s.gguf_arch for s in ARCHITECTURES.values() if s.gguf_arch})
    raise MLWQError(f"no GGUF export for llama.cpp architecture {gguf_arch!r}; exported: {', '.join(known)}")


def arch_of(model) -> ArchSpec:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise MLWQError(f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]


def get_module(root, path: str):
    """root.a.b.c for path 'a.b.c'; None if any part is missing (optional pre-block modules)."""
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def blocks_of(model) -> torch.nn.ModuleList:
    return get_module(model, arch_of(model).blocks)


def linear_names(model) -> list[str]:
    """Full module names of every quantizable linear layer, block by block."""
    spec = arch_of(model)
    return [f"{spec.blocks}.{i}.{name}" for i in range(len(blocks_of(model))) for name in spec.linears]


def load_model(source: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a GGUF file, a local HF directory or a hub model id."""
    source = str(source)
    path = Path(source)
    if source.endswith(".gguf"):
        if not path.is_file():
            raise MLWQError(f"model file not found: {source}")
        cached = None if os.environ.get("MLWQ_NO_MODEL_CACHE") else _converted_gguf(path)
        if cached is not None:
            return _load(str(cached), {}, source, dtype)
        return _load(str(path.parent), dict(gguf_file=path.name), source, dtype)
    if path.exists():
        if not (path / "config.json").is_file():
            raise MLWQError(f"{source} is not a Hugging Face model directory (no config.json)")
    elif source.startswith((".", "/")) or source.count("/") > 1:
        raise MLWQError(f"model not found: {source}")
    return _load(source, {}, source, dtype)     # a directory or a hub model id


def _load(where: str, kw: dict, source: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_architecture(where, kw)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kw)
        _check_tokenizer(tokenizer, source)          # before the weights: a second, not a minute
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw)
    except OSError as e:
        raise MLWQError(f"cannot load model {source}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise MLWQError(f"cannot load model {source}: {str(e).splitlines()[0]}") from None
    model.eval()
    model.config.use_cache = False
    arch_of(model)
    return model, tokenizer


# a tokenizer that splits this into about one token per character was converted wrongly
_TOKENIZER_PROBE = "The quick brown fox jumps over the lazy dog, and the committee met on Tuesday."


def _check_tokenizer(tokenizer, source: str) -> None:
    """Refuse a tokenizer that gives one token per character (some transformers versions convert
    a GGUF's tokenizer so): calibrating on such tokens quantizes for text the model never sees."""
    import transformers

    ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False).input_ids
    if len(ids) > 0.6 * len(_TOKENIZER_PROBE):
        raise MLWQError(
            f"the tokenizer of {source} splits English into {len(ids)} tokens for {len(_TOKENIZER_PROBE)} "
            f"characters (a working one gives about a quarter): transformers {transformers.__version__} "
            f"converted it wrongly; install transformers 5.25 (constraints.txt) or pass a Hugging Face "
            f"directory with a working tokenizer")


def _converted_gguf(path: Path) -> Path | None:
    """The GGUF's float model as a Hugging Face directory in the cache, converted on first use.

    transformers re-parses a GGUF's metadata for the config, the tokenizer and the weights (30 s
    for SmolLM2's 49k-token vocabulary on 2 cores); the copy loads in about a second. Keyed by the
    file's sha256 and the transformers version that converted it. None where the cache is not
    writable (then the GGUF is read directly)."""
    import hashlib

    import transformers

    from .assets import cache_dir

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    try:
        root = cache_dir() / "models"
        target = root / f"{path.stem}-{digest.hexdigest()[:16]}-transformers{transformers.__version__}"
        if (target / "config.json").is_file():
            return target
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    model, tokenizer = _load(str(path.parent), dict(gguf_file=path.name), str(path), torch.float32)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        save_hf(model, tokenizer, tmp)
        os.replace(tmp, target)                     # atomic: a half-written copy is never used
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            return None
    return target


def _check_architecture(where: str, kw: dict) -> None:
    """Refuse an unsupported architecture before loading its weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(where, **kw)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MLWQError(f"cannot read the model configuration of {where}: {msg}") from None
    if config.model_type not in ARCHITECTURES:
        raise MLWQError(f"unsupported architecture {config.model_type!r}; supported: "
                        f"{', '.join(sorted(ARCHITECTURES))}")


def save_hf(model, tokenizer, out_dir: str | os.PathLike) -> None:
    """Write a model as a plain Hugging Face directory (float safetensors + tokenizer).

    A model loaded from a GGUF carries transformers' GGUF 'quantizer' marker, which refuses
    save_pretrained; its weights are already float, so a clean copy is saved instead.
    """
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(
        {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    clean = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    clean.load_state_dict(model.state_dict())
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
