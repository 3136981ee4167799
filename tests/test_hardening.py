"""Hostile input and faults (issue 12): an endpoint that echoes the API key, database paths
with URI metacharacters, bad --db values, a corrupt model directory, settings out of range, and
broken corpus files. Each gets one clear line (exit code 2 on the CLI) and nothing is lost or
leaked. Real subprocesses, real SQLite files, a real loopback HTTP endpoint."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.engine import URL

from precompute.errors import BadSettings, DatasetNotAvailable, ModelNotAvailable
from precompute.settings import Settings
from tests.conftest import small_settings
from tests.test_explain import fresh_copy
from tests.test_explain_llm import ChatServer, expected_pairs

ROOT = Path(__file__).resolve().parents[1]


def lookups(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The real ``lookups`` command (``python -m app.cli``) in a subprocess."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                    PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, no traceback, and the error on a single ``error:`` line naming ``needles``."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in errors if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def tree(root: Path) -> dict:
    """Every path under ``root`` with its mtime, size and (for files) content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size, digest)
    return out


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


# --- 3. #, % and ? in the database path; the server never writes ----------------------------------

@pytest.mark.parametrize("dirname", ["ro#x", "a%25b", "q?x", "p%3Fy"])
def test_database_path_with_uri_characters_is_served_read_only(tmp_path, precomputed_db, dirname):
    from app.main import create_app

    d = tmp_path / dirname
    d.mkdir()
    db = d / "lookups.db"
    shutil.copy(precomputed_db, db)
    with sqlite3.connect(db) as c:
        slug, layer, neuron = c.execute("SELECT r.slug, n.layer, n.neuron FROM neurons n JOIN runs r "
                                        "ON r.id = n.run_id WHERE n.kind = 'next_token' LIMIT 1").fetchone()
    # the URL as SQLAlchemy renders it (percent-escaped), and, where it means the same, as typed
    candidates = [URL.create("sqlite", database=str(db)).render_as_string()]
    if "%" not in dirname and "?" not in dirname:
        candidates.append(f"sqlite:///{db}")
    before = tree(tmp_path)
    for url in candidates:
        with TestClient(create_app(db_url=url, torch_threads=None)) as client:
            for path in ("/", "/.json", f"/{slug}/neurons", f"/{slug}/neurons/{layer}/{neuron}",
                         f"/{slug}/neurons/{layer}/{neuron}.json"):
                r = client.get(path)
                assert r.status_code == 200, (url, path, r.text[:300])
    assert tree(tmp_path) == before  # no new file or directory; the database untouched


# --- 4. database errors: one line, exit code 2 -----------------------------------------------------

# We run as root, for whom a chmod'ed read-only directory is still writable: the unwritable
# places are ones root cannot write either — procfs, and a path under a regular file.
BAD_DB = {
    "read-only dir": (("precompute", "--db", "sqlite:////proc/lookups.db"), ("/proc", "--db", "writ")),
    "under a file": (("precompute", "--db", "sqlite:///{tmp}/afile/sub/lookups.db"),
                     ("{tmp}/afile", "not a directory")),
    "not sqlite": (("precompute", "--db", "sqlite:///{tmp}/notes.db"),
                   ("{tmp}/notes.db", "not a SQLite database")),
    "not a url": (("precompute", "--db", "notaurl"), ("notaurl", "sqlite:///")),
    "explain, not a url": (("explain", "--db", "notaurl"), ("notaurl", "sqlite:///")),
    "serve, not sqlite": (("serve", "--db", "sqlite:///{tmp}/notes.db"),
                          ("{tmp}/notes.db", "not a SQLite database")),
}


