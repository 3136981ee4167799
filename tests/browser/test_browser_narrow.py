"""400 px (issue 28 item 9), in real Chromium: the neuron page's key columns (E, ablation) come
first and are on screen; an inner scroll area that overflows says so (a "scroll →" line and a
shadow); the live heatmap's selected head is scrolled into view; /compare's columns with results
are reachable (the claim column stays while they scroll); and the firing token's outline is one
box, also for a token that starts with a space."""

from __future__ import annotations

import pytest

from tests.browser_fixtures import _checked_page, shot
from tests.web_fixtures import TOPK_RUN, rows

pytestmark = pytest.mark.browser


@pytest.fixture
def narrow(browser):
    yield from _checked_page(browser, 400)


def test_the_key_columns_of_the_neuron_page_come_first(narrow, server, kept):
    layer, neuron, _, _ = kept
    narrow.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    heads = narrow.locator("table.pairs-table thead th")
    first = [heads.nth(i).inner_text().strip() for i in range(3)]
    assert first == ["head", "E", "ablation drop active / inactive"]
    for i in range(3):
        box = heads.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 400, heads.nth(i).inner_text()
    shot(narrow, "narrow-neuron-pairs.png")


SCROLLERS = """() => [...document.querySelectorAll('.xscroll')].map(b => ({
  over: b.scrollWidth > b.clientWidth + 1, cls: b.className,
  hint: !!(b.previousElementSibling && b.previousElementSibling.classList.contains('scroll-hint')
           && b.previousElementSibling.getBoundingClientRect().height > 0),
  shadow: getComputedStyle(b).boxShadow}))"""


def test_inner_scroll_areas_show_a_cue(narrow, server, kept):
    layer, neuron, hl, h = kept
    seen = 0
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    for url in (base, f"{base}/heads/{hl}/{h}", "/compare", "/"):
        narrow.goto(server.url + url)
        narrow.wait_for_load_state("load")
        for b in narrow.evaluate(SCROLLERS):
            assert b["hint"] == b["over"], (url, b)  # a cue exactly where there is more to see
            if b["over"]:
                assert "overflowing" in b["cls"] and b["shadow"] != "none", (url, b)
                seen += 1
    assert seen > 0  # at 400 px some areas do scroll
    # a wide viewport: nothing overflows, no cue
    narrow.set_viewport_size({"width": 1400, "height": 900})
    narrow.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    assert narrow.locator(".scroll-hint").count() == 0


def test_the_selected_head_is_scrolled_into_view(narrow, server, kept, web_db):
    layer, neuron, _, _ = kept
    n_heads = rows(web_db, "SELECT n_heads FROM runs WHERE slug = ?", TOPK_RUN)[0][0]
    head = f"L{min(layer, 1)}H{n_heads - 1}"  # the last column of the heatmap
    narrow.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}?prompt=The%20king%20said%20to%20the%20son"
                f"&head={head}")
    narrow.wait_for_selector("#live-lookup")
    cell = narrow.locator("#live table.heat td.picked")
    assert cell.count() == 1
    inside = cell.evaluate("""c => { const b = c.closest('.xscroll').getBoundingClientRect();
        const r = c.getBoundingClientRect(); return r.left >= b.left - 1 && r.right <= b.right + 1
        && r.right <= window.innerWidth + 1; }""")
    assert inside
    shot(narrow, "narrow-live-head.png")


def test_compare_columns_with_results_are_reachable(narrow, server):
    narrow.goto(server.url + "/compare")
    table = narrow.locator("table.compare.verdicts")
    box = narrow.locator("table.compare.verdicts").locator("xpath=..")
    box.evaluate("b => { b.scrollLeft = b.scrollWidth; }")
    last = table.locator("thead th").last
    r = last.bounding_box()
    assert r["x"] >= 0 and r["x"] + r["width"] <= 400 + 1  # the last run's column can be brought on screen
    first = table.locator("tbody tr th").first.bounding_box()
    assert first["x"] >= -1 and first["x"] + first["width"] <= 400  # the claim stays while it scrolls
    shot(narrow, "narrow-compare.png")


def test_the_firing_token_outline_is_one_box(narrow, server, kept):
    layer, neuron, hl, h = kept
    spaced = 0
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    for url in (base, f"{base}/heads/{hl}/{h}"):
        narrow.goto(server.url + url)
        boxes = narrow.eval_on_selector_all(".tok.max", "els => els.map(e => [e.getClientRects().length, "
                                            "/^[ ␣]/.test(e.textContent)])")
        assert boxes and all(n == 1 for n, _ in boxes), url
        spaced += sum(1 for _, sp in boxes if sp)
    assert spaced > 0  # tokens that start with a space were among them
