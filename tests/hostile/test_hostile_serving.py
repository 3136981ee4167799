"""Hostile input, round 3 (issue 25, "also seen"): the server while another process locks its
SQLite file or the file is deleted, HEAD requests, and CSV cells that spreadsheets may evaluate
though OWASP's list does not name them. Databases are copies in tmp_path."""

from __future__ import annotations

import logging
import shutil
import sqlite3

import pytest
from fastapi.testclient import TestClient


def _copy(web_db, tmp_path):
    db = tmp_path / "serve.db"
    shutil.copy(web_db, db)
    db.chmod(0o644)
    return db


def _client(db):
    from context_lookups.app.main import create_app

    return TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None, preload=False))


def test_database_locked_by_another_process_is_503_with_retry_after(web_db, tmp_path, caplog):
    from tests.web_fixtures import TOPK_RUN

    db = _copy(web_db, tmp_path)
    with _client(db) as client:
        assert client.get(f"/{TOPK_RUN}/pairs.json").status_code == 200
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                r = client.get(f"/{TOPK_RUN}/pairs.json?kind=random")  # not cached: reads the file
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text[:300]
        assert "locked" in r.json()["detail"]
        lines = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert len(lines) == 1 and lines[0].exc_info is None and "503" in lines[0].getMessage()
        assert client.get(f"/{TOPK_RUN}/pairs.json?kind=random").status_code == 200  # recovered


def test_database_deleted_while_serving_is_503_and_healthz_says_so(web_db, tmp_path):
    from tests.web_fixtures import TOPK_RUN

    db = _copy(web_db, tmp_path)
    with _client(db) as client:
        assert client.get("/healthz").json()["database"] == "ok"
        db.unlink()
        h = client.get("/healthz")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"
        assert h.json()["database"].startswith("missing")
        r = client.get(f"/{TOPK_RUN}/neurons.csv?kind=next_token&sort=token")
        assert r.status_code in (200, 503)  # an open connection may still read the deleted file
        if r.status_code == 503:
            assert "deleted or moved" in r.text


@pytest.mark.parametrize("path", ["/", "/.json", "/{run}/neurons", "/{run}/neurons.json", "/{run}/pairs.csv",
                                  "/search?q=the", "/healthz"])
def test_head_is_answered_like_get_without_a_body(web_db, path):
    from tests.web_fixtures import TOPK_RUN

    with _client(web_db) as client:
        get, head = client.get(path.format(run=TOPK_RUN)), client.head(path.format(run=TOPK_RUN))
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


@pytest.mark.parametrize("text", [" =1+1", "\n=1+1", "\r\n=HYPERLINK(\"x\")", "＝1+1", " ＋1", "\t @SUM(A1)"])
def test_csv_cells_that_spreadsheets_may_evaluate_are_neutralised(text):
    from context_lookups.app.pages.export import cell

    assert cell(text) == "'" + text
    assert cell("a =1") == "a =1" and cell("1 = 1") == "1 = 1"  # formulas only where a cell starts
