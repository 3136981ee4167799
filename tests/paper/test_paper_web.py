"""The explorer on an imported run next to a run computed here (real SQLite, real HTTP through
TestClient): pages and JSON twins of the imported neurons and pairs, the model-not-available
line, the explainers side by side, and /compare."""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import time
from html import unescape

import pytest
from fastapi.testclient import TestClient

from tests.paper_data import build_paper_web_db, require_sample


@pytest.fixture(scope="module")
def db(tmp_path_factory, precomputed_db):
    require_sample()
    return build_paper_web_db(tmp_path_factory, precomputed_db)


@pytest.fixture(scope="module")
def client(db):
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as c:
        yield c


def _other(db) -> str:
    return sqlite3.connect(db).execute("SELECT slug FROM runs WHERE provenance IS NULL").fetchone()[0]


def test_home_links_compare_and_shows_provenance(client):
    html = client.get("/").text
    assert 'href="/compare"' in html and "b98f23e" in html
    assert "… by the <a class=\"term\" href=\"/glossary#authors-rule\"" in html
    data = client.get("/.json").json()
    run = next(r for r in data["runs"] if r["slug"] == "gpt2-small")
    comp = run["findings"]["comparisons"][0]
    assert (comp["a"], comp["b"], comp["authors_rule"]["n"]) == ("openai:gpt-4", "baseline", 29)


def test_imported_neuron_page(client, db):
    r = client.get("/gpt2-small/neurons/9/1360")
    assert r.status_code == 200
    notices = re.findall(r'<p class="notice model-missing"[^>]*>(.*?)</p>', r.text, re.S)
    assert len(notices) == 1 and "\n" not in notices[0] and "gpt2" in notices[0]
    # one line saying why, no command-line advice; Run is disabled
    assert not re.search(r"LOOKUPS_|python -c|--model|lookups ", notices[0])
    assert re.search(r'<button type="submit" disabled aria-disabled="true"[^>]* '
                     r'title="Live passes are off', r.text)
    n_prompts = sqlite3.connect(db).execute(
        "SELECT count(*) FROM prompts p JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = n.run_id "
        "WHERE r.slug = 'gpt2-small' AND n.layer = 9 AND n.neuron = 1360 AND p.split = 'explain'"
    ).fetchone()[0]
    assert r.text.count('class="tok max"') == n_prompts  # the firing token of every prompt
    assert "act 0." not in r.text and "per-token activations not recorded" in r.text
    assert "Top-3 heads" in r.text
    j = client.get("/gpt2-small/neurons/9/1360.json").json()
    assert j["neuron"]["token"] == " they" and all(p["acts"] == [] for p in j["prompts"])
    assert all(p["max_pos"] == len(p["tokens"]) - 1 for p in j["prompts"])
    # /healthz knew at start; a live request answers at once, with the reason, never an error page
    h = client.get("/healthz").json()
    assert h["models"]["gpt2-small"].startswith("unavailable: ") and h["live"]["gpt2-small"] is False
    t0 = time.monotonic()
    r = client.get("/gpt2-small/neurons/9/1360", params={"prompt": "They said"})
    assert time.monotonic() - t0 < 10
    assert r.status_code == 503 and "Top-3 heads" in r.text and 'role="alert"' in r.text
    assert "not on this server" in r.text and "--model" not in r.text


def test_imported_run_reads_as_what_it_is(client):
    # GPT-4's explanation with the lead-in of the authors' prompt, in every view
    lead = "This attention head is active when the document"
    page = client.get("/gpt2-small/neurons/9/1690").text
    assert page.count(lead) == 2  # both kept pairs' GPT-4 explanations
    pairs = client.get("/gpt2-small/pairs.json", params={"explainer": "openai:gpt-4"}).json()["pairs"]
    assert len(pairs) == 29 and all(p["explanation"].startswith(lead + " ") for p in pairs)
    rows = list(csv.DictReader(io.StringIO(client.get("/gpt2-small/pairs.csv",
                                                      params={"explainer": "openai:gpt-4"}).text)))
    assert len(rows) == 29 and all(r["explanation"].startswith(lead) for r in rows)
    pair = client.get("/gpt2-small/neurons/9/1690/heads/8/1").text
    assert pair.count(lead) == 1
    # no raw status strings: a single-class pair and a neuron whose records could not be matched
    r = client.get("/gpt2-small/neurons/9/1360/heads/7/4").text
    assert "single class" in r and ">single_class<" not in r
    r = client.get("/gpt2-small/neurons/9/2209").text
    assert "records_not_matched" not in r
    assert "could not be matched to the explain and held-out prompt texts" in r
    # best E by the run's own rule (the authors'), the project's alongside
    j = client.get("/gpt2-small/neurons/10/1687.json").json()
    assert j["best"]["rule"] == "authors" and j["best"]["score"] == pytest.approx(1.0)
    assert j["best"]["other_rule"] == "project" and j["best"]["other"] == pytest.approx(0.596, abs=5e-4)
    assert j["neuron"]["best_score"] == pytest.approx(1.0)
    html = client.get("/gpt2-small/neurons/10/1687").text
    assert re.search(r"best E <span[^>]*>1\.000</span> \(authors(&#39;|') rule; "
                     r"project(&#39;|')s rule <span[^>]*>0\.596", html)
    # the authors' dates and the import date, as such
    run = next(x for x in client.get("/.json").json()["runs"] if x["slug"] == "gpt2-small")
    assert run["started_at"].startswith("2023-10-11T19:07:38") and run["finished_at"].startswith("2023-10-14")
    assert run["imported_at"][:4] >= "2025" and run["missing"] == []
    home = client.get("/").text
    assert "authors' run" in home and "imported" in home
    # ablation: where the figures come from, both statistics labelled
    assert "per-pair means (authors')" in home and "per prompt (project's)" in home
    assert "0.3985" in home and "0.0156" in home
    abl = run["findings"]["ablation"]["zero"]["next_token"]
    assert abl["authors"]["ks"]["D"] == pytest.approx(0.3985, abs=1e-4)
    j = client.get("/gpt2-small/neurons/9/2209/heads/7/0.json").json()
    assert j["state"]["ablation"]["state"] == "imported"
    assert "7_head_ablation/" in j["state"]["ablation"]["reason"]
    assert j["ablation_summary"]["zero"]["authors_mean"]["records"] == 30  # the authors' 30 records, 21 texts
    assert "7_head_ablation/nh_token_prob_attn_ablated_vs_normal_noabs_small.pkl" in \
        client.get("/gpt2-small/neurons/9/2209/heads/7/0").text


