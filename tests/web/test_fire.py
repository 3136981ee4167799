"""Which neurons fire on a text (app/live/fire.py, /fire, docs/method.md §11): the backend's
``layer_acts`` equals the bridge's ``hook_post``; the page's relative activations are the
activations over each neuron's stored explain maximum, ranked per token and overall; the page
and its JSON twin over real HTTP (shareable URL, token cap, unknown run, empty text); texts
queued on a busy model thread share one batched pass and respect the queue limit; and on an
imported run without weights, one line and nothing waits."""

from __future__ import annotations

import math
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from html import unescape

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from tests.web_fixtures import TOPK_RUN, Server, rows

TEXT = "The king said to his son that the river was high and the roads were closed."


def _hook_post(bridge_model, rows_, layers):
    """The reference: TransformerLens' own ``blocks.{l}.mlp.hook_post`` of the bridge."""
    from context_lookups.precompute.model import pad

    b = bridge_model.backend
    tokens, _ = pad(rows_, b.pad_id)
    names = [f"blocks.{lay}.mlp.hook_post" for lay in layers]
    with torch.no_grad():
        _, cache = b.bridge.run_with_cache(tokens, names_filter=names)
    return torch.cat([cache[n].float() for n in names], -1)


def test_layer_acts_equal_the_bridges_hook_post(tiny_model, tiny_bridge):
    r = [[tiny_model.bos_token_id] + tiny_model.encode(t) for t in (TEXT, "In the beginning", "def f():")]
    ref = _hook_post(tiny_bridge, r, [1, 0])
    for m in (tiny_model, tiny_bridge):
        acts, lengths = m.backend.layer_acts(r, [1, 0])
        assert acts.shape == (3, max(map(len, r)), 2 * tiny_model.d_mlp)
        assert lengths.tolist() == list(map(len, r))
        for j, row in enumerate(r):  # real positions (padding is not compared)
            torch.testing.assert_close(acts[j, :len(row)], ref[j, :len(row)], rtol=0,
                                       atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="out of range"):
        tiny_model.backend.layer_acts(r, [5])
    with pytest.raises(ValueError, match="non-empty"):
        tiny_model.backend.layer_acts([[]], [1])


@pytest.fixture(scope="module")
def index(web_db):
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from context_lookups.app.pages.fire import run_index
    from context_lookups.precompute.store.schema import Run

    engine = create_engine(f"sqlite:///{web_db}")
    with Session(engine) as s:
        got = run_index(s, s.scalar(select(Run).where(Run.slug == TOPK_RUN)))
    engine.dispose()
    return got


def test_relative_activations_rank_the_neurons(tiny_model, tiny_bridge, index, web_db):
    from context_lookups.app.live.fire import fire_views

    stored = {(lay, n): m for lay, n, m in rows(web_db, "SELECT n.layer, n.neuron, n.max_act "
                                                      "FROM neurons n JOIN runs r ON r.id = n.run_id "
                                                      "WHERE r.slug = ?", TOPK_RUN)}
    assert index.layers == (1,) and len(index.max_act) == tiny_model.d_mlp
    row = [tiny_model.bos_token_id] + tiny_model.encode(TEXT)
    (res,) = fire_views(tiny_model, [row], index, per_position=5, overall=20)
    ref = _hook_post(tiny_bridge, [row], [1])[0, 1:]  # [tokens, d_mlp]
    maxima = torch.tensor([stored[(1, i)] if stored[(1, i)] and stored[(1, i)] > 0 else math.nan
                           for i in range(tiny_model.d_mlp)])
    assert int(maxima.isnan().sum()) < tiny_model.d_mlp
    rel = torch.where(maxima.isnan(), float("-inf"), ref / maxima)
    assert res["token_ids"] == row[1:] and len(res["positions"]) == len(row) - 1
    for p, top in enumerate(res["positions"]):
        want = rel[p].topk(5)
        assert [c for c, _, _ in top] == want.indices.tolist() or \
            torch.allclose(torch.tensor([v for _, v, _ in top]), want.values, rtol=1e-4)
        for c, v, a in top:
            assert v == pytest.approx(float(rel[p, c]), rel=1e-4)
            assert a == pytest.approx(float(ref[p, c]), rel=1e-4, abs=1e-6)
            assert not math.isnan(maxima[c])
    peak = rel.max(0).values
    got = [o["rel"] for o in res["overall"]]
    assert got == sorted(got, reverse=True) and got == pytest.approx(peak.topk(20).values.tolist(), rel=1e-4)
    for o in res["overall"]:
        assert o["rels"][o["pos"]] == pytest.approx(o["rel"]) and len(o["rels"]) == len(row) - 1


