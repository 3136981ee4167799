"""The context look-up as stored and shown (docs/method.md §3, "Per-source decomposition"): a
head's raw attribution at the firing position split by the source token it reads from, with its
attention weights. The model work is the backend's (``neuron_pass(..., lookup=True)``,
:mod:`precompute.model.sources`); this module turns one row of it into database fields, reads
them back, and sums contributions by token string for the pair page and the baseline explainer.

Positions: a prompt's sources are ``s = 0..p`` with BOS at 0 and the prompt's token ``s - 1``
(``Prompt.tokens``, which has no BOS) at ``s``; ``p`` is the firing position, the prompt's last
token. Vectors are stored as little-endian float32 bytes (4 bytes a value).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

BOS_LABEL = "\u27e8BOS\u27e9"  # ⟨BOS⟩: source position 0 in summaries (no token of a BPE vocabulary)


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
             "attention": encode(terms.attention[0, k, h]), "bias": float(terms.bias[0, k, h]), "ln_scale": scale}
            for k, h in heads]


def lookup_dict(contrib: Sequence[float], attention: Sequence[float], bias: float, ln_scale: float,
                total: float | None, total_ln: float | None) -> dict:
    """The JSON of one prompt's look-up (the pair page's and the live view's ``lookup``).

    ``contrib``: per source position ``s = 0..p`` (BOS first), raw attribution units
    (residual-stream); ``attention``: ``a[p, s]``; ``bias``: the value-bias term; ``total``: the
    head's stored raw attribution ``A[h]`` (``Σ contrib + bias``); the ``_ln`` counterparts are
    each divided by ``ln_scale`` (pre-activation units; ``total_ln`` the stored LN-aware score);
    ``position``: ``p``, the index of the firing position among the sources.
    """
    return {"position": len(contrib) - 1, "contrib": list(contrib), "attention": list(attention),
            "bias": bias, "total": total, "contrib_ln": [c / ln_scale for c in contrib],
            "bias_ln": bias / ln_scale, "total_ln": total_ln, "ln_scale": ln_scale}


def carriers(tokens: Sequence[str], contrib: Sequence[float], *, bos: bool = True) -> dict[str, float]:
    """What each token string carries to the neuron on one prompt: the sum of its source terms
    over the positions it occupies (``tokens`` without BOS, ``contrib`` with BOS first); BOS
    under :data:`BOS_LABEL` unless ``bos`` is False."""
    out: dict[str, float] = {}
    if bos and contrib:
        out[BOS_LABEL] = float(contrib[0])
    for t, c in zip(tokens, contrib[1:]):
        out[t] = out.get(t, 0.0) + float(c)
    return out


def summary(prompts: Sequence[tuple[Sequence[str], Sequence[float]]], *, top: int = 10) -> dict:
    """The tokens that carry the most across a group of prompts (the pair page's table, one per
    group: the head active, inactive). ``prompts``: ``(tokens, contrib)`` of each prompt.

    Returns ``{"n_prompts", "rows"}``; rows (at most ``top``, by ``total`` descending, ties by
    token): ``token``; ``total``, the sum over the group of what it carries (raw units);
    ``per_prompt``, that total over the group's prompts; ``prompts``, in how many it is a
    source; ``top``, on how many it carries the most of any token.
    """
    total: dict[str, float] = {}
    seen: dict[str, int] = {}
    first: dict[str, int] = {}
    for tokens, contrib in prompts:
        c = carriers(tokens, contrib)
        for t, v in c.items():
            total[t] = total.get(t, 0.0) + v
            seen[t] = seen.get(t, 0) + 1
        if c:
            best = max(c, key=lambda t: (c[t], t))
            first[best] = first.get(best, 0) + 1
    n = len(prompts)
    rows = sorted(total, key=lambda t: (-total[t], t))[:top]
    return {"n_prompts": n, "rows": [{"token": t, "total": total[t], "per_prompt": total[t] / n,
                                      "prompts": seen[t], "top": first.get(t, 0)} for t in rows]}
