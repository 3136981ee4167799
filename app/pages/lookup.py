"""The context look-up on the explorer's pages (docs/method.md §3, "Per-source decomposition"):
which earlier tokens a head reads at the firing position, and what each carries to the neuron.

The pair page reads the stored decomposition (table ``lookups``, :mod:`precompute.heads.lookup`) and
its attention knockouts (table ``knockouts``, :mod:`precompute.heads.knockout`); the live view gets
the look-up from the backend's clean pass (:func:`app.live.passes.live_views`) and a source's
knockout on request (:func:`app.live.passes.live_knockout`). Both show one row of tokens per
prompt coloured by contribution (diverging, centred at 0, on the scale of the context sources),
attention weight and contribution in each token's tooltip, the firing position marked. Source
position 0 is BOS, the *attention sink* (docs/method.md §3): its own chip with its figure and a
marker, never on the colour scale, and its own row in the summaries. Database reads go through
:mod:`precompute.heads.reads`.
"""

from __future__ import annotations

from markupsafe import Markup, escape
from pydantic import BaseModel, ConfigDict, Field

from context_lookups.precompute.heads import reads as head_reads
from context_lookups.precompute.heads.knockout import EFFECTS, from_stored, summarise_pair
from context_lookups.precompute.heads.lookup import BOS_LABEL, SINK, SINK_LABEL, decode, lookup_dict, summary

from . import states
from .formats import fmt, has_hidden, visible
from .markup import colour
from .present import nice_scale, token_escaped

UNITS = {"raw": "residual-stream units", "ln": "pre-activation units"}


def state(run, pair, n_rows: int) -> dict:
    """Whether the pair page can show the look-up: ``{"state", "reason"}`` with state ``done``,
    ``not_in_data`` (an imported run: the decomposition needs the model's weights, which its
    files do not hold), ``not_applicable`` (the pair is not kept: it is stored for kept pairs
    only) or ``not_computed`` (a run stored before the look-up existed)."""
    if n_rows:
        return {"state": "done", "reason": None}
    return states.lookup_state(run=run, kept=pair.kept, what="look-up")


def knockout_state(run, pair, n_rows: int, rules) -> dict:
    """Whether the pair page can show the attention knockouts (docs/method.md §3): as
    :func:`state`, and ``not_computed`` for a run computed with ``knockout_top_m = 0`` (or
    before the knockout existed)."""
    if n_rows:
        return {"state": "done", "reason": None}
    return states.lookup_state(run=run, kept=pair.kept, what="knockout",
                                off=getattr(rules, "knockout_top_m", 0) == 0)


def knockout_dict(row, ln_scale: float, tokens: list[str]) -> dict:
    """One stored knockout (an ``AttentionKnockout`` row) as the pages show it: the ``sources``
    (``sink`` when it is the attention sink; ``label``, their tokens as stored), their look-up
    term ``contrib`` (raw) and ``contrib_ln`` (pre-activation units), the effects
    (knocked-out minus clean; None where undefined) and ``prob_clean``."""
    src = list(row.sources)
    sink = tuple(src) == SINK
    label = SINK_LABEL if sink else " + ".join(f"#{s - 1}" for s in src)
    text = BOS_LABEL if sink else "".join(tokens[s - 1] for s in src if 1 <= s <= len(tokens))
    return {"sources": src, "sink": sink, "label": label, "text": text, "contrib": row.contrib,
            "contrib_ln": row.contrib / ln_scale, **{e: getattr(row, e) for e in EFFECTS},
            "prob_clean": row.prob_clean, "reason": knockout_reason(row)}


def knockout_reason(ko) -> str | None:
    """Why a knockout's effects are missing (None when they are there): a renormalised row with
    no attention left (docs/method.md §3)."""
    get = ko.get if isinstance(ko, dict) else lambda k: getattr(ko, k)
    return states.reason("knockout_undefined") if get("direct_act") is None else None


