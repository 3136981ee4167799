"""``lookups import-paper PATH``: the authors' released GPT-2 results as runs of the explorer,
one per experiment found (:mod:`precompute.paper.chains`): ``gpt2-small``, ``gpt2-medium``,
``gpt2-large``, ``gpt2-large-l16-20``, ``gpt2-xl`` on the authors' repository.

What a run holds (docs/method.md §7):

- neurons: layer, index, token, congruence, rank in layer (``kind`` next_token; no token id);
- prompts: the step-4 prompt texts of the training (``explain``) and held-out (``heldout``)
  attribution files, ``rank`` = position in the file, ``active`` = their top-3 heads, largest
  attribution first. Their files key prompts by text, so a neuron's prompts of a split are
  distinct (checked and counted: ``repeated_prompts``; the step-3 records they merged:
  ``records_merged``), multiplicity 1. The step-3 record of a text (document index, positions, ``doc_act`` =
  ``og_act``) only when the neuron's records under 100 tokens and its texts are equally many;
  ``act`` = ``trunc_act`` only when that is the kept prompt's (``trunc_act > 0.8 · og_act``).
  No per-token values are recorded; ``tokens`` are GPT-2's pre-tokenizer words;
- pairs: every head in a top 3 of the neuron's training prompts, ``kept`` = the pairs the
  authors explained (their rule without the pairs file: active on more than 25 %);
- GPT-4's explanations (explainer ``openai:gpt-4``), text with the lead-in of the authors'
  prompt ("This attention head is active when the document ..."), and its Yes / No on each of
  the first 20 held-out prompts: the classification prompts are rebuilt with the authors'
  template and looked up in the answer files (later answers win, as in their notebook);
  status ``unanswered`` when no answer is in the data; texts, answers and errors are stored
  redacted (:func:`precompute.redact.redact`), as ``lookups explain`` stores an endpoint's;
- ablation (:mod:`precompute.paper.pickled`): per held-out prompt, the probability of the
  token with the head zero-ablated and without, ``active`` by the authors' rule, and
  ``n_records`` = how many of the authors' records had that text (their per-pair means count
  each).

Each run is written in one transaction. Re-importing the same files changes nothing (their
digest is on ``Run.provenance``); a run of that name made otherwise is refused and left alone.
"""

from __future__ import annotations

import logging
import math

import regex
from sqlalchemy import select
from sqlalchemy.orm import Session

from context_lookups.precompute import __version__
from context_lookups.precompute.core.redact import redact
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.explain.explainers import LEAD_IN, full_text, parse_answer
from context_lookups.precompute.explain.scoring import explanation_score
from context_lookups.precompute.paper.files import PaperFormatError
from context_lookups.precompute.paper.format import SHAPES
from context_lookups.precompute.paper.loader import Loaded, prompt_records
from context_lookups.precompute.store.runs import now, transaction
from context_lookups.precompute.store.schema import (
    Ablation,
    Classification,
    Explanation,
    Neuron,
    Pair,
    Prompt,
    Run,
)

logger = logging.getLogger(__name__)

N_CTX = 1024
DATASET = "NeelNanda/pile-10k"
EXPLAINER = "openai:gpt-4"
HELDOUT_PER_PAIR = 20  # the authors' max_per_nh
CLASSIFY = ("Is the given example an active example? (Yes/No)\nThe example is active when the example "
            "{explanation}\nExample: \"\"\"\n{shown}\n\"\"\"\nAnswer: ")
PROVENANCE = {"source": "Neo, Cohen & Barez, Interpreting Context Look-ups in Transformers "
                        "(EMNLP 2024), released experiment data",
              "repository": "github.com/fbarez/Interpreting-Context-Look-ups",
              "commit": "b98f23e", "folder": "neuron_groups/experiment_data",
              "licence": "MIT", "copyright": "Copyright (c) 2023, fbarez",
              "dataset": DATASET, "explainer": "gpt-4 (answered as gpt-4-0613)",
              "active_rule": "top-3 heads by raw attribution, heads of lower layers (Oct 2023 run)",
              "pair_rule": "head active on more than 25% of the neuron's prompts (no upper bound)",
              "heldout_per_pair": HELDOUT_PER_PAIR,
              "dates": "from the file names: the authors' local time",
              "tokens": "GPT-2 pre-tokenizer words: the files hold texts, not token ids"}
