"""Full-text search (migration 0004_search, app/pages/search.py) on both backends: a SQLite file and a
real PostgreSQL server (tests/pgserver.py), each holding the small run written by the real
precompute job. Words in stored prompt and explanation texts are found through the HTTP API
with links to their neurons and pairs; phrases, any punctuation and a run filter work; the
index is built for a database migrated with rows in it and follows inserts, updates and
deletes (a run deleted by cascade included); the importer's rows are found too."""

from __future__ import annotations

import re
import sqlite3

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from context_lookups.precompute.store.db import parse_url
from context_lookups.precompute.store.schema import Explanation, Neuron, Pair, Prompt, Run


def _rows(url: str, stmt):
    engine = create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            return conn.execute(stmt).all()
    finally:
        engine.dispose()


def _rare_word(texts: list[str]) -> str:
    """A word of 6+ letters that occurs in few of ``texts`` (so the test checks a real choice)."""
    counts: dict[str, int] = {}
    for t in texts:
        for w in set(re.findall(r"[A-Za-z]{6,}", t)):
            counts[w.lower()] = counts.get(w.lower(), 0) + 1
    return min(counts, key=lambda w: (counts[w], w))


@pytest.fixture(scope="module")
def client(stored_url):
    from context_lookups.app.main import create_app

    app = create_app(db_url=stored_url, torch_threads=None, preload=False)
    with TestClient(app) as c:
        yield c


def test_prompt_words_are_found_with_links(client, stored_url):
    rows = _rows(stored_url, select(Prompt.text, Prompt.split, Prompt.rank, Neuron.layer, Neuron.neuron,
                                    Run.slug)
                 .join(Neuron, Neuron.id == Prompt.neuron_id).join(Run, Run.id == Neuron.run_id))
    word = _rare_word([r.text for r in rows])
    exact = {(r.slug, r.layer, r.neuron, r.split, r.rank) for r in rows
             if re.search(rf"\b{word}\b", r.text, re.I)}
    data = client.get("/search.json", params={"q": word.upper(), "kind": "prompts"}).json()
    got = {(h["run"], h["layer"], h["neuron"], h["split"], h["rank"]) for h in data["prompts"]["items"]}
    assert exact and exact <= got and data["prompts"]["total"] == len(got)
    stem = word[:5].lower()  # stemming may add other forms of the word, never unrelated prompts
    found_texts = {(r.slug, r.layer, r.neuron, r.split, r.rank): r.text for r in rows}
    assert all(stem in found_texts[k].lower() for k in got)
    for h in data["prompts"]["items"]:
        assert h["marks"] and all(stem in h["snippet"][a:b].lower() for a, b in h["marks"])
        assert h["url"].startswith(f"/{h['run']}/neurons/{h['layer']}/{h['neuron']}")
        assert ("split=heldout" in h["url"]) == (h["split"] == "heldout")
        assert client.get(h["url"]).status_code == 200
    html = client.get("/search", params={"q": word}).text
    assert "<mark>" in html and f'href="{data["prompts"]["items"][0]["url"]}"' in html.replace("&amp;", "&")


def test_explanation_words_link_to_their_pairs(client, stored_url):
    rows = _rows(stored_url, select(Explanation.text, Pair.head_layer, Pair.head, Neuron.layer, Neuron.neuron)
                 .join(Pair, Pair.id == Explanation.pair_id).join(Neuron, Neuron.id == Pair.neuron_id))
    assert rows, "the small run has explanations to search"
    quoted = sorted({w for r in rows for w in re.findall(r'"\s?([A-Za-z]{4,})"', r.text or "")})
    word = quoted[0]
    exact = {(r.layer, r.neuron, r.head_layer, r.head) for r in rows
             if re.search(rf"\b{word}\b", r.text or "", re.I)}
    data = client.get("/search.json", params={"q": word}).json()
    got = {(h["layer"], h["neuron"], h["head_layer"], h["head"]) for h in data["explanations"]["items"]}
    assert exact <= got
    h = data["explanations"]["items"][0]
    assert h["url"] == f"/{h['run']}/neurons/{h['layer']}/{h['neuron']}/heads/{h['head_layer']}/{h['head']}"
    page = client.get(h["url"])
    assert page.status_code == 200 and word.lower() in page.text.lower()


