"""An imported run of the authors' GPT-2 small sample in real Chromium (Debian's chromium via
Playwright) against a real uvicorn server: the neuron page (the model-not-available line, the
firing token marked, the top-3 grid leading to a pair), the pair page with GPT-4's and the
baseline's explanations side by side, and /compare. Screenshots go to test-artifacts/."""

from __future__ import annotations

import pytest

from tests.browser_fixtures import shot
from tests.paper_data import build_paper_web_db, require_sample
from tests.web_fixtures import Server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory, precomputed_db):
    require_sample()
    from app.main import create_app

    db = build_paper_web_db(tmp_path_factory, precomputed_db)
    with Server(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as srv:
        yield srv


def test_imported_neuron_and_pair_pages(page, server):
    page.goto(server.url + "/gpt2-small/neurons/9/1690")
    notice = page.locator(".model-missing")
    assert notice.count() == 1 and "gpt2" in notice.inner_text()
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
    assert "0.817" in page.locator('.expl-block[data-explainer="openai:gpt-4"]').inner_text()
    shot(page, "paper-pair.png")


def test_compare_page(page, server):
    page.goto(server.url + "/")
    page.click("a.compare-link")
    page.wait_for_selector("svg.overlay")
    assert page.locator("svg.overlay polygon.series").count() == 2
    assert "0.663 ± 0.223" in page.inner_text("table#compare-e")
    shot(page, "paper-compare.png")
