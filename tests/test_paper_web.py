"""The explorer on an imported run next to a run computed here (real SQLite, real HTTP through
TestClient): pages and JSON twins of the imported neurons and pairs, the model-not-available
line, the explainers side by side, and /compare."""

from __future__ import annotations

import re
import sqlite3

import pytest
from fastapi.testclient import TestClient

from .paper_data import build_paper_web_db, require_sample


@pytest.fixture(scope="module")
def db(tmp_path_factory, precomputed_db):
    require_sample()
    return build_paper_web_db(tmp_path_factory, precomputed_db)


@pytest.fixture(scope="module")
def client(db):
    from app.main import create_app

    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as c:
        yield c


def _other(db) -> str:
    return sqlite3.connect(db).execute("SELECT slug FROM runs WHERE provenance IS NULL").fetchone()[0]


def test_home_links_compare_and_shows_provenance(client):
    html = client.get("/").text
    assert 'href="/compare"' in html and "b98f23e" in html and "… by the <a class=\"term\" href=\"/glossary#authors-rule\"" in html
    data = client.get("/.json").json()
    run = next(r for r in data["runs"] if r["slug"] == "gpt2-small")
    comp = run["findings"]["comparisons"][0]
    assert (comp["a"], comp["b"], comp["authors_rule"]["n"]) == ("openai:gpt-4", "baseline", 29)


def test_imported_neuron_page(client, db):
    r = client.get("/gpt2-small/neurons/9/1360")
    assert r.status_code == 200
    notices = re.findall(r'<p class="notice model-missing">(.*?)</p>', r.text, re.S)
    assert len(notices) == 1 and "\n" not in notices[0] and "gpt2" in notices[0]
    assert "LOOKUPS_MODEL_PATHS" in notices[0]
    n_prompts = sqlite3.connect(db).execute(
        "SELECT count(*) FROM prompts p JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = n.run_id "
        "WHERE r.slug = 'gpt2-small' AND n.layer = 9 AND n.neuron = 1360 AND p.split = 'explain'").fetchone()[0]
    assert r.text.count('class="tok max"') == n_prompts  # the firing token of every prompt
    assert "act 0." not in r.text and "per-token activations not recorded" in r.text
    assert "Top-3 heads" in r.text
    j = client.get("/gpt2-small/neurons/9/1360.json").json()
    assert j["neuron"]["token"] == " they" and all(p["acts"] == [] for p in j["prompts"])
    assert all(p["max_pos"] == len(p["tokens"]) - 1 for p in j["prompts"])
    # a live pass on a model that cannot be loaded: the page, with the reason, never an error page
    r = client.get("/gpt2-small/neurons/9/1360", params={"prompt": "They said"})
    assert r.status_code == 503 and "Top-3 heads" in r.text and 'role="alert"' in r.text


def test_pair_page_explainers_side_by_side(client):
    r = client.get("/gpt2-small/neurons/9/1690/heads/8/1")
    assert r.status_code == 200
    assert 'class="side explanations"' in r.text
    blocks = re.findall(r'data-explainer="([^"]+)"', r.text)
    assert sorted(blocks) == ["baseline", "openai:gpt-4"]
    assert "Cut at the explainer" in r.text  # (9, 1690, 97) stopped at max_tokens
    j = client.get("/gpt2-small/neurons/9/1690/heads/8/1.json").json()
    gpt = next(e for e in j["explanations"] if e["explainer"] == "openai:gpt-4")
    assert gpt["score"] == pytest.approx(0.8167, abs=1e-4) and gpt["truncated"]
    # a single-class pair: E undefined by the project's rule, TPR only by the authors'
    j = client.get("/gpt2-small/neurons/9/1360/heads/7/4.json").json()
    gpt = next(e for e in j["explanations"] if e["explainer"] == "openai:gpt-4")
    assert gpt["score"] is None and gpt["score_authors"] == pytest.approx(0.75)
    assert all(set(h["classifications"]) == {"baseline", "openai:gpt-4"} for h in j["heldout"])


def test_compare(client, db):
    other = _other(db)
    r = client.get("/compare", params={"runs": f"gpt2-small,{other}"})
    assert r.status_code == 200 and r.text.count('<polygon class="series"') == 2
    j = client.get("/compare.json", params={"runs": f"gpt2-small,{other}"}).json()
    assert [c["run"]["slug"] for c in j["runs"]] == ["gpt2-small", other]
    g = j["runs"][0]
    assert g["explanations"]["openai:gpt-4"]["next_token"]["authors"]["mean"] == pytest.approx(0.6627, abs=1e-4)
    assert g["pairs"] == {"pairs": g["pairs"]["pairs"], "kept": 29}
    assert {row["layer"] for row in j["layer_rows"]} >= {9, 10, 11}
    assert j["layer_rows"][-1]["cells"][0]["next_token"] == 4
    assert len(j["runs"][0]["distribution"]["scores"]) == 29
    # repeated parameter (the form) = comma form; unknown run: 404 naming the runs
    j2 = client.get(f"/compare.json?runs=gpt2-small&runs={other}").json()
    assert j2["run_names"] == j["run_names"]
    r = client.get("/compare.json", params={"runs": "gpt2-small,nope"})
    assert r.status_code == 404 and "gpt2-small" in r.json()["detail"]
    assert client.get("/compare.json", params={"rule": "project"}).json()["runs"][0]["distribution"]["rule"] == "project"
