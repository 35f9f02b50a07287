"""The patched llama.cpp (CPU) on MLWQ files: C-vs-Python bit exactness, kernels, loading, logits,
and refusal of malformed files. Needs `bash ggml_patch/build.sh`; without it these tests FAIL with
that instruction (they are never skipped)."""

import json
import os
import shutil
import signal
import struct
import subprocess

import numpy as np
import pytest

import gguf
from exporters import llamacpp
from exporters import mlwq_format as F
from exporters.gguf_export import read_mlwq_tensor
from mlwq_testutil import HF_LINEARS, GGUF_OF, gguf_float_weights, hf_reverse_permute, llama_logits

pytestmark = pytest.mark.llamacpp

PROMPT_IDS = [1, 504, 3458, 282, 4649, 314, 5513, 30, 378, 3458, 282, 3734, 314, 16306, 30, 378]


def run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=llamacpp.tool_env(),
                          timeout=kw.pop("timeout", 120), **kw)


def test_build_is_found_and_missing_build_fails_with_the_instruction(tmp_path, monkeypatch):
    for tool in ("llama-cli", "llama-completion", "llama-perplexity", "llama-bench", "llama-quantize", "llama-imatrix",
                 "mlwq-check"):
        assert llamacpp.tool_path(tool).is_file()
    assert (llamacpp.lib_dir() / "libllama.so").exists()
    monkeypatch.setenv("MLWQ_CACHE", str(tmp_path))
    monkeypatch.delenv("MLWQ_LLAMA_BIN", raising=False)
    with pytest.raises(llamacpp.LlamaCppNotBuilt, match="bash ggml_patch/build.sh"):
        llamacpp.tool_path("llama-completion")


# ---- C vs Python ------------------------------------------------------------------------------

def random_rows(rng, rows, bits, b):
    bits = np.asarray(bits, np.uint8)
    maxq = (1 << bits.astype(np.int64)) - 1
    codes = (rng.integers(0, 256, (rows, bits.size * 64)) & np.repeat(maxq, 64)).astype(np.uint8)
    scale = F.SCALE_TABLE[rng.integers(0, 256, (rows, bits.size))]
    zero = (rng.integers(0, 256, (rows, bits.size)) & np.minimum(maxq, F.ZERO_MAX)).astype(np.uint8)
    return F.pack_rows(codes, scale, zero, bits, b)


CASES = [(2, [1, 2, 3, 2]), (3, [3, 5, 1, 3]), (4, [8, 4, 4, 1, 7, 4, 3, 1]), (3, [2, 4, 2]), (4, [6, 2, 4, 4]), (3, [7, 1, 3, 1])]


@pytest.mark.parametrize("b,bits", CASES)
def test_c_dequant_is_bit_exact(b, bits, tmp_path):
    data = random_rows(np.random.default_rng(b), 5, bits, b)
    ne0 = len(bits) * 64
    (tmp_path / "rows.bin").write_bytes(data.tobytes())
    r = run([llamacpp.tool_path("mlwq-check"), "dequant", f"mlwq{b}", ne0, 5, tmp_path / "rows.bin", tmp_path / "y.f32"])
    assert r.returncode == 0, r.stderr
    c = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(5, ne0)
    assert (c.view(np.uint32) == F.dequantize_rows(data, ne0, b).view(np.uint32)).all()


def test_c_dequant_of_every_scale_code_is_bit_exact(tmp_path):
    # 4 rows x 64 blocks of width 2: the 256 scale codes once each, C's exact product vs SCALE_TABLE
    rows, K = 4, 64
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 4, (rows, K * 64)).astype(np.uint8)
    scale = F.SCALE_TABLE[np.arange(256).reshape(rows, K)]
    data = F.pack_rows(codes, scale, rng.integers(0, 4, (rows, K)).astype(np.uint8), np.full(K, 2, np.uint8), 2)
    (tmp_path / "rows.bin").write_bytes(data.tobytes())
    r = run([llamacpp.tool_path("mlwq-check"), "dequant", "mlwq2", K * 64, rows, tmp_path / "rows.bin", tmp_path / "y.f32"])
    assert r.returncode == 0, r.stderr
    c = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(rows, K * 64)
    assert (c.view(np.uint32) == F.dequantize_rows(data, K * 64, 2).view(np.uint32)).all()


