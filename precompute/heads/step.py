"""Step 3 of the job, head attribution (paper §4.3, docs/method.md §3), after step 2's scan: each
selected neuron's top documents are trimmed (§4.2, :func:`precompute.prompts.scan.trim_many`) and
the trimmed prompts attributed to the upstream heads in the same batched passes, with their
active heads and, for the heads whose pair with the neuron is kept, the per-source look-up and
its attention knockouts (docs/method.md §3). They are stored as the ``prompts``, ``lookups`` and
``knockouts`` tables, one unit of work per neuron (``prompts:L{layer}N{neuron}``); then the
(neuron, head) ``pairs`` in one unit of work.

The computation (:func:`compute_prompts`) touches no database, so the job's executor may run it
on Ray workers; this process alone writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from sqlalchemy import delete, insert, select
from tqdm.auto import tqdm

from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.corpus import SPLITS
from context_lookups.precompute.heads.attribution import (
    active_heads_of_run,
    head_label,
    scored_layers,
    upstream_attn_layers,
)
from context_lookups.precompute.heads.knockout import stored_rows as knockout_rows
from context_lookups.precompute.heads.lookup import stored_rows
from context_lookups.precompute.heads.pairs import (
    TOO_FEW_PROMPTS,
    kept_heads,
    not_kept_reason,
    too_few_prompts,
)
from context_lookups.precompute.model import LoadedModel, tokenize_batch
from context_lookups.precompute.prompts.distinct import distinct_prompts, needs_reserve
from context_lookups.precompute.prompts.reads import TopDocument, top_documents
from context_lookups.precompute.prompts.scan import TrimTask, trim_many
from context_lookups.precompute.store.runs import is_done, unit_of_work
from context_lookups.precompute.store.schema import AttentionKnockout, Lookup, Neuron, Pair, Prompt, Run

logger = logging.getLogger(__name__)



@dataclass
class _LayerNeuron:
    layer: int
    neuron: int


@dataclass
class PromptsJob:
    """What §2-§3 need for a group of selected neurons: ``neurons[q] = (layer, neuron)``,
    ``tops[q][split]``, its top documents (:class:`~precompute.prompts.reads.TopDocument`) by
    rank (activation > 0 only), and ``tokens[q]``, its token (the knockouts' predicted token)."""

    neurons: list[tuple[int, int]]
    tops: list[dict[str, list[TopDocument]]]
    ctx: int
    settings: Settings
    tokens: list[int] | None = None


def prompts_job(s, run_id: int, neurons: list[Neuron], ctx: int, settings: Settings) -> PromptsJob:
    """Read a group's top documents of both splits (the scan's rows and their texts)."""
    tops = [{split: top_documents(s, run_id=run_id, layer=n.layer, neuron=n.neuron, split=split,
                                  positive_only=True)
             for split in SPLITS} for n in neurons]
    return PromptsJob([(n.layer, n.neuron) for n in neurons], tops, ctx, settings,
                      [n.token_id for n in neurons])


def compute_prompts(model: LoadedModel, job: PromptsJob) -> list[tuple[list[dict], dict]]:
    """§2-§3 for a group of selected neurons (any layers), batched across neurons and prompts:
    trim the top documents of both splits (:func:`~precompute.prompts.scan.trim_many`), merge
    the repeats (:func:`~precompute.prompts.distinct.distinct_prompts`: documents that trim to
    the same token ids are one prompt; the first ``top_k`` documents are trimmed, the scan's
    reserve only for a neuron and split still short of ``top_k`` distinct prompts), attribute
    each distinct prompt to the upstream heads in batched passes, mark the active heads, and
    keep the per-source decomposition (docs/method.md §3) of the heads whose pair with the
    neuron will be kept (:func:`precompute.heads.pairs.kept_heads`, the rule ``store_pairs``
    applies), from the same passes; and each look-up's attention knockouts
    (``settings.knockout_top_m`` context sources and the sink,
    :meth:`Backend.knockout <precompute.model.backend.Backend.knockout>`, batched across the
    group's prompts and heads).

    Returns per neuron ``(prompt rows, stats)``: the :class:`~precompute.store.schema.Prompt` fields
    (without ``neuron_id``) in storage order (split, then rank), each with ``lookups``, the
    :class:`~precompute.store.schema.Lookup` fields of its kept heads (without ``prompt_id``), and
    ``knockouts``, the :class:`~precompute.store.schema.AttentionKnockout` fields of their
    knockouts; and ``{split: distinct prompts, "repeats:{split}": occurrences merged into an
    earlier prompt, "lookups": n_rows, "knockouts": n_rows}``. Touches no database, so it runs on
    any worker (``distributed``).
    """
    settings, ctx, top_k = job.settings, job.ctx, job.settings.top_k
    neurons = [_LayerNeuron(*x) for x in job.neurons]
    docs = []  # (neuron index, split, [(top row, token row)] by rank)
    for q, tops_q in enumerate(job.tops):
        for split in SPLITS:
            tops = tops_q[split]
            if tops:
                docs.append((q, split, list(zip(tops, tokenize_batch(model, [t.text for t in tops], ctx),
                                                strict=True))))
    trims: list[list] = [[None] * len(d) for _, _, d in docs]  # per document: trim_many's, or None
    first = [(i, j) for i, (_, _, d) in enumerate(docs) for j in range(min(top_k, len(d)))]
    _trim(model, neurons, docs, first, trims, settings)
    keys = [[_key(t, row, tr, settings) for (t, row), tr in zip(d, trims[i], strict=True)]
            for i, (_, _, d) in enumerate(docs)]
    reserve = [(i, j) for i, (_, _, d) in enumerate(docs) if needs_reserve(keys[i], top_k)
               for j in range(top_k, len(d))]
    _trim(model, neurons, docs, reserve, trims, settings)
    for i, j in reserve:
        keys[i][j] = _key(*docs[i][2][j], trims[i][j], settings)
    chosen = []  # (neuron index, split, top row, token row, trim, occurrences' doc indices)
    for i, (q, split, d) in enumerate(docs):
        for occ in distinct_prompts(keys[i], top_k):
            t, row = d[occ[0]]
            chosen.append((q, split, t, row, trims[i][occ[0]], [d[j][0].doc_idx for j in occ]))
    prompts = [[model.bos_token_id] + row[tr[0]:t.position + 1] for _, _, t, row, tr, _ in chosen]
    atts = model.backend.batched_pass(prompts, [(neurons[q].layer, neurons[q].neuron) for q, *_ in chosen],
                                      lookup=True) if prompts else []
    out: list[tuple[list[dict], dict]] = [([], {split: 0 for split in SPLITS}) for _ in neurons]
    terms: dict[int, object] = {}  # id(prompt row) -> its decomposition
    for (q, split, t, _row, tr, occ), prompt, att in zip(chosen, prompts, atts, strict=True):
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
                              active=labels, multiplicity=len(occ), doc_idxs=occ))
        terms[id(out[q][0][-1])] = att.lookup
        out[q][1][split] += 1
        out[q][1][f"repeats:{split}"] = out[q][1].get(f"repeats:{split}", 0) + len(occ) - 1
    for n, (rows, stats) in zip(neurons, out, strict=True):
        n_scored = scored_layers(n.layer, settings.heads_upto, upstream_attn_layers(model, n.layer))
        heads = kept_heads([r["active"] for r in rows if r["split"] == "explain"], n_scored, model.n_heads,
                           settings)
        for r in rows:
            r["lookups"] = stored_rows(terms[id(r)], heads)
            r["knockouts"] = []
        stats["lookups"], stats["knockouts"] = len(heads) * len(rows), 0
        rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["rank"]))  # storage order: split, then rank
    _knockouts(model, job, neurons, out)
    return out


