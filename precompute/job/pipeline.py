"""The precompute job: docs/method.md §1-§3 into SQLite, then explanations (§4-5) and ablations (§6).

Every unit of work (the neuron table, one split's scan, one neuron's prompts, the pairs, ...)
is committed with its phase mark, so a killed job started again with the same arguments
continues and ends with exactly the rows an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from sqlalchemy import delete, insert, select, update
from tqdm.auto import tqdm

from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.corpus import SPLITS, load_corpus
from context_lookups.precompute.heads.attribution import (
    active_heads_of_run,
    head_label,
    scored_layers,
    upstream_attn_layers,
)
from context_lookups.precompute.heads.lookup import stored_rows
from context_lookups.precompute.heads.pairs import (
    TOO_FEW_PROMPTS,
    kept_heads,
    not_kept_reason,
    too_few_prompts,
)
from context_lookups.precompute.job.distributed import LocalExecutor, ray_executor
from context_lookups.precompute.model import LoadedModel, load_model, tokenize_batch
from context_lookups.precompute.neurons.congruence import (
    check_layers,
    check_neuron_counts,
    default_layers,
    layer_congruences,
    sample_random_neurons,
    select_next_token_neurons,
)
from context_lookups.precompute.prompts.histogram import SCHEME as HISTOGRAM_SCHEME
from context_lookups.precompute.prompts.scan import TrimTask, check_scan_memory, top_k_for, trim_many
from context_lookups.precompute.store.db import check_writable, open_writer, sessions
from context_lookups.precompute.store.runs import get_or_create_run, is_done, now, phase_seconds, unit_of_work
from context_lookups.precompute.store.schema import (
    ActivationHistogram,
    Document,
    Lookup,
    Neuron,
    Pair,
    Prompt,
    Run,
    TopActivation,
)

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
            from context_lookups.precompute.core.errors import BadSettings
            raise BadSettings(f"--context-tokens {ctx} exceeds the model's context length {model.n_ctx}.")
        corpus = load_corpus(settings.dataset, n_docs=settings.n_docs, seed=settings.seed)
        check_scan_memory(top_k_for(settings.top_k, max(len(corpus[s]) for s in SPLITS)), len(layers),
                          model.d_mlp)
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
    Session = sessions(engine)
    with Session() as s:
        run = get_or_create_run(s, settings=settings, slug=settings.run_name or model.slug,
                                model=model, layers=layers)
        run_id = run.id
        if not is_done(s, run_id, "neurons"):
            select_neurons(s, run_id, model, layers, settings)
        scans = {}
        for split in SPLITS:
            if not is_done(s, run_id, f"scan:{split}"):
                scans[split] = store_scan(s, run_id, executor, model, corpus[split], split, layers, ctx,
                                          settings)
        selected = s.scalars(select(Neuron).where(Neuron.run_id == run_id, Neuron.kind != "other")
                             .order_by(Neuron.layer, Neuron.neuron)).all()
        groups = [selected[i:i + settings.neurons_per_pass]
                  for i in range(0, len(selected), settings.neurons_per_pass)]
        # A group with any neuron to do is computed whole, so its batches are those of a run never
        # killed; the executor computes groups (here or on Ray workers), this process writes.
        todo = [g for g in groups if any(not is_done(s, run_id, f"prompts:L{n.layer}N{n.neuron}") for n in g)]
        results = executor.map(compute_prompts, (prompts_job(s, run_id, g, ctx, settings) for g in todo))
        t_wait = time.time()
        for group, outs in tqdm(zip(todo, results), total=len(todo), desc="prompts+attribution",
                                unit="group", dynamic_ncols=True):
            share = (time.time() - t_wait) / len(group)  # the group's computation, per neuron
            for n, (rows, stats) in zip(group, outs):
                if not is_done(s, run_id, f"prompts:L{n.layer}N{n.neuron}"):
                    with unit_of_work(s, run_id, f"prompts:L{n.layer}N{n.neuron}", seconds_before=share) as st:
                        store_prompts(s, n, rows, stats)
                        st.update(stats)
            t_wait = time.time()
        if not is_done(s, run_id, "pairs"):
            with unit_of_work(s, run_id, "pairs") as st:
                st.update(store_pairs(s, run_id, model, settings))
        s.commit()  # no transaction of this session may hold SQLite's write lock meanwhile
        run_followups(Session, run_id, model, settings, executor)
        summary = summarize(s, run_id, scans, time.time() - t_start, settings)
        s.execute(update(Run).where(Run.id == run_id).values(status="complete", finished_at=now(),
                                                             summary=summary))
        s.commit()
    return summary


def run_followups(Session, run_id: int, model: LoadedModel, settings: Settings, executor=None) -> None:
    """Explanations (§4-5) and ablations (§6), when those modules are present and enabled."""
    from context_lookups.precompute.ablation.ablate import run_ablations
    from context_lookups.precompute.explain.step import run_explanations

    if settings.explainer != "none":
        run_explanations(Session, run_id, model, settings)
    if settings.ablation != "none":
        run_ablations(Session, run_id, model, settings, executor=executor)


def select_neurons(s, run_id: int, model: LoadedModel, layers: list[int], settings: Settings) -> None:
    """§1: congruence of every neuron of ``layers``; mark next-token and random neurons."""
    with unit_of_work(s, run_id, "neurons") as st:
        W_U = model.backend.W_U()
        vocab = {i: model.token_str(i) for i in range(W_U.shape[1])}
        reject = set(settings.reject_tokens)
        rows = []
        for layer in layers:
            infos = layer_congruences(model.backend.W_out(layer), W_U, layer)
            chosen = select_next_token_neurons(infos, vocab, n=settings.n_per_layer, reject=reject,
                                               reject_numeric=settings.reject_numeric)
            rank = {x.neuron: r for r, x in enumerate(sorted(infos, key=lambda x: (-x.congruence, x.neuron)))}
            nt = {x.neuron for x in chosen}
            rnd = set(sample_random_neurons(model.d_mlp, settings.n_random or settings.n_per_layer,
                                            exclude=nt, seed=settings.seed, layer=layer))
            for x in infos:
                rows.append(dict(run_id=run_id, layer=layer, neuron=x.neuron,
                                 kind="next_token" if x.neuron in nt else "random" if x.neuron in rnd else "other",
                                 rank=rank[x.neuron], token_id=x.token_id, token=vocab[x.token_id],
                                 congruence=x.congruence,
                                 top_tokens=[[t, vocab[t], c] for t, c in zip(x.top_token_ids, x.top_congruences)],
                                 bottom_tokens=[[t, vocab[t], c] for t, c in
                                                zip(x.bottom_token_ids, x.bottom_congruences)]))
            st[f"L{layer}"] = len(nt)
        s.execute(insert(Neuron), rows)


def store_scan(s, run_id: int, executor, model: LoadedModel, docs, split: str, layers: list[int],
               ctx: int, settings: Settings) -> dict:
    """§2: one streaming scan of ``split`` (by ``executor``: this process, or document shards on
    Ray); stores every scanned neuron's top-k, the documents they point to and its activation
    histogram over the split's tokens, in one unit of work."""
    with unit_of_work(s, run_id, f"scan:{split}") as st:
        res = executor.scan(docs, layers=layers, k=top_k_for(settings.top_k, len(docs)),
                            batch_size=settings.batch_size,
                            context_tokens=ctx, desc=f"scan {split}")
        rows = []
        vals, dids, poss = res.values.tolist(), res.docs.tolist(), res.positions.tolist()
        for j, layer in enumerate(layers):
            for i in range(model.d_mlp):
                c = j * model.d_mlp + i
                for r in range(res.values.shape[0]):
                    if dids[r][c] >= 0:
                        rows.append(dict(run_id=run_id, split=split, layer=layer, neuron=i, rank=r,
                                         doc_idx=dids[r][c], act=vals[r][c], position=poss[r][c]))
        s.execute(insert(TopActivation), rows)
        used = sorted({r["doc_idx"] for r in rows})
        s.execute(insert(Document), [dict(run_id=run_id, split=split, idx=i, text=docs[i]["text"])
                                     for i in used])
        if res.histograms is not None:
            s.execute(insert(ActivationHistogram), [
                {"run_id": run_id, "split": split, "layer": layer, "neuron": i, "scheme": HISTOGRAM_SCHEME,
                 "first_bin": first, "counts": counts}
                for layer in layers for i, (first, counts) in enumerate(res.histograms.rows(layer))])
            st.update(histogram_tokens=res.histograms.n_tokens())
        if split == "explain":
            best = {(r["layer"], r["neuron"]): r["act"] for r in rows if r["rank"] == 0}
            for n in s.scalars(select(Neuron).where(Neuron.run_id == run_id)):
                n.max_act = best.get((n.layer, n.neuron))
        st.update(docs=res.n_docs, tokens=res.n_tokens, scan_seconds=round(res.seconds, 2),
                  tokens_per_s=round(res.n_tokens / max(res.seconds, 1e-9)))
        return st


