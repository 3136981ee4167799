"""`lookups import-paper` on folders with several experiments and broken or missing files, built
in tmp_path from the authors' sample and a second experiment written in their format: each
chain is one run, partial data imports partially, untouched runs are complete, the exit code
says whether every experiment found was imported."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from context_lookups.precompute.paper import command, importer
from tests.paper_data import SYN_STEM, copy_sample, run_cli, write_synthetic

SAMPLE_E = 0.6627  # the sample's E by the authors' rule (its README)


def _runs(db) -> dict[str, tuple[str, dict]]:
    c = sqlite3.connect(db)
    out = {slug: (status, json.loads(prov)) for slug, status, prov in c.execute(
        "SELECT slug, status, provenance FROM runs")}
    c.close()
    return out


def _count(db, slug: str, table: str) -> int:
    joins = {"neurons": "neurons x JOIN runs r ON r.id = x.run_id",
             "pairs": "pairs x JOIN runs r ON r.id = x.run_id AND x.kept",
             "explanations": "explanations x JOIN pairs p ON p.id = x.pair_id JOIN runs r ON r.id = p.run_id",
             "classifications": "classifications x JOIN explanations e ON e.id = x.explanation_id "
                                "JOIN pairs p ON p.id = e.pair_id JOIN runs r ON r.id = p.run_id",
             "ablations": "ablations x JOIN pairs p ON p.id = x.pair_id JOIN runs r ON r.id = p.run_id"}
    c = sqlite3.connect(db)
    n = c.execute(f"SELECT count(*) FROM {joins[table]} WHERE r.slug = ?", (slug,)).fetchone()[0]
    c.close()
    return n


def _complete_sample(db) -> None:
    """The sample's run is all there: the README's counts and E."""
    assert _runs(db)["gpt2-small"][0] == "complete"
    assert [_count(db, "gpt2-small", t) for t in ("neurons", "pairs", "explanations", "classifications")] == \
        [12, 29, 29, 562]
    c = sqlite3.connect(db)
    scores = [r[0] for r in c.execute(
        "SELECT coalesce(e.score, CASE WHEN e.tnr IS NULL THEN e.tpr ELSE e.tnr END) FROM explanations e "
        "JOIN pairs p ON p.id = e.pair_id JOIN runs r ON r.id = p.run_id WHERE r.slug = 'gpt2-small'")]
    c.close()
    assert sum(scores) / len(scores) == pytest.approx(SAMPLE_E, abs=1e-4)


def _table(out: str) -> dict[str, list[str]]:
    """The table the command ends with: experiment -> its cells."""
    lines = out.strip().splitlines()
    head = max(i for i, x in enumerate(lines) if x.startswith("experiment "))
    return {row.split()[0]: row.split()[1:] for row in lines[head + 1:]}


def test_second_experiment_of_the_same_model_is_its_own_run(tmp_path, capsys):
    src = copy_sample(tmp_path / "experiment_data")
    syn = write_synthetic(src)
    db = tmp_path / "two.db"
    rc, out, err = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 0, err
    runs = _runs(db)
    assert set(runs) == {"gpt2-small", "gpt2-small-l6-7"}
    _complete_sample(db)
    status, prov = runs["gpt2-small-l6-7"]
    assert status == "complete" and prov["layers"] == [6, 7] and prov["missing"] == []
    assert prov["files"]["pairs"] == [f"4_head_attributions/{syn['files']['pairs'].name}"]
    assert _count(db, "gpt2-small-l6-7", "pairs") == len(syn["pairs"])
    assert _count(db, "gpt2-small-l6-7", "ablations") > 0
    # the authors' dates (file names) and the import date, as such
    c = sqlite3.connect(db)
    started, finished, imported = c.execute("SELECT started_at, finished_at, imported_at FROM runs "
                                            "WHERE slug = 'gpt2-small'").fetchone()
    assert started.startswith("2023-10-11 19:07:38") and finished.startswith("2023-10-14 18:26:03")
    assert imported[:4] >= "2025"
    table = _table(out)
    assert table["gpt2-small"][:7] == ["complete", "12", "29", "29", "29", "29", "0.663"]
    assert table["gpt2-small-l6-7"][0] == "complete"
    # the same folder again: nothing changes, exit 0
    before = c.execute("SELECT count(*) FROM prompts").fetchone()
    rc, out, _ = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 0 and _table(out)["gpt2-small-l6-7"][0] == "unchanged"
    assert c.execute("SELECT count(*) FROM prompts").fetchone() == before


def test_truncated_file_affects_only_the_run_that_needs_it(tmp_path, capsys):
    src = copy_sample(tmp_path / "experiment_data")
    syn = write_synthetic(src)
    f = syn["files"]["attr_test"]
    f.write_bytes(f.read_bytes()[:512])  # as the authors' own truncated gpt2-large file
    # and a newer-named broken file of the sample's model: no chain names it, nothing picks it
    (src / "4_head_attributions" / "2023-12-31_23-59-59_gpt2-small_test.json").write_text('{"parameters": {')
    db = tmp_path / "t.db"
    rc, out, _ = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 0
    _complete_sample(db)
    status, prov = _runs(db)["gpt2-small-l6-7"]
    assert status == "partial"
    missing = {m["role"]: m for m in prov["missing"]}
    assert set(missing) == {"attr_test", "cls_results", "ablation"}
    assert f.name in missing["attr_test"]["reason"] and "truncated" in missing["attr_test"]["reason"]
    assert missing["attr_test"]["cost"].startswith("no held-out prompts")
    # everything else of it is imported: neurons, explain prompts, pairs, explanations (unanswered)
    assert _count(db, "gpt2-small-l6-7", "pairs") == len(syn["pairs"])
    assert _count(db, "gpt2-small-l6-7", "explanations") == len(syn["pairs"])
    assert _count(db, "gpt2-small-l6-7", "classifications") == 0
    assert "not read: 4_head_attributions/2023-12-31_23-59-59_gpt2-small_test.json: truncated" in out
    assert _table(out)["gpt2-small-l6-7"][:6] == ["partial", "4", str(len(syn["pairs"])),
                                                   str(len(syn["pairs"])), "0", "0"]


def test_missing_answers_and_ablation_files_cost_what_they_say(tmp_path, capsys):
    src = copy_sample(tmp_path / "experiment_data")
    for p in (src / "6_explanation_eval").glob("*_results.jsonl"):
        p.unlink()
    shutil.rmtree(src / "7_head_ablation")
    db = tmp_path / "m.db"
    rc, out, _ = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 0
    status, prov = _runs(db)["gpt2-small"]
    assert status == "partial" and {m["role"] for m in prov["missing"]} == {"cls_results", "ablation"}
    assert {m["cost"] for m in prov["missing"]} == {"no held-out answers: no E", "no ablation"}
    c = sqlite3.connect(db)
    assert dict(c.execute("SELECT status, count(*) FROM explanations GROUP BY status")) == {"unanswered": 29}
    assert _table(out)["gpt2-small"][:7] == ["partial", "12", "29", "29", "0", "0", "–"]


def test_neurons_file_of_another_experiment_leaves_the_chain_unimportable(tmp_path, capsys):
    src = copy_sample(tmp_path / "experiment_data")
    other = tmp_path / "other"
    write_synthetic(other, ablation=False)
    for p in (src / "1_next_token_neurons").iterdir():
        p.unlink()
    shutil.copy(other / "1_next_token_neurons" / f"{SYN_STEM}.json", src / "1_next_token_neurons")
    db = tmp_path / "n.db"
    rc, out, _ = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 1  # an experiment found could not be imported at all
    lines = [x for x in out.splitlines() if ": not imported: " in x]
    assert len(lines) == 1 and "no neurons file" in lines[0] and "gpt2-small" in lines[0]
    runs = _runs(db)
    assert list(runs) == ["gpt2-small-l6-7"] and runs["gpt2-small-l6-7"][0] == "partial"
    assert {m["role"] for m in runs["gpt2-small-l6-7"][1]["missing"]} >= {"attr", "pairs", "attr_test"}
    assert _count(db, "gpt2-small-l6-7", "neurons") == 4


def test_a_failure_while_writing_leaves_no_half_run(tmp_path, capsys, monkeypatch):
    """Each run is one unit of work: a failure in the middle of writing the second experiment
    leaves none of its rows, and the first run complete."""
    src = copy_sample(tmp_path / "experiment_data")
    write_synthetic(src)
    real = importer._ablations

    def failing(session, data, *a, **kw):
        real(session, data, *a, **kw)  # rows are added, then the write fails
        if data.exp.slug == "gpt2-small-l6-7":
            raise importer.PaperFormatError("simulated failure while writing")

    monkeypatch.setattr(importer, "_ablations", failing)
    db = tmp_path / "f.db"
    rc, out, _ = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 1 and "gpt2-small-l6-7: not imported: simulated failure" in out
    _complete_sample(db)
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    assert c.execute("SELECT count(*) FROM neurons").fetchone() == (12,)
    assert c.execute("SELECT count(*) FROM ablations").fetchone()[0] == _count(db, "gpt2-small", "ablations")


def test_a_run_of_that_name_made_otherwise_is_left_alone(tmp_path, capsys):
    src = copy_sample(tmp_path / "experiment_data")
    db = tmp_path / "c.db"
    assert run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)[0] == 0
    write_synthetic(src)
    f = next((src / "1_next_token_neurons").glob("2023-10-11_*"))
    data = json.loads(f.read_text())
    data["neurons"]["(9, 2209)"]["congruence"] = 1.0  # other files under the same run name
    f.write_text(json.dumps(data))
    before = sqlite3.connect(db).execute("SELECT * FROM neurons ORDER BY id").fetchall()
    rc, out, _ = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 1 and "gpt2-small: not imported: run 'gpt2-small' already exists" in out
    assert _runs(db)["gpt2-small-l6-7"][0] == "complete"  # the new experiment still imports
    after = sqlite3.connect(db).execute("SELECT * FROM neurons ORDER BY id").fetchall()
    assert after[:len(before)] == before


def test_chain_links_decide_and_slugs_name_the_layers():
    from context_lookups.precompute.paper.chains import slug_of

    assert slug_of("gpt2-large", (31, 32, 33, 34, 35)) == "gpt2-large"
    assert slug_of("gpt2-large", (16, 17, 18, 19, 20)) == "gpt2-large-l16-20"
    assert slug_of("gpt2-xl", tuple(range(42, 48))) == "gpt2-xl"
    assert slug_of("gpt2-small", (3, 5)) == "gpt2-small-l3-5"
    assert command.EXIT_NO_DATA == 2
