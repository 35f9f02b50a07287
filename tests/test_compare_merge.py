"""tools.compare_merge: rows of another run join a results set only when measured alike."""

import copy
import csv
import json

from tools import compare_merge


def row(name, family, bpw, ppl, kld):
    return {"name": name, "family": family, "target_bits": None, "file_mb": 1.0, "bpw_file": bpw + 1,
            "bpw_linear": bpw, "token_embd": "Q8_0", "linear_types": "X 1", "ppl": ppl, "ppl_pm": 0.5,
            "ppl_vs_f16": None, "kld_mean": kld, "kld_p99": 1.0 if kld else None,
            "same_top_pct": 70.0 if kld else None, "pp_ts": None, "tg_ts": None, "pareto": False,
            "file": f"{name}.gguf", "key": "k", "made_by": "x"}


def results(rows, f16=20.0, chunks=40):
    return {"model": "/m/Model.Q4_1.gguf", "model_sha256": "ab", "bench": None, "verdict": [],
            "args": {"ctx": 512, "chunks": chunks, "eval_text": "/d/wiki.test.raw", "calib": "/d/wiki.valid.tokens",
                     "nsamples": 32, "seqlen": 512},
            "rows": [row("F16", "reference", 16.0, f16, 0.0)] + rows}


def write_doc(tmp_path, res):
    (tmp_path / "results.json").write_text(json.dumps(res))
    return tmp_path


def test_merge_adds_replaces_and_recomputes_the_front(tmp_path):
    doc = write_doc(tmp_path, results([row("IQ3_XXS", "llama.cpp", 4.14, 25.5, 0.21),
                                       row("MLWQ 3", "mlwq", 3.3, 31.0, 0.40)]))
    run = tmp_path / "run.json"
    run.write_text(json.dumps(results([row("MLWQ 3", "mlwq", 3.3, 26.0, 0.25),
                                       row("MLWQ 3.84 GPU", "mlwq", 4.13, 23.0, 0.10)])))
    assert compare_merge.main([str(doc), str(run), "--how", "on a GPU"]) == 0
    res = json.loads((doc / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["F16", "MLWQ 3", "MLWQ 3.84 GPU", "IQ3_XXS"]       # reference first, then by bits
    assert rows["MLWQ 3"]["ppl"] == 26.0 and rows["MLWQ 3"]["made_by"] == "x [on a GPU]"
    assert rows["MLWQ 3"]["ppl_vs_f16"] == 1.3
    assert not rows["IQ3_XXS"]["pareto"] and rows["MLWQ 3.84 GPU"]["pareto"]  # beaten with fewer bits
    assert any("MLWQ 3.84 GPU" in v for v in res["verdict"])
    assert [m["name"] for m in res["merged"]] == ["MLWQ 3", "MLWQ 3.84 GPU"]
    with open(doc / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert "| MLWQ 3.84 GPU | mlwq |" in (doc / "results.md").read_text()
    assert (doc / "pareto.png").stat().st_size > 0


def test_merge_refuses_rows_measured_otherwise(tmp_path, capsys):
    base = results([row("MLWQ 3", "mlwq", 3.3, 31.0, 0.40)])
    doc = write_doc(tmp_path, base)
    before = (doc / "results.json").read_text()
    for other, word in ((results([row("A", "mlwq", 3.0, 30.0, 0.3)], f16=20.5), "F16"),
                        (results([row("A", "mlwq", 3.0, 30.0, 0.3)], chunks=0), "chunks")):
        run = tmp_path / "run.json"
        run.write_text(json.dumps(other))
        assert compare_merge.main([str(doc), str(run)]) == 1
        assert word in capsys.readouterr().err
    other = copy.deepcopy(base)
    run.write_text(json.dumps(other))
    assert compare_merge.main([str(doc), str(run), "--rows", "nope"]) == 1
    assert "no row named nope" in capsys.readouterr().err
    assert (doc / "results.json").read_text() == before                       # nothing written on refusal
