"""Where the tests find the authors' GPT-2 small sample (not part of the repository):
``$LOOKUPS_PAPER_DATA``, else a ``shared/paper-data/gpt2-small-sample/experiment_data`` folder
next to the repository or one of its parents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_REL = Path("shared") / "paper-data" / "gpt2-small-sample" / "experiment_data"


def sample_dir() -> Path | None:
    env = os.environ.get("LOOKUPS_PAPER_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in ROOT.parents:
        if (parent / _REL).is_dir():
            return parent / _REL
    return None


def require_sample() -> Path:
    d = sample_dir()
    if d is None:
        pytest.skip("the authors' GPT-2 small sample is not here: set LOOKUPS_PAPER_DATA to its "
                    "experiment_data folder")
    return d


def import_sample(db: Path, src: Path | None = None) -> str:
    """Import the sample (or ``src``) into the SQLite file ``db`` with the real CLI; the URL."""
    from precompute.cli import main

    url = f"sqlite:///{db}"
    assert main(["import-paper", str(src or require_sample()), "--db", url]) == 0
    return url


def build_paper_web_db(tmp_path_factory, precomputed_db: Path) -> Path:
    """A copy of the precomputed database (run computed here) with the sample imported next to
    it and the baseline explainer run on the imported run: two runs to browse and compare."""
    import shutil

    from precompute.cli import main

    db = tmp_path_factory.mktemp("paper-web") / "lookups.db"
    shutil.copy(precomputed_db, db)
    url = import_sample(db)
    assert main(["explain", "--db", url, "--run", "gpt2-small", "--explainer", "baseline"]) == 0
    return db