@dataclass
class Top:
    """One of a neuron's top documents (a ``TopActivation`` row and the document's text)."""

    rank: int
    doc_idx: int
    position: int
    act: float
    text: str


@dataclass
class _LayerNeuron:
    layer: int
    neuron: int


@dataclass
class PromptsJob:
    """What §2-§3 need for a group of selected neurons: ``neurons[q] = (layer, neuron)`` and
    ``tops[q][split]``, its top documents as ``(rank, doc_idx, position, act, text)`` by rank
    (activation > 0 only)."""

    neurons: list[tuple[int, int]]
    tops: list[dict[str, list[Top]]]
    ctx: int
    settings: Settings


def prompts_job(s, run_id: int, neurons: list[Neuron], ctx: int, settings: Settings) -> PromptsJob:
    """Read a group's top documents of both splits (the scan's rows and their texts)."""
    tops = [{split: [Top(*t) for t in s.execute(
        select(TopActivation.rank, TopActivation.doc_idx, TopActivation.position, TopActivation.act,
               Document.text)
        .join(Document, (Document.run_id == TopActivation.run_id) & (Document.split == TopActivation.split)
              & (Document.idx == TopActivation.doc_idx))
        .where(TopActivation.run_id == run_id, TopActivation.split == split,
               TopActivation.layer == n.layer, TopActivation.neuron == n.neuron, TopActivation.act > 0)
        .order_by(TopActivation.rank))] for split in SPLITS} for n in neurons]
    return PromptsJob([(n.layer, n.neuron) for n in neurons], tops, ctx, settings)


