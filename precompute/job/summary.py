"""The precompute job's summary: the figures of a finished run (stored on the run,
``runs.summary``; written whole by ``--summary-json FILE``) and the short text ``lookups
precompute`` ends with (:func:`summary_text`): what was found, the verdict, how long it took
and where to look next.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from context_lookups.precompute.ablation.reads import ablation_methods, ablation_table
from context_lookups.precompute.core.settings import EMBEDDED_CORPUS, SERVE_HOST, SERVE_PORT, Settings
from context_lookups.precompute.corpus import SPLITS
from context_lookups.precompute.findings.report import explainers_of_run, score_table
from context_lookups.precompute.findings.verdict import WORDS, run_verdict
from context_lookups.precompute.heads.pairs import TOO_FEW_PROMPTS
from context_lookups.precompute.store.runs import phase_seconds
from context_lookups.precompute.store.schema import Neuron, Pair, Phase, Prompt, Run


def check_summary_path(path) -> None:
    """Refuse a ``--summary-json`` path that cannot be written, before the job starts (so a typo
    costs nothing).

    Raises:
        BadSettings: the path is a directory, or its folder does not exist.
    """
    from pathlib import Path

    from context_lookups.precompute.core.errors import BadSettings

    p = Path(path)
    if p.is_dir():
        raise BadSettings(f"--summary-json {p} is a directory: give a file name, e.g. {p / 'summary.json'}.")
    if not p.parent.is_dir():
        raise BadSettings(f"--summary-json {p}: the folder {p.parent} does not exist; create it or choose "
                          f"another file.")


def write_summary(path, summary: dict) -> None:
    """Write the run's summary (:func:`summarize`) to ``path`` as JSON (UTF-8, indented)."""
    import json
    from pathlib import Path

    Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")


def _claim(c: dict) -> dict:
    """A verdict claim as the summary keeps it: figure, 95 % interval, pairs per group, word."""
    return {k: c[k] for k in ("value", "lo", "hi", "n", "verdict", "reason")}


def repeats(session: Session, *, run_id: int, top_k: int) -> dict:
    """Per split, the selected neurons' distinct prompts, the documents they came from (the sum
    of their multiplicities), the repeats merged (documents beyond a prompt's first), and the
    neurons with fewer than ``top_k`` distinct prompts (their scanned documents hold no more)."""
    out = {}
    for split in SPLITS:
        rows = session.execute(select(Prompt.neuron_id, func.count(), func.sum(Prompt.multiplicity))
                               .join(Neuron, Neuron.id == Prompt.neuron_id)
                               .where(Neuron.run_id == run_id, Prompt.split == split)
                               .group_by(Prompt.neuron_id)).all()
        n = sum(c for _, c, _ in rows)
        docs = sum(int(m or 0) for _, _, m in rows)
        out[split] = {"prompts": n, "documents": docs, "repeats_merged": docs - n,
                      "neurons_below_top_k": sum(c < top_k for _, c, _ in rows)}
    return out


def summarize(s: Session, run_id: int, scans: dict, seconds: float, settings: Settings) -> dict:
    """The figures of a finished run, stored on it and written by ``--summary-json``: counts of
    neurons, prompts (with the repeats merged), pairs; the paper's two tables for this run
    (explanation score E per explainer and kind of neuron; ablation drop active vs inactive);
    the verdict (:func:`precompute.findings.verdict.run_verdict`, each claim's figure, interval
    and word); seconds per phase and of this invocation."""
    def brief_e(kind_row):
        return {k: kind_row.get(k) for k in ("n", "mean", "std", "skew")} | {
            "skewtest_p": kind_row["skewtest"]["pvalue"]}

    def brief_abl(kind_row):
        return {"pairs": kind_row["n_pairs"], "prompts": kind_row["n_prompts"],
                "mean_drop_active": kind_row["active"]["mean_drop"],
                "mean_drop_inactive": kind_row["inactive"]["mean_drop"],
                "ks_D": kind_row["ks"]["D"], "ks_p": kind_row["ks"]["p"]}

    def count(model, *where, join=None):
        q = select(func.count()).select_from(model)
        return s.scalar((q.join(join) if join is not None else q).where(*where)) or 0

    run = s.get(Run, run_id)
    scan_stats = {p.name: p.stats for p in s.scalars(select(Phase).where(Phase.run_id == run_id,
                                                                          Phase.name.like("scan:%")))}
    names = explainers_of_run(s, run_id=run_id)
    tables = {e: score_table(s, run_id=run_id, explainer=e) for e in names}
    ablation = None
    if settings.ablation != "none":
        table = ablation_table(s, run_id=run_id, method=settings.ablation)
        ablation = {k: brief_abl(table[k]) for k in ("next_token", "random")}
    v = run_verdict(s, run, explainers=names, methods=ablation_methods(s, run_id=run_id))
    return {
        "run": run.slug, "layers": run.layers,
        "neurons": {kind: count(Neuron, Neuron.run_id == run_id, Neuron.kind == kind)
                    for kind in ("next_token", "random", "other")},
        "prompts": count(Prompt, Neuron.run_id == run_id, join=Neuron),
        "repeats": repeats(s, run_id=run_id, top_k=settings.top_k),
        "pairs": count(Pair, Pair.run_id == run_id),
        "kept_pairs": count(Pair, Pair.run_id == run_id, Pair.kept),
        "no_activating_prompt": count(Neuron, Neuron.run_id == run_id,
                                      Neuron.status == "no_activating_prompt"),
        "too_few_prompts": count(Neuron, Neuron.run_id == run_id, Neuron.status == TOO_FEW_PROMPTS),
        "explanation_scores": {e: {k: brief_e(v) for k, v in t["kinds"].items()} for e, t in tables.items()},
        "explained_pairs": {e: sum(r["explained"] for r in t["kinds"].values()) for e, t in tables.items()},
        "ablation": ablation,
        "verdict": {"rule": v["rule"],
                    "explanations": [{"explainer": x["explainer"], "vs_chance": _claim(x["vs_chance"]),
                                      "vs_random": _claim(x["vs_random"])} for x in v["explanations"]],
                    "ablation": [{"method": a["method"], "drop": _claim(a["drop"]),
                                  "vs_random": _claim(a["vs_random"])} for a in v["ablation"]]},
        "phase_seconds": phase_seconds(s, run_id),
        "scan": scan_stats,
        "wall_seconds_this_invocation": round(seconds, 1),
    }


