"""``/search`` (full-text search over explanations and prompt texts, :mod:`app.pages.search`),
``/glossary`` (every term the pages use) and ``/models/embedded`` (the embedded model's card,
:mod:`app.pages.model_card`), each with its ``.json`` twin."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy.orm import Session

from ..pages import glossary, model_card, urls
from ..pages.queries import list_runs
from ..pages.search import KINDS, SearchQuery, search, terms
from .common import clean_text, db, render

router = APIRouter()

DB = Annotated[Session, Depends(db)]
Q_ = Annotated[str, Query(max_length=500, description="Words to find (all of them); a \"quoted "
                          "phrase\" as a phrase.")]
RunQ = Annotated[str | None, Query(max_length=100, description="Only this run (its slug).")]
KindQ = Annotated[Literal[KINDS] | None, Query(description="Only explanations or only prompts "
                                                "(paginated); default both, the best of each.")]


def _search_data(s: Session, q: str, run: str | None, kind: str | None, page: int) -> dict:
    q = clean_text(q, name="q", max_chars=500) or ""
    run = clean_text(run, name="run", max_chars=100) or None
    sq = SearchQuery(q=q.strip(), run=run, kind=kind, page=page)
    res = search(s, sq)
    params = {"q": sq.q or None, "run": run}
    pages = {k: max(1, math.ceil(res[k]["total"] / sq.per_page)) for k in KINDS}
    return {"q": sq.q, "run": run, "kind": kind, "page": page, "terms": terms(sq.q),
            "runs": [r.slug for r in list_runs(s)], **res,
            "links": {"json": urls.search(fmt="json", **params, kind=kind, page=page if page > 1 else None),
                      "page": urls.search(**params, kind=kind, page=page if page > 1 else None),
                      **{f"all_{k}": urls.search(**params, kind=k) for k in KINDS},
                      "both": urls.search(**params),
                      "prev": urls.search(**params, kind=kind, page=page - 1 if page > 2 else None)
                      if kind and page > 1 else None,
                      "next": urls.search(**params, kind=kind, page=page + 1)
                      if kind and page < pages[kind] else None}}


@router.get("/search.json", tags=["json"], summary="Full-text search (JSON)")
def search_json(request: Request, s: DB, q: Q_ = "", run: RunQ = None, kind: KindQ = None,
                page: Annotated[int, Query(ge=1, le=100_000)] = 1):
    return render(request, "search.html", _search_data(s, q, run, kind, page), fmt="json")


@router.get("/search", response_class=HTMLResponse, tags=["pages"],
            summary="Full-text search over explanations and prompt texts, linked to pairs and neurons")
def search_page(request: Request, s: DB, q: Q_ = "", run: RunQ = None, kind: KindQ = None,
                page: Annotated[int, Query(ge=1, le=100_000)] = 1):
    return render(request, "search.html", _search_data(s, q, run, kind, page), fmt=None)


@router.get("/glossary.json", tags=["json"], summary="Every term the pages use, defined (JSON)")
def glossary_json(request: Request):
    return render(request, "glossary.html", {"terms": glossary.entries()}, fmt="json")


@router.get("/glossary", response_class=HTMLResponse, tags=["pages"],
            summary="Every term the pages use, defined")
def glossary_page(request: Request):
    return render(request, "glossary.html", {"terms": glossary.entries()}, fmt=None)


@router.get("/models/embedded.json", tags=["json"], summary="The embedded model's card (JSON)")
def model_card_json(request: Request):
    return render(request, "model_card.html", model_card.card(), fmt="json")


@router.get("/models/embedded", response_class=HTMLResponse, tags=["pages"],
            summary="The embedded model's card: data, tokenizer, architecture, training, evaluation")
def model_card_page(request: Request):
    return render(request, "model_card.html", model_card.card(), fmt=None)


@router.get("/models/embedded/{name}", tags=["pages"], summary="A figure of the embedded model's card")
def model_card_file(name: str):
    path, media = model_card.card_file(name)
    return FileResponse(path, media_type=media)
