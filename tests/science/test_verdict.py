"""The findings verdict and the uncertainty of E (docs/method.md §5, §8): Wilson intervals equal
scipy's, the combined interval of E covers it, the bootstrap is scipy's with the documented
settings and seeded, the three-way rule, and a real run's verdict recomputed from its stored
rows; the home page, compare page and lists show what the verdict computed."""

from __future__ import annotations

import re
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from context_lookups.precompute.explain.scoring import authors_score, score_interval, small_sample, wilson
from context_lookups.precompute.findings.verdict import (
    CONFIDENCE,
    DOES_NOT,
    INCONCLUSIVE,
    MIN_PAIRS,
    N_RESAMPLES,
    NOT_MEASURED,
    REPRODUCES,
    SEED,
    claim,
    decide,
    paper_reference,
)
from tests.web_fixtures import TOPK_RUN


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 5), (3, 5), (5, 5), (2, 8), (7, 20), (19, 20),
                                 (50, 100)])
@pytest.mark.parametrize("confidence", [0.95, 0.975])
def test_wilson_equals_scipy(k, n, confidence):
    ci = stats.binomtest(k, n).proportion_ci(confidence, method="wilson")
    assert wilson(k, n, confidence) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson(6, 5)
    assert wilson(0, 0) is None


def test_interval_of_e_holds_e_and_narrows_with_n():
    for tp, fn, tn, fp in [(2, 0, 6, 2), (1, 1, 4, 4), (10, 0, 10, 0), (0, 3, 3, 0)]:
        e = 0.5 * (tp / (tp + fn) + tn / (tn + fp))
        lo, hi = score_interval(tp, fn, tn, fp)
        assert 0 <= lo <= e <= hi <= 1
        # Bonferroni: the ends are the means of the 97.5% Wilson ends of the two rates
        a, b = wilson(tp, tp + fn, 0.975), wilson(tn, tn + fp, 0.975)
        assert (lo, hi) == pytest.approx(((a[0] + b[0]) / 2, (a[1] + b[1]) / 2))
    small = score_interval(2, 0, 8, 0)
    large = score_interval(20, 0, 80, 0)
    assert large[1] - large[0] < small[1] - small[0]
    assert score_interval(3, 1, 0, 0) is None  # one class: E undefined by the project's rule
    assert score_interval(3, 1, 0, 0, rule="authors") == pytest.approx(wilson(3, 4))
    assert small_sample(2, 8) and small_sample(5, 4) and not small_sample(5, 5)


def test_decide_is_the_stated_rule():
    assert decide(0.51, 0.9, 0.5) == REPRODUCES
    assert decide(0.2, 0.49, 0.5) == DOES_NOT
    assert decide(0.45, 0.55, 0.5) == INCONCLUSIVE
    assert decide(0.5, 0.6, 0.5) == INCONCLUSIVE  # touching the null value is not beating it
    assert decide(None, 0.6, 0.5) == NOT_MEASURED


def test_claim_bootstraps_with_scipy_seeded():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0.4, 1.0, 30).round(3), rng.uniform(0.3, 0.9, 25).round(3)
    c = claim([a, b], null=0.0, paper=0.017)
    ref = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), vectorized=True,
                          n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE, method="BCa",
                          rng=np.random.default_rng(SEED)).confidence_interval
    assert (c["lo"], c["hi"]) == pytest.approx((ref.low, ref.high))
    assert c["value"] == pytest.approx(a.mean() - b.mean()) and c["lo"] < c["value"] < c["hi"]
    assert c["n"] == [30, 25] and claim([a, b], null=0.0, paper=0.017) == c  # seeded: the same again
    assert c["paper_inside"] == (c["lo"] <= 0.017 <= c["hi"])
    assert claim([a], null=0.5, paper=0.65)["verdict"] == REPRODUCES  # mean ~0.7, n 30
    assert claim([1 - a], null=0.5, paper=0.65)["verdict"] == DOES_NOT
    noisy = rng.uniform(0.0, 1.0, 12)
    assert claim([noisy, noisy[::-1]], null=0.0, paper=None)["verdict"] == INCONCLUSIVE
    few = claim([[0.9] * (MIN_PAIRS - 1)], null=0.5, paper=0.65)
    assert few["verdict"] == NOT_MEASURED and few["value"] is None and "at least" in few["reason"]
    flat = claim([[0.75] * 10], null=0.5, paper=0.65)  # all equal: BCa is degenerate, percentile is not
    assert (flat["lo"], flat["hi"], flat["verdict"]) == (0.75, 0.75, REPRODUCES)


