"""Which of the authors' files form an experiment: the chains they made, found the way their
notebooks walked them (docs/method.md §7).

An **experiment** is one next-token neurons file (``1_next_token_neurons/*.json``) and the files
computed from it. The authors chained their files by name: each names its input in
``prior_filename`` (pairs → training attributions → training trimmed texts; the evaluation
mapping → held-out attributions → held-out trimmed texts), and some share a stem (the
explanations are named after the training attributions, the classification results after the
held-out attributions). The step-2 files that would link the trimmed texts to the neurons file
(``2_max_activating_texts``, 30+ MB each) are not needed: a file belongs to an experiment when
its ``parameters`` name the same model and layers and every neuron it holds (every pair's
neuron) is in the experiment's neurons file. Within an experiment a role is filled by the file
the chain names; a role nothing names is filled by the one file of that kind that fits, never
by the newest name; several that fit, or none, leave the role empty, and the run says why.

Slugs: the model's name (``gpt2-large``) for an experiment on the model's last layers (the
authors' main runs), else ``<model>-l<first>-<last>`` (``gpt2-large-l16-20``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from context_lookups.precompute.paper.files import Folder, PaperFormatError
from context_lookups.precompute.paper.format import (
    MODEL_OF,
    SHAPES,
    file_date,
    parameters,
    parse_key,
    read_explain_dict,
    read_pair_keys,
)

FOLDERS = ("1_next_token_neurons", "3_trimmed_texts", "4_head_attributions", "5_head_explanations",
           "6_explanation_eval", "7_head_ablation")
_MODEL = re.compile(r"gpt2-(?:small|medium|large|xl)")
_PKL_MODEL = re.compile(r"_(small|medium|large|xl)\.pkl$")

# role -> (what it is, what a run without it lacks)
ROLES = {
    "neurons": ("next-token neurons (1_next_token_neurons)", "nothing can be imported"),
    "trim": ("training trimmed texts (3_trimmed_texts)",
             "no document positions or activations for the explain prompts"),
    "attr": ("training head attributions (4_head_attributions)", "no explain prompts and no pairs"),
    "pairs": ("explained pairs (4_head_attributions/*_prompts*.json)",
              "the explained pairs are derived by the authors' rule (>25% of the prompts) instead of read"),
    "expl_dict": ("explain prompts (5_head_explanations/*_prompts_dict.json)", "no explanations: no E"),
    "expl_results": ("GPT-4's explanations (5_head_explanations/*_results.jsonl)", "no explanations: no E"),
    "trim_test": ("held-out trimmed texts (3_trimmed_texts/*_test.json)",
                  "no document positions or activations for the held-out prompts"),
    "attr_test": ("held-out head attributions (4_head_attributions/*_test.json)",
                  "no held-out prompts: no answers, no E, no ablation"),
    "cls_results": ("GPT-4's held-out answers (6_explanation_eval/*_results.jsonl)",
                    "no held-out answers: no E"),
    "ablation": ("head ablation (7_head_ablation/*.pkl)", "no ablation"),
    "eval": ("evaluation mapping (6_explanation_eval/*.json), read for its prior_filename",
             "the held-out attributions are found by their content"),
}


@dataclass
class FileInfo:
    """One file of the folder and what discovery read of it (``error``: why it cannot be
    used, one line)."""

    rel: str
    path: Path
    folder: str
    name: str
    kind: str
    model: str | None = None
    layers: tuple[int, ...] | None = None
    prior: str | None = None
    neurons: frozenset = frozenset()
    pairs: frozenset = frozenset()
    contents: frozenset = frozenset()  # hashes of request contents (explanation files)
    error: str | None = None

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def test(self) -> bool:
        return "_test" in self.stem

    @property
    def date(self) -> datetime | None:
        return file_date(self.name)


@dataclass
class Experiment:
    """One experiment: its neurons file, the file of each role (``roles``; classification
    results and explanation results may be several, applied in order), what is missing and
    why, and notes. ``error``: why it cannot be imported at all."""

    slug: str
    model: str | None
    layers: tuple[int, ...] = ()
    neurons: frozenset = frozenset()
    roles: dict[str, list[FileInfo]] = field(default_factory=dict)
    missing: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def file(self, role: str) -> FileInfo | None:
        got = self.roles.get(role) or []
        return got[0] if got else None

    def lack(self, role: str, reason: str) -> None:
        what, cost = ROLES[role]
        if not any(m["role"] == role for m in self.missing):
            self.missing.append({"role": role, "what": what, "cost": cost, "reason": reason})


def _h(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def _kind(folder: str, name: str) -> str | None:
    """The kind of a file from its folder and name (the content decides for step 4)."""
    if folder == "7_head_ablation":
        return "ablation" if name.endswith(".pkl") else None
    if name.endswith(".jsonl"):
        if folder in ("5_head_explanations", "6_explanation_eval"):
            if name.endswith("_results.jsonl"):
                return "expl_results" if folder[0] == "5" else "cls_results"
            return "requests"
        return None
    if not name.endswith(".json"):
        return None
    return {"1_next_token_neurons": "neurons", "3_trimmed_texts": "trimmed",
            "4_head_attributions": "pairs" if "_prompts" in name else "attributions",
            "5_head_explanations": "expl_dict" if name.endswith("_prompts_dict.json") else None,
            "6_explanation_eval": "eval"}.get(folder)


def _read(folder: Folder, info: FileInfo) -> None:
    """Fill ``info`` from the file (kind by content where the name does not say)."""
    if info.kind in ("requests", "cls_results"):  # read when imported (stem links only)
        folder.inside(info.path)
        return
    if info.kind == "ablation":
        from context_lookups.precompute.paper.pickled import read_ablation

        m = _PKL_MODEL.search(info.name)  # the model its name gives, even when it cannot be read
        info.model = MODEL_OF[m.group(1)] if m else None
        info.pairs = frozenset(read_ablation(folder.read_bytes(info.path), info.rel))
        return
    if info.kind == "expl_results":
        hashes = set()
        for i, item in folder.lines(info.path):
            try:
                hashes.add(_h(item[0]["messages"][0]["content"]))
            except (TypeError, KeyError, IndexError):
                raise PaperFormatError(f"{info.rel} line {i}: expected a [request, response] array whose "
                                       f"request has messages[0].content.") from None
        info.contents = frozenset(hashes)
        return
    data = folder.load_json(info.path)
    if not isinstance(data, dict):
        raise PaperFormatError(f"{info.rel}: holds {type(data).__name__}, not an object.")
    info.model, info.layers = parameters(data, info.rel)
    prior = data.get("prior_filename")
    info.prior = prior if isinstance(prior, str) else None
    field_of = {"neurons": "neurons", "trimmed": "neuron_to_trunc_data", "attributions": "head_attributions"}
    if info.kind == "attributions" and "nh_to_pos_neg_prompts" in data:
        info.kind = "pairs"
    if info.kind == "pairs" and "head_attributions" in data:
        info.kind = "attributions"
    if info.kind in field_of:
        items = data.get(field_of[info.kind])
        if not isinstance(items, dict):
            raise PaperFormatError(f"{info.rel}: missing field {field_of[info.kind]!r}.")
        info.neurons = frozenset(parse_key(k, 2, f"{info.rel} {field_of[info.kind]}") for k in items)
    elif info.kind == "pairs":
        info.pairs = frozenset(read_pair_keys(data, info.rel, "nh_to_pos_neg_prompts"))
    elif info.kind == "expl_dict":
        d = read_explain_dict(data, info.rel)
        info.pairs, info.contents = frozenset(d), frozenset(_h(p) for p in d.values())
    elif info.kind == "eval":
        info.pairs = frozenset(read_pair_keys(data, info.rel, "classify_prompts"))
    if info.model is None:
        m = _MODEL.search(info.name)
        info.model = m.group(0) if m else None


def scan(folder: Folder) -> list[FileInfo]:
    """Every file of the step folders with what discovery read of it, by path. Unreadable
    files are kept with their ``error``."""
    out = []
    for sub in FOLDERS:
        d = folder.root / sub
        if not d.is_dir():
            continue
        try:
            folder.inside(d)
        except PaperFormatError as exc:
            out.append(FileInfo(sub, d, sub, sub, "folder", error=str(exc)))
            continue
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            kind = _kind(sub, entry.name)
            if kind is None:
                continue
            info = FileInfo(f"{sub}/{entry.name}", Path(entry.path), sub, entry.name, kind)
            try:
                _read(folder, info)
            except PaperFormatError as exc:
                info.error = str(exc)
            if info.model is None:
                m = _MODEL.search(info.name)
                info.model = m.group(0) if m else None
            out.append(info)
    return out


def slug_of(model: str, layers: tuple[int, ...]) -> str:
    """``gpt2-large`` for the model's last layers, else ``gpt2-large-l16-20``."""
    n_layers = SHAPES[model][1]
    if layers and max(layers) == n_layers - 1:
        return model
    lo, hi = min(layers), max(layers)
    return f"{model}-l{lo}-{hi}" if list(layers) == list(range(lo, hi + 1)) else \
        f"{model}-l{'-'.join(map(str, layers))}"


