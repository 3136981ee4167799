"""A neuron's activation distribution as the neuron page and its JSON twin show it: the stored
fixed-bin histogram of its activations (``hook_post``) over one split's scanned tokens
(docs/method.md §2, :mod:`precompute.histogram`), with the top prompts' activations to mark on
it. Like :mod:`app.queries`, keyword-only reads; routes never build SQL."""

from __future__ import annotations

import math

from sqlalchemy import select
from sqlalchemy.orm import Session

from context_lookups.precompute.prompts.histogram import SCHEME, ZERO, bin_bounds, bin_of
from context_lookups.precompute.store.schema import ActivationHistogram


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def histogram(session: Session, *, run_id: int, split: str, layer: int, neuron: int,
              marks: list[tuple[int, float]]) -> dict | None:
    """The neuron's histogram of ``split``, or None when the run has none (runs written before
    histograms were kept, imported runs, a scan still running).

    Returns:
        ``split``, ``scheme``, ``n_tokens`` (the real tokens counted: the split's scanned tokens
        after BOS), ``bins``: ``{bin, lo, hi, count}`` from the first to the last non-empty bin
        (``lo``/``hi`` None for -inf/+inf; positive bins hold ``[lo, hi)``, negative ones
        ``(lo, hi]``), and ``marks``: ``{rank, act, bin}`` of the given ``(rank, activation)``
        pairs (the top prompts' document activations), each inside its bin.
    """
    h = session.scalar(select(ActivationHistogram).where(
        ActivationHistogram.run_id == run_id, ActivationHistogram.split == split,
        ActivationHistogram.layer == layer, ActivationHistogram.neuron == neuron))
    if h is None or h.scheme != SCHEME:
        return None
    bins = []
    for j, c in enumerate(h.counts):
        lo, hi = bin_bounds(h.first_bin + j)
        bins.append({"bin": h.first_bin + j, "lo": _finite(lo), "hi": _finite(hi), "count": int(c)})
    acts = [a for _, a in marks]
    where = bin_of(acts).tolist() if acts else []
    return {"split": split, "scheme": h.scheme, "n_tokens": sum(int(c) for c in h.counts), "bins": bins,
            "marks": [{"rank": r, "act": a, "bin": b} for (r, a), b in zip(marks, where)],
            "zero_bin": ZERO}


def neuron_histogram(session: Session, *, run_id: int, neuron, split: str, prompts: list[dict],
                     docs: list[dict], cache=None) -> dict | None:
    """:func:`histogram` of the neuron page: ``neuron`` (a ``Neuron`` row) over ``split``, with
    the shown top prompts' document activations marked (the top documents' for a neuron without
    prompts, on the explain split); kept in ``cache`` once stored (immutable, like the prompts)."""
    key = ("histogram", neuron.id, split)
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    marks = [(p["rank"], p["doc_act"]) for p in prompts if p["doc_act"] is not None]
    if not prompts and split == "explain":
        marks = [(d["rank"], d["act"]) for d in docs]
    h = histogram(session, run_id=run_id, split=split, layer=neuron.layer, neuron=neuron.neuron, marks=marks)
    if h is not None and cache is not None:
        cache[key] = h
    return h