@pytest.fixture(scope="module")
def client(web_db, tiny_model_dir):
    from context_lookups.app.main import create_app

    paths = {s: str(tiny_model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")}
    with TestClient(create_app(db_url=f"sqlite:///{web_db}", torch_threads=None, model_paths=paths,
                               token_cap=40)) as c:
        yield c


def test_the_page_and_its_json_twin(client, web_db):
    home = client.get("/")
    assert 'href="/fire"' in home.text and 'class="fire-link"' in home.text  # header and home
    empty = client.get("/fire")
    assert empty.status_code == 200 and 'id="fire-form"' in empty.text
    assert "Strongest neurons" not in empty.text
    assert all(f'<option value="{s}"' in empty.text for (s,) in rows(web_db, "SELECT slug FROM runs"))
    assert client.get("/fire", params={"text": "   "}).status_code == 200
    r = client.get("/fire", params={"run": TOPK_RUN, "text": TEXT})
    assert r.status_code == 200, r.text
    j = client.get("/fire.json", params={"run": TOPK_RUN, "text": TEXT}).json()
    res = j["result"]
    assert j["links"]["page"] == f"/fire?run={TOPK_RUN}&text=" + TEXT.replace(" ", "%20")
    assert client.get(j["links"]["page"]).text == r.text  # the URL reproduces the view
    assert res["n_tokens"] == len(res["positions"]) == len(res["tokens"]) and res["prompt"] == TEXT
    assert len(res["overall"]) == 20 and all(len(p["top"]) == 5 for p in res["positions"])
    for o in res["overall"][:3] + [t for p in res["positions"][:2] for t in p["top"]]:
        assert o["url"] == f"/{TOPK_RUN}/neurons/{o['layer']}/{o['neuron']}" and o["url"] in r.text
    assert client.get(res["overall"][0]["url"]).status_code == 200
    # every token of the text is shown, linked to its row of neurons
    assert r.text.count('href="#pos-') == res["n_tokens"] and r.text.count('<tr id="pos-') == res["n_tokens"]
    # the shown figures are the JSON's
    assert f'{res["overall"][0]["rel"]:.2f}' in r.text


def test_bad_input(client):
    long = client.get("/fire.json", params={"run": TOPK_RUN, "text": "word " * 60})
    assert long.status_code == 422 and "limit of this server is 40 tokens" in long.json()["detail"]
    page = client.get("/fire", params={"run": TOPK_RUN, "text": "word " * 60})
    assert page.status_code == 422 and 'role="alert"' in page.text and 'id="fire-form"' in page.text
    missing = client.get("/fire", params={"run": "no-such-run", "text": "hello"})
    assert missing.status_code == 404 and TOPK_RUN in missing.text
    assert client.get("/fire.json", params={"text": "x" * 20001}).status_code == 422


def test_queued_texts_share_a_pass_and_respect_the_queue(web_db, tiny_model_dir, tiny_model, index):
    from context_lookups.app.live.fire import fire_views
    from context_lookups.app.main import create_app

    app = create_app(db_url=f"sqlite:///{web_db}", torch_threads=None, live_queue=6,
                     model_paths={s: str(tiny_model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")})
    texts = [f"Text {i}: the son of the king" + " went far" * i for i in range(6)]
    with Server(app) as srv:
        assert httpx.get(srv.url + f"/fire.json?run={TOPK_RUN}&text=warm", timeout=120).status_code == 200
        release = app.state.live.hold()  # the model thread is busy

        def get(t):
            return httpx.get(srv.url + "/fire.json", params={"run": TOPK_RUN, "text": t}, timeout=120)

        with ThreadPoolExecutor(len(texts)) as ex:
            futs = [ex.submit(get, t) for t in texts]
            deadline = time.time() + 60
            while app.state.live.waiting() < len(texts) and time.time() < deadline:
                time.sleep(0.05)
            busy = httpx.get(srv.url + "/fire.json", params={"run": TOPK_RUN, "text": "one too many"},
                             timeout=30)
            page = httpx.get(srv.url + "/", timeout=30)  # pages are served meanwhile
            release()
            got = [f.result().json() for f in futs]
        assert busy.status_code == 503 and "busy" in busy.json()["detail"]
        assert page.status_code == 200
        assert app.state.live.stats["max_batch"] >= len(texts)  # one batch
    for t, j in zip(texts, got, strict=True):
        (alone,) = fire_views(tiny_model, [[tiny_model.bos_token_id] + tiny_model.encode(t)], index)
        assert [o["rel"] for o in j["result"]["overall"]] == pytest.approx(
            [o["rel"] for o in alone["overall"]], rel=1e-4)


def test_imported_run_without_weights_says_so_and_nothing_waits(tmp_path, precomputed_db):
    import shutil

    from context_lookups.app.main import create_app
    from tests.paper_data import import_sample, require_sample

    require_sample()
    db = tmp_path / "paper.db"
    shutil.copy(precomputed_db, db)
    import_sample(db)
    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as c:
        page = c.get("/fire", params={"run": "gpt2-small"})
        assert page.status_code == 200
        notices = re.findall(r'<p class="notice model-missing" id="fire-notice">(.*?)</p>', page.text,
                             re.DOTALL)
        assert len(notices) == 1 and "\n" not in notices[0] and "not on this server" in notices[0]
        assert re.search(r'<button type="submit" disabled', page.text)
        assert "gpt2-small (no model here)" in page.text
        t0 = time.monotonic()
        r = c.get("/fire", params={"run": "gpt2-small", "text": "They said"})
        j = c.get("/fire.json", params={"run": "gpt2-small", "text": "They said"})
        assert time.monotonic() - t0 < 5
        assert r.status_code == 503 and 'role="alert"' not in r.text  # the notice, once, not an error
        assert len(re.findall(r'<p class="notice model-missing"[^>]*>[^<]*not on this server', r.text)) == 1
        assert j.status_code == 503 and "not on this server" in j.json()["detail"]
        # the default run is one whose model is here
        assert c.get("/fire.json").json()["run"]["slug"] != "gpt2-small"
        # its neuron page: no distribution (the authors' files hold none), only the top tokens
        n = c.get("/gpt2-small/neurons/9/1360")
        assert "the authors' files do not record one" in unescape(n.text)
        assert 'id="bottom-tokens"' not in n.text
        assert c.get("/gpt2-small/neurons/9/1360.json").json()["histogram"] is None
    sqlite3.connect(db).close()
