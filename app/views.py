"""The data of each page, as JSON-able dicts: the ``.json`` twin returns exactly this dict and
the HTML template renders it. Database reads go through :mod:`app.queries`; live passes
through :class:`app.live.Live`."""

from __future__ import annotations

import math
from concurrent.futures import Future

from sqlalchemy.orm import Session

from context_lookups.precompute.attribution import head_label, scored_layers

from . import distribution as DIST
from . import evidence as QE
from . import lookup as LK
from . import queries as Q
from . import states, urls
from .imported import model_notice, top3_view
from .live import Live, run_rules
from .present import (
    ablation_dict,
    act_floor,
    classification_dict,
    explanation_dict,
    flat_uncertainty,
    mean_grid,
    neuron_dict,
    nice_scale,
    pair_dict,
    prompt_dict,
    rank_note,
    run_dict,
    token_escaped,
    token_fields,
)


def neuron_keys(s: Session, *, slug: str, flt: Q.NeuronFilter):
    """The ids of every neuron of ``flt``, in the list's order (:func:`queries.neuron_keys`)."""
    return Q.neuron_keys(s, run=Q.get_run(s, slug=slug), flt=flt)


def pair_keys(s: Session, *, slug: str, flt: Q.PairFilter):
    """The keys of every row of ``flt``'s pair list, in order (:func:`queries.pair_keys`)."""
    return Q.pair_keys(s, run=Q.get_run(s, slug=slug), flt=flt)


def home(s: Session) -> dict:
    runs = []
    for run in Q.list_runs(s):
        d = run_dict(run, Q.run_counts(s, run_id=run.id))
        d["findings"] = Q.findings(s, run_id=run.id)
        d["links"] = {"neurons": urls.neurons(run.slug), "json": urls.neurons(run.slug, fmt="json")}
        runs.append(d)
    return {"runs": runs}


def neurons(s: Session, *, slug: str, flt: Q.NeuronFilter, default_per_page: int = 50,
            live: Live | None = None, ids=None) -> dict:
    """A run's neuron list: one page of ``flt``, or with ``ids`` (:func:`neuron_keys`) those
    neurons (a chunk of a CSV stream)."""
    run = Q.get_run(s, slug=slug)
    rows, total = Q.list_neurons(s, run=run, flt=flt, ids=ids)
    partial = live.partial_tokens(run) if live else {}
    best = QE.best_explanations(s, neurons=rows)
    counts = QE.answer_counts(s, explanation_ids=[e.id for e in best.values() if e.n_unparsed])
    pages = max(1, math.ceil(total / flt.per_page))
    defaults = vars(Q.NeuronFilter(per_page=default_per_page))
    params = {k: v for k, v in vars(flt).items() if k != "page" and v != defaults[k]}
    items = []
    for n in rows:
        d = neuron_dict(n, partial)
        d.pop("top_tokens")
        d.pop("bottom_tokens")
        ex = explanation_dict(best[n.id], counts.get(best[n.id].id)) if n.id in best else {}
        d.update(n_pos=ex.get("n_pos"), n_neg=ex.get("n_neg"), **flat_uncertainty(ex))
        d["url"] = urls.neuron(slug, n.layer, n.neuron)
        items.append(d)
    return {"run": run_dict(run), "filter": vars(flt), "total": total, "page": flt.page, "pages": pages,
            "neurons": items,
            "links": {"prev": urls.neurons(slug, page=flt.page - 1, **params) if flt.page > 1 else None,
                      "next": urls.neurons(slug, page=flt.page + 1, **params) if flt.page < pages else None,
                      "json": urls.neurons(slug, fmt="json", page=flt.page if flt.page > 1 else None, **params),
                      "csv": urls.neurons(slug, fmt="csv", **_all_rows(params)),  # every page
                      "page": urls.neurons(slug, page=flt.page if flt.page > 1 else None, **params)},
            "sort_links": {k: urls.neurons(slug, **_sort_params(params, flt, k)) for k in Q.SORTS},
            "kind_links": {"all": urls.neurons(slug, **{**params, "kind": "all"}),
                           "selected": urls.neurons(slug, **{**params, "kind": None})},
            "layers": run.layers, "kinds": Q.KINDS, "sorts": list(Q.SORTS)}


