"""``/healthz``: whether the server is up and its live models are ready (JSON)."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/healthz", tags=["json"], summary="Server health and live model readiness (JSON)")
def healthz(request: Request) -> dict:
    """``ready`` is true once every run's model has loaded (pages never need it); ``models``
    gives each run's state (``ready``, ``loading``, ``failed: <why>``, or ``unavailable:
    <why>``: not on this server, known at start, never loaded), ``live`` whether each run can
    run live passes (now, or once its model has loaded), ``queue`` the live requests waiting
    for the model."""
    live = request.app.state.live
    models = live.status()
    return {"status": "ok", "ready": bool(models) and all(v == "ready" for v in models.values()),
            "models": models, "live": {k: not v.startswith(("unavailable", "failed")) for k, v in models.items()},
            "queue": live.engine.waiting(), "stats": live.stats}
