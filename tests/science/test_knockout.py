"""Attention knockout, the attention sink and the knockout summaries (docs/method.md §3, "The
attention sink", "Attention knockout"; issue 28): the identities that tie a knockout to the
look-up, fast = bridge for both effects on every family, the sink row on constructed look-ups,
and the summaries against scipy and the project's Wilson interval."""

from __future__ import annotations

import math

import pytest
import torch

from context_lookups.precompute.heads.knockout import (
    from_backend,
    pair_agreement,
    pair_top_source,
    rank_agreement,
    share_of_pairs,
    top_source_holds,
)
from context_lookups.precompute.heads.lookup import split_sink
from context_lookups.precompute.model import tokenize_batch
from context_lookups.precompute.model.knockout import Knockout, activation, default_sources, knocked_pattern

TEXTS = ["The quick brown fox jumps over the lazy dog, and then it ran away into the woods.",
         "In the beginning God created the heaven and the earth.",
         "def main():\n    return 0"]


def close(got, ref, rel=1e-5, scale=None):
    """``got`` equals ``ref`` to ``rel`` of the largest magnitude of ``scale`` (default ``ref``)."""
    ref, got = torch.as_tensor(ref, dtype=torch.float64), torch.as_tensor(got, dtype=torch.float64)
    s = ref if scale is None else torch.as_tensor(scale, dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=0, atol=rel * max(float(s.abs().max()), 1e-6))


def _case(model):
    """Rows of mixed neurons, heads and firing positions (one batch), valid on every family: the
    deepest layer's neurons read heads of layer 0 and of the layer below."""
    rows = tokenize_batch(model, TEXTS, 30)
    last = model.n_layers - 1
    targets = [(last, 3, 42), (1, 7, 100), (last, 11, 5)]
    heads = [(0, 1), (0, 2), (last - 1, 0)]
    positions = [len(rows[0]) - 1, 5, len(rows[2]) - 1]
    return rows, targets, heads, positions


def _bridge_with_row(bridge, rows, target, head, p, row):
    """Reference run on the bridge: the head's attention row at ``p`` replaced by ``row`` (every
    other position untouched); the neuron's hook_pre, hook_post and the token's probability at p."""
    (k, h), (lay, n, tok) = head, target
    tokens = torch.tensor([rows[:p + 1]])

    def put(pattern, hook=None):
        pattern = pattern.clone()
        pattern[0, h, p] = row.to(pattern.dtype)
        return pattern
    names = [f"blocks.{lay}.mlp.hook_pre", f"blocks.{lay}.mlp.hook_post"]
    with torch.no_grad(), bridge.backend.bridge.hooks(fwd_hooks=[(f"blocks.{k}.attn.hook_pattern", put)]):
        out, cache = bridge.backend.bridge.run_with_cache(tokens, names_filter=names)
    return (float(cache[names[0]][0, p, n]), float(cache[names[1]][0, p, n]),
            float(out[0, p].double().softmax(-1)[tok]))


def test_direct_effect_without_renormalising_is_minus_the_ln_aware_term(tiny_pair):
    """Removing one source's term, the norm's scale frozen, moves hook_pre by exactly minus that
    source's LN-aware look-up term: the knockout's Δz · W_O path against the look-up's
    a · (v · W_O · W_pre) of a separate pass, every source of every row, on both backends."""
    rows, targets, heads, positions = _case(tiny_pair[0])
    for model in tiny_pair:
        res = model.backend.neuron_pass(rows, targets, positions, lookup=True)
        every = [[(s,) for s in range(p + 1)] for p in positions]
        kos = model.backend.knockout(rows, targets, heads, every, positions, renormalise=False, total=False)
        for j, ko in enumerate(kos):
            k, h = heads[j]
            want = res.lookup.contrib[j, k, h, :positions[j] + 1] / res.lookup.scale[j]
            close(ko.direct_pre, -want, scale=want)
            close(ko.contrib_ln, want)  # the knockout's own look-up row is the look-up's
            assert ko.total_pre is None and ko.sources == every[j]


