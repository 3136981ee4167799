"""Benchmark of the web explorer (prints figures; not a test). Issue 13 items 4 and 5.

1. Neuron pages: sequential GETs of random neuron pages (selected and any), end-to-end and
   server-side (``Server-Timing``) p50/p95. Goals: server-side p50 <= 5 ms, end to end <= 8 ms.
2. Live passes on uncached ~64-token prompts (each request's prompt is distinct, so the LRU
   cache does not answer), each compared with the bare Hugging Face forward pass
   (``AutoModelForCausalLM``, no hooks, logits included) of the same model on the same token
   rows, measured in this process between the rounds, at the server's torch thread count:
   - start-up: seconds until ``/healthz`` says ready, the first live pass vs a steady one
     (goal <= 2x);
   - 1 client: p50 vs the bare forward of one prompt (goal <= 3x bare + 5 ms); the same for
     ``/fire`` (which neurons fire on the text: every analysed neuron, the page rendered);
   - 8 clients: live tokens/s vs bare batched tokens/s (8 rows; goal >= 0.5x), p95 <= 200 ms;
     then the same with requests spread over neurons and half of them ablating a head;
   - the look-up (issue 20): 1 client, live passes alternating without and with a head
     selected (``&head=``: its per-source decomposition, docs/method.md §3), p50 of each and
     their ratio (goal <= 1.2);
   - 60 clients: errors (goal 0), the server's peak RSS (goal <= 2 GB) and a plain page's
     latency meanwhile (goal <= 50 ms).
3. ``--load-figures`` (issue 27 item 3, the live model in its own process): only the two figures
   of the web process's load, ``--rounds`` times in turn with the load average of each round:
   8 concurrent live clients vs the bare batched forward of the same 8 prompts (goal >= 0.8x),
   and a plain neuron page's p95 while 60 clients run live passes (goal <= 20 ms).

Usage:
    python benchmarks/bench_web.py --db sqlite:///lookups.db        # starts a server
    python benchmarks/bench_web.py --base-url http://127.0.0.1:8000 # a running one (no RSS)
    python benchmarks/bench_web.py --db sqlite:///lookups.db --load-figures --rounds 3
"""

from __future__ import annotations

import argparse
import os
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
    if not xs:  # every request failed: the errors are printed beside it
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summary(name: str, ms: list[float], errors: int, server: list[float] | None = None) -> None:
    if not ms:
        print(f"{name}: no successful request, {errors} errors")
        return
    print(f"{name}: n={len(ms)} p50={statistics.median(ms):.1f} ms p95={pct(ms, 0.95):.1f} ms "
          f"max={max(ms):.1f} ms errors={errors}")
    if server:
        print(f"  server-side (Server-Timing): p50={statistics.median(server):.2f} ms "
              f"p95={pct(server, 0.95):.2f} ms")


def server_ms(r: httpx.Response) -> float | None:
    st = r.headers.get("server-timing", "")
    return float(st.split("dur=")[1]) if "dur=" in st else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, extra: list[str]) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "context_lookups.app.cli", "serve", "--db", db,
                             "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url, t0
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


# --- the bare Hugging Face model (the baseline) ----------------------------------------------------

