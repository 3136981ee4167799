"""HTML pages, each with a ``.json`` twin at the same path plus ``.json``: the routes compose the
two halves of the explorer, the stored-data pages (:mod:`app.pages`: each page's data from its
run's context, resolved once per request) and, on the neuron page, the live half
(:mod:`app.live`: a pass queued with plain values and awaited).

Handlers are plain ``def`` (run in the threadpool) so that database reads never block the event
loop; the neuron page's handlers are ``async`` because they may await a live pass (see
:func:`neuron_view`).
"""

from __future__ import annotations

import asyncio
import math
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BeforeValidator
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import BadLiveInput, ModelNotAvailable, PromptTooLong
from context_lookups.precompute.neurons.reads import get_neuron

from ..live.passes import Target
from ..pages import lookup as LK
from ..pages import neuron as NP
from ..pages import queries as Q
from ..pages import urls, views
from ..pages.context import RunContext
from ..pages.export import all_rows_csv, csv_response
from ..pages.lookup import LiveKnockoutJSON, NeuronJSON, PairJSON
from .common import clean_text, db, in_live_threads, is_htmx, render, run_context

router = APIRouter()

DB = Annotated[Session, Depends(db)]
Score = Annotated[Literal["raw", "ln"], Query(description="Attribution score: the paper's raw "
                                              "dot product or the LN-aware one.")]
PromptQ = Annotated[str | None, Query(max_length=20000, description="Live prompt (runs the model).")]
AblateQ = Annotated[list[str] | None, Query(description="Heads to zero-ablate: 'L1H3,L0H2' (or repeated).")]
HeadQ = Annotated[str | None, Query(max_length=40, description="A live pass's look-up head, e.g. 'L1H3': its "
                                    "per-source decomposition at the position (docs/method.md §3) is "
                                    "returned as `live.lookup`.")]


def _blank_none(v):
    """An empty form field means 'no filter' (forms submit every field)."""
    return None if isinstance(v, str) and v.strip() == "" else v


Blank = BeforeValidator(_blank_none)


def _int_in(lo: int, hi: int) -> BeforeValidator:
    """An optional integer field in [lo, hi]; an empty value means unset. Checked here rather
    than with ge/le, which pydantic cannot combine with a validator returning None."""
    def check(v):
        v = _blank_none(v)
        if v is None:
            return None
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"{v!r} is not an integer") from None
        if not lo <= n <= hi:
            raise ValueError(f"{n} is outside {lo}..{hi}")
        return n
    return BeforeValidator(check)


PosQ = Annotated[int | None, _int_in(0, 1_000_000), Query(description="Token position (0-based, "
                                   "BOS excluded) to attribute; default the last.")]


# --- home --------------------------------------------------------------------------------------

@router.get("/.json", tags=["json"], summary="Runs and their findings (JSON)")
def home_json(request: Request, s: DB):
    return render(request, "home.html", views.home(s), fmt="json")


@router.get("/", response_class=HTMLResponse, tags=["pages"], summary="Runs and their findings")
def home_page(request: Request, s: DB):
    return render(request, "home.html", views.home(s), fmt=None)


# --- neuron list -------------------------------------------------------------------------------

def _neurons(request: Request, s: Session, run: str, fmt: str | None, layer, kind, q, min_congruence,
             max_congruence, min_score, sort, order, page, per_page):
    q = clean_text(q, name="q", max_chars=200)
    settings = request.app.state.settings
    flt = Q.NeuronFilter(layer=layer, kind=kind, q=q or None, min_congruence=min_congruence,
                         max_congruence=max_congruence, min_score=min_score, sort=sort, order=order,
                         page=page, per_page=min(per_page or settings.page_size, settings.max_page_size))
    for name in ("min_congruence", "max_congruence", "min_score"):
        v = getattr(flt, name)
        if v is not None and not math.isfinite(v):
            raise BadLiveInput(f"{name} must be a finite number, not {v}.")
    ctx = run_context(request, s, run)
    if fmt == "csv":  # every row matching the filters, streamed by key (app.pages.export)
        def fetch(session: Session, ids) -> list[dict]:
            return views.neurons(session, ctx, flt=flt, default_per_page=settings.page_size,
                                 ids=ids)["neurons"]
        keys = Q.neuron_keys(s, run=ctx.run, flt=flt)
        return all_rows_csv(fetch, keys, s, request.app.state.Session, filename=f"{run}-neurons.csv")
    data = views.neurons(s, ctx, flt=flt, default_per_page=settings.page_size)
    if is_htmx(request) and fmt is None:
        return render(request, "_neuron_table.html", data, fmt=None,
                      headers={"HX-Push-Url": data["links"]["page"]})
    return render(request, "neurons.html", data, fmt=fmt)


