"""Next-token neurons: congruence ``W_out · W_U`` and selection (paper §4.1, docs/method.md §1)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from context_lookups.precompute.core.errors import BadSettings


@dataclass
class NeuronInfo:
    """One neuron's congruence summary. ``layer``/``neuron`` are 0-based; ``congruence`` is a
    raw dot product in (residual stream × unembedding) units. ``top_*``: its most congruent
    tokens, largest first; ``bottom_*``: its most negative ones, lowest first."""

    layer: int
    neuron: int
    token_id: int
    congruence: float
    top_token_ids: list[int]
    top_congruences: list[float]
    bottom_token_ids: list[int] = field(default_factory=list)
    bottom_congruences: list[float] = field(default_factory=list)


def congruence(W_out: Float[Tensor, "d_mlp d_model"],
               W_U: Float[Tensor, "d_model d_vocab"]) -> Float[Tensor, "d_mlp d_vocab"]:
    """Congruence ``s[i, t] = W_out[i, :] · W_U[:, t]`` of every neuron of one layer with every
    token (docs/method.md §1: a raw dot product, not a cosine), from processed weights."""
    return W_out @ W_U


def default_layers(n_layers: int) -> list[int]:
    """The last ``min(3, n_layers - 1)`` layers (docs/method.md §1 default), 0-based, ascending."""
    k = max(1, min(3, n_layers - 1))
    return list(range(n_layers - k, n_layers))


def check_layers(layers: list[int], n_layers: int) -> list[int]:
    """Sorted unique layers; raises BadSettings naming the valid range if any is out of it."""
    bad = [n for n in layers if not 0 <= n < n_layers]
    if bad or not layers:
        raise BadSettings(f"Layer(s) {bad or layers} out of range: this model has MLP layers "
                          f"0..{n_layers - 1}. Change --layers.")
    return sorted(set(layers))


def check_neuron_counts(n_per_layer: int, n_random: int | None, d_mlp: int) -> None:
    """The next-token and random neurons asked for per layer fit in the layer's ``d_mlp``
    neurons (the random ones are drawn from those not picked as next-token neurons).

    Raises:
        BadSettings: they do not; the message names the model's ``d_mlp``.
    """
    n_rand = n_random or n_per_layer
    if n_per_layer + n_rand > d_mlp:
        raise BadSettings(f"--n-per-layer {n_per_layer} next-token plus {n_rand} random neurons "
                          f"(--n-random, default: as many) exceed the {d_mlp} neurons (d_mlp) per "
                          f"layer of this model: choose values that add up to at most {d_mlp}.")


def token_allowed(text: str, *, reject: set[str], reject_numeric: bool) -> bool:
    """The paper's filter: the token starts with a space, is longer than two characters, is not
    on the reject list, and (optionally) is not a number or punctuation only."""
    if not text.startswith(" ") or len(text) <= 2 or text in reject or text.strip() in reject:
        return False
    if "\ufffd" in text:  # a partial UTF-8 byte sequence
        return False
    return not (reject_numeric and not re.search(r"[A-Za-z]", text))


def layer_congruences(W_out: Float[Tensor, "d_mlp d_model"], W_U: Float[Tensor, "d_model d_vocab"],
                      layer: int, *, top_n: int = 10, chunk: int = 512) -> list[NeuronInfo]:
    """Every neuron of one layer: its token (argmax congruence), congruence (max), its
    ``top_n`` most congruent tokens and its ``top_n`` most negative ones (the tokens whose
    logits its output lowers most; docs/method.md §1). Computed in chunks of neurons so memory
    stays ``chunk × d_vocab`` floats."""
    out: list[NeuronInfo] = []
    with torch.no_grad():
        for start in range(0, W_out.shape[0], chunk):
            s = congruence(W_out[start:start + chunk].float(), W_U.float())
            vals, ids = s.topk(top_n, dim=-1)
            lows, low_ids = s.topk(top_n, dim=-1, largest=False)
            for j in range(s.shape[0]):
                out.append(NeuronInfo(layer, start + j, int(ids[j, 0]), float(vals[j, 0]),
                                      ids[j].tolist(), [round(v, 4) for v in vals[j].tolist()],
                                      low_ids[j].tolist(), [round(v, 4) for v in lows[j].tolist()]))
    return out


def select_next_token_neurons(infos: list[NeuronInfo], token_text: dict[int, str], *, n: int,
                              reject: set[str], reject_numeric: bool) -> list[NeuronInfo]:
    """Top ``n`` neurons of one layer by congruence whose token passes :func:`token_allowed`
    (paper §4.1). Ties break by neuron index. May return fewer than ``n`` if few tokens pass."""
    ranked = sorted(infos, key=lambda x: (-x.congruence, x.neuron))
    return [x for x in ranked if token_allowed(token_text[x.token_id], reject=reject,
                                               reject_numeric=reject_numeric)][:n]


def sample_random_neurons(d_mlp: int, n: int, *, exclude: set[int], seed: int,
                          layer: int) -> list[int]:
    """``n`` neuron indices drawn uniformly without replacement from ``0..d_mlp-1`` minus
    ``exclude`` (the layer's next-token neurons), seeded per (seed, layer). Every index is in
    range (the authors' sampler could index one past the end)."""
    pool = np.array(sorted(set(range(d_mlp)) - exclude))
    rng = np.random.default_rng([seed, layer])
    return sorted(int(i) for i in rng.choice(pool, size=min(n, len(pool)), replace=False))
