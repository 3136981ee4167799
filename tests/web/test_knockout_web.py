"""The attention sink apart and the attention knockout in the explorer (issue 28 items 2-3; real
SQLite, real HTTP through TestClient, the tiny model live): the pair page's summary has the sink
as its own row and ranks the context by its share of the non-sink total, its colour scale leaves
the sink out, every prompt's look-up carries ``sink``/``context`` and its stored knockouts, the
pair's and the run's knockout summaries (JSON twins and pages); the live look-up has the same
sink split, a source's live knockout has its own URL (fragment, page, JSON) whose figures equal
the stored knockout of the same prompt, and bad input answers 422 in one line."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest

from context_lookups.app.pages.formats import fmt
from context_lookups.app.pages.markup import colour
from context_lookups.app.pages.present import nice_scale
from context_lookups.precompute.model import rank_context
from tests.web_fixtures import TOPK_RUN, rows, web_client

PROMPT = "In the beginning God created the heaven and the earth, and the earth was without form"


@pytest.fixture(scope="module")
def client(web_db, tiny_model_dir):
    yield from web_client(web_db, tiny_model_dir)


def _pair(client, kept, score="raw"):
    layer, neuron, hl, h = kept
    url = f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}"
    return url, client.get(url + ".json" + ("?score=ln" if score == "ln" else "")).json()


def test_the_sink_is_its_own_row_and_off_the_colour_scale(client, kept):
    url, d = _pair(client, kept)
    prompts = d["active"] + d["inactive"] + d["heldout"]
    for p in prompts:
        lk = p["lookup"]
        assert lk["sink"] == {"positions": [0], "contrib": lk["contrib"][0], "attention": lk["attention"][0]}
        ctx = lk["context"]
        assert [c["position"] for c in ctx] == rank_context(lk["contrib"])  # every other source, ranked
        absum = sum(abs(c) for c in lk["contrib"][1:])
        for c in ctx:
            assert c["contrib"] == lk["contrib"][c["position"]]
            assert c["share"] == pytest.approx(c["contrib"] / absum)
        assert lk["context_scale"] == pytest.approx(max(abs(c) for c in lk["contrib"][1:]))
    # the colour scale is the context's: the sink's term does not set it
    assert d["lookup"]["scale"] == pytest.approx(max(p["lookup"]["context_scale"] for p in prompts))
    for g in ("active", "inactive"):
        grp = d["lookup"]["groups"][g]
        if not grp["n_prompts"]:
            continue
        assert grp["sink"]["label"] == "attention sink" and grp["sink"]["token"] == "⟨BOS⟩"
        assert all(r["token"] != "⟨BOS⟩" for r in grp["rows"])
        shares = [r["share"] for r in grp["rows"]]
        assert shares == sorted(shares, reverse=True) and all(-1 <= s <= 1 for s in shares)
        assert sum(abs(r["total"]) for r in grp["rows"]) <= grp["context_abs"] + 1e-9
    html = client.get(url).text
    assert html.count('class="sink-row"') == sum(1 for g in ("active", "inactive")
                                                 if d["lookup"]["groups"][g]["sink"])
    chips = re.findall(r'<span class="tok bos sink[^"]*" style="background:([^"]+)" data-src="0" '
                       r'title="([^"]*)"', html)
    assert len(chips) == len(prompts)  # every prompt's sink chip: no colour, its figure in the tooltip
    assert all(bg == "transparent" and "attention sink (BOS): contribution" in unescape(t)
               and "not on the colour scale" in unescape(t) for bg, t in chips)


def test_stored_knockouts_are_shown_next_to_each_source_with_the_pairs_summary(client, kept):
    url, d = _pair(client, kept)
    ko = d["lookup"]["knockout"]
    assert ko["state"] == {"state": "done", "reason": None}
    prompts = d["active"] + d["inactive"] + d["heldout"]
    shown = [k for p in prompts for k in p["lookup"]["knockouts"]]
    assert shown and ko["n_knockouts"] >= len(shown)
    for p in prompts:
        kos = p["lookup"]["knockouts"]
        assert kos[-1]["sink"] and kos[-1]["sources"] == [0] and kos[-1]["label"] == "attention sink"
        assert [k["sources"][0] for k in kos[:-1]] == rank_context(p["lookup"]["contrib"])[:3]
        for k in kos:
            want = sum(p["lookup"]["contrib"][s] for s in k["sources"])
            assert k["contrib"] == pytest.approx(want, rel=1e-5, abs=1e-6)
            assert k["contrib_ln"] == pytest.approx(k["contrib"] / p["lookup"]["ln_scale"])
            assert (k["reason"] is None) == (k["total_act"] is not None)
    a = ko["agreement"]
    singles = [k for p in prompts for k in p["lookup"]["knockouts"]
               if not k["sink"] and k["total_act"] is not None]
    assert a["n"] >= len(singles) and (a["rho"] is None) == (a["reason"] is not None)
    t = ko["top_source"]
    assert t["n"] >= 1 and t["fraction"] == 0.5
    if t["holds"] is not None:
        assert t["holds"] == (t["mean_drop"] >= 0.5 * t["mean_contrib"])
    html = client.get(url).text
    assert 'id="knockout"' in html and "knockout-summary" in html
    assert html.count('class="ko-line"') == sum(1 for p in prompts if p["lookup"]["knockouts"])
    assert 'class="tok ko' in html or 'ko"' in html  # knocked-out sources are marked in the token rows


def test_the_run_card_gives_the_share_with_its_interval_and_n(client):
    d = client.get("/.json").json()
    run = next(r for r in d["runs"] if r["slug"] == TOPK_RUN)
    ko = run["findings"]["knockout"]
    assert ko["state"]["state"] == "done" and ko["n_pairs"] > 0
    t = ko["top_source"]
    assert t["n"] + t["undefined"] == ko["n_pairs"]
    if t["n"]:
        assert 0 <= t["low"] <= t["share"] <= t["high"] <= 1 and t["share"] == pytest.approx(t["k"] / t["n"])
    html = client.get("/").text
    card = html[html.index(f'id="run-{TOPK_RUN}"'):]
    assert "knockout-card" in card and f"{t['k']}/{t['n']}" in card


def _stored_prompt(web_db, kept):
    """A stored prompt of the kept pair whose text tokenizes back to its token ids (so the live
    pass reads the same tokens), with its knockouts."""
    layer, neuron, hl, h = kept
    sql = ("SELECT p.id, p.text, p.token_ids FROM prompts p JOIN neurons n ON n.id = p.neuron_id "
           "JOIN runs r ON r.id = n.run_id WHERE r.slug = ? AND n.layer = ? AND n.neuron = ? "
           "ORDER BY p.split, p.rank")
    for pid, text, ids in rows(web_db, sql, TOPK_RUN, layer, neuron):
        kos = rows(web_db, "SELECT idx, sources, direct_pre, direct_act, total_pre, total_act, total_prob, "
                           "prob_clean FROM knockouts WHERE prompt_id = ? AND head_layer = ? AND head = ? "
                           "ORDER BY idx", pid, hl, h)
        if kos:
            yield text, json.loads(ids), kos


def test_a_live_knockout_equals_the_stored_one_for_the_same_prompt(client, web_db, kept, tiny_model):
    layer, neuron, hl, h = kept
    checked = 0
    for text, ids, kos in _stored_prompt(web_db, kept):
        if tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"] != ids:
            continue
        for idx, sources, *eff in kos:
            src = json.loads(sources)[0]
            r = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/knockout.json",
                           params={"prompt": text, "head": f"L{hl}H{h}", "src": src})
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["sources"] == [src] and got["head"] == f"L{hl}H{h}" and got["position"] == len(ids)
            names = ("direct_pre", "direct_act", "total_pre", "total_act", "total_prob", "prob_clean")
            for name, v in zip(names, eff, strict=True):
                if v is None:
                    assert got[name] is None and got["reason"]
                else:
                    assert got[name] == pytest.approx(v, abs=1e-5 * max(1.0, abs(v))), (name, idx)
            checked += 1
        if checked >= 4:
            break
    assert checked >= 4


def test_clicking_a_source_of_the_live_lookup_runs_its_knockout_in_place(client, kept):
    layer, neuron, hl, h = kept
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    live = client.get(base + ".json", params={"prompt": PROMPT, "head": f"L{hl}H{h}"}).json()["live"]
    lk = live["lookup"]
    assert lk["sink"]["contrib"] == lk["contrib"][0] and lk["sink"]["attention"] == lk["attention"][0]
    assert [c["position"] for c in lk["context"]] == rank_context(lk["contrib"])
    page = client.get(base, params={"prompt": PROMPT, "head": f"L{hl}H{h}"}).text
    form = re.search(r'<form id="ko-form" method="get" action="([^"]+)" hx-get="([^"]+)" '
                     r'hx-target="#knockout-result"', page)
    assert form and form.group(1) == form.group(2) == f"{base}/knockout"
    buttons = re.findall(r'<button type="submit" form="ko-form" name="src" value="(\d+)"', page)
    assert [int(b) for b in buttons] == list(range(lk["position"] + 1))  # every source, the sink first
    # the live look-up's sink: its own chip, no colour, its figure in the text and the tooltip
    sink_btn = re.search(r'<button type="submit" form="ko-form" name="src" value="0" '
                         r'class="tok bos sink[^"]*" style="background:([^"]+)" data-src="0" '
                         r'title="([^"]*)"', page)
    assert sink_btn and sink_btn.group(1) == "transparent"
    assert "not on the colour scale" in unescape(sink_btn.group(2))
    assert re.search(r'id="lookup-sink">([^<]+)<', page).group(1) == fmt(lk["sink"]["contrib"], 4)
    # the context's colour scale is set by the context sources alone (the sink's term left out)
    scale = nice_scale([abs(c) for c in lk["contrib"][1:]])
    ctx = re.findall(r'name="src" value="([1-9]\d*)" class="tok[^"]*" style="background:([^"]+)"', page)
    assert len(ctx) == lk["position"]
    assert all(bg == colour(lk["contrib"][int(s)], scale) for s, bg in ctx)
    top = lk["context"][0]["position"]
    q = {"prompt": PROMPT, "head": f"L{hl}H{h}", "src": top}
    frag = client.get(base + "/knockout", params=q, headers={"HX-Request": "true"})
    assert frag.status_code == 200 and "<html" not in frag.text and 'class="ko-result"' in frag.text
    assert f'data-src="{top}"' in frag.text and 'id="ko-total-act"' in frag.text
    full = client.get(base + "/knockout", params=q)  # without htmx: a page of its own
    assert full.status_code == 200 and "<html" in full.text and "ko-result" in full.text
    js = client.get(base + "/knockout.json", params=q).json()
    assert js["contrib"] == pytest.approx(lk["contrib"][top], rel=1e-4, abs=1e-6)
    assert js["attention"] == pytest.approx(lk["attention"][top], rel=1e-4, abs=1e-6)
    sink = client.get(base + "/knockout.json", params={**q, "src": 0}).json()
    assert sink["sink"] and sink["label"] == "attention sink"


@pytest.mark.parametrize("params, needle", [
    ({"head": "L0H0", "src": 999}, "src 999 out of range"),
    ({"head": "", "src": 1}, "needs the look-up's head"),
    ({"head": "L9H0", "src": 1}, "L9H0"),
    ({"head": "L0H0", "src": -1}, "greater than or equal to 0"),
])
def test_a_bad_knockout_request_says_what_to_change(client, kept, params, needle):
    layer, neuron, _, _ = kept
    r = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/knockout.json", params={"prompt": PROMPT, **params})
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_the_openapi_schema_describes_the_sink_and_the_knockouts(client):
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    assert "sink" in comps["LookupJSON"]["properties"] and "context" in comps["LookupJSON"]["properties"]
    assert "attention sink" in json.dumps(comps["SinkJSON"])
    assert "knockouts" in comps["LookupJSON"]["properties"]
    assert "total_act" in comps["KnockoutJSON"]["properties"]
    path = next(p for p in schema["paths"] if p.endswith("/knockout.json"))
    assert "LiveKnockoutJSON" in json.dumps(schema["paths"][path])
