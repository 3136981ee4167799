"""docs/method.md §1-§3 against direct computations on small real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from context_lookups.precompute.heads.attribution import (
    active_heads,
    attribute,
    parse_heads,
    scored_layers,
    upstream_attn_layers,
)
from context_lookups.precompute.neurons.congruence import (
    congruence,
    default_layers,
    layer_congruences,
    sample_random_neurons,
    select_next_token_neurons,
    token_allowed,
)
from context_lookups.precompute.prompts.scan import TopK, neuron_acts, scan, tokenize_batch, trim


def test_congruence_and_selection_match_direct_computation(tiny_model):
    layer = 1
    W_out = tiny_model.backend.W_out(layer).double().numpy()
    W_U = tiny_model.backend.W_U().double().numpy()
    direct = W_out @ W_U  # [d_mlp, d_vocab]
    got = congruence(tiny_model.backend.W_out(layer), tiny_model.backend.W_U())
    np.testing.assert_allclose(got.numpy(), direct, rtol=1e-4, atol=1e-4)

    infos = layer_congruences(tiny_model.backend.W_out(layer), tiny_model.backend.W_U(), layer, chunk=17)
    assert [x.neuron for x in infos] == list(range(tiny_model.d_mlp))
    for x in infos[:50]:
        assert x.token_id == int(direct[x.neuron].argmax())
        assert x.congruence == pytest.approx(direct[x.neuron].max(), rel=1e-4)
        assert x.top_token_ids == list(np.argsort(-direct[x.neuron])[:10])

    vocab = {i: tiny_model.token_str(i) for i in range(W_U.shape[1])}
    chosen = select_next_token_neurons(infos, vocab, n=5, reject={" the"}, reject_numeric=True)
    # Direct: walk neurons by descending max congruence, keep those whose argmax token passes.
    order = np.argsort(-direct.max(1), kind="stable")
    expect = [int(i) for i in order if token_allowed(vocab[int(direct[i].argmax())], reject={" the"},
                                                     reject_numeric=True)][:5]
    assert [x.neuron for x in chosen] == expect


def test_token_filter_is_the_papers():
    ok = dict(reject={" SolidGoldMagikarp"}, reject_numeric=True)
    assert token_allowed(" cat", **ok)
    assert not token_allowed("cat", **ok)          # no leading space
    assert not token_allowed(" a", **ok)           # two characters
    assert not token_allowed(" 1984", **ok)        # a number
    assert not token_allowed(" SolidGoldMagikarp", **ok)
    assert token_allowed(" 1984", reject=set(), reject_numeric=False)


def test_default_layers_and_random_neurons_in_range():
    assert default_layers(12) == [9, 10, 11]
    assert default_layers(2) == [1]
    picks = sample_random_neurons(64, 20, exclude={0, 63}, seed=3, layer=2)
    assert len(picks) == 20 == len(set(picks)) and all(0 < p < 63 for p in picks)
    assert picks == sample_random_neurons(64, 20, exclude={0, 63}, seed=3, layer=2)
    # asking for more than exist never indexes past the end
    assert sample_random_neurons(5, 50, exclude=set(), seed=0, layer=0) == [0, 1, 2, 3, 4]


def test_topk_matches_a_full_sort():
    g = torch.Generator().manual_seed(0)
    n_docs, n_neurons, k = 137, 23, 7
    vals = torch.randn(n_docs, n_neurons, generator=g)
    pos = torch.randint(0, 50, (n_docs, n_neurons), generator=g)
    top = TopK(k, n_neurons)
    for start in range(0, n_docs, 10):
        top.update(vals[start:start + 10], pos[start:start + 10],
                   torch.arange(start, min(start + 10, n_docs)))
    expect = torch.sort(vals, dim=0, descending=True)
    assert torch.equal(top.values, expect.values[:k])        # the k LARGEST, descending
    assert torch.equal(top.docs, expect.indices[:k])
    assert torch.equal(top.positions, pos.gather(0, expect.indices[:k]))


def test_scan_top_documents_are_the_true_maxima(tiny_model, small_corpus_dir):
    from context_lookups.precompute.corpus import load_corpus

    docs = [r["text"] for r in load_corpus(str(small_corpus_dir))["explain"]]
    res = scan(tiny_model, docs, layers=[0, 1], k=3, batch_size=7, context_tokens=32)
    rows = tokenize_batch(tiny_model, docs, 32)
    for layer, neuron in [(0, 5), (1, 17), (1, 200)]:
        per_doc = []
        for r in rows:
            a = neuron_acts(tiny_model, [r], layer, neuron)[0]
            j = int(np.argmax(a[1:])) + 1  # BOS excluded
            per_doc.append((a[j], j))
        best = sorted(range(len(rows)), key=lambda d: -per_doc[d][0])[:3]
        c = res.column(layer, neuron)
        assert res.docs[:, c].tolist() == best
        for r, d in enumerate(best):
            assert res.values[r, c].item() == pytest.approx(per_doc[d][0], abs=1e-5)
            assert res.positions[r, c].item() == per_doc[d][1]


def test_trimming_invariants(tiny_model, small_corpus_dir):
    from context_lookups.precompute.corpus import load_corpus

    docs = [r["text"] for r in load_corpus(str(small_corpus_dir))["explain"]][:12]
    rows = tokenize_batch(tiny_model, docs, 40)
    layer, neuron, ratio = 1, 3, 0.8
    maxpos = [int(np.argmax(neuron_acts(tiny_model, [r], layer, neuron)[0][1:])) + 1 for r in rows]
    out = trim(tiny_model, rows, maxpos, layer, neuron, act_ratio=ratio)
    # the job passes the scan's activations instead of recomputing them: same result
    again = trim(tiny_model, rows, maxpos, layer, neuron, act_ratio=ratio, orig_acts=[o[1] for o in out])
    assert [a[0] for a in again] == [o[0] for o in out]
    bos = tiny_model.bos_token_id
    checked = 0
    for row, p, (start, orig, act) in zip(rows, maxpos, out, strict=True):
        assert 1 <= start <= p
        whole = neuron_acts(tiny_model, [row[:p + 1]], layer, neuron)[0][-1]
        assert orig == pytest.approx(whole, abs=1e-6)
        got = neuron_acts(tiny_model, [[bos] + row[start:p + 1]], layer, neuron)[0][-1]  # BOS kept
        assert act == pytest.approx(got, abs=1e-5)
        if orig <= 0:
            continue
        checked += 1
        assert got >= ratio * orig - 1e-6
        if start < p:  # one token later no longer reaches the ratio (bisection boundary)
            later = neuron_acts(tiny_model, [[bos] + row[start + 1:p + 1]], layer, neuron)[0][-1]
            assert later < ratio * orig
    assert checked >= 3


@pytest.mark.parametrize("backend", ["tiny_model", "tiny_bridge"])
@pytest.mark.parametrize("layer", [0, 1])
def test_ln_aware_contributions_add_up_to_hook_pre(request, backend, layer):
    model = request.getfixturevalue(backend)
    rows = [[0] + model.encode(" In the beginning God created the heaven"),
            [0] + model.encode("def f(x): return x + 1  # a comment"),
            [0, 17]]
    for neuron in (0, 31, 200):
        att = attribute(model, rows, layer, neuron)
        total, pre = att.ln_total(), att.pre
        assert torch.allclose(total, pre, rtol=1e-4, atol=1e-5 * float(pre.abs().max()) + 1e-6)
        # raw score is hook_result · W_in exactly (no LN scale)
        assert att.raw.shape == (3, layer + 1, model.n_heads)
        assert not torch.allclose(att.raw, att.ln)


def test_target_position_other_than_last(tiny_model):
    row = [0] + tiny_model.encode(" the cat sat on the mat")
    whole = attribute(tiny_model, [row], 1, 9, positions=[3])
    cut = attribute(tiny_model, [row[:4]], 1, 9)
    assert torch.allclose(whole.raw, cut.raw, atol=1e-5) and torch.allclose(whole.act, cut.act, atol=1e-6)


def test_active_rules_on_hand_made_scores():
    s = torch.tensor([0.1, 0.2, 0.0, -0.1, 0.15, 0.05, 0.1, 3.0])
    thr = s.mean() + 2 * s.std()
    assert active_heads(s, rule="2sigma").tolist() == (s > thr).tolist() == [False] * 7 + [True]
    assert active_heads(torch.zeros(8), rule="2sigma").sum() == 0  # no head stands out
    top = active_heads(torch.tensor([1.0, 5.0, 3.0, 3.0, -2.0]), rule="topk", k=3)
    assert top.tolist() == [False, True, True, True, False]
    tie = active_heads(torch.tensor([2.0, 2.0, 2.0, 2.0]), rule="topk", k=2)
    assert tie.tolist() == [True, True, False, False]  # ties by lower index
    batch = active_heads(torch.tensor([[0.0, 9, 0, 0, 0, 0, 0, 0], [9.0, 0, 0, 0, 0, 0, 0, 0]]))
    assert batch.tolist()[0][1] and batch.tolist()[1][0] and batch.sum() == 2
    with pytest.raises(ValueError, match="2sigma"):
        active_heads(s, rule="median")


def test_head_labels_and_scored_layers(tiny_model):
    assert parse_heads("L1H3, l0h2,L1H3", n_layers=2, n_heads=4) == [(1, 3), (0, 2)]
    with pytest.raises(ValueError, match="out of range"):
        parse_heads("L5H0", n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match="L<layer>H<head>"):
        parse_heads("head 3", n_layers=2, n_heads=4)
    up = upstream_attn_layers(tiny_model, 1)
    assert up == 2
    assert scored_layers(1, "le", up) == 2 and scored_layers(1, "lt", up) == 1
    assert scored_layers(1, "le", 1) == 1  # parallel attention/MLP: never beyond the upstream heads
