"""Documents to scan: a local file or directory, or a Hugging Face dataset (docs/method.md §2).

The same function loads the embedded scan corpus (a directory of ``explain.jsonl.gz`` and
``heldout.jsonl.gz``) and ``NeelNanda/pile-10k`` for users with a network. The explorer uses two
disjoint splits: ``explain`` (find prompts, explain heads) and ``heldout`` (score explanations,
ablate heads).
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
from contextlib import contextmanager

from precompute.errors import DatasetNotAvailable

logger = logging.getLogger(__name__)

SPLITS = ("explain", "heldout")
_ALIASES = {"explain": ("explain", "train"), "heldout": ("heldout", "test", "validation")}


def load_corpus(name: str, *, n_docs: int | None = None, seed: int = 0) -> dict:
    """Load the two scan splits of a corpus as lists of document texts.

    Args:
        name: a directory with ``explain``/``heldout`` (or ``train``/``test``) JSON Lines files
            (optionally gzip-compressed), a single ``.jsonl[.gz]`` file, or a Hugging Face
            dataset name (``NeelNanda/pile-10k``). Records need a ``text`` field.
        n_docs: keep at most this many documents per split (the first ones).
        seed: seed of the split when the source has only one split (2/3 explain, 1/3 heldout).

    Returns:
        ``{"explain": Dataset, "heldout": Dataset}``: disjoint Hugging Face datasets (memory-
        mapped Arrow, so memory does not grow with the corpus) with a ``text`` column, empty
        documents removed.

    Raises:
        DatasetNotAvailable: the source cannot be read, has no ``text`` field, or is empty; for
            a local file the message names the file and the line at fault.
    """
    import datasets

    datasets.disable_progress_bars()
    local: list[str] = []
    try:
        if os.path.isdir(name):
            files = {}
            for split, aliases in _ALIASES.items():
                for alias in aliases:
                    found = sorted(glob.glob(os.path.join(name, f"{alias}.jsonl*")) +
                                   glob.glob(os.path.join(name, f"{alias}.json")))
                    if found:
                        files[split] = found
                        break
            if not files:
                raise DatasetNotAvailable(f"Directory {name!r} holds no explain.jsonl[.gz] / "
                                          f"heldout.jsonl[.gz] (or train/test) files.")
            local = [f for fs in files.values() for f in fs]
            with _quiet_json_loader():
                ds = datasets.load_dataset("json", data_files=files)
        elif os.path.isfile(name):
            local = [name]
            with _quiet_json_loader():
                ds = datasets.load_dataset("json", data_files={"train": [name]})
        elif os.path.sep in name and not name.count("/") == 1:
            raise DatasetNotAvailable(f"Dataset file {name!r} does not exist.")
        else:
            ds = datasets.load_dataset(name)
    except DatasetNotAvailable:
        raise
    except Exception as exc:
        if local:  # say which file and line, not "offline"
            problem = local_file_problem(local) or f"{type(exc).__name__}: {str(exc)[:200]}"
            raise DatasetNotAvailable(f"Cannot read the corpus: {problem}. Each line must be a "
                                      f"JSON object with a 'text' field; fix the file or pass "
                                      f"another --dataset.") from exc
        raise DatasetNotAvailable(
            f"Cannot load dataset {name!r} ({type(exc).__name__}: {str(exc)[:200]}). Offline, "
            f"only local data can be used: run without --dataset for the embedded scan corpus, "
            f"or pass a .jsonl[.gz] file with a 'text' field.") from exc
    if "explain" not in ds or "heldout" not in ds:
        first = ds[next(iter(ds))] if len(ds) == 1 else None
        if first is not None:
            parts = first.train_test_split(test_size=1 / 3, seed=seed, shuffle=True)
            ds = {"explain": parts["train"], "heldout": parts["test"]}
        else:
            ds = {"explain": ds[_pick(ds, _ALIASES["explain"], name)],
                  "heldout": ds[_pick(ds, _ALIASES["heldout"], name)]}
    out = {}
    for split in SPLITS:
        part = ds[split]
        if "text" not in part.column_names:
            raise DatasetNotAvailable(f"Dataset {name!r} has no 'text' field "
                                      f"(columns: {part.column_names}).")
        if n_docs is not None:
            part = part.select(range(min(n_docs, len(part))))
        part = part.filter(lambda r: isinstance(r["text"], str) and bool(r["text"].strip()))
        if len(part) == 0:
            raise DatasetNotAvailable(f"Dataset {name!r}: split {split!r} has no non-empty "
                                      f"documents. Give a corpus with text in both splits.")
        out[split] = part.select_columns(["text"])
    logger.info("corpus %s: %d explain, %d heldout documents", name, len(out["explain"]),
                len(out["heldout"]))
    return out


def local_file_problem(paths: list[str]) -> str | None:
    """The first problem of local corpus files, naming the file (and the 1-based line): an
    empty file, a line of a ``.jsonl[.gz]`` file that is not a JSON object, a ``.json`` file
    that does not parse, an unreadable or undecodable file. None if every file reads."""
    for path in paths:
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as fh:
                if not path.endswith((".jsonl", ".jsonl.gz")):  # one JSON document
                    text = fh.read()
                    if not text.strip():
                        return f"{path} is empty"
                    try:
                        json.loads(text)
                    except json.JSONDecodeError as e:
                        return f"{path}, line {e.lineno}: not valid JSON ({e.msg})"
                    continue
                seen = False
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    seen = True
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        return f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno})"
                    if not isinstance(record, dict):
                        return f"{path}, line {n}: a JSON {type(record).__name__}, not an object"
                if not seen:
                    return f"{path} is empty"
        except (OSError, UnicodeDecodeError, EOFError) as e:  # unreadable, bad gzip, not UTF-8
            return f"{path}: {e}"
    return None


@contextmanager
def _quiet_json_loader():
    """Silence the datasets JSON loader's own error log while loading local files: the error
    is reported once, by :func:`local_file_problem`, with the file and line."""
    log = logging.getLogger("datasets.packaged_modules.json.json")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _pick(ds, aliases, name) -> str:
    for a in aliases:
        if a in ds:
            return a
    raise DatasetNotAvailable(f"Dataset {name!r} has splits {list(ds)}; expected one of "
                              f"{aliases}.")