MAX_PROMPT_TOKENS = 100
ACT_RATIO = 0.8
# GPT-2's pre-tokenizer pattern (each BPE token lies inside one of these pieces).
_WORDS = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def words(text: str) -> list[str]:
    """``text`` cut by GPT-2's pre-tokenizer pattern; the pieces concatenate back to it."""
    return _WORDS.findall(text)


def science(model: str, layers: list[int], n_per_layer: int) -> Settings:
    """The run's settings in the project's terms (the authors' Oct 2023 rules)."""
    return Settings(model=SHAPES[model][0], dataset=DATASET, layers=layers, n_per_layer=n_per_layer,
                    reject_tokens=[], reject_numeric=False, seed=0, n_docs=None, context_tokens=N_CTX,
                    top_k=30, act_ratio=ACT_RATIO, max_prompt_tokens=MAX_PROMPT_TOKENS, heads_upto="lt",
                    active_rule="topk", active_sigma=2.0, active_topk=3, pair_min_fraction=0.25,
                    pair_max_fraction=1.0, n_random=0, pair_min_prompts=1,
                    heldout_per_pair=HELDOUT_PER_PAIR)


def import_run(session: Session, data: Loaded) -> dict:
    """Write one experiment as a run (one transaction). Returns its counts.

    Raises:
        PaperFormatError: a run of that name exists and was not imported from these files
            (nothing is changed).
    """
    e = data.exp
    model = e.model
    hf, n_layers, n_heads, d_mlp, d_model = SHAPES[model]
    old = session.scalar(select(Run).where(Run.slug == e.slug))
    if old is not None:
        if (old.provenance or {}).get("digest") == data.digest:
            return {"unchanged": True, **(old.provenance or {}).get("counts", {})}
        how = "from other files" if old.provenance else "by `lookups precompute`"
        raise PaperFormatError(f"run {e.slug!r} already exists in this database, made {how}; it was left "
                               f"as it is (import into another --db to keep both).")
    layers = sorted({row[0] for row in data.neurons})
    per_layer = max(sum(1 for row in data.neurons if row[0] == x) for x in layers)
    settings = science(model, layers, per_layer)
    counts = {"neurons": len(data.neurons), "prompts": 0, "repeated_prompts": 0, "records_merged": 0,
              "pairs": 0, "kept_pairs": 0, "explanations": 0,
              "truncated": 0, "answered": 0, "classifications": 0, "unmatched_records": 0,
              "ablated_pairs": 0, "ablation_rows": 0}
    dates = [f.date for fs in e.roles.values() for f in fs if f.date is not None]
    with transaction(session):
        run = Run(slug=e.slug, model_name=hf, dataset=DATASET, settings=settings.science(),
                  settings_hash=settings.science_hash(), package_version=__version__,
                  n_layers=n_layers, n_heads=n_heads, d_mlp=d_mlp, d_model=d_model, n_ctx=N_CTX,
                  layers=layers, status="running", started_at=min(dates) if dates else now(),
                  finished_at=max(dates) if dates else None, imported_at=now())
        session.add(run)
        session.flush()
        by_key = _neurons(session, run, data)
        prompts = _prompts(session, data, by_key, n_heads, counts)
        pairs = _pairs(session, run, data, by_key, prompts["explain"], n_heads, counts)
        session.flush()
        _explanations(session, data, pairs, by_key, prompts["heldout"], counts)
        _ablations(session, data, pairs, prompts["heldout"], counts)
        from context_lookups.precompute.explain.step import update_best_scores

        update_best_scores(session, run_id=run.id)
        run.provenance = {**PROVENANCE, "experiment": e.slug, "model": model, "layers": list(e.layers),
                          "files": {role: [f.rel for f in fs] for role, fs in e.roles.items()},
                          "missing": e.missing, "notes": e.notes, "dropped": data.dropped,
                          "digest": data.digest, "counts": counts}
        run.status = "complete" if not e.missing else "partial"
    return {"unchanged": False, **counts}


