"""The explorer's FastAPI application: ``create_app(db_url=...)``.

The database is opened read-only (``precompute.db.open_reader``); a run's model is loaded
lazily on the first live request and then kept (``app.live``). Domain errors become HTTP
statuses here, as JSON for ``.json`` routes and API clients and as a readable page otherwise.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from precompute.db import open_reader, sessions
from precompute.errors import ModelNotAvailable, NotFound, PromptTooLong

from . import present, urls
from .live import BadLiveInput, Live
from .settings import WebSettings

logger = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def make_templates(directory: Path) -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(str(directory)),
                      autoescape=select_autoescape(["html", "xml", "svg"], default=True),
                      trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters.update(tok=present.visible, colour=present.colour, fmt=present.fmt)
    env.globals.update(urls=urls, legend=present.legend, histogram_svg=present.histogram_svg,
                       score_groups=present.score_groups, tokens_html=present.tokens_html,
                       prompt_heat_html=present.prompt_heat_html)
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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.dispose()

    app = FastAPI(title="context-lookups explorer", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Next-token neurons, the attention heads that switch them on, their "
                  "explanations and ablations (Neo, Cohen & Barez, EMNLP 2024). Every HTML page "
                  "has a JSON twin at the same path with `.json`.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.Session = sessions(engine)
    app.state.live = Live(settings)
    app.state.templates = make_templates(settings.templates_dir)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.2f}"
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        vary = response.headers.get("Vary")
        if not vary or "HX-Request" not in vary:
            response.headers["Vary"] = f"{vary}, HX-Request" if vary else "HX-Request"
        return response

    _install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=str(settings.static_dir)), name="static")
    from .routes import compare, docs, fragments, pages

    app.include_router(compare.router)
    app.include_router(docs.router)
    app.include_router(fragments.router)
    app.include_router(pages.router)
    return app


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


def _install_error_handlers(app: FastAPI) -> None:
    # Domain errors from precompute and the live engine, mapped to HTTP at this boundary.
    statuses = {NotFound: 404, PromptTooLong: 422, BadLiveInput: 422, ModelNotAvailable: 503}

    async def domain_error(request: Request, exc: Exception):
        return error_response(request, statuses[type(exc)], str(exc))

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

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, f"Internal error ({type(exc).__name__}). See the server log.")

