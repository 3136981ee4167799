"""The context look-up in the explorer (real SQLite, real HTTP through TestClient): the pair
page's JSON twin carries each prompt's look-up (summing to the stored attribution) and the
summary by token, the page colours each prompt by it with the values of the twin in the
tooltips; a non-kept pair says why it has none; the live pass with ``&head=`` returns and shows
the selected head's look-up, keeps it in the pushed URL, and refuses a bad head in one line;
the OpenAPI schema documents shapes and units."""

from __future__ import annotations

import re
from html import unescape

import pytest

from context_lookups.app.pages.formats import fmt
from tests.web_fixtures import TOPK_RUN, one, web_client

PROMPT = "In the beginning God created the heaven and the earth, and the earth was without form"


@pytest.fixture(scope="module")
def client(web_db, tiny_model_dir):
    yield from web_client(web_db, tiny_model_dir)


def _sums(lk: dict, scale: float) -> None:
    assert len(lk["contrib"]) == len(lk["attention"]) == len(lk["contrib_ln"]) == lk["position"] + 1
    assert sum(lk["contrib"]) + lk["bias"] == pytest.approx(lk["total"], abs=1e-5 * scale)
    assert sum(lk["contrib_ln"]) + lk["bias_ln"] == pytest.approx(lk["total_ln"],
                                                                  abs=1e-5 * scale / lk["ln_scale"])
    assert sum(lk["attention"]) == pytest.approx(1.0, abs=1e-5)


def test_pair_json_carries_each_prompts_lookup_and_the_summary(client, kept):
    layer, neuron, hl, h = kept
    d = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}.json").json()
    assert d["lookup"]["state"] == {"state": "done", "reason": None}
    assert d["lookup"]["units"] == "residual-stream units"
    prompts = d["active"] + d["inactive"] + d["heldout"]
    for p in prompts:
        lk = p["lookup"]
        assert lk["position"] == len(p["tokens"])  # BOS, then the tokens; the last one fires
        assert lk["total"] == p["attr_raw"][hl][h] and lk["total_ln"] == p["attr_ln"][hl][h]
        _sums(lk, max(abs(v) for row in p["attr_raw"] for v in row))
    groups = d["lookup"]["groups"]
    assert groups["active"]["n_prompts"] >= len(d["active"])
    assert groups["inactive"]["n_prompts"] >= len(d["inactive"])
    top = groups["active"]["rows"]
    assert top and [r["total"] for r in top] == sorted((r["total"] for r in top), reverse=True)
    assert all(1 <= r["prompts"] <= groups["active"]["n_prompts"] and 0 <= r["top"] <= r["prompts"]
               for r in top)
    ln = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}.json?score=ln").json()
    assert ln["lookup"]["units"] == "pre-activation units"


def test_pair_page_colours_tokens_by_the_lookup_with_the_twins_values(client, kept):
    layer, neuron, hl, h = kept
    url = f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}"
    html = client.get(url).text
    d = client.get(url + ".json").json()
    assert 'id="lookup"' in html and "contribution to the neuron through" in html
    assert "residual-stream units" in html
    shown = d["active"] + d["inactive"] + d["heldout"]
    assert html.count('data-row="contrib"') == len(shown)
    cells = re.findall(r'<span class="toks lookup-row" data-row="contrib">(.*?)</span></span>', html,
                       re.DOTALL)
    first = d["active"][0]["lookup"]
    titles = re.findall(r'data-src="(\d+)" title="([^"]*)"', cells[0] + "</span>")
    assert [int(s) for s, _ in titles] == list(range(first["position"] + 1))
    for s, title in titles:
        s = int(s)
        assert f"contribution {fmt(first['contrib'][s], 4)} (residual-stream units)" in unescape(title)
        assert f"attention {fmt(first['attention'][s], 4)}" in unescape(title)
    assert "firing position" in unescape(titles[-1][1]) and 'class="tok max"' in cells[0]
    assert '<table class="data lookup-table" data-group="active">' in html


