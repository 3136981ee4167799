"""What a new user sees first, in real Chromium against a real server (issue 12, items 9, 10,
12): byte tokens render as escaped bytes with the character in the tooltip, the neuron list
opens on the analysed neurons with one click to all of them, and the histogram's legend stays
clear of its bars. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re

import pytest

from tests.test_browser import browser, page, server, shot  # noqa: F401  (fixtures)
from tests.web_fixtures import TOPK_RUN, one, web_db  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser


def test_byte_tokens_render_as_escapes(page, server, web_db):  # noqa: F811
    layer, neuron = one(web_db, "SELECT n.layer, n.neuron FROM neurons n JOIN runs r ON r.id = n.run_id "
                        "WHERE r.slug = ? AND n.token LIKE ? ORDER BY n.neuron LIMIT 1", TOPK_RUN, "%\ufffd%")
    page.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    assert re.search(r"\\x[0-9a-f]{2}", page.inner_text("code.tok.big"))
    assert "\ufffd" not in page.inner_text("main")
    page.fill("#live-prompt", "It costs 5 € today")
    page.click("#live-form button[type=submit]")
    page.wait_for_selector("#live .live-tokens .tok.bytes")
    byte_toks = page.locator("#live .live-tokens .tok.bytes")
    assert "".join(byte_toks.all_inner_texts()).replace(" ", "") == "\\xe2\\x82\\xac"
    assert all("€" in (t.get_attribute("title") or "") for t in byte_toks.all())  # decoded text in the tooltip
    assert "\ufffd" not in page.inner_text("main")
    shot(page, "byte-tokens.png")
    page.goto(server.url + f"/{TOPK_RUN}/neurons?kind=all&layer={layer}&per_page=500")
    cells = page.locator("table.list code.tok").all_inner_texts()
    assert any(re.search(r"\\x[0-9a-f]{2}", c) for c in cells) and not any("\ufffd" in c for c in cells)


def test_neuron_list_opens_on_analysed_neurons(page, server):  # noqa: F811
    page.goto(server.url + f"/{TOPK_RUN}/neurons")
    kinds = page.locator("table.list tbody .badge").all_inner_texts()
    assert kinds and kinds[0] == "next-token" and "other" not in kinds
    assert kinds == sorted(kinds, key=["next-token", "random"].index)
    shot(page, "neurons-default.png")
    page.click("#kind-switch")
    page.wait_for_url(re.compile(rf"/{TOPK_RUN}/neurons\?kind=all$"))
    assert "other" in page.locator("table.list tbody .badge").all_inner_texts()
    page.click("#kind-switch")  # and back to the default view
    page.wait_for_url(re.compile(rf"/{TOPK_RUN}/neurons$"))


OVERLAPS = """() => [...document.querySelectorAll('svg.hist')].flatMap(svg => {
        const box = e => e.getBoundingClientRect();
        const bars = [...svg.querySelectorAll(':scope > rect')].map(box).filter(b => b.height > 0);
        const keys = [...svg.querySelectorAll('text')].filter(t => t.textContent.includes('(n='))
            .map(t => t.closest('g.hist-key') || t).map(box);  // a key: its swatch and label
        const frame = box(svg);
        const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
        return keys.flatMap((k, i) => [
            ...bars.filter(b => hit(k, b)).map(() => 'key ' + i + ' over a bar'),
            ...(k.right > frame.right + 0.5 || k.bottom > frame.bottom + 0.5 ? ['key ' + i + ' outside'] : []),
            ...keys.slice(i + 1).filter(o => hit(k, o)).map(() => 'keys overlap')]);
    })"""


def test_histogram_legend_clear_of_bars(page, server):  # noqa: F811
    from app.present import histogram_svg

    page.goto(server.url + "/")
    page.wait_for_selector("svg.hist")
    assert page.locator("svg.hist text", has_text="(n=").count() >= 2
    assert page.evaluate(OVERLAPS) == []
    shot(page, "histogram.png")
    # good explanations pile up at the right end, where the legend used to sit
    high = {"next_token": [0.95] * 12 + [0.85] * 6, "random": [0.92] * 9 + [0.5] * 3, "other": [0.99] * 5}
    page.set_content(f'<!doctype html><link rel="stylesheet" href="{server.url}/static/style.css">'
                     f"<body>{histogram_svg(high)}</body>", wait_until="load")
    assert page.evaluate(OVERLAPS) == []
