"""The reads of step 3's rows (paper §4.3, docs/method.md §3): a neuron's trimmed prompts (with
their attribution and active heads), its (neuron, head) pairs, a head's pairs across neurons,
the stored look-ups of a pair and their attention knockouts, and a run's knockout summary.
Keyword-only; the explorer's pages call them."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.heads.knockout import EFFECTS, from_stored, summarise_pair, summarise_run
from context_lookups.precompute.store.runs import check_head
from context_lookups.precompute.store.schema import AttentionKnockout, Lookup, Neuron, Pair, Prompt, Run


def neuron_prompts(session: Session, *, neuron_id: int, split: str = "explain",
                   limit: int | None = None) -> list[Prompt]:
    """The neuron's prompts of ``split`` by rank, at most ``limit`` (None: all)."""
    q = select(Prompt).where(Prompt.neuron_id == neuron_id, Prompt.split == split).order_by(Prompt.rank)
    return list(session.scalars(q if limit is None else q.limit(limit)))


def count_prompts(session: Session, *, neuron_id: int, split: str = "explain") -> int:
    """How many prompts of ``split`` the neuron has."""
    return session.scalar(select(func.count()).select_from(Prompt).where(
        Prompt.neuron_id == neuron_id, Prompt.split == split)) or 0


def neuron_pairs(session: Session, *, neuron_id: int, kept_only: bool = True) -> list[Pair]:
    """The neuron's (kept) pairs, most driven first (mean raw attribution)."""
    cond = [Pair.neuron_id == neuron_id] + ([Pair.kept.is_(True)] if kept_only else [])
    return list(session.scalars(select(Pair).where(*cond).order_by(Pair.mean_attr_raw.desc())))


def get_pair(session: Session, *, run: Run, neuron: Neuron, head_layer: int, head: int) -> Pair:
    """The (neuron, head) pair.

    Raises:
        NotFound: the head is outside the run's range (``store.runs.check_head``), or not
            scored for the neuron (the message names the scored head layers).
    """
    check_head(run, head_layer, head)
    p = session.scalar(select(Pair).where(Pair.neuron_id == neuron.id, Pair.head_layer == head_layer,
                                          Pair.head == head))
    if p is None:
        if neuron.kind == "other":
            raise NotFound(f"neuron L{neuron.layer}N{neuron.neuron} was not selected (neither a "
                           f"next-token nor a random neuron): it has no head pairs.")
        n_layers = session.scalar(select(func.max(Pair.head_layer)).where(Pair.neuron_id == neuron.id))
        rng = f"layers 0..{n_layers}" if n_layers is not None else "none (no activating prompts)"
        raise NotFound(f"head L{head_layer}H{head} is not scored for neuron L{neuron.layer}N{neuron.neuron}: "
                       f"scored head layers are {rng}.")
    return p


def head_pairs(session: Session, *, run: Run, head_layer: int, head: int, kept_only: bool = False,
               order: str = "raw", limit: int | None = None) -> list[tuple[Pair, Neuron]]:
    """Reverse index: the neurons this head was scored against, with their pair, most driven
    first (``order``: mean raw or LN-aware attribution, or active fraction; at most ``limit``).

    Raises:
        NotFound: the head is outside the run's range.
    """
    check_head(run, head_layer, head)
    cond = [Pair.run_id == run.id, Pair.head_layer == head_layer, Pair.head == head]
    if kept_only:
        cond.append(Pair.kept.is_(True))
    col = {"raw": Pair.mean_attr_raw, "ln": Pair.mean_attr_ln, "fraction": Pair.active_fraction}[order]
    q = (select(Pair, Neuron).join(Neuron, Neuron.id == Pair.neuron_id)
         .where(*cond).order_by(col.desc(), Neuron.layer, Neuron.neuron))
    return [tuple(r) for r in session.execute(q if limit is None else q.limit(limit))]


def kept_pair_neurons(session: Session, *, neuron_ids: list[int]) -> set[int]:
    """Which of ``neuron_ids`` have at least one kept pair."""
    if not neuron_ids:
        return set()
    return set(session.scalars(select(Pair.neuron_id).distinct()
                               .where(Pair.neuron_id.in_(neuron_ids), Pair.kept.is_(True))))


