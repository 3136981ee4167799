"""Explainers of (neuron, head) pairs (paper §4.4, docs/method.md §4-§5) and the data they share.

An explainer turns a pair's explain-split prompts (split into active / inactive by the head)
into an explanation, then answers, for each held-out prompt, whether the head is active on it
(a ``Yes`` / ``No`` answer string). ``precompute.explain`` scores the answers and stores them.

- ``baseline``: offline, deterministic token statistics (``explainers.baseline``), the default.
- ``openai:<model>``: the paper's prompts sent to an OpenAI-compatible chat-completions endpoint
  (``explainers.llm``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BASELINE = "baseline"
LLM_PREFIX = "openai:"  # every LLM explainer's stored name: openai:<model> (the authors' GPT-4 too)


def is_llm(name: str) -> bool:
    """Whether explainer ``name`` is an LLM's (``openai:<model>``: this project's LLM explainer,
    and the authors' GPT-4 on imported runs) rather than the offline baseline.

    "Prefer the LLM explainer" means this, everywhere it applies: among a pair's or a neuron's
    explanations, or a run's explainers, one whose explainer is an LLM's comes first
    (:func:`llm_first`, :func:`preferred`), whatever the order they ran in; the baseline (and
    any other name) only when no LLM explained. The paper's explanations are an LLM's.
    """
    return name.startswith(LLM_PREFIX)


def llm_first(names) -> list[str]:
    """Explainer names, the LLMs' first (:func:`is_llm`), each group by name."""
    return sorted(names, key=lambda n: (not is_llm(n), n))


def baseline_first(names) -> list[str]:
    """Explainer names in the order the score tables list them: the baseline first, then the
    others by name."""
    return sorted(names, key=lambda n: (n != BASELINE, n))


def preferred(names) -> str | None:
    """The explainer that stands for a run (its main explanations): the first LLM's in
    ``names``' order, else the first name; None without any."""
    names = list(names)
    return next((n for n in names if is_llm(n)), names[0] if names else None)


def explainer_name(settings) -> str:
    """The name stored in ``Explanation.explainer``: ``"baseline"`` or ``"openai:<llm_model>"``.

    Raises:
        ValueError: ``settings.explainer`` is ``"none"`` or unknown.
    """
    if settings.explainer == "baseline":
        return BASELINE
    if settings.explainer == "openai":
        return f"{LLM_PREFIX}{settings.llm_model}"
    raise ValueError(f"No explainer to run (--explainer {settings.explainer!r}): use "
                     f"--explainer baseline or --explainer openai.")


@dataclass(frozen=True)
class Example:
    """One trimmed prompt of a neuron. ``tokens``: token strings without BOS (the last one is
    the max-activating token); ``active``: whether the pair's head is active on it (the run's
    rule, stored in ``Prompt.active``); ``carriers``: on explain prompts only, the pair head's
    look-up, ``(token, what it carries to the neuron)`` per token string
    (``precompute.heads.lookup.carriers``; empty when not stored, and always for held-out prompts)."""

    prompt_id: int
    text: str
    tokens: tuple[str, ...]
    active: bool
    carriers: tuple[tuple[str, float], ...] = ()


@dataclass
class PairTask:
    """What an explainer sees of one kept pair: the neuron's token (the one it predicts), the
    explain-split prompts (all of them, by rank) and the held-out prompts (the top
    ``heldout_per_pair`` by rank)."""

    pair_id: int
    neuron_id: int
    kind: str  # next_token | random
    label: str  # head label, e.g. "L1H3"
    token: str
    explain: list[Example]
    heldout: list[Example]

    @property
    def active(self) -> list[Example]:
        return [e for e in self.explain if e.active]

    @property
    def inactive(self) -> list[Example]:
        return [e for e in self.explain if not e.active]

    def active_carriers(self) -> list[dict[str, float]] | None:
        """The look-up of each active explain prompt (aligned with :attr:`active`), or None when
        the pair has none stored."""
        act = self.active
        return [dict(e.carriers) for e in act] if any(e.carriers for e in act) else None

    @property
    def single_class(self) -> bool:
        """True when the held-out prompts are all active or all inactive (or there are none):
        the explanation score is then undefined (docs/method.md §5)."""
        return len({e.active for e in self.heldout}) < 2


@dataclass
class PairResult:
    """An explainer's output for one pair. ``answers``: ``[(prompt_id, truth, raw answer)]``
    for the held-out prompts (empty for single-class pairs, which are not classified).
    ``status``: ``ok``, ``failed`` (``error`` says why) or ``single_class``."""

    status: str
    text: str | None = None
    prompt: str | None = None
    settings: dict = field(default_factory=dict)
    answers: list[tuple[int, bool, str]] = field(default_factory=list)
    error: str | None = None


# The end of the authors' Oct 2023 explanation prompt: their GPT-4 explanations (imported runs)
# continue it.
LEAD_IN = "This attention head is active when the document"


def full_text(content: str | None) -> str | None:
    """The authors' GPT-4 explanation as a sentence: the lead-in its prompt ended with
    (:data:`LEAD_IN`), then its words (which continue it); unchanged when it has the lead-in."""
    if content is None or content.startswith(LEAD_IN):
        return content
    return f"{LEAD_IN}{'' if content[:1].isspace() else ' '}{content}"


_ANSWER = re.compile(r"^[\s\"'`*_(\[]*([A-Za-z]+)")


def parse_answer(answer: str | None) -> bool | None:
    """The classifier's Yes / No (paper §4.4), or None when it answered anything else.

    Rule: strip leading whitespace, quotes, ``*``, ``_`` and brackets; take the first run of
    letters; case-fold it; ``"yes"`` → True, ``"no"`` → False, anything else (``"Maybe"``,
    ``"Y"``, ``"Yesterday"``-like words, an empty answer) → None. So ``" Yes"``, ``"yes."``,
    ``"**No**"`` and ``"No, because ..."`` parse; the authors' code kept only exact
    ``"Yes"``/``"No"`` and dropped the rest silently — here the rest is counted as unparsed.
    """
    if not answer:
        return None
    m = _ANSWER.match(answer)
    if not m:
        return None
    word = m.group(1).casefold()
    return True if word == "yes" else False if word == "no" else None
