"""The reads of step 1's rows (paper §4.1, docs/method.md §1): one neuron of a run, and how many
selected next-token neurons rank above it. Keyword-only; the explorer's pages call them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.store.runs import check_neuron
from context_lookups.precompute.store.schema import Neuron, Run


def get_neuron(session: Session, *, run: Run, layer: int, neuron: int) -> Neuron:
    """Neuron (layer, neuron) of the run.

    Raises:
        NotFound: naming the scanned layers or the neuron range (``store.runs.check_neuron``),
            or saying the neuron is not stored.
    """
    check_neuron(run, layer, neuron)
    n = session.scalar(select(Neuron).where(Neuron.run_id == run.id, Neuron.layer == layer,
                                            Neuron.neuron == neuron))
    if n is None:
        raise NotFound(f"neuron L{layer}N{neuron} is not stored in run {run.slug!r}.")
    return n


def selected_above(session: Session, *, run_id: int, layer: int, rank: int) -> int:
    """Selected next-token neurons of ``layer`` ranked above ``rank`` (0-based, by congruence)."""
    return session.scalar(select(func.count()).select_from(Neuron).where(
        Neuron.run_id == run_id, Neuron.layer == layer, Neuron.kind == "next_token",
        Neuron.rank < rank)) or 0
