"""``lookups import-paper PATH [--db URL]``: find the experiments of PATH, import each as a run
(one transaction each), print what each run holds and lacks, and end with one table row per
experiment found.

Exit codes: 0 when every experiment found was imported at least partially (or was already);
1 when some could not be imported at all (each with its reason on one line); 2 when PATH holds
no experiment data (or is not a folder).
"""

from __future__ import annotations

import math
from pathlib import Path

from sqlalchemy import select

from context_lookups.precompute.paper.chains import Experiment, FileInfo, find_experiments
from context_lookups.precompute.paper.files import Folder, PaperFormatError
from context_lookups.precompute.paper.loader import load

EXIT_OK, EXIT_SOME_FAILED, EXIT_NO_DATA = 0, 1, 2


def import_folder(Session, path: str | Path) -> tuple[list[dict], list[FileInfo]]:
    """Import every experiment found under ``path`` (the ``experiment_data`` folder, or a
    folder holding it). Returns one outcome per experiment (``exp``, ``outcome``: imported /
    unchanged / not imported, ``reason``, ``counts``) and the files scanned.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
        PaperFormatError: no experiment data under ``path``.
    """
    from context_lookups.precompute.paper.importer import import_run

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: pass the authors' experiment_data folder.")
    if (root / "experiment_data").is_dir():
        root = root / "experiment_data"
    folder = Folder(root)
    exps, files = find_experiments(folder)
    if not exps:
        raise PaperFormatError(f"{root}: no experiment data found; expected the authors' experiment_data "
                               f"folder (1_next_token_neurons/, 3_trimmed_texts/, "
                               f"4_head_attributions/, ...).")
    out = []
    for e in exps:
        res = {"exp": e, "outcome": "not imported", "reason": e.error, "counts": {}}
        if e.error is None:
            try:
                data = load(folder, e)
                with Session() as s:
                    counts = import_run(s, data)
                res.update(outcome="unchanged" if counts.pop("unchanged") else "imported", counts=counts)
            except PaperFormatError as exc:
                res["reason"] = str(exc)
        out.append(res)
    return out, files


def _f(x, fmt=".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def run_figures(s, slug: str) -> dict:
    """What the table shows of an imported run: pairs explained / answered / ablated, E by
    the authors' rule, the ablation statistics (authors' and per prompt)."""
    from context_lookups.precompute.ablation.reads import ablation_table
    from context_lookups.precompute.findings.report import score_table
    from context_lookups.precompute.paper.importer import EXPLAINER
    from context_lookups.precompute.store.schema import Run

    run = s.scalar(select(Run).where(Run.slug == slug))
    t = score_table(s, run_id=run.id, explainer=EXPLAINER)["kinds"]["next_token"]
    abl = ablation_table(s, run_id=run.id, method="zero")["next_token"]
    return {"run": run, "E": t, "ablation": abl,
            "explained": t["explained"] - t["failed"],
            "answered": t["explained"] - t["failed"] - t["unanswered"]}


def import_command(path: str, db_url: str) -> int:
    """``lookups import-paper``: import, print per run what it holds and lacks, then the table.
    Returns the exit code (module docstring)."""
    from context_lookups.precompute.core.redact import mask_db_url
    from context_lookups.precompute.store.db import open_writer, sessions

    engine = open_writer(db_url)
    rows = []
    try:
        Session = sessions(engine)
        try:
            results, files = import_folder(Session, path)
        except PaperFormatError as exc:
            print(f"error: {exc}", file=__import__("sys").stderr)
            return EXIT_NO_DATA
        used = {f.rel for r in results for fs in r["exp"].roles.values() for f in fs}
        for r in results:
            e: Experiment = r["exp"]
            if r["outcome"] == "not imported":
                print(f"{e.slug}: not imported: {r['reason']}")
                rows.append((e.slug, "not imported", *["–"] * 7))
                continue
            with Session() as s:
                fig = run_figures(s, e.slug)
                status = fig["run"].status
                prov = fig["run"].provenance or {}
            c = r["counts"]
            print(f"{e.slug}: {r['outcome']} ({status}): {c.get('neurons', 0)} neurons, "
                  f"{c.get('prompts', 0)} prompts, {c.get('kept_pairs', 0)} kept pairs, "
                  f"{c.get('explanations', 0)} explanations ({c.get('truncated', 0)} cut at max_tokens), "
                  f"{c.get('classifications', 0)} answers, "
                  f"{c.get('ablated_pairs', 0)} pairs ablated")
            rep = c.get("repeated_prompts", 0)
            distinct = "each distinct within its neuron and split" if not rep else f"{rep} repeated"
            print(f"  prompts: {distinct} (the authors' files key prompts by text); their step-3 records "
                  f"under 100 tokens hold {c.get('records_merged', 0)} repeats beyond one per text, already "
                  f"merged into one prompt")
            t, au = fig["E"], fig["E"]["authors_rule"]
            if au["n"]:
                print(f"  E (authors' rule) {_f(au['mean'])} ± {_f(au['std'])} over {au['n']} pairs; "
                      f"project's rule {_f(t['mean'])} ± {_f(t['std'])} over {t['n']} two-class pairs")
            a = fig["ablation"]
            if a["n_prompts"]:
                ka, kp = a["authors"], a
                print(f"  ablation, authors' statistic (KS over per-pair mean drops): D {_f(ka['ks']['D'])}, "
                      f"p {_f(ka['ks']['p'], '.3g')} over {ka['active']['n']} / {ka['inactive']['n']} pairs; "
                      f"project's (KS over prompts): D {_f(kp['ks']['D'])}, "
                      f"p {_f(kp['ks']['p'], '.3g')} over "
                      f"{kp['active']['n']} / {kp['inactive']['n']} prompts")
            for m in prov.get("missing", []):
                print(f"  missing: {m['what']}: {m['cost']} ({m['reason']})")
            for d in prov.get("dropped", []):
                print(f"  not imported (over the limits): {d}")
            for note in prov.get("notes", []):
                print(f"  note: {note}")
            rows.append((e.slug, status if r["outcome"] == "imported" else "unchanged",
                         str(c.get("neurons", 0)), str(c.get("kept_pairs", 0)), str(fig["explained"]),
                         str(fig["answered"]), str(c.get("ablated_pairs", 0)),
                         f"{_f(au['mean'], '.3f')} ({au['n']})" if au["n"] else "–",
                         str(c.get("repeated_prompts", "–"))))
        for f in files:
            if f.error and f.rel not in used:
                print(f"not read: {f.error}")
    finally:
        engine.dispose()
    print(f"done: database {mask_db_url(db_url)}. Browse it with: lookups serve --db {mask_db_url(db_url)}")
    head = ("experiment", "status", "neurons", "pairs", "explained", "answered", "ablation", "E (authors')",
            "repeats")
    print("repeats: prompts repeated within a neuron and split (the project's rule would merge them; the "
          "authors' files hold none)")
    width = max([len(head[0])] + [len(r[0]) for r in rows])
    print(f"{head[0]:<{width}}  {head[1]:<12}" + "".join(f"{h:>10}" for h in head[2:7]) + f"  {head[7]:<12}"
          f"  {head[8]}")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:<12}" + "".join(f"{x:>10}" for x in r[2:7]) + f"  {r[7]:<12}  {r[8]}")
    return EXIT_SOME_FAILED if any(r["outcome"] == "not imported" for r in results) else EXIT_OK
