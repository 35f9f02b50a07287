"""The model-wide allocation's statistics: the low-memory path (recomputed activations, H block by
block) gives the very same H and F as the one-pass path."""
import torch

from mlwq.calibration import calibration_windows
from mlwq.sensitivity import block_hessians, layer_statistics


def test_low_memory_statistics_equal_the_one_pass_ones(reduced_model, calib_path):
    model, tok = reduced_model
    calib = calibration_windows(tok, calib_path, 3, 96, 0)
    H1, F1 = layer_statistics(model, calib, "cpu", 3, progress=False)
    none, F2 = layer_statistics(model, calib, "cpu", 3, progress=False, hessians=False, recompute=True)
    H2 = {k: h for block in block_hessians(model, calib, "cpu", 3) for k, h in block.items()}
    assert none is None and H1.keys() == H2.keys() == F1.keys() == F2.keys()
    assert len(F1) == 14 and all(float(F1[k].sum()) > 0 for k in F1)
    for k in F1:
        assert torch.equal(F1[k], F2[k]), k
        assert torch.equal(H1[k], H2[k]), k
    q, k_, v = (f"model.layers.0.self_attn.{n}_proj" for n in "qkv")
    assert H1[q] is H1[k_] is H1[v] and H2[q] is H2[v]            # one input, one H
    assert H1[q] is not H1["model.layers.0.self_attn.o_proj"]
    assert all(p.requires_grad for p in model.parameters())      # the pass gives the weights back as found


def test_sampled_labels_are_seeded_and_low_memory_gives_the_same(reduced_model, calib_path):
    model, tok = reduced_model
    calib = calibration_windows(tok, calib_path, 3, 96, 0)
    _, text = layer_statistics(model, calib, "cpu", 3, progress=False, hessians=False)
    _, F1 = layer_statistics(model, calib, "cpu", 3, progress=False, hessians=False, labels="sampled", seed=1)
    _, F2 = layer_statistics(model, calib, "cpu", 3, progress=False, hessians=False, recompute=True,
                             labels="sampled", seed=1)
    _, F3 = layer_statistics(model, calib, "cpu", 3, progress=False, hessians=False, labels="sampled", seed=2)
    assert all(torch.equal(F1[k], F2[k]) for k in F1)              # one draw per seed, either path
    assert all(float(F1[k].sum()) > 0 for k in F1)
    assert not all(torch.equal(F1[k], F3[k]) for k in F1)          # another seed draws other tokens
    assert not all(torch.equal(F1[k], text[k]) for k in F1)
