"""The live views of a batch of prompts: the model backend's clean (and ablated) passes as the
dicts the neuron page renders, with the checks the model thread makes before running them
(paper §4.3, §5.4; docs/method.md §3 for the look-up), and the one loop every batch of live
jobs goes through (:func:`serve_batch`: tokenize, check, length-batch, settle). Run on the model
thread of the live model process only (:class:`app.live.host.ModelHost`); nothing here
re-derives the science, which is the backend's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from context_lookups.precompute.core.errors import BadLiveInput, LookupsError, PromptTooLong
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.heads.attribution import (
    active_heads_of_run,
    head_label,
    scored_layers,
    upstream_attn_layers,
)
from context_lookups.precompute.heads.knockout import stored_rows as knockout_rows
from context_lookups.precompute.heads.lookup import BOS_LABEL, SINK, SINK_LABEL, lookup_dict
from context_lookups.precompute.model import LoadedModel, NeuronPass, length_batches


@dataclass(frozen=True)
class Target:
    """What a live view needs to know about its run and neuron (plain values: no database row
    crosses to the model thread). ``rules``: the run's settings (active-head rule, heads_upto)."""

    slug: str
    layer: int
    neuron: int
    token_id: int
    token: str
    rules: Settings


def check_ids(ids: list[int], pos: int | None, cap: int, token_cap: int) -> LookupsError | None:
    """Why a tokenized prompt cannot run (None when it can): more than ``cap`` tokens (the
    server's ``token_cap``, or the model's context length minus BOS when smaller), none, or a
    position ``pos`` (0-based, BOS excluded) outside it."""
    if len(ids) > cap:
        why = "" if cap == token_cap else " (the model's context length, minus BOS)"
        return PromptTooLong(f"The prompt has {len(ids)} tokens; the limit of this server is "
                             f"{cap} tokens{why}. Shorten it.")
    if not ids:
        return BadLiveInput("The prompt is empty after tokenization.")
    if pos is not None and not 0 <= pos < len(ids):
        return BadLiveInput(f"pos {pos} out of range: the prompt has {len(ids)} tokens "
                            f"(positions 0..{len(ids) - 1}).")
    return None


def check_head(model: LoadedModel, head: tuple[int, int] | None, target: Target) -> LookupsError | None:
    """Why ``head``'s look-up cannot be shown for ``target``'s neuron (None when it can): a
    look-up head must write to the residual stream before the neuron's MLP reads it
    (:func:`precompute.heads.attribution.upstream_attn_layers`)."""
    if head is None:
        return None
    n = upstream_attn_layers(model, target.layer)
    if head[0] >= n:
        return BadLiveInput(f"Head {head_label(*head)} is not upstream of neuron L{target.layer}N"
                            f"{target.neuron}: its look-up needs a head of layers 0..{n - 1}.")
    return None


def check_source(src: int, pos: int | None, n_ids: int) -> LookupsError | None:
    """Why source ``src`` cannot be knocked out at ``pos`` (0-based among the prompt's ``n_ids``
    tokens, BOS excluded; None: the last): a source is a position ``0..pos + 1`` of the look-up
    (0 = BOS, the attention sink)."""
    p = (n_ids - 1 if pos is None else pos) + 1
    if not 0 <= src <= p:
        return BadLiveInput(f"src {src} out of range: the look-up at #{p - 1} has sources 0..{p} "
                            f"(0 = BOS, s = the prompt's token s - 1).")
    return None


def serve_batch(model: LoadedModel, jobs: Sequence, *, check: Callable, compute: Callable, settle: Callable,
                max_tokens: int, max_rows: int, extra: int = 0) -> None:
    """The one way a batch of live jobs (each with ``prompt``, ``ids`` and a ``future``) is served
    on the model thread: tokenize the prompts (no special tokens), check each (``check(job,
    ids)``: an error or None; a job that fails is settled with its error), then run the others
    through ``compute(jobs) -> results`` in length-sorted batches of at most ``max_rows`` rows and
    ``max_tokens`` padded tokens (a row counts ``len(ids) + extra`` tokens), settling each job
    with its result: ``settle(job, result=...)`` or ``settle(job, error=...)`` (every job of a
    batch gets the error its computation raised)."""
    enc = model.tokenizer([j.prompt for j in jobs], add_special_tokens=False)["input_ids"]
    ok = []
    for j, ids in zip(jobs, enc, strict=True):
        err = check(j, list(ids))
        if err is not None:
            settle(j, error=err)
        else:
            j.ids = list(ids)
            ok.append(j)
    for idx in length_batches([len(j.ids) + extra for j in ok], max_tokens, max_rows):
        batch = [ok[i] for i in idx]
        try:
            outs = compute(batch)
        except Exception as exc:  # every request of this sub-batch gets the error
            for j in batch:
                settle(j, error=exc)
            continue
        for j, out in zip(batch, outs, strict=True):
            settle(j, result=out)


