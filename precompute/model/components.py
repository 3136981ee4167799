"""Head attribution and the other components of a neuron's pre-activation, as every backend
computes them (docs/method.md §3: raw and LN-aware head attribution, the other components):
the formula's one home. A backend reads the quantities at its capture points (the bridge its
hook points, a fast backend the plain modules) and calls :func:`attribute_components`.

For neuron ``(l, i)`` at position ``p``, with ``w = W_pre[l][:, i]`` (processed) and ``σ`` the
scale of the norm before the MLP at ``p``:

    raw[k, h] = hook_result[k][p, h] · w                     (residual-stream units)
    ln[k, h]  = norm_read(hook_result[k][p, h]) · w / σ      (pre-activation units)
    other[c]  = norm_read(c) · w / σ  for c in embed, pos_embed, b_O (summed over the upstream
                layers), mlp{k} (each earlier MLP's output); other["b_in"] = b_pre[i]

``norm_read`` centres for a LayerNorm and leaves an RMSNorm's input as is, so ``Σ ln + Σ
other`` is ``hook_pre[l][p, i]`` exactly (the tests check it on every family).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def centre(x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """``x`` minus its mean over the last (``d_model``) axis: what a LayerNorm does before it
    scales, so ``centre(x) · w / scale`` is ``x``'s contribution to a LayerNorm-read
    pre-activation (docs/method.md §3)."""
    return x - x.mean(dim=-1, keepdim=True)


def norm_read(x: Float[Tensor, "... d_model"], normalization: str) -> Float[Tensor, "... d_model"]:
    """What the norm before an MLP divides by its scale (docs/method.md §3): ``centre(x)`` for a
    LayerNorm (``LN``, ``LNPre``), ``x`` itself for an RMSNorm (``RMS``, ``RMSPre``: no
    centring). A component ``x`` of the residual stream contributes ``norm_read(x) · w / scale``
    to a pre-activation, with ``scale = sqrt(mean(norm_read(resid)²) + eps)``."""
    return centre(x) if normalization in ("LN", "LNPre") else x


def upstream_mask(n_attn: Sequence[int], K: int, device: torch.device | str) -> Bool[Tensor, "batch K"]:
    """``[j, k]``: whether attention layer ``k`` is upstream of row ``j``'s neuron (``k <
    n_attn[j]``; :meth:`Dims.upstream_attn_layers <precompute.model.backend.Dims.upstream_attn_layers>`)."""
    return torch.arange(K, device=device)[None, :] < torch.tensor(list(n_attn), device=device)[:, None]


def norm_scale(resid: Float[Tensor, "batch d_model"], eps: Float[Tensor, " batch"] | float, normalization: str
               ) -> Float[Tensor, " batch"]:
    """The scale the norm before an MLP divides by (its ``hook_scale``), from the residual stream
    it reads: ``sqrt(mean(norm_read(resid)²) + eps)`` — centred for a LayerNorm, as is for an
    RMSNorm (docs/method.md §3)."""
    return (norm_read(resid, normalization).pow(2).mean(-1) + eps).sqrt()


def attribute_components(result: Float[Tensor, "batch K n_heads d_model"], w: Float[Tensor, "batch d_model"],
                         scale: Float[Tensor, " batch"], *, layers: Sequence[int], n_attn: Sequence[int],
                         parts: Mapping[str, Float[Tensor, "batch d_model"]], b_O: Float[Tensor, "K d_model"],
                         mlp: Mapping[int, Float[Tensor, "batch d_model"]], b_pre: Float[Tensor, " batch"],
                         normalization: str
                         ) -> tuple[Float[Tensor, "batch K n_heads"], Float[Tensor, "batch K n_heads"],
                                    list[dict[str, float]]]:
    """Raw and LN-aware head attribution and the other components of each row's pre-activation
    (docs/method.md §3; paper §4.3), float32.

    Args:
        result: each upstream head's ``hook_result`` at the row's target position (processed
            weights; ``K`` = attention layers upstream of the deepest row's neuron).
        w: each row's ``W_pre[:, i]`` (``W_in``, or ``W_gate`` of a gated MLP), processed.
        scale: the norm's ``hook_scale`` before the row's MLP at its target position.
        layers, n_attn: each row's neuron layer and number of upstream attention layers.
        parts: ``embed`` (and ``pos_embed`` where the model adds one to the stream) at the
            target position, in the order they are reported.
        b_O: the processed ``b_O`` of layers ``0..K-1``.
        mlp: ``{k: hook_mlp_out[k] at the target position}`` for every ``k`` below the deepest
            row's layer (row ``j`` reads those below its own layer).
        b_pre: the bias of ``hook_pre`` of each row's neuron (``b_in``, or ``b_gate``).
        normalization: ``Dims.normalization`` (``LN``/``LNPre`` centre, ``RMS``/``RMSPre`` do not).

    Returns:
        ``raw [batch, K, n_heads]`` (residual-stream units), ``ln [batch, K, n_heads]``
        (pre-activation units), zero for the layers not upstream of a row; and per row the other
        components ``{embed, [pos_embed], b_O, mlp0.., b_in}`` (pre-activation units), in that order.
    """
    def read(x: Tensor) -> Tensor:  # what the MLP's norm divides by its scale
        return norm_read(x, normalization)
    up = upstream_mask(n_attn, result.shape[1], w.device)[:, :, None]
    raw = torch.einsum("bkhm,bm->bkh", result, w) * up
    ln = torch.einsum("bkhm,bm->bkh", read(result), w) / scale[:, None, None] * up
    comp = {k: (read(v) * w).sum(-1) / scale for k, v in parts.items()}
    b_O_w = (read(b_O) @ w.T).T  # [batch, K]
    mlp_w = {k: (read(v) * w).sum(-1) / scale for k, v in mlp.items()}
    other = []
    for j, lay in enumerate(layers):
        o = {k: float(v[j]) for k, v in comp.items()}
        o["b_O"] = float(b_O_w[j, :n_attn[j]].sum() / scale[j])
        for k in range(lay):
            o[f"mlp{k}"] = float(mlp_w[k][j])
        o["b_in"] = float(b_pre[j])  # the bias of hook_pre (b_gate for a gated MLP)
        other.append(o)
    return raw, ln, other
