"""A reason wherever a figure is missing (issue 28 item 6): one function gives every reason
(``app.pages.states.reason``), every "–" carries it (``formats.dash``: tooltip, and text where
there is room) and every JSON row its ``reason``; explanations cut at the authors' max_tokens are
marked as cut in every view; a neurons-only import (gpt2-xl-like) says so and suggests no command;
figures under 1e-3 are written in scientific notation; the glossary explains negative drops.
Real SQLite files, the authors' sample imported with the real CLI, real HTTP (TestClient)."""

from __future__ import annotations

import re
import shutil
from html import unescape

import pytest
from fastapi.testclient import TestClient

from context_lookups.app.pages import formats, states
from context_lookups.app.pages.states import neuron_score_reason, reason, score_reason
from tests.paper_data import build_paper_web_db, import_sample, require_sample

DASH = re.compile(r'<span class="missing"(?: title="([^"]*)")?>–</span>')


# --- the one function, and how a figure is written ----------------------------------------------

def test_each_reason_in_words():
    assert "run `lookups explain`" in reason("not_explained")
    assert "all active" in reason("single_class", side="active")
    assert reason("failed") == "the explainer failed"
    assert reason("failed", detail=": timeout").endswith("timeout")
    assert "neurons only" in reason("neurons_only") and "lookups" not in reason("neurons_only")
    assert "fewer than 10 explain prompts" in reason("no_pair", why="fewer than 10 explain prompts")
    with pytest.raises(KeyError):
        reason("no-such-code")


NO_E = {"score": None, "score_authors": None}


@pytest.mark.parametrize("e, needle", [
    ({**NO_E, "status": "single_class", "n_neg": 0}, "all active"),
    ({**NO_E, "status": "single_class", "n_neg": 4, "n_pos": 0}, "all inactive"),
    ({**NO_E, "status": "unanswered"}, "unanswered"),
    ({**NO_E, "status": "failed", "error": "HTTP 500"}, "failed: HTTP 500"),
    ({**NO_E, "status": "ok", "error": "no answer parsed"}, "undefined: no answer"),
])
def test_why_an_explanation_has_no_e(e, needle):
    assert needle in score_reason(e)


def test_why_a_pair_or_a_neuron_has_no_e():
    assert score_reason({"score": 0.7, "score_authors": 0.7}) is None
    assert "not explained yet" in score_reason(None, explanation_state={"state": "not_computed"})
    assert "not in the authors' files" in score_reason(None, explanation_state={"state": "not_in_data"})
    assert score_reason(None, explanation_state={"state": "not_applicable", "reason": "only kept pairs"}) \
        == "only kept pairs"
    assert "neurons only" in score_reason(None, neurons_only=True)

    class Rules:
        pair_min_prompts = 10

    common = {"has_kept_pair": False, "provenance": None, "best": None, "settings": Rules}
    assert "not selected" in neuron_score_reason(kind="other", status=None, **common)
    assert "fewer than 10 explain prompts" in neuron_score_reason(kind="next_token", status="too_few_prompts",
                                                                  **common)
    assert "no activating explain prompt" in neuron_score_reason(kind="random", status="no_activating_prompt",
                                                                 **common)
    xl = {"missing": [{"role": "attr", "what": "training head attributions"}]}
    assert states.neurons_only(xl) and not states.neurons_only({"missing": [{"role": "ablation"}]})
    assert "neurons only" in neuron_score_reason(kind="next_token", status=None,
                                                 **{**common, "provenance": xl})
    assert "not explained yet" in neuron_score_reason(kind="next_token", status=None,
                                                      **{**common, "has_kept_pair": True})


def test_figures_under_a_thousandth_use_scientific_notation():
    assert formats.fixed(4e-9, 6) == "4.0e-9" and formats.fmt(4e-9) == "4.00e-9"
    assert formats.fixed(-0.0004, 4) == "-4.0e-4" and formats.signed(-2e-5, 3) == "−2.0e-5"
    assert formats.signed(3e-4, 2) == "+3.0e-4" and formats.signed(-0.25, 2) == "−0.25"
    assert formats.fixed(0.0, 3) == "0.000" and formats.fixed(0.001, 3) == "0.001"
    assert formats.fixed(0.0123, 4) == "0.0123" and formats.fmt(2.5e7) == "2.50e7"


def test_a_dash_carries_its_reason():
    d = str(formats.dash("one class: the held-out prompts are all active"))
    assert DASH.fullmatch(d) and "one class" in d
    assert '<span class="why">' in str(formats.dash("why", text=True))
    assert str(formats.dash(None)) == '<span class="missing">–</span>'
    assert "&lt;b&gt;" in str(formats.dash("<b>"))  # escaped


