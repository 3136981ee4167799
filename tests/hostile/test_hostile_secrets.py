"""Hostile input, round 3 (issue 25, items 8-10): secrets shown by /search, stored by the
importer, a PostgreSQL password given as a query parameter, and the encodings ``redact()``
missed. Databases and the authors' files are copied into tmp_path and given the secrets there."""

from __future__ import annotations

import base64
import html
import json
import shutil
import sqlite3
import urllib.parse

import pytest
from fastapi.testclient import TestClient

from tests.cli_helpers import lookups
from tests.paper_data import copy_sample, run_cli

KEY = "sk-OLDKEY" + "7f3a9c2e1b" * 3
PASSWORD = "hunter2pass"
SECRET_TEXT = f" debug: Bearer {KEY} and https://bob:{PASSWORD}@example.com/x"


# --- 8. /search and the importer ---------------------------------------------------------------

@pytest.fixture
def db_with_secrets(tmp_path, web_db):
    """A writable copy of the web database with the secrets in 5 explanation texts (as a
    database written before answers were redacted, or by another writer, may hold them)."""
    db = tmp_path / "copy.db"
    shutil.copy(web_db, db)
    db.chmod(0o644)
    with sqlite3.connect(db) as c:
        ids = [i for (i,) in c.execute("SELECT id FROM explanations WHERE text IS NOT NULL ORDER BY id "
                                       "LIMIT 5")]
        assert len(ids) == 5
        c.executemany("UPDATE explanations SET text = text || ? WHERE id = ?", [(SECRET_TEXT, i)
                                                                                 for i in ids])
    return db


def test_search_shows_stored_secrets_redacted(db_with_secrets):
    from context_lookups.app.main import create_app

    app = create_app(db_url=f"sqlite:///{db_with_secrets}", torch_threads=None, preload=False)
    with TestClient(app) as client:
        page, twin = client.get("/search?q=debug"), client.get("/search.json?q=debug&kind=explanations")
        assert page.status_code == twin.status_code == 200
        items = twin.json()["explanations"]["items"]
        assert len(items) == 5
        for it in items:  # the matched word is still marked, where it stands in the redacted text
            assert [it["snippet"][a:b] for a, b in it["marks"]] == ["debug"]
        for text in (page.text, twin.text):
            assert KEY not in text and "OLDKEY" not in text and PASSWORD not in text
            assert "[redacted]" in text
        # a search for the password itself finds nothing to show: the index must not confirm it
        for q in (PASSWORD, "OLDKEY" + "7f3a9c2e1b" * 3):
            r = client.get(f"/search.json?q={q}&kind=explanations")
            res = r.json()["explanations"]
            assert res["items"] == [] and res["total"] == 0  # (the query itself is echoed: the user typed it)


def test_import_paper_stores_key_shaped_text_redacted(tmp_path, capsys):
    src = copy_sample(tmp_path / "experiment_data")
    results = next((src / "5_head_explanations").glob("*_results.jsonl"))
    lines = []
    for line in results.read_text().splitlines():
        req, resp = json.loads(line)
        resp["choices"][0]["message"]["content"] += SECRET_TEXT
        lines.append(json.dumps([req, resp]))
    results.write_text("\n".join(lines) + "\n")
    db = tmp_path / "p.db"
    rc, out, err = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 0, err
    with sqlite3.connect(db) as c:
        stored = [str(v) for t in ("explanations", "classifications", "llm_calls", "runs")
                  for row in c.execute(f"SELECT * FROM {t}") for v in row]  # noqa: S608
        assert sum("[redacted]" in v for v in stored) >= 29
        assert not [v for v in stored if KEY in v or PASSWORD in v or "OLDKEY" in v]
        assert c.execute("SELECT count(*) FROM search_explanations WHERE search_explanations MATCH ?",
                         (PASSWORD,)).fetchone() == (0,)  # nor in the full-text index
    assert KEY not in out + err


# --- 9. a PostgreSQL password as a query parameter ---------------------------------------------

def test_postgres_password_as_query_parameter_is_masked(tmp_path):
    from context_lookups.precompute.core.redact import mask_db_url

    url = f"postgresql+psycopg://postgres@127.0.0.1:9/lookups?password={PASSWORD}&sslmode=disable"
    assert mask_db_url(url) == "postgresql+psycopg://postgres@127.0.0.1:9/lookups?password=***&sslmode=disable"
    proc = lookups("config", "--db", url, cwd=tmp_path)
    assert proc.returncode == 0 and PASSWORD not in proc.stdout + proc.stderr
    assert proc.stdout.count("password=***") == 2
    # a connection error (nothing listens on port 9) names the URL masked
    proc = lookups("db", "upgrade", "--db", url, cwd=tmp_path)
    assert proc.returncode == 2 and PASSWORD not in proc.stdout + proc.stderr
    assert "password=***" in proc.stderr


# --- 10. the encodings redact() missed ---------------------------------------------------------

def _encodings(key: str) -> dict[str, str]:
    return {
        "upper case": key.upper(),
        "hex": key.encode().hex(),
        "upper-case hex": key.encode().hex().upper(),
        "HTML hex entities": "".join(f"&#x{ord(c):X};" if not c.isalnum() else c for c in key),
        "HTML decimal entities": html.escape(key).replace("/", "&#47;"),
        "HTML named entities": key.replace("/", "&sol;").replace("+", "&plus;"),
        "double percent-encoding": urllib.parse.quote(urllib.parse.quote(key, safe=""), safe=""),
        "base64 of Bearer KEY": base64.b64encode(f"Bearer {key}".encode()).decode(),
        "base64 of an Authorization header": base64.b64encode(f"Authorization: Bearer {key}".encode())
        .decode(),
        "JSON \\/ escapes": json.dumps(key).replace("/", "\\/"),
        "JSON \\u escapes": key.replace("/", "\\u002F"),
    }


@pytest.mark.parametrize("encoding", list(_encodings("k")))
def test_redact_covers_each_encoding_of_a_known_key(encoding):
    from context_lookups.precompute.core.redact import redact

    key = "Zq9/xK+pL2w/Tt7vQa/Mm3"  # not key-shaped: only the known-secret rule can catch it
    echoed = _encodings(key)[encoding]
    out = redact(f"the endpoint said: {echoed} (end)", key)
    assert "[redacted]" in out and out.endswith(" (end)")
    decoded = {out, out.lower(), html.unescape(out), urllib.parse.unquote(urllib.parse.unquote(out)),
               out.replace("\\/", "/").replace("\\u002F", "/")}
    for word in out.split():
        try:
            decoded.add(base64.b64decode(word + "=" * (-len(word) % 4)).decode("latin-1"))
            decoded.add(bytes.fromhex(word).decode("latin-1"))
        except ValueError:
            pass
    assert not any(key.lower()[4:16] in d.lower() for d in decoded)
    assert redact(out, key) == out  # idempotent