_F: dict = {}


def _neuron_list_route(fmt: str | None):
    def handler(request: Request, s: DB, run: str,
                layer: Annotated[int | None, Blank, Query(description="Scanned layer (0-based).")] = None,
                kind: Annotated[Literal[Q.KINDS], Query(description="selected (next-token and "
                                                        "random: the default), all, next_token, "
                                                        "random or other.")] = Q.NeuronFilter.kind,
                q: Annotated[str | None, Query(max_length=200, description="Token text contains "
                                               "(case-insensitive).")] = None,
                min_congruence: Annotated[float | None, Blank, Query(**_F)] = None,
                max_congruence: Annotated[float | None, Blank, Query(**_F)] = None,
                min_score: Annotated[float | None, Blank, Query(description="Best explanation score E "
                                                                "at least.", **_F)] = None,
                sort: Annotated[Literal[tuple(Q.SORTS)], Query(description="kind (next-token, "
                                                              "random, other; each by congruence), "
                                                              "or a column.")] = Q.NeuronFilter.sort,
                order: Annotated[Literal["asc", "desc"], Query()] = Q.NeuronFilter.order,
                page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
                per_page: Annotated[int | None, _int_in(1, 500),
                                    Query(description="Rows per page, 1..500.")] = None):
        return _neurons(request, s, run, fmt, layer, kind, q, min_congruence,
                        max_congruence, min_score, sort, order, page, per_page)
    return handler


router.get("/{run}/neurons.json", tags=["json"],
           summary="Neurons of a run (JSON)")(_neuron_list_route("json"))
router.get("/{run}/neurons.csv", tags=["csv"], summary="Neurons of a run (CSV: every row matching "
           "the filters, streamed; page and per_page are ignored)",
           response_class=Response)(_neuron_list_route("csv"))
router.get("/{run}/neurons", response_class=HTMLResponse, tags=["pages"],
           summary="Neurons of a run: sortable, filterable, paginated")(_neuron_list_route(None))


@router.get("/{run}/goto", tags=["pages"], summary="Jump to a neuron by layer and index",
            status_code=303, response_class=RedirectResponse)
def goto_neuron(s: DB, run: str, layer: int, neuron: int):
    """303 to the neuron's page (404 naming the valid range if it does not exist)."""
    get_neuron(s, run=Q.get_run(s, slug=run), layer=layer, neuron=neuron)
    return RedirectResponse(urls.neuron(run, layer, neuron), status_code=303)


# --- neuron ------------------------------------------------------------------------------------

