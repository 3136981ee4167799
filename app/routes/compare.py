"""``/compare``: runs side by side (``app.pages.compare``), with its ``.json`` twin."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from ..pages import compare as C
from ..pages.charts import overlay_svg
from .common import clean_text, db, render

router = APIRouter()

DB = Annotated[Session, Depends(db)]
RunsQ = Annotated[list[str] | None, Query(max_length=2000, description="Runs to compare: comma-separated "
                                   "slugs, or the parameter repeated (default: every run).")]
RuleQ = Annotated[Literal["authors", "project"], Query(description="E of single-class pairs: the "
                                                       "authors' fallback (one rate) or left out.")]


def _data(s: Session, runs: list[str] | None, rule: str) -> dict:
    text = clean_text(",".join(runs or []), name="runs", max_chars=2000)
    names = [r.strip() for r in text.split(",") if r.strip()]
    return C.compare(s, runs=list(dict.fromkeys(names)) or None, rule=rule)


@router.get("/compare.json", tags=["json"], summary="Runs compared side by side (JSON)")
def compare_json(request: Request, s: DB, runs: RunsQ = None, rule: RuleQ = "authors"):
    return render(request, "compare.html", _data(s, runs, rule), fmt="json")


@router.get("/compare", response_class=HTMLResponse, tags=["pages"],
            summary="Runs compared side by side: E, ablation, neurons and pairs per layer")
def compare_page(request: Request, s: DB, runs: RunsQ = None, rule: RuleQ = "authors"):
    data = _data(s, runs, rule)
    series = [(c["run"]["slug"]
               + (f" · {c['distribution']['explainer']}" if c["distribution"]["explainer"] else ""),
               c["distribution"]["scores"]) for c in data["runs"]]
    return render(request, "compare.html", data, fmt=None, extra={"overlay": overlay_svg(series)})