def _neurons(session, run, data: Loaded) -> dict[tuple[int, int], Neuron]:
    by_key, ranks = {}, {}
    trim = data.records.get("explain", {})
    for layer, idx, token, cong in data.neurons:
        recs = trim.get((layer, idx))
        n = Neuron(run_id=run.id, layer=layer, neuron=idx, kind="next_token", rank=ranks.get(layer, 0),
                   token_id=None, token=token, congruence=cong, top_tokens=[[None, token, cong]],
                   max_act=max((r.og_act for r in recs), default=None) if recs else None)
        ranks[layer] = ranks.get(layer, 0) + 1
        session.add(n)
        by_key[(layer, idx)] = n
    session.flush()
    return by_key


def _prompts(session, data: Loaded, by_key, n_heads: int, counts) -> dict[str, dict]:
    """The neurons' prompts per split: ``{split: {neuron: {index in file: Prompt}}}``.

    Checks the prompts are distinct within a neuron and split (docs/method.md §2, "Repeats"):
    ``counts["repeated_prompts"]`` (texts imported more than once; the authors' attribution files
    key prompts by text, so 0), and ``counts["records_merged"]``, the authors' step-3 records
    under 100 tokens beyond one per text (documents their files merged into one prompt)."""
    out: dict[str, dict] = {"explain": {}, "heldout": {}}
    for key, n in by_key.items():
        unmatched = []
        for split in ("explain", "heldout"):
            texts = data.attrs.get(split, {}).get(key)
            if texts is None:
                continue
            items = list(texts.items())
            kept_texts = [items[i][0] for i in data.keep[split][key]]
            counts["repeated_prompts"] += len(kept_texts) - len(set(kept_texts))
            records = data.records.get(split, {}).get(key)
            if records is not None:
                short = sum(r.n_tokens < MAX_PROMPT_TOKENS for r in records)
                counts["records_merged"] += max(0, short - len(items))
            recs = prompt_records([t for t, _ in items], records)
            if records is not None and recs and recs[0] is None:
                unmatched.append(split)
            rows = {}
            for i in data.keep[split][key]:
                text, heads = items[i]
                r = recs[i]
                rows[i] = Prompt(
                    neuron_id=n.id, split=split, rank=i, text=text, tokens=words(text), token_ids=[], acts=[],
                    doc_idx=r.dataset_index if r else None, start=r.start_pos if r else None,
                    end=r.token_pos if r else None, doc_act=r.og_act if r else None,
                    act=r.trunc_act if r and r.trunc_act > ACT_RATIO * r.og_act else None,
                    attr_raw=[], attr_ln=[], other_ln={}, pre=None,
                    active=[f"L{h // n_heads}H{h % n_heads}" for h in heads])
            session.add_all(rows.values())
            counts["prompts"] += len(rows)
            out[split][key] = rows
        if unmatched:
            counts["unmatched_records"] += 1
            n.status = "records_not_matched:" + "+".join(unmatched)
    session.flush()
    return out


def _pairs(session, run, data: Loaded, by_key, explain, n_heads, counts) -> dict[tuple[int, int, int], Pair]:
    """Every head in a top 3 of a neuron's (imported) training prompts, in order of first
    appearance; kept = explained by the authors (or their rule without the pairs file)."""
    out = {}
    for key, rows in explain.items():
        n = by_key[key]
        seen: dict[int, int] = {}
        for p in rows.values():
            for lab in p.active:
                k, h = (int(x) for x in lab[1:].split("H"))
                seen[k * n_heads + h] = seen.get(k * n_heads + h, 0) + 1
        total = len(rows)
        for h, c in seen.items():
            kept = ((*key, h) in data.pairs) if data.pairs is not None else c > 0.25 * total
            p = Pair(run_id=run.id, neuron_id=n.id, head_layer=h // n_heads, head=h % n_heads,
                     n_prompts=total, n_active=c, active_fraction=c / total, mean_attr_raw=None,
                     mean_attr_ln=None, kept=kept)
            session.add(p)
            out[(*key, h)] = p
            counts["pairs"] += 1
            counts["kept_pairs"] += kept
    return out


