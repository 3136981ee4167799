"""Which neurons fire on a text (docs/method.md §11), the live half: one forward pass of the run's
model over the text (the backend's ``layer_acts``, on the live engine's model thread), each
analysed neuron's activation divided by its own maximum over the run's explain documents
(``Neuron.max_act``, the scan's), and the neurons with the largest such relative activation at
each position and overall.

The pass runs on the model thread like every live pass (:mod:`app.live.service`,
:mod:`app.live.engine`): queued, batched with other texts for the same model, under the token
cap and the queue limit, cached. What it needs of the run (its analysed neurons and their
maxima) comes as plain values (:class:`FireColumns`), read by the page side
(:mod:`app.pages.fire`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from context_lookups.precompute.model import LoadedModel

from .passes import serve_batch, token_str

PER_POSITION = 5  # neurons listed per token
OVERALL = 20  # neurons listed overall (by their peak over the text)
MAX_FLOATS = 1 << 25  # a batch's activations (tokens x analysed neurons) stay under 128 MB


@dataclass(frozen=True)
class FireColumns:
    """A run's analysed neurons as the pass's columns: column ``j * d_mlp + i`` is neuron ``i``
    of ``layers[j]``; ``max_act`` its maximum over the explain split (NaN where it has none: no
    relative activation). ``slug`` names the run (texts of several runs may share a model)."""

    slug: str
    layers: tuple[int, ...]
    d_mlp: int
    max_act: torch.Tensor

    def __reduce__(self):
        """Pickled as plain values (the maxima as a NumPy array) to cross to the live model
        process, never as a tensor in shared memory."""
        return _columns, (self.slug, self.layers, self.d_mlp, self.max_act.cpu().numpy())


def _columns(slug: str, layers: tuple[int, ...], d_mlp: int, max_act) -> FireColumns:
    return FireColumns(slug, layers, d_mlp, torch.from_numpy(max_act))


@dataclass(eq=False)
class FireJob:
    """One text for the live model process (plain values; ``kind`` groups it apart from the
    neuron page's jobs, ``id`` names it for the web process)."""

    id: int
    source: str
    prompt: str
    columns: FireColumns
    ids: list[int] = field(default_factory=list)
    kind: str = "fire"


def fire_views(model: LoadedModel, rows: list[list[int]], index: FireColumns, *,
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
        positions = [[[int(ci), float(vi), float(act[p, ci])]
                      for vi, ci in zip(v[p].tolist(), c[p].tolist(), strict=True)] for p in range(n - 1)]
        peak, where = rel.max(0)  # every row has a token after BOS (checked by the caller)
        best = peak.topk(min(overall, n_ok)).indices.tolist()
        out.append({"token_ids": list(row[1:]), "positions": positions,
                    "overall": [{"col": ci, "rel": float(peak[ci]), "act": float(act[int(where[ci]), ci]),
                                 "pos": int(where[ci]), "rels": rel[:, ci].tolist()} for ci in best]})
    return out


def run_fire_batch(model: LoadedModel, jobs: list[FireJob], *, check_ids: Callable, settle: Callable,
                   max_batch_tokens: int, max_batch: int) -> None:
    """The model thread's part (:meth:`app.live.host.ModelHost.run_batch`): the jobs of each run
    through :func:`~app.live.passes.serve_batch` (``check_ids(ids) -> error or None``: the token
    cap), :func:`fire_views` in length-sorted batches whose activations stay under
    :data:`MAX_FLOATS`; each job settled with its result (``token_ids``, ``positions``,
    ``overall``, ``tokens``, ``prompt``) or its error."""
    by_run: dict[str, list[FireJob]] = {}
    for j in jobs:  # one model may serve several runs (other analysed layers)
        by_run.setdefault(j.columns.slug, []).append(j)
    for group in by_run.values():
        columns = group[0].columns
        n_cols = len(columns.layers) * columns.d_mlp

        def compute(batch: list[FireJob], columns=columns) -> list[dict]:
            outs = fire_views(model, [[model.bos_token_id] + j.ids for j in batch], columns)
            for j, res in zip(batch, outs, strict=True):
                res["tokens"] = [token_str(model.tokenizer, i) for i in res["token_ids"]]
                res["prompt"] = j.prompt
            return outs

        serve_batch(model, group, check=lambda j, ids: check_ids(ids), compute=compute, settle=settle,
                    max_tokens=max(1, min(max_batch_tokens, MAX_FLOATS // max(1, n_cols))),
                    max_rows=max_batch, extra=1)
