"""Repeated prompts are one prompt (issue 28 item 1, docs/method.md §2 "Repeats"): the rule on
constructed keys, a constructed held-out set where counting repeats changes E and its interval,
and a real precompute on the tiny model over a corpus with repeated documents — stored prompts
distinct within a neuron and split, multiplicities and document indices kept, every count
downstream (pairs, explanations, ablations, the job's summary) over distinct prompts — on SQLite
and, row for row, on PostgreSQL."""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from context_lookups.precompute.explain.scoring import explanation_score, score_interval
from context_lookups.precompute.prompts.distinct import distinct_prompts, needs_reserve, scan_depth
from tests.conftest import small_settings
from tests.db_rows import canonical_rows, first_difference

TOP_K = 8

# --- the rule --------------------------------------------------------------------------------------

def test_repeats_merge_in_rank_order_and_reading_stops_at_top_k():
    a, b, c, d = (1, 2), (3,), (4, 5, 6), (7,)
    keys = [a, b, a, None, c, a, b, d, c]
    assert distinct_prompts(keys, 10) == [[0, 2, 5], [1, 6], [4, 8], [7]]
    # three distinct wanted: reading stops at the document that gives the third (index 4), so the
    # later repeats of a and b are not read and not counted
    assert distinct_prompts(keys, 3) == [[0, 2], [1], [4]]
    assert distinct_prompts([None, None], 3) == [] and distinct_prompts([], 1) == []
    assert needs_reserve([a, a, b], 3) and not needs_reserve([a, b, c], 3)


def test_scan_depth_keeps_a_reserve_of_half_again():
    assert [scan_depth(k) for k in (1, 2, 3, 8, 20, 1000)] == [2, 3, 5, 12, 30, 1500]


def test_counting_repeats_changes_e_and_its_interval():
    """Six held-out documents, three of which trimmed to the same prompt, which the classifier
    gets wrong: counted three times it drags TPR to 1/4 (E 0.625); as one prompt TPR is 1/2 (E
    0.75), and the interval rests on 4 distinct prompts, not 6."""
    docs = [((1, 2), True, False), ((1, 2), True, False), ((1, 2), True, False),  # " such" x3, missed
            ((3, 4), True, True), ((5,), False, False), ((6,), False, False)]
    every = explanation_score([t for _, t, _ in docs], [p for _, _, p in docs])
    groups = distinct_prompts([k for k, _, _ in docs], 20)
    merged = [docs[g[0]] for g in groups]
    once = explanation_score([t for _, t, _ in merged], [p for _, _, p in merged])
    assert (every.tpr, every.score) == (0.25, 0.625)
    assert (once.tpr, once.tnr, once.score) == (0.5, 1.0, 0.75)
    assert [len(g) for g in groups] == [3, 1, 1, 1]
    assert once.n_pos + once.n_neg == 4 and every.n_pos + every.n_neg == 6
    iv_once = score_interval(once.tp, once.fn, once.tn, once.fp)
    iv_every = score_interval(every.tp, every.fn, every.tn, every.fp)
    assert iv_once != iv_every and iv_once[1] - iv_once[0] > iv_every[1] - iv_every[0]  # fewer prompts: wider


# --- a real run over a corpus with repeated documents -------------------------------------------------

def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def repeats_corpus(tmp_path_factory, small_corpus_dir) -> Path:
    """The small corpus with some documents repeated: in each split, the first five documents
    appear three times (the copies spread through the split)."""
    d = tmp_path_factory.mktemp("repeats-corpus")
    for split in ("explain", "heldout"):
        rows = _rows(small_corpus_dir / f"{split}.jsonl.gz")
        out = list(rows)
        for i, r in enumerate(rows[:5]):
            out.insert(7 + 5 * i, dict(r))
            out.append(dict(r))
        with gzip.open(d / f"{split}.jsonl.gz", "wt") as fh:
            for r in out:
                fh.write(json.dumps(r) + "\n")
    return d


def _settings(db_url: str, model_dir, corpus: Path):
    return small_settings(Path("unused.db"), model_dir, corpus, db_url=db_url, run_name="repeats",
                          top_k=TOP_K)


