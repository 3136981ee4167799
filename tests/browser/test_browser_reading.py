"""What a researcher reads, in real Chromium at 1400 and 400 px (issue 21, item 1 and defects 5
and 8): the home page's verdict with its rule, glossary links and a histogram of shares; the
neuron page with its pairs first, the ranking activation and its rank explained; tokens whose
leading spaces and control characters are visible; the classifier's score shown, not hidden;
and the pages without JavaScript."""

from __future__ import annotations

import re

import pytest

from tests.browser_fixtures import shot
from tests.web_fixtures import TOPK_RUN, one

pytestmark = pytest.mark.browser


def test_home_states_the_verdict_and_defines_its_terms(wpage, server):
    wpage.goto(server.url + "/")
    card = wpage.locator(f"#run-{TOPK_RUN}")
    rows = card.locator("table.verdicts tr.claim")
    # the paper's two claims (E above chance, above random neurons; the ablation gap) and claim
    # 2's random-neuron control
    assert rows.count() == 4
    assert "random" in rows.nth(3).inner_text()
    words = {"reproduces", "does not reproduce", "inconclusive", "not measured"}
    for i in range(4):
        v = rows.nth(i).locator("a.verdict")
        assert v.is_visible() and v.inner_text() in words
        assert "lies on the paper's side of the null value" in v.get_attribute("title")
    runs = wpage.request.get(server.url + "/.json").json()["runs"]
    run_json = next(r for r in runs if r["slug"] == TOPK_RUN)
    c = run_json["findings"]["verdict"]["explanations"][0]["vs_chance"]
    assert f"[{c['lo']:.3f}, {c['hi']:.3f}]" in rows.nth(0).inner_text()
    assert "0.650" in rows.nth(0).inner_text()  # the paper's figure beside it
    # jargon is linked to the glossary with its definition as a tooltip
    term = card.locator("a.term", has_text="single-class").or_(
        card.locator("a.term", has_text="held-out all one class"))
    assert term.first.get_attribute("title") and term.first.get_attribute("href") == "/glossary#single-class"
    for t in ("skew test", "authors' rule", "answers not Yes/No"):
        assert card.locator("a.term", has_text=t).count() >= 1, t
    # the histogram: shares with labelled axes and each group's n
    svg = card.locator("svg.hist").first
    texts = svg.locator("text").all_text_contents()
    assert "share of pairs" in texts and any("0.5 = chance" in t for t in texts)
    ticks = [t for t in texts if t.endswith("%")]
    assert ticks[0] == "0%" and all(re.fullmatch(r"\d+%", t) for t in ticks)
    steps = {int(b[:-1]) - int(a[:-1]) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() in (1, 2, 5, 10, 20, 25, 50)
    assert sum("(n=" in t for t in texts) == 2
    shot(wpage, f"home-{wpage.width}.png")
    wpage.locator("a.term", has_text="skew test").first.click()
    wpage.wait_for_url(re.compile(r"/glossary#skew-test$"))
    assert "skewtest" in wpage.inner_text("dl.glossary")


def test_neuron_page_leads_with_pairs_and_explains_its_ranks(wpage, server, kept, web_db):
    layer, neuron, _, _ = kept
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    y = {sel: wpage.locator(sel).bounding_box()["y"] for sel in ("#pairs", "#heatmaps", "#prompts-card")}
    assert y["#pairs"] < y["#heatmaps"] < y["#prompts-card"]
    # the prompts are ranked by the untrimmed document's activation, now shown, in order
    heads = wpage.locator("#prompts-card table.prompts thead th").all_inner_texts()
    assert heads[:3] == ["#", "document act", "prompt act"]
    doc = [float(t) for t in wpage.locator("#prompts-card td.doc-act").all_inner_texts()]
    assert len(doc) > 3 and doc == sorted(doc, reverse=True)
    # the rank says how many higher-ranked neurons were passed over
    rank, kind = one(web_db, "SELECT n.rank, n.kind FROM neurons n JOIN runs r ON r.id = n.run_id "
                     "WHERE r.slug = ? AND n.layer = ? AND n.neuron = ?", TOPK_RUN, layer, neuron)
    above = one(web_db, "SELECT count(*) FROM neurons n JOIN runs r ON r.id = n.run_id WHERE r.slug = ? AND "
                "n.layer = ? AND n.kind = 'next_token' AND n.rank < ?", TOPK_RUN, layer, rank)[0]
    note = wpage.inner_text("#rank-note")
    assert note.startswith(f"Rank {rank + 1:,} of ") and f"in layer {layer}" in note
    if kind == "next_token" and rank > above:
        assert f"the {rank - above:,} higher-ranked" in note and "selection rules" in note
    shot(wpage, f"neuron-{wpage.width}.png")


def test_tokens_show_leading_spaces_and_control_characters(wpage, server, kept, web_db):
    layer, neuron, _, _ = kept
    spaced = one(web_db, "SELECT n.layer, n.neuron, n.token FROM neurons n JOIN runs r ON r.id = n.run_id "
                 "WHERE r.slug = ? AND n.kind = 'next_token' AND n.token LIKE ' %' LIMIT 1", TOPK_RUN)
    bare = one(web_db, "SELECT n.layer, n.neuron, n.token FROM neurons n JOIN runs r ON r.id = n.run_id "
               "WHERE r.slug = ? AND n.token GLOB '[A-Za-z]*' LIMIT 1", TOPK_RUN)
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{spaced[0]}/{spaced[1]}")
    shown = wpage.inner_text("code.tok.big")
    assert shown == "␣" + spaced[2][1:]  # " est" is not shown as "est"
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{bare[0]}/{bare[1]}")
    assert wpage.inner_text("code.tok.big") == bare[2]
    # a token alone never wraps inside itself, even in a narrow column
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons?kind=all&per_page=500")
    wrapped = wpage.evaluate("() => [...document.querySelectorAll('table.list code.tok')].filter(c => "
                             "c.getClientRects().length > 1 || c.getBoundingClientRect().height > "
                             "1.8 * parseFloat(getComputedStyle(c).lineHeight || 16)).length")
    assert wrapped == 0
    # control characters are escaped as bytes are, never drawn as empty boxes
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}?prompt=ab%7Fcd%16ef%0Agh")
    wpage.wait_for_selector("#live-act")
    live = wpage.inner_text("#live .live-tokens")
    assert "\\x7f" in live and "\\x16" in live and "↵" in live
    assert not set(live) & {"\x7f", "\x16", "␡", "␖"}
    assert wpage.locator("#live .live-tokens .tok.ctl").count() >= 2