async def neuron_view(request: Request, s: Session, run: str, layer: int, neuron: int, *, score: str,
                      split: str, prompt: str | None, ablate: list[str], pos: int | None,
                      fmt: str | None, fragment: bool = False, head: str | None = None):
    """The neuron page (or, with ``fragment``, only its live panel); with ``prompt`` the live
    pass is rendered server-side. Live errors keep the page and set the status (422/503).

    The live pass is awaited, not waited for in a worker thread: database reads and rendering
    run in the thread pool (a live request's steps at most ``LIVE_THREADS`` at a time:
    :func:`~app.routes.common.in_live_threads`), the model in the live model process, so queued
    live requests never hold the threads that serve pages. The run's context is resolved once, in
    the first thread-pool step of the request."""
    prompt = clean_text(prompt, name="prompt")
    ctx = res = params = error = brief = fut = None
    if prompt is not None:
        try:
            picked = clean_text(head, name="head") or None
        except BadLiveInput as exc:
            error = exc
        else:
            ctx, fut, error, params, brief = await in_live_threads(
                request, _submit, request, s, run, layer=layer, neuron_=neuron, prompt=prompt, ablate=ablate,
                pos=pos, score=score, head=picked)
        if fut is not None:
            try:  # shielded: a client that goes away must not cancel a pass other requests share
                res = await asyncio.shield(asyncio.wrap_future(fut))
            except (BadLiveInput, PromptTooLong, ModelNotAvailable) as exc:
                error = exc
    run_in = partial(in_live_threads, request) if prompt is not None else run_in_threadpool
    return await run_in(_closing, s, _neuron_response, request, s, run, layer, neuron, ctx=ctx, score=score,
                        split=split, prompt=prompt, pos=pos, fmt=fmt, fragment=fragment, res=res,
                        params=params, error=error, brief=brief)


def _closing(s: Session, fn, *args, **kw):
    """``fn(*args, **kw)``, then the session gives its connection back to the pool in this
    (worker) thread rather than on the event loop."""
    try:
        return fn(*args, **kw)
    finally:
        s.close()


def _submit(request: Request, s: Session, slug: str, **kw):
    """Resolve the run's context, check the live input (``neuron.live_request``) and queue the
    pass on the live half; then the session lets go of its pooled connection, so that requests
    waiting for the model hold no database connection either (the session reconnects when the
    response is rendered). Returns ``(ctx, future, error, params, brief)``: the future is None
    when the input or the queue refused the request at once (``error`` says why).

    Raises:
        NotFound: no such run or neuron."""
    try:
        ctx = run_context(request, s, slug)
        try:
            req = NP.live_request(s, ctx, **kw)
            n = req["neuron"]
            target = Target(ctx.slug, n.layer, n.neuron, n.token_id, n.token, ctx.rules)
            fut = request.app.state.live.submit(source=ctx.model_source, target=target, prompt=kw["prompt"],
                                                ablate=req["ablate"], pos=kw["pos"], head=req["head"])
        except (BadLiveInput, PromptTooLong, ModelNotAvailable) as exc:
            return ctx, None, exc, None, None
        return ctx, fut, None, req["params"], req["brief"]
    finally:
        s.close()


def _neuron_response(request: Request, s: Session, run: str, layer: int, neuron: int, *,
                     ctx: RunContext | None, score: str, split: str, prompt: str | None, pos: int | None,
                     fmt: str | None, fragment: bool, res: dict | None, params: dict | None,
                     error: Exception | None, brief: dict | None = None):
    ctx = ctx or run_context(request, s, run)
    if fragment:
        data = brief if brief is not None else NP.neuron_brief(s, ctx, layer=layer, neuron_=neuron,
                                                                        score=score)
    else:
        data = NP.neuron(s, ctx, layer=layer, neuron_=neuron, score=score, split=split,
                                  settings=request.app.state.settings, cache=request.app.state.view_cache)
    status, extra, headers = 200, {}, {}
    page_params = {"score": score if score != "raw" else None, "split": split if split != "explain" else None}
    if prompt is not None:
        if error is None:
            res = data["live"] = NP.shown_live(res, ctx.partial)
            page_params.update(params)
            extra.update(NP.live_extra(res, data, score))
        else:
            status = 503 if isinstance(error, ModelNotAvailable) else 422
            data["live_error"] = str(error)
            page_params.update(prompt=prompt)
        if fmt == "json" and status != 200:
            return render(request, "", {"detail": data["live_error"], "status": status}, fmt="json",
                          status=status)
    url = urls.neuron(run, layer, neuron, **page_params)
    data["links"]["page"] = url
    data["links"]["json"] = urls.neuron(run, layer, neuron, fmt="json", **page_params)
    data["live_prompt"] = prompt
    data["live_pos"] = pos
    extra.update(urls.neuron_helpers(run, layer, neuron, page_params))
    extra["pair_urls"] = urls.pair_urls(run, layer, neuron, data["run"]["n_layers"], data["run"]["n_heads"])
    # the stored prompts' sections depend on the neuron's prompts (immutable) and, through the
    # score/split links, on the live state: rendered once per neuron, split and score without one
    extra["prompts_key"] = (("neuron", data["run"]["slug"], layer, neuron, score, split)
                            if prompt is None and data.get("prompts") else None)
    if fragment:
        if status == 200:
            headers["HX-Push-Url"] = url
        return render(request, "_live.html", data, fmt=None, status=status, extra=extra, headers=headers)
    return render(request, "neuron.html", data, fmt=fmt, status=status, extra=extra)