def test_the_glossary_explains_negative_drops():
    from context_lookups.app.pages.glossary import TERMS

    assert "negative drop" in TERMS["drop"][1].lower() and "rose" in TERMS["drop"][1]
    assert "attention-sink" in TERMS and "knockout" in TERMS


# --- the pages of an imported run ---------------------------------------------------------------

@pytest.fixture(scope="module")
def paper(tmp_path_factory, precomputed_db):
    require_sample()
    from context_lookups.app.main import create_app

    db = build_paper_web_db(tmp_path_factory, precomputed_db)
    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as c:
        yield c


def _dashes(html: str) -> list[str | None]:
    return [m.group(1) for m in DASH.finditer(html)]


def test_every_dash_of_the_imported_pages_says_why(paper):
    run = "gpt2-small"
    neurons = paper.get(f"/{run}/neurons.json?per_page=500").json()["neurons"]
    assert all(n["reason"] for n in neurons if n["best_score"] is None)
    assert all(n["reason"] is None for n in neurons if n["best_score"] is not None)
    pages = [f"/{run}/neurons?per_page=500", f"/{run}/pairs?kept=false&per_page=500"]
    pages += [f"/{run}/neurons/{n['layer']}/{n['neuron']}" for n in neurons[:6]]
    pairs = paper.get(f"/{run}/pairs.json?per_page=500").json()["pairs"]
    pages += [p["url"] for p in pairs[:4]]
    seen = 0
    for url in pages:
        html = paper.get(url).text
        why = _dashes(html)
        assert all(why), (url, html[max(0, html.find('class="missing">–') - 300):][:400])
        seen += len(why)
        shown = re.sub(r'<span class="tok[^"]*"[^>]*>–</span>', '', html)  # a token whose text is "–"
        bare = re.findall(r'>–<', re.sub(r'<span class="missing"[^>]*>–</span>', '', shown))
        assert bare == [], (url, len(bare))  # no bare dash left
    assert seen > 0
    assert all(p["reason"] for p in pairs if p["score"] is None and p["score_authors"] is None)


def test_cut_explanations_are_marked_in_every_view(paper):
    run = "gpt2-small"
    pairs = paper.get(f"/{run}/pairs.json?per_page=500").json()["pairs"]
    cut = [p for p in pairs if p["truncated"]]
    assert cut, "the sample holds explanations cut at max_tokens"
    p = cut[0]
    assert paper.get(f"/{run}/pairs?per_page=500").text.count('class="cut"') == len(cut)
    neuron = paper.get(f"/{run}/neurons/{p['layer']}/{p['neuron']}")
    assert 'class="cut"' in neuron.text
    nj = paper.get(f"/{run}/neurons/{p['layer']}/{p['neuron']}.json").json()
    assert any(e["truncated"] for q in nj["pairs"] for e in q["explanations"])
    pair = paper.get(p["url"] + ".json").json()
    assert any(e["truncated"] for e in pair["explanations"])
    assert "Cut at the explainer's token limit" in paper.get(p["url"]).text
    words = re.findall(r"[A-Za-z]{6,}", p["explanation"] or "")
    hits = paper.get("/search.json", params={"q": words[-1], "kind": "explanations", "run": run}).json()
    hit = [h for h in hits["explanations"]["items"] if h["url"] == p["url"]]
    assert hit and hit[0]["truncated"]
    html = paper.get("/search", params={"q": words[-1], "kind": "explanations", "run": run}).text
    assert 'class="cut"' in html


def test_a_neurons_only_import_says_so_and_suggests_nothing(tmp_path):
    from context_lookups.app.main import create_app

    src = tmp_path / "xl" / "experiment_data"
    shutil.copytree(require_sample() / "1_next_token_neurons", src / "1_next_token_neurons")
    db = tmp_path / "xl.db"
    import_sample(db, src)
    with TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None)) as c:
        home = c.get("/").text
        card = home[home.index('id="run-gpt2-small"'):]
        assert "hold neurons only" in card
        assert "lookups explain" not in card and "lookups precompute" not in card
        n = c.get("/gpt2-small/neurons.json").json()["neurons"][0]
        assert "neurons only" in n["reason"]
        page = c.get(f"/gpt2-small/neurons/{n['layer']}/{n['neuron']}")
        assert "hold neurons only" in unescape(page.text) and "no activating explain prompt" not in page.text
        d = c.get(f"/gpt2-small/neurons/{n['layer']}/{n['neuron']}.json").json()
        assert "neurons only" in d["best"]["reason"] and "neurons only" in d["no_pair_reason"]
