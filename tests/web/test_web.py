"""The explorer over real HTTP (FastAPI TestClient) on a real SQLite database written by the real
precompute job: every page and its JSON twin, filters, sorting, pagination, errors, escaping,
the live pass against precompute's own attribute()/ablate(), read-only access and headers."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from fastapi.testclient import TestClient

from tests.web_fixtures import TOPK_RUN, one, rows

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def app(web_db, tiny_model_dir):
    import os

    from context_lookups.app.main import create_app

    over = {"torch_threads": None}  # leave torch's global thread count to the rest of the suite
    if os.environ.get("LOOKUPS_TEST_WEB_DB"):  # a reused database: its model dir may be gone
        over["model_paths"] = {s: str(tiny_model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")}
    return create_app(db_url=f"sqlite:///{web_db}", **over)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def kept(web_db):
    """(layer, neuron, head_layer, head) of a kept pair that has an explanation and ablations."""
    r = one(web_db, "SELECT n.layer, n.neuron, p.head_layer, p.head FROM pairs p "
            "JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = p.run_id "
            "JOIN explanations e ON e.pair_id = p.id JOIN ablations a ON a.pair_id = p.id "
            "WHERE r.slug = ? AND p.kept AND e.status = 'ok' ORDER BY p.id LIMIT 1", TOPK_RUN)
    assert r is not None, "the top-3 run must keep, explain and ablate some pairs"
    return r


def neuron_of(db, kind: str, run: str = TOPK_RUN):
    return one(db, "SELECT n.layer, n.neuron, n.token_id FROM neurons n JOIN runs r ON r.id = n.run_id "
               "WHERE r.slug = ? AND n.kind = ? ORDER BY n.layer, n.neuron LIMIT 1", run, kind)


def html_ok(r):
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")
    return r.text


# --- pages and twins ---------------------------------------------------------------------------

def test_home_lists_runs_with_findings(client, web_db):
    html = html_ok(client.get("/"))
    data = client.get("/.json").json()
    slugs = {r["slug"] for r in data["runs"]}
    assert slugs == {s for (s,) in rows(web_db, "SELECT slug FROM runs")}
    for s in slugs:
        assert f'href="/{s}/neurons"' in html
    topk = next(r for r in data["runs"] if r["slug"] == TOPK_RUN)
    assert topk["counts"]["neurons"] == one(web_db, "SELECT count(*) FROM neurons n JOIN runs r ON "
                                            "r.id = n.run_id WHERE r.slug = ?", TOPK_RUN)[0]
    table = topk["findings"]["explanations"]["baseline"]
    assert set(table["kinds"]) >= {"next_token", "random"}
    assert "zero" in topk["findings"]["ablation"]
    assert '<svg class="hist"' in html  # server-side histogram of E
    assert "KS" in html and "mean E" in html


def test_every_page_has_a_json_twin(client, web_db, kept):
    layer, neuron, hl, h = kept
    other = neuron_of(web_db, "other")
    rnd = neuron_of(web_db, "random")
    for path in (f"/{TOPK_RUN}/neurons", f"/{TOPK_RUN}/neurons/{layer}/{neuron}",
                 f"/{TOPK_RUN}/neurons/{other[0]}/{other[1]}", f"/{TOPK_RUN}/neurons/{rnd[0]}/{rnd[1]}",
                 f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}", f"/{TOPK_RUN}/heads/{hl}/{h}"):
        html = html_ok(client.get(path))
        assert f'href="{path}.json' in html, path  # the page links its twin
        r = client.get(path + ".json")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert r.json()["run"]["slug"] == TOPK_RUN


def test_neuron_page_shows_prompts_heatmap_and_pairs(client, web_db, kept):
    layer, neuron, hl, h = kept
    d = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json").json()
    assert d["neuron"]["kind"] in ("next_token", "random") and d["prompts"]
    n_prompts = one(web_db, "SELECT count(*) FROM prompts p JOIN neurons n ON n.id = p.neuron_id "
                    "JOIN runs r ON r.id = n.run_id WHERE r.slug = ? AND n.layer = ? AND n.neuron = ? "
                    "AND p.split = 'explain'", TOPK_RUN, layer, neuron)[0]
    assert len(d["prompts"]) == n_prompts
    # the mean heatmap is the mean of the per-prompt attributions; ?score=ln switches to LN-aware
    for score, key in (("raw", "attr_raw"), ("ln", "attr_ln")):
        dd = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json?score={score}").json()
        mean = torch.tensor([p[key] for p in dd["prompts"]]).mean(0)
        assert torch.allclose(torch.tensor(dd["mean_attr"]), mean, atol=1e-6)
    assert any(p["label"] == f"L{hl}H{h}" and p["explanations"] for p in d["pairs"])
    html = html_ok(client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}"))
    assert 'class="heat"' in html and 'class="legend"' in html and "tok max" in html
    assert f'/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}' in html
    assert re.search(r'title="#\d+: act -?\d', html)  # hover shows the activation
    ln = html_ok(client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}?score=ln"))
    assert 'class="on">LN-aware' in ln


def test_unselected_neuron_shows_congruence_and_top_documents(client, web_db):
    layer, neuron, _ = neuron_of(web_db, "other")
    d = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json").json()
    assert d["neuron"]["kind"] == "other" and d["neuron"]["top_tokens"]
    assert d["prompts"] == [] and d["top_documents"]
    assert all(doc["tokens"] for doc in d["top_documents"])  # tokenized by the run's tokenizer
    html = html_ok(client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}"))
    assert "was not selected" in html and "Top documents" in html


def test_pair_page(client, web_db, kept):
    layer, neuron, hl, h = kept
    d = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}.json").json()
    label = f"L{hl}H{h}"
    assert d["label"] == label and d["explanations"]
    assert all(label in p["active"] for p in d["active"])
    assert all(label not in p["active"] for p in d["inactive"])
    assert len(d["active"]) == d["pair"]["n_active"]
    assert d["heldout"] and all(p["classifications"] or p["ablations"] for p in d["heldout"])
    e = d["explanations"][0]
    classified = [p["classifications"][e["explainer"]] for p in d["heldout"] if p["classifications"]]
    assert len(classified) == e["n_pos"] + e["n_neg"]
    for p in d["heldout"]:
        if p["classifications"]:
            assert p["classifications"]["baseline"]["truth"] == p["head_active"]
        if p["ablations"]:
            a = p["ablations"]["zero"]
            assert a["drop"] == pytest.approx(a["prob_clean"] - a["prob_ablated"], abs=1e-9)
            assert a["active"] == p["head_active"]
    assert d["ablation_summary"]["zero"]["n_prompts"] == sum(bool(p["ablations"]) for p in d["heldout"])
    html = html_ok(client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}"))
    assert "active (" in html and "inactive (" in html and "<blockquote>" in html


def test_head_page_is_a_reverse_index(client, web_db, kept):
    _, _, hl, h = kept
    d = client.get(f"/{TOPK_RUN}/heads/{hl}/{h}.json").json()
    n = one(web_db, "SELECT count(*) FROM pairs p JOIN runs r ON r.id = p.run_id WHERE r.slug = ? "
            "AND p.head_layer = ? AND p.head = ?", TOPK_RUN, hl, h)[0]
    assert len(d["pairs"]) == n > 0
    raw = [p["mean_attr_raw"] for p in d["pairs"]]
    assert raw == sorted(raw, reverse=True)
    frac = [p["active_fraction"]
            for p in client.get(f"/{TOPK_RUN}/heads/{hl}/{h}.json?order=fraction").json()["pairs"]]
    assert frac == sorted(frac, reverse=True)
    kept_only = client.get(f"/{TOPK_RUN}/heads/{hl}/{h}.json?kept=true").json()["pairs"]
    assert all(p["kept"] for p in kept_only)


# --- list: filters, sorting, pagination ----------------------------------------------------------

def test_neuron_list_filters(client, web_db):
    base = f"/{TOPK_RUN}/neurons.json"
    total = one(web_db, "SELECT count(*) FROM neurons n JOIN runs r ON r.id = n.run_id WHERE r.slug = ?",
                TOPK_RUN)[0]
    assert client.get(base, params={"kind": "all"}).json()["total"] == total
    for kind in ("next_token", "random", "other"):
        d = client.get(base, params={"kind": kind, "per_page": 500}).json()
        assert d["neurons"] and {n["kind"] for n in d["neurons"]} == {kind}
    sel = client.get(base, params={"kind": "selected", "per_page": 500}).json()["neurons"]
    assert {n["kind"] for n in sel} == {"next_token", "random"}
    tok = client.get(base, params={"kind": "next_token"}).json()["neurons"][0]["token"]
    frag = tok.strip()[:3] or tok
    found = client.get(base, params={"q": frag, "per_page": 500}).json()["neurons"]
    assert found and all(frag.lower() in n["token"].lower() for n in found)
    assert client.get(base, params={"q": "%", "kind": "all"}).json()["total"] == one(
        web_db, "SELECT count(*) FROM neurons n JOIN runs r ON r.id = n.run_id WHERE r.slug = ? "
        "AND instr(n.token, '%') > 0", TOPK_RUN)[0]  # % is literal, not a wildcard
    cs = sorted(n["congruence"] for n in client.get(base, params={"per_page": 500}).json()["neurons"])
    mid = cs[len(cs) // 2]
    d = client.get(base, params={"min_congruence": mid, "per_page": 500}).json()
    assert d["total"] == sum(c >= mid for c in cs) and all(n["congruence"] >= mid for n in d["neurons"])
    scored = client.get(base, params={"min_score": 0, "per_page": 500}).json()["neurons"]
    assert all(n["best_score"] is not None for n in scored)
    # empty form fields mean "no filter"
    assert client.get(base + "?layer=&q=&min_congruence=&kind=all").json()["total"] == total


def test_neuron_list_sorting_and_pagination(client):
    base = f"/{TOPK_RUN}/neurons.json"
    full = client.get(base, params={"sort": "congruence", "order": "asc", "per_page": 500}).json()
    cs = [n["congruence"] for n in full["neurons"]]
    assert cs == sorted(cs)
    seen = []
    page, pages = 1, None
    while True:
        d = client.get(base, params={"sort": "congruence", "order": "asc", "per_page": 7,
                                     "page": page}).json()
        pages = d["pages"]
        seen += [(n["layer"], n["neuron"]) for n in d["neurons"]]
        if d["links"]["next"] is None:
            break
        assert f"page={page + 1}" in d["links"]["next"]
        page += 1
    assert page == pages and seen == [(n["layer"], n["neuron"]) for n in full["neurons"]]
    by_token = client.get(base, params={"sort": "token", "order": "asc", "per_page": 500}).json()
    toks = [n["token"] for n in by_token["neurons"]]
    assert toks == sorted(toks)
    html = html_ok(client.get(f"/{TOPK_RUN}/neurons?kind=all&sort=token&order=asc"))
    assert 'class="sorted asc"' in html and 'rel="next"' in html


def test_goto_jumps_to_any_neuron(client, web_db):
    layer = int(one(web_db, "SELECT layers FROM runs WHERE slug = ?", TOPK_RUN)[0].strip("[]").split(",")[0])
    r = client.get(f"/{TOPK_RUN}/goto", params={"layer": layer, "neuron": 5}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/{TOPK_RUN}/neurons/{layer}/5"
    assert client.get(f"/{TOPK_RUN}/goto", params={"layer": layer, "neuron": 10**6}).status_code == 404
    assert 'action="/' + TOPK_RUN + '/goto"' in client.get(f"/{TOPK_RUN}/neurons").text


def test_htmx_requests_get_fragments_and_push_canonical_urls(client):
    r = client.get(f"/{TOPK_RUN}/neurons?kind=next_token&layer=&q=&sort=kind&order=asc",
                   headers={"HX-Request": "true"})
    assert r.status_code == 200 and "<html" not in r.text and "<table" in r.text
    assert r.headers["HX-Push-Url"] == f"/{TOPK_RUN}/neurons?kind=next_token"
    assert "HX-Request" in r.headers["Vary"]
    full = client.get(f"/{TOPK_RUN}/neurons?kind=next_token")
    assert "<html" in full.text and "HX-Request" in full.headers["Vary"]
    restore = client.get(f"/{TOPK_RUN}/neurons?kind=next_token",
                         headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text  # htmx restoring history asks for the whole page


# --- errors ----------------------------------------------------------------------------------------

def test_not_found_names_the_valid_range(client, web_db):
    layers = one(web_db, "SELECT layers FROM runs WHERE slug = ?", TOPK_RUN)[0]
    r = client.get(f"/{TOPK_RUN}/neurons/7/0.json")
    assert r.status_code == 404
    assert r.json()["detail"].startswith("layer 7 out of range: scanned layers are ")
    assert layers.strip("[]") in r.json()["detail"]
    r = client.get("/nope/neurons.json")
    assert r.status_code == 404 and TOPK_RUN in r.json()["detail"]
    d_mlp = one(web_db, "SELECT d_mlp FROM runs WHERE slug = ?", TOPK_RUN)[0]
    layer = int(layers.strip("[]").split(",")[0])
    r = client.get(f"/{TOPK_RUN}/neurons/{layer}/{d_mlp}.json")
    assert r.status_code == 404 and f"0..{d_mlp - 1}" in r.json()["detail"]
    r = client.get(f"/{TOPK_RUN}/heads/0/99.json")
    assert r.status_code == 404 and "heads are 0.." in r.json()["detail"]
    r = client.get(f"/{TOPK_RUN}/neurons?layer=99")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "layer 99 out of range" in r.text and "<html" in r.text
    r = client.get("/no/such/page/at/all")
    assert r.status_code == 404 and "<html" in r.text
    r = client.get(f"/{TOPK_RUN}/neurons.json?page=0")
    assert r.status_code == 422 and "page" in r.json()["detail"]


def test_live_errors_are_422_with_a_message(client, app, web_db, tiny_model_dir, kept):
    layer, neuron, _, _ = kept
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    r = client.get(base + ".json", params={"prompt": "  "})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = client.get(base + "/live", params={"prompt": ""}, headers={"HX-Request": "true"})
    assert r.status_code == 422 and "empty" in r.text and "<html" not in r.text
    from context_lookups.app.main import create_app

    paths = {s: str(tiny_model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")}
    with TestClient(create_app(db_url=f"sqlite:///{web_db}", torch_threads=None, model_paths=paths,
                               token_cap=8)) as capped:
        long = " ".join(["word"] * 30)
        for path in (base + ".json", base + "/live", base):
            r = capped.get(path, params={"prompt": long})
            assert r.status_code == 422
            assert "limit of this server is 8 tokens" in r.text
        assert capped.get(base + ".json", params={"prompt": "a b"}).status_code == 200
    old = app.state.settings.token_cap
    n_ctx = one(web_db, "SELECT n_ctx FROM runs WHERE slug = ?", TOPK_RUN)[0]
    if n_ctx - 1 < old:  # the model's context is the tighter limit
        r = client.get(base + ".json", params={"prompt": " ".join(["word"] * (n_ctx + 5))})
        assert r.status_code == 422 and f"limit of this server is {n_ctx - 1} tokens" in r.json()["detail"]
    r = client.get(base + ".json", params={"prompt": "hello there", "ablate": "L99H0"})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]
    r = client.get(base + ".json", params={"prompt": "hello there", "ablate": "banana"})
    assert r.status_code == 422 and "L<layer>H<head>" in r.json()["detail"]
    r = client.get(base + ".json", params={"prompt": "hello", "pos": 50})
    assert r.status_code == 422 and "pos 50 out of range" in r.json()["detail"]


# --- escaping, headers, read-only --------------------------------------------------------------------

def _no_raw_script(html: str) -> None:
    for m in re.finditer(r"<script\b[^>]*>", html, flags=re.I):
        assert re.search(r'\bsrc="/static/', m.group(0)), f"inline or raw script tag: {m.group(0)}"
    assert "alert(1)</script>" not in html


def test_markup_in_documents_and_prompts_is_escaped(client, web_db):
    # the test corpus holds a document with <script>; find a neuron whose top documents include it
    hits = rows(web_db, "SELECT t.layer, t.neuron, n.kind FROM top_activations t JOIN documents d ON "
                "d.run_id = t.run_id AND d.split = t.split AND d.idx = t.doc_idx "
                "JOIN runs r ON r.id = t.run_id "
                "JOIN neurons n ON n.run_id = t.run_id AND n.layer = t.layer AND n.neuron = t.neuron "
                "WHERE r.slug = ? AND d.text LIKE '%<script>%' AND n.kind = 'other' LIMIT 5", TOPK_RUN)
    assert hits
    for layer, neuron, _ in hits:
        html = html_ok(client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}"))
        _no_raw_script(html)
    # a live prompt with markup, quotes, & and a newline
    prompt = f'Say {SCRIPT} & "quotes" \u00e9\u4e2d\n end'
    layer, neuron, _ = neuron_of(web_db, "next_token")
    html = html_ok(client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}", params={"prompt": prompt}))
    _no_raw_script(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # in the text box, as text
    assert "&amp;" in html and "↵" in html  # newline tokens are visible
    frag = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/live", params={"prompt": prompt},
                      headers={"HX-Request": "true"})
    assert frag.status_code == 200
    _no_raw_script(frag.text)
    assert "&lt;" in frag.text


def test_security_headers(client, kept):
    layer, neuron, _, _ = kept
    for path in ("/", f"/{TOPK_RUN}/neurons", f"/{TOPK_RUN}/neurons/{layer}/{neuron}", "/.json",
                 "/nope/neurons"):
        r = client.get(path)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in \
            csp.split("script-src")[1].split(";")[0]
        assert "HX-Request" in r.headers["Vary"]
        assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    html = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}").text
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from another origin
    js = client.get("/static/vendor/htmx.min.js")
    assert js.status_code == 200 and "htmx" in js.text[:2000]
    assert client.get("/static/vendor/htmx.LICENSE").status_code == 200
    docs = client.get("/docs").text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs and "cdn" not in docs
    _no_raw_script(docs)
    assert "/{run}/neurons/{layer}/{neuron}" in client.get("/openapi.json").json()["paths"]


def test_server_is_read_only(app, client, web_db):
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    before = hashlib.sha256(web_db.read_bytes()).hexdigest()
    client.get("/")
    client.get(f"/{TOPK_RUN}/neurons.json")
    with pytest.raises(OperationalError, match="readonly"), app.state.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET slug = 'x'"))
    assert hashlib.sha256(web_db.read_bytes()).hexdigest() == before


# --- live -------------------------------------------------------------------------------------------

def test_live_pass_matches_precompute_functions(client, app, web_db, kept, tiny_model, tiny_bridge):
    """The live view (the fast backend) equals precompute's attribute()/ablate() on the bridge."""
    from context_lookups.precompute.ablation.ablate import ablate
    from context_lookups.precompute.heads.attribution import attribute

    layer, neuron, hl, h = kept
    token_id = one(web_db, "SELECT n.token_id FROM neurons n JOIN runs r ON r.id = n.run_id WHERE "
                   "r.slug = ? AND n.layer = ? AND n.neuron = ?", TOPK_RUN, layer, neuron)[0]
    prompt = "The king of Judah was the son of the priest, and he"
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    d = client.get(base + ".json", params={"prompt": prompt}).json()["live"]
    assert app.state.live.loaded(TOPK_RUN)
    row = [tiny_model.bos_token_id] + tiny_model.encode(prompt)
    assert d["token_ids"] == row[1:]
    att = attribute(tiny_bridge, [row], layer, neuron)
    assert d["acts"] == pytest.approx(att.acts[0][1:], abs=1e-5)
    assert torch.allclose(torch.tensor(d["attr_raw"]), att.raw[0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(torch.tensor(d["attr_ln"]), att.ln[0], atol=1e-5)
    res = ablate(tiny_bridge, [row], layer, neuron, token_id, [])
    assert d["prob"] == pytest.approx(float(res.prob_clean[0]), rel=1e-4)
    assert [t[0] for t in d["top5"]] == [t[0] for t in res.top_clean[0]]
    # a clicked position
    dp = client.get(base + ".json", params={"prompt": prompt, "pos": 2}).json()["live"]
    att2 = attribute(tiny_bridge, [row], layer, neuron, positions=[3])
    assert dp["pos"] == 2 and dp["act"] == pytest.approx(float(att2.act[0]), abs=1e-5)
    # ablating heads: same figures as ablate() with those heads
    heads = [(hl, h), (0, 0)] if (hl, h) != (0, 0) else [(0, 0)]
    labels = ",".join(f"L{k}H{j}" for k, j in heads)
    da = client.get(base + ".json", params={"prompt": prompt, "ablate": labels}).json()
    a = da["live"]["ablation"]
    ref = ablate(tiny_bridge, [row], layer, neuron, token_id, heads)
    assert a["heads"] == labels.split(",")
    assert a["act_ablated"] == pytest.approx(float(ref.act_ablated[0]), abs=1e-5)
    assert a["prob_ablated"] == pytest.approx(float(ref.prob_ablated[0]), rel=1e-4)
    assert a["drop"] == pytest.approx(float(ref.drop[0]), abs=1e-7)
    assert a["acts"] == pytest.approx(ref.acts_ablated[0][1:], abs=1e-5)
    assert torch.tensor(a["attr_raw"])[hl, h] == 0  # its value vectors are zero
    page = urlsplit(da["links"]["page"])
    assert page.path == base and parse_qs(page.query) == {"prompt": [prompt], "ablate": [labels]}


def test_live_fragment_and_page_urls_reproduce_the_view(client, kept):
    layer, neuron, hl, h = kept
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    prompt = "A prompt & more"
    r = client.get(base + "/live", params=[("prompt", prompt), ("ablate", f"L{hl}H{h}"), ("ablate", "L0H1")],
                   headers={"HX-Request": "true"})
    assert r.status_code == 200 and "<html" not in r.text and 'id="abl-drop"' in r.text
    pushed = r.headers["HX-Push-Url"]
    q = parse_qs(urlsplit(pushed).query)
    assert urlsplit(pushed).path == base and q["prompt"] == [prompt] and q["ablate"] == [f"L{hl}H{h},L0H1"]
    page = html_ok(client.get(pushed))  # the pushed URL renders the same live view server-side
    for needle in ('id="abl-drop"', 'id="live-act"', f'value="L{hl}H{h}"'):
        assert needle in page
    assert re.search(rf'value="L{hl}H{h}"[^>]*checked', page)
    # a form without JavaScript sends repeated ablate= fields: redirected to the canonical URL
    r = client.get(base, params=[("prompt", prompt), ("ablate", "L0H1"), ("ablate", "L0H2")],
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("ablate=L0H1,L0H2")
    # cached: the same request again is served from the LRU
    hits = client.app.state.live.stats["hits"]
    client.get(base + ".json", params={"prompt": prompt, "ablate": f"L{hl}H{h},L0H1"})
    assert client.app.state.live.stats["hits"] == hits + 1


def test_concurrent_live_requests_are_batched_and_exact(app, web_db, kept, tiny_model, tiny_bridge):
    """Concurrent live requests for one neuron may share a batched pass; each result equals
    precompute's attribute()/ablate() on that prompt alone, on the bridge backend."""
    from concurrent.futures import ThreadPoolExecutor

    from context_lookups.precompute.ablation.ablate import ablate
    from context_lookups.precompute.heads.attribution import attribute

    layer, neuron, hl, h = kept
    token_id = one(web_db, "SELECT n.token_id FROM neurons n JOIN runs r ON r.id = n.run_id WHERE "
                   "r.slug = ? AND n.layer = ? AND n.neuron = ?", TOPK_RUN, layer, neuron)[0]
    prompts = [f"Request {i}: the son of the king went to the" + " city" * i for i in range(6)]
    url = f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json"
    with TestClient(app) as c, ThreadPoolExecutor(6) as ex:
        got = list(ex.map(lambda p: c.get(url, params={"prompt": p, "ablate": f"L{hl}H{h}"}), prompts))
    for p, r in zip(prompts, got, strict=True):
        assert r.status_code == 200
        live = r.json()["live"]
        row = [tiny_model.bos_token_id] + tiny_model.encode(p)
        att = attribute(tiny_bridge, [row], layer, neuron)
        ref = ablate(tiny_bridge, [row], layer, neuron, token_id, [(hl, h)])
        assert live["acts"] == pytest.approx(att.acts[0][1:], abs=1e-5)
        assert torch.allclose(torch.tensor(live["attr_raw"]), att.raw[0], rtol=1e-5, atol=1e-5)
        assert live["ablation"]["drop"] == pytest.approx(float(ref.drop[0]), abs=1e-7)
    stats = app.state.live.stats
    assert stats["batched"] >= stats["batches"] >= 1


def test_model_that_cannot_load_gives_503_and_the_page_still_renders(web_db, kept):
    from context_lookups.app.main import create_app

    layer, neuron, _, _ = kept
    bad = create_app(db_url=f"sqlite:///{web_db}", model_paths={TOPK_RUN: "/nonexistent/model-dir"},
                     torch_threads=None)
    with TestClient(bad) as c:
        r = c.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json", params={"prompt": "hello"})
        assert r.status_code == 503 and "nonexistent/model-dir" in r.json()["detail"]
        page = c.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}", params={"prompt": "hello"})
        assert page.status_code == 503 and "Top explain prompts" in page.text
        assert "nonexistent/model-dir" in page.text
        assert c.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}").status_code == 200  # no live: no model needed


def test_empty_database_and_missing_file(tmp_path):
    from context_lookups.app.main import create_app
    from context_lookups.precompute.store.db import open_writer

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_writer(url).dispose()  # schema only, no run
    with TestClient(create_app(db_url=url)) as c:
        assert c.get("/.json").json()["runs"] == []
        assert "holds no run yet" in c.get("/").text
        r = c.get("/gpt2/neurons.json")
        assert r.status_code == 404 and "none" in r.json()["detail"]
    with pytest.raises(FileNotFoundError, match="lookups precompute"):
        create_app(db_url=f"sqlite:///{tmp_path / 'missing.db'}")


def test_model_source_resolves_the_embedded_model_and_overrides():
    from context_lookups.app.model_files import model_source
    from context_lookups.app.settings import WebSettings
    from context_lookups.precompute.core.settings import EMBEDDED_MODEL
    from context_lookups.precompute.store.schema import Run

    s = WebSettings(model_paths={"other": "/some/dir"})
    assert model_source(Run(slug="embedded", model_name="embedded"), s) == EMBEDDED_MODEL
    assert model_source(Run(slug="gpt2", model_name="gpt2"), s) == "gpt2"
    assert model_source(Run(slug="other", model_name="gpt2"), s) == "/some/dir"


def test_cached_neuron_sections_equal_a_fresh_render_and_pairs_stay_live(app, client, web_db, kept, tmp_path):
    """What a neuron page keeps of its stored prompts (data and rendered sections) gives the page
    a server that never saw the neuron renders; the rest (here: an explanation added by another
    process after the page was cached) is read on every request."""
    import shutil
    import sqlite3

    from context_lookups.app.main import create_app

    layer, neuron, hl, h = kept
    copy = tmp_path / "copy.db"
    shutil.copy(web_db, copy)
    fresh = create_app(db_url=f"sqlite:///{copy}", torch_threads=None, preload=False)
    url = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    with TestClient(fresh) as c:
        for q in ("", "?score=ln", "?split=heldout"):
            first = html_ok(c.get(url + q))
            again = html_ok(c.get(url + q))  # from the caches
            assert again == first
            assert again == html_ok(client.get(url + q))  # the module's long-lived app
            assert c.get(url + ".json" + q).json() == client.get(url + ".json" + q).json()
        con = sqlite3.connect(copy)
        (pid,) = con.execute("SELECT p.id FROM pairs p JOIN neurons n ON n.id = p.neuron_id JOIN runs r "
                             "ON r.id = n.run_id WHERE r.slug = ? AND n.layer = ? AND n.neuron = ? AND "
                             "p.head_layer = ? AND p.head = ?", (TOPK_RUN, layer, neuron, hl, h)).fetchone()
        con.execute("INSERT INTO explanations (pair_id, explainer, status, text, settings, n_pos, n_neg, "
                    "n_unparsed, created_at) VALUES (?, 'late-explainer', 'ok', 'a late explanation', "
                    "'{}', 0, 0, 0, '2026-12-01 00:00:00')", (pid,))
        con.commit()
        con.close()
        assert "a late explanation" in html_ok(c.get(url))
