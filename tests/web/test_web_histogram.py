"""The neuron page's activation distribution and negative congruent tokens over real HTTP
(TestClient on the web tests' database): the JSON twin carries the stored histogram of the
page's split with the top prompts' activations marked, the SVG draws every non-empty bin and
every mark, an unselected neuron's marks are its top documents, and a database migrated from
before 0005 (no histograms, no bottom tokens) shows the top tokens alone and says why."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from fastapi.testclient import TestClient

from context_lookups.precompute.prompts.histogram import N_BINS, bin_bounds, bin_of
from tests.web_fixtures import TOPK_RUN, rows


@pytest.fixture(scope="module")
def client(web_db):
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=f"sqlite:///{web_db}", preload=False)) as c:
        yield c


def _stored(web_db, split, layer, neuron):
    first, counts = rows(web_db, "SELECT h.first_bin, h.counts FROM activation_histograms h JOIN runs r ON "
                         "r.id = h.run_id WHERE r.slug = ? AND h.split = ? AND h.layer = ? AND h.neuron = ?",
                         TOPK_RUN, split, layer, neuron)[0]
    return first, json.loads(counts)


@pytest.mark.parametrize("split", ["explain", "heldout"])
def test_neuron_page_shows_the_split_distribution_with_the_top_prompts_marked(client, web_db, kept, split):
    layer, neuron, _, _ = kept
    url = f"/{TOPK_RUN}/neurons/{layer}/{neuron}" + ("?split=heldout" if split == "heldout" else "")
    j = client.get(url.replace(f"/{neuron}", f"/{neuron}.json", 1)).json()
    h = j["histogram"]
    first, counts = _stored(web_db, split, layer, neuron)
    assert h["split"] == split and [b["count"] for b in h["bins"]] == counts and h["bins"][0]["bin"] == first
    (stats,) = rows(web_db, "SELECT p.stats FROM phases p JOIN runs r ON r.id = p.run_id WHERE r.slug = ? "
                    "AND p.name = ?", TOPK_RUN, f"scan:{split}")
    assert h["n_tokens"] == json.loads(stats[0])["histogram_tokens"] == sum(counts)
    for b in h["bins"]:
        lo, hi = bin_bounds(b["bin"])
        assert (b["lo"], b["hi"]) == (lo if lo > -1e300 else None, hi if hi < 1e300 else None)
    # the marks are the shown prompts' document activations, each in its bin (a bin with a count)
    assert [(m["rank"], m["act"]) for m in h["marks"]] == [(p["rank"], p["doc_act"]) for p in j["prompts"]]
    assert h["marks"] and all(m["bin"] == bin_of([m["act"]])[0] for m in h["marks"])
    nonzero = {b["bin"] for b in h["bins"] if b["count"]}
    assert {m["bin"] for m in h["marks"]} <= nonzero
    assert max(m["bin"] for m in h["marks"]) == max(nonzero)  # the top prompt is the split's maximum
    html = client.get(url).text
    svg = re.search(r'<section class="card" id="distribution">.*?</section>', html, re.DOTALL).group(0)
    assert svg.count('<rect class="bar"') == len(nonzero) and svg.count('class="mark"') == len(h["marks"])
    assert f"{h['n_tokens']:,} tokens" in svg and "activation (hook_post)" in svg and ">tokens<" in svg
    assert re.search(r'class="on">%s</a>' % ("explain" if split == "explain" else "held-out"), svg)
    # log-scaled counts: every bar's height is the same multiple of log(count / 0.5), the axis'
    # baseline (so a bin of one token still shows)
    import math

    heights = [float(x) for x in re.findall(r'<rect class="bar"[^>]* height="([0-9.]+)"', svg)]
    shown = [b["count"] for b in h["bins"] if b["count"]]
    per_decade = [hh / math.log10(c / 0.5) for hh, c in zip(heights, shown, strict=True)]
    assert max(per_decade) - min(per_decade) < 0.2 * max(1, max(heights) / 100)
    assert min(heights) > 1  # one token still shows


def test_negative_congruent_tokens_beside_the_top_ones(client, web_db, kept):
    layer, neuron, _, _ = kept
    j = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json").json()["neuron"]
    assert len(j["bottom_tokens"]) == 10 and len(j["top_tokens"]) == 10
    vals = [t["congruence"] for t in j["bottom_tokens"]]
    assert vals == sorted(vals) and vals[-1] < j["top_tokens"][-1]["congruence"]
    html = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}").text
    bottom = re.search(r'<div id="bottom-tokens">(.*?)</div>', html, re.DOTALL).group(1)
    assert bottom.count("<li>") == 10 and f"{vals[0]:.4f}" in bottom


def test_an_unselected_neuron_marks_its_top_documents(client, web_db):
    layer, neuron = rows(web_db, "SELECT n.layer, n.neuron FROM neurons n JOIN runs r ON r.id = n.run_id "
                         "WHERE r.slug = ? AND n.kind = 'other' ORDER BY n.neuron LIMIT 1", TOPK_RUN)[0]
    j = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json").json()
    assert j["prompts"] == [] and j["top_documents"]
    assert [(m["rank"], m["act"]) for m in j["histogram"]["marks"]] == [(d["rank"], d["act"])
                                                                        for d in j["top_documents"]]
    held = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json?split=heldout").json()["histogram"]
    assert held["split"] == "heldout" and held["marks"] == []


def test_a_run_from_before_histograms_shows_top_tokens_alone(tmp_path, precomputed_db):
    """Downgraded to 0004 and upgraded again: the run's histogram rows and bottom tokens are
    gone, as for a run computed before 0005."""
    from alembic import command
    from context_lookups.app.main import create_app
    from context_lookups.precompute.store.db import _alembic_config, connect

    db = tmp_path / "old.db"
    shutil.copy(precomputed_db, db)
    url = f"sqlite:///{db}"
    engine = connect(url)
    for target in ("0004_search", "head"):
        with engine.begin() as conn:
            cfg = _alembic_config(url)
            cfg.attributes["connection"] = conn
            (command.downgrade if target != "head" else command.upgrade)(cfg, target)
    engine.dispose()
    (slug, layer, neuron), = rows(db, "SELECT r.slug, n.layer, n.neuron FROM neurons n JOIN runs r ON "
                                  "r.id = n.run_id WHERE n.kind = 'next_token' LIMIT 1")
    assert rows(db, "SELECT count(*) FROM activation_histograms") == [(0,)]
    with TestClient(create_app(db_url=url, preload=False)) as c:
        j = c.get(f"/{slug}/neurons/{layer}/{neuron}.json").json()
        assert j["histogram"] is None and j["neuron"]["bottom_tokens"] is None
        assert len(j["neuron"]["top_tokens"]) == 10
        html = c.get(f"/{slug}/neurons/{layer}/{neuron}").text
        assert 'id="top-tokens"' in html and 'id="bottom-tokens"' not in html
        assert "computed before the scan kept activation histograms" in html
        assert "<svg class=\"act-hist\"" not in html
    assert N_BINS == 163
