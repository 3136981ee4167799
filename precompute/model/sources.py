"""The per-source-token decomposition of head attribution, as every backend computes it
(docs/method.md §3, "Per-source decomposition"; extension point (b) of
:mod:`precompute.model.backend`).

For neuron ``(l, i)`` at position ``p`` and head ``h`` of layer ``k`` (processed weights):

    A[k, h] = Σ_{s <= p} a[p, s] · (v_s W_O[k, h]) · W_in[l][:, i]  +  (b_V[k, h] W_O[k, h]) · W_in[l][:, i]

with ``a`` the head's attention pattern and ``v_s`` its value vector (``hook_v``) at source
position ``s``. Written as ``a[p, s] · (v_s · u)`` with the head's read-out ``u = W_O[k, h] ·
W_in[l][:, i]`` (``[d_head]``), one dot product per source. The LN-aware split divides every
term by the scale of the LayerNorm feeding the MLP at ``p``, common to all of them.

A backend reads ``a[p, :]`` and ``v`` at its capture points and calls :func:`source_terms`
with :func:`readout`: the formula has this one home. A fast backend forms ``a[p, :]`` itself
with :func:`attention_row` (the causal row's one home). :data:`SINK` is the attention sink's
position (BOS) and :func:`rank_context` the order of the other sources (docs/method.md §3, "The
attention sink"); the look-up split that shows them is the look-up step's
(``precompute.heads.lookup.split_sink``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def readout(W_O: Float[Tensor, "n_heads d_head d_model"], w: Float[Tensor, "batch d_model"]
            ) -> Float[Tensor, "batch n_heads d_head"]:
    """Each head's read-out ``u[b, h] = W_O[h] · w[b]`` (``w[b]``: row ``b``'s ``W_in[:, i]``),
    float32: the value vector's direction that reaches the neuron."""
    return torch.einsum("hdm,bm->bhd", W_O.float(), w.float())


def head_dots(x: Float[Tensor, "batch pos n_heads_d_head"], y: Float[Tensor, "batch n_heads d_head"]
              ) -> Float[Tensor, "batch n_heads pos"]:
    """``x[b, s, h·d_head:(h+1)·d_head] · y[b, h]`` for every position ``s`` and head ``h`` (float32):
    one batched matmul of ``x`` — which may be a strided view, such as the value or key columns
    of a fused projection's output, and is not copied — with ``y`` laid out as a block-diagonal
    ``[n_heads·d_head, n_heads]`` matrix per row."""
    B, H, D = y.shape
    blocks = (y.float()[..., None] * torch.eye(H, device=y.device)[:, None, :]).reshape(B, H * D, H)
    return torch.bmm(x.float(), blocks).transpose(1, 2)


def attention_row(scores: Float[Tensor, "batch n_heads pos"], pos: Int[Tensor, " batch"], *, scaling: float,
                  window: int | None = None) -> Float[Tensor, "batch n_heads pos"]:
    """The causal attention row of every head at each row's target position (docs/method.md §3):
    ``a[b, h, s] = softmax_s(scores[b, h, s] · scaling)`` over the keys the query at ``pos[b]``
    sees — ``s <= pos[b]``, and ``s > pos[b] - window`` where the layer has a sliding window —
    and exactly 0 elsewhere; float32, each row sums to 1. ``scores``: the unscaled dot products
    ``q_p · k_s`` (keys after rotary where the family has it; a grouped kv head's keys repeated
    for each query head that reads them). The one home of the causal row that a fast backend
    forms itself (SDPA returns no pattern): every family's look-up capture and the knockout read
    it (:meth:`FastBackend._lookup_hook <precompute.model.fast.FastBackend._lookup_hook>`)."""
    s = torch.arange(scores.shape[-1], device=scores.device)[None, :]
    hidden = s > pos[:, None]  # [batch, pos]
    if window is not None:
        hidden = hidden | (s <= pos[:, None] - window)
    return (scores.float() * scaling).masked_fill(hidden[:, None, :], float("-inf")).softmax(-1)


