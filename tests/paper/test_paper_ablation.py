"""The authors' ablation file imported from the sample (their README §3.9): the figures to 1e-4,
per-prompt rows in the project's ablation table, both numpy namings, and hostile pickles
refused with one line before anything they name runs."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import sqlite3
import sys
import types

import numpy as np
import pytest
import torch
from scipy import stats

from context_lookups.precompute.ablation.reads import ablation_table
from context_lookups.precompute.findings.report import find_run, score_table
from context_lookups.precompute.paper.pickled import read_ablation
from context_lookups.precompute.store.db import open_writer, sessions
from tests.paper_data import copy_sample, require_sample, run_cli

PKL = "7_head_ablation/nh_token_prob_attn_ablated_vs_normal_noabs_small.pkl"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from tests.paper_data import import_sample

    db = tmp_path_factory.mktemp("abl") / "a.db"
    import_sample(db)
    return db


def _table(db):
    with sessions(open_writer(f"sqlite:///{db}"))() as s:
        return ablation_table(s, run_id=find_run(s, run_name="gpt2-small", model=None).id)["next_token"]


def test_sample_ablation_figures(imported):
    t = _table(imported)
    au = t["authors"]
    # README §3.9: KS over the pairs' mean drops, NaN groups dropped
    assert (au["active"]["n"], au["inactive"]["n"]) == (29, 27)
    assert au["ks"]["D"] == pytest.approx(0.3985, abs=1e-4)
    assert au["ks"]["p"] == pytest.approx(0.0156, abs=1e-4)
    assert au["active"]["mean_drop"] == pytest.approx(0.00532, abs=1e-5)
    assert au["inactive"]["mean_drop"] == pytest.approx(-0.00126, abs=1e-5)
    # ... and the same numbers straight from the pickle, by the authors' notebook
    raw = read_ablation((require_sample() / PKL).read_bytes(), PKL)
    rel = [v["relevant"] for v in raw.values() if not math.isnan(v["relevant"])]
    irr = [v["irrelevant"] for v in raw.values() if not math.isnan(v["irrelevant"])]
    ks = stats.ks_2samp(rel, irr)
    assert au["ks"]["D"] == pytest.approx(ks.statistic, abs=1e-9)
    assert au["ks"]["p"] == pytest.approx(ks.pvalue, rel=1e-6)
    # the project's statistic sits next to it, over prompts, labelled
    assert t["statistic"].startswith("KS over prompts") and au["statistic"].startswith("KS over per-pair")
    assert t["n_pairs"] == 29 and t["active"]["n"] + t["inactive"]["n"] == t["n_prompts"]


def test_rows_hold_the_authors_values_per_prompt(imported):
    c = sqlite3.connect(imported)
    raw = read_ablation((require_sample() / PKL).read_bytes(), PKL)
    rows = c.execute("""SELECT n.layer, n.neuron, p.head_layer * 12 + p.head, pr.text, pr.active, a.active,
                        a.prob_clean, a.prob_ablated, a."drop", a.n_records, a.act_clean FROM ablations a
                        JOIN pairs p ON p.id = a.pair_id JOIN neurons n ON n.id = p.neuron_id
                        JOIN prompts pr ON pr.id = a.prompt_id""").fetchall()
    by_pair: dict = {}
    for layer, neuron, flat, _text, active_json, active, clean, abl, drop, n_rec, act in rows:
        assert act is None and drop == pytest.approx(clean - abl)
        # active by the authors' rule: the head among the prompt's top 3 (held-out attributions)
        assert bool(active) == (f"L{flat // 12}H{flat % 12}" in json.loads(active_json))
        by_pair.setdefault((layer, neuron, flat), []).append((clean, abl, n_rec, bool(active)))
    assert set(by_pair) == set(raw)
    for key, got in by_pair.items():
        v = raw[key]
        assert sum(n for *_, n, _ in got) == len(v["normal"])  # every record, duplicates counted
        assert sorted(round(c, 7) for c, *_ in got) == sorted({round(x, 7) for x in v["normal"]})
        for want, side in ((v["relevant"], True), (v["irrelevant"], False)):
            sel = [(c - a, n) for c, a, n, act in got if act == side]
            mean = sum(d * n for d, n in sel) / sum(n for _, n in sel) if sel else math.nan
            assert (math.isnan(want) and math.isnan(mean)) or mean == pytest.approx(want, abs=1e-6), key
    # (9, 2209): 30 records, 21 distinct held-out texts
    assert len(by_pair[(9, 2209, 84)]) == 21


def test_skew_test_is_the_authors_one_sided_one_where_their_rule_is_shown(imported):
    with sessions(open_writer(f"sqlite:///{imported}"))() as s:
        t = score_table(s, run_id=find_run(s, run_name="gpt2-small", model=None).id,
                        explainer="openai:gpt-4")["kinds"]["next_token"]
    au = t["authors_rule"]
    assert au["skewtest"]["alternative"] == "greater"
    assert au["skewtest"]["pvalue"] == pytest.approx(
        stats.skewtest(au["scores"], alternative="greater").pvalue)
    assert t["skewtest"]["alternative"] == "two-sided"
    assert t["skewtest"]["pvalue"] == pytest.approx(stats.skewtest(t["scores"]).pvalue)


def test_numpy_1_names_read_the_same(tmp_path, capsys, monkeypatch):
    """The authors' own files (numpy 1.x) name numpy.core.multiarray.scalar; the sample (numpy
    2) numpy._core.multiarray.scalar: both import to the same figures."""
    raw = read_ablation((require_sample() / PKL).read_bytes(), PKL)
    fake = types.ModuleType("numpy.core.multiarray")

    def scalar(dtype, data):  # a stand-in with numpy 1's module path, for pickling only
        raise AssertionError("never called")

    scalar.__module__, scalar.__qualname__ = "numpy.core.multiarray", "scalar"
    fake.scalar = scalar

    class Old(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, np.floating):
                return scalar, (obj.dtype, obj.tobytes())
            return NotImplemented

    data = {k: {"ablated": torch.tensor(v["ablated"]), "normal": torch.tensor(v["normal"]),
                "act_diff_relevant": np.float32(v["relevant"]) if not math.isnan(v["relevant"])
                else np.float64("nan"),
                "act_diff_irrelevant": np.float32(v["irrelevant"]) if not math.isnan(v["irrelevant"])
                else np.float64("nan")} for k, v in raw.items()}
    buf = io.BytesIO()
    monkeypatch.setitem(sys.modules, "numpy.core.multiarray", fake)
    Old(buf, protocol=4).dump(data)
    monkeypatch.undo()
    assert b"numpy.core.multiarray" in buf.getvalue() and b"numpy._core" not in buf.getvalue()
    src = copy_sample(tmp_path / "experiment_data")
    (src / PKL).write_bytes(buf.getvalue())
    db = tmp_path / "np1.db"
    rc, out, _ = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert rc == 0 and "D 0.3985, p 0.0156 over 29 / 27 pairs" in out
    assert _table(db)["authors"]["ks"]["D"] == pytest.approx(0.3985, abs=1e-4)


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _LoadFromBytes:
    """Pickles as ``torch.storage._load_from_bytes(payload)``, as the authors' tensors do."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.payload,))


