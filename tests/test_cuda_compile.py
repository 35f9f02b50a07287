"""The CUDA sources of the MLWQ types compile (sm_90 and sm_87) against the patched tree.

Nothing CUDA runs on this machine or in CI; the kernels are checked on the GPU machine
(bench/gpu/device_cuda_checks.sh, bench/gpu/README.md)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.cuda_compile


def test_cuda_sources_compile_for_hopper_and_orin():
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    assert nvcc, "nvcc (CUDA toolkit) not found: the CUDA compile check needs it"
    proc = subprocess.run(["bash", str(ROOT / "ggml_patch" / "check_cuda_compile.sh")], capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
