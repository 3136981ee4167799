"""The Python API's computation (context_lookups.lookup, fire, load_model) against the live
pages: on the same prompt, ``lookup(..., run=run).to_dict()`` is the neuron page twin's ``live``
and ``fire(...).to_dict()`` the /fire twin's ``result`` (real server through TestClient, real
tiny model); the sink and the knockout are the backend's own; the tensors and frames hold the
same values; bad input is refused with a one-line error."""

from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient

import context_lookups as cl
from context_lookups.precompute.core.errors import BadLiveInput, PromptTooLong
from context_lookups.precompute.heads.lookup import split_sink
from tests.web_fixtures import TOPK_RUN

PROMPT = "The council met in the old hall by the river and argued about the harvest"


def close(a, b, path="") -> None:
    """``a`` equals ``b``, floats to 1e-5 relative (the server's pass ran on its own model
    thread and copy of the model)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, path
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: {sorted(a)} != {sorted(b)}"
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def api(web_db):
    db = cl.open(f"sqlite:///{web_db}")
    yield db
    db.close()


@pytest.fixture(scope="module")
def client(web_db):
    from context_lookups.app.main import create_app

    with TestClient(create_app(db_url=f"sqlite:///{web_db}", preload=False, torch_threads=None)) as c:
        yield c


@pytest.fixture(scope="module")
def model(api):
    return api.run(TOPK_RUN).load_model(device="cpu")


def test_lookup_is_the_live_pages_pass(api, client, model, kept):
    layer, neuron, hl, h = kept
    run = api.run(TOPK_RUN)
    twin = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json",
                      params={"prompt": PROMPT, "head": f"L{hl}H{h}", "ablate": f"L{hl}H{h}", "pos": 5})
    assert twin.status_code == 200, twin.text[:300]
    res = cl.lookup(model, PROMPT, layer=layer, neuron=neuron, head=(hl, h), ablate=[(hl, h)], position=5,
                    run=run)
    close(res.to_dict(), twin.json()["live"])
    lk = twin.json()["live"]["lookup"]
    assert res.position == 5 and res.head == (hl, h) and len(res.contrib) == 5 + 2  # BOS and tokens 0..5
    assert torch.allclose(res.contrib, torch.tensor(lk["contrib"]), rtol=1e-5, atol=1e-7)
    assert math.isclose(float(res.contrib.sum()) + res.bias, res.total, rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(res.total, float(res.attr_raw[hl, h]), rel_tol=1e-6, abs_tol=1e-7)
    assert res.ablation["heads"] == [f"L{hl}H{h}"]
    assert res.ablation["drop"] == res.prob - res.ablation["prob_ablated"]
    sink = split_sink(lk["contrib"], lk["attention"])
    assert res.sink == sink
    df = res.to_frame()
    assert list(df["source"]) == list(range(7)) and df["sink"].tolist() == [True] + [False] * 6
    assert df["contrib"].tolist() == pytest.approx(res.contrib.tolist())
    heads = res.to_frame("heads")
    assert len(heads) == res.attr_raw.numel() and set(heads.loc[heads["active"], "label"]) == set(res.active)
    assert res.to_frame("tokens")["act"].tolist() == pytest.approx(res.acts.tolist())


def test_lookup_knockout_is_the_backends(model, api, kept):
    layer, neuron, hl, h = kept
    run = api.run(TOPK_RUN)
    res = cl.lookup(model, PROMPT, layer=layer, neuron=neuron, head=f"L{hl}H{h}", run=run, knockout=True)
    ids = [model.bos_token_id] + model.encode(PROMPT)
    ko = model.backend.knockout([ids], [(layer, neuron, res.token_id)], [(hl, h)])[0]
    assert res.knockout.sources == ko.sources
    assert res.knockout.sources[-1] == (0,)  # the top sources, then the sink
    assert torch.allclose(res.knockout.total_act, ko.total_act, equal_nan=True)
    assert torch.allclose(res.knockout.contrib, res.contrib, rtol=1e-4, atol=1e-6)  # the same look-up
    df = res.to_frame()
    first = ko.sources[0][0]
    assert df.loc[first, "ko_total_act"] == pytest.approx(float(ko.total_act[0]))


def test_lookups_of_several_prompts_and_without_a_run(model):
    texts = [PROMPT, "A short one", "def f(x): return x"]
    many = cl.lookup(model, texts, layer=1, neuron=3)
    one = [cl.lookup(model, t, layer=1, neuron=3) for t in texts]
    assert [m.prompt for m in many] == texts
    for a, b in zip(many, one, strict=True):  # batched with padding or alone: the same values
        assert torch.allclose(a.acts, b.acts, atol=1e-5) and a.token_id == b.token_id
    # without a run: the neuron's most congruent token, the paper's default rules
    w = model.backend.W_out(1)[3] @ model.backend.W_U()
    assert one[0].token_id == int(w.argmax()) and one[0].head is None and one[0].sink is None
    assert cl.lookup(model, "A short one", layer=1, neuron=3, token=one[0].token).token_id == one[0].token_id


def test_fire_is_the_fire_pages_result(api, client, model):
    run = api.run(TOPK_RUN)
    text = "The river ran past the old mill <b>and</b> the hall"
    twin = client.get("/fire.json", params={"text": text, "run": TOPK_RUN})
    assert twin.status_code == 200, twin.text[:300]
    got = cl.fire(model, text, run=run)
    close(got.to_dict(), twin.json()["result"])
    assert got.neurons == [o["label"] for o in twin.json()["result"]["overall"]]
    assert got.rel.shape == (len(got.neurons), len(got.tokens))
    assert list(got.to_frame()["label"]) == got.neurons


def test_bad_input_is_refused_in_one_line(model, api, kept):
    layer, neuron, hl, h = kept
    run = api.run(TOPK_RUN)
    with pytest.raises(BadLiveInput, match="The prompt is empty"):
        cl.lookup(model, "   ", layer=layer, neuron=neuron)
    with pytest.raises(BadLiveInput, match="pos 99 out of range"):
        cl.lookup(model, "two words", layer=layer, neuron=neuron, position=99)
    with pytest.raises(BadLiveInput, match="is not upstream of neuron"):
        cl.lookup(model, PROMPT, layer=0, neuron=0, head=(1, 0))
    with pytest.raises(PromptTooLong, match="the model's context length"):
        cl.lookup(model, "word " * (model.n_ctx + 5), layer=layer, neuron=neuron)
    with pytest.raises(ValueError, match="out of range"):
        cl.lookup(model, PROMPT, layer=model.n_layers, neuron=0)
    with pytest.raises(ValueError, match="not of the form L<layer>H<head>"):
        cl.lookup(model, PROMPT, layer=layer, neuron=neuron, head="head 3")
    with pytest.raises(ValueError, match="names 2 heads"):
        cl.lookup(model, PROMPT, layer=layer, neuron=neuron, head=["L0H1", "L0H2"], run=run)
    with pytest.raises(BadLiveInput, match="The text is empty"):
        cl.fire(model, "", run=run)
    embedded = cl.load_model()
    with pytest.raises(ValueError, match="computed on a model with"):
        cl.lookup(embedded, PROMPT, layer=layer, neuron=neuron, run=run)
