"""Reading the authors' released experiment data (Neo, Cohen & Barez, commit ``b98f23e``,
``neuron_groups/experiment_data``) into plain Python, checking every field on the way.

The files, per model ``M`` (``gpt2-small``, ``gpt2-medium``, ``gpt2-large``), by step folder:

- ``1_next_token_neurons/*_M.json``: ``neurons``: ``"(layer, neuron)"`` → token, congruence.
- ``3_trimmed_texts/*_M.json`` / ``*_M_test.json``: per neuron, its top-30 documents:
  ``dataset_index``, ``og_act``, ``token_pos``, ``start_pos``, ``trunc_act`` (positions only).
- ``4_head_attributions/*_M.json`` / ``*_M_test.json``: per neuron, trimmed prompt text →
  the flat indices of its top-3 heads (``flat = layer * n_heads + head``), largest first.
- ``4_head_attributions/*_M_prompts.json``: the pairs the authors explained, with the
  neuron's training prompts split by the head (prompt + token).
- ``5_head_explanations/*_M_prompts_dict.json`` and ``*_prompts_results.jsonl``: the explain
  prompt of each pair, and GPT-4's answers (``[request, response]`` lines, completion order).
- ``6_explanation_eval/*_M_test_20.json``: per pair, classification prompt → shown held-out
  prompt; the answers are in the ``_test_prompts_results.jsonl`` and
  ``_test_prompts_10_results.jsonl`` files named after its ``classify_filepath``.

Rules that follow the authors' notebooks: tuple-repr keys; results joined to requests by
``messages[0].content``; a prompt sent twice keeps the answer of the *later* line (the
classification answers: the first file, then updated by the ``_10`` file); shown prompts carry
the neuron's token appended, stripped by its length.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from precompute.errors import LookupsError

MODELS = ("gpt2-small", "gpt2-medium", "gpt2-large")
_KEY = re.compile(r"^\((\d+(?:, \d+)*)\)$")


class PaperFormatError(LookupsError):
    """A file of the folder is not in the authors' format (the message names the file and the
    first field that does not fit)."""


def parse_key(key: str, n: int, where: str) -> tuple[int, ...]:
    """``"(9, 2209, 84)"`` → ``(9, 2209, 84)`` (``n`` integers).

    Raises:
        PaperFormatError: not a tuple repr of ``n`` non-negative integers.
    """
    m = _KEY.match(key) if isinstance(key, str) else None
    out = tuple(int(x) for x in m.group(1).split(", ")) if m else ()
    if len(out) != n:
        raise PaperFormatError(f"{where}: key {key!r} is not a tuple of {n} integers like "
                               f"{str(tuple(range(9, 9 + n)))!r}.")
    return out


def _need(obj, key, kind, where: str):
    """``obj[key]``, checked to be of type ``kind``."""
    if not isinstance(obj, dict) or key not in obj:
        raise PaperFormatError(f"{where}: missing field {key!r}.")
    v = obj[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise PaperFormatError(f"{where}: field {key!r} should be {getattr(kind, '__name__', kind)}, "
                               f"got {type(v).__name__}.")
    return v


def load_json(path: Path, rel: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PaperFormatError(f"{rel}: not a JSON file ({exc}).") from None


def load_results(path: Path, rel: str) -> dict[str, dict]:
    """A ``*_results.jsonl`` file of OpenAI's parallel-request script: request content →
    ``{"content", "finish_reason", "model", "error"}``; a later line wins."""
    out: dict[str, dict] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{rel} line {i}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PaperFormatError(f"{where}: not JSON ({exc}).") from None
        if not isinstance(item, list) or len(item) != 2:
            raise PaperFormatError(f"{where}: expected a [request, response] array.")
        request, response = item
        msgs = _need(request, "messages", list, f"{where} request")
        if not msgs:
            raise PaperFormatError(f"{where} request: 'messages' is empty.")
        content = _need(msgs[0], "content", str, f"{where} request messages[0]")
        if isinstance(response, list):  # the script's record of a request that failed for good
            out[content] = {"content": None, "finish_reason": None, "model": request.get("model"),
                            "error": "; ".join(map(str, response)) or "failed"}
            continue
        choices = _need(response, "choices", list, f"{where} response")
        if not choices:
            raise PaperFormatError(f"{where} response: 'choices' is empty.")
        msg = _need(choices[0], "message", dict, f"{where} response choices[0]")
        out[content] = {"content": _need(msg, "content", str, f"{where} response choices[0].message"),
                        "finish_reason": choices[0].get("finish_reason"),
                        "model": response.get("model"), "error": None}
    return out


@dataclass
class Record:
    """One step-3 record: a top document of a neuron and its trimmed prompt's position."""

    dataset_index: int
    og_act: float
    token_pos: int
    start_pos: int
    trunc_act: float

    @property
    def n_tokens(self) -> int:
        return self.token_pos - self.start_pos


@dataclass
class ModelFiles:
    """The files found for one model (paths relative to the folder; None when absent)."""

    model: str
    root: Path
    found: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def rel(self, role: str) -> str:
        return str(self.found[role].relative_to(self.root))


