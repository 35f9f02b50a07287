"""The MLWQ libFuzzer harness (ggml_patch/fuzz/): a short fuzzing run finds nothing, a failing check
is reported as a crash, and the gguf target's restatement of llama's MLWQ load checks gives the
real loader's verdicts (the seed corpus, and the malformed files of test_llamacpp).

Needs clang with libFuzzer (scripts/setup.sh installs it) and the patched build
(`bash ggml_patch/build.sh`): without them these tests FAIL with that instruction, never skip."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.llamacpp

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ggml_patch" / "fuzz" / "run_fuzz.sh"
LAST_LINE = re.compile(r"^fuzz: seconds=(?P<seconds>\d+) executions=(?P<executions>\d+) exec_per_s=(?P<rate>\d+) "
                       r"corpus=(?P<corpus>\d+) cov=(?P<cov>\d+) crashes=(?P<crashes>\d+)$")


def require_clang():
    missing = [t for t in ("clang", "clang++") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the fuzz harness needs clang with libFuzzer; "
                    f"run scripts/setup.sh (it installs clang)")


def run_fuzz(*args, env=None, timeout=900):
    """run_fuzz.sh; the first call builds the sanitizer targets (about a minute on 2 cores)."""
    require_clang()
    full_env = dict(os.environ, **(env or {}))
    r = subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, env=full_env, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode == 2:
        pytest.fail(f"run_fuzz.sh could not start: {r.stderr.strip()[-2000:]}")
    return r


def verdicts(output: str) -> dict[str, str]:
    """{input file name: 'accepted' | 'refused...'} from a `--run gguf` with MLWQ_FUZZ_VERBOSE=1."""
    out, current = {}, None
    for line in output.splitlines():
        if line.startswith("Running: "):
            current = Path(line[len("Running: "):].strip()).name
        elif line.startswith("mlwq-fuzz verdict: ") and current is not None:
            out[current] = line[len("mlwq-fuzz verdict: "):]
            current = None
    return out


def test_short_fuzz_run_finds_nothing():
    # from the seeds alone (not the corpus that long runs keep in the cache): the same start each time
    r = run_fuzz(30, env={"MLWQ_FUZZ_FRESH": "1"})
    lines = r.stdout.strip().splitlines()
    m = LAST_LINE.match(lines[-1]) if lines else None
    assert m, f"no result line; stdout: {r.stdout[-2000:]} stderr: {r.stderr[-3000:]}"
    print(r.stdout)
    assert int(m["crashes"]) == 0 and r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert int(m["executions"]) > 0
    for target in ("rows", "gguf"):   # both targets ran
        t = re.search(rf"^fuzz\[{target}\]: .* executions=(\d+) .* crashes=0 ", r.stdout, re.M)
        assert t and int(t.group(1)) > 0, r.stdout


def test_a_failing_check_is_reported_as_a_crash():
    """MLWQ_FUZZ_SELFTEST=1 makes every input fail a check: the run must end with exit 1,
    crashes=1 and the check's message (so a real failure could not pass unnoticed)."""
    r = run_fuzz(2, "rows", env={"MLWQ_FUZZ_SELFTEST": "1", "MLWQ_FUZZ_FRESH": "1"})
    kept = re.findall(r"crash input kept: (\S+)", r.stderr)
    for f in kept:                    # not a finding: do not leave it among the real ones
        shutil.rmtree(Path(f).parent.parent, ignore_errors=True)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    m = LAST_LINE.match(r.stdout.strip().splitlines()[-1])
    assert m and int(m["crashes"]) == 1
    assert "MLWQ FUZZ CHECK FAILED" in r.stderr and "MLWQ_FUZZ_SELFTEST" in r.stderr
    assert kept


def test_seed_files_get_the_loader_verdicts():
    """Seeds named valid-* must load; every other seed carries one fault and must be refused."""
    seeds = Path(run_fuzz("--seeds").stdout.strip().splitlines()[-1])
    r = run_fuzz("--run", "gguf", seeds / "gguf", env={"MLWQ_FUZZ_VERBOSE": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    v = verdicts(r.stderr)
    files = sorted(p.name for p in (seeds / "gguf").iterdir())
    assert sorted(v) == files
    wrong = [f"{f}: {v[f]}" for f in files if (v[f] == "accepted") != f.startswith("valid-")]
    assert not wrong, "\n".join(wrong)
    assert sum(f.startswith("valid-") for f in files) >= 5 and len(files) >= 60
    assert sum(f.startswith("valid-v3-") for f in files) >= 1 and sum(f.startswith("v3-") for f in files) >= 15


def test_mirror_agrees_with_the_real_loader(exported, exported_v3, tmp_path):
    """The exported 2-block SmolLM2, in format 2 and 3, and test_llamacpp's malformed variants of
    them, which llama.cpp itself loads / refuses (test_malformed_files_are_refused_with_a_clear_message)."""
    from test_llamacpp import malformed_v3_variants, malformed_variants

    path, path_v3 = exported[0], exported_v3[0]
    variants = {**malformed_variants(path, tmp_path), **malformed_v3_variants(path_v3, tmp_path)}
    # the kernels on 16 rows per tensor: the verdicts are what this test is about
    r = run_fuzz("--run", "gguf", path, path_v3, *(f for f, _ in variants.values()),
                 env={"MLWQ_FUZZ_VERBOSE": "1", "MLWQ_FUZZ_MAX_ROWS": "16"})
    assert r.returncode == 0, r.stderr[-4000:]
    v = verdicts(r.stderr)
    assert v.get(Path(path).name) == "accepted" and v.get(Path(path_v3).name) == "accepted", v
    wrong = [f"{case}: {v.get(Path(f).name)}" for case, (f, _) in variants.items()
             if not str(v.get(Path(f).name, "")).startswith("refused")]
    assert not wrong, "\n".join(wrong)
