"""Live box off means off (issue 28 item 7), in real Chromium: on an imported run whose model is
not on this server, the prompt box and its Run button are ``disabled`` and ``aria-disabled``,
look it (greyed, no pointer cursor), and Ctrl+Enter does nothing — no request, no second copy
of the notice; on a run whose model is here, the same box is on."""

from __future__ import annotations

import pytest

from tests.browser_fixtures import shot
from tests.paper_data import paper_server

pytestmark = pytest.mark.browser

STYLE = """sel => { const s = getComputedStyle(document.querySelector(sel));
  return {cursor: s.cursor, bg: s.backgroundColor, color: s.color}; }"""
CTRL_ENTER = """() => document.getElementById('live-prompt').dispatchEvent(
  new KeyboardEvent('keydown', {key: 'Enter', ctrlKey: true, bubbles: true, cancelable: true}))"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, precomputed_db):
    yield from paper_server(tmp_path_factory, precomputed_db)


def test_the_box_of_a_run_without_its_model_is_off(page, server):
    page.goto(server.url + "/gpt2-small/neurons/9/1690")
    box, run = page.locator("#live-prompt"), page.locator("#live-form button[type=submit]")
    assert page.locator(".model-missing").count() == 1
    for el in (box, run):
        assert el.is_disabled() and el.get_attribute("aria-disabled") == "true"
        assert el.get_attribute("aria-describedby") == "live-off"
    assert not box.is_editable()
    off_btn = page.evaluate(STYLE, "#live-form button[type=submit]")
    off_box = page.evaluate(STYLE, "#live-prompt")
    assert off_btn["cursor"] != "pointer" and off_box["cursor"] != "text"
    assert off_btn["bg"] != "rgb(178, 71, 47)"  # not the accent of a live Run button
    before = len(page.requests)
    page.evaluate(CTRL_ENTER)
    page.wait_for_timeout(800)
    assert page.locator(".model-missing").count() == 1  # no second copy of the notice
    assert page.locator("#live .error").count() == 0
    assert not [u for u in page.requests[before:] if "/live" in u or "prompt=" in u]
    shot(page, "live-off.png")


def test_the_box_of_a_run_with_its_model_is_on(page, server):
    page.goto(server.url + "/")
    slug = next(s for s in page.eval_on_selector_all("section.run", "els => els.map(e => e.id.slice(4))")
                if s != "gpt2-small")
    page.goto(server.url + f"/{slug}/neurons")
    page.locator("table.list tbody a[href*='/neurons/']").first.click()
    page.wait_for_selector("#live-prompt")
    run = page.locator("#live-form button[type=submit]")
    assert run.is_enabled() and run.get_attribute("aria-disabled") is None
    assert page.evaluate(STYLE, "#live-form button[type=submit]")["cursor"] == "pointer"
    assert page.locator("#live-prompt").is_editable() and page.locator(".model-missing").count() == 0
