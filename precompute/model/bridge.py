"""The reference backend: TransformerLens' ``TransformerBridge`` hook points, for every
architecture TransformerLens supports (docs/method.md §1-§3, §6).

The bridge is loaded with compatibility mode on (fold_ln, center_writing_weights,
center_unembed, fold_value_biases) and ``hook_result`` enabled, so every quantity is read where
TransformerLens defines it: ``blocks.{l}.mlp.hook_post`` (the neuron's activation),
``blocks.{l}.mlp.hook_pre``, ``blocks.{l}.ln2.hook_scale``, ``blocks.{k}.attn.hook_result``,
``blocks.{k}.hook_mlp_out``, ``hook_embed``, ``hook_pos_embed``, ``blocks.{k}.attn.hook_v``,
and for the per-source decomposition ``blocks.{k}.attn.hook_pattern``. Exact and slow: every
hook point runs, attention is eager, and ``hook_result`` is materialised at every position.

Gated MLPs (Llama): ``hook_pre`` is the gate's pre-activation, so head attribution projects on
``W_gate`` (``W_pre``). RMSNorm models: no centring in the LN-aware score (``norm_read``).
Grouped-query attention: ``hook_v`` has one head per kv head; mean values are given per query
head (the kv head's, repeated), and a head is ablated at its own ``hook_z`` (docs/method.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from context_lookups.precompute.model.backend import (
    Backend,
    Dims,
    NeuronPass,
    PostObserver,
    Target,
)
from context_lookups.precompute.model.batching import pad
from context_lookups.precompute.model.components import attribute_components, upstream_mask
from context_lookups.precompute.model.knockout import KnockoutRead, knocked_pattern
from context_lookups.precompute.model.readout import doc_max, head_mask, probabilities
from context_lookups.precompute.model.sources import SourceTerms, decomposed_layers, readout, source_terms


def hook_post(layer: int) -> str:
    """The MLP post-activation of a 0-based layer, ``[batch, pos, d_mlp]``."""
    return f"blocks.{layer}.mlp.hook_post"


def hook_pre(layer: int) -> str:
    """The MLP pre-activation ``ln2(x) @ W_in + b_in`` of a 0-based layer."""
    return f"blocks.{layer}.mlp.hook_pre"


def hook_pre_linear(layer: int) -> str:
    """A gated MLP's up projection ``ln2(x) @ W_in + b_in`` of a 0-based layer (its ``hook_pre``
    is the gate's)."""
    return f"blocks.{layer}.mlp.hook_pre_linear"


def hook_scale(layer: int) -> str:
    """The scale of the norm before the MLP of a 0-based layer, ``[batch, pos, 1]``."""
    return f"blocks.{layer}.ln2.hook_scale"


def hook_v(layer: int) -> str:
    """The value vectors of a 0-based attention layer, ``[batch, pos, n_kv_heads, d_head]``."""
    return f"blocks.{layer}.attn.hook_v"


