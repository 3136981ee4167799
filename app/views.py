"""The data of each page, as JSON-able dicts: the ``.json`` twin returns exactly this dict and
the HTML template renders it. Database reads go through :mod:`app.queries`; live passes
through :class:`app.live.Live`."""

from __future__ import annotations

import math

from sqlalchemy.orm import Session

from precompute.attribution import head_label, scored_layers
from precompute.settings import Settings

from . import queries as Q
from . import urls
from .imported import model_notice, top3_view
from .live import Live
from .present import (ablation_dict, classification_dict, explanation_dict, mean_grid, neuron_dict,
                      nice_scale, pair_dict, prompt_dict, run_dict)


def home(s: Session) -> dict:
    runs = []
    for run in Q.list_runs(s):
        d = run_dict(run, Q.run_counts(s, run_id=run.id))
        d["findings"] = Q.findings(s, run_id=run.id)
        d["links"] = {"neurons": urls.neurons(run.slug), "json": urls.neurons(run.slug, fmt="json")}
        runs.append(d)
    return {"runs": runs}


def neurons(s: Session, *, slug: str, flt: Q.NeuronFilter, default_per_page: int = 50) -> dict:
    run = Q.get_run(s, slug=slug)
    rows, total = Q.list_neurons(s, run=run, flt=flt)
    pages = max(1, math.ceil(total / flt.per_page))
    defaults = vars(Q.NeuronFilter(per_page=default_per_page))
    params = {k: v for k, v in vars(flt).items() if k != "page" and v != defaults[k]}
    items = []
    for n in rows:
        d = neuron_dict(n)
        d.pop("top_tokens")
        d["url"] = urls.neuron(slug, n.layer, n.neuron)
        items.append(d)
    return {"run": run_dict(run), "filter": vars(flt), "total": total, "page": flt.page, "pages": pages,
            "neurons": items,
            "links": {"prev": urls.neurons(slug, page=flt.page - 1, **params) if flt.page > 1 else None,
                      "next": urls.neurons(slug, page=flt.page + 1, **params) if flt.page < pages else None,
                      "json": urls.neurons(slug, fmt="json", page=flt.page if flt.page > 1 else None, **params),
                      "page": urls.neurons(slug, page=flt.page if flt.page > 1 else None, **params)},
            "sort_links": {k: urls.neurons(slug, **_sort_params(params, flt, k)) for k in Q.SORTS},
            "layers": run.layers, "kinds": Q.KINDS, "sorts": list(Q.SORTS)}


def _sort_params(params: dict, flt: Q.NeuronFilter, key: str) -> dict:
    """Clicking a column sorts by it; clicking the sorted column flips the order."""
    if flt.sort == key:
        order = "asc" if flt.order == "desc" else "desc"
    else:
        order = "asc" if key in ("token", "layer", "neuron", "kind") else "desc"
    out = {**params, "sort": key if key != "congruence" else None, "order": order if order != "desc" else None}
    return out


def _grid_scale(grids: list, n_rows: int) -> float:
    return nice_scale(v for g in grids for row in g[:n_rows] for v in row)


def _n_scored(run, layer: int, prompts: list) -> int:
    """Scored head layers of a neuron, by the run's rule; a stored prompt's ``attr_raw`` holds
    every upstream attention layer (without prompts: GPT-2-style blocks, ``layer + 1``)."""
    n_upstream = len(prompts[0].attr_raw) if prompts else layer + 1
    return scored_layers(layer, Settings.of_run(run.settings).heads_upto, n_upstream)


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
    ctx = Settings.of_run(run.settings).context_tokens or run.n_ctx
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
                d["truncated_before"] = lo > 0
    return docs


def neuron(s: Session, live: Live, *, slug: str, layer: int, neuron_: int, score: str, split: str,
           settings) -> dict:
    run = Q.get_run(s, slug=slug)
    n = Q.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    prompts = Q.neuron_prompts(s, neuron_id=n.id, split=split)
    n_scored = _n_scored(run, layer, prompts)
    key = "attr_ln" if score == "ln" else "attr_raw"
    grids = [getattr(p, key) for p in prompts]
    pairs = []
    for item in Q.neuron_pairs(s, neuron_id=n.id, kept_only=True):
        p = item["pair"]
        d = pair_dict(p)
        d["url"] = urls.pair(slug, layer, neuron_, p.head_layer, p.head)
        d["explanations"] = [explanation_dict(e) for e in item["explanations"]]
        d["ablation"] = item["ablation"]
        pairs.append(d)
    docs = []
    if n.kind == "other" or not prompts:
        docs = _tokenized_docs(live, run, Q.top_documents(s, run_id=run.id, layer=layer, neuron=neuron_,
                                                          limit=settings.top_docs), settings.doc_window)
    act_scale = nice_scale([n.max_act or 0.0] + [a for p in prompts for a in p.acts])
    return {
        "run": run_dict(run), "neuron": neuron_dict(n), "score": score, "split": split,
        "n_scored": n_scored, "head_labels": [head_label(k, h) for k in range(n_scored)
                                              for h in range(run.n_heads)],
        "prompts": [prompt_dict(p) for p in prompts], "act_scale": act_scale,
        "mean_attr": mean_grid(grids), "attr_scale": _grid_scale(grids, n_scored),
        "pairs": pairs, "top_documents": docs,
        "links": {"page": urls.neuron(slug, layer, neuron_, score=score if score != "raw" else None,
                                      split=split if split != "explain" else None),
                  "neurons": urls.neurons(slug, layer=layer)},
        "live": None, "live_error": None,
        "top3": top3_view(run, layer, prompts), "model_notice": model_notice(live, run),
    }


