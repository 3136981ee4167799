"""Pages shown inline in a notebook: the explorer's own templates (``neuron.html``,
``pair.html``, ``_live.html``, ``fire.html``) rendered by the explorer's own Jinja environment
(:func:`app.main.make_templates`: the same filters, token colouring, heatmaps and legends), with
its ``base.html`` swapped for ``notebook.html``: no header, no script, the stylesheet inlined.

The document is shown in an ``<iframe srcdoc>`` with an empty-handed ``sandbox`` (no script, no
form, no same-origin access; links open in a new tab), so its stylesheet cannot restyle the
notebook and nothing in it can run. Every text is escaped twice over: by the templates'
autoescape inside the document, and as an attribute value around it. With a base URL
(:func:`context_lookups.open`'s ``base_url``), the document's links point at that server and
the page links back to its own page there.
"""

from __future__ import annotations

import html
from functools import lru_cache

from markupsafe import Markup

NOTEBOOK_BASE = "notebook.html"  # stands in for base.html
HEIGHT = 640  # px of an inline page; the frame can be resized by its corner


@lru_cache(maxsize=1)
def environment():
    """The explorer's Jinja environment with ``base.html`` replaced by the notebook's."""
    from jinja2 import ChoiceLoader, FunctionLoader

    from context_lookups.app.main import make_templates
    from context_lookups.app.settings import WebSettings

    settings = WebSettings()
    env = make_templates(settings.templates_dir).env
    pages = env.loader
    source = pages.get_source(env, NOTEBOOK_BASE)[0]
    env.loader = ChoiceLoader([FunctionLoader(lambda name: source if name == "base.html" else None), pages])
    env.globals["nb_css"] = Markup((settings.static_dir / "style.css").read_text(encoding="utf-8"))
    return env


def page_html(template: str, data: dict, *, extra: dict | None = None, base_url: str | None = None,
              page_url: str | None = None) -> str:
    """``template`` rendered with ``data`` (a page's twin) and ``extra`` (the template helpers its
    route adds) as one self-contained document: inline CSS, no script. ``base_url``: the server
    the links point at; ``page_url``: the page there, linked at the top."""
    ctx = {**data, **(extra or {}), "nb_base": base_url, "nb_page": page_url}
    return environment().get_template(template).render(ctx)


def inline(document: str, *, title: str = "", height: int = HEIGHT) -> str:
    """``document`` in a sandboxed ``<iframe srcdoc>`` for a notebook's output (no script runs
    in it; links open in a new tab)."""
    return (f'<div style="resize:vertical;overflow:hidden;height:{int(height)}px;min-height:120px">'
            f'<iframe srcdoc="{html.escape(document, quote=True)}" title="{html.escape(title, quote=True)}" '
            f'sandbox="allow-popups allow-popups-to-escape-sandbox" '
            f'style="width:100%;height:100%;border:1px solid #e3e3df;border-radius:6px"></iframe></div>')