def _all_rows(params: dict) -> dict:
    """A list's filter parameters without its paging (the CSV twin holds every row)."""
    return {k: v for k, v in params.items() if k != "per_page"}


def _sort_params(params: dict, flt: Q.NeuronFilter, key: str) -> dict:
    """Clicking a column sorts by it; clicking the sorted column flips the order."""
    if flt.sort == key:
        order = "asc" if flt.order == "desc" else "desc"
    else:
        order = "asc" if key in ("token", "layer", "neuron", "kind") else "desc"
    default = Q.NeuronFilter()
    return {**params, "sort": key if key != default.sort else None,
            "order": order if order != default.order else None}


def _grid_scale(grids: list, n_rows: int) -> float:
    return nice_scale(v for g in grids for row in g[:n_rows] for v in row)


def _n_scored(run, layer: int, prompts: list) -> int:
    """Scored head layers of a neuron, by the run's rule; a stored prompt's ``attr_raw`` holds
    every upstream attention layer (without prompts: GPT-2-style blocks, ``layer + 1``)."""
    n_upstream = len(prompts[0].attr_raw) if prompts else layer + 1
    return scored_layers(layer, run_rules(run.settings).heads_upto, n_upstream)


def _tokenized_docs(live: Live, run, docs: list[dict], window: int) -> list[dict]:
    """Text around each top document's max-activating position, tokenized by the run's
    tokenizer when it can be loaded (else the text alone).

    Only a prefix of each document is tokenized (``ctx * 24`` characters): cutting the text
    can change only the prefix's last token, so the prefix is enough whenever the wanted
    position lies before it; otherwise the whole text is tokenized."""
    tok = live.tokenizer(run)
    for d in docs:
        d["tokens"] = None
    if tok is None or not docs:
        return docs
    ctx = run_rules(run.settings).context_tokens or run.n_ctx
    kw = dict(add_special_tokens=False, truncation=True, max_length=ctx - 1)
    with live.tok_lock:  # HF fast tokenizers are not safe to share between threads
        enc = tok([d["text"][:ctx * 24] for d in docs], **kw)["input_ids"]
        for d, ids in zip(docs, enc):
            i = d["position"] - 1  # position counts BOS at 0
            if i + 1 >= len(ids) and len(d["text"]) > ctx * 24:
                ids = tok(d["text"], **kw)["input_ids"]
            if 0 <= i < len(ids):
                lo = max(0, i - window)
                d["tokens"] = tok.batch_decode([[t] for t in ids[lo:i + 1]])
                d.update(token_fields(ids[lo:i + 1], d["tokens"], live.partial_tokens(run)))
                d["truncated_before"] = lo > 0
    return docs


def _prompts_part(s: Session, run, n, *, split: str, score: str, partial: dict, cache=None) -> dict:
    """What the neuron page derives from the neuron's stored prompts of ``split``: the prompt
    dicts, scored head layers, mean head attribution and the colour scales.

    A neuron's prompts are written in one unit of work and never change after it (the job
    refuses other settings on an existing run; the server only reads), so once they exist this
    part is kept in ``cache`` (a dict-like LRU, by neuron id, split and score): later views of
    the neuron read only its run, neuron and pairs. A neuron without prompts (not selected, or
    its job still running) is never cached."""
    key = (n.id, split, score)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    prompts = Q.neuron_prompts(s, neuron_id=n.id, split=split)
    n_total = len(prompts) if len(prompts) < Q.MAX_PAGE_PROMPTS else Q.count_prompts(s, neuron_id=n.id, split=split)
    attr = "attr_ln" if score == "ln" else "attr_raw"
    grids = [getattr(p, attr) for p in prompts]
    n_scored = _n_scored(run, n.layer, prompts)
    part = {"prompts": [prompt_dict(p, partial) for p in prompts], "n_scored": n_scored,
            "head_labels": [head_label(k, h) for k in range(n_scored) for h in range(run.n_heads)],
            "act_scale": nice_scale([n.max_act or 0.0] + [a for p in prompts for a in p.acts]),
            "act_lo": act_floor(a for p in prompts for a in p.acts),
            "mean_attr": mean_grid(grids), "attr_scale": _grid_scale(grids, n_scored),
            "top3": top3_view(run, n.layer, prompts), "n_prompts_total": n_total}
    if cache is not None and prompts:
        cache[key] = part
    return part