def compute_prompts(model: LoadedModel, job: PromptsJob) -> list[tuple[list[dict], dict]]:
    """§2-§3 for a group of selected neurons (any layers), batched across neurons and prompts:
    trim the top documents of both splits (:func:`~precompute.scan.trim_many`), attribute each
    trimmed prompt to the upstream heads in batched passes, mark the active heads, and keep the
    per-source decomposition (docs/method.md §3) of the heads whose pair with the neuron will be
    kept (:func:`precompute.pairs.kept_heads`, the rule ``store_pairs`` applies), from the same
    passes.

    Returns per neuron ``(prompt rows, stats)``: the :class:`~precompute.store.schema.Prompt` fields
    (without ``neuron_id``) in storage order (split, then rank), each with ``lookups``, the
    :class:`~precompute.store.schema.Lookup` fields of its kept heads (without ``prompt_id``), and
    ``{split: n_prompts, "lookups": n_rows}``. Touches no database, so it runs on any worker
    (``distributed``).
    """
    settings, ctx = job.settings, job.ctx
    neurons = [_LayerNeuron(*x) for x in job.neurons]
    items = []  # (neuron index, split, top row, token row)
    for q, tops_q in enumerate(job.tops):
        for split in SPLITS:
            tops = tops_q[split]
            if tops:
                rows = tokenize_batch(model, [t.text for t in tops], ctx)
                items += [(q, split, t, row) for t, row in zip(tops, rows)]
    trims = trim_many(model, [TrimTask(row, t.position, neurons[q].layer, neurons[q].neuron, t.act)
                              for q, _, t, row in items], act_ratio=settings.act_ratio,
                      max_len=settings.max_prompt_tokens)
    keep = [(it, tr) for it, tr in zip(items, trims)
            if it[2].position + 1 - tr[0] < settings.max_prompt_tokens]
    prompts = [[model.bos_token_id] + row[tr[0]:t.position + 1] for (_, _, t, row), tr in keep]
    atts = model.backend.batched_pass(prompts, [(neurons[q].layer, neurons[q].neuron)
                                                for (q, _, _, _), _ in keep], lookup=True) if prompts else []
    out: list[tuple[list[dict], dict]] = [([], {split: 0 for split in SPLITS}) for _ in neurons]
    terms: dict[int, object] = {}  # id(prompt row) -> its decomposition
    for ((q, split, t, row), tr), prompt, att in zip(keep, prompts, atts):
        n = neurons[q]
        n_scored = scored_layers(n.layer, settings.heads_upto, upstream_attn_layers(model, n.layer))
        active = active_heads_of_run(att.raw[:, :n_scored].flatten(1), settings)[0]
        ids = prompt[1:]
        labels = [head_label(k, h) for k in range(n_scored) for h in range(model.n_heads)
                  if active[k * model.n_heads + h]]
        out[q][0].append(dict(split=split, rank=t.rank, doc_idx=t.doc_idx, start=tr[0],
                              end=t.position + 1, text=model.tokenizer.decode(ids), token_ids=ids,
                              tokens=[model.token_str(i) for i in ids], acts=att.acts[0][1:],
                              act=float(att.act[0]), doc_act=float(tr[1]), attr_raw=att.raw[0].tolist(),
                              attr_ln=att.ln[0].tolist(), other_ln=att.other[0], pre=float(att.pre[0]),
                              active=labels))
        terms[id(out[q][0][-1])] = att.lookup
        out[q][1][split] += 1
    for n, (rows, stats) in zip(neurons, out):
        n_scored = scored_layers(n.layer, settings.heads_upto, upstream_attn_layers(model, n.layer))
        heads = kept_heads([r["active"] for r in rows if r["split"] == "explain"], n_scored, model.n_heads,
                           settings)
        for r in rows:
            r["lookups"] = stored_rows(terms[id(r)], heads)
        stats["lookups"] = len(heads) * len(rows)
        rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["rank"]))  # storage order: split, then rank
    return out


