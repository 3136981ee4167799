"""Fast backends: forward hooks on the plain Hugging Face modules (docs/method.md §1-§3, §6).

One copy of the weights: the Hugging Face model as loaded (SDPA attention, no hook points). The
hooks capture only quantities that TransformerLens' weight processing leaves unchanged — the
MLP post-activation (input of ``W_out``: ``hook_post``), its pre-activation (output of ``W_in``:
``hook_pre``), the per-head ``z`` (input of ``W_O``), the residual stream the MLP's norm reads,
embeddings and MLP outputs — and only at the positions needed; the forward stops after the last
module needed (no unembedding unless asked). What processing changes is computed from the
Hugging Face weights by TransformerLens' own functions (:mod:`precompute.model.processing`), half
a block at a time: the value offset ``b_V`` and ``b_O`` of every block's attention at load,
``W_in``/``b_in`` of a block's MLP when a neuron of it is first attributed.

``hook_result`` at the target position is ``centre((z - b_V) @ W_O)`` with the Hugging Face
``W_O``: the processed ``hook_z`` is ``z - b_V`` (attention weights sum to one), and
center_writing_weights centres ``W_O`` over ``d_model``, which centres the product (LayerNorm
models; an RMSNorm model's ``W_O`` is not centred, and ``hook_result = (z - b_V) @ W_O``). With
grouped-query attention ``z`` is per query head as ever; ``b_V`` is the bias of the kv head each
query head reads.

The LN-aware score divides each component, as the norm before the MLP reads it
(:func:`~precompute.model.backend.norm_read`: centred for a LayerNorm, as is for an RMSNorm), by
that norm's scale, and projects it on ``W_pre`` (``W_in``, or ``W_gate`` for a gated MLP: the
weights whose output is ``hook_pre``; docs/method.md §3).

The per-source decomposition (docs/method.md §3, extension point (b)) reads, in the same pass,
each decomposed layer's queries, keys and values and forms the attention row at the target
position and the processed value vectors (:meth:`FastBackend._lookup_hook`, the one capture of
the look-up: GPT-2 reads the output of ``c_attn``; the other families the ``q, k, v`` of
:meth:`FastBackend.qkv_hook`, keys after rotary, grouped keys and values repeated per query head).

A family subclasses :class:`FastBackend` with its module map (:class:`Block`), its weights in
TransformerLens format, how ``v`` is read and how ``q, k, v`` are formed (:meth:`FastBackend._qkv`):
:class:`~precompute.model.gpt2.GPT2Backend`, :class:`~precompute.model.neox.NeoXBackend`,
:class:`~precompute.model.llama.LlamaBackend`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from context_lookups.precompute.model.backend import Backend, Dims, NeuronPass, centre
from context_lookups.precompute.model.batching import pad
from context_lookups.precompute.model.components import attribute_components, norm_scale, upstream_mask
from context_lookups.precompute.model.knockout import KnockoutRead
from context_lookups.precompute.model.processing import (
    centres_writes,
    kv_prefix,
    process_block,
    process_unembed,
)
from context_lookups.precompute.model.readout import doc_max, head_mask, probabilities
from context_lookups.precompute.model.sources import (
    SourceTerms,
    attention_row,
    decomposed_layers,
    readout,
    source_terms,
)


class _Stop(Exception):
    """Raised by the last hook needed: the rest of the forward pass is not run."""


@dataclass
class Block:
    """The Hugging Face modules of one block that a fast backend hooks."""

    ln2: torch.nn.Module        # forward pre-hook input: the residual stream the MLP's norm reads
    attn_o: torch.nn.Module     # forward pre-hook input: z, [batch, pos, n_heads * d_head]; W_O
    mlp: torch.nn.Module        # output: the MLP's output (hook_mlp_out); input: the normed stream
    mlp_in: torch.nn.Module     # output: hook_pre; W_pre (W_in, or W_gate of a gated MLP)
    mlp_out: torch.nn.Module    # forward pre-hook input: hook_post; W_out
    qkv: torch.nn.Module        # output: carries v (read by FastBackend._values; GPT-2: q, k, v)
    attn: torch.nn.Module | None = None  # the attention; pre-hook (with kwargs): FastBackend._qkv
    mlp_up: torch.nn.Module | None = None  # gated MLPs: output hook_pre_linear (x W_in), read by knockout


# (module, pre, fn): pre False: forward hook fn(module, args, output); True: forward pre-hook
# fn(module, args); "kwargs": forward pre-hook with keyword arguments fn(module, args, kwargs).
Hook = tuple[torch.nn.Module, bool | str, Callable]


class FastBackend(Backend):
    """A :class:`~precompute.model.backend.Backend` on a plain Hugging Face model ``hf`` of a
    supported family; ``cfg`` is its TransformerLens config (dims, weight processing).

    Attributes (float32 on ``device``): ``b_V [n_layers, n_heads, d_head]``, what the plain
    ``z`` holds beyond the processed ``hook_z`` (per query head); ``b_V_proc`` the processed value
    bias per query head (zero after ``fold_value_biases``); ``b_O_proc [n_layers, d_model]``, the
    processed ``b_O`` (zeros without one); ``ln2_eps``: each block's norm epsilon; ``centred``:
    whether processing centres the writing weights (LayerNorm models).
    """

    family = ""

    def __init__(self, hf: torch.nn.Module, cfg, *, pad_id: int, architecture: str):
        self.hf, self.cfg, self.pad_id = hf, cfg, pad_id
        self.dims = Dims.of_cfg(cfg, architecture)
        self.name = f"fast ({self.family})"
        p = next(hf.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.base = hf.base_model
        self.head = hf.get_output_embeddings()
        self.blocks = self._blocks()
        self.embed, self.pos_embed = self._embeddings()
        self.ln2_eps = [float(getattr(b.ln2, "eps", None) or b.ln2.variance_epsilon) for b in self.blocks]
        self.centred = centres_writes(cfg)
        self._mlp_in: dict[int, tuple[Tensor, Tensor]] = {}
        f32 = {"device": self.device, "dtype": torch.float32}
        H, D = self.dims.n_heads, self.dims.d_head
        b_V, b_V_proc, b_O = [], [], []
        for layer in range(self.dims.n_layers):
            w = self._block(layer, "attn")
            b_V.append(w["attn.b_V_folded"].to(**f32))
            bv = w.get(f"attn.{kv_prefix(cfg)}b_V")
            b_V_proc.append(torch.zeros(H, D, **f32) if bv is None
                            else bv.to(**f32).repeat_interleave(H // bv.shape[0], 0))
            b_O.append(w["attn.b_O"].to(**f32) if "attn.b_O" in w else torch.zeros(self.dims.d_model, **f32))
        self.b_V, self.b_V_proc, self.b_O_proc = torch.stack(b_V), torch.stack(b_V_proc), torch.stack(b_O)

    # --- what a family provides ----------------------------------------------------------------
    @abc.abstractmethod
    def _blocks(self) -> list[Block]:
        """The hooked modules of each block, in order."""

    @abc.abstractmethod
    def _embeddings(self) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """The token embedding and the positional embedding added to the stream (or None)."""

    @abc.abstractmethod
    def tl_block(self, layer: int) -> dict[str, Tensor]:
        """Block ``layer``'s weights in TransformerLens format (views; see
        :func:`precompute.model.processing.process_block`)."""

    @abc.abstractmethod
    def tl_unembed(self) -> dict[str, Tensor]:
        """``ln_final.w``, ``ln_final.b``, ``unembed.W_U [d_model, d_vocab]``, ``unembed.b_U``."""

    @abc.abstractmethod
    def W_O_plain(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        """The Hugging Face ``W_O`` of ``layer`` (unprocessed; a view)."""

    @abc.abstractmethod
    def _values(self, layer: int, qkv_out: Tensor) -> Float[Tensor, "batch pos n_heads d_head"]:
        """The plain value vectors (``hook_v + b_V``) from the output of ``Block.qkv``, per query
        head (with grouped-query attention, each kv head's repeated for the query heads that
        read it)."""

    def _qkv(self, layer: int, hidden: Tensor, position_embeddings
             ) -> tuple[Float[Tensor, "batch pos n_heads d_head"], Float[Tensor, "batch pos n_kv d_head"],
                        Float[Tensor, "batch pos n_kv d_head"]]:
        """Queries, keys (after rotary, where the family has it) and plain values of block
        ``layer``'s attention from its input ``hidden`` (the normed stream, ``[batch, pos,
        d_model]``) and the ``position_embeddings`` (``(cos, sin)``) it was called with; query
        head ``h`` attends with ``softmax(q_h k_g^T / sqrt(d_head))`` over ``s <= p`` to kv head
        ``g = h // (n_heads // n_kv_heads)``. Read through :meth:`qkv_hook`.

        Raises:
            NotImplementedError: a family without it (GPT-2, for now)."""
        raise NotImplementedError(f"{self.name} does not form q, k, v")

    def qkv_hook(self, layer: int, fn: Callable[[Tensor, Tensor, Tensor], None]) -> Hook:
        """A hook for :meth:`capture` calling ``fn(q, k, v)`` (:meth:`_qkv`) when block ``layer``'s
        attention runs: what a per-source-token decomposition of head attribution reads (the
        pattern row ``a[p, :]`` and the values at every position; module docstring of
        :mod:`precompute.model.backend`, extension point (b))."""
        def pre(mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            fn(*self._qkv(layer, hidden, kwargs.get("position_embeddings")))
        return (self.blocks[layer].attn, "kwargs", pre)

    def _lookup_hook(self, layer: int, pos: Int[Tensor, " batch"],
                     fn: Callable[[Tensor, Tensor], None]) -> Hook:
        """The capture of the per-source decomposition of attention layer ``layer``
        (docs/method.md §3; the one per-family point of the look-up): a hook for :meth:`capture`
        calling ``fn(pattern, values)`` when the layer's attention runs, with ``pos [batch]``
        each row's 0-based target position (BOS at 0).

        ``pattern [batch, n_heads, pos]`` (float32): the attention row of every query head at
        each row's target position, ``a[b, h, s] = softmax_{s <= pos[b]}(q_p · k_s · scaling)``
        (zero for ``s > pos[b]`` and outside a sliding window; each row sums to 1 — what the
        model's attention computes, rotary positions and grouped keys included: query head
        ``h`` reads kv head ``h // (n_heads // n_kv_heads)``). ``values [batch, pos, n_heads,
        d_head]``: the plain value vectors at every position, one per query head (``hook_v + b_V``
        with ``b_V = self.b_V[layer]``, which the terms subtract; a view where the family can).

        This base reads :meth:`qkv_hook` (:meth:`_qkv`); GPT-2 overrides it with the output of
        ``c_attn``.

        Raises:
            NotImplementedError: a family with neither (it says which method to provide).
        """
        if type(self)._qkv is FastBackend._qkv:
            raise NotImplementedError(
                f"{type(self).__name__} ({self.family or 'this family'}) implements neither "
                f"FastBackend._qkv nor FastBackend._lookup_hook, which the per-source decomposition "
                f"(lookup) needs; use --backend bridge for this model.")
        d = self.dims
        group = d.n_heads // d.n_kv_heads
        scaling = float(getattr(self.blocks[layer].attn, "scaling", d.d_head ** -0.5))
        window = self._sliding_window(layer)

        def on_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
            b = torch.arange(q.shape[0], device=q.device)
            qp = q[b, pos].float()  # [batch, n_heads, d_head] at each row's target position
            kk = k.float().repeat_interleave(group, 2).transpose(1, 2)  # [batch, n_heads, pos, d_head]
            pattern = attention_row((kk @ qp[..., None])[..., 0], pos, scaling=scaling, window=window)
            fn(pattern, v.repeat_interleave(group, 2) if group > 1 else v)
        return self.qkv_hook(layer, on_qkv)

    def _sliding_window(self, layer: int) -> int | None:
        """The sliding window of block ``layer``'s attention (a key ``s`` is seen from ``p`` when
        ``p - window < s <= p``), or None for full causal attention."""
        return getattr(self.blocks[layer].attn, "sliding_window", None)

    # --- processed weights -----------------------------------------------------------------------
    # The halves of a block that TransformerLens' processing treats independently: the attention
    # with the norm before it, the MLP with its own (a family whose MLP reads the attention's norm
    # overrides this).
    PARTS: ClassVar[dict[str, tuple[str, str]]] = {"attn": ("ln1.", "attn."), "mlp": ("ln2.", "mlp.")}

    def _block(self, layer: int, part: str) -> dict[str, Tensor]:
        """The processed weights of one half of block ``layer`` (:data:`PARTS`)."""
        keep = self.PARTS[part]
        return process_block(self.cfg, {k: v for k, v in self.tl_block(layer).items() if k.startswith(keep)})

    def _mlp(self, layer: int, name: str) -> tuple[Tensor, Tensor]:
        """Processed ``mlp.W_{name}``, ``mlp.b_{name}`` (zeros when absent) of ``layer``."""
        w = self._block(layer, "mlp")
        W = w[f"mlp.W_{name}"].to(self.device)
        b = w.get(f"mlp.b_{name}")
        return W, (torch.zeros(W.shape[1], device=self.device) if b is None else b.to(self.device))

    def _w_pre(self, layer: int) -> tuple[Tensor, Tensor]:
        """``W_pre``, ``b_pre`` of ``layer``, processed when a neuron of it is first attributed."""
        got = self._mlp_in.get(layer)
        if got is None:
            got = self._mlp_in[layer] = self._mlp(layer, "gate" if self.dims.gated_mlp else "in")
        return got

    def W_pre(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        return self._w_pre(layer)[0]

    def b_pre(self, layer: int) -> Float[Tensor, " d_mlp"]:
        return self._w_pre(layer)[1]

    def W_in(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        return self._mlp(layer, "in")[0] if self.dims.gated_mlp else self._w_pre(layer)[0]

    def b_in(self, layer: int) -> Float[Tensor, " d_mlp"]:
        return self._mlp(layer, "in")[1] if self.dims.gated_mlp else self._w_pre(layer)[1]

    def W_out(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        return self._block(layer, "mlp")["mlp.W_out"].to(self.device)

    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        return self._block(layer, "attn")["attn.W_O"].to(self.device)

    def b_O(self, layer: int) -> Float[Tensor, " d_model"]:
        return self.b_O_proc[layer]

    def b_V(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        return self.b_V_proc[layer]

    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return process_unembed(self.cfg, self.tl_unembed()).to(self.device)

    # --- the forward pass ------------------------------------------------------------------------
    def capture(self, tokens: Int[Tensor, "batch pos"], hooks: Sequence[Hook], *,
                stop: torch.nn.Module | None, final: bool = False, **inputs
                ) -> Float[Tensor, "batch pos d_model"] | None:
        """One forward pass of the plain model with ``hooks`` — ``(module, pre, fn)``: a forward
        pre-hook ``fn(module, args)`` if ``pre`` else a forward hook ``fn(module, args, output)``;
        a pre-hook may return new args (ablation) — registered in order. The pass stops right
        before ``stop`` runs (after its pre-hooks); with ``final`` it runs to the end and returns
        the base model's last hidden state ``[batch, pos, d_model]`` (no unembedding). ``inputs``:
        further arguments of the Hugging Face model (``past_key_values``, ``position_ids``,
        ``attention_mask``: the knockout's cached passes); with ``past_key_values`` the cache is
        filled (or read) as the model does."""
        handles = []
        try:
            for mod, pre, fn in hooks:
                handles.append(mod.register_forward_pre_hook(fn, with_kwargs=pre == "kwargs") if pre
                               else mod.register_forward_hook(fn))
            if stop is not None:
                def halt(mod, args):
                    raise _Stop
                handles.append(stop.register_forward_pre_hook(halt))
            with torch.no_grad():
                try:
                    out = self.base(input_ids=tokens, use_cache="past_key_values" in inputs, **inputs)
                except _Stop:
                    return None
            return out.last_hidden_state if final else None
        finally:
            for h in handles:
                h.remove()

    def doc_maxima(self, rows, layers, *, observe=None):
        tokens, lengths = pad(rows, self.pad_id, self.device)
        pos = torch.arange(tokens.shape[1], device=self.device)
        real = (pos[None, :] < lengths[:, None]) & (pos[None, :] > 0)  # [batch, pos]
        reduced: dict[int, tuple[Tensor, Tensor]] = {}

        def keep_max(act: Tensor, layer: int) -> None:
            if observe is not None:
                observe(layer, act, real)
            reduced[layer] = doc_max(act, lengths)

        hooks = [(self.blocks[lay].mlp_out, True, lambda m, a, lay=lay: keep_max(a[0], lay))
                 for lay in layers]
        self.capture(tokens, hooks, stop=self.blocks[max(layers)].mlp_out)
        return (torch.cat([reduced[lay][0] for lay in layers], 1),
                torch.cat([reduced[lay][1] for lay in layers], 1), lengths.cpu())

    def value_sums(self, rows, layers):
        layers = sorted({int(k) for k in layers})
        tokens, lengths = pad(rows, self.pad_id, self.device)
        real = (torch.arange(tokens.shape[1], device=self.device)[None, :] < lengths[:, None]).double()
        sums: dict[int, Tensor] = {}

        def add(layer: int, out: Tensor) -> None:
            v = self._values(layer, out).double() - self.b_V[layer].double()  # hook_v
            sums[layer] = torch.einsum("bp,bphd->hd", real, v).cpu()
        hooks = [(self.blocks[k].qkv, False, lambda m, a, out, k=k: add(k, out)) for k in layers]
        self.capture(tokens, hooks, stop=self.blocks[max(layers)].mlp)
        return sums

    def _ablation_hook(self, layer: int, ablate, method: str, mean_v) -> Hook:
        """A pre-hook on ``W_O`` of ``layer`` that ablates, per row, the heads listed for it:
        equal to setting ``hook_v[:, :, h]`` to 0 (``"zero"``) or ``mean_v[layer][h]``
        (``"mean"``) at every position, since attention weights sum to one: the processed
        ``hook_z`` becomes 0 (or the mean value vector), i.e. the plain ``z`` becomes ``b_V``
        (+ the mean). With grouped-query attention this is the query head's ``z`` alone: the
        values of the kv head it shares are left to the other query heads (docs/method.md §6)."""
        H, D = self.dims.n_heads, self.dims.d_head
        mask = head_mask(ablate, layer, H, self.device)
        fill = self.b_V[layer] + (mean_v[layer].to(self.device) if method == "mean" else 0.0)

        def fn(mod, args):
            z = args[0].unflatten(-1, (H, D))
            z = torch.where(mask[:, None, :, None], fill.to(z.dtype), z)
            return (z.flatten(-2), *args[1:])
        return (self.blocks[layer].attn_o, True, fn)

    def _attribution_hooks(self, got: dict, r_of: dict, b: Tensor, pos: Tensor, K: int, top: int,
                           w: Tensor | None = None, lookup: bool | Sequence[int] = False) -> list[Hook]:
        """Hooks reading, at each row's target position, the per-head ``z`` of the ``K``
        upstream attention layers, the embeddings, the earlier MLPs' outputs, and per target
        layer the pre-activation and the stream its norm reads (docs/method.md §3). With ``w``
        (each row's processed ``W_pre[:, i]``, ``[batch, d_model]``), also the per-source terms
        of every head of the layers ``lookup`` asks for (extension point (b)), reduced as each
        layer's attention runs (:meth:`_lookup_hook`): ``centre(v W_O) · w = v · (W_O ·
        centre(w))`` where processing centres ``W_O`` (LayerNorm models; as is otherwise), so
        the plain ``W_O`` serves."""
        B = len(b)
        hooks: list[Hook] = [(self.embed, False,
                              lambda m, a, out: got.__setitem__("embed", out[b, pos].float()))]
        if self.pos_embed is not None:
            hooks.append((self.pos_embed, False, lambda m, a, out: got.__setitem__(
                "pos_embed", out.expand(B, *out.shape[1:])[b, pos].float())))
        for lay, (r, nr, pr) in r_of.items():
            hooks.append((self.blocks[lay].mlp_in, False, lambda mod, args, out, r=r, nr=nr, pr=pr, lay=lay:
                          got.__setitem__(("pre", lay), out[r, pr, nr].float())))
            hooks.append((self.blocks[lay].ln2, True, lambda mod, args, r=r, pr=pr, lay=lay:
                          got.__setitem__(("resid", lay), args[0][r, pr].float())))
        for k in range(K):
            hooks.append((self.blocks[k].attn_o, True,
                          lambda m, a, k=k: got.__setitem__(("z", k), a[0][b, pos].float())))
        for k in range(top):
            hooks.append((self.blocks[k].mlp, False, lambda m, a, out, k=k: got.__setitem__(
                ("mlp", k), (out[0] if isinstance(out, tuple) else out)[b, pos].float())))
        if w is not None:
            cw = centre(w) if self.centred else w
            for k in decomposed_layers(lookup, K):
                def terms(pattern: Tensor, values: Tensor, k: int = k) -> None:
                    u = got["u", k] = readout(self.W_O_plain(k), cw)
                    got["src", k], got["att", k] = source_terms(pattern, values, u, self.b_V[k]), pattern
                hooks.append(self._lookup_hook(k, pos, terms))
        return hooks

    def _neuron_pass(self, rows, targets, pos_l, *, attribution, all_acts, logits, top_n, ablate, method,
                     mean_v, lookup: bool | Sequence[int] = False) -> NeuronPass:
        dev = self.device
        tokens, _ = pad(rows, self.pad_id, dev)
        B, L = tokens.shape
        layers = torch.tensor([int(t[0]) for t in targets], device=dev)
        neurons = torch.tensor([int(t[1]) for t in targets], device=dev)
        pos = torch.tensor(pos_l, device=dev)
        b = torch.arange(B, device=dev)
        top = int(layers.max())
        n_attn = [self.dims.upstream_attn_layers(x) for x in layers.tolist()]
        got: dict = {}
        hooks: list[Hook] = []
        if ablate is not None:
            hooks += [self._ablation_hook(k, ablate, method, mean_v)
                      for k in sorted({int(k) for hs in ablate for k, _ in hs})]
        # Only the target positions of the deepest layer's MLP are read, and nothing runs after it:
        # without per-position activations, attribution or logits its MLP runs on those positions
        # alone ([batch, 1, d_model] instead of [batch, pos, d_model]).
        sliced = not (all_acts or attribution or logits)
        if sliced:
            hooks.append((self.blocks[top].mlp, True, lambda m, a: (a[0][b, pos][:, None], *a[1:])))
        r_of = {}
        for lay in sorted(set(layers.tolist())):
            r = (layers == lay).nonzero().squeeze(1)
            r_of[lay] = (r, neurons[r], pos[r])

            def post(mod, args, r=r, nr=neurons[r], pr=pos[r], lay=lay):
                x = args[0]
                if sliced and lay == top:
                    got["post", lay] = x[r, 0, nr].float()
                else:
                    got["post", lay] = (x[r, :, nr] if all_acts else x[r, pr, nr]).float()
            hooks.append((self.blocks[lay].mlp_out, True, post))
        if attribution:
            w = self._readers(r_of, B) if lookup else None
            hooks += self._attribution_hooks(got, r_of, b, pos, max(n_attn), top, w, lookup)
        hidden = self.capture(tokens, hooks, stop=None if logits else self.blocks[top].mlp_out, final=logits)

        res = NeuronPass(layers=layers.tolist(), neurons=neurons.tolist(), positions=pos_l, n_attn=n_attn)
        post_all = torch.empty((B, L) if all_acts else (B,), device=dev)
        for lay, (r, _, _) in r_of.items():
            post_all[r] = got["post", lay]
        res.act = post_all[b, pos] if all_acts else post_all
        if all_acts:
            res.acts = [post_all[j, :len(rows[j])].tolist() for j in range(B)]
        if attribution:
            self._attribute(res, got, r_of, layers, neurons, lookup, L)
        if logits:
            res.prob, res.top = probabilities(self.head(hidden[b, pos]), targets, top_n)
        return res

    def _readers(self, r_of: dict, B: int) -> Float[Tensor, "batch d_model"]:
        """Each row's processed ``W_pre[:, i]`` (its neuron's reading direction)."""
        w = torch.empty(B, self.dims.d_model, device=self.device)
        for lay, (r, nr, _) in r_of.items():
            w[r] = self._w_pre(lay)[0][:, nr].T
        return w

    def _attribute(self, res: NeuronPass, got: dict, r_of: dict, layers: Tensor, neurons: Tensor,
                   lookup: bool | Sequence[int] = False, length: int = 0) -> None:
        """raw, ln, pre and other of ``res`` from the captured quantities (float32); with
        ``lookup`` the per-source terms captured by :meth:`_attribution_hooks`."""
        dev, H = self.device, self.dims.n_heads
        B, K, top = len(res.layers), max(res.n_attn), int(layers.max())
        pre = torch.empty(B, device=dev)
        resid = torch.empty(B, self.dims.d_model, device=dev)
        eps = torch.empty(B, device=dev)
        w = torch.empty(B, self.dims.d_model, device=dev)  # each row's processed W_pre[:, i]
        b_pre = torch.empty(B, device=dev)
        for lay, (r, nr, _) in r_of.items():
            W, bias = self._w_pre(lay)
            pre[r], resid[r], eps[r] = got["pre", lay], got["resid", lay], self.ln2_eps[lay]
            w[r], b_pre[r] = W[:, nr].T, bias[nr]

        scale = norm_scale(resid, eps, self.dims.normalization)  # the norm's hook_scale, [batch]
        result = self._results(got, B, K)
        res.raw, res.ln, res.other = attribute_components(
            result, w, scale, layers=res.layers, n_attn=res.n_attn,
            parts={k: got[k] for k in ("embed", "pos_embed") if k in got}, b_O=self.b_O_proc[:K],
            mlp={k: got["mlp", k] for k in range(top)}, b_pre=b_pre, normalization=self.dims.normalization)
        if lookup:
            ks = decomposed_layers(lookup, K)
            res.lookup = SourceTerms.stack({k: got["src", k] for k in ks}, {k: got["att", k] for k in ks},
                                           {k: (got["u", k] * self.b_V_proc[k]).sum(-1) for k in ks},
                                           scale, upstream_mask(res.n_attn, K, dev), K, H, length)
        res.pre = pre

    def _results(self, got: dict, B: int, K: int) -> Float[Tensor, "batch K n_heads d_model"]:
        """``hook_result`` of every head of the ``K`` upstream layers at the target positions,
        from the captured per-head ``z`` (K = 0: no upstream head)."""
        H, D = self.dims.n_heads, self.dims.d_head
        if not K:
            return torch.zeros(B, 0, H, self.dims.d_model, device=self.device)
        z = torch.stack([got["z", k] for k in range(K)], 1).unflatten(-1, (H, D))  # [batch, K, H, D]
        return torch.stack([self.head_result(k, z[:, k] - self.b_V[k]) for k in range(K)], 1)

    def head_out(self, layer: int, head: Int[Tensor, " n"], z: Float[Tensor, "n *pos d_head"]
                 ) -> Float[Tensor, "n *pos d_model"]:
        """:meth:`Backend.head_out <precompute.model.backend.Backend.head_out>` with the plain
        ``W_O``, centred where processing centres it (as :meth:`head_result`)."""
        out = torch.einsum("n...d,ndm->n...m", z.float(), self.W_O_plain(layer).float()[head])
        return centre(out) if self.centred else out

    def head_readout(self, layer: int, head: Int[Tensor, " n"], w: Float[Tensor, "n d_model"]
                     ) -> Float[Tensor, "n d_head"]:
        """:meth:`Backend.head_readout <precompute.model.backend.Backend.head_readout>` with the
        plain ``W_O``: ``centre(z W_O) · w = z · (W_O · centre(w))`` where processing centres it."""
        w = centre(w.float()) if self.centred else w.float()
        return torch.einsum("ndm,nm->nd", self.W_O_plain(layer).float()[head], w)

    # --- attention knockout (docs/method.md §3) -------------------------------------------------
    def _knockout_pass(self, rows, targets, pos, plan, total):
        """One pass of the plain model, to the end. The clean values are read at each row's firing
        position ``p``, and the plan is worked out as each head's layer runs (its attention row
        and values from the look-up capture, :meth:`_lookup_hook`).

        With ``total``, each row carries its knockouts in the same pass: copies of its token at
        ``p``, appended after ``p``, each at position ``p`` (``position_ids``) and seeing the keys
        ``s < p`` and itself (a 4D mask, with the layer's sliding window), and at layer ``k`` the
        head's ``z`` of copy ``c`` moved by ``plan.dz[c]``. A knockout at ``p`` changes nothing
        before ``p`` (causal attention) nor at ``p`` below layer ``k``, so each copy computes
        what re-running the prompt with that knockout computes at ``p``; the clean positions do
        not see the copies. The tests check it against the bridge, which re-runs the prompts."""
        dev, d = self.device, self.dims
        B = len(rows)
        counts = plan.counts if total else [0] * B
        p = torch.tensor(pos, device=dev)
        tokens, _ = pad([list(rows[j][:pos[j] + 1]) + [rows[j][pos[j]]] * counts[j] for j in range(B)],
                        self.pad_id, dev)
        rep = plan.rep if total else torch.zeros(0, dtype=torch.long, device=dev)
        col = torch.tensor([pos[j] + 1 + i for j in range(B) for i in range(counts[j])], dtype=torch.long,
                           device=dev)
        qb, qp = torch.cat([torch.arange(B, device=dev), rep]), torch.cat([p, col])  # where values are read
        lay = torch.tensor([int(t[0]) for t in targets], device=dev)
        nr = torch.tensor([int(t[1]) for t in targets], device=dev)
        got = {x: torch.zeros(len(qb), device=dev) for x in ("pre", "act", "up")}
        resid = torch.empty(B, d.d_model, device=dev)
        eps = torch.tensor([self.ln2_eps[int(x)] for x in lay.tolist()], device=dev)
        hooks: list[Hook] = []

        def read(name: str, q: Tensor, x: Tensor) -> None:
            got[name][q] = x[qb[q], qp[q], nr[qb[q]]].float()
        for layer in lay.unique().tolist():
            q = (lay[qb] == layer).nonzero().squeeze(1)
            r = (lay == layer).nonzero().squeeze(1)
            blk = self.blocks[layer]
            hooks.append((blk.mlp_in, False, lambda m, a, out, q=q: read("pre", q, out)))
            hooks.append((blk.mlp_out, True, lambda m, a, q=q: read("act", q, a[0])))
            hooks.append((blk.ln2, True, lambda m, a, r=r: resid.__setitem__(r, a[0][r, p[r]].float())))
            if d.gated_mlp:
                hooks.append((blk.mlp_up, False, lambda m, a, out, q=q: read("up", q, out)))
        for k in plan.hk.unique().tolist():
            r = (plan.hk == k).nonzero().squeeze(1)

            def lookup(pattern: Tensor, values: Tensor, k: int = k, r: Tensor = r) -> None:
                hh = plan.hh[r]
                v = values[r][torch.arange(len(r), device=dev), :, hh].float() - self.b_V[k][hh][:, None, :]
                plan(k, r, pattern[r, hh], v)
            hooks.append(self._lookup_hook(k, p, lookup))
            if total:
                cs = plan.copies(r)

                def shift(mod, args, cs=cs):
                    z = args[0].unflatten(-1, (d.n_heads, d.d_head)).clone()
                    z[rep[cs], col[cs], plan.hh[rep[cs]]] += plan.dz[cs].to(z.dtype)
                    return (z.flatten(-2), *args[1:])
                hooks.append((self.blocks[k].attn_o, True, shift))
        inputs = self._copies_inputs(p, tokens.shape[1]) if total else {}
        hidden = self.capture(tokens, hooks, stop=None, final=True, **inputs)
        prob, _ = probabilities(self.head(hidden[qb, qp]), [targets[j] for j in qb.tolist()], 1)
        out = KnockoutRead(pre=got["pre"][:B], act=got["act"][:B], prob=prob[:B],
                           scale=norm_scale(resid, eps, d.normalization),
                           up=got["up"][:B] if d.gated_mlp else None)
        return out, (got["pre"][B:], got["act"][B:], prob[B:]) if total else None

    def _copies_inputs(self, p: Int[Tensor, " batch"], T: int) -> dict:
        """``position_ids [batch, T]`` and the additive 4D ``attention_mask [batch, 1, T, T]`` of
        rows that carry copies of their token at ``p[b]`` after ``p[b]`` (:meth:`_knockout_pass`):
        position ``q <= p`` sees ``s <= q``; a copy (and the padding after the copies) sits at
        position ``p`` and sees ``s < p`` and itself; every query sees only keys within its
        layer's sliding window (``s > position - window``). One mask, or one per layer type
        (``config.layer_types``) when the layers' windows differ."""
        q = torch.arange(T, device=self.device)
        at = torch.minimum(q[None, :], p[:, None])  # [batch, T]: each query's position
        s = q[None, None, :]
        base = (s < at[:, :, None]) | (s == q[None, :, None])  # [batch, T, T]
        fill = torch.finfo(self.dtype).min

        def mask(window: int | None) -> Tensor:
            seen = base & (s > at[:, :, None] - window) if window is not None else base
            zero = torch.zeros(seen.shape, dtype=self.dtype, device=self.device)
            return zero.masked_fill(~seen, fill)[:, None]
        windows = [self._sliding_window(k) for k in range(self.dims.n_layers)]
        if len(set(windows)) == 1:
            masks = mask(windows[0])
        else:
            types = self.hf.config.layer_types
            masks = {types[k]: mask(windows[k]) for k in range(self.dims.n_layers)}
        return {"position_ids": at, "attention_mask": masks}

    def head_result(self, layer: int, z: Float[Tensor, "batch n_heads d_head"]
                    ) -> Float[Tensor, "batch n_heads d_model"]:
        """``hook_result`` of every head of ``layer`` for processed ``z`` (``hook_z``: the plain
        ``z`` minus ``b_V``), float32: ``centre(z @ W_O)`` with the plain ``W_O`` where processing
        centres the writing weights (LayerNorm models), ``z @ W_O`` otherwise (module docstring)."""
        out = torch.einsum("bhd,hdm->bhm", z.float(), self.W_O_plain(layer).float())
        return centre(out) if self.centred else out