def _hostile(kind: str, marker) -> bytes:
    if kind == "reduce":
        return pickle.dumps({(9, 2209, 84): {"normal": _WritesAFile(marker)}})
    nested = io.BytesIO()
    torch.save(_WritesAFile(marker), nested, _use_new_zipfile_serialization=False)  # a legacy stream
    return pickle.dumps({(9, 2209, 84): {"normal": _LoadFromBytes(nested.getvalue())}})


@pytest.mark.parametrize("kind", ["reduce", "nested"])
def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path, capsys, kind):
    marker = tmp_path / f"pwned-{kind}"
    payload = _hostile(kind, marker)
    assert not marker.exists()
    src = copy_sample(tmp_path / "experiment_data")
    (src / PKL).write_bytes(payload)
    db = tmp_path / "h.db"
    rc, out, err = run_cli(["import-paper", str(src), "--db", f"sqlite:///{db}"], capsys)
    assert not marker.exists()  # nothing was executed
    assert rc == 0 and "Traceback" not in err
    line = [x for x in out.splitlines() if "missing: head ablation" in x]
    assert len(line) == 1 and PKL in line[0] and "refused" in line[0]
    assert ("posix.system" in line[0]) if kind == "reduce" else ("weights_only=True" in line[0])
    c = sqlite3.connect(db)
    assert c.execute("SELECT status FROM runs").fetchone() == ("partial",)
    assert c.execute("SELECT count(*) FROM ablations").fetchone() == (0,)
    assert c.execute("SELECT count(*) FROM classifications").fetchone() == (562,)  # the rest is there
    # the loader alone refuses it too, with one line
    with pytest.raises(Exception) as exc:
        read_ablation(payload, PKL)
    assert "\n" not in str(exc.value) and PKL in str(exc.value)
    assert not marker.exists()
