"""Step 1 of the job, next-token neurons (paper §4.1, docs/method.md §1): the congruence of every
neuron of the analysed layers, stored as the ``neurons`` table with each neuron's kind
(next-token, random or other), in one unit of work."""

from __future__ import annotations

from sqlalchemy import insert

from context_lookups.precompute.core.settings import Settings
from context_lookups.precompute.model import LoadedModel
from context_lookups.precompute.neurons.congruence import (
    layer_congruences,
    sample_random_neurons,
    select_next_token_neurons,
)
from context_lookups.precompute.store.runs import unit_of_work
from context_lookups.precompute.store.schema import Neuron


def select_neurons(s, run_id: int, model: LoadedModel, layers: list[int], settings: Settings) -> None:
    """§1: congruence of every neuron of ``layers``; mark next-token and random neurons (unit of
    work ``neurons``: one :class:`~precompute.store.schema.Neuron` row per neuron of ``layers``,
    its top and bottom congruent tokens, its kind and its rank by congruence in its layer)."""
    with unit_of_work(s, run_id, "neurons") as st:
        W_U = model.backend.W_U()
        vocab = {i: model.token_str(i) for i in range(W_U.shape[1])}
        reject = set(settings.reject_tokens)
        rows = []
        for layer in layers:
            infos = layer_congruences(model.backend.W_out(layer), W_U, layer)
            chosen = select_next_token_neurons(infos, vocab, n=settings.n_per_layer, reject=reject,
                                               reject_numeric=settings.reject_numeric)
            rank = {x.neuron: r for r, x in enumerate(sorted(infos, key=lambda x: (-x.congruence, x.neuron)))}
            nt = {x.neuron for x in chosen}
            rnd = set(sample_random_neurons(model.d_mlp, settings.n_random or settings.n_per_layer,
                                            exclude=nt, seed=settings.seed, layer=layer))
            for x in infos:
                kind = "next_token" if x.neuron in nt else "random" if x.neuron in rnd else "other"
                rows.append(dict(run_id=run_id, layer=layer, neuron=x.neuron, kind=kind,
                                 rank=rank[x.neuron], token_id=x.token_id, token=vocab[x.token_id],
                                 congruence=x.congruence,
                                 top_tokens=[[t, vocab[t], c] for t, c in
                                             zip(x.top_token_ids, x.top_congruences, strict=True)],
                                 bottom_tokens=[[t, vocab[t], c] for t, c in
                                                zip(x.bottom_token_ids, x.bottom_congruences, strict=True)]))
            st[f"L{layer}"] = len(nt)
        s.execute(insert(Neuron), rows)