@pytest.mark.parametrize("case", list(BAD_DB))
def test_bad_db_values_exit_2_with_one_line(tmp_path, case):
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("these are my notes, not a database\n")
    (tmp_path / "afile").write_text("x")
    before = tree(tmp_path)
    args, needles = BAD_DB[case]
    proc = lookups(*(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert_one_line_exit_2(proc, *(n.format(tmp=tmp_path) for n in needles))
    assert "alembic" not in proc.stderr and not proc.stdout.strip()
    assert tree(tmp_path) == before  # nothing created, the user's file untouched


# --- 5. a corrupt local model directory --------------------------------------------------------------

def test_truncated_safetensors_names_the_directory_and_the_file(tmp_path, tiny_model_dir):
    from precompute.models import load_model

    d = shutil.copytree(tiny_model_dir, tmp_path / "broken-model")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelNotAvailable) as err:
        load_model(str(d))
    msg = str(err.value)
    assert str(d) in msg and "model.safetensors" in msg and "truncated" in msg
    assert "hub" not in msg and "cache" not in msg and "\n" not in msg


# --- 7. settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["active_sigma", "act_ratio", "llm_timeout", "pair_min_fraction"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused(field, value, monkeypatch):
    with pytest.raises(ValidationError, match="finite"):
        Settings(**{field: float(value)})
    monkeypatch.setenv(f"LOOKUPS_{field.upper()}", value)
    with pytest.raises(ValidationError, match="finite"):
        Settings()


def test_invalid_options_print_one_line_each_and_write_nothing(tmp_path):
    proc = lookups("precompute", "--active-sigma", "nan", "--n-per-layer", "0",
                   "--db", f"sqlite:///{tmp_path / 'new.db'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "error: --n-per-layer (LOOKUPS_N_PER_LAYER) 0: Input should be greater than or equal to 1",
        "error: --active-sigma (LOOKUPS_ACTIVE_SIGMA) nan: Input should be a finite number"]
    assert list(tmp_path.iterdir()) == []


def test_neuron_counts_are_checked_against_the_model_before_anything_is_written(
        tmp_path, tiny_model_dir, tiny_model, small_corpus_dir):
    from precompute.pipeline import run_precompute

    d_mlp = tiny_model.d_mlp
    for over in (dict(n_per_layer=5000), dict(n_per_layer=d_mlp // 2, n_random=d_mlp // 2 + 1)):
        db = tmp_path / "new.db"
        with pytest.raises(BadSettings, match=f"{d_mlp} neurons \\(d_mlp\\)"):
            # n_docs keeps the run short should the check ever be missing
            run_precompute(small_settings(db, tiny_model_dir, small_corpus_dir, n_docs=3, **over),
                           model=tiny_model)
        assert not db.exists()


# --- 8. corpus files -------------------------------------------------------------------------------

def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_corpus_errors_name_the_file_and_line(tmp_path):
    from precompute.corpus import load_corpus

    good = [f'{{"text": "document number {i} is here"}}' for i in range(6)]
    bad = write_jsonl(tmp_path / "bad.jsonl", good[:3] + ['{"text": "cut off'] + good[3:])
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    write_jsonl(split_dir / "explain.jsonl", good)
    write_jsonl(split_dir / "heldout.jsonl", good[:2] + ["[1, 2]"])
    cases = [(bad, [str(bad), "line 4", "not valid JSON"]),
             (empty, [str(empty), "is empty"]),
             (split_dir, [str(split_dir / "heldout.jsonl"), "line 3", "not an object"])]
    for source, needles in cases:
        with pytest.raises(DatasetNotAvailable) as err:
            load_corpus(str(source))
        msg = str(err.value)
        assert all(n in msg for n in needles), msg
        assert "Offline" not in msg and "StopIteration" not in msg and "\n" not in msg


def test_corpus_error_comes_before_any_database_work(tmp_path, tiny_model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "fine"}', "not json"])
    db = tmp_path / "new.db"
    proc = lookups("precompute", "--model", str(tiny_model_dir), "--dataset", str(bad),
                   "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert_one_line_exit_2(proc, str(bad), "line 2")
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert "alembic" not in proc.stderr.lower() and not db.exists()
