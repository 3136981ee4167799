"""The fields of the authors' released experiment data (Neo, Cohen & Barez, commit ``b98f23e``,
``neuron_groups/experiment_data``), read from parsed files into plain Python and checked on the
way. Which files form an experiment is :mod:`precompute.paper.chains`; reading bytes safely is
:mod:`precompute.paper.files`.

The files, by step folder (``<stem>`` = ``<date>_<time>_<model>[...]``):

- ``1_next_token_neurons/<stem>.json``: ``parameters`` (``model_name``, ``layers``) and
  ``neurons``: ``"(layer, neuron)"`` → token, congruence.
- ``3_trimmed_texts/<stem>.json`` / ``<stem>_test.json``: per neuron, its top-30 documents:
  ``dataset_index``, ``og_act``, ``token_pos``, ``start_pos``, ``trunc_act`` (positions only).
- ``4_head_attributions/<stem>.json`` / ``<stem>_test.json``: per neuron, trimmed prompt text →
  the flat indices of its top-3 heads (``flat = layer * n_heads + head``), largest first.
- ``4_head_attributions/<stem>_prompts*.json``: ``nh_to_pos_neg_prompts``, the pairs the
  authors explained.
- ``5_head_explanations/<attribution stem>_prompts_dict.json`` and ``..._results.jsonl``: the
  explain prompt of each pair, and GPT-4's answers (``[request, response]`` lines, completion
  order).
- ``6_explanation_eval/<test attribution stem>_prompts*_results.jsonl``: GPT-4's Yes / No on
  the classification prompts; ``*.json`` files with ``classify_prompts`` map them to held-out
  prompts and name the test attribution file (``prior_filename``).
- ``7_head_ablation/*_{small,medium,large}.pkl``: :mod:`precompute.paper.pickled`.

Rules that follow the authors' notebooks: tuple-repr keys; results joined to requests by
``messages[0].content``; a prompt sent twice keeps the answer of the *later* line; shown
prompts carry the neuron's token appended, stripped by its length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from context_lookups.precompute.paper.files import NonFinite, PaperFormatError, check_number

__all__ = ["PaperFormatError", "Record", "parse_key", "read_neurons", "read_records", "read_attributions",
           "read_pair_keys", "read_explain_dict", "read_results", "file_date", "SHAPES", "MODEL_OF"]

# model name -> (Hugging Face name, n_layers, n_heads, d_mlp, d_model)
SHAPES = {"gpt2-small": ("gpt2", 12, 12, 3072, 768), "gpt2-medium": ("gpt2-medium", 24, 16, 4096, 1024),
          "gpt2-large": ("gpt2-large", 36, 20, 5120, 1280), "gpt2-xl": ("gpt2-xl", 48, 25, 6400, 1600)}
# the ablation files' suffixes (``..._noabs_small.pkl``) -> model
MODEL_OF = {"small": "gpt2-small", "medium": "gpt2-medium", "large": "gpt2-large", "xl": "gpt2-xl"}
MAX_TOKEN_CHARS = 200  # a vocabulary token (GPT-2's longest is 128 characters)

_KEY = re.compile(r"^\((\d{1,9}(?:, \d{1,9})*)\)$")
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_")


def parse_key(key: str, n: int, where: str) -> tuple[int, ...]:
    """``"(9, 2209, 84)"`` → ``(9, 2209, 84)`` (``n`` integers).

    Raises:
        PaperFormatError: not a tuple repr of ``n`` non-negative integers.
    """
    m = _KEY.match(key) if isinstance(key, str) else None
    out = tuple(int(x) for x in m.group(1).split(", ")) if m else ()
    if len(out) != n:
        raise PaperFormatError(f"{where}: key {str(key)[:60]!r} is not a tuple of {n} integers like "
                               f"{str(tuple(range(9, 9 + n)))!r}.")
    return out


def file_date(name: str) -> datetime | None:
    """The date and time a file name starts with (``2023-10-12_14-43-12_...``, the authors'
    local time), or None."""
    m = _DATE.match(name)
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S")
    except ValueError:
        return None


def need(obj, key, kind, where: str):
    """``obj[key]``, checked to be of type ``kind`` (``float``: a finite number).

    Raises:
        PaperFormatError: missing, of another type, or not finite (names ``where`` and ``key``).
    """
    if not isinstance(obj, dict) or key not in obj:
        raise PaperFormatError(f"{where}: missing field {key!r}.")
    v = obj[key]
    if kind is float:
        return check_number(v, where, key)
    if isinstance(v, NonFinite) or not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise PaperFormatError(f"{where}: field {key!r} should be {getattr(kind, '__name__', kind)}, "
                               f"got {type(v).__name__}.")
    return v


def parameters(data, where: str) -> tuple[str | None, tuple[int, ...] | None]:
    """``(model_name, layers)`` of a file's ``parameters`` block (None where absent)."""
    p = data.get("parameters") if isinstance(data, dict) else None
    if not isinstance(p, dict):
        return None, None
    model = p.get("model_name") if isinstance(p.get("model_name"), str) else None
    layers = p.get("layers")
    if not (isinstance(layers, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in layers)):
        layers = None
    return model, tuple(layers) if layers is not None else None


