"""tools.compare on a reduced real model (SmolLM2's first 2 blocks): the whole chain through the
real llama.cpp tools, the bits it reports, resuming, and its errors."""

import csv
import json

import pytest

from tools import compare

ARGS = ["default", "--max-blocks", "2", "--types", "Q3_K_S", "--methods", "rtn,mlwq", "--bits", "2.5",
        "--nsamples", "2", "--seqlen", "128", "--tqp-steps", "2", "--chunks", "2", "--reps", "1",
        "--pp", "16", "--tg", "4", "--device", "cpu", "--quiet-wait", "0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert compare.main(ARGS + ["--out", str(out)]) == 0
    return out


@pytest.mark.llamacpp
@pytest.mark.slow
def test_results_cover_every_file(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"F16", "Q3_K_S", "RTN 2.5", "MLWQ 2.5"}
    for r in rows.values():
        assert 1.0 < r["ppl"] < 1e12 and r["ppl_pm"] > 0
        assert r["pp_ts"] > 0 and r["tg_ts"] > 0
    assert rows["F16"]["bpw_linear"] == 16.0
    assert rows["F16"]["kld_mean"] == 0.0
    for name in ("Q3_K_S", "RTN 2.5", "MLWQ 2.5"):      # llama-perplexity --kl-divergence against F16
        assert rows[name]["kld_mean"] > 0 and rows[name]["kld_p99"] > 0
        assert 0 < rows[name]["same_top_pct"] <= 100
    assert any(r["pareto"] for r in rows.values())
    with open(run_dir / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    md = (run_dir / "results.md").read_text()
    assert "| MLWQ 2.5 | mlwq |" in md and "## MLWQ against llama.cpp" in md
    for png in ("pareto.png", "allocation.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.llamacpp
@pytest.mark.slow
def test_bits_counted_from_the_bytes(run_dir):
    """The table's linear bits (gguf-py over the file) agree with the exporter's own count, and
    include format 3's metadata (one-byte headers, row scales, widths, 16-bit permutation: about
    0.16 bits/w here) on top of the 2.5 code bits."""
    res = json.loads((run_dir / "results.json").read_text())
    for r in res["rows"]:
        if r["family"] in ("rtn", "mlwq"):
            meta = json.loads((run_dir / "models" / (r["file"].rsplit("/", 1)[1][:-5] + ".json")).read_text())
            assert r["bpw_linear"] == pytest.approx(meta["export"]["bpw_mlwq"], abs=1e-4)
            assert 2.6 < r["bpw_linear"] < 2.75
            assert meta["summary"]["code_bits_per_weight"] == pytest.approx(2.5, abs=0.02)


@pytest.mark.llamacpp
@pytest.mark.slow
def test_resume_reuses_artefacts_and_measurements(run_dir):
    stored = {p: p.stat().st_mtime_ns for d in ("models", "measure") for p in (run_dir / d).iterdir()}
    before = json.loads((run_dir / "results.json").read_text())["rows"]
    assert compare.main(ARGS + ["--out", str(run_dir)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    assert sorted((run_dir / "models").iterdir()) == sorted(p for p in stored if p.parent.name == "models")
    after = json.loads((run_dir / "results.json").read_text())["rows"]
    assert after == before
    # another perplexity setting: new measurements, the same files
    assert compare.main(ARGS + ["--out", str(run_dir), "--chunks", "3", "--steps", "ppl,report"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stored if p.parent.name == "models"} == \
        {p: t for p, t in stored.items() if p.parent.name == "models"}
    assert len(list((run_dir / "measure").glob("ppl-*.json"))) == 8
    assert len(list((run_dir / "measure").glob("kld-base-*.bin"))) == 2


def test_missing_tool_is_a_clear_error(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "libllama.so").write_bytes(b"")
    monkeypatch.setenv("MLWQ_LLAMA_BIN", str(empty))
    assert compare.main(ARGS + ["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "llama-quantize is not built" in err and "ggml_patch/build.sh" in err


def test_bad_model_is_a_clear_error(tmp_path, capsys):
    assert compare.main(["/nonexistent/model.gguf", "--out", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err
