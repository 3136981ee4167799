"""Head ablation study (paper §5.4, docs/method.md §6).

Ablating a head means replacing its value vectors, ``blocks.{k}.attn.hook_v[:, :, h]``, at every
position: by zeros (``"zero"``, the paper's) or by their mean over the scan corpus (``"mean"``).
The effect measured is the drop in the softmax probability of the neuron's token at the prompt's
last position, ``drop = prob_clean - prob_ablated``, on held-out prompts where the head is active
versus inactive, compared with a two-sample Kolmogorov–Smirnov test.

The forward passes are the model backend's (``neuron_pass`` with ``ablate``, ``value_sums``;
:mod:`precompute.model`); :func:`ablate` serves the precompute job (:func:`run_ablations`) and
tests, the live server's views run the same backend passes; :func:`ablation_table` and
:func:`pair_ablation_stats` only read the database.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from torch import Tensor
from tqdm.auto import tqdm

from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.heads.attribution import head_label
from context_lookups.precompute.model import METHODS, LoadedModel, batches, tokenize_batch
from context_lookups.precompute.store.runs import is_done, unit_of_work
from context_lookups.precompute.store.schema import Ablation, Document, Neuron, Pair, Phase, Prompt, Run

logger = logging.getLogger(__name__)

TOP_N = 5
MEAN_PHASE = "ablation:mean_v"


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
    a = be.neuron_pass(rows, targets, positions, ablate=[heads] * len(rows), method=method, mean_v=mean_v, **kw)
    c = be.neuron_pass(rows, targets, positions, **kw) if heads else a
    return AblationResult(heads=heads, method=method, act_clean=c.act, act_ablated=a.act,
                          prob_clean=c.prob, prob_ablated=a.prob, drop=c.prob - a.prob,
                          acts_clean=c.acts, acts_ablated=a.acts, top_clean=c.top, top_ablated=a.top)


# --- precompute --------------------------------------------------------------------------------

def stored_mean_values(session: Session, *, run_id: int) -> dict[int, Tensor] | None:
    """The mean value vectors the run's mean ablation used (``{layer: [n_heads, d_head]}``), or
    None if the run has not computed them. They are kept in the stats of the phase
    ``ablation:mean_v`` so the live server ablates with exactly the same means."""
    ph = session.get(Phase, (run_id, MEAN_PHASE))
    if ph is None or not ph.stats:
        return None
    return {int(k): torch.tensor(v, dtype=torch.float32) for k, v in ph.stats["mean_v"].items()}


def run_mean_values(session: Session, run_id: int, model: LoadedModel, settings) -> dict[int, Tensor]:
    """Mean ``hook_v`` of every layer over the run's stored explain-split documents (those in
    some neuron's top-k; BOS + the run's context length), computed once and stored."""
    got = stored_mean_values(session, run_id=run_id)
    if got is not None:
        return got
    run = session.get(Run, run_id)
    ctx = Settings.of_run(run.settings).context_tokens or model.n_ctx
    texts = session.scalars(select(Document.text).where(Document.run_id == run_id,
                                                        Document.split == "explain")
                            .order_by(Document.idx)).all()
    if not texts:
        raise ValueError(f"Run {run_id} stores no explain-split documents to average over.")
    bs = settings.batch_size

    def rows():
        for i in range(0, len(texts), bs):
            yield from tokenize_batch(model, texts[i:i + bs], ctx)

    mean_v = mean_values(model, rows(), range(model.n_layers), batch_size=bs,
                         total=len(texts))
    with unit_of_work(session, run_id, MEAN_PHASE) as st:
        st.update(n_docs=len(texts), context_tokens=ctx,
                  mean_v={str(k): v.tolist() for k, v in mean_v.items()})
    return stored_mean_values(session, run_id=run_id)


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


def run_ablations(Session, run_id: int, model: LoadedModel, settings, *, executor=None) -> dict:
    """§6 for every kept pair of the run (next-token and random neurons): ablate the pair's head
    on up to ``settings.heldout_per_pair`` held-out prompts of its neuron (top by rank), one
    batch per pair, and store an :class:`~precompute.store.schema.Ablation` row per prompt.

    ``executor`` (``distributed``; default this process) runs the forward passes; this
    function alone writes. Resumable and idempotent: one unit of work ``ablation:{method}:
    {pair_id}`` per pair; done pairs are skipped. Returns ``{"pairs": done now, "prompts": rows
    written}``.
    """
    from context_lookups.precompute.job.distributed import LocalExecutor

    method = settings.ablation
    if method == "none":
        return {"pairs": 0, "prompts": 0}
    if method not in METHODS:
        raise ValueError(f"Unknown ablation method {method!r}: use 'zero', 'mean' or 'none'.")
    executor = executor or LocalExecutor(model)
    n_pairs = n_rows = 0
    with Session() as s:
        pairs = s.execute(select(Pair, Neuron).join(Neuron, Pair.neuron_id == Neuron.id)
                          .where(Pair.run_id == run_id, Pair.kept).order_by(Pair.id)).all()
        todo = [(p, n) for p, n in pairs if not is_done(s, run_id, f"ablation:{method}:{p.id}")]
        logger.info("ablation (%s): %d kept pairs, %d to do", method, len(pairs), len(todo))
        if not todo:
            return {"pairs": 0, "prompts": 0}
        mean_v = run_mean_values(s, run_id, model, settings) if method == "mean" else None
        work = [(pair, n, s.scalars(select(Prompt).where(Prompt.neuron_id == n.id, Prompt.split == "heldout")
                                    .order_by(Prompt.rank).limit(settings.heldout_per_pair)).all())
                for pair, n in todo]
        results = executor.map(ablation_values, (
            AblationJob([[model.bos_token_id] + list(p.token_ids) for p in prompts], n.layer, n.neuron,
                        n.token_id, (pair.head_layer, pair.head), method, mean_v)
            for pair, n, prompts in work if prompts))
        for pair, n, prompts in tqdm(work, desc=f"ablation {method}", unit="pair", dynamic_ncols=True):
            label = head_label(pair.head_layer, pair.head)
            with unit_of_work(s, run_id, f"ablation:{method}:{pair.id}") as st:
                s.execute(delete(Ablation).where(Ablation.pair_id == pair.id, Ablation.method == method))
                st["prompts"] = len(prompts)
                n_pairs += 1
                if not prompts:
                    continue
                res = next(results)
                for j, p in enumerate(prompts):
                    s.add(Ablation(pair_id=pair.id, prompt_id=p.id, method=method,
                                   active=label in p.active, act_clean=res["act_clean"][j],
                                   act_ablated=res["act_ablated"][j], prob_clean=res["prob_clean"][j],
                                   prob_ablated=res["prob_ablated"][j], drop=res["drop"][j]))
                st["active"] = sum(label in p.active for p in prompts)
                st["mean_drop"] = res["mean_drop"]
                n_rows += len(prompts)
    return {"pairs": n_pairs, "prompts": n_rows}


# --- statistics (read only) --------------------------------------------------------------------

def _side(drops: list[float]) -> dict:
    return {"n": len(drops), "mean_drop": statistics.fmean(drops) if drops else None,
            "median_drop": statistics.median(drops) if drops else None}


def drop_stats(rows: Sequence[tuple[int, bool, float]]) -> dict:
    """Summary of ``(pair_id, active, drop)`` rows: counts, mean and median drop of active and
    inactive prompts, and ``scipy.stats.ks_2samp(active, inactive)`` (D, p; None with a
    ``reason`` when a side is empty)."""
    from scipy.stats import ks_2samp

    act = [d for _, a, d in rows if a]
    ina = [d for _, a, d in rows if not a]
    ks = {"D": None, "p": None, "reason": None}
    if not rows:
        ks["reason"] = "no ablation rows"
    elif not act or not ina:
        ks["reason"] = f"no {'active' if not act else 'inactive'} prompts"
    else:
        r = ks_2samp(act, ina)
        ks.update(D=float(r.statistic), p=float(r.pvalue))
    return {"n_pairs": len({p for p, _, _ in rows}), "n_prompts": len(rows),
            "active": _side(act), "inactive": _side(ina), "ks": ks}


def authors_stats(rows: Sequence[tuple[int, bool, float, int]]) -> dict:
    """The authors' ablation statistic (``notebooks/8_head_ablation.ipynb``, docs/method.md §6)
    of ``(pair_id, active, drop, n_records)`` rows: per pair, the mean drop over its active
    prompts and over its inactive ones (each prompt counted ``n_records`` times, as the authors'
    records were), a pair without prompts on a side giving no value there (their NaN, dropped);
    then ``scipy.stats.ks_2samp`` of the active pairs' means against the inactive pairs' means.
    ``active`` / ``inactive``: ``n`` (pairs with a value), mean and median of the per-pair means;
    ``ks``: D, p (None with a ``reason`` when a side is empty)."""
    from scipy.stats import ks_2samp

    sums: dict[tuple[int, bool], list[float]] = {}
    for pid, active, drop, n in rows:
        acc = sums.setdefault((pid, bool(active)), [0.0, 0])
        acc[0] += drop * (n or 1)
        acc[1] += n or 1
    act = [s / n for (_, a), (s, n) in sorted(sums.items()) if a]
    ina = [s / n for (_, a), (s, n) in sorted(sums.items()) if not a]
    ks = {"D": None, "p": None, "reason": None}
    if not act or not ina:
        ks["reason"] = "no ablation rows" if not rows else f"no pair with {'active' if not act else 'inactive'} prompts"
    else:
        r = ks_2samp(act, ina)
        ks.update(D=float(r.statistic), p=float(r.pvalue))
    return {"statistic": "KS over per-pair mean drops (the authors')", "active": _side(act),
            "inactive": _side(ina), "ks": ks}


def ablation_table(session: Session, *, run_id: int, method: str = "zero") -> dict:
    """The run's ablation study (paper §5.4, Table 3): for next-token and random-neuron pairs
    separately, ``drop_stats`` of every stored ablation row of ``method`` (the project's
    statistic: KS over prompts), ``authors``: :func:`authors_stats` of the same rows (KS over
    per-pair mean drops), plus ``n_kept`` (kept pairs of that kind, ablated or not).

    Returns ``{"run_id", "method", "next_token": {...}, "random": {...}}``.
    """
    out = {"run_id": run_id, "method": method}
    for kind in ("next_token", "random"):
        rows = session.execute(
            select(Ablation.pair_id, Ablation.active, Ablation.drop, Ablation.n_records)
            .join(Pair, Pair.id == Ablation.pair_id).join(Neuron, Neuron.id == Pair.neuron_id)
            .where(Pair.run_id == run_id, Neuron.kind == kind, Ablation.method == method)
            .order_by(Ablation.pair_id, Ablation.prompt_id)).all()
        n_kept = len(session.scalars(select(Pair.id).join(Neuron, Neuron.id == Pair.neuron_id)
                                     .where(Pair.run_id == run_id, Pair.kept,
                                            Neuron.kind == kind)).all())
        out[kind] = {**drop_stats([tuple(r[:3]) for r in rows]), "n_kept": n_kept,
                     "statistic": "KS over prompts (the project's)", "authors": authors_stats(rows)}
    return out


def pair_ablation_stats(session: Session, *, pair_id: int, method: str = "zero") -> dict:
    """``drop_stats`` of one pair, ``authors_mean``: its mean drops where active / inactive as the
    authors computed them (each prompt counted ``n_records`` times), plus its per-prompt rows
    (``prompts``: ``prompt_id``, ``rank``, ``active``, ``act_clean``, ``act_ablated``,
    ``prob_clean``, ``prob_ablated``, ``drop``, ``n_records``, by rank).

    Raises:
        NotFound: no pair with that id.
    """
    pair = session.get(Pair, pair_id)
    if pair is None:
        raise NotFound(f"Pair {pair_id} does not exist.")
    rows = session.execute(select(Ablation, Prompt.rank).join(Prompt, Prompt.id == Ablation.prompt_id)
                           .where(Ablation.pair_id == pair_id, Ablation.method == method)
                           .order_by(Prompt.rank)).all()
    out = drop_stats([(a.pair_id, a.active, a.drop) for a, _ in rows])
    auth = authors_stats([(a.pair_id, a.active, a.drop, a.n_records) for a, _ in rows])
    out["authors_mean"] = {"active": auth["active"]["mean_drop"], "inactive": auth["inactive"]["mean_drop"],
                           "records": sum(a.n_records for a, _ in rows)}
    out.update(pair_id=pair_id, method=method, head=head_label(pair.head_layer, pair.head),
               prompts=[dict(prompt_id=a.prompt_id, rank=rank, active=a.active, act_clean=a.act_clean,
                             act_ablated=a.act_ablated, prob_clean=a.prob_clean,
                             prob_ablated=a.prob_ablated, drop=a.drop, n_records=a.n_records)
                        for a, rank in rows])
    return out
