"""The GGUF exporter on a reduced real model (the default SmolLM2-135M, first 2 blocks)."""

import json
import os

import numpy as np
import pytest

import gguf
from exporters import mlwq_format as F
from exporters.cli import main as cli_main
from exporters.gguf_export import ExportError, export_gguf, read_mlwq_tensor, rope_row_order
from mlwq_testutil import HF_LINEARS, GGUF_OF, gguf_float_weights

# every test needs the reduced GGUF and its RTN checkpoint (about 15 s of fixtures on 2 cores)
pytestmark = pytest.mark.slow


def test_exported_file_structure(exported, reduced_gguf):
    path, report = exported
    assert path.is_file() and not path.with_name(path.name + ".part").exists()
    src, out = gguf.GGUFReader(str(reduced_gguf)), gguf.GGUFReader(str(path))
    f = out.fields
    assert f[F.KEY_FORMAT_VERSION].contents() == F.FORMAT_VERSION
    assert f["general.file_type"].contents() == F.LLAMA_FTYPE[3]
    assert f["llama.block_count"].contents() == 2
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "llama.rope.freq_base"):
        assert f[key].contents() == src.fields[key].contents()
    types = {t.name: t.tensor_type for t in out.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.MLWQ2
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.MLWQ4
    assert types["blk.0.attn_v.weight"] == gguf.GGMLQuantizationType.MLWQ3
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0        # kept as in the source
    by_name = {t.name: t for t in out.tensors}
    src_by = {t.name: t for t in src.tensors}
    for name in ("token_embd.weight", "blk.0.attn_norm.weight", "output_norm.weight"):
        assert bytes(np.asarray(by_name[name].data).data) == bytes(np.asarray(src_by[name].data).data)
    for i in range(2):
        for lin in HF_LINEARS:
            w = by_name[f"blk.{i}.{GGUF_OF[lin]}.weight"]
            p = by_name[f"blk.{i}.{GGUF_OF[lin]}.{F.PERM_SUFFIX}"]
            assert p.tensor_type == gguf.GGMLQuantizationType.I32 and int(p.shape[0]) == int(w.shape[0])
    # bit accounting from the real bytes
    mlwq_bytes = sum(int(t.n_bytes) for t in out.tensors if F.width_of_type_id(int(t.tensor_type)) or
                     t.name.endswith(F.PERM_SUFFIX))
    assert report.mlwq_bytes == mlwq_bytes
    assert report.file_bytes == os.path.getsize(path)
    code_bits = sum(int(t.n_elements) * w for t in out.tensors if (w := F.width_of_type_id(int(t.tensor_type))))
    assert 2.5 < report.code_bpw_mlwq < 3.5 and code_bits / report.mlwq_params == pytest.approx(
        report.code_bpw_mlwq, abs=1e-9)        # tiers sum exactly to each type's width: no padding here
    assert 0.25 < report.bpw_mlwq - report.code_bpw_mlwq < 0.35   # 16-bit header per 64 weights + permutations


def test_dequantized_export_equals_checkpoint(exported, rtn_checkpoint, reduced_gguf):
    """Bit-exact: the exported tensor, dequantized and unpermuted, is the checkpoint's weight with
    q/k rows in llama.cpp's rope order."""
    path, _ = exported
    _, deq = rtn_checkpoint
    hp, _ = gguf_float_weights(str(reduced_gguf))
    for i in range(2):
        for lin in HF_LINEARS:
            W, b = read_mlwq_tensor(path, f"blk.{i}.{GGUF_OF[lin]}.weight")
            ref = deq[f"model.layers.{i}.{lin}"]
            if lin.endswith("q_proj"):
                ref = ref[rope_row_order(ref.shape[0], int(hp["attention.head_count"]))]
            elif lin.endswith("k_proj"):
                ref = ref[rope_row_order(ref.shape[0], int(hp["attention.head_count_kv"]))]
            assert (W.view(np.uint32) == ref.view(np.uint32)).all(), lin


def test_format3_file_structure_and_bits(exported_v3, reduced_gguf):
    """Format 3: one-byte headers, I16 permutations, a scale byte per row and a width byte per block
    column in side tensors; the metadata counted from the file's bytes is under 0.2 bits/w."""
    path, report = exported_v3
    out = gguf.GGUFReader(str(path))
    assert out.fields[F.KEY_FORMAT_VERSION].contents() == F.V3_FORMAT_VERSION
    by_name = {t.name: t for t in out.tensors}
    assert by_name["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.MLWQ2_V3
    assert by_name["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.MLWQ4_V3
    side_bytes = 0
    for i in range(2):
        for lin in HF_LINEARS:
            base = f"blk.{i}.{GGUF_OF[lin]}"
            w = by_name[f"{base}.weight"]
            ne0, rows = int(w.shape[0]), int(w.shape[1])
            b = F.width_of_v3_type_id(int(w.tensor_type))
            assert int(w.n_bytes) == rows * (ne0 // 64) * (1 + 8 * b)
            p, sc, bt = (by_name[f"{base}.{sfx}"] for sfx in (F.PERM_SUFFIX, F.SCALE_SUFFIX, F.BITS_SUFFIX))
            assert p.tensor_type == gguf.GGMLQuantizationType.I16 and int(p.shape[0]) == ne0
            assert sc.tensor_type == gguf.GGMLQuantizationType.I8 and int(sc.shape[0]) == rows
            assert bt.tensor_type == gguf.GGMLQuantizationType.I8 and int(bt.shape[0]) == ne0 // 64
            assert int(np.asarray(bt.data).astype(np.int64).sum()) == (ne0 // 64) * b
            side_bytes += int(p.n_bytes) + int(sc.n_bytes) + int(bt.n_bytes)
    mlwq_bytes = sum(int(t.n_bytes) for t in out.tensors if F.width_of_v3_type_id(int(t.tensor_type)))
    assert report.mlwq_bytes == mlwq_bytes + side_bytes
    assert 0.14 < report.bpw_mlwq - report.code_bpw_mlwq < 0.2    # 8-bit header per 64 weights + side tensors


def test_format3_export_equals_checkpoint_and_format2(exported_v3, rtn_checkpoint_v3, reduced_gguf, tmp_path):
    """Bit-exact: format 3 read through the loader's expansion is the checkpoint's weight, and the
    expansion is byte for byte the format 2 export of the same checkpoint."""
    path, _ = exported_v3
    _, deq = rtn_checkpoint_v3
    v2 = export_gguf(rtn_checkpoint_v3[0], tmp_path / "v2.gguf", log=lambda m: None, file_format=2).path
    hp, _ = gguf_float_weights(str(reduced_gguf))
    r3, r2 = ({t.name: t for t in gguf.GGUFReader(str(p)).tensors} for p in (path, v2))
    for i in range(2):
        for lin in HF_LINEARS:
            name = f"blk.{i}.{GGUF_OF[lin]}.weight"
            W, b = read_mlwq_tensor(path, name)
            ref = deq[f"model.layers.{i}.{lin}"]
            if lin.endswith(("q_proj", "k_proj")):
                heads = hp["attention.head_count" if lin.endswith("q_proj") else "attention.head_count_kv"]
                ref = ref[rope_row_order(ref.shape[0], int(heads))]
            assert (W.view(np.uint32) == ref.view(np.uint32)).all(), lin
            t3, t2 = r3[name], r2[name]
            rows = int(t3.shape[1])
            expanded = F.expand_v3(np.asarray(t3.data).reshape(rows, -1),
                                   np.asarray(r3[F.scale_name(name)].data).view(np.uint8),
                                   np.asarray(r3[F.bits_name(name)].data).view(np.uint8), int(t3.shape[0]), b)
            assert bytes(expanded.data) == bytes(np.asarray(t2.data).data), name


def test_format3_refuses_a_format2_checkpoint(rtn_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="format 3 cannot hold it: .*export it with --format 2"):
        export_gguf(rtn_checkpoint[0], tmp_path / "x.gguf", log=lambda m: None, file_format=3)
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.part").exists()


def test_qk_rows_in_llamacpp_order_match_the_source(exported, reduced_gguf):
    """Against the real model: the exported q/k are close to the source tensors (RTN error), and far
    from them without the row permutation (so the permutation is the right one)."""
    path, _ = exported
    _, src = gguf_float_weights(str(reduced_gguf))
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.1.attn_q.weight", "blk.1.attn_k.weight",
                 "blk.1.ffn_gate.weight"):
        W, b = read_mlwq_tensor(path, name)
        ref = src[name]
        err = np.linalg.norm(W - ref) / np.linalg.norm(ref)
        assert err < {2: 0.7, 3: 0.35, 4: 0.2}[b], (name, err)       # RTN error at mean width b
        if "attn_q" in name or "attn_k" in name:
            n_head = 9 if "attn_q" in name else 3
            wrong = W[np.argsort(rope_row_order(W.shape[0], n_head))]     # rows left in HF order
            assert np.linalg.norm(wrong - ref) / np.linalg.norm(ref) > max(1.2, 2 * err)   # ~sqrt(2): unrelated rows


def test_cli(rtn_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert cli_main([str(rtn_checkpoint[0]), "--to", "gguf", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"file={out} bytes={out.stat().st_size} mlwq_layers=14 mlwq_bpw=")
    assert cli_main([str(tmp_path), "--to", "gguf"]) == 1
    assert "not an mlwq checkpoint" in capsys.readouterr().err


def test_refuses_a_bad_checkpoint(rtn_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file
    import shutil

    ckpt = tmp_path / "bad"
    shutil.copytree(rtn_checkpoint[0], ckpt)
    t = load_file(str(ckpt / "quantized.safetensors"))
    t["model.layers.1.mlp.down_proj.zero"][0, 0] = 200
    save_file(t, str(ckpt / "quantized.safetensors"))
    with pytest.raises(ExportError, match="model.layers.1.mlp.down_proj: row 0 block 0: zero=200"):
        export_gguf(ckpt, tmp_path / "x.gguf", log=lambda m: None)
    assert not (tmp_path / "x.gguf").exists()
    meta = json.loads((ckpt / "mlwq_checkpoint.json").read_text())
    meta["version"] = 9
    (ckpt / "mlwq_checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="version"):
        export_gguf(ckpt, tmp_path / "x.gguf", log=lambda m: None)


@pytest.mark.llamacpp
def test_whole_chain_mlwq_quantize_export_and_run(tmp_path):
    """`mlwq-export MODEL --to gguf`: the real MLWQ pipeline (BPLL + MQSA + TQP + GPTQ) on the
    first block of the default model, exported, loaded and run by llama-cpp-python."""
    import subprocess
    import sys

    out = tmp_path / "chain.gguf"
    proc = subprocess.run([sys.executable, "-m", "exporters.cli", "default", "--to", "gguf", "--out", str(out),
                           "--bits", "2.5", "--max-blocks", "1", "--nsamples", "2", "--seqlen", "64",
                           "--tqp-steps", "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and not out.with_name(out.name + ".part").exists()
    assert "mlwq_bpw=" in proc.stdout.splitlines()[-1]
    meta = json.loads((tmp_path / "chain.checkpoint" / "mlwq_checkpoint.json").read_text())
    widths = {v["type_width"] for v in meta["layers"].values()}
    assert widths <= {2, 3, 4} and meta["summary"]["code_bits_per_weight"] <= 2.5

    from llama_cpp import Llama

    llm = Llama(model_path=str(out), n_ctx=64, n_threads=2, verbose=False)
    result = llm("The capital of France is", max_tokens=4, temperature=0.0)
    assert isinstance(result["choices"][0]["text"], str)


def test_same_inputs_give_byte_identical_gguf(rtn_checkpoint, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    export_gguf(rtn_checkpoint[0], a, log=lambda m: None)
    export_gguf(rtn_checkpoint[0], b, log=lambda m: None)
    assert a.read_bytes() == b.read_bytes()


def test_failed_write_leaves_nothing_and_says_so_on_one_line(rtn_checkpoint, tmp_path):
    """A write that fails half way (file size limit standing in for a full disk)."""
    import resource
    import signal
    import subprocess
    import sys

    out = tmp_path / "big.gguf"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # get EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run([sys.executable, "-m", "exporters.cli", str(rtn_checkpoint[0]), "--to", "gguf",
                           "--out", str(out)], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1
    errors = [l for l in proc.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and errors[0].startswith("mlwq-export: error: cannot write"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


def test_target_size_budget_predicts_the_exported_bytes(exported, exported_v3, reduced_gguf):
    """--target-mb's budget: the size it predicts for the exported file's code bits is the file's
    size within a few hundred bytes (tensor records), and the budget for that size is at least
    the file's code bits less one hundredth; for format 3 files and format 2 files."""
    from mlwq import sizing
    from mlwq.errors import MLWQError

    for (path, report), fmt in ((exported, 2), (exported_v3, 3)):
        size = path.stat().st_size
        bits = sizing.budget_for_size(reduced_gguf, size, file_format=fmt)
        assert report.code_bpw_mlwq - 0.01 <= bits <= report.code_bpw_mlwq + 0.01, fmt
    path, report = exported_v3
    size = path.stat().st_size
    with pytest.raises(MLWQError, match="below the smallest file"):
        sizing.budget_for_size(reduced_gguf, size // 3)


def test_one_architecture_table_names_every_exported_linear_layer():
    """mlwq/model_io.ARCHITECTURES holds the walker's layers and their GGUF names: every exported
    family names each of its linear layers; OPT (no llama.cpp architecture) is refused in one line."""
    from exporters.gguf_export import gguf_name
    from mlwq.errors import MLWQError
    from mlwq.model_io import ARCHITECTURES, spec_of_gguf_arch

    for family, spec in ARCHITECTURES.items():
        if spec.gguf_arch is None:
            assert not spec.gguf_tensors
            continue
        assert [linear for linear, _ in spec.gguf_tensors] == list(spec.linears), family
        names = [gguf_name(f"{spec.blocks}.7.{linear}", spec) for linear in spec.linears]
        assert len(set(names)) == len(names) and all(n.startswith("blk.7.") for n in names)
    assert spec_of_gguf_arch("llama") is ARCHITECTURES["llama"] and spec_of_gguf_arch("llama").rope_permuted
    assert not spec_of_gguf_arch("qwen2").rope_permuted
    assert spec_of_gguf_arch("gemma3") is ARCHITECTURES["gemma3_text"] and not ARCHITECTURES["gemma3_text"].rope_permuted
    assert gguf_name("model.layers.0.self_attn.dense", ARCHITECTURES["phi"]) == "blk.0.attn_output"
    assert [gguf_name(f"model.layers.2.{n}") for n in HF_LINEARS] == [f"blk.2.{GGUF_OF[n]}" for n in HF_LINEARS]
    with pytest.raises(MLWQError, match="no GGUF export for llama.cpp architecture 'opt'"):
        spec_of_gguf_arch("opt")
    with pytest.raises(ExportError, match="no GGUF name"):
        gguf_name("model.decoder.layers.0.fc1")
