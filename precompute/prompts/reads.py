"""The reads of step 2's rows (paper §4.2, docs/method.md §2): a neuron's top documents (the
scan's top-k joined to the documents' texts: the one home of that join) and its stored
activation histogram. Keyword-only; the explorer's pages and step 3 call them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from context_lookups.precompute.prompts.histogram import SCHEME, ZERO, bin_bounds, bin_of
from context_lookups.precompute.store.schema import ActivationHistogram, Document, TopActivation


@dataclass
class TopDocument:
    """One of a neuron's top documents: its rank (0 = highest) in the scan's top-k, the
    document's index in the split, the max activation ``act`` (post-GELU) at token ``position``
    (BOS = 0), and the document's text."""

    rank: int
    doc_idx: int
    act: float
    position: int
    text: str


def top_documents(session: Session, *, run_id: int, layer: int, neuron: int, split: str = "explain",
                  limit: int | None = None, positive_only: bool = False) -> list[TopDocument]:
    """The neuron's top documents from the scan of ``split``, by rank (any neuron of a scanned
    layer): at most ``limit`` (None: all), only those with a positive activation with
    ``positive_only`` (the ones step 3 trims)."""
    q = (select(TopActivation.rank, TopActivation.doc_idx, TopActivation.act, TopActivation.position,
                Document.text)
         .join(Document, (Document.run_id == TopActivation.run_id) & (Document.split == TopActivation.split)
               & (Document.idx == TopActivation.doc_idx))
         .where(TopActivation.run_id == run_id, TopActivation.split == split,
                TopActivation.layer == layer, TopActivation.neuron == neuron)
         .order_by(TopActivation.rank))
    if positive_only:
        q = q.where(TopActivation.act > 0)
    if limit is not None:
        q = q.limit(limit)
    return [TopDocument(rank=r.rank, doc_idx=r.doc_idx, act=r.act, position=r.position, text=r.text)
            for r in session.execute(q)]


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
            "marks": [{"rank": r, "act": a, "bin": b} for (r, a), b in zip(marks, where, strict=True)],
            "zero_bin": ZERO}
