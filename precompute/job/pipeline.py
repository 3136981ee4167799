"""The precompute job: the paper's steps in order (docs/method.md §1-§6), each in its own home.

1. next-token neurons (§4.1): :mod:`precompute.neurons.step`;
2. max-activating prompts (§4.2): the scan, :mod:`precompute.prompts.step`;
3. head attribution (§4.3): trimmed prompts, look-ups and pairs, :mod:`precompute.heads.step`;
4. explanations (§4.4): :mod:`precompute.explain.step`;
5. ablation (§5.4): :mod:`precompute.ablation.step`.

Every unit of work (the neuron table, one split's scan, one neuron's prompts, the pairs, one
pair's explanation or ablation) is committed with its phase mark, so a killed job started again
with the same arguments continues and ends with exactly the rows an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import time

import torch
from sqlalchemy import update

from context_lookups.precompute.ablation.step import run_ablations
from context_lookups.precompute.core.errors import BadSettings
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.corpus import SPLITS, load_corpus
from context_lookups.precompute.explain.step import run_explanations
from context_lookups.precompute.heads.step import attribute_prompts, store_pairs
from context_lookups.precompute.job.distributed import LocalExecutor, ray_executor
from context_lookups.precompute.job.summary import check_summary_path, summarize, write_summary
from context_lookups.precompute.model import LoadedModel, load_model
from context_lookups.precompute.neurons.congruence import check_layers, check_neuron_counts, default_layers
from context_lookups.precompute.neurons.step import select_neurons
from context_lookups.precompute.prompts.distinct import scan_depth
from context_lookups.precompute.prompts.scan import check_scan_memory, top_k_for
from context_lookups.precompute.prompts.step import store_scan
from context_lookups.precompute.store.db import check_writable, open_writer, sessions
from context_lookups.precompute.store.runs import get_or_create_run, is_done, now, unit_of_work
from context_lookups.precompute.store.schema import Run

logger = logging.getLogger(__name__)


def run_precompute(settings: Settings, *, model: LoadedModel | None = None) -> dict:
    """Run (or resume) the whole job for ``settings``; returns the summary figures.

    With ``settings.ray`` the model work runs on a Ray cluster (``distributed.RayExecutor``);
    this process alone writes, and the rows are those of the single-process run.

    Raises:
        ModelNotAvailable, DatasetNotAvailable, BadSettings, BadDatabase, SettingsMismatch,
        SchemaTooNew, DatabaseUnavailable, ClusterUnavailable: bad input, each with a message
            saying what to change; nothing stored is lost, and nothing is written (nor the schema
            migrated) before all but SettingsMismatch are ruled out.
    """
    t_start = time.time()
    torch.manual_seed(settings.seed)
    # Bad input is found before anything is written: a bad --db first, then --ray (before
    # anything slow), then the settings against the model, then the corpus (memory-mapped).
    check_writable(settings.db_url)
    if settings.summary_json is not None:
        check_summary_path(settings.summary_json)
    if settings.explainer == "openai":  # the key is needed only after the scan: check it now
        from context_lookups.precompute.explain.explainers.llm import api_key
        api_key(settings)
    executor = ray_executor(settings)
    try:
        model = model or load_model(settings.model, device=settings.device, dtype=settings.dtype,
                                    backend=settings.backend)
        logger.info("backend: %s", model.backend.name)
        layers = check_layers(settings.layers, model.n_layers) if settings.layers is not None \
            else default_layers(model.n_layers)
        check_neuron_counts(settings.n_per_layer, settings.n_random, model.d_mlp)
        ctx = settings.context_tokens or model.n_ctx
        if ctx > model.n_ctx:
            raise BadSettings(f"--context-tokens {ctx} exceeds the model's context length {model.n_ctx}.")
        corpus = load_corpus(settings.dataset, n_docs=settings.n_docs, seed=settings.seed)
        check_scan_memory(top_k_for(scan_depth(settings.top_k), max(len(corpus[s]) for s in SPLITS)),
                          len(layers), model.d_mlp)
        engine = open_writer(settings.db_url)
        try:
            return _run(engine, settings, model, executor or LocalExecutor(model), layers, ctx, corpus,
                        t_start)
        finally:
            engine.dispose()
    finally:
        if executor is not None:
            executor.close()


def _run(engine, settings: Settings, model: LoadedModel, executor, layers: list[int], ctx: int,
         corpus, t_start: float) -> dict:
    """The paper's steps in order, each unit of work skipped when already committed."""
    Session = sessions(engine)
    with Session() as s:
        run = get_or_create_run(s, settings=settings, slug=settings.run_name or model.slug,
                                model=model, layers=layers)
        run_id = run.id
        # §4.1 next-token neurons: one unit of work
        if not is_done(s, run_id, "neurons"):
            select_neurons(s, run_id, model, layers, settings)
        # §4.2 max-activating documents: one streaming scan per split
        scans = {}
        for split in SPLITS:
            if not is_done(s, run_id, f"scan:{split}"):
                scans[split] = store_scan(s, run_id, executor, model, corpus[split], split, layers, ctx,
                                          settings)
        # §4.2-§4.3 trimmed prompts and their head attribution: one unit of work per neuron
        attribute_prompts(s, run_id, executor, ctx, settings)
        # §4.3 (neuron, head) pairs: one unit of work
        if not is_done(s, run_id, "pairs"):
            with unit_of_work(s, run_id, "pairs") as st:
                st.update(store_pairs(s, run_id, model, settings))
        s.commit()  # no transaction of this session may hold SQLite's write lock meanwhile
        # §4.4 explanations and §5.4 ablations: one unit of work per pair
        run_followups(Session, run_id, model, settings, executor)
        summary = summarize(s, run_id, scans, time.time() - t_start, settings)
        s.execute(update(Run).where(Run.id == run_id).values(status="complete", finished_at=now(),
                                                             summary=summary))
        s.commit()
    logger.debug("summary: %s", summary)
    if settings.summary_json is not None:
        write_summary(settings.summary_json, summary)
    return summary


def run_followups(Session, run_id: int, model: LoadedModel, settings: Settings, executor=None) -> None:
    """Explanations (§4.4) and ablations (§5.4), when enabled."""
    if settings.explainer != "none":
        run_explanations(Session, run_id, model, settings)
    if settings.ablation != "none":
        run_ablations(Session, run_id, model, settings, executor=executor)
