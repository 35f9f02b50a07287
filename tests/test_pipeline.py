"""The whole PyTorch pipeline on a reduced copy of the real model (its first 2 blocks)."""

import json

import pytest
import torch

from mlwq import api, checkpoint
from mlwq.engine import QuantConfig
from mlwq.model_io import linear_names, load_model, save_hf

FAST = dict(nsamples=2, seqlen=64, progress=False, device="cpu")


def _quantize(reduced_model, tmp_path, name, **cfg):
    cfg.setdefault("tqp_steps", 5)
    return api.quantize("reduced", tmp_path / name, QuantConfig(**cfg), model_and_tokenizer=reduced_model, **FAST)


@pytest.mark.slow
def test_mlwq_end_to_end_checkpoint(reduced_model, tmp_path):
    res = _quantize(reduced_model, tmp_path, "ck", method="mlwq", bits=3)
    meta, model = res.meta, res.model
    names = linear_names(model)
    assert list(meta["layers"]) == names
    # BPLL (model scope, the default): the model's parameter-weighted width is within the 3-bit budget
    layers = meta["layers"].values()
    assert sum(v["bpll_width"] * v["shape"][0] * v["shape"][1] for v in layers) <= \
        3 * sum(v["shape"][0] * v["shape"][1] for v in layers)
    # MQSA: three tiers around each layer's width, counted in whole 64-column blocks
    for info in meta["layers"].values():
        tiers = dict(info["tiers"])
        b = info["bpll_width"]
        assert set(tiers) <= {b - 1, b, b + 1} and sum(tiers.values()) == info["shape"][1]
        assert all(n % 64 == 0 for n in tiers.values())
    # bits are counted from the format: headers and permutation included
    rows, cols = meta["layers"][names[0]]["shape"]
    width = meta["layers"][names[0]]["type_width"]
    assert meta["layers"][names[0]]["bits_per_weight"] == pytest.approx(
        8 * (rows * cols // 64 * (2 + 8 * width) + 4 * cols) / (rows * cols))
    assert meta["summary"]["bits_per_weight"] > meta["summary"]["code_bits_per_weight"] + 0.25
    # the checkpoint reconstructs exactly the fake-quant weights of the model
    fresh, _ = reduced_model
    saved = json.loads((tmp_path / "ck" / checkpoint.CHECKPOINT_JSON).read_text())
    assert saved["summary"] == meta["summary"]
    _, tensors = checkpoint.load(tmp_path / "ck")
    for name in names:
        W = checkpoint.dequantize_layer(tensors, name)
        assert torch.equal(W, model.get_submodule(name).weight.data)


@pytest.mark.slow
def test_block_scope_bpll_keeps_every_block_within_the_budget(reduced_model, tmp_path):
    meta = _quantize(reduced_model, tmp_path, "bs", method="mlwq", bits=3, bpll_scope="block").meta
    for i in range(2):
        block = {k: v for k, v in meta["layers"].items() if f"layers.{i}." in k}
        bits = sum(v["bpll_width"] * v["shape"][0] * v["shape"][1] for v in block.values())
        assert bits <= 3 * sum(v["shape"][0] * v["shape"][1] for v in block.values())


@pytest.mark.slow
def test_ablation_switches(reduced_model, tmp_path):
    meta = _quantize(reduced_model, tmp_path, "ab", method="mlwq", bits=3, bpll=False, mqsa=False, tqp=False).meta
    for info in meta["layers"].values():
        assert info["bpll_width"] == 3 and [tuple(t) for t in info["tiers"]] == [(3, info["shape"][1])]


@pytest.mark.slow
def test_same_seed_gives_identical_checkpoint(default_model, tmp_path):
    import copy
    outs = []
    for run in range(2):
        model, tok = default_model
        small = api.truncate_blocks(copy.deepcopy(model), 1)
        api.quantize("reduced", tmp_path / f"r{run}", QuantConfig(method="mlwq", bits=2.5, tqp_steps=3),
                     model_and_tokenizer=(small, tok), **FAST)
        outs.append([(tmp_path / f"r{run}" / n).read_bytes() for n in (checkpoint.CHECKPOINT_TENSORS, checkpoint.CHECKPOINT_JSON)])
    assert outs[0] == outs[1]


@pytest.mark.slow
@pytest.mark.parametrize("method,group", [("rtn", 64), ("gptq", 128)])
def test_baselines_and_eval(reduced_model, tmp_path, method, group):
    res = _quantize(reduced_model, tmp_path, method, method=method, bits=3, group_size=group)
    meta, model, tok = res.meta, res.model, res.tokenizer
    assert meta["summary"]["code_bits_per_weight"] == 3.0
    ppl = api.evaluate(model, tok, seqlen=64, max_windows=2, device="cpu", progress=False)
    assert ppl > 1.0 and ppl == ppl


@pytest.mark.slow
def test_hf_directory_loading_and_checkpoint_apply(reduced_model, tmp_path):
    model, tok = reduced_model
    save_hf(model, tok, tmp_path / "hf")
    loaded, loaded_tok = load_model(tmp_path / "hf")
    assert type(loaded).__name__ == "LlamaForCausalLM" and len(loaded.model.layers) == 2
    ids = loaded_tok("The tower is 324 metres tall", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-4)
    res = api.quantize(str(tmp_path / "hf"), tmp_path / "ck", QuantConfig(method="rtn", bits=4), **FAST)
    checkpoint.apply_to_model(loaded, tmp_path / "ck")
    for name in res.meta["layers"]:
        assert torch.equal(loaded.get_submodule(name).weight, res.model.get_submodule(name).weight)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["opt", "phi"])
def test_walker_table_covers_opt_and_phi(arch, calib_path, default_model, tmp_path):
    """OPT and Phi are one table entry each: a tiny random-weight model of each runs through."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(hidden_size=128, num_attention_heads=2, num_hidden_layers=2, vocab_size=49152)
    if arch == "opt":
        cfg = AutoConfig.for_model("opt", ffn_dim=256, word_embed_proj_dim=128, max_position_embeddings=256, **kw)
    else:
        cfg = AutoConfig.for_model("phi", intermediate_size=256, max_position_embeddings=256, **kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    _, tok = default_model
    meta = api.quantize("tiny", tmp_path / arch, QuantConfig(method="mlwq", bits=3, tqp_steps=2),
                        model_and_tokenizer=(model, tok), **FAST).meta
    assert len(meta["layers"]) == 2 * (6 if arch in ("opt", "phi") else 7)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_bytes(tmp_path):
    """SIGKILL `mlwq quantize` after its first block; --resume finishes with the bytes of an
    uninterrupted run, and nothing ever appears under the final name before the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "mlwq", "quantize", "default", "--bits", "2.5", "--max-blocks", "2",
            "--nsamples", "2", "--seqlen", "64", "--tqp-steps", "3", "--device", "cpu"]
    subprocess.run(args + ["--out", str(tmp_path / "full")], check=True, capture_output=True)

    out = tmp_path / "resumed"
    proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    block0 = tmp_path / "resumed.progress" / "block_0000.safetensors"
    deadline = time.time() + 300
    while not block0.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    res = subprocess.run(args + ["--out", str(out), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in (checkpoint.CHECKPOINT_TENSORS, checkpoint.CHECKPOINT_JSON):
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    assert not (tmp_path / "resumed.progress").exists()


def test_resume_with_other_settings_is_refused(tmp_path):
    from mlwq.errors import MLWQError
    from mlwq.resume import Progress

    Progress(tmp_path / "o", {"a": 1}).start(resume=False)
    with pytest.raises(MLWQError, match="other settings"):
        Progress(tmp_path / "o", {"a": 2}).start(resume=True)


@pytest.mark.slow
def test_block_tuning_exports_the_tuned_weights_bit_for_bit(default_model, tmp_path):
    """Block-output reconstruction keeps the format's grid: the checkpoint's codes reproduce the
    tuned model exactly, and the tuned weights differ from plain GPTQ's."""
    import copy
    fresh_copy = lambda: (api.truncate_blocks(copy.deepcopy(default_model[0]), 2), default_model[1])
    model = _quantize(fresh_copy(), tmp_path, "bt", method="mlwq", bits=3, block_tune_steps=10, block_tune_batch=1,
                      block_tune_lr=0.01).model
    _, tensors = checkpoint.load(tmp_path / "bt")
    for name in linear_names(model):
        assert torch.equal(checkpoint.dequantize_layer(tensors, name), model.get_submodule(name).weight.data)
    fresh = _quantize(fresh_copy(), tmp_path, "plain", method="mlwq", bits=3).model
    assert any(not torch.equal(model.get_submodule(n).weight, fresh.get_submodule(n).weight)
               for n in linear_names(model))


@pytest.mark.slow
def test_model_scope_allocation_moves_bits_between_blocks(reduced_model, tmp_path):
    """One budget for the whole model: fractional budgets, the total within it, and blocks whose
    own averages differ (the per-block BPLL cannot do that)."""
    meta = _quantize(reduced_model, tmp_path, "ms", method="mlwq", bits=3.3, bpll_scope="model",
                     sensitivity_windows=2).meta
    layers = meta["layers"]
    numel = {k: v["shape"][0] * v["shape"][1] for k, v in layers.items()}
    assert sum(v["bpll_width"] * numel[k] for k, v in layers.items()) <= 3.3 * sum(numel.values())
    for v in layers.values():                  # predicted losses fall with the width
        losses = {int(b): x for b, x in v["bpll_losses"].items()}
        assert losses[2] > losses[3] > losses[4] > 0
    per_block = [sum(v["bpll_width"] * numel[k] for k, v in layers.items() if f"layers.{i}." in k)
                 / sum(numel[k] for k in layers if f"layers.{i}." in k) for i in range(2)]
    assert per_block[0] != per_block[1]