def live_views(model: LoadedModel, rows: list[list[int]], pos: list[int], targets: list[Target],
               heads: list[tuple[tuple[int, int], ...]],
               lookups: list[tuple[int, int] | None] | None = None) -> list[dict]:
    """The live views of a batch of prompts, each for its own neuron (paper §4.3, §5.4).

    Args:
        rows: token rows with BOS at index 0.
        pos: per row, the target position among the prompt's tokens (BOS excluded).
        targets: per row, the run and neuron.
        heads: per row, the heads to zero-ablate (may be empty).
        lookups: per row, the upstream head whose look-up to return, or None.

    Returns:
        Per row, the dict the neuron page renders: ``acts`` (every prompt token), ``act``,
        ``pre``, ``attr_raw``/``attr_ln`` ``[n_attn_layers][n_heads]``, ``active`` heads (the
        run's rule on the scored heads), ``prob`` of the neuron's token and ``top5`` at the
        target position; ``ablation`` the same under the ablated heads and the ``drop``;
        ``lookup`` the look-up head's per-source decomposition in the clean pass
        (:func:`precompute.heads.lookup.lookup_dict` with ``head``; sources ``0..pos + 1``, BOS first)
        or None. One forward pass over all rows (decomposing the layers of the heads asked
        for), and a second over the rows with heads ablated.

    Raises:
        ValueError: a layer, neuron, token, head or position out of range.
    """
    positions = [p + 1 for p in pos]  # BOS at 0
    abl = [j for j, hs in enumerate(heads) if hs]
    tgt = [(t.layer, t.neuron, t.token_id) for t in targets]
    lookups = lookups or [None] * len(rows)
    layers = sorted({h[0] for h in lookups if h is not None})  # the layers whose look-ups are asked for
    c = model.backend.clean_view(rows, tgt, positions, lookup=layers)
    clean = [_view(c, j) for j in range(len(rows))]
    ablated = {}
    if abl:
        a = model.backend.ablated_view([rows[j] for j in abl], [tgt[j] for j in abl],
                                       [list(heads[j]) for j in abl], [positions[j] for j in abl])
        ablated = {j: _view(a, q) for q, j in enumerate(abl)}
    outs = []
    for j, (x, t) in enumerate(zip(rows, targets, strict=True)):
        ids = x[1:]
        v = clean[j]
        n_scored = scored_layers(t.layer, t.rules.heads_upto, upstream_attn_layers(model, t.layer))
        out = {"n_tokens": len(ids), "pos": pos[j], "token_ids": ids,
               "tokens": [token_str(model.tokenizer, i) for i in ids], "acts": v["acts"][1:], "act": v["act"],
               "pre": v["pre"], "attr_raw": v["raw"], "attr_ln": v["ln"], "n_scored": n_scored,
               "active": _active(t.rules, v["raw"], n_scored, model.n_heads),
               "token_id": t.token_id, "token": t.token, "prob": v["prob"],
               "top5": _top(model, v["top"]), "ablation": None,
               "lookup": _lookup(c, j, lookups[j], positions[j]) if lookups[j] is not None else None}
        if j in ablated:
            a = ablated[j]
            out["ablation"] = {
                "heads": [head_label(k, h) for k, h in heads[j]], "method": "zero",
                "act_clean": v["act"], "act_ablated": a["act"], "prob_clean": v["prob"],
                "prob_ablated": a["prob"], "drop": v["prob"] - a["prob"], "acts": a["acts"][1:],
                "attr_raw": a["raw"], "attr_ln": a["ln"],
                "active": _active(t.rules, a["raw"], n_scored, model.n_heads), "top5": _top(model, a["top"])}
        outs.append(out)
    return outs


