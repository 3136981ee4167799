"""What the routes share: a database session per request, rendering a page or its JSON twin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial

import anyio
import orjson
from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import BadLiveInput

from ..pages.context import RunContext


async def db(request: Request) -> AsyncIterator[Session]:
    """A read-only session for one request. Async, so that FastAPI does not run it in the
    thread pool (a sync generator dependency cost two thread hops per request): making a
    session does no I/O (it connects on first use, in the handler's thread), and the handlers
    that await a live pass close it in their own threads before they return."""
    s = request.app.state.Session()
    try:
        yield s
    finally:
        s.close()


LIVE_THREADS = 2  # thread-pool threads the live requests' steps may hold at once


async def in_live_threads(request: Request, fn: Callable, *args, **kw):
    """``fn(*args, **kw)`` in the thread pool for a request with a live pass (its checks, its
    result shown and rendered), at most :data:`LIVE_THREADS` at a time: 60 live requests then
    share the web process's GIL with a page request as 2 threads, not as 40 (the pool's size),
    so pages keep their latency. The passes themselves run in the live model process."""
    limiter = getattr(request.app.state, "live_threads", None)
    if limiter is None:  # made in the event loop, on first use
        limiter = request.app.state.live_threads = anyio.CapacityLimiter(LIVE_THREADS)
    return await anyio.to_thread.run_sync(partial(fn, *args, **kw), limiter=limiter)


def run_context(request: Request, s: Session, slug: str) -> RunContext:
    """The context of run ``slug`` for this request (:class:`app.pages.context.RunContexts`):
    resolve it once and hand it on.

    Raises:
        NotFound: no such run."""
    return request.app.state.runs.resolve(s, slug)


def is_htmx(request: Request) -> bool:
    """An htmx request for a fragment (a history restore asks for the whole page)."""
    return (request.headers.get("HX-Request") == "true"
            and request.headers.get("HX-History-Restore-Request") != "true")


def render(request: Request, template: str, data: dict, *, fmt: str | None, status: int = 200,
           extra: dict | None = None, headers: dict | None = None):
    """The JSON twin (``fmt == "json"``: exactly ``data``) or the HTML template rendered with
    ``data`` plus ``extra`` (template-only helpers)."""
    if fmt == "json":
        return Response(_json(data), status_code=status, headers=headers, media_type="application/json")
    ctx = dict(data)
    ctx.update(extra or {})
    return request.app.state.templates.TemplateResponse(request, template, ctx, status_code=status,
                                                        headers=headers)


def _json(data) -> bytes:
    """``data`` as JSON with orjson (several times faster than the standard encoder on a
    neuron's grids). JSON has no NaN or infinity: orjson writes such numbers as null. Types
    orjson does not know go through FastAPI's encoder."""
    return orjson.dumps(data, default=jsonable_encoder, option=orjson.OPT_NON_STR_KEYS)


def clean_text(value: str | None, *, name: str, max_chars: int = 20000) -> str | None:
    """Reject text that cannot be encoded (lone surrogates) or is absurdly long."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadLiveInput(f"{name} is not valid Unicode text.") from None
    if len(value) > max_chars:
        raise BadLiveInput(f"{name} is {len(value)} characters long; the limit is {max_chars}.")
    return value
