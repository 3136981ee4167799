"""A start that leads somewhere (issue 28 item 5): the home page lists each run's strongest pairs
(E interval above chance with enough distinct held-out prompts per class, by the lower bound),
recomputed here from the stored answers; the neuron list opens on neurons with a kept pair; the
embedded run says what its model is and links its model card, a page of the explorer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from context_lookups.precompute.core.settings import EMBEDDED_MODEL
from context_lookups.precompute.explain.scoring import MIN_HELDOUT_PER_CLASS, score_interval
from tests.conftest import small_settings
from tests.paper_data import import_sample


def _client(db: Path) -> TestClient:
    from context_lookups.app.main import create_app

    return TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None, preload=False))


@pytest.fixture(scope="module")
def paper_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("start-paper") / "lookups.db"
    import_sample(db)
    return db


@pytest.fixture(scope="module")
def embedded_db(tmp_path_factory, small_corpus_dir) -> Path:
    """The embedded model (its run is named 'embedded') on the small corpus, the paper's 2-sigma
    rule: some neurons keep pairs, some do not."""
    from context_lookups.precompute.job.pipeline import run_precompute

    db = tmp_path_factory.mktemp("start-embedded") / "lookups.db"
    run_precompute(small_settings(db, EMBEDDED_MODEL, small_corpus_dir, layers=[2, 3], n_per_layer=4,
                                  active_rule="2sigma", explainer="none", ablation="none"))
    return db


def _strongest_from_rows(db: Path, slug: str) -> list[tuple[str, float]]:
    """The rule, recomputed from the stored answers: per kept pair its explanations' 95 % interval
    of E from their Yes/No answers; those with at least MIN_HELDOUT_PER_CLASS answered prompts per
    class and a lower bound above 0.5; a pair's best lower bound; highest first, five."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    best: dict[int, tuple[float, float, str]] = {}
    for eid, pid, score, layer, neuron, hl, h in con.execute(
            "SELECT e.id, p.id, e.score, n.layer, n.neuron, p.head_layer, p.head FROM explanations e "
            "JOIN pairs p ON p.id = e.pair_id JOIN neurons n ON n.id = p.neuron_id "
            "JOIN runs r ON r.id = p.run_id WHERE r.slug = ? AND p.kept AND e.score IS NOT NULL",
            (slug,)).fetchall():
        ans = con.execute("SELECT truth, predicted FROM classifications WHERE explanation_id = ? "
                          "AND predicted IS NOT NULL", (eid,)).fetchall()
        tp, fn = sum(t and p for t, p in ans), sum(t and not p for t, p in ans)
        tn, fp = sum(not t and not p for t, p in ans), sum(not t and p for t, p in ans)
        if min(tp + fn, tn + fp) < MIN_HELDOUT_PER_CLASS:
            continue
        lo = score_interval(tp, fn, tn, fp)[0]
        if lo > 0.5 and (pid not in best or (lo, score) > best[pid][:2]):
            best[pid] = (lo, score, f"L{hl}H{h} L{layer}N{neuron}")
    con.close()
    ranked = sorted(best.values(), key=lambda x: (-x[0], -x[1]))[:5]
    return [(name, lo) for lo, _, name in ranked]


def test_home_lists_the_strongest_pairs_by_the_lower_bound_of_e(paper_db):
    want = _strongest_from_rows(paper_db, "gpt2-small")
    assert len(want) == 5  # the sample has more than five such pairs: the list is cut at five
    with _client(paper_db) as c:
        run = next(r for r in c.get("/.json").json()["runs"] if r["slug"] == "gpt2-small")
        got = run["strongest"]
        assert [(f"{p['head']} L{p['layer']}N{p['neuron']}", p["e_lo"]) for p in got] == \
            [(name, pytest.approx(lo)) for name, lo in want]
        assert all(p["n_answered_active"] >= MIN_HELDOUT_PER_CLASS <= p["n_answered_inactive"] for p in got)
        html = c.get("/").text
        listed = html.split('<ol class="strongest">')[1].split("</ol>")[0]
        assert [p["url"] for p in got] == [seg.split('"')[0] for seg in listed.split('<a href="')[1:]
                                           if "/heads/" in seg.split('"')[0]]
        for p in got:  # each link opens its pair
            assert c.get(p["url"]).status_code == 200


def test_a_run_without_such_pairs_says_why(embedded_db):
    with _client(embedded_db) as c:
        run = c.get("/.json").json()["runs"][0]
        assert run["strongest"] == []
        html = c.get("/").text
        assert 'class="empty strongest-none"' in html and "(no explanations in this run)" in html


def test_neuron_list_opens_on_neurons_with_kept_pairs(embedded_db):
    con = sqlite3.connect(f"file:{embedded_db}?mode=ro", uri=True)
    kept = {(layer, neuron) for layer, neuron in con.execute(
        "SELECT DISTINCT n.layer, n.neuron FROM pairs p JOIN neurons n ON n.id = p.neuron_id WHERE p.kept")}
    con.close()
    with _client(embedded_db) as c:
        rows = c.get("/embedded/neurons.json", params={"per_page": 500}).json()["neurons"]
        flags = [(n["layer"], n["neuron"]) in kept for n in rows]
        assert any(flags) and not all(flags)  # both kinds of neuron are listed
        first_without = flags.index(False)
        assert all(flags[:first_without]) and not any(flags[first_without:])
        lead = rows[:first_without]  # within each group: next-token, then random, by congruence
        assert [n["kind"] for n in lead] == sorted((n["kind"] for n in lead),
                                                   key=["next_token", "random"].index)
        assert "those with a kept pair first" in c.get("/embedded/neurons").text
        # another order is the user's: by congruence only
        by_c = c.get("/embedded/neurons.json", params={"sort": "congruence", "order": "desc",
                                                       "per_page": 500}).json()["neurons"]
        cs = [n["congruence"] for n in by_c]
        assert cs == sorted(cs, reverse=True) and [(n["layer"], n["neuron"]) in kept for n in by_c] != flags


def test_embedded_run_names_its_model_and_links_its_card(embedded_db, paper_db):
    card = (Path(EMBEDDED_MODEL) / "MODEL_CARD.md").read_text(encoding="utf-8")
    with _client(embedded_db) as c:
        run = c.get("/.json").json()["runs"][0]
        note = run["model_note"]
        assert run["slug"] == "embedded" and "GPT-2" in note["text"]
        assert "trained by this project" in note["text"]
        assert note["card"] == "/models/embedded" and f'href="{note["card"]}"' in c.get("/").text
        page = c.get("/models/embedded")
        assert page.status_code == 200
        assert "<h1>Embedded model: <code>lookups-gpt2-4l-d256</code></h1>" in page.text
        assert '<img src="/models/embedded/loss_curve.png"' in page.text and "<table>" in page.text
        assert c.get("/models/embedded.json").json()["markdown"] == card
        png = c.get("/models/embedded/loss_curve.png")
        assert png.headers["content-type"] == "image/png"
        assert png.content == (Path(EMBEDDED_MODEL) / "loss_curve.png").read_bytes()
        assert c.get("/models/embedded/model.safetensors").status_code == 404  # only the card's figures
    with _client(paper_db) as c:  # the authors' runs name their model; no embedded card
        assert c.get("/.json").json()["runs"][0]["model_note"] is None
