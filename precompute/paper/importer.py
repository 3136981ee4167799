"""``lookups import-paper PATH``: the authors' released GPT-2 results as runs of the explorer
(one per model found: ``gpt2-small``, ``gpt2-medium``, ``gpt2-large``).

What is imported (files and traps: ``paper_format``):

- neurons: layer, index, token, congruence, rank in layer (``kind`` next_token; no token id);
- prompts: the step-4 prompt texts of the training (``explain``) and held-out (``heldout``)
  files, in file order (``rank``), with ``active`` = their top-3 heads, largest attribution
  first (the authors' rule, docs/method.md §3). The step-3 record of a text (document index,
  positions, ``doc_act`` = ``og_act``) is attached only when the neuron's records under 100
  tokens and its texts are equally many (duplicate texts collapse, so otherwise the match is
  unknown). ``act`` is ``trunc_act`` only when that value is the kept prompt's (``trunc_act >
  0.8 · og_act``); else None. No per-token activation or attribution value is recorded, so
  ``acts`` and ``attr_*`` are empty, and ``tokens`` are GPT-2's pre-tokenizer words (the BPE
  split needs the tokenizer);
- pairs: every head in a top 3 of the neuron's training prompts, ``kept`` = the pairs the
  authors explained (their rule: active on more than 25 % of the prompts, no upper bound);
- GPT-4's explanations (explainer ``openai:gpt-4``; ``settings.finish_reason``, ``truncated``
  when cut at ``max_tokens``) and its Yes/No answer on each held-out prompt of the pair
  (``Classification``), scored as in ``explain`` (``scoring``: project rule in ``score``,
  both rates kept so ``scoring.authors_score`` gives the authors' figure).

One transaction per model: a model is imported completely or not at all. Re-importing the same
files changes nothing (the files' digest is on ``Run.provenance``); a run of that name made
from other files, or by ``lookups precompute``, is refused, and other runs are never touched.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import regex
from sqlalchemy import select
from sqlalchemy.orm import Session

from precompute import __version__
from precompute.errors import LookupsError
from precompute.explainers import parse_answer
from precompute.paper.format import (
    MODELS,
    ModelFiles,
    PaperFormatError,
    Record,
    find_files,
    load_json,
    load_results,
    read_attributions,
    read_neurons,
    read_pair_keys,
    read_records,
)
from precompute.scoring import explanation_score
from precompute.settings import Settings
from precompute.store.runs import now, transaction
from precompute.store.schema import Classification, Explanation, Neuron, Pair, Prompt, Run

logger = logging.getLogger(__name__)

# Shapes of the models (TransformerLens names -> Hugging Face names for live passes).
SHAPES = {"gpt2-small": ("gpt2", 12, 12, 3072, 768), "gpt2-medium": ("gpt2-medium", 24, 16, 4096, 1024),
          "gpt2-large": ("gpt2-large", 36, 20, 5120, 1280)}
N_CTX = 1024
DATASET = "NeelNanda/pile-10k"
EXPLAINER = "openai:gpt-4"
PROVENANCE = {"source": "Neo, Cohen & Barez, Interpreting Context Look-ups in Transformers "
                        "(EMNLP 2024), released experiment data",
              "repository": "github.com/fbarez/Interpreting-Context-Look-ups",
              "commit": "b98f23e", "folder": "neuron_groups/experiment_data",
              "licence": "MIT", "copyright": "Copyright (c) 2023, fbarez",
              "dataset": DATASET, "explainer": "gpt-4 (answered as gpt-4-0613)",
              "active_rule": "top-3 heads by raw attribution, heads of lower layers (Oct 2023 run)",
              "pair_rule": "head active on more than 25% of the neuron's prompts (no upper bound)",
              "heldout_per_pair": 20,
              "tokens": "GPT-2 pre-tokenizer words: the files hold texts, not token ids"}
MAX_PROMPT_TOKENS = 100
ACT_RATIO = 0.8
# GPT-2's pre-tokenizer pattern (each BPE token lies inside one of these pieces).
_WORDS = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def words(text: str) -> list[str]:
    """``text`` cut by GPT-2's pre-tokenizer pattern; the pieces concatenate back to it."""
    return _WORDS.findall(text)


def _digest(mf: ModelFiles) -> str:
    h = hashlib.sha256()
    for role in sorted(mf.found):
        h.update(role.encode() + b"\0" + mf.found[role].read_bytes() + b"\0")
    return h.hexdigest()


