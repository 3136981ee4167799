"""Secrets are never logged, stored or shown: an endpoint that echoes the API key (a real
loopback HTTP server, the real ``lookups`` command in a subprocess)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

from fastapi.testclient import TestClient

from tests.cli_helpers import lookups
from tests.helpers.chat_server import ChatServer, expected_pairs
from tests.helpers.explain_db import fresh_copy

# --- 1. the API key is never logged, stored or shown ---------------------------------------------

def test_api_key_echoed_by_the_endpoint_is_redacted_everywhere(tmp_path, precomputed_db):
    from context_lookups.app.main import create_app
    from context_lookups.app.pages import urls

    key = "sk-PROBE-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:32]
    db = fresh_copy(precomputed_db, tmp_path / "lookups.db")
    pairs = expected_pairs(db)
    server = ChatServer()
    try:
        for p in pairs:  # every explanation request gets a 400 that echoes the request headers
            server.always[p["prompt"]] = "echo400"
        proc = lookups("-v", "explain", "--db", f"sqlite:///{db}", "--explainer", "openai",
                       "--llm-model", "test-model", "--llm-base-url", server.url,
                       "--llm-max-retries", "0", env={"OPENAI_API_KEY": key})
    finally:
        server.close()
    # the endpoint did receive the key, and its error bodies carried it back
    sent = [v for h in server.headers for k, v in h.items() if k.lower() == "authorization"]
    assert sent and all(v == f"Bearer {key}" for v in sent), proc.stderr[-3000:]
    assert len(server.received) == len({p["prompt"] for p in pairs})

    def leaks(text: str) -> bool:  # the key, or any long piece of it
        return key in text or key[9:25] in text or key[-16:] in text

    logs = proc.stdout + proc.stderr
    assert "failed" in logs and not leaks(logs), logs[-3000:]
    with sqlite3.connect(db) as c:
        dump = "\n".join(c.iterdump())
        calls = c.execute("SELECT status, error FROM llm_calls").fetchall()
        exps = c.execute("SELECT status, error FROM explanations").fetchall()
    assert calls and all(s == "failed" and "400" in e and "[redacted]" in e for s, e in calls)
    assert exps and all(s == "failed" and "[redacted]" in e for s, e in exps)
    assert not leaks(dump) and not leaks(db.read_bytes().decode("latin-1"))

    # A database written before the fix holds the key: the pages redact it when shown.
    with sqlite3.connect(db) as c:
        c.execute("UPDATE explanations SET error = ?", (f"BadRequestError: you sent "
                                                        f"{{'Authorization': 'Bearer {key}'}} {key}",))
        slug, layer, neuron, hl, h = c.execute(
            "SELECT r.slug, n.layer, n.neuron, p.head_layer, p.head FROM explanations e "
            "JOIN pairs p ON p.id = e.pair_id JOIN neurons n ON n.id = p.neuron_id "
            "JOIN runs r ON r.id = p.run_id LIMIT 1").fetchone()
    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as client:
        page = client.get(urls.pair(slug, layer, neuron, hl, h))
        twin = client.get(urls.pair(slug, layer, neuron, hl, h, fmt="json"))
    assert page.status_code == 200 and twin.status_code == 200
    assert "[redacted]" in page.text and "[redacted]" in twin.text
    assert not leaks(page.text) and not leaks(twin.text)


def test_redact_covers_bearer_tokens_and_key_shapes():
    from context_lookups.precompute.core.redact import redact

    assert redact("Authorization: Bearer abc.DEF-123_456") == "Authorization: Bearer [redacted]"
    assert redact("{'authorization': 'bearer xyz12345'}") == "{'authorization': 'bearer [redacted]'}"
    assert redact("key sk-proj-AbC123xyz789, more") == "key [redacted], more"
    assert redact("custom-key-0042 here", "custom-key-0042") == "[redacted] here"
    assert redact("a task-list and sk- alone stay") == "a task-list and sk- alone stay"
    assert redact(None) is None


# --- issue 18, items 1-3: answers, URL credentials, encodings -------------------------------------

def _leak_forms(*secrets: str) -> set[str]:
    """Every form a secret may leak in: as is, percent-encoded, base64 (a Basic header)."""
    import base64
    from urllib.parse import quote, quote_plus

    out = set()
    for s in secrets:
        out |= {s, quote(s, safe=""), quote_plus(s), base64.b64encode(s.encode()).decode().rstrip("=")}
    return out


def _pages(db, slug: str) -> dict[str, str]:
    """Every page, twin and CSV that shows explanations and answers, by path."""
    from context_lookups.app.main import create_app
    from context_lookups.app.pages import urls

    with sqlite3.connect(db) as c:
        keys = c.execute("SELECT DISTINCT n.layer, n.neuron, p.head_layer, p.head FROM explanations e "
                         "JOIN pairs p ON p.id = e.pair_id JOIN neurons n ON n.id = p.neuron_id").fetchall()
    out = {}
    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None, preload=False)) as client:
        paths = [urls.pair(slug, *k) for k in keys] + [urls.pair(slug, *k, fmt="json") for k in keys]
        paths += [urls.neuron(slug, k[0], k[1]) for k in keys]
        paths += [f"/{slug}/pairs", f"/{slug}/pairs.json", f"/{slug}/pairs.csv"]
        for path in paths:
            r = client.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            out[path] = r.text
    return out


def test_credentials_echoed_in_200_answers_are_redacted_before_storage_and_on_display(tmp_path,
                                                                                     precomputed_db):
    """An endpoint whose answers echo what it was sent: the key as a bearer token and
    percent-encoded (not key-shaped: only the known-secret rule catches it), the URL's
    ``?api-key=`` value, and (a second run) the URL's ``user:password`` that httpx sends as a
    Basic header. Nothing of it reaches the logs (-v), the database (every table, the raw file),
    the explanations' stored settings, nor any page, JSON twin or CSV."""
    from urllib.parse import quote

    from context_lookups.precompute.core.redact import mask_url

    tag = hashlib.sha256(str(tmp_path).encode()).hexdigest()
    key, pw, qk = f"PROBE4abc/def+ghi{tag[:16]}", f"S3cret-pw-{tag[16:24]}", f"QK{tag[24:36]}"
    db = fresh_copy(precomputed_db, tmp_path / "lookups.db")
    slug = sqlite3.connect(db).execute("SELECT slug FROM runs").fetchone()[0]
    server = ChatServer()
    server.default = "echo200"
    try:
        urls_given = {"test-model-a": f"{server.url}?api-key={qk}",
                      "test-model-b": server.url.replace("http://",
                                                         f"http://probeuser:{quote(pw, safe='')}@")}
        procs = [lookups("-v", "explain", "--db", f"sqlite:///{db}", "--explainer", "openai",
                         "--llm-model", model, "--llm-base-url", url, "--llm-max-retries", "0",
                         env={"OPENAI_API_KEY": key}) for model, url in urls_given.items()]
    finally:
        server.close()
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    # the endpoint did receive each credential, and its answers carried them back
    auth = {v for h in server.headers for k, v in h.items() if k.lower() == "authorization"}
    assert f"Bearer {key}" in auth and any(v.startswith("Basic ") for v in auth), auth
    forms = _leak_forms(key, pw, qk, f"probeuser:{pw}")

    def leaks(text: str) -> list[str]:
        return [f for f in forms if f in text]

    logs = "".join(p.stdout + p.stderr for p in procs)
    assert not leaks(logs), logs[-3000:]
    with sqlite3.connect(db) as c:
        dump = "\n".join(c.iterdump())
        answers = [a for (a,) in c.execute("SELECT answer FROM classifications")]
        texts = [t for (t,) in c.execute("SELECT text FROM explanations")]
        stored_urls = {json.loads(s)["llm_base_url"]
                       for (s,) in c.execute("SELECT settings FROM explanations")}
    assert answers and all("debug: Bearer [redacted]" in a or "debug: Basic [redacted]" in a for a in answers)
    assert texts and all("[redacted]" in t for t in texts)
    assert stored_urls == {mask_url(u) for u in urls_given.values()}
    assert all("[redacted]" in u for u in stored_urls)
    assert not leaks(dump) and not leaks(db.read_bytes().decode("latin-1"))
    for path, text in _pages(db, slug).items():
        assert not leaks(text) and "[redacted]" in text, path

    # A database written before answers were redacted: the pages redact them when shown.
    with sqlite3.connect(db) as c:
        c.execute("UPDATE explanations SET text = ?", (f"Active. debug: Bearer sk-{tag[:24]}",))
        c.execute("UPDATE classifications SET answer = ?", (f"Yes. debug: Bearer sk-{tag[:24]}",))
    for path, text in _pages(db, slug).items():
        assert tag[:24] not in text, path


