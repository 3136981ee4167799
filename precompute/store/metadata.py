"""Datasette's ``metadata.json`` for a context-lookups database (``lookups db metadata``).

Datasette opens the database as it is; this file adds a description to every table and column
and the units of the columns that have one. Everything comes from :mod:`precompute.store.schema`:
table descriptions from the mapped classes' docstrings, column descriptions from each column's
``doc=``, units from ``info["unit"]``; a key column without a ``doc`` is described by what it
refers to.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from sqlalchemy import Column
from sqlalchemy.engine import make_url

from context_lookups.precompute.store.schema import SEARCH_TABLES, Base

# The FTS5 index of migration 0004_search (SQLite only) and the shadow tables FTS5 keeps it in.
_FTS5_SHADOW = {
    "data": ("FTS5 index storage (internal)", {"id": "block id", "block": "index b-tree block"}),
    "idx": ("FTS5 segment index (internal)", {"segid": "segment id", "term": "first term of the page",
                                              "pgno": "page number"}),
    "docsize": ("FTS5 token counts per row (internal)", {"id": "row id of the indexed table",
                                                         "sz": "token counts, varint-encoded"}),
    "config": ("FTS5 settings (internal)", {"k": "setting", "v": "value"}),
}


def search_tables() -> dict:
    """Descriptions of the full-text search tables of a SQLite database (docs/method.md §9):
    the FTS5 index of each indexed table's ``text`` and its shadow tables (hidden)."""
    out = {}
    for fts, table in SEARCH_TABLES.items():
        out[fts] = {"description": f"full-text index (FTS5, Porter stemming) of {table}.text, kept "
                                   f"current by triggers; rowid = {table}.id",
                    "columns": {"text": f"the {table} row's text, as indexed"}}
        for suffix, (doc, cols) in _FTS5_SHADOW.items():
            out[f"{fts}_{suffix}"] = {"description": doc, "columns": cols, "hidden": True}
    return out


def column_description(col: Column) -> str:
    """The column's ``doc``; for an undocumented key, what it refers to."""
    if col.doc:
        return col.doc
    fks = list(col.foreign_keys)
    if fks:
        target = fks[0].column
        return f"the {target.table.name} row it belongs to ({target.table.name}.{target.name})"
    if col.primary_key:
        return "row id (primary key)"
    raise ValueError(f"column {col.table.name}.{col.name} has no doc= in precompute/store/schema.py")


def database_name(db_url: str) -> str:
    """The name Datasette gives the database: the SQLite file's stem (``lookups.db`` →
    ``lookups``), or the database name of another backend."""
    url = make_url(db_url)
    name = url.database or "lookups"
    return Path(name).stem if url.get_backend_name() == "sqlite" else name


def datasette_metadata(db_url: str) -> dict:
    """The metadata dict: ``{"title", "description", "databases": {name: {"tables": {table:
    {"description", "columns": {column: description}, "units": {column: unit}}}}}}``.

    Raises:
        ValueError: a column of the schema has no description.
    """
    tables = {}
    for mapper in sorted(Base.registry.mappers, key=lambda m: m.local_table.name):
        table = mapper.local_table
        doc = inspect.cleandoc(mapper.class_.__doc__ or "")
        entry = {"description": " ".join(doc.split()),
                 "columns": {c.name: column_description(c) for c in table.columns}}
        units = {c.name: c.info["unit"] for c in table.columns if c.info.get("unit")}
        if units:
            entry["units"] = units
        tables[table.name] = entry
    if make_url(db_url).get_backend_name() == "sqlite":
        tables.update(search_tables())
    return {"title": "context-lookups",
            "description": "Next-token neurons, the attention heads that switch them on, their "
                           "explanations and ablations (Neo, Cohen & Barez, Interpreting Context "
                           "Look-ups in Transformers, EMNLP 2024). Written by `lookups precompute`.",
            "source": "context-lookups", "databases": {database_name(db_url): {"tables": tables}}}


MAX_METADATA_BYTES = 10_000_000  # ours are ~10 kB; anything far larger is not one


def check_output(path: str) -> None:
    """``lookups db metadata -o PATH`` may write ``path``: it does not exist, is empty, or is a
    metadata file this command wrote before (JSON with ``"source": "context-lookups"`` and
    ``"databases"``). Anything else (the database itself, another file) is never overwritten.

    Raises:
        BadSettings: ``path`` is a directory, or an existing file that is not such a metadata file.
    """
    import json

    from context_lookups.precompute.core.errors import BadSettings

    p = Path(path)
    if p.is_dir():
        raise BadSettings(f"-o {path} is a directory: name a file, e.g. -o {p / 'metadata.json'}.")
    if not p.exists() or p.stat().st_size == 0:
        return
    previous = None
    if p.is_file() and p.stat().st_size <= MAX_METADATA_BYTES:
        try:
            previous = json.loads(p.read_bytes().decode("utf-8"))
        except (ValueError, OSError):  # not UTF-8 or not JSON (e.g. a SQLite file)
            previous = None
    if not (isinstance(previous, dict) and previous.get("source") == "context-lookups"
            and isinstance(previous.get("databases"), dict)):
        raise BadSettings(f"-o {path} exists and is not a metadata file written by `lookups db "
                          f"metadata`: it was not overwritten. Give -o a new file name (e.g. "
                          f"metadata.json).")
