"""The API's inline displays (``_repr_html_``) in real Chromium: hostile text in a live prompt,
a /fire text and the stored pages displays inert (no script runs, no error handler fires, no
request leaves the page, the text is visible as text), both as the bare document (the templates'
escaping alone) and inside the sandboxed frame a notebook shows; the displays are self-contained
(no script element, no stylesheet link) and link to the server when a base URL is given."""

from __future__ import annotations

import html
import os

import pytest

import context_lookups as cl
from tests.web_fixtures import TOPK_RUN

pytestmark = pytest.mark.browser

HOSTILE = ('<script>window.__pwned = 1; alert(1)</script> said <img src=x onerror="window.__pwned = 2; '
           'alert(2)"> the <b>bold</b> & "quoted" end')
MARKS = ("<script>", "onerror=", "<b>bold</b>")


@pytest.fixture(scope="module")
def api(web_db):
    db = cl.open(f"sqlite:///{web_db}", base_url="http://127.0.0.1:9")  # a port nothing answers on
    yield db
    db.close()


@pytest.fixture(scope="module")
def model(api):
    return api.run(TOPK_RUN).load_model(device="cpu")


def load(browser, content: str):
    """A new page with ``content`` loaded (at about:blank), what it ran and asked for."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    seen = {"dialogs": [], "errors": [], "requests": [], "console": []}
    pg.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: seen["errors"].append(str(e)))
    pg.on("console", lambda m: seen["console"].append(m.text))
    pg.on("request", lambda r: seen["requests"].append(r.url))
    pg.set_content(content)
    pg.wait_for_timeout(300)
    return ctx, pg, seen


def assert_inert(browser, document: str, inline: str, marks=MARKS) -> None:
    """The bare document and the notebook's frame around it: nothing ran, the marks are text."""
    assert "<script" not in document.split("<body>", 1)[1].replace("&lt;script", "")
    assert 'rel="stylesheet"' not in document and "<style>" in document
    ctx, pg, seen = load(browser, document)
    try:
        assert pg.evaluate("window.__pwned") is None
        assert pg.evaluate("document.scripts.length") == 0
        assert pg.evaluate("document.querySelectorAll('img').length") == 0
        text = pg.locator("main").inner_text()
        for m in marks:
            assert m in text.replace("\n", ""), m
        assert seen["dialogs"] == [] and seen["errors"] == [] and seen["requests"] == []
    finally:
        ctx.close()
    ctx, pg, seen = load(browser, f"<!doctype html><html><body><p>a notebook cell</p>{inline}</body></html>")
    try:
        frames = pg.frames
        assert len(frames) == 2, frames
        frame = frames[1]
        assert pg.evaluate("window.__pwned") is None
        assert frame.evaluate("document.scripts.length") == 0 and frame.evaluate("window.__pwned") is None
        body = frame.locator("main")
        assert body.is_visible()
        text = body.inner_text().replace("\n", "")
        for m in marks:
            assert m in text, m
        assert pg.locator("iframe").get_attribute("sandbox") == "allow-popups allow-popups-to-escape-sandbox"
        assert seen["dialogs"] == [] and seen["errors"] == [] and seen["requests"] == []
    finally:
        ctx.close()


def test_a_hostile_prompt_displays_inert(browser, api, model, kept):
    layer, neuron, hl, h = kept
    res = cl.lookup(model, HOSTILE, layer=layer, neuron=neuron, head=(hl, h), run=api.run(TOPK_RUN),
                    knockout=True)
    document = res.html()
    assert_inert(browser, document, res._repr_html_())
    assert 'href="http://127.0.0.1:9/"' in document  # the base URL: links go to the server
    assert "open this page on the explorer" in document and "prompt=%3Cscript%3E" in document
    assert res.to_dict()["prompt"] == HOSTILE  # the text itself is kept exactly
    if os.environ.get("LOOKUPS_TEST_SHOTS"):
        ctx, pg, _ = load(browser, document)
        pg.screenshot(path="test-artifacts/api-lookup-hostile.png", full_page=True)
        ctx.close()


def test_a_hostile_fire_text_displays_inert(browser, api, model):
    got = cl.fire(model, HOSTILE, run=api.run(TOPK_RUN))
    assert_inert(browser, got.html(), got._repr_html_())


def test_stored_pages_display_inert_and_self_contained(browser, api, kept):
    layer, neuron, hl, h = kept
    run = api.run(TOPK_RUN)
    pair, page = run.pair(layer, neuron, hl, h), run.neuron(layer, neuron)
    for obj in (pair, page):
        doc = obj.html()
        first = (obj.to_dict().get("active") or obj.to_dict()["prompts"])[0]["text"]
        marks = [w for w in first.split() if "<" not in w and "&" not in w][:2]
        assert_inert(browser, doc, obj._repr_html_(), marks=marks)
        assert f'<a href="{html.escape(obj.url)}">open this page on the explorer</a>' in doc


def test_without_a_base_url_there_is_no_server_link(web_db, kept):
    layer, neuron, hl, h = kept
    with cl.open(f"sqlite:///{web_db}", base_url="") as db:
        doc = db.run(TOPK_RUN).pair(layer, neuron, hl, h).html()
    assert "open this page on the explorer" not in doc and '<base target="_blank">' in doc
