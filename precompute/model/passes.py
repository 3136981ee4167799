"""Batched neuron passes on the fast path (:mod:`precompute.model.hooks`): one forward pass gives, for
rows that may each target a different neuron, the neuron's activations, its raw and LN-aware
head attributions (paper §4.3, docs/method.md §3), its pre-activation, and the probability of
its token with the top next tokens (§6) — the unembedding applied at the target positions only.

The precompute job batches trimming and attribution across neurons and prompts through
:func:`neuron_pass`; the live server's clean view is :func:`clean_view` and its ablated view
:func:`ablated_view` (a second pass only when heads are ablated).

Signatures (``rows``: token rows with BOS at index 0; ``targets``: one ``(layer, neuron,
token_id)`` per row, ``token_id`` may be None; ``positions``: 0-based target position per row,
default each row's last token)::

    clean_view(model, rows, targets, positions=None, *, top_n=5) -> NeuronPass
    ablated_view(model, rows, targets, heads, positions=None, *, method="zero", mean_v=None,
                 top_n=5) -> NeuronPass   # heads: [(layer, head)] for all rows, or one list per row
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from precompute.model.hooks import FastModel, capture, fast_model, length_batches, pad, z_ablation_hook

Target = tuple  # (layer, neuron) or (layer, neuron, token_id)


@dataclass
class NeuronPass:
    """Per-row results of one batched pass (row ``j`` targets ``layers[j]``, ``neurons[j]`` at
    ``positions[j]``).

    ``acts``: the neuron's post-GELU activation at every position incl. BOS (one list per row);
    ``act``/``pre``: at the target position, ``[batch]`` float32. With attribution: ``raw``/
    ``ln`` ``[batch, K, n_heads]`` (K = attention layers upstream of the deepest target; row
    ``j``'s scores are ``[:n_attn[j]]``, zeros beyond), residual-stream units (raw) and
    pre-activation units (ln); ``other``: per row, the LN-aware contributions of the non-head
    components (``embed``, ``pos_embed``, ``b_O``, ``mlp{k}``, ``b_in``). With a token:
    ``prob`` (softmax probability of the row's token, float64) and ``top`` (the ``top_n`` most
    probable next tokens, ``[(id, prob)]``).
    """

    layers: list[int]
    neurons: list[int]
    positions: list[int]
    acts: list[list[float]] = field(default_factory=list)
    act: Float[Tensor, "batch"] | None = None
    pre: Float[Tensor, "batch"] | None = None
    raw: Float[Tensor, "batch K n_heads"] | None = None
    ln: Float[Tensor, "batch K n_heads"] | None = None
    n_attn: list[int] = field(default_factory=list)
    other: list[dict[str, float]] = field(default_factory=list)
    prob: Float[Tensor, "batch"] | None = None
    top: list[list[tuple[int, float]]] = field(default_factory=list)


def _centre(x: Tensor) -> Tensor:
    return x - x.mean(dim=-1, keepdim=True)


def _check(model, rows, targets, positions):
    if not rows:
        raise ValueError("A neuron pass needs at least one prompt.")
    if len(targets) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(targets)} targets.")
    for t in targets:
        layer, neuron = int(t[0]), int(t[1])
        if not 0 <= layer < model.n_layers or not 0 <= neuron < model.d_mlp:
            raise ValueError(f"Neuron L{layer}N{neuron} out of range: layers 0..{model.n_layers - 1}, "
                             f"neurons 0..{model.d_mlp - 1}.")
        if len(t) > 2 and t[2] is not None and not 0 <= int(t[2]) < model.cfg.d_vocab:
            raise ValueError(f"Token id {t[2]} out of range 0..{model.cfg.d_vocab - 1}.")
    pos = [len(r) - 1 for r in rows] if positions is None else [int(p) for p in positions]
    if any(not 0 <= p < len(r) for p, r in zip(pos, rows)):
        raise ValueError("A target position lies outside its prompt.")
    return pos


def neuron_pass(model, rows: Sequence[Sequence[int]], targets: Sequence[Target],
                positions: Sequence[int] | None = None, *, attribution: bool = True,
                all_acts: bool = True, logits: bool = False, top_n: int = 5,
                ablate: Sequence[Sequence[tuple[int, int]]] | None = None, method: str = "zero",
                mean_v: dict[int, Tensor] | None = None) -> NeuronPass:
    """One forward pass (one right-padded batch) of ``rows`` on the fast path.

    Args:
        targets: ``(layer, neuron[, token_id])`` per row (0-based).
        attribution: compute ``raw``/``ln``/``pre``/``other`` (paper §4.3).
        all_acts: keep the activation at every position (else only ``act``).
        logits: run to the end and compute ``prob``/``top`` at the target positions only.
        ablate: per row, the ``(layer, head)`` whose value vectors are ablated (§6).

    Raises:
        ValueError: no rows, a layer/neuron/token/position out of range.
    """
    pos_l = _check(model, rows, targets, positions)
    fm = fast_model(model)
    dev = fm.device
    tokens, _ = pad(rows, model.bos_token_id, dev)
    B, L = tokens.shape
    layers = torch.tensor([int(t[0]) for t in targets], device=dev)
    neurons = torch.tensor([int(t[1]) for t in targets], device=dev)
    pos = torch.tensor(pos_l, device=dev)
    b = torch.arange(B, device=dev)
    top_layer = int(layers.max())
    got: dict = {}
    hooks = []
    if ablate is not None:
        for k in sorted({int(k) for hs in ablate for k, _ in hs}):
            hooks.append(z_ablation_hook(fm, k, [[h for kk, h in hs if kk == k] for hs in ablate],
                                         method=method, mean_v=mean_v))
    # Only the target positions of the deepest layer's MLP are read, and nothing runs after it:
    # without per-position activations, attribution or logits its MLP runs on those positions
    # alone ([batch, 1, d_model] instead of [batch, pos, d_model]).
    sliced = not (all_acts or attribution or logits)
    if sliced:
        hooks.append((fm.blocks[top_layer].mlp, True, lambda m, a: (a[0][b, pos][:, None], *a[1:])))
    for lay in sorted(set(layers.tolist())):
        r = (layers == lay).nonzero().squeeze(1)
        nr, pr = neurons[r], pos[r]

        def post(mod, args, r=r, nr=nr, pr=pr, lay=lay):
            x = args[0]
            if sliced and lay == top_layer:
                got["post", lay] = x[r, 0, nr].float()
            else:
                got["post", lay] = (x[r, :, nr] if all_acts else x[r, pr, nr]).float()
        hooks.append((fm.blocks[lay].mlp_out, True, post))
        if attribution:
            hooks.append((fm.blocks[lay].mlp_in, False,
                          lambda mod, args, out, r=r, nr=nr, pr=pr, lay=lay:
                          got.__setitem__(("pre", lay), out[r, pr, nr].float())))
            hooks.append((fm.blocks[lay].ln2, True,
                          lambda mod, args, r=r, pr=pr, lay=lay:
                          got.__setitem__(("resid", lay), args[0][r, pr].float())))
    n_attn = [int(x) + 1 for x in layers.tolist()]
    if attribution:
        K = top_layer + 1
        hooks.append((fm.embed, False, lambda m, a, out: got.__setitem__("embed", out[b, pos].float())))
        if fm.pos_embed is not None:
            hooks.append((fm.pos_embed, False, lambda m, a, out: got.__setitem__(
                "pos_embed", out.expand(B, *out.shape[1:])[b, pos].float())))
        for k in range(K):
            hooks.append((fm.blocks[k].attn_o, True,
                          lambda m, a, k=k: got.__setitem__(("z", k), a[0][b, pos].float())))
        for k in range(top_layer):
            hooks.append((fm.blocks[k].mlp, False, lambda m, a, out, k=k: got.__setitem__(
                ("mlp", k), (out[0] if isinstance(out, tuple) else out)[b, pos].float())))
    hidden = capture(fm, tokens, hooks, stop=None if logits else fm.blocks[top_layer].mlp_out,
                     final=logits)

    res = NeuronPass(layers=layers.tolist(), neurons=neurons.tolist(), positions=pos_l, n_attn=n_attn)
    post_all = torch.empty((B, L) if all_acts else (B,), device=dev)
    for lay in sorted(set(res.layers)):
        post_all[(layers == lay).nonzero().squeeze(1)] = got["post", lay]
    res.act = post_all[b, pos] if all_acts else post_all
    if all_acts:
        res.acts = [post_all[j, :len(rows[j])].tolist() for j in range(B)]
    if attribution:
        _attribute(fm, res, got, layers, neurons, top_layer)
    if logits:
        _probabilities(fm, res, hidden[b, pos], targets, top_n)
    return res


def _attribute(fm: FastModel, res: NeuronPass, got: dict, layers: Tensor, neurons: Tensor,
               top_layer: int) -> None:
    """raw, ln, pre, other of ``res`` from the captured quantities (float32)."""
    B, K = len(res.layers), top_layer + 1
    n_heads, d_head = fm.b_V.shape[1:]
    pre = torch.empty(B, device=fm.device)
    resid = torch.empty(B, fm.W_in.shape[1], device=fm.device)
    eps = torch.empty(B, device=fm.device)
    for lay in sorted(set(res.layers)):
        r = (layers == lay).nonzero().squeeze(1)
        pre[r], resid[r], eps[r] = got["pre", lay], got["resid", lay], fm.ln2_eps[lay]
    scale = (_centre(resid).pow(2).mean(-1) + eps).sqrt()  # ln2's hook_scale, [batch]
    w = fm.W_in[layers, :, neurons]  # [batch, d_model]
    z = torch.stack([got["z", k] for k in range(K)], 1).unflatten(-1, (n_heads, d_head))
    result = torch.einsum("bkhd,khdm->bkhm", z - fm.b_V[:K], fm.W_O[:K])  # hook_result at pos
    upstream = (torch.arange(K, device=fm.device)[None, :] < torch.tensor(res.n_attn, device=fm.device)[:, None])
    res.raw = torch.einsum("bkhm,bm->bkh", result, w) * upstream[:, :, None]
    res.ln = torch.einsum("bkhm,bm->bkh", _centre(result), w) / scale[:, None, None] * upstream[:, :, None]
    res.pre = pre
    parts = {k: (_centre(got[k]) * w).sum(-1) / scale for k in ("embed", "pos_embed") if k in got}
    b_O = (_centre(fm.b_O[:K]) @ w.T).T  # [batch, K]
    mlp = {k: (_centre(got["mlp", k]) * w).sum(-1) / scale for k in range(top_layer)}
    b_in = fm.b_in[layers, neurons]
    for j in range(B):
        n = res.n_attn[j]
        o = {k: float(v[j]) for k, v in parts.items()}
        o["b_O"] = float(b_O[j, :n].sum() / scale[j])
        for k in range(res.layers[j]):
            o[f"mlp{k}"] = float(mlp[k][j])
        o["b_in"] = float(b_in[j])
        res.other.append(o)


def _probabilities(fm: FastModel, res: NeuronPass, h: Tensor, targets, top_n: int) -> None:
    probs = fm.head(h).double().softmax(-1)  # [batch, d_vocab]: the target positions only
    tok = torch.tensor([int(t[2]) if len(t) > 2 and t[2] is not None else 0 for t in targets],
                       device=fm.device)
    res.prob = probs[torch.arange(len(tok), device=fm.device), tok]
    v, i = probs.topk(min(top_n, probs.shape[-1]), dim=-1)
    res.top = [list(zip(i[j].tolist(), v[j].tolist())) for j in range(len(tok))]


def clean_view(model, rows: Sequence[Sequence[int]], targets: Sequence[Target],
               positions: Sequence[int] | None = None, *, top_n: int = 5) -> NeuronPass:
    """Everything of a live clean view in ONE forward pass (paper §4.3, §6): per row, the
    neuron's activations at all positions, raw and LN-aware head attributions, pre-activation,
    ``prob`` of its token and the ``top_n`` next tokens at the target position. Rows may target
    different neurons. See :func:`neuron_pass` for shapes and errors."""
    return neuron_pass(model, rows, targets, positions, logits=True, top_n=top_n)


def ablated_view(model, rows: Sequence[Sequence[int]], targets: Sequence[Target],
                 heads: Sequence, positions: Sequence[int] | None = None, *, method: str = "zero",
                 mean_v: dict[int, Tensor] | None = None, top_n: int = 5) -> NeuronPass:
    """:func:`clean_view` with ``heads`` ablated (paper §5.4; ``"zero"``: value vectors set to
    0 at every position, ``"mean"``: to ``mean_v``). ``heads``: ``[(layer, head)]`` for every
    row, or one such list per row.

    Raises:
        ValueError: as :func:`neuron_pass`; a head out of range; mean without ``mean_v``."""
    per_row = [list(heads)] * len(rows) if not heads or isinstance(heads[0][0], int) else [list(h) for h in heads]
    for hs in per_row:
        for k, h in hs:
            if not (0 <= k < model.n_layers and 0 <= h < model.n_heads):
                raise ValueError(f"Head L{k}H{h} out of range: layers 0..{model.n_layers - 1}, "
                                 f"heads 0..{model.n_heads - 1}.")
            if method == "mean" and (mean_v is None or k not in mean_v):
                raise ValueError(f"Mean ablation needs the mean value vectors of layer {k}.")
    return neuron_pass(model, rows, targets, positions, logits=True, top_n=top_n,
                       ablate=per_row, method=method, mean_v=mean_v)


def batched_pass(model, rows: Sequence[Sequence[int]], targets: Sequence[Target],
                 positions: Sequence[int] | None = None, *, max_tokens: int = 8192,
                 max_rows: int = 64, **kw) -> list[NeuronPass]:
    """:func:`neuron_pass` over many rows in length-sorted batches of at most ``max_rows`` rows
    and ``max_tokens`` padded tokens; returns one single-row :class:`NeuronPass` per row, in the
    order given."""
    pos = [len(r) - 1 for r in rows] if positions is None else list(positions)
    out: list = [None] * len(rows)
    for idx in length_batches([len(r) for r in rows], max_tokens, max_rows):
        res = neuron_pass(model, [rows[j] for j in idx], [targets[j] for j in idx],
                          [pos[j] for j in idx], **kw)
        for q, j in enumerate(idx):
            out[j] = _row(res, q)
    return out


def target_acts(model, rows: Sequence[Sequence[int]], targets: Sequence[Target], *,
                max_tokens: int = 8192, max_rows: int = 64) -> list[float]:
    """Each row's neuron activation (``hook_post``, float32) at its last token, for trimming
    (paper §4.2): :func:`neuron_pass` without attribution, per-position activations or logits,
    in length-sorted batches of one layer each (at most ``max_rows`` rows and ``max_tokens``
    padded tokens), so that no row runs deeper than its neuron and the deepest MLP runs on the
    last tokens alone. Returns one float per row, in the order given.

    Raises:
        ValueError: as :func:`neuron_pass`."""
    out = [0.0] * len(rows)
    for lay in sorted({int(t[0]) for t in targets}):
        q = [i for i, t in enumerate(targets) if int(t[0]) == lay]
        for idx in length_batches([len(rows[i]) for i in q], max_tokens, max_rows):
            res = neuron_pass(model, [rows[q[j]] for j in idx], [targets[q[j]] for j in idx],
                              attribution=False, all_acts=False)
            for j, a in zip(idx, res.act.tolist()):
                out[q[j]] = a
    return out


def _row(res: NeuronPass, q: int) -> NeuronPass:
    """Row ``q`` of a batched result as a one-row :class:`NeuronPass`."""
    def pick(t):
        return None if t is None else t[q:q + 1]
    return NeuronPass(layers=[res.layers[q]], neurons=[res.neurons[q]], positions=[res.positions[q]],
                      acts=res.acts[q:q + 1], act=pick(res.act), pre=pick(res.pre),
                      raw=None if res.raw is None else res.raw[q:q + 1, :res.n_attn[q]],
                      ln=None if res.ln is None else res.ln[q:q + 1, :res.n_attn[q]],
                      n_attn=res.n_attn[q:q + 1], other=res.other[q:q + 1], prob=pick(res.prob),
                      top=res.top[q:q + 1])
