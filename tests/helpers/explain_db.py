"""Copies of the session's precomputed database made ready for the explanation step."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import torch


def relabel_topk(db: Path, k: int = 3) -> int:
    """Relabel active heads of every stored prompt with the paper's Oct 2023 rule (top-k heads by
    the stored raw attribution, ``active_heads(rule="topk")``) and re-derive the pairs' counts
    and ``kept`` flags by a real SQL update. The tiny random test model rarely passes the
    2-sigma rule, so a database made with it has (almost) no kept pairs otherwise.
    Returns the number of kept pairs."""
    from context_lookups.precompute.heads.attribution import active_heads

    c = sqlite3.connect(db)
    rows = c.execute("SELECT p.id, p.attr_raw, n.layer FROM prompts p "
                     "JOIN neurons n ON n.id = p.neuron_id").fetchall()
    for pid, raw, layer in rows:
        raw = json.loads(raw)[:layer + 1]
        flat = torch.tensor(raw).flatten()
        act = active_heads(flat, rule="topk", k=k)
        n_heads = len(raw[0])
        labels = [f"L{i // n_heads}H{i % n_heads}" for i in range(len(flat)) if act[i]]
        c.execute("UPDATE prompts SET active = ? WHERE id = ?", (json.dumps(labels), pid))
    for pid, nid, hl, h in c.execute("SELECT id, neuron_id, head_layer, head FROM pairs").fetchall():
        acts = [json.loads(a) for (a,) in c.execute(
            "SELECT active FROM prompts WHERE neuron_id = ? AND split = 'explain'", (nid,))]
        n_act = sum(f"L{hl}H{h}" in a for a in acts)
        frac = n_act / len(acts)
        c.execute("UPDATE pairs SET n_active = ?, active_fraction = ?, kept = ? WHERE id = ?",
                  (n_act, frac, 0.25 <= frac <= 0.75, pid))
    c.commit()
    kept = c.execute("SELECT count(*) FROM pairs WHERE kept").fetchone()[0]
    c.close()
    return kept


def fresh_copy(src: Path, dst: Path, min_kept: int = 4) -> Path:
    """A copy of the precomputed database with at least ``min_kept`` kept pairs (relabelled
    with the top-3 rule if the fixture's rule kept fewer) and no explanations yet (the
    precompute job already ran the baseline on it)."""
    shutil.copy(src, dst)
    c = sqlite3.connect(dst)
    kept = c.execute("SELECT count(*) FROM pairs WHERE kept").fetchone()[0]
    c.close()
    if kept < min_kept:
        relabel_topk(dst)
    c = sqlite3.connect(dst)
    c.execute("DELETE FROM classifications")
    c.execute("DELETE FROM explanations")
    c.execute("DELETE FROM llm_calls")
    c.execute("UPDATE neurons SET best_score = NULL")
    c.commit()
    c.close()
    return dst
