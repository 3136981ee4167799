"""Benchmark of the Python API, issue 26 item 6 (prints figures; not a test).

1. ``run.pairs()``: the pair list as a DataFrame, with the default filters (the kept pairs) and
   with ``kept=False`` (every pair of the run: 2,848 on the default embedded run), median and
   p90 of ``--n`` calls each, alternating; goal: under 200 ms for the 2,848-pair run.
2. ``lookup(...)`` against the live page's pass on the same prompt, neuron and head (the
   strongest kept pair of the run): the live half (:class:`app.live.service.Live`, its cache
   off, its model thread, the server's torch thread count) queued and awaited as the neuron
   page does, and ``context_lookups.lookup`` in this process, alternating, each also as a ratio
   to the bare Hugging Face forward pass (``AutoModelForCausalLM``, logits) of the same row;
   goal: lookup within 1.2x of the live pass. Also ``lookup(..., knockout=True)`` for scale.

Usage:
    python benchmarks/bench_api.py --db sqlite:///lookups.db [--run embedded] [--n 30] [--tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import time


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def line(name: str, ms: list[float], extra: str = "") -> None:
    print(f"  {name}: n={len(ms)} median {statistics.median(ms):.1f} ms, p90 {pct(ms, 0.9):.1f} ms, "
          f"min {min(ms):.1f} ms{extra}")


def frames(run, n: int) -> None:
    kept, every, cpu = [], [], []
    rows = {}
    run.pairs(), run.pairs(kept=False)  # warm: the run's context, the page tokenizer, imports
    for i in range(n):
        for name, kw, out in (("kept", {}, kept), ("every", {"kept": False}, every))[:: 1 if i % 2 else -1]:
            t, c = time.perf_counter(), time.process_time()
            df = run.pairs(**kw)
            out.append((time.perf_counter() - t) * 1000)
            if name == "every":
                cpu.append((time.process_time() - c) * 1000)
            rows[name] = len(df)
    print(f"\nrun.pairs() on run {run.slug!r} ({run.info['n_layers']} layers; the run's pair rows below)")
    line(f"run.pairs() (kept pairs: {rows['kept']} rows)", kept)
    line(f"run.pairs(kept=False) (every pair: {rows['every']} rows)", every,
         f"; goal < 200 ms: {'met' if statistics.median(every) < 200 else 'NOT met'}")
    # CPU time of this process: what the call costs without the waits a loaded machine adds
    line(f"run.pairs(kept=False), CPU time of the call ({rows['every']} rows)", cpu)


def live_vs_api(db, run, n: int, tokens: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    import context_lookups as cl
    from context_lookups.app.live.passes import Target
    from context_lookups.app.live.service import Live
    from context_lookups.app.pages.neuron import live_request
    from context_lookups.app.settings import WebSettings

    top = run.pairs().iloc[0]
    layer, neuron, head = int(top["layer"]), int(top["neuron"]), (int(top["head_layer"]), int(top["head"]))
    settings = WebSettings(db_url=db.url, live_cache_size=0, preload=False)
    live = Live(settings)

    def target(s, ctx):
        n = live_request(s, ctx, layer=layer, neuron_=neuron, prompt="", ablate=[], pos=None)["neuron"]
        return Target(ctx.slug, n.layer, n.neuron, n.token_id, n.token, ctx.rules), ctx.model_source

    tgt, source = db.view(run.slug, target)
    model = run.load_model(device="cpu")
    text = ("The council met in the old hall by the river and argued about the harvest, the roads and "
            "the taxes, while the children played outside in the rain until the lamps were lit. ") * 8
    ids = model.encode(text)[:tokens]
    prompt = model.tokenizer.decode(ids)
    assert model.encode(prompt) == ids, "the prompt must tokenize back to the same tokens"
    live.submit(source=source, target=tgt, prompt=prompt, ablate=[], pos=None, head=head).result()  # loads
    # the model thread runs at the server's count (torch's is per thread): this one too
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    bare = AutoModelForCausalLM.from_pretrained(model.name, dtype=torch.float32).eval()  # the same files
    row = torch.tensor([[model.bos_token_id] + ids])
    print(f"\nlookup vs the live page's pass: L{layer}N{neuron}, head L{head[0]}H{head[1]}, "
          f"{tokens} tokens + BOS; torch threads {torch.get_num_threads()} (the server's)")
    t_live, t_api, t_ko, t_bare = [], [], [], []
    with torch.no_grad():
        bare(input_ids=row, use_cache=False)
    cl.lookup(model, prompt, layer=layer, neuron=neuron, head=head, run=run)
    for i in range(n):
        steps = [("live", lambda: live.submit(source=source, target=tgt, prompt=prompt, ablate=[], pos=None,
                                              head=head).result(), t_live),
                 ("api", lambda: cl.lookup(model, prompt, layer=layer, neuron=neuron, head=head, run=run),
                  t_api),
                 ("bare", lambda: bare(input_ids=row, use_cache=False), t_bare)]
        for _, fn, out in steps[:: 1 if i % 2 else -1]:
            with torch.no_grad():
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1000)
        if i < max(5, n // 3):
            t = time.perf_counter()
            cl.lookup(model, prompt, layer=layer, neuron=neuron, head=head, run=run, knockout=True)
            t_ko.append((time.perf_counter() - t) * 1000)
    b = statistics.median(t_bare)
    line("bare HF forward (logits)", t_bare)
    line("live page's pass (Live.submit → result, cache off)", t_live,
         f"; {statistics.median(t_live) / b:.2f}x bare")
    line("context_lookups.lookup (head, run)", t_api, f"; {statistics.median(t_api) / b:.2f}x bare")
    ratio = statistics.median(t_api) / statistics.median(t_live)
    print(f"  lookup / live pass = {ratio:.2f} (goal <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})")
    line("lookup(..., knockout=True): top-3 context sources and the sink, total effects", t_ko)
    live.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="sqlite:///lookups.db")
    ap.add_argument("--run", default=None, help="run slug (default: the newest)")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--skip", nargs="*", default=[], choices=["frames", "live"])
    ns = ap.parse_args()
    import os

    import context_lookups as cl

    print(f"load average {os.getloadavg()[0]:.1f} (2 cores shared: figures are noisy when it is high)")
    db = cl.open(ns.db)
    run = db.run(ns.run)
    if "frames" not in ns.skip:
        frames(run, ns.n)
    if "live" not in ns.skip:
        live_vs_api(db, run, ns.n, ns.tokens)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
