"""Loading a GGUF through the converted copy in the cache gives the model the GGUF gives."""
import torch

import mlwq.model_io as model_io


def test_gguf_loads_through_a_cached_copy_with_the_same_weights_and_tokens(reduced_gguf, tmp_path, monkeypatch,
                                                                           calib_path):
    monkeypatch.setenv("MLWQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLWQ_NO_MODEL_CACHE", "1")
    direct, direct_tok = model_io.load_model(reduced_gguf)
    monkeypatch.delenv("MLWQ_NO_MODEL_CACHE")
    gguf_reads = []
    real_load = model_io._load
    monkeypatch.setattr(model_io, "_load", lambda where, kw, *a: (gguf_reads.append(kw), real_load(where, kw, *a))[1])
    first, first_tok = model_io.load_model(reduced_gguf)
    again, _ = model_io.load_model(reduced_gguf)
    assert [bool(kw) for kw in gguf_reads] == [True, False, False]     # the GGUF is parsed once, ever
    copies = list((tmp_path / "cache" / "models").iterdir())
    assert len(copies) == 1 and not copies[0].name.startswith(".")     # no half-written copy left
    for model in (first, again):
        a, b = direct.state_dict(), model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert model.config.model_type == direct.config.model_type
    text = calib_path.read_text(encoding="utf-8")[:20000]
    assert first_tok(text).input_ids == direct_tok(text).input_ids
