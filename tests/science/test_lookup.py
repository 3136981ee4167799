"""The context look-up (docs/method.md §3, "Per-source decomposition"), as the precompute job
stores it: on every stored look-up of a random GPT-2 and of the embedded model, the per-source
terms plus the value-bias term equal the stored raw attribution and, divided by the LN scale,
the LN-aware one (relative 1e-5 of the prompt's largest |A|); the attention weights sum to one;
look-ups are stored exactly for the kept pairs, on each of their neuron's explain and held-out
prompts; a fast family without the capture says which methods it lacks."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from context_lookups.precompute.heads.lookup import BOS_LABEL, carriers, decode, encode, summary
from tests.conftest import small_settings

REL = 1e-5


def check_stored_lookups(db) -> int:
    """Every look-up row of ``db`` against its prompt's stored scores; returns how many."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT p.id, p.tokens, p.attr_raw, p.attr_ln, l.head_layer, l.head, l.contrib, l.attention, "
            "l.bias, l.ln_scale FROM lookups l JOIN prompts p ON p.id = l.prompt_id").fetchall()
        kept = {(nid, k, h) for nid, k, h in con.execute(
            "SELECT neuron_id, head_layer, head FROM pairs WHERE kept")}
        stored = {(nid, k, h) for nid, k, h in con.execute(
            "SELECT DISTINCT p.neuron_id, l.head_layer, l.head FROM lookups l "
            "JOIN prompts p ON p.id = l.prompt_id")}
        assert kept and stored == kept  # the kept pairs, and only those
        for nid, k, h in kept:  # every prompt of the neuron, both splits
            n_prompts = con.execute("SELECT count(*) FROM prompts WHERE neuron_id = ?", (nid,)).fetchone()[0]
            n_lookups = con.execute("SELECT count(*) FROM lookups l JOIN prompts p ON p.id = l.prompt_id "
                                    "WHERE p.neuron_id = ? AND l.head_layer = ? AND l.head = ?",
                                    (nid, k, h)).fetchone()[0]
            assert n_lookups == n_prompts > 0
    finally:
        con.close()
    for _, tokens, raw, ln, k, h, contrib, attention, bias, scale in rows:
        raw, ln, tokens = json.loads(raw), json.loads(ln), json.loads(tokens)
        c, a = decode(contrib), decode(attention)
        assert len(c) == len(a) == len(tokens) + 1  # BOS, then every token; the last one fires
        assert min(a) >= 0 and sum(a) == pytest.approx(1.0, abs=1e-5)
        top = max(abs(v) for row in raw for v in row)
        assert abs(sum(c) + bias - raw[k][h]) <= REL * top
        top_ln = max(abs(v) for row in ln for v in row)
        assert abs(sum(x / scale for x in c) + bias / scale - ln[k][h]) <= REL * top_ln
        assert bias == 0.0  # fold_value_biases: the value bias lives in b_O
    return len(rows)


def test_stored_lookups_sum_to_the_attribution_on_a_random_gpt2(precomputed_db):
    assert check_stored_lookups(precomputed_db) >= 50


@pytest.mark.parametrize("backend", ["fast", "bridge"])
def test_stored_lookups_sum_to_the_attribution_on_the_embedded_model(tmp_path, small_corpus_dir, backend):
    """The real job on the embedded model (a few neurons of its last layer, on each backend)."""
    from context_lookups.precompute.core.settings import EMBEDDED_MODEL
    from context_lookups.precompute.job.pipeline import run_precompute

    db = tmp_path / "embedded.db"
    summary_ = run_precompute(small_settings(db, EMBEDDED_MODEL, small_corpus_dir, layers=[3], n_per_layer=2,
                                             n_random=1, explainer="none", ablation="none", backend=backend))
    assert summary_["kept_pairs"] > 0
    assert check_stored_lookups(db) >= 20


@pytest.mark.parametrize("fam", ["neox", "llama"])
def test_stored_lookups_sum_to_the_attribution_on_the_fast_families(tmp_path, small_corpus_dir, families,
                                                                    fam):
    """The real job on the tiny GPT-NeoX (parallel blocks, partial rotary, LayerNorm) and Llama
    (grouped-query attention, RMSNorm, gated MLP) models on their fast backends: every stored
    look-up sums to the stored raw and LN-aware attribution."""
    from context_lookups.precompute.job.pipeline import run_precompute

    db = tmp_path / f"{fam}.db"
    model = families.fast(fam)
    summary_ = run_precompute(small_settings(db, families.dir(fam), small_corpus_dir, n_per_layer=2,
                                             n_random=1, explainer="none", ablation="none"), model=model)
    assert summary_["kept_pairs"] > 0
    assert check_stored_lookups(db) >= 20


