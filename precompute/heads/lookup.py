"""The context look-up as stored and shown (docs/method.md §3, "Per-source decomposition"): a
head's raw attribution at the firing position split by the source token it reads from, with its
attention weights. The model work is the backend's (``neuron_pass(..., lookup=True)``,
:mod:`precompute.model.sources`); this module turns one row of it into database fields, reads
them back, sets the attention sink apart from the context sources (:func:`split_sink`,
docs/method.md §3, "The attention sink"), and sums the context's contributions by token string
for the pair page and the baseline explainer.

Positions: a prompt's sources are ``s = 0..p`` with BOS at 0 and the prompt's token ``s - 1``
(``Prompt.tokens``, which has no BOS) at ``s``; ``p`` is the firing position, the prompt's last
token. Vectors are stored as little-endian float32 bytes (4 bytes a value).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from context_lookups.precompute.model import SINK, rank_context

__all__ = ["BOS_LABEL", "SINK", "SINK_LABEL", "SinkSplit", "carriers", "decode", "encode", "lookup_dict",
           "split_sink", "stored_rows", "summary"]

BOS_LABEL = "\u27e8BOS\u27e9"  # ⟨BOS⟩: source position 0 (no token of a BPE vocabulary)
SINK_LABEL = "attention sink"  # the sink's row in summaries and on the pages


def encode(values) -> bytes:
    """``values`` (a float sequence or tensor) as little-endian float32 bytes."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype="<f4").tobytes()


def decode(blob: bytes) -> list[float]:
    """The floats of :func:`encode` (each exactly the stored float32, as a Python float).

    Raises:
        ValueError: ``blob``'s length is not a multiple of 4.
    """
    if len(blob) % 4:
        raise ValueError(f"A stored look-up vector has {len(blob)} bytes, not a multiple of 4 (float32).")
    return np.frombuffer(bytes(blob), dtype="<f4").astype(float).tolist()


def stored_rows(terms, heads: Iterable[tuple[int, int]]) -> list[dict]:
    """The ``lookups`` fields (without ``prompt_id``) of ``heads`` from one prompt's
    decomposition (``terms``: a one-row :class:`~precompute.model.sources.SourceTerms` cut to
    its sources, as ``NeuronPass.row`` gives it)."""
    scale = float(terms.scale[0])
    return [{"head_layer": k, "head": h, "contrib": encode(terms.contrib[0, k, h]),
             "attention": encode(terms.attention[0, k, h]), "bias": float(terms.bias[0, k, h]),
             "ln_scale": scale}
            for k, h in heads]


@dataclass(frozen=True)
class SinkSplit:
    """A look-up split into its attention sink and its context sources (docs/method.md §3,
    "The attention sink"). Contributions keep the units they were given (raw or LN-aware).

    ``sink``: the sink positions (BOS: ``(0,)``); ``sink_contrib``/``sink_attention``: their
    summed term and attention weight. ``positions``: the context sources (every other position),
    ranked by their share of the non-sink total, largest first (ties by position;
    :func:`precompute.model.rank_context`), with their ``contrib``, ``attention`` and ``share =
    contrib / Σ_context |contrib|`` (in ``[-1, 1]``: terms of opposite signs do not cancel in the
    denominator; None when every context term is 0). ``context_total``: ``Σ_context contrib``
    (signed); ``context_abs``: ``Σ_context |contrib|``.
    """

    sink: tuple[int, ...]
    sink_contrib: float
    sink_attention: float
    positions: list[int]
    contrib: list[float]
    attention: list[float]
    share: list[float] | None
    context_total: float
    context_abs: float

    def as_dict(self) -> dict:
        """The ``sink`` object of a look-up's JSON (beside ``contrib``, ``attention``, ``bias``,
        ``total``) and the ranked context sources."""
        return {"sink": {"positions": list(self.sink), "contrib": self.sink_contrib,
                         "attention": self.sink_attention},
                "context": [{"position": s, "contrib": c, "attention": a,
                             "share": None if self.share is None else self.share[i]}
                            for i, (s, c, a) in enumerate(zip(self.positions, self.contrib, self.attention,
                                                              strict=True))],
                "context_total": self.context_total, "context_abs": self.context_abs}


def split_sink(contrib: Sequence[float], attention: Sequence[float], sink: Sequence[int] = SINK) -> SinkSplit:
    """Set the attention sink of one look-up apart from its context sources (docs/method.md §3,
    "The attention sink"; issue 28). ``contrib``, ``attention``: one head's terms and weights at
    the firing position for sources ``s = 0..p`` (BOS at 0), as stored or as
    ``NeuronPass.lookup`` gives them for one row and head (lists or tensors).

    Raises:
        ValueError: ``contrib`` and ``attention`` of different lengths, or a sink position outside
            them.
    """
    c = [float(x) for x in (contrib.tolist() if hasattr(contrib, "tolist") else contrib)]
    a = [float(x) for x in (attention.tolist() if hasattr(attention, "tolist") else attention)]
    if len(c) != len(a):
        raise ValueError(f"A look-up has {len(c)} contributions but {len(a)} attention weights.")
    sink = tuple(sorted({int(s) for s in sink}))
    if any(not 0 <= s < len(c) for s in sink):
        raise ValueError(f"Sink positions {sink} outside the look-up's {len(c)} sources.")
    ranked = rank_context(c, sink)
    total_abs = sum(abs(c[s]) for s in ranked)
    return SinkSplit(sink=sink, sink_contrib=sum(c[s] for s in sink), sink_attention=sum(a[s] for s in sink),
                     positions=ranked, contrib=[c[s] for s in ranked], attention=[a[s] for s in ranked],
                     share=[c[s] / total_abs for s in ranked] if total_abs > 0 else None,
                     context_total=sum(c[s] for s in ranked), context_abs=total_abs)