def pair_lookups(s, run, pair, prompts: list, score: str, rules=None) -> tuple[dict[int, dict], dict]:
    """The stored look-ups of a pair's ``prompts`` (``Prompt`` rows, both splits) as
    ``{prompt_id: lookup_dict}`` (:func:`precompute.heads.lookup.lookup_dict`; ``total`` and
    ``total_ln`` the head's stored scores; ``knockouts``: the prompt's stored knockouts,
    :func:`knockout_dict`), and the page's summary: ``state``, ``units``, ``scale`` (the largest
    |contribution| of a context source, in the ``score``'s units: the sink is off the colour
    scale), ``groups``, the tokens that carry the most over the prompts on which the head is
    active and inactive, the attention sink apart (:func:`precompute.heads.lookup.summary`), and
    ``knockout``: its ``state`` and the pair's summary (:func:`precompute.heads.knockout.summarise_pair`:
    rank agreement with n, the top context source's check)."""
    k, h = pair.head_layer, pair.head
    ids = [p.id for p in prompts]
    rows = head_reads.pair_lookups(s, prompt_ids=ids, head_layer=k, head=h)
    kos = head_reads.pair_knockouts(s, prompt_ids=ids, head_layer=k, head=h)
    out: dict[int, dict] = {}
    stored = []
    for p in prompts:
        lk = rows.get(p.id)
        if lk is not None:
            has = k < len(p.attr_raw)
            d = lookup_dict(decode(lk.contrib), decode(lk.attention), lk.bias, lk.ln_scale,
                            p.attr_raw[k][h] if has else None, p.attr_ln[k][h] if has else None)
            d["knockouts"] = [knockout_dict(r, lk.ln_scale, p.tokens) for r in kos.get(p.id, [])]
            out[p.id] = d
            if kos.get(p.id):
                stored.append(from_stored(kos[p.id], lk.ln_scale))
    key = "contrib_ln" if score == "ln" else "contrib"
    label = f"L{k}H{h}"
    groups = {}
    for name, want in (("active", True), ("inactive", False)):
        got = [(p.tokens, out[p.id][key], out[p.id]["attention"]) for p in prompts
               if p.id in out and (label in p.active) == want]
        groups[name] = summary(got)
    n_ko = sum(len(kos.get(i, [])) for i in ids)
    return out, {"state": state(run, pair, len(out)), "units": UNITS[score], "score": score,
                 "scale": nice_scale(abs(v) for d in out.values() for v in d[key][1:]), "groups": groups,
                 "n_explain": sum(1 for p in prompts if p.id in out and p.split == "explain"),
                 "n_heldout": sum(1 for p in prompts if p.id in out and p.split == "heldout"),
                 "knockout": {"state": knockout_state(run, pair, n_ko, rules), "n_knockouts": n_ko,
                              **summarise_pair(stored)}}


def summary_tokens(groups: dict, prompts: list, partial: dict) -> dict[str, str]:
    """Each summary token's shown text (escaped bytes of partial UTF-8 characters, from one of
    the prompts' token ids)."""
    ids: dict[str, int] = {}
    for p in prompts:
        for i, t in zip(p.token_ids or [], p.tokens or [], strict=False):
            ids.setdefault(t, i)
    return {r["token"]: token_escaped(ids[r["token"]], r["token"], partial)
            if r["token"] in ids else r["token"]
            for g in groups.values() for r in g["rows"]}


def knockout_title(ko: dict, unit: str) -> str:
    """A knockout's figures in words (a token's tooltip, the live result's caption)."""
    def f(x):
        return "undefined" if x is None else fmt(x, 4)
    return (f"knocked out (renormalised): activation {f(ko.get('total_act'))} "
            f"(direct {f(ko.get('direct_act'))}), pre-activation {f(ko.get('total_pre'))}, "
            f"p(token) {f(ko.get('total_prob'))}")