def source_terms(pattern: Float[Tensor, "batch n_heads pos"],
                 values: Float[Tensor, "batch pos n_heads d_head"],
                 u: Float[Tensor, "batch n_heads d_head"],
                 offset: Float[Tensor, "n_heads d_head"] | None = None
                 ) -> Float[Tensor, "batch n_heads pos"]:
    """The per-source terms ``a[p, s] · (v_s · u)`` of one attention layer, in residual-stream
    units (docs/method.md §3): ``pattern`` the attention row at each row's target position
    (zero beyond it), ``values`` the value vectors at every position — processed (``hook_v``),
    or plain with ``offset`` the ``b_V`` to subtract (``hook_v = v - b_V``) —, ``u`` from
    :func:`readout`. Their sum over ``s``, plus the value-bias term, is the raw head
    attribution ``A[k, h]``."""
    vu = head_dots(values.flatten(-2), u)  # [batch, H, pos]
    if offset is not None:
        vu = vu - (offset.float() * u).sum(-1)[..., None]
    return pattern.float() * vu


@dataclass
class SourceTerms:
    """The decomposition of a batched pass, per row, upstream attention layer ``k < K`` and
    head (row ``j``'s sources are ``0 .. positions[j]``, BOS at 0; zeros beyond, and for the
    layers not upstream of row ``j``'s neuron).

    ``contrib [batch, K, n_heads, pos]``: ``a[p, s] · (v_s W_O[h]) · W_in[:, i]``, residual-stream
    units (the raw score's); ``attention [batch, K, n_heads, pos]``: ``a[p, s]`` (each row sums
    to 1 over ``s <= p``); ``bias [batch, K, n_heads]``: ``(b_V[h] W_O[h]) · W_in[:, i]``, zero
    with TransformerLens' processing (``fold_value_biases`` moves ``b_V`` into ``b_O``);
    ``scale [batch]``: the LayerNorm scale at ``p`` that divides every term of the LN-aware
    split. ``contrib.sum(-1) + bias`` is the raw attribution ``A``.
    """

    contrib: Float[Tensor, "batch K n_heads pos"]
    attention: Float[Tensor, "batch K n_heads pos"]
    bias: Float[Tensor, "batch K n_heads"]
    scale: Float[Tensor, " batch"]

    def row(self, q: int, n_attn: int, n_src: int) -> SourceTerms:
        """Row ``q`` cut to its ``n_attn`` upstream layers and ``n_src`` sources."""
        return SourceTerms(self.contrib[q:q + 1, :n_attn, :, :n_src],
                           self.attention[q:q + 1, :n_attn, :, :n_src],
                           self.bias[q:q + 1, :n_attn], self.scale[q:q + 1])

    @staticmethod
    def stack(contrib: dict[int, Tensor], attention: dict[int, Tensor], bias: dict[int, Tensor],
              scale: Float[Tensor, " batch"], upstream: Bool[Tensor, "batch K"], K: int, n_heads: int,
              length: int) -> SourceTerms:
        """Per-layer terms (``{k: [batch, n_heads, pos]}``, bias ``{k: [batch, n_heads]}``) of the
        layers decomposed, stacked to ``[batch, K, n_heads, pos]`` with zeros for the others and
        where ``upstream [batch, K]`` is False."""
        B, dev = len(scale), scale.device
        c = torch.zeros(B, K, n_heads, length, device=dev)
        a = torch.zeros(B, K, n_heads, length, device=dev)
        bi = torch.zeros(B, K, n_heads, device=dev)
        for k, ck in contrib.items():
            c[:, k], a[:, k], bi[:, k] = ck, attention[k], bias[k]
        m = upstream[:, :, None].to(c.dtype)
        return SourceTerms(c * m[..., None], a * m[..., None], bi * m, scale)


def decomposed_layers(lookup: bool | Sequence[int], K: int) -> list[int]:
    """The upstream attention layers a pass decomposes: all ``K`` for ``lookup=True``, those of
    a collection of layers (the live view asks for the selected head's), none for False."""
    if lookup is True:
        return list(range(K))
    return sorted({int(k) for k in (lookup or ()) if 0 <= int(k) < K})


SINK = (0,)  # the attention sink: BOS, position 0 of every prompt (docs/method.md §3 says why)


def rank_context(contrib: Sequence[float] | Float[Tensor, " pos"], sink: Sequence[int] = SINK) -> list[int]:
    """The context sources of one look-up (every position of ``contrib`` but the ``sink``), ranked
    by contribution, signed, largest first, ties by position: the order of the default knockouts
    (:func:`~precompute.model.knockout.default_sources`) and of the look-up's context rows
    (``precompute.heads.lookup.split_sink``; docs/method.md §3, "The attention sink")."""
    c = [float(x) for x in (contrib.tolist() if isinstance(contrib, Tensor) else contrib)]
    skip = {int(s) for s in sink}
    return sorted((s for s in range(len(c)) if s not in skip), key=lambda s: (-c[s], s))
