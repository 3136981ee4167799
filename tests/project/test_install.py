"""The install as a new user meets it: CI runs the README's test command, the environment is the
lock's, and a wheel (not the source tree) precomputes and serves from an empty directory."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^```\n(.*?)^```", text, flags=re.S | re.M)
    assert block, "README.md must open with a code block holding the two commands"
    return block.group(1).strip().splitlines()


def test_ci_runs_the_readme_test_command():
    lines = _readme_commands()
    assert len(lines) == 2, lines
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print-command"], check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == lines[1]
    for line in lines:  # both install from the lock, with the CPU torch release CI uses
        assert "-c requirements.lock" in line and "torch==2.13.0" in line, line
    assert "pytest" in lines[1] and "lookups precompute" in lines[0] and "lookups serve" in lines[0]
    # CI lints: ruff (the config in pyproject.toml) runs before the tests
    assert "&& ruff check . &&" in lines[1] and lines[1].index("ruff check .") < lines[1].index("pytest")


def _lock_pins() -> dict[str, str]:
    """Package → locked version for this interpreter and platform (the lock is universal: a
    package can have one line per Python version, told apart by environment markers)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line[0] in " #-":
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_lock_pins_what_is_installed():
    """Every locked package that is installed has the locked version (torch: its local build
    label, such as +cpu, aside), so the tests ran on the lock, not on the newest releases."""
    pins = _lock_pins()
    assert pins.get("torch") == "2.13.0" and "pytest" in pins and "transformer-lens" in pins
    wrong = {}
    for name, want in pins.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # platform-specific pins (CUDA libraries) are not installed here
        if have.split("+")[0] != want:
            wrong[name] = (have, want)
    assert not wrong, (f"installed versions differ from requirements.lock (installed, locked): {wrong}; "
                       f"install with `pip install -c requirements.lock ...`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_wheel_installs_precomputes_and_serves(tmp_path):
    """Build the wheel, install it into a new virtual environment, and from an empty directory
    run a small ``lookups precompute`` and ``lookups serve``; GET a neuron page and the CSS.

    The new environment installs only the wheel (no dependencies, no index); it borrows this
    environment's third-party packages through a ``.pth`` file (nested ``.pth`` files, such as
    an editable install's, are not processed there), so the package itself can only come from
    the wheel."""
    import site
    import sqlite3

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheel = next(dist.glob("context_lookups-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_borrowed_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)],
                   check=True, capture_output=True, text=True)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKUPS_") and k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    where = subprocess.run([str(py), "-c", "import context_lookups.app, context_lookups.precompute; "
                            "print(context_lookups.app.__file__); "
                            "print(context_lookups.precompute.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout
    assert str(ROOT) not in where and purelib in where, where
    lookups = str(venv / "bin" / "lookups")
    r = subprocess.run([lookups, "precompute", "--n-docs", "24", "--n-per-layer", "2", "--explainer", "none",
                        "--ablation", "none"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    db = work / "lookups.db"
    assert db.is_file()
    con = sqlite3.connect(db)
    layer, neuron = con.execute("SELECT layer, neuron FROM neurons WHERE kind = 'next_token' "
                                "ORDER BY layer, neuron LIMIT 1").fetchone()
    con.close()
    port = _free_port()
    server = subprocess.Popen([lookups, "serve", "--port", str(port)], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(base + "/.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        page = httpx.get(f"{base}/embedded/neurons/{layer}/{neuron}", timeout=30)
        assert page.status_code == 200, page.text[:500]
        assert f"L{layer}N{neuron}" in page.text
        css = httpx.get(base + "/static/style.css", timeout=10)
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_package_dirs_are_all_listed_in_pyproject():
    """Every package folder of app/ and precompute/ is installed under context_lookups (the
    explicit list of pyproject.toml), and no other top-level package is installed."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {"context_lookups": "context_lookups", "context_lookups.app": "app",
                                  "context_lookups.precompute": "precompute"}
    found = {"context_lookups"}
    for top in ("app", "precompute"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("context_lookups", *rel)))
    assert set(cfg["packages"]) == found


def test_a_users_own_app_and_precompute_do_not_collide(tmp_path):
    """A folder with its own ``app/`` and ``precompute/`` packages, as any FastAPI project has:
    from there, ``import app`` is the user's and ``context_lookups`` is the project's."""
    for name in ("app", "precompute"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"WHO = 'user {name}'\n")
        (tmp_path / name / "main.py").write_text("WHO = 'user main'\n")
    code = ("import app, precompute, app.main; print(app.WHO, precompute.WHO, app.main.WHO); "
            "import context_lookups, context_lookups.app.main, context_lookups.precompute.store.schema as s; "
            "print(context_lookups.app.main.create_app.__module__, s.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr[-2000:]
    user, ours = out.stdout.strip().splitlines()
    assert user == "user app user precompute user main"
    assert ours == "context_lookups.app.main context_lookups.precompute.store.schema"


def test_code_imports_the_project_by_its_one_name():
    """No module of the project imports the top-level ``app`` or ``precompute``: only
    ``context_lookups.app``/``context_lookups.precompute`` (or relative imports), which a
    user's own packages of those names cannot shadow."""
    import ast

    bad = []
    for top in ("app", "precompute", "context_lookups", "tests", "benchmarks", "scripts", "alembic"):
        for f in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                bad += [f"{f.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                        if n.split(".")[0] in ("app", "precompute")]
    assert not bad, bad