def hook_z(layer: int) -> str:
    """The per-query-head attention output before ``W_O``, ``[batch, pos, n_heads, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


def unsupported(bridge) -> str | None:
    """Why the method (docs/method.md §3) cannot be read off this bridge's blocks, or None: it
    needs a norm before each MLP of its own (``ln2``, whose scale the LN-aware score divides by)
    and sublayers that add their output to the residual stream unnormalised (so a head's
    ``hook_result`` is what the MLP's norm reads)."""
    names = bridge.hook_dict
    if "blocks.0.ln2.hook_scale" not in names:
        return ("its MLPs read no norm of their own (a parallel block sharing one norm, as Phi and GPT-J, "
                "or a post-norm block, as OLMo-2)")
    if any(f"blocks.0.{n}.hook_scale" in names for n in ("ln1_post", "ln2_post")):
        return ("its attention and MLP write to the residual stream through a norm (as Gemma 2 and 3), so a "
                "head's output is not what the MLP reads")
    return None


class BridgeBackend(Backend):
    """:class:`~precompute.model.backend.Backend` on a processed ``TransformerBridge``
    (``bridge``), the reference every fast backend is tested against."""

    def __init__(self, bridge, *, pad_id: int, architecture: str = ""):
        self.bridge = bridge
        self.name = "bridge"
        self.dims = Dims.of_cfg(bridge.cfg, architecture)
        self.pad_id = pad_id
        p = next(bridge.parameters())
        self.device, self.dtype = p.device, p.dtype
        self._has_pos = "hook_pos_embed" in bridge.hook_dict and self.dims.positional == "standard"

    # --- processed weights ---------------------------------------------------------------------
    def _f32(self, t: Tensor | None, *zeros: int) -> Tensor:
        """``t`` as float32, or zeros of shape ``zeros`` for a bias the model does not have."""
        if t is None:
            return torch.zeros(*zeros, device=self.device)
        return t.detach().to(dtype=torch.float32)

    def W_in(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        return self._f32(self.bridge.blocks[layer].mlp.W_in)

    def b_in(self, layer: int) -> Float[Tensor, " d_mlp"]:
        return self._f32(self.bridge.blocks[layer].mlp.b_in, self.dims.d_mlp)

    def W_pre(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        return self._f32(self.bridge.blocks[layer].mlp.W_gate) if self.dims.gated_mlp else self.W_in(layer)

    def b_pre(self, layer: int) -> Float[Tensor, " d_mlp"]:
        if not self.dims.gated_mlp:
            return self.b_in(layer)
        return self._f32(getattr(self.bridge.blocks[layer].mlp, "b_gate", None), self.dims.d_mlp)

    def W_out(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        return self._f32(self.bridge.blocks[layer].mlp.W_out)

    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        return self._f32(self.bridge.W_O[layer])

    def b_O(self, layer: int) -> Float[Tensor, " d_model"]:
        return self._f32(getattr(self.bridge.blocks[layer].attn, "b_O", None), self.dims.d_model)

    def b_V(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        d = self.dims
        b = self._f32(getattr(self.bridge.blocks[layer].attn, "b_V", None), d.n_heads, d.d_head)
        return b.repeat_interleave(d.n_heads // b.shape[0], 0)  # GQA: per query head, its kv head's

    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._f32(self.bridge.W_U)

    # --- passes --------------------------------------------------------------------------------
    def doc_maxima(self, rows, layers, *, observe: PostObserver | None = None):
        tokens, lengths = pad(rows, self.pad_id, self.device)
        pos = torch.arange(tokens.shape[1], device=self.device)
        real = (pos[None, :] < lengths[:, None]) & (pos[None, :] > 0)  # [batch, pos]
        reduced: dict[int, tuple[Tensor, Tensor]] = {}

        def keep_max(act: Tensor, hook, layer: int) -> None:
            if observe is not None:
                observe(layer, act, real)
            reduced[layer] = doc_max(act, lengths)

        with torch.no_grad(), self.bridge.hooks(fwd_hooks=[
                (hook_post(lay), lambda act, hook, lay=lay: keep_max(act, hook, lay)) for lay in layers]):
            self.bridge(tokens, stop_at_layer=max(layers) + 1)
        return (torch.cat([reduced[lay][0] for lay in layers], 1),
                torch.cat([reduced[lay][1] for lay in layers], 1), lengths.cpu())

    def value_sums(self, rows, layers):
        layers = sorted({int(k) for k in layers})
        tokens, lengths = pad(rows, self.pad_id, self.device)
        real = (torch.arange(tokens.shape[1], device=self.device)[None, :] < lengths[:, None]).double()
        with torch.no_grad():
            _, cache = self.bridge.run_with_cache(tokens, names_filter=[hook_v(k) for k in layers],
                                                  stop_at_layer=max(layers) + 1)
        group = self.dims.n_heads // self.dims.n_kv_heads  # per query head: the kv head it reads
        return {k: torch.einsum("bp,bphd->hd", real, cache[hook_v(k)].double()).repeat_interleave(group, 0)
                .cpu() for k in layers}

    def ablation_hooks(self, ablate: Sequence[Sequence[tuple[int, int]]], method: str,
                        mean_v: dict[int, Tensor] | None) -> list:
        """Forward hooks (for ``bridge.hooks(fwd_hooks=...)``) on ``hook_v`` replacing, for each
        row ``j`` of the batch, the heads ``ablate[j]`` lists — their value vectors at every
        position — by zeros (``"zero"``) or ``mean_v[layer][head]`` (``"mean"``; docs/method.md
        §6). With grouped-query attention the hooks are on ``hook_z``, the query head's own
        output, which is what its values set to zeros (or their mean) give, since attention
        weights sum to one; the shared kv head stays. Inputs as checked by
        :func:`~precompute.model.backend.check_pass`."""
        out = []
        name = hook_v if self.dims.n_kv_heads == self.dims.n_heads else hook_z
        for k in sorted({int(k) for hs in ablate for k, _ in hs}):
            mask = head_mask(ablate, k, self.dims.n_heads, self.device)  # [batch, n_heads]

            def fn(v: Tensor, hook=None, k=k, mask=mask) -> Tensor:
                fill = (mean_v[k].to(v.device, v.dtype) if method == "mean"
                        else torch.zeros(v.shape[-2:], device=v.device, dtype=v.dtype))
                return torch.where(mask[:, None, :, None], fill, v)
            out.append((name(k), fn))
        return out

    def _attribution_names(self, layers: list[int], K: int, top: int,
                           lookup: bool | Sequence[int] = False) -> list[str]:
        """The hook points head attribution reads (docs/method.md §3); with ``lookup`` (extension
        point (b)) also the attention pattern and value vectors of the layers it decomposes."""
        names = [hook_pre(lay) for lay in layers] + [f"blocks.{lay}.ln2.hook_scale" for lay in layers]
        names += ["hook_embed"] + (["hook_pos_embed"] if self._has_pos else [])
        names += [f"blocks.{k}.attn.hook_result" for k in range(K)]
        names += [f"blocks.{k}.hook_mlp_out" for k in range(top)]
        for k in decomposed_layers(lookup, K):
            names += [f"blocks.{k}.attn.hook_pattern", hook_v(k)]
        return names

    def _neuron_pass(self, rows, targets: Sequence[Target], pos: list[int], *, attribution, all_acts,
                     logits, top_n, ablate, method, mean_v,
                     lookup: bool | Sequence[int] = False) -> NeuronPass:
        tokens, lengths = pad(rows, self.pad_id, self.device)
        B = tokens.shape[0]
        layers = [int(t[0]) for t in targets]
        neurons = [int(t[1]) for t in targets]
        uniq = sorted(set(layers))
        top = max(layers)
        n_attn = [self.dims.upstream_attn_layers(lay) for lay in layers]
        K = max(n_attn)
        names = [hook_post(lay) for lay in uniq]
        if attribution:
            names += self._attribution_names(uniq, K, top, lookup)
        hooks = self.ablation_hooks(ablate, method, mean_v) if ablate is not None else []
        with torch.no_grad(), self.bridge.hooks(fwd_hooks=hooks):
            out, cache = self.bridge.run_with_cache(tokens, names_filter=names,
                                                    stop_at_layer=None if logits else top + 1)
        b = torch.arange(B, device=self.device)
        p = torch.tensor(pos, device=self.device)
        nr = torch.tensor(neurons, device=self.device)

        def per_row(name_of) -> Tensor:  # row j of the cache entry of its own layer
            return torch.stack([cache[name_of(lay)][j] for j, lay in enumerate(layers)]).float()

        post = per_row(hook_post)[b, :, nr]  # [batch, pos]
        res = NeuronPass(layers=layers, neurons=neurons, positions=pos, n_attn=n_attn, act=post[b, p])
        if all_acts:
            res.acts = [post[j, :int(lengths[j])].tolist() for j in range(B)]
        if attribution:
            self._attribute(res, cache, per_row, b, p, nr, K, lookup)
        if logits:
            res.prob, res.top = probabilities(out[b, p], targets, top_n)
        return res

    def _attribute(self, res: NeuronPass, cache, per_row, b, p, nr, K: int,
                   lookup: bool | Sequence[int] = False) -> None:
        """raw, ln, pre and other of ``res`` from the cached hook points (float32); with
        ``lookup`` the per-source decomposition (``hook_pattern`` row ``p``, ``hook_v``)."""
        layers, d, dev = res.layers, self.dims, self.device
        pairs = list(zip(layers, res.neurons, strict=True))
        w = torch.stack([self.W_pre(lay)[:, n] for lay, n in pairs])  # [batch, d_model]
        scale = per_row(lambda lay: f"blocks.{lay}.ln2.hook_scale")[b, p, 0]  # [batch]
        result = (torch.stack([cache[f"blocks.{k}.attn.hook_result"][b, p] for k in range(K)], 1).float() if K
                  else torch.zeros(len(b), 0, d.n_heads, d.d_model, device=dev))  # [batch, K, H, d_model]
        parts = {"embed": cache["hook_embed"][b, p].float()}
        if self._has_pos:
            parts["pos_embed"] = cache["hook_pos_embed"][b, p].float()
        b_O = torch.stack([self.b_O(k) for k in range(K)]) if K else torch.zeros(0, d.d_model, device=dev)
        res.raw, res.ln, res.other = attribute_components(
            result, w, scale, layers=layers, n_attn=res.n_attn, parts=parts, b_O=b_O,
            mlp={k: cache[f"blocks.{k}.hook_mlp_out"][b, p].float() for k in range(max(layers))},
            b_pre=torch.stack([self.b_pre(lay)[n] for lay, n in pairs]),
            normalization=d.normalization)
        if lookup:
            ks = decomposed_layers(lookup, K)
            group = d.n_heads // d.n_kv_heads  # GQA: hook_v per kv head; query head h reads h // group
            us = {k: readout(self.W_O(k), w) for k in ks}  # [batch, H, d_head] per layer
            pats = {k: cache[f"blocks.{k}.attn.hook_pattern"][b, :, p, :].float() for k in ks}
            vals = {k: cache[hook_v(k)].repeat_interleave(group, 2) for k in ks}
            terms = {k: source_terms(pats[k], vals[k], us[k]) for k in ks}
            res.lookup = SourceTerms.stack(terms, pats, {k: (us[k] * self.b_V(k)).sum(-1) for k in ks}, scale,
                                           upstream_mask(res.n_attn, K, dev), K, d.n_heads,
                                           cache[hook_post(layers[0])].shape[1])
        res.pre = per_row(hook_pre)[b, p, nr]

    # --- attention knockout (docs/method.md §3): the reference, by hook points -------------------
    def _knockout_pass(self, rows, targets, pos, plan, total):
        """The reference: one ``run_with_cache`` of the rows (``hook_pre``, ``hook_post``,
        ``ln2.hook_scale`` and, gated, ``hook_pre_linear`` of each row's neuron layer;
        ``hook_pattern`` row ``p`` and ``hook_v`` of its head's layer; the logits at ``p``), then
        with ``total`` every knockout its own row, the prompt re-run with row ``p`` of the head's
        ``hook_pattern`` replaced by :func:`~precompute.model.knockout.knocked_pattern` of the
        pattern the model computed."""
        dev, d = self.device, self.dims
        tokens, _ = pad(rows, self.pad_id, dev)
        B = len(rows)
        b, p = torch.arange(B, device=dev), torch.tensor(pos, device=dev)
        lay = [int(t[0]) for t in targets]
        nr = torch.tensor([int(t[1]) for t in targets], device=dev)
        ls, ks = sorted(set(lay)), plan.hk.unique().tolist()
        names = [n(x) for x in ls for n in (hook_pre, hook_post, hook_scale)]
        names += [hook_pre_linear(x) for x in ls] if d.gated_mlp else []
        names += [n for k in ks for n in (f"blocks.{k}.attn.hook_pattern", hook_v(k))]
        with torch.no_grad():
            out, cache = self.bridge.run_with_cache(tokens, names_filter=names)

        def at(name_of, rows_pos=pos, rows_lay=lay) -> Tensor:  # row j's entry of its own layer at its p
            return torch.stack([cache[name_of(x)][j, rows_pos[j]] for j, x in enumerate(rows_lay)]).float()
        group = d.n_heads // d.n_kv_heads
        for k in ks:
            r = (plan.hk == k).nonzero().squeeze(1)
            pattern = cache[f"blocks.{k}.attn.hook_pattern"][r, plan.hh[r], p[r]]
            values = torch.stack([cache[hook_v(k)][j, :, int(plan.hh[j]) // group] for j in r.tolist()])
            plan(k, r, pattern, values)
        prob, _ = probabilities(out[b, p], targets, 1)
        read = KnockoutRead(pre=at(hook_pre)[b, nr], act=at(hook_post)[b, nr], prob=prob,
                            scale=at(hook_scale)[:, 0],
                            up=at(hook_pre_linear)[b, nr] if d.gated_mlp else None)
        if not total:
            return read, None
        rep = plan.rep
        n, pr = len(rep), p[rep]
        hooks = []
        for k in ks:
            c = (plan.hk[rep] == k).nonzero().squeeze(1)

            def knock(pattern: Tensor, hook=None, c=c) -> Tensor:
                pattern = pattern.clone()
                row = pattern[c, plan.hh[rep][c], pr[c]]
                pattern[c, plan.hh[rep][c], pr[c]] = knocked_pattern(
                    row, plan.knocked[c, :row.shape[-1]], plan.renormalise).to(pattern.dtype)
                return pattern
            hooks.append((f"blocks.{k}.attn.hook_pattern", knock))
        with torch.no_grad(), self.bridge.hooks(fwd_hooks=hooks):
            out, cache = self.bridge.run_with_cache(
                tokens[rep], names_filter=[n(x) for x in ls for n in (hook_pre, hook_post)])
        lay_r, pos_r, nr_r = [lay[j] for j in rep.tolist()], pr.tolist(), nr[rep]
        r_all = torch.arange(n, device=dev)
        prob, _ = probabilities(out[r_all, pr], [targets[j] for j in rep.tolist()], 1)
        return read, (at(hook_pre, pos_r, lay_r)[r_all, nr_r], at(hook_post, pos_r, lay_r)[r_all, nr_r], prob)
