"""The residual rotation (mlwq/rotation.py) leaves the float model's function unchanged."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import pytest

from mlwq import rotation
from mlwq.errors import MLWQError


def _tiny_llama(hidden=96, tied=True):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=200, hidden_size=hidden, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():                       # norms with non-unit scales, as trained models have
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("kind", ["hadamard", "orthogonal"])
def test_rotation_keeps_the_logits_and_spreads_outliers(kind):
    model = _tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, 5] *= 30     # one outlier input channel
    ids = torch.randint(0, 200, (1, 24), generator=torch.Generator().manual_seed(1))
    before = model(ids).logits
    up = model.model.layers[0].mlp.up_proj.weight.detach()
    peak_before = float(up.abs().max() / up.pow(2).mean().sqrt())
    q = rotation.rotate_residual(model, kind, seed=3)
    assert torch.allclose(q @ q.T, torch.eye(96, dtype=q.dtype), atol=1e-12)
    assert not model.config.tie_word_embeddings                 # the head took the final norm's scale
    assert torch.allclose(model(ids).logits, before, atol=2e-4, rtol=1e-4)
    up = model.model.layers[0].mlp.up_proj.weight.detach()
    assert float(up.abs().max() / up.pow(2).mean().sqrt()) < peak_before / 2
    assert all(bool((m.weight.detach() == 1).all()) for n, m in model.named_modules() if n.endswith("norm"))


def test_rotation_refuses_what_it_cannot_fold():
    with pytest.raises(MLWQError, match="no Sylvester"):
        rotation.hadamard(12)
    model = _tiny_llama()
    model.config.model_type = "gemma3_text"
    with pytest.raises(MLWQError, match="Llama-architecture"):
        rotation.rotate_residual(model)


def test_a_config_without_rotation_keeps_the_names_stored_before_it():
    from mlwq.engine import QuantConfig
    assert "rotation" not in QuantConfig(bits=3.25).identity()
    assert QuantConfig(bits=3.25, rotation="hadamard").identity()["rotation"] == "hadamard"
    with pytest.raises(MLWQError, match="unknown rotation"):
        QuantConfig(rotation="givens").validate()
