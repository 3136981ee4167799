"""A neuron's activation distribution as the neuron page and its JSON twin show it: the stored
fixed-bin histogram of its activations (``hook_post``) over one split's scanned tokens
(docs/method.md §2, :mod:`precompute.histogram`), with the top prompts' activations to mark on
it. Like :mod:`app.queries`, keyword-only reads; routes never build SQL."""

from __future__ import annotations

from sqlalchemy.orm import Session

from context_lookups.precompute.prompts.reads import histogram


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
