"""The ARM NEON kernels of the MLWQ types, cross-built for AArch64 and run under qemu-aarch64
(ggml_patch/arm_check.sh): at ARMv8.0 (plain NEON; qemu's Cortex-A72, which has no dotprod) and at
ARMv8.2 + dotprod (vdotq_s32; qemu's Cortex-A76), every kernel (vec_dot 1x1 and 2x2, ggml_mlwq_gemm
with 1 and 2 threads, as GCC and as clang compile it) gives exactly the int32 sums of the portable C
loop on every block, on the rows of the exported SmolLM2 file and on the fuzz seeds
(ggml_patch/fuzz/make_seeds.py); the fuzz harness's own checks pass on the seeds; and with real scales
the float results agree with numpy.

Needs gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them):
without them these tests skip, except under CI (CI=true), where they fail. The first run cross-builds
ggml-base and ggml-cpu twice (about 3 minutes on 2 cores, cached under ~/.cache/mlwq/arm-<key>)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporters import mlwq_format as F

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ggml_patch" / "arm_check.sh"
LEVELS = {"armv8-a": "neon", "armv8.2-a+dotprod": "neon-dotprod"}
TOOLS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64")
MAX_ROWS = 256          # rows per tensor (all of the 192-row ones, 256 of the others)


def require_tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        msg = (f"{', '.join(missing)} not found: the ARM checks cross-build for AArch64 and run under qemu; "
               f"scripts/setup.sh installs gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def arm_check(*args, env=None, timeout=1800):
    require_tools()
    r = subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, MLWQ_PYTHON=sys.executable, **(env or {})))
    if r.returncode == 2:
        pytest.fail(f"arm_check.sh could not run: {r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def arm_run(exported):
    """arm_check.sh on the exported 2-block SmolLM2 (its MLWQ tensors, MAX_ROWS rows each) and the seeds."""
    path, _ = exported
    return arm_check("--gguf", path, "--max-rows", MAX_ROWS)


@pytest.fixture(scope="module")
def bins():
    """{level: (bin dir, qemu cpu)} of the cached cross-builds."""
    r = arm_check("--build")
    assert r.returncode == 0, r.stderr[-3000:]
    out = {}
    for line in r.stdout.strip().splitlines():
        level, b, cpu = line.split()
        out[level] = (Path(b), cpu)
    assert sorted(out) == sorted(LEVELS)
    return out


def ok_lines(stdout: str, level: str, what: str) -> list[str]:
    return [l for l in stdout.splitlines() if l.startswith(f"ok   {level} ") and what in l]


def test_both_levels_build_and_run_their_neon_kernel(arm_run):
    out = arm_run.stdout
    for level, kernel in LEVELS.items():
        assert f"ok   {level} kernel: {kernel}\n" in out, out[-3000:]
    assert arm_run.returncode == 0, out[-4000:] + arm_run.stderr[-4000:]
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"arm-check: levels=2 inputs=(\d+) rows=(\d+) sums=(\d+) mismatches=0 failures=0", last)
    assert m, last
    print(last)


def test_exact_int32_sums_on_the_fuzz_seeds(arm_run):
    for level in LEVELS:
        for cc in ("gcc", "clang"):
            lines = ok_lines(arm_run.stdout, level, f"[{cc}] fuzz seeds, exact sums")
            assert len(lines) == 1, arm_run.stdout[-4000:]
            m = re.search(r"inputs=(\d+) rows=(\d+) blocks=(\d+) sums=(\d+) mismatches=0$", lines[0])
            assert m and int(m[1]) >= 90 and int(m[4]) > 10000, lines[0]
        # the harness's checks (validators, to_float, unpacking, kernels against its float64 reference)
        assert ok_lines(arm_run.stdout, level, "[gcc] fuzz seeds, harness checks"), arm_run.stdout[-4000:]


def test_exact_int32_sums_on_the_exported_rows(arm_run, exported):
    import gguf
    path, _ = exported
    tensors = {t.name: (F.width_of_type_id(int(t.tensor_type)), int(t.shape[0]), int(t.shape[1]))
               for t in gguf.GGUFReader(str(path)).tensors if F.width_of_type_id(int(t.tensor_type))}
    assert len(tensors) == 14 and {b for b, _, _ in tensors.values()} == {2, 3, 4}
    for level in LEVELS:
        for cc in ("gcc", "clang"):
            for name, (b, ne0, rows) in tensors.items():
                lines = ok_lines(arm_run.stdout, level, f"[{cc}] 0-{name} (mlwq{b}, {min(rows, MAX_ROWS)} x {ne0})")
                assert len(lines) == 1, f"{level} {cc} {name}: {arm_run.stdout[-3000:]}"
                m = re.search(r"rows=(\d+) blocks=(\d+) sums=(\d+) mismatches=0$", lines[0])
                # every block of every row against 5 columns, by 5 kernels
                assert m and int(m[3]) == int(m[2]) * 5 * 5, lines[0]


def test_a_wrong_sum_is_reported(bins):
    """MLWQ_EXACT_SELFTEST=1 shifts every expected sum by one: the checker must fail (so a kernel that
    differs could not pass unnoticed)."""
    b, cpu = bins["armv8.2-a+dotprod"]
    rows = np.random.default_rng(1).integers(0, 4, (3, 128)).astype(np.uint8)
    data = F.pack_rows(rows, F.round_to_scale_grid(np.full((3, 2), 0.01)), np.ones((3, 2), np.uint8), np.array([2, 2], np.uint8), 2)
    f = Path(os.environ.get("TMPDIR", "/tmp")) / f"mlwq-arm-selftest-{os.getpid()}.bin"
    f.write_bytes(data.tobytes())
    try:
        r = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(b / "mlwq-exact"), "rows", "mlwq2", "128", "3", str(f), "2", "7"],
                           capture_output=True, text=True, timeout=300, env=dict(os.environ, MLWQ_EXACT_SELFTEST="1"))
        assert r.returncode == 1 and "MISMATCH" in r.stdout, r.stdout + r.stderr
        r = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(b / "mlwq-exact"), "rows", "mlwq2", "128", "3", str(f), "2", "7"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "mismatches=0" in r.stdout, r.stdout + r.stderr
    finally:
        f.unlink(missing_ok=True)


def q8_1_dequant(raw: bytes, ncol: int, ne0: int) -> np.ndarray:
    blk = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", 32)])).reshape(ncol, ne0 // 32)
    return (blk["d"].astype(np.float64)[..., None] * blk["qs"].astype(np.float64)).reshape(ncol, ne0)


def test_float_results_match_numpy_on_the_exported_rows(bins, exported, tmp_path):
    """mlwq-check dot (the x86 build's driver, cross-built): activations quantized to q8_1 by ggml's
    ARM code, then every kernel (1x1, 2x2, gemm, portable) within float rounding of numpy."""
    import gguf
    path, _ = exported
    seen = set()
    for t in gguf.GGUFReader(str(path)).tensors:
        b = F.width_of_type_id(int(t.tensor_type))
        if b is None or b in seen:
            continue
        seen.add(b)
        ne0, rows = int(t.shape[0]), 37                       # 9 tiles of 4 rows and a remainder
        data = np.asarray(t.data).reshape(int(t.shape[1]), -1)[:rows]
        (tmp_path / "rows.bin").write_bytes(data.tobytes())
        x = np.random.default_rng(b).standard_normal((5, ne0)).astype(np.float32)
        x.tofile(tmp_path / "x.f32")
        ref_w = F.dequantize_rows(data, ne0, b).astype(np.float64)
        for level, (bindir, cpu) in bins.items():
            r = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(bindir / "mlwq-check"), "dot", f"mlwq{b}", str(ne0), str(rows),
                                str(tmp_path / "rows.bin"), str(tmp_path / "x.f32"), "5", str(tmp_path / "o")],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0 and "vec_dot_type q8_1 nrows 2" in r.stdout, r.stdout + r.stderr
            xq = q8_1_dequant((tmp_path / "o.q8_1").read_bytes(), 5, ne0)
            ref = xq @ ref_w.T
            scale = np.abs(xq) @ np.abs(ref_w).T
            for k in ("simd", "simd2", "gemm", "generic"):
                got = np.fromfile(f"{tmp_path / 'o'}.{k}.f32", np.float32).reshape(5, rows)
                assert np.all(np.abs(got - ref) <= 1e-5 * scale + 1e-6), (level, t.name, k)
    assert seen == {2, 3, 4}
