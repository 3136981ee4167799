"""Streaming max-activation scan, running top-k per neuron, and trimming (paper §4.2,
docs/method.md §2)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .models import LoadedModel

logger = logging.getLogger(__name__)


def hook_post(layer: int) -> str:
    """Name of the post-GELU MLP activation hook of a 0-based layer."""
    return f"blocks.{layer}.mlp.hook_post"


def hook_pre(layer: int) -> str:
    """Name of the MLP pre-activation hook (``ln2(x) @ W_in + b_in``) of a 0-based layer."""
    return f"blocks.{layer}.mlp.hook_pre"


class TopK:
    """Running top-k documents per neuron; memory ``3 × k × n_neurons`` numbers, whatever the
    corpus size.

    ``values[r, n]`` is the r-th largest (descending) max activation of neuron column ``n``,
    ``docs[r, n]`` its document index (-1 where fewer than k documents were seen) and
    ``positions[r, n]`` the token position of the max (0-based, BOS at position 0).
    """

    def __init__(self, k: int, n_neurons: int):
        self.k = k
        self.values = torch.full((k, n_neurons), float("-inf"))
        self.docs = torch.full((k, n_neurons), -1, dtype=torch.long)
        self.positions = torch.zeros((k, n_neurons), dtype=torch.long)

    def update(self, values: Float[Tensor, "batch n"], positions: Int[Tensor, "batch n"],
               doc_ids: Int[Tensor, "batch"]) -> None:
        """Merge one batch of per-document maxima into the running top-k."""
        all_v = torch.cat([self.values, values.float()], dim=0)
        all_d = torch.cat([self.docs, doc_ids[:, None].expand_as(values)], dim=0)
        all_p = torch.cat([self.positions, positions], dim=0)
        # The k largest; a stable sort breaks ties by the earlier document (the running top-k
        # comes first and is itself so ordered), so any sharding of the corpus merges to the
        # same top-k (distributed.merge_scans).
        top_v, idx = torch.sort(all_v, dim=0, descending=True, stable=True)
        idx = idx[:self.k]
        self.values = top_v[:self.k]
        self.docs = all_d.gather(0, idx)
        self.positions = all_p.gather(0, idx)


def batches(items, size: int):
    """Consecutive lists of ``size`` items (the last may be shorter) from any iterable,
    without materialising it: the scan's memory does not grow with the corpus."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_batch(model: LoadedModel, texts: Sequence[str], context_tokens: int) -> list[list[int]]:
    """BOS + the first ``context_tokens - 1`` tokens of each text (docs/method.md §2)."""
    enc = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[model.bos_token_id] + ids[:context_tokens - 1] for ids in enc]


def pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch"]]:
    """Right-pad token rows. Causal attention means real positions never see padding, so no
    attention mask is needed; returns the padded tensor and each row's length."""
    n = max(len(r) for r in rows)
    out = torch.full((len(rows), n), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out, torch.tensor([len(r) for r in rows])


def run_hooks(model: LoadedModel, tokens: Int[Tensor, "batch pos"], names: list[str],
              stop_at_layer: int | None) -> dict[str, Tensor]:
    """Forward pass that caches only ``names`` and stops after block ``stop_at_layer - 1``."""
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=names,
                                               stop_at_layer=stop_at_layer)
    return {n: cache[n] for n in names}


@dataclass
class ScanResult:
    """Top-k of one split for every neuron of the scanned layers.

    ``values/docs/positions``: ``[k, len(layers) * d_mlp]``; column ``j * d_mlp + i`` is neuron
    ``i`` of ``layers[j]``. ``n_docs``/``n_tokens``: what was scanned; ``seconds``: wall time.
    """

    layers: list[int]
    d_mlp: int
    values: Tensor
    docs: Tensor
    positions: Tensor
    n_docs: int
    n_tokens: int
    seconds: float

    def column(self, layer: int, neuron: int) -> int:
        return self.layers.index(layer) * self.d_mlp + neuron


