"""The model backend protocol: everything the method asks of a model, in one class (docs/method.md
§1-§3, §6). The scan, trimming, head attribution, ablation, congruence and the live engine call
only this; they never see hook names, Hugging Face modules or a ``TransformerBridge``.

A backend is chosen once, when the model is loaded (:func:`precompute.model.load_model`,
``--backend auto|bridge|fast``), and carried by the :class:`~precompute.model.loading.LoadedModel`
as ``model.backend``. Implementations:

* :class:`precompute.model.bridge.BridgeBackend` — TransformerBridge hook points with
  TransformerLens' weight processing: every architecture TransformerLens supports; the reference.
* fast backends (:class:`precompute.model.fast.FastBackend`): forward hooks on the plain Hugging
  Face modules, one copy of the weights, equal to the bridge to 1e-5 — GPT-2
  (:mod:`~precompute.model.gpt2`), GPT-NeoX/Pythia (:mod:`~precompute.model.neox`), Llama, Qwen2
  and Mistral (:mod:`~precompute.model.llama`); ``tests/model/test_backend_equality.py``,
  ``tests/model/test_families.py``.

What a backend offers (all indices 0-based; ``rows`` are token rows with BOS at index 0, right-
padded internally with BOS; ``targets`` one ``(layer, neuron[, token_id])`` per row;
``positions`` the 0-based target position per row, default each row's last token):

========================  ===========================================================================
``dims``                  :class:`Dims`: ``n_layers``, ``n_heads``, ``d_head``, ``d_model``,
                          ``d_mlp``, ``d_vocab``, ``n_ctx``, ``parallel_attn_mlp``, ...
``W_in(l)`` ``b_in(l)``   processed weights (fold_ln, center_writing_weights, center_unembed,
``W_out(l)`` ``W_O(l)``   fold_value_biases: TransformerLens' ``ProcessWeights``), float32:
``b_O(l)`` ``W_U()``      ``[d_model, d_mlp]``, ``[d_mlp]``, ``[d_mlp, d_model]``,
``W_pre(l)`` ``b_pre(l)`` ``[n_heads, d_head, d_model]``, ``[d_model]``, ``[d_model, d_vocab]``;
                          ``W_pre``/``b_pre``: the weights whose output is ``hook_pre`` (``W_in``,
                          or ``W_gate`` of a gated MLP): what head attribution projects on
``doc_maxima``            the scan's reduction: per-document max of ``hook_post`` per neuron
``neuron_pass``           one batched pass: activations, raw + LN-aware head attribution,
                          ``hook_pre``, token probability and top-n, heads ablated (zero or mean)
``value_sums``            sums of ``hook_v`` over real positions, per query head (mean values, §6)
``batched_pass``          ``neuron_pass`` over many rows in length-sorted batches
``target_acts``           trimming's activations at the last token (§2)
``layer_acts``            ``hook_post`` of every neuron of some layers at every position (the
                          explorer's "which neurons fire"; implemented once, on ``doc_maxima``)
``clean_view``            a live view: ``neuron_pass`` with probabilities
``ablated_view``          the same with heads ablated
``knockout``              attention knockout of one head's read of chosen sources at the firing
                          position: direct and total effects on ``hook_pre``, ``hook_post`` and the
                          token's probability (docs/method.md §3, "Attention knockout")
========================  ===========================================================================

Extension points (designed now, used later):

(a) **Per-layer accumulators in the scan.** :meth:`Backend.doc_maxima` takes ``observe``, a
    callable ``observe(layer, post, real)`` called once per analysed layer and batch with that
    layer's whole ``hook_post`` (``[batch, pos, d_mlp]``, the model's dtype) and ``real``
    (``[batch, pos]`` bool: the positions the maxima range over — real tokens after BOS).
    :func:`precompute.scan.scan` passes it through (``scan(..., observe=...)``). Fixed-bin
    activation histograms go there: an accumulator object with ``__call__`` (add the batch) and
    ``merge`` (add another shard's counts; integer counts merge exactly, in any order), carried
    by ``distributed.ScanShard`` to the Ray worker and back on the ``ScanResult``.
(b) **Per-source-token decomposition of head attribution** (issue 20, docs/method.md §3:
    ``A[h] = Σ_s a[p, s] · (v_s W_O[h]) · W_pre[:, i] + (b_V[h] W_O[h]) · W_pre[:, i]``), asked
    for with ``neuron_pass(..., lookup=True)`` and returned as ``NeuronPass.lookup``
    (:class:`~precompute.model.sources.SourceTerms`: per row, upstream layer, head and source
    position the term and the attention weight, the value-bias term, the norm scale). Each
    backend reads ``a[p, :]`` and the processed ``hook_v`` where it captures; the arithmetic is
    :mod:`precompute.model.sources`. The bridge reads ``blocks.{k}.attn.hook_pattern`` (row
    ``p``) and ``blocks.{k}.attn.hook_v`` (with grouped-query attention one head per kv head:
    query head ``h`` reads kv head ``h // (n_heads // n_kv_heads)``)
    (:meth:`BridgeBackend._attribution_names <precompute.model.bridge.BridgeBackend._attribution_names>`);
    a fast backend forms ``a[p, :] = softmax(q_p k_s · scaling)`` over ``s <= p`` itself (SDPA
    returns no pattern) from the queries and keys of the family's one capture,
    :meth:`FastBackend._lookup_hook <precompute.model.fast.FastBackend._lookup_hook>`: GPT-2 reads
    the output of ``c_attn``; GPT-NeoX and Llama-style read
    :meth:`FastBackend.qkv_hook <precompute.model.fast.FastBackend.qkv_hook>` (``q``, ``k`` after
    rotary).

Adding an architecture to the fast backends means subclassing
:class:`~precompute.model.fast.FastBackend` (module map, TransformerLens-format weights of one
layer, how ``v`` and ``q, k, v`` are read) and registering it in
:func:`precompute.model.loading._fast_backends`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from context_lookups.precompute.model.batching import length_batches
from context_lookups.precompute.model.components import centre, norm_read  # noqa: F401  (re-exported)
from context_lookups.precompute.model.knockout import (
    RENORMALISE,
    TOP_M,
    Knockout,
    KnockoutPlan,
    KnockoutRead,
    activation,
    columns,
    direct_effects,
)
from context_lookups.precompute.model.readout import doc_max, head_mask, probabilities  # noqa: F401  (re-exported)
from context_lookups.precompute.model.sources import SourceTerms

Target = tuple  # (layer, neuron) or (layer, neuron, token_id), 0-based
PostObserver = Callable[[int, Tensor, Tensor], None]  # observe(layer, hook_post, real)
METHODS = ("zero", "mean")  # ablation methods (docs/method.md §6)


@dataclass(frozen=True)
class Dims:
    """The dimensions of a model (TransformerLens names) and the facts about its block that the
    method depends on: whether attention and MLP run in parallel (GPT-NeoX/Pythia), the
    normalisation (``LN``, ``LNPre``, ``RMS``, ``RMSPre``), the positional embedding
    (``standard``: added to the residual stream, ``rotary``, ...), the Hugging Face
    architecture name (``GPT2LMHeadModel``), whether the MLP is gated (``act(x W_gate) * (x
    W_in)``: Llama) and the number of key/value heads (``n_kv_heads < n_heads``: grouped-query
    attention; query head ``h`` reads kv head ``h // (n_heads // n_kv_heads)``) and the MLP's
    activation (``act_fn``, TransformerLens' name: ``gelu_new``, ``gelu``, ``silu``)."""

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    parallel_attn_mlp: bool = False
    normalization: str = "LN"
    positional: str = "standard"
    architecture: str = ""
    gated_mlp: bool = False
    n_kv_heads: int = 0
    act_fn: str = ""

    @classmethod
    def of_cfg(cls, cfg, architecture: str = "") -> Dims:
        """The dims of a TransformerLens config (``TransformerBridgeConfig``)."""
        return cls(n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_head=cfg.d_head, d_model=cfg.d_model,
                   d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx,
                   parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
                   normalization=str(cfg.normalization_type), positional=str(cfg.positional_embedding_type),
                   architecture=architecture, gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
                   n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
                   act_fn=str(getattr(cfg, "act_fn", "") or ""))

    def upstream_attn_layers(self, layer: int) -> int:
        """Number of attention layers that write to the residual stream before MLP ``layer``
        reads it: ``layer + 1`` for GPT-2-style blocks, ``layer`` for parallel attention/MLP."""
        return layer if self.parallel_attn_mlp else layer + 1


@dataclass
class NeuronPass:
    """Per-row results of one batched pass (row ``j`` targets ``layers[j]``, ``neurons[j]`` at
    ``positions[j]``).

    ``acts``: the neuron's ``hook_post`` at every position incl. BOS (one list per row);
    ``act``/``pre``: ``hook_post``/``hook_pre`` at the target position, ``[batch]`` float32. With
    attribution: ``raw``/``ln`` ``[batch, K, n_heads]`` (K = attention layers upstream of the
    deepest target; row ``j``'s scores are ``[:n_attn[j]]``, zeros beyond), residual-stream
    units (raw) and pre-activation units (ln); ``other``: per row, the LN-aware contributions of
    the non-head components (``embed``, ``pos_embed``, ``b_O``, ``mlp{k}``, ``b_in``, in that
    order). With a token: ``prob`` (softmax probability of the row's token, float64) and ``top``
    (the ``top_n`` most probable next tokens, ``[(id, prob)]``). With ``lookup``: the
    per-source-token decomposition of ``raw`` (extension point (b),
    :class:`~precompute.model.sources.SourceTerms`).
    """

    layers: list[int]
    neurons: list[int]
    positions: list[int]
    acts: list[list[float]] = field(default_factory=list)
    act: Float[Tensor, " batch"] | None = None
    pre: Float[Tensor, " batch"] | None = None
    raw: Float[Tensor, "batch K n_heads"] | None = None
    ln: Float[Tensor, "batch K n_heads"] | None = None
    n_attn: list[int] = field(default_factory=list)
    other: list[dict[str, float]] = field(default_factory=list)
    prob: Float[Tensor, " batch"] | None = None
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    lookup: SourceTerms | None = None

    def row(self, q: int) -> NeuronPass:
        """Row ``q`` as a one-row :class:`NeuronPass` (scores cut to its ``n_attn`` layers)."""
        def pick(t):
            return None if t is None else t[q:q + 1]
        n = self.n_attn[q] if self.n_attn else None
        return NeuronPass(layers=[self.layers[q]], neurons=[self.neurons[q]], positions=[self.positions[q]],
                          acts=self.acts[q:q + 1], act=pick(self.act), pre=pick(self.pre),
                          raw=None if self.raw is None else self.raw[q:q + 1, :n],
                          ln=None if self.ln is None else self.ln[q:q + 1, :n],
                          n_attn=self.n_attn[q:q + 1], other=self.other[q:q + 1], prob=pick(self.prob),
                          top=self.top[q:q + 1],
                          lookup=None if self.lookup is None
                          else self.lookup.row(q, n, self.positions[q] + 1))


# --- range checks: the one home of every neuron / head / token / position check -----------------

def check_neuron(layer: int, neuron: int, *, n_layers: int, d_mlp: int) -> None:
    """Raises ValueError naming the valid ranges if neuron ``L{layer}N{neuron}`` does not exist."""
    if not 0 <= layer < n_layers or not 0 <= neuron < d_mlp:
        raise ValueError(f"Neuron L{layer}N{neuron} out of range: layers 0..{n_layers - 1}, "
                         f"neurons 0..{d_mlp - 1}.")


def check_head(layer: int, head: int, *, n_layers: int, n_heads: int) -> None:
    """Raises ValueError naming the valid ranges if head ``L{layer}H{head}`` does not exist."""
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ValueError(f"Head L{layer}H{head} out of range: layers 0..{n_layers - 1}, "
                         f"heads 0..{n_heads - 1}.")


def check_token(token_id: int, *, d_vocab: int) -> None:
    """Raises ValueError if ``token_id`` is not in the vocabulary ``0..d_vocab-1``."""
    if not 0 <= token_id < d_vocab:
        raise ValueError(f"Token id {token_id} out of range 0..{d_vocab - 1}.")


def check_pass(dims: Dims, rows: Sequence[Sequence[int]], targets: Sequence[Target],
               positions: Sequence[int] | None, ablate: Sequence[Sequence[tuple[int, int]]] | None = None,
               method: str = "zero", mean_v: dict[int, Tensor] | None = None,
               lookup: bool | Sequence[int] = False, attribution: bool = True) -> list[int]:
    """Check the inputs of a neuron pass; return each row's target position (default its last
    token).

    Raises:
        ValueError: no rows; as many targets as rows; a layer, neuron, token, head or position out
            of range; an unknown ablation method; mean ablation without the means of a layer; the
            per-source decomposition (``lookup``) without attribution or with heads ablated (it
            decomposes clean passes only).
    """
    if lookup and (ablate is not None or not attribution):
        raise ValueError("The per-source decomposition (lookup) is computed on a clean pass with "
                         "attribution: ask for it without ablated heads.")
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("A neuron pass needs at least one non-empty prompt.")
    if len(targets) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(targets)} targets.")
    for t in targets:
        check_neuron(int(t[0]), int(t[1]), n_layers=dims.n_layers, d_mlp=dims.d_mlp)
        if len(t) > 2 and t[2] is not None:
            check_token(int(t[2]), d_vocab=dims.d_vocab)
    pos = [len(r) - 1 for r in rows] if positions is None else [int(p) for p in positions]
    if len(pos) != len(rows) or any(not 0 <= p < len(r) for p, r in zip(pos, rows, strict=True)):
        raise ValueError("A target position lies outside its prompt.")
    if ablate is not None:
        if method not in METHODS:
            raise ValueError(f"Unknown ablation method {method!r}: use 'zero' or 'mean'.")
        if len(ablate) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(ablate)} lists of ablated heads.")
        for hs in ablate:
            for k, h in hs:
                check_head(int(k), int(h), n_layers=dims.n_layers, n_heads=dims.n_heads)
                if method == "mean" and (mean_v is None or int(k) not in mean_v):
                    raise ValueError(f"Mean ablation needs the mean value vectors of layer {k}; "
                                     f"compute them with ablation.mean_values().")
    return pos