def test_classifier_column_shows_the_score(wpage, server, kept):
    layer, neuron, hl, h = kept
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}")
    texts = wpage.evaluate("""() => {
        const th = [...document.querySelectorAll('table.prompts thead th')]
            .find(th => th.textContent.trim() === 'baseline says');
        const col = [...th.parentElement.children].indexOf(th);
        return [...th.closest('table').querySelectorAll('tbody tr')].map(tr => tr.children[col].innerText);
    }""")
    assert texts
    for text in texts:
        assert re.fullmatch(r"(Yes|No)(\s+score -?[0-9.]+ (>|<=) threshold -?[0-9.]+"
                            r"|\s+(in)?active on every explain prompt)?", text.strip()), text
        assert "..." not in text and "…" not in text
    assert wpage.locator("td.answer .answer-detail").first.is_visible()
    e = wpage.locator(".expl-block .e-val").first
    assert re.search(r"\[\d\.\d\d, \d\.\d\d\]", e.inner_text()) and re.search(r"n\s\d+/\d+", e.inner_text())


def test_pages_work_without_javascript(browser, server, kept):
    layer, neuron, _, _ = kept
    ctx = browser.new_context(java_script_enabled=False, viewport={"width": 400, "height": 900})
    pg = ctx.new_page()
    try:
        pg.goto(server.url + "/")
        pg.fill("header.top input[name=q]", "the")
        pg.press("header.top input[name=q]", "Enter")
        pg.wait_for_url(re.compile(r"/search\?q=the"))
        assert pg.locator("li.hit").count() > 0
        pg.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
        pg.fill("#live-prompt", "no script here")
        pg.click("#live-form button[type=submit]")
        pg.wait_for_selector("#live-act")
        assert "prompt=no" in pg.url and pg.input_value("#live-prompt") == "no script here"
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= 400
    finally:
        ctx.close()