def test_c_dequant_of_exported_tensors_is_bit_exact(exported, tmp_path):
    path, _ = exported
    r = gguf.GGUFReader(str(path))
    seen = set()
    for t in r.tensors:
        b = F.width_of_type_id(int(t.tensor_type))
        if b is None or b in seen:
            continue
        seen.add(b)
        ne0, rows = int(t.shape[0]), int(t.shape[1])
        data = np.asarray(t.data).reshape(rows, -1)
        (tmp_path / "rows.bin").write_bytes(data.tobytes())
        res = run([llamacpp.tool_path("mlwq-check"), "dequant", f"mlwq{b}", ne0, rows, tmp_path / "rows.bin", tmp_path / "y.f32"])
        assert res.returncode == 0, res.stderr
        c = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(rows, ne0)
        assert (c.view(np.uint32) == F.dequantize_rows(data, ne0, b).view(np.uint32)).all(), t.name
    assert seen == {2, 3, 4}


def q8_1_dequant(raw: bytes, ncol: int, ne0: int) -> np.ndarray:
    blk = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", 32)])).reshape(ncol, ne0 // 32)
    return (blk["d"].astype(np.float64)[..., None] * blk["qs"].astype(np.float64)).reshape(ncol, ne0)


# 6 rows x 5 columns: the gemm's 4-row tiles and every remainder (rows, columns, threads); 21 x 19: its
# row panels of prompt processing (x86: 16 or 8 rows x 8 or 4 columns) and their remainders; 16 x 1 and
# 24 x 9: the repacked rows of x86 builds (groups of 8 rows: generation, then panels and a remainder)
@pytest.mark.parametrize("nrow,ncol", [(6, 5), (21, 19), (16, 1), (24, 9)])
@pytest.mark.parametrize("b,bits", CASES)
def test_c_vec_dot_matches_numpy(b, bits, nrow, ncol, tmp_path):
    rng = np.random.default_rng(10 + b)
    data = random_rows(rng, nrow, bits, b)
    ne0 = len(bits) * 64
    x = rng.standard_normal((ncol, ne0)).astype(np.float32)
    (tmp_path / "rows.bin").write_bytes(data.tobytes())
    x.tofile(tmp_path / "x.f32")
    r = run([llamacpp.tool_path("mlwq-check"), "dot", f"mlwq{b}", ne0, nrow, tmp_path / "rows.bin", tmp_path / "x.f32", ncol, tmp_path / "o"])
    assert r.returncode == 0 and "vec_dot_type q8_1 nrows 2" in r.stdout, r.stderr
    if nrow % 8 == 0:    # one width per block for all rows: they pack where the build repacks
        assert "x8 packed" in r.stdout or "x8 unavailable" in r.stdout, r.stdout
    out = {k: np.fromfile(f"{tmp_path / 'o'}.{k}.f32", np.float32).reshape(ncol, nrow) for k in ("simd", "simd2", "gemm", "x8", "generic")}
    xq = q8_1_dequant((tmp_path / "o.q8_1").read_bytes(), ncol, ne0)
    ref = xq @ F.dequantize_rows(data, ne0, b).astype(np.float64).T
    scale = np.abs(xq) @ np.abs(F.dequantize_rows(data, ne0, b).astype(np.float64)).T
    for k, got in out.items():     # 1x1 calls, 2x2 calls, tiled gemm, repacked rows (what llama.cpp runs), portable loop
        assert np.all(np.abs(got - ref) <= 1e-5 * scale + 1e-6), k    # float summation order only