def test_paper_reference():
    assert paper_reference("gpt2")["model"] == "gpt2-small" and paper_reference("gpt2")["same_model"]
    assert paper_reference("EleutherAI/pythia-160m")["E"] == (0.621, 0.206)
    emb = paper_reference("embedded", "embedded")
    assert emb["model"] == "gpt2-small" and not emb["same_model"] and emb["E_random"] == (0.558, 0.191)
    assert paper_reference("gpt2-large")["drop"] == (0.0063, 0.0011, 2e-23)


@pytest.fixture(scope="module")
def client(web_db):
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=f"sqlite:///{web_db}", torch_threads=None, preload=False)) as c:
        yield c


def test_verdict_of_a_real_run_from_its_rows(client, web_db):
    """The top-3 run's verdict recomputed here from the stored explanations and ablations."""
    con = sqlite3.connect(f"file:{web_db}?mode=ro", uri=True)
    scores = {kind: [s for (s,) in con.execute(
        "SELECT e.score FROM explanations e JOIN pairs p ON p.id = e.pair_id "
        "JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = p.run_id "
        "WHERE r.slug = ? AND p.kept AND n.kind = ? AND e.explainer = 'baseline' "
        "AND e.score IS NOT NULL", (TOPK_RUN, kind))] for kind in ("next_token", "random")}
    means: dict[bool, list[float]] = {True: [], False: []}
    for _pid, active, mean in con.execute(
            "SELECT a.pair_id, a.active, avg(a.\"drop\") FROM ablations a JOIN pairs p ON p.id = a.pair_id "
            "JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = p.run_id "
            "WHERE r.slug = ? AND n.kind = 'next_token' "
            "AND a.method = 'zero' GROUP BY a.pair_id, a.active", (TOPK_RUN,)):
        means[bool(active)].append(mean)
    con.close()
    run = next(r for r in client.get("/.json").json()["runs"] if r["slug"] == TOPK_RUN)
    v = run["findings"]["verdict"]
    assert v["rule"] == "project" and v["paper"]["label"] == "GPT-2 small"
    ex = v["explanations"][0]
    assert ex["explainer"] == "baseline"
    assert ex["vs_chance"] == claim([scores["next_token"]], null=0.5, paper=0.65)
    assert ex["vs_random"]["n"] == [len(scores["next_token"]), len(scores["random"])]
    assert ex["vs_random"]["value"] == pytest.approx(np.mean(scores["next_token"])
                                                     - np.mean(scores["random"]))
    drop = v["ablation"][0]["drop"]
    assert drop["n"] == [len(means[True]), len(means[False])]
    assert drop["value"] == pytest.approx(np.mean(means[True]) - np.mean(means[False]))
    assert drop["paper"] == pytest.approx(0.0193 - 0.0075)
    # the home page shows each verdict word, the intervals and the stated rule
    html = client.get("/").text
    for c in (ex["vs_chance"], ex["vs_random"], drop):
        assert f'class="verdict v-{c["verdict"]}"' in html
    assert f"{ex['vs_chance']['lo']:.3f}, {ex['vs_chance']['hi']:.3f}]" in html
    assert "lies on the paper&#39;s side of the null value" in html
    assert re.search(r'finished <time datetime="[0-9T:.-]+">'
                     r'\d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d UTC</time>', html)
    assert not re.search(r">\d{4}-\d\d-\d\dT", html)  # no raw ISO date shown
    # the compare page shows the same verdicts side by side
    cmp = client.get("/compare.json", params={"runs": TOPK_RUN}).json()
    assert [r["cells"][0]["verdict"] for r in cmp["verdict_rows"]] == [
        ex["vs_chance"]["verdict"], ex["vs_random"]["verdict"], drop["verdict"],
        v["ablation"][0]["vs_random"]["verdict"]]
    assert 'class="data compare verdicts' in client.get("/compare", params={"runs": TOPK_RUN}).text