@pytest.fixture(scope="module")
def repeats_run(tmp_path_factory, tiny_model_dir, tiny_model, repeats_corpus) -> tuple[Path, dict]:
    from context_lookups.precompute.job.pipeline import run_precompute

    db = tmp_path_factory.mktemp("repeats") / "lookups.db"
    summary = run_precompute(_settings(f"sqlite:///{db}", tiny_model_dir, repeats_corpus), model=tiny_model)
    return db, summary


def test_stored_prompts_are_distinct_with_their_multiplicity_and_documents(repeats_run):
    db, summary = repeats_run
    c = sqlite3.connect(db)
    rows = c.execute("SELECT neuron_id, split, token_ids, text, doc_idx, multiplicity, doc_idxs "
                     "FROM prompts").fetchall()
    assert rows
    per = Counter((nid, split, ids) for nid, split, ids, *_ in rows)
    assert max(per.values()) == 1  # no two prompts of a neuron and split with the same token ids
    docs = {(s, i): t for s, i, t in c.execute("SELECT split, idx, text FROM documents")}
    merged = 0
    for _nid, split, _ids, text, doc_idx, mult, doc_idxs in rows:
        idxs = json.loads(doc_idxs)
        assert len(idxs) == mult == len(set(idxs)) and idxs[0] == doc_idx
        assert all(text in docs[(split, i)] for i in idxs)  # every occurrence's document holds the prompt
        merged += mult - 1
    assert merged > 0  # the repeated documents were merged somewhere
    assert merged == sum(r["repeats_merged"] for r in summary["repeats"].values())
    # the reserve: a neuron and split has top_k distinct prompts, or read every positive top document
    tops = dict(((layer, neuron, split), n) for layer, neuron, split, n in c.execute(
        "SELECT layer, neuron, split, count(*) FROM top_activations WHERE act > 0 "
        "GROUP BY layer, neuron, split"))
    for layer, neuron, split, n, docs_read in c.execute(
            "SELECT n.layer, n.neuron, p.split, count(*), sum(p.multiplicity) FROM prompts p JOIN neurons n "
            "ON n.id = p.neuron_id GROUP BY n.id, p.split"):
        assert n == TOP_K or docs_read == tops[(layer, neuron, split)], (layer, neuron, split)
    assert max(tops.values()) > TOP_K  # the scan kept a reserve beyond top_k
    assert max(n for (_, _, _), n in tops.items()) <= scan_depth(TOP_K)


def test_every_count_downstream_is_over_distinct_prompts(repeats_run):
    db, _ = repeats_run
    c = sqlite3.connect(db)
    for nid, n_prompts in c.execute("SELECT neuron_id, n_prompts FROM pairs"):
        assert n_prompts == c.execute("SELECT count(*) FROM prompts WHERE neuron_id = ? AND "
                                      "split = 'explain'", (nid,)).fetchone()[0]
    checked = 0
    for eid, pid, score, n_pos, n_neg in c.execute("SELECT id, pair_id, score, n_pos, n_neg "
                                                   "FROM explanations").fetchall():
        ans = c.execute("SELECT c.prompt_id, c.truth, c.predicted, p.token_ids FROM classifications c "
                        "JOIN prompts p ON p.id = c.prompt_id WHERE c.explanation_id = ?", (eid,)).fetchall()
        assert len(ans) == n_pos + n_neg == len({a[3] for a in ans})  # each distinct prompt answered once
        sc = explanation_score([bool(a[1]) for a in ans], [None if a[2] is None else bool(a[2]) for a in ans])
        assert sc.score == score
        abl = c.execute("SELECT a.prompt_id FROM ablations a WHERE a.pair_id = ?", (pid,)).fetchall()
        assert sorted(a[0] for a in abl) == sorted(a[0] for a in ans)  # the same distinct held-out prompts
        checked += 1
    assert checked > 0


@pytest.mark.slow
def test_postgres_stores_the_merged_prompts_row_for_row(repeats_run, pg_server, tiny_model_dir, tiny_model,
                                                       repeats_corpus):
    from context_lookups.precompute.job.pipeline import run_precompute

    db, _ = repeats_run
    url = pg_server.new_database()
    run_precompute(_settings(url, tiny_model_dir, repeats_corpus), model=tiny_model)
    rows = canonical_rows(url)
    assert any(json.loads(r).get("multiplicity", 1) > 1 for r in rows["prompts"])
    assert first_difference(rows, canonical_rows(f"sqlite:///{db}")) is None