def test_c_kernels_never_read_past_a_corrupt_row(tmp_path):
    """Widths that sum past the row: the kernels stop at the first block whose codes would end past
    it, output 0 for the rest of the row, and do not crash; the validator names the fault."""
    data = random_rows(np.random.default_rng(7), 4, [3, 3, 3, 3], 3)
    data[1, 2 * 1 + 1] |= 7 << 5; data[1, 2 * 2 + 1] |= 7 << 5   # row 1: block 2's codes end past the row
    data[2, 2 * 0 + 1] |= 7 << 5; data[2, 2 * 1 + 1] |= 7 << 5   # row 2: block 1's codes end past the row
    (tmp_path / "rows.bin").write_bytes(data.tobytes())
    exe = llamacpp.tool_path("mlwq-check")
    r = run([exe, "dequant", "mlwq3", 256, 4, tmp_path / "rows.bin", tmp_path / "y.f32"])
    assert r.returncode == 0
    y = np.fromfile(tmp_path / "y.f32", np.float32).reshape(4, 256)
    assert (y[1, 128:] == 0).all() and (y[2, 64:] == 0).all()
    # 2 columns: 2x2 calls pair a corrupt row with a sound one (rows 0+1, 2+3), each row still stops on
    # its own; 9 columns: the gemm's row panels; then 9 columns whose last q8_1 block has an inf scale
    # (|x| 1e7: d = amax/127 overflows fp16): the stopped rows still give their finite sums, not 0 * inf
    for ncol, big in ((2, False), (9, False), (9, True)):
        x = np.random.default_rng(0).standard_normal((ncol, 256)).astype(np.float32)
        if big:
            x[:, 224:] *= 1e7
        x.tofile(tmp_path / "x.f32")
        r = run([exe, "dot", "mlwq3", 256, 4, tmp_path / "rows.bin", tmp_path / "x.f32", ncol, tmp_path / "o"])
        assert r.returncode == 0
        gen = np.fromfile(tmp_path / "o.generic.f32", np.float32).reshape(ncol, 4)
        rows = slice(1, 3) if big else slice(0, 4)      # rows 0 and 3 read the inf block: not specified
        if big:
            assert np.isfinite(gen[:, rows]).all() and np.isinf(gen[:, [0, 3]]).all()
        for k in ("simd", "simd2", "gemm"):
            got = np.fromfile(tmp_path / f"o.{k}.f32", np.float32).reshape(ncol, 4)
            assert np.allclose(got[:, rows], gen[:, rows], rtol=1e-5, atol=1e-6), (ncol, big, k)
    r = run([exe, "validate", "mlwq3", 256, 4, tmp_path / "rows.bin"])
    assert r.returncode == 1 and "row 1: sum of block bits" in r.stdout


def test_c_panels_add_nothing_for_a_row_past_its_corrupt_header(tmp_path):
    """Row 1 stops at block 2 (a width-7 header whose codes would end past the row) and the last q8_1
    block of every column has an inf scale: the row's sum stays finite in every kernel (the x86
    panels mask it: not 0 * inf = NaN). All readable widths are <= 7, so an AVX2 build stays on
    its panels (a width-8 block sends a panel to the 4-row tiles)."""
    data = random_rows(np.random.default_rng(8), 4, [3, 3, 3, 3], 3)
    data[1, 2 * 2 + 1] = (data[1, 2 * 2 + 1] & 31) | 6 << 5
    (tmp_path / "rows.bin").write_bytes(data.tobytes())
    x = np.random.default_rng(1).standard_normal((9, 256)).astype(np.float32)
    x[:, 224:] *= 1e7                                  # d = amax/127 overflows fp16
    x.tofile(tmp_path / "x.f32")
    r = run([llamacpp.tool_path("mlwq-check"), "dot", "mlwq3", 256, 4, tmp_path / "rows.bin", tmp_path / "x.f32", 9, tmp_path / "o"])
    assert r.returncode == 0, r.stderr
    gen = np.fromfile(tmp_path / "o.generic.f32", np.float32).reshape(9, 4)
    assert np.isfinite(gen[:, 1]).all() and np.isinf(gen[:, [0, 2, 3]]).all()
    for k in ("simd", "simd2", "gemm"):
        got = np.fromfile(tmp_path / f"o.{k}.f32", np.float32).reshape(9, 4)
        assert np.allclose(got[:, 1], gen[:, 1], rtol=1e-5, atol=1e-6), k


# ---- llama.cpp on an exported file ---------------------------------------------------------

