"""The explorer in real Chromium (Debian's /usr/bin/chromium through Playwright) against a real
uvicorn server on a loopback port: highlighted prompts and heatmaps, the live box through htmx
with the URL pushed, reload reproducing the view, ablation by ticking a head, no console errors
and no request leaving localhost. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser_fixtures import shot
from tests.web_fixtures import TOPK_RUN, one

pytestmark = pytest.mark.browser

def test_home_and_neuron_list(page, server):
    page.goto(server.url + "/")
    page.wait_for_selector("svg.hist")
    shot(page, "home.png")
    page.click(f'a[href="/{TOPK_RUN}/neurons"] >> nth=0')
    page.wait_for_selector("table.list tbody tr")
    page.select_option('select[name="kind"]', "next_token")  # htmx swaps the table, pushes the URL
    page.wait_for_url(re.compile(r"kind=next_token"))
    page.wait_for_function("() => [...document.querySelectorAll('table.list .badge')]"
                           ".every(b => b.textContent.trim() === 'next-token')")
    assert "<html" not in page.inner_html("#neuron-table")
    shot(page, "neurons.png")
    page.reload()
    assert page.locator('select[name="kind"]').input_value() == "next_token"


def test_neuron_page_live_and_ablation(page, server, kept):
    layer, neuron, hl, h = kept
    base = f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
    page.goto(server.url + base)
    assert page.locator("table.prompts .toks .tok").count() > 10  # highlighted prompts
    assert page.locator("table.prompts .tok.max").count() >= 1
    assert page.locator("table.heat td.cell").count() > 0  # the heatmap
    bg = page.eval_on_selector("table.prompts .tok.max", "e => getComputedStyle(e).backgroundColor")
    assert bg.startswith("rgb") and bg != "rgb(255, 255, 255)"
    shot(page, "neuron.png")

    # type a prompt: the live fragment appears without a reload and the URL carries the prompt
    page.evaluate("() => { window.__marker = 42; }")
    prompt = 'The king said <b>"hello"</b> & the son of'
    page.fill("#live-prompt", prompt)
    page.click("#live-form button[type=submit]")
    page.wait_for_selector("#live-act")
    page.wait_for_url(re.compile(r"prompt="))
    assert page.evaluate("() => window.__marker") == 42  # same document: htmx swapped a fragment
    q = parse_qs(urlsplit(page.url).query)
    assert urlsplit(page.url).path == base and q["prompt"] == [prompt]
    act = page.inner_text("#live-act")
    prob = page.inner_text("#live-prob")
    shown = page.inner_text("#live .live-tokens")
    assert '<b>"hello"</b> &' in shown and page.locator("#live b").count() == 0  # markup as text
    shot(page, "live.png")

    # reload the pushed URL: the server renders the same view without htmx
    page.reload()
    page.wait_for_selector("#live-act")
    assert page.inner_text("#live-act") == act and page.inner_text("#live-prob") == prob
    assert page.evaluate("() => window.__marker") is None

    # tick a head: re-run with it zero-ablated, the URL carries ablate=
    page.check(f'#live input.abl-box[value="L{hl}H{h}"]')
    page.wait_for_selector("#abl-drop")
    page.wait_for_url(re.compile(r"ablate="))
    assert parse_qs(urlsplit(page.url).query)["ablate"] == [f"L{hl}H{h}"]
    assert page.inner_text("#live-act") == act  # the clean figures are unchanged
    drop = float(page.inner_text("#abl-drop").split()[-1])
    clean, ablated = float(page.inner_text("#live-prob")), float(page.inner_text("#abl-prob"))
    assert drop == pytest.approx(clean - ablated, abs=2e-4)
    shot(page, "ablated.png")

    # the same figures through the JSON twin of the pushed URL
    data = page.request.get(server.url + base + ".json?" + urlsplit(page.url).query).json()["live"]
    assert f"{data['ablation']['drop']:.4f}" == f"{drop:.4f}" or abs(data["ablation"]["drop"] - drop) < 1e-4

    # click a token: attribute there (?pos=N) and keep the ablation
    page.locator("#live .live-tokens button.tok").nth(1).click()
    page.wait_for_url(re.compile(r"pos=1"))
    page.wait_for_selector("#abl-drop")
    assert "ablate=" in page.url
    page.go_back()
    page.wait_for_url(re.compile(r"^(?!.*pos=)"))
    # an edited prompt makes the previous result's tokens (buttons carrying pos=) unclickable
    page.wait_for_selector("#live .live-tokens button.tok")
    page.fill("#live-prompt", "another prompt")
    n_tok = page.locator("#live .live-tokens button.tok").count()
    assert n_tok > 0 and page.locator("#live .live-tokens button.tok:disabled").count() == n_tok


def test_unselected_neuron_pair_head_and_api_docs(page, server, web_db, kept):
    layer, neuron, hl, h = kept
    page.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}")
    page.wait_for_selector("blockquote")
    shot(page, "pair.png")
    page.goto(server.url + f"/{TOPK_RUN}/heads/{hl}/{h}")
    page.wait_for_selector("table.data tbody tr")
    shot(page, "head.png")
    other = one(web_db, "SELECT n.layer, n.neuron FROM neurons n JOIN runs r ON r.id = n.run_id WHERE "
                "r.slug = ? AND n.kind = 'other' ORDER BY n.layer, n.neuron LIMIT 1", TOPK_RUN)
    page.goto(server.url + f"/{TOPK_RUN}/neurons/{other[0]}/{other[1]}")
    page.wait_for_selector("text=was not selected")
    shot(page, "other.png")
    resp = page.goto(server.url + f"/{TOPK_RUN}/neurons/99/0")
    assert resp.status == 404 and "layer 99 out of range" in page.inner_text("main")
    expected = [e for e in page.errors if "status of 404" in e]  # the browser logs the 404 itself
    assert len(expected) == len(page.errors) <= 1
    page.errors.clear()
    page.goto(server.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=60_000)
    shot(page, "docs.png")


# --- what a new user sees first: byte tokens, the neuron list, the histogram legend ---------

def test_byte_tokens_render_as_escapes(page, server, web_db):
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
    # decoded text in the tooltip
    assert all("€" in (t.get_attribute("title") or "") for t in byte_toks.all())
    assert "\ufffd" not in page.inner_text("main")
    shot(page, "byte-tokens.png")
    page.goto(server.url + f"/{TOPK_RUN}/neurons?kind=all&layer={layer}&per_page=500")
    cells = page.locator("table.list code.tok").all_inner_texts()
    assert any(re.search(r"\\x[0-9a-f]{2}", c) for c in cells) and not any("\ufffd" in c for c in cells)


def test_neuron_list_opens_on_analysed_neurons(page, server):
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
            ...(k.right > frame.right + 0.5 || k.bottom > frame.bottom + 0.5
                ? ['key ' + i + ' outside'] : []),
            ...keys.slice(i + 1).filter(o => hit(k, o)).map(() => 'keys overlap')]);
    })"""


def test_histogram_legend_clear_of_bars(page, server):
    from context_lookups.app.pages.charts import histogram_svg

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