def test_knocking_out_all_but_one_source_is_the_head_reading_only_it(tiny_pair):
    """A knockout of every source but ``s0``: renormalised, the head reads ``s0`` alone (its row
    one-hot at ``s0``); not renormalised, only ``s0``'s term is left (``a[p, s0]`` at ``s0``, 0
    elsewhere). Totals equal a bridge run with that row written in; direct effects equal the
    look-up's arithmetic (``t = contrib / a``)."""
    fast, bridge = tiny_pair
    rows, targets, heads, positions = _case(fast)
    for renormalise in (True, False):
        kos = {m.backend.name: m.backend.knockout(rows, targets, heads, None, positions,
                                                  renormalise=renormalise, m=1) for m in tiny_pair}
        for j, p in enumerate(positions):
            ko = kos["bridge"][j]
            a, c = ko.attention.double(), ko.contrib.double()
            s0 = int(torch.argmax(torch.where(torch.arange(p + 1) > 0, a, -1.0)))  # a context source, a > 0
            assert a[s0] > 1e-3
            others = [tuple(s for s in range(p + 1) if s != s0)]
            row = torch.zeros(p + 1)
            row[s0] = 1.0 if renormalise else float(a[s0])
            pre, act, prob = _bridge_with_row(bridge, rows[j], targets[j], heads[j], p, row)
            want_direct = ((c[s0] / a[s0] if renormalise else c[s0]) - c.sum()) / ko.scale
            for m in tiny_pair:
                got = m.backend.knockout(rows[j:j + 1], targets[j:j + 1], heads[j:j + 1], [others], [p],
                                         renormalise=renormalise)[0]
                close(got.pre + got.total_pre, [pre], scale=[pre, got.pre])
                close(got.act + got.total_act, [act], scale=[act, got.act])
                close(got.prob + got.total_prob, [prob], scale=[prob, got.prob])
                close(got.direct_pre, [want_direct], scale=c / ko.scale)


@pytest.mark.parametrize("renormalise", [True, False])
def test_fast_equals_bridge_for_both_effects(tiny_pair, renormalise):
    """Default knockouts (top 3 context sources and the sink) plus a set knocked out together,
    rows of mixed neurons, heads and positions in one batch and one row per batch: the fast
    backend (one cached step per knockout) equals the bridge (the prompt re-run with
    ``hook_pattern`` rewritten) to 1e-5 of the clean values; clean values equal the live view."""
    fast, bridge = tiny_pair
    rows, targets, heads, positions = _case(fast)
    want = bridge.backend.knockout(rows, targets, heads, None, positions, renormalise=renormalise)
    sources = [[*ko.sources, (1, 2)] for ko in want]
    want = bridge.backend.knockout(rows, targets, heads, sources, positions, renormalise=renormalise)
    cv = fast.backend.clean_view(rows, targets, positions)
    for max_rows in (64, 1):
        got = fast.backend.knockout(rows, targets, heads, sources, positions, renormalise=renormalise,
                                    max_rows=max_rows)
        for j, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.sources == w.sources and len(g.sources) == min(3, positions[j]) + 2
            assert ((g.layer, g.neuron, g.token, g.position, g.head)
                    == (w.layer, w.neuron, w.token, w.position, w.head))
            close([g.pre, g.act, g.prob, g.scale], [w.pre, w.act, w.prob, w.scale])
            close([g.pre, g.act, g.prob], [float(cv.pre[j]), float(cv.act[j]), float(cv.prob[j])])
            close(g.contrib, w.contrib)
            close(g.attention, w.attention)
            c = g.contrib_ln.abs().max()
            close(g.direct_pre, w.direct_pre, scale=c)
            close(g.direct_act, w.direct_act, scale=[c, g.act])
            close(g.pre + g.total_pre, w.pre + w.total_pre, scale=[g.pre, *(g.pre + g.total_pre)])
            close(g.act + g.total_act, w.act + w.total_act, scale=[g.act, *(g.act + g.total_act)])
            close(g.prob + g.total_prob, w.prob + w.total_prob, scale=[g.prob, *(g.prob + g.total_prob)])