def _explanations(session, data: Loaded, pairs, by_key, heldout, counts) -> None:
    """GPT-4's explanation of each kept pair and its answers on the pair's first 20 held-out
    prompts (classification prompts rebuilt with the authors' template)."""
    no_pair = no_result = 0
    for key, prompt in data.explain_prompts.items():
        pair = pairs.get(key)
        if pair is None or not pair.kept:
            no_pair += 1
            continue
        res = data.explanations.get(prompt)
        if res is None:
            no_result += 1
            continue
        n = by_key[key[:2]]
        texts = list(data.attrs.get("heldout", {}).get(key[:2]) or {})[:HELDOUT_PER_PAIR]
        held = heldout.get(key[:2], {})
        label = f"L{pair.head_layer}H{pair.head}"
        rows = []
        for i, text in enumerate(texts):
            p = held.get(i)
            if p is None or res["content"] is None:
                continue
            ans = data.answers.get(CLASSIFY.format(explanation=res["content"].replace("\n", " "),
                                                   shown=text + n.token))
            if ans is not None and ans["content"] is not None:
                rows.append((p, label in p.active, redact(ans["content"][:200])))
        preds = [parse_answer(a) for _, _, a in rows]
        sc = explanation_score([t for _, t, _ in rows], preds)
        truncated = res["finish_reason"] == "length"
        status = ("failed" if res["error"] else "unanswered" if not rows
                  else "single_class" if len({t for _, t, _ in rows}) < 2 else "ok")
        # the authors' answers are stored redacted, as `lookups explain` stores an endpoint's
        exp = Explanation(pair_id=pair.id, explainer=EXPLAINER, status=status,
                          text=redact(full_text(res["content"])), prompt=redact(prompt), score=sc.score,
                          tpr=sc.tpr, tnr=sc.tnr, n_pos=sc.n_pos, n_neg=sc.n_neg,
                          n_unparsed=sc.n_unparsed, error=redact(res["error"]),
                          settings={"source": "paper", "model": res["model"], "max_tokens": 200,
                                    "finish_reason": res["finish_reason"], "truncated": truncated,
                                    "lead_in": LEAD_IN},
                          created_at=now())
        session.add(exp)
        session.flush()
        session.add_all(Classification(explanation_id=exp.id, prompt_id=p.id, truth=t, answer=a, predicted=pr)
                        for (p, t, a), pr in zip(rows, preds, strict=True))
        counts["explanations"] += 1
        counts["truncated"] += truncated
        counts["answered"] += bool(rows)
        counts["classifications"] += len(rows)
    if no_pair:
        data.exp.notes.append(f"{no_pair} explain prompts name a pair that is not kept here; not imported")
    if no_result:
        data.exp.notes.append(f"{no_result} explain prompts have no answer in the results files")


