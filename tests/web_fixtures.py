"""Fixtures of the web tests: a real database with two runs and a loopback server.

``web_db`` copies the session's ``precomputed_db`` (the paper's 2-sigma rule; on the tiny random
model it keeps few pairs) and adds a second run on the same model with the top-3 rule, which
keeps many (neuron, head) pairs and so gets explanations (baseline explainer) and ablations, and
a third whose neurons all have fewer explain prompts than ``--pair-min-prompts``.
It is built once per session whichever test module asks first.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import small_settings

_CACHE: dict[str, Path] = {}
TOPK_RUN = "tiny-topk"
FEW_RUN = "tiny-few"  # every neuron below --pair-min-prompts: no kept pair (nothing to explain)


def build_web_db(tmp_path_factory, precomputed_db: Path, model_dir: Path, corpus_dir: Path,
                 tiny_model) -> Path:
    if "db" not in _CACHE:
        from context_lookups.precompute.job.pipeline import run_precompute

        db = tmp_path_factory.mktemp("webdb") / "web.db"
        shutil.copy(precomputed_db, db)
        run_precompute(small_settings(db, model_dir, corpus_dir, run_name=TOPK_RUN, active_rule="topk"),
                       model=tiny_model)
        run_precompute(small_settings(db, model_dir, corpus_dir, run_name=FEW_RUN, pair_min_prompts=9,
                                      n_per_layer=1, n_docs=20, explainer="none", ablation="none"),
                       model=tiny_model)
        # Read-only from here on: the server must never need to write.
        db.chmod(0o444)
        _CACHE["db"] = db
    return _CACHE["db"]


@pytest.fixture(scope="session")
def web_db(request, tmp_path_factory) -> Path:
    """The web tests' database. ``LOOKUPS_TEST_WEB_DB=path`` reuses one built earlier by this
    fixture (a developer's shortcut: building takes minutes on a busy machine)."""
    import os

    if os.environ.get("LOOKUPS_TEST_WEB_DB"):
        return Path(os.environ["LOOKUPS_TEST_WEB_DB"])
    get = request.getfixturevalue
    return build_web_db(tmp_path_factory, get("precomputed_db"), get("tiny_model_dir"),
                        get("small_corpus_dir"), get("tiny_model"))


@pytest.fixture(scope="session")
def kept(web_db) -> tuple[int, int, int, int]:
    """(layer, neuron, head_layer, head) of the first kept, explained pair of the top-3 run."""
    return one(web_db, "SELECT n.layer, n.neuron, p.head_layer, p.head FROM pairs p JOIN neurons n ON "
               "n.id = p.neuron_id JOIN runs r ON r.id = p.run_id JOIN explanations e ON e.pair_id = p.id "
               "WHERE r.slug = ? AND p.kept AND e.status = 'ok' ORDER BY p.id LIMIT 1", TOPK_RUN)


def web_client(web_db: Path, tiny_model_dir: Path):
    """A TestClient of the app on the web tests' database, live passes on the tiny model (a
    generator: the client, then closed)."""
    import os

    from fastapi.testclient import TestClient

    from context_lookups.app.main import create_app

    over = {"torch_threads": None}
    if os.environ.get("LOOKUPS_TEST_WEB_DB"):
        over["model_paths"] = {s: str(tiny_model_dir) for (s,) in rows(web_db, "SELECT slug FROM runs")}
    with TestClient(create_app(db_url=f"sqlite:///{web_db}", **over)) as c:
        yield c


def one(db: Path, sql: str, *args):
    found = rows(db, sql, *args)
    return found[0] if found else None


def rows(db: Path, sql: str, *args):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_ready(base: str, timeout: float = 120) -> dict:
    """``/healthz`` of the server at ``base`` once its models are loaded (or one failed to)."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        h = httpx.get(base + "/healthz", timeout=10).json()
        if h["ready"] or any(v.startswith(("failed", "unavailable")) for v in h["models"].values()):
            return h
        time.sleep(0.05)
    raise AssertionError("the models did not load")
