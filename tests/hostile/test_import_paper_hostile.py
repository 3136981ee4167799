"""Hostile folders for `lookups import-paper` (issue 18, items 6-9), built in tmp_path from the
authors' sample: names that leave PATH, symlinks and special files, oversized and deeply nested
files, non-finite numbers, and a neuron with far more prompts than the authors ever had. Each
is refused with one line naming the file (and field), the rest imports, nothing hangs, and the
pages of what was imported stay bounded."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from context_lookups.precompute.paper.files import MAX_FILE_BYTES
from context_lookups.precompute.paper.loader import MAX_PROMPTS
from tests.paper_data import copy_sample, run_cli


def _import(src, db, capsys) -> tuple[int, str, str]:
    return run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)


def _prov(db) -> dict:
    return json.loads(sqlite3.connect(db).execute("SELECT provenance FROM runs WHERE slug = 'gpt2-small'"
                                                  ).fetchone()[0])


def _one_line_for(out: str, name: str) -> list[str]:
    return [x for x in out.splitlines() if name in x]


# --- 6. path traversal ---------------------------------------------------------------------------

def test_prior_filename_outside_the_folder_is_never_read(tmp_path, capsys):
    src = copy_sample(tmp_path / "data" / "experiment_data")
    outside = tmp_path / "outside"
    outside.mkdir()
    attr = next((src / "4_head_attributions").glob("*_gpt2-small.json"))
    (outside / "attr_outside.json").write_text(attr.read_text().replace("There are a", "OUTSIDE TEXT"))
    pairs = next((src / "4_head_attributions").glob("*_prompts.json"))
    data = json.loads(pairs.read_text())
    data["prior_filename"] = "../../../outside/attr_outside"
    pairs.write_text(json.dumps(data))
    # and a symlink inside the folder that points outside it
    link = src / "4_head_attributions" / "2023-10-20_00-00-00_gpt2-small.json"
    link.symlink_to(outside / "attr_outside.json")
    db = tmp_path / "t.db"
    rc, out, err = _import(src, db, capsys)
    assert rc == 0 and "Traceback" not in err
    texts = sqlite3.connect(db).execute("SELECT text FROM prompts")
    assert "OUTSIDE TEXT" not in "".join(r[0] for r in texts)
    prov = _prov(db)
    assert all(".." not in f and "outside" not in f for fs in prov["files"].values() for f in fs)
    assert any("prior_filename '../../../outside/attr_outside' is not a file name" in n
               for n in prov["notes"])
    link = _one_line_for(out, "2023-10-20_00-00-00_gpt2-small.json")
    assert len(link) == 1 and "outside" in link[0]
    # the link was ignored, the training attributions found by their content: the run is whole
    assert sqlite3.connect(db).execute("SELECT count(*) FROM prompts WHERE split='explain'"
                                       ).fetchone() == (309,)


# --- 7. symlinks, special files, size ------------------------------------------------------------

def test_special_files_are_refused_with_one_line_and_nothing_hangs(tmp_path):
    src = copy_sample(tmp_path / "experiment_data")
    d = src / "4_head_attributions"
    (d / "2023-10-20_00-00-01_gpt2-small_test.json").symlink_to("/dev/zero")
    os.mkfifo(d / "2023-10-20_00-00-02_gpt2-small_test.json")
    (d / "2023-10-20_00-00-03_gpt2-small_test.json").mkdir()
    big = d / "2023-10-20_00-00-04_gpt2-small_test.json"
    with open(big, "wb") as fh:  # sparse: no disk used
        fh.truncate(MAX_FILE_BYTES + 1)
    db = tmp_path / "s.db"
    t0 = time.monotonic()
    # a real process with a timeout: a FIFO must not block it, /dev/zero must not fill memory
    p = subprocess.run([sys.executable, "-m", "context_lookups.precompute.cli", "import-paper", str(src),
                        "--db", f"sqlite:///{db}"], capture_output=True, text=True, timeout=300)
    assert time.monotonic() - t0 < 300
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    lines = {n: _one_line_for(p.stdout, n) for n in ("00-00-01", "00-00-02", "00-00-03", "00-00-04")}
    assert all(len(v) == 1 for v in lines.values()), lines
    assert "outside" in lines["00-00-01"][0]  # /dev/zero: resolves outside the folder
    assert "FIFO" in lines["00-00-02"][0] and "directory" in lines["00-00-03"][0]
    assert "above the importer's limit" in lines["00-00-04"][0]
    assert sqlite3.connect(db).execute("SELECT status FROM runs").fetchone() == ("complete",)


# --- 8. nesting, non-finite numbers ---------------------------------------------------------------

def test_deep_nesting_is_refused_before_parsing(tmp_path, capsys):
    src = copy_sample(tmp_path / "experiment_data")
    (src / "3_trimmed_texts" / "2023-10-20_00-00-00_gpt2-small.json").write_text("[" * 200_000)
    db = tmp_path / "n.db"
    rc, out, err = _import(src, db, capsys)
    assert rc == 0 and "RecursionError" not in out + err and "Traceback" not in err
    line = _one_line_for(out, "2023-10-20_00-00-00_gpt2-small.json")
    assert len(line) == 1 and "nested more than" in line[0]


@pytest.mark.parametrize("where,value,field", [("congruence", "NaN", "congruence"),
                                               ("og_act", "Infinity", "og_act"),
                                               ("trunc_act", "-1e999", "trunc_act")])
def test_non_finite_numbers_name_the_file_and_field(tmp_path, capsys, where, value, field):
    src = copy_sample(tmp_path / "experiment_data")
    folder, pattern = (("1_next_token_neurons", "*.json") if where == "congruence"
                       else ("3_trimmed_texts", "*_gpt2-small_test.json"))
    f = next((src / folder).glob(pattern))
    f.write_text(re.sub(rf'"{where}": [-0-9.e]+', f'"{where}": {value}', f.read_text(), count=1))
    db = tmp_path / "f.db"
    rc, out, err = _import(src, db, capsys)
    assert "NOT NULL" not in out + err and "Traceback" not in err
    if where == "congruence":  # the neurons file: nothing of the experiment without it
        assert rc == 1
        line = _one_line_for(out, ": not imported: ")
    else:  # the held-out records: that role only
        assert rc == 0
        line = _one_line_for(out, "missing: held-out trimmed texts")
        assert sqlite3.connect(db).execute("SELECT count(*) FROM prompts WHERE doc_act IS NULL AND split = "
                                           "'heldout'").fetchone()[0] == 307
    assert len(line) == 1 and f.name in line[0] and f"'{field}'" in line[0]
    assert "not a finite number" in line[0]


# --- 9. huge input, bounded pages ----------------------------------------------------------------

def test_a_neuron_with_far_more_prompts_is_capped_and_its_pages_stay_bounded(tmp_path, capsys):
    src = copy_sample(tmp_path / "experiment_data")
    f = next((src / "4_head_attributions").glob("*_gpt2-small.json"))
    data = json.loads(f.read_text())
    n = 20_000
    data["head_attributions"]["(9, 947)"].update({f" filler prompt number {i} times": [104, 73, 1]
                                                  for i in range(n)})
    f.write_text(json.dumps(data))
    db = tmp_path / "h.db"
    rc, out, _ = _import(src, db, capsys)
    assert rc == 0
    dropped = _one_line_for(out, "not imported (over the limits)")
    assert len(dropped) == 1 and "L9N947 explain" in dropped[0] and f"{n + 30 - MAX_PROMPTS}" in dropped[0]
    assert any("L9N947 explain" in d for d in _prov(db)["dropped"])
    c = sqlite3.connect(db)
    assert c.execute("SELECT max(cnt) FROM (SELECT count(*) cnt FROM prompts GROUP BY neuron_id, split)"
                     ).fetchone() == (MAX_PROMPTS,)
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as client:
        for url in ("/gpt2-small/neurons/9/947", "/gpt2-small/neurons/9/947.json",
                    "/gpt2-small/neurons/9/947/heads/8/8", "/gpt2-small/neurons/9/947/heads/8/8.json",
                    "/gpt2-small/heads/0/1", "/gpt2-small/pairs.json", "/.json"):
            t0 = time.monotonic()
            r = client.get(url)
            assert r.status_code == 200, url
            assert len(r.content) < 2_000_000 and time.monotonic() - t0 < 30, url
