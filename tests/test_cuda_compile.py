"""The CUDA sources of the MLWQ types compile (sm_90 and sm_87) against the patched tree.

Nothing CUDA runs on this machine or in CI; the kernels are checked on the GPU machine
(ggml_patch/tests/device_cuda_checks.sh, docs/BENCHMARKS.md)."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cuda_sources_compile_for_hopper_and_orin():
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    assert nvcc, "nvcc (CUDA toolkit) not found: the CUDA compile check needs it"
    proc = subprocess.run(["bash", str(ROOT / "ggml_patch" / "check_cuda_compile.sh")], capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
