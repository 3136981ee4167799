"""The state of a pair's explanation and ablation, as the pages show it: ``done``,
``not_computed`` (the work has not run yet), ``skipped`` (it ran and had nothing to work on,
with the reason) or ``not_applicable`` (it never runs for this pair, with the reason).

Nothing here touches the database: the views pass what ``app.queries`` read.
"""

from __future__ import annotations

from precompute.pairs import not_kept_reason, too_few_prompts

DONE, NOT_COMPUTED, SKIPPED, NOT_APPLICABLE = "done", "not_computed", "skipped", "not_applicable"


def _state(state: str, reason: str | None = None) -> dict:
    return {"state": state, "reason": reason}


def kept_reason(pair, settings) -> str | None:
    """None for a kept pair, else why it was not kept (the run's rule,
    :func:`precompute.pairs.not_kept_reason`).

    Args:
        pair: a ``Pair`` row or its dict (``kept``, ``n_prompts``, ``n_active``).
        settings: the run's settings (``Settings.of_run``).
    """
    get = pair.get if isinstance(pair, dict) else lambda k: getattr(pair, k)
    if get("kept"):
        return None
    return not_kept_reason(get("n_prompts"), get("n_active"), settings) or "outside the run's pair rule"


def no_pair_reason(n_explain: int, settings) -> str:
    """Why a selected neuron has no kept pair, given its number of explain prompts."""
    if not n_explain:
        return "it has no activating explain prompt"
    return too_few_prompts(n_explain, settings) or (
        f"no head is active on {settings.pair_min_fraction:g}-{settings.pair_max_fraction:g} of its "
        f"{n_explain} explain prompts")


def explanation_state(*, kept_why: str | None, n_explanations: int) -> dict:
    """State of a pair's explanations (any explainer)."""
    if kept_why is not None:
        return _state(NOT_APPLICABLE, f"only kept pairs are explained; {kept_why}")
    if n_explanations:
        return _state(DONE)
    return _state(NOT_COMPUTED, "run `lookups precompute` or `lookups explain` on this database")


def ablation_state(*, kept_why: str | None, n_rows: int, phases: dict[str, int]) -> dict:
    """State of a pair's ablation.

    Args:
        kept_why: :func:`kept_reason` of the pair.
        n_rows: its stored ablation rows (any method).
        phases: ``{method: held-out prompts}`` of its finished ablation units of work.
    """
    if kept_why is not None:
        return _state(NOT_APPLICABLE, f"only kept pairs are ablated; {kept_why}")
    if n_rows:
        return _state(DONE)
    if phases:
        return _state(SKIPPED, "the neuron has no held-out prompt to ablate on")
    return _state(NOT_COMPUTED, "run `lookups precompute` with --ablation zero or mean")


def text(st: dict) -> str:
    """``not computed yet``, ``skipped (reason)``, ``not applicable (reason)``."""
    label = {NOT_COMPUTED: "not computed yet", SKIPPED: "skipped", NOT_APPLICABLE: "not applicable",
             DONE: "done"}[st["state"]]
    return f"{label} ({st['reason']})" if st.get("reason") and st["state"] != NOT_COMPUTED else label