def test_the_direct_effect_reads_the_models_own_activation(tiny_pair):
    """The MLP activation the direct effect applies (``act_fn``; times the up projection for a
    gated MLP) gives the model's hook_post from its hook_pre: the knockout of nothing that
    matters (a source with no attention) moves neither."""
    fast, _ = tiny_pair
    rows, targets, heads, positions = _case(fast)
    act = activation(fast.dims.act_fn)
    for m in tiny_pair:
        for ko in m.backend.knockout(rows, targets, heads, [[(0,)]] * 3, positions, renormalise=False):
            if not m.dims.gated_mlp:
                close(act(torch.tensor([ko.pre])), [ko.act], scale=[ko.act, 1e-2])
            want_pre = -ko.contrib_ln[0]
            close(ko.direct_pre, [want_pre], scale=ko.contrib_ln)
            # first-order: the activation moves by about its slope times the pre-activation's move
            assert math.isfinite(float(ko.direct_act[0]))
        assert m.dims.act_fn in ("gelu_new", "gelu", "silu")


def test_a_source_outside_the_sliding_window_changes_nothing(families):
    """Mistral with a 5-token window: the cached step sees only the window (a source outside it,
    knocked out, leaves hook_pre, hook_post and the probability unchanged to float precision),
    and a source inside it moves them."""
    m = families.fast("mistral")
    cfg = m.backend.hf.config
    before = cfg.sliding_window
    rows = tokenize_batch(m, [TEXTS[0]], 30)
    p = len(rows[0]) - 1
    try:
        cfg.sliding_window = 5
        out_, in_ = m.backend.knockout(rows * 2, [(2, 7, 42)] * 2, [(1, 0)] * 2, [[(2,)], [(p - 1,)]])
    finally:
        cfg.sliding_window = before
    assert float(out_.attention[2]) == 0.0 and float(in_.attention[p - 1]) > 0
    for t in (out_.total_pre, out_.total_act, out_.direct_pre):
        assert float(t.abs().max()) < 1e-6 * max(1.0, abs(out_.pre))
    assert float(out_.total_prob.abs().max()) < 1e-9
    assert float(in_.total_pre.abs().max()) > 1e-4
    # every source the window shows, knocked out and renormalised: undefined (NaN), and the other
    # knockouts of the same row, which share its pass on the fast backend, are unchanged
    try:
        cfg.sliding_window = 5
        both = m.backend.knockout(rows, [(2, 7, 42)], [(1, 0)], [[tuple(range(p - 4, p + 1)), (p - 1,)]])[0]
    finally:
        cfg.sliding_window = before
    for t in (both.direct_pre, both.direct_act, both.total_pre, both.total_act, both.total_prob):
        assert math.isnan(float(t[0]))
    close(both.total_pre[1:], in_.total_pre, scale=[in_.pre])
    close(both.total_prob[1:], in_.total_prob, scale=[in_.prob])


def test_knockout_refuses_bad_input_with_a_reason(tiny_model):
    be = tiny_model.backend
    rows = tokenize_batch(tiny_model, TEXTS[:1], 12)
    p = len(rows[0]) - 1
    with pytest.raises(ValueError, match="token"):
        be.knockout(rows, [(1, 3)], [(0, 1)])
    with pytest.raises(ValueError, match="not upstream"):
        be.knockout(rows, [(0, 3, 5)], [(1, 1)])
    with pytest.raises(ValueError, match=r"0\.\."):
        be.knockout(rows, [(1, 3, 5)], [(0, 1)], [[(p + 1,)]])
    with pytest.raises(ValueError, match="nothing to renormalise"):
        be.knockout(rows, [(1, 3, 5)], [(0, 1)], [[tuple(range(p + 1))]])
    with pytest.raises(ValueError, match="one .layer, head. per row"):
        be.knockout(rows, [(1, 3, 5)], [])
    everything = be.knockout(rows, [(1, 3, 5)], [(0, 1)], [[tuple(range(p + 1))]], renormalise=False)[0]
    close(everything.direct_pre, [-everything.contrib_ln.sum()], scale=everything.contrib_ln)


