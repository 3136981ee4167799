"""Every fast backend (hooks on the plain Hugging Face modules, one copy of the weights: GPT-2,
GPT-NeoX, Llama, Qwen2, Mistral) equals the bridge backend (TransformerBridge hook points, the
reference) to 1e-5 relative: processed weights, activations, raw and LN-aware attributions,
their per-source decomposition (the look-up), pre-activations, probabilities, ablation drops,
mean value vectors, scan maxima, trimming, live views; the job stores the rows the per-neuron
bridge code stored; and the job run on the bridge backend stores the rows of the fast one."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from context_lookups.precompute.ablation.ablate import ablate, mean_values
from context_lookups.precompute.heads.attribution import (
    active_heads_of_run,
    attribute,
    scored_layers,
    upstream_attn_layers,
)
from context_lookups.precompute.heads.lookup import decode
from context_lookups.precompute.model import tokenize_batch
from context_lookups.precompute.prompts.distinct import distinct_prompts, needs_reserve
from context_lookups.precompute.prompts.scan import neuron_acts

TEXTS = ["The quick brown fox jumps over the lazy dog, and then it ran away into the woods.",
         "In the beginning God created the heaven and the earth.",
         "def main():\n    return 0",
         "Unix was developed at Bell Labs in the late 1960s by Ken Thompson and others"]


def close(got, ref, rel=1e-5, scale=None):
    """``got`` equals ``ref`` to ``rel`` of the largest magnitude of ``scale`` (default ``ref``):
    an activation near zero is compared at the scale of its neuron's activations, since float32
    GELU in the negative tail is itself accurate only to ~5e-5 relative (~2.5e-7 absolute)."""
    ref, got = torch.as_tensor(ref, dtype=torch.float64), torch.as_tensor(got, dtype=torch.float64)
    if ref.numel() == 0:  # e.g. no head upstream of layer 0 of a parallel block
        assert got.shape == ref.shape
        return
    s = ref if scale is None else torch.as_tensor(scale, dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=0, atol=rel * max(float(s.abs().max()), 1e-6))


@pytest.fixture(scope="module")
def embedded_pair():
    from context_lookups.precompute.model import load_model

    return load_model(), load_model(backend="bridge")


@pytest.fixture(params=["tiny", "embedded", "neox", "llama", "qwen2", "mistral"])
def pair(request, families):
    """(fast, bridge): the same model on both backends (tiny GPT-2, the embedded model, and the
    tiny model of each other family)."""
    if request.param == "tiny":
        return request.getfixturevalue("tiny_model"), request.getfixturevalue("tiny_bridge")
    if request.param == "embedded":
        return request.getfixturevalue("embedded_pair")
    return families.fast(request.param), families.bridge(request.param)


def _rows(model):
    return tokenize_batch(model, TEXTS, 40)


def test_processed_weights_and_tokens_equal_the_bridges(pair):
    fast, ref = pair
    assert fast.backend.name.startswith("fast (") and ref.backend.name == "bridge"
    assert fast.dims == ref.dims and _rows(fast) == _rows(ref) and fast.bos_token_id == ref.bos_token_id
    for name in ("W_in", "b_in", "W_out", "W_O", "b_O", "W_pre", "b_pre"):
        for layer in range(fast.n_layers):
            close(getattr(fast.backend, name)(layer), getattr(ref.backend, name)(layer), rel=1e-6)
    close(fast.backend.W_U(), ref.backend.W_U(), rel=1e-6)


def test_attribution_of_mixed_neurons_in_one_batch_equals_the_bridge(pair):
    fast, ref = pair
    rows = _rows(fast)
    last = fast.n_layers - 1
    targets = [(0, 3), (last, 11), (1, 7), (last, fast.d_mlp - 1)]
    positions = [len(r) - 1 if j % 2 else len(r) // 2 for j, r in enumerate(rows)]
    for model in (fast, ref):  # both backends batch rows of different neurons
        got = model.backend.neuron_pass(rows, targets, positions)
        for j, ((layer, neuron), p) in enumerate(zip(targets, positions, strict=True)):
            one = attribute(ref, [rows[j]], layer, neuron, positions=[p])  # one row, the bridge
            n = one.raw.shape[1]
            assert got.n_attn[j] == n
            close(got.raw[j, :n], one.raw[0])
            close(got.ln[j, :n], one.ln[0])
            assert not got.raw[j, n:].any()
            close(got.act[j], one.act[0], scale=one.acts[0])
            close(got.pre[j], one.pre[0])
            close(got.acts[j], one.acts[0])
            assert list(got.other[j]) == list(one.other)  # same components, same order
            close([got.other[j][k] for k in one.other], [float(v[0]) for v in one.other.values()])
            # the LN-aware contributions add up to the pre-activation
            total = float(got.ln[j].sum()) + sum(got.other[j].values())
            assert total == pytest.approx(float(got.pre[j]), abs=1e-4)


def test_lookup_terms_equal_the_bridge_and_sum_to_the_attribution(pair):
    """The per-source decomposition (docs/method.md §3) of every upstream head, rows of mixed
    neurons and positions in one batch: fast equals the bridge (terms, attention weights, value
    bias term, LN scale), and on each backend the terms plus the bias give the raw and the
    LN-aware attribution."""
    fast, ref = pair
    rows = _rows(fast)
    last = fast.n_layers - 1
    targets = [(last, 3), (0, 11), (1, 7), (last, fast.d_mlp - 1)]
    positions = [len(r) - 1 if j % 2 else len(r) // 2 for j, r in enumerate(rows)]
    got = {}
    for model in (fast, ref):
        res = model.backend.neuron_pass(rows, targets, positions, lookup=True)
        t = res.lookup
        assert t.contrib.shape == t.attention.shape == (len(rows), res.raw.shape[1], fast.n_heads,
                                                        max(map(len, rows)))
        for j, p in enumerate(positions):
            n = res.n_attn[j]
            assert not t.contrib[j, n:].any() and not t.contrib[j, :, :, p + 1:].any()
            if not n:  # no head upstream (layer 0 of a parallel block)
                continue
            close(t.attention[j, :n].sum(-1), torch.ones(n, fast.n_heads))
            scale = res.raw[j, :n].abs().max()
            close(t.contrib[j, :n].sum(-1) + t.bias[j, :n], res.raw[j, :n], scale=scale)
            close((t.contrib[j, :n].sum(-1) + t.bias[j, :n]) / t.scale[j], res.ln[j, :n],
                  scale=res.ln[j, :n].abs().max())
        assert not t.bias.any()  # the value bias is folded into b_O (fold_value_biases)
        got[model.backend.name] = res
    f, b = got[fast.backend.name].lookup, got["bridge"].lookup
    close(f.contrib, b.contrib)
    close(f.attention, b.attention)
    close(f.scale, b.scale)
    one = fast.backend.batched_pass(rows, targets, positions, lookup=True, max_rows=2)
    for j, r in enumerate(one):  # a row cut from a batch is that row's own terms
        assert r.lookup.contrib.shape[-1] == positions[j] + 1
        close(r.lookup.contrib[0], f.contrib[j, :r.n_attn[0], :, :positions[j] + 1])
    with pytest.raises(ValueError, match="clean pass"):
        fast.backend.neuron_pass(rows, targets, lookup=True, ablate=[[(0, 1)]] * len(rows))


def test_ablation_equals_the_bridge(pair):
    fast, ref = pair
    rows = _rows(fast)
    for heads in ([(0, 1)], [(0, 2), (1, 0)]):
        want = ablate(ref, rows, 1, 5, 42, heads)
        got = ablate(fast, rows, 1, 5, 42, heads)
        close(got.prob_clean, want.prob_clean)
        close(got.prob_ablated, want.prob_ablated)
        close(got.drop, want.drop, rel=1e-4)  # a difference of two nearly equal numbers
        close(got.act_ablated, want.act_ablated)
        assert [i for i, _ in got.top_clean[0]] == [i for i, _ in want.top_clean[0]]
    mean_v = mean_values(ref, iter(rows), range(fast.n_layers), batch_size=3)
    got_v = mean_values(fast, iter(rows), range(fast.n_layers), batch_size=3)
    for k in mean_v:
        close(got_v[k], mean_v[k])
    want = ablate(ref, rows, 1, 5, 42, [(1, 1)], method="mean", mean_v=mean_v)
    got = ablate(fast, rows, 1, 5, 42, [(1, 1)], method="mean", mean_v=mean_v)
    close(got.prob_ablated, want.prob_ablated)


def test_live_views_equal_the_bridge_per_row(tiny_pair):
    """clean_view/ablated_view with rows of different neurons and per-row ablated heads."""
    (m, tiny_bridge), be = tiny_pair, tiny_pair[0].backend
    rows = _rows(m)
    targets = [(1, 5, 42), (0, 9, 7), (1, 200, 1000), (0, 0, 3)]
    heads = [[(0, 1)], [(0, 2)], [(0, 1), (1, 3)], [(1, 0)]]
    cv, av = be.clean_view(rows, targets), be.ablated_view(rows, targets, heads)
    bv = tiny_bridge.backend.ablated_view(rows, targets, heads)  # the bridge batches them too
    for j, (layer, neuron, tok) in enumerate(targets):
        want = ablate(tiny_bridge, [rows[j]], layer, neuron, tok, heads[j])
        close(cv.prob[j], want.prob_clean[0])
        close(av.prob[j], want.prob_ablated[0])
        close(bv.prob[j], want.prob_ablated[0])
        close(av.acts[j], want.acts_ablated[0])
        close([v for _, v in cv.top[j]], [v for _, v in want.top_clean[0]])
        abl = attribute(tiny_bridge, [rows[j]], layer, neuron, ablate=heads[j])
        close(av.raw[j, :abl.raw.shape[1]], abl.raw[0])
        close(bv.raw[j, :abl.raw.shape[1]], abl.raw[0])
    with pytest.raises(ValueError, match="out of range"):
        be.ablated_view(rows[:1], targets[:1], [(5, 0)])


def test_scan_maxima_equal_the_bridge_and_observe_sees_every_real_position(pair):
    fast, ref = pair
    rows = _rows(fast)
    layers = list(range(1, fast.n_layers))
    seen = {"fast": {}, "bridge": {}}

    def observer(name):
        def observe(layer, post, real):  # extension point (a): a per-layer accumulator
            seen[name][layer] = (post[real].float().sum(0), int(real.sum()))
        return observe

    vals, idxs, lengths = fast.backend.doc_maxima(rows, layers, observe=observer("fast"))
    rvals, ridxs, rlengths = ref.backend.doc_maxima(rows, layers, observe=observer("bridge"))
    assert lengths.tolist() == rlengths.tolist() == [len(r) for r in rows]
    close(vals, rvals)
    assert (idxs == ridxs).float().mean() > 0.99  # near-ties may pick another position
    for lay in layers:
        (s, n), (rs, rn) = seen["fast"][lay], seen["bridge"][lay]
        assert n == rn == sum(len(r) - 1 for r in rows)  # real tokens after BOS, no padding
        close(s, rs, scale=rs.abs().max() + 1)
        for b, r in enumerate(rows):
            acts = neuron_acts(ref, [r], lay, 7)[0]
            v, _ = max((a, p) for p, a in enumerate(acts) if p > 0)
            close(vals[b, (lay - 1) * fast.d_mlp + 7], v, scale=acts)


def reference_trim(model, docs, max_positions, layer, neuron, *, act_ratio, orig_acts):
    """The trimming of the per-neuron code this project had before the batched passes: one
    forward pass per bisection step (kept here as the reference; run on the bridge backend)."""
    bos = model.bos_token_id
    n = len(docs)
    full = [list(docs[j][:max_positions[j] + 1]) for j in range(n)]
    lo, hi, best = [1] * n, list(max_positions), list(orig_acts)
    while True:
        todo = [j for j in range(n) if lo[j] < hi[j]]
        if not todo:
            return [(lo[j], orig_acts[j], best[j]) for j in range(n)]
        mids = {j: (lo[j] + hi[j] + 1) // 2 for j in todo}
        got = neuron_acts(model, [[bos] + full[j][mids[j]:] for j in todo], layer, neuron)
        for j, a in zip(todo, got, strict=True):
            if a[-1] >= act_ratio * orig_acts[j]:
                lo[j], best[j] = mids[j], a[-1]
            else:
                hi[j] = mids[j] - 1


def test_trim_many_across_neurons_equals_the_per_neuron_bisection(tiny_pair, small_corpus_dir):
    from context_lookups.precompute.corpus import load_corpus
    from context_lookups.precompute.prompts.scan import TrimTask, trim_many

    m, tiny_bridge = tiny_pair
    rows = tokenize_batch(m, [r["text"] for r in load_corpus(str(small_corpus_dir))["explain"]][:10], 40)
    tasks = []
    for layer, neuron in [(0, 4), (1, 9), (1, 33)]:
        acts = neuron_acts(tiny_bridge, rows, layer, neuron)
        for r, a in zip(rows, acts, strict=True):
            p = max(range(1, len(a)), key=lambda i: a[i])
            if a[p] > 0:
                tasks.append(TrimTask(r, p, layer, neuron, a[p]))
    ref = []
    for layer, neuron in [(0, 4), (1, 9), (1, 33)]:
        ts = [t for t in tasks if (t.layer, t.neuron) == (layer, neuron)]
        ref += reference_trim(tiny_bridge, [t.row for t in ts], [t.max_position for t in ts], layer, neuron,
                              act_ratio=0.8, orig_acts=[t.orig_act for t in ts])
    for model in (m, tiny_bridge):
        got = trim_many(model, tasks, act_ratio=0.8, max_tokens=100, max_rows=3)
        assert [g[0] for g in got] == [r[0] for r in ref] and len(got) >= 10
        close([g[2] for g in got], [r[2] for r in ref])
    # stopping the searches whose prompt cannot get shorter than max_len keeps the short ones
    short = trim_many(m, tasks, act_ratio=0.8, max_len=6)
    for t, g, r in zip(tasks, short, ref, strict=True):
        if t.max_position + 1 - r[0] < 6:
            assert g[0] == r[0]
        else:
            assert t.max_position + 1 - g[0] >= 6


def test_job_rows_equal_the_per_neuron_bridge_code(precomputed_db, tiny_bridge):
    """Row for row, the prompts the job stored (fast backend) equal those of the former
    per-neuron code (bisection and attribute() one neuron at a time) on the bridge backend."""
    from context_lookups.precompute.core.settings import Settings

    m = tiny_bridge
    con = sqlite3.connect(precomputed_db)
    settings = Settings.of_run(json.loads(con.execute("SELECT settings FROM runs").fetchone()[0]))
    ctx = settings.context_tokens
    neurons = con.execute("SELECT id, layer, neuron FROM neurons WHERE kind != 'other' "
                          "ORDER BY id").fetchall()
    checked = 0
    for nid, layer, neuron in neurons:
        for split in ("explain", "heldout"):
            tops = con.execute(
                "SELECT t.rank, t.position, t.act, d.text FROM top_activations t JOIN documents d "
                "ON d.run_id = t.run_id AND d.split = t.split AND d.idx = t.doc_idx WHERE t.split = ? "
                "AND t.layer = ? AND t.neuron = ? AND t.act > 0 ORDER BY t.rank",
                (split, layer, neuron)).fetchall()
            stored = con.execute("SELECT rank, start, \"end\", token_ids, acts, attr_raw, attr_ln, pre, "
                                 "active, doc_act, multiplicity FROM prompts "
                                 "WHERE neuron_id = ? AND split = ? ORDER BY rank",
                                 (nid, split)).fetchall()
            if not tops:
                assert not stored
                continue
            rows = tokenize_batch(m, [t[3] for t in tops], ctx)
            trims = reference_trim(m, rows, [t[1] for t in tops], layer, neuron,
                                   act_ratio=settings.act_ratio, orig_acts=[t[2] for t in tops])
            # repeats merged (docs/method.md §2): the first top_k documents, the reserve only
            # when they give fewer than top_k distinct prompts
            keys = [tuple(r[tr[0]:t[1] + 1]) if t[1] + 1 - tr[0] < settings.max_prompt_tokens else None
                    for t, r, tr in zip(tops, rows, trims, strict=True)]
            k = settings.top_k
            read = keys if needs_reserve(keys[:k], k) else keys[:k] + [None] * len(keys[k:])
            groups = distinct_prompts(read, k)
            keep = [(tops[g[0]], rows[g[0]], trims[g[0]]) for g in groups]
            assert [t[0] for t, _, _ in keep] == [s[0] for s in stored]
            assert [len(g) for g in groups] == [s[10] for s in stored]
            if not keep:
                continue
            prompts = [[m.bos_token_id] + r[tr[0]:t[1] + 1] for t, r, tr in keep]
            att = attribute(m, prompts, layer, neuron)
            n_scored = scored_layers(layer, settings.heads_upto, upstream_attn_layers(m, layer))
            active = active_heads_of_run(att.raw[:, :n_scored].flatten(1), settings)
            for j, ((t, _, tr), s) in enumerate(zip(keep, stored, strict=True)):
                assert (s[1], s[2]) == (tr[0], t[1] + 1)
                assert json.loads(s[3]) == prompts[j][1:]
                close(json.loads(s[4]), att.acts[j][1:])
                close(json.loads(s[5]), att.raw[j])
                close(json.loads(s[6]), att.ln[j])
                close(s[7], att.pre[j])
                labels = [f"L{k}H{h}" for k in range(n_scored) for h in range(m.n_heads)
                          if active[j, k * m.n_heads + h]]
                assert json.loads(s[8]) == labels
                checked += 1
    con.close()
    assert checked >= 10


def _table(path, sql):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_precompute_on_the_bridge_backend_stores_the_rows_of_the_fast_one(
        tmp_path, tiny_model_dir, small_corpus_dir, precomputed_db, caplog):
    """``lookups precompute --backend bridge`` end to end (a product path, not only an oracle):
    every stored row equals the default run's (fast backend), floats to 1e-5."""
    import logging

    from context_lookups.precompute.cli import main as cli_main
    from tests.cli_helpers import precompute_args

    db = tmp_path / "bridge.db"
    with caplog.at_level(logging.INFO):
        assert cli_main(precompute_args(db, tiny_model_dir, small_corpus_dir) + ["--backend", "bridge"]) == 0
    assert "backend: bridge" in caplog.text
    checks = {
        "neurons": "SELECT layer, neuron, kind, token_id, congruence, max_act FROM neurons "
                   "ORDER BY layer, neuron",
        "top_activations": "SELECT split, layer, neuron, rank, doc_idx, position, act FROM top_activations "
                           "ORDER BY split, layer, neuron, rank",
        "prompts": "SELECT n.layer, n.neuron, p.split, p.rank, p.start, p.\"end\", p.token_ids, p.acts, "
                   "p.act, p.attr_raw, p.attr_ln, p.pre, p.active "
                   "FROM prompts p JOIN neurons n ON n.id = p.neuron_id "
                   "ORDER BY n.layer, n.neuron, p.split, p.rank",
        "pairs": "SELECT n.layer, n.neuron, head_layer, head, n_active, kept, mean_attr_raw FROM pairs p "
                 "JOIN neurons n ON n.id = p.neuron_id ORDER BY n.layer, n.neuron, head_layer, head",
        "ablations": "SELECT pair_id, prompt_id, active, act_clean, act_ablated, prob_clean, prob_ablated "
                     "FROM ablations ORDER BY pair_id, prompt_id",
        "lookups": "SELECT n.layer, n.neuron, p.split, p.rank, l.head_layer, l.head, l.contrib, l.attention, "
                   "l.bias, l.ln_scale FROM lookups l JOIN prompts p ON p.id = l.prompt_id JOIN neurons n "
                   "ON n.id = p.neuron_id ORDER BY n.layer, n.neuron, p.split, p.rank, l.head_layer, l.head",
    }
    for name, sql in checks.items():
        got, want = _table(db, sql), _table(precomputed_db, sql)
        assert len(got) == len(want) and (want or name == "ablations"), name
        for g, w in zip(got, want, strict=True):
            for a, b in zip(g, w, strict=True):
                if isinstance(b, bytes):  # a look-up vector: float32 per source position
                    close(decode(a), decode(b), scale=[1e-3, *decode(b)])
                elif isinstance(b, float):
                    assert a == pytest.approx(b, rel=1e-5, abs=1e-6), name
                elif isinstance(b, str) and (b.startswith("[[") or b[:1] == "[" and b[1:2] not in ('"', "]")):
                    close(json.loads(a), json.loads(b))
                else:
                    assert a == b, name
