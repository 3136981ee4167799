"""Benchmark of attention knockout (issue 28, docs/method.md §3 "Attention knockout"). Prints
figures; not a test.

    python benchmarks/bench_knockout.py [--model embedded|gpt2-small-shape|pythia-160m-shape|
        llama-160m-shape|DIR] [--prompts 40] [--repeats 15]

Two measurements, each a ratio of medians over ``--repeats`` rounds in which the two sides are
timed alternately (the machine is shared: interleaving keeps both sides under the same load):

1. **Live**: one ~64-token prompt of the embedded corpus, one head (the layer below the
   neuron's), the top-3 context sources and the sink knocked out, total effect (one clean pass
   and one cached step of 4 rows: ``Backend.knockout``), against the live pass of the same
   prompt (``clean_view`` with the look-up of the head's layer, as the live view asks for it).
   Goal: <= 1.5x. The bare Hugging Face forward of the prompt is printed for scale.
2. **Per pair**: ``--prompts`` prompts of 4-64 tokens (corpus documents cut at random lengths,
   as trimmed prompts are), 4 knockouts each (top 3 + sink), total effect, in the job's
   length-sorted batches, against the job's attribution pass of the same prompts
   (``batched_pass(..., lookup=True)``, docs/method.md §3). The job's added time is this ratio
   times the attribution pass's share of the job. Also the direct effects alone (one clean
   pass, ``total=False``), and the bare forward of the same batches.
3. **A whole run** (``--db FILE``, a database the job wrote with this model): the knockouts of
   every kept pair (each of its neuron's stored prompts, both splits, with the pair's head and the
   neuron's token; top 3 + sink, total effect) against the job's attribution pass of every stored
   prompt of every neuron (``batched_pass(..., lookup=True)``), interleaved; and the knockouts'
   time against the job's own phase times stored in the database (not interleaved: the job ran
   before, under its own load), i.e. the job's predicted added time.
4. **Served** (``--served FILE``, a database the job wrote with this model): the explorer's own
   requests, through its app (TestClient, the live cache off so that every request runs the
   model): the live look-up the user starts from (the ``/live`` fragment with ``&head=``, one
   clean pass with the head's look-up) against a click on a source token (the ``/knockout``
   fragment: that source knocked out, total effect), and the same with their ``.json`` twins
   (the neuron page's JSON reads the page's data too). Goal: <= 1.5x.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import torch

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_precompute import model_dir  # noqa: E402
from context_lookups.precompute.core.settings import EMBEDDED_CORPUS  # noqa: E402
from context_lookups.precompute.corpus import load_corpus  # noqa: E402
from context_lookups.precompute.model import load_model, pad, tokenize_batch  # noqa: E402


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, timed in turn ``repeats`` times (after one warm-up each)."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def prompts(model, n: int, *, seed: int = 0) -> list[list[int]]:
    """``n`` corpus documents (explain split) cut at random lengths 4..64 tokens, BOS first."""
    rng = random.Random(seed)
    texts = [r["text"] for r, _ in zip(load_corpus(EMBEDDED_CORPUS)["explain"], range(4 * n), strict=False)]
    rows = [r for r in tokenize_batch(model, texts, 64) if len(r) >= 4][:n]
    return [r[:rng.randint(4, len(r))] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--db", default=None, help="a SQLite database the job wrote with this model (part 3)")
    ap.add_argument("--served", default=None, help="a SQLite database the job wrote with this model (part 4)")
    ap.add_argument("--skip", default="", help="parts to skip, e.g. '1,2'")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(model_dir(args.model, tmp))
    be, d = model.backend, model.dims
    layer = d.n_layers - 1
    head = (d.upstream_attn_layers(layer) - 1, 0)
    print(f"model {args.model} ({be.name}): {d.n_layers} layers, d_model {d.d_model}, {d.n_heads} heads; "
          f"neuron layer {layer}, head L{head[0]}H{head[1]}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")

    if "1" not in args.skip:
        live_part(model, layer, head, args.repeats)
    if "2" not in args.skip:
        pair_part(model, layer, head, args.prompts, args.repeats)
    if args.db:
        run_part(model, args.db, max(1, args.repeats // 5))
    if args.served:
        served_part(model, args.served, args.model, args.repeats)


def served_part(model, db: str, model_name: str, repeats: int) -> None:
    """Part 4: the explorer's live look-up against a click on a source token, served."""
    import sqlite3

    from fastapi.testclient import TestClient

    from context_lookups.app.main import create_app

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    slug, layer, neuron, k, h = con.execute(
        "SELECT r.slug, n.layer, n.neuron, p.head_layer, p.head FROM pairs p "
        "JOIN neurons n ON n.id = p.neuron_id JOIN runs r ON r.id = p.run_id WHERE p.kept "
        "ORDER BY p.id LIMIT 1").fetchone()
    con.close()
    docs = load_corpus(EMBEDDED_CORPUS)["explain"]
    text = " ".join(r["text"] for r, _ in zip(docs, range(8), strict=False))
    ids = [i for i in tokenize_batch(model, [text], 64)[0] if i != model.bos_token_id][:63]
    text = model.tokenizer.decode(ids)  # ~64 tokens with BOS, as part 1 (the server's cap is the context)
    over = {"live_cache_size": 0, "torch_threads": torch.get_num_threads()}
    if model_name != "embedded":
        over["model_paths"] = {slug: model_name}
    with TestClient(create_app(db_url=f"sqlite:///{db}", **over)) as c:
        health = c.get("/healthz").json()  # the model loads in the background: wait, as bench_web does
        while not health["ready"] and not any(str(v).startswith("failed") for v in health["models"].values()):
            time.sleep(0.05)
            health = c.get("/healthz").json()
        base = f"/{slug}/neurons/{layer}/{neuron}"
        r0 = c.get(base + ".json", params={"prompt": text, "head": f"L{k}H{h}"})
        assert r0.status_code == 200, r0.text[:300]
        live = r0.json()["live"]
        n_tok, src = live["n_tokens"], live["lookup"]["context"][0]["position"]
        q = {"prompt": text, "head": f"L{k}H{h}"}
        hx = {"HX-Request": "true"}

        def get(url, params, headers=None):
            r = c.get(url, params=params, headers=headers)
            assert r.status_code == 200, r.text[:300]

        t = interleaved({
            "live": lambda: get(base + "/live", q, hx),
            "knockout": lambda: get(base + "/knockout", {**q, "src": src}, hx),
            "live_json": lambda: get(base + ".json", q),
            "knockout_json": lambda: get(base + "/knockout.json", {**q, "src": src}),
        }, repeats)
    print(f"\n4. served, {slug} L{layer}N{neuron}, head L{k}H{h}, a prompt of {n_tok} tokens, "
          f"source #{src - 1} ({repeats} interleaved rounds, medians, live cache off)")
    print(f"   live look-up (/live fragment) {t['live'] * 1e3:7.1f} ms   click: knockout fragment "
          f"{t['knockout'] * 1e3:7.1f} ms  = {t['knockout'] / t['live']:.2f}x (goal <= 1.5x)")
    print(f"   neuron .json with the live pass {t['live_json'] * 1e3:7.1f} ms   knockout .json "
          f"{t['knockout_json'] * 1e3:7.1f} ms  = {t['knockout_json'] / t['live_json']:.2f}x")


