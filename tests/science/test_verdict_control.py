"""The verdict with its control (issue 28 item 4, docs/method.md §8): the ablation gap of
next-token neurons' pairs minus the random neurons' gap, bootstrapped as the other claims (four
groups resampled independently, scipy's BCa, seeded); its own row of the verdict on the home and
compare pages, recomputed here from a real run's stored rows."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from context_lookups.app.pages.formats import signed
from context_lookups.precompute.findings.verdict import (
    CONFIDENCE,
    DOES_NOT,
    MIN_PAIRS,
    N_RESAMPLES,
    NOT_MEASURED,
    REPRODUCES,
    SEED,
    claim,
)
from tests.web_fixtures import TOPK_RUN

SIGNS = (1, -1, -1, 1)


def _groups(seed: int, nt_gap: float, rnd_gap: float) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.002 + nt_gap, 0.002, 30), rng.normal(0.002, 0.002, 28),
            rng.normal(0.002 + rnd_gap, 0.002, 25), rng.normal(0.002, 0.002, 27)]


def test_control_is_the_difference_of_the_gaps_bootstrapped_with_scipy():
    g = _groups(3, nt_gap=0.004, rnd_gap=0.0)
    c = claim(g, null=0.0, paper=None, signs=SIGNS)
    want = (g[0].mean() - g[1].mean()) - (g[2].mean() - g[3].mean())
    ref = stats.bootstrap(tuple(g), lambda a, b, x, y, axis=-1: (a.mean(axis) - b.mean(axis))
                          - (x.mean(axis) - y.mean(axis)), vectorized=True, n_resamples=N_RESAMPLES,
                          confidence_level=CONFIDENCE, method="BCa",
                          rng=np.random.default_rng(SEED)).confidence_interval
    assert c["value"] == pytest.approx(want) and (c["lo"], c["hi"]) == pytest.approx((ref.low, ref.high))
    assert c["n"] == [30, 28, 25, 27] and c["verdict"] == REPRODUCES and c["paper"] is None
    # random neurons' heads with the larger gap (the default run's finding): does not reproduce
    reverse = claim(_groups(3, nt_gap=0.0, rnd_gap=0.004), null=0.0, paper=None, signs=SIGNS)
    assert reverse["verdict"] == DOES_NOT
    short = claim([*g[:3], g[3][:MIN_PAIRS - 1]], null=0.0, paper=None, signs=SIGNS)
    assert short["verdict"] == NOT_MEASURED and short["value"] is None
    with pytest.raises(ValueError):
        claim(g, null=0.0, paper=None)  # four groups need their signs
    with pytest.raises(ValueError):
        claim(g, null=0.0, paper=None, signs=(1, -1))


@pytest.fixture(scope="module")
def client(web_db):
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=f"sqlite:///{web_db}", torch_threads=None, preload=False)) as c:
        yield c


def _pair_means(web_db, kind: str) -> dict[bool, list[float]]:
    con = sqlite3.connect(f"file:{web_db}?mode=ro", uri=True)
    out: dict[bool, list[float]] = {True: [], False: []}
    for _pid, active, mean in con.execute(
            "SELECT a.pair_id, a.active, avg(a.\"drop\") FROM ablations a JOIN pairs p ON p.id = a.pair_id "
            "JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = p.run_id WHERE r.slug = ? "
            "AND n.kind = ? AND a.method = 'zero' GROUP BY a.pair_id, a.active ORDER BY a.pair_id, a.active",
            (TOPK_RUN, kind)):
        out[bool(active)].append(mean)
    con.close()
    return out


def test_control_of_a_real_run_from_its_rows_on_the_home_and_compare_pages(client, web_db):
    nt, rnd = _pair_means(web_db, "next_token"), _pair_means(web_db, "random")
    run = next(r for r in client.get("/.json").json()["runs"] if r["slug"] == TOPK_RUN)
    a = run["findings"]["verdict"]["ablation"][0]
    c = a["vs_random"]
    assert c["n"] == [len(nt[True]), len(nt[False]), len(rnd[True]), len(rnd[False])]
    assert min(c["n"]) >= MIN_PAIRS
    assert c["value"] == pytest.approx((np.mean(nt[True]) - np.mean(nt[False])) - (np.mean(rnd[True])
                                                                                    - np.mean(rnd[False])))
    assert c == claim([nt[True], nt[False], rnd[True], rnd[False]], null=0.0, paper=None, signs=SIGNS)
    html = client.get("/").text
    row = html.split('data-claim="ablation_vs_random"')[1].split("</tr>")[0]
    assert f'class="verdict v-{c["verdict"]}"' in row and "not reported" in row
    assert f"[{signed(c['lo'], 4)}, {signed(c['hi'], 4)}]" in row
    cmp = client.get("/compare.json", params={"runs": TOPK_RUN}).json()
    ctl = next(r for r in cmp["verdict_rows"] if r["claim"] == "ablation_vs_random")
    assert ctl["cells"][0]["verdict"] == c["verdict"] and ctl["method"] == "zero"
    assert "next-token − random" in client.get("/compare", params={"runs": TOPK_RUN}).text