def _trim(model: LoadedModel, neurons: list[_LayerNeuron], docs, which: list[tuple[int, int]],
          trims: list[list], settings: Settings) -> None:
    """Trim documents ``which`` (``(group, index)`` into ``docs``) in one batched search
    (:func:`~precompute.prompts.scan.trim_many`); each ``(start, original act, trimmed act)``
    goes to ``trims``."""
    tasks = []
    for i, j in which:
        t, row = docs[i][2][j]
        n = neurons[docs[i][0]]
        tasks.append(TrimTask(row, t.position, n.layer, n.neuron, t.act))
    if tasks:
        got = trim_many(model, tasks, act_ratio=settings.act_ratio, max_len=settings.max_prompt_tokens)
        for (i, j), tr in zip(which, got, strict=True):
            trims[i][j] = tr


def _key(t: TopDocument, row, tr, settings: Settings) -> tuple | None:
    """A trimmed document's prompt as token ids (without BOS): the key repeats are merged by;
    None when not trimmed yet or over the length cap (the prompt is dropped, §2)."""
    if tr is None or t.position + 1 - tr[0] >= settings.max_prompt_tokens:
        return None
    return tuple(row[tr[0]:t.position + 1])


def _knockouts(model: LoadedModel, job: PromptsJob, neurons: list[_LayerNeuron],
               out: list[tuple[list[dict], dict]]) -> None:
    """The attention knockouts of every look-up of the group (docs/method.md §3), in one batched
    call in storage order (neuron, split, rank, head), added to each prompt row's ``knockouts``."""
    m = job.settings.knockout_top_m
    tasks = []  # (prompt row, head)
    if m > 0 and job.tokens is not None:
        for q, (rows, _) in enumerate(out):
            if job.tokens[q] is not None:
                tasks += [(q, r, (lk["head_layer"], lk["head"])) for r in rows for lk in r["lookups"]]
    kos = model.backend.knockout([[model.bos_token_id] + list(r["token_ids"]) for _, r, _ in tasks],
                                 [(neurons[q].layer, neurons[q].neuron, job.tokens[q]) for q, _, _ in tasks],
                                 [h for _, _, h in tasks], m=m) if tasks else []
    for (q, r, _), ko in zip(tasks, kos, strict=True):
        got = knockout_rows(ko)
        r["knockouts"] += got
        out[q][1]["knockouts"] += len(got)