def store_prompts(s, n: Neuron, rows: list[dict], stats: dict) -> None:
    """Add one neuron's prompts (from :func:`compute_prompts`) and their look-ups to the session;
    mark a neuron without explain-split prompt."""
    for r in rows:
        p = Prompt(neuron_id=n.id, **{k: v for k, v in r.items() if k != "lookups"})
        s.add(p)
        s.add_all(Lookup(prompt=p, **lk) for lk in r.get("lookups", ()))
    if not stats.get("explain"):
        n.status = "no_activating_prompt"
        logger.warning("neuron L%dN%d (%s) has no activating prompt in the explain split; use a "
                       "larger corpus (--dataset, --n-docs)", n.layer, n.neuron, n.kind)


def store_pairs(s, run_id: int, model: LoadedModel, settings: Settings) -> dict:
    """§3: (neuron, head) pairs over each neuron's explain prompts; kept by
    :func:`precompute.pairs.not_kept_reason` (at least pair_min_prompts prompts, head active on
    pair_min_fraction..pair_max_fraction of them). Neurons with too few prompts get the status
    ``too_few_prompts``."""
    run = s.get(Run, run_id)
    s.execute(delete(Pair).where(Pair.run_id == run_id))
    rows, kept = [], 0
    for n in s.scalars(select(Neuron).where(Neuron.run_id == run_id, Neuron.kind != "other")):
        ps = s.scalars(select(Prompt).where(Prompt.neuron_id == n.id, Prompt.split == "explain")).all()
        if not ps:
            continue
        if too_few_prompts(len(ps), settings):
            n.status = TOO_FEW_PROMPTS
        raw = torch.tensor([p.attr_raw for p in ps])
        ln = torch.tensor([p.attr_ln for p in ps])
        n_scored = scored_layers(n.layer, settings.heads_upto, raw.shape[1])  # as store_prompts
        for k in range(n_scored):
            for h in range(run.n_heads):
                lab = head_label(k, h)
                n_act = sum(lab in p.active for p in ps)
                frac = n_act / len(ps)
                keep = not_kept_reason(len(ps), n_act, settings) is None
                kept += keep
                rows.append(dict(run_id=run_id, neuron_id=n.id, head_layer=k, head=h,
                                 n_prompts=len(ps), n_active=n_act, active_fraction=frac,
                                 mean_attr_raw=float(raw[:, k, h].mean()),
                                 mean_attr_ln=float(ln[:, k, h].mean()), kept=keep))
    if rows:
        s.execute(insert(Pair), rows)
    return {"pairs": len(rows), "kept": kept}