def lookup_dict(contrib: Sequence[float], attention: Sequence[float], bias: float, ln_scale: float,
                total: float | None, total_ln: float | None) -> dict:
    """The JSON of one prompt's look-up (the pair page's and the live view's ``lookup``).

    ``contrib``: per source position ``s = 0..p`` (BOS first), raw attribution units
    (residual-stream); ``attention``: ``a[p, s]``; ``bias``: the value-bias term; ``total``: the
    head's stored raw attribution ``A[h]`` (``Σ contrib + bias``); the ``_ln`` counterparts are
    each divided by ``ln_scale`` (pre-activation units; ``total_ln`` the stored LN-aware score);
    ``position``: ``p``, the index of the firing position among the sources; ``sink``: the
    attention sink apart (:func:`split_sink`: its ``positions``, raw ``contrib`` and
    ``attention``), ``context``: the other sources ranked by their ``share`` of the non-sink
    total (raw units), ``context_scale``: the largest ``|contrib|`` of the context (raw; the
    colour scale leaves the sink out).
    """
    split = split_sink(contrib, attention).as_dict()
    return {"position": len(contrib) - 1, "contrib": list(contrib), "attention": list(attention),
            "bias": bias, "total": total, "contrib_ln": [c / ln_scale for c in contrib],
            "bias_ln": bias / ln_scale, "total_ln": total_ln, "ln_scale": ln_scale,
            "sink": split["sink"], "context": split["context"],
            "context_scale": max((abs(c["contrib"]) for c in split["context"]), default=0.0)}


def carriers(tokens: Sequence[str], contrib: Sequence[float]) -> dict[str, float]:
    """What each token string of the context carries to the neuron on one prompt: the sum of its
    source terms over the positions it occupies (``tokens`` without BOS, ``contrib`` with BOS
    first). The attention sink is left out (:func:`split_sink`: its term is no context's)."""
    out: dict[str, float] = {}
    if not contrib:
        return out
    split = split_sink(contrib, [0.0] * len(contrib))
    for s, c in sorted(zip(split.positions, split.contrib, strict=True)):
        if 1 <= s <= len(tokens):
            t = tokens[s - 1]
            out[t] = out.get(t, 0.0) + c
    return out


def summary(prompts: Sequence[tuple[Sequence[str], Sequence[float], Sequence[float]]], *,
            top: int = 10) -> dict:
    """The tokens that carry the most across a group of prompts (the pair page's table, one per
    group: the head active, inactive), the attention sink apart (docs/method.md §3, "The
    attention sink"). ``prompts``: ``(tokens, contrib, attention)`` of each prompt.

    Returns ``{"n_prompts", "sink", "rows", "context_abs"}``. ``sink``: the sink's ``total`` (its
    terms summed over the group), ``per_prompt`` and ``attention`` (its mean attention weight),
    or None without a prompt. Rows (the context, at most ``top``, by ``total`` descending, ties by
    token): ``token``; ``total``, the sum over the group of what it carries; ``share``, ``total``
    over the sum of every context token's ``|total|`` (``context_abs``; None when 0);
    ``per_prompt``, ``total`` over the group's prompts; ``prompts``, in how many it is a source;
    ``top``, on how many it carries the most of any context token.
    """
    total: dict[str, float] = {}
    seen: dict[str, int] = {}
    first: dict[str, int] = {}
    sink_total = sink_att = 0.0
    for tokens, contrib, attention in prompts:
        if contrib:
            split = split_sink(contrib, attention)
            sink_total += split.sink_contrib
            sink_att += split.sink_attention
        c = carriers(tokens, contrib)
        for t, v in c.items():
            total[t] = total.get(t, 0.0) + v
            seen[t] = seen.get(t, 0) + 1
        if c:
            best = max(c, key=lambda t: (c[t], t))
            first[best] = first.get(best, 0) + 1
    n = len(prompts)
    absum = sum(abs(v) for v in total.values())
    rows = sorted(total, key=lambda t: (-total[t], t))[:top]
    sink = {"label": SINK_LABEL, "token": BOS_LABEL, "total": sink_total, "per_prompt": sink_total / n,
            "attention": sink_att / n} if n else None
    return {"n_prompts": n, "sink": sink, "context_abs": absum,
            "rows": [{"token": t, "total": total[t], "share": total[t] / absum if absum > 0 else None,
                      "per_prompt": total[t] / n, "prompts": seen[t], "top": first.get(t, 0)} for t in rows]}
