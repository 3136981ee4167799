"""The pairs list carries each pair's ablation (issue 28 item 8): on the page, in its JSON twin
and in ``pairs.csv``, the mean drop of p(token) where the head is active and where it is not,
with their n, per ablation method of the run; each row's figures equal the pair page's."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient

from tests.web_fixtures import TOPK_RUN

COLUMNS = ["zero_drop_active", "zero_n_active", "zero_drop_inactive", "zero_n_inactive"]


@pytest.fixture(scope="module")
def client(web_db):
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=f"sqlite:///{web_db}", torch_threads=None, preload=False)) as c:
        yield c


def test_csv_and_json_rows_carry_the_pair_pages_ablation_figures(client):
    listed = client.get(f"/{TOPK_RUN}/pairs.json", params={"per_page": 500}).json()
    assert listed["ablation_methods"] == ["zero"]
    r = client.get(f"/{TOPK_RUN}/pairs.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
    assert set(COLUMNS) <= set(rows[0]) and len(rows) == listed["total"]
    by_url = {row["url"]: row for row in rows}
    checked = 0
    for p in listed["pairs"]:
        page = client.get(p["url"] + ".json").json()["ablation_summary"]["zero"]
        for side in ("active", "inactive"):
            want_n, want_drop = page[side]["n"], page[side]["mean_drop"]
            assert p[f"zero_n_{side}"] == want_n and p["ablation"]["zero"].get(side, {}).get("n", 0) == want_n
            assert p[f"zero_drop_{side}"] == want_drop  # the same mean, not a second computation
            cell = by_url[p["url"]][f"zero_drop_{side}"]
            assert (cell == "") if want_drop is None else float(cell) == want_drop
            assert int(by_url[p["url"]][f"zero_n_{side}"]) == want_n
        checked += 1
    assert checked == len(listed["pairs"]) > 0
    assert any(p["zero_n_active"] and p["zero_n_inactive"] for p in listed["pairs"])


def test_the_list_page_shows_the_columns_and_says_why_a_pair_has_none(client):
    html = client.get(f"/{TOPK_RUN}/pairs").text
    head = html.split("<thead>")[1].split("</thead>")[0]
    assert "zero-" in head and "active (n)" in head and "inactive (n)" in head
    first = client.get(f"/{TOPK_RUN}/pairs.json").json()["pairs"][0]
    assert f'({first["zero_n_active"]})' in html.split(first["url"])[1].split("</tr>")[0]
    unkept = client.get(f"/{TOPK_RUN}/pairs.json", params={"kept": "false", "per_page": 500}).json()["pairs"]
    row = next(p for p in unkept if not p["kept"])
    assert row["ablation"] == {"zero": {}}
    assert row["zero_drop_active"] is None and row["zero_n_active"] is None
    page = client.get(f"/{TOPK_RUN}/pairs", params={"kept": "false"}).text
    assert "not ablated: only kept pairs are ablated" in page
