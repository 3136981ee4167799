"""Bad input and faults: database paths with URI metacharacters, bad --db values, a corrupt model
directory, settings out of range, broken corpus files. Each gets one clear line (exit code 2 on
the CLI) and nothing is lost. Real subprocesses, real SQLite files."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.engine import URL

from context_lookups.precompute.core.errors import BadSettings, DatasetNotAvailable, ModelNotAvailable
from context_lookups.precompute.core.settings import Settings
from tests.cli_helpers import assert_one_line_exit_2, lookups, tree
from tests.conftest import small_settings

# --- 3. #, % and ? in the database path; the server never writes ----------------------------------

@pytest.mark.parametrize("dirname", ["ro#x", "a%25b", "q?x", "p%3Fy"])
def test_database_path_with_uri_characters_is_served_read_only(tmp_path, precomputed_db, dirname):
    from context_lookups.app.main import create_app

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
    from context_lookups.precompute.model.loading import load_model

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
    from context_lookups.precompute.job.pipeline import run_precompute

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
    from context_lookups.precompute.corpus import load_corpus

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


# --- issue 18, item 13: a model directory without a tokenizer ------------------------------------------

def test_model_directory_without_tokenizer_files_is_named_and_exits_2(tmp_path, tiny_model_dir):
    d = shutil.copytree(tiny_model_dir, tmp_path / "no-tokenizer")
    removed = [p.name for p in d.iterdir() if p.name.startswith(("tokenizer", "vocab", "merges", "special"))]
    for name in removed:
        (d / name).unlink()
    assert "tokenizer.json" in removed
    db = tmp_path / "new.db"
    proc = lookups("precompute", "--model", str(d), "--db", f"sqlite:///{db}", cwd=tmp_path)
    assert_one_line_exit_2(proc, str(d), "no tokenizer", "tokenizer.json", "vocab.json + merges.txt")
    assert not db.exists()


# --- item 14: empty or table-less SQLite; readers never create a file -----------------------------------

def test_empty_tableless_or_old_sqlite_is_one_line_and_readers_create_nothing(tmp_path, precomputed_db):
    from context_lookups.app.main import create_app
    from context_lookups.precompute.core.errors import BadDatabase

    empty = tmp_path / "empty.db"
    empty.touch()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE notes (body TEXT)")
    old = tmp_path / "old.db"
    shutil.copy(precomputed_db, old)
    with sqlite3.connect(old) as c:
        c.execute("UPDATE alembic_version SET version_num = '0001'")
    before = tree(tmp_path)
    for db, needle in ((empty, "not a context-lookups database"), (other, "not a context-lookups database"),
                       (old, "lookups db upgrade")):
        proc = lookups("serve", "--db", f"sqlite:///{db}", "--no-preload", cwd=tmp_path)
        assert_one_line_exit_2(proc, str(db), needle)
        with pytest.raises(BadDatabase, match=needle):
            create_app(db_url=f"sqlite:///{db}", preload=False)
    proc = lookups("db", "current", "--db", f"sqlite:///{tmp_path / 'new.db'}", cwd=tmp_path)
    assert_one_line_exit_2(proc, "new.db", "not found")
    for db, rev in ((empty, "None"), (old, "0001")):
        proc = lookups("db", "current", "--db", f"sqlite:///{db}", cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout.strip() == rev, proc.stderr
    assert tree(tmp_path) == before  # nothing created, nothing changed


# --- item 15: corpus files that crashed the reader ---------------------------------------------------

def test_corpus_bytes_gzip_and_nesting_errors_name_file_and_line(tmp_path, tiny_model_dir):
    """Non-UTF-8 bytes, a corrupt .jsonl.gz and a line of 200k nested '[' (pyarrow's JSON reader
    crashes the process on it): each one line naming the file and line, exit 2, nothing written."""
    import gzip

    good = [f'{{"text": "document number {i} is here"}}' for i in range(6)]
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(("\n".join(good[:2]) + "\n").encode() + b'{"text": "caf\xe9"}\n')
    deep = write_jsonl(tmp_path / "deep.jsonl", good[:1] + ["[" * 200_000] + good[1:])
    packed = gzip.compress(("\n".join(good * 200) + "\n").encode())
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(packed[: len(packed) // 2] + b"\x00garbage" * 16)
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    for path, needles in ((latin, ["line 3", "not UTF-8", "0xe9"]), (deep, ["line 2", "nested too deeply"]),
                          (corrupt, ["line "]), (truncated, ["cannot read it"])):
        db = tmp_path / "new.db"
        proc = lookups("precompute", "--model", str(tiny_model_dir), "--dataset", str(path),
                       "--db", f"sqlite:///{db}", cwd=tmp_path)
        assert proc.returncode == 2, (path, proc.returncode, proc.stderr[-2000:])  # not -11 (SIGSEGV)
        assert_one_line_exit_2(proc, str(path), *needles)
        assert not db.exists()


def test_local_corpus_reads_as_before(tmp_path):
    """The same documents, in the same order, as a plain reading of the files; a record without
    a string text is dropped; a changed file is read again (not a stale cache)."""
    import gzip
    import json

    from context_lookups.precompute.core.settings import EMBEDDED_CORPUS
    from context_lookups.precompute.corpus import load_corpus

    corpus = load_corpus(EMBEDDED_CORPUS)
    for split in ("explain", "heldout"):
        with gzip.open(Path(EMBEDDED_CORPUS) / f"{split}.jsonl.gz", "rt", encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh if line.strip()]
        assert corpus[split]["text"] == [t for t in texts if t.strip()]
    d = tmp_path / "c"
    d.mkdir()
    write_jsonl(d / "explain.jsonl",
                ['{"text": "one two"}', '{"other": 1}', '{"text": 5}', '{"text": "three"}'])
    write_jsonl(d / "heldout.jsonl", ['{"text": "four"}'])
    assert load_corpus(str(d))["explain"]["text"] == ["one two", "three"]
    write_jsonl(d / "heldout.jsonl", ['{"text": "five"}', '{"text": "six"}'])
    assert load_corpus(str(d))["heldout"]["text"] == ["five", "six"]


# --- item 16: --ray at a port that is not Ray -------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_ray_address_that_is_not_ray_is_refused_within_seconds(tmp_path, scheme):
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)  # answers, but HTTP/1.1, not Ray's gRPC
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        t0 = time.time()
        proc = lookups("precompute", "--ray", f"{scheme}127.0.0.1:{httpd.server_port}",
                       "--db", f"sqlite:///{tmp_path / 'new.db'}", cwd=tmp_path)
        took = time.time() - t0
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert_one_line_exit_2(proc, "is not a Ray cluster", str(httpd.server_port))
    assert took < 60 and "requires ray[client]" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_ray_client_is_installed_with_the_ray_extra():
    import importlib.metadata as md

    from packaging.requirements import Requirement

    extra = [Requirement(r) for r in md.requires("context-lookups") or [] if 'extra == "ray"' in r]
    assert any(r.name == "ray" and "client" in r.extras for r in extra), extra
    import grpc  # noqa: F401  (ray[client]'s dependency: ray:// addresses work)


# --- item 17: db metadata -o never overwrites another file --------------------------------------------------

def test_db_metadata_output_never_overwrites_a_file_that_is_not_metadata(tmp_path, precomputed_db):
    db = tmp_path / "lookups.db"
    shutil.copy(precomputed_db, db)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    before = tree(tmp_path)
    for target in (db, notes):
        proc = lookups("db", "metadata", "--db", f"sqlite:///{db}", "-o", str(target), cwd=tmp_path)
        assert_one_line_exit_2(proc, str(target), "not a metadata file", "not overwritten")
    assert tree(tmp_path) == before
    out = tmp_path / "metadata.json"
    for _ in range(2):  # a new file, then the previous metadata file is replaced
        proc = lookups("db", "metadata", "--db", f"sqlite:///{db}", "-o", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert '"source": "context-lookups"' in out.read_text()
