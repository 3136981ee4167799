"""Compare two context-lookups databases table by table, row for row, time columns aside.

    python scripts/compare_dbs.py sqlite:///before.db sqlite:///after.db
    python scripts/compare_dbs.py before.db after.db          # a path is a SQLite file

Used to check that a change which should not alter results (a restructuring of the code) writes
the same default run as before it: build ``lookups precompute --db sqlite:///before.db`` on the
old code and ``--db sqlite:///after.db`` on the new, then compare them.

Every table of either database is read whole (SQLite's full-text shadow tables included) and its
rows are compared as sorted lists, exactly (floats, bytes and JSON text as stored). Time is left
out, since two runs never take the same time:

- columns of a date/time type, and number columns named ``seconds``;
- inside JSON columns, every key whose name says it holds a duration, a rate or a moment
  (:data:`TIME_KEY`: ``*seconds*``, ``*_per_s``, ``*_at``), at any depth.

Prints one line per table (rows in each, equal or how many rows differ, the columns set aside)
and the first differing rows of each unequal table; exits 0 when every table is equal, 1 when
some differ, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.types import JSON, Date, DateTime, Time

TIME_KEY = re.compile(r"seconds|_per_s$|(^|_)at$")
TIME_COLUMNS = {"seconds"}
SHOWN = 3  # differing rows printed per table


def engine_of(arg: str):
    """A read-only engine on ``arg``: an SQLAlchemy URL, or the path of an existing SQLite file.

    Raises:
        SystemExit: a path that does not exist (exit 2).
    """
    if "://" not in arg:
        if not Path(arg).is_file():
            raise SystemExit(f"error: {arg} is not a file; give a SQLite file or a database URL.")
        arg = f"sqlite:///{Path(arg).resolve()}"
    url = make_url(arg)
    if url.get_backend_name() == "sqlite":
        return create_engine(f"sqlite:///file:{url.database}?mode=ro&uri=true")
    return create_engine(url)


def strip_time(value):
    """``value`` (a parsed JSON value) without the keys :data:`TIME_KEY` matches, at any depth."""
    if isinstance(value, dict):
        return {k: strip_time(v) for k, v in value.items() if not TIME_KEY.search(str(k))}
    if isinstance(value, list):
        return [strip_time(v) for v in value]
    return value


def read_table(conn, name: str, columns: list[dict]) -> tuple[list[tuple], list[str]]:
    """The rows of table ``name`` with the time columns left out and JSON columns parsed and
    stripped of time keys, as sorted tuples of ``repr`` strings (so any mix of types sorts),
    and the names of the columns set aside."""
    keep, aside, jsons = [], [], set()
    for c in columns:
        if isinstance(c["type"], DateTime | Date | Time) or c["name"] in TIME_COLUMNS:
            aside.append(c["name"])
            continue
        keep.append(c["name"])
        if isinstance(c["type"], JSON):
            jsons.add(c["name"])
    if not keep:
        return [], aside
    cols = ", ".join(f'"{c}"' for c in keep)
    rows = []
    for r in conn.execute(text(f'SELECT {cols} FROM "{name}"')):
        out = []
        for c, v in zip(keep, r, strict=True):
            if c in jsons and v is not None:
                v = json.dumps(strip_time(json.loads(v) if isinstance(v, str) else v), sort_keys=True)
            out.append(repr(bytes(v)) if isinstance(v, memoryview) else repr(v))
        rows.append(tuple(out))
    return sorted(rows), aside


def tables(engine) -> dict[str, list[dict]]:
    """``{table: columns}`` of every table (views left out)."""
    insp = inspect(engine)
    return {t: insp.get_columns(t) for t in insp.get_table_names()}


def compare(a_arg: str, b_arg: str) -> bool:
    """Print the per-table comparison of two databases; True when every table is equal."""
    ea, eb = engine_of(a_arg), engine_of(b_arg)
    ta, tb = tables(ea), tables(eb)
    ok = True
    print(f"A: {a_arg}\nB: {b_arg}")
    print(f"{'table':<34}{'rows A':>10}{'rows B':>10}  result")
    with ea.connect() as ca, eb.connect() as cb:
        for name in sorted(set(ta) | set(tb)):
            if name not in ta or name not in tb:
                ok = False
                print(f"{name:<34}{'-' if name not in ta else '':>10}{'-' if name not in tb else '':>10}  "
                      f"only in {'B' if name not in ta else 'A'}")
                continue
            if [c["name"] for c in ta[name]] != [c["name"] for c in tb[name]]:
                ok = False
                print(f"{name:<34}{'':>10}{'':>10}  columns differ")
                continue
            ra, aside = read_table(ca, name, ta[name])
            rb, _ = read_table(cb, name, tb[name])
            note = f" (time columns aside: {', '.join(aside)})" if aside else ""
            if ra == rb:
                print(f"{name:<34}{len(ra):>10}{len(rb):>10}  equal{note}")
                continue
            ok = False
            only_a = Counter(ra) - Counter(rb)
            only_b = Counter(rb) - Counter(ra)
            print(f"{name:<34}{len(ra):>10}{len(rb):>10}  DIFFERENT: {sum(only_a.values())} rows only in A, "
                  f"{sum(only_b.values())} only in B{note}")
            for side, rows in (("A", only_a), ("B", only_b)):
                for r in list(rows)[:SHOWN]:
                    print(f"    only in {side}: {', '.join(r)[:300]}")
    ea.dispose()
    eb.dispose()
    print("all tables equal" if ok else "the databases differ")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="the first database: SQLAlchemy URL or SQLite file")
    ap.add_argument("b", help="the second database")
    ns = ap.parse_args(argv)
    try:
        return 0 if compare(ns.a, ns.b) else 1
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
