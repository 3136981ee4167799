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

from context_lookups.precompute.core.memory import available_memory
from context_lookups.precompute.model import LoadedModel, PostObserver, batches, tokenize_batch
from context_lookups.precompute.prompts.histogram import N_BINS, Histograms

logger = logging.getLogger(__name__)


# Peak memory per (kept document, neuron) of a scan: the running top-k and its merges (~90-140
# bytes, measured) plus the rows stored from it (~320 bytes), rounded up.
SCAN_BYTES_PER_ENTRY = 600
# Peak memory per scanned neuron of its activation histogram: the running counts, one batch's
# counts and the rows stored from them (int64 and Python ints), rounded up.
HISTOGRAM_BYTES_PER_NEURON = N_BINS * 48


def top_k_for(top_k: int, n_docs: int) -> int:
    """The k a scan of ``n_docs`` documents keeps: ``--top-k``, capped by the documents (a
    neuron has no more top documents than there are; the stored rows are the same)."""
    return max(1, min(top_k, n_docs))


def check_scan_memory(k: int, n_layers: int, d_mlp: int, available: int | None = None) -> int:
    """The scan's estimated peak memory in bytes (``k × n_layers × d_mlp ×
    SCAN_BYTES_PER_ENTRY`` for the top-k, plus ``n_layers × d_mlp × HISTOGRAM_BYTES_PER_NEURON``
    for the activation histograms), checked before anything is allocated or written.

    Raises:
        BadSettings: the estimate exceeds ``available`` (default: :func:`available_memory`);
            the message says what to lower.
    """
    from context_lookups.precompute.core.errors import BadSettings

    need = n_layers * d_mlp * (k * SCAN_BYTES_PER_ENTRY + HISTOGRAM_BYTES_PER_NEURON)
    available = available_memory() if available is None else available
    if available is not None and need > available:
        raise BadSettings(f"{k} top documents per neuron (--top-k and its reserve) over {n_layers} layers x "
                          f"{d_mlp} neurons needs about {need / 1e9:.1f} GB for the scan's top documents and "
                          f"histograms, and {available / 1e9:.1f} GB of memory is available: "
                          f"lower --top-k or analyse fewer --layers.")
    return need


class TopK:
    """Running top-k documents per neuron; memory ``3 × k × n_neurons`` numbers, whatever the
    corpus size (peak with merges and storage: :data:`SCAN_BYTES_PER_ENTRY` bytes per entry,
    checked by :func:`check_scan_memory`).

    ``values[r, n]`` is the r-th largest (descending) max activation of neuron column ``n``,
    ``docs[r, n]`` its document index (-1 where fewer than k documents were seen) and
    ``positions[r, n]`` the token position of the max (0-based, BOS at position 0).
    """

    def __init__(self, k: int, n_neurons: int, device: torch.device | str = "cpu"):
        self.k = k
        self.values = torch.full((k, n_neurons), float("-inf"), device=device)
        self.docs = torch.full((k, n_neurons), -1, dtype=torch.long, device=device)
        self.positions = torch.zeros((k, n_neurons), dtype=torch.long, device=device)

    def update(self, values: Float[Tensor, "batch n"], positions: Int[Tensor, "batch n"],
               doc_ids: Int[Tensor, " batch"]) -> None:
        """Merge one batch of per-document maxima into the running top-k (on its device)."""
        dev = self.values.device
        self._merge(values.float().to(dev), doc_ids.to(dev)[:, None].expand_as(values), positions.to(dev))

    @classmethod
    def of(cls, res) -> TopK:
        """A running top-k holding a :class:`ScanResult`'s values, docs and positions."""
        top = cls(res.values.shape[0], res.values.shape[1])
        top.values, top.docs, top.positions = res.values, res.docs, res.positions
        return top

    def merge(self, other: TopK) -> None:
        """Merge another running top-k (e.g. of another shard of documents, with its own
        document indices) into this one. Exact: the result is the top-k of the union, ties
        broken by the lower document index, whatever the order of merges."""
        dev = self.values.device
        self._merge(other.values.to(dev), other.docs.to(dev), other.positions.to(dev))

    def _merge(self, values: Tensor, docs: Tensor, positions: Tensor) -> None:
        all_v = torch.cat([self.values, values], dim=0)
        all_d = torch.cat([self.docs, docs], dim=0)
        all_p = torch.cat([self.positions, positions], dim=0)
        # descending by value (the k LARGEST), then ascending by document: a stable sort on
        # the document first, then on the value
        order = all_d.masked_fill(all_d < 0, torch.iinfo(torch.long).max).argsort(dim=0, stable=True)
        v = all_v.gather(0, order)
        idx = order.gather(0, v.argsort(dim=0, descending=True, stable=True))[:self.k]
        self.values = all_v.gather(0, idx)
        self.docs = all_d.gather(0, idx)
        self.positions = all_p.gather(0, idx)


