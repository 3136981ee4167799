"""Benchmark of ``lookups import-paper`` (prints figures; not a test).

Imports the authors' data folder (default: ``$LOOKUPS_PAPER_DATA``, e.g. the GPT-2 small
sample's ``experiment_data``) into a fresh SQLite file ``--repeat`` times, then re-imports it
into the same file (which must change nothing), and prints the wall time of each (the schema
migration is done once beforehand and not counted), the bytes read and the rows written.

Usage:
    LOOKUPS_PAPER_DATA=/path/to/experiment_data python benchmarks/bench_import.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=os.environ.get("LOOKUPS_PAPER_DATA"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not args.path or not Path(args.path).is_dir():
        print("pass the authors' experiment_data folder (or set LOOKUPS_PAPER_DATA)", file=sys.stderr)
        return 2
    from context_lookups.precompute.paper.command import import_folder
    from context_lookups.precompute.store.db import open_writer, sessions

    n_bytes = sum(f.stat().st_size for f in Path(args.path).rglob("*") if f.is_file())
    tmp = Path(tempfile.mkdtemp())
    empty = tmp / "empty.db"
    open_writer(f"sqlite:///{empty}").dispose()  # migrated, no rows
    times, reimport = [], []
    for i in range(args.repeat):
        db = tmp / f"run{i}.db"
        shutil.copy(empty, db)
        engine = open_writer(f"sqlite:///{db}")
        Session = sessions(engine)
        t0 = time.perf_counter()
        res = import_folder(Session, args.path)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        again = import_folder(Session, args.path)
        reimport.append(time.perf_counter() - t0)
        assert all(r["unchanged"] for r in again)
        engine.dispose()
    c = sqlite3.connect(db)
    rows = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("neurons", "prompts", "pairs", "explanations", "classifications")}
    print(f"import-paper {args.path}")
    print(f"  models: {', '.join(r['model'] for r in res)}; {n_bytes / 1e6:.2f} MB read; rows {rows}")
    print(f"  import:    median {statistics.median(times):.3f} s, min {min(times):.3f} s "
          f"over {args.repeat} fresh databases ({sum(rows.values()) / statistics.median(times):,.0f} rows/s)")
    print(f"  re-import: median {statistics.median(reimport):.3f} s (digest check, nothing written)")
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
