"""Head attribution of a neuron's activation (paper §4.3, docs/method.md §3) and active-head rules.

Raw score (the paper's): ``A[k, h] = hook_result[k][p, h, :] · W_in[l][:, i]``.
LN-aware score (beyond the paper): ``A[k, h] / ln2_scale[l][p]`` after centring, so that the
contributions of all components — heads, ``b_O``, earlier MLPs, embeddings and ``b_in`` — add
up to the neuron's pre-activation ``hook_pre[l][p, i]``.

The model work is the backend's (:mod:`precompute.model`: ``neuron_pass`` computes both scores
in batched passes); this module holds the rules. The live server calls these same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from context_lookups.precompute.model import LoadedModel, check_head


def head_label(layer: int, head: int) -> str:
    """The field's name of a head: ``L10H7`` (0-based layer and head)."""
    return f"L{layer}H{head}"


def parse_heads(text: str, *, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """Parse ``"L1H3,L0H2"`` into ``[(1, 3), (0, 2)]``.

    Raises:
        ValueError: a malformed label or one outside ``L0..L{n_layers-1}``, ``H0..H{n_heads-1}``.
    """
    import re

    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"[Ll](\d+)[Hh](\d+)", part)
        if not m:
            raise ValueError(f"Head {part!r} is not of the form L<layer>H<head>, e.g. L1H3.")
        k, h = int(m.group(1)), int(m.group(2))
        check_head(k, h, n_layers=n_layers, n_heads=n_heads)
        if (k, h) not in out:
            out.append((k, h))
    return out


def upstream_attn_layers(model: LoadedModel, layer: int) -> int:
    """Number of attention layers that write to the residual stream before MLP ``layer`` reads
    it: ``layer + 1`` for GPT-2-style blocks, ``layer`` for parallel attention/MLP (Pythia)."""
    return model.dims.upstream_attn_layers(layer)


def scored_layers(layer: int, heads_upto: str, n_upstream: int) -> int:
    """Number of head layers that are scored for a neuron of ``layer`` (paper §4.3): heads of
    layers ``<= layer`` (``"le"``, the paper's formula) or ``< layer`` (``"lt"``, the authors'
    code), never beyond the ``n_upstream`` attention layers that write before the MLP reads
    (``upstream_attn_layers``; also the length of a stored prompt's ``attr_raw``)."""
    n = layer + 1 if heads_upto == "le" else layer
    return min(n, n_upstream)


def active_heads_of_run(scores: Float[Tensor, "... n"], settings) -> Bool[Tensor, "... n"]:
    """``active_heads`` with the rule a run was computed with (``settings``: its
    ``precompute.core.settings.Settings``, e.g. ``run_settings(run)``): the one place where the
    precompute job and the live pass read the rule."""
    return active_heads(scores, rule=settings.active_rule, sigma=settings.active_sigma,
                        k=settings.active_topk)


@dataclass
class Attribution:
    """Head attribution of neuron (layer, neuron) for a batch of prompts, at each prompt's
    target position (its last token unless another was asked).

    Shapes: ``raw``/``ln``: ``[batch, n_attn_layers, n_heads]`` for the attention layers
    upstream of the neuron (``upstream_attn_layers``); ``act``/``pre``: ``[batch]`` (post-GELU
    activation and pre-activation at the target position); ``acts``: per prompt, the neuron's
    activation at every position including BOS. ``other``: LN-aware contributions of the
    non-head components (``embed``, ``pos_embed``, ``b_O``, ``mlp{k}``, ``b_in``), ``[batch]``
    each. Units: residual-stream dot products (raw) and pre-activation units (ln).
    """

    raw: Float[Tensor, "batch attn_layers n_heads"]
    ln: Float[Tensor, "batch attn_layers n_heads"]
    act: Float[Tensor, " batch"]
    pre: Float[Tensor, " batch"]
    acts: list[list[float]]
    other: dict[str, Tensor] = field(default_factory=dict)

    def ln_total(self) -> Float[Tensor, " batch"]:
        """Sum of every LN-aware contribution; equals ``pre`` up to float error."""
        return self.ln.sum(dim=(1, 2)) + sum(self.other.values())


def attribute(model: LoadedModel, rows: Sequence[Sequence[int]], layer: int, neuron: int, *,
              positions: Sequence[int] | None = None,
              ablate: Sequence[tuple[int, int]] | None = None) -> Attribution:
    """Attribute neuron (layer, neuron)'s pre-activation to upstream components (paper §4.3),
    in one batched pass of the model's backend.

    Args:
        rows: token rows including BOS at index 0 (right-padded internally, one batch).
        positions: the 0-based target position in each row (default: each row's last token).
        ablate: heads ``(layer, head)`` zero-ablated in every row (docs/method.md §6), if any.

    Returns:
        Attribution with raw (paper) and LN-aware head scores for every upstream head.

    Raises:
        ValueError: no rows, a layer, neuron or head out of range, or a position outside its row.
    """
    res = model.backend.neuron_pass(rows, [(layer, neuron)] * len(rows), positions,
                                    ablate=None if ablate is None else [list(ablate)] * len(rows))
    n = upstream_attn_layers(model, layer)
    return Attribution(raw=res.raw[:, :n], ln=res.ln[:, :n], act=res.act, pre=res.pre, acts=res.acts,
                       other={k: torch.tensor([o[k] for o in res.other]) for k in res.other[0]})


def active_heads(scores: Float[Tensor, "... n"], *, rule: str = "2sigma", sigma: float = 2.0,
                 k: int = 3) -> Bool[Tensor, "... n"]:
    """Mark the active heads among the scored heads of one prompt (paper §4.3).

    ``"2sigma"`` (Feb 2024): ``A > mean(A) + sigma · std(A)`` over the scored heads (std with
    Bessel's correction, as ``torch.std``). ``"topk"`` (Oct 2023): the ``k`` largest A (ties
    broken by lower index).

    Raises:
        ValueError: an unknown rule.
    """
    if rule == "2sigma":
        thr = scores.mean(-1, keepdim=True) + sigma * scores.std(-1, keepdim=True)
        return scores > thr
    if rule == "topk":
        idx = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
        return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, idx, True)
    raise ValueError(f"Unknown active-head rule {rule!r}: use '2sigma' or 'topk'.")


def active_fraction(active: Bool[Tensor, "prompts n"]) -> Float[Tensor, " n"]:
    """Fraction of prompts on which each head is active."""
    return active.float().mean(0)


