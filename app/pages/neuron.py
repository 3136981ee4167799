"""The neuron page's data (paper §4.1-§5.4 for one neuron), as the JSON-able dict its ``.json``
twin returns and its template renders: the neuron, its trimmed prompts with their head
attribution, its kept pairs with their explanations and ablations, its activation histogram,
and, for a live pass, what the pass needs and how its result is shown.

Everything about the run comes from the request's :class:`~app.pages.context.RunContext`
(resolved once); the rows are read through the paper steps' own reads
(``precompute.<step>.reads``). Nothing here runs or imports the model: a live pass is queued by
the route (:mod:`app.routes.pages`), which hands the result back to :func:`shown_live`.
"""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy.orm import Session

from context_lookups.precompute.ablation import reads as ablation_reads
from context_lookups.precompute.core.errors import BadLiveInput
from context_lookups.precompute.explain import reads as explain_reads
from context_lookups.precompute.heads import reads as head_reads
from context_lookups.precompute.heads.attribution import head_label, scored_layers
from context_lookups.precompute.neurons import reads as neuron_reads
from context_lookups.precompute.prompts import reads as prompt_reads
from context_lookups.precompute.store.schema import Neuron

from . import queries as Q
from . import states, urls
from .context import RunContext
from .imported import top3_view
from .present import (
    act_floor,
    explanation_dict,
    grid_scale,
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


def neuron(s: Session, ctx: RunContext, *, layer: int, neuron_: int, score: str, split: str, settings,
           cache=None) -> dict:
    """The neuron page's data, its ``.json`` twin without a live pass (``settings``: the
    server's, for the top documents shown; ``cache``: see :func:`_prompts_part`).

    Raises:
        NotFound: no such neuron in the run.
    """
    run = ctx.run
    # the rows first (each read is its step's: precompute.<step>.reads), then their presentation
    n = neuron_reads.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    above = _selected_above(s, ctx, n, cache)
    part = _prompts_part(s, ctx, n, split=split, score=score, cache=cache)
    prompts = part["prompts"]
    pairs = _pairs(s, ctx, n)
    no_pair_reason = None
    if not pairs and n.kind != "other":
        n_explain = len(prompts) if split == "explain" else head_reads.count_prompts(s, neuron_id=n.id)
        no_pair_reason = (states.reason("neurons_only") if states.neurons_only(run.provenance)
                          else states.no_pair_reason(n_explain, ctx.rules))
    view = {"score": score if score != "raw" else None, "split": split if split != "explain" else None}
    docs = []
    if n.kind == "other" or not prompts:
        top = prompt_reads.top_documents(s, run_id=run.id, layer=layer, neuron=neuron_,
                                         limit=settings.top_docs)
        docs = ctx.tokens.windows([asdict(d) for d in top], ctx=ctx.context_tokens,
                                  window=settings.doc_window)
    return {
        "run": run_dict(run), "neuron": neuron_dict(n, ctx.partial),
        "best": best_scores(ctx, pairs, n=n, no_pair=no_pair_reason),
        "score": score, "split": split,
        "rank_note": rank_note(n, run.d_mlp, above),
        "n_scored": part["n_scored"], "head_labels": part["head_labels"],
        "prompts": prompts, "n_prompts_total": part["n_prompts_total"], "n_documents": part["n_documents"],
        "act_scale": part["act_scale"],
        "act_lo": min(part["act_lo"], act_floor(d["act"] for d in docs)),
        "mean_attr": part["mean_attr"], "attr_scale": part["attr_scale"],
        "pairs": pairs, "no_pair_reason": no_pair_reason, "top_documents": docs,
        "links": {"page": urls.neuron(run.slug, layer, neuron_, **view),
                  "json": urls.neuron(run.slug, layer, neuron_, fmt="json", **view),
                  "neurons": urls.neurons(run.slug, layer=layer)},
        "live": None, "live_error": None, "live_prompt": None, "live_pos": None,
        "top3": part["top3"], "model_notice": ctx.model_notice,
        "histogram": _histogram(s, ctx, n, split=split, prompts=prompts, docs=docs, cache=cache),
    }


def _prompts_part(s: Session, ctx: RunContext, n: Neuron, *, split: str, score: str, cache=None) -> dict:
    """What the neuron page derives from the neuron's stored prompts of ``split``: the prompt
    dicts, scored head layers, mean head attribution and the colour scales.

    A neuron's prompts are written in one unit of work and never change after it (the job
    refuses other settings on an existing run; the server only reads), so once they exist this
    part is kept in ``cache`` (a dict-like LRU, by neuron id, split and score): later views of
    the neuron read only its run, neuron and pairs. A neuron without prompts (not selected, or
    its job still running) is never cached."""
    key = (n.id, split, score)
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    run = ctx.run
    prompts = head_reads.neuron_prompts(s, neuron_id=n.id, split=split, limit=Q.MAX_PAGE_PROMPTS)
    n_total = len(prompts) if len(prompts) < Q.MAX_PAGE_PROMPTS else \
        head_reads.count_prompts(s, neuron_id=n.id, split=split)
    grids = [p.attr_ln if score == "ln" else p.attr_raw for p in prompts]
    # a stored prompt's attr_raw holds every upstream attention layer (without prompts: GPT-2-style
    # blocks, layer + 1)
    n_upstream = len(prompts[0].attr_raw) if prompts else n.layer + 1
    n_scored = scored_layers(n.layer, ctx.rules.heads_upto, n_upstream)
    n_scored_top3 = scored_layers(n.layer, ctx.rules.heads_upto, run.n_layers)  # files without attribution
    top3 = top3_view(run, n_scored_top3, prompts)
    part = {"n_scored": n_scored,
            "head_labels": [head_label(k, h) for k in range(n_scored) for h in range(run.n_heads)],
            "act_scale": nice_scale([n.max_act or 0.0] + [a for p in prompts for a in p.acts]),
            "act_lo": act_floor(a for p in prompts for a in p.acts),
            "mean_attr": mean_grid(grids), "attr_scale": grid_scale(grids, n_scored),
            "top3": top3, "n_prompts_total": n_total,
            "n_documents": sum(p.multiplicity or 1 for p in prompts),
            "prompts": [prompt_dict(p, ctx.partial) for p in prompts]}
    if cache is not None and prompts:
        cache[key] = part
    return part


def _pairs(s: Session, ctx: RunContext, n: Neuron) -> list[dict]:
    """The neuron's kept pairs as the page shows them, most driven first: each pair with its
    explanations (§4.4), its mean ablation drops per method (§5.4) and the state of both."""
    kept = head_reads.neuron_pairs(s, neuron_id=n.id, kept_only=True)
    ids = [p.id for p in kept]
    expl = explain_reads.explanations_of_pairs(s, pair_ids=ids)
    drops = ablation_reads.mean_drops(s, pair_ids=ids)
    phases = ablation_reads.ablation_phases(s, run_id=ctx.run.id, pair_ids=ids)
    # the rates give the answer counts exactly unless some answers were unparsed (uncertainty())
    exps = [e for p in kept for e in expl.get(p.id, [])]
    counts = explain_reads.answer_counts(s, explanation_ids=[e.id for e in exps if e.n_unparsed])
    docs = explain_reads.heldout_documents(s, explanation_ids=[e.id for e in exps])
    prov = ctx.run.provenance
    pairs = []
    for p in kept:
        d = pair_dict(p)
        d["url"] = urls.pair(ctx.slug, n.layer, n.neuron, p.head_layer, p.head)
        d["explanations"] = [explanation_dict(e, counts.get(e.id), docs.get(e.id))
                             for e in expl.get(p.id, [])]
        d["ablation"] = drops.get(p.id, {})
        d["explanation_state"] = states.explanation_state(kept_why=None,
                                                          n_explanations=len(d["explanations"]),
                                                          provenance=prov)
        d["ablation_state"] = states.ablation_state(kept_why=None, n_rows=len(d["ablation"]),
                                                    phases=phases.get(p.id, {}), provenance=prov)
        pairs.append(d)
    return pairs


def _selected_above(s: Session, ctx: RunContext, n: Neuron, cache=None) -> int | None:
    """``neurons.reads.selected_above`` for a next-token neuron (None for others), kept in
    ``cache``: the neurons of a run are written once, in the job's first phase."""
    if n.kind != "next_token" or n.rank is None:
        return None
    key = ("selected_above", ctx.run.id, n.layer, n.rank)
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        hit = neuron_reads.selected_above(s, run_id=ctx.run.id, layer=n.layer, rank=n.rank)
        if cache is not None:
            cache[key] = hit
    return hit


def _histogram(s: Session, ctx: RunContext, n: Neuron, *, split: str, prompts: list[dict], docs: list[dict],
               cache=None) -> dict | None:
    """The neuron's activation histogram over ``split`` (``prompts.reads.histogram``, docs/method.md
    §2), with the shown top prompts' document activations marked (the top documents' for a neuron
    without prompts, on the explain split); kept in ``cache`` once stored (immutable, like the
    prompts)."""
    key = ("histogram", n.id, split)
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    marks = [(p["rank"], p["doc_act"]) for p in prompts if p["doc_act"] is not None]
    if not prompts and split == "explain":
        marks = [(d["rank"], d["act"]) for d in docs]
    h = prompt_reads.histogram(s, run_id=ctx.run.id, split=split, layer=n.layer, neuron=n.neuron, marks=marks)
    if h is not None and cache is not None:
        cache[key] = h
    return h


def best_scores(ctx: RunContext, pairs: list[dict], *, n: Neuron | None = None,
                no_pair: str | None = None) -> dict:
    """The neuron's best E over its kept pairs by the run's own rule (``ctx.e_rule``, as
    ``Neuron.best_score``: the authors' for imported runs, the project's otherwise) and by the
    other rule, labelled; ``reason``: why there is none (None when there is one;
    :func:`app.pages.states.neuron_score_reason`)."""
    def best(key):
        vals = [e[key] for p in pairs for e in p["explanations"] if e[key] is not None]
        return max(vals) if vals else None

    own = ctx.e_rule
    other = "project" if own == "authors" else "authors"
    keys = {"authors": "score_authors", "project": "score"}
    out = {"rule": own, "score": best(keys[own]), "other_rule": other, "other": best(keys[other]),
           "reason": None}
    if out["score"] is None and n is not None:
        exps = [e for p in pairs for e in p["explanations"]]
        if no_pair:
            only = states.neurons_only(ctx.run.provenance)
            out["reason"] = no_pair if only else states.reason("no_pair", why=no_pair)
        elif exps:
            out["reason"] = "; ".join(dict.fromkeys(e["reason"] for e in exps if e.get("reason"))) or None
        else:
            out["reason"] = states.neuron_score_reason(
                kind=n.kind, status=n.status, has_kept_pair=bool(pairs), provenance=ctx.run.provenance,
                best=None, settings=ctx.rules)
    return out


def neuron_brief(s: Session | None, ctx: RunContext, *, layer: int, neuron_: int, score: str,
                 n: Neuron | None = None) -> dict:
    """What the live fragment needs besides the live result (no prompts, no pairs); from ``n``
    when the caller has read the neuron already.

    Raises:
        NotFound: no such neuron.
    """
    if n is None:
        n = neuron_reads.get_neuron(s, run=ctx.run, layer=layer, neuron=neuron_)
    return {"run": run_dict(ctx.run), "neuron": neuron_dict(n, ctx.partial), "score": score,
            "split": "explain", "links": {}, "live": None, "live_error": None}


def live_request(s: Session, ctx: RunContext, *, layer: int, neuron_: int, prompt: str, ablate: list[str],
                 pos: int | None, score: str = "raw", head: str | None = None) -> dict:
    """What the neuron page's live pass needs, checked before anything is queued: ``neuron``
    (the row), ``ablate`` (the heads to ablate) and ``head`` (the look-up head), parsed against
    the run's model; ``params``, the canonical page URL's parameters; and ``brief``, the live
    fragment's :func:`neuron_brief` (read now, so the fragment needs no second query).

    Raises:
        NotFound: no such neuron. BadLiveInput: a malformed or out-of-range head.
    """
    n = neuron_reads.get_neuron(s, run=ctx.run, layer=layer, neuron=neuron_)
    heads = ctx.parse_heads(",".join(ablate))
    picked = ctx.parse_head(head)
    params = {"prompt": prompt, "ablate": [head_label(k, h) for k, h in heads],
              "head": head_label(*picked) if picked else None, "pos": pos}
    return {"neuron": n, "ablate": heads, "head": picked, "params": params,
            "brief": neuron_brief(None, ctx, layer=layer, neuron_=neuron_, score=score, n=n)}


def knockout_request(s: Session, ctx: RunContext, *, layer: int, neuron_: int, prompt: str, head: str | None,
                     src: int, pos: int | None, score: str = "raw") -> dict:
    """What a live knockout needs, checked before anything is queued (docs/method.md §3,
    "Attention knockout"): ``neuron`` (the row), ``head`` (parsed against the run's model: a
    knockout needs one) and ``params``, the parameters of the knockout's URL and of the live
    page it belongs to (``page``).

    Raises:
        NotFound: no such neuron. BadLiveInput: no head, or a malformed or out-of-range one; a
            negative source.
    """
    n = neuron_reads.get_neuron(s, run=ctx.run, layer=layer, neuron=neuron_)
    picked = ctx.parse_head(head)
    if picked is None:
        raise BadLiveInput("A knockout needs the look-up's head: give head=L{layer}H{head} "
                           "(e.g. head=L0H1).")
    if src < 0:
        raise BadLiveInput(f"src {src} is not a source position: 0 is BOS, s the prompt's token s - 1.")
    page = {"prompt": prompt, "head": head_label(*picked), "pos": pos,
            "score": score if score != "raw" else None}
    return {"neuron": n, "head": picked, "params": {**page, "src": src}, "page": page}


def shown_live(res: dict, partial: dict) -> dict:
    """A live result (shared, cached: not modified) with its tokens as shown
    (:func:`app.pages.present.token_fields`): ``tokens_escaped``, ``tokens_joined``,
    ``token_escaped`` and ``top5_escaped`` (also in ``ablation``)."""
    out = {**res, **token_fields(res["token_ids"], res["tokens"], partial),
           "token_escaped": token_escaped(res["token_id"], res["token"], partial),
           "top5_escaped": [token_escaped(t[0], t[1], partial) for t in res["top5"]]}
    if res.get("ablation"):
        out["ablation"] = {**res["ablation"], "top5_escaped": [token_escaped(t[0], t[1], partial)
                                                               for t in res["ablation"]["top5"]]}
    return out


def live_extra(res: dict, data: dict, score: str) -> dict:
    """Scales of the live view (template helpers); ``live_lookup_scale`` that of the look-up's
    context contributions in the score's units (the attention sink left out, docs/method.md §3)."""
    key = "attr_ln" if score == "ln" else "attr_raw"
    n_scored = res["n_scored"]
    grids = [res[key]] + ([res["ablation"][key]] if res.get("ablation") else [])
    acts = res["acts"] + (res["ablation"]["acts"] if res.get("ablation") else [])
    lk = res.get("lookup")
    return {"live_act_scale": nice_scale(acts + [data["neuron"]["max_act"] or 0.0]),
            "live_act_lo": act_floor(acts),
            "live_attr_scale": grid_scale(grids, n_scored),
            # the context's scale: the attention sink (source 0) keeps its figure but not a colour
            "live_lookup_scale": nice_scale(lk["contrib_ln" if score == "ln" else "contrib"][1:])
            if lk else None}
