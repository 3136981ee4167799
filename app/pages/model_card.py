"""The embedded model's card as a page of the explorer (``/models/embedded``): the model card
shipped in the model's folder (``precompute/embedded/model/MODEL_CARD.md``: its data, tokenizer,
architecture, training and evaluation) rendered from its Markdown, and the one figure it shows.
Nothing here touches the database or loads the model."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from markdown_it import MarkdownIt

from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.core.settings import EMBEDDED_MODEL

from . import urls

CARD = "MODEL_CARD.md"
FILES = {"loss_curve.png": "image/png"}  # the files of the model's folder the card shows


def note(n_layers: int, n_heads: int, d_model: int) -> str:
    """What the embedded model is, in one line (the home page's, beside the link to its card)."""
    return (f"a small GPT-2 ({n_layers} layers, {n_heads} heads, d_model {d_model}) trained by this "
            f"project on redistributable English text, shipped with it so the explorer runs offline")


@lru_cache(maxsize=1)
def card() -> dict:
    """The page's data (its ``.json`` twin): ``model``, ``markdown`` (the card as shipped),
    ``html`` (rendered: CommonMark with tables, raw HTML not passed through; the card's figures
    served from :func:`card_file`'s URLs), ``config`` (the model's ``config.json``).

    Raises:
        NotFound: the package's embedded model has no card (an install without it).
    """
    folder = Path(EMBEDDED_MODEL)
    path = folder / CARD
    if not path.is_file():
        raise NotFound("The embedded model's card is not in this installation.")
    text = path.read_text(encoding="utf-8")
    shown = text
    for name in FILES:
        shown = shown.replace(f"]({name})", f"]({urls.model_file(name)})")
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(shown)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return {"model": "embedded", "markdown": text, "html": html, "config": config,
            "links": {"json": urls.model_card(fmt="json")}}


def card_file(name: str) -> tuple[Path, str]:
    """A figure of the card: its path and media type.

    Raises:
        NotFound: ``name`` is not one of the card's files.
    """
    if name not in FILES:
        raise NotFound(f"The model card shows no file {name!r}.")
    return Path(EMBEDDED_MODEL) / name, FILES[name]