def test_single_class_pairs_scored_by_authors_rule_for_imported_runs(tmp_path):
    """An imported run is judged by the authors' rule: its single-class pairs count."""
    from context_lookups.app.main import create_app
    from tests.paper_data import import_sample

    url = import_sample(tmp_path / "paper.db")
    con = sqlite3.connect(tmp_path / "paper.db")
    rows = con.execute("SELECT e.score, e.tpr, e.tnr FROM explanations e JOIN pairs p ON p.id = e.pair_id "
                       "WHERE p.kept AND e.status != 'failed'").fetchall()
    con.close()
    auth = [a for a in (authors_score(*r) for r in rows) if a is not None]
    with TestClient(create_app(db_url=url, torch_threads=None, preload=False)) as c:
        v = c.get("/.json").json()["runs"][0]["findings"]["verdict"]
    assert v["rule"] == "authors" and v["paper"]["same_model"]
    gpt4 = v["explanations"][0]
    assert gpt4["explainer"] == "openai:gpt-4" and gpt4["vs_chance"]["n"] == [len(auth)]
    assert gpt4["vs_chance"]["value"] == pytest.approx(np.mean(auth))
    assert gpt4["vs_random"]["verdict"] == NOT_MEASURED  # no random neurons in the authors' data


def test_every_e_in_lists_carries_n_and_interval(client, web_db):
    """The pairs list, the head page and the neuron list give each E its held-out n and
    interval (JSON and HTML), flag small samples, and sort and filter by n."""
    data = client.get(f"/{TOPK_RUN}/pairs.json", params={"per_page": 500}).json()
    scored = [p for p in data["pairs"] if p["score"] is not None]
    assert scored
    for p in scored:
        assert p["e_lo"] <= p["score"] <= p["e_hi"]
        assert p["n_answered_active"] + p["n_answered_inactive"] <= p["n_pos"] + p["n_neg"]
        assert p["small_sample"] == small_sample(p["n_answered_active"], p["n_answered_inactive"])
    by_n = client.get(f"/{TOPK_RUN}/pairs.json", params={"sort": "n", "per_page": 500}).json()["pairs"]
    smaller = [min(p["n_pos"], p["n_neg"]) for p in by_n if p["n_pos"] is not None]
    assert smaller == sorted(smaller, reverse=True)
    k = sorted(smaller)[len(smaller) // 2]
    kept = client.get(f"/{TOPK_RUN}/pairs.json", params={"min_n": k, "per_page": 500}).json()
    assert kept["total"] == sum(s >= k for s in smaller)
    html = client.get(f"/{TOPK_RUN}/pairs").text
    assert html.count('class="e-val"') == sum(p["score"] is not None for p in data["pairs"][:100])
    assert "n&nbsp;" in html and ('⚑&nbsp;small' in html) == any(p["small_sample"] for p in scored[:100])
    p0 = scored[0]
    head = client.get(f"/{TOPK_RUN}/heads/{p0['head_layer']}/{p0['head']}.json").json()
    row = next(r for r in head["pairs"] if (r["layer"], r["neuron"]) == (p0["layer"], p0["neuron"]))
    assert row["best_score"] is not None and row["n_pos"] is not None
    assert row["e_lo"] <= row["best_score"] <= row["e_hi"]
    neurons = client.get(f"/{TOPK_RUN}/neurons.json", params={"per_page": 500}).json()["neurons"]
    best = [n for n in neurons if n["best_score"] is not None]
    assert best and all(n["e_lo"] <= n["best_score"] <= n["e_hi"] and n["n_pos"] is not None for n in best)