@dataclass
class ScanResult:
    """Top-k of one split for every neuron of the scanned layers.

    ``values/docs/positions``: ``[k, len(layers) * d_mlp]``; column ``j * d_mlp + i`` is neuron
    ``i`` of ``layers[j]``. ``n_docs``/``n_tokens``: what was scanned (tokens with BOS);
    ``seconds``: wall time; ``histograms``: the activation histograms of the scanned tokens
    (:class:`precompute.prompts.histogram.Histograms`) when the scan kept them.
    """

    layers: list[int]
    d_mlp: int
    values: Tensor
    docs: Tensor
    positions: Tensor
    n_docs: int
    n_tokens: int
    seconds: float
    histograms: Histograms | None = None

    def column(self, layer: int, neuron: int) -> int:
        return self.layers.index(layer) * self.d_mlp + neuron

    def merge(self, other: ScanResult) -> ScanResult:
        """The exact top-k of two scans of disjoint documents of the same split and layers
        (shards scanned with their ``doc_offset``): as one scan of both, ties broken by the
        lower document index; their histograms added (integer counts: exact).

        Raises:
            ValueError: other layers, d_mlp or k; one with histograms and one without.
        """
        if (other.layers, other.d_mlp, other.values.shape) != (self.layers, self.d_mlp, self.values.shape):
            raise ValueError("Only scans of the same layers and k can be merged.")
        if (self.histograms is None) != (other.histograms is None):
            raise ValueError("Only scans that both kept histograms (or neither) can be merged.")
        top = TopK.of(self)
        top.merge(TopK.of(other))
        hist = None
        if self.histograms is not None:
            hist = Histograms(self.layers, self.d_mlp).merge(self.histograms).merge(other.histograms)
        return ScanResult(self.layers, self.d_mlp, top.values, top.docs, top.positions,
                          self.n_docs + other.n_docs, self.n_tokens + other.n_tokens,
                          self.seconds + other.seconds, hist)


def scan(model: LoadedModel, texts: Iterator[str] | Sequence[str], *, layers: list[int], k: int,
         batch_size: int, context_tokens: int, n_docs: int | None = None,
         desc: str = "scan", doc_offset: int = 0, observe: PostObserver | None = None,
         histograms: bool = False) -> ScanResult:
    """One streaming pass over ``texts`` keeping, for every neuron of ``layers``, the ``k``
    documents with the highest max activation (paper §4.2).

    The activation of neuron (l, i) on a document is ``max_pos hook_post[l][pos, i]`` over the
    document's real tokens after BOS (BOS itself is excluded: its activation is the same in
    every document). Forward passes (the backend's ``doc_maxima``) stop before ``W_out`` of
    the last layer needed and keep only per-document maxima; ``observe(layer, hook_post, real)``
    sees every batch's whole ``hook_post`` of each layer first (extension point (a) of
    :mod:`precompute.model.backend`: per-layer accumulators such as activation histograms).

    With ``histograms``, a :class:`~precompute.prompts.histogram.Histograms` observes every batch too
    (the fixed-bin activation histograms of docs/method.md §2) and is returned on the result.

    A shard of a corpus is scanned with ``doc_offset`` = the index of its first document, so
    its top-k carries global document indices; :meth:`ScanResult.merge` combines shards exactly.

    Raises:
        ValueError: if ``texts`` is empty.
    """
    import time

    t0 = time.time()
    top = TopK(k, len(layers) * model.d_mlp, device=model.device)
    hist = Histograms(layers, model.d_mlp) if histograms else None
    if hist is not None:
        observe = hist if observe is None else _both(hist, observe)
    n_seen = n_tok = 0
    bar = tqdm(total=n_docs, desc=desc, unit="doc", dynamic_ncols=True)
    for batch in batches(texts, batch_size):
        rows = tokenize_batch(model, batch, context_tokens)
        vals, idxs, lengths = model.backend.doc_maxima(rows, layers, observe=observe)
        top.update(vals, idxs, torch.arange(doc_offset + n_seen, doc_offset + n_seen + len(batch)))
        n_seen += len(batch)
        n_tok += int(lengths.sum())
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{n_tok / max(time.time() - t0, 1e-9):,.0f}")
    bar.close()
    if n_seen == 0:
        raise ValueError("The corpus is empty: nothing to scan.")
    return ScanResult(layers, model.d_mlp, top.values.cpu(), top.docs.cpu(), top.positions.cpu(),
                      n_seen, n_tok, time.time() - t0, hist)