class Bare:
    """The run's model as a plain ``AutoModelForCausalLM`` and its tokenizer, in this process."""

    def __init__(self, source: str, threads: int | None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(source)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        self.bos = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id

    def rows(self, texts: list[str]) -> list[list[int]]:
        return [[self.bos] + self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    def forward_ms(self, rows: list[list[int]], repeats: int = 20) -> float:
        """Median wall time of one forward pass of ``rows`` (right-padded) with logits."""
        n = max(len(r) for r in rows)
        x = self.torch.tensor([r + [self.bos] * (n - len(r)) for r in rows])
        out = []
        with self.torch.no_grad():
            self.model(input_ids=x, use_cache=False)
            for _ in range(repeats):
                t = time.perf_counter()
                self.model(input_ids=x, use_cache=False)
                out.append((time.perf_counter() - t) * 1000)
        return statistics.median(out)


# --- pages --------------------------------------------------------------------------------------------

def neuron_pages(client: httpx.Client, slug: str, n: int, seed: int) -> None:
    info = client.get(f"/{slug}/neurons.json", params={"per_page": 1}).json()
    total = info["total"]
    selected = client.get(f"/{slug}/neurons.json",
                          params={"kind": "selected", "per_page": 500}).json()["neurons"]
    rng = random.Random(seed)
    layers, d_mlp = info["run"]["layers"], info["run"]["d_mlp"]
    print(f"run {slug}: {total} neurons in scanned layers {layers} ({len(selected)} selected)")
    for kind, pick in (("selected", lambda: rng.choice(selected)),
                       ("any", lambda: {"layer": rng.choice(layers), "neuron": rng.randrange(d_mlp)})):
        if not selected and kind == "selected":
            continue
        for fmt in ("", ".json"):
            ms, srv, errors = [], [], 0
            for _ in range(5):  # warm-up (tokenizer for unselected neurons' documents, caches)
                x = pick()
                client.get(f"/{slug}/neurons/{x['layer']}/{x['neuron']}{fmt}")
            for _ in range(n):
                x = pick()
                t = time.perf_counter()
                r = client.get(f"/{slug}/neurons/{x['layer']}/{x['neuron']}{fmt}")
                dt = (time.perf_counter() - t) * 1000
                if r.status_code == 200:
                    ms.append(dt)
                    srv.append(server_ms(r))
                else:
                    errors += 1
            summary(f"neuron page{fmt} ({kind} neurons), {len(r.content) / 1000:.0f} KB last", ms, errors,
                    [x for x in srv if x is not None])


# --- live ---------------------------------------------------------------------------------------------

def prompt_of(bare: Bare, tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens (without BOS), cut from TEXT."""
    ids = bare.tok((TEXT + " ") * 4, add_special_tokens=False)["input_ids"][:tokens]
    return bare.tok.decode(ids)


class Round:
    """C concurrent clients, each sending ``per_client`` live fragment requests."""

    def __init__(self, base: str, targets: list[str], prompts: list[str], heads: list[str | None]):
        self.base, self.targets, self.prompts, self.heads = base, targets, prompts, heads

    def run(self, clients: int, per_client: int, tag: str) -> dict:
        ms, srv, errors, lock = [], [], [0], threading.Lock()
        before = engine_stats(self.base)

        def worker(w: int) -> None:
            with httpx.Client(base_url=self.base, timeout=300, headers={"HX-Request": "true"}) as c:
                for i in range(per_client):
                    k = w * per_client + i
                    text = self.prompts[k % len(self.prompts)]
                    params = {"prompt": text if tag == "cached" else f"{tag}{k}:{text}"}
                    if self.heads[k % len(self.heads)]:
                        params["ablate"] = self.heads[k % len(self.heads)]
                    t = time.perf_counter()
                    try:
                        r = c.get(self.targets[k % len(self.targets)] + "/live", params=params)
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
        after = engine_stats(self.base)
        eng = None
        if before and after and after.get("batches", 0) > before.get("batches", 0):
            n_b = after["batches"] - before["batches"]
            eng = {"mean_batch": (after["batched"] - before["batched"]) / n_b, "batches": n_b,
                   "model_busy": (after.get("busy_s", 0) - before.get("busy_s", 0)) / wall}
        return {"ms": ms, "srv": srv, "errors": errors[0], "wall": wall, "engine": eng}


def engine_stats(base: str) -> dict | None:
    """The live engine's counters (``/healthz``): batches, rows batched, model-thread seconds."""
    try:
        return httpx.get(base + "/healthz", timeout=10).json().get("stats")
    except (httpx.HTTPError, ValueError):
        return None


def engine_line(r: dict) -> str:
    e = r.get("engine")
    if not e:
        return ""
    return (f"\n  model thread: {e['batches']} batches of {e['mean_batch']:.1f} requests on average, "
            f"busy {100 * e['model_busy']:.0f}% of the round")


def peak_rss_gb(pid: int | None) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6
    except (OSError, TypeError):
        return None
    return None


def wait_ready(c: httpx.Client, t_start: float | None) -> None:
    """Until ``/healthz`` says every model is loaded (or failed): a model loading in the
    background competes with the requests timed."""
    r = c.get("/healthz")
    if r.status_code != 200:
        print("no /healthz (an older server): its first live pass loads the model")
        return
    health = r.json()
    while not health["ready"] and not any(str(v).startswith("failed") for v in health["models"].values()):
        time.sleep(0.05)
        health = c.get("/healthz").json()
    if t_start is not None:
        print(f"model ready {time.time() - t_start:.1f} s after the server process started: "
              f"{health['models']}")


def head_cost(base: str, target: str, prompt: str, head: str, n: int) -> None:
    """One client, uncached live passes alternating without and with ``head`` selected (its
    look-up), so that both see the same load: p50 of each and their ratio."""
    ms: dict[bool, list[float]] = {False: [], True: []}
    with httpx.Client(base_url=base, timeout=300, headers={"HX-Request": "true"}) as c:
        for i in range(2 * n + 2):
            picked = bool(i % 2)
            params = {"prompt": f"h{i}:{prompt}", **({"head": head} if picked else {})}
            t = time.perf_counter()
            r = c.get(target + "/live", params=params)
            if r.status_code == 200 and i >= 2:  # the first pair warms up
                ms[picked].append((time.perf_counter() - t) * 1000)
    a, b = statistics.median(ms[False]), statistics.median(ms[True])
    print(f"look-up: live pass without a head p50 {a:.1f} ms, with head {head} selected p50 {b:.1f} ms "
          f"(n={len(ms[True])} each, alternating): ratio {b / a:.2f} (goal <= 1.2)")


def live(base: str, slug: str, bare: Bare, ns, pid: int | None, t_start: float | None) -> None:
    rng = random.Random(ns.seed)
    with httpx.Client(base_url=base, timeout=300) as c:
        wait_ready(c, t_start)
        sel = c.get(f"/{slug}/neurons.json", params={"kind": "selected", "per_page": 500}).json()["neurons"] \
            or c.get(f"/{slug}/neurons.json", params={"per_page": 50}).json()["neurons"]
        n0 = sel[0]
        one = [f"/{slug}/neurons/{n0['layer']}/{n0['neuron']}"]
        many = [f"/{slug}/neurons/{n['layer']}/{n['neuron']}" for n in rng.sample(sel, min(len(sel), 24))]
        pairs = c.get(one[0] + ".json").json().get("pairs") or []
        head = pairs[0]["label"] if pairs else "L0H0"
    prompt = prompt_of(bare, ns.tokens)
    n_tok = len(bare.rows([f"x0:{prompt}"])[0])  # BOS + the request's tokens (a tag of ~3 tokens)
    clean = Round(base, one, [prompt], [None])
    first = clean.run(1, 1, "first")["ms"][0]
    steady = clean.run(1, ns.per_client, "a")["ms"]
    bare1 = bare.forward_ms(bare.rows([f"x0:{prompt}"]))
    p50 = statistics.median(steady)
    print(f"\nlive, {n_tok}-token rows (BOS + prompt), uncached; "
          f"bare HF forward of the same row: {bare1:.1f} ms")
    print(f"first live pass after ready: {first:.1f} ms = {first / p50:.2f} x a steady one (goal <= 2)")
    summary("1 client", steady, 0)
    print(f"  p50 / bare forward = {p50 / bare1:.2f}; goal p50 <= 3 x bare + 5 ms = {3 * bare1 + 5:.1f} ms: "
          f"{'met' if p50 <= 3 * bare1 + 5 else 'NOT met'}")
    fire_ms: list[float] = []  # which neurons fire: one pass over every analysed neuron, page rendered
    with httpx.Client(base_url=base, timeout=300) as c:
        for i in range(ns.per_client):
            t = time.perf_counter()
            r = c.get("/fire", params={"run": slug, "text": f"f{i}:{prompt}"})
            if r.status_code == 200:
                fire_ms.append((time.perf_counter() - t) * 1000)
    summary("fire page (/fire, which neurons fire), 1 client, uncached", fire_ms,
            ns.per_client - len(fire_ms))
    if fire_ms:
        print(f"  p50 / bare forward = {statistics.median(fire_ms) / bare1:.2f}; "
              f"{len(r.content) / 1000:.0f} KB")
    head_cost(base, one[0], prompt, head, ns.per_client * 3)
    for name, rnd in (("8 clients, one neuron, clean", clean),
                      ("8 clients, 24 neurons, half ablating a head",
                       Round(base, many, [prompt], [None, head]))):
        r = rnd.run(8, ns.per_client, f"r{len(name)}")
        bare8 = bare.forward_ms(bare.rows([f"x{i}:{prompt}" for i in range(8)]))
        bare_tps = 8 * n_tok / bare8 * 1000
        tps = len(r["ms"]) * n_tok / r["wall"]
        summary(name, r["ms"], r["errors"], r["srv"])
        print(f"  live {tps:,.0f} tokens/s ({len(r['ms']) / r['wall']:.1f} req/s); bare HF batched "
              f"(8 rows) {bare_tps:,.0f} tokens/s; ratio {tps / bare_tps:.2f} (goal >= 0.5), "
              f"p95 {pct(r['ms'], 0.95):.0f} ms (goal <= 200){engine_line(r)}")
    r, page_ms = sixty_with_a_page(base, many, prompt, head, max(2, ns.per_client // 2), "s60")
    summary("60 clients, 24 neurons, half ablating a head", r["ms"], r["errors"], r["srv"])
    rss = peak_rss_gb(pid)
    print(f"  errors {r['errors']} (goal 0); server peak RSS "
          f"{f'{rss:.2f} GB' if rss is not None else 'unknown (not started here)'} (goal <= 2 GB)")
    if page_ms:
        print(f"  plain neuron page meanwhile: n={len(page_ms)} p50={statistics.median(page_ms):.1f} ms "
              f"p95={pct(page_ms, 0.95):.1f} ms max={max(page_ms):.1f} ms (goal <= 50 ms)")
    cached = Round(base, one, [prompt], [None]).run(8, ns.per_client, "cached")  # same prompts: LRU
    summary("8 clients, cached (repeated prompts)", cached["ms"], cached["errors"])


def sixty_with_a_page(base: str, targets: list[str], prompt: str, head: str, per_client: int,
                      tag: str) -> tuple[dict, list[float]]:
    """60 clients of live passes (over ``targets``, half ablating ``head``) and, meanwhile, one
    client reading a plain neuron page every 20 ms: the round and the page's latencies (ms)."""
    page_ms: list[float] = []
    stop = threading.Event()

    def pages() -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                t = time.perf_counter()
                c.get(targets[0])
                page_ms.append((time.perf_counter() - t) * 1000)
                time.sleep(0.02)

    pt = threading.Thread(target=pages)
    pt.start()
    r = Round(base, targets, [prompt], [None, head]).run(60, per_client, tag)
    stop.set()
    pt.join()
    return r, page_ms


def load_figures(base: str, slug: str, bare: Bare, ns) -> None:
    """Issue 27 item 3: ``ns.rounds`` times in turn, the 8-client ratio to the bare batched
    forward (measured right after the round, in this process) and a page's p95 under 60 live
    clients, each with the load average (the machine may be shared)."""
    rng = random.Random(ns.seed)
    with httpx.Client(base_url=base, timeout=300) as c:
        wait_ready(c, None)
        sel = c.get(f"/{slug}/neurons.json", params={"kind": "selected", "per_page": 500}).json()["neurons"] \
            or c.get(f"/{slug}/neurons.json", params={"per_page": 50}).json()["neurons"]
        one = [f"/{slug}/neurons/{sel[0]['layer']}/{sel[0]['neuron']}"]
        many = [f"/{slug}/neurons/{n['layer']}/{n['neuron']}" for n in rng.sample(sel, min(len(sel), 24))]
        pairs = c.get(one[0] + ".json").json().get("pairs") or []
        head = pairs[0]["label"] if pairs else "L0H0"
        worker = c.get("/healthz").json().get("worker")
    print(f"live model worker: {worker or 'none (the model runs in the web process)'}")
    prompt = prompt_of(bare, ns.tokens)
    n_tok = len(bare.rows([f"x0:{prompt}"])[0])
    Round(base, one, [prompt], [None]).run(8, 2, "warm")
    ratios, p95s, quiet95s = [], [], []
    for k in range(ns.rounds):
        load = os.getloadavg()[0]
        r = Round(base, one, [prompt], [None]).run(8, ns.per_client, f"e{k}")
        bare8 = bare.forward_ms(bare.rows([f"x{i}:{prompt}" for i in range(8)]))
        tps, bare_tps = len(r["ms"]) * n_tok / r["wall"], 8 * n_tok / bare8 * 1000
        ratios.append(tps / bare_tps)
        quiet = []  # the same page with no live client, for the machine's own share of the figure
        with httpx.Client(base_url=base, timeout=60) as c:
            for _ in range(100):
                t = time.perf_counter()
                c.get(many[0])
                quiet.append((time.perf_counter() - t) * 1000)
                time.sleep(0.02)
        r60, page_ms = sixty_with_a_page(base, many, prompt, head, max(2, ns.per_client // 2), f"s{k}")
        p95s.append(pct(page_ms, 0.95) if page_ms else float("nan"))
        quiet95s.append(pct(quiet, 0.95))
        print(f"round {k + 1} (load average {load:.1f} -> {os.getloadavg()[0]:.1f}): 8 clients "
              f"{tps:,.0f} tok/s vs bare HF batched (8 rows of {n_tok} tokens) {bare_tps:,.0f} tok/s: "
              f"ratio {ratios[-1]:.2f} (goal >= 0.8), errors {r['errors']}{engine_line(r)}\n"
              f"  a page under 60 live clients: n={len(page_ms)} p50={statistics.median(page_ms):.1f} ms "
              f"p95={p95s[-1]:.1f} ms (goal <= 20 ms); live p95 {pct(r60['ms'], 0.95):.0f} ms, "
              f"errors {r60['errors']}\n  the same page with no live client just before: n={len(quiet)} "
              f"p50={statistics.median(quiet):.1f} ms p95={quiet95s[-1]:.1f} ms; "
              f"p95 under 60 clients / without: {p95s[-1] / quiet95s[-1]:.1f}x")
    print(f"\nover {ns.rounds} rounds: 8-client ratio {min(ratios):.2f}-{max(ratios):.2f} (median "
          f"{statistics.median(ratios):.2f}); page p95 under 60 clients {min(p95s):.1f}-{max(p95s):.1f} ms "
          f"(median {statistics.median(p95s):.1f}); without live clients {min(quiet95s):.1f}-"
          f"{max(quiet95s):.1f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", help="database URL: start a server on it (in another process)")
    ap.add_argument("--base-url", help="use a running server instead")
    ap.add_argument("--run", help="run slug (default: the first run)")
    ap.add_argument("--pid", type=int, help="process id of the server at --base-url (for its peak RSS)")
    ap.add_argument("--model", help="the run's model source for the bare baseline (default: the "
                    "embedded model)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the bare baseline "
                    "(default 1, the server's default torch_threads)")
    ap.add_argument("--pages", type=int, default=300, help="neuron pages to time per kind")
    ap.add_argument("--per-client", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pages-only", action="store_true", help="skip the live rounds")
    ap.add_argument("--live-only", action="store_true", help="skip the page rounds")
    ap.add_argument("--load-figures", action="store_true", help="only issue 27's two figures (8-client "
                    "ratio to bare, a page's p95 under 60 live clients), --rounds times")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("serve_args", nargs="*", help="extra `lookups serve` options (after --)")
    ns = ap.parse_args(argv)
    if not ns.db and not ns.base_url:
        ap.error("give --db or --base-url")
    proc, t_start = None, None
    base = ns.base_url
    if base is None:
        proc, base, t_start = start_server(ns.db, ns.serve_args)
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            runs = c.get("/.json").json()["runs"]
            slug = ns.run or runs[0]["slug"]
        if not ns.pages_only:
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from context_lookups.precompute.core.settings import EMBEDDED_MODEL

            bare = Bare(ns.model or EMBEDDED_MODEL, ns.threads)
            if ns.load_figures:
                load_figures(base, slug, bare, ns)
                return 0
            live(base, slug, bare, ns, proc.pid if proc else ns.pid, t_start)
        if not ns.live_only:
            with httpx.Client(base_url=base, timeout=60) as c:
                if ns.pages_only:
                    wait_ready(c, t_start)
                print()
                neuron_pages(c, slug, ns.pages, ns.seed)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
