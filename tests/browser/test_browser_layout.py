"""Every page type in real Chromium at 1400 and 400 px (issue 21, defects 3, 7 and 8): no
sideways scroll and a readable header, no box that cuts rows off, one number format per grid
column (per quantity, where a table's rows hold different ones: ``tr[data-quantity]``; figures
under 1e-3 in scientific notation, issue 28), legends
that fit their quantity and name its unit, and the search box in the header."""

from __future__ import annotations

import re

import pytest

from tests.browser_fixtures import shot
from tests.web_fixtures import TOPK_RUN

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def pages(kept) -> dict[str, str]:
    """One URL of each page type of the explorer."""
    layer, neuron, hl, h = kept
    return {"home": "/", "neuron list": f"/{TOPK_RUN}/neurons",
            "neuron": f"/{TOPK_RUN}/neurons/{layer}/{neuron}",
            "neuron, live": f"/{TOPK_RUN}/neurons/{layer}/{neuron}"
                            f"?prompt=The%20king%20said%20to%20the%20son&ablate=L{hl}H{h}",
            "pair": f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}",
            "head": f"/{TOPK_RUN}/heads/{hl}/{h}", "pairs list": f"/{TOPK_RUN}/pairs",
            "compare": "/compare", "search": "/search?q=the", "glossary": "/glossary",
            "fire": f"/fire?run={TOPK_RUN}&text=The%20king%20said%20to%20the%20son%20of%20the%20house"}


HEADER = """() => {
  const h = document.querySelector('header.top').getBoundingClientRect();
  const bad = [...document.querySelectorAll('header.top a, header.top input')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.left < h.left - 0.5 || r.right > h.right + 0.5
      || r.top < h.top - 0.5 || r.bottom > h.bottom + 0.5
      || r.right > window.innerWidth + 0.5;
  }).map(e => e.textContent || e.name);
  return {width: h.width, bad};
}"""

CUT_BOXES = """() => [...document.querySelectorAll('main *')].filter(e => {
  if (e.tagName === 'TEXTAREA' || e.matches('.skip:not(:focus)')) return false;  // shown when focused
  const oy = getComputedStyle(e).overflowY;
  return (oy === 'auto' || oy === 'scroll' || oy === 'hidden') && e.scrollHeight > e.clientHeight + 1;
}).map(e => e.tagName + '.' + e.className)"""


def test_no_sideways_scroll_and_a_readable_header(wpage, server, pages):
    for name, url in pages.items():
        wpage.goto(server.url + url)
        wpage.wait_for_load_state("load")
        widths = wpage.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth,"
                                " document.body.scrollWidth]")
        assert max(widths[0], widths[2]) <= widths[1], \
            f"{name} scrolls sideways at {wpage.width} px: {widths}"
        head = wpage.evaluate(HEADER)
        assert head["bad"] == [] and abs(head["width"] - widths[1]) < 1, (name, head)
        if wpage.width == 400:
            shot(wpage, f"narrow-{name.replace(', ', '-').replace(' ', '-')}.png")


def test_no_box_cuts_rows_off(wpage, server, pages, web_db):
    for name, url in pages.items():
        wpage.goto(server.url + url)
        assert wpage.evaluate(CUT_BOXES) == [], name
    # the head page shows every row of its JSON twin
    wpage.goto(server.url + pages["head"])
    n = len(wpage.request.get(server.url + pages["head"].split("?")[0] + ".json").json()["pairs"])
    assert n > 0 and wpage.locator("main table.data tbody tr").count() == n
    rows = wpage.locator("main table.data tbody tr")
    last = rows.nth(n - 1).bounding_box()
    assert last["height"] > 0
    assert wpage.evaluate("() => document.documentElement.scrollHeight") >= last["y"] + last["height"]