def lookup_tokens_html(toks: list[str], lookup: dict, scale: float, *, score: str = "raw",
                       row: str = "contrib", joined: list | None = None, pick: str | None = None) -> Markup:
    """One prompt's tokens coloured by the look-up: by each context source's contribution
    (``row="contrib"``, diverging on ``[-scale, scale]``, ``scale`` that of the context sources)
    or attention weight (``row="attention"``, on [0, 1]); every token's tooltip gives both, and
    the firing position (the last source) is marked. BOS, the attention sink (docs/method.md §3),
    is its own chip first, marked and never coloured by contribution: its figure is in its
    tooltip. A source with a stored knockout (``lookup["knockouts"]``) is underlined and its
    tooltip gives the knockout's effects. With ``pick`` (a form's id), each source of the
    contribution row is a submit button of that form carrying ``src=s`` (the live look-up: a
    click runs that source's knockout). Tokens after the position read at (a live view at an
    earlier position) are not sources and stay white. ``toks``: the escaped token texts
    without BOS."""
    contrib = lookup["contrib_ln" if score == "ln" else "contrib"]
    att = lookup["attention"]
    p = lookup["position"]
    unit = UNITS[score]
    kos = {tuple(k["sources"]): k for k in lookup.get("knockouts") or ()}
    out = [f'<span class="toks lookup-row" data-row="{row}">']
    for s, text in enumerate([BOS_LABEL] + list(toks)):
        sink = s in SINK
        cls = "tok bos sink" if s == 0 else "tok"
        part = joined[s - 1] if s and joined and s - 1 < len(joined) else None
        if part is not None:
            cls += " bytes"
        elif s and has_hidden(text):
            cls += " ctl"
        if s > p:
            out.append(f'<span class="{cls} after" '
                       f'title="#{s - 1}: after the position read at, not a source">'
                       f'{escape(visible(text))}</span>')
            continue
        if s == p:
            cls += " max"
        c, a = contrib[s], att[s]
        ko = kos.get((s,))
        if ko is not None:
            cls += " ko"
        bg = colour(a, 1.0) if row == "attention" else "transparent" if sink else colour(c, scale)
        where = f"{SINK_LABEL} (BOS)" if sink else f"#{s - 1}"
        off = " · not on the colour scale" if sink and row != "attention" else ""
        title = (f"{where}: contribution {fmt(c, 4)} ({unit}); "
                 f"attention {fmt(a, 4)}{off}{' · firing position' if s == p else ''}"
                 f"{' · ' + knockout_title(ko, unit) if ko else ''}")
        shown = BOS_LABEL if sink else escape(visible(text))  # the sink's marker: CSS (.tok.sink::after)
        if pick and row == "contrib":
            out.append(f'<button type="submit" form="{pick}" name="src" value="{s}" class="{cls} ko-src" '
                       f'style="background:{bg}" data-src="{s}" '
                       f'title="{escape(title)} · click: knock it out">'
                       f'{shown}</button>')
        else:
            out.append(f'<span class="{cls}" style="background:{bg}" data-src="{s}" title="{escape(title)}">'
                       f'{shown}</span>')
    out.append("</span>")
    return Markup("".join(out))


# --- the JSON twins' shapes, for the OpenAPI schema ----------------------------------------------

class SinkJSON(BaseModel):
    """The attention sink of a look-up (docs/method.md §3, "The attention sink"): BOS, whose term
    is the same vector in every prompt gated by the attention the head does not give the
    context; set apart from the context sources and off the colour scale."""

    positions: list[int] = Field(description="the sink's source positions: [0] (BOS)")
    contrib: float = Field(description="its term a[p, 0] · (v_0 W_O[h]) · W_in[:, i], raw units")
    attention: float = Field(description="its attention weight a[p, 0]")


class ContextSourceJSON(BaseModel):
    position: int = Field(description="source position s (the prompt's token s - 1)")
    contrib: float = Field(description="its term, raw units")
    attention: float = Field(description="its attention weight a[p, s]")
    share: float | None = Field(description="contrib / Σ_context |contrib|: its share of the non-sink total, "
                                "in [-1, 1] (null when every context term is 0)")


