"""Explanation scores and the baseline explainer (paper §4.4, docs/method.md §4-§5).

Unit tests on hand-made confusion matrices and constructed prompts whose answer is known, and
integration tests on a copy of the real precomputed database."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sqlalchemy import select

from context_lookups.precompute.cli import main as cli_main
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.explain.explainers import Example, PairTask, explainer_name, parse_answer
from context_lookups.precompute.explain.explainers.baseline import (
    best_threshold,
    explain_pair,
    features,
    fit,
    log_odds_z,
)
from context_lookups.precompute.explain.scoring import describe as _describe
from context_lookups.precompute.explain.scoring import explanation_score
from context_lookups.precompute.explain.step import load_tasks, run_explanations, store_result
from context_lookups.precompute.findings.report import find_run, score_table
from context_lookups.precompute.store.db import open_writer, sessions
from context_lookups.precompute.store.schema import Classification, Explanation, Neuron, Pair, Prompt
from tests.helpers.explain_db import fresh_copy


@pytest.fixture
def db_copy(tmp_path, precomputed_db) -> Path:
    return fresh_copy(precomputed_db, tmp_path / "lookups.db")


def _kept(db: Path) -> int:
    c = sqlite3.connect(db)
    n = c.execute("SELECT count(*) FROM pairs WHERE kept").fetchone()[0]
    c.close()
    return n


# --- the score ------------------------------------------------------------------------------

def test_score_on_hand_made_confusion_matrices():
    # TP 2, FN 1, TN 1, FP 1: E = ½(2/3 + 1/2) = 7/12
    s = explanation_score([True, True, True, False, False], [True, True, False, False, True])
    assert (s.tp, s.fn, s.tn, s.fp) == (2, 1, 1, 1)
    assert s.score == pytest.approx(7 / 12) and s.tpr == pytest.approx(2 / 3) and s.tnr == 0.5
    assert (s.n_pos, s.n_neg, s.n_unparsed) == (3, 2, 0)
    # all wrong: E = 0; all right: E = 1; always "Yes": E = 0.5 (chance)
    assert explanation_score([True, False], [False, True]).score == 0.0
    assert explanation_score([True, False, False], [True, False, False]).score == 1.0
    assert explanation_score([True, False, False, False], [True] * 4).score == 0.5
    # unparsed answers are left out of the matrix and counted
    s = explanation_score([True, True, False, False], [True, None, None, False])
    assert s.score == 1.0 and s.n_unparsed == 2 and (s.tp, s.fn, s.tn, s.fp) == (1, 0, 1, 0)
    # no parsed answer on the active prompts: undefined
    s = explanation_score([True, False, False], [None, False, True])
    assert s.score is None and s.tpr is None and s.tnr == 0.5
    # a single class: undefined
    assert explanation_score([False, False], [False, True]).score is None
    with pytest.raises(ValueError):
        explanation_score([True], [True, False])


@pytest.mark.parametrize("answer, expected", [
    ("Yes", True), ("No", False), (" yes", True), ("NO", False), ("Yes.", True), ("**No**", False),
    ('"Yes"', True), ("No, because the example", False), ("\nYes", True),
    ("Maybe", None), ("Y", None), ("Yesterday", None), ("Nope", None), ("", None), (None, None),
    ("...", None), ("The answer is Yes", None)])
def test_parse_answer(answer, expected):
    assert parse_answer(answer) is expected


# --- the baseline on constructed prompts -----------------------------------------------------

FILLER = [" the", " a", " of", " and", " in", " big", " house", " road", " is", " was", " very",
          " old", " man", " saw", " near", " by"]


def _prompt(rng: random.Random, n: int, insert: list[str]) -> list[str]:
    return [rng.choice(FILLER) for _ in range(n)] + insert + [rng.choice(FILLER)]


def _example(i: int, tokens: list[str], active: bool) -> Example:
    return Example(prompt_id=i, text="".join(tokens), tokens=tuple(tokens), active=active)


def _cat_task(seed: int = 0, n_explain: int = 20, n_heldout: int = 10) -> PairTask:
    """Active prompts all have " cat" near the end; inactive ones never do."""
    rng = random.Random(seed)
    ex, ho = [], []
    for i in range(n_explain + n_heldout):
        active = i % 2 == 0
        toks = _prompt(rng, rng.randint(4, 12), [" cat"] if active else [])
        (ex if i < n_explain else ho).append(_example(i, toks, active))
    return PairTask(pair_id=1, neuron_id=1, kind="next_token", label="L1H3", token=" meow",
                    explain=ex, heldout=ho)


def test_baseline_finds_the_known_feature_and_classifies_perfectly():
    task = _cat_task()
    res = explain_pair(task)
    assert res.status == "ok"
    assert res.text.startswith("Baseline") and "no LLM" in res.text
    assert '" cat"' in res.text
    assert res.settings["explainer"] == "baseline"
    assert " cat" in [f for f, _ in res.settings["active_features"]]
    truth = [t for _, t, _ in res.answers]
    preds = [parse_answer(a) for _, _, a in res.answers]
    assert preds == truth  # every held-out prompt right
    assert explanation_score(truth, preds).score == 1.0
    assert [pid for pid, _, _ in res.answers] == [e.prompt_id for e in task.heldout]


def test_baseline_names_inactive_features_and_is_deterministic():
    rng = random.Random(1)
    ex = [_example(i, _prompt(rng, 6, [" cat"] if i % 2 else [" dog"]), bool(i % 2)) for i in range(16)]
    task = PairTask(1, 1, "random", "L0H0", " x", explain=ex,
                    heldout=[_example(100, [" the", " dog", " ran"], False),
                             _example(101, [" the", " cat", " ran"], True)])
    a, b = explain_pair(task), explain_pair(task)
    assert a == b
    assert "inactive when it contains" in a.text and '" dog"' in a.text.split("inactive")[1]
    assert [parse_answer(x) for _, _, x in a.answers] == [False, True]
    # the order of the examples does not matter
    shuffled = PairTask(1, 1, "random", "L0H0", " x", explain=random.Random(5).sample(ex, len(ex)),
                        heldout=task.heldout)
    assert explain_pair(shuffled).text == a.text


def test_baseline_recency_weighting_and_log_odds():
    x = features([" a", " b", " c"], half_life=1.0)
    assert x[" c"] == 1.0 and x[" b"] == 0.5 and x[" a"] == 0.25
    assert x[" b c"] == 1.0 and x[" a b"] == 0.5
    assert features([" a", " b", " a"])[" a"] == 1.0  # latest occurrence counts
    z = log_odds_z([{" cat": 1.0, " the": 1.0}] * 5, [{" the": 1.0, " dog": 0.5}] * 5)
    assert z[" cat"] > 0 > z[" dog"]
    assert abs(z[" the"]) < z[" cat"]


def test_best_threshold_maximises_balanced_accuracy():
    assert best_threshold([0.0, 1.0, 2.0, 3.0], [False, False, True, True]) == 1.5
    t = best_threshold([5.0, 5.0], [True, False])  # no threshold separates: middle candidate
    assert t in (4.0, 6.0)
    scores, truth = [0.1, 0.9, 0.4, 0.8, 0.3], [False, True, False, True, True]
    t = best_threshold(scores, truth)
    pred = [s > t for s in scores]
    best = explanation_score(truth, pred).score
    for c in np.linspace(-1, 2, 61):
        assert explanation_score(truth, [s > c for s in scores]).score <= best + 1e-12


def test_baseline_single_class_and_empty_side():
    task = _cat_task()
    task.heldout = [e for e in task.heldout if e.active]
    assert task.single_class
    res = explain_pair(task)
    # single-class held-out prompts are still answered (the authors' rule scores them by TPR)
    assert res.status == "single_class" and '" cat"' in res.text
    assert [a[0] for a in res.answers] == [e.prompt_id for e in task.heldout]
    with pytest.raises(ValueError):
        fit([], [[" a"]])
    # a one-class explain split (no inactive example): the explanation says so and answers Yes
    one_sided = PairTask(1, 1, "next_token", "L0H0", " x", explain=[e for e in task.explain if e.active],
                         heldout=_cat_task().heldout)
    res = explain_pair(one_sided)
    assert res.status == "ok" and "active on all" in res.text
    assert [parse_answer(a) for _, _, a in res.answers] == [True] * len(one_sided.heldout)
    # ... and never reads the held-out truth: flipping it changes no answer
    flipped = PairTask(1, 1, "next_token", "L0H0", " x", explain=one_sided.explain,
                       heldout=[Example(e.prompt_id, e.text, e.tokens, not e.active)
                                for e in one_sided.heldout])
    assert [a for _, _, a in explain_pair(flipped).answers] == [a for _, _, a in res.answers]
    assert explain_pair(PairTask(1, 1, "next_token", "L0H0", " x", explain=[], heldout=[])).status == "failed"


def test_explainer_name():
    assert explainer_name(Settings(explainer="baseline")) == "baseline"
    assert explainer_name(Settings(explainer="openai", llm_model="m-1")) == "openai:m-1"
    with pytest.raises(ValueError):
        explainer_name(Settings(explainer="none"))


def test_describe_matches_scipy():
    scores = [0.5, 0.55, 0.6, 0.62, 0.7, 0.75, 0.9, 1.0, 0.5, 0.65]
    d = _describe(scores)
    assert d["mean"] == pytest.approx(np.mean(scores)) and d["std"] == pytest.approx(np.std(scores))
    assert d["skew"] == pytest.approx(stats.skew(scores))
    assert d["skewtest"]["pvalue"] == pytest.approx(stats.skewtest(scores).pvalue)
    d = _describe(scores[:7])
    assert d["skewtest"]["pvalue"] is None and "at least 8" in d["skewtest"]["reason"]
    assert _describe([])["mean"] is None
    assert _describe([0.5] * 9)["skewtest"]["reason"] == "all scores are equal"


# --- on the real precomputed database --------------------------------------------------------

def _settings(db: Path, **over) -> Settings:
    return Settings(db_url=f"sqlite:///{db}", heldout_per_pair=6, **over)


def test_run_explanations_on_the_real_database(db_copy):
    kept = _kept(db_copy)
    assert kept >= 4
    engine = open_writer(f"sqlite:///{db_copy}")
    Session = sessions(engine)
    with Session() as s:
        run_id = find_run(s, run_name=None, model=None).id
    out = run_explanations(Session, run_id, None, _settings(db_copy))
    assert out["pairs_done"] == kept == out["ok"] + out["single_class"] + out["failed"]
    assert out["ok"] >= 1
    with Session() as s:
        exps = s.scalars(select(Explanation).where(Explanation.explainer == "baseline")).all()
        assert len(exps) == kept
        for e in exps:
            pair = s.get(Pair, e.pair_id)
            assert pair.kept
            label = f"L{pair.head_layer}H{pair.head}"
            held = s.scalars(select(Prompt)
                             .where(Prompt.neuron_id == pair.neuron_id, Prompt.split == "heldout")
                             .order_by(Prompt.rank).limit(6)).all()
            truth = {p.id: label in p.active for p in held}
            assert (e.n_pos, e.n_neg) == (sum(truth.values()), len(truth) - sum(truth.values()))
            cls = s.scalars(select(Classification).where(Classification.explanation_id == e.id)).all()
            assert e.text.startswith("Baseline")
            if e.status == "single_class":  # answered, but E undefined by the project's rule
                assert len(set(truth.values())) < 2 and e.score is None
                assert {c.prompt_id for c in cls} == set(truth) and (e.tpr is None) != (e.tnr is None)
                continue
            assert e.status == "ok" and {c.prompt_id for c in cls} == set(truth)
            assert all(c.truth == truth[c.prompt_id] for c in cls)
            sc = explanation_score([c.truth for c in cls], [c.predicted for c in cls])
            assert e.score == pytest.approx(sc.score) and 0.0 <= e.score <= 1.0
        # best_score = max E over the neuron's pairs
        for n in s.scalars(select(Neuron).where(Neuron.kind != "other")):
            mine = [e.score for e in exps if e.score is not None and s.get(Pair, e.pair_id).neuron_id == n.id]
            assert n.best_score == (max(mine) if mine else None)
        before = {(e.pair_id, e.text, e.score) for e in exps}

    # a re-run does nothing; redone from scratch it gives the same explanations and scores
    assert run_explanations(Session, run_id, None, _settings(db_copy))["pairs_done"] == 0
    with Session() as s:
        for e in s.scalars(select(Explanation)):
            s.delete(e)
        s.commit()
    assert run_explanations(Session, run_id, None, _settings(db_copy))["pairs_done"] == kept
    with Session() as s:
        assert {(e.pair_id, e.text, e.score) for e in s.scalars(select(Explanation))} == before

    # the score table agrees with the stored rows
    with Session() as s:
        table = score_table(s, run_id=run_id, explainer="baseline")
        for kind, row in table["kinds"].items():
            scores = sorted(e.score for e in s.scalars(select(Explanation).join(Pair).join(Neuron)
                                                       .where(Neuron.kind == kind)) if e.score is not None)
            assert row["scores"] == pytest.approx(scores) and row["n"] == len(scores)
            if scores:
                assert row["mean"] == pytest.approx(np.mean(scores))
                assert row["std"] == pytest.approx(np.std(scores))
            if len(scores) >= 8 and len(set(scores)) > 1:
                assert row["skewtest"]["pvalue"] == pytest.approx(stats.skewtest(scores).pvalue)
            else:
                assert row["skewtest"]["pvalue"] is None and row["skewtest"]["reason"]
        assert sum(r["kept_pairs"] for r in table["kinds"].values()) == kept
        assert all(r["missing"] == 0 for r in table["kinds"].values())
        assert score_table(s, run_id=run_id, explainer="openai:none")["kinds"]["next_token"]["explained"] == 0
    engine.dispose()


def test_failed_explanation_is_replaced_on_rerun(db_copy):
    engine = open_writer(f"sqlite:///{db_copy}")
    Session = sessions(engine)
    with Session() as s:
        run_id = find_run(s, run_name=None, model=None).id
        tasks = load_tasks(s, run_id=run_id, explainer="baseline", heldout_per_pair=6)
        from context_lookups.precompute.explain.explainers import PairResult
        store_result(s, tasks[0], PairResult(status="failed", error="boom"), explainer="baseline")
        assert s.scalar(select(Explanation.status).where(Explanation.pair_id == tasks[0].pair_id)) == "failed"
        assert len(load_tasks(s, run_id=run_id, explainer="baseline", heldout_per_pair=6)) == len(tasks)
    out = run_explanations(Session, run_id, None, _settings(db_copy))
    assert out["pairs_done"] == len(tasks)
    with Session() as s:
        rows = s.scalars(select(Explanation).where(Explanation.pair_id == tasks[0].pair_id)).all()
        assert len(rows) == 1 and rows[0].status in ("ok", "single_class") and rows[0].error is None
    engine.dispose()


def test_explain_command(db_copy, capsys):
    url = f"sqlite:///{db_copy}"
    assert cli_main(["explain", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "explainer baseline" in out and "next_token" in out and "random" in out
    n = sqlite3.connect(db_copy).execute("SELECT count(*) FROM explanations").fetchone()[0]
    assert n == sqlite3.connect(db_copy).execute("SELECT count(*) FROM pairs WHERE kept").fetchone()[0]

    # two runs: one must be chosen
    c = sqlite3.connect(db_copy)
    cols = [r[1] for r in c.execute("PRAGMA table_info(runs)") if r[1] != "id"]
    sel = ",".join("slug || '-2'" if x == "slug" else x for x in cols)
    c.execute(f"INSERT INTO runs ({','.join(cols)}) SELECT {sel} FROM runs")
    c.commit()
    slugs = [r[0] for r in c.execute("SELECT slug FROM runs ORDER BY id")]
    assert cli_main(["explain", "--db", url]) == 2
    err = capsys.readouterr().err
    assert all(repr(x) in err for x in slugs) and "--run-name" in err
    assert cli_main(["explain", "--db", url, "--run-name", slugs[0]]) == 0
    assert cli_main(["explain", "--db", url, "--run-name", "nope"]) == 2
    assert cli_main(["explain", "--db", f"sqlite:///{db_copy.parent / 'missing.db'}"]) == 2
    assert not (db_copy.parent / "missing.db").exists()
    assert cli_main(["explain", "--db", url, "--explainer", "none"]) == 2
    # the LLM explainer against OpenAI itself without a key is refused before anything is sent
    assert cli_main(["explain", "--db", url, "--run-name", slugs[0], "--explainer", "openai",
                     "--llm-api-key-env", "LOOKUPS_TEST_NO_SUCH_KEY"]) == 2
    assert "LOOKUPS_TEST_NO_SUCH_KEY" in capsys.readouterr().err


# --- the baseline's configuration, by cross-validation across neurons ------------------------

def _neuron_tasks(neuron_id: int, seed: int, n_pairs: int = 2) -> list[PairTask]:
    out = []
    for j in range(n_pairs):
        t = _cat_task(seed=seed * 10 + j)
        out.append(PairTask(pair_id=neuron_id * 100 + j, neuron_id=neuron_id, kind="next_token",
                            label=f"L1H{j}", token=" meow", explain=t.explain, heldout=t.heldout))
    return out


def test_baseline_configuration_never_depends_on_the_neurons_own_prompts():
    from context_lookups.precompute.explain.explainers.selection import GRID, choose, cv_scores, explain_with

    pool = [t for n in range(1, 5) for t in _neuron_tasks(n, seed=n)]
    chosen = choose(pool)
    assert set(chosen) == {1, 2, 3, 4} and all(c in GRID for c, _ in chosen.values())
    # the mean CV score that chose neuron 1's configuration is over the other neurons' pairs
    cv = cv_scores(pool)
    j = GRID.index(chosen[1][0])
    others = [cv[t.pair_id][j] for t in pool if t.neuron_id != 1 and cv[t.pair_id][j] is not None]
    assert chosen[1][1] == pytest.approx(sum(others) / len(others))
    # scrambling neuron 1's own explain labels changes nothing of its choice ...
    rng = random.Random(3)
    scrambled = [PairTask(t.pair_id, t.neuron_id, t.kind, t.label, t.token,
                          explain=[Example(e.prompt_id, e.text, e.tokens, rng.random() < 0.5)
                                   for e in t.explain],
                          heldout=t.heldout) if t.neuron_id == 1 else t for t in pool]
    assert choose(scrambled)[1] == chosen[1]
    # ... and the held-out truth is never read: flipping it changes no answer
    t = pool[0]
    flipped = PairTask(t.pair_id, t.neuron_id, t.kind, t.label, t.token, explain=t.explain,
                       heldout=[Example(e.prompt_id, e.text, e.tokens, not e.active) for e in t.heldout])
    a, b = explain_with(t, chosen), explain_with(flipped, chosen)
    assert [x[2] for x in a.answers] == [x[2] for x in b.answers]
    assert a.settings["config"] == chosen[1][0].label()
    assert a.settings["cv"]["mean_bacc_other_neurons"] is not None


def test_out_of_fold_threshold_and_folds():
    from context_lookups.precompute.explain.explainers.baseline import Config, folds

    fs = folds(7, 3)
    assert len(fs) == 3 and sorted(x for f in fs for x in f) == sorted([(True, i) for i in range(7)] +
                                                                        [(False, i) for i in range(3)])
    assert all(any(a for a, _ in f) and any(not a for a, _ in f) for f in fs)  # stratified
    assert folds(5, 1) == []
    t = _cat_task()
    oof = explain_pair(t, Config(threshold="oof"))
    assert oof.settings["threshold_from"] == "oof"
    assert [parse_answer(a) for _, _, a in oof.answers] == [e.active for e in t.heldout]
