"""The explorer's FastAPI application: ``create_app(db_url=...)``.

The app composes the explorer's two halves: the stored-data pages (:mod:`app.pages`, their runs
resolved by :class:`~app.pages.context.RunContexts`) and the live half (:class:`app.live.service.Live`),
which the pages reach only through the availability function handed to ``RunContexts`` and the
routes (:mod:`app.routes`). The database is opened read-only
(``precompute.store.db.open_reader``); the runs' models load in the background at start-up, in the
live model process (``/healthz``). Domain errors become HTTP statuses here, as JSON for ``.json``
routes and API clients and as a readable page otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from context_lookups.precompute.core.errors import BadLiveInput, ModelNotAvailable, NotFound, PromptTooLong
from context_lookups.precompute.explain.scoring import MIN_HELDOUT_PER_CLASS
from context_lookups.precompute.findings.verdict import WORDS
from context_lookups.precompute.store.db import GRANT_SELECT, open_reader, sessions, writable_tables

from .live.service import Live, LiveBusy
from .model_files import model_source
from .pages import charts, formats, glossary, lookup, markup, present, states, urls
from .pages.context import RunContexts
from .pages.queries import list_runs
from .pages.views import home
from .settings import WebSettings

logger = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def make_templates(directory: Path) -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(str(directory)),
                      autoescape=select_autoescape(["html", "xml", "svg"], default=True),
                      trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters.update(tok=formats.token_html, tok_plain=formats.token_plain, colour=markup.colour,
                       fmt=formats.fmt, fixed=formats.fixed, signed=formats.signed, pval=formats.pval,
                       pct=formats.pct, date=formats.date)
    env.globals.update(urls=urls, legend=charts.legend, histogram_svg=charts.histogram_svg,
                       activation_histogram_svg=charts.activation_histogram_svg,
                       decimals=formats.decimals, term=glossary.term, verdict_words=WORDS,
                       min_heldout=MIN_HELDOUT_PER_CLASS,
                       score_groups=present.score_groups, tokens_html=markup.tokens_html,
                       prompt_heat_html=markup.prompt_heat_html, head_grid_html=markup.head_grid_html,
                       html_cache=markup.HtmlCache(), section_cache=markup.LockedLRU(1024),
                       state_text=states.text, marked=formats.marked, pair_drops=present.pair_drops,
                       heldout_ablations=present.heldout_ablations, answer_parts=present.answer_parts,
                       lookup_tokens_html=lookup.lookup_tokens_html, knockout_title=lookup.knockout_title,
                       dash=formats.dash, reason=states.reason)
    return Jinja2Templates(env=env)


def create_app(db_url: str | None = None, **overrides) -> FastAPI:
    """Build the app on ``db_url`` (read-only). ``overrides`` set :class:`WebSettings` fields
    (e.g. ``token_cap=16`` in tests).

    Raises:
        FileNotFoundError: the SQLite file does not exist.
        SchemaTooNew: the database comes from a newer context-lookups.
    """
    settings = WebSettings(**({"db_url": db_url} if db_url else {}), **overrides)
    engine = open_reader(settings.db_url)
    if writable := writable_tables(engine):  # PostgreSQL: say once that the role could write
        logger.warning("the database role %r can write to %d tables (%s, ...): the server's sessions "
                       "are read-only, but a session can undo that; serve with a role that has "
                       "SELECT only (docs/scaling.md): %s", engine.url.username, len(writable),
                       ", ".join(writable[:3]), GRANT_SELECT.format(db=engine.url.database))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for name in ("neuron.html", "_live.html", "error.html"):  # compiled now, not on first use
            app.state.templates.get_template(name)
        if settings.preload:  # the models load on the model thread while pages are served
            with app.state.Session() as s:
                runs = list_runs(s)
                app.state.live.preload({r.slug: model_source(r, settings) for r in runs})
            # and the pages' tokenizers and the findings' bootstrap intervals (cached) in a thread,
            # not on a first visitor
            threading.Thread(target=_warm_pages, args=(app,), name="warm-pages", daemon=True).start()
        yield
        app.state.live.close()
        engine.dispose()

    app = FastAPI(title="context-lookups explorer", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Next-token neurons, the attention heads that switch them on, their "
                  "explanations and ablations (Neo, Cohen & Barez, EMNLP 2024). Every HTML page "
                  "has a JSON twin at the same path with `.json`.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.Session = sessions(engine)
    app.state.live = Live(settings)  # the live half
    app.state.runs = RunContexts(settings, availability=app.state.live.unavailable)  # the pages' runs
    app.state.templates = make_templates(settings.templates_dir)
    app.state.view_cache = markup.LockedLRU(1024)  # views._prompts_part, by (neuron id, split, score)

    app.add_middleware(SecurityHeaders)
    _install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=str(settings.static_dir)), name="static")
    from .routes import compare, docs, fire, fragments, health, pages, search

    app.include_router(compare.router)
    app.include_router(fire.router)
    app.include_router(search.router)
    app.include_router(docs.router)
    app.include_router(health.router)
    app.include_router(fragments.router)
    app.include_router(pages.router)
    return app


def _warm_pages(app: FastAPI) -> None:
    """Load every run's tokenizer for the pages, and compute every run's findings once (scipy's
    import and the verdict's bootstrap intervals, which are cached), so the first view of a page
    is not the slow one."""
    try:
        with app.state.Session() as s:
            app.state.runs.preload(list_runs(s))
            home(s)
    except Exception:  # a warm-up only: the page computes and reports the same on request
        logger.exception("warming the findings failed")


class SecurityHeaders:
    """Pure ASGI middleware: the security headers (CSP, nosniff, referrer policy), ``Vary:
    HX-Request`` (a fragment and its page share a URL) and ``Server-Timing`` (the app's time up to
    the response headers, ms); a HEAD request is answered as its GET, headers only. Starlette's
    ``@app.middleware("http")`` did the same through ``BaseHTTPMiddleware``, whose extra task and
    memory stream cost ~1 ms per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        head = scope["method"] == "HEAD"  # answered as GET without its body (RFC 9110 §9.3.2)
        if head:
            scope = {**scope, "method": "GET"}

        async def send_with_headers(message):
            if head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"server-timing", b"x-content-type-options",
                                                b"referrer-policy")]
                names = {k.lower() for k, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                vary = [v for k, v in headers if k.lower() == b"vary"]
                if not vary or b"HX-Request" not in vary[0]:
                    headers = [(k, v) for k, v in headers if k.lower() != b"vary"]
                    headers.append((b"vary", vary[0] + b", HX-Request" if vary else b"HX-Request"))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                            (b"server-timing", f"app;dur={(time.perf_counter() - t0) * 1000:.2f}".encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def wants_json(request: Request) -> bool:
    path = request.url.path
    if path.endswith(".json") or path.startswith("/openapi"):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(request: Request, status: int, message: str, title: str | None = None):
    if wants_json(request):
        return JSONResponse({"detail": message, "status": status}, status_code=status)
    templates = request.app.state.templates
    name = "_error.html" if (request.headers.get("HX-Request") == "true" and
                             request.headers.get("HX-History-Restore-Request") != "true") else "error.html"
    return templates.TemplateResponse(request, name, {"status": status, "message": message,
                                                      "title": title or _TITLES.get(status, "Error")},
                                      status_code=status)


_TITLES = {404: "Not found", 422: "Cannot run this request", 503: "Model not available",
           500: "Server error"}
DB_RETRY_AFTER_S = 5  # seconds a client is asked to wait when the SQLite file is locked


def _install_error_handlers(app: FastAPI) -> None:
    # Domain errors from precompute and the live engine, mapped to HTTP at this boundary.
    statuses = {NotFound: 404, PromptTooLong: 422, BadLiveInput: 422, ModelNotAvailable: 503,
                LiveBusy: 503}

    async def domain_error(request: Request, exc: Exception):
        resp = error_response(request, statuses[type(exc)], str(exc))
        if isinstance(exc, LiveBusy):
            resp.headers["Retry-After"] = "1"
        return resp

    for exc_type in statuses:
        app.add_exception_handler(exc_type, domain_error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        msgs = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path"))
            msgs.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
        return error_response(request, 422, "Invalid request: " + "; ".join(msgs) + ".")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"No page at {request.url.path}. Start from the home page /."
        resp = error_response(request, exc.status_code, msg)
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(OperationalError)
    async def database_unavailable(request: Request, exc: OperationalError):
        """The database locked by another process (SQLite's busy timeout ran out) or gone (its
        file deleted or moved): a 503 the client can retry, and one log line, not a traceback."""
        reason = " ".join(str(getattr(exc, "orig", exc)).split())[:200]
        if "locked" in reason or "busy" in reason:
            logger.warning("database busy on %s (%s): answered 503", request.url.path, reason)
            resp = error_response(request, 503, "The database is locked by another process (a write in "
                                                "progress); retry in a few seconds.", "Database busy")
            resp.headers["Retry-After"] = str(DB_RETRY_AFTER_S)
            return resp
        if "unable to open" in reason or "no such table" in reason or "disk I/O" in reason:
            logger.error("database unavailable on %s (%s): answered 503", request.url.path, reason)
            return error_response(request, 503, "The database cannot be read (was its file deleted or "
                                                "moved?); the server needs restarting on a database.",
                                  "Database not available")
        return await crash(request, exc)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, f"Internal error ({type(exc).__name__}). See the server log.")

