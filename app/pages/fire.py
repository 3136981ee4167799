"""``/fire``'s stored-data side (docs/method.md §11): the run's analysed neurons as the columns of
the pass (read once per run on a page thread, :func:`run_index`), the run the page shows, and a
result as the page and its JSON twin show it. The pass itself is the live half's
(:mod:`app.live.fire`); the route hands it the columns' plain values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from context_lookups.precompute.store.runs import neuron_range_error
from context_lookups.precompute.store.schema import Neuron, Run

from . import urls
from .present import token_escaped, token_fields


@dataclass(frozen=True)
class RunIndex:
    """A run's analysed neurons as the fire page needs them (read once per run): column
    ``j * d_mlp + i`` is neuron ``i`` of ``layers[j]``; ``max_act`` its maximum over the explain
    split (NaN when not positive or not stored: it has no relative activation); ``tokens``,
    ``token_ids`` and ``kinds`` per column (None where the neuron is not stored)."""

    slug: str
    layers: tuple[int, ...]
    d_mlp: int
    max_act: torch.Tensor
    tokens: tuple
    token_ids: tuple
    kinds: tuple

    def neuron(self, col: int) -> tuple[int, int]:
        """(layer, neuron) of a column."""
        return self.layers[col // self.d_mlp], col % self.d_mlp


def run_index(session: Session, run: Run) -> RunIndex:
    """Read the run's analysed neurons (every neuron of ``run.layers``: their explain-split
    maxima, tokens and kinds) into a :class:`RunIndex`."""
    layers = tuple(int(x) for x in run.layers)
    n = len(layers) * run.d_mlp
    max_act = torch.full((n,), float("nan"))
    tokens, ids, kinds = [None] * n, [None] * n, [None] * n
    col_of = {lay: j * run.d_mlp for j, lay in enumerate(layers)}
    for layer, neuron, m, tok, tid, kind in session.execute(
            select(Neuron.layer, Neuron.neuron, Neuron.max_act, Neuron.token, Neuron.token_id, Neuron.kind)
            .where(Neuron.run_id == run.id)):
        if neuron_range_error(run, layer, neuron) is not None:  # not a scanned neuron of the run
            continue
        c = col_of[layer] + neuron
        if m is not None and m > 0 and math.isfinite(m):
            max_act[c] = m
        tokens[c], ids[c], kinds[c] = tok, tid, kind
    return RunIndex(run.slug, layers, run.d_mlp, max_act, tuple(tokens), tuple(ids), tuple(kinds))


def pick_run(runs: list[Run], model_notice, slug: str | None) -> Run | None:
    """The run the page shows: ``slug`` (NotFound if unknown, raised by the caller's lookup),
    else the first run whose model is on this server (``model_notice(run)`` None), else the
    first run."""
    if slug is not None:
        return next((r for r in runs if r.slug == slug), None)
    return next((r for r in runs if model_notice(r) is None), runs[0] if runs else None)


def shown(res: dict, index: RunIndex, partial: dict) -> dict:
    """A result of :func:`fire_views` as the page and its JSON twin show it: each listed
    neuron as ``{layer, neuron, label, kind, token, token_escaped, rel, act, url}``, the text's
    tokens escaped (``app.pages.present.token_fields``), and per token its strongest relative
    activation (``peak``) for the colours, and the lowest relative activation shown (``rel_lo``,
    at most 0: the colour legend's low end)."""
    def neuron(col: int, rel: float, act: float) -> dict:
        layer, i = index.neuron(col)
        tid, tok = index.token_ids[col], index.tokens[col]
        return {"layer": layer, "neuron": i, "label": f"L{layer}N{i}", "kind": index.kinds[col],
                "token": tok, "token_escaped": token_escaped(tid, tok, partial) if tok is not None else None,
                "rel": rel, "act": act, "url": urls.neuron(index.slug, layer, i)}

    positions = [{"pos": p, "top": [neuron(c, r, a) for c, r, a in top]}
                 for p, top in enumerate(res["positions"])]
    overall = [{**neuron(o["col"], o["rel"], o["act"]), "pos": o["pos"], "rels": o["rels"]}
               for o in res["overall"]]
    peak = [p["top"][0]["rel"] if p["top"] else None for p in positions]
    rel_lo = min([0.0] + [v for v in peak if v is not None] + [v for o in overall for v in o["rels"]])
    return {"prompt": res["prompt"], "n_tokens": len(res["token_ids"]), "token_ids": res["token_ids"],
            "tokens": res["tokens"], **token_fields(res["token_ids"], res["tokens"], partial),
            "peak": peak, "positions": positions, "overall": overall, "rel_lo": rel_lo}