@pytest.fixture(scope="module")
def partial_client(tmp_path_factory):
    """The sample without its answer files and ablation file: an imported run that lacks them."""
    import shutil

    from context_lookups.app.main import create_app
    from tests.paper_data import copy_sample, import_sample

    d = tmp_path_factory.mktemp("partial-web")
    src = copy_sample(d / "experiment_data")
    for p in (src / "6_explanation_eval").glob("*_results.jsonl"):
        p.unlink()
    shutil.rmtree(src / "7_head_ablation")
    db = d / "p.db"
    import_sample(db, src)
    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as c:
        yield c


def test_partial_import_says_unanswered_and_not_in_the_data(partial_client):
    c = partial_client
    for url in ("/gpt2-small/neurons/9/1360/heads/7/4", "/gpt2-small/neurons/9/1360", "/"):
        html = unescape(c.get(url).text)
        assert "not computed yet" not in html.lower() and "lookups precompute" not in html, url
        assert "single_class" not in html and "0 active / 0 inactive" not in html, url
    pair = unescape(c.get("/gpt2-small/neurons/9/1360/heads/7/4").text)
    assert "unanswered" in pair and "E cannot be computed" in pair
    assert "not in the authors' data" in pair and "no ablation file of these pairs" in pair
    j = c.get("/gpt2-small/neurons/9/1360/heads/7/4.json").json()
    assert j["state"]["ablation"]["state"] == "not_in_data"
    assert j["explanations"][0]["status_text"].startswith("unanswered")
    run = c.get("/.json").json()["runs"][0]
    assert run["status"] == "partial" and len(run["missing"]) == 2
    t = run["findings"]["explanations"]["openai:gpt-4"]["kinds"]["next_token"]
    assert (t["unanswered"], t["single_class"]) == (29, 0)
    home = unescape(c.get("/").text)
    assert "held-out answers" in home and "no E" in home


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
    answered = [h for h in j["heldout"] if h["classifications"]]
    assert len(answered) == 20
    assert all(set(h["classifications"]) == {"baseline", "openai:gpt-4"} for h in answered)
    assert all(h["ablations"] for h in j["heldout"])  # the ablation covers every held-out prompt


def test_imported_pair_says_the_lookup_needs_the_model(client):
    """An imported run has no weights: the pair page says in one line that the per-source
    decomposition needs the model, and its JSON has no look-up."""
    html = client.get("/gpt2-small/neurons/9/1690/heads/8/1").text
    lines = re.findall(r'<p class="empty state" id="lookup-state">(.*?)</p>', html, re.DOTALL)
    assert len(lines) == 1 and "\n" not in lines[0] and "needs the model" in lines[0]
    j = client.get("/gpt2-small/neurons/9/1690/heads/8/1.json").json()
    assert j["lookup"]["state"]["state"] == "not_in_data"
    assert all(p["lookup"] is None for p in j["active"] + j["inactive"] + j["heldout"])


def test_compare(client, db):
    other = _other(db)
    r = client.get("/compare", params={"runs": f"gpt2-small,{other}"})
    assert r.status_code == 200 and r.text.count('<polygon class="series"') == 2
    j = client.get("/compare.json", params={"runs": f"gpt2-small,{other}"}).json()
    assert [c["run"]["slug"] for c in j["runs"]] == ["gpt2-small", other]
    g = j["runs"][0]
    assert g["explanations"]["openai:gpt-4"]["next_token"]["authors"]["mean"] == pytest.approx(0.6627,
                                                                                               abs=1e-4)
    assert g["pairs"] == {"pairs": g["pairs"]["pairs"], "kept": 29}
    assert {row["layer"] for row in j["layer_rows"]} >= {9, 10, 11}
    assert j["layer_rows"][-1]["cells"][0]["next_token"] == 4
    assert len(j["runs"][0]["distribution"]["scores"]) == 29
    # repeated parameter (the form) = comma form; unknown run: 404 naming the runs
    j2 = client.get(f"/compare.json?runs=gpt2-small&runs={other}").json()
    assert j2["run_names"] == j["run_names"]
    r = client.get("/compare.json", params={"runs": "gpt2-small,nope"})
    assert r.status_code == 404 and "gpt2-small" in r.json()["detail"]
    compared = client.get("/compare.json", params={"rule": "project"}).json()
    assert compared["runs"][0]["distribution"]["rule"] == "project"