def _fits(f: FileInfo, e: Experiment) -> bool:
    if f.model is not None and f.model != e.model:
        return False
    if f.layers is not None and f.kind != "ablation" and set(f.layers) != set(e.layers):
        return False
    keys = set(f.neurons) | {p[:2] for p in f.pairs}
    return bool(keys) and keys <= e.neurons


def find_experiments(folder: Folder) -> tuple[list[Experiment], list[FileInfo]]:
    """The experiments of the folder (importable or not, each with its files, missing roles
    and notes) and every file scanned.

    Orphan chains (trimmed texts, attributions or pairs of no neurons file) are experiments
    that cannot be imported, with the reason."""
    files = scan(folder)
    exps: list[Experiment] = []
    for f in (f for f in files if f.kind == "neurons"):
        if f.error:
            exps.append(Experiment(f"{f.model or 'unknown'} ({f.rel})", f.model, error=f.error))
            continue
        if f.model not in SHAPES or not f.layers:
            exps.append(Experiment(f"{f.model} ({f.rel})", f.model, error=(
                f"{f.rel}: parameters name model {f.model!r} and layers {f.layers}; the importer knows "
                f"{', '.join(SHAPES)} with their layers listed.")))
            continue
        e = Experiment(slug_of(f.model, f.layers), f.model, tuple(sorted(f.layers)), f.neurons,
                       roles={"neurons": [f]})
        if not set(f.neurons) or any(k[0] not in f.layers for k in f.neurons):
            e.notes.append(f"{f.rel}: its neurons and its parameters' layers {list(f.layers)} disagree.")
        exps.append(e)
    seen: dict[str, Experiment] = {}
    for e in exps:  # two experiments of one model and layers: the later ones get their date
        if e.error is None and e.slug in seen:
            d = e.file("neurons").date
            e.slug = f"{e.slug}-{d:%Y%m%d-%H%M%S}" if d else f"{e.slug}-{len(seen)}"
        seen.setdefault(e.slug, e)
    ok = [e for e in exps if e.error is None]
    owner: dict[str, Experiment] = {}
    for f in files:
        if f.error or f.kind in ("neurons", "requests", "cls_results", "folder"):
            continue
        fit = [e for e in ok if _fits(f, e)]
        if len(fit) == 1:
            owner[f.rel] = fit[0]
        elif len(fit) > 1:
            for e in fit:
                slugs = ", ".join(x.slug for x in fit)
                e.notes.append(f"{f.rel} fits several experiments ({slugs}); not used.")
    for e in ok:
        _assign(folder, e, [f for f in files if owner.get(f.rel) is e], files)
    used = {f.rel for e in ok for fs in e.roles.values() for f in fs}
    exps += _orphans([f for f in files if f.rel not in used and f.rel not in owner and not f.error
                      and f.kind in ("trimmed", "attributions", "pairs")])
    return exps, files