def _selected_above(s: Session, run, n, cache=None) -> int | None:
    """``queries.selected_above`` for a next-token neuron (None for others), kept in ``cache``:
    the neurons of a run are written once, in the job's first phase."""
    if n.kind != "next_token" or n.rank is None:
        return None
    key = ("selected_above", run.id, n.layer, n.rank)
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        hit = QE.selected_above(s, run_id=run.id, layer=n.layer, rank=n.rank)
        if cache is not None:
            cache[key] = hit
    return hit


def neuron(s: Session, live: Live, *, slug: str, layer: int, neuron_: int, score: str, split: str,
           settings, cache=None) -> dict:
    """The neuron page's data (``cache``: see :func:`_prompts_part`)."""
    run = Q.get_run(s, slug=slug)
    n = Q.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    partial = live.partial_tokens(run)
    part = _prompts_part(s, run, n, split=split, score=score, partial=partial, cache=cache)
    prompts = part["prompts"]
    pairs = []
    kept_pairs = Q.neuron_pairs(s, neuron_id=n.id, kept_only=True)
    phases = Q.ablation_phases(s, run_id=run.id, pair_ids=[i["pair"].id for i in kept_pairs])
    prov = run.provenance
    # the rates give the answer counts exactly unless some answers were unparsed (uncertainty())
    counts = QE.answer_counts(s, explanation_ids=[e.id for i in kept_pairs for e in i["explanations"]
                                                 if e.n_unparsed])
    for item in kept_pairs:
        p = item["pair"]
        d = pair_dict(p)
        d["url"] = urls.pair(slug, layer, neuron_, p.head_layer, p.head)
        d["explanations"] = [explanation_dict(e, counts.get(e.id)) for e in item["explanations"]]
        d["ablation"] = item["ablation"]
        d["explanation_state"] = states.explanation_state(kept_why=None, n_explanations=len(d["explanations"]),
                                                          provenance=prov)
        d["ablation_state"] = states.ablation_state(kept_why=None, n_rows=len(d["ablation"]),
                                                    phases=phases.get(p.id, {}), provenance=prov)
        pairs.append(d)
    no_pair_reason = None
    if not pairs and n.kind != "other":
        n_explain = len(prompts) if split == "explain" else Q.count_prompts(s, neuron_id=n.id)
        no_pair_reason = states.no_pair_reason(n_explain, run_rules(run.settings))
    docs = []
    if n.kind == "other" or not prompts:
        docs = _tokenized_docs(live, run, Q.top_documents(s, run_id=run.id, layer=layer, neuron=neuron_,
                                                          limit=settings.top_docs), settings.doc_window)
    return {
        "run": run_dict(run), "neuron": neuron_dict(n, partial), "best": best_scores(run, pairs),
        "score": score, "split": split,
        "rank_note": rank_note(n, run.d_mlp, _selected_above(s, run, n, cache)),
        "n_scored": part["n_scored"], "head_labels": part["head_labels"],
        "prompts": prompts, "n_prompts_total": part["n_prompts_total"], "act_scale": part["act_scale"],
        "act_lo": min(part["act_lo"], act_floor(d["act"] for d in docs)),
        "mean_attr": part["mean_attr"], "attr_scale": part["attr_scale"],
        "pairs": pairs, "no_pair_reason": no_pair_reason, "top_documents": docs,
        "links": {"page": urls.neuron(slug, layer, neuron_, score=score if score != "raw" else None,
                                      split=split if split != "explain" else None),
                  "neurons": urls.neurons(slug, layer=layer)},
        "live": None, "live_error": None,
        "top3": part["top3"], "model_notice": model_notice(live, run),
        "histogram": DIST.neuron_histogram(s, run_id=run.id, neuron=n, split=split, prompts=prompts,
                                           docs=docs, cache=cache),
    }