def science(model: str, layers: list[int], n_per_layer: int) -> Settings:
    """The run's settings in the project's terms (the authors' Oct 2023 rules)."""
    return Settings(model=SHAPES[model][0], dataset=DATASET, layers=layers, n_per_layer=n_per_layer,
                    reject_tokens=[], reject_numeric=False, seed=0, n_docs=None, context_tokens=N_CTX,
                    top_k=30, act_ratio=ACT_RATIO, max_prompt_tokens=MAX_PROMPT_TOKENS, heads_upto="lt",
                    active_rule="topk", active_sigma=2.0, active_topk=3, pair_min_fraction=0.25,
                    pair_max_fraction=1.0, n_random=0)


def _prompt_rows(neuron: Neuron, split: str, texts: dict[str, list[int]], records: list[Record] | None,
                 n_heads: int) -> tuple[list[Prompt], bool]:
    """The neuron's prompts of one split, and whether its step-3 records could be matched."""
    recs = [r for r in records or [] if r.n_tokens < MAX_PROMPT_TOKENS]
    matched = records is not None and len(recs) == len(texts)
    rows = []
    for i, (text, heads) in enumerate(texts.items()):
        r = recs[i] if matched else None
        toks = words(text)
        rows.append(Prompt(
            neuron_id=neuron.id, split=split, rank=i, text=text, tokens=toks, token_ids=[], acts=[],
            doc_idx=r.dataset_index if r else None, start=r.start_pos if r else None,
            end=r.token_pos if r else None, doc_act=r.og_act if r else None,
            act=r.trunc_act if r and r.trunc_act > ACT_RATIO * r.og_act else None,
            attr_raw=[], attr_ln=[], other_ln={}, pre=None,
            active=[f"L{h // n_heads}H{h % n_heads}" for h in heads]))
    return rows, matched


def import_model(session: Session, mf: ModelFiles) -> dict:
    """Import one model's files as the run ``mf.model`` (one transaction). Returns counts.

    Raises:
        PaperFormatError: a file or field not in the authors' format (names it).
        LookupsError: the run exists and was not imported from these files.
    """
    model = mf.model
    hf, n_layers, n_heads, d_mlp, d_model = SHAPES[model]
    digest = _digest(mf)
    old = session.scalar(select(Run).where(Run.slug == model))
    if old is not None:
        if (old.provenance or {}).get("digest") == digest:
            return {"model": model, "unchanged": True, **(old.provenance or {}).get("counts", {})}
        how = "from other files" if old.provenance else "by `lookups precompute`"
        raise LookupsError(f"Run {model!r} already exists in this database, made {how}; nothing was "
                           f"changed. Import into another --db.")
    if "neurons" not in mf.found:
        raise PaperFormatError(f"{model}: no 1_next_token_neurons/*_{model}.json; the neurons are needed "
                               f"for everything else.")
    neurons = read_neurons(mf)
    layers = sorted({l for l, *_ in neurons})
    per_layer = max(sum(1 for l, *_ in neurons if l == x) for x in layers)
    for layer, idx, _, _ in neurons:
        if not (0 <= layer < n_layers and 0 <= idx < d_mlp):
            raise PaperFormatError(f"{mf.rel('neurons')}: neuron ({layer}, {idx}) does not exist in "
                                   f"{model} ({n_layers} layers × {d_mlp} neurons).")
    read = {role: read_records(mf, role) for role in ("trim", "trim_test") if role in mf.found}
    attrs = {role: read_attributions(mf, role, n_heads) for role in ("attr", "attr_test") if role in mf.found}
    kept = set(read_pair_keys(mf, "pairs", "nh_to_pos_neg_prompts")) if "pairs" in mf.found else None
    settings = science(model, layers, per_layer)
    counts = {"neurons": len(neurons), "prompts": 0, "pairs": 0, "kept_pairs": 0, "explanations": 0,
              "truncated": 0, "classifications": 0, "unmatched_records": 0}
    known = {(l, i) for l, i, _, _ in neurons}
    for key in kept or ():
        if key[:2] not in known:
            raise PaperFormatError(f"{mf.rel('pairs')}: pair {key} names a neuron that is not in "
                                   f"{mf.rel('neurons')}.")
    with transaction(session):
        run = Run(slug=model, model_name=hf, dataset=DATASET, settings=settings.science(),
                  settings_hash=settings.science_hash(), package_version=__version__,
                  n_layers=n_layers, n_heads=n_heads, d_mlp=d_mlp, d_model=d_model, n_ctx=N_CTX,
                  layers=layers, status="running", started_at=now())
        session.add(run)
        session.flush()
        by_key: dict[tuple[int, int], Neuron] = {}
        ranks: dict[int, int] = {}
        for layer, idx, token, cong in neurons:
            n = Neuron(run_id=run.id, layer=layer, neuron=idx, kind="next_token", rank=ranks.get(layer, 0),
                       token_id=None, token=token, congruence=cong, top_tokens=[[None, token, cong]])
            ranks[layer] = ranks.get(layer, 0) + 1
            recs = read.get("trim", {}).get((layer, idx))
            n.max_act = max((r.og_act for r in recs), default=None) if recs else None
            session.add(n)
            by_key[(layer, idx)] = n
        session.flush()
        heldout: dict[tuple[int, int], dict[str, Prompt]] = {}
        for (layer, idx), n in by_key.items():
            unmatched = []
            for split, arole, trole in (("explain", "attr", "trim"), ("heldout", "attr_test", "trim_test")):
                texts = attrs.get(arole, {}).get((layer, idx))
                if texts is None:
                    continue
                rows, matched = _prompt_rows(n, split, texts, read.get(trole, {}).get((layer, idx)), n_heads)
                session.add_all(rows)
                counts["prompts"] += len(rows)
                if not matched:
                    unmatched.append(split)
                if split == "heldout":
                    heldout[(layer, idx)] = {p.text: p for p in rows}
            if unmatched:
                counts["unmatched_records"] += 1
                n.status = "records_not_matched:" + "+".join(unmatched)
        pairs = _pairs(session, run, by_key, attrs.get("attr", {}), kept, n_heads, counts)
        session.flush()
        _explanations(session, mf, pairs, by_key, heldout, counts)
        from precompute.explain import update_best_scores

        update_best_scores(session, run_id=run.id)
        run.provenance = {**PROVENANCE, "model": model, "files": {r: mf.rel(r) for r in sorted(mf.found)},
                          "missing": mf.missing, "digest": digest, "counts": counts}
        run.status = "complete" if not mf.missing else "partial"
        run.finished_at = now()
    return {"model": model, "unchanged": False, **counts}