def _follow(folder: Folder, e: Experiment, src: FileInfo | None, sub: str, kind: str, test: bool,
            mine: list[FileInfo], files: list[FileInfo], role: str) -> FileInfo | None:
    """The file of ``role``: the one ``src`` names in ``prior_filename`` when it fits; else the
    one file of that kind that fits; else None (the reason goes to ``e.missing``)."""
    named = None
    if src is not None and src.prior is not None:
        try:
            p = folder.child(sub, src.prior + ".json")
        except PaperFormatError as exc:
            e.notes.append(f"{src.rel}: prior_filename {src.prior[:80]!r} is not a file name in {sub}/; "
                           f"link ignored ({exc}).")
            p = None
        else:
            rel = f"{sub}/{src.prior}.json"
            named = next((f for f in files if f.rel == rel), None)
            if p is None or named is None:
                e.lack(role, f"{rel}, named by {src.rel}, is not in the folder")
                return None
            if named.error:
                e.lack(role, named.error)
                return None
            if named not in mine or named.kind != kind:
                e.notes.append(f"{src.rel} names {rel}, which does not fit this experiment; not used.")
                named = None
    if named is not None:
        return named
    cands = [f for f in mine if f.kind == kind and f.test == test]
    if len(cands) == 1:
        return cands[0]
    if len(cands) > 1:
        e.lack(role, f"several files fit ({', '.join(f.rel for f in cands)}) and no file names one of them")
        return None
    broken = [f for f in files if f.error and f.folder == sub and f.model == e.model and f.test == test
              and f.kind == kind]
    e.lack(role, "; ".join(f.error for f in broken) if broken else "no such file in the folder")
    return None