def best_scores(run, pairs: list[dict]) -> dict:
    """The neuron's best E over its kept pairs by the run's own rule (``Neuron.best_score``:
    the authors' for imported runs, the project's otherwise) and by the other rule, labelled."""
    def best(key):
        vals = [e[key] for p in pairs for e in p["explanations"] if e[key] is not None]
        return max(vals) if vals else None

    own, other = ("authors", "project") if run.provenance is not None else ("project", "authors")
    keys = {"authors": "score_authors", "project": "score"}
    return {"rule": own, "score": best(keys[own]), "other_rule": other, "other": best(keys[other])}


def neuron_brief(s: Session | None, live: Live, *, slug: str, layer: int, neuron_: int, score: str,
                 run=None, n=None) -> dict:
    """What the live fragment needs besides the live result (no prompts, no pairs); from
    ``run`` and ``n`` when the caller has read them already."""
    if run is None or n is None:
        run = Q.get_run(s, slug=slug)
        n = Q.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    return {"run": run_dict(run), "neuron": neuron_dict(n, live.partial_tokens(run)), "score": score,
            "split": "explain", "links": {}, "live": None, "live_error": None}


def live_request(s: Session, live: Live, *, slug: str, layer: int, neuron_: int, prompt: str,
                 ablate: list[str], pos: int | None, score: str = "raw",
                 head: str | None = None) -> tuple[Future, dict, dict, dict]:
    """Submit the live pass of the neuron page; returns its Future (to await), the canonical
    page URL parameters, the run's partial tokens (for :func:`shown_live`) and the live
    fragment's :func:`neuron_brief` (read now, so the fragment needs no second query).

    Raises:
        NotFound, BadLiveInput, LiveBusy (the Future may raise BadLiveInput, PromptTooLong,
        ModelNotAvailable).
    """
    run = Q.get_run(s, slug=slug)
    n = Q.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    heads = live.parse_ablate(run, ",".join(ablate))
    picked = live.parse_head(run, head)
    fut = live.submit(run=run, neuron=n, prompt=prompt, ablate=heads, pos=pos, head=picked)
    params = {"prompt": prompt, "ablate": [head_label(k, h) for k, h in heads],
              "head": head_label(*picked) if picked else None, "pos": pos}
    brief = neuron_brief(None, live, slug=slug, layer=layer, neuron_=neuron_, score=score, run=run, n=n)
    return fut, params, live.partial_tokens(run), brief


def shown_live(res: dict, partial: dict) -> dict:
    """A live result (shared, cached: not modified) with its tokens as shown
    (:func:`app.present.token_fields`): ``tokens_escaped``, ``tokens_joined``, ``token_escaped``
    and ``top5_escaped`` (also in ``ablation``)."""
    out = {**res, **token_fields(res["token_ids"], res["tokens"], partial),
           "token_escaped": token_escaped(res["token_id"], res["token"], partial),
           "top5_escaped": [token_escaped(t[0], t[1], partial) for t in res["top5"]]}
    if res.get("ablation"):
        out["ablation"] = {**res["ablation"], "top5_escaped": [token_escaped(t[0], t[1], partial)
                                                               for t in res["ablation"]["top5"]]}
    return out


def live_extra(res: dict, data: dict, score: str) -> dict:
    """Scales of the live view (template helpers); ``live_lookup_scale`` that of the look-up's
    contributions in the score's units."""
    key = "attr_ln" if score == "ln" else "attr_raw"
    n_scored = res["n_scored"]
    grids = [res[key]] + ([res["ablation"][key]] if res.get("ablation") else [])
    acts = res["acts"] + (res["ablation"]["acts"] if res.get("ablation") else [])
    lk = res.get("lookup")
    return {"live_act_scale": nice_scale(acts + [data["neuron"]["max_act"] or 0.0]),
            "live_act_lo": act_floor(acts),
            "live_attr_scale": _grid_scale(grids, n_scored),
            "live_lookup_scale": nice_scale(lk["contrib_ln" if score == "ln" else "contrib"]) if lk else None}


