"""Distinct prompts (paper §4.2, docs/method.md §2, "Repeats"): a neuron's prompts of a split are
its top documents trimmed, and different documents can trim to the same token ids (a short
suffix such as " such", or the same text twice in the corpus). Such repeats are one prompt with a
multiplicity, not independent evidence: every rule downstream (the pair rule, E and its
interval, the ablation tests) counts a prompt once.

The rule, written once here: the documents are read in rank order and each one's trimmed prompt
(None: it gave none, e.g. over the length cap) joins the earlier prompt with the same token ids,
or starts a new one; reading stops as soon as ``top_k`` distinct prompts are found. So "20
prompts" means 20 different ones wherever the scanned documents hold them: the scan keeps a
reserve of documents beyond ``top_k`` (:func:`scan_depth`) to draw from.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

RESERVE = 0.5  # the scan keeps top_k + ceil(RESERVE * top_k) documents per neuron and split


def scan_depth(top_k: int) -> int:
    """Documents the scan keeps per neuron and split so that ``top_k`` distinct prompts can be
    drawn: ``top_k`` and a reserve of half as many again, rounded up (30 for the default 20: the
    authors' February 2024 run scanned 30 documents per neuron and kept 20 prompts)."""
    return top_k + math.ceil(RESERVE * top_k)


def distinct_prompts(keys: Sequence[Hashable | None], top_k: int) -> list[list[int]]:
    """Merge repeated prompts, in rank order.

    Args:
        keys: one per document, in rank order: the trimmed prompt's token ids (a tuple), or None
            when the document gave no prompt (it is skipped).
        top_k: distinct prompts wanted; reading stops at the document that gives the
            ``top_k``-th (later documents are not read, so not counted as occurrences).

    Returns:
        One list per distinct prompt, in order of first occurrence: the indices (into ``keys``)
        of its occurrences, in rank order. The first is the prompt's representative (its best
        rank); the list's length is its multiplicity.
    """
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in groups:
            groups[key].append(i)
            continue
        groups[key] = [i]
        if len(groups) == top_k:
            break
    return list(groups.values())


def needs_reserve(keys: Sequence[Hashable | None], top_k: int) -> bool:
    """Whether the documents behind ``keys`` (the first ones read) give fewer than ``top_k``
    distinct prompts, so the reserve must be read too."""
    return len(distinct_prompts(keys, top_k)) < top_k
