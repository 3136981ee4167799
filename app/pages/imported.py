"""What the explorer shows differently for runs imported from the authors' data (``lookups
import-paper``): the top-3 head counts that stand in for attribution values the files do not
record."""

from __future__ import annotations

from context_lookups.precompute.heads.attribution import head_label


def top3_view(run, n_scored: int, prompts: list) -> dict | None:
    """For prompts without recorded attribution values (imported runs): per head of the
    ``n_scored`` scored layers (the run's rule over all the model's layers: the files do not
    say which are upstream), the share of the prompts on which it is among the top 3
    (``Prompt.active``), as a ``[layer][head]`` grid; None when the prompts carry attribution
    values."""
    if not prompts or prompts[0].attr_raw:
        return None
    grid = [[0.0] * run.n_heads for _ in range(n_scored)]
    for p in prompts:
        for lab in p.active:
            k, h = (int(x) for x in lab[1:].split("H"))
            if k < n_scored:
                grid[k][h] += 1 / len(prompts)
    return {"grid": grid, "n_scored": n_scored,
            "head_labels": [head_label(k, h) for k in range(n_scored) for h in range(run.n_heads)]}
