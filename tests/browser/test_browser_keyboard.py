"""The neuron page's live box with the browser's Back button and the keyboard, in real Chromium
at 1400 and 400 px (issue 21, defects 2 and 4): Back restores the prompt box with the view it
produced, focus stays on the token or head checkbox that was used, skip links pass the header
and the heatmaps, Ctrl+Enter runs the prompt."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser_fixtures import shot
from tests.web_fixtures import TOPK_RUN

pytestmark = pytest.mark.browser

PROMPT = "The king said to the son of the house"


def _run(page, prompt: str = PROMPT) -> None:
    page.fill("#live-prompt", prompt)
    page.click("#live-form button[type=submit]")
    page.wait_for_selector("#live-act")
    page.wait_for_url(re.compile(r"prompt="))


def test_back_restores_the_prompt_box_with_its_view(wpage, server, kept):
    layer, neuron, _, _ = kept
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    _run(wpage)
    wpage.locator("#live .live-tokens button.tok").nth(2).click()
    wpage.wait_for_url(re.compile(r"pos=2"))
    wpage.wait_for_selector("#live .tok.sel")
    wpage.go_back()
    wpage.wait_for_url(re.compile(r"^(?!.*pos=)"))
    wpage.wait_for_selector("#live-act")
    assert wpage.input_value("#live-prompt") == PROMPT  # the box and the view agree again
    assert wpage.get_attribute("#live .live-result", "data-prompt") == PROMPT
    # clicking a token of the restored view attributes there, it does not wipe the view
    wpage.locator("#live .live-tokens button.tok").nth(1).click()
    wpage.wait_for_url(re.compile(r"pos=1"))
    wpage.wait_for_selector("#live-act")
    assert "empty" not in wpage.inner_text("#live")
    assert parse_qs(urlsplit(wpage.url).query)["prompt"] == [PROMPT]
    wpage.go_back()  # and Back again, to the page before the first token click
    wpage.wait_for_url(re.compile(r"^(?!.*pos=)"))
    assert wpage.input_value("#live-prompt") == PROMPT
    shot(wpage, f"back-restored-{wpage.width}.png")


def test_focus_stays_on_the_token_and_the_head_used(wpage, server, kept):
    layer, neuron, hl, h = kept
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    _run(wpage)
    wpage.locator("#live .live-tokens button.tok").nth(3).click()
    wpage.wait_for_url(re.compile(r"pos=3"))
    wpage.wait_for_function("() => document.activeElement && document.activeElement.matches("
                            "'#live button.tok.sel[value=\"3\"]')")
    box = f'#live input.abl-box[value="L{hl}H{h}"]'
    wpage.check(box)
    wpage.wait_for_url(re.compile(r"ablate="))
    wpage.wait_for_selector("#abl-drop")
    wpage.wait_for_function(f"() => document.activeElement && document.activeElement.matches('{box}')")
    assert wpage.is_checked(box)
    # the keyboard alone: Space unticks the focused head, which stays focused
    wpage.keyboard.press("Space")
    wpage.wait_for_url(re.compile(r"^(?!.*ablate=)"))
    wpage.wait_for_function(f"() => document.activeElement && document.activeElement.matches('{box}')"
                            " && !document.activeElement.checked")


def test_skip_links_pass_the_header_and_the_heatmaps(wpage, server, kept):
    layer, neuron, _, _ = kept
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    wpage.keyboard.press("Tab")
    first = wpage.evaluate("() => [document.activeElement.className, "
                           "document.activeElement.getAttribute('href')]")
    assert first == ["skip", "#main"]
    assert wpage.locator("a.skip").first.bounding_box()["width"] > 20  # shown when focused
    skip = wpage.locator("#heatmaps a.skip-inline")
    # it comes before every link of the heatmaps, and those are many
    n_links = wpage.evaluate("() => document.querySelectorAll('#heatmaps table.heat a').length")
    assert n_links >= 8 and wpage.evaluate(
        "() => { const s = document.querySelector('#heatmaps a.skip-inline');"
        " return [...document.querySelectorAll('#heatmaps table.heat a')].every("
        " a => s.compareDocumentPosition(a) & Node.DOCUMENT_POSITION_FOLLOWING); }")
    skip.focus()
    assert skip.bounding_box()["width"] > 20
    wpage.keyboard.press("Enter")
    wpage.wait_for_function("() => document.activeElement && document.activeElement.id === 'prompts-card'")
    wpage.keyboard.press("Tab")
    where = wpage.evaluate("() => [!!document.activeElement.closest('#prompts-card'),"
                           " !!document.activeElement.closest('#heatmaps')]")
    assert where == [True, False]


def test_ctrl_enter_runs_the_prompt(wpage, server, kept):
    layer, neuron, _, _ = kept
    wpage.goto(server.url + f"/{TOPK_RUN}/neurons/{layer}/{neuron}")
    wpage.fill("#live-prompt", "Ctrl and Enter run this")
    wpage.press("#live-prompt", "Control+Enter")
    wpage.wait_for_selector("#live-act")
    wpage.wait_for_url(re.compile(r"prompt=Ctrl"))
    assert wpage.input_value("#live-prompt") == "Ctrl and Enter run this"  # no newline typed
    assert wpage.evaluate("() => document.activeElement.id") == "live-prompt"  # still typing there
