"""Browser fixtures (a pytest plugin loaded by conftest.py): Debian's /usr/bin/chromium driven by
Playwright, a page that fails its test on any console error or any request leaving localhost, a
real uvicorn server on the web tests' database, and ``shot`` for screenshots in test-artifacts/."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.web_fixtures import Server, rows

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def server(web_db, tiny_model_dir):
    from context_lookups.app.main import create_app

    over = {"torch_threads": None}  # leave torch's global thread count to the rest of the suite
    if os.environ.get("LOOKUPS_TEST_WEB_DB"):
        over["model_paths"] = {s: str(tiny_model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")}
    with Server(create_app(db_url=f"sqlite:///{web_db}", **over)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _checked_page(browser, width: int):
    """A page of ``width`` px that records its requests and console errors (a generator: the
    test runs at its ``yield``, then no request may have left localhost and no error logged)."""
    ctx = browser.new_context(viewport={"width": width, "height": 900})
    pg = ctx.new_page()
    pg.requests, pg.errors = [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.set_default_timeout(60_000)  # a live pass on a busy 2-core machine can take seconds
    yield pg
    hosts = {urlsplit(u).hostname for u in pg.requests if not u.startswith(("data:", "about:"))}
    assert hosts <= {"127.0.0.1", "localhost"}, f"requests left localhost: {hosts}"
    assert pg.errors == [], pg.errors
    ctx.close()


@pytest.fixture
def page(browser):
    yield from _checked_page(browser, 1360)


WIDTHS = (1400, 400)  # a desktop window and a phone held upright


@pytest.fixture(params=WIDTHS, ids=[f"{w}px" for w in WIDTHS])
def wpage(browser, request):
    """:func:`page` at each width of :data:`WIDTHS` (``wpage.width``)."""
    for pg in _checked_page(browser, request.param):
        pg.width = request.param
        yield pg


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
