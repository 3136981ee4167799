"""The Python API's stored data (context_lookups.open) against the explorer's JSON twins, on SQLite
and PostgreSQL (the same small real run on each, ``stored_url``): a neuron's and a pair's
``to_dict()`` equal their pages' twins, and the frames equal the twins' rows, row for row (the
neuron's prompts, the pair's prompts, the whole pair and neuron lists). Also what the API
refuses, and that the handle cannot write."""

from __future__ import annotations

import math

import orjson
import pytest
from fastapi.encoders import jsonable_encoder
from fastapi.testclient import TestClient

import context_lookups as cl
from context_lookups.precompute.core.errors import NotFound


def as_json(value):
    """``value`` as a twin carries it: through orjson as the routes encode (NaN → null)."""
    return orjson.loads(orjson.dumps(value, default=jsonable_encoder,
                                     option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))


def records(df) -> list[dict]:
    """A frame's rows as JSON values (a float column's NaN is the twin's null)."""
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    return as_json(rows)


@pytest.fixture(scope="module")
def client(stored_url):
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=stored_url, preload=False, torch_threads=None)) as c:
        yield c


@pytest.fixture(scope="module")
def api(stored_url):
    db = cl.open(stored_url)
    yield db
    db.close()


def all_pages(client, url: str, key: str) -> list[dict]:
    """Every row of a paginated list twin, page after page (500 rows a page)."""
    out, page = [], 1
    while True:
        sep = "&" if "?" in url else "?"
        got = client.get(f"{url}{sep}per_page=500&page={page}")
        assert got.status_code == 200, got.text[:300]
        data = got.json()
        out += data[key]
        if page >= data["pages"]:
            return out
        page += 1


def test_runs_frame_has_the_home_twins_fields(api, client):
    home = client.get("/.json").json()["runs"]
    df = api.runs()
    assert list(df["slug"]) == [r["slug"] for r in home]
    apart = ("counts", "findings", "strongest", "links")
    for got, want in zip(records(df), home, strict=True):
        fields = [k for k in want if k not in apart]
        assert {k: got[k] for k in fields} == {k: want[k] for k in fields}
        assert {k: got[k] for k in want["counts"]} == want["counts"]
        assert records(api.run(want["slug"]).strongest()) == want["strongest"]


def test_a_neuron_equals_its_twin(api, client):
    run = api.run()
    n = run.neurons(kind="next_token").iloc[0]
    page = run.neuron(n["layer"], n["neuron"])
    twin = client.get(f"/{run.slug}/neurons/{n['layer']}/{n['neuron']}.json")
    assert twin.status_code == 200
    assert as_json(page.to_dict()) == twin.json()
    assert twin.json()["prompts"], "a next-token neuron of the run has prompts"
    assert records(page.to_frame()) == twin.json()["prompts"]
    assert records(run.prompts(f"L{n['layer']}N{n['neuron']}", split="heldout")) == client.get(
        f"/{run.slug}/neurons/{n['layer']}/{n['neuron']}.json?split=heldout").json()["prompts"]
    ln = run.neuron(n["layer"], n["neuron"], score="ln").to_dict()
    assert as_json(ln) == client.get(f"/{run.slug}/neurons/{n['layer']}/{n['neuron']}.json?score=ln").json()
    assert page.to_frame().attrs["units"]["acts"].startswith("activation")


def test_a_pair_equals_its_twin(api, client):
    run = api.run()
    pairs = run.pairs(kept=False, sort="neuron")
    assert len(pairs)
    for i in (0, len(pairs) - 1):
        p = pairs.iloc[i]
        url = f"/{run.slug}/neurons/{p['layer']}/{p['neuron']}/heads/{p['head_layer']}/{p['head']}.json"
        page = run.pair(p["layer"], p["neuron"], p["head_layer"], p["head"])
        twin = client.get(url).json()
        assert as_json(page.to_dict()) == twin
        df = page.to_frame()
        for group in ("active", "inactive", "heldout"):  # held-out rows have two more fields, null elsewhere
            rows = records(df[df["group"] == group].drop(columns="group"))
            assert len(rows) == len(twin[group]), group
            for got, want in zip(rows, twin[group], strict=True):
                assert {k: got[k] for k in want} == want, group
                assert all(got[k] is None for k in got.keys() - want.keys()), group
        assert len(df) == len(twin["active"]) + len(twin["inactive"]) + len(twin["heldout"]) > 0