def test_llama_cli_answers_one_turn_with_the_exported_model(exported):
    """llama-cli (a chat in this llama.cpp) on the MLWQ file: one turn (-st), then exit. The 2-block
    model's answer is not language; the full model's is (README, docs/results/cpu-speed/README.md)."""
    path, _ = exported
    r = run([llamacpp.tool_path("llama-cli"), "-m", path, "-p", "What is the capital of France?", "-n", "8",
             "-st", "--simple-io", "--temp", "0", "-c", "256", "-t", "2"], stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ftype      : MLWQ3" in r.stdout
    turn = r.stdout.split("> What is the capital of France?", 1)[1]
    answer, stats = turn.split("[ Prompt:", 1)
    assert answer.strip(), r.stdout[-2000:]
    assert "Generation:" in stats


def test_llama_completion_runs_the_exported_model(exported):
    path, _ = exported
    r = run([llamacpp.tool_path("llama-completion"), "-m", path, "-p", "The capital of France is", "-n", "6",
             "--temp", "0", "-no-cnv", "-c", "256", "-t", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("The capital of France is") and len(r.stdout) > len("The capital of France is")


def torch_model(reduced_gguf, deq):
    """LlamaForCausalLM (fp32) with the dequantized weights of the export: what llama.cpp should compute."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hp, w = gguf_float_weights(str(reduced_gguf), True)
    cfg = LlamaConfig(vocab_size=w["token_embd.weight"].shape[0], hidden_size=int(hp["embedding_length"]),
                      intermediate_size=int(hp["feed_forward_length"]), num_hidden_layers=int(hp["block_count"]),
                      num_attention_heads=int(hp["attention.head_count"]),
                      num_key_value_heads=int(hp["attention.head_count_kv"]),
                      rms_norm_eps=float(hp["attention.layer_norm_rms_epsilon"]), rope_theta=float(hp["rope.freq_base"]),
                      max_position_embeddings=int(hp["context_length"]), tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    sd = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"],
          "lm_head.weight": w["token_embd.weight"]}
    for i in range(cfg.num_hidden_layers):
        sd[f"model.layers.{i}.input_layernorm.weight"] = w[f"blk.{i}.attn_norm.weight"]
        sd[f"model.layers.{i}.post_attention_layernorm.weight"] = w[f"blk.{i}.ffn_norm.weight"]
        for lin in HF_LINEARS:
            name = f"model.layers.{i}.{lin}"
            if deq is not None:
                sd[name + ".weight"] = deq[name]
            else:   # the unquantized (source) weights, in HF layout
                W = w[f"blk.{i}.{GGUF_OF[lin]}.weight"]
                if lin.endswith("q_proj"):
                    W = hf_reverse_permute(W, cfg.num_attention_heads)
                elif lin.endswith("k_proj"):
                    W = hf_reverse_permute(W, cfg.num_key_value_heads)
                sd[name + ".weight"] = W
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}, strict=True)
    with torch.no_grad():
        return model(torch.tensor([PROMPT_IDS])).logits[0].double().numpy()


def test_logits_match_pytorch_on_the_dequantized_weights(exported, rtn_checkpoint, reduced_gguf):
    """llama-cpp-python (our libllama) vs transformers' LlamaForCausalLM (fp32) built from the same
    dequantized weights, on a 16-token prompt, all positions.

    Tolerance: llama.cpp quantizes the activations (q8_1) before every quantized product, MLWQ or
    not, so it never equals an fp32 model. We measure that floor on the stock file (Q4_1/Q8_0, same
    2 blocks) against its own fp32 model (~0.07 of the logits' standard deviation, max over all
    logits) and require the MLWQ file to stay within 2x that floor and below 0.15 std, the same argmax
    on >= 15/16 positions, and to be >= 5x closer to its dequantized weights than to the unquantized
    model (a wrong permutation or row order lands near 1 std)."""
    llamacpp.check_python_bindings()
    path, _ = exported
    got = llama_logits(path, PROMPT_IDS)
    ref = torch_model(reduced_gguf, rtn_checkpoint[1])
    unq = torch_model(reduced_gguf, None)
    floor = np.abs(llama_logits(reduced_gguf, PROMPT_IDS) - unq).max() / unq.std()
    err = np.abs(got - ref).max() / ref.std()
    err_unq = np.abs(got - unq).max() / ref.std()
    print(f"max|llama.cpp - torch(dequantized)| = {err:.4f} std (stock-type floor {floor:.4f}), "
          f"vs the unquantized model {err_unq:.4f} std")
    assert err < 0.15 and err < 2 * floor
    assert (got.argmax(1) == ref.argmax(1)).sum() >= len(PROMPT_IDS) - 1
    assert err_unq > 5 * err


def test_rotated_export_computes_the_rotated_model(reduced_model, reduced_gguf, tmp_path):
    """A checkpoint quantized with a residual rotation (RTN 4-bit, 2 blocks, Hadamard): its GGUF
    (rotated embedding, an output tensor of its own, unit norms; llama.cpp's graph unchanged)
    computes what the rotated fake-quantized PyTorch model computes, within the tolerance of the
    test above. A wrong or transposed rotation lands near 1 std."""
    import torch
    from exporters.gguf_export import export_gguf
    from mlwq import api
    from mlwq.engine import QuantConfig

    llamacpp.check_python_bindings()
    res = api.quantize("reduced", tmp_path / "ck", QuantConfig(method="rtn", bits=4, rotation="hadamard"),
                       model_and_tokenizer=reduced_model, nsamples=2, seqlen=64, progress=False, device="cpu")
    out = tmp_path / "rot.gguf"
    export_gguf(tmp_path / "ck", out, source=reduced_gguf, log=lambda m: None, embedding_type="Q8_0")
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert all(np.all(np.asarray(t.data) == 1) for n, t in tensors.items() if n.endswith("norm.weight"))
    got = llama_logits(out, PROMPT_IDS)
    with torch.no_grad():
        ref = res.model(torch.tensor([PROMPT_IDS])).logits[0].double().numpy()
    err = np.abs(got - ref).max() / ref.std()
    print(f"max|llama.cpp - torch(rotated, fake-quantized)| = {err:.4f} std")
    assert err < 0.15
    assert (got.argmax(1) == ref.argmax(1)).sum() >= len(PROMPT_IDS) - 1


def test_repacked_weights_compute_what_the_rows_compute(exported, tmp_path):
    """In ggml's CPU_REPACK buffer (x86 builds: groups of 8 rows interleaved at load)
    the MLWQ weights give the logits of the rows for a prompt at once bit for bit (both run the
    panels: the same sums in the same order), and token by token (generation's kernel) the prompt's
    logits bit for bit too: its sums and their order are the panels'. The rows' generation tiles
    add in another order, which after two blocks moves the logits by a few hundredths of their
    spread. llama.cpp reports the buffer where the build has the kernel, and the permutations stay in
    the CPU's own buffer."""
    path, _ = exported
    rng = np.random.default_rng(0)
    (tmp_path / "rows.bin").write_bytes(random_rows(rng, 8, [3, 3], 3).tobytes())
    rng.standard_normal((1, 128)).astype(np.float32).tofile(tmp_path / "x.f32")
    r = run([llamacpp.tool_path("mlwq-check"), "dot", "mlwq3", 128, 8, tmp_path / "rows.bin", tmp_path / "x.f32", 1, tmp_path / "o"])
    repacks = "x8 packed" in r.stdout
    r = run([llamacpp.tool_path("llama-completion"), "-m", path, "-p", "The capital of France is", "-n", "4",
             "-no-cnv", "-c", "64", "--temp", "0", "-t", "2", "-v"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("CPU_REPACK model buffer size" in r.stderr) == repacks, r.stderr[-3000:]
    prompt = llama_logits(path, PROMPT_IDS)
    assert np.array_equal(prompt, llama_logits(path, PROMPT_IDS, repack=False))
    tokens, tokens_rows = (llama_logits(path, PROMPT_IDS, n_batch=1, repack=rp) for rp in (True, False))
    if repacks:
        assert np.array_equal(tokens, prompt)
    assert np.abs(tokens - tokens_rows).max() < 0.1 * prompt.std()
    assert (tokens.argmax(1) == tokens_rows.argmax(1)).sum() >= len(PROMPT_IDS) - 1


# ---- format 3: the loader's expansion ----------------------------------------------------------

@pytest.mark.parametrize("b,bits", CASES)
def test_c_expand_is_bit_exact(b, bits, tmp_path):
    from test_format import random_layer_v3
    codes, scale, zero, bits = random_layer_v3(np.random.default_rng(20 + b), 5, len(bits), bits, b)
    data, rs = F.pack_rows_v3(codes, scale, zero, bits, b)
    ne0 = len(bits) * 64
    for name, arr in (("rows.bin", data), ("scale.u8", rs), ("bits.u8", bits.astype(np.uint8))):
        (tmp_path / name).write_bytes(arr.tobytes())
    exe = llamacpp.tool_path("mlwq-check")
    r = run([exe, "expand", f"mlwq{b}_v3", ne0, 5, tmp_path / "rows.bin", tmp_path / "scale.u8", tmp_path / "bits.u8", tmp_path / "o.bin"])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.bin").read_bytes() == F.expand_v3(data, rs, bits, ne0, b).tobytes()
    data[1, 0] = 0xF0 if bits[0] < 4 else 0x0F                  # a zero or a scale the rows cannot hold
    rs[1] = 0
    (tmp_path / "rows.bin").write_bytes(data.tobytes())
    (tmp_path / "scale.u8").write_bytes(rs.tobytes())
    r = run([exe, "expand", f"mlwq{b}_v3", ne0, 5, tmp_path / "rows.bin", tmp_path / "scale.u8", tmp_path / "bits.u8", tmp_path / "o.bin"])
    assert r.returncode == 1 and "row 1 block 0" in r.stdout


def test_format3_file_computes_exactly_what_format2_does(exported_v3, rtn_checkpoint_v3, tmp_path):
    """The format 3 file, expanded by the loader, gives the logits of the same checkpoint's format 2
    file bit for bit; llama.cpp says it expanded it, and its file-type guess skips the integer side
    tensors (more numerous than the weights: no "unknown type i8" warning)."""
    from exporters.gguf_export import export_gguf
    v2 = export_gguf(rtn_checkpoint_v3[0], tmp_path / "v2.gguf", log=lambda m: None, file_format=2).path
    got3, got2 = llama_logits(exported_v3[0], PROMPT_IDS), llama_logits(v2, PROMPT_IDS)
    assert np.array_equal(got3, got2)
    r = run([llamacpp.tool_path("llama-completion"), "-m", exported_v3[0], "-p", "The capital of France is", "-n", "4",
             "-no-cnv", "-c", "64", "--temp", "0", "-t", "2", "-v"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "format version 3, expanded to format 2 rows as read" in r.stderr and "is not memory-mapped" in r.stderr
    assert "unknown type" not in r.stderr and "file type   = MLWQ" in r.stderr, r.stderr[-3000:]


# ---- malformed files are refused -----------------------------------------------------------

def tensor_info_offsets(path, name):
    """(offset of the u32 type id in the header, absolute offset of the data) of a tensor."""
    r = gguf.GGUFReader(str(path))
    t = {t.name: t for t in r.tensors}[name]
    raw = open(path, "rb").read(r.data_offset)
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = raw.index(key) + len(key)
    n_dims = struct.unpack_from("<I", raw, pos)[0]
    return pos + 4 + 8 * n_dims, int(t.data_offset)


def kv_value_offset(path, key):
    raw = open(path, "rb").read(1 << 22)
    k = struct.pack("<Q", len(key)) + key.encode()
    return raw.index(k) + len(k) + 4       # after the u32 value type


def patched(src, dst, edits):
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for off, data in edits:
            f.seek(off)
            f.write(data)
    return dst


def malformed_variants(path, tmp_path):
    """{case: (file, expected message)} built from a good export."""
    v = {}
    w = "blk.0.attn_v.weight"                       # MLWQ3, ne0 = 576 (K = 9), headers all bits 2..4
    _, d = tensor_info_offsets(path, w)
    hdr = open(path, "rb").read()[d: d + 2 * 9]
    bits0 = (hdr[1] >> 5) + 1
    v["bad zero"] = (patched(path, tmp_path / "zero.gguf", [(d + 1, bytes([31 | (bits0 - 1) << 5]))]),
                     f"zero = 31 > 2^bits - 1 = {(1 << bits0) - 1}")
    v["sum mismatch"] = (patched(path, tmp_path / "sum.gguf", [(d + 1, bytes([(hdr[1] & 31) | 7 << 5])),
                                                               (d + 3, bytes([(hdr[3] & 31) | 7 << 5]))]),
                         "exceeds K*b = 27")
    _, pd = tensor_info_offsets(path, "blk.1.ffn_down.mlwq_perm")
    v["perm out of range"] = (patched(path, tmp_path / "prange.gguf", [(pd, struct.pack("<i", 1536))]),
                              "entry 0 = 1536 is outside 0..1535")
    first = open(path, "rb").read()[pd: pd + 4]
    v["repeated perm entry"] = (patched(path, tmp_path / "prep.gguf", [(pd + 4, first)]), "repeats an earlier entry")
    t_off, _ = tensor_info_offsets(path, "blk.1.attn_q.weight")
    v["unused type id"] = (patched(path, tmp_path / "type.gguf", [(t_off, struct.pack("<I", 139))]),
                           "not a multiple of block size")
    v["format 1 type id"] = (patched(path, tmp_path / "type1.gguf", [(t_off, struct.pack("<I", 141))]),
                             "MLWQ format version 1: this llama.cpp reads MLWQ format versions 2 to 3")
    v["type id out of range"] = (patched(path, tmp_path / "type2.gguf", [(t_off, struct.pack("<I", 1000))]),
                                 "has invalid ggml type 1000")
    t_off, _ = tensor_info_offsets(path, "blk.0.attn_output.mlwq_perm")
    v["perm not I32"] = (patched(path, tmp_path / "ptype.gguf", [(t_off, struct.pack("<I", 0))]),
                         "must be I32 [576]")
    k = kv_value_offset(path, F.KEY_FORMAT_VERSION)
    v["wrong format_version"] = (patched(path, tmp_path / "ver.gguf", [(k, struct.pack("<I", 4))]),
                                 "MLWQ format version 4, this llama.cpp reads versions 2 to 3")
    v["format 2 tensors under version 3"] = (patched(path, tmp_path / "ver3.gguf", [(k, struct.pack("<I", 3))]),
                                             "has type mlwq")
    trunc = tmp_path / "trunc.gguf"
    shutil.copyfile(path, trunc)
    with open(trunc, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4096)
    v["truncated tensor"] = (trunc, "data is not within the file bounds")
    miss = rewritten_without(path, tmp_path / "noperm.gguf", "blk.1.ffn_up.mlwq_perm")
    v["missing perm"] = (miss, "'blk.1.ffn_up.weight' has no column permutation tensor 'blk.1.ffn_up.mlwq_perm'")
    return v


def rewritten_without(path, dst, drop):
    """Copy of a GGUF without the tensor `drop`."""
    r = gguf.GGUFReader(str(path))
    wr = gguf.GGUFWriter(str(dst), "llama")
    for fld in r.fields.values():
        if fld.name.startswith("GGUF.") or fld.name == "general.architecture":
            continue
        sub = fld.types[-1] if fld.types[0] == gguf.GGUFValueType.ARRAY else None
        wr.add_key_value(fld.name, fld.contents(), fld.types[0], sub_type=sub)
    for t in r.tensors:
        if t.name != drop:
            wr.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    wr.write_header_to_file(); wr.write_kv_data_to_file(); wr.write_tensors_to_file(); wr.close()
    return dst


def malformed_v3_variants(path, tmp_path):
    """{case: (file, expected message)} built from a good format 3 export."""
    v = {}
    w = "blk.0.attn_v.weight"                       # MLWQ3_V3, ne0 = 576 (K = 9), widths 2..4
    _, d = tensor_info_offsets(path, w)
    _, bd = tensor_info_offsets(path, "blk.0.attn_v.mlwq_bits")
    _, sd = tensor_info_offsets(path, "blk.0.attn_v.mlwq_scale")
    raw = open(path, "rb").read()
    narrow = next(j for j in range(9) if raw[bd + j] <= 3)
    v["v3 bad zero"] = (patched(path, tmp_path / "v3zero.gguf", [(d + narrow, bytes([0xF0]))]),
                        f"zero = 15 > 2^bits - 1 = {(1 << raw[bd + narrow]) - 1}")
    v["v3 scale below the grid"] = (patched(path, tmp_path / "v3scale.gguf", [(d, bytes([0x0F])), (sd, bytes([10]))]),
                                    "scale code 10 - 4*15 < 0")
    v["v3 width"] = (patched(path, tmp_path / "v3width.gguf", [(bd, bytes([9]))]), "width 9 outside 1..8")
    v["v3 widths too wide"] = (patched(path, tmp_path / "v3sum.gguf", [(bd, bytes([8]))]), "exceeds K*b = 27")
    _, pd = tensor_info_offsets(path, "blk.1.ffn_down.mlwq_perm")
    v["v3 repeated perm entry"] = (patched(path, tmp_path / "v3perm.gguf", [(pd + 2, raw[pd: pd + 2])]),
                                   "repeats an earlier entry")
    t_off, _ = tensor_info_offsets(path, "blk.0.attn_output.mlwq_perm")
    v["v3 perm not I16"] = (patched(path, tmp_path / "v3ptype.gguf", [(t_off, struct.pack("<I", 1))]),   # F16: same size
                            "must be I16 [576]")
    k = kv_value_offset(path, F.KEY_FORMAT_VERSION)
    v["v3 tensors under version 2"] = (patched(path, tmp_path / "v3ver.gguf", [(k, struct.pack("<I", 2))]),
                                       "in a file of MLWQ format version 2")
    v["v3 missing row scales"] = (rewritten_without(path, tmp_path / "v3noscale.gguf", "blk.1.ffn_up.mlwq_scale"),
                                  "'blk.1.ffn_up.weight' has no 'blk.1.ffn_up.mlwq_scale' tensor")
    return v


def test_malformed_files_are_refused_with_a_clear_message(exported, exported_v3, tmp_path):
    path, _ = exported
    exe = llamacpp.tool_path("llama-completion")
    failures = []
    cases = {**malformed_variants(path, tmp_path), **malformed_v3_variants(exported_v3[0], tmp_path)}
    for case, (f, msg) in cases.items():
        r = run([exe, "-m", f, "-p", "hi", "-n", "1", "-no-cnv", "-c", "64"], timeout=60)
        crashed = r.returncode < 0 or r.returncode in (128 + signal.SIGSEGV, 128 + signal.SIGABRT, 134, 139)
        if r.returncode == 0 or crashed or msg not in r.stderr:
            failures.append(f"{case}: rc={r.returncode}, wanted {msg!r}, got: "
                            + " | ".join(l for l in r.stderr.splitlines() if "error" in l.lower() or "MLWQ" in l)[-500:])
    assert not failures, "\n".join(failures)


def test_python_bindings_refuse_a_malformed_file(exported, tmp_path):
    from llama_cpp import Llama

    path, _ = exported
    f, _ = malformed_variants(path, tmp_path)["bad zero"]
    with pytest.raises(ValueError, match="Failed to load model"):
        Llama(model_path=str(f), n_ctx=64, verbose=False)


def test_llama_quantize_refuses_to_produce_mlwq(reduced_gguf, exported, tmp_path):
    exe = llamacpp.tool_path("llama-quantize")
    r = run([exe, reduced_gguf, tmp_path / "o.gguf", "MLWQ3"])
    assert r.returncode != 0 and "cannot produce MLWQ3: MLWQ types need calibration" in r.stderr
    r = run([exe, "--allow-requantize", "--tensor-type", "attn_q=mlwq3", reduced_gguf, tmp_path / "o.gguf", "Q4_0"])
    assert r.returncode != 0 and "MLWQ types need calibration" in r.stderr + r.stdout
    r = run([exe, "--allow-requantize", exported[0], tmp_path / "o2.gguf", "Q4_0"])
    assert r.returncode != 0 and "cannot requantize tensor 'blk.0.attn_k.weight' from mlwq3" in r.stderr + r.stdout


def test_bench_ratio_pairs_the_two_files_in_every_round(exported, reduced_gguf, tmp_path):
    """tools.bench_ratio: each round times both files in one llama-bench run; the summary is the
    median of the rounds' ratios, and the files are written."""
    from tools import bench_ratio
    mlwq_file, _ = exported
    out = tmp_path / "ratio"
    assert bench_ratio.main([str(mlwq_file), str(reduced_gguf), "--rounds", "3", "--n", "4", "--out", str(out)]) == 0
    res = json.loads((out / "ratio.json").read_text())
    assert res["test"] == "tg4" and len(res["rounds"]) == 3
    for r in res["rounds"]:
        assert r["a"] > 0 and r["b"] > 0 and r["ratio"] == pytest.approx(r["a"] / r["b"])
    assert res["median_ratio"] == pytest.approx(sorted(r["ratio"] for r in res["rounds"])[1])
    assert "median" in (out / "ratio.md").read_text()
    with pytest.raises(SystemExit, match="no such file"):
        bench_ratio.main([str(tmp_path / "missing.gguf"), str(reduced_gguf)])


def test_bench_load_alternates_two_sides(exported, tmp_path):
    """tools.bench_load: each side's process count, medians and difference as written; a missing
    file is refused."""
    from tools import bench_load
    mlwq_file, _ = exported
    out = tmp_path / "load"
    assert bench_load.main([str(mlwq_file), "--a-args=--repack 1", "--b-args=--repack 0", "--rounds", "2", "--out", str(out)]) == 0
    res = json.loads((out / "load.json").read_text())
    for k in ("a", "b"):
        assert len(res[k]["seconds"]) == 2 and all(s > 0 for s in res[k]["seconds"])
        assert res[k]["median"] == pytest.approx(sum(res[k]["seconds"]) / 2)
    assert res["a"]["args"] == "--repack 1" and res["b"]["args"] == "--repack 0"
    assert res["a_minus_b_seconds"] == pytest.approx(res["a"]["median"] - res["b"]["median"])
    assert "A / B" in (out / "load.md").read_text()
    with pytest.raises(SystemExit):
        bench_load.main([str(tmp_path / "missing.gguf")])
