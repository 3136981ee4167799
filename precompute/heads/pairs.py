"""Which (neuron, head) pairs are kept (paper §4.3, docs/method.md §3), and why the others are
not: one rule, used by the precompute job to keep pairs and by the explorer to explain them.

A pair is kept when its neuron has at least ``pair_min_prompts`` explain prompts (the project's
addition) and the head is active on ``pair_min_fraction``..``pair_max_fraction`` of them (the
paper's 25%-75%).
"""

from __future__ import annotations

TOO_FEW_PROMPTS = "too_few_prompts"  # Neuron.status of a neuron below pair_min_prompts


def too_few_prompts(n_prompts: int, settings) -> str | None:
    """Why none of a neuron's pairs can be kept for lack of prompts, or None.

    Args:
        n_prompts: the neuron's explain-split prompts.
        settings: the run's :class:`~precompute.core.settings.Settings` (``Settings.of_run``).
    """
    if n_prompts < settings.pair_min_prompts:
        return (f"the neuron has {n_prompts} explain prompt{'s' if n_prompts != 1 else ''}, fewer "
                f"than the {settings.pair_min_prompts} a kept pair needs (--pair-min-prompts)")
    return None


def not_kept_reason(n_prompts: int, n_active: int, settings) -> str | None:
    """None when the pair is kept, else why not (a phrase for the explorer's pages).

    Args:
        n_prompts: the neuron's explain-split prompts (> 0).
        n_active: those on which the head is active (the run's rule).
        settings: the run's :class:`~precompute.core.settings.Settings`.
    """
    few = too_few_prompts(n_prompts, settings)
    if few is not None:
        return few
    frac = n_active / n_prompts
    if not settings.pair_min_fraction <= frac <= settings.pair_max_fraction:
        return (f"the head is active on {n_active}/{n_prompts} explain prompts, outside "
                f"{settings.pair_min_fraction:g}-{settings.pair_max_fraction:g}")
    return None


def kept_heads(actives, n_scored: int, n_heads: int, settings) -> list[tuple[int, int]]:
    """The heads ``(layer, head)`` whose pair with a neuron is kept (:func:`not_kept_reason`),
    from the active heads of each of the neuron's explain prompts (``actives``: one collection of
    labels ``L{k}H{h}`` per prompt, the run's rule) over its ``n_scored`` scored head layers.
    The precompute job stores the per-source decomposition of these pairs with the prompts
    (docs/method.md §3), before the pairs themselves are written."""
    actives = [set(a) for a in actives]
    if not actives:
        return []
    return [(k, h) for k in range(n_scored) for h in range(n_heads)
            if not_kept_reason(len(actives), sum(f"L{k}H{h}" in a for a in actives), settings) is None]