def test_knocked_pattern_zeroes_and_renormalises():
    a = torch.tensor([[0.5, 0.2, 0.3, 0.0], [1.0, 0.0, 0.0, 0.0]])
    k = torch.tensor([[True, False, False, False], [True, False, False, False]])
    got = knocked_pattern(a, k, True)
    close(got[0], [0.0, 0.4, 0.6, 0.0])
    assert torch.isnan(got[1]).all()  # nothing left: undefined, never a silent zero row
    close(knocked_pattern(a, k, False), [[0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]])


# --- the attention sink --------------------------------------------------------------------------

def test_the_sink_row_is_bos_and_the_context_ranks_by_share_of_the_non_sink_total():
    s = split_sink([5.0, 0.1, -0.3, 0.2, 0.0], [0.9, 0.02, 0.05, 0.03, 0.0])
    assert s.sink == (0,) and s.sink_contrib == 5.0 and s.sink_attention == 0.9
    assert s.positions == [3, 1, 4, 2]  # by contribution, largest first; ties by position
    assert s.contrib == [0.2, 0.1, 0.0, -0.3] and s.attention == [0.03, 0.02, 0.0, 0.05]
    assert s.share == pytest.approx([0.2 / 0.6, 0.1 / 0.6, 0.0, -0.3 / 0.6])
    assert s.context_total == pytest.approx(0.0) and s.context_abs == pytest.approx(0.6)
    d = s.as_dict()
    assert d["sink"] == {"positions": [0], "contrib": 5.0, "attention": 0.9}
    assert [c["position"] for c in d["context"]] == [3, 1, 4, 2]
    assert split_sink([1.0, 0.0, 0.0], [0.5, 0.25, 0.25]).share is None  # no context term: no share
    only_bos = split_sink([2.0], [1.0])
    assert only_bos.positions == [] and only_bos.share is None and only_bos.sink_contrib == 2.0
    with pytest.raises(ValueError, match="attention weights"):
        split_sink([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="outside"):
        split_sink([1.0], [1.0], sink=(3,))


def test_default_knockouts_are_the_top_context_sources_and_the_sink():
    assert default_sources([9.0, 0.1, 0.5, -1.0, 0.5, 0.2]) == [(2,), (4,), (5,), (0,)]
    assert default_sources([9.0, 0.1], m=3) == [(1,), (0,)]
    assert default_sources([9.0, 0.1, 0.5], m=1) == [(2,), (0,)]


def test_the_sink_of_a_real_lookup_adds_up(tiny_model):
    rows = tokenize_batch(tiny_model, TEXTS[:1], 20)
    res = tiny_model.backend.neuron_pass(rows, [(1, 3)], lookup=True)
    c, a = res.lookup.contrib[0, 1, 2], res.lookup.attention[0, 1, 2]
    s = split_sink(c, a)
    assert s.sink_contrib + s.context_total == pytest.approx(float(c.sum()), abs=1e-5)
    assert sorted(s.positions) == list(range(1, len(rows[0])))
    assert s.sink_attention + sum(s.attention) == pytest.approx(1.0, abs=1e-5)


# --- summaries -----------------------------------------------------------------------------------

def test_rank_agreement_is_spearman_of_contribution_and_drop_or_says_why_not():
    from scipy.stats import spearmanr

    c, e = [3.0, 2.0, 1.0, 0.5], [-2.0, -1.5, 0.1, -0.2]
    got = rank_agreement(c, e)
    want = spearmanr(c, [-x for x in e])
    assert got["n"] == 4 and got["reason"] is None
    assert got["rho"] == pytest.approx(want.statistic) and got["p"] == pytest.approx(want.pvalue)
    assert rank_agreement([1.0, 2.0, 3.0], [-1.0, -2.0, -3.0])["rho"] == pytest.approx(1.0)
    two = rank_agreement([1.0, 2.0], [-1.0, -2.0])
    assert two["rho"] is None and two["n"] == 2 and "at least 3" in two["reason"]
    flat = rank_agreement([1.0, 1.0, 1.0], [-1.0, -2.0, -3.0])
    assert flat["rho"] is None and "contributions are constant" in flat["reason"]
    assert "effects are constant" in rank_agreement([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])["reason"]
    nan = rank_agreement([1.0, 2.0, 3.0, 4.0], [-1.0, float("nan"), -3.0, -4.0])
    assert nan["n"] == 3 and nan["rho"] == pytest.approx(1.0)


def test_share_of_pairs_whose_top_source_holds_with_its_wilson_interval():
    from context_lookups.precompute.explain.scoring import wilson

    assert top_source_holds([1.0, 1.0], [-0.6, -0.5]) is True   # mean drop 0.55 >= 0.5
    assert top_source_holds([1.0, 1.0], [-0.6, -0.3]) is False  # mean drop 0.45 < 0.5
    assert top_source_holds([-1.0, 0.5], [-1.0, -1.0]) is None  # no rise to explain
    assert top_source_holds([], []) is None
    assert top_source_holds([2.0], [-0.9], fraction=0.5) is False
    flags = [True] * 7 + [False] * 3 + [None] * 2
    got = share_of_pairs(flags)
    assert (got["k"], got["n"], got["undefined"]) == (7, 10, 2) and got["share"] == pytest.approx(0.7)
    assert (got["low"], got["high"]) == pytest.approx(wilson(7, 10))
    none = share_of_pairs([None, None])
    assert none["n"] == 0 and none["share"] is None and none["reason"]


def _ko(contrib_ln, sources, total_act):
    n = len(contrib_ln)
    t = torch.tensor(total_act)
    zeros = torch.zeros(len(sources))
    return Knockout(layer=1, neuron=0, token=0, position=n - 1, head=(0, 0), renormalise=True, pre=0.0,
                    act=0.0, prob=0.0, scale=2.0, contrib=torch.tensor(contrib_ln) * 2.0,
                    attention=torch.zeros(n), sources=sources, direct_pre=zeros, direct_act=zeros,
                    total_pre=t, total_act=t, total_prob=t)


def test_pair_summaries_pool_the_context_sources_and_leave_the_sink_out():
    a = _ko([5.0, 1.0, 0.5, 0.2], [(1,), (2,), (3,), (0,), (1, 2)], [-0.9, -0.4, -0.05, -3.0, -1.0])
    b = _ko([4.0, 0.1, 0.8], [(2,), (1,), (0,)], [-0.3, 0.0, -2.0])
    prompts = [from_backend(a), from_backend(b)]
    got = pair_agreement(prompts)
    # the sink (0,) and the set (1, 2) are left out: 5 (prompt, source) knockouts
    want = rank_agreement([1.0, 0.5, 0.2, 0.8, 0.1], [-0.9, -0.4, -0.05, -0.3, 0.0])
    assert got == want and got["n"] == 5
    # top sources: 1.0 (drop 0.9) and 0.8 (drop 0.3): mean drop 0.6 >= 0.5 * mean 0.9
    top = pair_top_source(prompts)
    assert top["holds"] is True and top["n"] == 2
    assert top["mean_contrib"] == pytest.approx(0.9) and top["mean_drop"] == pytest.approx(0.6)
    assert pair_top_source(prompts, fraction=0.7)["holds"] is False
    # knockouts run without the total effect: nothing to rank, and it says so
    direct_only = pair_agreement([from_backend(Knockout(**{**a.__dict__, "total_act": None}))])
    assert direct_only["rho"] is None and direct_only["n"] == 0 and "at least 3" in direct_only["reason"]
