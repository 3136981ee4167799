"""The explorer's glossary: every term the pages use, in plain words, with the section of
docs/method.md that defines it. The glossary page lists them; the pages link each term to its
entry with the definition as a tooltip (``term`` in the templates)."""

from __future__ import annotations

from markupsafe import Markup, escape

from context_lookups.precompute.explain.scoring import MIN_HELDOUT_PER_CLASS
from context_lookups.precompute.findings.verdict import MIN_PAIRS

# key: (label, definition, docs/method.md section)
TERMS: dict[str, tuple[str, str, str]] = {
    "next-token-neuron": (
        "next-token neuron",
        "An MLP neuron whose output weights point at one token's unembedding: when it fires, it "
        "pushes the model towards predicting that token next. Selected per layer by congruence.",
        "§1"),
    "random-neuron": (
        "random neuron",
        "A neuron of the same layer drawn at random: the baseline the next-token neurons are "
        "compared with.", "§1"),
    "congruence": (
        "congruence",
        "W_out[l, i] · W_U[:, t]: how strongly neuron i's output writes token t's direction. The "
        "neuron's token is the one with the largest congruence.", "§1"),
    "rank": (
        "rank",
        "A neuron's place among all neurons of its layer by congruence (1 = highest). Neurons "
        "whose tokens fail the selection rules (a leading space, more than two characters, a "
        "letter) are passed over, so a selected neuron can have a large rank.", "§1"),
    "prompt": (
        "max-activating prompt",
        "A document on which the neuron fires most, cut to end at the token where it fires and "
        "to start as late as possible while keeping 80% of the activation (trimmed).", "§2"),
    "repeats": (
        "repeated prompt (×N)",
        "Different documents can trim to the same tokens (a short ending such as \" such\", or "
        "the same text twice in the corpus). They are one prompt, shown ×N with the documents it "
        "came from, and counted once everywhere: in the pair rule, E and its interval, and the "
        "ablation tests. A neuron's 20 prompts are 20 different ones where its top documents hold "
        "them; n is then written as distinct / documents where they differ.", "§2"),
    "document-activation": (
        "document activation",
        "The neuron's largest activation in the whole, untrimmed document: prompts are ranked "
        "by it. The trimmed prompt's own activation at its last token is shown beside it.", "§2"),
    "activation-distribution": (
        "activation distribution",
        ("How often the neuron takes each activation value over every token the scan read (after "
         "BOS), counted in fixed bins: four per doubling of the value on either side of 0, from "
         "0.001 to 1024 (smaller values share a central bin, larger ones the outer bins). Counts "
         "are on a log scale; the marks are the activations of the neuron's top prompts."), "§2"),
    "relative-activation": (
        "relative activation",
        ("A neuron's activation on a token divided by its own maximum over the explain documents "
         "of the scan: 1 means as strongly as on its top document, above 1 more strongly. Neurons "
         "whose maximum is not positive are left out."), "§11"),
    "explain-heldout": (
        "explain / held-out prompts",
        "Two disjoint sets of documents: explain prompts are shown to the explainer, held-out "
        "prompts are used only to score its explanation.", "§2"),
    "attribution": (
        "head attribution (raw)",
        "The paper's score of how much an attention head drives the neuron at a prompt's last "
        "token: the head's output dotted with the neuron's input weights (residual-stream "
        "units).", "§3"),
    "ln-aware": (
        "LN-aware attribution",
        "The raw attribution divided by the scale of the LayerNorm before the MLP, so that all "
        "contributions add up exactly to the neuron's pre-activation. The project's addition.",
        "§3"),
    "lookup": (
        "context look-up (per-source decomposition)",
        ("A head's attribution at the firing position p split by the earlier token it reads from: "
         "A = Σ_s a[p, s] · (v_s W_O) · W_in + bias, where a[p, s] is the head's attention weight "
         "on source token s and v_s its value vector. Each term is what token s carries to the "
         "neuron through the head; a head can attend hard to a token that carries nothing. The "
         "project's addition."), "§3"),
    "attention-sink": (
        "attention sink",
        ("⟨BOS⟩, the first position of every prompt, where heads rest attention they do not give the "
         "context. It sees only itself, so its value vector is the same in every prompt: its term "
         "in a look-up is a fixed vector gated by how little the head attends to the context, and "
         "says nothing about the context. The look-up shows it as its own row with its figure, "
         "apart from the context tokens, and leaves it off their colour scale."), "§3"),
    "knockout": (
        "attention knockout",
        ("A causal check of a look-up: the head's attention to one source token at the firing "
         "position is set to zero and the rest of its attention row renormalised (Geva et al. 2023), "
         "then the change of the neuron's activation and of p(token) is measured — directly (only "
         "the head's path into the neuron) and in total (the model re-run). Negative: the source "
         "made the neuron fire. Summaries: the rank agreement (Spearman ρ) between the sources' "
         "contributions and what knocking each out removes, and the share of pairs whose top context "
         "source, knocked out, lowers the activation by at least half of its contribution."), "§3"),
    "active-head": (
        "active head",
        "On one prompt, a head whose attribution is above mean + 2 standard deviations of all "
        "scored heads (the paper's rule), or among the top 3 (the authors' released data).", "§3"),
    "kept-pair": (
        "kept pair",
        "A (neuron, head) pair whose head is active on 25-75% of the neuron's explain prompts: "
        "only those have something to explain (when the head is on and when it is off).", "§3"),
    "explanation-score": (
        "explanation score E",
        "How well an explanation predicts on held-out prompts whether the head is active: "
        "½(TPR + TNR), the balanced accuracy of a Yes/No classifier that reads only the "
        "explanation. 0.5 is chance, 1 is perfect.", "§5"),
    "tpr-tnr": (
        "TPR, TNR",
        "True positive rate (share of prompts with the head active that the classifier calls "
        "active) and true negative rate (share of the others it calls inactive).", "§5"),
    "n-heldout": (
        "n (held-out)",
        "How many distinct held-out prompts a score rests on, as active / inactive (repeats merged). "
        "Scores with fewer than "
        f"{MIN_HELDOUT_PER_CLASS} answered prompts in either group are flagged ⚑ small sample.", "§5"),
    "e-interval": (
        "interval of E",
        "A 95% interval for one pair's E: the Wilson intervals of TPR and TNR (97.5% each) "
        "averaged end to end.", "§5"),
    "single-class": (
        "single-class pair",
        "A pair whose held-out prompts are all active or all inactive: one of TPR and TNR cannot "
        "be computed, so E is undefined by the project's rule.", "§5"),
    "unanswered": (
        "unanswered pair",
        "An imported pair whose held-out prompts have no classifier answers in the authors' data "
        "(their answer files are missing or were not published): E cannot be computed at all, "
        "unlike a single-class pair.", "§7"),
    "unparsed": (
        "unparsed answer",
        "A classifier answer that is neither Yes nor No; it is counted and left out of the "
        "rates.", "§5"),
    "authors-rule": (
        "authors' rule",
        "How the authors scored single-class pairs: E is the one rate that is defined (TPR when "
        "all held-out prompts are active, TNR when none is). Used for their imported data.", "§5"),
    "projects-rule": (
        "project's rule",
        "Single-class pairs get no E and are counted separately (a one-class set cannot measure "
        "balanced accuracy). Used for runs computed here.", "§5"),
    "skew-test": (
        "skew test",
        "scipy.stats.skewtest: whether the distribution of E leans to one side more than a "
        "normal distribution would by chance; a small p says it is skewed.", "§5"),
    "ablation": (
        "ablation",
        "Running the model with one head's value vectors set to zero (or their mean) at every "
        "position, to see what the head does.", "§6"),
    "drop": (
        "drop",
        ("p(token) without ablation minus p(token) with the head ablated, at the prompt's last "
         "position: how much the head helped predict the neuron's token. A negative drop means "
         "p(token) rose when the head was ablated: the head was working against the token on that "
         "prompt (or, for tiny values, rounding noise). Means over prompts can be negative for the "
         "same reason; figures under 1e-3 are written in scientific notation."), "§6"),
    "ks-test": (
        "KS test",
        "Two-sample Kolmogorov-Smirnov test: whether two sets of values (drops where the head is "
        "active vs inactive) come from different distributions.", "§6"),
    "bootstrap": (
        "bootstrap interval",
        "A 95% interval found by resampling the pairs with replacement 9,999 times (seed 0) and "
        "taking the middle 95% of the recomputed figure (BCa).", "§8"),
    "verdict": (
        "verdict",
        "reproduces: the whole 95% interval lies on the paper's side of the null value (0.5 for "
        "chance, 0 for a difference); does not reproduce: it lies wholly on the other side; "
        f"inconclusive: it contains the null value; not measured: fewer than {MIN_PAIRS} pairs.",
        "§8"),
}


def entries() -> list[dict]:
    """The glossary as the page shows it (its JSON twin too)."""
    return [{"key": k, "term": label, "definition": text, "method": sec}
            for k, (label, text, sec) in TERMS.items()]


def term(key: str, text: str | None = None) -> Markup:
    """``text`` (default: the term's label) linked to its glossary entry, its definition as the
    tooltip.

    Raises:
        KeyError: ``key`` is not in :data:`TERMS` (a template names a term that is not defined).
    """
    label, definition, _ = TERMS[key]
    return Markup(f'<a class="term" href="/glossary#{key}" title="{escape(definition)}">'
                  f'{escape(text if text is not None else label)}</a>')
