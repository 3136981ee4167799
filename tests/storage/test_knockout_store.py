"""The attention knockouts the job stores (table ``knockouts``, docs/method.md §3, "Attention
knockout"; issue 28): one per look-up and default source (the top ``--knockout-top-m`` context
sources by contribution, then the sink), equal to the backend's knockout recomputed on the stored
prompt; ``--knockout-top-m 0`` stores none; the run's summary equals the summary functions over
the stored rows. (Equality on PostgreSQL and on Ray: ``test_storage``, ``test_distributed`` compare
every table, this one included.)"""

from __future__ import annotations

import json
import math

import pytest

from context_lookups.precompute.heads.lookup import decode
from context_lookups.precompute.model import rank_context
from tests.conftest import small_settings
from tests.web_fixtures import rows

EFFECTS = ("direct_pre", "direct_act", "total_pre", "total_act", "total_prob")


def _stored(db):
    """``{(prompt_id, k, h): [knockout rows by idx]}`` with each prompt's token ids, its neuron
    and token, and its look-up (contrib, ln_scale)."""
    out = {}
    for r in rows(db, "SELECT k.prompt_id, k.head_layer, k.head, k.idx, k.sources, k.contrib, k.direct_pre, "
                      "k.direct_act, k.total_pre, k.total_act, k.total_prob, k.prob_clean, p.token_ids, "
                      "n.layer, n.neuron, n.token_id, l.contrib, l.ln_scale FROM knockouts k "
                      "JOIN prompts p ON p.id = k.prompt_id JOIN neurons n ON n.id = p.neuron_id "
                      "JOIN lookups l ON l.prompt_id = k.prompt_id AND l.head_layer = k.head_layer "
                      "AND l.head = k.head ORDER BY k.prompt_id, k.head_layer, k.head, k.idx"):
        key = r[:3]
        out.setdefault(key, {"rows": [], "ids": json.loads(r[12]), "target": (r[13], r[14], r[15]),
                             "contrib": decode(r[16]), "scale": r[17]})["rows"].append(r[3:12])
    return out


def test_every_lookup_has_its_default_knockouts(precomputed_db):
    n_lookups = rows(precomputed_db, "SELECT count(*) FROM lookups")[0][0]
    got = _stored(precomputed_db)
    assert n_lookups > 0 and len(got) == n_lookups  # every look-up, and only look-ups
    for (_pid, _k, _h), g in got.items():
        p = len(g["ids"])  # the firing position (BOS at 0)
        want = [[s] for s in rank_context(g["contrib"])[:3]] + [[0]]  # top 3 context sources, then the sink
        assert [json.loads(r[1]) for r in g["rows"]] == want
        assert [r[0] for r in g["rows"]] == list(range(min(3, p) + 1))
        for r in g["rows"]:
            srcs = json.loads(r[1])
            assert r[2] == pytest.approx(sum(g["contrib"][s] for s in srcs), rel=1e-5, abs=1e-6)


def test_stored_knockouts_equal_the_backend_recomputed(precomputed_db, tiny_model):
    got = _stored(precomputed_db)
    keys = sorted(got)[:: max(1, len(got) // 40)]  # about 40 look-ups, of several neurons and heads
    bos = tiny_model.bos_token_id
    kos = tiny_model.backend.knockout([[bos] + got[k]["ids"] for k in keys], [got[k]["target"] for k in keys],
                                      [(k[1], k[2]) for k in keys])
    n = 0
    for key, ko in zip(keys, kos, strict=True):
        stored = got[key]["rows"]
        assert [list(s) for s in ko.sources] == [json.loads(r[1]) for r in stored]
        for j, r in enumerate(stored):
            assert r[8] == pytest.approx(ko.prob, rel=1e-5, abs=1e-9)  # prob_clean
            for e, v in zip(EFFECTS, r[3:8], strict=True):
                want = float(getattr(ko, e)[j])
                if math.isnan(want):
                    assert v is None  # undefined: stored as NULL
                else:
                    ref = ko.prob if e == "total_prob" else abs(ko.act)
                    scale = max(abs(want), ref, 1e-9)
                    assert v == pytest.approx(want, abs=1e-5 * scale), (key, j, e)
                n += 1
    assert n > 100


def test_knockout_top_m_zero_stores_none(tmp_path, tiny_model_dir, small_corpus_dir, tiny_model):
    from context_lookups.precompute.job.pipeline import run_precompute

    db = tmp_path / "off.db"
    summary = run_precompute(small_settings(db, tiny_model_dir, small_corpus_dir, knockout_top_m=0, n_docs=20,
                                            explainer="none", ablation="none"), model=tiny_model)
    assert summary["prompts"] > 0
    assert rows(db, "SELECT count(*) FROM lookups")[0][0] > 0
    assert rows(db, "SELECT count(*) FROM knockouts")[0][0] == 0


def test_the_runs_summary_is_the_summaries_of_the_stored_rows(precomputed_db):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from context_lookups.precompute.heads import knockout as K
    from context_lookups.precompute.heads.reads import knockout_summary, pair_knockouts
    from context_lookups.precompute.store.schema import Lookup, Pair, Prompt

    engine = create_engine(f"sqlite:///{precomputed_db}")
    with Session(engine) as s:
        run_id = s.scalar(Pair.__table__.select().with_only_columns(Pair.run_id).limit(1))
        got = knockout_summary(s, run_id=run_id)
        flags, rhos = [], []
        for pair in s.query(Pair).filter(Pair.run_id == run_id, Pair.kept.is_(True)):
            ps = s.query(Prompt).filter(Prompt.neuron_id == pair.neuron_id).all()
            kos = pair_knockouts(s, prompt_ids=[p.id for p in ps], head_layer=pair.head_layer, head=pair.head)
            scales = {lk.prompt_id: lk.ln_scale for lk in s.query(Lookup).filter(
                Lookup.prompt_id.in_(list(kos)), Lookup.head_layer == pair.head_layer,
                Lookup.head == pair.head)}
            prompts = [K.from_stored(kos[pid], scales[pid]) for pid in kos]
            if not prompts:
                continue
            one = K.summarise_pair(prompts)
            assert got["pairs"][pair.id] == one
            flags.append(one["top_source"]["holds"])
            if one["agreement"]["rho"] is not None:
                rhos.append(one["agreement"]["rho"])
    engine.dispose()
    assert got["n_pairs"] == len(flags) > 0
    assert got["top_source"] == K.share_of_pairs(flags)
    assert got["agreement"]["n"] == len(rhos)