def _pairs(session, run, by_key, attr, kept, n_heads, counts) -> dict[tuple[int, int, int], Pair]:
    """Every head in a top 3 of a neuron's training prompts, in order of first appearance."""
    out = {}
    for (layer, idx), prompts in attr.items():
        n = by_key.get((layer, idx))
        if n is None:
            raise PaperFormatError(f"head attributions name neuron ({layer}, {idx}), which is not a "
                                   f"next-token neuron of the run.")
        seen: dict[int, int] = {}
        for heads in prompts.values():
            for h in heads:
                seen[h] = seen.get(h, 0) + 1
        total = len(prompts)
        for h, c in seen.items():
            is_kept = ((layer, idx, h) in kept) if kept is not None else c > 0.25 * total
            p = Pair(run_id=run.id, neuron_id=n.id, head_layer=h // n_heads, head=h % n_heads,
                     n_prompts=total, n_active=c, active_fraction=c / total, mean_attr_raw=None,
                     mean_attr_ln=None, kept=is_kept)
            session.add(p)
            out[(layer, idx, h)] = p
            counts["pairs"] += 1
            counts["kept_pairs"] += is_kept
    for key in kept or ():
        if key not in out:
            raise PaperFormatError(f"pair {key} of the pairs file has no head in the top 3 of any "
                                   f"training prompt of its neuron.")
    return out