def test_redaction_is_idempotent_and_covers_every_encoding():
    import base64
    from urllib.parse import quote

    from context_lookups.precompute.core.redact import mask_url, redact, url_secrets

    key = "PROBE4abc/def+ghi=jkl"
    samples = [f"Bearer {key}", f"x {quote(key, safe='')} y",
               f"x {quote(key, safe='').replace('%2F', '%2f')} y",
               "Authorization: Basic " + base64.b64encode(b"user:pass1234").decode(),
               "POST http://user:pass1234@host/v1?api-key=QK123&x=1", "Bearer sk-abcdef123456"]
    for text in samples:
        once = redact(text, key)
        assert "[redacted]" in once and redact(once, key) == once, (text, once)
        assert key not in once and "pass1234" not in once and "QK123" not in once
    assert redact("Bearer [redacted]") == "Bearer [redacted]"
    # prose is not a credential
    for prose in ("the bearer of the news", "basic settings apply", "the user asked"):
        assert redact(prose) == prose
    assert mask_url("http://u:p4ss@h:1/v1?api-key=abc&model=m") == "http://[redacted]@h:1/v1?api-key=[redacted]&model=m"
    assert set(url_secrets("http://u:p4%2Fss@h/v1?token=tok123&model=m")) == {"p4/ss", "u:p4/ss", "tok123"}