def summarize(s, run_id: int, scans: dict, seconds: float, settings: Settings) -> dict:
    """Figures printed at the end of the job and stored on the run, with the paper's two
    tables for this run (explanation score E; ablation drop active vs inactive)."""
    from context_lookups.precompute.ablation.ablate import ablation_table
    from context_lookups.precompute.findings.report import explainers_of_run, score_table

    def brief_e(kind_row):
        return {k: kind_row.get(k) for k in ("n", "mean", "std", "skew")} | {
            "skewtest_p": kind_row["skewtest"]["pvalue"]}

    def brief_abl(kind_row):
        return {"pairs": kind_row["n_pairs"], "prompts": kind_row["n_prompts"],
                "mean_drop_active": kind_row["active"]["mean_drop"],
                "mean_drop_inactive": kind_row["inactive"]["mean_drop"],
                "ks_D": kind_row["ks"]["D"], "ks_p": kind_row["ks"]["p"]}

    from sqlalchemy import func

    from context_lookups.precompute.store.schema import Phase

    def count(q):
        return s.scalar(q) or 0

    scan_stats = {p.name: p.stats for p in s.scalars(select(Phase).where(Phase.run_id == run_id,
                                                                          Phase.name.like("scan:%")))}
    return {
        "neurons": {kind: count(select(func.count()).select_from(Neuron).where(Neuron.run_id == run_id, Neuron.kind == kind))
                    for kind in ("next_token", "random", "other")},
        "prompts": count(select(func.count()).select_from(Prompt).join(Neuron).where(Neuron.run_id == run_id)),
        "pairs": count(select(func.count()).select_from(Pair).where(Pair.run_id == run_id)),
        "kept_pairs": count(select(func.count()).select_from(Pair).where(Pair.run_id == run_id, Pair.kept)),
        "no_activating_prompt": count(select(func.count()).select_from(Neuron).where(
            Neuron.run_id == run_id, Neuron.status == "no_activating_prompt")),
        "explanation_scores": {e: {k: brief_e(v) for k, v in score_table(s, run_id=run_id, explainer=e)["kinds"].items()}
                               for e in explainers_of_run(s, run_id=run_id)},
        "ablation": ({k: brief_abl(v) for k, v in ablation_table(s, run_id=run_id, method=settings.ablation).items()
                      if k in ("next_token", "random")} if settings.ablation != "none" else None),
        "phase_seconds": phase_seconds(s, run_id),
        "scan": scan_stats,
        "wall_seconds_this_invocation": round(seconds, 1),
    }