def _explanations(session, mf: ModelFiles, pairs, by_key, heldout, counts) -> None:
    """GPT-4's explanation of each pair and its answers on the pair's held-out prompts."""
    if not {"expl_dict", "expl_results"} <= set(mf.found):
        return
    prompts = read_pair_keys(mf, "expl_dict", None)
    results = load_results(mf.found["expl_results"], mf.rel("expl_results"))
    # Answers need the held-out prompts' ground truth, i.e. the test attributions too.
    cls_prompts = (read_pair_keys(mf, "eval", "classify_prompts")
                   if {"eval", "attr_test"} <= set(mf.found) else {})
    answers: dict[str, dict] = {}
    for role in ("cls_results", "cls_results_10"):  # the authors' dict, then .update (later wins)
        if role in mf.found:
            answers.update(load_results(mf.found[role], mf.rel(role)))
    for key, prompt in prompts.items():
        where = f"{mf.rel('expl_dict')}[{str(key)!r}]"
        if not isinstance(prompt, str):
            raise PaperFormatError(f"{where}: the explain prompt should be a string.")
        pair = pairs.get(key)
        if pair is None:
            raise PaperFormatError(f"{where}: no such pair among the training attributions.")
        res = results.get(prompt)
        if res is None:
            continue
        n = by_key[key[:2]]
        rows = []
        for cprompt, shown in (cls_prompts.get(key) or {}).items():
            cwhere = f"{mf.rel('eval')} classify_prompts[{str(key)!r}]"
            if not isinstance(shown, str) or not shown.endswith(n.token):
                raise PaperFormatError(f"{cwhere}: held-out prompt {str(shown)[:40]!r} does not end with "
                                       f"the neuron's token {n.token!r}.")
            p = heldout.get(key[:2], {}).get(shown[:-len(n.token)])
            if p is None:
                raise PaperFormatError(f"{cwhere}: held-out prompt {shown[:40]!r} is not a text of the "
                                       f"neuron in {mf.rel('attr_test')}.")
            ans = answers.get(cprompt)
            if ans is None or ans["content"] is None:
                continue
            rows.append((p, f"L{pair.head_layer}H{pair.head}" in p.active, ans["content"]))
        preds = [parse_answer(a) for _, _, a in rows]
        sc = explanation_score([t for _, t, _ in rows], preds)
        single = len({t for _, t, _ in rows}) < 2
        truncated = res["finish_reason"] == "length"
        exp = Explanation(pair_id=pair.id, explainer=EXPLAINER,
                          status="failed" if res["error"] else "single_class" if single else "ok",
                          text=res["content"], prompt=prompt, score=sc.score, tpr=sc.tpr, tnr=sc.tnr,
                          n_pos=sc.n_pos, n_neg=sc.n_neg, n_unparsed=sc.n_unparsed, error=res["error"],
                          settings={"source": "paper", "model": res["model"], "max_tokens": 200,
                                    "finish_reason": res["finish_reason"], "truncated": truncated,
                                    "sentence": "This attention head is active when the document …"},
                          created_at=now())
        session.add(exp)
        session.flush()
        session.add_all(Classification(explanation_id=exp.id, prompt_id=p.id, truth=t, answer=a, predicted=pr)
                        for (p, t, a), pr in zip(rows, preds))
        counts["explanations"] += 1
        counts["truncated"] += truncated
        counts["classifications"] += len(rows)


def import_folder(Session, path: str | Path) -> list[dict]:
    """Import every model found under ``path`` (the ``experiment_data`` folder, or a folder
    holding it). Returns one dict of counts per model, with ``missing`` files.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        PaperFormatError: no model's files found, or a file not in the authors' format.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: pass the authors' experiment_data folder.")
    if (root / "experiment_data").is_dir():
        root = root / "experiment_data"
    found = [mf for mf in (find_files(root, m) for m in MODELS) if mf.found]
    if not found:
        raise PaperFormatError(f"{root}: no files of {', '.join(MODELS)} found; expected the authors' "
                               f"experiment_data folder (1_next_token_neurons/, 3_trimmed_texts/, ...).")
    out = []
    for mf in found:
        with Session() as s:
            res = import_model(s, mf)
        res["missing"] = mf.missing
        out.append(res)
    return out


def import_command(path: str, db_url: str) -> int:
    """``lookups import-paper PATH [--db URL]``: import, then print per run what was imported,
    what is missing, and E by the authors' rule. Returns 0."""
    from precompute.report import score_table
    from precompute.store.db import open_writer, sessions

    engine = open_writer(db_url)
    try:
        Session = sessions(engine)
        results = import_folder(Session, path)
        for r in results:
            with Session() as s:
                run = s.scalar(select(Run).where(Run.slug == r["model"]))
                t = score_table(s, run_id=run.id, explainer=EXPLAINER)["kinds"]["next_token"]
            au = t["authors_rule"]
            state = "unchanged (already imported)" if r["unchanged"] else "imported"
            print(f"{r['model']}: {state}: {r.get('neurons', 0)} neurons, {r.get('prompts', 0)} prompts, "
                  f"{r.get('kept_pairs', 0)} kept pairs, {r.get('explanations', 0)} explanations "
                  f"({r.get('truncated', 0)} cut at max_tokens), {r.get('classifications', 0)} answers")
            if au["n"]:
                print(f"  E (authors' rule) {au['mean']:.4f} ± {au['std']:.4f} over {au['n']} pairs; "
                      f"project rule {t['mean'] or float('nan'):.4f} ± {t['std'] or float('nan'):.4f} "
                      f"over {t['n']} two-class pairs")
            for m in r["missing"]:
                print(f"  missing: {m}")
    finally:
        engine.dispose()
    from precompute.redact import mask_db_url  # the password is never printed

    print(f"done: database {mask_db_url(db_url)}. Browse it with: lookups serve --db {mask_db_url(db_url)}")
    return 0
