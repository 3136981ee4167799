"""What the explorer shows differently for runs imported from the authors' data
(``lookups import-paper``): the live model's availability in one line, and the top-3 head
counts that stand in for attribution values the files do not record."""

from __future__ import annotations

import json

from precompute.attribution import head_label, scored_layers
from precompute.settings import Settings

from .live import Live, model_source


def model_notice(live: Live, run) -> str | None:
    """One line saying the run's model cannot be loaded for live passes and how to get it;
    None when it can (or for runs computed here, whose model the job itself loaded)."""
    if run.provenance is None or live.loaded(run.slug) or live.tokenizer(run) is not None:
        return None
    name = model_source(run, live.settings)
    paths = json.dumps({run.slug: f"/path/to/{name}"})
    return (f"Live passes need the model {name}, which is not available here (not in the local "
            f"Hugging Face cache, and the hub is unreachable): fetch it once on a machine with a "
            f"network (python -c \"import transformers as t; t.AutoModelForCausalLM.from_pretrained('{name}'); "
            f"t.AutoTokenizer.from_pretrained('{name}')\") or point the server at a local copy with "
            f"LOOKUPS_MODEL_PATHS='{paths}'. Browsing the stored results works without it.")


def top3_view(run, layer: int, prompts: list) -> dict | None:
    """For prompts without recorded attribution values (imported runs): per head of the scored
    layers, the share of the prompts on which it is among the top 3 (``Prompt.active``), as a
    ``[layer][head]`` grid; None when the prompts carry attribution values."""
    if not prompts or prompts[0].attr_raw:
        return None
    n_scored = scored_layers(layer, Settings.of_run(run.settings).heads_upto, run.n_layers)
    grid = [[0.0] * run.n_heads for _ in range(n_scored)]
    for p in prompts:
        for lab in p.active:
            k, h = (int(x) for x in lab[1:].split("H"))
            if k < n_scored:
                grid[k][h] += 1 / len(prompts)
    return {"grid": grid, "n_scored": n_scored,
            "head_labels": [head_label(k, h) for k in range(n_scored) for h in range(run.n_heads)]}
