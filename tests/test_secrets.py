"""Secrets are never logged, stored or shown: an endpoint that echoes the API key (a real
loopback HTTP server, the real ``lookups`` command in a subprocess)."""

from __future__ import annotations

import hashlib
import sqlite3

from fastapi.testclient import TestClient

from tests.cli_helpers import lookups
from tests.test_explain import fresh_copy
from tests.test_explain_llm import ChatServer, expected_pairs

# --- 1. the API key is never logged, stored or shown ---------------------------------------------

def test_api_key_echoed_by_the_endpoint_is_redacted_everywhere(tmp_path, precomputed_db):
    from app import urls
    from app.main import create_app

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
    from precompute.redact import redact

    assert redact("Authorization: Bearer abc.DEF-123_456") == "Authorization: Bearer [redacted]"
    assert redact("{'authorization': 'bearer xyz12345'}") == "{'authorization': 'bearer [redacted]'}"
    assert redact("key sk-proj-AbC123xyz789, more") == "key [redacted], more"
    assert redact("custom-key-0042 here", "custom-key-0042") == "[redacted] here"
    assert redact("a task-list and sk- alone stay") == "a task-list and sk- alone stay"
    assert redact(None) is None
