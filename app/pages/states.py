"""The state of a pair's explanation and ablation, as the pages show it: ``done``,
``not_computed`` (the work has not run yet), ``skipped`` (it ran and had nothing to work on,
with the reason), ``not_applicable`` (it never runs for this pair, with the reason),
``imported`` (figures from the authors' files, naming them) or ``not_in_data`` (an imported
run: the authors' data has none, with the reason). An imported run is never "not computed
yet": nothing here computes it. Status codes are turned into words here too.

:func:`reason` is the one function that says why a figure is missing: every "–" of a page
carries its text (``formats.dash``: a tooltip, and the text where space allows) and every JSON
row its ``reason``.

Nothing here touches the database: the views pass what ``app.pages.queries`` read.
"""

from __future__ import annotations

from context_lookups.precompute.heads.pairs import not_kept_reason, too_few_prompts

DONE, NOT_COMPUTED, SKIPPED, NOT_APPLICABLE = "done", "not_computed", "skipped", "not_applicable"
IMPORTED, NOT_IN_DATA = "imported", "not_in_data"


def _state(state: str, reason: str | None = None) -> dict:
    return {"state": state, "reason": reason}


def kept_reason(pair, settings) -> str | None:
    """None for a kept pair, else why it was not kept (the run's rule,
    :func:`precompute.heads.pairs.not_kept_reason`).

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


def _missing(provenance: dict | None, *roles: str) -> str | None:
    """Why an imported run lacks what ``roles`` would have given (its provenance), or None."""
    for m in (provenance or {}).get("missing") or []:
        if isinstance(m, dict) and m.get("role") in roles:
            what = m.get("what", m["role"]).split(" (")[0]
            return f"the run has no {what}: {m.get('reason', '')}".rstrip(": ")
    return None


def _files(provenance: dict | None, role: str) -> str:
    files = ((provenance or {}).get("files") or {}).get(role) or []
    return ", ".join(files if isinstance(files, list) else [files])


def explanation_state(*, kept_why: str | None, n_explanations: int, provenance: dict | None = None) -> dict:
    """State of a pair's explanations (any explainer); ``provenance``: the run's (imported runs)."""
    if kept_why is not None:
        return _state(NOT_APPLICABLE, f"only kept pairs are explained; {kept_why}")
    if n_explanations:
        return _state(DONE)
    if provenance is not None:
        return _state(NOT_IN_DATA, _missing(provenance, "expl_dict", "expl_results")
                      or "the authors' files hold no explanation of this pair")
    return _state(NOT_COMPUTED, "run `lookups precompute` or `lookups explain` on this database")


def ablation_state(*, kept_why: str | None, n_rows: int, phases: dict[str, int],
                   provenance: dict | None = None) -> dict:
    """State of a pair's ablation.

    Args:
        kept_why: :func:`kept_reason` of the pair.
        n_rows: its stored ablation rows (any method).
        phases: ``{method: held-out prompts}`` of its finished ablation units of work.
        provenance: the run's provenance (imported runs; None for runs computed here).
    """
    if kept_why is not None:
        return _state(NOT_APPLICABLE, f"only kept pairs are ablated; {kept_why}")
    if provenance is not None:
        if n_rows:
            files = _files(provenance, "ablation") or "ablation file"
            return _state(IMPORTED, f"imported from the authors' {files}")
        return _state(NOT_IN_DATA, _missing(provenance, "ablation", "attr_test")
                      or "the authors' ablation file has no values for this pair's held-out prompts")
    if n_rows:
        return _state(DONE)
    if phases:
        return _state(SKIPPED, "the neuron has no held-out prompt to ablate on")
    return _state(NOT_COMPUTED, "run `lookups precompute` with --ablation zero or mean")


def lookup_state(*, run, kept: bool, what: str, off: bool = False) -> dict:
    """State of a pair's stored look-up or its attention knockouts (``what``: "look-up" or
    "knockout", docs/method.md §3) when it has none: ``not_in_data`` (an imported run: both need
    the model's weights, which the authors' files do not hold), ``not_applicable`` (stored for
    kept pairs only), or ``not_computed`` (a run stored before they existed, or, with ``off``,
    computed with ``--knockout-top-m 0``)."""
    if run.provenance is not None:
        return _state(NOT_IN_DATA, f"the {what} needs the model's weights, which the authors' files do "
                      f"not hold")
    if not kept:
        return _state(NOT_APPLICABLE, "it is stored for kept pairs only")
    if what == "knockout" and off:
        return _state(NOT_COMPUTED, "this run was computed with --knockout-top-m 0 (or before the knockout "
                      "existed); run `lookups precompute` into a new database to get it")
    return _state(NOT_COMPUTED, f"this run was stored by a context-lookups without the {what}; run "
                  f"`lookups precompute` into a new database to get it")


# --- why a figure is missing: the one function every view uses ---------------------------------

REASONS = {
    "not_explained": "not explained yet: run `lookups explain` (or `lookups precompute`) on this database",
    "not_explained_imported": "not in the authors' files: they hold no explanation of this pair",
    "single_class": "one class: the held-out prompts are all {side}, so E = ½(TPR + TNR) is undefined",
    "unanswered": "unanswered: the authors' files hold no answers on this pair's held-out prompts",
    "failed": "the explainer failed{detail}",
    "undefined_e": "E undefined{detail}",
    "not_in_files": "not in the authors' files",
    "neurons_only": "the authors' files for this run hold neurons only: no prompts, pairs or explanations",
    "no_pair": "no kept pair: {why}",
    "not_selected": "not selected: neither a next-token nor a random neuron",
    "no_interval": "no interval: some answers were not Yes/No and the answer counts are not stored",
    "not_ablated": "not ablated: {why}",
    "no_side": "no held-out prompt where the head is {side}",
    "not_classified": "not classified: this prompt is not among the pair's scored held-out prompts",
    "knockout_undefined": "undefined: no attention left to renormalise",
    "direct_prob": "the direct effect is defined at the neuron's input; p(token) changes only through "
                   "the whole pass (the total effect)",
    "not_in_run": "not in this run",
    "no_token": "not recorded: the authors' files do not name this neuron's token",
}


def reason(code: str, **detail) -> str:
    """Why a figure is missing, in words: the one place the texts are written (:data:`REASONS`;
    ``detail`` fills their blanks). Every "–" of the pages and every ``reason`` of the JSON
    twins comes from here.

    Raises:
        KeyError: an unknown code.
    """
    text = REASONS[code]
    return text.format(**detail) if detail else text.format_map(_Blank())


class _Blank(dict):
    def __missing__(self, key):  # an unfilled blank reads as nothing
        return ""


def neurons_only(provenance: dict | None) -> bool:
    """Whether an imported run's files hold neurons only (a gpt2-xl-like release: no training
    attributions, so no prompts, pairs or explanations; nothing a command here can add)."""
    missing = (provenance or {}).get("missing") or []
    return any(isinstance(m, dict) and m.get("role") == "attr" for m in missing)


def neuron_score_reason(*, kind: str, status: str | None, has_kept_pair: bool, provenance: dict | None,
                        best: dict | None, settings=None) -> str | None:
    """Why a neuron's best E is missing on the lists (None when it has one): not selected, the
    run's files hold neurons only, no kept pair (and why: :func:`no_pair_reason` from its
    status), or its best explanation's reason (:func:`score_reason`), or not explained yet."""
    if best is not None:
        return score_reason(best, rule="project")
    if kind == "other":
        return reason("not_selected")
    if neurons_only(provenance):
        return reason("neurons_only")
    if not has_kept_pair:
        if status == "no_activating_prompt":
            return reason("no_pair", why="it has no activating explain prompt")
        if status == "too_few_prompts" and settings is not None:
            return reason("no_pair", why=f"fewer than {settings.pair_min_prompts} explain prompts")
        return reason("no_pair", why="no head is active on the pair rule's share of its explain prompts")
    return reason("not_explained_imported" if provenance is not None else "not_explained")


