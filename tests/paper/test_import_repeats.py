"""The authors' prompts have no repeats, and the import says so (issue 28 item 1): on their
released sample, no prompt text appears twice within a neuron and split (checked here on the raw
files, duplicate JSON keys included), the import counts 0 repeated prompts and the step-3 records
their attribution files merged into one prompt per text (recounted here from the raw files),
keeps multiplicity 1, and prints both, with a column of its table."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.paper_data import require_sample, run_cli


def _raw_counts(src: Path) -> tuple[int, int]:
    """(texts repeated within a neuron of an attribution file, step-3 records under 100 tokens
    beyond one per text), from the raw files, following each attribution file's
    ``prior_filename`` to its trimmed texts."""
    def pairs_hook(items):
        keys = [k for k, _ in items]
        pairs_hook.dupes += len(keys) - len(set(keys))
        return dict(items)

    pairs_hook.dupes = 0
    merged = 0
    for attr in sorted((src / "4_head_attributions").glob("*.json")):
        data = json.loads(attr.read_text(), object_pairs_hook=pairs_hook)
        prior = data.get("prior_filename")
        if "head_attributions" not in data or not prior:
            continue
        name = Path(prior).name
        trimmed = src / "3_trimmed_texts" / (name if name.endswith(".json") else name + ".json")
        recs = json.loads(trimmed.read_text())["neuron_to_trunc_data"]
        for key, texts in data["head_attributions"].items():
            short = sum(r["token_pos"] - r["start_pos"] < 100 for r in recs.get(key, []))
            merged += max(0, short - len(texts))
    return pairs_hook.dupes, merged


def test_import_checks_and_says_the_authors_prompts_are_distinct(tmp_path, capsys):
    src = require_sample()
    dupes, merged = _raw_counts(src)
    assert dupes == 0 and merged > 0  # no repeated text; their records did repeat, and were merged
    db = tmp_path / "paper.db"
    rc, out, err = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 0, err
    con = sqlite3.connect(db)
    prov = con.execute("SELECT provenance FROM runs WHERE slug = 'gpt2-small'").fetchone()[0]
    counts = json.loads(prov)["counts"]
    assert counts["repeated_prompts"] == 0 and counts["records_merged"] == merged
    assert con.execute("SELECT count(*) FROM (SELECT neuron_id, split, text FROM prompts "
                       "GROUP BY neuron_id, split, text HAVING count(*) > 1)").fetchone()[0] == 0
    assert con.execute("SELECT DISTINCT multiplicity FROM prompts").fetchall() == [(1,)]
    con.close()
    assert (f"prompts: each distinct within its neuron and split (the authors' files key prompts by text); "
            f"their step-3 records under 100 tokens hold {merged} repeats beyond one per text") in out
    lines = out.strip().splitlines()
    head = max(i for i, x in enumerate(lines) if x.startswith("experiment "))
    assert lines[head].split()[-1] == "repeats"
    assert next(x for x in lines[head + 1:] if x.startswith("gpt2-small ")).split()[-1] == "0"