def test_phrases_punctuation_and_filters(client, stored_url):
    rows = _rows(stored_url, select(Prompt.text))
    text_ = next(r.text for r in rows if len(re.findall(r"[A-Za-z]{4,}", r.text)) >= 3)
    a, b = re.findall(r"[A-Za-z]{4,}", text_)[:2]
    phrase = re.search(rf"\b{a}\W+{b}\b", text_)
    if phrase:  # the two words next to each other: as a phrase they are found
        d = client.get("/search.json", params={"q": f'"{a} {b}"', "kind": "prompts"}).json()
        assert d["prompts"]["total"] >= 1 and d["terms"] == [[a, b]]
    for hostile in ('"; DROP TABLE prompts; --', "NEAR(a b) OR * ^ -x:y", "'", '"', "()", "a AND", "\\"):
        r = client.get("/search.json", params={"q": hostile})
        assert r.status_code == 200, (hostile, r.text)
    assert client.get("/search.json", params={"q": "   "}).json()["prompts"] == {"total": 0, "items": []}
    slug = _rows(stored_url, select(Run.slug))[0][0]
    assert client.get("/search.json", params={"q": a, "run": slug}).status_code == 200
    r = client.get("/search.json", params={"q": a, "run": "no-such-run"})
    assert r.status_code == 404 and "no-such-run" in r.json()["detail"] and slug in r.json()["detail"]
    r = client.get("/search", params={"q": a, "kind": "prompts", "page": 1})
    assert r.status_code == 200 and r.headers["vary"].endswith("HX-Request")


def _one_prompt_db(url: str) -> None:
    """A run with one neuron and one prompt, written with plain SQL at migration 0002 (a
    database from before search existed)."""
    engine = create_engine(parse_url(url))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO runs (slug, model_name, dataset, settings, settings_hash, "
                          "package_version, n_layers, n_heads, d_mlp, d_model, n_ctx, layers, status, "
                          "started_at) VALUES ('old', 'm', 'd', '{}', 'h', '0', 2, 4, 8, 16, 32, '[1]', "
                          "'complete', '2026-01-01')"))
        rid = conn.execute(text("SELECT id FROM runs")).scalar()
        conn.execute(text("INSERT INTO neurons (run_id, layer, neuron, kind, token, congruence, top_tokens) "
                          "VALUES (:r, 1, 3, 'next_token', ' x', 1.0, '[]')"), {"r": rid})
        nid = conn.execute(text("SELECT id FROM neurons")).scalar()
        conn.execute(text("INSERT INTO prompts (neuron_id, split, rank, text, token_ids, tokens, acts, "
                          "attr_raw, attr_ln, other_ln, active) "
                          "VALUES (:n, 'explain', 0, 'the zanzibar archipelago', "
                          "'[]', '[]', '[]', '[]', '[]', '{}', '[]')"), {"n": nid})
    engine.dispose()


def test_migration_indexes_existing_rows_and_writes_keep_it_current(db_url):
    from alembic import command
    from context_lookups.app.pages.search import SearchQuery, search
    from context_lookups.precompute.store.db import _alembic_config, open_reader, open_writer, sessions

    engine = create_engine(parse_url(db_url))
    with engine.begin() as conn:
        cfg = _alembic_config(db_url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002_paper")
    engine.dispose()
    _one_prompt_db(db_url)
    writer = open_writer(db_url)  # migrates to head: 0003 builds the index from the rows

    def found(q: str) -> int:
        reader = open_reader(db_url)
        try:
            with sessions(reader)() as s:
                return search(s, SearchQuery(q=q, kind="prompts"))["prompts"]["total"]
        finally:
            reader.dispose()

    assert found("zanzibar") == 1 and found("archipelagos") == 1  # stemmed
    with writer.begin() as conn:
        conn.execute(text("UPDATE prompts SET text = 'the madagascar coast'"))
    assert found("zanzibar") == 0 and found("madagascar") == 1
    with writer.begin() as conn:
        nid = conn.execute(text("SELECT id FROM neurons")).scalar()
        conn.execute(text("INSERT INTO prompts (neuron_id, split, rank, text, token_ids, tokens, acts, "
                          "attr_raw, attr_ln, other_ln, active) "
                          "VALUES (:n, 'heldout', 0, 'a madagascar lemur', "
                          "'[]', '[]', '[]', '[]', '[]', '{}', '[]')"), {"n": nid})
    assert found("madagascar") == 2 and found('"madagascar lemur"') == 1 and found('"lemur madagascar"') == 0
    with writer.begin() as conn:
        conn.execute(text("DELETE FROM runs"))  # prompts go by cascade
    assert found("madagascar") == 0
    if db_url.startswith("sqlite"):  # the FTS5 index holds no stale entry either
        path = parse_url(db_url).database
        con = sqlite3.connect(path)
        assert con.execute("SELECT count(*) FROM search_prompts "
                           "WHERE search_prompts MATCH 'madagascar'").fetchone() == (0,)
        con.close()
    writer.dispose()


def test_imported_explanations_are_searchable(tmp_path):
    from tests.paper_data import import_sample

    url = import_sample(tmp_path / "paper.db")
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=url, torch_threads=None, preload=False)) as c:
        d = c.get("/search.json",
                  params={"q": "document", "run": "gpt2-small", "kind": "explanations"}).json()
        assert d["explanations"]["total"] > 0
        assert {h["explainer"] for h in d["explanations"]["items"]} == {"openai:gpt-4"}
        assert all(c.get(h["url"]).status_code == 200 for h in d["explanations"]["items"][:3])
