"""Gemma-3-270M, the second real model family: its first 6 blocks (five sliding-window attention
blocks and one full one) quantized with MLWQ, exported and run by the patched llama.cpp, whose
logits must be those of the quantized PyTorch model."""

import copy

import numpy as np
import pytest
import torch

from exporters import llamacpp
from mlwq_testutil import llama_logits

pytestmark = pytest.mark.llamacpp

BLOCKS = 6
PROMPT = "The capital of France is Paris. The capital of Italy is Rome, and the capital of Spain is"


@pytest.fixture(scope="module")
def gemma3_reduced(tmp_path_factory):
    """Gemma-3-270M's first 6 blocks (block_count rewritten), as a GGUF: block 5 is the first with
    full attention."""
    from exporters.gguf_export import write_reduced_gguf
    from mlwq.assets import named_model_path
    return write_reduced_gguf(named_model_path("gemma3-270m"), tmp_path_factory.mktemp("gemma3") / "gemma3-6blk.gguf", BLOCKS)


@pytest.fixture(scope="module")
def gemma3_model(gemma3_reduced):
    from mlwq.model_io import load_model
    torch.set_num_threads(2)
    return load_model(gemma3_reduced)


def test_gemma3_low_memory_statistics_equal_the_one_pass_ones(gemma3_model, calib_path):
    """Gemma-3's blocks take different masks and rope tables (sliding-window and full attention):
    the block-by-block pass must hand each block its own and find the one-pass H."""
    from mlwq.calibration import calibration_windows
    from mlwq.sensitivity import block_hessians, layer_statistics

    from mlwq.engine import _capture_block_inputs

    model, tok = gemma3_model
    calib = calibration_windows(tok, calib_path, 1, 540, 0)      # longer than the 512-token window
    _, kwargs_of = _capture_block_inputs(model, calib[:1], "cpu")
    sliding, full = kwargs_of[0]["attention_mask"], kwargs_of[5]["attention_mask"]
    assert model.config.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
    assert sliding is not None and (full is None or not torch.equal(sliding, full))
    H1, F1 = layer_statistics(model, calib, "cpu", 1, progress=False)
    H2 = {k: h for block in block_hessians(model, calib, "cpu", 1) for k, h in block.items()}
    assert H1.keys() == H2.keys() and len(F1) == 7 * BLOCKS
    for k in H1:
        assert torch.allclose(H1[k], H2[k], rtol=1e-5, atol=1e-6 * float(H1[k].abs().max())), k


def test_gemma3_quantizes_exports_and_runs_in_llama_cpp(gemma3_model, gemma3_reduced, tmp_path, calib_path):
    """Tolerance as for SmolLM2 (test_llamacpp.py): llama.cpp quantizes activations before every
    quantized product, so the floor is the stock file (Q5_0/Q4_K/Q6_K/Q8_0, the same 2 blocks) against
    its own fp32 model; the MLWQ file must stay within 2x that floor, keep the argmax of all but one
    position and be >= 3x closer to its quantized weights than to the float model."""
    from exporters.gguf_export import export_gguf
    from mlwq import api
    from mlwq.engine import QuantConfig
    from mlwq.model_io import ARCHITECTURES, arch_of

    llamacpp.check_python_bindings()
    model, tok = copy.deepcopy(gemma3_model[0]), gemma3_model[1]     # quantized in place below
    assert arch_of(model) is ARCHITECTURES["gemma3_text"] and len(model.model.layers) == BLOCKS
    ids = tok(PROMPT).input_ids[:16]
    assert ids[0] == tok.bos_token_id
    with torch.no_grad():
        unq = model(torch.tensor([ids])).logits[0].double().numpy()
    res = api.quantize(str(gemma3_reduced), tmp_path / "ckpt", QuantConfig(method="mlwq", bits=3, tqp_steps=5,
                                                                                  block_tune_steps=2),
                       nsamples=2, seqlen=128, calib_path=calib_path, device="cpu", progress=False,
                       model_and_tokenizer=(model, tok))
    widths = {v["bpll_width"] for v in res.meta["layers"].values()}
    assert len(res.meta["layers"]) == 7 * BLOCKS and widths <= {2, 3, 4}
    with torch.no_grad():
        ref = res.model(torch.tensor([ids])).logits[0].double().numpy()
    report = export_gguf(tmp_path / "ckpt", tmp_path / "gemma3-mlwq.gguf", source=gemma3_reduced, log=lambda m: None)
    assert len(report.layers) == 7 * BLOCKS and report.embedding_type == "Q8_0"

    got = llama_logits(report.path, ids)
    floor = np.abs(llama_logits(gemma3_reduced, ids) - unq).max() / unq.std()
    err = np.abs(got - ref).max() / ref.std()
    err_unq = np.abs(got - unq).max() / ref.std()
    print(f"max|llama.cpp - torch(quantized)| = {err:.4f} std (stock-type floor {floor:.4f}), "
          f"vs the float model {err_unq:.4f} std")
    assert err < 0.15 and err < 2 * max(floor, 0.02)
    assert (got.argmax(1) == ref.argmax(1)).sum() >= len(ids) - 1
    assert err_unq > 3 * err

    r = llamacpp.run_tool([llamacpp.tool_path("llama-completion"), "-m", report.path, "-p", "The capital of France is",
                           "-n", "4", "--temp", "0", "-no-cnv", "-c", "128", "-t", "2"], tmp_path / "completion.log",
                          "llama-completion")
    assert "The capital of France is" in r.stdout


def test_gemma3_embedding_requantized_to_the_type_asked(gemma3_reduced, tmp_path):
    """--embedding-type Q5_0: token_embd holds the source's values rounded by llama.cpp's reference
    Q5_0 (gguf-py), everything else stays byte for byte."""
    import gguf
    from exporters.gguf_export import requantized

    reader = gguf.GGUFReader(str(gemma3_reduced))
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    data, qtype = requantized(emb, "Q5_0", gguf)
    assert qtype.name == "Q5_0" and data.shape == (int(emb.shape[1]), 640 // 32 * 22)
    src = gguf.quants.dequantize(np.asarray(emb.data)[:512], emb.tensor_type)
    got = gguf.quants.dequantize(data[:512], qtype)
    step = np.abs(src).reshape(512, -1, 32).max(-1, keepdims=True) / 16     # Q5_0's step per block of 32
    # half a step, one step at the end opposite the largest magnitude (the grid is -16..15)
    assert np.all(np.abs(got - src).reshape(512, -1, 32) <= step * 1.01)     # + the fp16 rounding of the scale
    assert np.abs(got - src).mean() < 0.3 * step.mean()