def pair(s: Session, *, slug: str, layer: int, neuron_: int, head_layer: int, head: int, score: str,
         live: Live | None = None) -> dict:
    run = Q.get_run(s, slug=slug)
    partial = live.partial_tokens(run) if live else {}
    n = Q.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    p = Q.get_pair(s, run=run, neuron=n, head_layer=head_layer, head=head)
    label = head_label(head_layer, head)
    explain = Q.neuron_prompts(s, neuron_id=n.id, split="explain")
    heldout = Q.neuron_prompts(s, neuron_id=n.id, split="heldout")
    expl = Q.pair_explanations(s, pair_id=p.id)
    cls = Q.pair_classifications(s, explanation_ids=[e.id for e in expl])
    abl = Q.pair_ablations(s, pair_id=p.id)
    kept_why = states.kept_reason(p, run_rules(run.settings))
    pair_state = {"kept_reason": kept_why,
                  "explanation": states.explanation_state(kept_why=kept_why, n_explanations=len(expl),
                                                          provenance=run.provenance),
                  "ablation": states.ablation_state(
                      kept_why=kept_why, n_rows=sum(len(a) for a in abl.values()),
                      phases=Q.ablation_phases(s, run_id=run.id, pair_ids=[p.id]).get(p.id, {}),
                      provenance=run.provenance)}
    key = "attr_ln" if score == "ln" else "attr_raw"
    looks, look = LK.pair_lookups(s, run, p, explain + heldout, score)
    look["tokens"] = LK.summary_tokens(look["groups"], explain + heldout, partial)

    def row(pr, with_outcomes: bool) -> dict:
        d = prompt_dict(pr, partial)
        d["head_attr"] = getattr(pr, key)[head_layer][head] if head_layer < len(pr.attr_raw) else None
        d["head_active"] = label in pr.active
        d["lookup"] = looks.get(pr.id)
        if with_outcomes:
            d["classifications"] = {e.explainer: classification_dict(cls[e.id][pr.id])
                                    for e in expl if pr.id in cls.get(e.id, {})}
            d["ablations"] = {m: ablation_dict(a[pr.id]) for m, a in abl.items() if pr.id in a}
        return d

    held = [row(pr, True) for pr in heldout]
    scored_ids = {pid for c in cls.values() for pid in c} | {pid for a in abl.values() for pid in a}
    if scored_ids:
        held = [h for h in held if h["id"] in scored_ids]
    prompts = explain + heldout
    return {
        "run": run_dict(run), "neuron": neuron_dict(n, partial), "pair": pair_dict(p), "label": label,
        "score": score,
        "active": [row(pr, False) for pr in explain if label in pr.active],
        "inactive": [row(pr, False) for pr in explain if label not in pr.active],
        "heldout": held,
        "explanations": [explanation_dict(e, _counts(cls.get(e.id, {}))) for e in expl],
        "ablation_summary": Q.pair_ablation_summary(s, pair_id=p.id), "state": pair_state,
        "lookup": look,
        "act_scale": nice_scale([n.max_act or 0.0] + [a for pr in prompts for a in pr.acts]),
        "act_lo": act_floor(a for pr in prompts for a in pr.acts),
        "links": {"neuron": urls.neuron(slug, layer, neuron_), "head": urls.head(slug, head_layer, head)},
    }


def _counts(answers: dict) -> tuple[int, int, int, int] | None:
    """(TP, FN, TN, FP) of one explanation's stored answers (``{prompt_id: Classification}``)."""
    parsed = [(c.truth, c.predicted) for c in answers.values() if c.predicted is not None]
    if not parsed:
        return None
    return (sum(t and p for t, p in parsed), sum(t and not p for t, p in parsed),
            sum(not t and not p for t, p in parsed), sum(not t and p for t, p in parsed))


