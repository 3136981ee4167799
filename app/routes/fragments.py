"""htmx fragments. The live panel of the neuron page is rendered by the same template
(``_live.html``) that the page includes, and the response pushes the page's canonical URL
(``HX-Push-Url``) so the address bar always reproduces the view."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .pages import DB, AblateQ, HeadQ, PosQ, PromptQ, Score, neuron_view

router = APIRouter()


@router.get("/{run}/neurons/{layer}/{neuron}/live", response_class=HTMLResponse, tags=["fragments"],
            summary="Live panel of the neuron page (htmx fragment)")
async def live_fragment(request: Request, s: DB, run: str, layer: int, neuron: int, score: Score = "raw",
                  prompt: PromptQ = "", ablate: AblateQ = None, pos: PosQ = None,
                  split: Literal["explain", "heldout"] = "explain", head: HeadQ = None):
    """Run ``prompt`` live (optionally with ``ablate`` heads zero-ablated, attributing at
    ``pos``, showing ``head``'s look-up) and return the panel. The page URL with the same query
    renders the same panel."""
    return await neuron_view(request, s, run, layer, neuron, score=score, split=split,
                             prompt=prompt or "", ablate=ablate or [], pos=pos, fmt=None, fragment=True,
                             head=head)