@router.get("/{run}/neurons/{layer}/{neuron}.json", tags=["json"], summary="One neuron (JSON); "
            "with ?prompt= also the live pass", responses={200: {"model": NeuronJSON}})
async def neuron_json(request: Request, s: DB, run: str, layer: int, neuron: int, score: Score = "raw",
                      split: Literal["explain", "heldout"] = "explain", prompt: PromptQ = None,
                      ablate: AblateQ = None, pos: PosQ = None, head: HeadQ = None):
    return await neuron_view(request, s, run, layer, neuron, score=score, split=split, prompt=prompt,
                       ablate=ablate or [], pos=pos, fmt="json", head=head)


@router.get("/{run}/neurons/{layer}/{neuron}", response_class=HTMLResponse, tags=["pages"],
            summary="One neuron: token, prompts, head attribution, pairs, live")
async def neuron_page(request: Request, s: DB, run: str, layer: int, neuron: int, score: Score = "raw",
                      split: Literal["explain", "heldout"] = "explain", prompt: PromptQ = None,
                      ablate: AblateQ = None, pos: PosQ = None, head: HeadQ = None):
    ablate = ablate or []
    if len(ablate) > 1:  # unticked-JS form submission: canonical comma form
        return RedirectResponse(urls.neuron(run, layer, neuron, score=score if score != "raw" else None,
                                            split=split if split != "explain" else None, prompt=prompt,
                                            ablate=[a for a in ablate if a], head=head, pos=pos),
                                status_code=303)
    return await neuron_view(request, s, run, layer, neuron, score=score, split=split, prompt=prompt,
                             ablate=ablate, pos=pos, fmt=None, head=head)


# --- a live knockout ----------------------------------------------------------------------------

SrcQ = Annotated[int, Query(ge=0, le=1_000_000, description="The source position to knock out of the "
                            "head's look-up: 0 = BOS (the attention sink), s = the prompt's token s - 1.")]
KoHeadQ = Annotated[str, Query(max_length=40, description="The look-up's head, e.g. 'L1H3'.")]
KoPromptQ = Annotated[str, Query(max_length=20000, description="The live prompt (runs the model).")]


