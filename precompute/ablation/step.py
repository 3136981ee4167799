"""Step 5 of the job, head ablation (paper §5.4, docs/method.md §6): every kept pair's head
ablated on its neuron's held-out prompts, one unit of work per pair (``ablation:{method}:{pair_id}``),
stored as the ``ablations`` table; with mean ablation, the mean value vectors first (unit
``ablation:mean_v``). The passes are :mod:`precompute.ablation.ablate`'s."""

from __future__ import annotations

import logging

import torch
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from torch import Tensor
from tqdm.auto import tqdm

from context_lookups.precompute.ablation.ablate import AblationJob, ablation_values, mean_values
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.heads.attribution import head_label
from context_lookups.precompute.model import METHODS, LoadedModel, tokenize_batch
from context_lookups.precompute.store.runs import is_done, unit_of_work
from context_lookups.precompute.store.schema import Ablation, Document, Neuron, Pair, Phase, Prompt, Run

logger = logging.getLogger(__name__)

MEAN_PHASE = "ablation:mean_v"


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


def run_ablations(Session, run_id: int, model: LoadedModel, settings, *, executor=None) -> dict:
    """§6 for every kept pair of the run (next-token and random neurons): ablate the pair's head
    on up to ``settings.heldout_per_pair`` held-out prompts of its neuron (top by rank), one
    batch per pair, and store an :class:`~precompute.store.schema.Ablation` row per prompt.

    ``executor`` (the job's, :mod:`precompute.job.distributed`; default: this process, on
    ``model``) runs the forward passes; this
    function alone writes. Resumable and idempotent: one unit of work ``ablation:{method}:
    {pair_id}`` per pair; done pairs are skipped. Returns ``{"pairs": done now, "prompts": rows
    written}``.
    """
    method = settings.ablation
    if method == "none":
        return {"pairs": 0, "prompts": 0}
    if method not in METHODS:
        raise ValueError(f"Unknown ablation method {method!r}: use 'zero', 'mean' or 'none'.")
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
        jobs = (AblationJob([[model.bos_token_id] + list(p.token_ids) for p in prompts], n.layer, n.neuron,
                            n.token_id, (pair.head_layer, pair.head), method, mean_v)
                for pair, n, prompts in work if prompts)
        results = (executor.map(ablation_values, jobs) if executor is not None
                   else (ablation_values(model, j) for j in jobs))
        for pair, _n, prompts in tqdm(work, desc=f"ablation {method}", unit="pair", dynamic_ncols=True):
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