def count_head_pairs(session: Session, *, run: Run, head_layer: int, head: int,
                     kept_only: bool = False) -> int:
    """How many neurons the head was scored against (kept pairs only with ``kept_only``)."""
    cond = [Pair.run_id == run.id, Pair.head_layer == head_layer, Pair.head == head]
    if kept_only:
        cond.append(Pair.kept.is_(True))
    return session.scalar(select(func.count()).select_from(Pair).where(*cond)) or 0


def pair_lookups(session: Session, *, prompt_ids: list[int], head_layer: int, head: int) -> dict[int, Lookup]:
    """``{prompt_id: Lookup}``: the stored per-source decomposition of head ``L{head_layer}H{head}``
    on each of the prompts that has one (docs/method.md §3)."""
    if not prompt_ids:
        return {}
    return {lk.prompt_id: lk for lk in session.scalars(select(Lookup).where(
        Lookup.prompt_id.in_(prompt_ids), Lookup.head_layer == head_layer, Lookup.head == head))}


def pair_knockouts(session: Session, *, prompt_ids: list[int], head_layer: int, head: int
                   ) -> dict[int, list[AttentionKnockout]]:
    """``{prompt_id: [AttentionKnockout]}`` (in their order, ``idx``): the stored attention
    knockouts of head ``L{head_layer}H{head}`` on each of the prompts that has them
    (docs/method.md §3, "Attention knockout")."""
    if not prompt_ids:
        return {}
    out: dict[int, list[AttentionKnockout]] = defaultdict(list)
    for ko in session.scalars(select(AttentionKnockout).where(
            AttentionKnockout.prompt_id.in_(prompt_ids), AttentionKnockout.head_layer == head_layer,
            AttentionKnockout.head == head).order_by(AttentionKnockout.prompt_id, AttentionKnockout.idx)):
        out[ko.prompt_id].append(ko)
    return dict(out)


def count_knockouts(session: Session, *, run_id: int) -> int:
    """How many attention knockouts the run's prompts have (0: none stored)."""
    return session.scalar(select(func.count()).select_from(AttentionKnockout)
                          .join(Prompt, Prompt.id == AttentionKnockout.prompt_id)
                          .join(Neuron, Neuron.id == Prompt.neuron_id).where(Neuron.run_id == run_id)) or 0


def knockout_summary(session: Session, *, run_id: int) -> dict:
    """The run's knockout summary over its kept pairs (docs/method.md §3:
    :func:`precompute.heads.knockout.summarise_run` of each pair's
    :func:`~precompute.heads.knockout.summarise_pair`), from one read of the knockouts with their
    look-ups' scales; ``pairs``: ``{pair_id: pair summary}``."""
    cols = [AttentionKnockout.prompt_id, AttentionKnockout.idx, AttentionKnockout.sources,
            AttentionKnockout.contrib, *(getattr(AttentionKnockout, e) for e in EFFECTS)]
    q = (select(Pair.id, Lookup.ln_scale, *cols)
         .join(Prompt, Prompt.id == AttentionKnockout.prompt_id)
         .join(Pair, (Pair.neuron_id == Prompt.neuron_id) & (Pair.head_layer == AttentionKnockout.head_layer)
               & (Pair.head == AttentionKnockout.head))
         .join(Lookup, (Lookup.prompt_id == AttentionKnockout.prompt_id)
               & (Lookup.head_layer == AttentionKnockout.head_layer)
               & (Lookup.head == AttentionKnockout.head))
         .where(Pair.run_id == run_id, Pair.kept.is_(True)))
    rows: dict[int, dict[int, tuple[float, list]]] = defaultdict(dict)
    for pair_id, scale, *vals in session.execute(q):
        r = SimpleNamespace(**dict(zip([c.key for c in cols], vals, strict=True)))
        rows[pair_id].setdefault(r.prompt_id, (scale, []))[1].append(r)
    pairs = {pid: summarise_pair([from_stored(rs, scale) for scale, rs in prompts.values()])
             for pid, prompts in rows.items()}
    return {**summarise_run(list(pairs.values())), "pairs": pairs}
