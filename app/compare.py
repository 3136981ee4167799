"""Runs compared side by side (``/compare?runs=gpt2-small,embedded``): the paper's tables per
run — E of next-token vs random neurons per explainer (project's and authors' rule), ablation
drops, neurons and pairs per layer — and the E distributions overlaid in one server-rendered
SVG. This is the page behind the paper's "consistent across model sizes" claim.
"""

from __future__ import annotations

from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from precompute.errors import NotFound

from . import queries as Q
from . import urls
from .present import run_dict

RULES = ("authors", "project")
_SERIES_COLOURS = ("#d6604d", "#4393c3", "#1b9e77", "#7570b3", "#e6ab02", "#666666")


def _brief(row: dict) -> dict:
    return {k: row.get(k) for k in ("n", "mean", "std")}


def main_explainer(names: list[str]) -> str | None:
    """The explainer whose scores stand for a run in the overlay: an LLM's when there is one."""
    return next((n for n in names if n.startswith("openai:")), names[0] if names else None)


def run_summary(s: Session, slug: str, rule: str) -> dict:
    """One run's column of the comparison (raises NotFound for an unknown run)."""
    run = Q.get_run(s, slug=slug)
    f = Q.findings(s, run_id=run.id)
    expl = {}
    for name, table in f["explanations"].items():
        expl[name] = {kind: {"kept_pairs": row["kept_pairs"], **_brief(row),
                             "authors": _brief(row["authors_rule"])}
                      for kind, row in table["kinds"].items()}
    abl = {m: {kind: {k: t[kind].get(k) for k in ("n_pairs", "n_kept", "n_prompts", "active", "inactive", "ks")}
               for kind in ("next_token", "random") if t.get(kind)} for m, t in f["ablation"].items()}
    layers = Q.layer_counts(s, run_id=run.id)
    main = main_explainer(list(f["explanations"]))
    scores: list[float] = []
    if main is not None:
        row = f["explanations"][main]["kinds"]["next_token"]
        scores = row["authors_rule"]["scores"] if rule == "authors" else row["scores"]
    prov = run.provenance or {}
    return {"run": run_dict(run), "imported": run.provenance is not None,
            "provenance": {k: prov.get(k) for k in ("repository", "commit", "licence")} if prov else None,
            "explanations": expl, "ablation": abl, "layers": layers,
            "pairs": {"pairs": sum(r["pairs"] for r in layers.values()),
                      "kept": sum(r["kept_pairs"] for r in layers.values())},
            "distribution": {"explainer": main, "kind": "next_token", "rule": rule, "scores": scores},
            "links": {"neurons": urls.neurons(run.slug)}}


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
    return {"runs": cols, "run_names": names, "rule": rule, "layers": all_layers,
            "e_rows": e_rows, "ablation_rows": a_rows, "layer_rows": l_rows,
            "available": [r.slug for r in Q.list_runs(s)],
            "links": {"page": urls.compare(runs=names if runs else None, rule=rule if rule != "authors" else None),
                      "json": urls.compare(fmt="json", runs=names if runs else None,
                                           rule=rule if rule != "authors" else None)}}


def overlay_svg(series: list[tuple[str, list[float]]], *, bins: int = 10, width: int = 560,
                height: int = 220, title: str = "explanation score E (share of pairs per bin)") -> Markup:
    """E distributions of several runs overlaid as inline SVG (no JavaScript): per series a
    translucent step area of the share of its pairs in each bin of [0, 1] (so runs with
    different numbers of pairs compare), with its mean marked by a dashed line. The legend sits
    below the plot, never over it. Labels are escaped."""
    series = [(label, vals) for label, vals in series if vals]
    if not series:
        return Markup("")
    shares = []
    for _, vals in series:
        counts = [0] * bins
        for v in vals:
            counts[min(bins - 1, max(0, int(v * bins)))] += 1
        shares.append([c / len(vals) for c in counts])
    top = max(max(s) for s in shares) or 1.0
    ml, mr, mt, mb = 40, 12, 22, 28
    pw, ph = width - ml - mr, height - mt - mb
    height += 16 * len(series) + 4  # legend rows under the axis
    bw = pw / bins

    def y(v: float) -> float:
        return mt + ph - ph * v / top

    parts = [f'<svg class="hist overlay" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{ml}" y="14" class="hist-title">{escape(title)}</text>']
    for j in range(5):
        v = top * j / 4
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                     f'<text x="{ml - 4}" y="{y(v) + 3:.1f}" text-anchor="end">{v:.0%}</text>')
    for i in range(0, bins + 1, 2):
        parts.append(f'<text x="{ml + i * bw:.1f}" y="{mt + ph + 14}" text-anchor="middle">{i / bins:.1f}</text>')
    for k, ((label, vals), share) in enumerate(zip(series, shares)):
        col = _SERIES_COLOURS[k % len(_SERIES_COLOURS)]
        pts = [f"{ml:.1f},{y(0):.1f}"]
        for i, v in enumerate(share):
            pts += [f"{ml + i * bw:.1f},{y(v):.1f}", f"{ml + (i + 1) * bw:.1f},{y(v):.1f}"]
        pts.append(f"{ml + pw:.1f},{y(0):.1f}")
        mean = sum(vals) / len(vals)
        parts.append(f'<polygon class="series" points="{" ".join(pts)}" fill="{col}" fill-opacity="0.18" '
                     f'stroke="{col}" stroke-width="1.6"><title>{escape(label)}: n={len(vals)}, '
                     f'mean {mean:.3f}</title></polygon>'
                     f'<line x1="{ml + mean * pw:.1f}" x2="{ml + mean * pw:.1f}" y1="{mt}" y2="{mt + ph}" '
                     f'stroke="{col}" stroke-dasharray="4 3"/>')
        ly = mt + ph + mb + k * 16
        parts.append(f'<rect x="{ml}" y="{ly}" width="10" height="10" fill="{col}"/>'
                     f'<text x="{ml + 14}" y="{ly + 9}">{escape(label)} (n={len(vals)}, '
                     f'mean {mean:.3f})</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
