"""Bad inputs give clear, single-line errors."""

import json
import subprocess
import sys

import pytest

from mlwq import api
from mlwq.calibration import calibration_windows
from mlwq.engine import QuantConfig
from mlwq.errors import MLWQError
from mlwq.model_io import load_model


def test_missing_model_file():
    with pytest.raises(MLWQError, match="not found"):
        load_model("/nonexistent/model.gguf")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 64,
                                                      "n_head": 2, "vocab_size": 100}))
    with pytest.raises(MLWQError, match=r"unsupported architecture 'gpt2'; supported: .*gemma3_text.*llama.*opt.*phi.*qwen2"):
        load_model(tmp_path)


def test_directory_without_config(tmp_path):
    with pytest.raises(MLWQError, match="config.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("cfg,match", [
    (QuantConfig(method="mlwq", bits=1.5), "impossible"),
    (QuantConfig(method="mlwq", bits=4.5), "impossible"),
    (QuantConfig(method="gptq", bits=2.5), "whole number"),
    (QuantConfig(method="mlwq", bits=2, bpll=False, tiers=(-2, 0, 2)), "range"),
    (QuantConfig(method="rtn", bits=3, group_size=96), "multiple of 64"),
    (QuantConfig(method="nope"), "unknown method"),
    (QuantConfig(method="mlwq", bits=3, sensitivity_windows=0), "at least one window"),
])
def test_impossible_configs(cfg, match):
    with pytest.raises(MLWQError, match=match):
        cfg.validate()


@pytest.mark.slow          # loads the real model
def test_fewer_calibration_tokens_than_asked(default_model, tmp_path):
    _, tok = default_model
    short = tmp_path / "short.txt"
    short.write_text("only a few words of calibration text " * 20)
    # fewer tokens than N x L (Llama-3's tokenizer on wiki.valid.tokens at 128 x 2048): overlapping
    # windows and one warning; fewer than one window: an error
    with pytest.warns(UserWarning, match="overlap"):
        windows = calibration_windows(tok, short, nsamples=8, seqlen=64, seed=0)
    assert windows.shape == (8, 64)
    with pytest.raises(MLWQError, match="fewer than one window"):
        calibration_windows(tok, short, nsamples=8, seqlen=1000, seed=0)
    with pytest.raises(MLWQError, match="not found"):
        calibration_windows(tok, tmp_path / "missing.txt", 1, 8, 0)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    for args in (["quantize", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "o")],
                 ["quantize", "default", "--bits", "9", "--out", str(tmp_path / "o")]):
        proc = subprocess.run([sys.executable, "-m", "mlwq", *args], capture_output=True, text=True)
        assert proc.returncode == 1
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("mlwq: error:"), proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_help_lists_every_option():
    proc = subprocess.run([sys.executable, "-m", "mlwq", "quantize", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for opt in ("--method", "--bits", "--out", "--tiers", "--no-bpll", "--no-mqsa", "--no-tqp", "--bpll-loss",
                "--act-order", "--group-size", "--nsamples", "--seqlen", "--no-compensation"):
        assert opt in proc.stdout


@pytest.mark.slow
def test_write_failure_is_one_line_and_keeps_nothing_under_the_final_name(tmp_path):
    """A write that fails (file size limit standing in for a full disk)."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "ck"
    proc = subprocess.run([sys.executable, "-m", "mlwq", "quantize", "default", "--method", "rtn", "--bits", "3",
                           "--max-blocks", "1", "--nsamples", "2", "--seqlen", "64", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.startswith("mlwq:")]
    assert len(lines) == 1 and lines[0].startswith("mlwq: error: cannot write"), proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "ck.part").exists()


@pytest.mark.slow          # tokenizes wiki.valid.tokens with Llama-3's tokenizer
def test_llama3_tokenizer_at_the_paper_calibration_quantizes_with_a_warning(calib_path, tmp_path):
    """Llama-3's tokenizer makes 262,067 tokens of wiki.valid.tokens (BOS included). Its windows
    start with BOS as llama.cpp's do, so 128 x 2048 needs 128 x 2047 = 262,016 of the text's
    tokens: no overlap. 129 windows overlap: one warning says so, and the quantization runs (a
    tiny random Llama-3 shape)."""
    import warnings

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mlwq import api
    from mlwq.assets import llama3_tokenizer_dir
    from mlwq.calibration import calibration_windows
    from mlwq.engine import QuantConfig

    tok = AutoTokenizer.from_pretrained(str(llama3_tokenizer_dir()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calib = calibration_windows(tok, calib_path, 128, 2048, 0)
    assert calib.shape == (128, 2048) and (calib[:, 0] == tok.bos_token_id).all()
    assert (calib[:, 1:] != tok.bos_token_id).all()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         head_dim=32, max_position_embeddings=4096)).eval()
    model.config.use_cache = False
    with pytest.warns(UserWarning, match=r"262067 distinct tokens, fewer than the 129 x 2047 after BOS"):
        res = api.quantize("random llama-3 shape", tmp_path / "ckpt", QuantConfig(method="gptq", bits=3),
                           nsamples=129, seqlen=2048, calib_path=calib_path, device="cpu", progress=False,
                           model_and_tokenizer=(model, tok))
    assert res.meta["calibration"]["nsamples"] == 129 and (tmp_path / "ckpt" / "mlwq_checkpoint.json").is_file()


def test_tokenizer_of_one_token_per_character_is_refused(tmp_path):
    """transformers 5.17 converts Gemma-3's GGUF tokenizer to single characters: calibrating on that
    quantizes for text the model never sees (PPL 58 instead of 22), so loading refuses it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.?!'-"))
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert len(fast("the lazy dog").input_ids) == 12           # one token per character
    LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    fast.save_pretrained(tmp_path)
    with pytest.raises(MLWQError, match=r"splits English into \d+ tokens for 78 characters.*converted it wrongly"):
        load_model(tmp_path)
