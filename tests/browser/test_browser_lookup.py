"""The context look-up in real Chromium (tests/browser_fixtures.py): the pair page colours each
prompt's tokens by what they carry through the head, with tooltips equal to the JSON twin's
values; on the neuron page, clicking a head's value in the live heatmap shows its look-up (two
rows: contribution and attention), the URL carries ``head=`` and the view survives a reload of
that URL and Back. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest

from context_lookups.app.pages.formats import fmt
from tests.browser_fixtures import shot
from tests.web_fixtures import TOPK_RUN

pytestmark = pytest.mark.browser

WHITE = "rgb(255, 255, 255)"


def test_pair_page_colours_and_tooltips_equal_the_json(page, server, kept):
    layer, neuron, hl, h = kept
    url = f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}"
    page.goto(server.url + url)
    page.wait_for_selector("#lookup table.lookup-table")
    data = page.request.get(server.url + url + ".json").json()
    rows = page.locator('table.prompts .lookup-row[data-row="contrib"]')
    shown = data["active"] + data["inactive"] + data["heldout"]
    assert rows.count() == len(shown)
    checked = 0
    for i in (0, len(data["active"]), rows.count() - 1):  # an active, an inactive, a held-out prompt
        lk = shown[i]["lookup"]
        toks = rows.nth(i).locator("[data-src]")
        assert toks.count() == lk["position"] + 1
        colours = toks.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
        assert any(c != WHITE for c in colours)  # coloured by contribution (white = 0)
        top = max(range(len(lk["contrib"])), key=lambda s: abs(lk["contrib"][s]))
        assert colours[top] != WHITE
        for s in range(lk["position"] + 1):
            title = unescape(toks.nth(s).get_attribute("title"))
            m = re.search(r"contribution (\S+) \(residual-stream units\); attention (\S+)", title)
            assert m and m.group(1) == fmt(lk["contrib"][s], 4) and m.group(2) == fmt(lk["attention"][s], 4)
            checked += 1
        assert "tok max" in toks.nth(lk["position"]).get_attribute("class")  # the firing position
    assert checked > 10
    assert page.locator(".legend", has_text="contribution to the neuron").count() >= 1
    shot(page, "pair-lookup.png")


def test_live_head_selection_survives_reload_and_back(page, server, kept):
    layer, neuron, hl, h = kept
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    page.goto(server.url + base)
    page.fill("#live-prompt", "And God said, Let there be light: and there was light. And God saw the light")
    page.click("#live-form button[type=submit]")
    page.wait_for_selector("#live-act")
    page.wait_for_url(re.compile(r"prompt="))
    assert page.locator("#live-lookup").count() == 0
    head = f"L{hl}H{h}"
    page.click(f'#live button.pick-head[value="{head}"]')
    page.wait_for_selector("#live-lookup")
    page.wait_for_url(re.compile(r"head="))
    assert parse_qs(urlsplit(page.url).query)["head"] == [head]
    assert page.get_attribute("#live-lookup", "data-head") == head
    assert page.locator("#live-lookup .lookup-row").count() == 2  # contribution, then attention
    data = page.request.get(server.url + base + ".json?" + urlsplit(page.url).query).json()["live"]["lookup"]
    cell = page.locator('#live-lookup .lookup-row[data-row="contrib"] [data-src]').nth(1)
    first = unescape(cell.get_attribute("title"))
    assert f"contribution {fmt(data['contrib'][1], 4)}" in first
    assert f"attention {fmt(data['attention'][1], 4)}" in first
    total = page.inner_text("#lookup-total")
    shot(page, "live-lookup.png")

    page.reload()  # the pushed URL renders the same view without htmx
    page.wait_for_selector("#live-lookup")
    assert page.inner_text("#lookup-total") == total
    assert page.get_attribute('#live td.picked button.pick-head', "value") == head

    # a token click keeps the head (the hidden field) and moves the position
    page.locator("#live .live-tokens button.tok").nth(3).click()
    page.wait_for_url(re.compile(r"pos=3"))
    page.wait_for_selector("#live-lookup")
    assert parse_qs(urlsplit(page.url).query)["head"] == [head]
    assert page.locator('#live-lookup .lookup-row[data-row="contrib"] [data-src]').count() == 5  # BOS + 0..3
    page.go_back()
    page.wait_for_url(re.compile(r"^(?!.*pos=).*head="))
    page.wait_for_selector("#live-lookup")
    assert page.inner_text("#lookup-total") == total

    page.click("#live-lookup button.clear-head")  # clear: the view without a look-up
    page.wait_for_url(re.compile(r"^(?!.*head=)"))
    assert page.locator("#live-lookup").count() == 0
