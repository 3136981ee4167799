"""Attention knockout: a causal check of a context look-up (docs/method.md §3, "Attention
knockout"; issue 28). Model-independent arithmetic that every backend shares; the passes are
:meth:`Backend.knockout <precompute.model.backend.Backend.knockout>`.

For neuron ``(l, i)`` firing at position ``p``, head ``h`` of an upstream layer ``k`` and a set
``S`` of source positions, the head's attention row at ``p`` is replaced by

* ``renormalise=True`` (the default; Geva et al., *Dissecting Recall of Factual Associations in
  Auto-Regressive Language Models*, EMNLP 2023, §3 "attention knockout": the edge's pre-softmax
  score set to ``-inf``): ``a'[s] = 0`` for ``s ∈ S``, ``a'[s] = a[s] / Σ_{s' ∉ S} a[s']`` else;
* ``renormalise=False``: ``a'[s] = 0`` for ``s ∈ S`` and ``a[s]`` else — the source's term is
  removed from the head's output and nothing else moves (the row sums to ``1 - Σ_S a``).

The head's output at ``p`` changes by ``Δz = Σ_s (a'[s] - a[s]) · v_s`` (``v_s``: the processed
value vector, ``hook_v``; the value bias is no source's and stays), i.e. ``hook_result`` by
``Δr = Δz · W_O[k, h]``. Effects are knocked-out minus clean:

* **direct**: only the path from the head's output straight into the neuron's layer changes; the
  neuron's input is the clean residual stream plus ``Δr``, the norm's scale ``σ`` frozen:
  ``Δpre = norm_read(Δr) · W_pre[:, i] / σ``, and ``Δact = f(pre + Δpre, up + Δup) - f(pre, up)``
  with ``f`` the MLP's activation (``act(pre)``; ``act(pre) · up`` for a gated MLP, where ``Δup``
  is the same with ``W_in[:, i]``). No forward pass beyond the clean one. With
  ``renormalise=False`` and one source, ``Δpre`` is minus the source's LN-aware look-up term.
* **total**: the forward pass re-run with the knockout in place (the neuron's ``hook_pre`` and
  ``hook_post`` and the token's probability at ``p``).

The default knockouts (:func:`default_sources`: the top ``m`` context sources, then the sink)
are chosen here, in the pass; what the knockouts say about a look-up (the sink row, the rank
agreement per pair, the share of pairs whose top context source holds) is the look-up step's,
``precompute.heads.lookup`` and ``precompute.heads.knockout``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from context_lookups.precompute.model.components import norm_read
from context_lookups.precompute.model.sources import SINK, rank_context

RENORMALISE = True  # the default intervention (docs/method.md §3 says why)
TOP_M = 3           # context sources knocked out per prompt by default, plus the sink


def knocked_pattern(attention: Float[Tensor, "*batch pos"], knocked: Bool[Tensor, "*batch pos"],
                    renormalise: bool = RENORMALISE) -> Float[Tensor, "*batch pos"]:
    """The attention row with the sources ``knocked`` removed (module docstring): zeroed, and the
    rest divided by what remains when ``renormalise``. The one home of the intervention: the
    bridge writes it into ``hook_pattern``, a fast backend and the direct effect read ``a' - a``.
    With ``renormalise`` and no attention left outside ``knocked`` (every visible source knocked
    out, or the others underflow to 0 in float32) the row is undefined and comes back NaN."""
    kept = attention.masked_fill(knocked, 0.0)
    return kept / kept.sum(-1, keepdim=True) if renormalise else kept


def source_mask(sources: Sequence[Sequence[int]], length: int, device: torch.device | str | None = None
                ) -> Bool[Tensor, "n pos"]:
    """``[j, s]``: whether knockout ``j`` removes source position ``s`` (of ``0..length-1``)."""
    mask = torch.zeros(len(sources), length, dtype=torch.bool, device=device)
    for j, ss in enumerate(sources):
        mask[j, list(ss)] = True
    return mask


def columns(weights: dict[int, Float[Tensor, "d_model d_mlp"]], layers: Int[Tensor, " n"],
            neurons: Int[Tensor, " n"]
            ) -> Float[Tensor, "n d_model"]:
    """Row ``j``: column ``neurons[j]`` of ``weights[layers[j]]`` (each neuron's reading direction)."""
    pairs = zip(layers.tolist(), neurons.tolist(), strict=True)
    return torch.stack([weights[int(x)][:, int(i)] for x, i in pairs])


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The MLP activation named by a TransformerLens config's ``act_fn`` (``gelu_new``, ``gelu``,
    ``silu``, ...), as Hugging Face implements it (``transformers.activations.ACT2FN``).

    Raises:
        ValueError: a name Hugging Face does not know.
    """
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"Unknown MLP activation {name!r}: the direct effect on the activation needs one of "
                         f"transformers' ACT2FN names.")
    return ACT2FN[name]


def direct_effects(delta: Float[Tensor, "n d_model"], w_pre: Float[Tensor, "n d_model"],
                   scale: Float[Tensor, " n"], pre: Float[Tensor, " n"], *, normalization: str,
                   act: Callable[[Tensor], Tensor],
                   w_up: Float[Tensor, "n d_model"] | None = None, up: Float[Tensor, " n"] | None = None
                   ) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """The direct effect of a change ``delta`` of a head's output (``hook_result``, residual-stream
    units) on a neuron, the norm's scale frozen (module docstring): ``Δpre`` (pre-activation
    units) and ``Δact`` (activation units), float32. ``w_pre``: the neuron's ``W_pre[:, i]``
    (processed); ``scale``: the norm's ``hook_scale`` at ``p``; ``pre``: the clean ``hook_pre``;
    for a gated MLP ``w_up`` (``W_in[:, i]``) and ``up`` (the clean ``hook_pre_linear``)."""
    read = norm_read(delta.float(), normalization)
    d_pre = (read * w_pre.float()).sum(-1) / scale.float()
    pre = pre.float()
    if w_up is None:
        return d_pre, act(pre + d_pre) - act(pre)
    d_up = (read * w_up.float()).sum(-1) / scale.float()
    up = up.float()
    return d_pre, act(pre + d_pre) * (up + d_up) - act(pre) * up


@dataclass
class Knockout:
    """One prompt's attention knockouts of one head (docs/method.md §3, "Attention knockout").

    ``layer``, ``neuron``, ``token``, ``position`` (``p``), ``head`` (``(k, h)``): what was asked,
    0-based, BOS at position 0. Clean values at ``p``: ``pre`` (``hook_pre``), ``act``
    (``hook_post``), ``prob`` (the token's softmax probability), ``scale`` (the norm's scale
    before the MLP). ``contrib [pos]``: the head's look-up terms ``a[p, s] · (v_s W_O[h]) ·
    W_pre[:, i]`` for ``s = 0..p`` (raw, residual-stream units; divide by ``scale`` for
    pre-activation units: :attr:`contrib_ln`); ``attention [pos]``: ``a[p, s]``.

    ``sources[j]``: the positions knockout ``j`` removes together. Effects, knocked-out minus
    clean, ``[n]`` (n = ``len(sources)``): ``direct_pre``, ``direct_act`` (float32; the path
    head → neuron only, scale frozen); ``total_pre``, ``total_act`` (float32) and
    ``total_prob`` (float64), the forward pass re-run, or None when not asked for. NaN where a
    renormalised row is undefined (:func:`knocked_pattern`).
    """

    layer: int
    neuron: int
    token: int
    position: int
    head: tuple[int, int]
    renormalise: bool
    pre: float
    act: float
    prob: float
    scale: float
    contrib: Float[Tensor, " pos"]
    attention: Float[Tensor, " pos"]
    sources: list[tuple[int, ...]]
    direct_pre: Float[Tensor, " n"]
    direct_act: Float[Tensor, " n"]
    total_pre: Float[Tensor, " n"] | None = None
    total_act: Float[Tensor, " n"] | None = None
    total_prob: Float[Tensor, " n"] | None = None

    @property
    def contrib_ln(self) -> Float[Tensor, " pos"]:
        """The look-up terms in pre-activation units (``contrib / scale``)."""
        return self.contrib / self.scale

    def as_dict(self) -> dict:
        """Plain-Python fields (lists of floats; None where absent, NaN as None) for JSON."""
        def floats(t: Tensor | None) -> list[float | None] | None:
            if t is None:
                return None
            return [None if math.isnan(x) else x for x in t.double().tolist()]
        return {"layer": self.layer, "neuron": self.neuron, "token": self.token, "position": self.position,
                "head": list(self.head), "renormalise": self.renormalise, "pre": self.pre, "act": self.act,
                "prob": self.prob, "scale": self.scale, "contrib": floats(self.contrib),
                "attention": floats(self.attention), "sources": [list(s) for s in self.sources],
                "direct_pre": floats(self.direct_pre), "direct_act": floats(self.direct_act),
                "total_pre": floats(self.total_pre), "total_act": floats(self.total_act),
                "total_prob": floats(self.total_prob)}


def default_sources(contrib: Sequence[float] | Float[Tensor, " pos"], m: int = TOP_M
                    ) -> list[tuple[int, ...]]:
    """The knockouts asked for by default (docs/method.md §3): the ``m`` context sources with the
    largest contribution (signed, largest first; ties by position; fewer on a short prompt), one
    at a time, then the sink (BOS, position 0: :data:`~precompute.model.sources.SINK`), ranked by
    :func:`~precompute.model.sources.rank_context`."""
    return [(s,) for s in rank_context(contrib)[:m]] + [SINK]


@dataclass
class KnockoutRead:
    """The clean values a backend's knockout pass reads, per prompt at its firing position ``p``
    (float32; ``prob`` float64): ``pre``, ``act`` (``hook_pre``, ``hook_post`` of its neuron),
    ``prob`` (its token's probability), ``scale`` (the norm's scale before the MLP), ``up``
    (``hook_pre_linear``, gated MLPs only)."""

    pre: Float[Tensor, " batch"]
    act: Float[Tensor, " batch"]
    prob: Float[Tensor, " batch"]
    scale: Float[Tensor, " batch"]
    up: Float[Tensor, " batch"] | None = None


class KnockoutPlan:
    """The knockouts of one batch (docs/method.md §3, "Attention knockout"), worked out from each
    row's clean attention row and values as a backend's pass reaches the head's layer
    (:meth:`__call__`): the look-up terms, the knockouts (given, or the defaults from the terms),
    and for each knockout ``c`` (row ``rep[c]``, in row order) the sources removed
    (``knocked [n, pos]``) and the change of the head's processed ``z`` at ``p`` (``dz [n,
    d_head]``; 0 where ``undefined``: a renormalised row with no attention left, whose effects
    are reported as NaN and whose NaN must not reach a pass that other knockouts share).
    ``counts[j]``: the number of knockouts of row ``j``, known before the pass.
    """

    def __init__(self, backend, pos: list[int], heads: Sequence[tuple[int, int]],
                 sources: Sequence[Sequence] | None, m: int, renormalise: bool,
                 w_pre: Float[Tensor, "batch d_model"], length: int):
        dev = w_pre.device
        self.backend, self.pos, self.m, self.renormalise, self.w_pre = backend, pos, m, renormalise, w_pre
        self.sources = None if sources is None else [
            [(int(s),) if isinstance(s, int) else tuple(int(x) for x in s) for s in ss] for ss in sources]
        self.hk = torch.tensor([int(k) for k, _ in heads], device=dev)
        self.hh = torch.tensor([int(h) for _, h in heads], device=dev)
        B, D = len(pos), backend.dims.d_head
        self.counts = [len(self.sources[j]) if self.sources is not None else min(m, pos[j]) + 1
                       for j in range(B)]
        self.first = [sum(self.counts[:j]) for j in range(B)]
        n = sum(self.counts)
        self.rep = torch.tensor([j for j in range(B) for _ in range(self.counts[j])], dtype=torch.long,
                                device=dev)
        self.contrib = torch.zeros(B, length, device=dev)
        self.attention = torch.zeros(B, length, device=dev)
        self.groups: list[list[tuple[int, ...]]] = [[] for _ in range(B)]
        self.knocked = torch.zeros(n, length, dtype=torch.bool, device=dev)
        self.dz = torch.zeros(n, D, device=dev)
        self.undefined = torch.zeros(n, dtype=torch.bool, device=dev)

    def copies(self, r: Int[Tensor, " rows"]) -> Int[Tensor, " n"]:
        """The knockouts of rows ``r``, in row order."""
        idx = [c for j in r.tolist() for c in range(self.first[j], self.first[j] + self.counts[j])]
        return torch.tensor(idx, dtype=torch.long, device=self.rep.device)

    def __call__(self, layer: int, r: Int[Tensor, " rows"], attention: Float[Tensor, "rows pos"],
                 values: Float[Tensor, "rows pos d_head"]) -> Int[Tensor, " n"]:
        """Rows ``r`` (their head in ``layer``), with the head's attention row at ``p`` and its
        processed values: their look-up terms ``a[p, s] · (v_s W_O[h]) · W_pre[:, i]``, their
        knockouts and each knockout's ``dz = Σ_s (a'[s] - a[s]) v_s``
        (:func:`~precompute.model.knockout.knocked_pattern`). Returns the knockouts' indices."""
        L = self.contrib.shape[1]
        attention, values = attention[:, :L].float(), values[:, :L].float()
        u = self.backend.head_readout(layer, self.hh[r], self.w_pre[r])  # [rows, d_head]
        self.attention[r] = attention
        self.contrib[r] = attention * (values @ u[:, :, None])[..., 0]
        for j in r.tolist():
            p = self.pos[j]
            g = (self.sources[j] if self.sources is not None
                 else default_sources(self.contrib[j, :p + 1].tolist(), self.m))
            self.groups[j] = g
            self.knocked[self.first[j]:self.first[j] + len(g)] = source_mask(g, L, self.knocked.device)
        idx = self.copies(r)
        at = self.attention[self.rep[idx]]
        local = torch.searchsorted(r, self.rep[idx])  # r ascending: each knockout's row within r
        da = knocked_pattern(at, self.knocked[idx], self.renormalise) - at
        dz = (da[..., None] * values[local]).sum(-2)
        bad = dz.isnan().any(-1)  # a renormalised row with nothing left: undefined, and kept out of the pass
        self.undefined[idx] = bad
        self.dz[idx] = dz.masked_fill(bad[:, None], 0.0)
        return idx