def test_a_pair_not_kept_says_its_lookup_is_stored_for_kept_pairs_only(client, web_db):
    layer, neuron, hl, h = one(web_db, "SELECT n.layer, n.neuron, p.head_layer, p.head FROM pairs p "
                               "JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = p.run_id "
                               "WHERE r.slug = ? AND NOT p.kept "
                               "ORDER BY p.id LIMIT 1", TOPK_RUN)
    url = f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}"
    assert client.get(url + ".json").json()["lookup"]["state"]["state"] == "not_applicable"
    line = re.findall(r'<p class="empty state" id="lookup-state">(.*?)</p>', client.get(url).text, re.DOTALL)
    assert len(line) == 1 and "kept pairs only" in line[0]


def test_live_head_selection(client, kept):
    layer, neuron, hl, h = kept
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    q = {"prompt": PROMPT, "head": f"l{hl}h{h}"}
    live = client.get(base + ".json", params=q).json()["live"]
    lk = live["lookup"]
    assert lk["head"] == f"L{hl}H{h}" and lk["position"] == live["n_tokens"]
    assert lk["total"] == pytest.approx(live["attr_raw"][hl][h], abs=1e-6)
    _sums(lk, max(abs(v) for row in live["attr_raw"] for v in row))
    at3 = client.get(base + ".json", params={**q, "pos": 3}).json()["live"]["lookup"]
    assert at3["position"] == 4 and len(at3["contrib"]) == 5  # BOS + tokens 0..3
    assert client.get(base + ".json", params={"prompt": PROMPT}).json()["live"]["lookup"] is None
    # the fragment pushes the canonical URL with the head; that URL renders the same view
    frag = client.get(base + "/live", params=q, headers={"HX-Request": "true"})
    pushed = frag.headers["HX-Push-Url"]
    assert f"head=L{hl}H{h}" in pushed and 'id="live-lookup"' in frag.text
    page = client.get(pushed).text
    assert f'id="live-head" name="head" value="L{hl}H{h}"' in page
    assert page.count('data-row="contrib"') == 1 and page.count('data-row="attention"') == 1
    assert 'class="cell' in page and 'picked"' in page
    # an ablation keeps the look-up of the clean pass
    both = client.get(base + ".json", params={**q, "ablate": f"L{hl}H{h}"}).json()["live"]
    assert both["lookup"]["contrib"] == lk["contrib"] and both["ablation"] is not None


@pytest.mark.parametrize("head, message", [("L99H0", "out of range"), ("L0H1,L0H2", "give one"),
                                           ("H3", "not of the form")])
def test_a_bad_live_head_is_one_line(client, kept, head, message):
    layer, neuron, _, _ = kept
    r = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json", params={"prompt": PROMPT, "head": head})
    assert r.status_code == 422 and message in r.json()["detail"] and "\n" not in r.json()["detail"]


def test_openapi_documents_the_lookups_shape_and_units(client):
    spec = client.get("/openapi.json").json()
    pair = spec["paths"]["/{run}/neurons/{layer}/{neuron}/heads/{head_layer}/{head}.json"]["get"]
    assert pair["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PairJSON")
    s = spec["components"]["schemas"]
    props = s["LookupJSON"]["properties"]
    assert {"position", "contrib", "attention", "bias", "total", "contrib_ln", "bias_ln",
            "total_ln"} <= set(props)
    assert "residual-stream" in props["contrib"]["description"]
    assert "p + 1" in props["position"]["description"]
    assert "pre-activation" in props["contrib_ln"]["description"]
    assert "head" in s["LiveLookupJSON"]["properties"]
    neuron = spec["paths"]["/{run}/neurons/{layer}/{neuron}.json"]["get"]
    assert any(p["name"] == "head" for p in neuron["parameters"])
