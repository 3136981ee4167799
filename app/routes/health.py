"""``/healthz``: whether the server is up and its live models are ready (JSON)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import make_url

router = APIRouter()


def database_state(request: Request) -> str:
    """``ok``, or why the database cannot serve pages (a SQLite file deleted or moved since the
    server started still answers on the connections already open, so the file is looked at)."""
    url = make_url(request.app.state.settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        return f"missing: {url.database} no longer exists"
    try:
        with request.app.state.Session() as s:
            s.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error: the page requests would fail the same way
        return f"failed: {type(exc).__name__}"
    return "ok"


@router.get("/healthz", tags=["json"], summary="Server health and live model readiness (JSON)")
def healthz(request: Request) -> dict:
    """``ready`` is true once every run's model has loaded (pages never need it); ``models``
    gives each run's state (``ready``, ``loading``, ``failed: <why>``, or ``unavailable:
    <why>``: not on this server, known at start, never loaded), ``live`` whether each run can
    run live passes (now, or once its model has loaded), ``queue`` the live requests waiting
    for the model, ``worker`` the live model process (``pid``, ``restarts``, ``state``),
    ``database`` whether the database can be read (else the answer is a 503)."""
    live = request.app.state.live
    models = live.status()
    db = database_state(request)
    body = {"status": "ok" if db == "ok" else "unavailable", "database": db,
            "ready": bool(models) and all(v == "ready" for v in models.values()),
            "models": models,
            "live": {k: not v.startswith(("unavailable", "failed")) for k, v in models.items()},
            "queue": live.waiting(), "stats": live.stats, "worker": live.worker()}
    return body if db == "ok" else JSONResponse(body, status_code=503)
