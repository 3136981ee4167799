"""Every stored row of a database in a backend-independent, canonical form, to compare two
databases row for row (SQLite vs PostgreSQL, Ray vs single process).

Surrogate ids are replaced by the natural keys they stand for (a prompt by its neuron, split and
rank, ...), timings are dropped, and each row is serialised with ``json.dumps(sort_keys=True)``:
floats keep their shortest round-trip ``repr`` (so equal strings mean bit-equal doubles), JSON
objects compare whatever key order the backend keeps, and NaN equals NaN.
"""

from __future__ import annotations

import json

from sqlalchemy import create_engine, select

from context_lookups.precompute.store.db import parse_url
from context_lookups.precompute.store.schema import (
    Ablation,
    ActivationHistogram,
    AttentionKnockout,
    Classification,
    Document,
    Explanation,
    LLMCall,
    Lookup,
    Neuron,
    Pair,
    Phase,
    Prompt,
    Run,
    TopActivation,
)

TIMING = {"seconds", "finished_at", "started_at", "created_at", "scan_seconds", "tokens_per_s",
          "wall_seconds_this_invocation", "phase_seconds"}


def _clean(value):
    """``value`` without timing keys, at any depth."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _row(obj, drop: set[str], **keys) -> dict:
    out = {c.key: getattr(obj, c.key) for c in obj.__table__.columns if c.key not in drop | TIMING}
    return _clean({**out, **keys})


def canonical_rows(url: str) -> dict[str, list[str]]:
    """``{table: sorted list of canonical row strings}`` of every table of the database."""
    from sqlalchemy.orm import Session

    engine = create_engine(parse_url(url))
    out: dict[str, list[dict]] = {}
    with Session(engine) as s:
        runs = {r.id: r.slug for r in s.scalars(select(Run))}
        neurons = {n.id: (runs[n.run_id], n.layer, n.neuron) for n in s.scalars(select(Neuron))}
        prompts = {p.id: (*neurons[p.neuron_id], p.split, p.rank) for p in s.scalars(select(Prompt))}
        pairs = {p.id: (*neurons[p.neuron_id], p.head_layer, p.head) for p in s.scalars(select(Pair))}
        expls = {e.id: (*pairs[e.pair_id], e.explainer) for e in s.scalars(select(Explanation))}
        out["runs"] = [_row(r, {"id"}) for r in s.scalars(select(Run))]
        for name, cls in (("phases", Phase), ("documents", Document), ("top_activations", TopActivation),
                          ("neurons", Neuron), ("activation_histograms", ActivationHistogram)):
            out[name] = [_row(o, {"id", "run_id"}, run=runs[o.run_id]) for o in s.scalars(select(cls))]
        out["prompts"] = [_row(p, {"id", "neuron_id"}, neuron=neurons[p.neuron_id])
                          for p in s.scalars(select(Prompt))]
        out["pairs"] = [_row(p, {"id", "run_id", "neuron_id"}, neuron=neurons[p.neuron_id])
                        for p in s.scalars(select(Pair))]
        out["explanations"] = [_row(e, {"id", "pair_id"}, pair=pairs[e.pair_id])
                               for e in s.scalars(select(Explanation))]
        out["classifications"] = [_row(c, {"explanation_id", "prompt_id"},
                                       explanation=expls[c.explanation_id], prompt=prompts[c.prompt_id])
                                  for c in s.scalars(select(Classification))]
        out["ablations"] = [_row(a, {"pair_id", "prompt_id"}, pair=pairs[a.pair_id],
                                 prompt=prompts[a.prompt_id])
                            for a in s.scalars(select(Ablation))]
        out["llm_calls"] = [_row(c, set()) for c in s.scalars(select(LLMCall))]
        out["lookups"] = [_row(lk, {"prompt_id"}, prompt=prompts[lk.prompt_id])
                          for lk in s.scalars(select(Lookup))]
        out["knockouts"] = [_row(k, {"prompt_id"}, prompt=prompts[k.prompt_id])
                            for k in s.scalars(select(AttentionKnockout))]
    engine.dispose()
    return {t: sorted(json.dumps(r, sort_keys=True, default=_bytes) for r in rows) for t, rows in out.items()}


def _bytes(value) -> str:
    """Bytes (the look-ups' float32 vectors) as hex, so equal strings mean equal bytes; other
    values as ``str``."""
    return bytes(value).hex() if isinstance(value, (bytes, memoryview)) else str(value)


def first_difference(a: dict[str, list[str]], b: dict[str, list[str]]) -> str | None:
    """A readable description of the first differing table and row, or None when equal."""
    for t in sorted(set(a) | set(b)):
        ra, rb = a.get(t, []), b.get(t, [])
        if ra != rb:
            only_a, only_b = sorted(set(ra) - set(rb)), sorted(set(rb) - set(ra))
            return (f"{t}: {len(ra)} vs {len(rb)} rows; first only in a: "
                    f"{only_a[:1]}; first only in b: {only_b[:1]}")
    return None
