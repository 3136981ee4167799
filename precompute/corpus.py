"""Documents to scan: a local file or directory, or a Hugging Face dataset (docs/method.md §2).

The same function loads the embedded scan corpus (a directory of ``explain.jsonl.gz`` and
``heldout.jsonl.gz``) and ``NeelNanda/pile-10k`` for users with a network. The explorer uses two
disjoint splits: ``explain`` (find prompts, explain heads) and ``heldout`` (score explanations,
ablate heads).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterator

from context_lookups.precompute.core.errors import DatasetNotAvailable
from context_lookups.precompute.core.jsontext import nesting_depth

logger = logging.getLogger(__name__)

SPLITS = ("explain", "heldout")
MAX_DEPTH = 64  # JSON nesting levels of a corpus line (a document is {"text": ...}: 1)
MAX_LINE_BYTES = 32 * 1024 * 1024  # one JSON Lines record (a scan reads ~1,000 tokens of a document)
MAX_ARRAY_BYTES = 256 * 1024 * 1024  # a corpus given as one JSON array (.jsonl has no such limit)
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
        ds = {split: local_dataset(fs) for split, fs in files.items()}
    elif os.path.isfile(name):
        ds = {"train": local_dataset([name])}
    elif os.path.sep in name and name.count("/") != 1:
        raise DatasetNotAvailable(f"Dataset file {name!r} does not exist.")
    else:
        try:
            ds = datasets.load_dataset(name)
        except Exception as exc:
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


def read_texts(path: str) -> Iterator[str | None]:
    """The ``text`` of each record of a local corpus file (None for a record without a string
    ``text``), read with Python's own JSON parser: a ``.jsonl[.gz]`` file line by line (blank
    lines skipped), any other file as one JSON array of objects. Python's parser cannot crash on
    hostile input (nesting too deep is an error, where pyarrow's reader crashes the process).
    A line is read up to :data:`MAX_LINE_BYTES` (an array file up to :data:`MAX_ARRAY_BYTES`),
    so a small gzip that expands to one huge line is refused without holding it.

    A ``text`` holding a lone surrogate (JSON ``"\\ud800"``) is refused like a line that is not
    UTF-8: it is not Unicode text, cannot be written as UTF-8 (the datasets cache) nor
    tokenized as it is, and replacing it would scan a document the file does not hold.

    Raises:
        DatasetNotAvailable: the file is empty, unreadable, corrupt (gzip), not UTF-8, not JSON,
            nested too deeply, a line is too long, a record is not an object, or its text holds
            a lone surrogate; the message names the file and the 1-based line.
    """
    n, seen = 0, False
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as fh:
            if not path.endswith((".jsonl", ".jsonl.gz")):
                raw = fh.read(MAX_ARRAY_BYTES + 1)
                if len(raw) > MAX_ARRAY_BYTES:
                    raise DatasetNotAvailable(f"{path}: a JSON array file larger than "
                                              f"{MAX_ARRAY_BYTES >> 20} MB; give the corpus as JSON Lines "
                                              f"(.jsonl[.gz]), one document a line")
                records = _record(path, 1, raw)
                if not isinstance(records, list):
                    raise DatasetNotAvailable(f"{path}: a JSON {type(records).__name__}, not an array "
                                              f"of objects")
                for i, r in enumerate(records):
                    yield _text(path, f"record {i + 1}", r)
                if not records:
                    raise DatasetNotAvailable(f"{path} is empty")
                return
            for n, line in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), 1):
                if len(line) > MAX_LINE_BYTES:
                    raise DatasetNotAvailable(f"{path}, line {n}: longer than {MAX_LINE_BYTES >> 20} MB "
                                              f"(the limit of one document's line); shorten or split it")
                if line.strip():
                    seen = True
                    yield _text(path, f"line {n}", _record(path, n, line))
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a corrupt/truncated gzip
        where = f", line {n + 1}"
        raise DatasetNotAvailable(f"{path}{where}: cannot read it ({type(e).__name__}: {e})") from None
    if not seen:
        raise DatasetNotAvailable(f"{path} is empty")


def _record(path: str, n: int, raw: bytes):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetNotAvailable(f"{path}, line {n}: not UTF-8 (byte 0x{raw[e.start]:02x} at "
                                  f"column {e.start + 1})") from None
    if nesting_depth(raw, MAX_DEPTH) > MAX_DEPTH:  # before the parser can hit the recursion limit
        raise DatasetNotAvailable(f"{path}, line {n}: JSON nested too deeply (more than {MAX_DEPTH} levels)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetNotAvailable(f"{path}, line {n + e.lineno - 1}: not valid JSON ({e.msg}, "
                                  f"column {e.colno})") from None


def _text(path: str, where: str, record) -> str | None:
    if not isinstance(record, dict):
        raise DatasetNotAvailable(f"{path}, {where}: a JSON {type(record).__name__}, not an object")
    text = record.get("text")
    if not isinstance(text, str):
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DatasetNotAvailable(f"{path}, {where}: the text holds a lone surrogate "
                                  f"(\\u{ord(text[e.start]):04x} at character {e.start + 1}), which is not "
                                  f"Unicode text; fix or drop that record") from None
    return text


def local_dataset(paths: list[str]):
    """A Hugging Face dataset with the ``text`` column of local corpus files
    (:func:`read_texts`), written once to the datasets cache as memory-mapped Arrow (keyed by
    each file's path, size and modification time).

    Raises:
        DatasetNotAvailable: as :func:`read_texts`, naming the file and line.
    """
    import datasets

    stats = [(os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
    key = hashlib.sha256(json.dumps(["corpus-v2", stats]).encode()).hexdigest()[:16]
    try:
        return datasets.Dataset.from_generator(
            _texts_of, gen_kwargs={"paths": list(paths)}, fingerprint=key,
            features=datasets.Features({"text": datasets.Value("string")}))
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, DatasetNotAvailable):
            raise DatasetNotAvailable(str(cause)) from None
        raise


def _texts_of(paths: list[str]) -> Iterator[dict]:
    for p in paths:
        for text in read_texts(p):
            yield {"text": text}


def _pick(ds, aliases, name) -> str:
    for a in aliases:
        if a in ds:
            return a
    raise DatasetNotAvailable(f"Dataset {name!r} has splits {list(ds)}; expected one of "
                              f"{aliases}.")
