"""The fast path (hooks on the plain Hugging Face modules) equals the bridge path (the reference)
to 1e-5 relative: activations, raw and LN-aware attributions, pre-activations, ablation drops,
scan maxima; and the job stores the rows the per-neuron bridge code stored."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from precompute.ablation import ablate, ablate_fast
from precompute.attribution import active_heads_of_run, attribute, scored_layers, upstream_attn_layers
from precompute.model.hooks import length_batches, pad, run_hooks
from precompute.model.loading import resolve_device, resolve_dtype
from precompute.model.passes import ablated_view, batched_pass, clean_view, neuron_pass
from precompute.scan import ScanResult, TopK, doc_maxima, neuron_acts, scan, tokenize_batch

TEXTS = ["The quick brown fox jumps over the lazy dog, and then it ran away into the woods.",
         "In the beginning God created the heaven and the earth.",
         "def main():\n    return 0",
         "Unix was developed at Bell Labs in the late 1960s by Ken Thompson and others"]


def close(got, ref, rel=1e-5, scale=None):
    """``got`` equals ``ref`` to ``rel`` of the largest magnitude of ``scale`` (default ``ref``):
    an activation near zero is compared at the scale of its neuron's activations, since float32
    GELU in the negative tail is itself accurate only to ~5e-5 relative (~2.5e-7 absolute)."""
    ref, got = torch.as_tensor(ref, dtype=torch.float64), torch.as_tensor(got, dtype=torch.float64)
    s = ref if scale is None else torch.as_tensor(scale, dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=0, atol=rel * max(float(s.abs().max()), 1e-6))


@pytest.fixture(scope="module")
def embedded():
    from precompute.model.loading import load_model

    return load_model()


@pytest.fixture(params=["tiny", "embedded"])
def model(request, tiny_model):
    return tiny_model if request.param == "tiny" else request.getfixturevalue("embedded")


def _rows(model):
    return tokenize_batch(model, TEXTS, 40)


def test_attribution_of_mixed_neurons_in_one_batch_equals_the_bridge(model):
    rows = _rows(model)
    last = model.n_layers - 1
    targets = [(0, 3), (last, 11), (1, 7), (last, model.d_mlp - 1)]
    positions = [len(r) - 1 if j % 2 else len(r) // 2 for j, r in enumerate(rows)]
    fast = neuron_pass(model, rows, targets, positions)
    for j, ((layer, neuron), p) in enumerate(zip(targets, positions)):
        ref = attribute(model, [rows[j]], layer, neuron, positions=[p])
        n = ref.raw.shape[1]
        assert fast.n_attn[j] == n
        close(fast.raw[j, :n], ref.raw[0])
        close(fast.ln[j, :n], ref.ln[0])
        assert not fast.raw[j, n:].any()
        close(fast.act[j], ref.act[0], scale=ref.acts[0])
        close(fast.pre[j], ref.pre[0])
        close(fast.acts[j], ref.acts[0])
        assert list(fast.other[j]) == list(ref.other)  # same components, same order
        close([fast.other[j][k] for k in ref.other], [float(v[0]) for v in ref.other.values()])
        # the LN-aware contributions add up to the pre-activation on the fast path too
        assert float(fast.ln[j].sum()) + sum(fast.other[j].values()) == pytest.approx(float(fast.pre[j]), abs=1e-4)


def test_ablation_on_the_fast_path_equals_the_bridge(model):
    rows = _rows(model)
    for heads in ([(0, 1)], [(0, 2), (1, 0)]):
        ref = ablate(model, rows, 1, 5, 42, heads)
        got = ablate_fast(model, rows, 1, 5, 42, heads)
        close(got.prob_clean, ref.prob_clean)
        close(got.prob_ablated, ref.prob_ablated)
        close(got.drop, ref.drop, rel=1e-4)  # a difference of two nearly equal numbers
        close(got.act_ablated, ref.act_ablated)
        assert [i for i, _ in got.top_clean[0]] == [i for i, _ in ref.top_clean[0]]
    mean_v = {k: torch.randn(model.n_heads, model.cfg.d_head) for k in range(model.n_layers)}
    ref = ablate(model, rows, 1, 5, 42, [(1, 1)], method="mean", mean_v=mean_v)
    got = ablate_fast(model, rows, 1, 5, 42, [(1, 1)], method="mean", mean_v=mean_v)
    close(got.prob_ablated, ref.prob_ablated)


def test_live_views_equal_the_bridge_per_row(tiny_model):
    """clean_view/ablated_view with rows of different neurons and per-row ablated heads."""
    m = tiny_model
    rows = _rows(m)
    targets = [(1, 5, 42), (0, 9, 7), (1, 200, 1000), (0, 0, 3)]
    heads = [[(0, 1)], [(0, 2)], [(0, 1), (1, 3)], [(1, 0)]]
    cv, av = clean_view(m, rows, targets), ablated_view(m, rows, targets, heads)
    for j, (layer, neuron, tok) in enumerate(targets):
        ref = ablate(m, [rows[j]], layer, neuron, tok, heads[j])
        close(cv.prob[j], ref.prob_clean[0])
        close(av.prob[j], ref.prob_ablated[0])
        close(av.acts[j], ref.acts_ablated[0])
        close([v for _, v in cv.top[j]], [v for _, v in ref.top_clean[0]])
        with m.bridge.hooks(fwd_hooks=__import__("precompute.ablation").ablation.ablation_hooks(heads[j])):
            abl = attribute(m, [rows[j]], layer, neuron)
        close(av.raw[j, :abl.raw.shape[1]], abl.raw[0])
    with pytest.raises(ValueError, match="out of range"):
        ablated_view(m, rows[:1], targets[:1], [(5, 0)])


def test_scan_maxima_equal_the_bridge(model):
    rows = _rows(model)
    layers = list(range(1, model.n_layers))
    vals, idxs, lengths = doc_maxima(model, rows, layers)
    tokens, _ = pad(rows, model.bos_token_id)
    cache = run_hooks(model, tokens, [f"blocks.{lay}.mlp.hook_post" for lay in layers], None)
    for j, lay in enumerate(layers):
        ref = cache[f"blocks.{lay}.mlp.hook_post"]
        for b, r in enumerate(rows):
            v, i = ref[b, 1:len(r)].max(0)
            close(vals[b, j * model.d_mlp:(j + 1) * model.d_mlp], v)
            agree = (idxs[b, j * model.d_mlp:(j + 1) * model.d_mlp] == i + 1).float().mean()
            assert agree > 0.99  # near-ties may pick another position


def reference_trim(model, docs, max_positions, layer, neuron, *, act_ratio, orig_acts):
    """The trimming of the per-neuron code this project had before the fast path: one bridge
    forward pass per bisection step (kept here as the reference)."""
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
        for j, a in zip(todo, got):
            if a[-1] >= act_ratio * orig_acts[j]:
                lo[j], best[j] = mids[j], a[-1]
            else:
                hi[j] = mids[j] - 1


def test_trim_many_across_neurons_equals_the_per_neuron_bisection(tiny_model, small_corpus_dir):
    from precompute.corpus import load_corpus
    from precompute.scan import TrimTask, trim_many

    m = tiny_model
    rows = tokenize_batch(m, [r["text"] for r in load_corpus(str(small_corpus_dir))["explain"]][:10], 40)
    tasks = []
    for layer, neuron in [(0, 4), (1, 9), (1, 33)]:
        acts = neuron_acts(m, rows, layer, neuron)
        for r, a in zip(rows, acts):
            p = max(range(1, len(a)), key=lambda i: a[i])
            if a[p] > 0:
                tasks.append(TrimTask(r, p, layer, neuron, a[p]))
    ref = []
    for layer, neuron in [(0, 4), (1, 9), (1, 33)]:
        ts = [t for t in tasks if (t.layer, t.neuron) == (layer, neuron)]
        ref += reference_trim(m, [t.row for t in ts], [t.max_position for t in ts], layer, neuron,
                              act_ratio=0.8, orig_acts=[t.orig_act for t in ts])
    got = trim_many(m, tasks, act_ratio=0.8, max_tokens=100, max_rows=3)
    assert [g[0] for g in got] == [r[0] for r in ref] and len(got) >= 10
    close([g[2] for g in got], [r[2] for r in ref])
    # stopping the searches whose prompt cannot get shorter than max_len keeps the short ones
    short = trim_many(m, tasks, act_ratio=0.8, max_len=6)
    for t, g, r in zip(tasks, short, ref):
        if t.max_position + 1 - r[0] < 6:
            assert g[0] == r[0]
        else:
            assert t.max_position + 1 - g[0] >= 6


def test_job_rows_equal_the_per_neuron_bridge_code(precomputed_db, tiny_model):
    """Row for row, the prompts the job stored equal those of the former per-neuron code
    (bridge bisection, bridge attribute()), on the small test configuration."""
    from precompute.settings import Settings

    m = tiny_model
    con = sqlite3.connect(precomputed_db)
    settings = Settings.of_run(json.loads(con.execute("SELECT settings FROM runs").fetchone()[0]))
    ctx = settings.context_tokens
    neurons = con.execute("SELECT id, layer, neuron FROM neurons WHERE kind != 'other' ORDER BY id").fetchall()
    checked = 0
    for nid, layer, neuron in neurons:
        for split in ("explain", "heldout"):
            tops = con.execute(
                "SELECT t.rank, t.position, t.act, d.text FROM top_activations t JOIN documents d "
                "ON d.run_id = t.run_id AND d.split = t.split AND d.idx = t.doc_idx WHERE t.split = ? "
                "AND t.layer = ? AND t.neuron = ? AND t.act > 0 ORDER BY t.rank", (split, layer, neuron)).fetchall()
            stored = con.execute("SELECT rank, start, \"end\", token_ids, acts, attr_raw, attr_ln, pre, active, "
                                 "doc_act FROM prompts WHERE neuron_id = ? AND split = ? ORDER BY rank",
                                 (nid, split)).fetchall()
            if not tops:
                assert not stored
                continue
            rows = tokenize_batch(m, [t[3] for t in tops], ctx)
            trims = reference_trim(m, rows, [t[1] for t in tops], layer, neuron,
                                   act_ratio=settings.act_ratio, orig_acts=[t[2] for t in tops])
            keep = [(t, r, tr) for t, r, tr in zip(tops, rows, trims)
                    if t[1] + 1 - tr[0] < settings.max_prompt_tokens]
            assert [t[0] for t, _, _ in keep] == [s[0] for s in stored]
            if not keep:
                continue
            prompts = [[m.bos_token_id] + r[tr[0]:t[1] + 1] for t, r, tr in keep]
            att = attribute(m, prompts, layer, neuron)
            n_scored = scored_layers(layer, settings.heads_upto, upstream_attn_layers(m, layer))
            active = active_heads_of_run(att.raw[:, :n_scored].flatten(1), settings)
            for j, ((t, r, tr), s) in enumerate(zip(keep, stored)):
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


def test_batched_pass_keeps_row_order_and_equals_one_pass(tiny_model):
    rows = _rows(tiny_model) * 3
    targets = [(j % 2, j * 7) for j in range(len(rows))]
    one = neuron_pass(tiny_model, rows, targets)
    many = batched_pass(tiny_model, rows, targets, max_tokens=60, max_rows=2)
    for j, r in enumerate(many):
        close(r.raw[0], one.raw[j, :one.n_attn[j]])
        close(r.acts[0], one.acts[j])
    assert sorted(j for b in length_batches([3, 9, 5, 9, 1], 18, 4) for j in b) == [0, 1, 2, 3, 4]


def test_topk_merge_of_shards_is_exact(tiny_model, small_corpus_dir):
    from precompute.corpus import load_corpus

    docs = [r["text"] for r in load_corpus(str(small_corpus_dir))["explain"]]
    kw = dict(layers=[0, 1], k=5, batch_size=8, context_tokens=32)
    whole = scan(tiny_model, docs, **kw)
    a = scan(tiny_model, docs[:23], **kw)
    b = scan(tiny_model, docs[23:], doc_offset=23, **kw)
    for merged in (a.merge(b), b.merge(a)):
        assert isinstance(merged, ScanResult) and merged.n_docs == len(docs)
        assert torch.equal(merged.docs, whole.docs) and torch.equal(merged.positions, whole.positions)
        assert torch.equal(merged.values, whole.values)
    # ties are broken by the lower document index, whatever the order of the merges
    t1, t2 = TopK(2, 1), TopK(2, 1)
    t1.update(torch.tensor([[1.0], [1.0]]), torch.zeros(2, 1, dtype=torch.long), torch.tensor([5, 6]))
    t2.update(torch.tensor([[1.0]]), torch.zeros(1, 1, dtype=torch.long), torch.tensor([2]))
    t2.merge(t1)
    assert t2.docs[:, 0].tolist() == [2, 5]


def test_device_and_dtype_resolution():
    from precompute.errors import BadSettings

    assert resolve_device("auto") in ("cuda", "mps", "cpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(BadSettings, match="Unknown dtype"):
        resolve_dtype("float8")
    with pytest.raises(BadSettings, match="Unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(BadSettings, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pass_equals_cpu(tiny_model_dir, tiny_model):
    from precompute.model.loading import load_model

    gpu = load_model(str(tiny_model_dir), device="cuda")
    rows, targets = _rows(gpu), [(1, 5, 42)] * 4
    got, ref = clean_view(gpu, rows, targets), clean_view(tiny_model, rows, targets)
    close(got.raw.cpu(), ref.raw, rel=1e-4)
    close(got.prob.cpu(), ref.prob, rel=1e-4)
    vals, _, _ = doc_maxima(gpu, rows, [0, 1])
    assert vals.device.type == "cuda"


@pytest.mark.slow
def test_bfloat16_job_end_to_end_keeps_the_congruence_ranking(tmp_path, tiny_model_dir, small_corpus_dir,
                                                               precomputed_db):
    """``--dtype bfloat16`` runs the whole job on the CPU; its next-token neurons and their
    congruence ranking agree with float32 (statistics are float32 either way)."""
    from scipy.stats import spearmanr

    from precompute.cli import main as cli_main
    from tests.test_precompute_job import _args

    db = tmp_path / "bf16.db"
    args = _args(db, tiny_model_dir, small_corpus_dir) + ["--dtype", "bfloat16", "--device", "cpu",
                                                          "--explainer", "none", "--ablation", "none"]
    assert cli_main(args) == 0

    def ranking(path):
        con = sqlite3.connect(path)
        out = con.execute("SELECT layer, neuron, congruence, kind FROM neurons ORDER BY layer, neuron").fetchall()
        n_prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
        con.close()
        return out, n_prompts

    bf, n_bf = ranking(db)
    fp, n_fp = ranking(precomputed_db)
    assert [r[:2] for r in bf] == [r[:2] for r in fp]
    rho = spearmanr([r[2] for r in bf], [r[2] for r in fp]).statistic
    assert rho > 0.99
    top_bf = {r[1] for r in bf if r[3] == "next_token"}
    top_fp = {r[1] for r in fp if r[3] == "next_token"}
    assert len(top_bf & top_fp) >= len(top_fp) - 1
    assert n_bf > 0 and abs(n_bf - n_fp) <= max(2, n_fp // 5)


def test_length_batches_cover_every_row_once_within_the_caps():
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(0, 90))]
        max_tokens, max_rows = rng.choice([64, 512, 4096]), rng.choice([1, 3, 16, 64])
        got = length_batches(lengths, max_tokens, max_rows)
        assert sorted(j for b in got for j in b) == list(range(len(lengths)))
        for b in got:
            assert 1 <= len(b) <= max_rows
            assert len(b) == 1 or max(lengths[j] for j in b) * len(b) <= max_tokens
    # a few short rows are not padded to one long row, and equal rows share one pass
    assert length_batches([127] + [10] * 30, 8192, 64) == [[0], list(range(1, 31))]
    assert len(length_batches([50] * 40, 8192, 64)) == 1
