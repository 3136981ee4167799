"""Settings and the options that set them: every setting is checked before the run row is written
(issue 18, items 10-12; the LLM key), the scan's top-k is bounded and its memory estimated, and
the command-line options are made from the settings classes by pydantic-settings (issue 19, item
6): every field an option and an environment variable, ``--db`` everywhere, no argparse
internals. Real subprocesses of the ``lookups`` command, real SQLite files."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import typing

import pytest
from pydantic import ValidationError

from context_lookups.precompute.core.errors import BadSettings
from context_lookups.precompute.core.settings import MAX_SEED, Settings
from tests.cli_helpers import ROOT, assert_one_line_exit_2, lookups, lookups_in_process, tree
from tests.conftest import small_settings
from tests.db_rows import canonical_rows

# --- item 11: every setting checked before the run row is written ----------------------------------

@pytest.mark.parametrize("value, needle", [("-1", "greater than or equal to 0"), ("1e26", "valid integer"),
                                           (str(MAX_SEED + 1), "less than or equal to")])
def test_bad_seed_is_named_by_its_option_and_writes_nothing(tmp_path, precomputed_db, value, needle):
    """A new database is not created; an existing one keeps its runs (no run row left
    ``running``), and the same command with a good seed then runs (item 11)."""
    proc = lookups("precompute", "--seed", value, "--db", f"sqlite:///{tmp_path / 'new.db'}", cwd=tmp_path)
    assert_one_line_exit_2(proc, "--seed (LOOKUPS_SEED)", value, needle)
    assert list(tmp_path.iterdir()) == []
    db = tmp_path / "copy.db"
    shutil.copy(precomputed_db, db)
    before = canonical_rows(f"sqlite:///{db}")
    proc = lookups("precompute", "--seed", value, "--run-name", "other", "--db", f"sqlite:///{db}",
                   cwd=tmp_path)
    assert_one_line_exit_2(proc, "--seed")
    assert canonical_rows(f"sqlite:///{db}") == before


def test_llm_explainer_without_a_key_is_refused_before_anything_is_written(tmp_path, tiny_model_dir,
                                                                         small_corpus_dir):
    env = {"LOOKUPS_TEST_NO_KEY": ""}
    proc = lookups("precompute", "--model", str(tiny_model_dir), "--dataset", str(small_corpus_dir),
                   "--explainer", "openai", "--llm-api-key-env", "LOOKUPS_TEST_NO_KEY",
                   "--db", f"sqlite:///{tmp_path / 'new.db'}", cwd=tmp_path, env=env)
    assert_one_line_exit_2(proc, "No API key", "LOOKUPS_TEST_NO_KEY")
    assert list(tmp_path.iterdir()) == []


# --- item 12 -----------------------------------------------------------------------------------------

def test_pair_min_fraction_above_max_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="--pair-min-fraction 0.9 is above --pair-max-fraction 0.1"):
        Settings(pair_min_fraction=0.9, pair_max_fraction=0.1)
    Settings(pair_min_fraction=0.5, pair_max_fraction=0.5)  # equal is a valid (narrow) filter
    proc = lookups("precompute", "--pair-min-fraction", "0.9", "--pair-max-fraction", "0.1",
                   "--db", f"sqlite:///{tmp_path / 'new.db'}", cwd=tmp_path)
    assert_one_line_exit_2(proc, "--pair-min-fraction 0.9", "--pair-max-fraction 0.1", "no pair")
    assert list(tmp_path.iterdir()) == []


# --- item 10: --top-k bounded, capped by the documents, memory estimated ------------------------------

def test_top_k_is_bounded(tmp_path):
    proc = lookups("precompute", "--top-k", "100000", "--n-docs", "16",
                   "--db", f"sqlite:///{tmp_path / 'new.db'}", cwd=tmp_path)
    assert_one_line_exit_2(proc, "--top-k (LOOKUPS_TOP_K) 100000", "less than or equal to 1000")
    assert list(tmp_path.iterdir()) == []


def test_top_k_beyond_the_documents_scanned_keeps_them_all(tmp_path, tiny_model_dir, tiny_model,
                                                          small_corpus_dir):
    """--top-k 1000 over 5 documents per split scans with k = 5: every document is kept for
    every neuron, ranks 0..4, as a run with --top-k 5 (the rows are the same)."""
    from context_lookups.precompute.job.pipeline import run_precompute

    rows = {}
    for k in (1000, 5):
        db = tmp_path / f"k{k}.db"
        run_precompute(small_settings(db, tiny_model_dir, small_corpus_dir, n_docs=5, top_k=k, n_per_layer=1,
                                      n_random=0, explainer="none", ablation="none"), model=tiny_model)
        with sqlite3.connect(db) as c:
            rows[k] = c.execute("SELECT split, layer, neuron, rank, doc_idx, act, position "
                                "FROM top_activations "
                                "ORDER BY split, layer, neuron, rank").fetchall()
    assert rows[1000] == rows[5] and max(r[3] for r in rows[5]) == 4
    n_neurons = len({(r[1], r[2]) for r in rows[5]})
    assert len(rows[5]) == 2 * 5 * n_neurons


def _topk_peak_bytes(k: int, n: int) -> int:
    """Peak RSS growth (bytes) of a running top-k of k x n over 8 batches, and the rows stored
    from it, in a fresh process."""
    code = f"""
