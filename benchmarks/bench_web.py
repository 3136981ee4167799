"""Benchmark of the web explorer (prints figures; not a test).

1. Neuron page latency: sequential GETs of random neuron pages (selected and unselected) of a
   run, p50/p95 (target p50 <= 10 ms with >= 1,000 neurons in the database).
2. Live pass latency: C concurrent clients (threads of this process; the server runs in another
   process) each sending live fragment requests with a ~64-token prompt, p50/p95 and the error
   count (targets p50 <= 50 ms, p95 <= 200 ms). Prompts are made distinct per request so the
   server's LRU cache does not answer them; a second round repeats one prompt (cached).

Usage:
    python benchmarks/bench_web.py --db sqlite:///lookups.db            # starts a server
    python benchmarks/bench_web.py --base-url http://127.0.0.1:8000     # uses a running one
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

TEXT = ("In the beginning the council met in the old hall by the river and argued about the "
        "harvest the roads the taxes and the new school while the children played outside and "
        "the rain fell softly on the roofs of the town until evening came and the lamps were lit "
        "one after another along the narrow streets where merchants closed their shops and went "
        "home to their families for supper and quiet conversation about the day")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summary(name: str, ms: list[float], errors: int, server: list[float] | None = None) -> None:
    if not ms:
        print(f"{name}: no successful request, {errors} errors")
        return
    print(f"{name}: n={len(ms)} p50={statistics.median(ms):.1f} ms p95={pct(ms, 0.95):.1f} ms "
          f"mean={statistics.fmean(ms):.1f} ms max={max(ms):.1f} ms errors={errors}")
    if server:
        print(f"  server-side (Server-Timing, excl. queueing in the client and the socket): "
              f"p50={statistics.median(server):.1f} ms p95={pct(server, 0.95):.1f} ms")


def server_ms(r: httpx.Response) -> float | None:
    st = r.headers.get("server-timing", "")
    return float(st.split("dur=")[1]) if "dur=" in st else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--db", db, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/openapi.json", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def neuron_pages(client: httpx.Client, slug: str, n: int, seed: int) -> None:
    info = client.get(f"/{slug}/neurons.json", params={"per_page": 1}).json()
    total = info["total"]
    selected = client.get(f"/{slug}/neurons.json", params={"kind": "selected", "per_page": 500}).json()["neurons"]
    rng = random.Random(seed)
    layers, d_mlp = info["run"]["layers"], info["run"]["d_mlp"]
    print(f"run {slug}: {total} neurons in scanned layers {layers} ({len(selected)} selected)")
    for kind, pick in (("selected", lambda: rng.choice(selected)),
                       ("any", lambda: {"layer": rng.choice(layers), "neuron": rng.randrange(d_mlp)})):
        if not selected and kind == "selected":
            continue
        ms, srv, errors = [], [], 0
        for _ in range(5):  # warm-up (tokenizer for unselected neurons' documents, caches)
            x = pick()
            client.get(f"/{slug}/neurons/{x['layer']}/{x['neuron']}")
        for _ in range(n):
            x = pick()
            t = time.perf_counter()
            r = client.get(f"/{slug}/neurons/{x['layer']}/{x['neuron']}")
            dt = (time.perf_counter() - t) * 1000
            if r.status_code == 200:
                ms.append(dt)
                srv.append(server_ms(r))
            else:
                errors += 1
        summary(f"neuron page ({kind} neurons)", ms, errors, [x for x in srv if x is not None])


def prompt_of(client: httpx.Client, url: str, tokens: int) -> str:
    """A prompt of about ``tokens`` tokens (measured by the server's tokenizer)."""
    words = TEXT.split()
    n = tokens
    for _ in range(6):
        text = " ".join((words * 4)[:n])
        got = client.get(url + ".json", params={"prompt": text}, timeout=300).json()["live"]["n_tokens"]
        if got == tokens:
            break
        n = max(1, n + (tokens - got))
    return text


def live(base: str, slug: str, clients: int, per_client: int, tokens: int, cached: bool) -> None:
    with httpx.Client(base_url=base, timeout=300) as c:
        sel = c.get(f"/{slug}/neurons.json", params={"kind": "next_token", "per_page": 1}).json()["neurons"] \
            or c.get(f"/{slug}/neurons.json", params={"per_page": 1}).json()["neurons"]
        n = sel[0]
        url = f"/{slug}/neurons/{n['layer']}/{n['neuron']}"
        prompt = prompt_of(c, url, tokens)
        heads = c.get(url + ".json").json()
    head = "L0H0"
    if heads.get("pairs"):
        head = heads["pairs"][0]["label"]
    ms: list[float] = []
    srv: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(w: int) -> None:
        with httpx.Client(base_url=base, timeout=300, headers={"HX-Request": "true"}) as c:
            for i in range(per_client):
                text = prompt if cached else f"{w}.{i}.{clients}: {prompt}"
                params = {"prompt": text}
                if i % 2:
                    params["ablate"] = head
                t = time.perf_counter()
                try:
                    r = c.get(url + "/live", params=params)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = (time.perf_counter() - t) * 1000
                with lock:
                    if ok:
                        ms.append(dt)
                        if server_ms(r) is not None:
                            srv.append(server_ms(r))
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    label = "cached" if cached else "uncached"
    summary(f"live pass, {tokens}-token prompt, {clients} concurrent clients, {label} "
            f"(half with {head} ablated)", ms, errors[0], srv)
    print(f"  throughput {len(ms) / wall:.1f} req/s over {wall:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", help="database URL: start a server on it (in another process)")
    ap.add_argument("--base-url", help="use a running server instead")
    ap.add_argument("--run", help="run slug (default: the first run)")
    ap.add_argument("--pages", type=int, default=300, help="neuron pages to time per kind")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pages-only", action="store_true", help="skip the live rounds")
    ns = ap.parse_args(argv)
    if not ns.db and not ns.base_url:
        ap.error("give --db or --base-url")
    proc = None
    base = ns.base_url
    if base is None:
        proc, base = start_server(ns.db)
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            runs = c.get("/.json").json()["runs"]
            slug = ns.run or runs[0]["slug"]
            neuron_pages(c, slug, ns.pages, ns.seed)
        if ns.pages_only:
            return 0
        live(base, slug, 1, ns.per_client, ns.tokens, cached=False)  # one pass, no queueing
        live(base, slug, ns.clients, ns.per_client, ns.tokens, cached=False)
        live(base, slug, ns.clients, ns.per_client, ns.tokens, cached=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