# role -> (step folder, file name suffix after "_<model>")
ROLES = {
    "neurons": ("1_next_token_neurons", ".json"),
    "trim": ("3_trimmed_texts", ".json"),
    "trim_test": ("3_trimmed_texts", "_test.json"),
    "attr": ("4_head_attributions", ".json"),
    "attr_test": ("4_head_attributions", "_test.json"),
    "pairs": ("4_head_attributions", "_prompts.json"),
    "expl_dict": ("5_head_explanations", "_prompts_dict.json"),
    "expl_results": ("5_head_explanations", "_prompts_results.jsonl"),
    "eval": ("6_explanation_eval", "_test_20.json"),
    "cls_results": ("6_explanation_eval", "_test_prompts_results.jsonl"),
    "cls_results_10": ("6_explanation_eval", "_test_prompts_10_results.jsonl"),
}
# A file named by another's ``prior_filename`` is preferred over the latest of its pattern.
_PRIOR = {"attr": "pairs", "attr_test": "eval", "trim": "attr", "trim_test": "attr_test"}


def find_files(root: Path, model: str) -> ModelFiles:
    """The authors' files of ``model`` under ``root`` (the ``experiment_data`` folder): per role
    the latest by name, unless the chain of ``prior_filename`` names another; the
    classification results are those named after the evaluation file's ``classify_filepath``."""
    mf = ModelFiles(model, root)
    for role, (folder, suffix) in ROLES.items():
        hits = sorted((root / folder).glob(f"*_{model}{suffix}"))
        if hits:
            mf.found[role] = hits[-1]
    for role in ("attr", "trim", "attr_test", "trim_test"):  # follow the chain back
        parent = _PRIOR[role]
        if parent in mf.found:
            prior = load_json(mf.found[parent], mf.rel(parent)).get("prior_filename") \
                if mf.found[parent].suffix == ".json" else None
            named = root / ROLES[role][0] / f"{prior}.json" if isinstance(prior, str) else None
            if named is not None and named.is_file():
                mf.found[role] = named
    if "eval" in mf.found:
        cf = load_json(mf.found["eval"], mf.rel("eval")).get("classify_filepath")
        if isinstance(cf, str) and cf.endswith("_20.jsonl"):
            base = Path(cf).name[:-len("_20.jsonl")]
            for role, name in (("cls_results", f"{base}_results.jsonl"),
                               ("cls_results_10", f"{base}_10_results.jsonl")):
                p = root / ROLES[role][0] / name
                if p.is_file():
                    mf.found[role] = p
    mf.missing = [f"{ROLES[r][0]}/*_{model}{ROLES[r][1]}" for r in ROLES if r not in mf.found]
    return mf


def read_neurons(mf: ModelFiles) -> list[tuple[int, int, str, float]]:
    """``[(layer, neuron, token, congruence)]`` in file order (layer by layer, congruence
    descending)."""
    rel = mf.rel("neurons")
    data = _need(load_json(mf.found["neurons"], rel), "neurons", dict, rel)
    out = []
    for k, v in data.items():
        layer, idx = parse_key(k, 2, f"{rel} neurons")
        out.append((layer, idx, _need(v, "token", str, f"{rel} neurons[{k!r}]"),
                    _need(v, "congruence", float, f"{rel} neurons[{k!r}]")))
    return out


def read_records(mf: ModelFiles, role: str) -> dict[tuple[int, int], list[Record]]:
    """Step-3 records per neuron, in file order (activation descending)."""
    rel = mf.rel(role)
    data = _need(load_json(mf.found[role], rel), "neuron_to_trunc_data", dict, rel)
    out = {}
    for k, recs in data.items():
        key = parse_key(k, 2, f"{rel} neuron_to_trunc_data")
        if not isinstance(recs, list):
            raise PaperFormatError(f"{rel}: neuron_to_trunc_data[{k!r}] should be a list of records.")
        out[key] = [Record(**{f: _need(r, f, t, f"{rel} neuron_to_trunc_data[{k!r}][{i}]")
                              for f, t in (("dataset_index", int), ("og_act", float), ("token_pos", int),
                                           ("start_pos", int), ("trunc_act", float))})
                    for i, r in enumerate(recs)]
    return out


def read_attributions(mf: ModelFiles, role: str, n_heads: int) -> dict[tuple[int, int], dict[str, list[int]]]:
    """Step-4 top-3 flat head indices per neuron and prompt text, in file order.

    Raises:
        PaperFormatError: a head index outside ``[0, layer * n_heads)`` (heads below the
            neuron's layer), or not a list of integers.
    """
    rel = mf.rel(role)
    data = _need(load_json(mf.found[role], rel), "head_attributions", dict, rel)
    out = {}
    for k, prompts in data.items():
        layer, idx = parse_key(k, 2, f"{rel} head_attributions")
        if not isinstance(prompts, dict):
            raise PaperFormatError(f"{rel}: head_attributions[{k!r}] should map prompt texts to heads.")
        for text, heads in prompts.items():
            if not (isinstance(heads, list) and heads and all(isinstance(h, int) and 0 <= h < layer * n_heads
                                                              for h in heads)):
                raise PaperFormatError(f"{rel}: head_attributions[{k!r}][{text[:40]!r}] should be flat "
                                       f"head indices in 0..{layer * n_heads - 1}, got {heads!r}.")
        out[(layer, idx)] = prompts
    return out


def read_pair_keys(mf: ModelFiles, role: str, field_: str | None) -> dict[tuple[int, int, int], object]:
    """A file keyed by ``"(layer, neuron, flat_head)"`` (under ``field_``, or at the top level)."""
    rel = mf.rel(role)
    data = load_json(mf.found[role], rel)
    data = _need(data, field_, dict, rel) if field_ else data
    if not isinstance(data, dict):
        raise PaperFormatError(f"{rel}: expected an object keyed by \"(layer, neuron, head)\".")
    return {parse_key(k, 3, f"{rel} {field_ or 'top level'}"): v for k, v in data.items()}
