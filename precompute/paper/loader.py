"""One experiment's files read into plain Python (before anything is written): each role's
file is read and checked on its own, and a file that cannot be used leaves its role empty
with the reason (the run is then partial), so one broken file never stops the rest.

Caps on what one neuron may bring (the authors' files: 30 prompts per neuron and split, texts
under 100 tokens, at most 40 neurons per layer): :data:`MAX_PROMPTS`, :data:`MAX_TEXT_CHARS`,
:data:`MAX_NEURONS_PER_LAYER`; what goes beyond is not imported and is listed in ``dropped``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from context_lookups.precompute.paper.chains import Experiment
from context_lookups.precompute.paper.files import Folder, PaperFormatError
from context_lookups.precompute.paper.format import (
    SHAPES,
    Record,
    read_attributions,
    read_explain_dict,
    read_neurons,
    read_pair_keys,
    read_records,
    read_results,
)

MAX_PROMPTS = 100  # prompts per neuron and split (the authors: 30)
MAX_TEXT_CHARS = 5000  # characters per prompt text (the authors': under 100 tokens)
MAX_NEURONS_PER_LAYER = 200  # next-token neurons per layer (the authors: at most 40)


@dataclass
class Loaded:
    """What was read of one experiment. ``texts[split][neuron]``: every prompt text of the
    attribution file in file order (the authors' order, used to match records and ablation
    values); ``keep[split][neuron]``: the indices of those imported (within the caps)."""

    exp: Experiment
    neurons: list[tuple[int, int, str, float]] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)  # split -> neuron -> [Record]
    attrs: dict[str, dict] = field(default_factory=dict)  # split -> neuron -> {text: [flat heads]}
    keep: dict[str, dict] = field(default_factory=dict)  # split -> neuron -> [index]
    pairs: set | None = None  # the explained pairs (None: the pairs file is missing)
    explain_prompts: dict = field(default_factory=dict)  # pair -> explain prompt
    explanations: dict = field(default_factory=dict)  # explain prompt -> result
    answers: dict = field(default_factory=dict)  # classification prompt -> result
    ablation: dict | None = None  # pair -> values (pickled.read_ablation)
    dropped: list[str] = field(default_factory=list)
    digest: str = ""


def _read(folder: Folder, e: Experiment, role: str, fn, sink: dict) -> object | None:
    """``fn(file)`` for the role's file(s), or None with the reason in ``e.missing``."""
    files = e.roles.get(role) or []
    if not files:
        return None
    try:
        out = [fn(f) for f in files]
    except PaperFormatError as exc:
        e.roles.pop(role, None)
        e.lack(role, str(exc))
        return None
    for f in files:
        sink[f"{role}:{f.rel}"] = f
    return out if len(out) > 1 else out[0]


