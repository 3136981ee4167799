"""Which neurons fire on a text (docs/method.md §11): one forward pass of the run's model over
the text (the backend's ``layer_acts``, on the live engine's model thread), each analysed neuron's
activation divided by its own maximum over the run's explain documents (``Neuron.max_act``, the
scan's), and the neurons with the largest such relative activation at each position and
overall.

The pass runs on the model thread like every live pass (:mod:`app.live`, :mod:`app.engine`):
queued, batched with other texts for the same model, under the token cap and the queue limit,
cached. What the page needs from the database (the run's analysed neurons, their maxima and
tokens) is read once per run on a page thread (:func:`run_index`) and handed to the job as plain
values.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from context_lookups.precompute.model import LoadedModel, length_batches
from context_lookups.precompute.store.schema import Neuron, Run

PER_POSITION = 5  # neurons listed per token
OVERALL = 20  # neurons listed overall (by their peak over the text)
MAX_FLOATS = 1 << 25  # a batch's activations (tokens x analysed neurons) stay under 128 MB


@dataclass(frozen=True)
class RunIndex:
    """A run's analysed neurons as the fire page needs them (read once per run): column
    ``j * d_mlp + i`` is neuron ``i`` of ``layers[j]``; ``max_act`` its maximum over the explain
    split (NaN when not positive or not stored: it has no relative activation); ``tokens``,
    ``token_ids`` and ``kinds`` per column (None where the neuron is not stored)."""

    slug: str
    layers: tuple[int, ...]
    d_mlp: int
    max_act: torch.Tensor
    tokens: tuple
    token_ids: tuple
    kinds: tuple

    def neuron(self, col: int) -> tuple[int, int]:
        """(layer, neuron) of a column."""
        return self.layers[col // self.d_mlp], col % self.d_mlp


def run_index(session: Session, run: Run) -> RunIndex:
    """Read the run's analysed neurons (every neuron of ``run.layers``: their explain-split
    maxima, tokens and kinds) into a :class:`RunIndex`."""
    layers = tuple(int(x) for x in run.layers)
    n = len(layers) * run.d_mlp
    max_act = torch.full((n,), float("nan"))
    tokens, ids, kinds = [None] * n, [None] * n, [None] * n
    col_of = {lay: j * run.d_mlp for j, lay in enumerate(layers)}
    for layer, neuron, m, tok, tid, kind in session.execute(
            select(Neuron.layer, Neuron.neuron, Neuron.max_act, Neuron.token, Neuron.token_id, Neuron.kind)
            .where(Neuron.run_id == run.id)):
        if layer not in col_of or not 0 <= neuron < run.d_mlp:
            continue
        c = col_of[layer] + neuron
        if m is not None and m > 0 and math.isfinite(m):
            max_act[c] = m
        tokens[c], ids[c], kinds[c] = tok, tid, kind
    return RunIndex(run.slug, layers, run.d_mlp, max_act, tuple(tokens), tuple(ids), tuple(kinds))


@dataclass(eq=False)
class FireJob:
    """One text for the model thread (``kind`` groups it apart from the neuron page's jobs)."""

    key: tuple
    source: str
    prompt: str
    index: RunIndex
    future: Future = field(default_factory=Future)
    ids: list[int] = field(default_factory=list)
    kind: str = "fire"


def fire_views(model: LoadedModel, rows: list[list[int]], index: RunIndex, *,
               per_position: int = PER_POSITION, overall: int = OVERALL) -> list[dict]:
    """Which analysed neurons fire on each row, relative to their own maximum (docs/method.md
    §11). One forward pass (``layer_acts``) over the rows (BOS at index 0).

    Returns per row: ``token_ids`` (without BOS), ``positions``: per token (0-based, BOS
    excluded) the ``per_position`` columns with the largest relative activation
    ``[[col, rel, act], ...]``, and ``overall``: the ``overall`` columns with the largest peak
    over the text, ``{col, rel, act, pos, rels}`` (``rels``: its relative activation at every
    token). Columns without a maximum are left out.

    Raises:
        ValueError: an empty row.
    """
    acts, lengths = model.backend.layer_acts(rows, index.layers)
    scale = index.max_act.to(acts.device)
    ok = ~torch.isnan(scale)
    rel_all = torch.where(ok, acts / torch.where(ok, scale, 1.0), float("-inf"))
    n_ok = int(ok.sum())
    out = []
    for j, row in enumerate(rows):
        n = int(lengths[j])
        rel, act = rel_all[j, 1:n], acts[j, 1:n]  # [tokens, columns]
        k = min(per_position, n_ok)
        v, c = rel.topk(k, dim=-1) if k else (rel[:, :0], rel[:, :0].long())
        positions = [[[int(ci), float(vi), float(act[p, ci])] for vi, ci in zip(v[p].tolist(), c[p].tolist())]
                     for p in range(n - 1)]
        peak, where = rel.max(0)  # every row has a token after BOS (checked by the caller)
        best = peak.topk(min(overall, n_ok)).indices.tolist()
        out.append({"token_ids": list(row[1:]), "positions": positions,
                    "overall": [{"col": ci, "rel": float(peak[ci]), "act": float(act[int(where[ci]), ci]),
                                 "pos": int(where[ci]), "rels": rel[:, ci].tolist()} for ci in best]})
    return out


def run_fire_batch(live, model: LoadedModel, jobs: list[FireJob], check_ids) -> None:
    """The model thread's part (:meth:`app.live.Live._run_batch`): tokenize and check the jobs'
    texts (``check_ids(ids) -> error or None``: the token cap), then :func:`fire_views` in
    length-sorted batches whose activations stay under :data:`MAX_FLOATS`; settle each job."""
    enc = model.tokenizer([j.prompt for j in jobs], add_special_tokens=False)["input_ids"]
    ok = []
    for j, ids in zip(jobs, enc):
        err = check_ids(list(ids))
        if err is not None:
            live._settle(j, error=err)
        else:
            j.ids = list(ids)
            ok.append(j)
    if not ok:
        return
    from .service import _token_str

    by_run: dict[str, list[FireJob]] = {}
    for j in ok:  # one model may serve several runs (other analysed layers)
        by_run.setdefault(j.index.slug, []).append(j)
    for group in by_run.values():
        index = group[0].index
        n_cols = len(index.layers) * index.d_mlp
        max_tokens = max(1, min(live.settings.max_batch_tokens, MAX_FLOATS // max(1, n_cols)))
        for idx in length_batches([len(j.ids) + 1 for j in group], max_tokens, live.settings.max_batch):
            batch = [group[i] for i in idx]
            try:
                outs = fire_views(model, [[model.bos_token_id] + j.ids for j in batch], index)
            except Exception as exc:  # noqa: BLE001 - every request of this sub-batch gets the error
                for j in batch:
                    live._settle(j, error=exc)
                continue
            for j, res in zip(batch, outs):
                res["tokens"] = [_token_str(model.tokenizer, i) for i in res["token_ids"]]
                res["prompt"] = j.prompt
                live._settle(j, result=res)


# --- the page ----------------------------------------------------------------------------------

def pick_run(runs: list[Run], live, slug: str | None) -> Run | None:
    """The run the page shows: ``slug`` (NotFound if unknown, raised by the caller's lookup),
    else the first run whose model is on this server, else the first run."""
    if slug is not None:
        return next((r for r in runs if r.slug == slug), None)
    return next((r for r in runs if live.unavailable(r) is None), runs[0] if runs else None)


def shown(res: dict, index: RunIndex, partial: dict) -> dict:
    """A result of :func:`fire_views` as the page and its JSON twin show it: each listed
    neuron as ``{layer, neuron, label, kind, token, token_escaped, rel, act, url}``, the text's
    tokens escaped (``app.present.token_fields``), and per token its strongest relative
    activation (``peak``) for the colours, and the lowest relative activation shown (``rel_lo``,
    at most 0: the colour legend's low end)."""
    from ..pages import urls
    from ..pages.present import token_escaped, token_fields

    def neuron(col: int, rel: float, act: float) -> dict:
        layer, i = index.neuron(col)
        tid, tok = index.token_ids[col], index.tokens[col]
        return {"layer": layer, "neuron": i, "label": f"L{layer}N{i}", "kind": index.kinds[col],
                "token": tok, "token_escaped": token_escaped(tid, tok, partial) if tok is not None else None,
                "rel": rel, "act": act, "url": urls.neuron(index.slug, layer, i)}

    positions = [{"pos": p, "top": [neuron(c, r, a) for c, r, a in top]} for p, top in enumerate(res["positions"])]
    overall = [{**neuron(o["col"], o["rel"], o["act"]), "pos": o["pos"], "rels": o["rels"]} for o in res["overall"]]
    peak = [p["top"][0]["rel"] if p["top"] else None for p in positions]
    return {"prompt": res["prompt"], "n_tokens": len(res["token_ids"]), "token_ids": res["token_ids"],
            "tokens": res["tokens"], **token_fields(res["token_ids"], res["tokens"], partial),
            "peak": peak, "positions": positions, "overall": overall,
            "rel_lo": min([0.0] + [v for v in peak if v is not None] + [v for o in overall for v in o["rels"]])}
