"""Helpers of the tests that run the real ``lookups`` command in a subprocess."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lookups(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The real ``lookups`` command (``python -m context_lookups.app.cli``) in a subprocess."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                    PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "context_lookups.app.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def lookups_in_process(*args: str, capsys, monkeypatch, env: dict | None = None,
                       cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The same ``lookups`` entry point called in this process (``main(argv)``, with ``env`` set
    and ``cwd`` entered through ``monkeypatch``), for a test about what the command says rather
    than about the process: a result like :func:`lookups`', without the ~0.5 s of CPU (several
    seconds on a loaded machine) that importing torch in a new process costs."""
    from context_lookups.app.cli import main

    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


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


def precompute_args(db, model_dir, corpus_dir) -> list[str]:
    """``lookups precompute`` arguments equal to ``conftest.small_settings`` (every field that is
    not the default)."""
    from context_lookups.precompute.core.settings import Settings
    from tests.conftest import small_settings

    s, default = small_settings(db, model_dir, corpus_dir), Settings()
    args = ["precompute"]
    for name in Settings.model_fields:
        value = getattr(s, name)
        if value != getattr(default, name):
            values = map(str, value) if isinstance(value, list) else [str(value)]
            args += ["--" + name.replace("_", "-"), *values]
    return args
