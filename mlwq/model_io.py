"""Loading models and walking their layers.

A model comes from a Hugging Face model id or directory (transformers' from_pretrained), or
from a GGUF file (dequantized to float by transformers + gguf). ARCHITECTURES is the layer
walker's table: where the decoder blocks are, which modules run before them, and the linear
layers of a block in execution order. A new family is one entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MLWQError


@dataclass(frozen=True)
class ArchSpec:
    blocks: str                 # attribute path of the ModuleList of decoder blocks
    pre_blocks: tuple[str, ...] # modules that must sit on the device to compute block 0's input
    linears: tuple[str, ...]    # linear layers of one block, in execution order


_LLAMA = ArchSpec(
    blocks="model.layers",
    pre_blocks=("model.embed_tokens", "model.rotary_emb"),
    linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "opt": ArchSpec(
        blocks="model.decoder.layers",
        pre_blocks=("model.decoder.embed_tokens", "model.decoder.embed_positions",
                    "model.decoder.project_in"),
        linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                 "fc1", "fc2"),
    ),
    "phi": ArchSpec(
        blocks="model.layers",
        pre_blocks=("model.embed_tokens", "model.rotary_emb"),
        linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense",
                 "mlp.fc1", "mlp.fc2"),
    ),
}


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(source)
    path = Path(source)
    if source.endswith(".gguf"):
        if not path.is_file():
            raise MLWQError(f"model file not found: {source}")
        kw = dict(gguf_file=path.name)
        where = str(path.parent)
    elif path.exists():
        if not (path / "config.json").is_file():
            raise MLWQError(f"{source} is not a Hugging Face model directory (no config.json)")
        kw, where = {}, source
    elif source.startswith((".", "/")) or source.count("/") > 1:
        raise MLWQError(f"model not found: {source}")
    else:
        kw, where = {}, source        # a hub model id
    _check_architecture(where, kw)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kw)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw)
    except OSError as e:
        raise MLWQError(f"cannot load model {source}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise MLWQError(f"cannot load model {source}: {str(e).splitlines()[0]}") from None
    model.eval()
    model.config.use_cache = False
    arch_of(model)
    return model, tokenizer


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