# --- the text the command ends with ---------------------------------------------------------------

def _duration(seconds: float) -> str:
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m} min {sec} s" if m else f"{sec} s"


def _figure(c: dict, d: int) -> str:
    if c.get("value") is None:
        return f"not measured ({c.get('reason') or 'no figure'})"
    return f"{c['value']:.{d}f} [{c['lo']:.{d}f}, {c['hi']:.{d}f}]"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def no_prompt_help(settings: Settings) -> str | None:
    """What could give prompts to neurons that never fire on the scanned explain documents, or
    None when nothing within reach can (the whole shipped corpus was scanned and it is all there
    is offline)."""
    if settings.n_docs is not None:
        return f"scan more documents (--n-docs; this run read at most {settings.n_docs:,} per split)"
    if settings.dataset != EMBEDDED_CORPUS:
        return "a larger corpus (--dataset) may have documents they fire on"
    return None


def summary_text(summary: dict, settings: Settings, *, db_shown: str, db_bytes: int | None) -> str:
    """The few lines ``lookups precompute`` ends with: neurons, prompts (distinct, repeats
    merged), pairs kept, explained pairs with the mean E and its interval, the verdict, the time
    and where to look next (the serve command and the address it serves). Every term is said in
    words; the full figures are in ``--summary-json FILE`` and on the run."""
    nk, layers = summary["neurons"], summary["layers"]
    took = _duration(summary["wall_seconds_this_invocation"])
    size = f" ({_size(db_bytes)})" if db_bytes else ""
    lines = [f"run {summary['run']!r} done: this invocation took {took}; database {db_shown}{size}."]
    line = (f"  neurons    {nk['next_token']} next-token and {nk['random']} random baseline neurons in "
            f"layer{'s' if len(layers) != 1 else ''} {', '.join(map(str, layers))}")
    if summary["no_activating_prompt"]:
        help_ = no_prompt_help(settings)
        line += (f"; {summary['no_activating_prompt']} fire on no scanned explain document, so they have "
                 f"no prompt" + (f" ({help_})" if help_ else ""))
    lines.append(line)
    rep = summary["repeats"]
    merged = sum(r["repeats_merged"] for r in rep.values())
    lines.append(f"  prompts    {rep['explain']['prompts']:,} explain and {rep['heldout']['prompts']:,} "
                 f"held-out prompts, each distinct within its neuron: {merged:,} "
                 f"repeat{'s' if merged != 1 else ''} merged (documents trimmed to the same tokens count "
                 f"once)")
    line = (f"  pairs      {summary['kept_pairs']:,} (neuron, head) pairs kept of {summary['pairs']:,} "
            f"scored (the head active on {settings.pair_min_fraction:.0%}-{settings.pair_max_fraction:.0%} "
            f"of the neuron's explain prompts)")
    if summary["too_few_prompts"]:
        line += (f"; {summary['too_few_prompts']} neurons have fewer than {settings.pair_min_prompts} "
                 f"explain prompts and keep none")
    lines.append(line)
    v = summary["verdict"]
    for x in v["explanations"]:
        c = x["vs_chance"]
        lines.append(f"  explained  {summary['explained_pairs'].get(x['explainer'], 0):,} pairs by "
                     f"{x['explainer']}; mean explanation score E of the {c['n'][0]} scored next-token pairs "
                     f"{_figure(c, 3)} (0.5 = chance; 95 % bootstrap interval)")
    words = []
    for x in v["explanations"]:
        words += [f"E above chance: {WORDS[x['vs_chance']['verdict']]}",
                  f"E above random neurons': {WORDS[x['vs_random']['verdict']]}"]
    for a in v["ablation"]:
        words += [f"{a['method']}-ablation drop larger where the head is active: "
                  f"{WORDS[a['drop']['verdict']]}",
                  f"that gap larger than random neurons': {WORDS[a['vs_random']['verdict']]}"]
    if words:
        lines.append("  verdict    " + "; ".join(words))
    lines.append(f"  next       lookups serve --db {db_shown}   then open http://{SERVE_HOST}:{SERVE_PORT}/")
    lines.append("  all figures: --summary-json FILE (also kept on the run, runs.summary)")
    return "\n".join(lines)