def _ablations(session, data: Loaded, pairs, heldout, counts) -> None:
    """The authors' per-prompt ablation values, mapped to the held-out prompts (see
    :func:`match_values`), as ``Ablation`` rows (method ``zero``)."""
    if data.ablation is None:
        return
    e = data.exp
    if not data.attrs.get("heldout"):
        e.lack("ablation", "the ablation file was read, but without the held-out attributions its values "
                           "cannot be given to prompts or split active / inactive")
        return
    by_neuron: dict[tuple[int, int], dict] = {}
    for key, v in data.ablation.items():
        by_neuron.setdefault(key[:2], {})[key] = v
    unknown = [k for k in data.ablation if k not in pairs or not pairs[k].kept]
    if unknown:
        e.notes.append(f"{len(unknown)} pairs of the ablation file are not kept pairs here "
                       f"(e.g. {unknown[0]}); not imported")
    for nkey, entries in by_neuron.items():
        texts = data.attrs["heldout"].get(nkey)
        if texts is None:
            continue
        n_heads = SHAPES[e.model][2]
        why, groups = match_values(list(texts.items()), entries,
                                   data.records.get("heldout", {}).get(nkey), n_heads)
        if why:
            e.notes.append(f"ablation of L{nkey[0]}N{nkey[1]} not imported: {why}")
            continue
        held = heldout.get(nkey, {})
        for key, v in entries.items():
            pair = pairs.get(key)
            if pair is None or not pair.kept:
                continue
            label = f"L{pair.head_layer}H{pair.head}"
            n_rows = 0
            for g, positions in enumerate(groups):
                p = held.get(g)
                if p is None:
                    continue
                i = positions[0]
                session.add(Ablation(pair_id=pair.id, prompt_id=p.id, method="zero", active=label in p.active,
                                     act_clean=None, act_ablated=None, prob_clean=v["normal"][i],
                                     prob_ablated=v["ablated"][i], drop=v["normal"][i] - v["ablated"][i],
                                     n_records=len(positions)))
                n_rows += 1
            counts["ablated_pairs"] += bool(n_rows)
            counts["ablation_rows"] += n_rows


def match_values(items: list[tuple[str, list[int]]], entries: dict, records, n_heads: int
                 ) -> tuple[str | None, list[list[int]]]:
    """Give each of a neuron's ablation values (one per held-out record under 100 tokens,
    duplicates included, in the authors' order) its prompt text.

    Equal texts collapse into one attribution key (first position kept), and equal texts give
    equal values; so positions are grouped by their values across every pair of the neuron,
    and the groups, in order of first appearance, are the texts in file order. The match is
    kept only when it is exact: as many groups as texts, as many values as records (when the
    records are there), and every pair's mean drops where active / inactive reproduce the
    authors' ``act_diff_relevant`` / ``act_diff_irrelevant``.

    Returns:
        ``(None, groups)``: ``groups[g]`` = the value positions of text ``g``; or
        ``(reason, [])`` when the values cannot be matched.
    """
    import numpy as np

    lens = {len(v["normal"]) for v in entries.values()}
    if len(lens) != 1:
        return "its pairs hold different numbers of values", []
    length = lens.pop()
    recs = [r for r in records or [] if r.n_tokens < MAX_PROMPT_TOKENS]
    if records is not None and len(recs) != length:
        return f"{length} values for {len(recs)} held-out records under {MAX_PROMPT_TOKENS} tokens", []
    keys = sorted(entries)
    sig = [tuple(entries[k]["normal"][i] for k in keys) + tuple(entries[k]["ablated"][i] for k in keys)
           for i in range(length)]
    order: dict[tuple, list[int]] = {}
    for i, s in enumerate(sig):
        order.setdefault(s, []).append(i)
    groups = list(order.values())
    if len(groups) != len(items):
        return f"{length} values fall into {len(groups)} distinct groups for {len(items)} held-out texts", []
    for key, v in entries.items():
        mask = np.zeros(length, dtype=bool)
        for g, positions in enumerate(groups):
            mask[positions] = key[2] in items[g][1]
        drop = np.asarray(v["normal"], dtype=np.float32) - np.asarray(v["ablated"], dtype=np.float32)
        for want, sel in ((v["relevant"], mask), (v["irrelevant"], ~mask)):
            got = float(np.mean(drop[sel])) if sel.any() else math.nan
            if not (math.isnan(want) and math.isnan(got)) and not abs(want - got) <= 1e-6:
                return (f"pair {key}: the mean drop {got:.6g} of its "
                        f"{'active' if sel is mask else 'inactive'} prompts is not the authors' "
                        f"{want:.6g}"), []
    return None, groups