def store_prompts(s, n: Neuron, rows: list[dict], stats: dict) -> None:
    """Add one neuron's prompts (from :func:`compute_prompts`) and their look-ups to the session;
    mark a neuron without explain-split prompt."""
    for r in rows:
        p = Prompt(neuron_id=n.id, **{k: v for k, v in r.items() if k not in ("lookups", "knockouts")})
        s.add(p)
        s.add_all(Lookup(prompt=p, **lk) for lk in r.get("lookups", ()))
        s.add_all(AttentionKnockout(prompt=p, **ko) for ko in r.get("knockouts", ()))
    if not stats.get("explain"):  # the job's summary counts them and says what could help
        n.status = "no_activating_prompt"
        logger.info("neuron L%dN%d (%s) fires on no scanned explain document: it has no prompt",
                    n.layer, n.neuron, n.kind)


def attribute_prompts(s, run_id: int, executor, ctx: int, settings: Settings) -> None:
    """§2-§3 for every selected neuron not done yet: the executor computes groups of
    ``neurons_per_pass`` neurons (:func:`compute_prompts`, here or on Ray workers), this process
    writes each neuron's prompts as its own unit of work ``prompts:L{layer}N{neuron}``. A group
    with any neuron to do is computed whole, so its batches are those of a run never killed."""
    selected = s.scalars(select(Neuron).where(Neuron.run_id == run_id, Neuron.kind != "other")
                         .order_by(Neuron.layer, Neuron.neuron)).all()
    groups = [selected[i:i + settings.neurons_per_pass]
              for i in range(0, len(selected), settings.neurons_per_pass)]
    todo = [g for g in groups if any(not is_done(s, run_id, f"prompts:L{n.layer}N{n.neuron}") for n in g)]
    results = executor.map(compute_prompts, (prompts_job(s, run_id, g, ctx, settings) for g in todo))
    t_wait = time.time()
    for group, outs in tqdm(zip(todo, results, strict=True), total=len(todo), desc="prompts+attribution",
                            unit="group", dynamic_ncols=True):
        share = (time.time() - t_wait) / len(group)  # the group's computation, per neuron
        for n, (rows, stats) in zip(group, outs, strict=True):
            if not is_done(s, run_id, f"prompts:L{n.layer}N{n.neuron}"):
                with unit_of_work(s, run_id, f"prompts:L{n.layer}N{n.neuron}", seconds_before=share) as st:
                    store_prompts(s, n, rows, stats)
                    st.update(stats)
        t_wait = time.time()


def store_pairs(s, run_id: int, model: LoadedModel, settings: Settings) -> dict:
    """§3: (neuron, head) pairs over each neuron's explain prompts; kept by
    :func:`precompute.heads.pairs.not_kept_reason` (at least pair_min_prompts prompts, head
    active on pair_min_fraction..pair_max_fraction of them). Neurons with too few prompts get
    the status ``too_few_prompts``."""
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