def scan(model: LoadedModel, texts: Iterator[str] | Sequence[str], *, layers: list[int], k: int,
         batch_size: int, context_tokens: int, n_docs: int | None = None,
         desc: str = "scan") -> ScanResult:
    """One streaming pass over ``texts`` keeping, for every neuron of ``layers``, the ``k``
    documents with the highest max activation (paper §4.2).

    The activation of neuron (l, i) on a document is ``max_pos hook_post[l][pos, i]`` over the
    document's real tokens after BOS (BOS itself is excluded: its activation is the same in
    every document). Forward passes stop after the last layer needed and cache only the
    ``hook_post`` of ``layers``.

    Raises:
        ValueError: if ``texts`` is empty.
    """
    import time

    t0 = time.time()
    names = [hook_post(l) for l in layers]
    top = TopK(k, len(layers) * model.d_mlp)
    n_seen = n_tok = 0
    bar = tqdm(total=n_docs, desc=desc, unit="doc", dynamic_ncols=True)
    for batch in batches(texts, batch_size):
        rows = tokenize_batch(model, batch, context_tokens)
        tokens, lengths = pad(rows, model.bos_token_id)
        pos = torch.arange(tokens.shape[1])
        invalid = (pos[None, :] >= lengths[:, None]) | (pos[None, :] == 0)
        reduced: dict[str, tuple[Tensor, Tensor]] = {}

        def keep_max(act: Tensor, hook) -> None:  # reduce in the hook: nothing is cached
            v, i = act.float().masked_fill(invalid[:, :, None], float("-inf")).max(dim=1)
            reduced[hook.name] = (v, i)  # [batch, d_mlp] each

        with torch.no_grad(), model.bridge.hooks(fwd_hooks=[(n, keep_max) for n in names]):
            model.bridge(tokens, stop_at_layer=max(layers) + 1)
        vals = [reduced[n][0] for n in names]
        idxs = [reduced[n][1] for n in names]
        doc_ids = torch.arange(n_seen, n_seen + len(batch))
        top.update(torch.cat(vals, 1), torch.cat(idxs, 1), doc_ids)
        n_seen += len(batch)
        n_tok += int(lengths.sum())
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{n_tok / max(time.time() - t0, 1e-9):,.0f}")
    bar.close()
    if n_seen == 0:
        raise ValueError("The corpus is empty: nothing to scan.")
    return ScanResult(layers, model.d_mlp, top.values, top.docs, top.positions, n_seen, n_tok,
                      time.time() - t0)


def neuron_acts(model: LoadedModel, rows: Sequence[Sequence[int]], layer: int, neuron: int) -> list[list[float]]:
    """Post-GELU activation of neuron (layer, neuron) at every position of each token row
    (rows include BOS), in one right-padded batch."""
    tokens, lengths = pad(rows, model.bos_token_id)
    acts = run_hooks(model, tokens, [hook_post(layer)], stop_at_layer=layer + 1)[hook_post(layer)]
    a = acts[:, :, neuron].float()
    return [a[j, :lengths[j]].tolist() for j in range(len(rows))]


def trim(model: LoadedModel, docs: Sequence[Sequence[int]], max_positions: Sequence[int],
         layer: int, neuron: int, *, act_ratio: float,
         orig_acts: Sequence[float] | None = None) -> list[tuple[int, float, float]]:
    """Trim each document to the shortest suffix, ending at its max-activating token, on which
    the neuron still reaches ``act_ratio`` of its original activation (paper §4.2).

    Args:
        docs: token rows *with* BOS at index 0, as scanned.
        max_positions: the max-activating position in each row (>= 1).
        orig_acts: the activation at each max position if already known (the scan's values,
            saving the longest forward pass); computed when None.
    Returns:
        per document ``(start, original_act, trimmed_act)``: the prompt is
        ``[BOS] + row[start : max_position + 1]``; BOS is prepended at every step of the binary
        search exactly as in the scan (the authors' code trimmed without BOS). ``start`` is the
        latest start with ``act >= act_ratio * original_act``; ``start = 1`` keeps the document.

    All documents are searched together: one batched forward pass per bisection step.
    """
    bos = model.bos_token_id
    n = len(docs)
    full = [list(docs[j][:max_positions[j] + 1]) for j in range(n)]
    orig = list(orig_acts) if orig_acts is not None else \
        [a[-1] for a in neuron_acts(model, full, layer, neuron)]
    lo = [1] * n                      # known good start (the whole document)
    hi = [max_positions[j] for j in range(n)]  # latest possible start: the max token alone
    best = list(orig)
    while True:
        todo = [j for j in range(n) if lo[j] < hi[j]]
        if not todo:
            break
        mids = {j: (lo[j] + hi[j] + 1) // 2 for j in todo}
        rows = [[bos] + full[j][mids[j]:] for j in todo]
        got = neuron_acts(model, rows, layer, neuron)
        for j, a in zip(todo, got):
            if a[-1] >= act_ratio * orig[j]:
                lo[j], best[j] = mids[j], a[-1]
            else:
                hi[j] = mids[j] - 1
    return [(lo[j], orig[j], best[j]) for j in range(n)]