def check_knockout(dims: Dims, rows: Sequence[Sequence[int]], targets: Sequence[Target],
                   heads: Sequence[tuple[int, int]], sources: Sequence[Sequence] | None,
                   positions: Sequence[int] | None, renormalise: bool) -> list[int]:
    """Check the inputs of :meth:`Backend.knockout`; return each row's firing position.

    Raises:
        ValueError: as :func:`check_pass`; a target without its token id; not one head per row, a
            head out of range or not upstream of the row's neuron; not one list of knockouts per
            row, an empty knockout, a source outside ``0..p``; with ``renormalise``, a knockout of
            every source (nothing is left to renormalise over).
    """
    pos = check_pass(dims, rows, targets, positions)
    if any(len(t) < 3 or t[2] is None for t in targets):
        raise ValueError("A knockout measures the predicted token's probability: give (layer, neuron, "
                         "token_id) for every row.")
    if len(heads) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(heads)} heads: give one (layer, head) per row.")
    for (k, h), t in zip(heads, targets, strict=True):
        check_head(int(k), int(h), n_layers=dims.n_layers, n_heads=dims.n_heads)
        if int(k) >= dims.upstream_attn_layers(int(t[0])):
            raise ValueError(f"Head L{k}H{h} is not upstream of neuron L{t[0]}N{t[1]}: its layer must be "
                             f"below {dims.upstream_attn_layers(int(t[0]))}.")
    if sources is None:
        return pos
    if len(sources) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(sources)} lists of knockouts.")
    for ss, p in zip(sources, pos, strict=True):
        for s in ss:
            group = [int(s)] if isinstance(s, int) else [int(x) for x in s]
            if not group or any(not 0 <= x <= p for x in group):
                raise ValueError(f"A knockout names source positions {group}: each must be in 0..{p} (BOS at "
                                 f"0, the firing position {p} last), and a knockout names at least one.")
            if renormalise and len(set(group)) == p + 1:
                raise ValueError(f"A renormalised knockout of all {p + 1} sources leaves nothing to "
                                 f"renormalise over: keep at least one, or use renormalise=False.")
    return pos


