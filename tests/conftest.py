import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlwq_testutil import write_rtn_checkpoint  # noqa: E402

# widths per layer: all three MLWQ types appear in the reduced model
WIDTHS = {"model.layers.0.self_attn.q_proj": 2, "model.layers.0.mlp.down_proj": 4,
          "model.layers.1.self_attn.k_proj": 4, "model.layers.1.mlp.up_proj": 2}


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from mlwq.assets import default_model_path
    return default_model_path(fetch=True)


@pytest.fixture(scope="session")
def reduced_gguf(default_gguf, tmp_path_factory) -> Path:
    """The default model's first 2 blocks (block_count rewritten), as a GGUF."""
    from exporters.gguf_export import write_reduced_gguf
    return write_reduced_gguf(default_gguf, tmp_path_factory.mktemp("reduced") / "smollm2-2blk.gguf", 2)


@pytest.fixture(scope="session")
def rtn_checkpoint(reduced_gguf, tmp_path_factory):
    """(checkpoint dir, {hf name: dequantized W in HF layout}) of an RTN quantization, mean width 3."""
    d = tmp_path_factory.mktemp("ckpt") / "rtn"
    deq = write_rtn_checkpoint(d, reduced_gguf, b=3, widths=WIDTHS)
    return d, deq


@pytest.fixture(scope="session")
def exported(rtn_checkpoint, tmp_path_factory):
    """(path, ExportReport) of the exported checkpoint: format 2, the kernels' rows."""
    from exporters.gguf_export import export_gguf
    out = tmp_path_factory.mktemp("gguf") / "smollm2-2blk-mlwq.gguf"
    report = export_gguf(rtn_checkpoint[0], out, log=lambda m: None)
    assert report.file_format == 2
    return out, report


@pytest.fixture(scope="session")
def rtn_checkpoint_v3(reduced_gguf, tmp_path_factory):
    """rtn_checkpoint on format 3's grid (half-octave scales, zero points <= 15)."""
    d = tmp_path_factory.mktemp("ckpt") / "rtn-v3"
    deq = write_rtn_checkpoint(d, reduced_gguf, b=3, widths=WIDTHS, file_format=3)
    return d, deq


@pytest.fixture(scope="session")
def exported_v3(rtn_checkpoint_v3, tmp_path_factory):
    """(path, ExportReport) of rtn_checkpoint_v3 exported as mlwq-export does by default: format 3."""
    from exporters.gguf_export import export_gguf
    out = tmp_path_factory.mktemp("gguf") / "smollm2-2blk-mlwq-v3.gguf"
    report = export_gguf(rtn_checkpoint_v3[0], out, log=lambda m: None)
    assert report.file_format == 3
    return out, report


# --- the PyTorch pipeline's fixtures: the real default model (SmolLM2-135M-Instruct,
# dequantized Q4_1) loaded once, and reduced copies of it (its first blocks) ---

@pytest.fixture(scope="session")
def default_model(default_gguf):
    import torch
    from mlwq.model_io import load_model
    torch.set_num_threads(2)
    return load_model(default_gguf)


@pytest.fixture()
def reduced_model(default_model):
    """A fresh 2-block copy of the real model (tests may quantize it in place)."""
    import copy
    from mlwq.api import truncate_blocks
    model, tokenizer = default_model
    return truncate_blocks(copy.deepcopy(model), 2), tokenizer


@pytest.fixture(scope="session")
def calib_path():
    from mlwq.assets import CALIBRATION_TEXT
    assert CALIBRATION_TEXT.is_file(), f"calibration text missing: {CALIBRATION_TEXT}"
    return CALIBRATION_TEXT