def head(s: Session, *, slug: str, layer: int, head_: int, order: str, kept: bool,
         live: Live | None = None) -> dict:
    run = Q.get_run(s, slug=slug)
    partial = live.partial_tokens(run) if live else {}
    rows = Q.head_pairs(s, run=run, head_layer=layer, head=head_, kept_only=kept, order=order)
    counts = QE.answer_counts(s, explanation_ids=[r["best"].id for r in rows
                                                 if r["best"] is not None and r["best"].n_unparsed])
    items = []
    for r in rows:
        n, p, best = r["neuron"], r["pair"], r["best"]
        d = pair_dict(p)
        ex = explanation_dict(best, counts.get(best.id)) if best is not None else {}
        d.update(layer=n.layer, neuron=n.neuron, kind=n.kind, token=n.token,
                 token_escaped=token_escaped(n.token_id, n.token, partial), congruence=n.congruence,
                 best_score=r["best_score"], best_explainer=ex.get("explainer"), n_pos=ex.get("n_pos"),
                 n_neg=ex.get("n_neg"), **flat_uncertainty(ex), url=urls.neuron(slug, n.layer, n.neuron),
                 pair_url=urls.pair(slug, n.layer, n.neuron, layer, head_))
        items.append(d)
    total = Q.count_head_pairs(s, run=run, head_layer=layer, head=head_, kept_only=kept)
    return {"run": run_dict(run), "head": {"layer": layer, "head": head_, "label": head_label(layer, head_)},
            "order": order, "kept": kept, "pairs": items, "total": total,
            "raw_scale": nice_scale(i["mean_attr_raw"] for i in items),
            "ln_scale": nice_scale(i["mean_attr_ln"] for i in items),
            "links": {f: urls.head(slug, layer, head_, fmt=f, order=order if order != "raw" else None,
                                   kept="true" if kept else None) for f in ("json", "csv")}}


def pairs(s: Session, *, slug: str, flt: Q.PairFilter, live: Live | None = None, keys=None) -> dict:
    """A run's (neuron, head) pairs, one row per explanation (or per pair without one), with
    the explanation's text and score E (paper §4.4); with ``keys`` (:func:`pair_keys`) those
    rows (a chunk of a CSV stream)."""
    run = Q.get_run(s, slug=slug)
    partial = live.partial_tokens(run) if live else {}
    rows, total = Q.list_pairs(s, run=run, flt=flt, keys=keys)
    counts = QE.answer_counts(s, explanation_ids=[e.id for _, _, e in rows if e is not None and e.n_unparsed])
    items = []
    for p, n, e in rows:
        d = {"layer": n.layer, "neuron": n.neuron, "kind": n.kind, "token": n.token,
             "token_escaped": token_escaped(n.token_id, n.token, partial), **pair_dict(p)}
        d.pop("id")
        ex = explanation_dict(e, counts.get(e.id)) if e is not None else {}
        d.update(explainer=ex.get("explainer"), status=ex.get("status"), status_text=ex.get("status_text"),
                 score=ex.get("score"), score_authors=ex.get("score_authors"),
                 tpr=ex.get("tpr"), tnr=ex.get("tnr"), n_pos=ex.get("n_pos"), n_neg=ex.get("n_neg"),
                 **flat_uncertainty(ex), explanation=ex.get("text"),
                 url=urls.pair(slug, n.layer, n.neuron, p.head_layer, p.head))
        items.append(d)
    pages = max(1, math.ceil(total / flt.per_page))
    defaults = vars(Q.PairFilter())
    params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in vars(flt).items()
              if k != "page" and v != defaults[k]}
    page = flt.page if flt.page > 1 else None
    return {"run": run_dict(run), "filter": vars(flt), "total": total, "page": flt.page, "pages": pages,
            "pairs": items, "explainers": Q.explainers(s, run_id=run.id), "layers": run.layers,
            "links": {"prev": urls.pairs(slug, page=flt.page - 1, **params) if flt.page > 1 else None,
                      "next": urls.pairs(slug, page=flt.page + 1, **params) if flt.page < pages else None,
                      "page": urls.pairs(slug, page=page, **params),
                      "json": urls.pairs(slug, fmt="json", page=page, **params),
                      "csv": urls.pairs(slug, fmt="csv", **_all_rows(params))}}  # every page
