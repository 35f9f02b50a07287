"""Merge rows of one `tools.compare` run into a results set kept elsewhere (docs/compare/<model>/).

    python -m tools.compare_merge docs/compare/smollm2-135m runs/compare/smollm2/results.json \\
        --rows "MLWQ 3 GPU bt200 sampled" --how "quantized on an H200, measured on this CPU"

Files quantized on a GPU machine are measured here with `tools.compare --add` in a run of their
own; this puts their rows beside the committed ones. It refuses a run whose measurement differs
(context, chunks, evaluation text, or the F16 reference's perplexity): rows are comparable only
when they were measured alike. A row of the same name is replaced. results.json, results.csv,
results.md (with the Pareto front and the verdict recomputed) and pareto.png are rewritten;
allocation.png is left as it is (it needs the checkpoints).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from mlwq.errors import MLWQError
from tools.compare import Entry, pareto, verdict, write_results

# the settings that make two runs' perplexities and KL divergences comparable
SAME_MEASUREMENT = ("ctx", "chunks")


def entry_of(row: dict) -> Entry:
    """The fields of a row that pareto() and verdict() read."""
    ppl = {"ppl": row["ppl"]} if row["ppl"] is not None else {}
    if ppl and row.get("kld_mean") is not None:
        ppl["kld_mean"] = row["kld_mean"]
    return Entry(name=row["name"], family=row["family"], target_bits=row["target_bits"], path=Path(row["file"]),
                 key=row["key"], how=row["made_by"], sizes={"bpw_linear": row["bpw_linear"]}, ppl=ppl)


def reference_ppl(res: dict) -> float:
    ref = [r for r in res["rows"] if r["family"] == "reference"]
    if not ref or ref[0]["ppl"] is None:
        raise MLWQError("a results.json without a measured F16 reference row")
    return ref[0]["ppl"]


def check_comparable(doc: dict, run: dict) -> None:
    for k in SAME_MEASUREMENT:
        if doc["args"].get(k) != run["args"].get(k):
            raise MLWQError(f"the run's --{k} is {run['args'].get(k)}, the results set's {doc['args'].get(k)}")
    if Path(doc["args"]["eval_text"]).name != Path(run["args"]["eval_text"]).name:
        raise MLWQError("the run was measured on another text")
    if doc["model_sha256"] != run["model_sha256"]:
        raise MLWQError("the run is of another model")
    a, b = reference_ppl(doc), reference_ppl(run)
    if abs(a - b) > 1e-3 * a:        # the same llama.cpp build and text give the same F16 perplexity
        raise MLWQError(f"the F16 reference measured {b} in the run and {a} in the results set")


def merge(doc: dict, run: dict, names: list[str] | None, how: str | None) -> dict:
    check_comparable(doc, run)
    take = [r for r in run["rows"] if r["family"] != "reference" and (names is None or r["name"] in names)]
    missing = sorted(set(names or ()) - {r["name"] for r in take})
    if missing:
        raise MLWQError(f"no row named {', '.join(missing)} in the run")
    ref = reference_ppl(doc)
    rows = {r["name"]: r for r in doc["rows"]}
    for r in take:
        r = dict(r)
        r["ppl_vs_f16"] = round(r["ppl"] / ref, 4) if r["ppl"] else None
        if how:
            r["made_by"] = f"{r['made_by']} [{how}]"
        rows[r["name"]] = r
    ordered = sorted(rows.values(), key=lambda r: (r["family"] != "reference", r["bpw_linear"]))
    entries = [entry_of(r) for r in ordered]
    front = pareto(entries)
    for r in ordered:
        r["pareto"] = r["name"] in front
    merged = list(doc.get("merged", [])) + [{"name": r["name"], "file": r["file"]} for r in take]
    return dict(doc, rows=ordered, verdict=verdict(entries), merged=merged)


def write(doc_dir: Path, res: dict) -> None:
    stem = re.sub(r"\.gguf$", "", Path(res["model"]).name)
    write_results(doc_dir, res, SimpleNamespace(args=SimpleNamespace(**res["args"]), stem=stem))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.compare_merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("doc_dir", type=Path, help="directory of the results set (results.json is read and rewritten)")
    p.add_argument("run_results", type=Path, help="results.json of the tools.compare run that measured the rows")
    p.add_argument("--rows", action="append", default=None, metavar="NAME",
                   help="a row to take (repeatable; default every row but the reference)")
    p.add_argument("--how", default=None, help="appended to each row's made_by in brackets: where and how it was made")
    a = p.parse_args(argv)
    try:
        for f in (a.doc_dir / "results.json", a.run_results):
            if not f.is_file():
                raise MLWQError(f"{f} not found")
        doc = json.loads((a.doc_dir / "results.json").read_text())
        run = json.loads(a.run_results.read_text())
        res = merge(doc, run, a.rows, a.how)
        write(a.doc_dir, res)
    except MLWQError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((a.doc_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