def score_reason(e: dict | None, *, explanation_state: dict | None = None, no_pair: str | None = None,
                 neurons_only: bool = False, rule: str = "any") -> str | None:
    """Why an explanation score E is missing (None when there is one): from the explanation's
    status (``e``, an :func:`app.pages.present.explanation_dict`), else from why the pair has no
    explanation (``explanation_state``), or why the neuron has no kept pair (``no_pair``), or
    because the run's files hold neurons only. ``rule``: "any" (E by either rule counts) or
    "project" (the view shows the project's E, ``score``, alone: a one-class pair that only the
    authors' rule scores has none)."""
    if e is not None:
        if e.get("score") is not None or (rule == "any" and e.get("score_authors") is not None):
            return None
        st = e.get("status")
        if st == "single_class":
            side = "active" if not e.get("n_neg") else "inactive"
            return reason("single_class", side=side)
        if st == "unanswered":
            return reason("unanswered")
        if st == "failed":
            return reason("failed", detail=f": {e['error']}" if e.get("error") else "")
        return reason("undefined_e", detail=f": {e['error']}" if e.get("error") else "")
    if neurons_only:
        return reason("neurons_only")
    if no_pair:
        return reason("no_pair", why=no_pair)
    st = explanation_state or {}
    if st.get("state") == NOT_IN_DATA:
        return reason("not_explained_imported")
    if st.get("state") == NOT_APPLICABLE:
        return st.get("reason")
    return reason("not_explained")


_LABELS = {NOT_COMPUTED: "not computed yet", SKIPPED: "skipped", NOT_APPLICABLE: "not applicable",
           DONE: "done", IMPORTED: "imported", NOT_IN_DATA: "not in the authors' data"}


def text(st: dict) -> str:
    """``not computed yet``, ``skipped (reason)``, ``not applicable (reason)``,
    ``imported (from ...)``, ``not in the authors' data (reason)``."""
    label = _LABELS[st["state"]]
    return f"{label} ({st['reason']})" if st.get("reason") and st["state"] != NOT_COMPUTED else label


# --- status codes as words -------------------------------------------------------------------

EXPLANATION_STATUS = {"ok": "scored", "single_class": "single class (held-out prompts all one class)",
                      "unanswered": "unanswered (no held-out answers in the data)", "failed": "failed"}


def explanation_status(code: str | None) -> str:
    """An ``Explanation.status`` in words (an unknown code is shown with its underscores as
    spaces)."""
    return EXPLANATION_STATUS.get(code or "", (code or "").replace("_", " "))


_SPLITS = {"explain": "explain", "heldout": "held-out"}


def neuron_status(code: str | None) -> str | None:
    """A ``Neuron.status`` in words: ``records_not_matched:explain+heldout`` (an imported
    neuron whose duplicate prompt texts collapsed) becomes a sentence; other codes lose their
    underscores."""
    if not code:
        return None
    if code.startswith("records_not_matched:"):
        splits = [_SPLITS.get(x, x) for x in code.split(":", 1)[1].split("+") if x]
        return (f"the authors' document positions could not be matched to the {' and '.join(splits)} prompt "
                f"texts (equal texts collapsed into one), so those prompts show no document or activation")
    return code.replace("_", " ")