def live_part(model, layer, head, repeats) -> None:
    be = model.backend
    docs = load_corpus(EMBEDDED_CORPUS)["explain"]
    text = " ".join(r["text"] for r, _ in zip(docs, range(8), strict=False))
    live = tokenize_batch(model, [text], 64)
    tok = [(layer, 5, live[0][-1])]
    tokens, _ = pad(live, be.pad_id, be.device)
    with torch.no_grad():
        t = interleaved({
            "clean_view": lambda: be.clean_view(live, tok, lookup=[head[0]]),
            "knockout": lambda: be.knockout(live, tok, [head]),
            "knockout_direct": lambda: be.knockout(live, tok, [head], total=False),
            "bare": lambda: be.hf(tokens),
        }, repeats)
    print(f"\n1. live, one prompt of {len(live[0])} tokens, top-3 + sink ({repeats} interleaved rounds, "
          f"medians)")
    print(f"   clean_view {t['clean_view'] * 1e3:7.2f} ms   bare HF forward {t['bare'] * 1e3:7.2f} ms")
    print(f"   knockout, total effect  {t['knockout'] * 1e3:7.2f} ms  = "
          f"{t['knockout'] / t['clean_view']:.2f}x clean_view (goal <= 1.5x)")
    print(f"   knockout, direct only   {t['knockout_direct'] * 1e3:7.2f} ms  = "
          f"{t['knockout_direct'] / t['clean_view']:.2f}x clean_view")