class Backend(abc.ABC):
    """What the method asks of a model (see the module docstring for the table and the
    extension points). Subclasses implement the abstract methods; the public pass methods check
    their inputs here (:func:`check_pass`) and batch through :meth:`neuron_pass`.

    Attributes:
        name: what the job logs, e.g. ``"fast (gpt2)"`` or ``"bridge"``.
        dims: the model's :class:`Dims`.
        pad_id: the token rows are right-padded with (the BOS token).
        device, dtype: of the weights and forward passes (statistics are float32 regardless).
    """

    name: str
    dims: Dims
    pad_id: int
    device: torch.device
    dtype: torch.dtype

    # --- processed weights (float32, on ``device``) ----------------------------------------------
    @abc.abstractmethod
    def W_in(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        """Processed MLP input weights of ``layer`` (LayerNorm folded in, centred)."""

    @abc.abstractmethod
    def b_in(self, layer: int) -> Float[Tensor, " d_mlp"]:
        """Processed MLP input bias of ``layer`` (LayerNorm bias folded in)."""

    @abc.abstractmethod
    def W_out(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        """Processed MLP output weights of ``layer`` (centred): congruence reads them (§1)."""

    @abc.abstractmethod
    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        """Processed attention output weights of ``layer`` (centred)."""

    @abc.abstractmethod
    def b_O(self, layer: int) -> Float[Tensor, " d_model"]:
        """Processed attention output bias of ``layer`` (value biases folded in, centred)."""

    @abc.abstractmethod
    def b_V(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        """Processed value bias of ``layer``: zero after ``fold_value_biases``, which moves it into
        ``b_O`` (the bias term of the per-source decomposition, docs/method.md §3)."""

    @abc.abstractmethod
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """Processed unembedding (final LayerNorm folded in, centred): congruence reads it (§1)."""

    @abc.abstractmethod
    def W_pre(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        """The processed weights whose output is ``hook_pre`` and that head attribution projects
        on (§3): ``W_in``, or ``W_gate`` for a gated MLP."""

    @abc.abstractmethod
    def b_pre(self, layer: int) -> Float[Tensor, " d_mlp"]:
        """The processed bias of ``hook_pre``: ``b_in``, or ``b_gate`` (zeros when absent)."""

    # --- passes ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def doc_maxima(self, rows: Sequence[Sequence[int]], layers: Sequence[int], *,
                   observe: PostObserver | None = None
                   ) -> tuple[Float[Tensor, "batch n"], Int[Tensor, "batch n"], Int[Tensor, " batch"]]:
        """The scan's reduction (docs/method.md §2): per row, the max of ``hook_post`` of every
        neuron of ``layers`` over the real positions after BOS, and its position (columns
        ``j * d_mlp + i`` for neuron ``i`` of ``layers[j]``), float32 on ``device``; with each
        row's length (CPU). One right-padded pass that stops after the last layer needed and
        keeps no activation beyond the maxima. ``observe``: extension point (a)."""

    @abc.abstractmethod
    def _neuron_pass(self, rows: Sequence[Sequence[int]], targets: Sequence[Target], pos: list[int], *,
                     attribution: bool, all_acts: bool, logits: bool, top_n: int,
                     ablate: Sequence[Sequence[tuple[int, int]]] | None, method: str,
                     mean_v: dict[int, Tensor] | None, lookup: bool = False) -> NeuronPass:
        """:meth:`neuron_pass` on checked inputs."""

    @abc.abstractmethod
    def value_sums(self, rows: Sequence[Sequence[int]], layers: Sequence[int]
                   ) -> dict[int, Float[Tensor, "n_heads d_head"]]:
        """Sum of ``hook_v`` of each of ``layers`` over every real position of the rows (BOS
        included, padding excluded), float64 on the CPU: the mean value vectors of §6 are these
        sums over all batches divided by the number of positions."""

    def neuron_pass(self, rows: Sequence[Sequence[int]], targets: Sequence[Target],
                    positions: Sequence[int] | None = None, *, attribution: bool = True,
                    all_acts: bool = True, logits: bool = False, top_n: int = 5,
                    ablate: Sequence[Sequence[tuple[int, int]]] | None = None, method: str = "zero",
                    mean_v: dict[int, Tensor] | None = None, lookup: bool | Sequence[int] = False
                    ) -> NeuronPass:
        """One forward pass (one right-padded batch) of ``rows``, each row for its own neuron
        (paper §4.2-§4.3, §5.4; docs/method.md §2-§3, §6).

        Args:
            targets: ``(layer, neuron[, token_id])`` per row (0-based).
            attribution: compute ``raw``/``ln``/``pre``/``other`` (§3).
            all_acts: keep the activation at every position (else only ``act``).
            logits: run to the end and compute ``prob``/``top`` at the target positions.
            ablate: per row, the ``(layer, head)`` whose value vectors are replaced at every
                position by zeros (``method="zero"``) or ``mean_v[layer][head]`` (``"mean"``).
            lookup: also decompose ``raw`` by source token (``lookup``, docs/method.md §3): of
                every upstream head (True), or of the heads of the upstream layers listed (the
                others' terms are zero); clean passes with attribution only.

        Raises:
            ValueError: see :func:`check_pass`.
            NotImplementedError: ``lookup`` on a fast backend whose family has no look-up capture
                (:meth:`~precompute.model.fast.FastBackend._lookup_hook`).
        """
        pos = check_pass(self.dims, rows, targets, positions, ablate, method, mean_v, lookup, attribution)
        return self._neuron_pass(rows, targets, pos, attribution=attribution, all_acts=all_acts,
                                 logits=logits, top_n=top_n, ablate=ablate, method=method, mean_v=mean_v,
                                 lookup=lookup)

    def batched_pass(self, rows: Sequence[Sequence[int]], targets: Sequence[Target],
                     positions: Sequence[int] | None = None, *, max_tokens: int = 8192,
                     max_rows: int = 64, **kw) -> list[NeuronPass]:
        """:meth:`neuron_pass` over many rows in length-sorted batches of at most ``max_rows``
        rows and ``max_tokens`` padded tokens; one single-row :class:`NeuronPass` per row, in
        the order given. Raises as :meth:`neuron_pass`."""
        pos = check_pass(self.dims, rows, targets, positions) if rows else []
        out: list = [None] * len(rows)
        for idx in length_batches([len(r) for r in rows], max_tokens, max_rows):
            res = self.neuron_pass([rows[j] for j in idx], [targets[j] for j in idx],
                                   [pos[j] for j in idx], **kw)
            for q, j in enumerate(idx):
                out[j] = res.row(q)
        return out

    def target_acts(self, rows: Sequence[Sequence[int]], targets: Sequence[Target], *,
                    max_tokens: int = 8192, max_rows: int = 64) -> list[float]:
        """Each row's neuron activation (``hook_post``, float32) at its last token, for trimming
        (paper §4.2): passes without attribution, per-position activations or logits, in
        length-sorted batches of one layer each (so no row runs deeper than its neuron). One
        float per row, in the order given. Raises as :meth:`neuron_pass`."""
        out = [0.0] * len(rows)
        for lay in sorted({int(t[0]) for t in targets}):
            q = [i for i, t in enumerate(targets) if int(t[0]) == lay]
            for idx in length_batches([len(rows[i]) for i in q], max_tokens, max_rows):
                res = self.neuron_pass([rows[q[j]] for j in idx], [targets[q[j]] for j in idx],
                                       attribution=False, all_acts=False)
                for j, a in zip(idx, res.act.tolist(), strict=True):
                    out[q[j]] = a
        return out

    def layer_acts(self, rows: Sequence[Sequence[int]], layers: Sequence[int]
                   ) -> tuple[Float[Tensor, "batch pos n"], Int[Tensor, " batch"]]:
        """``hook_post`` of every neuron of ``layers`` at every position of each row (BOS at 0;
        padding beyond each row's length), float32 on ``device``, columns ``j * d_mlp + i`` for
        neuron ``i`` of ``layers[j]`` as in :meth:`doc_maxima`; with each row's length (CPU).
        One right-padded pass that stops after the last layer needed, through :meth:`doc_maxima`'s
        observer (extension point (a)), so every backend has it (paper §4.2: the activation a
        neuron's maximum is taken over; the explorer's "which neurons fire on this text").

        Raises:
            ValueError: no rows, an empty row, or a layer out of range.
        """
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("A pass needs at least one non-empty row.")
        layers = [int(x) for x in layers]
        for lay in layers:
            check_neuron(lay, 0, n_layers=self.dims.n_layers, d_mlp=self.dims.d_mlp)
        got: dict[int, Tensor] = {}

        def keep(layer: int, post: Tensor, real: Tensor) -> None:
            got[layer] = post.to(torch.float32, copy=True)

        _, _, lengths = self.doc_maxima(rows, sorted(set(layers)), observe=keep)
        return torch.cat([got[lay] for lay in layers], -1), lengths

    def clean_view(self, rows: Sequence[Sequence[int]], targets: Sequence[Target],
                   positions: Sequence[int] | None = None, *, top_n: int = 5,
                   lookup: bool | Sequence[int] = False) -> NeuronPass:
        """Everything of a live clean view in one forward pass (paper §4.3, §6): activations at
        every position, raw and LN-aware head attribution, ``hook_pre``, ``prob`` of each row's
        token and the ``top_n`` next tokens; with ``lookup`` the per-source decomposition
        (docs/method.md §3; see :meth:`neuron_pass`). Raises as :meth:`neuron_pass`."""
        return self.neuron_pass(rows, targets, positions, logits=True, top_n=top_n, lookup=lookup)

    def ablated_view(self, rows: Sequence[Sequence[int]], targets: Sequence[Target], heads: Sequence,
                     positions: Sequence[int] | None = None, *, method: str = "zero",
                     mean_v: dict[int, Tensor] | None = None, top_n: int = 5) -> NeuronPass:
        """:meth:`clean_view` with ``heads`` ablated (paper §5.4): ``[(layer, head)]`` for every
        row, or one such list per row. Raises as :meth:`neuron_pass`."""
        per_row = ([list(heads)] * len(rows) if not heads or isinstance(heads[0][0], int)
                   else [list(h) for h in heads])
        return self.neuron_pass(rows, targets, positions, logits=True, top_n=top_n, ablate=per_row,
                                method=method, mean_v=mean_v)

    # --- attention knockout (docs/method.md §3, "Attention knockout") -------------------------
    def knockout(self, rows: Sequence[Sequence[int]], targets: Sequence[Target],
                 heads: Sequence[tuple[int, int]], sources: Sequence[Sequence] | None = None,
                 positions: Sequence[int] | None = None, *, renormalise: bool = RENORMALISE,
                 total: bool = True, m: int = TOP_M, max_tokens: int = 8192, max_rows: int = 64
                 ) -> list[Knockout]:
        """Attention knockout of each prompt's head at its firing position: a causal check of the
        look-up, the per-source split of the head attribution of paper §4.3 (docs/method.md §3,
        "Attention knockout"; issue 28), in length-sorted batches. One forward pass per batch on
        a fast backend (the knockouts ride along as copies of the token at ``p``); the bridge
        re-runs each knockout as its own row.

        Args:
            rows: token rows, BOS at 0 (positions after a row's firing position are not run).
            targets: ``(layer, neuron, token_id)`` per row: the neuron and the predicted token.
            heads: ``(k, h)`` per row, upstream of the row's neuron.
            sources: per row, the knockouts: each a source position or a collection of positions
                removed together. None: the ``m`` context sources with the largest look-up terms,
                one at a time, then the sink (BOS)
                (:func:`~precompute.model.knockout.default_sources`).
            positions: the firing position ``p`` per row (default its last token).
            renormalise: zero ``a[p, s]`` and renormalise the row (True, the default: Geva et
                al. 2023), or remove the source's term alone (False).
            total: also re-run the forward pass with each knockout in place (the total effect);
                without it, one clean pass and the direct effects only.

        Returns:
            One :class:`~precompute.model.knockout.Knockout` per row, in the order given.

        Raises:
            ValueError: see :func:`check_knockout`.
        """
        pos = check_knockout(self.dims, rows, targets, heads, sources, positions, renormalise)
        cut = [list(r[:p + 1]) for r, p in zip(rows, pos, strict=True)]
        out: list = [None] * len(rows)
        for idx in length_batches([len(r) for r in cut], max_tokens, max_rows):
            got = self._knockout_batch([cut[j] for j in idx], [targets[j] for j in idx],
                                       [pos[j] for j in idx], [heads[j] for j in idx],
                                       None if sources is None else [sources[j] for j in idx],
                                       renormalise, total, m)
            for q, j in enumerate(idx):
                out[j] = got[q]
        return out

    def _knockout_batch(self, rows, targets, pos: list[int], heads, sources, renormalise: bool, total: bool,
                        m: int) -> list[Knockout]:
        """:meth:`knockout` of one batch: the backend's pass (:meth:`_knockout_pass`) works out the
        plan (:class:`KnockoutPlan`) as it reaches each head's layer; the direct effects follow
        from the plan and the clean values; the total effects are the pass's own."""
        d, dev = self.dims, self.device
        w_pre, w_up = self._neuron_columns(targets)
        plan = KnockoutPlan(self, pos, heads, sources, m, renormalise, w_pre, max(len(r) for r in rows))
        read, tot = self._knockout_pass(rows, targets, pos, plan, total)
        rep = plan.rep
        delta = torch.zeros(len(rep), d.d_model, device=dev)  # the head's output at p, knocked minus clean
        for k in plan.hk.unique().tolist():
            c = (plan.hk[rep] == k).nonzero().squeeze(1)
            delta[c] = self.head_out(k, plan.hh[rep][c], plan.dz[c])
        d_pre, d_act = direct_effects(delta, w_pre[rep], read.scale[rep], read.pre[rep],
                                      normalization=d.normalization, act=activation(d.act_fn),
                                      w_up=None if w_up is None else w_up[rep],
                                      up=None if read.up is None else read.up[rep])
        nan = plan.undefined
        d_pre, d_act = d_pre.masked_fill(nan, float("nan")), d_act.masked_fill(nan, float("nan"))
        if tot is not None:
            tot = tuple(t.masked_fill(nan, float("nan")) for t in tot)
        out = []
        for j, g in enumerate(plan.groups):
            sl, t, p = slice(plan.first[j], plan.first[j] + plan.counts[j]), targets[j], pos[j]
            out.append(Knockout(layer=int(t[0]), neuron=int(t[1]), token=int(t[2]), position=p,
                                head=(int(heads[j][0]), int(heads[j][1])), renormalise=renormalise,
                                pre=float(read.pre[j]), act=float(read.act[j]), prob=float(read.prob[j]),
                                scale=float(read.scale[j]), contrib=plan.contrib[j, :p + 1].cpu(),
                                attention=plan.attention[j, :p + 1].cpu(), sources=list(g),
                                direct_pre=d_pre[sl].cpu(), direct_act=d_act[sl].cpu(),
                                total_pre=None if tot is None else (tot[0][sl] - read.pre[j]).cpu(),
                                total_act=None if tot is None else (tot[1][sl] - read.act[j]).cpu(),
                                total_prob=None if tot is None else (tot[2][sl] - read.prob[j]).cpu()))
        return out

    def _neuron_columns(self, targets
                        ) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, "batch d_model"] | None]:
        """Each row's processed ``W_pre[:, i]`` and, for a gated MLP, ``W_in[:, i]``."""
        lay = torch.tensor([int(t[0]) for t in targets])
        nr = torch.tensor([int(t[1]) for t in targets])
        ls = lay.unique().tolist()
        w_pre = columns({x: self.W_pre(x) for x in ls}, lay, nr)
        return w_pre, columns({x: self.W_in(x) for x in ls}, lay, nr) if self.dims.gated_mlp else None

    def head_out(self, layer: int, head: Int[Tensor, " n"], z: Float[Tensor, "n *pos d_head"]
                 ) -> Float[Tensor, "n *pos d_model"]:
        """``hook_result`` of head ``head[j]`` of ``layer`` for the processed ``z[j]`` (``hook_z``
        units: attention-weighted processed values), float32: ``z[j] · W_O[layer, head[j]]``."""
        return torch.einsum("n...d,ndm->n...m", z.float(), self.W_O(layer)[head])

    def head_readout(self, layer: int, head: Int[Tensor, " n"], w: Float[Tensor, "n d_model"]
                     ) -> Float[Tensor, "n d_head"]:
        """Head ``head[j]``'s read-out of direction ``w[j]``: ``u = W_O[layer, head[j]] · w[j]``, so
        that ``z · u = head_out(z) · w`` (the look-up's ``v_s · u``; float32)."""
        return torch.einsum("ndm,nm->nd", self.W_O(layer)[head], w.float())

    @abc.abstractmethod
    def _knockout_pass(self, rows, targets, pos: list[int], plan: KnockoutPlan, total: bool
                       ) -> tuple[KnockoutRead, tuple[Tensor, Tensor, Tensor] | None]:
        """The forward pass(es) of :meth:`knockout` on rows cut at their firing positions: the
        clean values, calling ``plan(layer, rows, attention, values)`` with each head's attention
        row at ``p`` and its processed values; with ``total`` also, per knockout of the plan (in
        its order), ``hook_pre``, ``hook_post`` (float32) and the token's probability (float64)
        at ``p`` with the knockout in place."""
