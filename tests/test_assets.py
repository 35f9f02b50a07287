"""Where WikiText-2 comes from: the lookup order, the download from the Hugging Face dataset
(served here from the local copy, since hubs are unreachable), and the error when neither works."""

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse

import pytest

from mlwq import assets


def rows_of(name: str) -> list[str]:
    """The rows the Hugging Face dataset holds for a file of our reference copy (one per line of
    the release, a line holding only a space as ''), recovered from the copy itself."""
    data = (assets.DATA_DIR / "wikitext-2" / name).read_bytes().decode("utf-8")
    if name == "wiki.valid.tokens":
        return [ln if ln.strip() else "" for ln in data.lstrip("\ufeff").splitlines(keepends=True)]
    text, rows, p = data.replace("\r\n", "\n"), [], 0
    while True:                                  # rows joined by "\n\n"; a non-empty row ends in "\n"
        if p == len(text) or text[p] == "\n":
            rows.append("")
        else:
            q = text.index("\n", p) + 1
            rows.append(text[p:q])
            p = q
        if p == len(text):
            return rows
        assert text.startswith("\n\n", p)
        p += 2


@pytest.mark.parametrize("name", list(assets.WIKITEXT))
def test_rows_give_the_pinned_bytes(name):
    rows = rows_of(name)
    assert len(rows) == {"wiki.valid.tokens": 3760, "wiki.test.raw": 4358}[name]   # the dataset's row counts
    data = assets.wikitext_bytes(name, rows)
    assert len(data) == assets.WIKITEXT[name][3]
    assert assets.hashlib.sha256(data).hexdigest() == assets.WIKITEXT[name][2]


def fake_rows_api(monkeypatch, served: dict):
    """urlopen answering the datasets-server's /rows queries from `served` {(config, split): rows}."""
    calls = []

    def urlopen(url, timeout=None):
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        calls.append(q)
        rows = served[(q["config"], q["split"])]
        off, n = int(q["offset"]), int(q["length"])
        page = [{"row_idx": i, "row": {"text": rows[i]}} for i in range(off, min(off + n, len(rows)))]
        return io.BytesIO(json.dumps({"rows": page[::-1], "num_rows_total": len(rows)}).encode())

    monkeypatch.setattr(assets.urllib.request, "urlopen", urlopen)
    return calls


def test_fetch_writes_checked_files(monkeypatch, tmp_path):
    served = {v[:2]: rows_of(k) for k, v in assets.WIKITEXT.items()}
    calls = fake_rows_api(monkeypatch, served)
    out = assets.fetch_wikitext(tmp_path / "wikitext-2", log=lambda m: None)
    for name, (_, _, sha, _) in assets.WIKITEXT.items():
        assert assets.sha256_of(out / name) == sha
    assert len(calls) == 38 + 44                 # pages of 100 rows
    assert not list(out.glob("*.part"))
    n = len(calls)
    assets.fetch_wikitext(out, log=lambda m: None)   # present and checked: nothing downloaded
    assert len(calls) == n


def test_fetch_refuses_other_bytes(monkeypatch, tmp_path):
    served = {v[:2]: rows_of(k) for k, v in assets.WIKITEXT.items()}
    served[("wikitext-2-v1", "validation")][5] = " an edited line \n"
    fake_rows_api(monkeypatch, served)
    with pytest.raises(RuntimeError, match="refusing to use it"):
        assets.fetch_wikitext(tmp_path / "wikitext-2", log=lambda m: None)
    assert not (tmp_path / "wikitext-2" / "wiki.valid.tokens").exists()


def test_unreachable_hub_says_both_ways(monkeypatch, tmp_path):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(assets.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(assets.time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError) as e:
        assets.fetch_wikitext(tmp_path / "wikitext-2", log=lambda m: None)
    assert "MLWQ_DATA_DIR" in str(e.value) and "python -m mlwq.assets fetch" in str(e.value)


def data_dir_in(root, env: dict) -> str:
    """assets.DATA_DIR as a process that imports mlwq from `root` sees it."""
    code = "from mlwq import assets; print(assets.DATA_DIR)"
    return subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(root)}, cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_lookup_order(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLWQ_DATA_DIR", "MLWQ_CACHE", "PYTHONPATH")}
    env["MLWQ_CACHE"] = str(tmp_path / "cache")
    # a bare clone: nothing beside it, so the cache (filled by `python -m mlwq.assets fetch`)
    clone = tmp_path / "clone"
    shutil.copytree(assets.PROJECT_ROOT / "mlwq", clone / "mlwq", ignore=shutil.ignore_patterns("__pycache__"))
    assert data_dir_in(clone, env) == str(tmp_path / "cache" / "data")
    # a shared/data folder beside the clone comes first, MLWQ_DATA_DIR before both
    (tmp_path / "shared" / "data" / "wikitext-2").mkdir(parents=True)
    assert data_dir_in(clone, env) == str(tmp_path / "shared" / "data")
    assert data_dir_in(clone, {**env, "MLWQ_DATA_DIR": str(tmp_path / "mine")}) == str(tmp_path / "mine")


def test_missing_text_error_names_both_ways(tmp_path):
    from mlwq.calibration import load_text
    from mlwq.errors import MLWQError
    with pytest.raises(MLWQError) as e:
        load_text(tmp_path / "wikitext-2" / "wiki.valid.tokens")
    msg = str(e.value)
    assert "\n" not in msg and "MLWQ_DATA_DIR" in msg and "python -m mlwq.assets fetch" in msg
