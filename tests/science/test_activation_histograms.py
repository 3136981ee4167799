"""Activation histograms of the scan (docs/method.md §2, precompute/prompts/histogram.py): the fixed bins
follow their definition on every edge, the counting passes (compiled CPU pass and torch) agree,
a scan's counts equal a direct count of the activations it saw and add up to its real tokens,
shards merge exactly, and the job stores them (with each neuron's most negative congruent
tokens) equal on SQLite and PostgreSQL. Ray: tests/job/test_distributed.py compares every row."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
import torch
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from context_lookups.precompute.prompts.histogram import (
    N_BINS,
    SCHEME,
    ZERO,
    Histograms,
    bin_bounds,
    bin_of,
    count_batch,
    magnitude_edges,
)
from context_lookups.precompute.store.db import parse_url


def _special_values() -> np.ndarray:
    e = np.asarray(magnitude_edges(), dtype=np.float32)
    near = [e, np.nextafter(e, np.float32(0)), np.nextafter(e, np.float32(np.inf))]
    extra = np.array([0.0, -0.0, np.inf, -np.inf, 1e-30, -1e-30, 3e38, -3e38, 0.5, -0.17, 1.0, -1.0],
                     dtype=np.float32)
    vals = np.concatenate(near + [-v for v in near] + [extra]).astype(np.float32)
    return np.concatenate([vals, np.random.default_rng(0).standard_normal(5000).astype(np.float32) * 4])


def test_bins_are_ordered_and_cover_the_line():
    bounds = [bin_bounds(i) for i in range(N_BINS)]
    assert bounds[0][0] == -np.inf and bounds[-1][1] == np.inf
    assert all(a[1] == b[0] for a, b in pairwise(bounds)), "bins must tile the real line"
    assert bounds[ZERO] == (-2.0 ** -10, 2.0 ** -10)
    e = magnitude_edges()
    assert len(e) == 81 and e[0] == 2.0 ** -10 and e[-1] == 1024.0
    widths = [(b - a) / a for a, b in pairwise(e)]
    assert min(widths) > 0.14 and max(widths) <= 0.25  # 4 equal bins per octave


@pytest.mark.parametrize("use_numba", [True, False], ids=["compiled", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_counting_passes_follow_the_definition(use_numba, dtype):
    vals = _special_values()
    x = torch.from_numpy(vals).to(dtype)
    exact = x.float().numpy()  # the values the pass sees (rounded to the dtype)
    real = torch.ones(1, len(vals), dtype=torch.bool)
    got = count_batch(x.view(1, -1, 1), real, use_numba=use_numba)[:, 0].numpy()
    want = np.bincount(bin_of(exact), minlength=N_BINS)
    assert np.array_equal(got, want)
    # one value at a time: every value lands in its own bin
    for v in exact[:400]:
        one = count_batch(torch.tensor([[[v]]]).to(dtype), torch.ones(1, 1, dtype=torch.bool),
                          use_numba=use_numba)[:, 0]
        assert int(one.argmax()) == int(bin_of([v])[0]) and int(one.sum()) == 1, v
    lo, hi = bin_bounds(int(bin_of([0.3])[0]))
    assert lo <= 0.3 < hi


def test_counting_skips_bos_and_padding():
    post = torch.randn(3, 7, 5) * 2
    real = torch.zeros(3, 7, dtype=torch.bool)
    real[0, 1:7], real[1, 1:3] = True, True  # row 2: BOS only
    for use_numba in (True, False):
        got = count_batch(post, real, use_numba=use_numba)
        want = np.stack([np.bincount(bin_of(post[real][:, i].numpy()), minlength=N_BINS)
                         for i in range(5)], 1)
        assert np.array_equal(got.numpy(), want) and int(got[:, 0].sum()) == 8


def _texts(corpus_dir) -> list[str]:
    from context_lookups.precompute.corpus import load_corpus

    return [r["text"] for r in load_corpus(str(corpus_dir))["explain"]]


def test_scan_histograms_equal_a_direct_count_of_the_scanned_tokens(tiny_model, small_corpus_dir):
    from context_lookups.precompute.prompts.scan import scan

    texts = _texts(small_corpus_dir)
    layers, ctx = [0, 1], 24
    seen: dict[int, list[np.ndarray]] = {lay: [] for lay in layers}

    def record(layer, post, real):  # the activations of the real tokens, as the scan saw them
        seen[layer].append(post[real].float().numpy().copy())

    res = scan(tiny_model, texts, layers=layers, k=4, batch_size=8, context_tokens=ctx, histograms=True,
               observe=record)
    n_real = sum(len(tiny_model.encode(t)[:ctx - 1]) for t in texts)  # tokens after BOS, as cut
    assert res.histograms.n_tokens() == n_real == res.n_tokens - res.n_docs
    for lay in layers:
        acts = np.concatenate(seen[lay])  # [n_real, d_mlp]
        assert acts.shape == (n_real, tiny_model.d_mlp)
        direct = np.stack([np.bincount(bin_of(acts[:, i]), minlength=N_BINS)
                           for i in range(tiny_model.d_mlp)], 1)
        counts = res.histograms.counts[lay].numpy()
        assert np.array_equal(counts, direct)
        assert (counts.sum(0) == n_real).all()
        assert len(np.flatnonzero(counts.sum(1))) > 20, "activations should spread over many bins"
        # the top-k maxima are among the counted activations: each neuron's max is in its last bin
        last = np.array([np.flatnonzero(counts[:, i]).max() for i in range(tiny_model.d_mlp)])
        first = layers.index(lay) * tiny_model.d_mlp
        assert np.array_equal(last, bin_of(res.values[0, first:][:tiny_model.d_mlp]))


def test_shards_merge_to_the_single_scan(tiny_model, small_corpus_dir):
    from context_lookups.precompute.job.distributed import ScanShard, merge_scans, scan_shard, shard_ranges
    from context_lookups.precompute.prompts.scan import scan

    texts = _texts(small_corpus_dir)
    kw = {"layers": [0, 1], "k": 4, "batch_size": 8, "context_tokens": 24}
    full = scan(tiny_model, texts, **kw, histograms=True)
    parts = [scan_shard(tiny_model, ScanShard(texts[a:b], a, **kw))
             for a, b in shard_ranges(len(texts), 8, 3)]
    merged = merge_scans(parts[::-1])  # any order
    for lay in kw["layers"]:
        assert torch.equal(merged.histograms.counts[lay], full.histograms.counts[lay])
    with pytest.raises(ValueError, match="histograms"):
        full.merge(scan(tiny_model, texts[:8], **kw))
    with pytest.raises(ValueError, match="same layers"):
        Histograms([0], 4).merge(Histograms([1], 4))


def test_histogram_rows_are_trimmed_to_the_occupied_bins():
    h = Histograms([2], 3)
    post = torch.tensor([[[0.0, 5.0, 1.0], [0.0, -0.1, 1.0], [0.0, 0.3, 1.0]]])
    h(2, post, torch.tensor([[False, True, True]]))
    rows = h.rows(2)
    assert rows[0] == (ZERO, [2])
    first, counts = rows[1]
    assert first == int(bin_of([-0.1])[0]) and counts[0] == 1 and counts[-1] == 1 and sum(counts) == 2
    assert rows[2] == (int(bin_of([1.0])[0]), [2])
    assert Histograms([2], 3).rows(2) == [(0, [])] * 3


# --- the job's stored rows ----------------------------------------------------------------------

def _stored(url: str) -> dict:
    from context_lookups.precompute.store.schema import ActivationHistogram, Phase

    engine = create_engine(parse_url(url))
    with Session(engine) as s:
        rows = {(h.split, h.layer, h.neuron): (h.scheme, h.first_bin, list(h.counts))
                for h in s.scalars(select(ActivationHistogram))}
        phases = {p.name: p.stats for p in s.scalars(select(Phase).where(Phase.name.like("scan:%")))}
    engine.dispose()
    return {"rows": rows, "phases": phases}


def test_the_job_stores_every_neurons_histogram(precomputed_db, tiny_model, small_corpus_dir):
    from context_lookups.precompute.core.settings import Settings
    from context_lookups.precompute.corpus import load_corpus
    from context_lookups.precompute.prompts.scan import scan

    got = _stored(f"sqlite:///{precomputed_db}")
    s = Settings()
    layers = sorted({k[1] for k in got["rows"]})
    assert len(got["rows"]) == 2 * len(layers) * tiny_model.d_mlp
    corpus = load_corpus(str(small_corpus_dir))
    for split in ("explain", "heldout"):
        st = got["phases"][f"scan:{split}"]
        assert st["histogram_tokens"] == st["tokens"] - st["docs"]
        res = scan(tiny_model, [r["text"] for r in corpus[split]], layers=layers, k=8, batch_size=16,
                   context_tokens=48, histograms=True)
        for lay in layers:
            for i in range(tiny_model.d_mlp):
                scheme, first, counts = got["rows"][(split, lay, i)]
                assert scheme == SCHEME and sum(counts) == st["histogram_tokens"]
                assert counts[0] > 0 and counts[-1] > 0
                full = np.zeros(N_BINS, dtype=np.int64)
                full[first:first + len(counts)] = counts
                assert np.array_equal(full, res.histograms.counts[lay][:, i].numpy()), (split, lay, i)
    assert s.batch_size  # (the settings of small_settings: batch 16, context 48)


def test_histograms_equal_on_postgresql(stored_url, precomputed_db):
    sqlite = _stored(f"sqlite:///{precomputed_db}")
    other = _stored(stored_url)
    assert sqlite["rows"] and other["rows"] == sqlite["rows"]


def test_bottom_tokens_are_the_most_negative_congruences(precomputed_db, tiny_model):
    import sqlite3

    con = sqlite3.connect(precomputed_db)
    rows = con.execute("SELECT layer, neuron, top_tokens, bottom_tokens FROM neurons").fetchall()
    con.close()
    W_U = tiny_model.backend.W_U()
    for layer, neuron, top, bottom in rows[::37]:
        s = tiny_model.backend.W_out(layer)[neuron] @ W_U
        bottom, top = json.loads(bottom), json.loads(top)
        assert len(bottom) == 10 and [t[0] for t in bottom] == s.argsort()[:10].tolist()
        assert [t[2] for t in bottom] == [round(v, 4) for v in s.sort().values[:10].tolist()]
        assert bottom[0][2] < 0 < top[0][2]
        assert bottom[0][1] == tiny_model.token_str(bottom[0][0])