def pair_part(model, layer, head, n_prompts, repeats) -> None:
    be = model.backend
    rows = prompts(model, n_prompts)
    targets = [(layer, 5, r[-1]) for r in rows]
    heads = [head] * len(rows)
    n_tok = sum(map(len, rows))
    batches = [b for b in _batches(rows)]
    with torch.no_grad():
        t = interleaved({
            "attribution": lambda: be.batched_pass(rows, [x[:2] for x in targets], lookup=True),
            "knockout": lambda: be.knockout(rows, targets, heads),
            "direct": lambda: be.knockout(rows, targets, heads, total=False),
            "bare": lambda: [be.hf(pad(b, be.pad_id, be.device)[0]) for b in batches],
        }, repeats)
    n_ko = sum(len(k.sources) for k in be.knockout(rows, targets, heads))
    print(f"\n2. per pair: {len(rows)} prompts ({n_tok} tokens, {min(map(len, rows))}-{max(map(len, rows))} "
          f"each), {n_ko} knockouts ({repeats} interleaved rounds, medians)")
    print(f"   attribution pass (batched_pass, lookup) {t['attribution'] * 1e3:8.1f} ms   "
          f"bare HF forward of the same batches {t['bare'] * 1e3:8.1f} ms")
    print(f"   knockouts, total effect  {t['knockout'] * 1e3:8.1f} ms  = "
          f"{t['knockout'] / t['attribution']:.2f}x the attribution pass")
    print(f"   knockouts, direct only   {t['direct'] * 1e3:8.1f} ms  = "
          f"{t['direct'] / t['attribution']:.2f}x the attribution pass")
    print(f"   per knockout (total)     {t['knockout'] / n_ko * 1e3:8.2f} ms")


def run_part(model, db: str, repeats: int) -> None:
    import sqlite3

    be = model.backend
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    import json

    neurons = {nid: (lay, n, tok) for nid, lay, n, tok in con.execute(
        "SELECT id, layer, neuron, token_id FROM neurons")}
    prompts_of: dict[int, list[list[int]]] = {}
    for nid, ids in con.execute("SELECT neuron_id, token_ids FROM prompts"):
        prompts_of.setdefault(nid, []).append([model.bos_token_id] + json.loads(ids))
    pairs = con.execute("SELECT neuron_id, head_layer, head FROM pairs WHERE kept").fetchall()
    phases = con.execute("SELECT name, seconds FROM phases").fetchall()
    con.close()
    ko_rows, ko_targets, ko_heads = [], [], []
    for nid, k, h in pairs:
        lay, n, tok = neurons[nid]
        for r in prompts_of.get(nid, []):
            if len(r) > 1 and tok is not None:
                ko_rows.append(r)
                ko_targets.append((lay, n, tok))
                ko_heads.append((k, h))
    att_rows = [r for nid in prompts_of for r in prompts_of[nid] if len(r) > 0]
    att_targets = [neurons[nid][:2] for nid in prompts_of for r in prompts_of[nid] if len(r) > 0]
    with torch.no_grad():
        t = interleaved({
            "attribution": lambda: be.batched_pass(att_rows, att_targets, lookup=True),
            "knockout": lambda: be.knockout(ko_rows, ko_targets, ko_heads),
        }, repeats)
    job = sum(s for _, s in phases)
    by_kind: dict[str, float] = {}
    for name, sec in phases:
        kind = name.split(":")[0]
        by_kind[kind] = by_kind.get(kind, 0.0) + sec
    print(f"\n3. the run in {db}: {len(pairs)} kept pairs, {len(ko_rows)} (pair, prompt) knockout rows "
          f"({4 * len(ko_rows)} knockouts at most); the job's attribution pass: {len(att_rows)} prompts "
          f"({repeats} interleaved rounds, medians)")
    print(f"   attribution pass of every prompt {t['attribution']:7.2f} s   knockouts of every kept pair "
          f"{t['knockout']:7.2f} s  = {t['knockout'] / t['attribution']:.2f}x")
    print(f"   the job's stored phase times: {job:.1f} s in all ("
          + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])[:6])
          + f"); knockouts / job = +{100 * t['knockout'] / job:.1f} % (not interleaved)")


def _batches(rows):
    from context_lookups.precompute.model import length_batches

    return [[rows[j] for j in idx] for idx in length_batches([len(r) for r in rows], 8192, 64)]


if __name__ == "__main__":
    main()