class KnockoutJSON(BaseModel):
    """One attention knockout (docs/method.md §3, "Attention knockout"): the head's attention row
    at p with ``sources`` zeroed and renormalised; effects are knocked-out minus clean (null:
    undefined, no attention left to renormalise)."""

    sources: list[int] = Field(description="source positions removed together")
    sink: bool = Field(description="the attention sink (BOS)")
    label: str = Field(description="'attention sink' or '#i' (the prompt's token i)")
    contrib: float = Field(description="their look-up terms summed, raw units")
    contrib_ln: float = Field(description="the same in pre-activation units")
    direct_pre: float | None = Field(description="direct effect on the pre-activation (head -> neuron only, "
                                     "the norm's scale frozen)")
    direct_act: float | None = Field(description="direct effect on the activation")
    total_pre: float | None = Field(description="total effect on the pre-activation (the pass re-run)")
    total_act: float | None = Field(description="total effect on the activation")
    total_prob: float | None = Field(description="total effect on the probability of the neuron's token")
    prob_clean: float | None = Field(description="that probability, clean")
    reason: str | None = Field(description="why the effects are null (undefined: no attention left to "
                               "renormalise); null when they are there")


class LookupJSON(BaseModel):
    """A head's look-up on one prompt at one position ``p`` (docs/method.md §3): the head's raw
    attribution ``A[h] = Σ_s contrib[s] + bias`` split by source position ``s = 0..p``, where
    source 0 is BOS and source ``s >= 1`` is the prompt's token ``s - 1`` (``tokens[s - 1]``)."""

    position: int = Field(description="p: the firing (or chosen) position, the index of the last source; "
                          "every list below has p + 1 values")
    contrib: list[float] = Field(description="a[p, s] · (v_s W_O[h]) · W_in[:, i] per source position "
                                 "s = 0..p: what token s carries to the neuron through the head; raw "
                                 "attribution units (residual-stream dot products)")
    attention: list[float] = Field(description="the head's attention weight a[p, s] per source position "
                                   "s = 0..p (sums to 1)")
    bias: float = Field(description="the value-bias term (b_V[h] W_O[h]) · W_in[:, i], raw units; 0 with "
                        "TransformerLens' processing (fold_value_biases)")
    total: float | None = Field(description="A[h], the head's raw attribution (as stored; live: of this "
                                "pass) = sum(contrib) + bias")
    contrib_ln: list[float] = Field(description="contrib / ln_scale per source: the LN-aware split, "
                                    "pre-activation units")
    bias_ln: float = Field(description="bias / ln_scale, pre-activation units")
    total_ln: float | None = Field(description="the head's LN-aware attribution = sum(contrib_ln) + bias_ln")
    ln_scale: float = Field(description="scale of the LayerNorm feeding the MLP at p (common to all terms)")
    sink: SinkJSON = Field(description="the attention sink (BOS, source 0) apart: its term and attention "
                           "(docs/method.md §3); also contrib[0] and attention[0]")
    context: list[ContextSourceJSON] = Field(description="the other sources, ranked by their share of the "
                                             "non-sink total, largest first")
    context_scale: float = Field(description="the largest |contrib| of a context source (raw units): the "
                                 "colour scale, which leaves the sink out")
    knockouts: list[KnockoutJSON] | None = Field(None, description="a stored prompt's attention knockouts of "
                                                 "this head: its top context sources one at a time, then the "
                                                 "sink (empty: none stored, see the page's "
                                                 "lookup.knockout.state); absent in a live look-up")


class LiveLookupJSON(LookupJSON):
    """:class:`LookupJSON` of the live pass's selected head (``&head=L3H7``), at the live
    position (``pos``; default the last token)."""

    head: str = Field(description="the head, L{layer}H{head}")