@pytest.mark.parametrize("query", ["kept=false&sort=neuron", "", "kept=false&kind=random&sort=n"])
def test_the_pairs_frame_equals_the_pairs_twin_row_for_row(api, client, query):
    run = api.run()
    params = dict(p.split("=") for p in query.split("&") if p)
    kw = {k: (v == "true") if k == "kept" else v for k, v in params.items()}
    df = run.pairs(**kw)
    twin = all_pages(client, f"/{run.slug}/pairs.json?{query}", "pairs")
    assert records(df) == twin
    assert df.attrs["total"] == len(twin) and df.attrs["run"] == run.slug
    if query.startswith("kept=false&sort"):
        assert len(df) > 0
        assert df.attrs["units"]["mean_attr_raw"].startswith("residual-stream")
        assert "congruence" not in df.columns and "top_tokens" not in df.columns


def test_the_neurons_frame_equals_the_neurons_twin_row_for_row(api, client):
    run = api.run()
    for query, kw in (("kind=all&sort=congruence&order=desc",
                       dict(kind="all", sort="congruence", order="desc")), ("", {})):
        df = run.neurons(**kw)
        assert records(df) == all_pages(client, f"/{run.slug}/neurons.json?{query}", "neurons")
    assert len(run.neurons(kind="all")) == run.db.runs()["neurons"].iloc[0]


def test_explanations_and_ablations_come_from_the_pair_rows(api, client):
    run = api.run()
    ex = run.explanations(kept=False)
    assert ex["explainer"].notna().all()
    every = records(run.pairs(kept=False, sort="neuron"))
    assert records(ex) == [r for r in every if r["explainer"] is not None]
    ab = run.ablations(kept=False)
    if len(ab):  # each row is the pair page's held-out ablation of that prompt
        a = ab.iloc[0]
        twin = client.get(f"/{run.slug}/neurons/{a['layer']}/{a['neuron']}/heads/{a['head_layer']}/"
                          f"{a['head']}.json").json()
        held = {h["id"]: h for h in twin["heldout"]}
        row = records(ab.iloc[[0]])[0]
        want = held[row["prompt_id"]]["ablations"][row["method"]]
        assert {k: row[k] for k in want} == want
    f = run.findings()
    home = next(r for r in client.get("/.json").json()["runs"] if r["slug"] == run.slug)
    assert as_json(f.to_dict()) == home["findings"]
    assert set(f.scores()["kind"]) <= {"next_token", "random"}


def test_bad_arguments_say_what_to_change(api):
    run = api.run()
    with pytest.raises(ValueError, match="kind='nope'"):
        run.pairs(kind="nope")
    with pytest.raises(ValueError, match="min_score must be a finite number"):
        run.pairs(min_score=math.inf)
    with pytest.raises(ValueError, match="is not an integer"):
        run.neuron(1.5, 2)
    with pytest.raises(ValueError, match="give \\(layer, index\\) or 'L3N10'"):
        run.prompts("neuron 3")
    with pytest.raises(NotFound, match="scanned layers are"):
        run.pairs(layer=999)
    with pytest.raises(NotFound, match="Unknown model 'no-such-run'"):
        api.run("no-such-run")


def test_the_handle_is_read_only(stored_url, api):
    from sqlalchemy import text

    with api.Session() as s, pytest.raises(Exception) as err:
        s.execute(text("DELETE FROM runs"))
        s.commit()
    assert any(w in str(err.value).lower() for w in ("readonly", "read-only", "read only")), err.value
    assert len(api.runs()) >= 1
