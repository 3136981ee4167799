"""An imported run of the authors' GPT-2 small sample in real Chromium (Debian's chromium via
Playwright) against a real uvicorn server: the neuron page (the disabled live box with its
reason, the authors' dates, GPT-4's explanations with their lead-in, the imported ablation, the
firing token marked, the top-3 grid leading to a pair), the pair page (the explainers side by
side, the ablation with where it comes from) and /compare. Screenshots go to test-artifacts/."""

from __future__ import annotations

import pytest

from tests.browser_fixtures import shot
from tests.paper_data import paper_server

pytestmark = pytest.mark.browser

LEAD = "This attention head is active when the document"


@pytest.fixture(scope="module")
def server(tmp_path_factory, precomputed_db):
    yield from paper_server(tmp_path_factory, precomputed_db)


def test_imported_neuron_and_pair_pages(page, server):
    page.goto(server.url + "/gpt2-small/neurons/9/1690")
    notice = page.locator(".model-missing")
    assert notice.count() == 1
    assert "gpt2" in notice.inner_text() and "not on this server" in notice.inner_text()
    run = page.locator("#live-form button[type=submit]")
    assert run.is_disabled() and "not on this server" in run.get_attribute("title")
    dates = page.locator(".provenance").inner_text()
    assert "2023-10-11" in dates and "2023-10-14" in dates and "imported" in dates
    kept = page.locator("section.card", has_text="Kept (neuron, head) pairs")
    assert kept.locator(".expl", has_text=LEAD).count() == 2  # GPT-4's, lead-in included
    assert kept.locator("td.num", has_text="zero:").count() == 2  # the imported ablation, per pair
    n_rows = page.locator("table.prompts tbody tr").count()
    assert n_rows == 18 and page.locator("table.prompts .tok.max").count() == n_rows
    # no per-token activation: every token white, the firing token outlined
    bg = page.eval_on_selector("table.prompts .tok.max", "e => getComputedStyle(e).backgroundColor")
    assert bg == "rgb(255, 255, 255)"
    shot(page, "paper-neuron.png")
    page.click('table.heat a[href$="/heads/8/1"]')  # the top-3 share grid links to the pair
    page.wait_for_url("**/gpt2-small/neurons/9/1690/heads/8/1")
    blocks = page.locator(".explanations .expl-block")
    assert blocks.count() == 2
    a, b = blocks.nth(0).bounding_box(), blocks.nth(1).bounding_box()
    assert abs(a["y"] - b["y"]) < 2 and a["x"] + a["width"] <= b["x"] + 1  # side by side
    gpt = page.locator('.expl-block[data-explainer="openai:gpt-4"]').inner_text()
    assert "0.817" in gpt and LEAD in gpt
    summary = page.locator(".ablation-summary").inner_text()
    assert "zero-ablation of L8H1" in summary and "7_head_ablation/" in summary
    assert "KS over prompts" in summary
    assert "2023-10-11" in page.locator(".provenance").inner_text()
    shot(page, "paper-pair.png")


def test_compare_page(page, server):
    page.goto(server.url + "/")
    page.click("a.compare-link")
    page.wait_for_selector("svg.overlay")
    assert page.locator("svg.overlay polygon.series").count() == 2
    assert "0.663 ± 0.223" in page.inner_text("table#compare-e")
    shot(page, "paper-compare.png")
