"""The live views of a batch of prompts: the model backend's clean (and ablated) passes as the
dicts the neuron page renders, with the checks the model thread makes before running them
(paper §4.3, §5.4; docs/method.md §3 for the look-up). Run on the model thread only
(:class:`app.live.Live`); nothing here re-derives the science, which is the backend's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from context_lookups.precompute.core.errors import LookupsError, PromptTooLong
from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.heads.attribution import (
    active_heads_of_run,
    head_label,
    scored_layers,
    upstream_attn_layers,
)
from context_lookups.precompute.heads.lookup import lookup_dict
from context_lookups.precompute.model import LoadedModel, NeuronPass

if TYPE_CHECKING:
    from .service import LiveJob, Target


class BadLiveInput(LookupsError):
    """A live request the server cannot run: empty prompt, malformed head list, bad position."""


def _check_ids(ids: list[int], pos: int | None, cap: int, token_cap: int) -> LookupsError | None:
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


def _check_head(model: LoadedModel, job: LiveJob) -> LookupsError | None:
    """A look-up head must write to the residual stream before the neuron's MLP reads it."""
    if job.head is None:
        return None
    n = upstream_attn_layers(model, job.target.layer)
    if job.head[0] >= n:
        return BadLiveInput(f"Head {head_label(*job.head)} is not upstream of neuron L{job.target.layer}N"
                            f"{job.target.neuron}: its look-up needs a head of layers 0..{n - 1}.")
    return None


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
        (:func:`precompute.lookup.lookup_dict` with ``head``; sources ``0..pos + 1``, BOS first)
        or None. One forward pass over all rows (decomposing the layers of the heads asked
        for), and a second over the rows with heads ablated.

    Raises:
        ValueError: a layer, neuron, token, head or position out of range.
    """
    positions = [p + 1 for p in pos]  # BOS at 0
    abl = [j for j, hs in enumerate(heads) if hs]
    tgt = [(t.layer, t.neuron, t.token_id) for t in targets]
    lookups = lookups or [None] * len(rows)
    c = model.backend.clean_view(rows, tgt, positions, lookup=sorted({h[0] for h in lookups if h is not None}))
    clean = [_view(c, j) for j in range(len(rows))]
    ablated = {}
    if abl:
        a = model.backend.ablated_view([rows[j] for j in abl], [tgt[j] for j in abl],
                                       [list(heads[j]) for j in abl], [positions[j] for j in abl])
        ablated = {j: _view(a, q) for q, j in enumerate(abl)}
    outs = []
    for j, (x, t) in enumerate(zip(rows, targets)):
        ids = x[1:]
        v = clean[j]
        n_scored = scored_layers(t.layer, t.rules.heads_upto, upstream_attn_layers(model, t.layer))
        out = {"n_tokens": len(ids), "pos": pos[j], "token_ids": ids,
               "tokens": [_token_str(model.tokenizer, i) for i in ids], "acts": v["acts"][1:], "act": v["act"],
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
    return [[int(i), _token_str(model.tokenizer, int(i)), float(v)] for i, v in top]


_WARM_TEXT = ("The council met in the old hall by the river and argued about the harvest, the "
              "roads and the taxes, while the children played outside in the rain.")


@lru_cache(maxsize=1 << 17)
def _token_str(tokenizer, token_id: int) -> str:
    """``LoadedModel.token_str``, cached: a token's text never changes, and decoding each token
    of each live prompt one by one was a visible part of a batched pass."""
    return tokenizer.decode([int(token_id)])
