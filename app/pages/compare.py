"""Runs compared side by side (``/compare?runs=gpt2-small,embedded``): the paper's tables per
run — E of next-token vs random neurons per explainer (project's and authors' rule), ablation
drops, neurons and pairs per layer — and the E distributions overlaid in one server-rendered
SVG. This is the page behind the paper's "consistent across model sizes" claim.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.explain.explainers import preferred

from . import queries as Q
from . import urls
from .present import run_dict

RULES = ("authors", "project")


def _brief(row: dict) -> dict:
    return {k: row.get(k) for k in ("n", "mean", "std")}


def run_summary(s: Session, slug: str, rule: str) -> dict:
    """One run's column of the comparison (raises NotFound for an unknown run)."""
    run = Q.get_run(s, slug=slug)
    f = Q.findings(s, run_id=run.id)
    expl = {}
    for name, table in f["explanations"].items():
        expl[name] = {kind: {"kept_pairs": row["kept_pairs"], **_brief(row),
                             "authors": _brief(row["authors_rule"])}
                      for kind, row in table["kinds"].items()}
    keys = ("n_pairs", "n_kept", "n_prompts", "active", "inactive", "ks")
    abl = {m: {kind: {k: t[kind].get(k) for k in keys}
               for kind in ("next_token", "random") if t.get(kind)} for m, t in f["ablation"].items()}
    layers = Q.layer_counts(s, run_id=run.id)
    main = preferred(f["explanations"])  # an LLM's when there is one
    scores: list[float] = []
    if main is not None:
        row = f["explanations"][main]["kinds"]["next_token"]
        scores = row["authors_rule"]["scores"] if rule == "authors" else row["scores"]
    prov = run.provenance or {}
    return {"run": run_dict(run), "imported": run.provenance is not None, "verdict": f["verdict"],
            "provenance": {k: prov.get(k) for k in ("repository", "commit", "licence")} if prov else None,
            "explanations": expl, "ablation": abl, "layers": layers,
            "pairs": {"pairs": sum(r["pairs"] for r in layers.values()),
                      "kept": sum(r["kept_pairs"] for r in layers.values())},
            "distribution": {"explainer": main, "kind": "next_token", "rule": rule, "scores": scores},
            "links": {"neurons": urls.neurons(run.slug)}}


def verdict_rows(cols: list[dict]) -> list[dict]:
    """The verdicts side by side: one row per claim (E vs chance and vs random with each run's
    main explainer, the drop and its random-neuron control with each ablation method), one cell
    per run (None where the run has no such figure)."""
    rows = []
    for claim in ("vs_chance", "vs_random"):
        cells = []
        for c in cols:
            ex = c["verdict"]["explanations"]
            cells.append({**ex[0][claim], "explainer": ex[0]["explainer"]} if ex else None)
        rows.append({"claim": claim, "cells": cells})
    for m in dict.fromkeys(a["method"] for c in cols for a in c["verdict"]["ablation"]):
        for claim, key in (("ablation", "drop"), ("ablation_vs_random", "vs_random")):
            cells = [next(({**a[key], "method": m} for a in c["verdict"]["ablation"] if a["method"] == m),
                          None) for c in cols]
            rows.append({"claim": claim, "method": m, "cells": cells})
    return rows


def compare(s: Session, *, runs: list[str] | None, rule: str) -> dict:
    """The comparison of ``runs`` (default: every run in the database, newest first).

    Raises:
        NotFound: a run that does not exist (the message lists those that do).
    """
    names = runs or [r.slug for r in Q.list_runs(s)]
    if not names:
        raise NotFound("This database holds no run to compare: run `lookups precompute` or "
                       "`lookups import-paper` first.")
    cols = [run_summary(s, n, rule) for n in names]
    all_layers = sorted({layer for c in cols for layer in c["layers"]})
    e_rows = []
    for ex in dict.fromkeys(ex for c in cols for ex in c["explanations"]):
        for kind in ("next_token", "random"):
            for r in RULES:
                cells = []
                for c in cols:
                    row = c["explanations"].get(ex, {}).get(kind)
                    cell = (row["authors"] if r == "authors" else _brief(row)) if row else None
                    cells.append(cell if cell and cell["n"] else None)
                if any(cells):
                    e_rows.append({"explainer": ex, "kind": kind, "rule": r, "cells": cells})
    a_rows = []
    for m in dict.fromkeys(m for c in cols for m in c["ablation"]):
        for kind in ("next_token", "random"):
            cells = [c["ablation"].get(m, {}).get(kind) for c in cols]
            cells = [x if x and x.get("n_pairs") else None for x in cells]
            if any(cells):
                a_rows.append({"method": m, "kind": kind, "cells": cells})
    l_rows = [{"layer": layer, "cells": [c["layers"].get(layer) for c in cols]} for layer in all_layers]
    v_rows = verdict_rows(cols)
    return {"runs": cols, "run_names": names, "rule": rule, "layers": all_layers,
            "verdict_rows": v_rows, "e_rows": e_rows, "ablation_rows": a_rows, "layer_rows": l_rows,
            "available": [r.slug for r in Q.list_runs(s)],
            "links": {"page": urls.compare(runs=names if runs else None,
                                           rule=rule if rule != "authors" else None),
                      "json": urls.compare(fmt="json", runs=names if runs else None,
                                           rule=rule if rule != "authors" else None)}}