def load(folder: Folder, e: Experiment) -> Loaded:
    """Read every role of ``e``.

    Raises:
        PaperFormatError: the neurons file cannot be read (nothing of the experiment can be
            imported without it).
    """
    model = e.model
    n_heads = SHAPES[model][2]
    out = Loaded(e)
    used: dict = {}
    raw: dict[str, bytes] = {}

    def data(f):
        raw[f.rel] = b = folder.read_bytes(f.path)
        return folder.load_json(f.path, b)

    nf = e.file("neurons")
    out.neurons = read_neurons(data(nf), nf.rel, model)
    used[f"neurons:{nf.rel}"] = nf
    by_layer: dict[int, int] = {}
    kept = []
    for row in out.neurons:
        by_layer[row[0]] = by_layer.get(row[0], 0) + 1
        if by_layer[row[0]] <= MAX_NEURONS_PER_LAYER:
            kept.append(row)
    if len(kept) < len(out.neurons):
        out.dropped.append(f"{len(out.neurons) - len(kept)} neurons beyond the first {MAX_NEURONS_PER_LAYER} "
                           f"of a layer (the authors: at most 40)")
    out.neurons = kept
    known = {(row[0], row[1]) for row in kept}
    for split, trole, arole in (("explain", "trim", "attr"), ("heldout", "trim_test", "attr_test")):
        recs = _read(folder, e, trole, lambda f: read_records(data(f), f.rel), used)
        attrs = _read(folder, e, arole, lambda f: read_attributions(data(f), f.rel, n_heads), used)
        out.records[split] = {k: v for k, v in (recs or {}).items() if k in known}
        out.attrs[split] = {k: v for k, v in (attrs or {}).items() if k in known}
        out.keep[split] = {}
        for key, texts in out.attrs[split].items():
            ok = [i for i, t in enumerate(texts) if len(t) <= MAX_TEXT_CHARS]
            if len(ok) < len(texts):
                out.dropped.append(f"L{key[0]}N{key[1]} {split}: {len(texts) - len(ok)} prompt texts "
                                   f"longer than {MAX_TEXT_CHARS} characters")
            if len(ok) > MAX_PROMPTS:
                out.dropped.append(f"L{key[0]}N{key[1]} {split}: {len(ok) - MAX_PROMPTS} prompts "
                                   f"beyond the first {MAX_PROMPTS} (the authors: 30)")
                ok = ok[:MAX_PROMPTS]
            out.keep[split][key] = ok
    pairs = _read(folder, e, "pairs", lambda f: read_pair_keys(data(f), f.rel, "nh_to_pos_neg_prompts"), used)
    if pairs is not None:
        bad = _pairs_problem(pairs, out, n_heads)
        if bad:
            e.roles.pop("pairs", None)
            used = {k: v for k, v in used.items() if not k.startswith("pairs:")}
            e.lack("pairs", bad)
        else:
            out.pairs = set(pairs)
    d = _read(folder, e, "expl_dict", lambda f: read_explain_dict(data(f), f.rel), used)
    res = _read(folder, e, "expl_results", lambda f: read_results(_lines(folder, f, raw), f.rel), used)
    if d is not None and res is not None:
        out.explain_prompts = {k: v for k, v in d.items() if k[:2] in known}
        for r in res if isinstance(res, list) else [res]:  # later files win, as later lines do
            out.explanations.update(r)
    cls = _read(folder, e, "cls_results", lambda f: read_results(_lines(folder, f, raw), f.rel), used)
    for r in (cls if isinstance(cls, list) else [cls] if cls else []):  # the authors' dict, then .update
        out.answers.update(r)
    if "ablation" in e.roles:
        from context_lookups.precompute.paper.pickled import read_ablation

        out.ablation = _read(folder, e, "ablation",
                             lambda f: read_ablation(_raw(folder, f, raw), f.rel), used)
    h = hashlib.sha256(b"paper-import-2\0")
    for key in sorted(used):
        f = used[key]
        h.update(key.encode() + b"\0" + hashlib.sha256(raw[f.rel]).digest())
    out.digest = h.hexdigest()
    return out


def _raw(folder: Folder, f, raw: dict) -> bytes:
    raw[f.rel] = b = folder.read_bytes(f.path)
    return b


def _lines(folder: Folder, f, raw: dict):
    from context_lookups.precompute.paper.files import loads

    b = _raw(folder, f, raw)
    return [(i, loads(line, f"{f.rel} line {i}")) for i, line in enumerate(b.split(b"\n"), 1) if line.strip()]


def _pairs_problem(pairs: dict, out: Loaded, n_heads: int) -> str | None:
    """Why the pairs file does not fit the training attributions (None when it does)."""
    rel = out.exp.file("pairs").rel
    train = out.attrs.get("explain", {})
    for (layer, idx, h) in pairs:
        if not 0 <= h < layer * n_heads:
            return f"{rel}: pair {(layer, idx, h)} names head {h}, outside 0..{layer * n_heads - 1}"
        texts = train.get((layer, idx))
        if texts is not None and not any(h in heads for heads in texts.values()):
            return (f"{rel}: pair {(layer, idx, h)} has no head {h} in the top 3 of any training prompt of "
                    f"its neuron")
    return None


def prompt_records(texts: list[str], records: list[Record] | None) -> list[Record | None]:
    """The step-3 record of each text, matched by position: only when the neuron's records
    under 100 tokens and its texts are equally many (duplicate texts collapse into one key, so
    otherwise the match is unknown); else None for every text."""
    recs = [r for r in records or [] if r.n_tokens < 100]
    if records is None or len(recs) != len(texts):
        return [None] * len(texts)
    return list(recs)
