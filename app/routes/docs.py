"""The OpenAPI UI at /docs, self-hosted: Swagger UI is vendored under static/vendor/swagger-ui
and started by a static script (no CDN, no inline script, so the CSP holds)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request):
    return request.app.state.templates.TemplateResponse(request, "docs.html", {})
