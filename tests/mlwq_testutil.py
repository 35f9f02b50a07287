"""Helpers shared by the tests: a reduced real model, a simple RTN quantizer that writes the same
checkpoint files as `mlwq quantize`, and a PyTorch float model built from dequantized weights."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from exporters import mlwq_format as F
from mlwq import checkpoint

DEFAULT_GGUF = Path.home() / ".cache" / "mlwq" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
GGUF_OF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}


def hf_reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp q/k row layout -> Hugging Face layout, as transformers' GGUF loader does
    (LlamaTensorProcessor._reverse_permute_weights)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


@functools.lru_cache(maxsize=4)
def gguf_float_weights(path, with_embeddings: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """(hparams, {GGUF tensor name: fp32 array [rows, ne0]}) of a GGUF, dequantized by gguf-py
    (token_embd only if asked: it is the largest tensor). Cached: treat the arrays as read-only."""
    import gguf

    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    hp = {k.split(".", 1)[1]: r.fields[k].contents() for k in r.fields if k.startswith(arch + ".")}
    hp["arch"] = arch
    out = {}
    for t in r.tensors:
        if t.name == "token_embd.weight" and not with_embeddings:
            continue
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = np.ascontiguousarray(w, dtype=np.float32).reshape(list(reversed([int(x) for x in t.shape])))
    return hp, out


def tier_bits(K: int, b: int, rng) -> np.ndarray:
    """Block widths averaging exactly b: tiers b+1 / b / b-1 in equal numbers, rest at b."""
    n = K // 4
    bits = np.full(K, b, dtype=np.uint8)
    bits[:n] = b + 1
    bits[n:2 * n] = b - 1
    return bits


def rtn_quantize(W: np.ndarray, bits: np.ndarray, rng, file_format: int = 2) -> dict[str, np.ndarray]:
    """Round-to-nearest asymmetric quantization of W [out, in] in 64-column blocks of the given widths,
    columns permuted (by decreasing norm: the high tier gets the strong channels), on the grid of
    file format 2 (2^(k/8), zero <= 31) or 3 (2^(k/2), zero <= 15). Checkpoint tensors."""
    out_f, in_f = W.shape
    perm = np.argsort(-np.linalg.norm(W, axis=0), kind="stable").astype(np.int32)
    Wp = W[:, perm].reshape(out_f, -1, F.QK)
    maxq = ((1 << bits.astype(np.int64)) - 1).astype(np.float32)[None, :]
    wmax = np.maximum(Wp.max(axis=2), 0)
    wmin = np.minimum(Wp.min(axis=2), 0)
    d = F.round_to_scale_grid((wmax - wmin) / maxq)
    zmax = F.ZERO_MAX
    if file_format == 3:                  # every 4th scale code: 2^(k/2)
        s = F.scale_codes(d).astype(np.int64)
        d = F.SCALE_TABLE[np.clip((s + 2) // 4 * 4, 0, 252)]
        zmax = F.V3_ZERO_MAX
    df = d
    zero = np.clip(np.round(-wmin / df), 0, np.minimum(maxq, zmax)).astype(np.uint8)
    q = np.clip(np.round(Wp / df[:, :, None]) + zero[:, :, None], 0, maxq[:, :, None]).astype(np.uint8)
    t = {"qcodes": q.reshape(out_f, in_f), "perm": perm, "scale": d, "zero": zero, "group_bits": bits.copy()}
    return {k: np.ascontiguousarray(v) for k, v in t.items()}   # safetensors.numpy ignores strides


def write_rtn_checkpoint(ckpt_dir, source_gguf, b: int = 3, seed: int = 0, layers=None, max_blocks=None,
                         widths: dict | None = None, file_format: int = 2) -> dict:
    """Quantize the linears of a llama GGUF (weights as transformers sees them: q/k rows in HF order)
    with RTN and write an mlwq checkpoint directory. Returns {hf name: dequantized W (HF layout)}."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    hp, weights = gguf_float_weights(str(source_gguf))
    n_blocks = int(hp["block_count"]) if max_blocks is None else max_blocks
    tensors, layer_meta, deq = {}, {}, {}
    for i in range(n_blocks):
        for lin in HF_LINEARS:
            name = f"model.layers.{i}.{lin}"
            if layers is not None and name not in layers:
                continue
            W = weights[f"blk.{i}.{GGUF_OF[lin]}.weight"]
            if lin.endswith("q_proj"):
                W = hf_reverse_permute(W, int(hp["attention.head_count"]))
            elif lin.endswith("k_proj"):
                W = hf_reverse_permute(W, int(hp["attention.head_count_kv"]))
            lb = (widths or {}).get(name, b)
            t = rtn_quantize(W, tier_bits(W.shape[1] // F.QK, lb, rng), rng, file_format)
            for k, v in t.items():
                tensors[f"{name}.{k}"] = v
            layer_meta[name] = {"bits": lb, "shape": list(W.shape)}
            deq[name] = F.unpermute_columns(F.dequantize_codes(t["qcodes"], t["scale"], t["zero"]), t["perm"])
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(ckpt_dir / "quantized.safetensors"))
    meta = {"format": "mlwq-checkpoint", "version": checkpoint.FORMAT_VERSION, "source": str(source_gguf),
            "group_size": 64, "layers": layer_meta, "max_blocks": max_blocks,
            "config": {"quantizer": "rtn-test", "b": b, **({"file_format": 3} if file_format == 3 else {})}}
    (ckpt_dir / "mlwq_checkpoint.json").write_text(json.dumps(meta, indent=1))
    return deq


def llama_logits(path, ids: list[int], n_batch: int = 64, repack: bool = True) -> np.ndarray:
    """[len(ids), vocab] logits of every position from llama-cpp-python (our libllama), CPU, the prompt
    evaluated n_batch tokens at a time (1: as generation runs). repack=False: weights stay out of
    ggml's CPU_REPACK buffer (llama.cpp's --no-repack; the Llama class has no argument for it)."""
    import llama_cpp.llama_cpp as lcpp
    from llama_cpp import Llama

    defaults = lcpp.llama_model_default_params

    def model_params():
        p = defaults()
        p.use_extra_bufts = repack
        return p

    lcpp.llama_model_default_params = model_params
    try:
        llm = Llama(model_path=str(path), n_ctx=64, n_batch=n_batch, n_ubatch=n_batch, logits_all=True, n_threads=2,
                    verbose=False)
    finally:
        lcpp.llama_model_default_params = defaults
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)
