"""``/fire``: which neurons fire on a text (docs/method.md §11), with its ``.json`` twin. The
route composes the page side (:mod:`app.pages.fire`: the run's columns, the shown result) and
the live half (:mod:`app.live.fire`: the pass). The pass is awaited, as on the neuron page:
database reads and rendering run in the thread pool, the model on its own thread, so waiting
requests hold no page thread."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import BadLiveInput, ModelNotAvailable, PromptTooLong

from ..live.fire import OVERALL, PER_POSITION, FireColumns
from ..pages import fire as F
from ..pages import queries as Q
from ..pages import urls
from ..pages.present import run_dict
from .common import clean_text, db, in_live_threads, render

router = APIRouter()

DB = Annotated[Session, Depends(db)]
TextQ = Annotated[str | None, Query(max_length=20000, description="The text to run (at most the "
                                    "server's token cap).")]
RunQ = Annotated[str | None, Query(max_length=100, description="The run (its slug); default the "
                                   "first whose model is on this server.")]


def _prepare(s: Session, request: Request, slug: str | None, text: str | None):
    """The page's data without the result, the pass's Future (None without a text, or when the
    run's model is not on this server: the notice says so and nothing waits), the run's columns
    and its context (for showing the result)."""
    live, runs_, cache = request.app.state.live, request.app.state.runs, request.app.state.view_cache
    try:
        runs = Q.list_runs(s)
        run = F.pick_run(runs, runs_.model_notice, slug)
        if slug is not None and run is None:
            Q.get_run(s, slug=slug)  # NotFound naming the runs
        ctx = runs_.of(run) if run is not None else None
        notice = ctx.model_notice if ctx is not None else None
        params = {"run": run.slug if run is not None and slug is not None else None, "text": text}
        data = {"runs": [{"slug": r.slug, "model_name": r.model_name, "live": runs_.model_notice(r) is None}
                         for r in runs],
                "run": run_dict(run) if run is not None else None, "text": text, "notice": notice,
                "per_position": PER_POSITION, "overall": OVERALL, "result": None, "error": None,
                "links": {"page": urls.fire(**params), "json": urls.fire(fmt="json", **params)}}
        fut = index = None
        if text is not None and run is not None and notice is None:
            index = cache.get(("fire-index", run.id))
            if index is None:
                index = F.run_index(s, run)
                cache[("fire-index", run.id)] = index
            columns = FireColumns(index.slug, index.layers, index.d_mlp, index.max_act)
            fut = live.submit_fire(source=ctx.model_source, columns=columns, text=text)
        return data, fut, index, ctx
    finally:
        s.close()


async def fire_view(request: Request, s: Session, run: str | None, text: str | None, fmt: str | None):
    text = clean_text(text, name="text")
    text = text if text and text.strip() else None
    run = clean_text(run, name="run", max_chars=100) or None
    run_in = partial(in_live_threads, request) if text is not None else run_in_threadpool
    data, fut, index, ctx = await run_in(_prepare, s, request, run, text)
    status = 200
    if text is not None and data["notice"] is not None:
        data["error"], status = data["notice"], 503
    elif fut is not None:
        try:  # shielded: a client that goes away must not cancel a pass other requests share
            res = await asyncio.shield(asyncio.wrap_future(fut))
            data["result"] = await run_in(F.shown, res, index, ctx.partial)
        except (BadLiveInput, PromptTooLong, ModelNotAvailable) as exc:
            data["error"], status = str(exc), 503 if isinstance(exc, ModelNotAvailable) else 422
    if fmt == "json" and status != 200:
        return render(request, "", {"detail": data["error"], "status": status}, fmt="json", status=status)
    return await run_in(render, request, "fire.html", data, fmt=fmt, status=status)


@router.get("/fire.json", tags=["json"], summary="Which neurons fire on a text (JSON)")
async def fire_json(request: Request, s: DB, text: TextQ = None, run: RunQ = None):
    return await fire_view(request, s, run, text, "json")


@router.get("/fire", response_class=HTMLResponse, tags=["pages"],
            summary="Which neurons fire on a text: the analysed neurons with the largest activation "
                    "relative to their own maximum, per token and overall")
async def fire_page(request: Request, s: DB, text: TextQ = None, run: RunQ = None):
    return await fire_view(request, s, run, text, None)