class LiveKnockoutJSON(KnockoutJSON):
    """A live knockout (``/knockout?prompt=...&head=L1H2&src=3``): one source of the live look-up
    knocked out, on the live prompt at its position."""

    head: str = Field(description="the head, L{layer}H{head}")
    position: int = Field(description="p: the position read at, among the sources (BOS = 0)")
    token: str = Field(description="the neuron's token")
    act: float = Field(description="the neuron's activation at p, clean")
    pre: float = Field(description="its pre-activation at p, clean")
    attention: float = Field(description="the head's attention weight on the sources, clean")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PairPromptJSON(_Open):
    """A prompt of the pair page (the other fields as on the neuron page)."""

    lookup: LookupJSON | None = Field(description="the pair head's stored look-up at the firing position, "
                                      "with its knockouts (null: not stored, see the page's lookup.state)")


class LookupSummaryRowJSON(BaseModel):
    token: str = Field(description="source token string (⟨BOS⟩: position 0)")
    total: float = Field(description="what it carries summed over the group's prompts (units: lookup.units)")
    per_prompt: float = Field(description="total / the group's prompts")
    prompts: int = Field(description="prompts of the group in which it is a source")
    top: int = Field(description="prompts of the group on which it carries the most of any token")


class LookupSinkRowJSON(BaseModel):
    label: str = Field(description="'attention sink'")
    token: str = Field(description="⟨BOS⟩")
    total: float = Field(description="its terms summed over the group's prompts")
    per_prompt: float = Field(description="total / the group's prompts")
    attention: float = Field(description="its mean attention weight over the group's prompts")


class LookupGroupJSON(BaseModel):
    n_prompts: int
    sink: LookupSinkRowJSON | None = Field(description="the attention sink's row, apart (null: no prompt)")
    rows: list[LookupSummaryRowJSON] = Field(description="the context tokens, by total")
    context_abs: float = Field(description="Σ |total| over every context token: the denominator of share")


class AgreementJSON(BaseModel):
    rho: float | None = Field(description="Spearman's ρ between the LN-aware contributions of the "
                              "knocked-out context sources and their drops (−total effect on the "
                              "activation), pooled over the pair's prompts")
    p: float | None
    n: int = Field(description="(prompt, source) knockouts with finite values")
    reason: str | None = Field(description="why ρ is undefined (n < 3, or a constant side)")


class TopSourceJSON(BaseModel):
    holds: bool | None = Field(description="mean drop of the activation when each prompt's top context "
                               "source is knocked out >= fraction × its mean LN-aware contribution")
    n: int = Field(description="prompts with finite values")
    fraction: float
    mean_contrib: float | None = Field(description="mean LN-aware contribution of the top context source")
    mean_drop: float | None = Field(description="mean drop of the activation when it is knocked out")
    reason: str | None


class PairKnockoutJSON(BaseModel):
    """The pair's knockout summary (docs/method.md §3)."""

    state: dict = Field(description="{state: done | not_computed | not_applicable | not_in_data, reason}")
    n_knockouts: int
    n_prompts: int = Field(description="prompts with knockouts")
    agreement: AgreementJSON
    top_source: TopSourceJSON


class PairLookupJSON(_Open):
    """The pair page's look-up summary over its explain and held-out prompts."""

    state: dict = Field(description="{state: done | not_computed | not_applicable | not_in_data, reason}")
    units: str = Field(description="units of the summary and of the colours: residual-stream units "
                       "(score=raw) or pre-activation units (score=ln)")
    groups: dict[str, LookupGroupJSON] = Field(description="'active' and 'inactive': the tokens that carry "
                                               "the most when the head is active / inactive")
    knockout: PairKnockoutJSON


class PairJSON(_Open):
    """The pair page's JSON twin (fields not listed here: as the page shows them)."""

    active: list[PairPromptJSON]
    inactive: list[PairPromptJSON]
    heldout: list[PairPromptJSON]
    lookup: PairLookupJSON


class LiveJSON(_Open):
    lookup: LiveLookupJSON | None = Field(description="the selected head's look-up (null without &head=)")


class NeuronJSON(_Open):
    """The neuron page's JSON twin (fields not listed here: as the page shows them)."""

    live: LiveJSON | None = Field(description="the live pass, with ?prompt=")
