"""Head ablation (paper §5.4, docs/method.md §6): the forward passes.

Ablating a head means replacing its value vectors, ``blocks.{k}.attn.hook_v[:, :, h]``, at every
position: by zeros (``"zero"``, the paper's) or by their mean over the scan corpus (``"mean"``).
The effect measured is the drop in the softmax probability of the neuron's token at the prompt's
last position, ``drop = prob_clean - prob_ablated``, on held-out prompts where the head is active
versus inactive, compared with a two-sample Kolmogorov–Smirnov test (:mod:`precompute.ablation.reads`).

The forward passes are the model backend's (``neuron_pass`` with ``ablate``, ``value_sums``;
:mod:`precompute.model`); :func:`ablate` serves the precompute job (:mod:`precompute.ablation.step`)
and tests, the live server's views run the same backend passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from context_lookups.precompute.model import LoadedModel, batches

logger = logging.getLogger(__name__)

TOP_N = 5


def mean_values(model: LoadedModel, rows_iter: Iterable[Sequence[int]], layers: Iterable[int], *,
                batch_size: int = 16, desc: str = "mean value vectors",
                total: int | None = None) -> dict[int, Float[Tensor, "n_heads d_head"]]:
    """Mean of ``hook_v`` of each of ``layers`` over every real token position of the rows
    (right padding excluded; BOS included, since ablation replaces it too).

    Args:
        rows_iter: token rows with BOS at index 0 (e.g. ``scan.tokenize_batch`` of documents),
            consumed in batches of ``batch_size``; forward passes stop after the last layer.
        total: number of rows, for the progress bar only.

    Returns:
        ``{layer: mean}`` with ``mean: [n_heads, d_head]`` (float32, accumulated in float64).

    Raises:
        ValueError: no rows, or no layers.
    """
    layers = sorted(set(int(k) for k in layers))
    if not layers:
        raise ValueError("mean_values needs at least one layer.")
    sums: dict[int, Tensor] = {}
    n_pos = 0
    bar = tqdm(desc=desc, total=total, unit="doc", dynamic_ncols=True)
    for batch in batches(rows_iter, batch_size):
        for k, s in model.backend.value_sums(batch, layers).items():
            sums[k] = sums[k] + s if k in sums else s
        n_pos += sum(len(r) for r in batch)
        bar.update(len(batch))
    bar.close()
    if n_pos == 0:
        raise ValueError("mean_values got no token rows.")
    return {k: (sums[k] / n_pos).float() for k in layers}


@dataclass
class AblationResult:
    """A clean and an ablated forward pass of a batch of prompts (paper §5.4).

    Per row, at its target position: ``act_clean``/``act_ablated`` the neuron's post-GELU
    activation; ``prob_clean``/``prob_ablated`` the softmax probability of ``token_id``;
    ``drop = prob_clean - prob_ablated`` (all ``[batch]``, float64 for the probabilities).
    ``acts_clean``/``acts_ablated``: the neuron's activation at every position incl. BOS.
    ``top_clean``/``top_ablated``: the ``TOP_N`` most probable next tokens, ``[(id, prob)]``.
    """

    heads: list[tuple[int, int]]
    method: str
    act_clean: Float[Tensor, " batch"]
    act_ablated: Float[Tensor, " batch"]
    prob_clean: Float[Tensor, " batch"]
    prob_ablated: Float[Tensor, " batch"]
    drop: Float[Tensor, " batch"]
    acts_clean: list[list[float]]
    acts_ablated: list[list[float]]
    top_clean: list[list[tuple[int, float]]]
    top_ablated: list[list[tuple[int, float]]]


def ablate(model: LoadedModel, rows: Sequence[Sequence[int]], layer: int, neuron: int, token_id: int,
           heads: Sequence[tuple[int, int]], *, method: str = "zero",
           mean_v: dict[int, Tensor] | None = None,
           positions: Sequence[int] | None = None) -> AblationResult:
    """Ablate ``heads`` and measure neuron (layer, neuron) and the probability of ``token_id``
    (paper §5.4): one clean and one ablated pass of the model's backend, each one right-padded
    batch, with the unembedding applied at the target positions.

    Args:
        rows: token rows with BOS at index 0.
        heads: 0-based ``(layer, head)`` pairs; ``[]`` skips the ablated pass (it equals clean).
        method: ``"zero"`` (paper) or ``"mean"`` (needs ``mean_v`` from :func:`mean_values`).
        positions: the 0-based target position of each row (default: its last token).

    Raises:
        ValueError: no rows; a layer, neuron, head, token or position out of range; an unknown
            method or missing mean values.
    """
    heads = [(int(k), int(h)) for k, h in heads]
    targets = [(layer, neuron, token_id)] * len(rows)
    kw = dict(attribution=False, logits=True, top_n=TOP_N)
    be = model.backend
    a = be.neuron_pass(rows, targets, positions, ablate=[heads] * len(rows), method=method, mean_v=mean_v,
                       **kw)
    c = be.neuron_pass(rows, targets, positions, **kw) if heads else a
    return AblationResult(heads=heads, method=method, act_clean=c.act, act_ablated=a.act,
                          prob_clean=c.prob, prob_ablated=a.prob, drop=c.prob - a.prob,
                          acts_clean=c.acts, acts_ablated=a.acts, top_clean=c.top, top_ablated=a.top)



@dataclass
class AblationJob:
    """One kept pair's ablation (§6): its neuron, token and head, and the held-out prompts'
    token rows (BOS first)."""

    rows: list[list[int]]
    layer: int
    neuron: int
    token_id: int
    head: tuple[int, int]
    method: str
    mean_v: dict[int, Tensor] | None


def ablation_values(model: LoadedModel, job: AblationJob) -> dict[str, list[float]]:
    """:func:`ablate` of one job, as the per-prompt floats the ``Ablation`` rows store
    (``act_clean``, ``act_ablated``, ``prob_clean``, ``prob_ablated``, ``drop``) plus
    ``mean_drop``. Touches no database, so it runs on any worker."""
    res = ablate(model, job.rows, job.layer, job.neuron, job.token_id, [job.head], method=job.method,
                      mean_v=job.mean_v)
    out = {k: getattr(res, k).tolist() for k in ("act_clean", "act_ablated", "prob_clean", "prob_ablated",
                                                 "drop")}
    return out | {"mean_drop": float(res.drop.mean())}
