"""Every URL of the explorer is built here, so that links, htmx targets, pushed URLs and the
``.json`` twins agree. Query parameters are emitted in a fixed order and empty ones are left
out, which makes each view's URL canonical (and shareable)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote, urlencode

_ORDER = ("layer", "kind", "q", "min_congruence", "max_congruence", "min_score", "min_n", "sort", "order",
          "page", "per_page", "score", "split", "prompt", "ablate", "head", "pos", "src")


def _query(params: dict) -> str:
    if not params:
        return ""
    items = [(k, params[k]) for k in _ORDER if k in params]
    items += sorted((k, v) for k, v in params.items() if k not in _ORDER)
    items = [(k, ",".join(v) if isinstance(v, (list, tuple)) else v) for k, v in items
             if v is not None and v != "" and v != [] and v != ()]
    return ("?" + urlencode(items, quote_via=quote, safe=",")) if items else ""


@lru_cache(maxsize=1024)
def _slug(slug: str) -> str:
    """A run's slug as a path segment (quoted once: a list page links every row)."""
    return quote(slug)


def _path(path: str, fmt: str | None) -> str:
    """``path`` or its twin: ``fmt`` "json" or "csv" (list pages)."""
    return path + (f".{fmt}" if fmt in ("json", "csv") else "")


def home(*, fmt: str | None = None) -> str:
    return "/.json" if fmt == "json" else "/"


def neurons(slug: str, *, fmt: str | None = None, **params) -> str:
    return _path(f"/{_slug(slug)}/neurons", fmt) + _query(params)


def neuron(slug: str, layer: int, neuron_: int, *, fmt: str | None = None, **params) -> str:
    return _path(f"/{_slug(slug)}/neurons/{layer}/{neuron_}", fmt) + _query(params)


@lru_cache(maxsize=4096)
def pair_urls(run: str, layer: int, neuron_: int, n_layers: int, n_heads: int) -> dict[str, str]:
    """``{"L{k}H{h}": pair page URL}`` of every head of the model, for one neuron (the neuron page
    links each prompt's active heads and every heatmap column)."""
    return {f"L{k}H{h}": pair(run, layer, neuron_, k, h) for k in range(n_layers) for h in range(n_heads)}


def neuron_helpers(run: str, layer: int, neuron_: int, params: dict) -> dict:
    """Template-only URL builders of the neuron page (links keep the live state ``params``). Live
    tokens are buttons of the live form (``pos`` only), not links: see ``markup.tokens_html``."""
    def with_score(score: str) -> str:
        return neuron(run, layer, neuron_, **{**params, "score": score if score != "raw" else None})

    def with_split(split: str) -> str:
        return neuron(run, layer, neuron_, **{**params, "split": split if split != "explain" else None})

    return {"live_url": live(run, layer, neuron_), "page_base": neuron(run, layer, neuron_),
            "knockout_url": knockout(run, layer, neuron_),
            "with_score": with_score, "with_split": with_split,
            "pair_url": lambda k, h: pair(run, layer, neuron_, k, h)}


def goto(slug: str) -> str:
    return f"/{_slug(slug)}/goto"


def live(slug: str, layer: int, neuron_: int, **params) -> str:
    """The htmx fragment of the live panel (its page URL is :func:`neuron` with the same params)."""
    return f"/{_slug(slug)}/neurons/{layer}/{neuron_}/live" + _query(params)


def knockout(slug: str, layer: int, neuron_: int, *, fmt: str | None = None, **params) -> str:
    """A live attention knockout (``prompt``, ``head``, ``pos``, ``src``): the htmx fragment the
    live look-up's source tokens ask for, a page of its own without htmx, and its ``.json`` twin."""
    return _path(f"/{quote(slug)}/neurons/{layer}/{neuron_}/knockout", fmt) + _query(params)


def pair(slug: str, layer: int, neuron_: int, head_layer: int, head_: int, *,
         fmt: str | None = None, **params) -> str:
    return _path(f"/{_slug(slug)}/neurons/{layer}/{neuron_}/heads/{head_layer}/{head_}", fmt) + _query(params)


def pairs(slug: str, *, fmt: str | None = None, **params) -> str:
    """A run's (neuron, head) pairs with their explanations and scores."""
    return _path(f"/{_slug(slug)}/pairs", fmt) + _query(params)


def head(slug: str, layer: int, head_: int, *, fmt: str | None = None, **params) -> str:
    return _path(f"/{_slug(slug)}/heads/{layer}/{head_}", fmt) + _query(params)


def compare(*, fmt: str | None = None, **params) -> str:
    """Runs side by side; ``runs`` a list of slugs."""
    return _path("/compare", fmt) + _query(params)


def glossary(*, fmt: str | None = None) -> str:
    """Every term the pages use, defined."""
    return _path("/glossary", fmt)


def model_card(*, fmt: str | None = None) -> str:
    """The embedded model's card."""
    return _path("/models/embedded", fmt)


def model_file(name: str) -> str:
    """A figure the embedded model's card shows."""
    return f"/models/embedded/{quote(name)}"


def search(*, fmt: str | None = None, **params) -> str:
    """Full-text search over explanations and prompt texts; ``q`` the words, ``run`` a slug."""
    return _path("/search", fmt) + _query(params)


def fire(*, fmt: str | None = None, **params) -> str:
    """Which neurons fire on a text; ``run`` a slug, ``text`` the text."""
    return _path("/fire", fmt) + _query(params)


def static(path: str) -> str:
    return "/static/" + path
