"""The precompute job on real SQLite files: resumable after SIGKILL, idempotent, and clear about
bad input without losing what is stored."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from context_lookups.precompute.cli import main as cli_main
from tests.cli_helpers import precompute_args
from tests.conftest import ROOT

VOLATILE = {"runs": {"started_at", "finished_at", "summary", "status"},
            "phases": {"seconds", "finished_at", "stats"},
            "explanations": {"created_at"}, "llm_calls": {"created_at"}}


def dump(db) -> dict[str, list[tuple]]:
    """Every row of every table, ordered, without timing columns."""
    con = sqlite3.connect(db)
    out = {}
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for t in tables:
        cols = [f'"{r[1]}"' for r in con.execute(f"PRAGMA table_info({t})")
                if r[1] not in VOLATILE.get(t, ())]
        out[t] = con.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY {', '.join(cols)}").fetchall()
    con.close()
    return out


def _phases(db) -> list[str]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        names = [r[0] for r in con.execute("SELECT name FROM phases")]
        con.close()
        return names
    except sqlite3.Error:
        return []


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, tiny_model_dir, small_corpus_dir,
                                                     precomputed_db):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    killed_db = tmp_path / "killed.db"
    cmd = [sys.executable, "-m", "context_lookups.precompute.cli",
           *precompute_args(killed_db, tiny_model_dir, small_corpus_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    # Killed once both scans are stored: the trimming/attribution group (all 6 neurons of the
    # small configuration form one group of neurons_per_pass) is then being computed.
    while time.time() < deadline and proc.poll() is None:
        phases = _phases(killed_db)
        if "scan:heldout" in phases or any(n.startswith("prompts:") for n in phases):
            break
        time.sleep(0.02)
    assert proc.poll() is None, \
        "the job ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _phases(killed_db)
    assert "scan:explain" in partial and "pairs" not in partial
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert dump(killed_db) == dump(precomputed_db)  # row for row, the uninterrupted run

    # idempotent: a third run changes nothing
    before = dump(killed_db)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert dump(killed_db) == before


def test_uninterrupted_run_contents(precomputed_db):
    con = sqlite3.connect(precomputed_db)
    kinds = dict(con.execute("SELECT kind, count(*) FROM neurons GROUP BY kind").fetchall())
    assert kinds["next_token"] == 3 and kinds["random"] == 3      # 3 per layer, 1 analysed layer
    assert kinds["other"] == 256 - 6
    tokens = [r[0] for r in con.execute("SELECT token FROM neurons WHERE kind='next_token'")]
    assert all(t.startswith(" ") and len(t) > 2 for t in tokens)
    # top-k stored for every neuron of the scanned layer, both splits
    assert con.execute("SELECT count(DISTINCT neuron) FROM top_activations WHERE split='explain'"
                       ).fetchone()[0] == 256
    n_prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
    assert n_prompts > 0
    for ntok, toks, acts, raw in con.execute("SELECT end - start, tokens, acts, attr_raw FROM prompts"):
        import json
        assert ntok < 100 and len(json.loads(toks)) == len(json.loads(acts)) == ntok
        assert len(json.loads(raw)) == 2  # heads of layers 0 and 1 (<= the neuron's layer 1)
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "complete"
    con.close()


def _copy(precomputed_db, tmp_path):
    db = tmp_path / "copy.db"
    shutil.copy(precomputed_db, db)
    return db


def test_other_settings_on_existing_run_are_refused(tmp_path, tiny_model_dir, small_corpus_dir,
                                                    precomputed_db, capsys):
    db = _copy(precomputed_db, tmp_path)
    before = dump(db)
    args = precompute_args(db, tiny_model_dir, small_corpus_dir)
    args[args.index("--n-per-layer") + 1] = "5"
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "n_per_layer: stored 3 vs given 5" in err and "--run-name" in err
    assert dump(db) == before


@pytest.mark.parametrize("change, message", [
    (("--model", "gpt2"), "not in the local Hugging Face cache"),
    (("--model", "/nonexistent/model-dir"), "does not exist"),
    (("--dataset", "/nonexistent/corpus.jsonl"), "does not exist"),
    (("--layers", "7"), "out of range: this model has MLP layers 0..1"),
])
def test_bad_input_is_a_clear_error_and_loses_nothing(tmp_path, tiny_model_dir, small_corpus_dir,
                                                      precomputed_db, capsys, change, message):
    db = _copy(precomputed_db, tmp_path)
    before = dump(db)
    args = precompute_args(db, tiny_model_dir, small_corpus_dir) + ["--run-name", "other"]
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err
    assert dump(db)["neurons"] == before["neurons"] and dump(db)["prompts"] == before["prompts"]


def test_empty_corpus(tmp_path, tiny_model_dir, capsys):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text('{"text": ""}\n{"text": "   "}\n')
    args = precompute_args(tmp_path / "e.db", tiny_model_dir, corpus)
    assert cli_main(args) == 2
    assert "no non-empty documents" in capsys.readouterr().err


def test_database_from_a_newer_schema(tmp_path, tiny_model_dir, small_corpus_dir, precomputed_db, capsys):
    db = _copy(precomputed_db, tmp_path)
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '9999_future'")
    con.commit()
    con.close()
    before = dump(db)
    assert cli_main(precompute_args(db, tiny_model_dir, small_corpus_dir)) == 2
    err = capsys.readouterr().err
    assert "newer than this context-lookups knows" in err and "Upgrade" in err
    assert dump(db) == before


def test_db_upgrade_command(tmp_path, capsys):
    db = tmp_path / "fresh.db"
    assert cli_main(["db", "upgrade", "--db", f"sqlite:///{db}"]) == 0
    assert "schema at revision" in capsys.readouterr().out
    con = sqlite3.connect(db)
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "ix_pairs_head" in names and "ix_neurons_run_kind" in names


def test_config_prints_effective_settings(capsys, monkeypatch):
    import json

    monkeypatch.setenv("LOOKUPS_TOP_K", "7")
    assert cli_main(["config", "--n-per-layer", "4"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["top_k"] == 7 and cfg["n_per_layer"] == 4 and cfg["act_ratio"] == 0.8


def test_stored_run_settings_validate_against_settings(precomputed_db):
    """A run's stored settings read back through the Settings model give the same science
    dict: a renamed, removed or retyped field of Settings fails here."""
    import json

    from context_lookups.precompute.core.settings import SCIENCE_FIELDS, Settings

    con = sqlite3.connect(precomputed_db)
    stored = json.loads(con.execute("SELECT settings FROM runs").fetchone()[0])
    con.close()
    assert set(stored) == set(SCIENCE_FIELDS)
    s = Settings.of_run(stored)
    assert s.science() == stored
    assert s.active_rule == "topk" and s.active_topk == 3  # the run's, not the defaults


def test_runs_stored_before_pair_min_prompts_read_back_as_computed(precomputed_db):
    """A run stored before --pair-min-prompts existed reads back with no minimum (1), and its
    settings hash is unchanged, so resuming it is not refused as a settings mismatch."""
    import hashlib
    import json

    from context_lookups.precompute.core.settings import Settings

    con = sqlite3.connect(precomputed_db)
    stored = json.loads(con.execute("SELECT settings FROM runs").fetchone()[0])
    con.close()
    assert stored["pair_min_prompts"] == 8  # conftest.small_settings
    old = {k: v for k, v in stored.items() if k != "pair_min_prompts"}
    s = Settings.of_run(old)
    assert s.pair_min_prompts == 1
    assert s.science_hash() == hashlib.sha256(json.dumps(old, sort_keys=True, default=str)
                                              .encode()).hexdigest()[:16]
    assert Settings.of_run(stored).science_hash() != s.science_hash()