async def knockout_view(request: Request, s: Session, run: str, layer: int, neuron: int, *, prompt: str,
                        head: str, src: int, pos: int | None, score: str, fmt: str | None):
    """A live attention knockout (docs/method.md §3): ``head``'s read of source ``src`` at ``pos``
    removed from the live prompt and the model re-run on the live half, awaited like the neuron
    page's live pass; the htmx fragment shown in place in the live look-up, a page of its own
    without htmx, or its JSON twin. Live errors answer 422/503 (JSON) or an error panel."""
    prompt = clean_text(prompt, name="prompt")
    head = clean_text(head, name="head")

    def submit():
        try:
            ctx = run_context(request, s, run)
            req = NP.knockout_request(s, ctx, layer=layer, neuron_=neuron, prompt=prompt, head=head, src=src,
                                      pos=pos, score=score)
            n = req["neuron"]
            target = Target(ctx.slug, n.layer, n.neuron, n.token_id, n.token, ctx.rules)
            fut = request.app.state.live.submit_knockout(source=ctx.model_source, target=target,
                                                         prompt=prompt, pos=pos, head=req["head"], src=src)
            return ctx, req, fut
        finally:
            s.close()

    ctx, req, fut = await run_in_threadpool(submit)
    res = await asyncio.shield(asyncio.wrap_future(fut))
    res = {**res, "reason": LK.knockout_reason(res)}  # the result is shared (cached): not modified
    if fmt == "json":
        return render(request, "", res, fmt="json")
    data = {"run": {"slug": ctx.slug}, "neuron": {"layer": layer, "neuron": neuron}, "ko": res,
            "score": score, "links": {"json": urls.knockout(run, layer, neuron, fmt="json", **req["params"]),
                                      "page": urls.neuron(run, layer, neuron, **req["page"])}}
    template = "_knockout.html" if is_htmx(request) else "knockout.html"
    return render(request, template, data, fmt=None)


@router.get("/{run}/neurons/{layer}/{neuron}/knockout.json", tags=["json"],
            summary="A live attention knockout of one source of a head's look-up (JSON)",
            responses={200: {"model": LiveKnockoutJSON}})
async def knockout_json(request: Request, s: DB, run: str, layer: int, neuron: int, prompt: KoPromptQ,
                        head: KoHeadQ, src: SrcQ, pos: PosQ = None, score: Score = "raw"):
    return await knockout_view(request, s, run, layer, neuron, prompt=prompt, head=head, src=src, pos=pos,
                               score=score, fmt="json")


@router.get("/{run}/neurons/{layer}/{neuron}/knockout", response_class=HTMLResponse, tags=["pages"],
            summary="A live attention knockout of one source of a head's look-up")
async def knockout_page(request: Request, s: DB, run: str, layer: int, neuron: int, prompt: KoPromptQ,
                        head: KoHeadQ, src: SrcQ, pos: PosQ = None, score: Score = "raw"):
    return await knockout_view(request, s, run, layer, neuron, prompt=prompt, head=head, src=src, pos=pos,
                               score=score, fmt=None)


# --- pair --------------------------------------------------------------------------------------

@router.get("/{run}/neurons/{layer}/{neuron}/heads/{head_layer}/{head}.json", tags=["json"],
            summary="One (neuron, head) pair (JSON)", responses={200: {"model": PairJSON}})
def pair_json(request: Request, s: DB, run: str, layer: int, neuron: int, head_layer: int, head: int,
              score: Score = "raw"):
    data = views.pair(s, run_context(request, s, run), layer=layer, neuron_=neuron, head_layer=head_layer,
                      head=head, score=score)
    return render(request, "pair.html", data, fmt="json")


@router.get("/{run}/neurons/{layer}/{neuron}/heads/{head_layer}/{head}", response_class=HTMLResponse,
            tags=["pages"], summary="One (neuron, head) pair: prompts, explanation, scoring, ablation")
def pair_page(request: Request, s: DB, run: str, layer: int, neuron: int, head_layer: int, head: int,
              score: Score = "raw"):
    data = views.pair(s, run_context(request, s, run), layer=layer, neuron_=neuron, head_layer=head_layer,
                      head=head, score=score)
    return render(request, "pair.html", data, fmt=None)


# --- head --------------------------------------------------------------------------------------

HeadOrder = Annotated[Literal["raw", "ln", "fraction"], Query(description="Sort by mean raw or "
                                                             "LN-aware attribution, or active fraction.")]
KeptQ = Annotated[bool, Query(description="Only kept pairs (active on 25-75% of prompts).")]


@router.get("/{run}/heads/{layer}/{head}.csv", tags=["csv"], response_class=Response,
            summary="Neurons a head drives (CSV: the JSON twin's rows)")
