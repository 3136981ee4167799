"""The activation distribution on the neuron page and the "which neurons fire" page in real
Chromium at 1400 and 400 px: the chart fits the screen (no sideways scroll), draws its bars and
the top prompts' marks with tooltips, the negative congruent tokens stand beside the top ones;
the fire page runs a text with Ctrl+Enter into a shareable URL and links each neuron to its
page. Screenshots in test-artifacts/."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser_fixtures import shot
from tests.web_fixtures import TOPK_RUN

pytestmark = pytest.mark.browser

WIDTHS = "() => [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"


def _no_sideways_scroll(page) -> None:
    doc, body, width = page.evaluate(WIDTHS)
    assert max(doc, body) <= width, (doc, body, width)


def test_neuron_page_shows_the_distribution_and_negative_tokens(wpage, server, kept):
    layer, neuron, _, _ = kept
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    chart = wpage.locator("#distribution svg.act-hist")
    chart.scroll_into_view_if_needed()
    assert chart.is_visible()
    box = chart.bounding_box()
    assert box["width"] > 300 and box["x"] >= 0 and box["x"] + box["width"] <= wpage.width + 0.5
    data = wpage.request.get(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json").json()
    h = data["histogram"]
    bars = chart.locator("rect.bar")
    assert bars.count() == sum(1 for b in h["bins"] if b["count"]) > 5
    assert chart.locator("path.mark").count() == len(h["marks"]) == len(data["prompts"])
    first = bars.first.locator("title").text_content()
    assert re.match(r"^[\[(]−?[\d.e+-]+, −?[\d.e+-]+[)\]]: [\d,]+ tokens \(", first), first
    # the marks sit inside the plot, over the bars' range
    xs = [wpage.locator("#distribution path.mark").nth(i).bounding_box()["x"] for i in range(len(h["marks"]))]
    assert box["x"] <= min(xs) and max(xs) <= box["x"] + box["width"]
    top, bottom = wpage.locator("#top-tokens"), wpage.locator("#bottom-tokens")
    assert top.locator("li").count() == bottom.locator("li").count() == 10
    tb, bb = top.bounding_box(), bottom.bounding_box()
    if wpage.width >= 1400:  # side by side
        assert abs(tb["y"] - bb["y"]) < 2 and bb["x"] > tb["x"]
    _no_sideways_scroll(wpage)
    shot(wpage, f"neuron-distribution-{wpage.width}.png")


def test_fire_page_runs_a_text_into_a_shareable_url(wpage, server):
    wpage.goto(server.url + "/")
    wpage.click("header .fire-link")
    wpage.wait_for_selector("#fire-form")
    wpage.select_option("select[name=run]", TOPK_RUN)
    text = "The king said to the son of the house"
    wpage.fill("#fire-text", text)
    wpage.press("#fire-text", "Control+Enter")
    wpage.wait_for_url(re.compile(r"text="))
    wpage.wait_for_selector("#fire-overall")
    q = parse_qs(urlsplit(wpage.url).query)
    assert q == {"run": [TOPK_RUN], "text": [text]}
    assert wpage.input_value("#fire-text") == text
    n_tokens = wpage.locator("#fire-text-card .live-tokens a.tok").count()
    assert n_tokens == wpage.locator("#fire-positions tbody tr").count() > 5
    assert wpage.locator("#fire-overall tbody tr").count() == 20
    _no_sideways_scroll(wpage)
    shot(wpage, f"fire-{wpage.width}.png")
    # a token jumps to its row; a neuron links to its page
    wpage.locator("#fire-text-card .live-tokens a.tok").nth(2).click()
    assert wpage.url.endswith("#pos-2")
    link = wpage.locator("#fire-overall tbody tr").first.locator("a").first
    label = link.inner_text()
    link.click()
    wpage.wait_for_selector("h1")
    m = re.match(r"L(\d+)N(\d+)", label)
    assert wpage.url.endswith(f"/{TOPK_RUN}/neurons/{m.group(1)}/{m.group(2)}")
    assert wpage.inner_text("h1").startswith(label)
    # the shared URL renders the same result without typing
    wpage.goto(server.url + f"/fire?run={TOPK_RUN}&text=" + text.replace(" ", "%20"))
    assert wpage.locator("#fire-overall tbody tr").count() == 20