def test_postgres_password_is_masked_wherever_a_url_is_printed(tmp_path, pg_server, tiny_model_dir,
                                                              small_corpus_dir):
    """``db upgrade``, ``config``, ``precompute``, ``import-paper`` and the ``serve`` start-up
    line print the database URL with its password masked (the server trusts loopback, so the
    password is accepted and ignored)."""
    from tests.cli_helpers import ROOT
    from tests.paper_data import sample_dir

    pw = "S3cretPW" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:8]
    url = pg_server.new_database().replace("postgres@", f"postgres:{pw}@")
    runs = [lookups("db", "upgrade", "--db", url), lookups("config", "--db", url),
            lookups("precompute", "--db", url, "--model", str(tiny_model_dir), "--dataset",
                    str(small_corpus_dir), "--n-per-layer", "2", "--top-k", "4", "--n-docs", "12",
                    "--context-tokens", "32", "--explainer", "none", "--ablation", "none")]
    if sample_dir() is not None:
        runs.append(lookups("import-paper", str(sample_dir()), "--db", url))
    for p in runs:
        assert p.returncode == 0, p.stderr[-2000:]
        assert pw not in p.stdout + p.stderr and "postgres:***@" in p.stdout, p.stdout[-2000:]
    assert runs[1].stdout.count("postgres:***@") == 2  # config: the precompute and serve settings
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "context_lookups.app.cli", "serve", "--db", url,
                             "--port", str(port), "--no-preload"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = proc.stdout.readline()
    finally:
        time.sleep(0.5)
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "serving postgresql+psycopg://postgres:***@" in first and pw not in first + out + err
    # item 5: the superuser can write: one line says so, with the GRANT SELECT recipe
    notice = [line for line in err.splitlines() if "GRANT SELECT" in line]
    assert len(notice) == 1 and "can write" in notice[0] and "docs/scaling.md" in notice[0], err[-2000:]


def test_serve_says_when_its_postgres_role_can_write(pg_server, caplog):
    """A role with SELECT only gets no notice; a role that can write gets one line with the
    GRANT SELECT recipe of docs/scaling.md."""
    import logging

    import psycopg

    from context_lookups.app.main import create_app
    from context_lookups.precompute.store.db import open_writer

    url = pg_server.new_database()
    open_writer(url).dispose()
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=postgres dbname={dbname}",
                         autocommit=True) as con:
        con.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reader') THEN "
                    "CREATE ROLE reader LOGIN; END IF; END $$")
        con.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO reader')
        con.execute("GRANT USAGE ON SCHEMA public TO reader")
        con.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    for who, expect in (("postgres", 1), ("reader", 0)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="context_lookups.app.main"):
            app = create_app(db_url=url.replace("postgres@", f"{who}@"), preload=False)
            app.state.engine.dispose()
        lines = [r.getMessage() for r in caplog.records if "GRANT SELECT" in r.getMessage()]
        assert len(lines) == expect, (who, lines)
        if expect:
            assert "can write to" in lines[0] and "\n" not in lines[0]


def test_config_prints_the_llm_url_and_database_password_masked(tmp_path):
    proc = lookups("config", "--llm-base-url", "http://probeuser:Pw0rd-secret@h:1/v1?api-key=QK9secret&m=1",
                   "--db", "postgresql+psycopg://u:DbPw0rd-secret@h:5432/db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["precompute"]["llm_base_url"] == "http://[redacted]@h:1/v1?api-key=[redacted]&m=1"
    assert cfg["precompute"]["db_url"] == cfg["serve"]["db_url"] == "postgresql+psycopg://u:***@h:5432/db"
    assert "secret" not in proc.stdout + proc.stderr