NUMBERS = r"""() => {
  const out = [];
  const num = /[−+-]?\d+\.\d+(?:e[−+-]?\d+)?|[−+-]?\d+e[−+-]?\d+/g;
  for (const [ti, table] of [...document.querySelectorAll('main table.data, main table.heat')].entries()) {
    const cols = {};
    for (const tr of table.querySelectorAll('tbody tr')) {
      const q = tr.dataset.quantity || '';  // rows of different quantities (E, drop) in one table
      [...tr.children].forEach((cell, i) => {
        const ci = q + i;
        if (cell.tagName !== 'TD') return;
        const c = cell.cloneNode(true);
        c.querySelectorAll('.ci, .e-n, .flag, .muted, .answer-detail, .toks, .tok, code, .next, '
                           + '.badge, a.head')
          .forEach(x => x.remove());
        for (const m of c.textContent.matchAll(num)) (cols[ci] = cols[ci] || []).push(m[0]);
      });
    }
    for (const [ci, vals] of Object.entries(cols)) {
      // scientific notation is the rule for figures under 1e-3 (formats.sci), and only for them
      const exp = vals.filter(v => /e/.test(v) && !(Math.abs(parseFloat(v.replace('−', '-'))) < 1e-3));
      const decs = new Set(vals.filter(v => !/e/.test(v)).map(v => (v.split('.')[1] || '').length));
      if (exp.length || decs.size > 1)
        out.push({table: ti, cls: table.className, col: ci, vals: vals.slice(0, 12)});
    }
  }
  return out;
}"""


def test_numbers_in_a_column_share_one_format(wpage, server, pages):
    for name, url in pages.items():
        wpage.goto(server.url + url)
        assert wpage.evaluate(NUMBERS) == [], name


LEGENDS = """() => [...document.querySelectorAll('.legend')].map(l => ({
  label: l.querySelector('.legend-label').textContent.trim(),
  ticks: [...l.querySelectorAll('.legend-tick')].map(t => t.textContent.trim()),
  swatches: l.querySelectorAll('.legend-stop').length,
  inside: l.getBoundingClientRect().right <= window.innerWidth + 0.5}))"""


def test_legends_fit_their_quantity_and_name_the_unit(wpage, server, pages, web_db):

    wpage.goto(server.url + pages["neuron, live"])
    wpage.wait_for_selector("#live-act")
    legends = wpage.evaluate(LEGENDS)
    assert legends and all(lg["inside"] and lg["swatches"] == 0 and len(lg["ticks"]) >= 2 for lg in legends)
    acts = [lg for lg in legends if lg["label"].startswith("activation")]
    attrs = [lg for lg in legends if lg["label"].startswith("head attribution")]
    assert acts and attrs and all("(post-GELU)" in lg["label"] for lg in acts)
    assert all("units" in lg["label"] for lg in attrs)
    for lg in attrs:  # a signed quantity: symmetric about 0
        assert float(lg["ticks"][0].replace("−", "-")) == -float(lg["ticks"][-1])
    # activations: from the smallest shown (GELU never goes below about -0.17) to the largest
    lo = float(acts[0]["ticks"][0])
    assert -0.2 <= lo <= 0
    data = wpage.request.get(server.url + pages["neuron"] + ".json").json()
    smallest = min([0.0] + [a for p in data["prompts"] for a in p["acts"]])
    assert data["act_lo"] == pytest.approx(smallest) and abs(lo - smallest) <= 0.05
    assert float(acts[0]["ticks"][-1]) == pytest.approx(data["act_scale"], abs=0.05 * data["act_scale"])


def test_share_legend_runs_from_0_to_1():
    """The top-3 grid of an imported run shows shares of prompts: a 0..1 scale."""
    from context_lookups.app.pages.charts import legend

    lg = legend(1.0, lo=0.0, hi=1.0, label="share of prompts")
    assert [t["text"] for t in lg["ticks"]] == ["0.0", "1.0"]
    assert lg["gradient"].startswith("linear-gradient(to right, rgb(255,255,255) 0%")
    signed = legend(0.5)
    assert [t["text"] for t in signed["ticks"]] == ["-0.50", "0", "0.50"]


def test_search_box_in_the_header(wpage, server, web_db):
    from tests.web_fixtures import one

    word = one(web_db, "SELECT text FROM explanations WHERE text LIKE '%contains%' LIMIT 1")[0]
    term = re.findall(r'"\s?([A-Za-z]{4,})"', word)
    q = term[0] if term else "contains"
    wpage.goto(server.url + "/")
    box = wpage.locator("header.top input[name=q]")
    assert box.is_visible()
    box.fill(q)
    box.press("Enter")
    wpage.wait_for_url(re.compile(r"/search\?q="))
    assert wpage.locator("#explanations li.hit").count() > 0
    assert wpage.locator("#explanations mark").count() > 0
    assert wpage.input_value("header.top input[name=q]") == q  # the box keeps the words
    shot(wpage, f"search-{wpage.width}.png")
    wpage.locator("#explanations li.hit .hit-where a[href*='/heads/']").first.click()
    wpage.wait_for_url(re.compile(r"/neurons/\d+/\d+/heads/\d+/\d+$"))
    assert q.lower() in wpage.inner_text("blockquote").lower()