def test_sliding_window_lookup_sums_to_the_attribution(families):
    """Mistral with a sliding window shorter than the prompts: the model's attention sees only
    the last ``window`` keys, and the look-up's pattern does too — the terms are zero outside
    the window and still sum to ``A[h]`` (read from the ``z`` the model computed)."""
    from context_lookups.precompute.model import tokenize_batch

    m = families.fast("mistral")
    cfg = m.backend.hf.config
    before = cfg.sliding_window
    text = ("In the beginning God created the heaven and the earth, and the earth was "
            "without form, and void; and darkness was upon the face of the deep.")
    rows = tokenize_batch(m, [text], 40)
    p = len(rows[0]) - 1
    try:
        cfg.sliding_window = 5
        res = m.backend.neuron_pass(rows, [(2, 7)], [p], lookup=True)
    finally:
        cfg.sliding_window = before
    t = res.lookup
    assert not t.attention[0, :, :, :p - 4].any() and t.attention[0, :, :, p - 4:p + 1].all()
    torch.testing.assert_close(t.contrib[0].sum(-1) + t.bias[0], res.raw[0], rtol=0,
                               atol=REL * float(res.raw[0].abs().max()))


def test_encoding_round_trips_float32_and_refuses_a_torn_vector():
    import numpy as np

    vals = [0.0, -1.5, 1e-30, 3.4e38, 0.1]
    assert decode(encode(vals)) == [float(np.float32(v)) for v in vals]
    assert len(encode(vals)) == 4 * len(vals)
    with pytest.raises(ValueError, match="multiple of 4"):
        decode(b"\x00" * 6)


def test_carriers_and_summary_group_by_token_string_the_sink_apart():
    tokens = [" the", " LORD", " said", " the"]
    contrib = [0.5, 0.1, 2.0, -0.25, 0.3]  # BOS first
    c = carriers(tokens, contrib)
    # the attention sink (BOS) is no context token: never among the carriers
    assert c == {" the": pytest.approx(0.4), " LORD": 2.0, " said": -0.25} and BOS_LABEL not in c
    s = summary([(tokens, contrib, [0.6, 0.1, 0.1, 0.1, 0.1]),
                 ([" LORD", " God"], [0.0, 1.0, 0.5], [0.2, 0.5, 0.3])])
    assert s["n_prompts"] == 2
    assert s["sink"]["total"] == pytest.approx(0.5) and s["sink"]["per_prompt"] == pytest.approx(0.25)
    assert s["sink"]["attention"] == pytest.approx(0.4) and s["sink"]["token"] == BOS_LABEL
    rows = {r["token"]: r for r in s["rows"]}
    assert BOS_LABEL not in rows
    assert rows[" LORD"]["total"] == pytest.approx(3.0) and rows[" LORD"]["prompts"] == 2
    assert rows[" LORD"]["top"] == 2  # it carries the most of the context on both prompts
    assert rows[" LORD"]["per_prompt"] == pytest.approx(1.5)
    # share of the non-sink total: |3.0| + |0.4| + |0.5| + |-0.25|
    assert s["context_abs"] == pytest.approx(4.15) and rows[" LORD"]["share"] == pytest.approx(3.0 / 4.15)
    assert rows[" said"]["share"] == pytest.approx(-0.25 / 4.15)
    assert s["rows"][0]["token"] == " LORD"  # by total, largest first


def test_a_fast_family_without_the_capture_names_the_method(tiny_model):
    """A fast backend whose family has no look-up capture (neither ``_lookup_hook`` nor
    ``_qkv``) refuses the look-up with one clear error naming them, before any forward pass,
    and keeps every other pass."""
    from context_lookups.precompute.model.fast import FastBackend
    from context_lookups.precompute.model.gpt2 import GPT2Backend

    class Bare(GPT2Backend):
        family = "bare"
        _lookup_hook = FastBackend._lookup_hook

    be = tiny_model.backend
    bare = Bare.__new__(Bare)
    bare.__dict__.update(be.__dict__)
    rows = [[0, 5, 6, 7]]
    assert bare.neuron_pass(rows, [(1, 3)]).raw is not None
    with pytest.raises(NotImplementedError, match=r"FastBackend\._qkv nor FastBackend\._lookup_hook"):
        bare.neuron_pass(rows, [(1, 3)], lookup=True)