def read_neurons(data, rel: str, model: str) -> list[tuple[int, int, str, float]]:
    """``[(layer, neuron, token, congruence)]`` in file order (layer by layer, congruence
    descending), each checked to exist in ``model``.

    Raises:
        PaperFormatError: a field missing or of the wrong type, a non-finite congruence, a
            neuron outside the model, a token longer than any vocabulary entry.
    """
    _, n_layers, _, d_mlp, _ = SHAPES[model]
    items = need(data, "neurons", dict, rel)
    out = []
    for k, v in items.items():
        layer, idx = parse_key(k, 2, f"{rel} neurons")
        where = f"{rel} neurons[{k!r}]"
        if not (0 <= layer < n_layers and 0 <= idx < d_mlp):
            raise PaperFormatError(f"{rel}: neuron ({layer}, {idx}) does not exist in {model} "
                                   f"({n_layers} layers × {d_mlp} neurons).")
        token = need(v, "token", str, where)
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise PaperFormatError(f"{where}: field 'token' should be one vocabulary token, got "
                                   f"{len(token)} characters.")
        out.append((layer, idx, token, need(v, "congruence", float, where)))
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


_RECORD = (("dataset_index", int), ("og_act", float), ("token_pos", int), ("start_pos", int),
           ("trunc_act", float))


def read_records(data, rel: str) -> dict[tuple[int, int], list[Record]]:
    """Step-3 records per neuron, in file order (activation descending).

    Raises:
        PaperFormatError: a field missing, of the wrong type, negative or not finite.
    """
    items = need(data, "neuron_to_trunc_data", dict, rel)
    out = {}
    for k, recs in items.items():
        key = parse_key(k, 2, f"{rel} neuron_to_trunc_data")
        if not isinstance(recs, list):
            raise PaperFormatError(f"{rel}: neuron_to_trunc_data[{k!r}] should be a list of records.")
        rows = []
        for i, r in enumerate(recs):
            where = f"{rel} neuron_to_trunc_data[{k!r}][{i}]"
            vals = {f: need(r, f, t, where) for f, t in _RECORD}
            if min(vals["dataset_index"], vals["token_pos"], vals["start_pos"]) < 0 or \
                    vals["start_pos"] > vals["token_pos"]:
                raise PaperFormatError(f"{where}: positions should satisfy 0 <= start_pos <= token_pos, got "
                                       f"start_pos {vals['start_pos']}, token_pos {vals['token_pos']}.")
            rows.append(Record(**vals))
        out[key] = rows
    return out