import resource, torch
torch.set_num_threads(1)
from context_lookups.precompute.prompts.scan import TopK
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
top = TopK({k}, {n})
for i in range(8):
    top.update(torch.randn(16, {n}), torch.randint(0, 100, (16, {n})), torch.arange(16 * i, 16 * i + 16))
vals, docs, pos = top.values.tolist(), top.docs.tolist(), top.positions.tolist()
rows = [dict(run_id=1, split="explain", layer=0, neuron=c, rank=r, doc_idx=docs[r][c], act=vals[r][c],
             position=pos[r][c]) for c in range({n}) for r in range({k})]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)
    return int(out.stdout.split()[-1])


def test_scan_memory_estimate_bounds_the_real_peak_and_refuses_what_does_not_fit():
    from context_lookups.precompute.prompts.scan import check_scan_memory

    k, n_layers, d_mlp = 400, 2, 1024
    need = check_scan_memory(k, n_layers, d_mlp, available=10**15)
    assert _topk_peak_bytes(k, n_layers * d_mlp) <= need
    with pytest.raises(BadSettings, match=r"400 top documents per neuron \(--top-k and its reserve\) over "
                       r"2 layers x 1024 neurons needs about 0\.5 GB"):
        check_scan_memory(k, n_layers, d_mlp, available=need - 1)


# --- issue 19, item 6: options made from the settings classes -----------------------------------------

def _fields(cls) -> list[str]:
    return [n for n, f in cls.model_fields.items()
            if dict not in {typing.get_origin(a) for a in (f.annotation, *typing.get_args(f.annotation))}]


def test_every_setting_is_an_option_with_its_environment_variable(capsys, monkeypatch):
    from context_lookups.app.settings import WebSettings

    def lookups(*args):
        return lookups_in_process(*args, capsys=capsys, monkeypatch=monkeypatch)

    for command, classes in (("precompute", [Settings]), ("serve", [WebSettings]),
                             ("config", [Settings, WebSettings])):
        text = " ".join(lookups(command, "--help").stdout.split())
        for cls in classes:
            for name in _fields(cls):
                flag = "--" + name.replace("_", "-")
                assert re.search(rf"{flag}\b", text) and f"LOOKUPS_{name.upper()}" in text, (command, name)
        assert "--db-url str, --db str" in text, command
    assert "--model-paths" not in lookups("serve", "--help").stdout  # dicts: the environment only
    assert "--run-name str, --run str" in " ".join(lookups("explain", "--help").stdout.split())


def test_options_environment_and_defaults_combine_as_before(tmp_path, capsys, monkeypatch):
    def lookups(*args, **kw):
        return lookups_in_process(*args, capsys=capsys, monkeypatch=monkeypatch, **kw)

    proc = lookups("config", "--db", "sqlite:///x.db", "--layers", "1", "2", "--no-reject-numeric",
                   "--token-cap", "7", "--no-preload", "--reject-tokens", "a", "b c",
                   env={"LOOKUPS_TOP_K": "7", "LOOKUPS_PAGE_SIZE": "9"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    pre, web = cfg["precompute"], cfg["serve"]
    assert pre["db_url"] == web["db_url"] == "sqlite:///x.db"
    assert pre["layers"] == [1, 2] and pre["reject_numeric"] is False and pre["reject_tokens"] == ["a", "b c"]
    assert pre["top_k"] == 7 and pre["n_per_layer"] == 20 and web["page_size"] == 9
    assert web["token_cap"] == 7 and web["preload"] is False
    proc = lookups("config", "--token-cap", "0", "--n-per-layer", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--n-per-layer (LOOKUPS_N_PER_LAYER) x: Input should be a valid integer" in proc.stderr
    assert "--token-cap (LOOKUPS_TOKEN_CAP) 0: Input should be greater than or equal to 1" in proc.stderr
    assert tree(tmp_path) == {}


def test_the_cli_uses_no_argparse_internals_nor_private_helpers():
    for path in ("precompute/cli.py", "precompute/core/options.py", "app/cli.py"):
        source = (ROOT / path).read_text()
        assert "_option_string_actions" not in source and "._actions" not in source, path
    imported = [name.split(" as ")[0].strip()
                for line in re.findall(r"from context_lookups.precompute[.\w]* import (.+)",
                                       (ROOT / "app/cli.py").read_text())
                for name in line.split(",")]
    assert imported and not [n for n in imported if n.startswith("_")], imported