def _assign(folder: Folder, e: Experiment, mine: list[FileInfo], files: list[FileInfo]) -> None:
    pairs = [f for f in mine if f.kind == "pairs"]
    if len(pairs) == 1:
        e.roles["pairs"] = pairs
    else:
        e.lack("pairs", f"several files fit ({', '.join(f.rel for f in pairs)})" if pairs else
               "; ".join(f.error for f in files if f.error and f.folder == "4_head_attributions"
                         and f.model == e.model and "_prompts" in f.name) or "no such file in the folder")
    attr = _follow(folder, e, e.file("pairs"), "4_head_attributions", "attributions", False, mine, files,
                   "attr")
    trim = _follow(folder, e, attr, "3_trimmed_texts", "trimmed", False, mine, files, "trim")
    # the held-out attributions: named by an evaluation mapping of this experiment, else by content
    evals = [f for f in mine if f.kind == "eval"]
    src = next((f for f in evals if f.prior and any(g.rel == f"4_head_attributions/{f.prior}.json"
                                                    and g in mine for g in files)), None)
    attr_test = _follow(folder, e, src, "4_head_attributions", "attributions", True, mine, files, "attr_test")
    trim_test = _follow(folder, e, attr_test, "3_trimmed_texts", "trimmed", True, mine, files, "trim_test")
    for role, f in (("attr", attr), ("trim", trim), ("attr_test", attr_test), ("trim_test", trim_test),
                    ("eval", src if attr_test is not None and src is not None
                     and src.prior == attr_test.stem else None)):
        if f is not None:
            e.roles[role] = [f]
    dicts = [f for f in mine if f.kind == "expl_dict"]
    named = [f for f in dicts if attr is not None and f.name == f"{attr.stem}_prompts_dict.json"]
    d = named or (dicts if len(dicts) == 1 else [])
    if d:
        e.roles["expl_dict"] = d[:1]
        res = [f for f in files if f.kind == "expl_results" and not f.error and f.contents & d[0].contents]
        if res:
            e.roles["expl_results"] = res
        else:
            bad = [f.error for f in files if f.kind == "expl_results" and f.error and f.model == e.model]
            e.lack("expl_results", "; ".join(bad) or "no results file answers its explain prompts")
    else:
        e.lack("expl_dict", f"several files fit ({', '.join(f.rel for f in dicts)})" if dicts else
               "; ".join(f.error for f in files if f.error and f.kind == "expl_dict" and f.model == e.model)
               or "no such file in the folder")
    if attr_test is not None:
        pre = f"{attr_test.stem}_prompts"
        cls = [f for f in files if f.kind == "cls_results" and f.name.startswith(pre)]
        cls.sort(key=lambda f: f.name[len(pre):-len("_results.jsonl")])  # "", "_10", "_20": as the authors
        if cls:
            e.roles["cls_results"] = cls
        else:
            e.lack("cls_results", f"no 6_explanation_eval/{pre}*_results.jsonl in the folder")
    elif "attr_test" not in e.roles:
        e.lack("cls_results", "the held-out attributions they refer to are missing")
    abl = [f for f in mine if f.kind == "ablation"]
    if len(abl) == 1:
        e.roles["ablation"] = abl
    elif abl:
        e.lack("ablation", f"several files fit ({', '.join(f.rel for f in abl)})")
    else:
        broken = [f for f in files if f.kind == "ablation" and f.error and f.model == e.model
                  and e.slug == e.model]
        e.lack("ablation", "; ".join(f.error for f in broken) or "no ablation file of these pairs")


def _orphans(files: list[FileInfo]) -> list[Experiment]:
    """Chains of trimmed texts / attributions / pairs that fit no neurons file, grouped by the
    names that link them: one experiment each, which cannot be imported."""
    parent = {f.rel: f.rel for f in files}

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    by_stem = {(f.folder, f.stem): f.rel for f in files}
    for f in files:
        for sub in ("3_trimmed_texts", "4_head_attributions"):
            other = by_stem.get((sub, f.prior)) if f.prior else None
            if other:
                parent[root(f.rel)] = root(other)
    keys = {f.rel: set(f.neurons) | {p[:2] for p in f.pairs} for f in files}
    for i, f in enumerate(files):  # the same model's neurons: the same experiment (training, held-out)
        for g in files[i + 1:]:
            if f.model == g.model and keys[f.rel] & keys[g.rel]:
                parent[root(f.rel)] = root(g.rel)
    groups: dict[str, list[FileInfo]] = {}
    for f in files:
        groups.setdefault(root(f.rel), []).append(f)
    out = []
    for fs in groups.values():
        model = next((f.model for f in fs if f.model), "unknown model")
        names = ", ".join(f.rel for f in fs[:3]) + (f" and {len(fs) - 3} more" if len(fs) > 3 else "")
        out.append(Experiment(f"{model} ({fs[0].rel})", model, error=(
            f"no neurons file (1_next_token_neurons/) lists the neurons of {names}; nothing of it can be "
            f"imported without the neurons' tokens")))
    return out
