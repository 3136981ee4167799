"""The context look-up on the explorer's pages (docs/method.md §3, "Per-source decomposition"):
which earlier tokens a head reads at the firing position, and what each carries to the neuron.

The pair page reads the stored decomposition (table ``lookups``, :mod:`precompute.heads.lookup`), the
live view gets it from the backend's clean pass (:func:`app.live.passes.live_views`); both show one row
of tokens per prompt coloured by contribution (diverging, centred at 0), attention weight and
contribution in each token's tooltip, the firing position marked. Source position 0 is BOS,
shown as its own chip. Database reads go through :mod:`precompute.heads.reads`.
"""

from __future__ import annotations

from markupsafe import Markup, escape
from pydantic import BaseModel, ConfigDict, Field

from context_lookups.precompute.heads import reads as head_reads
from context_lookups.precompute.heads.lookup import BOS_LABEL, decode, lookup_dict, summary

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
    if run.provenance is not None:
        return {"state": "not_in_data", "reason": "the per-source decomposition needs the model's weights, "
                "which the authors' files do not hold"}
    if not pair.kept:
        return {"state": "not_applicable", "reason": "it is stored for kept pairs only"}
    return {"state": "not_computed", "reason": "this run was stored by a context-lookups without the look-up; "
            "run `lookups precompute` into a new database to get it"}


def pair_lookups(s, run, pair, prompts: list, score: str) -> tuple[dict[int, dict], dict]:
    """The stored look-ups of a pair's ``prompts`` (``Prompt`` rows, both splits) as
    ``{prompt_id: lookup_dict}`` (:func:`precompute.heads.lookup.lookup_dict`; ``total`` and
    ``total_ln`` the head's stored scores), and the page's summary: ``state``, ``units``,
    ``scale`` (the largest |contribution| shown, in the ``score``'s units) and ``groups``, the
    tokens that carry the most over the prompts on which the head is active and inactive
    (:func:`precompute.heads.lookup.summary`)."""
    k, h = pair.head_layer, pair.head
    rows = head_reads.pair_lookups(s, prompt_ids=[p.id for p in prompts], head_layer=k, head=h)
    out: dict[int, dict] = {}
    for p in prompts:
        lk = rows.get(p.id)
        if lk is not None:
            has = k < len(p.attr_raw)
            out[p.id] = lookup_dict(decode(lk.contrib), decode(lk.attention), lk.bias, lk.ln_scale,
                                    p.attr_raw[k][h] if has else None, p.attr_ln[k][h] if has else None)
    key = "contrib_ln" if score == "ln" else "contrib"
    label = f"L{k}H{h}"
    groups = {}
    for name, want in (("active", True), ("inactive", False)):
        got = [(p.tokens, out[p.id][key]) for p in prompts if p.id in out and (label in p.active) == want]
        groups[name] = summary(got)
    return out, {"state": state(run, pair, len(out)), "units": UNITS[score], "score": score,
                 "scale": nice_scale(abs(v) for d in out.values() for v in d[key]), "groups": groups,
                 "n_explain": sum(1 for p in prompts if p.id in out and p.split == "explain"),
                 "n_heldout": sum(1 for p in prompts if p.id in out and p.split == "heldout")}


def summary_tokens(groups: dict, prompts: list, partial: dict) -> dict[str, str]:
    """Each summary token's shown text (escaped bytes of partial UTF-8 characters, from one of
    the prompts' token ids)."""
    ids: dict[str, int] = {}
    for p in prompts:
        for i, t in zip(p.token_ids or [], p.tokens or []):
            ids.setdefault(t, i)
    return {r["token"]: token_escaped(ids[r["token"]], r["token"], partial) if r["token"] in ids else r["token"]
            for g in groups.values() for r in g["rows"]}


def lookup_tokens_html(toks: list[str], lookup: dict, scale: float, *, score: str = "raw",
                       row: str = "contrib", joined: list | None = None) -> Markup:
    """One prompt's tokens coloured by the look-up (BOS first, as its own chip): by each source's
    contribution (``row="contrib"``, diverging on ``[-scale, scale]``) or attention weight
    (``row="attention"``, on [0, 1]); every token's tooltip gives both, and the firing position
    (the last source) is marked. Tokens after it (a live view at an earlier position) are not
    sources and stay white. ``toks``: the escaped token texts without BOS."""
    contrib = lookup["contrib_ln" if score == "ln" else "contrib"]
    att = lookup["attention"]
    p = lookup["position"]
    unit = UNITS[score]
    out = [f'<span class="toks lookup-row" data-row="{row}">']
    for s, text in enumerate([BOS_LABEL] + list(toks)):
        cls = "tok bos" if s == 0 else "tok"
        part = joined[s - 1] if s and joined and s - 1 < len(joined) else None
        if part is not None:
            cls += " bytes"
        elif s and has_hidden(text):
            cls += " ctl"
        if s > p:
            out.append(f'<span class="{cls} after" title="#{s - 1}: after the position read at, not a source">'
                       f'{escape(visible(text))}</span>')
            continue
        if s == p:
            cls += " max"
        c, a = contrib[s], att[s]
        bg = colour(a, 1.0) if row == "attention" else colour(c, scale)
        where = "BOS" if s == 0 else f"#{s - 1}"
        out.append(f'<span class="{cls}" style="background:{bg}" data-src="{s}" '
                   f'title="{where}: contribution {fmt(c, 4)} ({unit}); attention {fmt(a, 4)}'
                   f'{" · firing position" if s == p else ""}">{escape(visible(text)) if s else BOS_LABEL}</span>')
    out.append("</span>")
    return Markup("".join(out))


# --- the JSON twins' shapes, for the OpenAPI schema ----------------------------------------------

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


class LiveLookupJSON(LookupJSON):
    """:class:`LookupJSON` of the live pass's selected head (``&head=L3H7``), at the live
    position (``pos``; default the last token)."""

    head: str = Field(description="the head, L{layer}H{head}")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PairPromptJSON(_Open):
    """A prompt of the pair page (the other fields as on the neuron page)."""

    lookup: LookupJSON | None = Field(description="the pair head's stored look-up at the firing position "
                                      "(null: not stored, see the page's lookup.state)")


class LookupSummaryRowJSON(BaseModel):
    token: str = Field(description="source token string (⟨BOS⟩: position 0)")
    total: float = Field(description="what it carries summed over the group's prompts (units: lookup.units)")
    per_prompt: float = Field(description="total / the group's prompts")
    prompts: int = Field(description="prompts of the group in which it is a source")
    top: int = Field(description="prompts of the group on which it carries the most of any token")


class LookupGroupJSON(BaseModel):
    n_prompts: int
    rows: list[LookupSummaryRowJSON]


class PairLookupJSON(_Open):
    """The pair page's look-up summary over its explain and held-out prompts."""

    state: dict = Field(description="{state: done | not_computed | not_applicable | not_in_data, reason}")
    units: str = Field(description="units of the summary and of the colours: residual-stream units (score=raw) "
                       "or pre-activation units (score=ln)")
    groups: dict[str, LookupGroupJSON] = Field(description="'active' and 'inactive': the tokens that carry "
                                               "the most when the head is active / inactive")


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