def neuron_brief(s: Session, *, slug: str, layer: int, neuron_: int, score: str) -> dict:
    """What the live fragment needs besides the live result (no prompts, no pairs)."""
    run = Q.get_run(s, slug=slug)
    n = Q.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    return {"run": run_dict(run), "neuron": neuron_dict(n), "score": score, "split": "explain",
            "links": {}, "live": None, "live_error": None}


def live_result(s: Session, live: Live, *, slug: str, layer: int, neuron_: int, prompt: str,
                ablate: list[str], pos: int | None) -> tuple[dict, dict]:
    """The live pass for the neuron page and its canonical page URL parameters.

    Raises:
        NotFound, BadLiveInput, PromptTooLong, ModelNotAvailable.
    """
    run = Q.get_run(s, slug=slug)
    n = Q.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    heads = live.parse_ablate(run, ",".join(ablate))
    res = live.run(run=run, neuron=n, prompt=prompt, ablate=heads, pos=pos)
    params = {"prompt": prompt, "ablate": [head_label(k, h) for k, h in heads], "pos": pos}
    return res, params


def live_extra(res: dict, data: dict, score: str) -> dict:
    """Scales of the live view (template helpers)."""
    key = "attr_ln" if score == "ln" else "attr_raw"
    n_scored = res["n_scored"]
    grids = [res[key]] + ([res["ablation"][key]] if res.get("ablation") else [])
    acts = res["acts"] + (res["ablation"]["acts"] if res.get("ablation") else [])
    return {"live_act_scale": nice_scale(acts + [data["neuron"]["max_act"] or 0.0]),
            "live_attr_scale": _grid_scale(grids, n_scored)}


def pair(s: Session, *, slug: str, layer: int, neuron_: int, head_layer: int, head: int, score: str) -> dict:
    run = Q.get_run(s, slug=slug)
    n = Q.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    p = Q.get_pair(s, run=run, neuron=n, head_layer=head_layer, head=head)
    label = head_label(head_layer, head)
    explain = Q.neuron_prompts(s, neuron_id=n.id, split="explain")
    heldout = Q.neuron_prompts(s, neuron_id=n.id, split="heldout")
    expl = Q.pair_explanations(s, pair_id=p.id)
    cls = Q.pair_classifications(s, explanation_ids=[e.id for e in expl])
    abl = Q.pair_ablations(s, pair_id=p.id)
    key = "attr_ln" if score == "ln" else "attr_raw"

    def row(pr, with_outcomes: bool) -> dict:
        d = prompt_dict(pr)
        d["head_attr"] = getattr(pr, key)[head_layer][head] if head_layer < len(pr.attr_raw) else None
        d["head_active"] = label in pr.active
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
        "run": run_dict(run), "neuron": neuron_dict(n), "pair": pair_dict(p), "label": label,
        "score": score,
        "active": [row(pr, False) for pr in explain if label in pr.active],
        "inactive": [row(pr, False) for pr in explain if label not in pr.active],
        "heldout": held,
        "explanations": [explanation_dict(e) for e in expl],
        "ablation_summary": Q.pair_ablation_summary(s, pair_id=p.id),
        "act_scale": nice_scale([n.max_act or 0.0] + [a for pr in prompts for a in pr.acts]),
        "links": {"neuron": urls.neuron(slug, layer, neuron_), "head": urls.head(slug, head_layer, head)},
    }


def head(s: Session, *, slug: str, layer: int, head_: int, order: str, kept: bool) -> dict:
    run = Q.get_run(s, slug=slug)
    rows = Q.head_pairs(s, run=run, head_layer=layer, head=head_, kept_only=kept, order=order)
    items = []
    for r in rows:
        n, p = r["neuron"], r["pair"]
        d = pair_dict(p)
        d.update(layer=n.layer, neuron=n.neuron, kind=n.kind, token=n.token, congruence=n.congruence,
                 best_score=r["best_score"], url=urls.neuron(slug, n.layer, n.neuron),
                 pair_url=urls.pair(slug, n.layer, n.neuron, layer, head_))
        items.append(d)
    return {"run": run_dict(run), "head": {"layer": layer, "head": head_, "label": head_label(layer, head_)},
            "order": order, "kept": kept, "pairs": items,
            "raw_scale": nice_scale(i["mean_attr_raw"] for i in items),
            "ln_scale": nice_scale(i["mean_attr_ln"] for i in items),
            "links": {"json": urls.head(slug, layer, head_, fmt="json", order=order if order != "raw" else None,
                                        kept="true" if kept else None)}}