def read_attributions(data, rel: str, n_heads: int) -> dict[tuple[int, int], dict[str, list[int]]]:
    """Step-4 top-3 flat head indices per neuron and prompt text, in file order.

    Raises:
        PaperFormatError: a head index outside ``[0, layer * n_heads)`` (heads below the
            neuron's layer), or not a non-empty list of integers.
    """
    items = need(data, "head_attributions", dict, rel)
    out = {}
    for k, prompts in items.items():
        layer, idx = parse_key(k, 2, f"{rel} head_attributions")
        if not isinstance(prompts, dict):
            raise PaperFormatError(f"{rel}: head_attributions[{k!r}] should map prompt texts to heads.")
        for text, heads in prompts.items():
            if not (isinstance(heads, list) and heads and len(heads) <= 16 and
                    all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h < layer * n_heads
                        for h in heads)):
                raise PaperFormatError(f"{rel}: head_attributions[{k!r}][{text[:40]!r}] should be flat "
                                       f"head indices in 0..{layer * n_heads - 1}, got {str(heads)[:60]}.")
        out[(layer, idx)] = prompts
    return out


def read_pair_keys(data, rel: str, field: str | None) -> dict[tuple[int, int, int], object]:
    """A file keyed by ``"(layer, neuron, flat_head)"`` (under ``field``, or at the top level).

    Raises:
        PaperFormatError: not an object, or a key that is not a pair.
    """
    items = need(data, field, dict, rel) if field else data
    if not isinstance(items, dict):
        raise PaperFormatError(f"{rel}: expected an object keyed by \"(layer, neuron, head)\".")
    return {parse_key(k, 3, f"{rel} {field or 'top level'}"): v for k, v in items.items()}


def read_explain_dict(data, rel: str) -> dict[tuple[int, int, int], str]:
    """``5_head_explanations/*_prompts_dict.json``: pair → the explain prompt sent to GPT-4.

    Raises:
        PaperFormatError: not pair keys, or a prompt that is not a string.
    """
    out = read_pair_keys(data, rel, None)
    for key, prompt in out.items():
        if not isinstance(prompt, str) or isinstance(prompt, NonFinite):
            raise PaperFormatError(f"{rel}[{str(key)!r}]: the explain prompt should be a string.")
    return out


def read_results(lines: list[tuple[int, object]], rel: str) -> dict[str, dict]:
    """A ``*_results.jsonl`` file of OpenAI's parallel-request script (lines from
    :meth:`Folder.lines`): request content → ``{"content", "finish_reason", "model", "error"}``;
    a later line wins.

    Raises:
        PaperFormatError: a line that is not ``[request, response]`` or lacks the fields read.
    """
    out: dict[str, dict] = {}
    for i, item in lines:
        where = f"{rel} line {i}"
        if not isinstance(item, list) or len(item) != 2:
            raise PaperFormatError(f"{where}: expected a [request, response] array.")
        request, response = item
        msgs = need(request, "messages", list, f"{where} request")
        if not msgs:
            raise PaperFormatError(f"{where} request: 'messages' is empty.")
        content = need(msgs[0], "content", str, f"{where} request messages[0]")
        model = request.get("model") if isinstance(request.get("model"), str) else None
        if isinstance(response, list):  # the script's record of a request that failed for good
            out[content] = {"content": None, "finish_reason": None, "model": model,
                            "error": "; ".join(map(str, response))[:500] or "failed"}
            continue
        choices = need(response, "choices", list, f"{where} response")
        if not choices:
            raise PaperFormatError(f"{where} response: 'choices' is empty.")
        msg = need(choices[0], "message", dict, f"{where} response choices[0]")
        fin = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
        out[content] = {"content": need(msg, "content", str, f"{where} response choices[0].message"),
                        "finish_reason": fin if isinstance(fin, str) else None,
                        "model": response.get("model") if isinstance(response.get("model"), str) else model,
                        "error": None}
    return out
