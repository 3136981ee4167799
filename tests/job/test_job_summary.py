"""The job's last lines (issue 28 item 10): ``lookups precompute`` ends with a short summary in
words (neurons, distinct prompts and repeats merged, pairs kept, E with its interval, the
verdict, time, where to look next), the full figures go to ``--summary-json FILE`` (equal to the
run's stored summary), a bad file is refused before anything runs, and no advice is given that
cannot apply (none on the embedded default, where the whole shipped corpus is scanned)."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3

import pytest

from context_lookups.precompute.cli import main as cli_main
from context_lookups.precompute.core.settings import SERVE_HOST, SERVE_PORT, Settings
from context_lookups.precompute.job.summary import no_prompt_help, summary_text
from tests.conftest import small_settings


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_model_dir, small_corpus_dir) -> tuple[str, object, object]:
    """The real command, in-process, on the small configuration: (its standard output, the
    database, the summary file)."""
    tmp = tmp_path_factory.mktemp("summary")
    db, out = tmp / "lookups.db", tmp / "summary.json"
    s = small_settings(db, tiny_model_dir, small_corpus_dir)
    args = ["precompute", "--db", s.db_url, "--model", s.model, "--dataset", s.dataset, "--n-per-layer",
            "3", "--top-k", "8", "--context-tokens", "48", "--heldout-per-pair", "6", "--active-rule",
            "topk", "--pair-min-prompts", "8", "--summary-json", str(out)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(args) == 0
    return buf.getvalue(), db, out


def test_the_command_ends_with_a_short_summary_and_writes_the_full_one(cli_run):
    text, db, out = cli_run
    lines = text.strip().splitlines()
    assert len(lines) <= 10 and "{" not in text  # words, not a JSON dump
    full = json.loads(out.read_text())
    con = sqlite3.connect(db)
    stored = json.loads(con.execute("SELECT summary FROM runs").fetchone()[0])
    con.close()
    assert full == stored
    nk = full["neurons"]
    assert f"{nk['next_token']} next-token and {nk['random']} random baseline neurons" in text
    merged = sum(r["repeats_merged"] for r in full["repeats"].values())
    rep = full["repeats"]
    assert (f"{rep['explain']['prompts']:,} explain and {rep['heldout']['prompts']:,} held-out prompts, "
            f"each distinct within its neuron: {merged:,} repeat") in text
    assert f"{full['kept_pairs']:,} (neuron, head) pairs kept of {full['pairs']:,} scored" in text
    e = full["verdict"]["explanations"][0]["vs_chance"]
    assert f"{e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]" in text and f"the {e['n'][0]} scored" in text
    assert "E above chance: " in text and "that gap larger than random neurons': " in text
    assert f"lookups serve --db sqlite:///{db}" in text and f"http://{SERVE_HOST}:{SERVE_PORT}/" in text
    assert "--summary-json FILE" in text and "larger corpus" not in text


def test_advice_only_where_it_can_help(cli_run):
    full = json.loads(cli_run[2].read_text())
    dead = {**full, "no_activating_prompt": 2}
    default = summary_text(dead, Settings(), db_shown="sqlite:///x.db", db_bytes=None)
    line = next(x for x in default.splitlines() if "fire on no scanned explain document" in x)
    assert line.endswith("so they have no prompt")  # the embedded corpus, whole: nothing to suggest
    assert no_prompt_help(Settings()) is None
    fewer = summary_text(dead, Settings(n_docs=100), db_shown="sqlite:///x.db", db_bytes=None)
    assert "(scan more documents (--n-docs; this run read at most 100 per split))" in fewer
    assert "--dataset" in no_prompt_help(Settings(dataset="mine.jsonl"))


def test_a_summary_file_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, capsys,
                                                                                tiny_model_dir):
    db = tmp_path / "never.db"
    for bad, words in ((tmp_path / "no-such-folder" / "s.json", "does not exist"),
                       (tmp_path, "is a directory")):
        rc = cli_main(["precompute", "--db", f"sqlite:///{db}", "--model", str(tiny_model_dir),
                       "--summary-json", str(bad)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "--summary-json" in err[0] and words in err[0]
    assert not db.exists()