def live_knockouts(model: LoadedModel, rows: list[list[int]], pos: list[int], targets: list[Target],
                   heads: list[tuple[int, int]], sources: list[int]) -> list[dict]:
    """The live knockout of one source per row (docs/method.md §3, "Attention knockout"): head
    ``heads[j]``'s read of source ``sources[j]`` at position ``pos[j]`` (among the prompt's tokens,
    BOS excluded) removed, renormalised, the model re-run — the backend's :meth:`knockout
    <precompute.model.backend.Backend.knockout>` as the job stores it
    (:func:`precompute.heads.knockout.stored_rows`, so the fields equal the stored ones).

    Returns per row: ``head``, ``position`` (among the sources, BOS = 0), ``sources``, ``sink``,
    ``label``, ``text`` (the source's token, ⟨BOS⟩ for the sink), ``contrib`` / ``contrib_ln``
    (its look-up term, raw / pre-activation units), ``attention``, the effects ``direct_pre``,
    ``direct_act``, ``total_pre``, ``total_act``, ``total_prob`` (None where undefined), and the
    clean ``act``, ``pre``, ``prob_clean``, ``token``, ``token_id``.

    Raises:
        ValueError: a layer, neuron, token, head, position or source out of range.
    """
    positions = [p + 1 for p in pos]
    kos = model.backend.knockout(rows, [(t.layer, t.neuron, t.token_id) for t in targets], heads,
                                 [[(int(s),)] for s in sources], positions)
    out = []
    for x, t, ko, s in zip(rows, targets, kos, sources, strict=True):
        row = knockout_rows(ko)[0]
        sink = (int(s),) == SINK
        out.append({"head": head_label(*ko.head), "position": ko.position, "sources": row["sources"],
                    "sink": sink, "label": SINK_LABEL if sink else f"#{s - 1}",
                    "text": BOS_LABEL if sink else token_str(model.tokenizer, x[s]),
                    "contrib": row["contrib"], "contrib_ln": row["contrib"] / ko.scale,
                    "attention": float(ko.attention[s]),
                    **{k: row[k] for k in ("direct_pre", "direct_act", "total_pre", "total_act", "total_prob",
                                           "prob_clean")},
                    "act": ko.act, "pre": ko.pre, "token_id": t.token_id, "token": t.token})
    return out


def _view(p: NeuronPass, j: int) -> dict:
    """Row ``j`` of a backend's :class:`~precompute.model.NeuronPass` as plain Python values."""
    n = p.n_attn[j]
    return {"acts": p.acts[j], "act": float(p.act[j]), "pre": float(p.pre[j]),
            "raw": p.raw[j, :n].tolist(), "ln": p.ln[j, :n].tolist(),
            "prob": float(p.prob[j]), "top": p.top[j]}


def _lookup(p: NeuronPass, j: int, head: tuple[int, int], position: int) -> dict:
    """Row ``j``'s look-up of ``head`` (sources ``0..position``) as the view's ``lookup``."""
    k, h = head
    t = p.lookup
    n = position + 1
    return {"head": head_label(k, h), **lookup_dict(
        t.contrib[j, k, h, :n].tolist(), t.attention[j, k, h, :n].tolist(), float(t.bias[j, k, h]),
        float(t.scale[j]), float(p.raw[j, k, h]), float(p.ln[j, k, h]))}


def _active(rs: Settings, raw: list[list[float]], n_scored: int, n_heads: int) -> list[str]:
    import torch

    mask = active_heads_of_run(torch.tensor(raw[:n_scored]).flatten(), rs)
    return [head_label(k, h) for k in range(n_scored) for h in range(n_heads) if mask[k * n_heads + h]]


def _top(model: LoadedModel, top: list[tuple[int, float]]) -> list[list]:
    return [[int(i), token_str(model.tokenizer, int(i)), float(v)] for i, v in top]


WARM_TEXT = ("The council met in the old hall by the river and argued about the harvest, the "
              "roads and the taxes, while the children played outside in the rain.")


@lru_cache(maxsize=1 << 17)
def token_str(tokenizer, token_id: int) -> str:
    """``LoadedModel.token_str``, cached: a token's text never changes, and decoding each token
    of each live prompt one by one was a visible part of a batched pass."""
    return tokenizer.decode([int(token_id)])