def _both(a: PostObserver, b: PostObserver) -> PostObserver:
    def both(layer, post, real):
        a(layer, post, real)
        b(layer, post, real)
    return both


def neuron_acts(model: LoadedModel, rows: Sequence[Sequence[int]], layer: int, neuron: int
                ) -> list[list[float]]:
    """Post-GELU activation (``hook_post``) of neuron (layer, neuron) at every position of each
    token row (rows include BOS), in one right-padded batch.

    Raises:
        ValueError: a layer or neuron out of range, or an empty row."""
    return model.backend.neuron_pass(rows, [(layer, neuron)] * len(rows), attribution=False).acts


@dataclass
class TrimTask:
    """One document to trim for one neuron: ``row`` with BOS at index 0, as scanned;
    ``max_position`` its max-activating position (>= 1); ``orig_act`` the activation there
    (the scan's value)."""

    row: Sequence[int]
    max_position: int
    layer: int
    neuron: int
    orig_act: float


def trim_many(model: LoadedModel, tasks: Sequence[TrimTask], *, act_ratio: float,
              max_len: int | None = None, max_tokens: int = 8192,
              max_rows: int = 64) -> list[tuple[int, float, float]]:
    """:func:`trim` of many (document, neuron) tasks at once (paper §4.2): the binary searches
    of all tasks advance in lockstep, and each step's candidates — of any neurons — run in
    length-sorted batches of at most ``max_rows`` rows and ``max_tokens`` padded tokens, each
    reading only its own neuron at its last token (the backend's ``target_acts``).

    Returns per task ``(start, original_act, trimmed_act)`` exactly as :func:`trim`. With
    ``max_len`` (the job's ``max_prompt_tokens``), a search stops as soon as its prompt can no
    longer be shorter than ``max_len`` tokens (the prompt will be dropped): its ``start`` is
    then a start that keeps the ratio but not necessarily the latest, and its prompt is at
    least ``max_len`` tokens long.
    """
    bos = model.bos_token_id
    full = [list(t.row[:t.max_position + 1]) for t in tasks]
    orig = [float(t.orig_act) for t in tasks]
    lo = [1] * len(tasks)
    hi = [t.max_position for t in tasks]
    best = list(orig)
    while True:
        todo = [j for j in range(len(tasks)) if lo[j] < hi[j]
                and (max_len is None or tasks[j].max_position + 1 - hi[j] < max_len)]
        if not todo:
            break
        mids = {j: (lo[j] + hi[j] + 1) // 2 for j in todo}
        rows = [[bos] + full[j][mids[j]:] for j in todo]
        got = model.backend.target_acts(rows, [(tasks[j].layer, tasks[j].neuron) for j in todo],
                                        max_tokens=max_tokens, max_rows=max_rows)
        for j, a in zip(todo, got, strict=True):
            if a >= act_ratio * orig[j]:
                lo[j], best[j] = mids[j], a
            else:
                hi[j] = mids[j] - 1
    return [(lo[j], orig[j], best[j]) for j in range(len(tasks))]


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

    All documents are searched together (:func:`trim_many`).
    """
    n = len(docs)
    full = [list(docs[j][:max_positions[j] + 1]) for j in range(n)]
    orig = list(orig_acts) if orig_acts is not None else \
        [a[-1] for a in neuron_acts(model, full, layer, neuron)]
    return trim_many(model, [TrimTask(docs[j], max_positions[j], layer, neuron, orig[j]) for j in range(n)],
                     act_ratio=act_ratio)