def head_csv(request: Request, s: DB, run: str, layer: int, head: int, order: HeadOrder = "raw",
             kept: KeptQ = False):
    data = views.head(s, run_context(request, s, run), layer=layer, head_=head, order=order, kept=kept)
    return csv_response(data["pairs"], filename=f"{run}-L{layer}H{head}-neurons.csv")


@router.get("/{run}/heads/{layer}/{head}.json", tags=["json"], summary="Neurons a head drives (JSON)")
def head_json(request: Request, s: DB, run: str, layer: int, head: int, order: HeadOrder = "raw",
              kept: KeptQ = False):
    return render(request, "head.html", views.head(s, run_context(request, s, run), layer=layer, head_=head,
                                                   order=order, kept=kept), fmt="json")


@router.get("/{run}/heads/{layer}/{head}", response_class=HTMLResponse, tags=["pages"],
            summary="Neurons a head drives (reverse index over pairs)")
def head_page(request: Request, s: DB, run: str, layer: int, head: int, order: HeadOrder = "raw",
              kept: KeptQ = False):
    return render(request, "head.html", views.head(s, run_context(request, s, run), layer=layer, head_=head,
                                                   order=order, kept=kept), fmt=None)


# --- a run's pairs -----------------------------------------------------------------------------

def _pair_list_route(fmt: str | None):
    def handler(request: Request, s: DB, run: str,
                layer: Annotated[int | None, Blank, Query(description="Neuron layer (0-based).")] = None,
                kind: Annotated[Literal["selected", "next_token", "random"],
                                Query(description="Neuron kind.")] = Q.PairFilter.kind,
                kept: Annotated[bool, Query(
                    description="Only kept pairs (the default).")] = Q.PairFilter.kept,
                explainer: Annotated[str | None, Query(max_length=200, description="Only this "
                                                       "explainer's explanations.")] = None,
                min_score: Annotated[float | None, Blank, Query(description="Explanation score E at "
                                                                "least.", **_F)] = None,
                min_n: Annotated[int | None, _int_in(0, 1_000_000), Query(
                    description="Held-out prompts of the smaller class (active or inactive) "
                                "at least.")] = None,
                sort: Annotated[Literal[Q.PAIR_SORTS], Query(description="score: best E first; "
                                                             "neuron: by neuron and head; n: largest "
                                                             "held-out set first.")] = Q.PairFilter.sort,
                page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
                per_page: Annotated[int | None, _int_in(1, 500),
                                    Query(description="Rows per page, 1..500.")] = None):
        explainer = clean_text(explainer, name="explainer", max_chars=200) or None
        if min_score is not None and not math.isfinite(min_score):
            raise BadLiveInput(f"min_score must be a finite number, not {min_score}.")
        flt = Q.PairFilter(layer=layer, kind=kind, kept=kept, explainer=explainer, min_score=min_score,
                           min_n=min_n, sort=sort, page=page, per_page=per_page or Q.PairFilter.per_page)
        ctx = run_context(request, s, run)
        if fmt == "csv":  # every row matching the filters, streamed by key (app.pages.export)
            def fetch(session: Session, keys) -> list[dict]:
                return views.pairs(session, ctx, flt=flt, keys=keys)["pairs"]
            keys = Q.pair_keys(s, run=ctx.run, flt=flt)
            return all_rows_csv(fetch, keys, s, request.app.state.Session, filename=f"{run}-pairs.csv")
        data = views.pairs(s, ctx, flt=flt)
        return render(request, "pairs.html", data, fmt=fmt)
    return handler


router.get("/{run}/pairs.json", tags=["json"], summary="A run's pairs with explanations and "
           "scores (JSON)")(_pair_list_route("json"))
router.get("/{run}/pairs.csv", tags=["csv"], response_class=Response, summary="A run's pairs with "
           "explanations and scores (CSV: every row matching the filters, streamed; page and "
           "per_page are ignored)")(_pair_list_route("csv"))
router.get("/{run}/pairs", response_class=HTMLResponse, tags=["pages"], summary="A run's (neuron, "
           "head) pairs with their explanations and scores E")(_pair_list_route(None))
