"""Synthetic llama-architecture GGUFs with random weights, for CUDA correctness and speed checks.

Never for quality: the weights are random. Shapes are those of real models, so speed figures
mean something; the tokenizer is SmolLM2's (padded with unused tokens to the vocabulary size).

    python make_synthetic_gguf.py f16  --shape llama-3.2-1b --tokenizer tok.json.gz -o base.gguf
    python make_synthetic_gguf.py mlwq --shape llama-3.2-1b --tokenizer tok.json.gz --bits 3 \
        [--like q3ks.gguf] -o mlwq3.gguf
    python make_synthetic_gguf.py f16  --shape llama-3-8b --pool --tokenizer tok.json.gz -o base.gguf

`mlwq` writes every linear weight (attn_q/k/v/output, ffn_gate/up/down) as MLWQb with tiers of
widths b-1, b, b+1 (a third of the blocks each, codes random, sum of widths = K*b) and a random
column permutation; with --like, every other tensor (token_embd, norms) is copied byte for byte
from that file (e.g. the Q6_K token embedding llama-quantize chose for a Q3_K_S file), so the two
files differ only in the linear weights. Needs the patched gguf-py (MLWQ types) on PYTHONPATH.

`f16 --pool` draws one pool of normal values (as long as the largest tensor, plus 2^24) and makes
every F16 tensor a window of it at a random offset: the 8B shape's 7.5e9 weights take seconds
instead of minutes (one draw of each weight: ~0.04 us a weight on the development machine), and
the writer holds only the pool in memory. The tensors then share values, shifted; llama-quantize
and the kernels do not care (speed only, like every file of this script).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys

import numpy as np

import gguf

SHAPES = {
    # n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, rope_base
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, 100000.0),
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, 128256, 500000.0),
    # Llama-3-8B's shape, but with a tied output (token_embd serves as the output matrix, as in the
    # 1B shape): generation reads the same bytes, llama-quantize gives token_embd Q6_K instead of
    # token_embd Q3_K + output Q6_K
    "llama-3-8b": (4096, 32, 32, 8, 14336, 128256, 500000.0),
}
LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# MLWQ format version 2 (ggml_patch/src/ggml/include/ggml-mlwq.h): a row of K = ne0/64 blocks is
# K*(2 + 8b) bytes, K 2-byte headers [u8 scale code s][u8 zero | (bits - 1) << 5] first, then the
# codes; d = 2^(s/8 - 20). Type ids and LLAMA_FTYPE_MOSTLY_MLWQ<b>: 143, 144, 145.
QK, HDR = 64, 2
FORMAT_VERSION = 2
MLWQ_FTYPE = {2: 143, 3: 144, 4: 145}


def linear_shapes(shape: str) -> dict[str, tuple[int, int]]:
    """name -> (ne0 = input columns, ne1 = output rows)."""
    n_embd, n_layer, n_head, n_head_kv, n_ff, _, _ = SHAPES[shape]
    kv = n_embd // n_head * n_head_kv
    per = {"attn_q": (n_embd, n_embd), "attn_k": (n_embd, kv), "attn_v": (n_embd, kv),
           "attn_output": (n_embd, n_embd), "ffn_gate": (n_embd, n_ff), "ffn_up": (n_embd, n_ff),
           "ffn_down": (n_ff, n_embd)}
    return {f"blk.{i}.{k}.weight": v for i in range(n_layer) for k, v in per.items()}


def write_kv(w: gguf.GGUFWriter, shape: str, tok_path: str, file_type: int, mlwq: bool) -> None:
    n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, rope_base = SHAPES[shape]
    w.add_name(f"synthetic {shape} (random weights)")
    w.add_context_length(8192)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(rope_base)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(file_type)
    if mlwq:
        w.add_uint32("mlwq.format_version", FORMAT_VERSION)
    with gzip.open(tok_path, "rt") as f:
        tok = json.load(f)
    tokens = list(tok["tokenizer.ggml.tokens"])
    types = list(tok["tokenizer.ggml.token_type"])
    for i in range(len(tokens), n_vocab):
        tokens.append(f"<|synthetic_pad_{i}|>")
        types.append(int(gguf.TokenType.UNUSED))
    w.add_tokenizer_model(tok["tokenizer.ggml.model"])
    w.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    w.add_token_list(tokens[:n_vocab])
    w.add_token_types(types[:n_vocab])
    w.add_token_merges(tok["tokenizer.ggml.merges"])
    w.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"])
    w.add_unk_token_id(tok["tokenizer.ggml.unknown_token_id"])
    w.add_pad_token_id(tok["tokenizer.ggml.padding_token_id"])
    w.add_add_bos_token(True)


def mlwq_tensor(rng: np.random.Generator, ne0: int, ne1: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Random MLWQb rows (uint8 [ne1, row_bytes]) and a random permutation (int32 [ne0])."""
    K = ne0 // QK
    n_lo = n_hi = K // 3
    widths = np.array([b - 1] * n_lo + [b] * (K - n_lo - n_hi) + [b + 1] * n_hi, dtype=np.int64)
    assert widths.min() >= 1 and widths.max() <= 8 and widths.sum() <= K * b
    row_bytes = K * (HDR + 8 * b)
    out = np.zeros((ne1, row_bytes), dtype=np.uint8)
    hdr = np.zeros((K, HDR), dtype=np.uint8)
    for j, wj in enumerate(widths):
        d = 0.02 * np.sqrt(12.0) / 2**wj                  # weights of std ~0.02
        hdr[j, 0] = int(np.clip(np.rint(8 * (np.log2(d) + 20)), 0, 255))   # nearest code: 2^(s/8 - 20)
        zero = 2 ** (wj - 1)                              # zero in the middle (<= 16: widths <= 5)
        hdr[j, 1] = zero | ((wj - 1) << 5)
    out[:, : HDR * K] = hdr.reshape(-1)
    ncode = 8 * int(widths.sum())
    out[:, HDR * K : HDR * K + ncode] = rng.integers(0, 256, size=(ne1, ncode), dtype=np.uint8)
    perm = rng.permutation(ne0).astype(np.int32)
    return out, perm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["f16", "mlwq"])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--tokenizer", required=True, help="tokenizer KV as gzipped JSON")
    ap.add_argument("--bits", type=int, default=3, choices=[2, 3, 4])
    ap.add_argument("--like", help="copy every non-linear tensor's bytes from this GGUF")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", action="store_true",
                    help="f16: windows of one shared pool of random values (fast, for big shapes)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    n_embd, n_layer, _, _, _, n_vocab, _ = SHAPES[args.shape]
    rng = np.random.default_rng(args.seed)
    mlwq = args.kind == "mlwq"
    qtype = {2: gguf.GGMLQuantizationType.MLWQ2, 3: gguf.GGMLQuantizationType.MLWQ3,
             4: gguf.GGMLQuantizationType.MLWQ4}[args.bits]
    w = gguf.GGUFWriter(args.output, "llama")
    write_kv(w, args.shape, args.tokenizer, MLWQ_FTYPE[args.bits] if mlwq else int(gguf.LlamaFileType.MOSTLY_F16), mlwq)

    pool = None
    if args.pool and not mlwq:
        n_pool = max(n_vocab * n_embd, *(a * b for a, b in linear_shapes(args.shape).values())) + (1 << 24)
        pool = (rng.standard_normal(n_pool, dtype=np.float32) * 0.02).astype(np.float16)

    def f16_weight(shape: tuple[int, ...]) -> np.ndarray:
        if pool is None:
            return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        n = int(np.prod(shape))
        off = int(rng.integers(0, len(pool) - n + 1))
        return pool[off : off + n].reshape(shape)          # a view: no copy until it is written

    like = {}
    if args.like:
        for t in gguf.GGUFReader(args.like).tensors:
            like[t.name] = t

    def add_other(name: str, shape: tuple[int, ...], kind: str) -> None:
        if name in like:
            t = like[name]
            if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                w.add_tensor(name, np.array(t.data))
            else:  # bytes [rows, row bytes]
                w.add_tensor(name, np.array(t.data), raw_dtype=t.tensor_type)
            return
        if kind == "norm":
            w.add_tensor(name, np.full(shape, 4.0 if name == "output_norm.weight" else 1.0, dtype=np.float32))
        else:
            w.add_tensor(name, f16_weight(shape))

    add_other("token_embd.weight", (n_vocab, n_embd), "w")
    add_other("output_norm.weight", (n_embd,), "norm")
    lin = linear_shapes(args.shape)
    for i in range(n_layer):
        add_other(f"blk.{i}.attn_norm.weight", (n_embd,), "norm")
        add_other(f"blk.{i}.ffn_norm.weight", (n_embd,), "norm")
        for k in LINEAR:
            name = f"blk.{i}.{k}.weight"
            ne0, ne1 = lin[name]
            if mlwq:
                data, perm = mlwq_tensor(rng, ne0, ne1, args.bits)
                w.add_tensor(name, data, raw_dtype=qtype)  # bytes [ne1, row bytes]
                w.add_tensor(name[: -len(".weight")] + ".mlwq_perm", perm)
            else:
                w.add_tensor(name, f16_weight((ne1, ne0)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
