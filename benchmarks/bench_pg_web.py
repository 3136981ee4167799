"""The explorer on PostgreSQL with several uvicorn workers (issue 11). Prints figures; not a test.

    python benchmarks/bench_pg_web.py --db postgresql+psycopg://USER@HOST:PORT/DB [--clients 8]

Starts ``uvicorn app.main:create_app --factory --workers W`` on loopback twice: once on the
PostgreSQL database and once on a SQLite copy of it (made here, same rows and ids), and times
neuron pages (selected neurons, HTML) from C concurrent clients, in interleaved rounds so both
see the same machine load. Prints p50/p95 end-to-end latency and pages/s per backend.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def copy_database(src: str, dst: str) -> None:
    """Every row of ``src`` into a new database ``dst`` (migrated first), ids kept."""
    from sqlalchemy import insert, select

    from context_lookups.precompute.store.db import connect, open_writer
    from context_lookups.precompute.store.schema import Base

    source, target = connect(src), open_writer(dst)
    with source.connect() as s, target.begin() as t:
        for table in Base.metadata.sorted_tables:
            rows = [dict(r) for r in s.execute(select(table)).mappings()]
            if rows:
                t.execute(insert(table), rows)
    source.dispose()
    target.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(db: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, LOOKUPS_DB_URL=db)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "context_lookups.app.main:create_app",
                             "--factory", "--workers", str(workers), "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/.json", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server on {db} did not start")


def round_(url: str, pages: list[str], clients: int, per_client: int, seed: int
           ) -> tuple[list[float], float, int]:
    """C clients, each GETting ``per_client`` random pages; returns latencies (ms), wall, errors."""
    ms: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        with httpx.Client(base_url=url, timeout=60) as h:
            for _ in range(per_client):
                t = time.perf_counter()
                r = h.get(rng.choice(pages))
                dt = (time.perf_counter() - t) * 1000
                with lock:
                    if r.status_code == 200:
                        ms.append(dt)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ms, time.perf_counter() - t0, errors[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True, help="PostgreSQL URL of a finished run")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=25)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        sqlite_url = f"sqlite:///{d}/copy.db"
        copy_database(a.db, sqlite_url)
        servers = {name: start(url, a.workers)
                   for name, url in (("PostgreSQL", a.db), ("SQLite", sqlite_url))}
        try:
            with httpx.Client(base_url=servers["PostgreSQL"][1], timeout=60) as h:
                slug = h.get("/.json").json()["runs"][0]["slug"]
                sel = h.get(f"/{slug}/neurons.json", params={"kind": "selected", "per_page": 500}).json()
                pages = [f"/{slug}/neurons/{n['layer']}/{n['neuron']}" for n in sel["neurons"]]
            for _, url in servers.values():  # warm-up: every page once, both workers
                with httpx.Client(base_url=url, timeout=60) as h:
                    for p in pages * 2:
                        h.get(p)
            res: dict[str, list] = {k: [[], 0.0, 0] for k in servers}
            for r in range(a.rounds):
                for name, (_, url) in servers.items():
                    ms, wall, err = round_(url, pages, a.clients, a.per_client, r)
                    res[name][0] += ms
                    res[name][1] += wall
                    res[name][2] += err
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    print(f"run {slug}: {len(pages)} selected neuron pages; {a.workers} uvicorn workers; {a.clients} "
          f"concurrent clients x {a.per_client} pages x {a.rounds} interleaved rounds; loopback")
    for name, (ms, wall, err) in res.items():
        ms.sort()
        print(f"{name:10s} neuron page p50 {statistics.median(ms):6.1f} ms  "
              f"p95 {ms[int(0.95 * (len(ms) - 1))]:6.1f} ms  {len(ms) / wall:6.1f} pages/s  errors {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
