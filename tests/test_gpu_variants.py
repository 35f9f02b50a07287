"""The CUDA variants that bench/gpu/device_cuda_checks.sh's `libs` stage builds on the GPU machine
still apply to our sources, so that a stale one fails here and not after a lent machine's build."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ROOT / "bench" / "gpu" / "variants"
CUDA_SRC = ROOT / "ggml_patch" / "src" / "ggml" / "src" / "ggml-cuda"


def cuda_sources():
    return sorted(CUDA_SRC.glob("mlwq*.cu")) + sorted(CUDA_SRC.glob("mlwq*.cuh"))


def sed_changes(sed):
    return [f.name for f in cuda_sources()
            if subprocess.run(["sed", "-f", str(sed), str(f)], capture_output=True, text=True,
                              check=True).stdout != f.read_text()]


def patch_applies(patch, tmp_path):
    # as the stage applies it (-p1, no fuzz) to llama.cpp's tree, where our files sit under ggml/src/ggml-cuda/
    tree = tmp_path / "ggml" / "src" / "ggml-cuda"
    tree.mkdir(parents=True)
    for f in cuda_sources():
        shutil.copy(f, tree / f.name)
    proc = subprocess.run(["patch", "-p1", "--batch", "--forward", "--fuzz=0", "-d", str(tmp_path)],
                          stdin=patch.open("rb"), capture_output=True)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    return [f.name for f in cuda_sources() if (tree / f.name).read_bytes() != f.read_bytes()]


@pytest.mark.parametrize("variant", sorted(VARIANTS.glob("*.sed")) + sorted(VARIANTS.glob("*.patch")),
                         ids=lambda p: p.name)
def test_variant_changes_our_sources(variant, tmp_path):
    changed = sed_changes(variant) if variant.suffix == ".sed" else patch_applies(variant, tmp_path)
    assert changed, f"{variant.name} changes none of {[f.name for f in cuda_sources()]}"
